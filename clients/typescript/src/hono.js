// Hono middleware: the same options and answers as ./express.js, on Hono's (c, next). Nothing is
// imported from hono: it works with any runtime Hono runs on (Node, Deno, Bun, workers).

import {
  Meter,
  allowedHeaders,
  deniedResponse,
  nthCheck,
  requestIdempotencyKey,
  routeCostLookup,
} from "./index.js";
import { resolveAccount } from "./middleware.js";

function send(c, denied) {
  return c.json(denied.body, denied.status, denied.headers);
}

function refuse(c, code, message, status = 401) {
  return c.json({ error: { code, message } }, status);
}

/**
 * Charges `cost` (a number, or `(c) => number`) to `options.account(c)` before the handler runs.
 * Allowed: X-Credits-* headers on the response, `c.get("credits")` the check's answer. Refused:
 * the sidecar's status and JSON body (402, 429 with Retry-After, 409). Unreachable: 503
 * `credits_unavailable` (fail_closed) or the handler runs uncharged (fail_open).
 */
export function requireCredits(cost, options) {
  if (!options?.client || typeof options.account !== "function") {
    throw new TypeError("requireCredits(cost, { client, account: (c) => string })");
  }
  const { client } = options;
  return async function creditsMiddleware(c, next) {
    let result;
    try {
      const amount = typeof cost === "function" ? await cost(c) : cost;
      if (amount === 0 || amount == null) return next(); // free
      const account = await resolveAccount(options, c);
      if (!account) return refuse(c, "unauthorized", "no account for this request");
      result = await client.check({
        account,
        cost: amount,
        idempotencyKey: await requestIdempotencyKey(c.req.header("x-request-id"), {
          account,
          method: c.req.method,
          path: c.req.path,
          nth: nthCheck(c.req.raw),
        }),
        description: options.description?.(c) ?? `${c.req.method} ${c.req.path}`,
        metadata: options.metadata?.(c),
      });
    } catch (error) {
      const denied = deniedResponse(error, client);
      if (denied) return send(c, denied);
      if (error?.name !== "SidecarUnavailable") throw error;
    }
    if (result) c.set("credits", result);
    await next();
    if (result) for (const [k, v] of Object.entries(allowedHeaders(result))) c.header(k, v);
  };
}

/** A route-cost table (see ./express.js `routeCosts`): `{"GET /v1/images": 10, "/v1/chat/*": 5}`. */
export function routeCosts(table, options) {
  const lookup = routeCostLookup(table, options?.default ?? 0);
  return requireCredits((c) => lookup(c.req.method, c.req.path), options);
}

/**
 * Holds `estimate` before the handler; the handler counts with `c.get("credits").add(n)` (or
 * `.settle(n)`) while it streams. When the response body ends the hold is settled with what was
 * counted (the estimate if nothing was); when the client goes away first (the body is cancelled:
 * Hono's `stream.onAbort`), it is released (`onDisconnect: "settle"`: settled with the count).
 */
export function meteredStream(estimate, options) {
  if (!options?.client || typeof options.account !== "function") {
    throw new TypeError("meteredStream(estimate, { client, account: (c) => string })");
  }
  const { client } = options;
  const log = (e) => client.logger?.warn?.(`credit-sidecar: closing a hold failed: ${e.message}`);
  return async function meteredStreamMiddleware(c, next) {
    let meter;
    try {
      const amount = typeof estimate === "function" ? await estimate(c) : estimate;
      const account = await resolveAccount(options, c);
      if (!account) return refuse(c, "unauthorized", "no account for this request");
      const hold = await client.hold({
        account,
        amount,
        holdId: options.holdId?.(c),
        ttlMs: options.ttlMs,
        description: options.description?.(c) ?? `${c.req.method} ${c.req.path}`,
      });
      meter = new Meter(client, account, hold, amount);
    } catch (error) {
      const denied = deniedResponse(error, client);
      if (denied) return send(c, denied);
      throw error;
    }
    c.set("credits", meter);
    const done = () => meter.finish().then(options.onSettled, log);
    const gone = () =>
      (options.onDisconnect === "settle" && meter.amount !== undefined ? meter.finish() : meter.release()).then(
        options.onSettled,
        log,
      );
    try {
      await next();
    } catch (error) {
      await meter.release().catch(log);
      throw error;
    }
    const res = c.res;
    if (!res.body || (res.status >= 400 && meter.amount === undefined)) {
      // Nothing streamed: a failure that counted nothing charges nothing.
      await (res.status >= 400 && meter.amount === undefined ? meter.release() : meter.finish()).catch(log);
      return;
    }
    const reader = res.body.getReader();
    const body = new ReadableStream({
      async pull(controller) {
        try {
          const { done: end, value } = await reader.read();
          if (end) {
            controller.close();
            done();
          } else {
            controller.enqueue(value);
          }
        } catch (error) {
          controller.error(error);
          gone();
        }
      },
      cancel(reason) {
        gone();
        return reader.cancel(reason);
      },
    });
    const headers = new Headers(res.headers);
    if (!meter.hold.fail_open) {
      headers.set("X-Credits-Account", meter.account);
      headers.set("X-Credits-Hold", meter.holdId);
    }
    c.res = undefined;
    c.res = new Response(body, { status: res.status, statusText: res.statusText, headers });
  };
}
