//! multipart/form-data upload bodies, read as the upload door reads them
//! (axum's Multipart is multer): fields, names, file names and content
//! types, chunk by chunk. The first byte picks the chunk size.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const BOUNDARY: &str = "duckpondfuzzboundary";

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let chunk = 1 + data[0] as usize * 3;
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        data[1..].chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let stream = futures_util::stream::iter(chunks);
    let constraints = multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(1 << 20));
    let mut mp = multer::Multipart::with_constraints(stream, BOUNDARY, constraints);
    futures_util::FutureExt::now_or_never(async move {
        while let Ok(Some(mut field)) = mp.next_field().await {
            let _ = (field.name().map(str::len), field.file_name().map(str::len), field.content_type().cloned());
            while let Ok(Some(c)) = field.chunk().await {
                let _ = c.len();
            }
        }
    });
});
