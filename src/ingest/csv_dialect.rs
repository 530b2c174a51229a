//! CSV dialects: how an upload's CSV is read.
//!
//! The dialect (delimiter, quoting, comments, header, leading lines) is
//! sniffed from the body's first [`SNIFF_HEAD_BYTES`] while the rest is still
//! arriving, and handed to `read_csv`, which then sniffs only the column
//! types, from samples across the whole file as it always does. A dialect is
//! uniform through a file and the sniffer finds it in the first rows, so
//! this reads the file as DuckDB's own `read_csv` would, with the dialect half
//! of the sniff (about 25 ms of a 100 MB upload here) off the critical path.
//! A body shorter than the head is sniffed whole.
//!
//! The sniffer also explains some malformed small files away, by skipping
//! leading lines or reading everything as one column; those are read with
//! the delimiter of the file's first line and strict parsing instead, so
//! DuckDB reports the bad line rather than silently dropping or merging rows.

use std::path::Path;

use duckpond_compactor::lake::sql_string;

/// How much of a CSV body the dialect is sniffed from (cut at its last line
/// end): comfortably more than the sniffer's 20,480 sample rows of ordinary
/// widths.
pub const SNIFF_HEAD_BYTES: usize = 4 * 1024 * 1024;

/// The delimiters a first line is checked for when the sniffer's reading is
/// not trusted.
const FIRST_LINE_DELIMITERS: [char; 4] = [',', ';', '\t', '|'];

/// The character encoding of a CSV upload: the ones DuckDB 1.5.5's
/// `read_csv` decodes without an extension (its `encoding` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// UTF-8 (the default; a byte-order mark is allowed).
    #[default]
    Utf8,
    /// UTF-16 (either byte order, told by its byte-order mark).
    Utf16,
    /// ISO-8859-1.
    Latin1,
}

impl Encoding {
    /// From `?encoding=` (case-insensitive; `utf-8`, `utf8`, `utf-16`,
    /// `utf16`, `latin-1`, `latin1`, `iso-8859-1`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Encoding::Utf8,
            "utf-16" | "utf16" => Encoding::Utf16,
            "latin-1" | "latin1" | "iso-8859-1" | "iso8859-1" => Encoding::Latin1,
            _ => return None,
        })
    }

    /// What a body's first bytes say: a UTF-16 byte-order mark means UTF-16.
    pub fn detect(head: &[u8]) -> Option<Self> {
        (head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff])).then_some(Encoding::Utf16)
    }

    /// DuckDB's name of it.
    pub fn duckdb_name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Utf16 => "utf-16",
            Encoding::Latin1 => "latin-1",
        }
    }

    /// The `read_csv` / `sniff_csv` option, empty for the default.
    fn option(self) -> String {
        match self {
            Encoding::Utf8 => String::new(),
            other => format!(", encoding = {}", sql_string(other.duckdb_name())),
        }
    }
}

/// What DuckDB's sniffer made of the head of a CSV body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialect {
    delimiter: String,
    quote: String,
    escape: String,
    comment: String,
    header: bool,
    skipped_rows: i64,
    columns: i64,
    /// The delimiter the head's first line shows (the most frequent of
    /// [`FIRST_LINE_DELIMITERS`]), if any.
    first_line_delimiter: Option<char>,
}

/// Sniffs the dialect of `head` (the body's first bytes) by writing it to
/// `head_path` for `sniff_csv`; the file is deleted again. On an error the
/// full read reports its own.
pub fn sniff(conn: &duckdb::Connection, head_path: &Path, head: &[u8], encoding: Encoding) -> anyhow::Result<Dialect> {
    let sniffed = std::fs::write(head_path, head).map_err(anyhow::Error::from).and_then(|()| {
        let sql = format!(
            "SELECT Delimiter, Quote, Escape, Comment, HasHeader, SkipRows, len(Columns) FROM sniff_csv({}{})",
            sql_string(&head_path.display().to_string()),
            encoding.option()
        );
        Ok(conn.query_row(&sql, [], |r| {
            Ok(Dialect {
                delimiter: r.get(0)?,
                quote: none_if_empty(r.get(1)?),
                escape: none_if_empty(r.get(2)?),
                comment: none_if_empty(r.get(3)?),
                header: r.get(4)?,
                skipped_rows: r.get(5)?,
                columns: r.get(6)?,
                first_line_delimiter: first_line_delimiter(head),
            })
        })?)
    });
    let _ = std::fs::remove_file(head_path);
    sniffed
}

/// The `read_csv` call that reads `src`, given what was sniffed from its
/// head (None: not sniffed).
pub fn reader(src: &Path, dialect: Option<&Dialect>, encoding: Encoding) -> String {
    let path = format!("{}{}", sql_string(&src.display().to_string()), encoding.option());
    match dialect {
        // The sniffer explained the file away; a first line with a delimiter
        // says how it was meant to be read.
        Some(d) if d.skipped_rows > 0 || d.columns == 1 => match d.first_line_delimiter {
            Some(delim) => {
                let delim = if delim == '\t' { "\\t".to_string() } else { delim.to_string() };
                format!("read_csv({path}, delim = {}, skip = 0, header = true, strict_mode = true)", sql_string(&delim))
            }
            None => format!("read_csv({path}, strict_mode = true)"),
        },
        // The line end is left to the reader: DuckDB 1.5.5 given
        // `new_line = '\r\n'` with `strict_mode` reads a CRLF file as zero
        // rows, silently (checked by large_csv_uploads_are_read_in_the_dialect_of_their_head).
        Some(d) => format!(
            "read_csv({path}, delim = {}, quote = {}, escape = {}, comment = {}, skip = 0, header = {}, \
             strict_mode = true)",
            sql_string(&d.delimiter),
            sql_string(&d.quote),
            sql_string(&d.escape),
            sql_string(&d.comment),
            d.header
        ),
        None => format!("read_csv({path}, strict_mode = true)"),
    }
}

/// [`reader`] with the named columns read as the given DuckDB types
/// (`types = {...}`), the rest sniffed as before.
pub fn reader_with_types(
    src: &Path,
    dialect: Option<&Dialect>,
    encoding: Encoding,
    types: &[(String, String)],
) -> String {
    let base = reader(src, dialect, encoding);
    let map: Vec<String> = types.iter().map(|(c, t)| format!("{}: {}", sql_string(c), sql_string(t))).collect();
    format!("{}, types = {{{}}})", base.trim_end_matches(')'), map.join(", "))
}

/// The first `bytes` of a body, cut after its last line end when the body
/// goes on (so the sniffer does not see a torn row).
pub fn head_of(mut bytes: Vec<u8>, whole_body: bool) -> Vec<u8> {
    if !whole_body {
        if let Some(end) = bytes.iter().rposition(|b| *b == b'\n') {
            bytes.truncate(end + 1);
        }
    }
    bytes
}

fn first_line_delimiter(head: &[u8]) -> Option<char> {
    let end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let first_line = String::from_utf8_lossy(&head[..end]);
    FIRST_LINE_DELIMITERS
        .into_iter()
        .map(|d| (first_line.matches(d).count(), d))
        .max()
        .filter(|(count, _)| *count > 0)
        .map(|(_, d)| d)
}

/// `sniff_csv` spells "none" as `(empty)`; `read_csv` takes an empty string.
fn none_if_empty(value: String) -> String {
    if value == "(empty)" {
        String::new()
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_cut_after_its_last_line_unless_it_is_the_whole_body() {
        assert_eq!(head_of(b"a,b\n1,2\n3,".to_vec(), false), b"a,b\n1,2\n");
        assert_eq!(head_of(b"a,b\n1,2\n3,".to_vec(), true), b"a,b\n1,2\n3,");
        assert_eq!(head_of(b"no line end".to_vec(), false), b"no line end");
    }

    #[test]
    fn the_first_line_delimiter_is_the_most_frequent() {
        assert_eq!(first_line_delimiter(b"a;b;c,d\n1,2"), Some(';'));
        assert_eq!(first_line_delimiter(b"a\tb\n"), Some('\t'));
        assert_eq!(first_line_delimiter(b"abc\n1,2,3\n"), None);
    }

    #[test]
    fn readers_follow_the_sniffed_dialect_or_the_first_line() {
        let sniffed = Dialect {
            delimiter: ";".into(),
            quote: "\"".into(),
            escape: "'".into(),
            comment: String::new(),
            header: true,
            skipped_rows: 0,
            columns: 3,
            first_line_delimiter: Some(';'),
        };
        let src = Path::new("/in/it's.csv");
        assert_eq!(
            reader(src, Some(&sniffed), Encoding::Utf8),
            "read_csv('/in/it''s.csv', delim = ';', quote = '\"', escape = '''', comment = '', skip = 0, \
             header = true, strict_mode = true)"
        );
        let explained_away = Dialect { skipped_rows: 1, ..sniffed.clone() };
        assert_eq!(
            reader(src, Some(&explained_away), Encoding::Utf8),
            "read_csv('/in/it''s.csv', delim = ';', skip = 0, header = true, strict_mode = true)"
        );
        let one_column = Dialect { columns: 1, first_line_delimiter: None, ..sniffed };
        assert_eq!(reader(src, Some(&one_column), Encoding::Utf8), "read_csv('/in/it''s.csv', strict_mode = true)");
        assert_eq!(reader(src, None, Encoding::Utf8), "read_csv('/in/it''s.csv', strict_mode = true)");
        assert_eq!(
            reader(src, None, Encoding::Latin1),
            "read_csv('/in/it''s.csv', encoding = 'latin-1', strict_mode = true)"
        );
        assert_eq!(Encoding::detect(&[0xff, 0xfe, b'a', 0]), Some(Encoding::Utf16));
        assert_eq!(Encoding::detect(b"a,b"), None);
        assert_eq!(Encoding::parse("ISO-8859-1"), Some(Encoding::Latin1));
    }
}
