// What the Express and Hono middleware share: the header convention (docs/clients/typescript.md,
// docs/http-api.md "Response headers"), a refusal as an answer, request ids as idempotency keys and
// route-cost tables.

import { CreditSidecarError, IncompatibleSidecar, RateLimited, SidecarUnavailable } from "./errors.js";
import { uuid } from "./transport.js";

// The sidecar's ids: 1-128 characters of [A-Za-z0-9._:-] (docs/http-api.md).
const ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The account `options.account(ctx)` names for a request (a request or a Hono context), or null
 * for anything but a non-empty string. */
export async function resolveAccount(options, ctx) {
  const account = await options.account(ctx);
  return typeof account === "string" && account !== "" ? account : null;
}

/** Is this a valid sidecar id (1-128 of [A-Za-z0-9._:-])? Request ids used as idempotency keys must be. */
export function isValidId(value) {
  return typeof value === "string" && ID.test(value);
}

// What a header value must not carry (CR, LF, controls, non-ASCII): values come from answers.
const UNSAFE = /[^\x20-\x7e]/g;

function clean(headers) {
  for (const k of Object.keys(headers)) headers[k] = String(headers[k]).replace(UNSAFE, "");
  return headers;
}

/** The headers of an allowed check: X-Credits-* and, when the answer has one, RateLimit(-Policy). */
export function allowedHeaders(result) {
  return clean(allowedHeadersOf(result));
}

function allowedHeadersOf(result) {
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
  // 400/404/413/422 are about this request (an account id the sidecar refuses, a bad cost): answered
  // with the sidecar's status and body, as the Python middleware does, never the app's error page.
  if (!(error instanceof CreditSidecarError) || error instanceof IncompatibleSidecar) return null;
  if (![400, 402, 404, 409, 413, 422, 429].includes(error.status)) return null;
  const headers = { "X-Credits-Reason": error.code };
  const balance = error.body?.balance;
  if (balance != null) headers["X-Credits-Balance"] = String(balance);
  if (error instanceof RateLimited) headers["Retry-After"] = String(Math.max(1, Math.ceil(error.retryAfterMs / 1000)));
  Object.assign(headers, rateLimitHeaders(error.body?.rate_limit));
  return { status: error.status, body: error.body, headers: clean(headers) };
}

/**
 * The idempotency key of a request's check: derived from its X-Request-Id when a valid id, else a
 * fresh uuid. The account, method, path and `nth` (the checks this request already had) are hashed
 * in, as the Python middleware does (the same key): the id on another route or account is another
 * charge, never a replay of a different request, and a request's second check is its own charge.
 */
export async function requestIdempotencyKey(requestId, { account, method, path, nth = 0 }) {
  if (!isValidId(requestId)) return uuid();
  const text = `${requestId}\n${account}\n${method}\n${path}` + (nth ? `\n${nth}` : "");
  return `req-${(await sha256Hex(text)).slice(0, 40)}`;
}

// On Node, node:crypto hashes on the spot; WebCrypto's digest goes through a worker thread (a
// thread hop per request). Elsewhere WebCrypto is what there is.
const nodeCrypto = globalThis.process?.getBuiltinModule?.("node:crypto");

async function sha256Hex(text) {
  if (nodeCrypto) return nodeCrypto.createHash("sha256").update(text, "utf8").digest("hex");
  const digest = await globalThis.crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

const checksMade = new WeakMap();

/** How many checks `request` (Express's req, Hono's c.req.raw) had before this one; counts this one. */
export function nthCheck(request) {
  const n = checksMade.get(request) ?? 0;
  checksMade.set(request, n + 1);
  return n;
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
