// The portal API (/v1/portal/…, sidecar/http/portal_api.py) as the page calls it: JSON over
// fetch with the session's cookie, the CSRF token on every state change, the idempotency key
// of each intent (made once, reused by its retries), and the reads two sections share, made
// once on load.
//
// The session is the HttpOnly cookie the portal link set: this script never sees a token.
// URLs are relative to the page (/portal/), so the portal also works behind a path prefix.

import { errorOf, networkError } from "../ui/ui.js";
import { sessionEnded, state } from "./page.js";

export const API = "../v1/portal/";

/** Calls a portal route (relative, e.g. "balance"): the decoded JSON. A state change carries
 * the CSRF token; a 401 (the session ended) turns the page into the "session ended" notice. */
export async function api(path, { method = "GET", params = {}, body } = {}) {
  const url = new URL(API + path, document.baseURI);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.session?.csrf_token ?? "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch (e) {
    throw networkError(e);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (error.status === 401) sessionEnded();
    throw error;
  }
  return response.json();
}

// -- idempotency keys ----------------------------------------------------------------------

const intents = new Map();

/** A random id (crypto.randomUUID needs a secure context; getRandomValues does not). */
function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** The idempotency key of one intent (buying this package, creating this key): made once,
 * the same for every retry until the intent succeeded (then `intentDone`). */
export function intentKey(intent) {
  if (!intents.has(intent)) intents.set(intent, uuid());
  return intents.get(intent);
}
export const intentDone = (intent) => intents.delete(intent);

// -- reads shared by sections --------------------------------------------------------------

/** The balance as the page first loads it (the balance and limits sections both show it). */
let firstBalanceData = null;
export const firstBalance = () => (firstBalanceData ??= api("balance"));

/** The packages on sale (the buy and auto top-up sections both list them), asked once. */
let packagesData = null;
export const packages = () => (packagesData ??= api("packages").then((d) => d.packages));
