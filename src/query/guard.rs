//! Which SQL the query API runs: exactly one read statement, and no
//! function that writes, executes SQL text or reaches outside the account.
//!
//! DuckDB parses the text itself (`json_serialize_sql`, which serializes
//! only SELECT-like statements: SELECT, WITH, VALUES, FROM-first, set
//! operations, DESCRIBE/SHOW/SUMMARIZE, UNPIVOT), so there is no
//! hand-written SQL lexer to fool. EXPLAIN [ANALYZE] and PIVOT are accepted
//! when what they wrap passes the same check. A PIVOT without an explicit
//! `IN (...)` list is refused: DuckDB turns it into several statements
//! (an enum type is created first), which this check cannot vouch for. Every function name in the
//! parse tree is then checked against a deny list. This is the first wall;
//! the instance's settings (read-only lake, `allowed_directories` = the
//! account's directory, external access off, configuration locked, no
//! extension loading) are the second.

use duckdb::Connection;
use serde_json::Value;

/// Why a statement is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The text is not SQL DuckDB can parse (a client error: 400).
    #[error("{0}")]
    Syntax(String),
    /// It parses, but is not a single read statement of the allowed kind,
    /// or calls a denied function (403).
    #[error("{0}")]
    NotAllowed(String),
}

/// Functions never allowed: they change state, run SQL given as text, or
/// reach other databases or the environment. Matched case-insensitively;
/// a trailing `*` matches a prefix.
const DENIED_FUNCTIONS: &[&str] = &[
    "query",
    "query_table",
    "getenv",
    "checkpoint",
    "force_checkpoint",
    // sqlite_scan opens any SQLite file regardless of allowed_directories
    // (found by the attack tests: another account's catalog was readable).
    "sqlite_*",
    "postgres_*",
    "mysql_*",
    "ducklake_add_data_files",
    "ducklake_merge_adjacent_files",
    "ducklake_expire_snapshots",
    "ducklake_cleanup_old_files",
    "ducklake_delete_orphaned_files",
    "ducklake_flush_inlined_data",
    "ducklake_rewrite_data_files",
    "ducklake_set_option",
    "ducklake_set_commit_message",
    "set_commit_message",
    "install_*",
    "load_*",
];

/// Accepts `sql` or says why not. `probe` is any connection (only parses).
pub fn check(probe: &Connection, sql: &str) -> Result<(), Refused> {
    let stripped = strip_leading_comments(sql);
    let upper = stripped.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().take(2).collect();
    let inner = match words.as_slice() {
        ["EXPLAIN", "ANALYZE", ..] | ["EXPLAIN", "ANALYSE", ..] => skip_words(stripped, 2),
        ["EXPLAIN", ..] => skip_words(stripped, 1),
        _ => stripped,
    };
    let inner_upper = inner.trim_start().to_ascii_uppercase();
    // PIVOT is not serializable on its own; as a subquery it is, and a
    // second statement hidden after it cannot parse inside the parentheses.
    let to_parse = if inner_upper.starts_with("PIVOT") {
        format!("SELECT * FROM ({})", inner.trim().trim_end_matches(';'))
    } else {
        inner.to_string()
    };
    let json: String = probe
        .query_row("SELECT json_serialize_sql(?::VARCHAR)", [to_parse.as_str()], |r| r.get(0))
        .map_err(|e| Refused::Syntax(format!("the statement could not be checked: {e}")))?;
    let v: Value =
        serde_json::from_str(&json).map_err(|e| Refused::NotAllowed(format!("unexpected parser output: {e}")))?;
    if v["error"].as_bool() == Some(true) {
        let msg = v["error_message"].as_str().unwrap_or("");
        if inner_upper.starts_with("PIVOT") {
            return Err(Refused::NotAllowed(
                "PIVOT needs an explicit value list here: PIVOT t ON col IN ('a', 'b') USING ...".into(),
            ));
        }
        return Err(if msg.contains("Only SELECT statements") {
            Refused::NotAllowed(
                "only read statements are allowed (SELECT, WITH, VALUES, FROM, DESCRIBE, SHOW, SUMMARIZE, \
                 EXPLAIN, PIVOT, UNPIVOT); this one would change something or reach outside the lake"
                    .into(),
            )
        } else {
            Refused::Syntax(format!("the statement does not parse: {msg}"))
        });
    }
    let n = v["statements"].as_array().map(Vec::len).unwrap_or(0);
    if n != 1 {
        return Err(Refused::NotAllowed(format!("send exactly one statement per query (got {n})")));
    }
    let mut names = Vec::new();
    function_names(&v["statements"], &mut names);
    for name in names {
        let lower = name.to_ascii_lowercase();
        let denied = DENIED_FUNCTIONS.iter().any(|d| match d.strip_suffix('*') {
            Some(prefix) => lower.starts_with(prefix),
            None => lower == *d,
        });
        if denied {
            return Err(Refused::NotAllowed(format!("function {name}() is not allowed in queries")));
        }
    }
    Ok(())
}

fn function_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(name)) = map.get("function_name") {
                out.push(name.clone());
            }
            for child in map.values() {
                function_names(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| function_names(i, out)),
        _ => {}
    }
}

fn strip_leading_comments(sql: &str) -> &str {
    let mut s = sql.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map(|(_, r)| r).unwrap_or("").trim_start();
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map(|(_, r)| r).unwrap_or("").trim_start();
        } else {
            return s;
        }
    }
}

fn skip_words(s: &str, n: usize) -> &str {
    let mut rest = s.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_reads_and_refuses_everything_else() {
        let c = Connection::open_in_memory().unwrap();
        for ok in [
            "SELECT 1",
            "  -- hi\n WITH a AS (SELECT 1) SELECT * FROM a",
            "VALUES (1)",
            "FROM range(3)",
            "DESCRIBE SELECT 1",
            "SHOW TABLES",
            "SUMMARIZE SELECT 1 AS x",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "PIVOT (SELECT 1 AS k, 2 AS v) ON k IN (1) USING sum(v)",
            "SELECT 1;",
            "SELECT pg_typeof(1)",
        ] {
            assert_eq!(check(&c, ok), Ok(()), "{ok}");
        }
        for bad in [
            "INSERT INTO t VALUES (1)",
            "CREATE TABLE x AS SELECT 1",
            "COPY (SELECT 1) TO '/tmp/x.csv'",
            "ATTACH '/tmp/x.db' AS x",
            "SET threads = 1",
            "RESET threads",
            "PRAGMA threads = 1",
            "INSTALL httpfs",
            "LOAD httpfs",
            "CALL ducklake_expire_snapshots('lake')",
            "SELECT 1; DROP TABLE t",
            "EXPLAIN DELETE FROM t",
            "PIVOT t ON k); DROP TABLE t; SELECT (1",
            "SELECT * FROM query('DROP TABLE t')",
            "SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())",
            "SELECT getenv('HOME')",
            "SELECT * FROM sqlite_scan('/x/catalog.sqlite', 'ducklake_table')",
            "PIVOT (SELECT 1 AS k, 2 AS v) ON k USING sum(v)",
            "SELECT * FROM postgres_query('db', 'SELECT 1')",
            "/* x */ DETACH lake",
            "USE memory",
            "CHECKPOINT",
            "BEGIN TRANSACTION",
        ] {
            assert!(check(&c, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_that_does_not_parse_is_a_syntax_error_not_a_refusal() {
        let c = Connection::open_in_memory().unwrap();
        for bad in ["SELEC 1", "SELECT FROM WHERE", "SELECT (1", "))"] {
            assert!(matches!(check(&c, bad), Err(Refused::Syntax(_))), "{bad}: {:?}", check(&c, bad));
        }
        for refused in ["INSERT INTO t VALUES (1)", "SELECT getenv('HOME')", "SELECT 1; SELECT 2"] {
            assert!(matches!(check(&c, refused), Err(Refused::NotAllowed(_))), "{refused}: {:?}", check(&c, refused));
        }
    }
}
