// The shell: sign in/out and a hash router over the views.
import "./style.css";

import { accountView } from "./account.js";
import { api, get } from "./api.js";
import { datasetsView, datasetView } from "./datasets.js";
import { errorBox, h } from "./dom.js";
import { notebooksView } from "./notebooks.js";
import { sqlView } from "./sql.js";

const main = () => document.getElementById("main");
const header = () => document.querySelector("header.top");

function signInView() {
  header().hidden = true;
  const key = h("input", { id: "api-key", type: "password", required: true, autocomplete: "current-password", spellcheck: "false" });
  const out = h("div", { "aria-live": "polite" });
  main().replaceChildren(
    h(
      "form",
      {
        class: "card signin",
        onsubmit: async (e) => {
          e.preventDefault();
          try {
            // The key goes to the server once; it answers with an HttpOnly
            // session cookie and the page never stores the key.
            await api("POST", "/api/ui/session", { api_key: key.value });
            key.value = "";
            location.hash = "#/notebooks";
            route();
          } catch (err) {
            out.replaceChildren(errorBox(err));
            key.focus();
          }
        },
      },
      h("h1", {}, "Sign in to DuckPond"),
      h("label", { for: "api-key" }, "API key"),
      key,
      h("button", { type: "submit" }, "Sign in"),
      out,
    ),
  );
  key.focus();
}

let me = null;

async function route() {
  if (!me) {
    try {
      me = await get("/api/account");
    } catch (err) {
      if (err.status === 401) return signInView();
      return main().replaceChildren(errorBox(err));
    }
  }
  header().hidden = false;
  document.getElementById("who").textContent = me.name;
  const [, page, arg] = (location.hash || "#/notebooks").split("/");
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.getAttribute("href") === `#/${page}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const m = main();
  switch (page) {
    case "datasets":
      arg ? datasetView(m, decodeURIComponent(arg)) : datasetsView(m);
      break;
    case "sql":
      sqlView(m);
      break;
    case "account":
      accountView(m);
      break;
    default:
      notebooksView(m);
  }
  document.title = `DuckPond · ${page || "notebooks"}`;
  m.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signout").addEventListener("click", async () => {
    try {
      await api("DELETE", "/api/ui/session");
    } finally {
      me = null;
      location.hash = "";
      signInView();
    }
  });
  route();
});
