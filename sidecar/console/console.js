// The credit-sidecar operator console: a read-only view of the admin API.
//
// The admin token lives in this tab's sessionStorage and goes out only as an Authorization
// header to the same origin. Everything the API returns reaches the page as text (text nodes,
// textContent, setAttribute of fixed attributes): never as HTML. API URLs are relative to the
// page (/console), so the console also works behind a proxy that adds a path prefix. The DOM
// helpers, tables, chart and formats are the ones the customer portal uses too (/ui/ui.js).

import {
  $, ApiError, DAY_MS, errorBox, errorOf, formats, h, networkError, panel, stats, table, usageChart,
} from "../ui/ui.js";

const TOKEN_KEY = "credit-sidecar.admin-token";
const ACCOUNTS_PAGE = 50;
const TRANSACTIONS_PAGE = 50;
const TRANSACTION_TYPES = [
  "usage", "purchase", "grant", "expiry", "refund", "hold", "settle", "release", "revoke",
];
const USAGE_RANGES = [
  { label: "Last 24 hours, hourly", interval: "hour", span: DAY_MS },
  { label: "Last 7 days, hourly", interval: "hour", span: 7 * DAY_MS },
  { label: "Last 30 days, daily", interval: "day", span: 30 * DAY_MS },
  { label: "Last 90 days, daily", interval: "day", span: 90 * DAY_MS },
];

// -- API ----------------------------------------------------------------------------------

function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** GET a path of the API (relative, e.g. "v1/admin/packages"); the decoded JSON, or a Blob
 * when another type is asked for. Errors carry the API's own code and message. */
async function api(path, params = {}, { token = storedToken(), accept = "application/json" } = {}) {
  const url = new URL(path, document.baseURI);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  let response;
  try {
    response = await fetch(url, {
      headers: { Authorization: `Bearer ${token}`, Accept: accept },
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    throw networkError(e, "the sidecar");
  }
  if (!response.ok) throw await errorOf(response);
  return accept === "application/json" ? response.json() : response.blob();
}

const enc = encodeURIComponent;

// -- Formats (en-US: the operator's console is not localised) ---------------------------

const fmt = formats("en-US");
const fmtInt = fmt.int;
const fmtSigned = fmt.signed;
const fmtPrice = fmt.price;

/** An RFC 3339 timestamp as a <time>, shortened to the second; the full value on hover. */
function fmtTime(value) {
  if (!value) return "—";
  const text = String(value);
  const short = text.replace("T", " ").replace(/\.\d+Z$/, "Z");
  return h("time", { datetime: text, title: text }, short);
}

function fmtJSON(value) {
  if (value === undefined || value === null) return "";
  if (typeof value === "object" && Object.keys(value).length === 0) return "";
  return h("code", { class: "json" }, JSON.stringify(value));
}

function accountLink(account) {
  return h("a", { href: `#/account/${enc(account)}`, class: "account-link" }, account);
}

// -- Views --------------------------------------------------------------------------------

let generation = 0; // bumped on every navigation: late answers of a left view are dropped

/** Fills `body` with what `fn` builds, showing progress and the API's error. */
async function load(body, fn) {
  const gen = generation;
  body.replaceChildren(h("p", { class: "muted loading" }, "Loading…"));
  try {
    const content = await fn();
    if (gen === generation) body.replaceChildren(...[content].flat());
  } catch (e) {
    if (gen !== generation) return;
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      signOut(e.message);
      return;
    }
    body.replaceChildren(errorBox(e));
  }
}

const accountsState = { prefix: "", after: null, previous: [] };

function accountsView() {
  const view = $("view");
  const filter = h("input", {
    id: "account-prefix",
    type: "search",
    placeholder: "account id prefix",
    value: accountsState.prefix,
    spellcheck: "false",
  });
  const form = h(
    "form",
    { id: "account-filter", class: "inline" },
    h("label", { for: "account-prefix" }, "Prefix"),
    filter,
    h("button", { type: "submit" }, "Filter"),
  );
  const [accounts, body] = panel("Accounts", "accounts", form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(accountsState, { prefix: filter.value.trim(), after: null, previous: [] });
    fill();
  });
  view.replaceChildren(h("h2", {}, "Accounts"), accounts);

  function fill() {
    load(body, async () => {
      const data = await api("v1/admin/accounts", {
        limit: ACCOUNTS_PAGE,
        after: accountsState.after,
        prefix: accountsState.prefix,
      });
      const rows = table(
        [
          { label: "Account", value: (a) => accountLink(a.account) },
          { label: "Balance", value: (a) => fmtInt(a.balance), num: true },
          { label: "Debt", value: (a) => fmtInt(a.debt), num: true },
          { label: "Seq", value: (a) => fmtInt(a.seq), num: true },
          { label: "Created", value: (a) => fmtTime(a.created_at) },
        ],
        data.accounts,
        accountsState.prefix ? "No account has this prefix." : "No accounts yet.",
        { id: "accounts-table" },
      );
      const pager = h("div", { class: "pager" });
      if (accountsState.previous.length) {
        pager.append(
          h("button", { type: "button", on: { click: () => page(accountsState.previous.pop()) } },
            "← Previous"),
        );
      }
      if (data.next) {
        pager.append(
          h("button", {
            type: "button",
            id: "accounts-next",
            on: {
              click: () => {
                accountsState.previous.push(accountsState.after);
                page(data.next);
              },
            },
          }, "Next →"),
        );
      }
      return [rows, pager];
    });
  }

  function page(after) {
    accountsState.after = after;
    fill();
  }

  fill();
}

function accountView(account) {
  const view = $("view");
  const [balance, balanceBody] = panel("Balance", "balance");
  const [buckets, bucketsBody] = panel("Buckets", "buckets");
  const [holds, holdsBody] = panel("Holds", "holds");

  const range = h(
    "select",
    { id: "usage-range", "aria-label": "Usage period" },
    USAGE_RANGES.map((r, i) => h("option", { value: i }, r.label)),
  );
  const [usage, usageBody] = panel("Usage", "usage", range);

  const typeFilter = h(
    "select",
    { id: "transaction-type", "aria-label": "Transaction type" },
    h("option", { value: "" }, "All types"),
    TRANSACTION_TYPES.map((t) => h("option", { value: t }, t)),
  );
  const csv = h("button", { type: "button", id: "transactions-csv" }, "Download CSV");
  const [transactions, transactionsBody] = panel("Transactions", "transactions", typeFilter, csv);

  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/accounts" }, "← Accounts")),
    h("h2", {}, "Account ", h("span", { class: "account-id" }, account)),
    balance,
    buckets,
    holds,
    usage,
    transactions,
  );

  const base = `v1/accounts/${enc(account)}`;
  const balanceData = api(`${base}/balance`);
  load(balanceBody, async () => {
    const b = await balanceData;
    const rl = b.rate_limit;
    return stats(
      [
        ["Balance", fmtInt(b.balance), "big"],
        ["Available", fmtInt(b.available)],
        ["Held", fmtInt(b.held)],
        ["Debt", fmtInt(b.debt), b.debt ? "warn" : null],
        ["Overdraft limit", fmtInt(b.overdraft_limit)],
        ["Low-balance threshold", fmtInt(b.low_balance_threshold)],
        ["Rate limit", rl ? `${fmtInt(rl.requests)} / ${fmtInt(rl.period_ms)} ms (burst ${fmtInt(rl.burst)})` : "none"],
        ["Created", fmtTime(b.created_at)],
      ],
      { id: "balance-stats" },
    );
  });
  load(bucketsBody, async () => {
    const b = await balanceData;
    return table(
      [
        { label: "Bucket", value: (k) => k.id },
        { label: "Source", value: (k) => k.source },
        { label: "Priority", value: (k) => fmtInt(k.priority), num: true },
        { label: "Credits", value: (k) => fmtInt(k.credits), num: true },
        { label: "Remaining", value: (k) => fmtInt(k.remaining), num: true },
        { label: "Held", value: (k) => fmtInt(k.held), num: true },
        { label: "Created", value: (k) => fmtTime(k.created_at) },
        { label: "Expires", value: (k) => (k.expires_at ? fmtTime(k.expires_at) : "never") },
        { label: "Metadata", value: (k) => fmtJSON(k.metadata) },
      ],
      b.buckets,
      "No live buckets.",
      { id: "buckets-table" },
    );
  });
  load(holdsBody, async () => {
    const data = await api(`${base}/holds`);
    const shown = new Set([
      "hold_id", "state", "amount", "charged", "created_at", "expires_at", "buckets",
    ]);
    const details = (x) =>
      fmtJSON(
        Object.fromEntries(
          Object.entries(x).filter(([k, v]) => !shown.has(k) && v !== null && v !== undefined),
        ),
      );
    return table(
      [
        { label: "Hold", value: (x) => x.hold_id },
        { label: "State", value: (x) => h("span", { class: `state state-${x.state}` }, x.state) },
        { label: "Amount", value: (x) => fmtInt(x.amount), num: true },
        { label: "Charged", value: (x) => fmtInt(x.charged), num: true },
        { label: "Created", value: (x) => fmtTime(x.created_at) },
        { label: "Expires", value: (x) => fmtTime(x.expires_at) },
        {
          label: "From buckets",
          value: (x) => (x.buckets ?? []).map((k) => `${k.bucket}: ${fmtInt(k.amount)}`).join(", "),
        },
        { label: "Details", value: details },
      ],
      data.holds,
      "No holds.",
      { id: "holds-table" },
    );
  });

  const drawUsage = () =>
    load(usageBody, async () => {
      const r = USAGE_RANGES[Number(range.value)] ?? USAGE_RANGES[0];
      const until = Date.now();
      const since = until - r.span;
      const data = await api(`${base}/usage`, {
        interval: r.interval,
        since: new Date(since).toISOString(),
        until: new Date(until).toISOString(),
      });
      const label = (t) => {
        const iso = new Date(t).toISOString();
        return r.interval === "day" ? iso.slice(0, 10) : `${iso.slice(5, 10)} ${iso.slice(11, 16)}`;
      };
      return usageChart(data.points, since, until, r.interval, {
        int: fmtInt,
        label,
        tip: (t) => `${label(t)} UTC`,
        summary: (credits, checks) =>
          credits || checks
            ? `${fmtInt(credits)} credits in ${fmtInt(checks)} checks (times in UTC)`
            : "No usage in this period.",
      });
    });
  range.addEventListener("change", drawUsage);
  drawUsage();

  const older = []; // the `before` cursors of the pages above the current one
  const drawTransactions = (before) =>
    load(transactionsBody, async () => {
      const data = await api(`${base}/transactions`, {
        limit: TRANSACTIONS_PAGE,
        before,
        type: typeFilter.value,
      });
      const details = (t) => {
        const d = {};
        for (const key of ["hold_id", "idempotency_key", "source_transaction_id", "key_id", "route"]) {
          if (t[key]) d[key] = t[key];
        }
        if (t.metadata && Object.keys(t.metadata).length) d.metadata = t.metadata;
        return fmtJSON(d);
      };
      const rows = table(
        [
          { label: "Time", value: (t) => fmtTime(t.created_at) },
          { label: "Seq", value: (t) => fmtInt(t.seq), num: true },
          { label: "Type", value: (t) => h("span", { class: `type type-${t.type}` }, t.type) },
          {
            label: "Amount",
            value: (t) => h("span", { class: t.amount < 0 ? "neg" : "pos" }, fmtSigned(t.amount)),
            num: true,
          },
          { label: "Balance", value: (t) => fmtInt(t.balance), num: true },
          { label: "Debt", value: (t) => fmtInt(t.debt), num: true },
          { label: "Description", value: (t) => t.description || "" },
          { label: "Details", value: details },
          { label: "Id", value: (t) => h("code", {}, t.id) },
        ],
        data.transactions,
        typeFilter.value ? `No ${typeFilter.value} transactions.` : "No transactions in SQL yet.",
        { id: "transactions-table" },
      );
      const pager = h("div", { class: "pager" });
      if (older.length) {
        pager.append(
          h("button", { type: "button", on: { click: () => drawTransactions(older.pop()) } },
            "← Newer"),
        );
      }
      if (data.next !== null && data.next !== undefined) {
        pager.append(
          h("button", {
            type: "button",
            id: "transactions-older",
            on: {
              click: () => {
                older.push(before);
                drawTransactions(data.next);
              },
            },
          }, "Older →"),
        );
      }
      return [rows, pager];
    });
  typeFilter.addEventListener("change", () => {
    older.length = 0;
    drawTransactions(undefined);
  });
  drawTransactions(undefined);

  csv.addEventListener("click", async () => {
    csv.disabled = true;
    try {
      const blob = await api(
        `${base}/transactions`,
        { format: "csv", limit: 1000, type: typeFilter.value },
        { accept: "text/csv" },
      );
      const link = h("a", { href: URL.createObjectURL(blob), download: `${account}-transactions.csv` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    } catch (e) {
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) signOut(e.message);
      else transactionsBody.prepend(errorBox(e));
    } finally {
      csv.disabled = false;
    }
  });
}

function packagesView() {
  const [packages, body] = panel("Credit packages", "packages");
  $("view").replaceChildren(h("h2", {}, "Packages"), packages);
  load(body, async () => {
    const data = await api("v1/admin/packages");
    return table(
      [
        { label: "Package", value: (p) => h("code", {}, p.id) },
        { label: "Name", value: (p) => p.name },
        { label: "Credits", value: (p) => fmtInt(p.credits), num: true },
        { label: "Price", value: (p) => fmtPrice(p.price, p.currency), num: true },
        { label: "Stripe price", value: (p) => p.stripe_price_id || "—" },
        {
          label: "Credits expire",
          value: (p) => (p.credit_expiry_s ? `after ${fmtInt(Math.round(p.credit_expiry_s / 86400))} days` : "never"),
        },
        { label: "State", value: (p) => (p.active ? "active" : "inactive") },
      ],
      data.packages,
      "No packages (credit-sidecar packages put …).",
      { id: "packages-table" },
    );
  });
}

function auditView() {
  const [trail, body] = panel("Audit trail", "audit");
  $("view").replaceChildren(
    h("h2", {}, "Audit"),
    h("p", { class: "muted" },
      "Every change made through the admin API: who (the token), when, why, before and after " +
      "(secrets masked). `credit-sidecar audit verify` checks the chain."),
    trail,
  );
  let before = null;
  const fill = () => load(body, async () => {
    const params = { limit: 50 };
    if (before) params.before = before;
    let data;
    try {
      data = await api("v1/audit", params);
    } catch (e) {
      // a read token may browse everything else: say why this page is empty, stay signed in
      if (e instanceof ApiError && e.status === 403) {
        return h("p", { class: "muted", id: "audit-forbidden" }, "The audit trail needs a token with the admin scope.");
      }
      throw e;
    }
    const rows = table(
      [
        { label: "Seq", value: (e) => fmtInt(e.seq), num: true },
        { label: "When", value: (e) => fmtTime(e.at) },
        { label: "Token", value: (e) => h("span", { title: e.token_id }, e.token_name) },
        { label: "Action", value: (e) => h("code", {}, e.action) },
        { label: "Account", value: (e) => (e.account ? accountLink(e.account) : "—") },
        { label: "Target", value: (e) => e.target ?? "—" },
        { label: "Reason", value: (e) => e.reason ?? "—" },
        {
          label: "Change",
          value: (e) => h("details", {}, h("summary", {}, "before / after"),
            h("pre", {}, fmtJSON(e.before)), h("pre", {}, fmtJSON(e.after))),
        },
      ],
      data.entries,
      "Nothing changed through the admin API yet (or the writer has not written it).",
      { id: "audit-table" },
    );
    const more = h("button", {
      type: "button",
      id: "audit-next",
      hidden: data.next === null,
      on: { click: () => { before = data.next; fill(); } },
    }, "Older");
    return h("div", {}, rows, more);
  });
  fill();
}

function deadLettersView() {
  const [outbox, outboxBody] = panel("Outbox → SQL writer", "outbox");
  const [dead, deadBody] = panel("Outbox dead letters", "outbox-dead-letters");
  const [billing, billingBody] = panel("Billing dead letters (Stripe events)", "billing-dead-letters");
  $("view").replaceChildren(
    h("h2", {}, "Dead letters"),
    h("p", { class: "muted" },
      "Read-only. Retry outbox entries with POST /v1/admin/outbox/dead-letters/retry and " +
        "Stripe events with credit-sidecar billing retry <event id>, once the cause is fixed."),
    outbox,
    dead,
    billing,
  );

  const status = api("v1/admin/outbox");
  load(outboxBody, async () => {
    const o = await status;
    return stats(
      [
        ["Writer", `${o.writer?.mode ?? "—"}${o.writer?.running ? "" : " (not running)"}`,
          o.writer?.running ? null : "warn"],
        ["Unwritten", fmtInt(o.unwritten)],
        ["Lag", `${Number(o.lag_s ?? 0).toFixed(1)} s`],
        ["Dead letters", fmtInt(o.dead_letters), o.dead_letters ? "warn" : null],
        ["Shards", fmtInt(o.shards?.length)],
      ],
      { id: "outbox-stats" },
    );
  });
  load(deadBody, async () => {
    let shards = [0];
    try {
      const o = await status;
      shards = o.shards.map((x, i) => [i, x.dead_letters]).filter(([, n]) => n > 0).map(([i]) => i);
    } catch {
      // the status failed (shown above): look at shard 0
    }
    const rows = [];
    for (const shard of shards) {
      const data = await api("v1/admin/outbox/dead-letters", { shard, count: 100 });
      for (const entry of data.entries) rows.push({ shard: data.shard, ...entry });
    }
    const field = (d, key) => d.entry?.[key] ?? d.fields?.[key] ?? "";
    return table(
      [
        { label: "Shard", value: (d) => fmtInt(d.shard), num: true },
        { label: "Entry", value: (d) => h("code", {}, d.id) },
        { label: "Account", value: (d) => (field(d, "account") ? accountLink(field(d, "account")) : "") },
        { label: "Type", value: (d) => field(d, "type") || field(d, "kind") },
        { label: "Seq", value: (d) => String(field(d, "seq")), num: true },
        { label: "Error", value: (d) => h("span", { class: "error-text" }, d.fields?.dl_error ?? "") },
      ],
      rows,
      "No dead letters: the writer has taken every outbox entry.",
      { id: "outbox-dead-table" },
    );
  });
  load(billingBody, async () => {
    const data = await api("v1/admin/billing/events", { status: "dead", limit: 100 });
    return table(
      [
        { label: "Event", value: (e) => h("code", {}, e.id) },
        { label: "Type", value: (e) => e.type },
        { label: "Attempts", value: (e) => fmtInt(e.attempts), num: true },
        { label: "Received", value: (e) => fmtTime(e.received_at) },
        { label: "Error", value: (e) => h("span", { class: "error-text" }, e.error ?? "") },
      ],
      data.events,
      "No dead Stripe events.",
      { id: "billing-dead-table" },
    );
  });
}

// -- Sign-in and routing ------------------------------------------------------------------

function showLogin(message) {
  generation += 1;
  $("nav").hidden = true;
  $("view").hidden = true;
  $("view").replaceChildren();
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = message ?? "";
  error.hidden = !message;
  $("token").focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(message);
}

async function signIn(event) {
  event.preventDefault();
  const input = $("token");
  const token = input.value.trim();
  const button = event.submitter ?? $("login-form").querySelector("button");
  button.disabled = true;
  try {
    // An admin-only route: the service token is refused here, not on the first page.
    await api("v1/admin/outbox", {}, { token });
    sessionStorage.setItem(TOKEN_KEY, token);
    input.value = "";
    route();
  } catch (e) {
    showLogin(e instanceof ApiError && e.code ? `${e.message} (${e.code})` : e.message);
  } finally {
    button.disabled = false;
  }
}

function route() {
  if (!storedToken()) {
    showLogin();
    return;
  }
  generation += 1;
  $("login").hidden = true;
  $("nav").hidden = false;
  $("view").hidden = false;
  const match = /^#\/([a-z-]*)(?:\/(.*))?$/.exec(location.hash) ?? [];
  const [name, arg] = [match[1] || "accounts", match[2] ?? ""];
  const section = name === "account" ? "accounts" : name;
  for (const link of $("nav").querySelectorAll("a")) {
    link.classList.toggle("current", link.dataset.view === section);
  }
  if (name === "account" && arg) {
    let account;
    try {
      account = decodeURIComponent(arg);
    } catch {
      account = arg;
    }
    accountView(account);
  } else if (name === "packages") packagesView();
  else if (name === "dead-letters") deadLettersView();
  else if (name === "audit") auditView();
  else accountsView();
}

$("login-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => {
  history.replaceState(null, "", location.pathname + location.search);
  signOut();
});
window.addEventListener("hashchange", route);
route();
