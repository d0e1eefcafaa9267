// The usage section: credits used per hour or day over a chosen period (a chart, times in
// UTC as the API's intervals).

import { DAY_MS, h, usageChart } from "../ui/ui.js";
import { api } from "./api.js";
import { load, section, state } from "./page.js";

const USAGE_RANGES = [
  { label: "Last 24 hours", interval: "hour", span: DAY_MS },
  { label: "Last 7 days", interval: "hour", span: 7 * DAY_MS },
  { label: "Last 30 days", interval: "day", span: 30 * DAY_MS },
  { label: "Last 90 days", interval: "day", span: 90 * DAY_MS },
];

export const usageView = () => {
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
