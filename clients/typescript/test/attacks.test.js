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

// A relay in front of the sidecar that spoils the answers of the paths in `rules` (a path's
// ending -> what to do), as tests/clients/test_attacks.py's Chaos: garbage, empty, 500, cut
// (a 200 cut mid-body), hang; "after:" forwards first (it took effect, the answer is lost);
// "once:" spoils the first such request only.
const rules = new Map();
const chaos = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const key = [...rules.keys()].find((k) => req.url.split("?")[0].endsWith(k));
  let rule = key ? rules.get(key) : undefined;
  if (rule?.startsWith("once:")) {
    rule = rule.slice(5);
    rules.delete(key);
  }
  let answer;
  if (!rule || rule.startsWith("after:")) {
    const headers = { ...req.headers };
    delete headers.host;
    delete headers["content-length"];
    const r = await fetch(process.env.SIDECAR_URL + req.url, {
      method: req.method,
      headers,
      body: chunks.length ? Buffer.concat(chunks) : undefined,
    });
    answer = { status: r.status, type: r.headers.get("content-type"), body: Buffer.from(await r.arrayBuffer()) };
  }
  const action = rule?.replace(/^after:/, "");
  if (!action) {
    res.writeHead(answer.status, { "content-type": answer.type ?? "application/json" });
    return res.end(answer.body);
  }
  if (action === "hang") return;
  if (action === "500") return res.writeHead(500, { "content-type": "text/html" }).end("<html>oops</html>");
  if (action === "empty") return res.writeHead(200).end();
  if (action === "cut") {
    res.writeHead(200, { "content-type": "application/json", "content-length": "500" });
    res.write('{"allowed": tr');
    return setTimeout(() => res.socket.destroy(), 20);
  }
  if (action === "evil402") {
    // a refusal whose fields would split the response's headers
    const evil = "insufficient_credits\r\nSet-Cookie: stolen=1";
    const body = JSON.stringify({ allowed: false, reason: evil, balance: evil, required: 1 });
    return res.writeHead(402, { "content-type": "application/json" }).end(body);
  }
  res.writeHead(200, { "content-type": "text/html" }).end("<html>welcome to nginx</html>");
});
let chaosUrl;
before(async () => {
  await new Promise((resolve) => chaos.listen(0, "127.0.0.1", resolve));
  chaosUrl = `http://127.0.0.1:${chaos.address().port}`;
});
after(() => {
  chaos.closeAllConnections();
  chaos.close();
});

async function serve(app) {
  const s = await new Promise((resolve) => {
    const srv = app.listen(0, "127.0.0.1", () => resolve(srv));
  });
  return {
    url: `http://127.0.0.1:${s.address().port}`,
    close: () => {
      s.closeAllConnections();
      s.close();
    },
  };
}

for (const policy of ["fail_closed", "fail_open"]) {
  for (const spoil of ["garbage", "empty", "500", "after:garbage", "after:500", "cut"]) {
    test(`chaos, ${policy}: a check answered ${spoil} is the sidecar unavailable, never the app's error`, async () => {
      const acct = await account(10);
      rules.clear();
      rules.set("/v1/check", spoil);
      const client = service({ url: chaosUrl, failurePolicy: policy, retries: 0 });
      for (const [kind, get] of [
        ["express", async (path) => {
          const s = await serve(expressApp(client));
          try {
            return await fetch(s.url + path, { headers: { "x-account": acct } });
          } finally {
            s.close();
          }
        }],
        ["hono", (path) => honoApp(client).request(path, { headers: { "x-account": acct } })],
      ]) {
        const r = await get("/a");
        if (policy === "fail_closed") {
          assert.equal(r.status, 503, `${kind}: ${r.status}`);
          assert.equal((await r.json()).error.code, "credits_unavailable");
        } else {
          assert.equal(r.status, 200, `${kind}: ${r.status}`);
          assert.equal(r.headers.get("x-credits-reason"), "fail_open", kind);
        }
      }
      rules.clear();
    });
  }
}

test("chaos: a check whose answer is cut mid-body is retried with its key and charged once", async () => {
  const acct = await account(10);
  rules.clear();
  rules.set("/v1/check", "once:after:cut");
  const r = await honoApp(service({ url: chaosUrl })).request("/a", { headers: { "x-account": acct } });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("x-credits-replayed"), "true");
  assert.equal(await balanceOf(acct), 9);
});

test("chaos: a sidecar that never answers is given up within the retries' bound", async () => {
  rules.clear();
  rules.set("/v1/check", "hang");
  const client = service({ url: chaosUrl, timeoutMs: 100, retries: 2, backoffMs: 10, maxBackoffMs: 20 });
  const started = Date.now();
  const r = await honoApp(client).request("/a", { headers: { "x-account": "anyone" } });
  assert.equal(r.status, 503);
  assert.ok(Date.now() - started < 3 * 100 + 2 * 20 + 300, `${Date.now() - started} ms`);
  rules.clear();
});

test("express: 100 requests at once with one X-Request-Id are charged once", async () => {
  const acct = await account(100);
  const answers = await Promise.all(
    Array.from({ length: 100 }, () => fetch(`${base}/a`, { headers: { "x-account": acct, "x-request-id": "burst-ts" } })),
  );
  const fresh = answers.filter((r) => r.headers.get("x-credits-replayed") === "false");
  assert.equal(fresh.length, 1);
  assert.ok(answers.every((r) => r.status === 200 || r.status === 409));
  assert.equal(await balanceOf(acct), 99);
});

test("chaos: a settle whose answer is lost is retried with its body and charged once", async () => {
  const acct = await account(100);
  rules.clear();
  rules.set("/settle", "once:after:cut");
  const client = service({ url: chaosUrl });
  await client.withHold(acct, 50, (h) => h.settle(7));
  assert.equal(await balanceOf(acct), 93);
  assert.equal((await admin.balance(acct)).held, 0);
});

function streamingApps(client) {
  const opts = { client, account: who };
  const e = express();
  // the handler fails mid-stream (after 2 tokens) or before its first byte
  e.get("/fails", ex.meteredStream(40, opts), async (req, res, next) => {
    const at = Number(req.query.at);
    res.setHeader("content-type", "text/plain");
    for (let i = 0; i < 5; i++) {
      if (i === at) return next(new Error("the model failed"));
      res.write("tok ");
      req.credits.add(1);
      await new Promise((r) => setTimeout(r, 5));
    }
    res.end();
  });
  const h = new Hono();
  h.get("/fails", hono.meteredStream(40, { client, account: (c) => c.req.header("x-account") }), (c) => {
    const at = Number(c.req.query("at"));
    if (at === 0) throw new Error("the model failed");
    const meter = c.get("credits");
    let i = 0;
    return c.body(
      new ReadableStream({
        pull(controller) {
          if (i === at) return controller.error(new Error("the model failed"));
          i += 1;
          meter.add(1);
          controller.enqueue(new TextEncoder().encode("tok "));
        },
      }),
    );
  });
  return { e, h };
}

for (const at of [0, 2]) {
  test(`express and hono: a stream whose handler fails at token ${at} is released once, nothing charged`, async () => {
    const settled = [];
    const client = service();
    const { e, h } = streamingApps(client);
    const s = await serve(e);
    try {
      for (const get of [
        (acct) => fetch(`${s.url}/fails?at=${at}`, { headers: { "x-account": acct } }).then((r) => r.text()),
        (acct) => h.request(`/fails?at=${at}`, { headers: { "x-account": acct } }).then((r) => r.text()),
      ]) {
        const acct = await account(100);
        await get(acct).catch(() => {});
        await eventually(async () => (await admin.balance(acct)).held === 0);
        settled.push(await balanceOf(acct));
      }
    } finally {
      s.close();
    }
    // a stream that failed charges nothing (counted tokens are not settled on a failure)
    assert.deepEqual(settled, [100, 100]);
  });
}

test("chaos: CR/LF in the sidecar's refusal never splits the headers, and it is still a 402", async () => {
  rules.clear();
  rules.set("/v1/check", "evil402");
  const client = service({ url: chaosUrl });
  const s = await serve(expressApp(client));
  try {
    for (const r of [
      await fetch(`${s.url}/a`, { headers: { "x-account": "anyone" } }),
      await honoApp(client).request("/a", { headers: { "x-account": "anyone" } }),
    ]) {
      assert.equal(r.status, 402);
      assert.equal(r.headers.get("set-cookie"), null);
      for (const [, v] of r.headers) assert.doesNotMatch(v, /[\r\n]/);
    }
  } finally {
    s.close();
    rules.clear();
  }
});
