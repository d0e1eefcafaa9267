// What the operator console and the customer portal share: DOM helpers that insert data as
// text only, tables, a usage chart and a usage split's totals, number and date formats
// through Intl, the API's errors.
//
// Everything here builds nodes with createElement / createTextNode / setAttribute of the
// caller's fixed attribute names: data never reaches the page as HTML, so a strict CSP
// (no inline script or style) holds and a name like "<img onerror=…>" stays text.

export const SVG_NS = "http://www.w3.org/2000/svg";
export const HOUR_MS = 3_600_000;
export const DAY_MS = 86_400_000;

// -- the API's errors ----------------------------------------------------------------------

/** An API error: the HTTP status and the body's {"error": {"code", "message", "field"?}}. */
export class ApiError extends Error {
  constructor(status, code, message, field = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

/** The ApiError of a response that is not ok (its JSON error, else its status line). */
export async function errorOf(response) {
  let code = "http_error";
  let message = `${response.status} ${response.statusText}`;
  let field = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = String(body.error.code ?? code);
      message = String(body.error.message ?? message);
      field = body.error.field == null ? null : String(body.error.field);
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message, field);
}

/** The error of a fetch that never got an answer. */
export function networkError(e, who = "the server") {
  return new ApiError(0, "network_error", `${who} did not answer (${e.message})`);
}

// -- DOM -----------------------------------------------------------------------------------

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/** An element; children that are not nodes become text nodes. Props are attributes, except
 * `on` ({event: listener}); null / undefined / false props and children are left out. */
export function h(tag, props = {}, ...children) {
  return build(document.createElement(tag), props, children);
}

/** An SVG element (attributes are numbers or fixed strings; text only through children). */
export function s(tag, props = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

function build(el, props, children) {
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "on") {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// -- formats -------------------------------------------------------------------------------

/** Number and date formats of one locale (the console's is en-US, the portal's the session's).
 * Invalid locales fall back to the browser's. */
export function formats(locale) {
  let tag;
  try {
    tag = Intl.getCanonicalLocales(locale || [])[0];
  } catch {
    tag = undefined;
  }
  const integer = new Intl.NumberFormat(tag, { maximumFractionDigits: 0 });
  const sameYear = new Intl.DateTimeFormat(tag, { day: "numeric", month: "long" });
  const withYear = new Intl.DateTimeFormat(tag, { day: "numeric", month: "long", year: "numeric" });
  const dateTime = new Intl.DateTimeFormat(tag, { dateStyle: "medium", timeStyle: "short" });
  const dateOnly = new Intl.DateTimeFormat(tag, { dateStyle: "medium" });
  const percent = new Intl.NumberFormat(tag, { style: "percent", maximumFractionDigits: 0 });
  const dayLabel = new Intl.DateTimeFormat(tag, { day: "numeric", month: "short", timeZone: "UTC" });
  const hourLabel = new Intl.DateTimeFormat(tag, {
    day: "numeric", month: "short", hour: "numeric", minute: "2-digit", timeZone: "UTC",
  });
  const parse = (value) => (value instanceof Date ? value : new Date(String(value)));
  const valid = (d) => !Number.isNaN(d.getTime());

  const int = (n) => {
    if (n === undefined || n === null) return "—";
    return Number.isSafeInteger(n) ? integer.format(n) : String(n);
  };
  return {
    locale: integer.resolvedOptions().locale,
    int,
    signed: (n) => (typeof n === "number" && n > 0 ? `+${int(n)}` : int(n)),
    /** A share (0.25 → "25%"); a share above 0 never shows as 0%. */
    percent: (share) => (share > 0 && share < 0.005 ? `<${percent.format(0.01)}` : percent.format(share)),
    /** An amount in a currency's minor units ("500" usd → "$5.00"). */
    price(minor, currency) {
      try {
        const format = new Intl.NumberFormat(tag, { style: "currency", currency });
        const digits = format.resolvedOptions().maximumFractionDigits;
        return format.format(minor / 10 ** digits);
      } catch {
        return `${int(minor)} ${currency} (minor units)`;
      }
    },
    /** "1 March" this year, "1 March 2031" another year. */
    day(value) {
      const d = parse(value);
      if (!valid(d)) return String(value ?? "—");
      return (d.getFullYear() === new Date().getFullYear() ? sameYear : withYear).format(d);
    },
    date(value) {
      const d = parse(value);
      return valid(d) ? dateOnly.format(d) : String(value ?? "—");
    },
    dateTime(value) {
      const d = parse(value);
      return valid(d) ? dateTime.format(d) : String(value ?? "—");
    },
    /** A chart slot's label, in UTC like the API's slots. */
    slot(t, interval) {
      return (interval === "day" ? dayLabel : hourLabel).format(new Date(t));
    },
  };
}

// -- building blocks -----------------------------------------------------------------------

/** A table from column specs {label, value(row), num?}; a note when there are no rows. */
export function table(columns, rows, empty, props = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  // The wrapper scrolls a wide table sideways on a small screen: focusable, so the keyboard
  // can scroll it too, and named after the table.
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": props["aria-label"] ?? "Table" },
    h(
      "table",
      props,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num && "num", scope: "col" }, c.label)))),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h("tr", {}, columns.map((c) => h("td", { class: c.num && "num" }, c.value(row)))),
        ),
      ),
    ),
  );
}

/** A definition list of [label, value, class?] as tiles. */
export function stats(pairs, props = {}) {
  return h(
    "dl",
    { class: "stats", ...props },
    pairs.map(([label, value, cls]) =>
      h("div", { class: cls }, h("dt", {}, label), h("dd", {}, value)),
    ),
  );
}

/** An API error as an alert paragraph. */
export function errorBox(e) {
  const text = e instanceof ApiError && e.code ? `${e.message} (${e.code})` : String(e.message);
  return h("p", { class: "error", role: "alert" }, text);
}

/** A titled panel; returns [panel, body] so the body can be filled later. */
export function panel(title, id, ...controls) {
  const body = h("div", { class: "panel-body" });
  const el = h(
    "section",
    { class: "panel", id },
    h("div", { class: "panel-head" }, h("h3", {}, title), h("div", { class: "controls" }, controls)),
    body,
  );
  return [el, body];
}

/** Credits used per interval as an inline SVG line chart: every interval of the period is a
 * slot (the API may leave out empty ones), a circle marks each slot with usage.
 * Options: `int` (a number's text), `label(t)` (a slot's axis text), `tip(t)` (its tooltip
 * text, default the label), `summary(credits, checks)` (the line above the chart). */
export function usageChart(points, since, until, interval, options = {}) {
  const int = options.int ?? formats("en-US").int;
  const label = options.label ?? ((t) => new Date(t).toISOString());
  const tip = options.tip ?? label;
  const summary =
    options.summary ??
    ((credits, checks) =>
      credits || checks ? `${int(credits)} credits in ${int(checks)} checks` : "No usage in this period.");
  const step = interval === "day" ? DAY_MS : HOUR_MS;
  const byStart = new Map();
  for (const p of points) {
    const t = Date.parse(p.start);
    if (!Number.isNaN(t)) byStart.set(t, p);
  }
  const slots = new Set(byStart.keys());
  for (let t = Math.floor(since / step) * step; t <= until; t += step) slots.add(t);
  const series = [...slots]
    .sort((a, b) => a - b)
    .map((t) => ({ t, credits: byStart.get(t)?.credits ?? 0, checks: byStart.get(t)?.checks ?? 0 }));

  const width = 760;
  const height = 240;
  const m = { left: 64, right: 16, top: 14, bottom: 30 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const max = Math.max(1, ...series.map((p) => p.credits));
  const x = (i) => m.left + (series.length > 1 ? (i * plotW) / (series.length - 1) : plotW / 2);
  const y = (v) => m.top + plotH - (v / max) * plotH;

  const svg = s("svg", {
    id: "usage-chart",
    class: "chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `Credits used per ${interval}`,
  });
  for (const v of max >= 2 ? [0, max / 2, max] : [0, max]) {
    svg.append(
      s("line", { class: "grid", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }),
      s("text", { class: "axis", x: m.left - 8, y: y(v) + 4, "text-anchor": "end" },
        int(Math.round(v))),
    );
  }
  const ticks = series.length > 2 ? [0, Math.floor((series.length - 1) / 2), series.length - 1] : [0];
  for (const i of ticks) {
    svg.append(
      s("text", {
        class: "axis",
        x: x(i),
        y: height - 10,
        "text-anchor": i === 0 ? "start" : i === series.length - 1 ? "end" : "middle",
      }, label(series[i].t)),
    );
  }
  const coords = series.map((p, i) => `${x(i).toFixed(1)},${y(p.credits).toFixed(1)}`);
  const baseline = y(0).toFixed(1);
  svg.append(
    s("polygon", {
      class: "area",
      points: `${x(0).toFixed(1)},${baseline} ${coords.join(" ")} ${x(series.length - 1).toFixed(1)},${baseline}`,
    }),
    s("polyline", { class: "line", points: coords.join(" ") }),
  );
  series.forEach((p, i) => {
    if (!p.credits && !p.checks) return;
    svg.append(
      s("circle", { class: "point", cx: x(i), cy: y(p.credits), r: 3.5, "data-credits": p.credits },
        s("title", {}, `${tip(p.t)}: ${int(p.credits)} credits, ${int(p.checks)} checks`)),
    );
  });

  const credits = series.reduce((sum, p) => sum + p.credits, 0);
  const checks = series.reduce((sum, p) => sum + p.checks, 0);
  return [h("p", { class: "muted", id: "usage-total" }, summary(credits, checks)), svg];
}

/** The totals of a split usage series (points with `groups`, from `by=key` or `by=route`) per
 * group, ordered as the API orders a point's groups: most credits, then most checks, then by
 * key (null, the usage without a key or route, as ""). */
export function groupTotals(points) {
  const totals = new Map();
  for (const p of points) {
    for (const g of p.groups ?? []) {
      const t = totals.get(g.key) ?? { key: g.key, credits: 0, checks: 0 };
      t.credits += g.credits;
      t.checks += g.checks;
      totals.set(g.key, t);
    }
  }
  const name = (t) => t.key ?? "";
  return [...totals.values()].sort(
    (a, b) => b.credits - a.credits || b.checks - a.checks || (name(a) < name(b) ? -1 : name(a) > name(b) ? 1 : 0),
  );
}

/** A split usage series' totals per API key or route as a table (the period's credits, their
 * share, checks), under the chart: narrow enough for a phone. Options: `int` and `percent`
 * (formats), `label(key)` (a group's cell: text or a node; default the key itself),
 * `none` (the null group's text), `heading` (the first column's), `name` (the table's
 * accessible name), `id`. */
export function usageSplit(points, options = {}) {
  const f = formats("en-US");
  const int = options.int ?? f.int;
  const percent = options.percent ?? f.percent;
  const none = options.none ?? "None";
  const label = options.label ?? ((key) => key);
  const heading = options.heading ?? "Group";
  const rows = groupTotals(points);
  const total = rows.reduce((sum, g) => sum + g.credits, 0);
  return table(
    [
      { label: heading, value: (g) => (g.key === null ? h("span", { class: "muted" }, none) : label(g.key)) },
      { label: "Credits", value: (g) => int(g.credits), num: true },
      { label: "Share", value: (g) => (total ? percent(g.credits / total) : "—"), num: true },
      { label: "Checks", value: (g) => int(g.checks), num: true },
    ],
    rows,
    "No usage in this period.",
    { id: options.id ?? "usage-split", class: "usage-split", "aria-label": options.name ?? `Usage by ${heading}` },
  );
}
