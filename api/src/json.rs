//! JSON in and out: a body extractor whose errors are problem+json, and the per-route body
//! limit (JSON bodies are smaller than CSV imports).

use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use orderd_domain::validation::{Problem, ProblemCode, LINE_QTY_MAX};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Like `axum::Json`, but a bad body is a 400 problem naming what is wrong.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Json<T>, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge(e.body_text()))
            }
            Err(e) if e.status() == axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Err(not_json())
            }
            Err(e) => Err(body_error(e.body_text())),
        }
    }
}

/// An optional body: empty means `None`; anything else must be valid JSON.
impl<S: Send + Sync, T: DeserializeOwned> axum::extract::OptionalFromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Json<T>>, ApiError> {
        let json = is_json(req.headers());
        let crate::extract::Body(bytes) = crate::extract::Body::from_request(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if !json {
            return Err(not_json());
        }
        serde_json::from_slice(&bytes)
            .map(|v| Some(Json(v)))
            .map_err(|e| body_error(format!("invalid JSON body: {e}")))
    }
}

/// Whether the request says its body is JSON (`application/json`, or `application/*+json`),
/// as axum's own `Json` decides.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    crate::extract::media_type(headers).is_some_and(|t| {
        t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
    })
}

fn not_json() -> ApiError {
    ApiError::UnsupportedMediaType("the body must be JSON (Content-Type: application/json)".into())
}

/// A body that names a field the route does not let the caller set (an account, a price, a
/// state, a credit limit...) is refused with 422 naming the field, never silently ignored;
/// any other bad body is a 400.
fn body_error(text: String) -> ApiError {
    // serde's message begins `unknown field `: after the reader's prefix and the field's path
    // (`lines[0]: `), with no quoted value before it (a string value that reads "unknown
    // field `x" is some other error about that value).
    let unknown = text
        .split_once("unknown field `")
        .filter(|(before, _)| before.ends_with(": ") && !before.contains('`'))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(field, _)| field.to_owned());
    match unknown {
        Some(field) => ApiError::Invalid(vec![Problem::new(
            ProblemCode::InvalidField,
            format!("the field {field:?} cannot be set here"),
        )
        .field(&field)]),
        None => ApiError::bad_request("malformed_body", readable(&text)),
    }
}

/// serde's message with the Rust type it expected (`expected struct PlaceBody with 7
/// elements`) said as what a client sends: a JSON object.
fn readable(text: &str) -> String {
    let Some((before, after)) = text.split_once("expected struct ") else {
        return text.to_owned();
    };
    let position = after.find(" at line ").map_or("", |i| &after[i..]);
    format!("{before}expected a JSON object{position}")
}

/// Refuses bodies above their limit (`json_max`; a CSV import `import_max`): at once by their
/// declared length, and a body without one (chunked) is cut off while it is read, so reading
/// it fails instead of buffering more.
pub async fn limit_body(req: Request, next: Next, limits: &crate::ApiLimits) -> Response {
    let max = body_max(req.uri().path(), limits);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return too_large(max).into_response();
    }
    let req = req.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, max)));
    next.run(req).await
}

/// The body limit of the route at `path`: `import_body_max_bytes` for CSV imports,
/// `body_max_bytes` for the rest.
pub fn body_max(path: &str, limits: &crate::ApiLimits) -> usize {
    match path.starts_with("/v1/admin/import/") {
        true => limits.import_body_max_bytes,
        false => limits.body_max_bytes,
    }
}

/// Why a body limited by [`limit_body`] could not be read: above `max` (413), or cut off.
pub fn read_error(e: &axum::Error, max: usize) -> ApiError {
    let over = std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
        .any(|e| e.is::<http_body_util::LengthLimitError>());
    match over {
        true => too_large(max),
        false => {
            ApiError::bad_request("malformed_body", format!("the body could not be read: {e}"))
        }
    }
}

fn too_large(max: usize) -> ApiError {
    ApiError::TooLarge(format!("the body is larger than {max} bytes"))
}

/// A field that may be absent (`None`, with `#[serde(default)]`), `null` (`Some(None)`) or a
/// value (`Some(Some(v))`), as a JSON merge patch (RFC 7396) tells "keep" from "clear".
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A line's quantity as a client sent it: any JSON value. A whole number that fits a `u32`
/// goes on to the domain, which checks its range with every other problem of the order; any
/// other value (negative, fractional, too large, not a number) is refused as
/// `invalid_quantity` naming the field (and the line), not as a malformed body.
#[derive(Debug, Clone)]
pub struct Quantity(Result<u32, BadQuantity>);

/// What was sent instead of a whole number (cut to a bounded echo).
#[derive(Debug, Clone)]
pub struct BadQuantity(String);

impl Quantity {
    pub fn get(self) -> Result<u32, BadQuantity> {
        self.0
    }
}

impl BadQuantity {
    pub fn problem(&self) -> Problem {
        Problem::new(
            ProblemCode::InvalidQuantity,
            format!(
                "quantity must be a whole number from 1 to {LINE_QTY_MAX}, got {}",
                self.0
            ),
        )
        .field("qty")
    }
}

impl From<BadQuantity> for ApiError {
    fn from(q: BadQuantity) -> ApiError {
        ApiError::Invalid(vec![q.problem()])
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Quantity, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let whole = match &value {
            // JSON has one number type: `2.0` is the whole number 2, as JSON Schema's
            // `integer` says.
            serde_json::Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
                    // Whole and within `u32`'s range: the cast is exact.
                    .map(
                        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                        |f| f as u64,
                    )
            }),
            _ => None,
        };
        Ok(Quantity(
            whole
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| BadQuantity(crate::error::echo(&value.to_string()))),
        ))
    }
}
