//! Remote write 2.0 bodies (snappy + io.prometheus.write.v2.Request) as the
//! daemon decodes them: never a panic, a decoded request keeps the limits.
#![no_main]
use duckpond_schema::prom_decode::{decode, Limits, Protocol};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_decoded_bytes: 1 << 20, max_labels_per_series: 32, max_label_bytes: 256 };

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode(data, Protocol::V2, &LIMITS) {
        for s in &req.series {
            assert!(s.labels.len() < LIMITS.max_labels_per_series);
            assert!(s.labels.windows(2).all(|w| w[0].0 < w[1].0), "labels sorted and unique");
        }
    }
});
