//! The nesting depth of a Parquet file's schema, read from its footer
//! without building the schema tree.
//!
//! Both readers an upload meets build that tree recursively (the `parquet`
//! crate's `schema_from_array_helper`, DuckDB's schema parsing), so a
//! crafted file whose schema nests groups some hundred thousand deep
//! overflows the stack before any check of ours could look at the types.
//! This walks the footer's Thrift compact encoding (the `FileMetaData`
//! struct of parquet-format's `parquet.thrift`; the compact protocol of
//! Apache Thrift's `thrift-compact-protocol.md`) with an explicit stack,
//! reads only `schema` (field 2, a list of `SchemaElement`) and each
//! element's `num_children` (field 5), and skips everything else.

/// Why a footer could not be measured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FooterError {
    /// Not a Parquet file, or cut short.
    #[error("not a readable Parquet file: {0}")]
    Malformed(&'static str),
    /// An encrypted footer (`PARE`): not accepted.
    #[error("encrypted Parquet files are not accepted")]
    Encrypted,
}

/// What the footer says about the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaShape {
    /// Schema elements, the root included.
    pub elements: usize,
    /// Most group nodes on a path below the root: a struct adds 1, a
    /// 3-level list or a map adds 2 (the same count as [`crate::nesting`]).
    pub group_depth: usize,
}

/// Where a Parquet file's footer (`FileMetaData`) lies: (offset, length)
/// from the file's length and its last 8 bytes (footer length, magic).
pub fn footer_range(file_len: u64, last8: [u8; 8]) -> Result<(u64, u32), FooterError> {
    match &last8[4..] {
        b"PAR1" => {}
        b"PARE" => return Err(FooterError::Encrypted),
        _ => return Err(FooterError::Malformed("no PAR1 magic at the end")),
    }
    let len = u32::from_le_bytes(last8[..4].try_into().expect("4 bytes"));
    let start = file_len
        .checked_sub(8)
        .and_then(|e| e.checked_sub(u64::from(len)))
        .ok_or(FooterError::Malformed("footer longer than the file"))?;
    Ok((start, len))
}

// Compact protocol type ids.
const T_STOP: u8 = 0;
const T_TRUE: u8 = 1;
const T_FALSE: u8 = 2;
const T_BYTE: u8 = 3;
const T_I16: u8 = 4;
const T_I32: u8 = 5;
const T_I64: u8 = 6;
const T_DOUBLE: u8 = 7;
const T_BINARY: u8 = 8;
const T_LIST: u8 = 9;
const T_SET: u8 = 10;
const T_MAP: u8 = 11;
const T_STRUCT: u8 = 12;

/// Most values a nested container may announce before we stop trusting it.
const MAX_CONTAINER: u64 = 1 << 32;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, FooterError> {
        let b = *self.buf.get(self.pos).ok_or(FooterError::Malformed("footer cut short"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, FooterError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FooterError::Malformed("varint too long"))
    }

    fn zigzag(&mut self) -> Result<i64, FooterError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn skip_bytes(&mut self, n: u64) -> Result<(), FooterError> {
        let n = usize::try_from(n).map_err(|_| FooterError::Malformed("length overflows"))?;
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        self.pos = end.ok_or(FooterError::Malformed("footer cut short"))?;
        Ok(())
    }

    /// Field header: (type, field id), or None at STOP.
    fn field(&mut self, last_id: &mut i16) -> Result<Option<(u8, i16)>, FooterError> {
        let b = self.byte()?;
        let t = b & 0x0f;
        if t == T_STOP {
            return Ok(None);
        }
        let delta = b >> 4;
        let id = if delta == 0 {
            i16::try_from(self.zigzag()?).map_err(|_| FooterError::Malformed("field id"))?
        } else {
            last_id.wrapping_add(i16::from(delta))
        };
        *last_id = id;
        Ok(Some((t, id)))
    }

    fn list_header(&mut self) -> Result<(u8, u64), FooterError> {
        let b = self.byte()?;
        let n = if b >> 4 == 15 { self.varint()? } else { u64::from(b >> 4) };
        if n > MAX_CONTAINER {
            return Err(FooterError::Malformed("container too large"));
        }
        Ok((b & 0x0f, n))
    }

    /// Skips one value of type `t`, nested containers included, with an
    /// explicit stack (no recursion on attacker-chosen depth).
    fn skip(&mut self, t: u8) -> Result<(), FooterError> {
        enum Frame {
            Struct(i16),
            Items(u8, u64),
            Map(u8, u8, u64),
        }
        let mut stack: Vec<Frame> = Vec::new();
        let mut next = Some(t);
        loop {
            if let Some(t) = next.take() {
                match t {
                    T_TRUE | T_FALSE => {}
                    T_BYTE => self.skip_bytes(1)?,
                    T_I16 | T_I32 | T_I64 => {
                        self.varint()?;
                    }
                    T_DOUBLE => self.skip_bytes(8)?,
                    T_BINARY => {
                        let n = self.varint()?;
                        self.skip_bytes(n)?;
                    }
                    T_LIST | T_SET => {
                        let (et, n) = self.list_header()?;
                        stack.push(Frame::Items(et, n));
                    }
                    T_MAP => {
                        let n = self.varint()?;
                        if n > MAX_CONTAINER {
                            return Err(FooterError::Malformed("container too large"));
                        }
                        let kv = if n > 0 { self.byte()? } else { 0 };
                        stack.push(Frame::Map(kv >> 4, kv & 0x0f, n * 2));
                    }
                    T_STRUCT => stack.push(Frame::Struct(0)),
                    _ => return Err(FooterError::Malformed("unknown Thrift type")),
                }
            }
            let Some(top) = stack.last_mut() else { return Ok(()) };
            match top {
                Frame::Struct(last) => match self.field(last)? {
                    Some((ft, _)) => next = Some(ft),
                    None => {
                        stack.pop();
                    }
                },
                Frame::Items(et, n) => {
                    if *n == 0 {
                        stack.pop();
                    } else {
                        *n -= 1;
                        // In lists, booleans are one byte each.
                        next = Some(if matches!(*et, T_TRUE | T_FALSE) { T_BYTE } else { *et });
                    }
                }
                Frame::Map(kt, vt, n) => {
                    if *n == 0 {
                        stack.pop();
                    } else {
                        *n -= 1;
                        let t = if *n % 2 == 1 { *kt } else { *vt };
                        next = Some(if matches!(t, T_TRUE | T_FALSE) { T_BYTE } else { t });
                    }
                }
            }
        }
    }
}

/// Measures the schema in a footer (`FileMetaData`, without the trailing
/// length and magic).
pub fn schema_shape(footer: &[u8]) -> Result<SchemaShape, FooterError> {
    let mut r = Reader { buf: footer, pos: 0 };
    let mut last = 0i16;
    while let Some((t, id)) = r.field(&mut last)? {
        if id != 2 || t != T_LIST {
            r.skip(t)?;
            continue;
        }
        let (et, n) = r.list_header()?;
        if et != T_STRUCT {
            return Err(FooterError::Malformed("schema is not a list of structs"));
        }
        // Children still expected at each open group, the root's first.
        let mut open: Vec<u64> = Vec::new();
        let mut shape = SchemaShape { elements: 0, group_depth: 0 };
        for _ in 0..n {
            let mut children = 0u64;
            let mut last = 0i16;
            while let Some((ft, fid)) = r.field(&mut last)? {
                if fid == 5 && ft == T_I32 {
                    children = u64::try_from(r.zigzag()?.max(0)).unwrap_or(0);
                } else {
                    r.skip(ft)?;
                }
            }
            shape.elements += 1;
            if let Some(remaining) = open.last_mut() {
                *remaining = remaining.saturating_sub(1);
            }
            if children > 0 {
                open.push(children);
                // The root is not a nesting level.
                shape.group_depth = shape.group_depth.max(open.len() - 1);
            }
            while open.last() == Some(&0) {
                open.pop();
            }
        }
        return Ok(shape);
    }
    Err(FooterError::Malformed("the footer has no schema"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, ListArray, StructArray};
    use arrow::datatypes::{DataType, Field, Fields, Int64Type};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    fn parquet_of(columns: Vec<(&str, ArrayRef)>) -> Vec<u8> {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    fn shape_of(file: &[u8]) -> SchemaShape {
        let last8: [u8; 8] = file[file.len() - 8..].try_into().unwrap();
        let (start, len) = footer_range(file.len() as u64, last8).unwrap();
        schema_shape(&file[start as usize..start as usize + len as usize]).unwrap()
    }

    #[test]
    fn depth_of_real_files_matches_the_arrow_count() {
        let flat: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        assert_eq!(shape_of(&parquet_of(vec![("a", flat.clone())])), SchemaShape { elements: 2, group_depth: 0 });
        let list: ArrayRef =
            Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(1)]), None]));
        let mut nested: ArrayRef = list.clone();
        for i in 0..5 {
            let f = Field::new(format!("f{i}"), nested.data_type().clone(), true);
            nested = Arc::new(StructArray::new(Fields::from(vec![f]), vec![nested], None));
        }
        let expected = crate::nesting::arrow_depth(nested.data_type());
        assert_eq!(expected, 7);
        assert!(matches!(nested.data_type(), DataType::Struct(_)));
        let shape = shape_of(&parquet_of(vec![("flat", flat), ("list", list), ("deep", nested)]));
        assert_eq!(shape.group_depth, expected);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(footer_range(4, *b"xxxxPAR1").is_err());
        assert_eq!(footer_range(100, *b"\x04\0\0\0PARE"), Err(FooterError::Encrypted));
        for junk in
            [&b""[..], b"\x19", b"\x19\xfc", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x1c\x1c\x1c\x1c"]
        {
            assert!(schema_shape(junk).is_err());
        }
    }

    #[test]
    fn a_footer_nested_a_million_deep_is_measured_without_recursion() {
        // field 2: list of n structs, each {5: num_children = 1} except the last.
        let n: u32 = 1_000_000;
        let mut f = vec![0x29, 0xfc];
        let mut v = n;
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                f.push(b);
                break;
            }
            f.push(b | 0x80);
        }
        for i in 0..n {
            if i + 1 < n {
                f.extend_from_slice(&[0x55, 0x02, 0x00]);
            } else {
                f.push(0x00);
            }
        }
        f.push(0x00);
        let shape = schema_shape(&f).unwrap();
        assert_eq!(shape.elements, n as usize);
        assert_eq!(shape.group_depth, n as usize - 2);
    }
}
