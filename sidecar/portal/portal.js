// The customer portal's entry: an account's balance, usage, transactions, purchases, auto
// top-up, API keys and limits, through the portal API (/v1/portal/…, sidecar/http/portal_api.py).
// This module opens the session, brands the page, signs out, and lays out the sections the
// session shows, each its own module (balance.js, buy.js, usage.js, transactions.js, keys.js,
// limits.js, topup.js, billing.js) on the page's frame (page.js), the API (api.js) and the
// forms (forms.js).
//
// The session is the HttpOnly cookie the portal link set: this script never sees a token.
// Every state change sends the session's CSRF token (X-CSRF-Token); buying, saving a card and
// creating a key also send an idempotency key made once per intent and reused when that
// intent is retried, and their button refuses a second press while the first is in flight,
// so a double click never buys twice. Everything the API returns reaches the page as text
// (ui.js). Stripe's pages cannot be framed: they open in a new top-level window. URLs are
// relative to the page (/portal/), so the portal also works behind a path prefix.

import { $, formats, h } from "../ui/ui.js";
import { api } from "./api.js";
import { balanceView } from "./balance.js";
import { billingView } from "./billing.js";
import { buyView, watchPurchase } from "./buy.js";
import { busy } from "./forms.js";
import { keysView } from "./keys.js";
import { limitsView } from "./limits.js";
import { notice, remember, returnLink, sections, sessionEnded, sessionGone, state } from "./page.js";
import { autoTopupView } from "./topup.js";
import { transactionsView } from "./transactions.js";
import { usageView } from "./usage.js";

// The sections in the page's order, each a function building {el, refresh} (or null).
const VIEWS = [
  ["balance", balanceView],
  ["buy", buyView],
  ["usage", usageView],
  ["transactions", transactionsView],
  ["keys", keysView],
  ["limits", limitsView],
  ["auto_topup", autoTopupView],
  ["billing", billingView],
];

// -- branding ------------------------------------------------------------------------------

function brand(session) {
  const b = session.branding ?? {};
  const name = b.product_name || "Billing";
  $("product").textContent = name;
  $("account-name").textContent = `Account ${session.account}`;
  $("account-name").hidden = false;
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

// -- start ---------------------------------------------------------------------------------

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
    if (!sessionGone(e)) {
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
  for (const [name, build] of VIEWS) {
    if (!shown.has(name)) continue;
    const view = build();
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
