// The limits and alerts section: the account's spending limit (set, shown with what was spent
// in its window, removed) and its low-balance alert; and the spending-limit fields and texts
// the balance and keys sections use too.

import { h } from "../ui/ui.js";
import { api, firstBalance } from "./api.js";
import { field, InputError, onSubmit, whole } from "./forms.js";
import { section, sections, sessionGone, state } from "./page.js";

const INTERVALS = [
  ["day", "per day"], ["week", "per week"], ["month", "per month"], ["year", "per year"],
  ["", "in total (no reset)"],
];

function intervalSelect() {
  return h("select", {}, INTERVALS.map(([value, label]) => h("option", { value }, label)));
}

export function limitText(limit) {
  if (!limit) return "no limit";
  const count = limit.interval_count ?? 1;
  const per = !limit.interval
    ? "in total"
    : count === 1
      ? `per ${limit.interval}`
      : `every ${count} ${limit.interval}s`;
  return `${state.fmt.int(limit.credits)} credits ${per}`;
}

export function spendText(spend) {
  if (!spend) return "";
  const resets = spend.window_ends_at ? `, resets on ${state.fmt.day(spend.window_ends_at)}` : "";
  const window = spend.spend_limit.interval ? "this period" : "so far";
  return `${state.fmt.int(spend.spent)} of ${limitText(spend.spend_limit)} spent ${window}${resets}`;
}

export function limitFields(prefix, apiPrefix) {
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

export const limitsView = () => {
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
        if (sessionGone(e)) throw e;
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
    if (!sessionGone(e)) current.textContent = e.message;
  });
  return { el, refresh };
};
