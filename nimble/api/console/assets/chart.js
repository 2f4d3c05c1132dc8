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

  // `points`: [t, value|null] in seconds; the x axis spans the samples so far, up to the window
  function update(points, windowSeconds, end) {
    const values = points.map(([, v]) => v).filter((v) => v !== null && v !== undefined);
    const last = points.length ? points[points.length - 1][1] : null;
    const max = values.length ? Math.max(...values) : null;
    const span = Math.min(windowSeconds, Math.max(10, points.length ? end - points[0][0] : 0));
    now.textContent = last === null || last === undefined ? "–" : `${fmt(last, digits)}${unit ? ` ${unit}` : ""}`;
    summary.textContent = max === null ? "no data yet" : `peak ${fmt(max, digits)} over the last ${duration(span)}`;
    figure.dataset.points = String(values.length);
    figure.dataset.last = last === null || last === undefined ? "" : String(last);
    figure.dataset.max = max === null ? "" : String(max);
    const top = Math.max(max || 0, unit === "%" ? 100 : 0) || 1;
    const x = (t) => 300 - ((end - t) / span) * 300;
    const y = (v) => 78 - (v / top) * 74;
    const runs = [[]];
    for (const [t, v] of points) {
      if (v === null || v === undefined) runs.push([]);
      else runs[runs.length - 1].push([x(t), y(v)]);
    }
    const paths = runs
      .filter((run) => run.length)
      // a lone reading is drawn as a short dash, so that it shows
      .map((run) => (run.length === 1 ? [[run[0][0] - 3, run[0][1]], run[0]] : run))
      .map((run) => run.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join(""));
    svg.replaceChildren(
      s("line", { class: "axis", x1: 0, y1: 78, x2: 300, y2: 78 }),
      ...paths.map((d) => s("path", { class: "line", d })),
    );
  }

  return { element: figure, update };
}

function duration(seconds) {
  return seconds >= 90 ? `${Math.round(seconds / 60)} min` : `${Math.round(seconds)} s`;
}
