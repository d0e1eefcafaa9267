// The portal page's frame, shared by every section: the state they share (the session, its
// formats, the sections shown), a section's panel and its loading, notices, the "session
// ended" page with the way back to the app, and new windows for Stripe's pages.

import { $, ApiError, formats, h } from "../ui/ui.js";

/** What the modules share: the session (GET session), its formats, whether it has ended. */
export const state = { session: null, fmt: formats(), ended: false };

/** The sections on the page by name, each {el, refresh}: one refreshes another's data. */
export const sections = {};

/** Whether an error is the session's end (a 401): the page has turned into its notice. */
export const sessionGone = (e) => e instanceof ApiError && e.status === 401;

export function notice(text, { kind = "notice", id } = {}) {
  const el = h("p", { class: kind, id }, text);
  const old = id ? $(id) : null;
  if (old) old.replaceWith(el);
  else $("notices").append(el);
  return el;
}

/** A section's panel, its title a heading the page can focus; returns [panel, body]. */
export function section(name, title, ...controls) {
  const body = h("div", { class: "panel-body" });
  const el = h(
    "section",
    { class: "panel", id: `section-${name}`, "aria-labelledby": `${name}-title` },
    h("div", { class: "panel-head" }, h("h2", { id: `${name}-title`, tabindex: "-1" }, title),
      controls.length ? h("div", { class: "controls" }, controls) : null),
    body,
  );
  return [el, body];
}

// The latest load of each body: an answer to an earlier one (a control changed twice in
// quick succession, the answers crossing) is dropped rather than shown over the latest.
const loads = new WeakMap();

/** Fills `body` with what `fn` builds; the API's error instead when it fails. */
export async function load(body, fn) {
  const turn = (loads.get(body) ?? 0) + 1;
  loads.set(body, turn);
  const latest = () => loads.get(body) === turn;
  body.setAttribute("aria-busy", "true");
  if (!body.childElementCount) body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    const content = await fn();
    if (latest()) body.replaceChildren(...[content].flat().filter(Boolean));
  } catch (e) {
    if (sessionGone(e) || !latest()) return;
    body.replaceChildren(h("p", { class: "error", role: "alert" }, e.message));
  } finally {
    if (latest()) body.removeAttribute("aria-busy");
  }
}

/** Turns the page into the "session ended" notice (once), with the way back to the app. */
export function sessionEnded(title = "Your session has ended") {
  if (state.ended) return;
  state.ended = true;
  $("sections").replaceChildren();
  $("notices").replaceChildren();
  $("nav").hidden = true;
  $("loading").hidden = true;
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
  $("ended-title").textContent = title;
  if (title !== "Your session has ended") $("ended-text").textContent = "You can close this page.";
  $("ended").hidden = false;
  const back = returnLink();
  if (back) {
    $("ended-back").href = back.href;
    if (back.target) $("ended-back").target = back.target;
    $("ended-back").textContent = back.text;
    $("ended-back").hidden = false;
  }
  $("ended-title").focus();
}

/** This tab's memory of the session's return link and product name, for the "session ended"
 * page (there is no session to ask then). Storage may be refused (a cross-site frame whose
 * browser blocks third-party storage): then nothing is remembered. */
export function remember(name, value) {
  try {
    if (value) sessionStorage.setItem(`portal.${name}`, value);
  } catch {
    // refused: the ended page goes without
  }
}

function remembered(name) {
  try {
    return sessionStorage.getItem(`portal.${name}`);
  } catch {
    return null;
  }
}

/** Whether the portal is inside the business's frame (its way back then leaves the frame). */
function framed() {
  try {
    return window.top !== window.self;
  } catch {
    return true;
  }
}

/** The way back to the app: {href, text, target} (null without an http(s) return URL). */
export function returnLink() {
  const url = state.session?.return_url ?? remembered("return_url");
  if (!url || !/^https?:\/\//i.test(url)) return null;
  const name = state.session?.branding?.product_name ?? remembered("product_name");
  return { href: url, text: name ? `Back to ${name}` : "Back to the app", target: framed() ? "_top" : null };
}

/** Opens a page that cannot be framed (Stripe) in a new top-level window. The window is
 * opened at the click (a popup opened after an await may be blocked) and sent to the URL
 * once known; without one, `fallback` shows a link to open it. */
export function newWindow() {
  const win = window.open("", "_blank");
  if (win) win.opener = null;
  return {
    go(url, fallback) {
      if (win && !win.closed) win.location.href = url;
      else fallback(h("a", { href: url, target: "_blank", rel: "noopener" }, "Open it in a new window"));
    },
    close() {
      if (win && !win.closed) win.close();
    },
  };
}
