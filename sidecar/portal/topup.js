// The automatic top-up section: on or off, which package to buy below which balance, paid
// with which saved card; saving a card through Stripe Checkout in setup mode (a new window).

import { h } from "../ui/ui.js";
import { api, intentDone, intentKey, packages } from "./api.js";
import { busy, field, InputError, onSubmit, whole } from "./forms.js";
import { load, newWindow, section, sessionGone, state } from "./page.js";

export const autoTopupView = () => {
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
        if (sessionGone(e)) throw e;
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
      if (!sessionGone(e)) card.textContent = `The card could not be saved: ${e.message}`;
    }
  }));
  refresh();
  return { el, refresh };
};
