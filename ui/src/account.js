// Account: keys (a new key is shown once; revoke), quotas and usage, and
// copy-ready connection snippets.
import { del, get, post } from "./api.js";
import { bytes, errorBox, h, toast, when } from "./dom.js";

function meter(label, used, max, fmt) {
  const pct = max ? Math.min(100, (100 * used) / max) : 0;
  return h(
    "div",
    { class: "meter" },
    h("span", {}, `${label}: ${fmt(used)} of ${max ? fmt(max) : "unlimited"}`),
    h("meter", { min: "0", max: "100", value: pct.toFixed(1), "aria-label": `${label} used, percent` }),
  );
}

function snippet(title, text) {
  return h(
    "div",
    { class: "snippet" },
    h(
      "div",
      { class: "inline" },
      h("h3", {}, title),
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          "aria-label": `Copy the ${title} snippet`,
          onclick: async () => {
            try {
              await navigator.clipboard.writeText(text);
              toast(`${title} copied`);
            } catch (_) {
              toast("Copy failed: select the text instead", "error");
            }
          },
        },
        "Copy",
      ),
    ),
    h("pre", { tabindex: "0" }, h("code", {}, text)),
  );
}

function snippets(origin) {
  return [
    snippet(
      "curl",
      `curl -H "X-API-Key: $DUCKPOND_KEY" -H 'Content-Type: text/csv' \\
  --data-binary @data.csv "${origin}/api/datasets/my_table/upload"

curl -H "X-API-Key: $DUCKPOND_KEY" -H 'Content-Type: application/json' \\
  -d '{"sql": "SELECT count(*) FROM my_table"}' ${origin}/api/query`,
    ),
    snippet(
      "Prometheus remote_write",
      `remote_write:
  - url: ${origin}/api/v1/write
    authorization:
      credentials: $DUCKPOND_KEY
remote_read:
  - url: ${origin}/api/v1/read
    authorization:
      credentials: $DUCKPOND_KEY`,
    ),
    snippet(
      "Python (duckdb + pyarrow)",
      `import io, os, urllib.request
import duckdb, pyarrow as pa, pyarrow.ipc as ipc

key = os.environ["DUCKPOND_KEY"]
# Stream an Arrow table into a dataset.
table = pa.table({"x": [1, 2, 3]})
sink = io.BytesIO()
with ipc.new_stream(sink, table.schema) as w:
    w.write_table(table)
urllib.request.urlopen(urllib.request.Request(
    "${origin}/api/stream/arrow/my_table", data=sink.getvalue(),
    headers={"X-API-Key": key, "Content-Type": "application/vnd.apache.arrow.stream"}))

# Query the lake; the result arrives as Arrow and DuckDB reads it in place.
req = urllib.request.Request("${origin}/api/query",
    data=b'{"sql": "SELECT * FROM my_table", "format": "arrow"}',
    headers={"X-API-Key": key, "Content-Type": "application/json"})
result = ipc.open_stream(urllib.request.urlopen(req).read()).read_all()
print(duckdb.sql("SELECT sum(x) FROM result"))`,
    ),
  ];
}

export async function accountView(main) {
  main.replaceChildren(h("h1", {}, "Account"), h("p", {}, "Loading…"));
  let me;
  try {
    me = await get("/api/account");
  } catch (err) {
    return main.replaceChildren(h("h1", {}, "Account"), errorBox(err));
  }
  const u = me.usage;
  const q = me.quotas;
  const keys = h("div");
  const newKey = h("div", { "aria-live": "polite" });
  const label = h("input", { id: "key-label", maxlength: "100", autocomplete: "off" });
  // Least privilege first: what a new key may do.
  const scope = h(
    "select",
    { id: "key-scope" },
    h("option", { value: "read" }, "read: queries and listings"),
    h("option", { value: "write" }, "write: read, plus uploads, streams and remote write"),
    h("option", { value: "manage" }, "manage: write, plus keys and notebooks"),
  );
  main.replaceChildren(
    h("h1", {}, `Account ${me.name}`),
    h(
      "section",
      { class: "card", "aria-labelledby": "usage-h" },
      h("h2", { id: "usage-h" }, "Usage and quotas"),
      meter("Storage", u.storage_bytes, q.max_storage_bytes, bytes),
      meter("Notebook sessions", u.notebook_sessions, q.max_notebook_sessions, String),
      h(
        "dl",
        {},
        h("dt", {}, "Write-ahead log not yet compacted"),
        h("dd", {}, bytes(u.wal_uncompacted_bytes)),
        h("dt", {}, "WAL lag (oldest write not yet queryable)"),
        h("dd", {}, `${u.wal_lag_seconds.toFixed(1)} s`),
        h("dt", {}, "Ingest rate limit"),
        h("dd", {}, q.max_ingest_bytes_per_s ? `${bytes(q.max_ingest_bytes_per_s)}/s` : "unlimited"),
        h("dt", {}, "Concurrent queries"),
        h("dd", {}, String(q.max_concurrent_queries)),
        h("dt", {}, "Committed / durable log position"),
        h("dd", {}, `${u.committed_lsn} / ${u.durable_lsn}`),
      ),
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "keys-h" },
      h("h2", { id: "keys-h" }, "API keys"),
      h(
        "form",
        {
          class: "inline",
          onsubmit: async (e) => {
            e.preventDefault();
            try {
              const k = await post("/api/account/keys", { label: label.value, scope: scope.value });
              label.value = "";
              newKey.replaceChildren(
                h(
                  "div",
                  { class: "newkey", role: "alert" },
                  h("p", {}, `Your new ${k.scope} key. It is shown only now: copy it somewhere safe.`),
                  h("code", { id: "new-key", tabindex: "0" }, k.api_key),
                ),
              );
              refreshKeys();
            } catch (err) {
              newKey.replaceChildren(errorBox(err));
            }
          },
        },
        h("label", { for: "key-label" }, "Label"),
        label,
        h("label", { for: "key-scope" }, "Scope"),
        scope,
        h("button", { type: "submit" }, "Create key"),
      ),
      newKey,
      keys,
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "snip-h" },
      h("h2", { id: "snip-h" }, "Connect"),
      h("p", { class: "muted" }, "Replace $DUCKPOND_KEY with one of your keys."),
      ...snippets(location.origin),
    ),
  );

  function revokeButton(k) {
    if (k.revoked_at) return "";
    if (k.id === me.key_id) return h("small", {}, "this session");
    return h(
      "button",
      {
        type: "button",
        class: "danger",
        "aria-label": `Revoke key ${k.id}`,
        onclick: async (e) => {
          if (!confirm(`Revoke key ${k.id}? Programs using it stop working at once.`)) return;
          try {
            await del(`/api/account/keys/${k.id}`);
            toast(`Key ${k.id} revoked`);
            refreshKeys();
          } catch (err) {
            e.target.after(errorBox(err));
          }
        },
      },
      "Revoke",
    );
  }

  async function refreshKeys() {
    try {
      const ks = await get("/api/account/keys");
      keys.replaceChildren(
        h(
          "table",
          { class: "grid" },
          h("thead", {}, h("tr", {}, ...["Key id", "Label", "Scope", "Created", "Last used", ""].map((c) => h("th", { scope: "col" }, c)))),
          h(
            "tbody",
            {},
            ...ks.map((k) =>
              h(
                "tr",
                { "data-key": k.id },
                h("td", {}, h("code", {}, k.id)),
                h("td", {}, k.label),
                h("td", {}, k.scope),
                h("td", {}, when(k.created_at)),
                h("td", {}, k.revoked_at ? `revoked ${when(k.revoked_at)}` : when(k.last_used_at)),
                h("td", {}, revokeButton(k)),
              ),
            ),
          ),
        ),
      );
    } catch (err) {
      keys.replaceChildren(errorBox(err));
    }
  }
  refreshKeys();
}
