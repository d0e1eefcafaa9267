// The usage section: credits used per hour or day over a chosen period (a chart, times in
// UTC as the API's intervals), optionally split by API key or by route: the period's totals
// per key (named as the keys list names them) or per route, in a table under the chart.

import { DAY_MS, h, usageChart, usageSplit } from "../ui/ui.js";
import { api } from "./api.js";
import { load, section, sessionGone, state } from "./page.js";

const USAGE_RANGES = [
  { label: "Last 24 hours", interval: "hour", span: DAY_MS },
  { label: "Last 7 days", interval: "hour", span: 7 * DAY_MS },
  { label: "Last 30 days", interval: "day", span: 30 * DAY_MS },
  { label: "Last 90 days", interval: "day", span: 90 * DAY_MS },
];
// The API's `by` values; `heading`: the split table's first column, `none`: its null group,
// `title`: the table's heading and name.
const SPLITS = [
  { value: "", label: "None" },
  { value: "key", label: "API key", heading: "API key", none: "Without a key", title: "Usage by API key" },
  { value: "route", label: "Route", heading: "Route", none: "Without a route", title: "Usage by route" },
];

/** The names of the account's keys by key id (empty where the keys section is not shown, or
 * the list cannot be read: the split then shows key ids alone). */
async function keyNames() {
  if (!(state.session?.sections ?? []).includes("keys")) return new Map();
  try {
    const data = await api("keys");
    return new Map(data.keys.filter((k) => k.name).map((k) => [k.key_id, k.name]));
  } catch (e) {
    if (sessionGone(e)) throw e;
    return new Map();
  }
}

/** A split table's cell: a key's name with its id, or a route; text only. */
function groupLabel(by, names) {
  if (by === "route") return (route) => h("code", {}, route);
  return (keyId) => {
    const name = names.get(keyId);
    return name
      ? h("span", { class: "group" }, h("span", {}, name), " ", h("code", { class: "muted" }, keyId))
      : h("code", {}, keyId);
  };
}

export const usageView = () => {
  const range = h("select", { id: "usage-range" },
    USAGE_RANGES.map((r, i) => h("option", { value: i }, r.label)));
  const by = h("select", { id: "usage-by" },
    SPLITS.map((s) => h("option", { value: s.value }, s.label)));
  const [el, body] = section("usage", "Usage",
    h("label", { for: "usage-range", class: "inline-label" }, "Period"), range,
    h("label", { for: "usage-by", class: "inline-label" }, "Split by"), by);
  const refresh = () => load(body, async () => {
    const r = USAGE_RANGES[Number(range.value)] ?? USAGE_RANGES[0];
    const split = SPLITS.find((s) => s.value === by.value) ?? SPLITS[0];
    const until = Date.now();
    const since = until - r.span;
    const [data, names] = await Promise.all([
      api("usage", {
        params: {
          interval: r.interval,
          since: new Date(since).toISOString(),
          until: new Date(until).toISOString(),
          by: split.value,
        },
      }),
      split.value === "key" ? keyNames() : new Map(),
    ]);
    const f = state.fmt;
    const chart = usageChart(data.points, since, until, r.interval, {
      int: f.int,
      label: (t) => f.slot(t, r.interval),
      tip: (t) => `${f.slot(t, r.interval)} UTC`,
      summary: (credits, checks) =>
        credits || checks
          ? `${f.int(credits)} credits used in ${f.int(checks)} requests (times in UTC)`
          : "No usage in this period.",
    });
    if (!split.value) return chart;
    return [
      ...chart,
      h("h3", { class: "sub", id: "usage-split-title" }, split.title),
      usageSplit(data.points, {
        int: f.int,
        percent: f.percent,
        heading: split.heading,
        name: split.title,
        none: split.none,
        label: groupLabel(split.value, names),
      }),
    ];
  });
  range.addEventListener("change", refresh);
  by.addEventListener("change", refresh);
  refresh();
  return { el, refresh };
};
