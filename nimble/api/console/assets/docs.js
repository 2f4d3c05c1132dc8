// API docs: the service's own OpenAPI document (GET /openapi.json, with the key) rendered
// here, with no third-party renderer and nothing fetched from elsewhere.
import { ApiError, getJSON } from "./api.js";
import { field, h } from "./dom.js";

const METHODS = ["get", "post", "put", "patch", "delete"];
const MAX_DEPTH = 4;

export async function render(main) {
  const error = h("div", { id: "docs-error", class: "alert error", role: "alert" });
  const filter = h("input", { id: "docs-filter", type: "search", placeholder: "chat, embeddings, /v1/models…" });
  const info = h("p", { class: "note", id: "docs-info" });
  const list = h("div", { id: "docs-ops" });
  const count = h("p", { class: "note", role: "status" });
  main.append(h("h1", {}, "API docs"), info, h("div", { class: "panel" }, field("Filter operations", filter), count, error, list));

  let ops = [];
  async function load() {
    error.textContent = "";
    try {
      const doc = await getJSON("openapi.json");
      info.textContent = `${doc.info.title} ${doc.info.version}: OpenAPI ${doc.openapi}. ${doc.info.summary || ""}`;
      ops = operations(doc);
      list.replaceChildren(...ops.map((op) => op.element));
      apply();
    } catch (err) {
      error.textContent = `The OpenAPI document could not be read: ${err instanceof ApiError ? err.describe() : err.message}`;
    }
  }

  function apply() {
    const needle = filter.value.trim().toLowerCase();
    let shown = 0;
    for (const op of ops) {
      op.element.hidden = Boolean(needle) && !op.text.includes(needle);
      if (!op.element.hidden) shown += 1;
    }
    count.textContent = `${shown} of ${ops.length} operations`;
  }

  filter.addEventListener("input", apply);
  window.addEventListener("nimble:key", load);
  await load();
}

function operations(doc) {
  const out = [];
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const element = h(
        "details",
        { class: "op", "data-path": path, "data-method": method },
        h("summary", {}, h("span", { class: `method ${method}` }, method.toUpperCase()), h("code", {}, path), h("span", {}, op.summary || "")),
        h("div", { class: "body" }, operationBody(doc, op)),
      );
      out.push({ element, text: `${method} ${path} ${op.summary || ""} ${(op.tags || []).join(" ")}`.toLowerCase() });
    }
  }
  return out;
}

function operationBody(doc, op) {
  const parts = [];
  if (op.description) parts.push(h("p", {}, op.description));
  if (op.parameters && op.parameters.length) {
    parts.push(
      h("h3", {}, "Parameters"),
      h(
        "div",
        { class: "scroll", tabindex: "0", role: "region", "aria-label": "Parameters" },
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, ["Name", "In", "Type", "Required"].map((c) => h("th", { scope: "col" }, c)))),
          h(
            "tbody",
            {},
            op.parameters.map((p) =>
              h("tr", {}, h("td", {}, h("code", {}, p.name)), h("td", {}, p.in), h("td", {}, typeName(doc, p.schema || {})), h("td", {}, p.required ? "yes" : "no")),
            ),
          ),
        ),
      ),
    );
  }
  const body = op.requestBody && op.requestBody.content;
  if (body) {
    for (const [media, content] of Object.entries(body)) {
      parts.push(h("h3", {}, `Request body (${media})`), schemaTree(doc, content.schema || {}, 0, new Set()));
    }
  }
  if (op.responses) {
    parts.push(
      h("h3", {}, "Responses"),
      h(
        "ul",
        {},
        Object.entries(op.responses).map(([status, r]) => {
          const media = Object.entries(r.content || {});
          const shapes = media.map(([type, c]) => `${type}${c.schema ? `: ${typeName(doc, c.schema)}` : ""}`).join("; ");
          return h("li", {}, h("strong", {}, status), ` ${r.description || ""}`, shapes ? h("span", { class: "type" }, ` (${shapes})`) : null);
        }),
      ),
    );
  }
  return parts;
}

function resolve(doc, schema) {
  let current = schema;
  for (let i = 0; current && current.$ref && i < 10; i += 1) {
    const path = current.$ref.replace(/^#\//, "").split("/");
    current = path.reduce((node, key) => (node ? node[key] : undefined), doc);
  }
  return current || {};
}

function refName(schema) {
  return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
}

function typeName(doc, schema) {
  if (!schema) return "any";
  if (schema.$ref) return refName(schema);
  const alts = schema.anyOf || schema.oneOf;
  if (alts) return alts.map((s) => typeName(doc, s)).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.type === "array") return `array of ${typeName(doc, schema.items || {})}`;
  return schema.type || "any";
}

// an object's properties as a nested list (objects and arrays of objects opened below,
// to a fixed depth; a schema met again on the way down is named, not repeated)
function schemaTree(doc, schema, depth, seen) {
  const name = refName(schema);
  const target = resolve(doc, schema);
  const item = target.type === "array" ? resolve(doc, target.items || {}) : target;
  const props = item.properties;
  if (!props || depth >= MAX_DEPTH || (name && seen.has(name))) {
    return h("p", { class: "type" }, typeName(doc, schema));
  }
  const inner = new Set(seen);
  if (name) inner.add(name);
  const required = new Set(item.required || []);
  return h(
    "ul",
    { class: "schema" },
    Object.entries(props).map(([prop, sub]) => {
      const subTarget = resolve(doc, sub);
      const nested = nestedObject(doc, sub, subTarget);
      return h(
        "li",
        {},
        h("code", {}, prop),
        required.has(prop) ? h("span", { class: "req", title: "required" }, " *") : null,
        h("span", { class: "type" }, ` ${typeName(doc, sub)}`),
        subTarget.description || sub.description ? h("span", {}, ` — ${sub.description || subTarget.description}`) : null,
        nested ? schemaTree(doc, nested, depth + 1, inner) : null,
      );
    }),
  );
}

function nestedObject(doc, sub, target) {
  if (target.properties) return sub;
  if (target.type === "array" && resolve(doc, target.items || {}).properties) return target.items;
  return null;
}
