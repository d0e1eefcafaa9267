// The billing details section: a link into Stripe's own customer portal (payment methods,
// invoices, receipts), opened in a new window; shown once the account is a Stripe customer.

import { h } from "../ui/ui.js";
import { api } from "./api.js";
import { busy } from "./forms.js";
import { newWindow, section, sessionGone, state } from "./page.js";

export const billingView = () => {
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
      if (!sessionGone(e)) status.textContent = e.message;
    }
  }));
  body.replaceChildren(status, button);
  return { el, refresh: () => {} };
};
