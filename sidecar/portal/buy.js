// The buy section: the packages on sale, buying one through Stripe Checkout (a new window; the
// purchase's idempotency key reused if it is retried), and following a purchase until its
// credits are granted, it failed or expired (also when the customer comes back from
// Checkout to /portal/?purchase=<id>).

import { $, ApiError, h } from "../ui/ui.js";
import { api, intentDone, intentKey, packages } from "./api.js";
import { busy } from "./forms.js";
import { load, newWindow, notice, section, sections, sessionGone, state } from "./page.js";

export const buyView = () => {
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
      if (!sessionGone(e)) {
        status.replaceChildren(h("p", { class: "error", role: "alert" }, `The payment could not start: ${e.message}`));
      }
    }
  });
}

/** Follows a Checkout Session until its credits are granted (then the balance and the
 * transactions are reloaded), it failed or expired, or it is not this account's. `paid`: the
 * customer is back from Checkout (the page was opened at ?purchase=<id>). */
export function watchPurchase(id, { paid }) {
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
      if (sessionGone(e)) return;
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
