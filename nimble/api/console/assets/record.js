// The deployment record (GET /v1/manifest) as readable sections, and its JSON as a download.
import { h } from "./dom.js";

const TITLES = {
  nimble: "nimble",
  models: "Models",
  adapters: "LoRA adapters",
  hardware: "Hardware",
  endpoints: "Endpoints",
  health: "Health probes",
  logging: "Logging",
  metrics: "Metrics",
  tracing: "Tracing",
  tool_calling: "Tool calling",
  reasoning: "Reasoning",
  auth: "Authentication",
  configuration: "Effective configuration (secrets redacted)",
};
const HEADLINE = ["schema", "generated_at", "state", "update_channel"];
// long sections start closed (one click, or Enter on the summary, opens them)
const CLOSED = new Set(["hardware", "endpoints", "tool_calling", "reasoning", "configuration"]);

export function renderRecord(record) {
  const top = h(
    "dl",
    { class: "record", id: "record-summary" },
    HEADLINE.filter((k) => k in record).map((k) => [h("dt", {}, label(k)), h("dd", {}, value(record[k]))]),
  );
  const sections = Object.keys(record)
    .filter((k) => !HEADLINE.includes(k))
    .map((k) =>
      h(
        "details",
        { class: "section", open: !CLOSED.has(k), "data-key": k },
        h("summary", {}, TITLES[k] || label(k)),
        block(record[k], k),
      ),
    );
  return h("div", { class: "record-view" }, top, sections);
}

function label(key) {
  return key.replace(/_/g, " ");
}

// a value: primitives as text, objects as definition lists, lists of objects one block each
function block(data, key) {
  if (Array.isArray(data)) {
    if (!data.length) return h("p", { class: "note" }, "none");
    if (data.every((v) => v === null || typeof v !== "object")) return h("p", {}, data.map(String).join(", "));
    return h(
      "div",
      {},
      data.map((item, i) =>
        h("div", { class: "item" }, h("h3", {}, item && (item.id || item.name) ? String(item.id || item.name) : `${label(key)} ${i + 1}`), block(item, key)),
      ),
    );
  }
  if (data !== null && typeof data === "object") {
    const keys = Object.keys(data);
    if (!keys.length) return h("p", { class: "note" }, "none");
    return h(
      "dl",
      { class: "record" },
      keys.map((k) => [h("dt", {}, label(k)), h("dd", {}, typeof data[k] === "object" && data[k] !== null ? block(data[k], k) : value(data[k], k))]),
    );
  }
  return value(data, key);
}

function value(v, key) {
  if (v === null || v === undefined) return h("span", { class: "note" }, "—");
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (key === "sha256" || key === "path" || key === "source") return h("code", {}, String(v));
  return String(v);
}

export function download(record) {
  const blob = new Blob([`${JSON.stringify(record, null, 2)}\n`], { type: "application/json" });
  const href = URL.createObjectURL(blob);
  const stamp = String(record.generated_at || "").replace(/[^0-9A-Za-z]/g, "");
  const link = h("a", { href, download: `nimble-deployment-${stamp || "record"}.json`, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 1000);
}
