//! Nesting depth of incoming data, checked before any of it reaches DuckDB
//! or the Parquet readers.
//!
//! Why a limit at all: DuckDB 1.5.5 and the `parquet` crate recurse once
//! per level when they infer, convert or read nested data, so input nested
//! some thousands deep overflows a thread's stack and aborts the whole
//! daemon; Parquet definition levels are read as `uint8` by DuckDB's
//! reader (data nested past 255 levels is written but can never be read
//! back: an INTERNAL error that invalidates the instance); and its list
//! reader takes time exponential in the number of nested lists (about 2x
//! per level: 0.15 s at 20, 41 s at 28, measured on this project's
//! hardware). All three were found by attack (issue 18).
//!
//! Depth is counted the way Parquet counts definition levels: a struct
//! (JSON object) adds one, a list (JSON array) adds two (its repeated group
//! and its element), a map adds two. Scalars add nothing. A flat record has
//! depth 0; `{"a": {"b": 1}}` in a column has depth 1 (the column holds one
//! struct).

use arrow::datatypes::{DataType, Field};

/// A value nested deeper than allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data nested {depth} levels deep (objects count 1, arrays 2); the limit is {limit} (limits.max_nesting_depth)")]
pub struct TooDeep {
    /// The depth reached when the limit was passed.
    pub depth: usize,
    /// The limit.
    pub limit: usize,
}

/// Weighted depth of an Arrow type (see the module docs).
pub fn arrow_depth(data_type: &DataType) -> usize {
    // Iterative: a schema from the wire may itself be deep.
    let mut deepest = 0;
    let mut pending: Vec<(&DataType, usize)> = vec![(data_type, 0)];
    while let Some((t, above)) = pending.pop() {
        let children: Vec<&Field> = match t {
            DataType::Struct(fields) => fields.iter().map(|f| f.as_ref()).collect(),
            DataType::Union(fields, _) => fields.iter().map(|(_, f)| f.as_ref()).collect(),
            DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::LargeListView(f) => {
                vec![f.as_ref()]
            }
            DataType::FixedSizeList(f, _) | DataType::Map(f, _) => vec![f.as_ref()],
            DataType::Dictionary(_, v) => {
                pending.push((v.as_ref(), above));
                continue;
            }
            DataType::RunEndEncoded(_, v) => vec![v.as_ref()],
            _ => Vec::new(),
        };
        let here = above
            + match t {
                DataType::Struct(_) | DataType::Union(_, _) => 1,
                DataType::List(_)
                | DataType::LargeList(_)
                | DataType::ListView(_)
                | DataType::LargeListView(_)
                | DataType::FixedSizeList(_, _) => 2,
                // A map is a list of key/value structs: the struct is its child.
                DataType::Map(_, _) => 1,
                _ => 0,
            };
        deepest = deepest.max(here);
        for c in children {
            pending.push((c.data_type(), here));
        }
    }
    deepest
}

/// Checks every field of a schema.
pub fn check_fields<'a>(fields: impl IntoIterator<Item = &'a Field>, limit: usize) -> Result<(), TooDeep> {
    for f in fields {
        let depth = arrow_depth(f.data_type());
        if depth > limit {
            return Err(TooDeep { depth, limit });
        }
    }
    Ok(())
}

/// Follows the depth of JSON text as it streams, without parsing it:
/// brackets outside strings. Feed every byte of a JSON document or of
/// NDJSON lines (one scanner for the whole body: depth returns to 0
/// between records). A record's own object is the row, not a nested value,
/// and so is the top-level array of a JSON document that holds the
/// records. Malformed JSON is not this scanner's business (the reader
/// refuses it later); it only promises that no bracket nesting deeper than
/// the limit gets through. Memory is bounded by the limit.
#[derive(Debug, Clone)]
pub struct JsonDepth {
    limit: usize,
    /// Open containers, innermost last: (is an array, weight).
    open: Vec<(bool, u8)>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    records_in_top_array: bool,
}

impl JsonDepth {
    /// A scanner for NDJSON (`records_in_top_array` false) or for a JSON
    /// document whose top-level array holds the records (true).
    pub fn new(limit: usize, records_in_top_array: bool) -> Self {
        Self { limit, open: Vec::new(), depth: 0, in_string: false, escaped: false, records_in_top_array }
    }

    /// Scans the next bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), TooDeep> {
        for &b in bytes {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    let array = b == b'[';
                    let weight: u8 = if self.opens_a_row(array) {
                        0
                    } else if array {
                        2
                    } else {
                        1
                    };
                    self.depth += usize::from(weight);
                    if self.depth > self.limit {
                        return Err(TooDeep { depth: self.depth, limit: self.limit });
                    }
                    self.open.push((array, weight));
                }
                b'}' | b']' => {
                    if let Some((_, w)) = self.open.pop() {
                        self.depth -= usize::from(w);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the container about to open holds rows or is a row.
    fn opens_a_row(&self, array: bool) -> bool {
        match self.open.first() {
            None => true,
            Some((true, _)) if self.records_in_top_array => self.open.len() == 1 && !array,
            Some(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn deep_objects(n: usize) -> String {
        format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))
    }

    #[test]
    fn json_depth_counts_objects_once_and_arrays_twice() {
        let depth = |text: &str, top: bool| {
            let mut d = JsonDepth::new(1000, top);
            d.feed(text.as_bytes()).unwrap();
            let mut lim = 0;
            while JsonDepth::new(lim, top).feed(text.as_bytes()).is_err() {
                lim += 1;
            }
            lim
        };
        assert_eq!(depth(r#"{"a": 1, "b": "x"}"#, false), 0);
        assert_eq!(depth(r#"{"a": {"b": 1}}"#, false), 1);
        assert_eq!(depth(r#"{"a": [1, 2]}"#, false), 2);
        assert_eq!(depth(r#"{"a": [{"b": [1]}]}"#, false), 5);
        assert_eq!(depth(r#"[{"a": {"b": 1}}, {"c": 2}]"#, true), 1);
        // Brackets inside strings, escaped quotes included, do not count.
        assert_eq!(depth(r#"{"a": "{{{[[[\"{{{"}"#, false), 0);
        // NDJSON: depth returns to 0 between lines.
        assert_eq!(depth("{\"a\": {\"b\": 1}}\n{\"a\": {\"b\": 1}}\n", false), 1);
    }

    #[test]
    fn deep_json_is_refused_while_streaming_in_any_chunking() {
        let text = deep_objects(5000);
        for chunk in [1, 7, 4096] {
            let mut d = JsonDepth::new(32, false);
            let refused = text.as_bytes().chunks(chunk).map(|c| d.feed(c)).find(Result::is_err);
            assert_eq!(refused, Some(Err(TooDeep { depth: 33, limit: 32 })), "chunk {chunk}");
        }
        let mut d = JsonDepth::new(32, false);
        assert!(d.feed(deep_objects(33).as_bytes()).is_ok());
        // A malformed flood of closers does not underflow.
        assert!(JsonDepth::new(4, false).feed(b"]]]]}}}}{\"a\":[[1]]}").is_ok());
    }

    #[test]
    fn arrow_depth_matches_the_json_counting() {
        let leaf = Field::new("x", DataType::Int64, true);
        let list = DataType::List(Arc::new(leaf.clone()));
        let st = DataType::Struct(vec![Field::new("l", list.clone(), true)].into());
        assert_eq!(arrow_depth(&DataType::Int64), 0);
        assert_eq!(arrow_depth(&list), 2);
        assert_eq!(arrow_depth(&st), 3);
        let mut t = DataType::Int64;
        for _ in 0..10_000 {
            t = DataType::Struct(vec![Field::new("a", t, true)].into());
        }
        assert_eq!(arrow_depth(&t), 10_000);
        let fields = [Field::new("ok", st.clone(), true), Field::new("deep", t, true)];
        assert_eq!(check_fields(fields.iter(), 32), Err(TooDeep { depth: 10_000, limit: 32 }));
        assert!(check_fields([Field::new("ok", st, true)].iter(), 3).is_ok());
    }
}
