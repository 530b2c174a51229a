//! Arrow IPC stream bodies as the stream door reads them: arrow's
//! incremental decoder fed in chunks, every schema through the storage
//! rules (`storable::StoragePlan`), every batch converted or refused, and
//! what would be logged re-encoded and decoded again.
#![no_main]
use arrow::buffer::Buffer;
use arrow::ipc::reader::{StreamDecoder, StreamReader};
use arrow::ipc::writer::StreamWriter;
use duckpond_schema::storable::StoragePlan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts in its panic hook, before catch_unwind could
    // see the panic; put the default hook back once. A panic the daemon
    // does not catch still aborts: libfuzzer-sys catches it around this
    // closure and aborts.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
    });
    if data.is_empty() {
        return;
    }
    // The first byte picks the chunk size, as the network would.
    let chunk = 1 + data[0] as usize * 7;
    let body = &data[1..];
    let mut decoder = StreamDecoder::new();
    let mut plan: Option<StoragePlan> = None;
    let mut logged = Vec::new();
    for part in body.chunks(chunk) {
        let mut buf = Buffer::from(part.to_vec());
        while !buf.is_empty() {
            // As the daemon does: a panic of arrow's decoder is a refused
            // stream (see src/ingest/arrow_stream.rs), not a crash.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode(&mut buf)));
            let batch = match step {
                Ok(Ok(b)) => b,
                _ => return,
            };
            if plan.is_none() {
                if let Some(schema) = decoder.schema() {
                    match StoragePlan::new(&schema) {
                        Ok(p) => plan = Some(p),
                        Err(_) => return,
                    }
                }
            }
            if let (Some(b), Some(p)) = (batch, plan.as_ref()) {
                if b.columns().iter().any(|c| c.to_data().validate_full().is_err()) {
                    continue;
                }
                match p.apply(&b) {
                    Ok(stored) => {
                        assert_eq!(stored.num_rows(), b.num_rows());
                        let types = |s: &arrow::datatypes::Schema| {
                            s.fields().iter().map(|f| f.data_type().clone()).collect::<Vec<_>>()
                        };
                        assert_eq!(types(&stored.schema()), types(p.target()));
                        logged.push(stored);
                    }
                    Err(_) => return,
                }
            }
        }
    }
    if let Some(p) = plan {
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, p.target()).expect("the target schema encodes");
        for b in &logged {
            w.write(b).expect("a stored batch encodes");
        }
        w.finish().expect("finish");
        drop(w);
        let back = StreamReader::try_new(std::io::Cursor::new(out), None).expect("our own stream reads");
        let rows: usize = back.map(|b| b.expect("our own batch reads").num_rows()).sum();
        assert_eq!(rows, logged.iter().map(|b| b.num_rows()).sum::<usize>());
    }
});
