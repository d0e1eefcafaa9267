// The calls under CreditSidecar: one logical call sent with the client's fetch (nodewire.js on
// Node), each attempt within a timeout and all of them within the call's deadline, retried with
// jittered backoff (network errors, timeouts, 502/503/504 only), the answer parsed or turned into
// a typed error; and the failure policy (fail_open lets a check or hold through uncharged when
// the sidecar is unavailable).

import { IncompatibleSidecar, InvalidRequest, SidecarUnavailable, errorFor } from "./errors.js";
import { SUPPORTED_SIDECAR } from "./version.js";

export const RETRYABLE_STATUS = new Set([502, 503, 504]);
// what node:http and fetch refuse in a header value (RFC 9110 5.5; a ByteString)
const UNSENDABLE = /[^\t\x20-\x7e\x80-\xff]/;

// what a request's raw URI never holds: an app's decoded path ("/a%00" decoded is "/a\0")
const NOT_IN_A_URI = /[\x00-\x20\x7f-\uffff]+/g;

/** The URI as a proxy sends it: controls, spaces and non-ASCII percent-encoded (UTF-8). */
export function rawUri(uri) {
  return String(uri).replace(NOT_IN_A_URI, (run) =>
    Array.from(new TextEncoder().encode(run), (b) => `%${b.toString(16).toUpperCase().padStart(2, "0")}`).join(""),
  );
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A fresh idempotency key (or hold, grant, refund id): made once per call, sent on every attempt. */
export function uuid() {
  return globalThis.crypto.randomUUID();
}

export function dropUndefined(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined) out[k] = v;
  return out;
}

function combineSignals(timeout, outer) {
  if (!outer) return timeout;
  if (typeof AbortSignal.any === "function") return AbortSignal.any([timeout, outer]);
  const ctl = new AbortController();
  const abort = (s) => ctl.abort(s.reason);
  for (const s of [timeout, outer]) {
    if (s.aborted) abort(s);
    else s.addEventListener("abort", () => abort(s), { once: true });
  }
  return ctl.signal;
}

/**
 * One logical call: the same body (and so the same idempotency key) on every attempt. `client`
 * gives the settings read as the call goes (timeoutMs, retries, backoffMs, maxBackoffMs,
 * userAgent); `fetch`, `url` and `auth` (the bearer token, if any) are its private parts.
 */
export async function send(client, { fetch, url, auth }, method, path, { body, query, retry = true, headers, signal, raw = false } = {}) {
  let target = url + path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) q.set(k, String(v));
    const s = q.toString();
    if (s) target += `?${s}`;
  }
  const init = {
    method,
    headers: dropUndefined({
      accept: "application/json",
      "content-type": body === undefined ? undefined : "application/json",
      authorization: auth ? `Bearer ${auth}` : undefined,
      "user-agent": client.userAgent,
      ...headers,
    }),
    body: body === undefined ? undefined : JSON.stringify(body),
  };
  // a value no header may carry (a control, or past Latin-1): never sent, and never "unavailable"
  // (retried, and let through under fail_open), as the sidecar answers a bad header: a 400
  for (const [name, value] of Object.entries(init.headers)) {
    if (UNSENDABLE.test(String(value))) {
      throw new InvalidRequest(`${method} ${path}: ${name} has a character no header may carry`, {
        status: 400,
        code: "invalid_header",
        field: name,
      });
    }
  }
  const attempts = retry ? client.retries + 1 : 1;
  // the whole call, attempts and backoff included, ends by the deadline
  const end = performance.now() + client.deadlineMs;
  let last;
  for (let attempt = 0; attempt < attempts; attempt++) {
    if (attempt > 0) {
      // Exponential backoff with full jitter: retries of many clients do not arrive together.
      const cap = Math.min(client.maxBackoffMs, client.backoffMs * 2 ** (attempt - 1));
      await sleep(Math.min(Math.random() * cap, Math.max(0, end - performance.now())));
      if (signal?.aborted) break;
    }
    const remaining = end - performance.now();
    if (remaining <= 0) {
      last = new SidecarUnavailable(`${method} ${path}: no answer within the ${client.deadlineMs} ms deadline`, {
        code: "timeout",
        cause: last,
      });
      break;
    }
    const limit = Math.min(client.timeoutMs, remaining);
    let response;
    try {
      // called as a plain function: a browser's window.fetch refuses any other `this`
      response = await fetch.call(
        undefined,
        target,
        fetch.takesTimeoutMs // nodewire.js times the exchange itself
          ? { ...init, signal, timeoutMs: Math.ceil(limit) }
          : { ...init, signal: combineSignals(AbortSignal.timeout(Math.ceil(limit)), signal) },
      );
    } catch (cause) {
      if (signal?.aborted) throw cause;
      const timedOut = cause?.name === "TimeoutError";
      last = new SidecarUnavailable(
        timedOut
          ? `${method} ${path}: no answer within ${Math.ceil(limit)} ms`
          : `${method} ${path}: ${cause?.cause?.code ?? cause?.message ?? "connection failed"}`,
        { code: timedOut ? "timeout" : "unreachable", cause },
      );
      continue;
    }
    if (raw) return response;
    let text;
    try {
      text = await response.text();
    } catch (cause) {
      // the answer cut mid-body: as a dropped connection, retried with the same body
      if (signal?.aborted) throw cause;
      last = new SidecarUnavailable(`${method} ${path}: the answer was cut off`, { code: "unreachable", cause });
      continue;
    }
    let parsed = null;
    let json = false; // the body is JSON (else `parsed` stands in for it)
    if (text) {
      try {
        parsed = JSON.parse(text);
        json = true;
      } catch {
        parsed = { error: { code: `http_${response.status}`, message: text.slice(0, 200) } };
      }
    }
    if (response.status === 204) return null; // "no content" (a plan deleted)
    if (response.ok) {
      // a 2xx that is not the sidecar's JSON (an HTML page, no body: a wrong URL, a proxy in
      // between) says nothing about the call: the sidecar is unavailable, never a success
      if (parsed === null || typeof parsed !== "object" || !json) {
        throw new SidecarUnavailable(`${method} ${path}: ${response.status} without the sidecar's answer`, {
          status: response.status,
          code: "unreachable",
        });
      }
      return parsed;
    }
    const error = errorFor(response.status, parsed, response.headers);
    if ((response.status === 404 && error.code === "not_found") || response.status === 405) {
      throw new IncompatibleSidecar(
        `this sidecar has no ${method} ${path.split("?")[0]}: it is older than this client needs (${SUPPORTED_SIDECAR})`,
        { status: response.status, code: "incompatible_sidecar", body: parsed },
      );
    }
    if (RETRYABLE_STATUS.has(response.status)) {
      last = error;
      continue;
    }
    throw error;
  }
  throw last ?? new SidecarUnavailable(`${method} ${path}: aborted`, { code: "aborted" });
}

/** The failure policy: under fail_open an unavailable sidecar lets `what` through as `result`; else throws. */
export function failOpen(client, what, error, result) {
  if (client.failurePolicy !== "fail_open" || !(error instanceof SidecarUnavailable)) throw error;
  client.logger?.warn?.(`credit-sidecar: ${what} let through uncharged (fail_open): ${error.message}`);
  return result;
}
