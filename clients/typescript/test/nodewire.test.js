// The Node wire (src/nodewire.js) under hostile use, on the real sidecar: many clients in one
// process share kept-alive connections (as fetch's global pool did), never one idle socket each.

import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";

import { CreditSidecar, InvalidRequest } from "../src/index.js";
import { ADMIN_TOKEN, SERVICE_TOKEN, account, balanceOf, droppingRelay, quiet, service } from "./helpers.js";

test("nodewire: clients made one after another share one kept-alive connection", async () => {
  const id = await account(5);
  const relay = await droppingRelay(process.env.SIDECAR_URL, 0);
  try {
    for (let i = 0; i < 20; i++) {
      const client = new CreditSidecar({ url: relay.url, token: ADMIN_TOKEN, logger: quiet });
      assert.equal((await client.balance(id)).balance, 5);
    }
    assert.equal(relay.stats.connections, 1);
  } finally {
    await relay.close();
  }
});

test("a header that cannot be sent is an InvalidRequest: never sent, nor let through under fail_open", async () => {
  const relay = await droppingRelay(process.env.SIDECAR_URL, 0);
  try {
    for (const token of ["t\r\nX-Evil: 1", "t\x00", "t\x7f", "t€"]) {
      const client = new CreditSidecar({ url: relay.url, token, logger: quiet, failurePolicy: "fail_open" });
      await assert.rejects(client.check("acct", 1), (e) => e instanceof InvalidRequest && e.code === "invalid_header");
    }
    assert.equal(relay.stats.connections, 0);
  } finally {
    await relay.close();
  }
});

test("authorize: a decoded path is sent percent-encoded: charged, or refused (a control) never unavailable", async () => {
  const id = await account(10);
  const { key } = await new CreditSidecar({ url: process.env.SIDECAR_URL, token: ADMIN_TOKEN, logger: quiet }).createKey(id, { name: "k" });
  const client = new CreditSidecar({ url: process.env.SIDECAR_URL, token: SERVICE_TOKEN, logger: quiet });
  for (const path of ["/é", "/a b"]) assert.equal((await client.authorize({ apiKey: key, path })).allowed, true);
  for (const path of ["/a\x00", "/a\r\nX-Credits-Cost: 0"]) {
    await assert.rejects(client.authorize({ apiKey: key, path }), (e) => e instanceof InvalidRequest && e.status === 400);
  }
  assert.equal(await balanceOf(id), 8);
});

test("the caller's signal stops a call on the Node wire at once, with its reason, and no retry", async () => {
  let requests = 0;
  const silent = http.createServer(() => (requests += 1)); // accepts, never answers
  await new Promise((r) => silent.listen(0, "127.0.0.1", r));
  try {
    const c = service({ url: `http://127.0.0.1:${silent.address().port}`, timeoutMs: 5000, retries: 3 });
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(new Error("the app gave up")), 50);
    await assert.rejects(c.check({ account: "ts-x", cost: 1, signal: ctl.signal }), /the app gave up/);
    assert.equal(requests, 1);
    const already = new AbortController();
    already.abort(new Error("before it started"));
    await assert.rejects(c.check({ account: "ts-x", cost: 1, signal: already.signal }), /before it started/);
    assert.equal(requests, 1);
  } finally {
    silent.closeAllConnections();
    silent.close();
  }
});
