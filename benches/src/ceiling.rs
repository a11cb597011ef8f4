//! The HTTP ceiling: a bare axum server whose `POST /v1/orders` only parses the JSON body into
//! the same shape orderd's handler parses (`orderd_api::routes::orders::PlaceBody`, mirrored
//! here so the benchmark does not build the API crate) and answers 201 with a small JSON body.
//! No auth, no actors, no storage: what is left is hyper + axum + serde_json, the floor under
//! any handler.
//!
//! It runs as a separate process (`orderd-bench ceiling`, spawned by the benchmark) on a
//! multi-threaded tokio runtime like orderd's, so it gets the same cores, its CPU is measured
//! the same way, and the load generator drives both the same way.

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The fields of orderd's order line body; unknown fields are refused like there.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // parsed, never read: parsing is the point
pub struct LineBody {
    pub sku: String,
    pub qty: u32,
    pub note: Option<String>,
    pub warehouse: Option<String>,
    pub quoted_unit_price: Option<String>,
}

/// The fields of orderd's place-order body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // parsed, never read: parsing is the point
pub struct PlaceBody {
    pub lines: Option<Vec<LineBody>>,
    pub ship_to: Option<String>,
    pub delivery_speed: Option<String>,
    pub customer_po: Option<String>,
    #[serde(default)]
    pub allow_split: bool,
    pub submit: Option<bool>,
    pub channel: Option<String>,
}

/// The ceiling's routes.
pub fn router() -> Router {
    let seq = Arc::new(AtomicU64::new(0));
    Router::new().route(
        "/v1/orders",
        post(move |Json(body): Json<PlaceBody>| {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            async move {
                let lines = body.lines.map_or(0, |l| l.len());
                (
                    StatusCode::CREATED,
                    Json(serde_json::json!({ "id": n, "lines": lines, "state": "parsed" })),
                )
            }
        }),
    )
}

/// Serves until the process is killed.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    // The ceiling accepts the benchmark's bodies with 201 and refuses a malformed one, like
    // orderd does (400/422 from the JSON extractor).
    #[tokio::test]
    async fn parses_like_orderd() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        let mut conn = crate::loadgen::connect(addr).await.unwrap();
        let req = |body: &'static str| {
            hyper::Request::post("/v1/orders")
                .header("host", "bench")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                .unwrap()
        };
        let (status, body) = crate::loadgen::call(
            &mut conn,
            req(r#"{"lines":[{"sku":"SKU-00001","qty":3}],"ship_to":"MAIN"}"#),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert!(String::from_utf8_lossy(&body).contains("\"lines\":1"));
        let (status, _) = crate::loadgen::call(&mut conn, req(r#"{"lines":[{"sku":1}]}"#))
            .await
            .unwrap();
        assert!(status.is_client_error(), "{status}");
    }
}
