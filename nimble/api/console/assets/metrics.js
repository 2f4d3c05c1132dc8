// nimble's own numbers, read from GET /v1/metrics (the Prometheus text every scraper reads):
// the page needs no other API for them, and a key that may scrape may watch.

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

// text exposition -> Map(name -> [{labels, value}])
export function parsePrometheus(text) {
  const samples = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = LINE.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, key, raw] of (match[2] || "").matchAll(LABEL)) {
      labels[key] = raw.replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    }
    if (!samples.has(match[1])) samples.set(match[1], []);
    samples.get(match[1]).push({ labels, value: Number(match[3]) });
  }
  return samples;
}

// one model's (or, with model null, every model's) value of a metric, combined by `how`
function pick(samples, name, model, how = "sum") {
  const values = (samples.get(name) || [])
    .filter((s) => model === null || s.labels.model_name === model)
    .map((s) => s.value);
  if (!values.length) return null;
  return how === "max" ? Math.max(...values) : values.reduce((a, b) => a + b, 0);
}

export function models(samples) {
  return [...new Set((samples.get("nimble_num_requests_running") || []).map((s) => s.labels.model_name))];
}

// A reading at time t (seconds), reduced to what the charts need for `model` (null: all)
export function reading(samples, t, model) {
  return {
    t,
    running: pick(samples, "nimble_num_requests_running", model),
    waiting: pick(samples, "nimble_num_requests_waiting", model),
    tokens: pick(samples, "nimble_generation_tokens_total", model),
    ttftSum: pick(samples, "nimble_time_to_first_token_seconds_sum", model),
    ttftCount: pick(samples, "nimble_time_to_first_token_seconds_count", model),
    cache: pick(samples, "nimble_kv_cache_usage_ratio", model, "max"),
  };
}

// Chart points from consecutive readings: gauges as read; rates from two readings (a counter
// that went down, after a restart, starts over)
export function series(readings) {
  const out = { running: [], waiting: [], tokensPerSecond: [], ttft: [], cache: [] };
  readings.forEach((r, i) => {
    out.running.push([r.t, r.running]);
    out.waiting.push([r.t, r.waiting]);
    out.cache.push([r.t, r.cache === null ? null : r.cache * 100]);
    const prev = readings[i - 1];
    if (!prev) return;
    const dt = r.t - prev.t;
    const dTokens = (r.tokens ?? 0) - (prev.tokens ?? 0);
    out.tokensPerSecond.push([r.t, dt > 0 && dTokens >= 0 ? dTokens / dt : null]);
    const dCount = (r.ttftCount ?? 0) - (prev.ttftCount ?? 0);
    const dSum = (r.ttftSum ?? 0) - (prev.ttftSum ?? 0);
    out.ttft.push([r.t, dCount > 0 ? dSum / dCount : null]);
  });
  return out;
}
