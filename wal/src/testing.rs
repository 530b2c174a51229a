//! Support shared by the crash-test child and the tests that check it.
//! Not part of the API.

/// The deterministic payload the torture child writes for `(thread, seq)`.
pub fn torture_payload(thread: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut x = (u64::from(thread) << 32 | u64::from(seq)) ^ 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
