// The playground: a streamed chat (POST /v1/chat/completions with stream: true), stopped by
// aborting the fetch (the server cancels the generation when the connection closes).
import { ApiError, call, canDo, events, models } from "./api.js";
import { field, fmt, h } from "./dom.js";

// bounded, as a schema for a small model should be: an unbounded number may never end
const EXAMPLE_SCHEMA = {
  type: "object",
  properties: {
    city: { type: "string", maxLength: 40 },
    country: { type: "string", maxLength: 40 },
    population: { type: "integer", minimum: 0, maximum: 100000000 },
  },
  required: ["city", "country", "population"],
  additionalProperties: false,
};

const EXAMPLE_TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "The current weather in a city",
      parameters: {
        type: "object",
        properties: {
          city: { type: "string" },
          unit: { type: "string", enum: ["celsius", "fahrenheit"] },
        },
        required: ["city"],
      },
    },
  },
];

// sampling fields: [name, label, step, default]; empty = the server's default
const SAMPLING = [
  ["max_tokens", "Max tokens", "1", "256"],
  ["temperature", "Temperature", "0.1", "0.7"],
  ["top_p", "Top p", "0.05", ""],
  ["top_k", "Top k", "1", ""],
  ["min_p", "Min p", "0.01", ""],
  ["presence_penalty", "Presence penalty", "0.1", ""],
  ["frequency_penalty", "Frequency penalty", "0.1", ""],
  ["repetition_penalty", "Repetition penalty", "0.05", ""],
  ["seed", "Seed", "1", ""],
];

export async function render(main) {
  const history = []; // {role, content}: what the next request sends back
  let running = null; // the AbortController of the answer being streamed

  const modelSelect = h("select", { id: "pg-model" });
  const system = h("textarea", { id: "pg-system", rows: 3 }, "You are a helpful assistant.");
  const modeInputs = ["chat", "json", "tools"].map((mode) =>
    h("input", { type: "radio", name: "pg-mode", value: mode, id: `pg-mode-${mode}`, checked: mode === "chat" }),
  );
  const modeLabels = { chat: "Chat", json: "JSON schema (response_format)", tools: "Tool calling" };
  const schema = h("textarea", { id: "pg-schema", rows: 9, class: "code", spellcheck: "false" }, JSON.stringify(EXAMPLE_SCHEMA, null, 2));
  const tools = h("textarea", { id: "pg-tools", rows: 9, class: "code", spellcheck: "false" }, JSON.stringify(EXAMPLE_TOOLS, null, 2));
  const toolChoice = h("select", { id: "pg-tool-choice" }, ["auto", "required", "none"].map((c) => h("option", { value: c }, c)));
  const parallel = h("input", { type: "checkbox", id: "pg-parallel" });
  const jsonBox = h("div", { hidden: true }, field("JSON schema of the answer", schema));
  const toolsBox = h(
    "div",
    { hidden: true },
    field("Tools (JSON array)", tools),
    field("Tool choice", toolChoice),
    h("label", { class: "radio", for: "pg-parallel" }, parallel, "Several calls in one answer"),
  );
  const sampling = SAMPLING.map(([name, label, step, value]) =>
    field(label, h("input", { id: `pg-${name}`, name, type: "number", step, value, inputmode: "decimal" })),
  );

  const ignoreEos = h("input", { type: "checkbox", id: "pg-ignore_eos" });

  const settings = h(
    "form",
    { class: "panel", "aria-labelledby": "pg-settings-h", onsubmit: (e) => e.preventDefault() },
    h("h2", { id: "pg-settings-h" }, "Settings"),
    field("Model", modelSelect),
    field("System prompt", system),
    h(
      "fieldset",
      {},
      h("legend", {}, "Mode"),
      modeInputs.map((input) => h("label", { class: "radio", for: input.id }, input, modeLabels[input.value])),
    ),
    jsonBox,
    toolsBox,
    h(
      "fieldset",
      {},
      h("legend", {}, "Sampling"),
      h("div", { class: "params" }, sampling),
      h("label", { class: "radio", for: "pg-ignore_eos" }, ignoreEos, "Ignore end of text (only max tokens ends it)"),
    ),
    h("p", { class: "note" }, "Empty fields use the server's defaults."),
  );

  const transcript = h("div", { id: "pg-transcript", class: "transcript", role: "log", "aria-label": "Conversation", tabindex: "0" });
  const error = h("div", { id: "pg-error", class: "alert error", role: "alert" });
  const prompt = h("textarea", { id: "pg-prompt", rows: 3, placeholder: "Ask something…" });
  const send = h("button", { type: "submit", id: "pg-send" }, "Send");
  const stop = h("button", { type: "button", id: "pg-stop", class: "secondary", disabled: true }, "Stop");
  const clear = h("button", { type: "button", id: "pg-clear", class: "secondary" }, "Clear conversation");
  const composer = h(
    "form",
    { id: "pg-composer" },
    field("Message", prompt, "Ctrl+Enter sends; Escape stops the answer."),
    h("div", { class: "actions" }, send, stop, clear),
  );
  const chat = h("section", { class: "panel", "aria-labelledby": "pg-chat-h" }, h("h2", { id: "pg-chat-h" }, "Chat"), transcript, error, composer);

  main.append(h("h1", {}, "Playground"), h("div", { class: "grid2" }, settings, chat));

  const mode = () => modeInputs.find((i) => i.checked).value;
  for (const input of modeInputs) {
    input.addEventListener("change", () => {
      jsonBox.hidden = mode() !== "json";
      toolsBox.hidden = mode() !== "tools";
    });
  }

  async function loadModels() {
    error.textContent = "";
    try {
      const chatModels = (await models()).filter((m) => canDo(m, "chat"));
      const chosen = modelSelect.value;
      modelSelect.replaceChildren(...chatModels.map((m) => h("option", { value: m.id }, m.parent ? `${m.id} (adapter of ${m.parent})` : m.id)));
      if (chatModels.some((m) => m.id === chosen)) modelSelect.value = chosen;
      if (!chatModels.length) error.textContent = "No chat model is served.";
    } catch (err) {
      error.textContent = `Models could not be listed: ${err instanceof ApiError ? err.describe() : err.message}`;
    }
  }

  function requestBody(text) {
    const body = {
      model: modelSelect.value,
      messages: [],
      stream: true,
      stream_options: { include_usage: true },
    };
    if (system.value.trim()) body.messages.push({ role: "system", content: system.value });
    body.messages.push(...history, { role: "user", content: text });
    for (const [name] of SAMPLING) {
      const raw = document.getElementById(`pg-${name}`).value.trim();
      if (raw !== "") body[name] = Number(raw);
    }
    if (ignoreEos.checked) body.ignore_eos = true;
    if (mode() === "json") {
      body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: parse(schema, "JSON schema"), strict: true } };
    } else if (mode() === "tools") {
      body.tools = parse(tools, "Tools");
      body.tool_choice = toolChoice.value;
      body.parallel_tool_calls = parallel.checked;
    }
    return body;
  }

  function message(role, label) {
    const content = h("div", { class: "content" });
    const stats = h("p", { class: "stats" });
    const box = h("article", { class: `msg ${role}`, "aria-label": label }, h("p", { class: "who" }, label), content, stats);
    transcript.append(box);
    return { box, content, stats };
  }

  async function ask(text) {
    error.textContent = "";
    let body;
    try {
      body = requestBody(text);
    } catch (err) {
      error.textContent = err.message;
      return;
    }
    const asked = mode();
    message("user", "You").content.textContent = text;
    const answer = message("assistant", `Assistant · ${body.model}`);
    answer.box.setAttribute("aria-busy", "true");
    transcript.scrollTop = transcript.scrollHeight;
    running = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let first = null;
    let reply = "";
    let pieces = 0;
    let usage = null;
    let finish = null;
    let stopped = false;
    const calls = [];
    try {
      const response = await call("v1/chat/completions", { method: "POST", body, signal: running.signal });
      for await (const chunk of events(response)) {
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const delta = choice.delta || {};
          if (delta.content) {
            first ??= performance.now();
            reply += delta.content;
            pieces += 1;
            answer.content.textContent = reply;
          }
          for (const part of delta.tool_calls || []) {
            first ??= performance.now();
            pieces += 1;
            showCall(answer.box, calls, part);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        transcript.scrollTop = transcript.scrollHeight;
      }
    } catch (err) {
      if (err.name === "AbortError") stopped = true;
      else error.textContent = err instanceof ApiError ? err.describe() : `Error: ${err.message}`;
    } finally {
      running = null;
      send.disabled = false;
      stop.disabled = true;
      answer.box.removeAttribute("aria-busy");
    }
    const ended = performance.now();
    answer.box.dataset.state = stopped ? "stopped" : error.textContent ? "failed" : "done";
    if (error.textContent && !reply && !calls.length) answer.content.textContent = "(no answer)";
    answer.stats.textContent = stats({ usage, pieces, first, started, ended, finish, stopped });
    if (asked === "json" && finish) showJson(answer.box, reply);
    if (reply && !calls.length && !stopped) {
      history.push({ role: "user", content: text }, { role: "assistant", content: reply });
    }
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || running) return;
    prompt.value = "";
    ask(text);
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) composer.requestSubmit();
    if (event.key === "Escape" && running) running.abort();
  });
  stop.addEventListener("click", () => {
    if (running) running.abort();
    prompt.focus();
  });
  clear.addEventListener("click", () => {
    history.length = 0;
    transcript.replaceChildren();
    error.textContent = "";
  });
  window.addEventListener("nimble:key", loadModels);
  await loadModels();
}

function parse(textarea, what) {
  try {
    return JSON.parse(textarea.value);
  } catch (err) {
    throw new Error(`${what}: not valid JSON (${err.message})`);
  }
}

// a tool call as it streams: its name, then its arguments growing
function showCall(box, calls, part) {
  let slot = calls[part.index ?? 0];
  if (!slot) {
    const name = h("code", { class: "tool-name" });
    const args = h("pre", { class: "tool-args" });
    const view = h("div", { class: "tool-call" }, h("span", {}, "Tool call: "), name, args);
    box.insertBefore(view, box.querySelector(".stats"));
    slot = { name: "", arguments: "", view, nameEl: name, argsEl: args };
    calls[part.index ?? 0] = slot;
  }
  const fn = part.function || {};
  if (fn.name) slot.name += fn.name;
  if (fn.arguments) slot.arguments += fn.arguments;
  slot.nameEl.textContent = slot.name;
  slot.argsEl.textContent = slot.arguments;
}

function showJson(box, text) {
  let view;
  try {
    const value = JSON.parse(text);
    view = h("div", { class: "json-result" }, h("span", { class: "badge ok" }, "Valid JSON"), h("pre", { class: "json-view" }, JSON.stringify(value, null, 2)));
  } catch (err) {
    view = h("div", { class: "json-result" }, h("span", { class: "badge bad" }, `Not valid JSON: ${err.message}`));
  }
  box.insertBefore(view, box.querySelector(".stats"));
}

function stats({ usage, pieces, first, started, ended, finish, stopped }) {
  const parts = [];
  const generated = usage ? usage.completion_tokens : pieces;
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  else if (pieces) parts.push(`≈${pieces} tokens (counted from the stream)`);
  if (first !== null) {
    parts.push(`first token after ${fmt((first - started) / 1000)} s`);
    const seconds = (ended - first) / 1000;
    if (generated > 1 && seconds > 0) parts.push(`${fmt(generated / seconds, 1)} tokens/s`);
  }
  if (stopped) parts.push("stopped");
  else if (finish) parts.push(`finish: ${finish}`);
  return parts.join(" · ");
}
