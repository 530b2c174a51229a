// Datasets: list (rows, size, last update), detail (schema, stats,
// snapshots, preview), upload with drag and drop and progress, delete.
import { del, get, upload } from "./api.js";
import { bytes, errorBox, h, toast, when } from "./dom.js";
import { resultTable } from "./table.js";

const FORMATS = { csv: "csv", tsv: "csv", json: "json", ndjson: "ndjson", jsonl: "ndjson", parquet: "parquet" };

function uploader(onDone) {
  const table = h("input", { id: "up-table", name: "table", required: true, pattern: "[A-Za-z_][A-Za-z0-9_]*", maxlength: "128" });
  const mode = h(
    "select",
    { id: "up-mode", name: "mode" },
    h("option", { value: "append" }, "append"),
    h("option", { value: "replace" }, "replace"),
    h("option", { value: "create" }, "create"),
  );
  const file = h("input", { id: "up-file", type: "file", accept: ".csv,.tsv,.json,.ndjson,.jsonl,.parquet" });
  const bar = h("progress", { max: "1", value: "0", hidden: true, "aria-label": "Upload progress" });
  const out = h("div", { "aria-live": "polite" });
  const drop = h(
    "div",
    { class: "drop", tabindex: "0", role: "button", "aria-label": "Drop a file here or press Enter to choose one" },
    "Drop a CSV, JSON, NDJSON or Parquet file here, or choose one",
  );
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && file.click());
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
  });
  file.addEventListener("change", () => file.files.length && send(file.files[0]));

  async function send(f) {
    out.replaceChildren();
    const ext = (f.name.split(".").pop() || "").toLowerCase();
    const format = FORMATS[ext];
    if (!table.value) table.value = f.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_]/g, "_").replace(/^([0-9])/, "_$1");
    if (!table.reportValidity()) return;
    const q = new URLSearchParams({ mode: mode.value, wait: "committed" });
    if (format) q.set("format", format);
    bar.hidden = false;
    bar.value = 0;
    try {
      const r = await upload(`/api/datasets/${encodeURIComponent(table.value)}/upload?${q}`, f, (p) => (bar.value = p));
      bar.value = 1;
      out.replaceChildren(h("p", { class: "ok" }, `Uploaded ${r.rows} rows into ${r.table}.`));
      toast(`Uploaded ${f.name}`);
      onDone();
    } catch (err) {
      out.replaceChildren(errorBox(err));
    } finally {
      file.value = "";
    }
  }

  return h(
    "section",
    { class: "card", "aria-labelledby": "up-h" },
    h("h2", { id: "up-h" }, "Upload"),
    h("div", { class: "inline" }, h("label", { for: "up-table" }, "Table"), table, h("label", { for: "up-mode" }, "Mode"), mode),
    drop,
    h("label", { for: "up-file", class: "visually-hidden" }, "File"),
    file,
    bar,
    out,
  );
}

export function datasetsView(main) {
  const list = h("div");
  main.replaceChildren(h("h1", {}, "Datasets"), uploader(refresh), h("h2", {}, "Your datasets"), list);
  async function refresh() {
    try {
      const ds = await get("/api/datasets");
      if (!ds.length) return list.replaceChildren(h("p", {}, "No datasets yet: upload a file above."));
      list.replaceChildren(
        h(
          "table",
          { class: "grid" },
          h("thead", {}, h("tr", {}, ...["Name", "Rows", "Size", "Last update"].map((c) => h("th", { scope: "col" }, c)))),
          h(
            "tbody",
            {},
            ...ds.map((d) =>
              h(
                "tr",
                {},
                h("td", {}, h("a", { href: `#/datasets/${encodeURIComponent(d.name)}` }, d.name)),
                h("td", { class: "num" }, String(d.rows ?? "")),
                h("td", { class: "num" }, bytes(d.bytes)),
                h("td", {}, when(d.last_snapshot_time)),
              ),
            ),
          ),
        ),
      );
    } catch (err) {
      list.replaceChildren(errorBox(err));
    }
  }
  refresh();
}

export async function datasetView(main, name) {
  main.replaceChildren(h("h1", {}, name), h("p", {}, "Loading…"));
  try {
    const [d, preview] = await Promise.all([
      get(`/api/datasets/${encodeURIComponent(name)}`),
      get(`/api/datasets/${encodeURIComponent(name)}/preview?limit=20`),
    ]);
    const cols = d.columns || [];
    const snaps = d.snapshots || [];
    main.replaceChildren(
      h("p", {}, h("a", { href: "#/datasets" }, "← Datasets")),
      h("h1", {}, name),
      h("p", {}, `${d.rows} rows, ${bytes(d.bytes)} in ${d.files} files, last snapshot ${d.last_snapshot_id ?? "none"}`),
      h("h2", {}, "Schema"),
      h(
        "table",
        { class: "grid" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Column"), h("th", { scope: "col" }, "Type"))),
        h("tbody", {}, ...cols.map((c) => h("tr", {}, h("td", {}, c.name), h("td", {}, c.type)))),
      ),
      h("h2", {}, "Snapshots"),
      snaps.length
        ? h(
            "table",
            { class: "grid" },
            h("thead", {}, h("tr", {}, ...["Snapshot", "Time", "Message"].map((c) => h("th", { scope: "col" }, c)))),
            h(
              "tbody",
              {},
              ...snaps.map((s) =>
                h("tr", {}, h("td", { class: "num" }, String(s.snapshot_id)), h("td", {}, when(s.time)), h("td", {}, s.message ?? "")),
              ),
            ),
          )
        : h("p", {}, "No snapshots listed."),
      h("h2", {}, "Preview"),
      resultTable(preview),
      h(
        "p",
        {},
        h(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: async (e) => {
              if (!confirm(`Delete dataset "${name}" and all its data?`)) return;
              try {
                await del(`/api/datasets/${encodeURIComponent(name)}?wait=committed`);
                toast(`Deleted ${name}`);
                location.hash = "#/datasets";
              } catch (err) {
                e.target.after(errorBox(err));
              }
            },
          },
          "Delete dataset",
        ),
      ),
    );
  } catch (err) {
    main.replaceChildren(h("p", {}, h("a", { href: "#/datasets" }, "← Datasets")), h("h1", {}, name), errorBox(err));
  }
}
