// Entry point: the key form, the navigation, and the page that the path names.
import { getKey, setKey } from "./api.js";

const PAGES = {
  "": () => import("./playground.js"),
  embeddings: () => import("./tryout.js"),
  status: () => import("./status.js"),
  docs: () => import("./docs.js"),
};

function pageName() {
  const base = new URL("../", import.meta.url).pathname; // /…/ui/
  const rest = location.pathname.startsWith(base) ? location.pathname.slice(base.length) : "";
  return rest in PAGES ? rest : "";
}

function keyForm() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  const note = document.getElementById("key-note");
  const show = (text) => {
    note.textContent = text;
  };
  const describe = () =>
    show(getKey() ? "Key set, kept in this tab only." : "No key: one is kept in this tab only.");
  input.value = getKey();
  describe();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setKey(input.value.trim());
    describe();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    input.value = "";
    setKey("");
    describe();
  });
  window.addEventListener("nimble:unauthorized", () => {
    show(getKey() ? "The server refused this key (401): check it." : "This server needs an API key (401): enter one.");
    input.setAttribute("aria-invalid", "true");
  });
  window.addEventListener("nimble:key", () => input.removeAttribute("aria-invalid"));
}

async function start() {
  keyForm();
  const name = pageName();
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
  }
  const main = document.getElementById("main");
  const page = await PAGES[name]();
  main.replaceChildren();
  await page.render(main);
  document.body.dataset.ready = "true"; // for tests: the page is drawn
}

start();
