// Status: readiness, each model (state, engine, profile and why it was chosen), live charts
// of nimble's own metrics, and the deployment record.
import { ApiError, call, getJSON, url } from "./api.js";
import { lineChart } from "./chart.js";
import { field, h } from "./dom.js";
import { models as modelsIn, parsePrometheus, reading, series } from "./metrics.js";
import { download, renderRecord } from "./record.js";

const EVERY_SECONDS = 2;
const WINDOW_SECONDS = 300;

export async function render(main) {
  const ready = h("span", { id: "st-ready", class: "badge warn" }, "checking…");
  const readyText = h("span", { id: "st-ready-text" });
  const facts = h("dl", { class: "record", id: "st-facts" });
  const service = h(
    "section",
    { class: "panel", "aria-labelledby": "st-service-h" },
    h("h2", { id: "st-service-h" }, "Service"),
    h("p", { role: "status" }, "Readiness: ", ready, " ", readyText),
    facts,
  );

  const modelRows = h("tbody", {});
  const modelsError = h("div", { class: "alert error", role: "alert" });
  const modelsBox = h(
    "section",
    { class: "panel", "aria-labelledby": "st-models-h" },
    h("h2", { id: "st-models-h" }, "Models"),
    modelsError,
    h(
      "div",
      // a scrolled region is reachable by keyboard
      { class: "scroll", tabindex: "0", role: "region", "aria-label": "Models table" },
      h(
        "table",
        { id: "st-models" },
        h("thead", {}, h("tr", {}, ["Model", "State", "Tasks", "Engine", "Profile", "Why this profile", "Context"].map((c) => h("th", { scope: "col" }, c)))),
        modelRows,
      ),
    ),
  );

  const chartModel = h("select", { id: "st-chart-model" }, h("option", { value: "" }, "All models"));
  const pause = h("button", { type: "button", id: "st-pause", class: "secondary", "aria-pressed": "false" }, "Pause");
  const liveError = h("div", { id: "st-live-error", class: "alert error", role: "alert" });
  const charts = {
    running: lineChart({ id: "chart-running", title: "Running requests", unit: "", digits: 0 }),
    waiting: lineChart({ id: "chart-waiting", title: "Waiting requests", unit: "", digits: 0 }),
    tokensPerSecond: lineChart({ id: "chart-tokens", title: "Generated tokens/s (counted as requests finish)", unit: "tok/s" }),
    ttft: lineChart({ id: "chart-ttft", title: "Time to first token (mean per interval)", unit: "s", digits: 2 }),
    cache: lineChart({ id: "chart-cache", title: "KV cache in use", unit: "%" }),
  };
  const live = h(
    "section",
    { class: "panel", "aria-labelledby": "st-live-h" },
    h("h2", { id: "st-live-h" }, "Live"),
    h("p", { class: "note" }, `From GET /v1/metrics every ${EVERY_SECONDS} s, the last ${WINDOW_SECONDS / 60} minutes (kept in this page only).`),
    h("div", { class: "actions" }, field("Model", chartModel), pause),
    liveError,
    h("div", { class: "charts" }, Object.values(charts).map((c) => c.element)),
  );

  const recordError = h("div", { class: "alert error", role: "alert" });
  const recordView = h("div", { id: "st-record" });
  const downloadButton = h("button", { type: "button", id: "st-download", disabled: true }, "Download JSON");
  const refresh = h("button", { type: "button", id: "st-refresh", class: "secondary" }, "Refresh");
  const recordBox = h(
    "section",
    { class: "panel", "aria-labelledby": "st-record-h" },
    h("h2", { id: "st-record-h" }, "Deployment record"),
    h("p", { class: "note" }, "GET /v1/manifest: what this service is and runs, generated from the objects that run it."),
    h("div", { class: "actions" }, downloadButton, refresh),
    recordError,
    recordView,
  );
  main.append(h("h1", {}, "Status"), service, modelsBox, live, recordBox);

  let record = null;
  const samples = []; // [{t, samples}] within the window
  let lastReady = null;

  async function readiness() {
    let state;
    let message;
    try {
      const answer = await fetch(url("v1/health/ready"), { cache: "no-store", credentials: "omit" });
      ({ status: state, message } = await answer.json());
    } catch (err) {
      state = "unreachable";
      message = `The server cannot be reached (${err.message}).`;
    }
    ready.textContent = state;
    ready.className = `badge ${state === "ready" ? "ok" : "bad"}`;
    readyText.textContent = message;
    if (state !== lastReady) {
      lastReady = state;
      await describe();
    }
  }

  async function describe() {
    modelsError.textContent = "";
    recordError.textContent = "";
    let meta = null;
    try {
      meta = await getJSON("v1/metadata");
    } catch (err) {
      modelsError.textContent = `Models: ${message(err)}`;
    }
    try {
      record = await getJSON("v1/manifest");
      recordView.replaceChildren(renderRecord(record));
      downloadButton.disabled = false;
    } catch (err) {
      recordError.textContent = `Deployment record: ${message(err)}`;
    }
    if (meta) {
      facts.replaceChildren(
        ...[["Version", meta.version], ["State", meta.state], ["Hardware", meta.hardware || "—"]].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
      );
    }
    const chosen = new Map(((record && record.models) || []).map((m) => [m.id, m.profile]));
    const rows = (meta ? meta.models : (record && record.models) || []).map((m) => {
      const profile = chosen.get(m.id) || null;
      const engine = typeof m.engine === "object" ? m.engine.name : m.engine;
      const version = typeof m.engine === "object" ? m.engine.version : m.engine_version;
      const state = m.details ? m.details.state : m.state;
      return h(
        "tr",
        { "data-model": m.id },
        h("th", { scope: "row" }, m.id),
        h("td", {}, h("span", { class: `badge ${state === "loaded" ? "ok" : "warn"}` }, state)),
        h("td", {}, (m.tasks || []).join(", ")),
        h("td", {}, version ? `${engine} ${version}` : engine),
        h("td", {}, profile ? profile.name : m.profile || "—"),
        h("td", { class: "why" }, profile ? profile.reason : "—"),
        h("td", {}, m.context_length ? String(m.context_length) : "—"),
      );
    });
    modelRows.replaceChildren(...rows);
  }

  async function sample() {
    if (pause.getAttribute("aria-pressed") === "true" || document.hidden) return;
    try {
      const text = await (await call("v1/metrics")).text();
      const parsed = parsePrometheus(text);
      const t = performance.now() / 1000;
      samples.push({ t, parsed });
      while (samples.length && samples[0].t < t - WINDOW_SECONDS - EVERY_SECONDS) samples.shift();
      const names = modelsIn(parsed);
      const known = [...chartModel.options].map((o) => o.value);
      for (const name of names) if (!known.includes(name)) chartModel.append(h("option", { value: name }, name));
      liveError.textContent = "";
      draw();
    } catch (err) {
      liveError.textContent = `Metrics: ${message(err)}`;
    }
  }

  function draw() {
    if (!samples.length) return;
    const model = chartModel.value || null;
    const points = series(samples.map(({ t, parsed }) => reading(parsed, t, model)));
    const end = samples[samples.length - 1].t;
    for (const [name, chart] of Object.entries(charts)) chart.update(points[name], WINDOW_SECONDS, end);
    main.dataset.samples = String(samples.length);
  }

  let ticking = false;
  async function tick() {
    if (ticking) return;
    ticking = true;
    try {
      await Promise.all([sample(), readiness()]);
    } finally {
      ticking = false;
    }
  }

  chartModel.addEventListener("change", draw);
  pause.addEventListener("click", () => {
    const paused = pause.getAttribute("aria-pressed") !== "true";
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
  });
  downloadButton.addEventListener("click", () => record && download(record));
  refresh.addEventListener("click", describe);
  window.addEventListener("nimble:key", () => {
    describe();
    tick();
  });
  await tick();
  setInterval(tick, EVERY_SECONDS * 1000);
}

function message(err) {
  return err instanceof ApiError ? err.describe() : err.message;
}
