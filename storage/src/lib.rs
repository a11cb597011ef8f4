//! orderd-storage: the durable journal of orderd on sled.
//!
//! It stores user key/values and a hash-chained audit log, and writes a state change and its
//! audit records in ONE atomic sled batch (DESIGN invariant 4). The audit log is also the
//! outbox: an audit record may carry the event its change announces, and publishers read the
//! log from their own cursor ([`Journal::audit_after`]), so an event costs no key of its own
//! and is kept as long as the audit log (see the README's storage section). Writers [`Journal::submit`] a [`Batch`] and get a [`Ticket`]; one committer
//! thread applies every batch that arrived meanwhile as one group, flushes once, and only then
//! resolves the tickets (group commit: an acknowledged write survives `kill -9`).
//!
//! It knows records, keys and bytes, never orders: it must not depend on orderd-domain or on
//! any crate above it (actors, api, daemon), nor on a tokio runtime (only `tokio::sync`).
//!
//! Metrics go through the `metrics` facade only (names in [`metric_names`]); whoever runs the
//! journal decides whether and how they are exported.
//!
//! Layout of the keys: [`layout`]. Audit hashing, record format and verification:
//! [`audit_chain`].

pub mod audit_chain;
mod commit_queue;
pub mod layout;
mod sync;

/// The metrics the journal records through the `metrics` facade (once per group, never per write).
pub mod metric_names {
    /// Histogram: batches (writers) committed by one group flush.
    pub const COMMIT_GROUP_SIZE: &str = "orderd_storage_commit_group_size";
    /// Histogram: seconds of one group's sled flush plus fdatasync.
    pub const COMMIT_FLUSH_SECONDS: &str = "orderd_storage_commit_flush_seconds";
    /// Histogram: seconds of applying one group's sled batch (before the flush).
    pub const COMMIT_APPLY_SECONDS: &str = "orderd_storage_commit_apply_seconds";
    /// Counter: groups whose commit failed.
    pub const COMMIT_FAILURES: &str = "orderd_storage_commit_failures_total";
}

use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::PoisonError;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use audit_chain::{AuditHead, AuditRecord, AuditReport};
use commit_queue::{CommitQueue, Linger, PushError};

/// Default [`JournalConfig::commit_batch_max`].
pub const DEFAULT_COMMIT_BATCH_MAX: usize = 1024;
/// Default [`JournalConfig::commit_linger_group`].
pub const DEFAULT_COMMIT_LINGER_GROUP: usize = 8;
/// Default [`JournalConfig::commit_linger_us`].
pub const DEFAULT_COMMIT_LINGER_US: u64 = 1_000;
/// Longest [`JournalConfig::commit_linger_us`] allowed: it is added to a write's latency.
pub const COMMIT_LINGER_US_MAX: u64 = 20_000;
/// Default [`JournalConfig::queue_max`].
pub const DEFAULT_QUEUE_MAX: usize = 65_536;
/// Default [`JournalConfig::commit_stall_ms`]: a group commit (apply, flush, fdatasync) takes
/// milliseconds; one still running after 10 s is stuck on the disk or in sled.
pub const DEFAULT_COMMIT_STALL_MS: u64 = 10_000;
/// Default [`JournalConfig::cache_capacity_bytes`]: 256 MiB.
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;
/// How long [`Journal::open`] keeps retrying while the directory's sled lock is held. sled
/// releases the lock only when its background I/O threads let go of the files, a moment after
/// the previous `Db` in this process was dropped; another process holding it fails after this.
pub const OPEN_LOCK_WAIT_MAX_MS: u64 = 2_000;
/// sled's log segment size. sled logs an entry larger than a quarter of a segment as a separate
/// blob file: one value never is (see [`VALUE_BYTES_MAX`]), but a page of several large values
/// can be when sled logs it whole. sled 0.34.7 never synced blob files; the vendored copy syncs
/// each one and its folder before the log entry pointing at it is written (vendor/README.md).
pub const SLED_SEGMENT_BYTES: usize = 8 << 20;
/// The largest value one record may have; `submit` refuses larger ones. Half of sled's inline
/// limit (a quarter segment), leaving room for sled's own headers.
pub const VALUE_BYTES_MAX: usize = SLED_SEGMENT_BYTES / 8;
const _: () = assert!(
    VALUE_BYTES_MAX * 4 < SLED_SEGMENT_BYTES,
    "values must stay inline in sled's log"
);
/// Pause between those retries.
const OPEN_LOCK_RETRY_MS: u64 = 10;

// A group can never be larger than the queue it is taken from.
const _: () = assert!(DEFAULT_COMMIT_BATCH_MAX <= DEFAULT_QUEUE_MAX);

impl StorageError {
    /// The value under `key` (shown as text, any bytes that are not UTF-8 replaced) does not
    /// read as it should, for `reason`.
    pub fn corrupt(key: &[u8], reason: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.into(),
        }
    }
}

/// Real failures of the journal. Business outcomes never travel here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// sled failed (disk, or sled's own corruption detection).
    #[error("storage i/o: {0}")]
    Io(#[from] sled::Error),
    /// A stored value or key cannot be decoded.
    #[error("corrupt value at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The audit chain fails verification; `seq` is the first bad record.
    #[error("audit chain broken at seq {seq}: {reason}")]
    ChainBroken { seq: u64, reason: String },
    /// More than `queue_max` requests are already waiting for the committer.
    #[error("journal overloaded: the commit queue is full")]
    Overloaded,
    /// The journal was closed (or its committer stopped) before the request was committed.
    #[error("journal closed")]
    Closed,
    /// A configuration value or a batch is outside the named limits (e.g. an audit subject
    /// longer than `layout::AUDIT_SUBJECT_LEN_MAX`). Nothing was written.
    #[error("invalid storage request: {reason}")]
    Invalid { reason: String },
}

/// Limits and sled tuning of a [`Journal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Most requests applied and flushed as one group (at least 1).
    pub commit_batch_max: usize,
    /// While fewer than this many requests wait, the committer lingers up to
    /// `commit_linger_us` for more before it flushes (a flush costs about the same for one
    /// writer as for many). 0 or 1: never linger.
    pub commit_linger_group: usize,
    /// The longest the committer lingers, in microseconds (0: never; at most
    /// [`COMMIT_LINGER_US_MAX`]). It adds at most this much to a write's latency, and nothing
    /// once `commit_linger_group` writers are waiting.
    pub commit_linger_us: u64,
    /// Most requests waiting for the committer (at least 1); beyond it `submit` answers
    /// `StorageError::Overloaded` at once.
    pub queue_max: usize,
    /// sled's page cache size in bytes.
    pub cache_capacity_bytes: u64,
    /// After each group's sled flush, also `fdatasync` sled's data file. sled 0.34.7's flush
    /// only calls `sync_file_range`, which survives a killed process but neither flushes the
    /// drive's write cache nor the file size, so without this a power loss can lose
    /// acknowledged writes. Costs one fdatasync per group (about 0.2 ms median on the team's
    /// machines), shared by every writer of the group.
    pub sync_data: bool,
    /// A group commit running longer than this makes [`Journal::health`] report the journal
    /// stalled (at least 1).
    pub commit_stall_ms: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            commit_batch_max: DEFAULT_COMMIT_BATCH_MAX,
            commit_linger_group: DEFAULT_COMMIT_LINGER_GROUP,
            commit_linger_us: DEFAULT_COMMIT_LINGER_US,
            queue_max: DEFAULT_QUEUE_MAX,
            cache_capacity_bytes: DEFAULT_CACHE_CAPACITY_BYTES,
            sync_data: true,
            commit_stall_ms: DEFAULT_COMMIT_STALL_MS,
        }
    }
}

impl JournalConfig {
    /// Reports every bad value at once as `StorageError::Invalid`.
    pub fn validate(&self) -> Result<(), StorageError> {
        let mut problems = Vec::new();
        if self.commit_batch_max == 0 {
            problems.push("commit_batch_max must be at least 1");
        }
        if self.queue_max == 0 {
            problems.push("queue_max must be at least 1");
        }
        if self.commit_linger_us > COMMIT_LINGER_US_MAX {
            problems.push("commit_linger_us must be at most 20000 (20 ms)");
        }
        if self.commit_linger_group > self.commit_batch_max {
            problems.push("commit_linger_group must be at most commit_batch_max");
        }
        if self.commit_stall_ms == 0 {
            problems.push("commit_stall_ms must be at least 1");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StorageError::Invalid {
                reason: problems.join("; "),
            })
        }
    }
}

/// Why the journal cannot take writes now (see [`Journal::health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    /// A group commit failed; the journal refuses every write until a restart.
    #[error("a group commit failed: restart to recover from the disk")]
    Failed,
    /// The group commit in progress has run longer than `commit_stall_ms`.
    #[error("a group commit has been running for {running:?} (commit_stall_ms: {limit:?})")]
    Stalled { running: Duration, limit: Duration },
}

/// One atomic unit of work: everything in it is stored together or not at all. Batches apply
/// in submit order. A batch may not both write and remove one key (it is refused as
/// `Invalid`): sled keeps one operation per key in a batch, so which one wins would depend on
/// the order they are applied in, not on what the caller meant.
#[derive(Default, Debug, Clone)]
pub struct Batch {
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Puts whose value the journal ends with the seq of the batch's first audit record (8 bytes,
    /// big-endian; see [`Batch::put_stamped`]).
    pub stamped: Vec<(Vec<u8>, Vec<u8>)>,
    pub removes: Vec<Vec<u8>>,
    /// Appended to the hash chain, in this order.
    pub audit: Vec<AuditDraft>,
}

impl Batch {
    pub fn put(&mut self, k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) {
        self.puts.push((k.into(), v.into()));
    }

    /// Like [`Batch::put`], but the journal appends the seq of this batch's first audit record
    /// to the value ([`layout::SEQ_LEN`] bytes, big-endian; read it back with
    /// [`layout::split_stamp`]): a record names the audit record of the change that wrote it,
    /// although seqs are only assigned at commit. The batch must carry an audit record.
    pub fn put_stamped(&mut self, k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) {
        self.stamped.push((k.into(), v.into()));
    }

    pub fn remove(&mut self, k: impl Into<Vec<u8>>) {
        self.removes.push(k.into());
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty()
            && self.stamped.is_empty()
            && self.removes.is_empty()
            && self.audit.is_empty()
    }

    fn validate(&self) -> Result<(), StorageError> {
        if !self.stamped.is_empty() && self.audit.is_empty() {
            return Err(StorageError::Invalid {
                reason: "a stamped put needs an audit record in its batch".to_owned(),
            });
        }
        for draft in &self.audit {
            // Builds the index prefix only to reuse its length check.
            layout::subject_index_prefix(&draft.subject)?;
        }
        if !self.removes.is_empty() {
            let removed: std::collections::HashSet<&[u8]> =
                self.removes.iter().map(Vec::as_slice).collect();
            let written = self.puts.iter().chain(&self.stamped).map(|(k, _)| k);
            if let Some(k) = written.into_iter().find(|k| removed.contains(k.as_slice())) {
                return Err(StorageError::Invalid {
                    reason: format!(
                        "a batch both writes and removes {}",
                        String::from_utf8_lossy(k)
                    ),
                });
            }
        }
        let values = self
            .puts
            .iter()
            .map(|(_, v)| v.len())
            .chain(self.stamped.iter().map(|(_, v)| v.len() + layout::SEQ_LEN))
            .chain(self.audit.iter().map(|a| a.payload.len()));
        if let Some(big) = values.into_iter().find(|n| *n > VALUE_BYTES_MAX) {
            return Err(StorageError::Invalid {
                reason: format!(
                    "a value of {big} bytes is above the {VALUE_BYTES_MAX} bytes a record may have"
                ),
            });
        }
        Ok(())
    }
}

/// An audit record before the journal gives it a seq and a hash.
#[derive(Debug, Clone)]
pub struct AuditDraft {
    /// What the record is about (e.g. an order id). At most `layout::AUDIT_SUBJECT_LEN_MAX`
    /// bytes.
    pub subject: Vec<u8>,
    pub payload: Vec<u8>,
    /// Whether [`Journal::audit_for_subject`] finds the record: one more key per record, and
    /// each key costs a sled insert. Records written often (order changes) are not indexed;
    /// the order's record names them with [`Batch::put_stamped`] instead.
    pub indexed: bool,
}

/// The seqs a committed batch received (an empty range when it had no audit records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub audit_seqs: Range<u64>,
}

/// A snapshot of the committer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Groups flushed successfully.
    pub groups: u64,
    /// Batches in those groups.
    pub batches: u64,
    /// Time spent inside `flush`, summed.
    pub flush_nanos_total: u64,
    /// Most batches ever committed by one flush.
    pub largest_group: u64,
}

/// Resolves once the batch is durable (after the flush that covers it), or with the error that
/// stopped it. Dropping it does not cancel the write.
#[derive(Debug)]
pub struct Ticket(oneshot::Receiver<Result<Committed, StorageError>>);

impl Ticket {
    fn ready(result: Result<Committed, StorageError>) -> Ticket {
        let (tx, rx) = oneshot::channel();
        // The receiver is alive right here, so the send cannot fail.
        let _ = tx.send(result);
        Ticket(rx)
    }
}

impl Future for Ticket {
    type Output = Result<Committed, StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A dropped sender means the committer went away without answering.
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|received| received.unwrap_or(Err(StorageError::Closed)))
    }
}

/// The journal handle; clones share one database and one committer thread. Dropping the last
/// handle closes it like [`Journal::close`] (blocking until accepted batches are committed).
///
/// Reads (`get`, `scan_prefix`, `audit_*`, `verify_audit`) call sled directly and
/// may block on disk, so async callers should run them where blocking is allowed. They see
/// applied batches, which can be a moment ahead of the flush that acknowledges them.
#[derive(Clone)]
pub struct Journal {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    queue: sync::Arc<CommitQueue<Request>>,
    committer: std::sync::Mutex<Option<JoinHandle<()>>>,
    shared: std::sync::Arc<Shared>,
    /// `commit_stall_ms`.
    commit_stall: Duration,
}

/// The test hooks' allowance of writes when none are refused.
#[cfg(feature = "test-hooks")]
const NO_REFUSALS: u64 = u64::MAX;

/// What the committer publishes for readers.
struct Shared {
    groups: AtomicU64,
    batches: AtomicU64,
    flush_nanos_total: AtomicU64,
    largest_group: AtomicU64,
    /// The head of the chain as of the last successful flush.
    durable_head: std::sync::Mutex<AuditHead>,
    /// The seq of `durable_head`, for readers that wait for new durable records.
    durable_seq: tokio::sync::watch::Sender<u64>,
    /// Set once a group commit failed; the journal then takes no more writes.
    failed: tokio::sync::watch::Sender<bool>,
    /// When the group commit in progress started, in nanoseconds after `epoch` plus 1; 0 while
    /// the committer is not committing (waiting for writers or lingering).
    commit_started: AtomicU64,
    epoch: Instant,
    /// Test hook: the next group commit fails as a disk error would.
    #[cfg(test)]
    fail_next_commit: std::sync::atomic::AtomicBool,
    /// Test hook: while set, a group commit waits before it applies, as one stuck on the disk.
    #[cfg(any(test, feature = "test-hooks"))]
    hold_commits: std::sync::atomic::AtomicBool,
    /// Test hook (feature `test-hooks`): how many more writes are accepted before every
    /// further one is refused `Overloaded` ([`NO_REFUSALS`]: no limit).
    #[cfg(feature = "test-hooks")]
    allowance: AtomicU64,
    /// Test hook (feature `test-hooks`): writes refused because of `allowance`.
    #[cfg(feature = "test-hooks")]
    refused: AtomicU64,
}

struct Request {
    batch: Batch,
    reply: oneshot::Sender<Result<Committed, StorageError>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("queued", &self.inner.queue.len())
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (or creates) the journal in the directory `path` and starts its committer.
    ///
    /// Fails with `Invalid` for a bad config, `Io` when sled cannot open the directory, and
    /// `ChainBroken`/`Corrupt` when the last audit record does not match the meta head or the
    /// meta keys cannot be decoded (the full walk is [`Journal::verify_audit`]).
    pub fn open(path: &Path, config: &JournalConfig) -> Result<Journal, StorageError> {
        config.validate()?;
        let db = open_retrying_lock(&sled_config(config).path(path))?;
        // sled keeps its log in the file `db`; syncing any descriptor of it syncs the file.
        let data_file = match config.sync_data {
            true => Some(
                std::fs::File::open(path.join("db"))
                    .map_err(|e| StorageError::Io(sled::Error::Io(e)))?,
            ),
            false => None,
        };
        Journal::start(db, config, data_file)
    }

    /// A journal in a temporary sled database that is deleted when the last handle drops.
    /// Same code path as `open`, for fast tests.
    pub fn temporary(config: &JournalConfig) -> Result<Journal, StorageError> {
        config.validate()?;
        let db = sled_config(config).temporary(true).open()?;
        // Nothing to sync for a store that is deleted on drop.
        Journal::start(db, config, None)
    }

    /// Walks the whole audit chain of the journal in `path` without starting a committer, so a
    /// store that `open` refuses (its tail does not match the head) can still be examined.
    /// Reports the first bad sequence number as `ChainBroken`.
    /// `expect`: a head recorded earlier, which the chain must still reach (see
    /// [`audit_chain::verify_tree`]). A directory without a journal is refused, not reported as
    /// an empty intact log.
    pub fn verify_dir(path: &Path, expect: Option<AuditHead>) -> Result<AuditReport, StorageError> {
        // sled keeps its log in `db` and its settings in `conf`; opening creates both.
        if !path.join("db").is_file() || !path.join("conf").is_file() {
            return Err(StorageError::Invalid {
                reason: format!("{} holds no journal", path.display()),
            });
        }
        let db = open_retrying_lock(&sled_config(&JournalConfig::default()).path(path))?;
        audit_chain::verify_tree(&db, expect)
    }

    /// Opens the journal's sled database in `path` directly, with the settings it was created
    /// with and no committer: for tools and tamper tests that must read or edit raw records.
    /// Never write through it while a journal is open on the same directory.
    pub fn open_raw(path: &Path) -> Result<sled::Db, StorageError> {
        open_retrying_lock(&sled_config(&JournalConfig::default()).path(path))
    }

    fn start(
        db: sled::Db,
        config: &JournalConfig,
        data_file: Option<std::fs::File>,
    ) -> Result<Journal, StorageError> {
        let chain = ChainState::load(&db)?;
        let shared = std::sync::Arc::new(Shared {
            groups: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            flush_nanos_total: AtomicU64::new(0),
            largest_group: AtomicU64::new(0),
            durable_head: std::sync::Mutex::new(chain.head),
            durable_seq: tokio::sync::watch::Sender::new(chain.head.seq),
            failed: tokio::sync::watch::Sender::new(false),
            commit_started: AtomicU64::new(0),
            epoch: Instant::now(),
            #[cfg(test)]
            fail_next_commit: std::sync::atomic::AtomicBool::new(false),
            #[cfg(any(test, feature = "test-hooks"))]
            hold_commits: std::sync::atomic::AtomicBool::new(false),
            #[cfg(feature = "test-hooks")]
            allowance: AtomicU64::new(NO_REFUSALS),
            #[cfg(feature = "test-hooks")]
            refused: AtomicU64::new(0),
        });
        let linger = Linger {
            group: config.commit_linger_group,
            wait: Duration::from_micros(config.commit_linger_us),
        };
        let queue = sync::Arc::new(CommitQueue::with_linger(config.queue_max, linger));
        let mut committer = Committer {
            db: db.clone(),
            data_file,
            chain,
            shared: shared.clone(),
        };
        let committer_queue = queue.clone();
        let group_max = config.commit_batch_max;
        let handle = std::thread::Builder::new()
            .name("orderd-commit".to_owned())
            .spawn(move || committer.run(&committer_queue, group_max))
            .map_err(|e| StorageError::Io(sled::Error::Io(e)))?;
        Ok(Journal {
            inner: std::sync::Arc::new(Inner {
                db,
                queue,
                committer: std::sync::Mutex::new(Some(handle)),
                shared,
                commit_stall: Duration::from_millis(config.commit_stall_ms),
            }),
        })
    }

    /// Enqueues `batch` without blocking or awaiting. Batches are applied in submit order. The
    /// ticket resolves only after the sled flush that covers this batch has returned; at once
    /// with `Overloaded` when `queue_max` requests are already waiting, `Closed` after `close`,
    /// or `Invalid` for a malformed batch (an audit subject too long, a value too large, a key
    /// both written and removed).
    pub fn submit(&self, batch: Batch) -> Ticket {
        self.try_submit(batch)
            .unwrap_or_else(|e| Ticket::ready(Err(e)))
    }

    /// [`Journal::submit`], with the refusals that come at once (`Overloaded`, `Closed`,
    /// `Invalid`) returned here instead of in the ticket: for a caller that changes its memory
    /// only once the write is queued (queued writes are applied in submit order).
    pub fn try_submit(&self, batch: Batch) -> Result<Ticket, StorageError> {
        batch.validate()?;
        #[cfg(feature = "test-hooks")]
        {
            let spent = self.inner.shared.allowance.fetch_update(
                Ordering::SeqCst,
                Ordering::SeqCst,
                |left| (left != NO_REFUSALS && left > 0).then(|| left - 1),
            );
            if spent == Err(0) {
                self.inner.shared.refused.fetch_add(1, Ordering::SeqCst);
                return Err(StorageError::Overloaded);
            }
        }
        let (reply, rx) = oneshot::channel();
        match self.inner.queue.push(Request { batch, reply }) {
            Ok(()) => Ok(Ticket(rx)),
            Err(PushError::Full(_)) => Err(StorageError::Overloaded),
            Err(PushError::Closed(_)) => Err(StorageError::Closed),
        }
    }

    /// Test hook: while `on`, every write is refused `Overloaded` at once, as it is when the
    /// commit queue is full, so a test can refuse exactly the writes of the steps it chooses.
    #[cfg(feature = "test-hooks")]
    pub fn refuse_writes(&self, on: bool) {
        let allowance = if on { 0 } else { NO_REFUSALS };
        self.inner
            .shared
            .allowance
            .store(allowance, Ordering::SeqCst);
    }

    /// Test hook: the next `n` writes are accepted, every one after them refused as by
    /// [`Journal::refuse_writes`] (until that is turned off): a step that fails midway.
    #[cfg(feature = "test-hooks")]
    pub fn refuse_writes_after(&self, n: u64) {
        assert!(n < NO_REFUSALS);
        self.inner.shared.allowance.store(n, Ordering::SeqCst);
    }

    /// Test hook: while `on`, group commits wait before they apply, as one stuck on the disk:
    /// what is queued stays unapplied (and its callers unanswered) until it is off again.
    #[cfg(feature = "test-hooks")]
    pub fn hold_commits(&self, on: bool) {
        self.inner.shared.hold_commits.store(on, Ordering::SeqCst);
    }

    /// Test hook: how many writes [`Journal::refuse_writes`] has refused so far.
    #[cfg(feature = "test-hooks")]
    pub fn writes_refused(&self) -> u64 {
        self.inner.shared.refused.load(Ordering::SeqCst)
    }

    /// The value of a user key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .inner
            .db
            .get(layout::data_key(key))?
            .map(|value| value.to_vec()))
    }

    /// The value of a user key that holds a `u64` (8 bytes, big-endian, as a cursor is
    /// stored); any other length is `Corrupt`.
    pub fn get_u64(&self, key: &[u8]) -> Result<Option<u64>, StorageError> {
        self.get(key)?
            .map(|v| Journal::decode_u64(key, &v))
            .transpose()
    }

    /// The `u64` a value of `key` holds (8 bytes, big-endian), as [`Journal::get_u64`] reads it:
    /// for values a scan already read.
    pub fn decode_u64(key: &[u8], value: &[u8]) -> Result<u64, StorageError> {
        <[u8; 8]>::try_from(value)
            .map(u64::from_be_bytes)
            .map_err(|_| {
                StorageError::corrupt(key, format!("expected 8 bytes, found {}", value.len()))
            })
    }

    /// Every user key starting with `prefix` (keys returned without the internal prefix), in key
    /// order. Unbounded: callers choose prefixes that select a bounded set (one account, say).
    // The agreed public signature; an alias would only hide what callers get back.
    #[allow(clippy::type_complexity)]
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let mut all = vec![];
        self.for_each_prefix(prefix, |key, value| {
            all.push((key.to_vec(), value.to_vec()));
            Ok(())
        })?;
        Ok(all)
    }

    /// Visits every user entry under `prefix` in key order, one at a time (keys without the
    /// prefix's tag, as [`Journal::scan_prefix`] gives them): for scans over many records, such
    /// as every open order at start, that must not hold them all at once. Stops at the first
    /// error of `visit`.
    pub fn for_each_prefix(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        for item in self.inner.db.scan_prefix(layout::data_key(prefix)) {
            let (key, value) = item?;
            visit(&key[1..], &value)?;
        }
        Ok(())
    }

    /// Up to `max` user entries under `prefix` whose key after the prefix is below `before` (every
    /// entry under `prefix` when `None`), the highest key first, each read by `read(key, value)`
    /// with the caller's key, in place: a reader that needs only part of a value copies no more.
    pub fn scan_prefix_rev<T>(
        &self,
        prefix: &[u8],
        before: Option<&[u8]>,
        max: usize,
        mut read: impl FnMut(&[u8], &[u8]) -> Result<T, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        let start = layout::data_key(prefix);
        let end = match before {
            Some(b) => layout::data_key(&[prefix, b].concat()),
            None => layout::prefix_successor(&start),
        };
        self.inner
            .db
            .range(start..end)
            .rev()
            .take(max)
            .map(|item| {
                let (key, value) = item?;
                read(&key[1..], &value)
            })
            .collect()
    }

    /// The audit record `seq`, if there is one (applied, not necessarily durable yet).
    pub fn audit_record(&self, seq: u64) -> Result<Option<AuditRecord>, StorageError> {
        match self.inner.db.get(layout::audit_key(seq))? {
            Some(value) => Ok(Some(audit_chain::decode_record(seq, &value)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` indexed audit records about `subject` ([`AuditDraft::indexed`]), in seq
    /// order.
    pub fn audit_for_subject(
        &self,
        subject: &[u8],
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StorageError> {
        // No record can have a subject longer than the limit, so there is nothing to find.
        let Ok(prefix) = layout::subject_index_prefix(subject) else {
            return Ok(Vec::new());
        };
        let mut records = Vec::new();
        for item in self.inner.db.scan_prefix(&prefix).take(limit) {
            let (key, _) = item?;
            let corrupt = |reason: &str| StorageError::Corrupt {
                key: layout::describe_key(&key),
                reason: reason.to_owned(),
            };
            let seq = (key.len() == prefix.len() + layout::SEQ_LEN)
                .then(|| layout::seq_of_key(&key))
                .flatten()
                .ok_or_else(|| corrupt("undecodable subject index key"))?;
            let record = self
                .audit_record(seq)?
                .ok_or_else(|| corrupt("index points at a missing audit record"))?;
            if record.subject != subject {
                return Err(corrupt("index points at a record about another subject"));
            }
            records.push(record);
        }
        Ok(records)
    }

    /// Up to `limit` audit records with seq > `after_seq`, in seq order.
    pub fn audit_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StorageError> {
        self.audit_iter(after_seq, u64::MAX).take(limit).collect()
    }

    /// Like [`Journal::audit_after`], but only records the last successful flush covers. Readers
    /// that hand records on (outbox publishers, event replay) use this: a record sled has
    /// applied but not yet flushed could still vanish in a crash.
    pub fn durable_audit_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StorageError> {
        self.durable_audit_iter(after_seq).take(limit).collect()
    }

    /// The durable audit records with seq > `after_seq`, in seq order, read one at a time as
    /// the caller takes them: a reader that stops early (a page filled) reads no further. The
    /// durable head is taken when this is called.
    pub fn durable_audit_iter(
        &self,
        after_seq: u64,
    ) -> impl Iterator<Item = Result<AuditRecord, StorageError>> + use<> {
        self.audit_iter(after_seq, self.audit_head().seq)
    }

    /// The audit records with `after_seq` < seq <= `last_seq`, in seq order, read lazily.
    fn audit_iter(
        &self,
        after_seq: u64,
        last_seq: u64,
    ) -> impl Iterator<Item = Result<AuditRecord, StorageError>> + use<> {
        self.seq_range(layout::AUDIT, after_seq, last_seq)
            .map(|item| item.and_then(|(seq, value)| audit_chain::decode_record(seq, &value)))
    }

    /// Whether a group commit has failed (see [`Journal::failed`]).
    pub fn has_failed(&self) -> bool {
        *self.inner.shared.failed.borrow()
    }

    /// Resolves once a group commit has failed (a disk error). The journal then refuses every
    /// write with `Closed`; the owner should stop and let a restart recover from the disk.
    pub async fn failed(&self) {
        let mut failed = self.inner.shared.failed.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = failed.wait_for(|f| *f).await;
    }

    /// The head of the audit chain as of the last successful flush: seq 0 and a zero hash when
    /// the log is empty. Publishing it elsewhere anchors the chain against a full rewrite.
    pub fn audit_head(&self) -> AuditHead {
        *self
            .inner
            .shared
            .durable_head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows the seq of [`Journal::audit_head`]: `changed()` resolves after each flush that made
    /// new audit records durable, so outbox readers need not poll.
    pub fn durable_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.shared.durable_seq.subscribe()
    }

    /// Walks the whole audit log (see [`audit_chain::verify_tree`]): `ChainBroken { seq }` names
    /// the first bad record (for a damaged meta head, the last record). Safe to run while
    /// writers commit.
    pub fn verify_audit(&self) -> Result<AuditReport, StorageError> {
        audit_chain::verify_tree(&self.inner.db, None)
    }

    /// How long the group commit in progress has been running; `None` while the committer is
    /// not committing.
    pub fn commit_running_for(&self) -> Option<Duration> {
        let shared = &self.inner.shared;
        match shared.commit_started.load(Ordering::Acquire) {
            0 => None,
            started => {
                let started = Duration::from_nanos(started - 1);
                Some(shared.epoch.elapsed().saturating_sub(started))
            }
        }
    }

    /// Whether the journal can take writes: not after a failed group commit, nor while a group
    /// commit has been running for longer than `commit_stall_ms` (stuck on the disk or in
    /// sled). For readiness checks and the service manager's watchdog.
    pub fn health(&self) -> Result<(), Unhealthy> {
        if self.has_failed() {
            return Err(Unhealthy::Failed);
        }
        match self.commit_running_for() {
            Some(running) if running > self.inner.commit_stall => Err(Unhealthy::Stalled {
                running,
                limit: self.inner.commit_stall,
            }),
            _ => Ok(()),
        }
    }

    /// Batches waiting for the committer right now (at most `queue_max`).
    pub fn queued(&self) -> usize {
        self.inner.queue.len()
    }

    /// A snapshot of the committer's counters.
    pub fn stats(&self) -> CommitStats {
        let shared = &self.inner.shared;
        CommitStats {
            groups: shared.groups.load(Ordering::Relaxed),
            batches: shared.batches.load(Ordering::Relaxed),
            flush_nanos_total: shared.flush_nanos_total.load(Ordering::Relaxed),
            largest_group: shared.largest_group.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting batches (later `submit`s resolve `Closed`), lets the committer commit
    /// everything already accepted, joins its thread and flushes once more. Blocks until then,
    /// so async callers should call it where blocking is allowed. Idempotent; reads keep working
    /// until the last handle is dropped.
    pub fn close(&self) -> Result<(), StorageError> {
        self.inner.queue.close();
        let handle = self
            .inner
            .committer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("journal committer thread panicked");
                return Err(StorageError::Closed);
            }
        }
        self.inner.db.flush()?;
        Ok(())
    }

    /// `(seq, value)` of the keys `prefix`+seq with `after_seq` < seq <= `last_seq`, in seq
    /// order, read lazily.
    fn seq_range(
        &self,
        prefix: u8,
        after_seq: u64,
        last_seq: u64,
    ) -> impl Iterator<Item = Result<(u64, sled::IVec), StorageError>> + use<> {
        let range = after_seq
            .checked_add(1)
            .filter(|first| *first <= last_seq)
            .map(|first| {
                let start = layout::seq_key(prefix, first);
                let end = match last_seq.checked_add(1) {
                    Some(past) => layout::seq_key(prefix, past).to_vec(),
                    None => layout::prefix_end(prefix).to_vec(),
                };
                self.inner.db.range(start.to_vec()..end)
            });
        range.into_iter().flatten().map(move |item| {
            let (key, value) = item?;
            let seq = (key.len() == 1 + layout::SEQ_LEN)
                .then(|| layout::seq_of_key(&key))
                .flatten()
                .ok_or_else(|| StorageError::Corrupt {
                    key: layout::describe_key(&key),
                    reason: "undecodable seq key".to_owned(),
                })?;
            Ok((seq, value))
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: commit what was accepted and stop the thread, so tickets
        // still resolve and the thread does not outlive the database.
        self.queue.close();
        let handle = self
            .committer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Opens sled, waiting up to [`OPEN_LOCK_WAIT_MAX_MS`] for a just-closed journal on the same
/// directory to release its file lock.
fn open_retrying_lock(config: &sled::Config) -> Result<sled::Db, StorageError> {
    let deadline = Instant::now() + Duration::from_millis(OPEN_LOCK_WAIT_MAX_MS);
    loop {
        match config.open() {
            // sled 0.34 reports a held lock only as this `Other` I/O error text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(OPEN_LOCK_RETRY_MS));
            }
            result => return Ok(result?),
        }
    }
}

/// sled settings, all explicit (STYLE 4).
fn sled_config(config: &JournalConfig) -> sled::Config {
    sled::Config::new()
        .cache_capacity(config.cache_capacity_bytes)
        // Favour write throughput over disk space: the journal is append-heavy.
        .mode(sled::Mode::HighThroughput)
        // The committer flushes once per group; a timer flush would add fsyncs that acknowledge
        // nothing and compete with the group flush.
        .flush_every_ms(None)
        .use_compression(false)
        .segment_size(SLED_SEGMENT_BYTES)
}

/// The committer's view of the chain it appends to next.
#[derive(Debug, Clone, Copy)]
struct ChainState {
    head: AuditHead,
}

impl ChainState {
    /// Reads the meta head and checks it agrees with the stored tail.
    fn load(tree: &sled::Tree) -> Result<ChainState, StorageError> {
        Ok(ChainState {
            head: audit_chain::check_tail(tree)?,
        })
    }
}

struct Committer {
    db: sled::Db,
    /// sled's data file, fdatasync'ed after each flush when `sync_data` is on.
    data_file: Option<std::fs::File>,
    chain: ChainState,
    shared: std::sync::Arc<Shared>,
}

impl Committer {
    fn run(&mut self, queue: &CommitQueue<Request>, group_max: usize) {
        /// If this thread ends for any reason (including a panic), refuse new writers and drop
        /// the waiting ones, so their tickets resolve `Closed` instead of hanging.
        /// A panic counts as a failed commit (see [`Journal::failed`]).
        struct CloseOnExit<'a>(&'a CommitQueue<Request>, std::sync::Arc<Shared>);
        impl Drop for CloseOnExit<'_> {
            fn drop(&mut self) {
                // Failed first: a writer woken by the close must find the journal failed.
                if std::thread::panicking() {
                    self.1.failed.send_replace(true);
                }
                drop(self.0.close_and_take_all());
            }
        }
        let _close_on_exit = CloseOnExit(queue, self.shared.clone());
        commit_queue::run_committer(
            queue,
            group_max,
            |group| {
                let started = self.shared.epoch.elapsed().as_nanos();
                let started = u64::try_from(started).unwrap_or(u64::MAX - 1) + 1;
                self.shared.commit_started.store(started, Ordering::Release);
                let result = self.commit_group(group);
                self.shared.commit_started.store(0, Ordering::Release);
                if result.is_err() {
                    // Fail-stop. After a failed flush or fdatasync, what sled holds in memory
                    // may be ahead of the disk, and whether the kernel still has the failed
                    // pages is unknown; so is the actors' memory against the journal. Every
                    // later write is refused (the waiting ones resolve `Closed`), and the
                    // daemon stops so that a restart rebuilds everything from the disk.
                    self.shared.failed.send_replace(true);
                    drop(queue.close_and_take_all());
                }
                result
            },
            complete_group,
        );
    }

    /// Applies the group as one sled batch and flushes once. On failure the chain state is
    /// reloaded from meta, so it never runs ahead of what the tree holds.
    fn commit_group(&mut self, group: &mut [Request]) -> Result<Vec<Committed>, StorageError> {
        let result = self.apply_and_flush(group);
        if let Err(error) = &result {
            tracing::error!(group.size = group.len(), %error, "journal group commit failed");
            metrics::counter!(metric_names::COMMIT_FAILURES).increment(1);
            match ChainState::load(&self.db) {
                Ok(chain) => self.chain = chain,
                Err(reload) => tracing::error!(%reload, "journal chain state reload failed"),
            }
        }
        result
    }

    fn apply_and_flush(&mut self, group: &mut [Request]) -> Result<Vec<Committed>, StorageError> {
        #[cfg(test)]
        if self.shared.fail_next_commit.swap(false, Ordering::SeqCst) {
            return Err(StorageError::Io(sled::Error::Io(std::io::Error::other(
                "injected by a test",
            ))));
        }
        #[cfg(any(test, feature = "test-hooks"))]
        while self.shared.hold_commits.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (batch, committed, next) = build_group(self.chain, group)?;
        let apply_started = Instant::now();
        self.db.apply_batch(batch)?;
        let flush_started = Instant::now();
        metrics::histogram!(metric_names::COMMIT_APPLY_SECONDS)
            .record(flush_started.duration_since(apply_started).as_secs_f64());
        self.db.flush()?;
        if let Some(f) = &self.data_file {
            f.sync_data()
                .map_err(|e| StorageError::Io(sled::Error::Io(e)))?;
        }
        let flush_elapsed = flush_started.elapsed();
        metrics::histogram!(metric_names::COMMIT_FLUSH_SECONDS).record(flush_elapsed.as_secs_f64());
        // Exact for every group size the queue allows (far below 2^52).
        #[allow(clippy::cast_precision_loss)]
        metrics::histogram!(metric_names::COMMIT_GROUP_SIZE).record(group.len() as f64);
        let flush_nanos = u64::try_from(flush_elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.chain = next;
        self.publish(group.len(), flush_nanos);
        Ok(committed)
    }

    fn publish(&self, group_len: usize, flush_nanos: u64) {
        let group_len = u64::try_from(group_len).unwrap_or(u64::MAX);
        let shared = &self.shared;
        shared.groups.fetch_add(1, Ordering::Relaxed);
        shared.batches.fetch_add(group_len, Ordering::Relaxed);
        shared
            .flush_nanos_total
            .fetch_add(flush_nanos, Ordering::Relaxed);
        shared.largest_group.fetch_max(group_len, Ordering::Relaxed);
        *shared
            .durable_head
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.chain.head;
        // Wakes the outbox readers only when the group carried audit records.
        shared.durable_seq.send_if_modified(|seq| {
            let moved = *seq != self.chain.head.seq;
            *seq = self.chain.head.seq;
            moved
        });
    }
}

/// Builds ONE sled batch for the whole group, assigning audit seqs in submit order,
/// plus the meta keys that record the new head. Returns the batch, each request's seqs, and the
/// chain state to adopt once the batch is durable. Moves the payloads out of the requests.
fn build_group(
    mut chain: ChainState,
    group: &mut [Request],
) -> Result<(sled::Batch, Vec<Committed>, ChainState), StorageError> {
    let exhausted = || StorageError::Invalid {
        reason: "sequence numbers exhausted".to_owned(),
    };
    let mut out = sled::Batch::default();
    let mut committed = Vec::with_capacity(group.len());
    for request in group.iter_mut() {
        let batch = std::mem::take(&mut request.batch);
        let audit_first = chain.head.seq.checked_add(1).ok_or_else(exhausted)?;
        for (key, value) in batch.puts {
            out.insert(layout::data_key(&key), value);
        }
        for (key, mut value) in batch.stamped {
            debug_assert!(!batch.audit.is_empty(), "validated on submit");
            value.extend_from_slice(&audit_first.to_be_bytes());
            out.insert(layout::data_key(&key), value);
        }
        for key in batch.removes {
            out.remove(layout::data_key(&key));
        }
        for draft in batch.audit {
            if chain.head.seq == u64::MAX {
                return Err(exhausted());
            }
            let record = audit_chain::next_record(&chain.head, draft.subject, draft.payload);
            // Check each link on the way in (STYLE 7); verify_audit checks it again on the way out.
            debug_assert_eq!(record.prev_hash, chain.head.hash);
            debug_assert_eq!(audit_chain::audit_chain_links(&chain.head, &record), Ok(()));
            if draft.indexed {
                out.insert(
                    layout::subject_index_key(&record.subject, record.seq)?,
                    &[] as &[u8],
                );
            }
            out.insert(
                &layout::audit_key(record.seq)[..],
                audit_chain::encode_record(&record),
            );
            chain.head = AuditHead {
                seq: record.seq,
                hash: record.hash,
            };
        }
        committed.push(Committed {
            audit_seqs: audit_first..chain.head.seq.checked_add(1).ok_or_else(exhausted)?,
        });
    }
    out.insert(
        layout::META_AUDIT_HEAD,
        &layout::encode_audit_head(chain.head.seq, &chain.head.hash)[..],
    );
    Ok((out, committed, chain))
}

/// Answers every request of a group, after its flush returned (or failed).
fn complete_group(group: Vec<Request>, outcome: Result<Vec<Committed>, StorageError>) {
    // A send fails only when the ticket was dropped; the write stands either way.
    match outcome {
        Ok(committed) => {
            for (request, committed) in group.into_iter().zip(committed) {
                let _ = request.reply.send(Ok(committed));
            }
        }
        Err(error) => {
            for request in group {
                let _ = request.reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A batch that both writes and removes one key is refused whole; a key written in one batch
    // and removed in the next is gone, and written again after that, is back.
    #[tokio::test]
    async fn a_batch_may_not_write_and_remove_one_key() {
        let journal = Journal::temporary(&JournalConfig::default()).expect("journal");
        let mut both = Batch::default();
        both.put(b"other".to_vec(), b"v".to_vec());
        both.put(b"k".to_vec(), b"v".to_vec());
        both.remove(b"k".to_vec());
        let refused = journal.submit(both).await;
        assert!(
            matches!(&refused, Err(StorageError::Invalid { reason }) if reason.contains("both writes and removes k")),
            "{refused:?}"
        );
        assert_eq!(journal.get(b"other").expect("read"), None, "refused whole");
        let mut put = Batch::default();
        put.put(b"k".to_vec(), b"v1".to_vec());
        journal.submit(put.clone()).await.expect("put");
        let mut remove = Batch::default();
        remove.remove(b"k".to_vec());
        journal.submit(remove).await.expect("remove");
        assert_eq!(journal.get(b"k").expect("read"), None);
        journal.submit(put).await.expect("put again");
        assert_eq!(journal.get(b"k").expect("read"), Some(b"v1".to_vec()));
    }

    // A failed group commit fails its writers, refuses every later write and reports the
    // failure; what was committed before stays readable.
    #[tokio::test]
    async fn a_failed_commit_stops_the_journal() {
        let dir = tempfile::tempdir().expect("dir");
        let journal = Journal::open(dir.path(), &JournalConfig::default()).expect("journal");
        let put = |key: &[u8]| {
            let mut batch = Batch::default();
            batch.put(key.to_vec(), b"v".to_vec());
            batch
        };
        journal.submit(put(b"before")).await.expect("committed");
        journal
            .inner
            .shared
            .fail_next_commit
            .store(true, Ordering::SeqCst);
        let failed = journal.submit(put(b"failing")).await;
        assert!(matches!(failed, Err(StorageError::Io(_))), "{failed:?}");
        tokio::time::timeout(Duration::from_secs(5), journal.failed())
            .await
            .expect("the failure is reported");
        assert!(journal.has_failed());
        assert_eq!(journal.health(), Err(Unhealthy::Failed));
        assert!(matches!(
            journal.try_submit(put(b"after")),
            Err(StorageError::Closed)
        ));
        assert_eq!(journal.get(b"before").expect("read"), Some(b"v".to_vec()));
        journal.close().expect("closed");
    }

    // A group commit that does not finish shows as running, for ever longer; past
    // `commit_stall_ms` the journal reports itself stalled. Once it completes the journal is
    // healthy again and nothing is running.
    #[tokio::test]
    async fn a_stuck_commit_is_reported_stalled() {
        const STALL_MS: u64 = 50;
        let journal = Journal::temporary(&JournalConfig {
            commit_stall_ms: STALL_MS,
            ..JournalConfig::default()
        })
        .expect("journal");
        assert_eq!(journal.commit_running_for(), None);
        assert_eq!(journal.health(), Ok(()));
        // Released on every way out, or dropping the journal would wait for the held commit.
        struct Held(std::sync::Arc<Shared>);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.hold_commits.store(false, Ordering::SeqCst);
            }
        }
        let held = Held(journal.inner.shared.clone());
        held.0.hold_commits.store(true, Ordering::SeqCst);
        let mut batch = Batch::default();
        batch.put(b"k".to_vec(), b"v".to_vec());
        let ticket = journal.submit(batch);
        let deadline = Instant::now() + Duration::from_secs(10);
        let stalled = loop {
            match journal.health() {
                Err(stalled) => break stalled,
                Ok(()) => {
                    assert!(Instant::now() < deadline, "never reported stalled");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let Unhealthy::Stalled { running, limit } = stalled else {
            panic!("{stalled:?}");
        };
        assert_eq!(limit, Duration::from_millis(STALL_MS));
        assert!(running > limit, "{running:?}");
        let later = journal.commit_running_for().expect("still running");
        assert!(later >= running, "{later:?} after {running:?}");
        drop(held);
        ticket.await.expect("committed once released");
        assert_eq!(journal.commit_running_for(), None);
        assert_eq!(journal.health(), Ok(()));
    }
}
