// The SQL console: a CodeMirror editor with SQL highlighting and history,
// results as a paged table and a uPlot chart, CSV and Parquet export.
import { sql } from "@codemirror/lang-sql";
import { keymap } from "@codemirror/view";
import { basicSetup, EditorView } from "codemirror";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

import { api, post } from "./api.js";
import { download, errorBox, h } from "./dom.js";
import { resultTable } from "./table.js";

const HISTORY_KEY = "duckpond.sql.history";
const HISTORY_MAX = 50;
const RESULT_LIMIT = 10000;

function history() {
  try {
    return JSON.parse(localStorage.getItem(HISTORY_KEY)) || [];
  } catch (_) {
    return [];
  }
}

function remember(q) {
  const hs = [q, ...history().filter((x) => x !== q)].slice(0, HISTORY_MAX);
  localStorage.setItem(HISTORY_KEY, JSON.stringify(hs));
}

const isNumeric = (t) => /INT|DOUBLE|FLOAT|DECIMAL|REAL|NUMERIC|HUGEINT/i.test(t || "");
const isTime = (t) => /TIMESTAMP|DATE|TIME/i.test(t || "");

/// Numbers of a column for uPlot (times as seconds since the epoch).
function series(result, i) {
  const t = result.columns[i].type;
  return result.rows.map((r) => {
    const v = r[i];
    if (v === null || v === undefined) return null;
    if (isTime(t)) return Date.parse(typeof v === "string" && !/[zZ]|[+-]\d\d:?\d\d$/.test(v) ? v + "Z" : v) / 1000;
    const n = Number(v);
    return Number.isFinite(n) ? n : null;
  });
}

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

function chart(result, host) {
  const cols = result.columns;
  const candidates = cols.map((c, i) => ({ ...c, i })).filter((c) => isNumeric(c.type) || isTime(c.type));
  if (candidates.length < 2) {
    host.replaceChildren(h("p", { class: "muted" }, "A chart needs two numeric or time columns."));
    return;
  }
  const kind = h("select", { id: "ch-kind" }, ...["line", "bar", "scatter"].map((k) => h("option", { value: k }, k)));
  const x = h("select", { id: "ch-x" }, ...candidates.map((c) => h("option", { value: c.i }, c.name)));
  const ys = h(
    "fieldset",
    { class: "inline" },
    h("legend", {}, "Y columns"),
    ...candidates
      .filter((c) => isNumeric(c.type))
      .map((c, n) =>
        h("label", {}, h("input", { type: "checkbox", value: c.i, checked: n === 1 || (n === 0 && candidates.length === 1) }), c.name),
      ),
  );
  // A time column is the natural x axis (e.g. prometheus_samples).
  const timeCol = candidates.find((c) => isTime(c.type));
  if (timeCol) x.value = timeCol.i;
  const ysChecked = () => [...ys.querySelectorAll("input:checked")].map((e) => Number(e.value)).filter((i) => i !== Number(x.value));
  if (!ysChecked().length) {
    const first = ys.querySelector(`input:not([value="${x.value}"])`);
    if (first) first.checked = true;
  }
  const plotBox = h("div", { class: "plot", role: "img", "aria-label": "Chart of the result" });
  let plot;
  function draw() {
    plot?.destroy();
    const xi = Number(x.value);
    const yi = ysChecked();
    if (!yi.length) return plotBox.replaceChildren(h("p", { class: "muted" }, "Choose a y column."));
    // uPlot wants x ascending.
    const order = result.rows.map((_, n) => n);
    const xs = series(result, xi);
    order.sort((a, b) => (xs[a] ?? 0) - (xs[b] ?? 0));
    const data = [order.map((n) => xs[n]), ...yi.map((i) => { const s = series(result, i); return order.map((n) => s[n]); })];
    const k = kind.value;
    const paths = k === "bar" ? uPlot.paths.bars({ size: [0.6, 40] }) : k === "scatter" ? () => null : undefined;
    const width = Math.max(280, Math.min(plotBox.clientWidth || 900, 1100));
    plot = new uPlot(
      {
        width,
        height: 320,
        // Bars grow from zero; lines and points use the data's own range.
        scales: {
          x: { time: isTime(cols[xi].type) },
          y: k === "bar" ? { range: (_u, min, max) => [Math.min(0, min), max] } : {},
        },
        series: [
          { label: cols[xi].name },
          ...yi.map((i, n) => ({
            label: cols[i].name,
            stroke: PALETTE[n % PALETTE.length],
            fill: k === "bar" ? PALETTE[n % PALETTE.length] + "99" : undefined,
            paths,
            points: { show: k === "scatter", size: 5 },
          })),
        ],
      },
      data,
      plotBox,
    );
  }
  for (const el of [kind, x, ys]) el.addEventListener("change", draw);
  host.replaceChildren(
    h("div", { class: "inline" }, h("label", { for: "ch-kind" }, "Chart"), kind, h("label", { for: "ch-x" }, "X"), x),
    ys,
    plotBox,
  );
  requestAnimationFrame(draw);
}

export function sqlView(main) {
  const hist = history();
  const editorHost = h("div", { class: "editor", "aria-label": "SQL editor" });
  const out = h("div", { "aria-live": "polite" });
  const histSel = h(
    "select",
    { id: "sql-history", onchange: (e) => e.target.value && setQuery(e.target.value) },
    h("option", { value: "" }, hist.length ? "History…" : "No history yet"),
    ...hist.map((q) => h("option", { value: q }, q.length > 80 ? q.slice(0, 80) + "…" : q)),
  );
  const run = h("button", { type: "button", id: "run", onclick: () => execute() }, "Run (Ctrl+Enter)");
  const exportCsv = h("button", { type: "button", class: "secondary", onclick: () => exportAs("csv") }, "Export CSV");
  const exportParquet = h("button", { type: "button", class: "secondary", onclick: () => exportAs("parquet") }, "Export Parquet");
  main.replaceChildren(
    h("h1", {}, "SQL"),
    editorHost,
    h("div", { class: "inline" }, run, exportCsv, exportParquet, h("label", { for: "sql-history" }, "History"), histSel),
    out,
  );
  const view = new EditorView({
    doc: hist[0] || "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'lake'",
    extensions: [
      keymap.of([{ key: "Mod-Enter", run: () => (execute(), true) }]),
      basicSetup,
      sql(),
      EditorView.contentAttributes.of({ "aria-label": "SQL query" }),
    ],
    parent: editorHost,
  });
  const query = () => view.state.doc.toString().trim();
  function refreshHistory() {
    const hs = history();
    histSel.replaceChildren(
      h("option", { value: "" }, "History…"),
      ...hs.map((q) => h("option", { value: q }, q.length > 80 ? q.slice(0, 80) + "…" : q)),
    );
  }
  function setQuery(q) {
    view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: q } });
  }

  async function execute() {
    const q = query();
    if (!q) return;
    run.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "Running…"));
    try {
      const r = await post("/api/query", { sql: q, format: "json", limit: RESULT_LIMIT });
      remember(q);
      refreshHistory();
      const chartHost = h("div", { class: "chart" });
      out.replaceChildren(
        h(
          "p",
          { class: "muted" },
          `${r.row_count} rows in ${r.elapsed_ms} ms, snapshot ${r.snapshot_id ?? "-"}${r.truncated ? " (truncated)" : ""}`,
        ),
        resultTable(r),
        h("h2", {}, "Chart"),
        chartHost,
      );
      chart(r, chartHost);
    } catch (err) {
      // Shown under the editor, where the query is.
      out.replaceChildren(h("h2", {}, "Error"), errorBox(err));
    } finally {
      run.disabled = false;
    }
  }

  async function exportAs(format) {
    const q = query();
    try {
      const blob = await api("POST", "/api/query", { sql: q, format });
      download(blob, `result.${format}`);
    } catch (err) {
      out.replaceChildren(h("h2", {}, "Error"), errorBox(err));
    }
  }
}
