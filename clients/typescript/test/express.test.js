import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import express from "express";

import { meteredStream, requireCredits, routeCosts } from "../src/express.js";
import { account, admin, balanceOf, deadUrl, eventually, service } from "./helpers.js";

const accountOf = (req) => req.get("x-account");

function app(client) {
  const opts = { client, account: accountOf };
  const a = express();
  a.get("/free", (req, res) => res.json({ free: true }));
  a.get("/one", requireCredits(1, opts), (req, res) => res.json({ charged: req.credits.cost }));
  a.get("/ten", requireCredits(10, opts), (req, res) => res.json({ charged: req.credits.cost }));
  a.get("/priced", requireCredits((req) => Number(req.query.cost), opts), (req, res) => res.json({ ok: true }));
  a.use("/table", routeCosts({ "GET /table/cheap": 2, "/table/dear/*": 7, "/table/free": 0 }, { ...opts, default: 1 }));
  a.get("/table/*rest", (req, res) => res.json({ cost: req.credits?.cost ?? 0 }));
  a.get("/stream", meteredStream(50, opts), async (req, res) => {
    const n = Number(req.query.n ?? 5);
    res.setHeader("content-type", "text/plain");
    for (let i = 0; i < n; i++) {
      res.write(`token${i} `);
      req.credits.add(1);
      await new Promise((r) => setTimeout(r, 5));
    }
    res.end();
  });
  a.get("/endless", meteredStream(40, opts), (req, res) => {
    res.setHeader("content-type", "text/plain");
    const timer = setInterval(() => {
      res.write("token ");
      req.credits.add(1);
    }, 10);
    res.on("close", () => clearInterval(timer));
  });
  return a;
}

async function listen(a) {
  return new Promise((resolve) => {
    const server = a.listen(0, "127.0.0.1", () => resolve(server));
  });
}

let server;
let base;
before(async () => {
  server = await listen(app(service()));
  base = `http://127.0.0.1:${server.address().port}`;
});
after(() => {
  server.closeAllConnections();
  server.close();
});

const get = (path, acct, headers = {}) => fetch(base + path, { headers: { "x-account": acct, ...headers } });

test("express: a free route charges nothing and sets no credit headers", async () => {
  const acct = await account(10);
  const r = await get("/free", acct);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-credits-balance"), null);
  assert.equal(await balanceOf(acct), 10);
});

test("express: 1- and 10-credit routes charge and set the X-Credits-* headers", async () => {
  const acct = await account(100);
  const one = await get("/one", acct);
  assert.equal(one.status, 200);
  assert.deepEqual(await one.json(), { charged: 1 });
  assert.equal(one.headers.get("x-credits-account"), acct);
  assert.equal(one.headers.get("x-credits-balance"), "99");
  assert.equal(one.headers.get("x-credits-cost"), "1");
  assert.match(one.headers.get("x-credits-transaction"), /^tx_/);
  assert.equal(one.headers.get("x-credits-replayed"), "false");
  const ten = await get("/ten", acct);
  assert.equal(ten.headers.get("x-credits-balance"), "89");
  assert.equal(await balanceOf(acct), 89);
});

test("express: a retried request (same X-Request-Id) is charged once and marked replayed", async () => {
  const acct = await account(100);
  const id = `req-${randomUUID()}`;
  const first = await get("/ten", acct, { "x-request-id": id });
  const again = await get("/ten", acct, { "x-request-id": id });
  assert.equal(first.headers.get("x-credits-replayed"), "false");
  assert.equal(again.status, 200);
  assert.equal(again.headers.get("x-credits-replayed"), "true");
  assert.equal(await balanceOf(acct), 90);
  // the id on another route is another request, charged (as the Python middleware does)
  const other = await get("/one", acct, { "x-request-id": id });
  assert.equal(other.headers.get("x-credits-replayed"), "false");
  assert.equal(await balanceOf(acct), 89);
  // the same route at another cost is a conflict, passed on as the sidecar's 409, not charged
  assert.equal((await get("/priced?cost=2", acct, { "x-request-id": id })).status, 200);
  const conflict = await get("/priced?cost=3", acct, { "x-request-id": id });
  assert.equal(conflict.status, 409);
  assert.equal((await conflict.json()).error.code, "idempotency_conflict");
  assert.equal(await balanceOf(acct), 87);
});

test("express: 402 answers the sidecar's JSON body with X-Credits-Reason and the balance", async () => {
  const acct = await account(5);
  const r = await get("/ten", acct);
  assert.equal(r.status, 402);
  const body = await r.json();
  assert.equal(body.allowed, false);
  assert.equal(body.reason, "insufficient_credits");
  assert.equal(body.balance, 5);
  assert.equal(body.required, 10);
  assert.equal(r.headers.get("x-credits-reason"), "insufficient_credits");
  assert.equal(r.headers.get("x-credits-balance"), "5");
  assert.equal(await balanceOf(acct), 5);
});

test("express: 429 answers Retry-After in seconds and the retry time in the body", async () => {
  const acct = await account(100, { rate_limit: { requests: 1, period_ms: 30000 } });
  assert.equal((await get("/one", acct)).status, 200);
  const r = await get("/one", acct);
  assert.equal(r.status, 429);
  const body = await r.json();
  assert.equal(body.reason, "rate_limited");
  assert.ok(body.retry_after_ms > 0);
  assert.equal(r.headers.get("retry-after"), String(Math.ceil(body.retry_after_ms / 1000)));
  assert.equal(r.headers.get("x-credits-reason"), "rate_limited");
});

test("express: an allowed request carries the IETF RateLimit fields of the sidecar's tightest limiter", async () => {
  const acct = await account(100, { rate_limit: { requests: 3, period_ms: 30000 } });
  const first = await get("/one", acct);
  assert.equal(first.status, 200);
  assert.equal(first.headers.get("ratelimit-policy"), '"account";q=3;w=30');
  assert.equal(first.headers.get("ratelimit"), '"account";r=2;t=10');
  const second = await get("/one", acct);
  assert.equal(second.headers.get("ratelimit"), '"account";r=1;t=20');
  const plain = await get("/one", await account(100));
  assert.equal(plain.status, 200);
  assert.equal(plain.headers.get("ratelimit"), null);
});

test("express: no account is a 401; a cost per request from a function", async () => {
  const r = await fetch(base + "/one");
  assert.equal(r.status, 401);
  const acct = await account(100);
  assert.equal((await get("/priced?cost=13", acct)).status, 200);
  assert.equal(await balanceOf(acct), 87);
});

test("express: a route-cost table prices by method and path", async () => {
  const acct = await account(100);
  assert.equal((await (await get("/table/cheap", acct)).json()).cost, 2);
  assert.equal((await (await get("/table/dear/x", acct)).json()).cost, 7);
  assert.equal((await (await get("/table/free", acct)).json()).cost, 0);
  assert.equal((await (await get("/table/other", acct)).json()).cost, 1);
  assert.equal(await balanceOf(acct), 90);
});

test("express: fail_closed answers 503 credits_unavailable; fail_open lets the request through", async () => {
  const url = await deadUrl();
  for (const [policy, status] of [["fail_closed", 503], ["fail_open", 200]]) {
    const s = await listen(app(service({ url, failurePolicy: policy, retries: 1, backoffMs: 1 })));
    try {
      const r = await fetch(`http://127.0.0.1:${s.address().port}/ten`, { headers: { "x-account": "ts-any" } });
      assert.equal(r.status, status, policy);
      if (status === 503) {
        assert.equal((await r.json()).error.code, "credits_unavailable");
      } else {
        assert.equal(r.headers.get("x-credits-reason"), "fail_open");
        assert.deepEqual(await r.json(), { charged: 10 }); // asked, not charged: nothing was
      }
    } finally {
      s.closeAllConnections();
      s.close();
    }
  }
});

test("express: a streamed response is settled by the tokens counted", async () => {
  const acct = await account(100);
  const r = await get("/stream?n=7", acct);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("x-credits-hold"), /.+/);
  assert.equal((await r.text()).split(" ").filter(Boolean).length, 7);
  const b = await eventually(async () => {
    const b = await admin.balance(acct);
    return b.held === 0 && b;
  });
  assert.equal(b.balance, 93);
  const holds = (await admin.holds(acct)).holds;
  assert.equal(holds[0].state, "settled");
  assert.equal(holds[0].charged, 7);
});

test("express: a stream the client leaves is released, nothing charged", async () => {
  const acct = await account(100);
  const r = await get("/endless", acct, {}).catch(() => null);
  assert.ok(r);
  const reader = r.body.getReader();
  await reader.read();
  assert.equal((await admin.balance(acct)).held, 40); // held while streaming
  await reader.cancel();
  const b = await eventually(async () => {
    const b = await admin.balance(acct);
    return b.held === 0 && b;
  });
  assert.equal(b.balance, 100);
  assert.equal((await admin.holds(acct)).holds[0].state, "released");
});

test("express: a stream refused up front answers 402 without holding", async () => {
  const acct = await account(10);
  const r = await get("/stream", acct);
  assert.equal(r.status, 402);
  assert.equal((await r.json()).reason, "insufficient_credits");
  assert.equal((await admin.balance(acct)).held, 0);
});

test("express: the app's own wrong token is the app's error (500), never the caller's 401", async () => {
  const a = app(service({ token: "not-the-service-token" }));
  const errors = [];
  a.use((err, req, res, next) => {
    errors.push(err);
    res.status(500).json({ error: { code: "internal" } });
  });
  const s = await listen(a);
  try {
    const r = await fetch(`http://127.0.0.1:${s.address().port}/one`, { headers: { "x-account": "ts-any" } });
    assert.equal(r.status, 500);
    assert.equal(errors[0].name, "Unauthorized");
  } finally {
    s.closeAllConnections();
    s.close();
  }
});
