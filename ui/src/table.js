// A paged table of a result: `{columns: [{name, type}], rows: [...]}` where a
// row is an array (query results) or an object (dataset previews).
import { h } from "./dom.js";

export const PAGE_ROWS = 50;

function cell(v) {
  if (v === null || v === undefined) return h("span", { class: "null" }, "NULL");
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

export function resultTable(result) {
  const cols = result.columns || [];
  const rows = result.rows || [];
  const wrap = h("div", { class: "result" });
  let page = 0;
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
  function render() {
    const slice = rows.slice(page * PAGE_ROWS, (page + 1) * PAGE_ROWS);
    const value = (r, i) => (Array.isArray(r) ? r[i] : r[cols[i].name]);
    const numeric = cols.map((c) => /INT|DOUBLE|FLOAT|DECIMAL|REAL|NUMERIC/i.test(c.type || ""));
    wrap.replaceChildren(
      h(
        "div",
        { class: "scroll", tabindex: "0", role: "region", "aria-label": "Result rows" },
        h(
          "table",
          { class: "grid" },
          h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", { scope: "col", title: c.type }, c.name)))),
          h("tbody", {}, ...slice.map((r) => h("tr", {}, ...cols.map((_, i) => h("td", { class: numeric[i] ? "num" : null }, cell(value(r, i))))))),
        ),
      ),
      pages > 1
        ? h(
            "nav",
            { class: "pager", "aria-label": "Result pages" },
            h("button", { type: "button", disabled: page === 0, onclick: () => ((page -= 1), render()) }, "Previous"),
            h("span", {}, `Page ${page + 1} of ${pages} (${rows.length} rows)`),
            h("button", { type: "button", disabled: page >= pages - 1, onclick: () => ((page += 1), render()) }, "Next"),
          )
        : h("p", { class: "muted" }, `${rows.length} row${rows.length === 1 ? "" : "s"}`),
    );
  }
  render();
  return wrap;
}
