//! What the write-ahead log's records mean. The WAL stores `(kind, bytes)`;
//! this crate is the one place that says how each kind is encoded, so the
//! ingest side and the compactor cannot disagree.
//!
//! - [`TableName`]: a validated table (dataset) name.
//! - [`LogRecord`]: the decoded record; [`LogRecord::encode`] gives the
//!   `(kind, payload)` pair to append and [`LogRecord::decode`] reverses it.
//!
//! Encodings (all integers little-endian):
//!
//! | kind | record | payload |
//! |---|---|---|
//! | 1 | [`LogRecord::Rows`] | `u16` name length, table name (UTF-8), Arrow IPC *stream* bytes (schema + batches) |
//! | 2 | [`LogRecord::StagedFile`] | JSON of [`StagedFile`] |
//! | 3 | [`LogRecord::Command`] | JSON of [`DatasetCommand`] |
//!
//! Kinds are never reused; a decoder meeting an unknown kind fails loudly
//! rather than skipping data.
#![deny(missing_docs)]

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Longest table name, in characters.
pub const TABLE_NAME_MAX_CHARS: usize = 128;
/// Prefix reserved for DuckPond's own tables and views.
pub const RESERVED_PREFIX: &str = "__duckpond";

/// Kind of [`LogRecord::Rows`].
pub const KIND_ROWS: u16 = 1;
/// Kind of [`LogRecord::StagedFile`].
pub const KIND_STAGED_FILE: u16 = 2;
/// Kind of [`LogRecord::Command`].
pub const KIND_COMMAND: u16 = 3;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A table name breaks the naming rules.
    #[error("invalid table name {name:?}: {why}")]
    InvalidTableName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// A record could not be decoded.
    #[error("undecodable log record of kind {kind}: {why}")]
    Undecodable {
        /// Its kind.
        kind: u16,
        /// What is wrong.
        why: String,
    },
}

/// A table (dataset) name: 1-128 characters, ASCII letters, digits and `_`,
/// not starting with a digit, not reserved. Such names need no quoting
/// subtleties, cannot name paths, and are case-preserving.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TableName(String);

impl TableName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, SchemaError> {
        let bad = |why| Err(SchemaError::InvalidTableName { name: name.to_string(), why });
        if name.is_empty() {
            return bad("must not be empty");
        }
        if name.len() > TABLE_NAME_MAX_CHARS {
            return bad("at most 128 characters");
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return bad("use only ASCII letters, digits and '_'");
        }
        if name.as_bytes()[0].is_ascii_digit() {
            return bad("must not start with a digit");
        }
        if name.to_ascii_lowercase().starts_with(RESERVED_PREFIX) {
            return bad("names starting with __duckpond are reserved");
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier.
    pub fn quoted(&self) -> String {
        // Validation rules out quotes, but quote defensively anyway.
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TableName {
    type Error = SchemaError;
    fn try_from(s: String) -> Result<Self, SchemaError> {
        Self::parse(&s)
    }
}

impl From<TableName> for String {
    fn from(t: TableName) -> String {
        t.0
    }
}

/// A change to a dataset, applied by the compactor in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DatasetCommand {
    /// Create an empty table with the schema of an Arrow IPC stream
    /// (schema message only; rows, if any, are ignored).
    Create {
        /// The table.
        table: TableName,
        /// Arrow IPC stream bytes carrying the schema.
        #[serde(with = "hex_bytes")]
        schema_ipc: Vec<u8>,
    },
    /// Empty the table (keep its schema); later rows refill it.
    Truncate {
        /// The table.
        table: TableName,
    },
    /// Drop the table.
    Drop {
        /// The table.
        table: TableName,
    },
}

impl DatasetCommand {
    /// The table the command acts on.
    pub fn table(&self) -> &TableName {
        match self {
            DatasetCommand::Create { table, .. }
            | DatasetCommand::Truncate { table }
            | DatasetCommand::Drop { table } => table,
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(b.len() * 2);
        for byte in b {
            out.push_str(&format!("{byte:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd hex length"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// A Parquet file converted from an upload, fsynced in the account's staged
/// directory before this record was appended. The compactor inserts it and
/// deletes it once the snapshot holding it is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    /// The table it goes to.
    pub table: TableName,
    /// Its file name inside the staged directory (never a path: the log
    /// cannot point anywhere else).
    pub file: StagedFileName,
    /// Rows in the file.
    pub rows: u64,
    /// Size of the file.
    pub bytes: u64,
}

/// The name of a staged Parquet file: `<32 hex digits>.parquet`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StagedFileName(String);

impl StagedFileName {
    /// A fresh name from 128 random bits given as hex.
    pub fn from_hex_id(hex_id: &str) -> Result<Self, SchemaError> {
        Self::parse(&format!("{hex_id}.parquet"))
    }

    /// Validates a name.
    pub fn parse(name: &str) -> Result<Self, SchemaError> {
        let ok =
            name.strip_suffix(".parquet").is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        if ok {
            Ok(Self(name.to_string()))
        } else {
            Err(SchemaError::Undecodable { kind: KIND_STAGED_FILE, why: format!("bad staged file name {name:?}") })
        }
    }

    /// The file name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StagedFileName {
    type Error = SchemaError;
    fn try_from(s: String) -> Result<Self, SchemaError> {
        Self::parse(&s)
    }
}

impl From<StagedFileName> for String {
    fn from(n: StagedFileName) -> String {
        n.0
    }
}

/// A decoded log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// Rows to append to a table (created on first write).
    Rows {
        /// The table.
        table: TableName,
        /// Arrow IPC stream bytes: a schema message and record batches.
        ipc: Bytes,
    },
    /// A staged Parquet file to insert into a table.
    StagedFile(StagedFile),
    /// A dataset command.
    Command(DatasetCommand),
}

impl LogRecord {
    /// The table the record touches.
    pub fn table(&self) -> &TableName {
        match self {
            LogRecord::Rows { table, .. } => table,
            LogRecord::StagedFile(f) => &f.table,
            LogRecord::Command(c) => c.table(),
        }
    }

    /// `(kind, payload)` to append to the WAL.
    pub fn encode(&self) -> (u16, Bytes) {
        match self {
            LogRecord::Rows { table, ipc } => {
                let name = table.as_str().as_bytes();
                let mut out = Vec::with_capacity(2 + name.len() + ipc.len());
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(name);
                out.extend_from_slice(ipc);
                (KIND_ROWS, Bytes::from(out))
            }
            LogRecord::StagedFile(f) => {
                (KIND_STAGED_FILE, Bytes::from(serde_json::to_vec(f).expect("staged files serialize")))
            }
            LogRecord::Command(c) => (KIND_COMMAND, Bytes::from(serde_json::to_vec(c).expect("commands serialize"))),
        }
    }

    /// Decodes a record read back from the WAL.
    pub fn decode(kind: u16, payload: Bytes) -> Result<Self, SchemaError> {
        let bad = |why: String| SchemaError::Undecodable { kind, why };
        match kind {
            KIND_ROWS => {
                if payload.len() < 2 {
                    return Err(bad("shorter than its header".into()));
                }
                let n = u16::from_le_bytes([payload[0], payload[1]]) as usize;
                if payload.len() < 2 + n {
                    return Err(bad("table name runs past the end".into()));
                }
                let name = std::str::from_utf8(&payload[2..2 + n]).map_err(|e| bad(e.to_string()))?;
                let table = TableName::parse(name).map_err(|e| bad(e.to_string()))?;
                Ok(LogRecord::Rows { table, ipc: payload.slice(2 + n..) })
            }
            KIND_STAGED_FILE => {
                serde_json::from_slice(&payload).map(LogRecord::StagedFile).map_err(|e| bad(e.to_string()))
            }
            KIND_COMMAND => serde_json::from_slice(&payload).map(LogRecord::Command).map_err(|e| bad(e.to_string())),
            other => Err(bad(format!("unknown kind {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        for ok in ["t", "metrics_2024", "CamelCase", "_x"] {
            assert!(TableName::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in ["", "a/b", "..", "a.b", "1abc", "a b", "é", "a\"b", "__duckpond_x", "__DuckPond", long.as_str()] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_round_trip() {
        let t = TableName::parse("events").unwrap();
        for r in [
            LogRecord::Rows { table: t.clone(), ipc: Bytes::from_static(b"\xff\xff\xff\xffarrow") },
            LogRecord::StagedFile(StagedFile {
                table: t.clone(),
                file: StagedFileName::from_hex_id("0123456789abcdef0123456789abcdef").unwrap(),
                rows: 3,
                bytes: 1024,
            }),
            LogRecord::Command(DatasetCommand::Drop { table: t.clone() }),
            LogRecord::Command(DatasetCommand::Truncate { table: t.clone() }),
            LogRecord::Command(DatasetCommand::Create { table: t, schema_ipc: vec![0, 1, 255] }),
        ] {
            let (kind, payload) = r.encode();
            assert_eq!(LogRecord::decode(kind, payload).unwrap(), r);
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(LogRecord::decode(KIND_ROWS, Bytes::from_static(b"\x05")).is_err());
        assert!(LogRecord::decode(KIND_ROWS, Bytes::from_static(b"\x09\x00abc")).is_err());
        assert!(LogRecord::decode(KIND_ROWS, Bytes::from_static(b"\x03\x00a/b")).is_err());
        assert!(LogRecord::decode(KIND_COMMAND, Bytes::from_static(b"{")).is_err());
        assert!(LogRecord::decode(99, Bytes::new()).is_err());
        // A staged file can never name a path outside the staged directory.
        for name in ["../x.parquet", "/etc/passwd", "a.parquet", "0123456789abcdef0123456789abcdef.csv"] {
            let json = format!(r#"{{"table":"t","file":"{name}","rows":1,"bytes":1}}"#);
            assert!(LogRecord::decode(KIND_STAGED_FILE, Bytes::from(json)).is_err(), "{name}");
        }
    }
}
