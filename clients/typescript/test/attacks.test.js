// Hostile callers and chaos against the Express and Hono middleware on the real sidecar: a request
// id reused for other requests, two checks in one request, bad accounts and costs, a sidecar that
// answers garbage, a client gone before the hold is made. Never an allow uncharged, never a 409
// after a charge, never the app's 500, every hold closed.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import express from "express";
import { Hono } from "hono";

import * as ex from "../src/express.js";
import * as hono from "../src/hono.js";
import { account, admin, balanceOf, eventually, service } from "./helpers.js";

const who = (req) => req.get("x-account");
const constant = () => "api call"; // an app's own description: the same on every route

function expressApp(client) {
  const opts = { client, account: who, description: constant };
  const a = express();
  const ok = (req, res) => res.json({ ok: true });
  a.get("/a", ex.requireCredits(1, opts), ok);
  a.get("/b", ex.requireCredits(1, opts), ok);
  a.get("/both", ex.requireCredits(1, opts), ex.requireCredits(5, opts), ok);
  a.get("/cost", ex.requireCredits((req) => JSON.parse(req.query.c), opts), ok);
  a.get("/slow-stream", ex.meteredStream(30, { client, account: async (req) => {
    await new Promise((r) => setTimeout(r, 150)); // the client is gone by the time the hold is made
    return who(req);
  } }), (req, res) => res.end("late"));
  return a;
}

function honoApp(client) {
  const opts = { client, account: (c) => c.req.header("x-account"), description: constant };
  const a = new Hono();
  a.get("/a", hono.requireCredits(1, opts), (c) => c.json({ ok: true }));
  a.get("/b", hono.requireCredits(1, opts), (c) => c.json({ ok: true }));
  a.get("/both", hono.requireCredits(1, opts), hono.requireCredits(5, opts), (c) => c.json({ ok: true }));
  a.get("/cost", hono.requireCredits((c) => JSON.parse(c.req.query("c")), opts), (c) => c.json({ ok: true }));
  return a;
}

let expressServer;
let base;
before(async () => {
  expressServer = await new Promise((resolve) => {
    const s = expressApp(service()).listen(0, "127.0.0.1", () => resolve(s));
  });
  base = `http://127.0.0.1:${expressServer.address().port}`;
});
after(() => {
  expressServer.closeAllConnections();
  expressServer.close();
});

const kinds = {
  express: (path, headers) => fetch(base + path, { headers }),
  hono: (() => {
    const a = honoApp(service());
    return (path, headers) => a.request(path, { headers });
  })(),
};

for (const [kind, get] of Object.entries(kinds)) {
  test(`${kind}: one X-Request-Id on another route or account is a new charge, never a free pass`, async () => {
    const one = await account(100);
    const two = await account(100);
    const rid = `rid-${kind}-1`;
    assert.equal((await get("/a", { "x-account": one, "x-request-id": rid })).status, 200);
    const retry = await get("/a", { "x-account": one, "x-request-id": rid });
    assert.equal(retry.headers.get("x-credits-replayed"), "true");
    const other = await get("/b", { "x-account": one, "x-request-id": rid });
    assert.equal(other.status, 200);
    assert.equal(other.headers.get("x-credits-replayed"), "false");
    const another = await get("/a", { "x-account": two, "x-request-id": rid });
    assert.equal(another.headers.get("x-credits-replayed"), "false");
    assert.equal(await balanceOf(one), 98);
    assert.equal(await balanceOf(two), 99);
  });

  test(`${kind}: two checks in one request with an X-Request-Id each charge once, never a 409 after a charge`, async () => {
    const acct = await account(100);
    const first = await get("/both", { "x-account": acct, "x-request-id": `both-${kind}` });
    assert.equal(first.status, 200, await first.text());
    assert.equal(await balanceOf(acct), 94);
    const retry = await get("/both", { "x-account": acct, "x-request-id": `both-${kind}` });
    assert.equal(retry.status, 200);
    assert.equal(await balanceOf(acct), 94);
  });

  test(`${kind}: bad accounts are refused with the sidecar's status, never allowed, never a 500`, async () => {
    for (const bad of ["bad id", "x".repeat(300), "../admin"]) {
      const r = await get("/a", { "x-account": bad });
      assert.equal(r.status, 422, `${bad}: ${r.status}`);
      assert.equal((await r.json()).error.code, "invalid_request");
    }
  });

  test(`${kind}: bad costs from a cost function never charge, credit or allow`, async () => {
    const acct = await account(10);
    for (const c of ["-1", "1.5", String(2 ** 60), "true", '"3"']) {
      const r = await get(`/cost?c=${encodeURIComponent(c)}`, { "x-account": acct });
      assert.notEqual(r.status, 200, `cost ${c}`);
      assert.ok(r.status < 500, `cost ${c}: ${r.status}`);
    }
    assert.equal(await balanceOf(acct), 10);
  });
}

test("express: a client gone before the hold is made still has the hold released", async () => {
  const acct = await account(100);
  await new Promise((resolve) => {
    const req = http.get(`${base}/slow-stream`, { headers: { "x-account": acct } });
    req.on("error", () => resolve());
    setTimeout(() => {
      req.destroy();
      resolve();
    }, 30);
  });
  await new Promise((r) => setTimeout(r, 300));
  await eventually(async () => (await admin.balance(acct)).held === 0 && (await balanceOf(acct)) === 100);
});
