// A small SVG line chart over a time window, with its numbers as text beside it (the chart
// itself is decoration for sighted readers: the caption says the same).
import { fmt, h, s } from "./dom.js";

export function lineChart({ id, title, unit, digits = 1 }) {
  const now = h("span", { class: "now" }, "–");
  const summary = h("span", { class: "note" });
  const svg = s("svg", { viewBox: "0 0 300 80", preserveAspectRatio: "none", "aria-hidden": "true", focusable: "false" });
  const figure = h(
    "figure",
    { class: "chart", id },
    h("figcaption", {}, h("div", {}, title), now, " ", summary),
    svg,
  );

  function update(points, windowSeconds, end) {
    const values = points.map(([, v]) => v).filter((v) => v !== null && v !== undefined);
    const last = points.length ? points[points.length - 1][1] : null;
    const max = values.length ? Math.max(...values) : null;
    now.textContent = last === null || last === undefined ? "–" : `${fmt(last, digits)}${unit ? ` ${unit}` : ""}`;
    summary.textContent = max === null ? "no data yet" : `peak ${fmt(max, digits)} over the last ${Math.round(windowSeconds / 60)} min`;
    figure.dataset.points = String(values.length);
    figure.dataset.last = last === null || last === undefined ? "" : String(last);
    figure.dataset.max = max === null ? "" : String(max);
    const top = Math.max(max || 0, unit === "%" ? 100 : 0) || 1;
    const x = (t) => 300 - ((end - t) / windowSeconds) * 300;
    const y = (v) => 78 - (v / top) * 74;
    const paths = [];
    let d = "";
    for (const [t, v] of points) {
      if (v === null || v === undefined) {
        if (d) paths.push(d);
        d = "";
        continue;
      }
      d += `${d ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
    }
    if (d) paths.push(d);
    svg.replaceChildren(
      s("line", { class: "axis", x1: 0, y1: 78, x2: 300, y2: 78 }),
      ...paths.map((path) => s("path", { class: "line", d: path })),
    );
  }

  return { element: figure, update };
}
