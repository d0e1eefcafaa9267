import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { Hono } from "hono";
import { stream } from "hono/streaming";
import { serve } from "@hono/node-server";

import { meteredStream, requireCredits, routeCosts } from "../src/hono.js";
import { account, admin, balanceOf, deadUrl, eventually, service } from "./helpers.js";

const accountOf = (c) => c.req.header("x-account");

function app(client) {
  const opts = { client, account: accountOf };
  const a = new Hono();
  a.get("/free", (c) => c.json({ free: true }));
  a.get("/one", requireCredits(1, opts), (c) => c.json({ charged: c.get("credits").cost }));
  a.get("/ten", requireCredits(10, opts), (c) => c.json({ charged: c.get("credits").cost }));
  a.use("/table/*", routeCosts({ "GET /table/cheap": 2, "/table/dear/*": 7, "/table/free": 0 }, { ...opts, default: 1 }));
  a.get("/table/*", (c) => c.json({ cost: c.get("credits")?.cost ?? 0 }));
  a.get("/stream", meteredStream(50, opts), (c) =>
    stream(c, async (s) => {
      const n = Number(c.req.query("n") ?? 5);
      for (let i = 0; i < n; i++) {
        await s.write(`token${i} `);
        c.get("credits").add(1);
        await s.sleep(5);
      }
    }),
  );
  a.get("/endless", meteredStream(40, opts), (c) =>
    stream(c, async (s) => {
      let open = true;
      s.onAbort(() => {
        open = false;
      });
      while (open) {
        await s.write("token ");
        c.get("credits").add(1);
        await s.sleep(10);
      }
    }),
  );
  return a;
}

function listen(a) {
  return new Promise((resolve) => {
    const server = serve({ fetch: a.fetch, port: 0, hostname: "127.0.0.1" }, () => resolve(server));
  });
}

function close(server) {
  server.closeAllConnections?.();
  return new Promise((resolve) => server.close(resolve));
}

let server;
let base;
before(async () => {
  server = await listen(app(service()));
  base = `http://127.0.0.1:${server.address().port}`;
});
after(() => close(server));

const get = (path, acct, headers = {}) => fetch(base + path, { headers: { "x-account": acct, ...headers } });

test("hono: a free route charges nothing; paid routes charge and set X-Credits-*", async () => {
  const acct = await account(100);
  const free = await get("/free", acct);
  assert.equal(free.headers.get("x-credits-balance"), null);
  const one = await get("/one", acct);
  assert.equal(one.status, 200);
  assert.deepEqual(await one.json(), { charged: 1 });
  assert.equal(one.headers.get("x-credits-account"), acct);
  assert.equal(one.headers.get("x-credits-balance"), "99");
  assert.equal(one.headers.get("x-credits-cost"), "1");
  assert.match(one.headers.get("x-credits-transaction"), /^tx_/);
  assert.equal(one.headers.get("x-credits-replayed"), "false");
  assert.equal((await get("/ten", acct)).headers.get("x-credits-balance"), "89");
  assert.equal(await balanceOf(acct), 89);
});

test("hono: the same X-Request-Id is charged once", async () => {
  const acct = await account(100);
  const id = `req-${randomUUID()}`;
  await get("/ten", acct, { "x-request-id": id });
  const again = await get("/ten", acct, { "x-request-id": id });
  assert.equal(again.headers.get("x-credits-replayed"), "true");
  assert.equal(await balanceOf(acct), 90);
});

test("hono: 402 and 429 answer the sidecar's body and headers", async () => {
  const poor = await account(5);
  const r402 = await get("/ten", poor);
  assert.equal(r402.status, 402);
  assert.deepEqual(
    { ...(await r402.json()), account: undefined },
    { allowed: false, reason: "insufficient_credits", account: undefined, balance: 5, required: 10 },
  );
  assert.equal(r402.headers.get("x-credits-reason"), "insufficient_credits");
  assert.equal(r402.headers.get("x-credits-balance"), "5");
  const limited = await account(100, { rate_limit: { requests: 1, period_ms: 30000 } });
  await get("/one", limited);
  const r429 = await get("/one", limited);
  assert.equal(r429.status, 429);
  const body = await r429.json();
  assert.ok(body.retry_after_ms > 0);
  assert.equal(r429.headers.get("retry-after"), String(Math.ceil(body.retry_after_ms / 1000)));
  assert.equal((await fetch(base + "/one")).status, 401);
});

test("hono: a route-cost table prices by method and path", async () => {
  const acct = await account(100);
  assert.equal((await (await get("/table/cheap", acct)).json()).cost, 2);
  assert.equal((await (await get("/table/dear/x", acct)).json()).cost, 7);
  assert.equal((await (await get("/table/free", acct)).json()).cost, 0);
  assert.equal((await (await get("/table/other", acct)).json()).cost, 1);
  assert.equal(await balanceOf(acct), 90);
});

test("hono: fail_closed answers 503; fail_open lets the request through uncharged", async () => {
  const url = await deadUrl();
  for (const [policy, status] of [["fail_closed", 503], ["fail_open", 200]]) {
    const s = await listen(app(service({ url, failurePolicy: policy, retries: 1, backoffMs: 1 })));
    try {
      const r = await fetch(`http://127.0.0.1:${s.address().port}/one`, { headers: { "x-account": "ts-any" } });
      assert.equal(r.status, status, policy);
      if (status === 503) assert.equal((await r.json()).error.code, "credits_unavailable");
      else assert.equal(r.headers.get("x-credits-reason"), "fail_open");
    } finally {
      await close(s);
    }
  }
});

test("hono: a streamed response is settled by the tokens counted", async () => {
  const acct = await account(100);
  const r = await get("/stream?n=6", acct);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("x-credits-hold"), /.+/);
  assert.equal((await r.text()).split(" ").filter(Boolean).length, 6);
  const b = await eventually(async () => {
    const b = await admin.balance(acct);
    return b.held === 0 && b;
  });
  assert.equal(b.balance, 94);
  assert.equal((await admin.holds(acct)).holds[0].charged, 6);
});

test("hono: a stream the client leaves is released (the stream's abort), nothing charged", async () => {
  const acct = await account(100);
  const r = await get("/endless", acct);
  const reader = r.body.getReader();
  await reader.read();
  assert.equal((await admin.balance(acct)).held, 40);
  await reader.cancel();
  const b = await eventually(async () => {
    const b = await admin.balance(acct);
    return b.held === 0 && b;
  });
  assert.equal(b.balance, 100);
  assert.equal((await admin.holds(acct)).holds[0].state, "released");
});
