//! Path, query and raw body extractors whose errors are problem+json (axum's answer in plain
//! text).

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// Like `axum::extract::Path`, but a bad segment (`/v1/cart/lines/abc`) is a 400 problem
/// `invalid_path` naming what is wrong.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Path<T>, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            // A route whose handler does not match its path: the code is wrong, not the call.
            Err(e) if e.status().is_server_error() => Err(ApiError::Internal(e.body_text())),
            Err(e) => Err(ApiError::bad_request("invalid_path", e.body_text())),
        }
    }
}

/// Like `axum::extract::Query`, but a bad parameter (`?limit=x`) is a 400 problem
/// `invalid_query` naming what is wrong.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Query<T>, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// The whole body as bytes, like `axum::body::Bytes`, but a body above the route's limit is a
/// 413 problem `body_too_large` and one that cannot be read `malformed_body`.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Body, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge(e.body_text()))
            }
            Err(e) => Err(ApiError::bad_request("malformed_body", e.body_text())),
        }
    }
}

/// A CSV body (`Content-Type: text/csv`), like [`Body`]; any other type is refused with 415
/// before the body is read.
pub struct CsvBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for CsvBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<CsvBody, ApiError> {
        if media_type(req.headers()).as_deref() != Some("text/csv") {
            return Err(ApiError::UnsupportedMediaType(
                "an import is a CSV file (Content-Type: text/csv)".into(),
            ));
        }
        let Body(bytes) = Body::from_request(req, state).await?;
        Ok(CsvBody(bytes))
    }
}

/// The media type a request's `Content-Type` names, lower case and without its parameters
/// (`application/json; charset=utf-8` is `application/json`).
pub fn media_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    let essence = value.split(';').next()?;
    Some(essence.trim().to_ascii_lowercase())
}

/// A list's page size: `limit` when given (above `max` it is `max`), else `default` (or
/// `max`, if lower). A limit of 0 asks for nothing and is refused.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit {
        Some(0) => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 or more (at most {max} are returned)"),
        )),
        Some(n) => Ok(n.min(max)),
        None => Ok(default.min(max)),
    }
}

/// Cuts `items`, read as one more than the page of `limit` (which tells whether another page
/// follows), to the page; returns where the next page starts: the cursor of its last item, or
/// `None` after the last page.
pub fn cut_page<T>(
    items: &mut Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
) -> Option<String> {
    if items.len() <= limit {
        return None;
    }
    items.truncate(limit);
    items.last().map(cursor)
}

/// A page of orders or catalog items when the caller names no size.
pub const PAGE_DEFAULT: usize = 50;
