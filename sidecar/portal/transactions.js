// The transactions section: the account's transactions, newest first, a page at a time,
// filtered by type, and the same list downloaded as CSV (a link: the cookie goes with it).

import { h, table } from "../ui/ui.js";
import { API, api } from "./api.js";
import { load, section, state } from "./page.js";

const TRANSACTIONS_PAGE = 25;
const TRANSACTION_TYPES = [
  "usage", "purchase", "grant", "allowance", "expiry", "refund", "hold", "settle", "release",
  "revoke",
];

export const transactionsView = () => {
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
