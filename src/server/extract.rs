//! Body extractors whose rejections are our JSON errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::Json;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// `Json` whose rejections become [`ApiError`]s (400, 413, 415).
#[derive(Debug, FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// A JSON body that may be empty, meaning `T::default()`.
#[derive(Debug)]
pub struct JsonOrDefault<T>(pub T);

impl<S, T> FromRequest<S> for JsonOrDefault<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes =
            Bytes::from_request(req, state).await.map_err(|r| ApiError::from_status(r.status(), r.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        serde_json::from_slice(&bytes).map(Self).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}
