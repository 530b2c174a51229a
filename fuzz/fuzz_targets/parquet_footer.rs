//! Parquet footers from an upload, measured before any reader builds the
//! schema tree: any bytes, no panic, no recursion, and a measured depth is
//! never more than the elements there are.
#![no_main]
use duckpond_schema::parquet_footer::{footer_range, schema_shape};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(shape) = schema_shape(data) {
        assert!(shape.group_depth < shape.elements.max(1));
    }
    if data.len() >= 8 {
        let last8: [u8; 8] = data[data.len() - 8..].try_into().unwrap();
        if let Ok((start, len)) = footer_range(data.len() as u64, last8) {
            assert!(start + u64::from(len) + 8 == data.len() as u64);
        }
    }
});
