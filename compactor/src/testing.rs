//! Support shared by the compactor's tests and its crash-test child. Not API.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

/// Encodes batches as one Arrow IPC stream.
pub fn ipc_stream(batches: &[RecordBatch]) -> Bytes {
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batches[0].schema()).expect("writer");
        for b in batches {
            w.write(b).expect("write");
        }
        w.finish().expect("finish");
    }
    Bytes::from(out)
}

/// A narrow batch: `writer` (the producer), `seq`, `i` (row in the append)
/// identify each row; `value` is derived from them.
pub fn narrow_batch(writer: i64, seq: i64, rows: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("writer", DataType::Int64, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("i", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
        Field::new("label", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![writer; rows])),
        Arc::new(Int64Array::from(vec![seq; rows])),
        Arc::new(Int64Array::from((0..rows as i64).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(
            (0..rows).map(|i| (writer * 31 + seq * 7 + i as i64) as f64 / 3.0).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from((0..rows).map(|i| format!("w{writer}-s{seq}-{i}")).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(schema, cols).expect("batch")
}
