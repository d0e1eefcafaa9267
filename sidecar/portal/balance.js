// The balance section: the balance, what is available and held, each bucket of credits with
// its expiry and the business's note (as text), debt, the plan and its renewal, and the
// spending limit with what was spent in its window.

import { h } from "../ui/ui.js";
import { api, firstBalance } from "./api.js";
import { spendText } from "./limits.js";
import { load, section, state } from "./page.js";

const SOURCE_WORDS = { purchase: "purchased", grant: "granted", allowance: "plan", refund: "refunded" };

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

export const balanceView = () => {
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
