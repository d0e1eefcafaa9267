// The client against the sidecar's own /openapi.json: every request it makes is an operation of
// the spec with a body its schema accepts (known fields, required ones sent), and every
// operation of the tags the client covers is called by it (or listed here as not covered).
import { test } from "node:test";
import assert from "node:assert/strict";
import { CreditSidecar } from "../src/index.js";
import { SIDECAR_URL, quiet } from "./helpers.js";

// Deliberately not covered: the spec's other families (billing, operations, the portal's own
// API, the proxies' endpoints other than /auth/forward, pages and probes).
const COVERED_TAGS = new Set(["checks", "holds", "accounts", "reads", "keys", "plans", "tokens"]);
const ALSO_COVERED = new Set([
  "get /auth/forward",
  "get /openapi.json",
  "post /v1/accounts/{account}/portal-sessions",
  "delete /v1/accounts/{account}/portal-sessions",
  "delete /v1/portal-sessions",
]);

function recorder() {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ method: init.method, url: new URL(url), body: init.body ? JSON.parse(init.body) : undefined });
    // allowed: true, as a check answers (a check refuses any other 200)
    return new Response('{"allowed": true}', { status: 200, headers: { "content-type": "application/json" } });
  };
  return { calls, client: new CreditSidecar({ url: "http://sidecar.test", token: "t", fetch, logger: quiet }) };
}

async function everyCall(c) {
  const a = "acme";
  await c.check({ account: a, cost: 1, dryRun: true, description: "d", metadata: { x: 1 } });
  await c.hold({ account: a, amount: 5, ttlMs: 1000, description: "d", metadata: {} });
  await c.settle({ account: a, holdId: "h1", amount: 3, description: "d" });
  await c.release({ account: a, holdId: "h1", description: "d" });
  await c.withHold(a, 5, (h) => h.settle(2));
  await c.reportUsage({ account: a, cost: 2, description: "d", metadata: {} });
  await c.balance(a);
  await c.authorize({ apiKey: "csk_x", method: "POST", path: "/v1/things" });
  await c.checkCompatibility().catch(() => {});
  await c.putAccount(a, { overdraft_limit: 0, rate_limit: { requests: 1 } });
  await c.patchAccount(a, { low_balance_threshold: 10 });
  await c.listAccounts({ limit: 10, prefix: "a" });
  await c.transactions(a, { limit: 5 });
  await c.usage(a, { by: "key" });
  await c.holds(a);
  await c.grant(a, { credits: 1, expiresAt: "2030-01-01T00:00:00Z", priority: 1, source: "promo", description: "d", metadata: {}, reason: "r" });
  await c.refund({ account: a, transactionId: "tx_1", amount: 1, reason: "r", description: "d" });
  await c.createKey(a, { name: "n", rate_limit: { requests: 1 }, spend_limit: { credits: 1 } });
  await c.listKeys(a);
  await c.revokeKey("key_1");
  await c.setSpendLimit(a, { credits: 10, interval: "day" });
  await c.setKeySpendLimit("key_1", null);
  await c.putPlan("p", { name: "P", allowance: { credits: 1, interval: "month" } });
  await c.getPlan("p");
  await c.listPlans();
  await c.deletePlan("p");
  await c.createPortalSession(a, { return_url: "https://app.test/", locale: "en", sections: ["balance"] });
  await c.revokePortalSessions(a);
  await c.revokePortalSessions();
  await c.createToken({ name: "n", scopes: ["read"], account_prefix: "a" });
  await c.listTokens();
  await c.getToken("t1");
  await c.rotateToken("t1", { graceSeconds: 1 });
  await c.revokeToken("t1");
}

function matcher(spec) {
  const ops = [];
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (!["get", "post", "put", "patch", "delete"].includes(method)) continue;
      const rx = new RegExp("^" + path.replace(/\{[^}]+\}/g, "[^/]+") + "$");
      ops.push({ key: `${method} ${path}`, method, rx, op });
    }
  }
  return ops;
}

function resolve(spec, schema) {
  while (schema?.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
  return schema;
}

test("contract: each request the client makes matches an operation of /openapi.json", async () => {
  const spec = await (await fetch(`${SIDECAR_URL}/openapi.json`)).json();
  const ops = matcher(spec);
  const { calls, client } = recorder();
  await everyCall(client);
  const called = new Set();
  for (const call of calls) {
    const method = call.method.toLowerCase();
    const found = ops.find((o) => o.method === method && o.rx.test(call.url.pathname));
    assert.ok(found, `${call.method} ${call.url.pathname} is not in the spec`);
    called.add(found.key);
    const params = new Set((found.op.parameters ?? []).filter((p) => p.in === "query").map((p) => p.name));
    for (const name of call.url.searchParams.keys()) assert.ok(params.has(name), `${found.key}: query ${name}`);
    const schema = resolve(spec, found.op.requestBody?.content?.["application/json"]?.schema);
    if (call.body === undefined) {
      assert.ok(!found.op.requestBody?.required, `${found.key} needs a body`);
      continue;
    }
    assert.ok(schema, `${found.key} takes no body`);
    const known = new Set(Object.keys(schema.properties ?? {}));
    for (const field of Object.keys(call.body)) assert.ok(known.has(field), `${found.key}: unknown field ${field}`);
    for (const field of schema.required ?? []) assert.ok(field in call.body, `${found.key}: ${field} missing`);
  }
  const missing = ops
    .filter((o) => (o.op.tags ?? []).some((t) => COVERED_TAGS.has(t)) || ALSO_COVERED.has(o.key))
    .map((o) => o.key)
    .filter((k) => !called.has(k));
  assert.deepEqual(missing, [], "operations of the covered families the client never calls");
});
