// credit-sidecar's client: the service calls (check, holds, usage, balance) and the admin calls,
// over `fetch` only, so it runs on Node 20+, Deno, Bun and edge runtimes. Types: index.d.ts.

export const VERSION = "0.1.0";
/** The sidecar versions (GET /openapi.json `info.version`) this client speaks to. */
export const SUPPORTED_SIDECAR = ">=0.1.0 <0.2.0";

// The sidecar's ids: 1-128 characters of [A-Za-z0-9._:-] (docs/http-api.md).
const ID = /^[A-Za-z0-9._:-]{1,128}$/;
const RETRYABLE_STATUS = new Set([502, 503, 504]);

// -- errors -----------------------------------------------------------------------------------

export class CreditSidecarError extends Error {
  constructor(message, { status = 0, code = "error", field, body, headers, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.field = field;
    this.body = body;
    this.headers = headers;
  }
}

/** 402: the balance (plus overdraft) cannot cover the cost. */
export class InsufficientCredits extends CreditSidecarError {
  constructor(message, init = {}) {
    super(message, init);
    this.account = init.body?.account;
    this.balance = init.body?.balance;
    this.required = init.body?.required;
  }
}

/** 402: the cost would pass the account's (`spend_limit`) or key's (`key_spend_limit`) limit. */
export class SpendLimitReached extends CreditSidecarError {
  constructor(message, init = {}) {
    super(message, init);
    this.account = init.body?.account;
    this.required = init.body?.required;
    this.spendLimit = init.body?.spend_limit;
    this.spent = init.body?.spent;
    this.windowEndsAt = init.body?.window_ends_at ?? null;
  }
}

/** 429: come back in `retryAfterMs`. */
export class RateLimited extends CreditSidecarError {
  constructor(message, init = {}) {
    super(message, init);
    this.account = init.body?.account;
    this.retryAfterMs = init.body?.retry_after_ms ?? 0;
  }
}

export class Unauthorized extends CreditSidecarError {}
export class Forbidden extends CreditSidecarError {}
export class NotFound extends CreditSidecarError {}
/** 409: an idempotency key reused on another request, a closed hold, a revoked token... */
export class Conflict extends CreditSidecarError {}
/** 400/413/422: the request itself is wrong (`field` names what). */
export class InvalidRequest extends CreditSidecarError {}
/** Unreachable, timed out, or 5xx after the retries: nothing is known to have been charged. */
export class SidecarUnavailable extends CreditSidecarError {}
/** The sidecar's version is outside SUPPORTED_SIDECAR, or it lacks the route called. */
export class IncompatibleSidecar extends CreditSidecarError {}

function errorFor(status, body, headers) {
  const denial = body && body.allowed === false ? body : null;
  const detail = body && typeof body.error === "object" && body.error ? body.error : null;
  const code = denial?.reason ?? detail?.code ?? `http_${status}`;
  const init = { status, code, field: detail?.field ?? denial?.field, body, headers };
  if (denial && status === 402) {
    if (code === "spend_limit" || code === "key_spend_limit") {
      return new SpendLimitReached(
        `the cost ${denial.required} would pass the ${code === "key_spend_limit" ? "key's" : "account's"} spending limit (spent ${denial.spent} of ${denial.spend_limit?.credits})`,
        init,
      );
    }
    return new InsufficientCredits(
      `insufficient credits: ${denial.required ?? "?"} required, balance ${denial.balance ?? "?"}`,
      init,
    );
  }
  if (status === 429) {
    return new RateLimited(`rate limited: retry after ${denial?.retry_after_ms ?? "?"} ms`, init);
  }
  const message = detail?.message ?? denial?.message ?? denial?.reason ?? `HTTP ${status}`;
  if (status === 402) return new InsufficientCredits(message, init);
  if (status === 401) return new Unauthorized(message, init);
  if (status === 403) return new Forbidden(message, init);
  if (status === 404) return new NotFound(message, init);
  if (status === 409) return new Conflict(message, init);
  if (status === 400 || status === 413 || status === 422) return new InvalidRequest(message, init);
  if (status >= 500) return new SidecarUnavailable(message, init);
  return new CreditSidecarError(message, init);
}

// -- versions ---------------------------------------------------------------------------------

function parseVersion(v) {
  const m = /^(\d+)\.(\d+)\.(\d+)/.exec(String(v).trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : null;
}

function compare(a, b) {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

/** Whether `version` satisfies a range of space-separated `>=x.y.z`, `<x.y.z` (and `>`, `<=`, `=`). */
export function satisfies(version, range = SUPPORTED_SIDECAR) {
  const v = parseVersion(version);
  if (!v) return false;
  return range.split(/\s+/).filter(Boolean).every((part) => {
    const m = /^(>=|<=|>|<|=)?(.*)$/.exec(part);
    const bound = parseVersion(m[2]);
    if (!bound) return false;
    const c = compare(v, bound);
    switch (m[1]) {
      case ">=": return c >= 0;
      case "<=": return c <= 0;
      case ">": return c > 0;
      case "<": return c < 0;
      default: return c === 0;
    }
  });
}

// -- the client -------------------------------------------------------------------------------

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function uuid() {
  return globalThis.crypto.randomUUID();
}

function pathPart(value, name) {
  if (typeof value !== "string" || value === "") {
    throw new InvalidRequest(`${name} must be a non-empty string`, { code: "invalid_request", field: name });
  }
  return encodeURIComponent(value);
}

function dropUndefined(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined) out[k] = v;
  return out;
}

function combineSignals(timeout, outer) {
  if (!outer) return timeout;
  if (typeof AbortSignal.any === "function") return AbortSignal.any([timeout, outer]);
  const ctl = new AbortController();
  const abort = (s) => ctl.abort(s.reason);
  for (const s of [timeout, outer]) {
    if (s.aborted) abort(s);
    else s.addEventListener("abort", () => abort(s), { once: true });
  }
  return ctl.signal;
}

/** Is this a valid sidecar id (1-128 of [A-Za-z0-9._:-])? Request ids used as idempotency keys must be. */
export function isValidId(value) {
  return typeof value === "string" && ID.test(value);
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
    this.#fetch = fetchImpl ?? ((...args) => globalThis.fetch(...args));
    this.timeoutMs = timeoutMs;
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

  // One logical call: the same body (and so the same idempotency key) on every attempt.
  async request(method, path, { body, query, token, admin = false, retry = true, headers, signal, raw = false } = {}) {
    let target = this.#url + path;
    if (query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) q.set(k, String(v));
      const s = q.toString();
      if (s) target += `?${s}`;
    }
    const auth = token ?? (admin ? this.#adminToken : this.#token);
    const init = {
      method,
      headers: dropUndefined({
        accept: "application/json",
        "content-type": body === undefined ? undefined : "application/json",
        authorization: auth ? `Bearer ${auth}` : undefined,
        "user-agent": this.userAgent,
        ...headers,
      }),
      body: body === undefined ? undefined : JSON.stringify(body),
    };
    const attempts = retry ? this.retries + 1 : 1;
    let last;
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) {
        // Exponential backoff with full jitter: retries of many clients do not arrive together.
        const cap = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (attempt - 1));
        await sleep(Math.random() * cap);
        if (signal?.aborted) break;
      }
      let response;
      try {
        response = await this.#fetch(target, {
          ...init,
          signal: combineSignals(AbortSignal.timeout(this.timeoutMs), signal),
        });
      } catch (cause) {
        if (signal?.aborted) throw cause;
        const timedOut = cause?.name === "TimeoutError";
        last = new SidecarUnavailable(
          timedOut
            ? `${method} ${path}: no answer within ${this.timeoutMs} ms`
            : `${method} ${path}: ${cause?.cause?.code ?? cause?.message ?? "connection failed"}`,
          { code: timedOut ? "timeout" : "unreachable", cause },
        );
        continue;
      }
      if (raw) return response;
      const text = await response.text().catch(() => "");
      let parsed = null;
      if (text) {
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = { error: { code: `http_${response.status}`, message: text.slice(0, 200) } };
        }
      }
      if (response.ok) return parsed;
      const error = errorFor(response.status, parsed, response.headers);
      if ((response.status === 404 && error.code === "not_found") || response.status === 405) {
        throw new IncompatibleSidecar(
          `this sidecar has no ${method} ${path.split("?")[0]}: it is older than this client needs (${SUPPORTED_SIDECAR})`,
          { status: response.status, code: "incompatible_sidecar", body: parsed },
        );
      }
      if (RETRYABLE_STATUS.has(response.status)) {
        last = error;
        continue;
      }
      throw error;
    }
    throw last ?? new SidecarUnavailable(`${method} ${path}: aborted`, { code: "aborted" });
  }

  #failOpen(what, error, result) {
    if (this.failurePolicy !== "fail_open" || !(error instanceof SidecarUnavailable)) throw error;
    this.logger?.warn?.(`credit-sidecar: ${what} let through uncharged (fail_open): ${error.message}`);
    return result;
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
      return await this.request("POST", "/v1/check", { body, signal });
    } catch (error) {
      return this.#failOpen(`check of ${cost} for ${account}`, error, {
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
      return this.#failOpen(`hold of ${amount} for ${account}`, error, {
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
        "x-forwarded-uri": path,
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
        return this.#failOpen(`request of ${method} ${path}`, error, { allowed: true, fail_open: true });
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

/** A hold being used: count what the work cost, then finish (settle) or release it once. */
export class Meter {
  #client;
  #done = false;

  constructor(client, account, hold, estimate) {
    this.#client = client;
    this.account = account;
    this.hold = hold;
    this.estimate = estimate;
    this.amount = undefined;
    this.result = undefined;
  }

  get holdId() {
    return this.hold.hold_id;
  }

  get closed() {
    return this.#done;
  }

  /** The cost to settle (replaces what was counted). */
  settle(amount) {
    this.amount = amount;
  }

  /** Counts `n` more (e.g. tokens streamed). */
  add(n) {
    this.amount = (this.amount ?? 0) + n;
  }

  /** Settles the amount set (the estimate if none); once. */
  async finish() {
    if (this.#done) return this.result;
    this.#done = true;
    if (this.hold.fail_open) return (this.result = { state: "fail_open", charged: 0 });
    const amount = this.amount ?? this.estimate;
    this.result = await this.#client.settle({ account: this.account, holdId: this.holdId, amount });
    return this.result;
  }

  /** Gives the hold back whole; once. */
  async release() {
    if (this.#done) return this.result;
    this.#done = true;
    if (this.hold.fail_open) return (this.result = { state: "fail_open", charged: 0 });
    this.result = await this.#client.release({ account: this.account, holdId: this.holdId });
    return this.result;
  }
}

// -- the header convention (docs/clients/typescript.md, docs/http-api.md "Response headers") -----

/** The headers of an allowed check: X-Credits-* and, when the answer has one, RateLimit(-Policy). */
export function allowedHeaders(result) {
  const headers = {};
  if (result.fail_open) {
    headers["X-Credits-Reason"] = "fail_open";
    return headers;
  }
  if (result.account != null) headers["X-Credits-Account"] = String(result.account);
  if (result.balance != null) headers["X-Credits-Balance"] = String(result.balance);
  if (result.cost != null) headers["X-Credits-Cost"] = String(result.cost);
  if (result.transaction_id) headers["X-Credits-Transaction"] = String(result.transaction_id);
  if (result.replayed != null) headers["X-Credits-Replayed"] = result.replayed ? "true" : "false";
  Object.assign(headers, rateLimitHeaders(result.rate_limit));
  return headers;
}

/** IETF draft-ietf-httpapi-ratelimit-headers fields from the check's `rate_limit`, if any. */
export function rateLimitHeaders(rateLimit) {
  if (!rateLimit || typeof rateLimit !== "object") return {};
  const policy = String(rateLimit.policy ?? "default").replace(/["\\]/g, "");
  const seconds = (ms) => Math.max(0, Math.ceil(Number(ms ?? 0) / 1000));
  return {
    "RateLimit-Policy": `"${policy}";q=${rateLimit.limit};w=${seconds(rateLimit.period_ms)}`,
    RateLimit: `"${policy}";r=${rateLimit.remaining};t=${seconds(rateLimit.reset_ms)}`,
  };
}

/**
 * The answer a middleware gives for a refusal: the sidecar's status and JSON body, with
 * X-Credits-Reason, X-Credits-Balance where known and Retry-After (seconds, rounded up) on 429.
 * Null for errors that are not a refusal of the request (the app's error handler takes those).
 */
export function deniedResponse(error, { failurePolicy = "fail_closed" } = {}) {
  if (error instanceof SidecarUnavailable) {
    if (failurePolicy === "fail_open") return null;
    return {
      status: 503,
      body: { error: { code: "credits_unavailable", message: "the credit check is unavailable; try again" } },
      headers: { "X-Credits-Reason": "credits_unavailable", "Retry-After": "1" },
    };
  }
  // 401/403 here are about the app's own token: the app's error handler, not the caller, hears of them.
  if (!(error instanceof CreditSidecarError) || ![402, 409, 429].includes(error.status)) return null;
  const headers = { "X-Credits-Reason": error.code };
  const balance = error.body?.balance;
  if (balance != null) headers["X-Credits-Balance"] = String(balance);
  if (error instanceof RateLimited) headers["Retry-After"] = String(Math.max(1, Math.ceil(error.retryAfterMs / 1000)));
  Object.assign(headers, rateLimitHeaders(error.body?.rate_limit));
  return { status: error.status, body: error.body, headers };
}

/** The idempotency key of a request: its X-Request-Id when a valid id, else a fresh uuid. */
export function requestIdempotencyKey(requestId) {
  return isValidId(requestId) ? requestId : uuid();
}

/**
 * A route-cost table's lookup: `{"GET /v1/images": 10, "/v1/chat/*": 5}` (method optional, `*`
 * matches within a segment, a trailing `/**` any rest). Returns the first match's cost, else `fallback`.
 */
export function routeCostLookup(table, fallback) {
  const rules = Object.entries(table).map(([pattern, cost]) => {
    const m = /^([A-Z]+)\s+(.*)$/.exec(pattern.trim());
    const method = m ? m[1] : null;
    const path = m ? m[2] : pattern.trim();
    const rx = new RegExp(
      "^" +
        path
          .split("/**")
          .map((part) => part.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join("[^/]*"))
          .join("(?:/.*)?") +
        "/?$",
    );
    return { method, rx, cost };
  });
  return (method, path) => {
    for (const r of rules) if ((!r.method || r.method === method) && r.rx.test(path)) return r.cost;
    return fallback;
  };
}
