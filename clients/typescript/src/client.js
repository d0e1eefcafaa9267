// CreditSidecar, the client: the service calls (check, holds, usage, balance, authorize) and the
// admin calls, each one request through transport.js. Types: client.d.ts.

import { InvalidRequest, IncompatibleSidecar, SidecarUnavailable, errorFor } from "./errors.js";
import { Meter } from "./meter.js";
import { nodeFetch } from "./nodewire.js";
import { RETRYABLE_STATUS, dropUndefined, failOpen, rawUri, send, uuid } from "./transport.js";
import { SUPPORTED_SIDECAR, VERSION, satisfies } from "./version.js";

function pathPart(value, name) {
  if (typeof value !== "string" || value === "") {
    throw new InvalidRequest(`${name} must be a non-empty string`, { code: "invalid_request", field: name });
  }
  return encodeURIComponent(value);
}

export class CreditSidecar {
  #url;
  #token;
  #adminToken;
  #fetch;

  constructor({
    url,
    token,
    adminToken,
    timeoutMs = 2000,
    deadlineMs = 5000,
    retries = 2,
    backoffMs = 50,
    maxBackoffMs = 1000,
    failurePolicy = "fail_closed",
    fetch: fetchImpl,
    logger = console,
    userAgent,
  } = {}) {
    if (!url) throw new TypeError("CreditSidecar: url is required");
    if (failurePolicy !== "fail_closed" && failurePolicy !== "fail_open") {
      throw new TypeError('CreditSidecar: failurePolicy is "fail_closed" or "fail_open"');
    }
    this.#url = String(url).replace(/\/+$/, "");
    this.#token = token;
    this.#adminToken = adminToken ?? token;
    this.#fetch = fetchImpl ?? nodeFetch() ?? ((...args) => globalThis.fetch(...args));
    this.timeoutMs = timeoutMs;
    this.deadlineMs = deadlineMs;
    this.retries = Math.max(0, retries);
    this.backoffMs = backoffMs;
    this.maxBackoffMs = maxBackoffMs;
    this.failurePolicy = failurePolicy;
    this.logger = logger;
    this.userAgent = userAgent ?? `credit-sidecar-js/${VERSION}`;
  }

  get url() {
    return this.#url;
  }

  // One logical call (transport.js): the same body (and so the same idempotency key) on every attempt.
  async request(method, path, { token, admin = false, ...options } = {}) {
    const auth = token ?? (admin ? this.#adminToken : this.#token);
    return send(this, { fetch: this.#fetch, url: this.#url, auth }, method, path, options);
  }


  // -- service calls ----------------------------------------------------------------------------

  /** May this go ahead? Charges `cost` (once per idempotency key); throws the denial. */
  async check({ account, cost, idempotencyKey, dryRun, description, metadata, signal } = {}) {
    const body = dropUndefined({
      account,
      cost,
      idempotency_key: idempotencyKey ?? uuid(),
      description,
      metadata,
      dry_run: dryRun || undefined,
    });
    try {
      const answer = await this.request("POST", "/v1/check", { body, signal });
      if (answer?.allowed !== true) {
        // a check's 200 says allowed: true; anything else is not the sidecar's answer
        throw new SidecarUnavailable("POST /v1/check: an answer without allowed: true", { code: "unreachable" });
      }
      return answer;
    } catch (error) {
      return failOpen(this, `check of ${cost} for ${account}`, error, {
        allowed: true,
        account,
        cost,
        balance: null,
        transaction_id: null,
        replayed: false,
        low_balance: false,
        charged: false,
        fail_open: true,
      });
    }
  }

  /** Reserves `amount` until settled or released (or `ttlMs` passes). */
  async hold({ account, amount, holdId, ttlMs, description, metadata, signal } = {}) {
    const body = dropUndefined({
      account,
      hold_id: holdId ?? uuid(),
      amount,
      ttl_ms: ttlMs,
      description,
      metadata,
    });
    try {
      return await this.request("POST", "/v1/holds", { body, signal });
    } catch (error) {
      return failOpen(this, `hold of ${amount} for ${account}`, error, {
        account,
        hold_id: body.hold_id,
        amount,
        state: "fail_open",
        transaction_id: null,
        balance: null,
        expires_at: null,
        replayed: false,
        fail_open: true,
      });
    }
  }

  /** Charges `amount` of a hold (more than held draws from the balance); the rest goes back. */
  async settle({ account, holdId, amount, description, metadata, signal } = {}) {
    const body = dropUndefined({ account, amount, description, metadata });
    return this.request("POST", `/v1/holds/${pathPart(holdId, "holdId")}/settle`, { body, signal });
  }

  /** Gives a hold back whole. */
  async release({ account, holdId, description, metadata, signal } = {}) {
    const body = dropUndefined({ account, description, metadata });
    return this.request("POST", `/v1/holds/${pathPart(holdId, "holdId")}/release`, { body, signal });
  }

  /**
   * Holds `estimate`, runs `fn(h)`, then settles what `h.settle(n)` (or `h.add(n)`) set — the
   * estimate if nothing was — or releases the hold if `fn` throws. Returns what `fn` returned.
   */
  async withHold(account, estimate, fn, options = {}) {
    const holdId = options.holdId ?? uuid();
    const hold = await this.hold({ ...options, account, amount: estimate, holdId });
    const meter = new Meter(this, account, { hold_id: holdId, ...hold }, estimate);
    let value;
    try {
      value = await fn(meter);
    } catch (error) {
      await meter.release().catch((e) => this.logger?.warn?.(`credit-sidecar: release failed: ${e.message}`));
      throw error;
    }
    await meter.finish();
    return value;
  }

  /** Usage after the fact: never refused; what the balance cannot cover becomes debt. */
  async reportUsage({ account, cost, idempotencyKey, description, metadata, signal } = {}) {
    const body = dropUndefined({
      account,
      cost,
      idempotency_key: idempotencyKey ?? uuid(),
      description,
      metadata,
    });
    return this.request("POST", "/v1/usage", { body, signal });
  }

  /** The account's balance, holds, debt and limits (a `read` call: made with `adminToken` if given). */
  async balance(account, { signal } = {}) {
    return this.request("GET", `/v1/accounts/${pathPart(account, "account")}/balance`, { signal, admin: true });
  }

  /**
   * What a proxy asks (`/auth/forward`): may the holder of `apiKey` make `method path`? Priced by
   * the sidecar's route table, charged once per `requestId`; a revoked or unknown key is Unauthorized.
   */
  async authorize({ apiKey, method = "GET", path = "/", requestId, signal } = {}) {
    const response = await this.request("GET", "/auth/forward", {
      token: apiKey ?? "",
      raw: true,
      signal,
      headers: dropUndefined({
        "x-forwarded-method": method,
        "x-forwarded-uri": rawUri(path),
        "x-request-id": requestId ?? uuid(),
      }),
    });
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = { allowed: false, reason: `http_${response.status}` };
    }
    if (!response.ok) {
      const error = errorFor(response.status, body, response.headers);
      if (RETRYABLE_STATUS.has(response.status)) {
        return failOpen(this, `request of ${method} ${path}`, error, { allowed: true, fail_open: true });
      }
      throw error;
    }
    const h = response.headers;
    const num = (name) => (h.get(name) === null ? null : Number(h.get(name)));
    return {
      ...body,
      allowed: true,
      account: h.get("x-credits-account"),
      balance: num("x-credits-balance"),
      cost: num("x-credits-cost"),
      transaction_id: h.get("x-credits-transaction"),
      replayed: h.get("x-credits-replayed") === "true",
    };
  }

  /** Fetches `/openapi.json` and checks `info.version` against SUPPORTED_SIDECAR. */
  async checkCompatibility({ signal } = {}) {
    const spec = await this.request("GET", "/openapi.json", { signal });
    const version = spec?.info?.version;
    if (!satisfies(version, SUPPORTED_SIDECAR)) {
      throw new IncompatibleSidecar(
        `the sidecar is version ${version ?? "unknown"}; credit-sidecar ${VERSION} supports ${SUPPORTED_SIDECAR}`,
        { code: "incompatible_sidecar", body: { version } },
      );
    }
    return { version, supported: SUPPORTED_SIDECAR, client: VERSION };
  }

  // -- admin calls ----------------------------------------------------------------------------
  // Bodies are the API's JSON bodies (docs/http-api.md); `reason` goes to X-Audit-Reason.

  #admin(method, path, { body, query, reason, retry = true, signal } = {}) {
    const headers = reason ? { "x-audit-reason": reason } : undefined;
    return this.request(method, path, { body, query, admin: true, retry, headers, signal });
  }

  putAccount(account, settings = {}, opts = {}) {
    return this.#admin("PUT", `/v1/accounts/${pathPart(account, "account")}`, { ...opts, body: settings });
  }

  patchAccount(account, changes, opts = {}) {
    return this.#admin("PATCH", `/v1/accounts/${pathPart(account, "account")}`, { ...opts, body: changes });
  }

  listAccounts(query = {}, opts = {}) {
    return this.#admin("GET", "/v1/admin/accounts", { ...opts, query });
  }

  transactions(account, query = {}, opts = {}) {
    return this.#admin("GET", `/v1/accounts/${pathPart(account, "account")}/transactions`, { ...opts, query });
  }

  usage(account, query = {}, opts = {}) {
    return this.#admin("GET", `/v1/accounts/${pathPart(account, "account")}/usage`, { ...opts, query });
  }

  holds(account, opts = {}) {
    return this.#admin("GET", `/v1/accounts/${pathPart(account, "account")}/holds`, opts);
  }

  /** Adds credits; `grantId` (made once per call unless given) makes a retry a replay. */
  grant(account, { grantId, credits, expiresAt, priority, source, description, metadata, reason } = {}, opts = {}) {
    const body = dropUndefined({
      grant_id: grantId ?? uuid(),
      credits,
      expires_at: expiresAt,
      priority,
      source,
      description,
      metadata,
      reason,
    });
    return this.#admin("POST", `/v1/accounts/${pathPart(account, "account")}/grants`, { ...opts, body });
  }

  refund({ account, transactionId, amount, refundId, reason, description, metadata } = {}, opts = {}) {
    const body = dropUndefined({
      account,
      refund_id: refundId ?? uuid(),
      transaction_id: transactionId,
      amount,
      reason,
      description,
      metadata,
    });
    return this.#admin("POST", "/v1/refunds", { ...opts, body });
  }

  /** A new API key; `key` in the answer is its only showing. */
  createKey(account, { name, rate_limit, spend_limit, idempotencyKey } = {}, opts = {}) {
    const body = dropUndefined({ name, rate_limit, spend_limit, idempotency_key: idempotencyKey ?? uuid() });
    return this.#admin("POST", `/v1/accounts/${pathPart(account, "account")}/keys`, { ...opts, body });
  }

  listKeys(account, opts = {}) {
    return this.#admin("GET", `/v1/accounts/${pathPart(account, "account")}/keys`, opts);
  }

  revokeKey(keyId, opts = {}) {
    return this.#admin("DELETE", `/v1/keys/${pathPart(keyId, "keyId")}`, opts);
  }

  /** The account's spending limit (`null` removes it). */
  setSpendLimit(account, spendLimit, opts = {}) {
    return this.patchAccount(account, { spend_limit: spendLimit }, opts);
  }

  /** An API key's spending limit (`null` removes it). */
  setKeySpendLimit(keyId, spendLimit, opts = {}) {
    return this.#admin("PATCH", `/v1/keys/${pathPart(keyId, "keyId")}`, { ...opts, body: { spend_limit: spendLimit } });
  }

  putPlan(plan, definition, opts = {}) {
    return this.#admin("PUT", `/v1/plans/${pathPart(plan, "plan")}`, { ...opts, body: definition });
  }

  getPlan(plan, opts = {}) {
    return this.#admin("GET", `/v1/plans/${pathPart(plan, "plan")}`, opts);
  }

  listPlans(opts = {}) {
    return this.#admin("GET", "/v1/plans", opts);
  }

  async deletePlan(plan, opts = {}) {
    // Not retried: a retry after a lost 204 would answer 404.
    await this.#admin("DELETE", `/v1/plans/${pathPart(plan, "plan")}`, { ...opts, retry: false });
  }

  /** A link for the customer's portal; it opens once, until `expires_at`. Not retried. */
  createPortalSession(account, options = {}, opts = {}) {
    return this.#admin("POST", `/v1/accounts/${pathPart(account, "account")}/portal-sessions`, {
      ...opts,
      body: options,
      retry: false,
    });
  }

  /** Ends the account's portal sessions, or every account's without one. */
  revokePortalSessions(account, opts = {}) {
    const path = account === undefined ? "/v1/portal-sessions" : `/v1/accounts/${pathPart(account, "account")}/portal-sessions`;
    return this.#admin("DELETE", path, opts);
  }

  /** A scoped sidecar token; `token` in the answer is its only showing. Not retried. */
  createToken({ name, scopes, account_prefix } = {}, opts = {}) {
    return this.#admin("POST", "/v1/tokens", { ...opts, body: dropUndefined({ name, scopes, account_prefix }), retry: false });
  }

  listTokens(opts = {}) {
    return this.#admin("GET", "/v1/tokens", opts);
  }

  getToken(tokenId, opts = {}) {
    return this.#admin("GET", `/v1/tokens/${pathPart(tokenId, "tokenId")}`, opts);
  }

  rotateToken(tokenId, { graceSeconds } = {}, opts = {}) {
    const body = dropUndefined({ grace_seconds: graceSeconds });
    return this.#admin("POST", `/v1/tokens/${pathPart(tokenId, "tokenId")}/rotate`, { ...opts, body, retry: false });
  }

  revokeToken(tokenId, opts = {}) {
    return this.#admin("DELETE", `/v1/tokens/${pathPart(tokenId, "tokenId")}`, opts);
  }
}
