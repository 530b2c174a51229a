// Notebooks: list with live session state; create, rename, delete; start,
// stop, open the proxied marimo editor in a new tab.
import { del, get, post, put } from "./api.js";
import { errorBox, h, toast, when } from "./dom.js";

const POLL_MS = 2000;

export function notebooksView(main) {
  const list = h("div", { class: "list", "aria-live": "polite" });
  const status = h("div");
  const name = h("input", { id: "nb-name", name: "name", required: true, maxlength: "100", autocomplete: "off" });
  const form = h(
    "form",
    {
      class: "inline",
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          await post("/api/notebooks", { name: name.value });
          toast(`Notebook "${name.value}" created`);
          name.value = "";
          refresh();
        } catch (err) {
          status.replaceChildren(errorBox(err));
        }
      },
    },
    h("label", { for: "nb-name" }, "New notebook"),
    name,
    h("button", { type: "submit" }, "Create"),
  );
  main.replaceChildren(h("h1", {}, "Notebooks"), form, status, list);

  async function act(fn, row) {
    try {
      await fn();
      refresh();
    } catch (err) {
      row.querySelector(".row-error")?.replaceChildren(errorBox(err));
    }
  }

  function row(nb) {
    const s = nb.session;
    const state = h("span", { class: `state ${s.state}`, "data-state": s.state }, s.state);
    const r = h(
      "article",
      { class: "row", "data-id": nb.id, "aria-label": `Notebook ${nb.name}` },
      h("div", { class: "grow" }, h("h2", {}, nb.name), h("small", {}, `updated ${when(nb.updated_at)}`)),
      state,
      s.reason ? h("small", { class: "reason" }, s.reason) : null,
      h("div", { class: "actions" }),
      h("div", { class: "row-error" }),
    );
    const actions = r.querySelector(".actions");
    if (s.state === "ready") {
      actions.append(
        h(
          "a",
          { class: "button", href: s.url, target: "_blank", rel: "noopener" },
          s.mode === "view" ? "Open (read-only)" : "Open editor",
        ),
        h("button", { type: "button", onclick: () => act(() => post(`/api/notebooks/${nb.id}/stop`), r) }, "Stop"),
      );
    } else if (s.state === "starting" || s.state === "stopping") {
      actions.append(h("button", { type: "button", disabled: true }, s.state === "starting" ? "Starting…" : "Stopping…"));
    } else {
      actions.append(h("button", { type: "button", onclick: () => act(() => post(`/api/notebooks/${nb.id}/start`), r) }, "Start"));
    }
    actions.append(
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          onclick: () => {
            const n = prompt("New name", nb.name);
            if (n && n !== nb.name) act(() => put(`/api/notebooks/${nb.id}`, { name: n }), r);
          },
        },
        "Rename",
      ),
      h(
        "button",
        {
          type: "button",
          class: "danger",
          onclick: () => {
            if (confirm(`Delete notebook "${nb.name}"? Its session is stopped and the file is removed.`))
              act(() => del(`/api/notebooks/${nb.id}`), r);
          },
        },
        "Delete",
      ),
    );
    return r;
  }

  let timer;
  async function refresh() {
    clearTimeout(timer);
    try {
      const nbs = await get("/api/notebooks");
      list.replaceChildren(...(nbs.length ? nbs.map(row) : [h("p", {}, "No notebooks yet.")]));
    } catch (err) {
      list.replaceChildren(errorBox(err));
    }
    // Live session state while the view is shown.
    if (document.body.contains(list)) timer = setTimeout(refresh, POLL_MS);
  }
  refresh();
}
