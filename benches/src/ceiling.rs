//! The HTTP ceiling: a bare axum server whose `POST /v1/orders` only parses the JSON body into
//! the same shape orderd's handler parses (`orderd_api::routes::orders::PlaceBody`, mirrored
//! here so the benchmark does not build the API crate) and answers 201 with a small JSON body.
//! No auth, no actors, no storage: what is left is hyper + axum + serde_json, the floor under
//! any handler.
//!
//! It runs as a separate process (`orderd-bench ceiling`, spawned by the benchmark) on a
//! multi-threaded tokio runtime like orderd's, so it gets the same cores, its CPU is measured
//! the same way, and the load generator drives both the same way.
//!
//! With a [`SledSink`] (`orderd-bench ceiling --sled DIR --records JSON`) it is the storage
//! ceiling: after parsing, the handler writes the records orderd writes for an order of that
//! many lines (same number of keys, same key and value sizes, measured from a real orderd store
//! by the benchmark, see [`RecordShape`]) through orderd's own journal (`orderd_storage`: one
//! committer thread, one sled batch and one flush + fdatasync per group), and answers only
//! when the group is durable. No auth, actors or domain checks: what is left is HTTP + JSON +
//! the group commit.

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use orderd_storage::{AuditDraft, Batch, Journal};
use serde::{Deserialize, Serialize};
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

/// What orderd stores for one order of `lines` lines: the order record it puts (key and value
/// bytes, the journal's stamp included; written stamped, as orderd does) and the audit records
/// it appends (subject and payload bytes; not indexed, as orderd's order changes are not). The
/// journal adds the chain head once per group itself, as it does for orderd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordShape {
    pub lines: usize,
    /// (key bytes, value bytes)
    pub puts: Vec<(usize, usize)>,
    /// (subject bytes, payload bytes)
    pub audits: Vec<(usize, usize)>,
}

impl RecordShape {
    /// Bytes of keys and values one order puts (audit records included).
    pub fn bytes(&self) -> usize {
        self.puts
            .iter()
            .chain(&self.audits)
            .map(|(k, v)| k + v)
            .sum()
    }
}

/// Length of [`SledSink`]'s filler: values are slices of it at random offsets, so sled stores
/// incompressible bytes of the right sizes.
const FILLER_BYTES: usize = 4 << 20;

/// The storage ceiling's sink: orderd's journal and the shapes of the records to write.
pub struct SledSink {
    journal: Journal,
    /// Sorted by lines.
    shapes: Vec<RecordShape>,
    filler: Vec<u8>,
}

impl SledSink {
    /// Opens orderd's journal in `dir` with orderd's default settings. `shapes` must not be
    /// empty.
    pub fn open(dir: &std::path::Path, mut shapes: Vec<RecordShape>) -> anyhow::Result<SledSink> {
        anyhow::ensure!(!shapes.is_empty(), "no record shapes");
        shapes.sort_by_key(|s| s.lines);
        let journal = Journal::open(dir, &orderd_storage::JournalConfig::default())?;
        let mut rng = crate::workload::Rng::new(0x5EED);
        let filler = (0..FILLER_BYTES / 8)
            .flat_map(|_| rng.next_u64().to_le_bytes())
            .collect();
        Ok(SledSink {
            journal,
            shapes,
            filler,
        })
    }

    /// The shape measured for the nearest number of lines.
    fn shape(&self, lines: usize) -> &RecordShape {
        self.shapes
            .iter()
            .min_by_key(|s| s.lines.abs_diff(lines))
            .expect("shapes is not empty")
    }

    /// `len` bytes: the order number padded, so every key and subject is unique.
    fn key(prefix: &str, n: u64, len: usize) -> Vec<u8> {
        let mut k = format!("{prefix}{n:020}").into_bytes();
        k.resize(len.max(k.len()), b'k');
        k
    }

    fn value(&self, n: u64, len: usize) -> Vec<u8> {
        let len = len.min(self.filler.len());
        let span = u64::try_from(self.filler.len() - len + 1).unwrap_or(1);
        let at = usize::try_from(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % span).unwrap_or(0);
        self.filler[at..at + len].to_vec()
    }

    /// The batch orderd would submit for order number `n` of `lines` lines.
    pub fn batch(&self, n: u64, lines: usize) -> Batch {
        let shape = self.shape(lines);
        let mut batch = Batch::default();
        // Like orderd's order records: stamped with their audit record's seq (which the
        // measured size includes), and the audit records not indexed.
        let stamp = orderd_storage::layout::SEQ_LEN;
        for (i, (k, v)) in shape.puts.iter().enumerate() {
            let value = self.value(n, v.saturating_sub(stamp));
            batch.put_stamped(Self::key(&format!("ord/{i}/"), n, *k), value);
        }
        for (i, (k, v)) in shape.audits.iter().enumerate() {
            batch.audit.push(AuditDraft {
                subject: Self::key(&format!("O{i}-"), n, *k),
                payload: self.value(n ^ 0xA0D1, *v),
                indexed: false,
            });
        }
        batch
    }
}

/// The ceiling's routes: parse only, or parse and commit the order's records to `sink`.
pub fn router(sink: Option<Arc<SledSink>>) -> Router {
    let seq = Arc::new(AtomicU64::new(0));
    Router::new().route(
        "/v1/orders",
        post(move |Json(body): Json<PlaceBody>| {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            let sink = sink.clone();
            async move {
                let lines = body.lines.map_or(0, |l| l.len());
                if let Some(sink) = sink {
                    if let Err(e) = sink.journal.submit(sink.batch(n, lines)).await {
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(serde_json::json!({ "error": e.to_string() })),
                        );
                    }
                }
                (
                    StatusCode::CREATED,
                    Json(serde_json::json!({ "id": n, "lines": lines, "state": "parsed" })),
                )
            }
        }),
    )
}

/// Serves until the process is killed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sink: Option<Arc<SledSink>>,
) -> std::io::Result<()> {
    axum::serve(listener, router(sink)).await
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
        tokio::spawn(serve(listener, None));
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

    // The storage ceiling's batch has the measured shape: keys and values of the measured
    // sizes, unique per order, and the nearest measured size is used for other line counts.
    #[test]
    fn sled_batch_has_the_measured_shape() {
        let dir = tempfile::tempdir().unwrap();
        let shapes = vec![
            RecordShape {
                lines: 1,
                puts: vec![(40, 120)],
                audits: vec![(36, 700)],
            },
            RecordShape {
                lines: 100,
                puts: vec![(40, 6000)],
                audits: vec![(36, 9000)],
            },
        ];
        let sink = SledSink::open(dir.path(), shapes).unwrap();
        let a = sink.batch(1, 1);
        let b = sink.batch(2, 3);
        assert_eq!(a.stamped.len(), 1);
        assert_eq!((a.stamped[0].0.len(), a.stamped[0].1.len() + 8), (40, 120));
        assert_eq!(a.audit[0].subject.len(), 36);
        assert_eq!(a.audit[0].payload.len(), 700);
        assert_ne!(a.stamped[0].0, b.stamped[0].0);
        assert_ne!(a.audit[0].subject, b.audit[0].subject);
        assert_eq!(sink.batch(3, 80).stamped[0].1.len(), 6000 - 8);
    }
}
