// Shared by the tests: the real sidecar from the environment, fresh accounts, a dropping relay.

import net from "node:net";
import http from "node:http";
import { randomUUID } from "node:crypto";
import { CreditSidecar } from "../src/index.js";

export const SIDECAR_URL = process.env.SIDECAR_URL;
export const ADMIN_TOKEN = process.env.SIDECAR_ADMIN_TOKEN;
export const SERVICE_TOKEN = process.env.SIDECAR_SERVICE_TOKEN;

if (!SIDECAR_URL || !ADMIN_TOKEN || !SERVICE_TOKEN) {
  throw new Error("set SIDECAR_URL, SIDECAR_ADMIN_TOKEN and SIDECAR_SERVICE_TOKEN (a running sidecar)");
}

export const quiet = { warn() {}, info() {}, error() {} };

export function service(options = {}) {
  return new CreditSidecar({ url: SIDECAR_URL, token: SERVICE_TOKEN, logger: quiet, ...options });
}

export const admin = new CreditSidecar({ url: SIDECAR_URL, token: ADMIN_TOKEN, logger: quiet });

/** A fresh account with `credits` granted (and `settings`, e.g. a rate limit). */
export async function account(credits, settings = {}, prefix = "ts") {
  const id = `${prefix}-${randomUUID().slice(0, 12)}`;
  await admin.putAccount(id, settings);
  if (credits > 0) await admin.grant(id, { credits, source: "purchase" });
  return id;
}

export async function balanceOf(id) {
  return (await admin.balance(id)).balance;
}

/** Polls until `fn()` is truthy (a settle after a stream ends lands a moment later). */
export async function eventually(fn, { timeoutMs = 5000, stepMs = 25 } = {}) {
  const until = Date.now() + timeoutMs;
  let last;
  while (Date.now() < until) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  throw new Error(`not within ${timeoutMs} ms (last: ${JSON.stringify(last)})`);
}

/**
 * A TCP relay to the sidecar that drops the first `drops` connections as soon as the sidecar's
 * answer starts (the request was processed; the client never sees the answer), then relays.
 */
export async function droppingRelay(target, drops = 1) {
  const { hostname, port } = new URL(target);
  let left = drops;
  const stats = { connections: 0, dropped: 0 };
  const sockets = new Set();
  const server = net.createServer((client) => {
    stats.connections += 1;
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    const drop = left > 0;
    if (drop) left -= 1;
    const upstream = net.connect(Number(port), hostname);
    client.pipe(upstream);
    upstream.on("data", (chunk) => {
      if (drop) {
        stats.dropped += 1;
        client.destroy();
        upstream.destroy();
      } else {
        client.write(chunk);
      }
    });
    upstream.on("end", () => client.end());
    upstream.on("error", () => client.destroy());
    client.on("error", () => upstream.destroy());
    client.on("close", () => upstream.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    stats,
    close: () =>
      new Promise((resolve) => {
        server.close(resolve);
        for (const s of sockets) s.destroy(); // the client's kept-alive connections
      }),
  };
}

/** A URL nothing listens on (a port bound then closed). */
export async function deadUrl() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}

/** An HTTP relay to `target` that answers 503 to everything while `down` is true. */
export async function switchableRelay(target) {
  const upstream = new URL(target);
  const state = { down: false, refused: 0 };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      if (state.down) {
        state.refused += 1;
        res.writeHead(503, { "content-type": "application/json" }).end('{"error":{"code":"down","message":"down"}}');
        return;
      }
      const up = http.request(
        { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode, r.headers);
          r.pipe(res);
        },
      );
      up.on("error", () => res.destroy());
      up.end(Buffer.concat(chunks));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    state,
    close: () =>
      new Promise((resolve) => {
        server.close(resolve);
        server.closeAllConnections();
      }),
  };
}
