// The default wire on Node: the part of `fetch` the client uses (method, headers, a string body,
// a signal; status, ok, headers.get, text), sent with node:http(s) over a keep-alive agent of the
// client's own. Half of fetch's CPU per call, which is most of what a middleware adds to a
// request (`make bench-middleware`). Elsewhere (Deno, Bun, edge runtimes, a browser), or on a Node
// without process.getBuiltinModule (before 20.16), the client uses the runtime's fetch.

const sharedAgents = {};

/** A fetch-shaped function over node:http(s), or null where the runtime's fetch is the wire. */
export function nodeFetch({ maxSockets = 100 } = {}) {
  const isNode = globalThis.process?.release?.name === "node" && !globalThis.Deno && !globalThis.Bun;
  const load = isNode ? globalThis.process.getBuiltinModule : undefined;
  if (typeof load !== "function") return null;
  const modules = { "http:": load("node:http"), "https:": load("node:https") };
  // the process's clients share their agents, as fetch's global pool: a client made per call
  // (or per token) reuses the kept-alive connections, never leaves one idle socket of its own
  const agentFor = (protocol) => {
    const key = `${protocol}${maxSockets}`;
    // lifo: the socket used last is used next, so idle ones age out at the server, not mid-call
    return (sharedAgents[key] ??= new modules[protocol].Agent({ keepAlive: true, maxSockets, scheduling: "lifo" }));
  };

  // `timeoutMs` (not fetch's): the wire times the exchange itself, one cleared timer instead of an
  // AbortSignal.timeout per call (a signal, stream listeners and a timer left to fire later)
  function fetchOverNodeHttp(target, { method = "GET", headers = {}, body, signal, timeoutMs } = {}) {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      const url = new URL(target);
      const mod = modules[url.protocol];
      if (!mod) {
        reject(new TypeError(`fetch failed: unsupported protocol ${url.protocol}`));
        return;
      }
      let stoppedBy; // the timeout's or the caller's reason, thrown as fetch throws it
      let timer;
      const failed = (cause) => stoppedBy ?? new TypeError("fetch failed", { cause });
      const req = mod.request(url, { method, headers, agent: agentFor(url.protocol) }, (res) => {
        const chunks = [];
        // read from the start (no backpressure on the socket); text() waits for the end
        const whole = new Promise((done, cut) => {
          res.on("data", (c) => chunks.push(c));
          res.on("end", () => {
            finish();
            done(Buffer.concat(chunks).toString("utf8"));
          });
          res.on("error", (e) => cut(failed(e)));
          res.on("close", () => {
            finish();
            if (!res.complete) cut(failed(new Error("the answer was cut off")));
          });
        });
        whole.catch(() => {}); // an unread body's failure is not an unhandled rejection
        resolve(new NodeResponse(res.statusCode, res.headers, whole));
      });
      const stop = (reason) => {
        stoppedBy ??= reason;
        req.destroy(reason);
      };
      const onAbort = () => stop(signal.reason);
      function finish() {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      }
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => stop(new DOMException("The operation was aborted due to timeout", "TimeoutError")), timeoutMs);
      }
      signal?.addEventListener("abort", onAbort, { once: true });
      req.on("error", (e) => {
        finish();
        reject(failed(e));
      });
      req.end(body);
    });
  }
  fetchOverNodeHttp.takesTimeoutMs = true;
  return fetchOverNodeHttp;
}

class NodeResponse {
  #text;

  #raw;
  #headers;

  constructor(status, rawHeaders, text) {
    this.status = status;
    this.ok = status >= 200 && status < 300;
    this.#raw = rawHeaders;
    this.#text = text;
  }

  /** A Headers, made when first read (a check's answer is read from its body alone). */
  get headers() {
    if (this.#headers === undefined) {
      this.#headers = new Headers();
      for (const [name, value] of Object.entries(this.#raw)) {
        for (const v of Array.isArray(value) ? value : [value]) this.#headers.append(name, v);
      }
    }
    return this.#headers;
  }

  text() {
    return this.#text;
  }

  async json() {
    return JSON.parse(await this.#text);
  }
}
