// Express middleware: charge credits before a route runs, answer 402/429 as the sidecar does,
// and hold/settle around streamed responses. No import of express: it only uses (req, res, next).

import {
  Meter,
  allowedHeaders,
  deniedResponse,
  nthCheck,
  requestIdempotencyKey,
  routeCostLookup,
} from "./index.js";
import { resolveAccount } from "./middleware.js";

function send(res, denied) {
  res.status(denied.status);
  for (const [k, v] of Object.entries(denied.headers)) res.setHeader(k, v);
  res.json(denied.body);
}

function refuse(res, code, message, status = 401) {
  res.status(status).json({ error: { code, message } });
}

function setHeaders(res, headers) {
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
}

/**
 * Charges `cost` (a number, or `(req) => number`) to `options.account(req)` before the route runs.
 * Allowed: X-Credits-* headers, `req.credits` (and `res.locals.credits`) the check's answer, next().
 * Refused: the sidecar's status (402, 429, 409) and JSON body with X-Credits-Reason (Retry-After on
 * 429). Sidecar unreachable: 503 `credits_unavailable` (fail_closed) or, fail_open, next() uncharged.
 */
export function requireCredits(cost, options) {
  if (!options?.client || typeof options.account !== "function") {
    throw new TypeError("requireCredits(cost, { client, account: (req) => string })");
  }
  const { client } = options;
  return async function creditsMiddleware(req, res, next) {
    try {
      const amount = typeof cost === "function" ? await cost(req) : cost;
      if (amount === 0 || amount == null) return next(); // free
      const account = await resolveAccount(options, req);
      if (!account) return refuse(res, "unauthorized", "no account for this request");
      const result = await client.check({
        account,
        cost: amount,
        idempotencyKey: await requestIdempotencyKey(req.get?.("x-request-id") ?? req.headers["x-request-id"], {
          account,
          method: req.method,
          path: (req.baseUrl ?? "") + (req.path ?? req.url),
          nth: nthCheck(req),
        }),
        description: options.description?.(req) ?? `${req.method} ${req.path ?? req.url}`,
        metadata: options.metadata?.(req),
      });
      setHeaders(res, allowedHeaders(result));
      req.credits = result;
      res.locals.credits = result;
      next();
    } catch (error) {
      const denied = deniedResponse(error, client);
      if (denied) return send(res, denied);
      if (error?.name === "SidecarUnavailable") return next(); // fail_open, already logged by the client
      next(error);
    }
  };
}

/**
 * A route-cost table: `routeCosts({"GET /v1/images": 10, "POST /v1/chat/*": 5}, {client, account,
 * default: 1})`. Unmatched routes cost `default` (none: free); a cost of 0 is free.
 */
export function routeCosts(table, options) {
  const lookup = routeCostLookup(table, options?.default ?? 0);
  // The full path: under app.use("/prefix", ...) Express strips the prefix from req.path.
  return requireCredits((req) => lookup(req.method, (req.baseUrl ?? "") + req.path), options);
}

/**
 * For a streamed response whose cost is known at its end: holds `estimate` (a number or
 * `(req) => number`) before the route runs; the route counts with `req.credits.add(n)` (or sets
 * `req.credits.settle(n)`); when the response finishes the hold is settled with what was counted
 * (the estimate if nothing was); if the client disconnects first, it is released (or, with
 * `onDisconnect: "settle"`, settled with what was counted so far).
 */
export function meteredStream(estimate, options) {
  if (!options?.client || typeof options.account !== "function") {
    throw new TypeError("meteredStream(estimate, { client, account: (req) => string })");
  }
  const { client } = options;
  const log = (e) => client.logger?.warn?.(`credit-sidecar: closing a hold failed: ${e.message}`);
  return async function meteredStreamMiddleware(req, res, next) {
    let meter;
    try {
      const amount = typeof estimate === "function" ? await estimate(req) : estimate;
      const account = await resolveAccount(options, req);
      if (!account) return refuse(res, "unauthorized", "no account for this request");
      const hold = await client.hold({
        account,
        amount,
        holdId: options.holdId?.(req),
        ttlMs: options.ttlMs,
        description: options.description?.(req) ?? `${req.method} ${req.path ?? req.url}`,
      });
      meter = new Meter(client, account, hold, amount);
    } catch (error) {
      const denied = deniedResponse(error, client);
      if (denied) return send(res, denied);
      return next(error);
    }
    if (!meter.hold.fail_open) {
      setHeaders(res, { "X-Credits-Account": meter.account, "X-Credits-Hold": meter.holdId });
    }
    req.credits = meter;
    res.locals.credits = meter;
    res.on("finish", () => {
      // A failed response that counted nothing charges nothing.
      const failed = res.statusCode >= 400 && meter.amount === undefined;
      (failed ? meter.release() : meter.finish()).then(options.onSettled, log);
    });
    res.on("close", () => {
      if (res.writableFinished || meter.closed) return;
      const closing = options.onDisconnect === "settle" && meter.amount !== undefined ? meter.finish() : meter.release();
      closing.then(options.onSettled, log);
    });
    if (res.destroyed || res.socket?.destroyed) {
      // The client left while the hold was being made: "close" came before its listener.
      meter.release().then(options.onSettled, log);
      return;
    }
    next();
  };
}
