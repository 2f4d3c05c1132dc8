// The console speaks only the public HTTP API, with the key typed into the page. The key is
// kept in this tab's sessionStorage (gone when the tab closes), never in a cookie or the URL.

// /ui/assets/api.js -> the service's root (also under a path prefix)
export const ROOT = new URL("../../", import.meta.url);
const KEY_SLOT = "nimble.console.key";

export function getKey() {
  return sessionStorage.getItem(KEY_SLOT) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_SLOT, key);
  else sessionStorage.removeItem(KEY_SLOT);
  window.dispatchEvent(new CustomEvent("nimble:key"));
}

const STATUS_NAMES = {
  400: "Bad request",
  401: "Unauthorized: a valid API key is needed",
  403: "Forbidden: this key may not do that",
  404: "Not found",
  413: "Request too large",
  422: "Unprocessable request",
  429: "Too many requests",
  500: "Server error",
  503: "Service unavailable",
};

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const error = (body && body.error) || {};
    const message = error.message || (typeof body === "string" ? body : "") || "";
    super(message);
    this.status = status;
    this.type = error.type || null;
    this.code = error.code || null;
    this.param = error.param || null;
    this.retryAfter = retryAfter || null;
  }

  // one plain sentence: "401 Unauthorized: ... — the server's message"
  describe() {
    const head = this.status ? `${this.status} ${STATUS_NAMES[this.status] || ""}`.trim() : "Error";
    const parts = [head];
    if (this.message) parts.push(this.message);
    if (this.param) parts.push(`(field: ${this.param})`);
    if (this.retryAfter) parts.push(`Retry after ${this.retryAfter} s.`);
    return parts.join(" — ");
  }
}

export function url(path) {
  return new URL(path.replace(/^\//, ""), ROOT);
}

// fetch with the key; a non-2xx answer becomes an ApiError (and a 401 tells the page)
export async function call(path, { method = "GET", body, signal, headers = {} } = {}) {
  const sent = { ...headers };
  const key = getKey();
  if (key) sent.Authorization = `Bearer ${key}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url(path), {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { error: { message: `The server cannot be reached (${err.message}).` } });
  }
  if (!response.ok) {
    let payload = null;
    const raw = await response.text();
    try {
      payload = JSON.parse(raw);
    } catch {
      payload = raw;
    }
    const error = new ApiError(response.status, payload, response.headers.get("Retry-After"));
    if (response.status === 401) window.dispatchEvent(new CustomEvent("nimble:unauthorized"));
    throw error;
  }
  return response;
}

export async function getJSON(path, options) {
  return (await call(path, options)).json();
}

export async function postJSON(path, body, options = {}) {
  return (await call(path, { ...options, method: "POST", body })).json();
}

// The events of a server-sent-event stream as parsed JSON, until `data: [DONE]`. An error
// event (sent once the stream had started) is thrown as an ApiError.
export async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const data = block
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event && event.error) throw new ApiError(statusOf(event.error), event);
        yield event;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function statusOf(error) {
  const code = Number(error.code);
  if (code >= 400 && code < 600) return code;
  return { invalid_request_error: 400, rate_limit_error: 429, server_error: 500 }[error.type] || 0;
}

// The served models, with their tasks where the key may read /v1/metadata
export async function models() {
  const list = await getJSON("v1/models");
  const tasks = new Map();
  try {
    const meta = await getJSON("v1/metadata");
    for (const m of meta.models) tasks.set(m.id, m.tasks);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err; // without metadata: every model is offered
  }
  return list.data.map((m) => ({
    id: m.id,
    ranking: m.ranking || null,
    parent: m.parent || null,
    tasks: tasks.get(m.id) || tasks.get(m.parent) || null,
  }));
}

export function canDo(model, task) {
  return model.tasks === null || model.tasks.includes(task);
}
