// The customer portal: an account's balance, usage, transactions, purchases, auto top-up,
// API keys and limits, through the portal API (/v1/portal/…, sidecar/http/portal.py).
//
// The session is the HttpOnly cookie the portal link set: this script never sees a token.
// Every state change sends the session's CSRF token (X-CSRF-Token); buying, saving a card and
// creating a key also send an idempotency key made once per intent and reused when that
// intent is retried, and their button refuses a second press while the first is in flight,
// so a double click never buys twice. Everything the API returns reaches the page as text
// (ui.js). Stripe's pages cannot be framed: they open in a new top-level window. URLs are
// relative to the page (/portal/), so the portal also works behind a path prefix.

import { ApiError, DAY_MS, errorOf, formats, h, networkError, table, usageChart } from "../ui/ui.js";

const API = "../v1/portal/";
const TRANSACTIONS_PAGE = 25;
const TRANSACTION_TYPES = [
  "usage", "purchase", "grant", "allowance", "expiry", "refund", "hold", "settle", "release",
  "revoke",
];
const USAGE_RANGES = [
  { label: "Last 24 hours", interval: "hour", span: DAY_MS },
  { label: "Last 7 days", interval: "hour", span: 7 * DAY_MS },
  { label: "Last 30 days", interval: "day", span: 30 * DAY_MS },
  { label: "Last 90 days", interval: "day", span: 90 * DAY_MS },
];
const INTERVALS = [
  ["day", "per day"], ["week", "per week"], ["month", "per month"], ["year", "per year"],
  ["", "in total (no reset)"],
];
const SOURCE_WORDS = { purchase: "purchased", grant: "granted", allowance: "plan", refund: "refunded" };
const ORDER = ["balance", "buy", "usage", "transactions", "keys", "limits", "auto_topup", "billing"];

const $ = (id) => document.getElementById(id);
const state = { session: null, fmt: formats(), intents: new Map(), ended: false };

// -- the API -------------------------------------------------------------------------------

/** Calls a portal route (relative, e.g. "balance"): the decoded JSON. A state change carries
 * the CSRF token; a 401 (the session ended) turns the page into the "session ended" notice. */
async function api(path, { method = "GET", params = {}, body } = {}) {
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

/** A random id (crypto.randomUUID needs a secure context; getRandomValues does not). */
function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** The idempotency key of one intent (buying this package, creating this key): made once,
 * the same for every retry until the intent succeeded (then `done`). */
function intentKey(intent) {
  if (!state.intents.has(intent)) state.intents.set(intent, uuid());
  return state.intents.get(intent);
}
const intentDone = (intent) => state.intents.delete(intent);

/** Runs `fn` with `button` marked busy (aria-disabled: it keeps the keyboard focus); a press
 * while it runs does nothing. */
async function busy(button, fn) {
  if (button.dataset.busy) return undefined;
  button.dataset.busy = "1";
  button.setAttribute("aria-disabled", "true");
  try {
    return await fn();
  } finally {
    delete button.dataset.busy;
    button.removeAttribute("aria-disabled");
  }
}

/** Opens a page that cannot be framed (Stripe) in a new top-level window. The window is
 * opened at the click (a popup opened after an await may be blocked) and sent to the URL
 * once known; without one, `fallback` shows a link to open it. */
function newWindow() {
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

// -- forms: errors next to their field -----------------------------------------------------

/** A labelled control; `field` is the API's name for it (its errors are shown under it). */
function field(id, label, control, { field: name, hint } = {}) {
  control.id = id;
  if (name) control.dataset.field = name;
  const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
  const parts = [h("label", { for: id }, label), control];
  if (hint) parts.push(h("p", { class: "hint muted", id: `${id}-hint` }, hint));
  parts.push(error);
  if (hint) control.setAttribute("aria-describedby", `${id}-hint`);
  return h("div", { class: "field" }, parts);
}

function clearErrors(form) {
  for (const el of form.querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    const ids = (el.getAttribute("aria-describedby") ?? "").split(" ").filter((x) => x && !x.endsWith("-error"));
    if (ids.length) el.setAttribute("aria-describedby", ids.join(" "));
    else el.removeAttribute("aria-describedby");
  }
  for (const el of form.querySelectorAll(".field-error, .form-error")) {
    el.textContent = "";
    el.hidden = true;
  }
}

/** Shows an error next to the control it names (the API's `field`, or the closest prefix of
 * it a control has), else at the form's foot; focuses that control. */
function showError(form, error, fieldName = error.field) {
  let control = null;
  const parts = fieldName ? String(fieldName).split(".") : [];
  for (let n = parts.length; n > 0 && !control; n -= 1) {
    const name = parts.slice(0, n).join(".");
    control = [...form.querySelectorAll("[data-field]")].find((el) => el.dataset.field === name) ?? null;
  }
  const message = error instanceof ApiError ? error.message : String(error.message ?? error);
  if (control) {
    const box = $(`${control.id}-error`);
    box.textContent = message;
    box.hidden = false;
    control.setAttribute("aria-invalid", "true");
    const ids = (control.getAttribute("aria-describedby") ?? "").split(" ").filter(Boolean);
    control.setAttribute("aria-describedby", [...ids, box.id].join(" "));
    control.focus();
    return;
  }
  let box = form.querySelector(".form-error");
  if (!box) {
    box = h("p", { class: "form-error error", role: "alert" });
    form.append(box);
  }
  box.textContent = message;
  box.hidden = false;
}

class InputError extends Error {
  constructor(fieldName, message) {
    super(message);
    this.field = fieldName;
  }
}

/** A whole number from an input (empty: null when optional). */
function whole(input, { optional = false, min = 0 } = {}) {
  const text = input.value.trim();
  if (!text && optional) return null;
  if (!/^-?\d+$/.test(text)) throw new InputError(input.dataset.field, "Enter a whole number.");
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min) {
    throw new InputError(input.dataset.field, min > 0 ? `Enter a whole number of at least ${min}.` : "Enter a whole number, 0 or more.");
  }
  return n;
}

/** Submits `form` with `fn` (busy on its submit button); errors next to their field. */
function onSubmit(form, fn) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const button = event.submitter ?? form.querySelector("button[type=submit]");
    busy(button, async () => {
      clearErrors(form);
      try {
        await fn(button);
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) return;
        showError(form, e);
      }
    });
  });
}

function intervalSelect() {
  return h("select", {}, INTERVALS.map(([value, label]) => h("option", { value }, label)));
}

function limitText(limit) {
  if (!limit) return "no limit";
  const count = limit.interval_count ?? 1;
  const per = !limit.interval
    ? "in total"
    : count === 1
      ? `per ${limit.interval}`
      : `every ${count} ${limit.interval}s`;
  return `${state.fmt.int(limit.credits)} credits ${per}`;
}

function spendText(spend) {
  if (!spend) return "";
  const resets = spend.window_ends_at ? `, resets on ${state.fmt.day(spend.window_ends_at)}` : "";
  const window = spend.spend_limit.interval ? "this period" : "so far";
  return `${state.fmt.int(spend.spent)} of ${limitText(spend.spend_limit)} spent ${window}${resets}`;
}

// -- page frame ----------------------------------------------------------------------------

function notice(text, { kind = "notice", id } = {}) {
  const el = h("p", { class: kind, id }, text);
  const old = id ? $(id) : null;
  if (old) old.replaceWith(el);
  else $("notices").append(el);
  return el;
}

function section(name, title, ...controls) {
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

/** Fills `body` with what `fn` builds; the API's error instead when it fails. */
async function load(body, fn) {
  body.setAttribute("aria-busy", "true");
  if (!body.childElementCount) body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    const content = await fn();
    body.replaceChildren(...[content].flat().filter(Boolean));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    body.replaceChildren(h("p", { class: "error", role: "alert" }, e.message));
  } finally {
    body.removeAttribute("aria-busy");
  }
}

function sessionEnded(title = "Your session has ended") {
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
function remember(name, value) {
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

function returnLink() {
  const url = state.session?.return_url ?? remembered("return_url");
  if (!url || !/^https?:\/\//i.test(url)) return null;
  const name = state.session?.branding?.product_name ?? remembered("product_name");
  return { href: url, text: name ? `Back to ${name}` : "Back to the app", target: framed() ? "_top" : null };
}

function brand(session) {
  const b = session.branding ?? {};
  const name = b.product_name || "Billing";
  $("product").textContent = name;
  document.title = `${name} · Billing`;
  if (b.logo_url && /^https:\/\//i.test(b.logo_url)) {
    $("logo").setAttribute("src", b.logo_url);
    $("logo").hidden = false;
  }
  if (/^#[0-9a-fA-F]{6}$/.test(b.accent_color ?? "")) {
    const root = document.documentElement.style;
    root.setProperty("--accent", b.accent_color);
    root.setProperty("--accent-ink", light(b.accent_color) ? "#111827" : "#ffffff");
  }
  if (b.support_url && /^(https?:\/\/|mailto:)/i.test(b.support_url)) {
    $("help").href = b.support_url;
    $("help").hidden = false;
  }
  const back = returnLink();
  if (back) {
    $("back").href = back.href;
    if (back.target) $("back").target = back.target;
    $("back").textContent = back.text;
    $("back").hidden = false;
  }
  try {
    const [tag] = Intl.getCanonicalLocales(session.locale || []);
    if (tag) document.documentElement.lang = tag;
  } catch {
    // not a locale: keep the page's
  }
  state.fmt = formats(session.locale);
}

/** Whether a colour is light (dark text on it, else white). */
function light(hex) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255)
    .map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.4;
}

// -- balance -------------------------------------------------------------------------------

function bucketText(k) {
  const source = SOURCE_WORDS[k.source] ?? k.source;
  let text = `${state.fmt.int(k.remaining)} ${source} credits`;
  text += k.expires_at ? ` expire on ${state.fmt.day(k.expires_at)}` : " (no expiry)";
  if (k.held) text += `, ${state.fmt.int(k.held)} held`;
  return text;
}

/** A bucket's note for the customer, from its metadata (the business's words, as text). */
function metadataText(metadata) {
  if (!metadata || typeof metadata !== "object") return "";
  return ["description", "note", "label", "name"]
    .map((k) => metadata[k]).filter((v) => typeof v === "string" && v).join(" · ");
}

const views = {};

/** The balance as the page first loads it (the balance and limits sections both show it). */
let firstBalanceData = null;
const firstBalance = () => (firstBalanceData ??= api("balance"));

views.balance = () => {
  const [el, body] = section("balance", "Balance");
  let first = true;
  const refresh = () => load(body, async () => {
    const b = await (first ? firstBalance() : api("balance"));
    first = false;
    const f = state.fmt;
    const parts = [
      h("p", { class: "big-number", id: "balance-amount" }, f.int(b.balance), h("span", { class: "unit" }, " credits")),
      h("p", { id: "balance-split", class: "split" },
        h("span", {}, h("strong", {}, f.int(b.available)), " available"),
        h("span", {}, h("strong", {}, f.int(b.held)), " held by requests in progress")),
    ];
    if (b.debt) parts.push(h("p", { class: "error-text" }, `${f.int(b.debt)} credits owed (taken from your next credits)`));
    if (b.buckets.length) {
      parts.push(
        h("h3", { class: "sub" }, "Your credits"),
        h("ul", { id: "buckets", class: "buckets" }, b.buckets.map((k) => {
          const note = metadataText(k.metadata);
          return h("li", {}, bucketText(k), note ? h("span", { class: "muted note" }, ` ${note}`) : null);
        })),
      );
    }
    if (b.plan) {
      parts.push(h("p", { id: "plan" }, "Plan ", h("strong", {}, b.plan.plan),
        `, renews on ${f.day(b.plan.next_renewal_at)}`));
    }
    if (b.spend) parts.push(h("p", { id: "balance-spend" }, `Spending limit: ${spendText(b.spend)}`));
    return parts;
  });
  refresh();
  return { el, refresh };
};

// -- usage ---------------------------------------------------------------------------------

views.usage = () => {
  const range = h("select", { id: "usage-range" },
    USAGE_RANGES.map((r, i) => h("option", { value: i }, r.label)));
  const [el, body] = section("usage", "Usage",
    h("label", { for: "usage-range", class: "inline-label" }, "Period"), range);
  const refresh = () => load(body, async () => {
    const r = USAGE_RANGES[Number(range.value)] ?? USAGE_RANGES[0];
    const until = Date.now();
    const since = until - r.span;
    const data = await api("usage", {
      params: {
        interval: r.interval,
        since: new Date(since).toISOString(),
        until: new Date(until).toISOString(),
      },
    });
    const f = state.fmt;
    return usageChart(data.points, since, until, r.interval, {
      int: f.int,
      label: (t) => f.slot(t, r.interval),
      tip: (t) => `${f.slot(t, r.interval)} UTC`,
      summary: (credits, checks) =>
        credits || checks
          ? `${f.int(credits)} credits used in ${f.int(checks)} requests (times in UTC)`
          : "No usage in this period.",
    });
  });
  range.addEventListener("change", refresh);
  refresh();
  return { el, refresh };
};

// -- transactions --------------------------------------------------------------------------

views.transactions = () => {
  const type = h("select", { id: "transaction-type" },
    h("option", { value: "" }, "All types"),
    TRANSACTION_TYPES.map((t) => h("option", { value: t }, t)));
  const csv = h("a", { id: "transactions-csv", class: "button-link", download: "transactions.csv" }, "Download CSV");
  const [el, body] = section("transactions", "Transactions",
    h("label", { for: "transaction-type", class: "inline-label" }, "Type"), type, csv);
  const newer = []; // the `before` cursors of the pages above this one
  let before;
  const setCsv = () => {
    const url = new URL(`${API}transactions`, document.baseURI);
    url.searchParams.set("format", "csv");
    url.searchParams.set("limit", "1000");
    if (type.value) url.searchParams.set("type", type.value);
    csv.setAttribute("href", url.pathname + url.search);
  };
  const refresh = () => load(body, async () => {
    const data = await api("transactions", { params: { limit: TRANSACTIONS_PAGE, before, type: type.value } });
    const f = state.fmt;
    const rows = table(
      [
        { label: "Date", value: (t) => h("time", { datetime: t.created_at }, f.dateTime(t.created_at)) },
        { label: "Type", value: (t) => h("span", { class: `type type-${t.type}` }, t.type) },
        {
          label: "Credits",
          value: (t) => h("span", { class: t.amount < 0 ? "neg" : "pos" }, f.signed(t.amount)),
          num: true,
        },
        { label: "Balance", value: (t) => f.int(t.balance), num: true },
        { label: "Description", value: (t) => t.description || "" },
      ],
      data.transactions,
      type.value ? `No ${type.value} transactions.` : "No transactions yet.",
      { id: "transactions-table", "aria-label": "Transactions" },
    );
    const pager = h("div", { class: "pager" });
    if (newer.length) {
      pager.append(h("button", { type: "button", id: "transactions-newer", on: { click: () => { before = newer.pop(); refresh(); } } }, "← Newer"));
    }
    if (data.next !== null && data.next !== undefined) {
      pager.append(h("button", { type: "button", id: "transactions-older", on: { click: () => { newer.push(before); before = data.next; refresh(); } } }, "Older →"));
    }
    return [rows, pager];
  });
  type.addEventListener("change", () => {
    newer.length = 0;
    before = undefined;
    setCsv();
    refresh();
  });
  setCsv();
  refresh();
  return { el, refresh };
};

// -- buy -----------------------------------------------------------------------------------

let packagesData = null;
const packages = () => (packagesData ??= api("packages").then((d) => d.packages));

views.buy = () => {
  const [el, body] = section("buy", "Buy credits");
  const status = h("div", { id: "buy-status", role: "status", "aria-live": "polite" });
  load(body, async () => {
    const list = await packages();
    if (!list.length) return h("p", { class: "empty" }, "No credit packages are for sale right now.");
    const f = state.fmt;
    return [
      h("ul", { class: "packages", id: "packages" }, list.map((p) => {
        const button = h("button", { type: "button", "aria-describedby": `package-${p.id}-name` }, `Buy for ${f.price(p.price, p.currency)}`);
        button.dataset.package = p.id;
        button.addEventListener("click", () => buy(p, button, status));
        return h("li", { class: "package" },
          h("h3", { id: `package-${p.id}-name` }, p.name),
          h("p", { class: "credits" }, `${f.int(p.credits)} credits`),
          p.credit_expiry_s ? h("p", { class: "muted" }, `Valid for ${f.int(Math.round(p.credit_expiry_s / 86400))} days`) : null,
          button);
      })),
      status,
    ];
  });
  return { el, refresh: () => {} };
};

async function buy(p, button, status) {
  const intent = `buy:${p.id}`;
  await busy(button, async () => {
    const win = newWindow();
    status.replaceChildren(h("p", { class: "muted" }, "Opening the payment page…"));
    try {
      const session = await api("checkout", {
        method: "POST",
        body: { package_id: p.id, quantity: 1, idempotency_key: intentKey(intent) },
      });
      intentDone(intent);
      const text = h("p", { class: "notice" }, `Complete your payment for ${p.name} in the new window. This page shows your new balance once it is done.`);
      status.replaceChildren(text);
      win.go(session.url, (link) => text.append(" ", link));
      watchPurchase(session.id, { paid: false });
    } catch (e) {
      win.close();
      if (!(e instanceof ApiError && e.status === 401)) {
        status.replaceChildren(h("p", { class: "error", role: "alert" }, `The payment could not start: ${e.message}`));
      }
    }
  });
}

/** Follows a Checkout Session until its credits are granted (then the balance and the
 * transactions are reloaded), it failed or expired, or it is not this account's. `paid`: the
 * customer is back from Checkout (the page was opened at ?purchase=<id>). */
function watchPurchase(id, { paid }) {
  const noticeId = `purchase-${id.replace(/[^A-Za-z0-9_-]/g, "")}`;
  const say = (text, kind = "notice") => notice(text, { kind, id: noticeId });
  const finish = (text, kind = "notice") => {
    say(text, kind);
    $("buy-status")?.replaceChildren();
    if (paid) history.replaceState(null, "", location.pathname);
  };
  if (paid) say("Payment received, your credits are on their way.");
  const started = Date.now();
  let delay = 500;
  const poll = async () => {
    if (state.ended) return;
    let p;
    try {
      p = await api(`purchases/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      // a malformed id is refused (4xx) for good; the network or a 5xx may pass: ask again
      p = { status: e instanceof ApiError && e.status >= 400 && e.status < 500 ? "unknown" : "pending" };
    }
    if (p.status === "granted") {
      finish(p.credits ? `Your ${state.fmt.int(p.credits)} credits have arrived.` : "Your credits have arrived.", "notice success");
      sections.balance?.refresh();
      sections.transactions?.refresh();
      return;
    }
    if (p.status === "failed") return finish("The payment did not go through; nothing was charged.", "error");
    if (p.status === "expired") return finish("The payment was not completed; nothing was charged.");
    if (p.status === "unknown") return finish("This purchase was not found for your account.", "error");
    const limit = paid ? 10 * 60_000 : 30 * 60_000;
    if (Date.now() - started > limit) {
      if (paid) say("Your payment is still being processed: your credits will show here once it is done.");
      return;
    }
    delay = Math.min(delay * 1.5, 4000);
    setTimeout(poll, delay);
  };
  poll();
}

// -- auto top-up ---------------------------------------------------------------------------

views.auto_topup = () => {
  const [el, body] = section("auto_topup", "Automatic top-up");
  const enabled = h("input", { type: "checkbox", id: "auto-topup-enabled" });
  enabled.dataset.field = "enabled";
  const pkg = h("select", {});
  const threshold = h("input", { type: "text", inputmode: "numeric", autocomplete: "off" });
  const method = h("select", {});
  const save = h("button", { type: "submit", id: "auto-topup-save" }, "Save");
  const form = h("form", { id: "auto-topup-form", class: "grid-form", novalidate: true },
    h("div", { class: "check" }, enabled, h("label", { for: "auto-topup-enabled" }, "Top up automatically")),
    field("auto-topup-package", "Package to buy", pkg, { field: "package_id" }),
    field("auto-topup-threshold", "When the balance falls below (credits)", threshold, { field: "threshold" }),
    field("auto-topup-card", "Pay with", method, { field: "payment_method" }),
    h("div", { class: "actions" }, save));
  const card = h("p", { id: "card-status", class: "muted" });
  const saveCard = h("button", { type: "button", id: "save-card", class: "secondary" }, "Save a card");
  const cardBox = h("div", { class: "card-row" }, card, saveCard);
  const status = h("p", { id: "auto-topup-status" });
  let current = null;

  const refresh = () => load(body, async () => {
    const [list, auto, methods] = await Promise.all([
      packages(),
      api("auto-topup").then((d) => d.auto_topup),
      api("payment-methods").then((d) => d.payment_methods).catch((e) => {
        if (e instanceof ApiError && e.status === 401) throw e;
        return [];
      }),
    ]);
    current = auto;
    pkg.replaceChildren(...list.map((p) => h("option", { value: p.id }, `${p.name} (${state.fmt.int(p.credits)} credits)`)));
    method.replaceChildren(...methods.map((m) => h("option", { value: m.id }, m.label || m.type)));
    method.closest(".field").hidden = !methods.length;
    if (auto) {
      enabled.checked = auto.enabled;
      pkg.value = auto.package_id;
      threshold.value = String(auto.threshold);
      if (methods.some((m) => m.id === auto.payment_method)) method.value = auto.payment_method;
    }
    card.textContent = methods.length
      ? `${methods.length === 1 ? "One card is" : `${methods.length} cards are`} saved for automatic top-ups.`
      : "No card saved yet: save one to top up automatically.";
    const named = list.find((p) => p.id === auto?.package_id)?.name ?? auto?.package_id;
    let text = auto?.enabled
      ? `On: buys ${named} when the balance falls below ${state.fmt.int(auto.threshold)} credits.`
      : "Off.";
    if (auto?.paused) text += ` Paused: ${auto.last_error ?? "the last charge failed"}.`;
    if (auto?.needs_customer) text += " Your bank asked for a confirmation: save your card again.";
    status.textContent = text;
    return [status, form, cardBox];
  });

  onSubmit(form, async () => {
    if (!enabled.checked) {
      if (current) await api("auto-topup", { method: "DELETE" });
    } else {
      if (!method.value) throw new InputError("payment_method", "Save a card first.");
      const req = { package_id: pkg.value, threshold: whole(threshold), payment_method: method.value, enabled: true };
      await api("auto-topup", { method: "PUT", body: req });
    }
    await refresh();
    status.focus();
  });
  status.setAttribute("tabindex", "-1");
  status.setAttribute("role", "status");

  saveCard.addEventListener("click", () => busy(saveCard, async () => {
    const win = newWindow();
    try {
      const s = await api("payment-method", { method: "POST", body: { idempotency_key: intentKey("card") } });
      intentDone("card");
      card.textContent = "Save your card in the new window.";
      win.go(s.url, (link) => card.append(" ", link));
    } catch (e) {
      win.close();
      if (!(e instanceof ApiError && e.status === 401)) card.textContent = `The card could not be saved: ${e.message}`;
    }
  }));
  refresh();
  return { el, refresh };
};

// -- keys ----------------------------------------------------------------------------------

function limitFields(prefix, apiPrefix) {
  const credits = h("input", { type: "text", inputmode: "numeric", autocomplete: "off" });
  const interval = intervalSelect();
  interval.value = "month";
  return {
    credits,
    interval,
    nodes: [
      field(`${prefix}-credits`, "Spending limit (credits)", credits, { field: `${apiPrefix}.credits`, hint: "Leave empty for no limit." }),
      field(`${prefix}-interval`, "Resets", interval, { field: `${apiPrefix}.interval` }),
    ],
    value() {
      const n = whole(credits, { optional: true, min: 1 });
      if (n === null) return null;
      return interval.value ? { credits: n, interval: interval.value, interval_count: 1 } : { credits: n };
    },
    set(limit) {
      credits.value = limit ? String(limit.credits) : "";
      interval.value = limit ? limit.interval ?? "" : "month";
    },
  };
}

/** A modal dialog (native <dialog>: focus moves in, Escape closes it, focus returns). */
function dialog(id, title, content, buttons) {
  const titleId = `${id}-title`;
  const el = h("dialog", { id, "aria-labelledby": titleId },
    h("form", { method: "dialog", novalidate: true }, h("h2", { id: titleId }, title), content, h("div", { class: "actions" }, buttons)));
  document.body.append(el);
  return el;
}

function openDialog(el, opener) {
  el.showModal();
  el.addEventListener("close", () => {
    if (opener?.isConnected) opener.focus();
  }, { once: true });
}

views.keys = () => {
  const [el, body] = section("keys", "API keys");
  const keysStatus = h("p", { id: "keys-status", class: "muted", role: "status", tabindex: "-1" });
  const list = h("div", { id: "keys-list" });

  // create
  const name = h("input", { type: "text", autocomplete: "off", maxlength: "200" });
  const limit = limitFields("new-key", "spend_limit");
  const create = h("button", { type: "submit", id: "create-key" }, "Create key");
  const form = h("form", { id: "key-form", class: "grid-form", novalidate: true },
    field("new-key-name", "Name", name, { field: "name" }),
    limit.nodes, h("div", { class: "actions" }, create));
  const secret = h("code", { id: "new-key-secret", class: "secret" });
  const copy = h("button", { type: "button", id: "copy-key" }, "Copy");
  const copied = h("span", { id: "copy-status", role: "status" });
  const done = h("button", { type: "button", class: "secondary", id: "new-key-done" }, "Done");
  const reveal = h("div", { id: "new-key", class: "notice reveal", hidden: true },
    h("p", { id: "new-key-text" }), h("div", { class: "secret-row" }, secret, copy, copied), done);

  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secret.textContent);
      copied.textContent = "Copied";
    } catch {
      getSelection().selectAllChildren(secret);
      copied.textContent = "Select the key and copy it (Ctrl+C or ⌘C)";
    }
  });
  done.addEventListener("click", () => {
    secret.textContent = "";
    reveal.hidden = true;
    name.focus();
  });

  onSubmit(form, async () => {
    const label = name.value.trim();
    if (!label) throw new InputError("name", "Enter a name for the key.");
    const req = { name: label };
    const spend = limit.value();
    if (spend) req.spend_limit = spend;
    const intent = `key:${JSON.stringify(req)}`;
    const made = await api("keys", { method: "POST", body: { ...req, idempotency_key: intentKey(intent) } });
    intentDone(intent);
    copied.textContent = "";
    if (made.key) {
      $("new-key-text").textContent = `Your new key “${made.name}”: copy it now, it is shown only this once.`;
      secret.textContent = made.key;
    } else {
      $("new-key-text").textContent = `The key “${made.name}” was already created; its secret was shown only once. Revoke it and create another if you did not keep it.`;
      secret.textContent = "";
    }
    copy.hidden = !made.key;
    reveal.hidden = false;
    name.value = "";
    limit.set(null);
    await refreshList();
    (made.key ? copy : done).focus();
  });

  // set a key's limit
  const edit = limitFields("key-limit", "spend_limit");
  const saveLimit = h("button", { type: "submit", value: "save", id: "key-limit-save" }, "Save limit");
  const removeLimit = h("button", { type: "submit", value: "remove", class: "secondary", id: "key-limit-remove" }, "Remove limit");
  const cancelLimit = h("button", { type: "submit", value: "cancel", class: "secondary", formnovalidate: true }, "Cancel");
  const limitDialog = dialog("key-limit-dialog", "Spending limit", edit.nodes, [saveLimit, removeLimit, cancelLimit]);
  const limitForm = limitDialog.querySelector("form");
  let editing = null;
  limitForm.addEventListener("submit", (event) => {
    const action = event.submitter?.value;
    if (action === "cancel") return; // method=dialog closes it
    event.preventDefault();
    busy(event.submitter, async () => {
      clearErrors(limitForm);
      try {
        const spend = action === "remove" ? null : edit.value();
        if (action === "save" && spend === null) throw new InputError("spend_limit.credits", "Enter a limit, or remove it.");
        await api(`keys/${encodeURIComponent(editing.key_id)}`, { method: "PATCH", body: { spend_limit: spend } });
        keysStatus.textContent = spend ? `Limit of “${editing.name}” set to ${limitText(spend)}.` : `Limit of “${editing.name}” removed.`;
        limitDialog.close();
        await refreshList();
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 401)) showError(limitForm, e);
      }
    });
  });

  // revoke
  const revokeText = h("p", { id: "revoke-text" });
  const revokeButton = h("button", { type: "submit", value: "revoke", class: "danger", id: "revoke-confirm" }, "Revoke");
  const cancelRevoke = h("button", { type: "submit", value: "cancel", class: "secondary", id: "revoke-cancel", autofocus: true }, "Cancel");
  const revokeDialog = dialog("revoke-dialog", "Revoke this key?", revokeText, [cancelRevoke, revokeButton]);
  const revokeForm = revokeDialog.querySelector("form");
  let revoking = null;
  revokeForm.addEventListener("submit", (event) => {
    if (event.submitter?.value !== "revoke") return;
    event.preventDefault();
    busy(revokeButton, async () => {
      clearErrors(revokeForm);
      try {
        await api(`keys/${encodeURIComponent(revoking.key_id)}`, { method: "DELETE" });
        revokeDialog.close();
        keysStatus.textContent = `Key “${revoking.name}” revoked: requests with it are refused.`;
        await refreshList();
        keysStatus.focus();
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 401)) showError(revokeForm, e);
      }
    });
  });

  const refreshList = () => load(list, async () => {
    const data = await api("keys");
    const f = state.fmt;
    return table(
      [
        { label: "Name", value: (k) => k.name || "—" },
        { label: "Key", value: (k) => h("code", {}, `${k.prefix}…`) },
        { label: "Created", value: (k) => f.date(k.created_at) },
        {
          label: "Spending limit",
          value: (k) => (k.spend ? spendText(k.spend) : limitText(k.spend_limit)),
        },
        {
          label: "Status",
          value: (k) => (k.revoked_at
            ? h("span", { class: "state state-revoked" }, `revoked ${f.date(k.revoked_at)}`)
            : h("span", { class: "state state-active" }, "active")),
        },
        {
          label: "Actions",
          value: (k) => (k.revoked_at ? "" : h("div", { class: "row-actions" },
            h("button", {
              type: "button", class: "secondary", "aria-label": `Set the spending limit of ${k.name || k.prefix}`,
              on: { click: (e) => { editing = k; clearErrors(limitForm); edit.set(k.spend_limit); openDialog(limitDialog, e.currentTarget); } },
            }, "Set limit"),
            h("button", {
              type: "button", class: "secondary danger-text", "aria-label": `Revoke ${k.name || k.prefix}`,
              on: {
                click: (e) => {
                  revoking = k;
                  clearErrors(revokeForm);
                  revokeText.textContent = `Requests with “${k.name || k.prefix}” (${k.prefix}…) will be refused at once. This cannot be undone.`;
                  openDialog(revokeDialog, e.currentTarget);
                },
              },
            }, "Revoke"))),
        },
      ],
      data.keys,
      "No API keys yet.",
      { id: "keys-table", "aria-label": "API keys" },
    );
  });

  body.replaceChildren(keysStatus, list, h("h3", { class: "sub" }, "Create a key"), form, reveal);
  refreshList();
  return { el, refresh: refreshList };
};

// -- limits and alerts ---------------------------------------------------------------------

views.limits = () => {
  const [el, body] = section("limits", "Limits and alerts");
  const current = h("p", { id: "spend-limit-current" });
  const limit = limitFields("spend-limit", "spend_limit");
  const save = h("button", { type: "submit", value: "save", id: "spend-limit-save" }, "Save limit");
  const remove = h("button", { type: "submit", value: "remove", class: "secondary", id: "spend-limit-remove" }, "Remove limit");
  const form = h("form", { id: "spend-limit-form", class: "grid-form", novalidate: true },
    limit.nodes, h("div", { class: "actions" }, save, remove));
  onSubmit(form, async (button) => {
    const spend = button.value === "remove" ? null : limit.value();
    if (button.value === "save" && spend === null) throw new InputError("spend_limit.credits", "Enter a limit, or remove it.");
    const after = await api("spend-limit", { method: "PUT", body: { spend_limit: spend } });
    showLimit(after.spend, after.spend_limit);
    sections.balance?.refresh();
    current.focus();
  });

  const threshold = h("input", { type: "text", inputmode: "numeric", autocomplete: "off" });
  const alertCurrent = h("p", { id: "alert-current" });
  const alertForm = h("form", { id: "alert-form", class: "grid-form", novalidate: true },
    field("alert-threshold", "Alert me when the balance falls below (credits)", threshold, { field: "low_balance_threshold", hint: "Leave empty for no alert." }),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "alert-save" }, "Save alert")));
  onSubmit(alertForm, async () => {
    const n = whole(threshold, { optional: true });
    const a = await api("alerts", { method: "PUT", body: { low_balance_threshold: n } });
    showAlert(a);
  });
  const showAlert = (a) => {
    const t = a.low_balance_threshold;
    alertCurrent.textContent = t === null || t === undefined ? "No low-balance alert." : `Alert below ${state.fmt.int(t)} credits.`;
    threshold.value = t === null || t === undefined ? "" : String(t);
  };

  const showLimit = (spend, limitNow) => {
    current.textContent = spend
      ? `Spending limit: ${spendText(spend)}.`
      : "No spending limit: requests are limited only by your balance.";
    remove.hidden = !limitNow;
    limit.set(limitNow);
  };
  current.setAttribute("tabindex", "-1");
  current.setAttribute("role", "status");

  const refresh = async (first = false) => {
    const [b, a] = await Promise.all([
      first ? firstBalance() : api("balance"),
      api("alerts").catch((e) => {
        if (e instanceof ApiError && e.status === 401) throw e;
        return { low_balance_threshold: null };
      }),
    ]);
    showLimit(b.spend, b.spend?.spend_limit ?? null);
    showAlert(a);
  };
  body.replaceChildren(
    h("h3", { class: "sub" }, "Spending limit"), current, form,
    h("h3", { class: "sub" }, "Low-balance alert"), alertCurrent, alertForm);
  refresh(true).catch((e) => {
    if (!(e instanceof ApiError && e.status === 401)) current.textContent = e.message;
  });
  return { el, refresh };
};

// -- billing details (Stripe's own portal) -------------------------------------------------

views.billing = () => {
  if (!state.session.features?.billing_portal) return null;
  const [el, body] = section("billing", "Billing details");
  const button = h("button", { type: "button", id: "billing-portal" }, "Billing details");
  const status = h("p", { class: "muted", id: "billing-status" }, "Payment methods, invoices and receipts, on Stripe (opens in a new window).");
  button.addEventListener("click", () => busy(button, async () => {
    const win = newWindow();
    try {
      const s = await api("billing-portal", { method: "POST" });
      win.go(s.url, (link) => status.append(" ", link));
    } catch (e) {
      win.close();
      if (!(e instanceof ApiError && e.status === 401)) status.textContent = e.message;
    }
  }));
  body.replaceChildren(status, button);
  return { el, refresh: () => {} };
};

// -- start ---------------------------------------------------------------------------------

const sections = {};

async function start() {
  $("sign-out").addEventListener("click", () => busy($("sign-out"), async () => {
    try {
      await api("session", { method: "DELETE" });
    } catch {
      // ended already: the same outcome
    }
    sessionEnded("You have signed out");
  }));
  let session;
  try {
    session = await api("session");
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) {
      $("loading").replaceWith(h("p", { class: "error", role: "alert" }, `Billing is unavailable: ${e.message}`));
    }
    return;
  }
  state.session = session;
  // kept for the "session ended" page, shown when there is no session to ask any more
  remember("return_url", session.return_url);
  remember("product_name", session.branding?.product_name);
  brand(session);
  $("loading").hidden = true;
  $("nav").hidden = false;
  const shown = new Set(session.sections ?? []);
  const root = $("sections");
  for (const name of ORDER) {
    if (!shown.has(name) || !views[name]) continue;
    const view = views[name]();
    if (!view) continue;
    sections[name] = view;
    root.append(view.el);
  }
  const params = new URLSearchParams(location.search);
  const purchase = params.get("purchase");
  if (purchase) watchPurchase(purchase, { paid: true });
  if (params.get("card") === "saved") {
    notice("Your card is saved.", { id: "card-saved" });
    history.replaceState(null, "", location.pathname);
  }
}

start();
