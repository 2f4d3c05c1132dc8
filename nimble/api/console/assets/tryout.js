// Embeddings and ranking try-outs: texts -> POST /v1/embeddings -> cosine similarity heat map;
// a query and passages -> POST /v1/ranking -> the passages best first, with their scores.
import { ApiError, canDo, models, postJSON } from "./api.js";
import { field, fmt, h } from "./dom.js";

const TEXTS = [
  "The cat sat on the mat.",
  "A kitten is resting on the rug.",
  "Stock markets fell sharply today.",
  "Shares dropped on the exchange this morning.",
];
const QUERY = "How do plants make food?";
const PASSAGES = [
  "Plants make their food by photosynthesis, from light, water and carbon dioxide.",
  "The Eiffel Tower is in Paris.",
  "Plants take up water and minerals through their roots.",
];

export async function render(main) {
  const embedModel = h("select", { id: "emb-model" });
  const texts = h("textarea", { id: "emb-texts", rows: 6 }, TEXTS.join("\n"));
  const embedError = h("div", { id: "emb-error", class: "alert error", role: "alert" });
  const heat = h("div", { id: "emb-result", class: "scroll", "aria-live": "polite", tabindex: "0", role: "region", "aria-label": "Similarity" });
  const embedForm = h(
    "form",
    { class: "panel", "aria-labelledby": "emb-h" },
    h("h2", { id: "emb-h" }, "Embeddings: similarity"),
    field("Embedding model", embedModel),
    field("Texts, one per line (2 to 12)", texts),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "emb-run" }, "Compare")),
    embedError,
    heat,
  );

  const rankModel = h("select", { id: "rank-model" });
  const query = h("input", { id: "rank-query", type: "text", value: QUERY });
  const passages = h("textarea", { id: "rank-passages", rows: 6 }, PASSAGES.join("\n"));
  const rankError = h("div", { id: "rank-error", class: "alert error", role: "alert" });
  const ranked = h("div", { id: "rank-result", "aria-live": "polite" });
  const rankForm = h(
    "form",
    { class: "panel", "aria-labelledby": "rank-h" },
    h("h2", { id: "rank-h" }, "Ranking"),
    field("Ranking model", rankModel),
    field("Query", query),
    field("Passages, one per line", passages),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "rank-run" }, "Rank")),
    rankError,
    ranked,
  );
  main.append(h("h1", {}, "Embeddings & ranking"), h("div", { class: "cols" }, embedForm, rankForm));

  async function loadModels() {
    try {
      const all = await models();
      fill(embedModel, all.filter((m) => canDo(m, "embedding")));
      // /v1/models labels every model that ranks (a cross-encoder, or an embedding model by cosine)
      fill(rankModel, all.filter((m) => m.ranking), (m) => `${m.id} (${m.ranking})`);
      embedError.textContent = embedModel.options.length ? "" : "No embedding model is served.";
      rankError.textContent = rankModel.options.length ? "" : "No model that ranks is served.";
    } catch (err) {
      embedError.textContent = `Models could not be listed: ${err instanceof ApiError ? err.describe() : err.message}`;
    }
  }

  embedForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    embedError.textContent = "";
    const inputs = lines(texts.value);
    if (inputs.length < 2 || inputs.length > 12) {
      embedError.textContent = "Give 2 to 12 texts, one per line.";
      return;
    }
    try {
      const answer = await postJSON("v1/embeddings", { model: embedModel.value, input: inputs });
      const vectors = answer.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
      heat.replaceChildren(heatMap(inputs, vectors, answer.usage));
    } catch (err) {
      embedError.textContent = err instanceof ApiError ? err.describe() : err.message;
    }
  });

  rankForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    rankError.textContent = "";
    const items = lines(passages.value);
    try {
      const answer = await postJSON("v1/ranking", {
        model: rankModel.value,
        query: { text: query.value },
        passages: items.map((text) => ({ text })),
      });
      ranked.replaceChildren(rankList(items, answer.rankings));
    } catch (err) {
      rankError.textContent = err instanceof ApiError ? err.describe() : err.message;
    }
  });

  window.addEventListener("nimble:key", loadModels);
  await loadModels();
}

function fill(select, list, label = (m) => m.id) {
  select.replaceChildren(...list.map((m) => h("option", { value: m.id }, label(m))));
}

function lines(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean);
}

export function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i += 1) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
}

function heatMap(texts, vectors, usage) {
  const short = (t, i) => `${i + 1}. ${t.length > 40 ? `${t.slice(0, 39)}…` : t}`;
  const head = h("tr", {}, h("td", {}), texts.map((_, i) => h("th", { scope: "col", title: texts[i] }, String(i + 1))));
  const rows = texts.map((text, i) =>
    h(
      "tr",
      {},
      h("th", { scope: "row", title: text }, short(text, i)),
      vectors.map((_, j) => {
        const value = cosine(vectors[i], vectors[j]);
        const cell = h("td", { "data-value": value.toFixed(4) }, fmt(value));
        paint(cell, value);
        return cell;
      }),
    ),
  );
  const caption = h(
    "caption",
    { class: "note" },
    `Cosine similarity of each pair (1: same direction)${usage ? `, ${usage.prompt_tokens} tokens` : ""}.`,
  );
  return h("table", { class: "heat", id: "emb-heat" }, caption, h("thead", {}, head), h("tbody", {}, rows));
}

// light to dark blue by similarity; the text colour with the higher contrast (always >= 4.5:1)
function paint(cell, value) {
  const t = Math.max(0, Math.min(1, (value + 1) / 2)) ** 2;
  const from = [240, 246, 255];
  const to = [11, 45, 120];
  const rgb = from.map((c, k) => Math.round(c + (to[k] - c) * t));
  cell.style.background = `rgb(${rgb.join(",")})`;
  const lum = luminance(rgb);
  cell.style.color = (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) ? "#000000" : "#ffffff";
}

function luminance(rgb) {
  const [r, g, b] = rgb.map((c) => {
    const v = c / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

function rankList(passages, rankings) {
  const scores = rankings.map((r) => r.logit);
  const top = Math.max(...scores);
  const low = Math.min(...scores);
  return h(
    "ol",
    { class: "ranked", id: "rank-list", "aria-label": "Passages, best first" },
    rankings.map((r) => {
      const bar = h("div", { class: "bar", "aria-hidden": "true" });
      // through the CSSOM: the page's policy allows no inline style attributes
      bar.style.width = `${Math.max(4, top === low ? 100 : ((r.logit - low) / (top - low)) * 100)}%`;
      return h("li", { "data-index": r.index }, h("span", { class: "score" }, fmt(r.logit, 3)), " ", passages[r.index], bar);
    }),
  );
}
