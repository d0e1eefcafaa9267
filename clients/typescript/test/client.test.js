import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { randomUUID } from "node:crypto";

import {
  CreditSidecar,
  CreditSidecarError,
  Conflict,
  Forbidden,
  IncompatibleSidecar,
  InsufficientCredits,
  RateLimited,
  SidecarUnavailable,
  Meter,
  SpendLimitReached,
  Unauthorized,
  lateSettles,
  settleLater,
  SUPPORTED_SIDECAR,
  VERSION,
  satisfies,
} from "../src/index.js";
import {
  ADMIN_TOKEN,
  SIDECAR_URL,
  SERVICE_TOKEN,
  account,
  admin,
  balanceOf,
  deadUrl,
  droppingRelay,
  switchableRelay,
  quiet,
  service,
} from "./helpers.js";

const client = service();

test("an allowed check charges the cost and answers the balance after it", async () => {
  const acct = await account(100);
  const r = await client.check({ account: acct, cost: 7, description: "GET /v1/things", metadata: { route: "things" } });
  assert.equal(r.allowed, true);
  assert.equal(r.account, acct);
  assert.equal(r.balance, 93);
  assert.equal(r.cost, 7);
  assert.match(r.transaction_id, /.+/);
  assert.equal(r.replayed, false);
  assert.equal(await balanceOf(acct), 93);
});

test("a dry run answers without charging", async () => {
  const acct = await account(10);
  const r = await client.check({ account: acct, cost: 4, dryRun: true });
  assert.equal(r.allowed, true);
  assert.equal(r.transaction_id, null);
  assert.equal(r.balance, 6);
  assert.equal(await balanceOf(acct), 10);
});

test("the same idempotency key is charged once and answered as a replay", async () => {
  const acct = await account(50);
  const key = `req-${randomUUID()}`;
  const a = await client.check({ account: acct, cost: 5, idempotencyKey: key });
  const b = await client.check({ account: acct, cost: 5, idempotencyKey: key });
  assert.equal(a.replayed, false);
  assert.equal(b.replayed, true);
  assert.equal(b.transaction_id, a.transaction_id);
  assert.equal(await balanceOf(acct), 45);
  // the same key on another request is a conflict, not a free pass
  await assert.rejects(client.check({ account: acct, cost: 6, idempotencyKey: key }), (e) => {
    assert.ok(e instanceof Conflict);
    assert.equal(e.status, 409);
    assert.equal(e.code, "idempotency_conflict");
    return true;
  });
});

test("402: InsufficientCredits carries the balance and the credits required", async () => {
  const acct = await account(3);
  await assert.rejects(client.check({ account: acct, cost: 5 }), (e) => {
    assert.ok(e instanceof InsufficientCredits);
    assert.ok(e instanceof CreditSidecarError);
    assert.equal(e.status, 402);
    assert.equal(e.code, "insufficient_credits");
    assert.equal(e.balance, 3);
    assert.equal(e.required, 5);
    assert.equal(e.body.allowed, false);
    return true;
  });
  assert.equal(await balanceOf(acct), 3);
});

test("402: SpendLimitReached once the account's spending limit would be passed", async () => {
  const acct = await account(100, { spend_limit: { credits: 10, interval: "day" } });
  await client.check({ account: acct, cost: 8 });
  await assert.rejects(client.check({ account: acct, cost: 5 }), (e) => {
    assert.ok(e instanceof SpendLimitReached);
    assert.equal(e.status, 402);
    assert.equal(e.code, "spend_limit");
    assert.equal(e.spent, 8);
    assert.equal(e.spendLimit.credits, 10);
    assert.match(e.windowEndsAt, /Z$/);
    return true;
  });
  await admin.setSpendLimit(acct, null);
  await client.check({ account: acct, cost: 5 });
});

test("429: RateLimited carries the retry time", async () => {
  const acct = await account(100, { rate_limit: { requests: 1, period_ms: 60000 } });
  await client.check({ account: acct, cost: 1 });
  await assert.rejects(client.check({ account: acct, cost: 1 }), (e) => {
    assert.ok(e instanceof RateLimited);
    assert.equal(e.status, 429);
    assert.equal(e.code, "rate_limited");
    assert.ok(e.retryAfterMs > 0 && e.retryAfterMs <= 60000, String(e.retryAfterMs));
    return true;
  });
  assert.equal(await balanceOf(acct), 99);
});

test("401 and 403: a wrong token is Unauthorized, the service token on an admin call Forbidden", async () => {
  const acct = await account(1);
  const wrong = new CreditSidecar({ url: SIDECAR_URL, token: "not-the-token", logger: quiet });
  await assert.rejects(wrong.check({ account: acct, cost: 1 }), Unauthorized);
  await assert.rejects(client.grant(acct, { credits: 5, reason: "test" }), (e) => {
    assert.ok(e instanceof Forbidden);
    assert.equal(e.status, 403);
    return true;
  });
  // admin calls take an adminToken besides the service token
  const both = new CreditSidecar({ url: SIDECAR_URL, token: SERVICE_TOKEN, adminToken: ADMIN_TOKEN, logger: quiet });
  await both.grant(acct, { credits: 5, reason: "test" });
  assert.equal((await both.balance(acct)).balance, 6);
});

test("a retry after a dropped connection reuses the idempotency key: charged once", async () => {
  const acct = await account(100);
  const relay = await droppingRelay(SIDECAR_URL, 1);
  try {
    const through = service({ url: relay.url, backoffMs: 10 });
    const r = await through.check({ account: acct, cost: 10 });
    assert.equal(relay.stats.dropped, 1);
    assert.ok(relay.stats.connections >= 2);
    assert.equal(r.replayed, true, "the retry is answered as the first attempt was");
    assert.equal(r.balance, 90);
    assert.equal(await balanceOf(acct), 90);
    const txns = (await admin.holds(acct)).holds; // no stray holds either
    assert.equal(txns.length, 0);
  } finally {
    await relay.close();
  }
});

test("a dropped hold and a dropped usage report are applied once too", async () => {
  const acct = await account(100);
  for (const call of [
    (c) => c.hold({ account: acct, amount: 30 }),
    (c) => c.reportUsage({ account: acct, cost: 5 }),
  ]) {
    const relay = await droppingRelay(SIDECAR_URL, 1);
    try {
      const answer = await call(service({ url: relay.url, backoffMs: 10 }));
      assert.equal(relay.stats.dropped, 1);
      assert.equal(answer.replayed, true);
    } finally {
      await relay.close();
    }
  }
  const b = await admin.balance(acct);
  assert.equal(b.held, 30);
  assert.equal(b.balance, 65); // 100 - 30 held - 5 used
});

test("no retry without a retryable failure: a 4xx is answered at once", async () => {
  let calls = 0;
  const counting = service({ fetch: (...a) => ((calls += 1), fetch(...a)) });
  await assert.rejects(counting.check({ account: "ts-missing-" + randomUUID().slice(0, 8), cost: 0 }));
  assert.equal(calls, 1);
});

test("fail_closed: an unreachable sidecar is SidecarUnavailable after bounded retries", async () => {
  let calls = 0;
  const url = await deadUrl();
  const closed = service({ url, retries: 2, backoffMs: 5, fetch: (...a) => ((calls += 1), fetch(...a)) });
  await assert.rejects(closed.check({ account: "ts-x", cost: 1 }), (e) => {
    assert.ok(e instanceof SidecarUnavailable);
    assert.equal(e.code, "unreachable");
    return true;
  });
  assert.equal(calls, 3);
});

test("a timeout per attempt: a sidecar that never answers is SidecarUnavailable(timeout)", async () => {
  const silent = http.createServer(() => {}); // accepts, never answers
  await new Promise((r) => silent.listen(0, "127.0.0.1", r));
  try {
    const slow = service({ url: `http://127.0.0.1:${silent.address().port}`, timeoutMs: 100, retries: 1, backoffMs: 1 });
    const started = Date.now();
    await assert.rejects(slow.check({ account: "ts-x", cost: 1 }), (e) => e instanceof SidecarUnavailable && e.code === "timeout");
    assert.ok(Date.now() - started < 2000);
  } finally {
    silent.closeAllConnections();
    silent.close();
  }
});

test("fail_open: an unreachable sidecar lets the check through uncharged, with a warning", async () => {
  const warnings = [];
  const open = new CreditSidecar({
    url: await deadUrl(),
    token: SERVICE_TOKEN,
    failurePolicy: "fail_open",
    retries: 1,
    backoffMs: 1,
    logger: { warn: (m) => warnings.push(m) },
  });
  const r = await open.check({ account: "ts-x", cost: 1 });
  assert.equal(r.allowed, true);
  assert.equal(r.fail_open, true);
  assert.equal(r.transaction_id, null);
  assert.equal(warnings.length, 1);
  // the work runs uncharged through a hold too
  const value = await open.withHold("ts-x", 10, async (h) => (h.settle(3), "done"));
  assert.equal(value, "done");
  // a denial is never turned into an allow
  const acct = await account(0);
  const reachable = service({ failurePolicy: "fail_open" });
  await assert.rejects(reachable.check({ account: acct, cost: 1 }), InsufficientCredits);
});

test("holds: hold, settle less (the rest goes back), release", async () => {
  const acct = await account(100);
  const h = await client.hold({ account: acct, amount: 40, ttlMs: 60000 });
  assert.equal(h.state, "active");
  assert.equal((await admin.balance(acct)).available, 60);
  const s = await client.settle({ account: acct, holdId: h.hold_id, amount: 25 });
  assert.equal(s.state, "settled");
  assert.equal(s.charged, 25);
  assert.equal(s.balance, 75);
  const h2 = await client.hold({ account: acct, amount: 10 });
  const r = await client.release({ account: acct, holdId: h2.hold_id });
  assert.equal(r.state, "released");
  assert.equal(await balanceOf(acct), 75);
  await assert.rejects(client.hold({ account: acct, amount: 1000 }), InsufficientCredits);
  await assert.rejects(client.settle({ account: acct, holdId: h2.hold_id, amount: 1 }), Conflict);
});

test("withHold settles what was set, the estimate when nothing was, and releases on a throw", async () => {
  const acct = await account(100);
  const out = await client.withHold(acct, 20, async (h) => {
    h.add(3);
    h.add(4);
    return "ok";
  });
  assert.equal(out, "ok");
  assert.equal(await balanceOf(acct), 93);
  await client.withHold(acct, 20, async () => {});
  assert.equal(await balanceOf(acct), 73);
  await assert.rejects(
    client.withHold(acct, 20, async (h) => {
      h.settle(5);
      throw new Error("the work failed");
    }),
    /the work failed/,
  );
  const b = await admin.balance(acct);
  assert.equal(b.balance, 73);
  assert.equal(b.held, 0);
});

test("reportUsage is never refused: what the balance cannot cover becomes debt", async () => {
  const acct = await account(5);
  const u = await client.reportUsage({ account: acct, cost: 8 });
  assert.equal(u.debt_added, 3);
  const b = await admin.balance(acct);
  assert.equal(b.debt, 3);
});

test("admin: keys, a revoked key refused at the gate, key spend limits", async () => {
  const acct = await account(100);
  const created = await admin.createKey(acct, { name: "prod", idempotencyKey: `k-${randomUUID()}` });
  assert.match(created.key, /^csk_/);
  const ok = await client.authorize({ apiKey: created.key, method: "GET", path: "/v1/things" });
  assert.equal(ok.account, acct);
  assert.equal(ok.cost, 1);
  assert.equal(ok.balance, 99);
  const limited = await admin.setKeySpendLimit(created.key_id, { credits: 50, interval: "month" });
  assert.equal(limited.spend_limit.credits, 50);
  const listed = await admin.listKeys(acct);
  assert.deepEqual(listed.keys.map((k) => k.key_id), [created.key_id]);
  const revoked = await admin.revokeKey(created.key_id);
  assert.ok(revoked.revoked_at);
  await assert.rejects(client.authorize({ apiKey: created.key, path: "/v1/things" }), (e) => {
    assert.ok(e instanceof Unauthorized);
    assert.equal(e.code, "invalid_api_key");
    return true;
  });
  assert.equal(await balanceOf(acct), 99);
});

test("admin: accounts, plans, tokens, portal sessions", async () => {
  const acct = await account(0);
  const patched = await admin.patchAccount(acct, { overdraft_limit: 5 });
  assert.equal(patched.overdraft_limit, 5);
  const plan = `ts-plan-${randomUUID().slice(0, 8)}`;
  const p = await admin.putPlan(plan, { name: "Free", allowance: { credits: 100, interval: "month" } });
  assert.equal(p.plan, plan);
  assert.ok((await admin.listPlans()).plans.some((x) => x.plan === plan));
  assert.equal((await admin.getPlan(plan)).name, "Free");
  await admin.deletePlan(plan);
  const t = await admin.createToken({ name: "ts-read", scopes: ["read"], account_prefix: "ts-" });
  assert.ok(t.token);
  const reader = new CreditSidecar({ url: SIDECAR_URL, token: t.token, logger: quiet });
  assert.equal((await reader.balance(acct)).account, acct);
  await assert.rejects(reader.check({ account: acct, cost: 1 }), Forbidden);
  assert.ok((await admin.getToken(t.token_id)).scopes.includes("read"));
  assert.ok((await admin.listTokens()).tokens.some((x) => x.token_id === t.token_id));
  const rotated = await admin.rotateToken(t.token_id, { graceSeconds: 0 });
  assert.notEqual(rotated.token, t.token);
  await admin.revokeToken(t.token_id);
  await assert.rejects(reader.balance(acct), Unauthorized);
  const s = await admin.createPortalSession(acct, { sections: ["balance", "usage"] });
  assert.equal(s.account, acct);
  assert.match(s.url, /\/portal\/s\//);
  assert.deepEqual((await admin.revokePortalSessions(acct)).revoked, true);
});

test("versions: the sidecar's is supported; another is IncompatibleSidecar", async () => {
  assert.match(VERSION, /^\d+\.\d+\.\d+/);
  const c = await client.checkCompatibility();
  assert.ok(satisfies(c.version, SUPPORTED_SIDECAR));
  assert.equal(satisfies("0.2.0", ">=0.1.0 <0.2.0"), false);
  // a sidecar that says it is 9.0.0, and one without the route called
  const other = http.createServer((req, res) => {
    if (req.url === "/openapi.json") {
      res.setHeader("content-type", "application/json");
      return res.end(JSON.stringify({ openapi: "3.1.0", info: { title: "credit-sidecar", version: "9.0.0" } }));
    }
    res.statusCode = 404;
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ error: { code: "not_found", message: "no such route" } }));
  });
  await new Promise((r) => other.listen(0, "127.0.0.1", r));
  try {
    const old = service({ url: `http://127.0.0.1:${other.address().port}` });
    await assert.rejects(old.checkCompatibility(), (e) => e instanceof IncompatibleSidecar && /9\.0\.0/.test(e.message));
    await assert.rejects(old.reportUsage({ account: "a", cost: 1 }), (e) => e instanceof IncompatibleSidecar && /POST \/v1\/usage/.test(e.message));
  } finally {
    other.close();
  }
});

test("on Node the default wire is node:http with keep-alive: calls reuse one connection", async () => {
  let connections = 0;
  const upstream = new URL(SIDECAR_URL);
  // a counting relay: each request passed to the sidecar, each new connection counted
  const relay = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const up = http.request(
        { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode, r.headers);
          r.pipe(res);
        },
      );
      up.end(Buffer.concat(chunks));
    });
  });
  relay.on("connection", () => (connections += 1));
  await new Promise((r) => relay.listen(0, "127.0.0.1", r));
  try {
    const acct = await account(100);
    const c = service({ url: `http://127.0.0.1:${relay.address().port}` });
    for (let i = 0; i < 5; i++) assert.equal((await c.check({ account: acct, cost: 1 })).allowed, true);
    assert.equal(connections, 1);
    assert.equal(await balanceOf(acct), 95);
  } finally {
    relay.closeAllConnections();
    relay.close();
  }
});

test("the default wire: a refused connection is retried, then SidecarUnavailable(unreachable)", async () => {
  const c = service({ url: await deadUrl(), retries: 2, backoffMs: 1 });
  await assert.rejects(c.check({ account: "ts-x", cost: 1 }), (e) => {
    assert.ok(e instanceof SidecarUnavailable);
    assert.equal(e.code, "unreachable");
    assert.match(e.message, /ECONNREFUSED/);
    return true;
  });
});

test("the default wire: an answer cut mid-body is retried with the same idempotency key", async () => {
  const keys = [];
  const cutting = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      keys.push(JSON.parse(Buffer.concat(chunks).toString()).idempotency_key);
      res.writeHead(200, { "content-type": "application/json", "content-length": "100" });
      res.write('{"allowed": tr');
      res.socket.destroy(); // 14 of the 100 bytes promised
    });
  });
  await new Promise((r) => cutting.listen(0, "127.0.0.1", r));
  try {
    const c = service({ url: `http://127.0.0.1:${cutting.address().port}`, retries: 2, backoffMs: 1 });
    await assert.rejects(c.check({ account: "ts-x", cost: 1 }), (e) => e instanceof SidecarUnavailable);
    assert.equal(keys.length, 3);
    assert.equal(new Set(keys).size, 1);
  } finally {
    cutting.closeAllConnections();
    cutting.close();
  }
});

test("a deadline per call: retries of a silent sidecar stop at deadlineMs, not timeoutMs × attempts", async () => {
  const silent = http.createServer(() => {}); // accepts, never answers
  await new Promise((r) => silent.listen(0, "127.0.0.1", r));
  try {
    const url = `http://127.0.0.1:${silent.address().port}`;
    const slow = service({ url, timeoutMs: 300, deadlineMs: 500, retries: 10, backoffMs: 1 });
    let attempts = 0;
    silent.on("request", () => (attempts += 1));
    await assert.rejects(slow.check({ account: "ts-x", cost: 1 }), (e) => e instanceof SidecarUnavailable && e.code === "timeout");
    assert.ok(attempts <= 2, `${attempts} attempts within a 500 ms deadline of 300 ms attempts`);
  } finally {
    silent.closeAllConnections();
    silent.close();
  }
});

test("a settle the sidecar could not take is sent again in the background and lands once", async () => {
  const acct = await account(100);
  const relay = await switchableRelay(SIDECAR_URL);
  try {
    const c = service({ url: relay.url, retries: 0, logger: quiet });
    const hold = await c.hold({ account: acct, amount: 30, ttlMs: 60_000 });
    const meter = new Meter(c, acct, hold, 30);
    meter.add(12);
    relay.state.down = true;
    await assert.rejects(meter.finish(), (e) => e instanceof SidecarUnavailable);
    const [retrying] = lateSettles();
    assert.ok(retrying, "a late settle is pending");
    relay.state.down = false;
    assert.equal(await retrying, true);
    const b = await admin.balance(acct);
    assert.deepEqual([b.balance, b.held], [88, 0]); // 12 charged once, the rest of the hold back
  } finally {
    await relay.close();
  }
});

test("a late settle stops at hold_expired and charges nothing", async () => {
  const acct = await account(100);
  const c = service({ logger: quiet });
  const hold = await c.hold({ account: acct, amount: 30, ttlMs: 200 });
  await new Promise((r) => setTimeout(r, 400)); // the hold lapses: its TTL released it
  const alive = setInterval(() => {}, 50); // a late settle's timers are unref'd: keep the test's loop up
  try {
    assert.equal(await settleLater(c, { account: acct, hold, amount: 12, backoffMs: [10] }), false);
  } finally {
    clearInterval(alive);
  }
  const b = await admin.balance(acct);
  assert.deepEqual([b.balance, b.held], [100, 0]);
});
