// The header convention, on answers shaped as the sidecar's (no sidecar needed).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  InvalidRequest,
  RateLimited,
  SidecarUnavailable,
  Unauthorized,
  allowedHeaders,
  deniedResponse,
  requestIdempotencyKey,
  routeCostLookup,
} from "../src/index.js";

test("allowed: X-Credits-*, and RateLimit/RateLimit-Policy when the check carries rate_limit", () => {
  const base = { allowed: true, account: "acme", balance: 90, cost: 10, transaction_id: "tx_1", replayed: false, low_balance: false };
  assert.deepEqual(allowedHeaders(base), {
    "X-Credits-Account": "acme",
    "X-Credits-Balance": "90",
    "X-Credits-Cost": "10",
    "X-Credits-Transaction": "tx_1",
    "X-Credits-Replayed": "false",
  });
  const limited = allowedHeaders({ ...base, rate_limit: { policy: "account", limit: 100, remaining: 42, reset_ms: 1500, period_ms: 60000 } });
  assert.equal(limited["RateLimit-Policy"], '"account";q=100;w=60');
  assert.equal(limited.RateLimit, '"account";r=42;t=2');
  assert.equal(allowedHeaders({ ...base, rate_limit: null }).RateLimit, undefined);
});

test("denied: the body as is, X-Credits-Reason, Retry-After rounded up; others go to the app", () => {
  const body = { allowed: false, reason: "rate_limited", account: "acme", retry_after_ms: 1200 };
  const d = deniedResponse(new RateLimited("x", { status: 429, code: "rate_limited", body }));
  assert.equal(d.status, 429);
  assert.equal(d.body, body);
  assert.equal(d.headers["Retry-After"], "2");
  assert.equal(d.headers["X-Credits-Reason"], "rate_limited");
  assert.equal(deniedResponse(new Unauthorized("bad token", { status: 401 })), null);
  assert.equal(deniedResponse(new Error("bug")), null);
  assert.equal(deniedResponse(new InvalidRequest("bad account", { status: 422, code: "invalid_request" })).status, 422);
  const down = deniedResponse(new SidecarUnavailable("down"));
  assert.equal(down.status, 503);
  assert.equal(down.body.error.code, "credits_unavailable");
  assert.equal(deniedResponse(new SidecarUnavailable("down"), { failurePolicy: "fail_open" }), null);
});

test("the idempotency key is derived from a valid X-Request-Id, the account, route and nth check", async () => {
  const at = { account: "acme", method: "GET", path: "/one" };
  // the same keys as the Python middleware's (credit_sidecar.middleware.common.idempotency_key)
  assert.equal(await requestIdempotencyKey("req-1.a:b_c", at), "req-7323cad8e9c795f56af5c21ae84beb6b5b5b1742");
  assert.equal(await requestIdempotencyKey("req-1.a:b_c", { ...at, nth: 1 }), "req-57f921600475de44193682915474206fe974ec27");
  assert.notEqual(await requestIdempotencyKey("req-1.a:b_c", { ...at, path: "/two" }), "req-7323cad8e9c795f56af5c21ae84beb6b5b5b1742");
  assert.match(await requestIdempotencyKey("not valid!", at), /^[0-9a-f-]{36}$/);
  assert.match(await requestIdempotencyKey(undefined, at), /^[0-9a-f-]{36}$/);
  assert.match(await requestIdempotencyKey("x".repeat(129), at), /^[0-9a-f-]{36}$/);
});

test("route-cost patterns: method optional, * within a segment, /** any rest", () => {
  const cost = routeCostLookup({ "GET /v1/images": 10, "/v1/models/*:predict": 5, "POST /v1/files/**": 3 }, 1);
  assert.equal(cost("GET", "/v1/images"), 10);
  assert.equal(cost("POST", "/v1/images"), 1);
  assert.equal(cost("POST", "/v1/models/gpt:predict"), 5);
  assert.equal(cost("POST", "/v1/models/a/b:predict"), 1);
  assert.equal(cost("POST", "/v1/files/a/b/c"), 3);
  assert.equal(cost("POST", "/v1/files"), 3);
  assert.equal(cost("GET", "/v1/imagesx"), 1);
});
