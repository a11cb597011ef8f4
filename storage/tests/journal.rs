//! Black-box tests of the journal: atomic batches, seqs across restarts, reads, the audit
//! chain (intact and tampered), reading the log from a cursor, group commit under concurrency, limits and close.

use std::path::Path;
use std::time::{Duration, Instant};

use orderd_storage::audit_chain::{self, AuditRecord};
use orderd_storage::layout;
use orderd_storage::{AuditDraft, AuditHead, Batch, Journal, JournalConfig, StorageError};

fn config() -> JournalConfig {
    JournalConfig {
        cache_capacity_bytes: 16 * 1024 * 1024,
        ..JournalConfig::default()
    }
}

fn audited(subject: &str, payload: &str) -> Batch {
    let mut batch = Batch::default();
    batch.audit.push(AuditDraft {
        subject: subject.as_bytes().to_vec(),
        payload: payload.as_bytes().to_vec(),
        indexed: true,
    });
    batch
}

/// Writes `n` batches with one audit record each (subjects alternate "s0"/"s1") and closes.
async fn journal_with_records(dir: &Path, n: u64) {
    let journal = Journal::open(dir, &config()).expect("open");
    for i in 1..=n {
        let committed = journal
            .submit(audited(&format!("s{}", i % 2), &format!("p{i}")))
            .await
            .expect("commit");
        assert_eq!(committed.audit_seqs, i..i + 1);
    }
    journal.close().expect("close");
}

fn chain_broken_at(result: Result<impl std::fmt::Debug, StorageError>) -> u64 {
    match result {
        Err(StorageError::ChainBroken { seq, .. }) => seq,
        other => panic!("expected ChainBroken, got {other:?}"),
    }
}

/// Opens a journal directory with sled directly. sled frees its file lock a moment after the
/// previous `Db` drops (its I/O threads let go later), so poll against a deadline.
fn raw_open(dir: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Journal::open_raw(dir) {
            Ok(db) => return db,
            Err(e) if Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("raw sled open: {e}"),
        }
    }
}

/// Opens the closed journal's directory with sled directly, lets `tamper` edit it, flushes.
fn tamper(dir: &Path, tamper: impl FnOnce(&sled::Db)) {
    let db = raw_open(dir);
    tamper(&db);
    db.flush().expect("raw flush");
}

fn raw_record(db: &sled::Db, seq: u64) -> AuditRecord {
    let value = db
        .get(layout::audit_key(seq))
        .expect("read")
        .expect("record exists");
    audit_chain::decode_record(seq, &value).expect("decodes")
}

/// Runs the full verification on the raw directory (works even when `Journal::open` refuses).
fn raw_verify(dir: &Path) -> Result<orderd_storage::AuditReport, StorageError> {
    audit_chain::verify_tree(&raw_open(dir), None)
}

// A batch with puts, a remove and audit records is visible as a whole once its ticket
// resolves, with contiguous seqs; a batch refused at submit leaves no trace at all.
#[tokio::test]
async fn batch_is_atomic() {
    let journal = Journal::temporary(&config()).expect("open");
    let mut first = Batch::default();
    first.put("k/1", "v1");
    first.put("k/2", "v2");
    let committed = journal.submit(first).await.expect("first");
    assert!(committed.audit_seqs.is_empty());

    let mut batch = audited("order-1", "created");
    batch.put("k/1", "v1b");
    batch.remove("k/2");
    batch.audit.push(AuditDraft {
        subject: b"order-1".to_vec(),
        payload: b"priced".to_vec(),
        indexed: true,
    });
    let committed = journal.submit(batch).await.expect("second");
    assert_eq!(committed.audit_seqs, 1..3);
    assert_eq!(journal.get(b"k/1").expect("get"), Some(b"v1b".to_vec()));
    assert_eq!(journal.get(b"k/2").expect("get"), None);
    assert_eq!(journal.audit_after(0, 10).expect("audit").len(), 2);

    let mut refused = audited(&"x".repeat(layout::AUDIT_SUBJECT_LEN_MAX + 1), "too long");
    refused.put("k/3", "v3");
    assert!(matches!(
        journal.submit(refused).await,
        Err(StorageError::Invalid { .. })
    ));
    assert_eq!(journal.get(b"k/3").expect("get"), None);
    assert_eq!(journal.audit_after(0, 10).expect("audit").len(), 2);
    assert_eq!(journal.audit_head().seq, 2);
}

// Audit seqs continue contiguously after close and reopen, and the new record links to the
// head from before the restart.
#[tokio::test]
async fn seqs_contiguous_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let journal = Journal::open(dir.path(), &config()).expect("open");
        for i in 0..3 {
            let batch = audited("s", &format!("before {i}"));
            journal.submit(batch).await.expect("commit");
        }
        journal.close().expect("close");
    }
    let journal = Journal::open(dir.path(), &config()).expect("reopen");
    let head = journal.audit_head();
    assert_eq!(head.seq, 3);
    let batch = audited("s", "after");
    let committed = journal.submit(batch).await.expect("commit");
    assert_eq!(committed.audit_seqs, 4..5);
    let seqs: Vec<u64> = journal
        .audit_after(0, 100)
        .expect("audit")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(
        journal.audit_after(3, 100).expect("audit")[0].prev_hash,
        head.hash
    );
    assert_eq!(
        journal.audit_after(3, 100).expect("after")[0].payload,
        b"after"
    );
    assert_eq!(journal.verify_audit().expect("verify").records, 4);
}

// A u64 value (a cursor) reads back; an absent key is None; a value of another length is
// Corrupt, naming its key and length.
#[tokio::test]
async fn get_u64_reads_cursors() {
    let journal = Journal::temporary(&config()).expect("open");
    let mut batch = Batch::default();
    batch.put("cursor/a", 42u64.to_be_bytes().to_vec());
    batch.put("cursor/b", vec![1, 2, 3]);
    journal.submit(batch).await.expect("commit");
    assert_eq!(journal.get_u64(b"cursor/a").expect("read"), Some(42));
    assert_eq!(journal.get_u64(b"cursor/none").expect("read"), None);
    match journal.get_u64(b"cursor/b") {
        Err(StorageError::Corrupt { key, reason }) => {
            assert_eq!(key, "cursor/b");
            assert_eq!(reason, "expected 8 bytes, found 3");
        }
        other => panic!("{other:?}"),
    }
}

// get and scan_prefix see only user data, with the internal prefix stripped, in key order.
#[tokio::test]
async fn get_and_scan_prefix() {
    let journal = Journal::temporary(&config()).expect("open");
    let mut batch = audited("acct/1", "audit data must not show up in scans");
    for key in ["acct/2/b", "acct/1/z", "acct/1/a", "acct/10/a"] {
        batch.put(key, format!("value of {key}"));
    }
    journal.submit(batch).await.expect("commit");

    let scanned = journal.scan_prefix(b"acct/1/").expect("scan");
    let keys: Vec<&[u8]> = scanned.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, vec![&b"acct/1/a"[..], &b"acct/1/z"[..]]);
    assert_eq!(scanned[0].1, b"value of acct/1/a".to_vec());
    assert_eq!(journal.scan_prefix(b"").expect("scan all").len(), 4);
    assert_eq!(journal.scan_prefix(b"nope").expect("scan"), Vec::new());

    // Backwards: highest key first, at most `max`, below `before` when given, never past the
    // prefix (acct/10/a and acct/2/b sort around acct/1/ but are not under it).
    let rev = |before: Option<&[u8]>, max| -> Vec<Vec<u8>> {
        let got = journal.scan_prefix_rev(b"acct/1/", before, max, |k, _| Ok(k.to_vec()));
        got.expect("scan")
    };
    assert_eq!(rev(None, 10), [b"acct/1/z".to_vec(), b"acct/1/a".to_vec()]);
    assert_eq!(rev(None, 1), [b"acct/1/z".to_vec()]);
    assert_eq!(rev(Some(b"z"), 10), [b"acct/1/a".to_vec()]);
    assert_eq!(rev(Some(b"a"), 10), Vec::<Vec<u8>>::new());
    let values = journal.scan_prefix_rev(b"acct/", None, 1, |_, v| Ok(v.to_vec()));
    assert_eq!(values.expect("scan"), [b"value of acct/2/b".to_vec()]);
    assert_eq!(
        journal.get(b"acct/10/a").expect("get"),
        Some(b"value of acct/10/a".to_vec())
    );
    assert_eq!(journal.get(b"acct/1").expect("get"), None);
}

// audit_for_subject returns only that subject's records, in seq order, honouring the limit;
// a subject that is a prefix of another does not match it.
#[tokio::test]
async fn audit_for_subject_filters_and_limits() {
    let journal = Journal::temporary(&config()).expect("open");
    for (subject, payload) in [
        ("o-1", "a"),
        ("o-10", "b"),
        ("o-1", "c"),
        ("o-2", "d"),
        ("o-1", "e"),
    ] {
        journal
            .submit(audited(subject, payload))
            .await
            .expect("commit");
    }
    let records = journal.audit_for_subject(b"o-1", 10).expect("query");
    let seen: Vec<(u64, &[u8])> = records
        .iter()
        .map(|r| (r.seq, r.payload.as_slice()))
        .collect();
    assert_eq!(seen, vec![(1, &b"a"[..]), (3, &b"c"[..]), (5, &b"e"[..])]);
    assert_eq!(
        journal.audit_for_subject(b"o-1", 2).expect("query").len(),
        2
    );
    assert_eq!(
        journal.audit_for_subject(b"o-10", 10).expect("query")[0].seq,
        2
    );
    assert!(journal
        .audit_for_subject(b"o-3", 10)
        .expect("query")
        .is_empty());
    let huge = vec![b'x'; layout::AUDIT_SUBJECT_LEN_MAX + 1];
    assert!(journal
        .audit_for_subject(&huge, 10)
        .expect("query")
        .is_empty());
}

// A stamped put ends with the seq of its batch's first audit record, so a record can name the
// audit record of its change without an index key; an unindexed record is not found by subject
// but by seq; a stamped put without an audit record is refused before anything is written.
#[tokio::test]
async fn stamped_puts_name_their_unindexed_audit_record() {
    let journal = Journal::temporary(&config()).expect("open");
    journal
        .submit(audited("other", "first"))
        .await
        .expect("commit");
    let mut batch = audited("o-1", "placed");
    batch.audit[0].indexed = false;
    batch.audit.push(AuditDraft {
        indexed: false,
        ..audited("o-1", "second").audit.remove(0)
    });
    batch.put_stamped("ord/o-1", "record");
    let committed = journal.submit(batch).await.expect("commit");
    assert_eq!(committed.audit_seqs, 2..4);
    let stored = journal.get(b"ord/o-1").expect("get").expect("stored");
    let (value, seq) = layout::split_stamp(&stored).expect("stamped");
    assert_eq!((value, seq), (&b"record"[..], 2));
    let record = journal.audit_record(seq).expect("read").expect("present");
    assert_eq!(
        (record.subject.as_slice(), record.payload.as_slice()),
        (&b"o-1"[..], &b"placed"[..])
    );
    assert!(journal
        .audit_for_subject(b"o-1", 10)
        .expect("query")
        .is_empty());
    assert_eq!(
        journal
            .audit_for_subject(b"other", 10)
            .expect("query")
            .len(),
        1
    );
    assert!(journal.audit_record(4).expect("read").is_none());
    assert_eq!(layout::split_stamp(b"short"), None);
    let mut unaudited = Batch::default();
    unaudited.put_stamped("ord/o-2", "record");
    assert!(matches!(
        journal.submit(unaudited).await,
        Err(StorageError::Invalid { .. })
    ));
    assert_eq!(journal.get(b"ord/o-2").expect("get"), None);
    journal.verify_audit().expect("the chain is intact");
}

// An intact chain verifies and survives a restart; the empty chain has head (0, zero hash).
#[tokio::test]
async fn verify_intact_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path(), &config()).expect("open");
    assert_eq!(journal.audit_head(), AuditHead::EMPTY);
    let report = journal.verify_audit().expect("verify empty");
    assert_eq!((report.records, report.head), (0, AuditHead::EMPTY));
    journal.close().expect("close");
    drop(journal);

    journal_with_records(dir.path(), 5).await;
    let journal = Journal::open(dir.path(), &config()).expect("reopen");
    let report = journal.verify_audit().expect("verify");
    assert_eq!((report.records, report.head.seq), (5, 5));
    let records = journal.audit_after(0, 10).expect("records");
    assert_eq!(journal.audit_head().hash, records[4].hash);
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
}

// Editing the payload (or subject) of record 3 breaks its hash: first bad seq is 3. The tail is
// untouched, so open succeeds and only the full walk finds it.
#[tokio::test]
async fn tamper_edit_is_detected() {
    for edit_subject in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        journal_with_records(dir.path(), 5).await;
        tamper(dir.path(), |db| {
            let mut record = raw_record(db, 3);
            if edit_subject {
                record.subject = b"someone else".to_vec();
            } else {
                record.payload = b"p3 but cheaper".to_vec();
            }
            db.insert(layout::audit_key(3), audit_chain::encode_record(&record))
                .expect("edit");
        });
        let journal = Journal::open(dir.path(), &config()).expect("tail is intact");
        assert_eq!(chain_broken_at(journal.verify_audit()), 3);
    }
}

// Removing record 3 leaves a gap: first bad seq is 3.
#[tokio::test]
async fn tamper_removal_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal_with_records(dir.path(), 5).await;
    tamper(dir.path(), |db| {
        db.remove(layout::audit_key(3)).expect("remove");
    });
    let journal = Journal::open(dir.path(), &config()).expect("tail is intact");
    assert_eq!(chain_broken_at(journal.verify_audit()), 3);
}

// Inserting a forged record at 3 (shifting 3..5 up to 4..6 and moving the meta head along):
// a naive forgery fails at 3; one whose own link and hash are right still breaks the link of
// the displaced record, at 4.
#[tokio::test]
async fn tamper_insertion_is_detected() {
    for careful in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        journal_with_records(dir.path(), 5).await;
        tamper(dir.path(), |db| {
            let shifted: Vec<AuditRecord> = (3..=5).map(|seq| raw_record(db, seq)).collect();
            for old in &shifted {
                db.insert(
                    layout::audit_key(old.seq + 1),
                    audit_chain::encode_record(old),
                )
                .expect("shift");
            }
            let prev = raw_record(db, 2);
            let forged = if careful {
                let head = AuditHead {
                    seq: 2,
                    hash: prev.hash,
                };
                audit_chain::next_record(&head, b"s1".to_vec(), b"forged".to_vec())
            } else {
                AuditRecord {
                    seq: 3,
                    prev_hash: [7; 32],
                    hash: [9; 32],
                    subject: b"s1".to_vec(),
                    payload: b"forged".to_vec(),
                }
            };
            db.insert(layout::audit_key(3), audit_chain::encode_record(&forged))
                .expect("insert");
            let last = shifted.last().expect("three shifted");
            db.insert(
                layout::META_AUDIT_HEAD,
                &layout::encode_audit_head(6, &last.hash)[..],
            )
            .expect("move head");
        });
        let journal = Journal::open(dir.path(), &config()).expect("tail looks intact");
        let expected = if careful { 4 } else { 3 };
        assert_eq!(chain_broken_at(journal.verify_audit()), expected);
    }
}

// Swapping the contents of records 2 and 3 breaks the link at 2.
#[tokio::test]
async fn tamper_reorder_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal_with_records(dir.path(), 5).await;
    tamper(dir.path(), |db| {
        let two = db.get(layout::audit_key(2)).expect("read").expect("2");
        let three = db.get(layout::audit_key(3)).expect("read").expect("3");
        db.insert(layout::audit_key(2), three).expect("swap");
        db.insert(layout::audit_key(3), two).expect("swap");
    });
    let journal = Journal::open(dir.path(), &config()).expect("tail is intact");
    assert_eq!(chain_broken_at(journal.verify_audit()), 2);
}

// Deleting the last record (the meta head still says 5): open refuses and the walk names 5.
#[tokio::test]
async fn tamper_truncation_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal_with_records(dir.path(), 5).await;
    tamper(dir.path(), |db| {
        db.remove(layout::audit_key(5)).expect("truncate");
    });
    assert_eq!(chain_broken_at(Journal::open(dir.path(), &config())), 5);
    assert_eq!(chain_broken_at(raw_verify(dir.path())), 5);
}

// Records 4 and 5 cut off together with the meta head, rewritten to record 3 (copied bytes, no
// hashing): the store alone looks intact. Against the head recorded before (`SEQ:HASH`, as the
// daemon logs it) the walk names 4; a recorded head whose hash differs names its own seq.
#[tokio::test]
async fn a_tail_cut_with_its_head_is_detected_against_a_recorded_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal_with_records(dir.path(), 5).await;
    let recorded = raw_verify(dir.path()).expect("intact").head;
    let text = recorded.to_string();
    assert_eq!(text.parse::<AuditHead>(), Ok(recorded));
    assert!("5".parse::<AuditHead>().is_err() && "5:zz".parse::<AuditHead>().is_err());
    tamper(dir.path(), |db| {
        let third = raw_record(db, 3);
        db.remove(layout::audit_key(5)).expect("cut");
        db.remove(layout::audit_key(4)).expect("cut");
        db.insert(
            layout::META_AUDIT_HEAD,
            &layout::encode_audit_head(3, &third.hash)[..],
        )
        .expect("rewrite the head");
    });
    assert_eq!(raw_verify(dir.path()).expect("looks intact").head.seq, 3);
    assert_eq!(
        chain_broken_at(Journal::verify_dir(dir.path(), Some(recorded))),
        4
    );
    let other = AuditHead {
        seq: 2,
        hash: [7; 32],
    };
    assert_eq!(
        chain_broken_at(Journal::verify_dir(dir.path(), Some(other))),
        2
    );
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(
        matches!(
            Journal::verify_dir(empty.path(), None),
            Err(StorageError::Invalid { reason }) if reason.contains("holds no journal")
        ),
        "an empty directory is no intact log"
    );
}

// A well-linked record appended beyond the meta head is foreign: open refuses, the walk names 6.
#[tokio::test]
async fn tamper_append_beyond_head_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal_with_records(dir.path(), 5).await;
    tamper(dir.path(), |db| {
        let last = raw_record(db, 5);
        let head = AuditHead {
            seq: 5,
            hash: last.hash,
        };
        let extra = audit_chain::next_record(&head, b"s0".to_vec(), b"extra".to_vec());
        db.insert(layout::audit_key(6), audit_chain::encode_record(&extra))
            .expect("append");
    });
    assert_eq!(chain_broken_at(Journal::open(dir.path(), &config())), 6);
    assert_eq!(chain_broken_at(raw_verify(dir.path())), 6);
}

// An undecodable value at 2 is reported as the first bad seq, not a panic; reading it through
// audit_after is Corrupt.
#[tokio::test]
async fn tamper_garbage_value_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal_with_records(dir.path(), 5).await;
    tamper(dir.path(), |db| {
        db.insert(layout::audit_key(2), &b"garbage"[..])
            .expect("garble");
    });
    let journal = Journal::open(dir.path(), &config()).expect("tail is intact");
    assert_eq!(chain_broken_at(journal.verify_audit()), 2);
    assert!(matches!(
        journal.audit_after(0, 10),
        Err(StorageError::Corrupt { .. })
    ));
}

// The audit log read from a cursor (as outbox publishers do): records come back in seq order
// across batches, pages continue where the last one ended, and nothing is beyond the head.
#[tokio::test]
async fn audit_after_pages_in_seq_order() {
    let journal = Journal::temporary(&config()).expect("open");
    for chunk in [&["a", "b"][..], &["c"][..], &["d", "e", "f"][..]] {
        let mut batch = Batch::default();
        for p in chunk {
            batch.audit.push(AuditDraft {
                subject: b"s".to_vec(),
                payload: p.as_bytes().to_vec(),
                indexed: true,
            });
        }
        journal.submit(batch).await.expect("commit");
    }
    let all = journal.audit_after(0, 100).expect("all");
    let seen: Vec<(u64, &[u8])> = all.iter().map(|r| (r.seq, r.payload.as_slice())).collect();
    assert_eq!(
        seen,
        vec![
            (1, &b"a"[..]),
            (2, &b"b"[..]),
            (3, &b"c"[..]),
            (4, &b"d"[..]),
            (5, &b"e"[..]),
            (6, &b"f"[..])
        ]
    );
    let page = journal.audit_after(2, 2).expect("page");
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
    let rest = journal.audit_after(4, 100).expect("rest");
    assert_eq!(rest.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5, 6]);
    assert!(journal.audit_after(6, 10).expect("none").is_empty());
    assert!(journal.audit_after(u64::MAX, 10).expect("none").is_empty());
    // Read lazily, up to the durable head (every batch above was flushed).
    let seqs = |after: u64| -> Vec<u64> {
        journal
            .durable_audit_iter(after)
            .map(|r| r.expect("record").seq)
            .collect()
    };
    assert_eq!(seqs(0), [1, 2, 3, 4, 5, 6]);
    assert_eq!(seqs(4), [5, 6]);
    assert!(seqs(6).is_empty() && seqs(u64::MAX).is_empty());
    let mut lazy = journal.durable_audit_iter(1);
    assert_eq!(lazy.next().expect("one").expect("record").payload, b"b");
    assert_eq!(
        journal.durable_audit_after(1, 1).expect("one")[0].payload,
        b"b"
    );
}

// 64 concurrent writers x 50 batches on a real directory: every ticket resolves, seqs are
// unique and contiguous, the chain verifies, and flushes were shared (groups > 1 batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submitters_share_flushes() {
    const WRITERS: u64 = 64;
    const BATCHES: u64 = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path(), &config()).expect("open");
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..BATCHES {
                let mut batch = audited(&format!("w{writer}"), &format!("{i}"));
                batch.put(format!("w{writer}/{i}"), "x");
                let committed = journal.submit(batch).await.expect("commit");
                seqs.push(committed.audit_seqs.start);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.expect("task");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one writer's batches stay in order"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=WRITERS * BATCHES).collect::<Vec<_>>());
    let stats = journal.stats();
    assert_eq!(stats.batches, WRITERS * BATCHES);
    assert!(stats.largest_group > 1, "flushes were shared: {stats:?}");
    assert!(stats.groups < stats.batches);
    assert_eq!(
        journal.verify_audit().expect("verify").records,
        WRITERS * BATCHES
    );
    assert_eq!(
        journal
            .audit_for_subject(b"w7", 100)
            .expect("subject")
            .len(),
        50
    );
}

// With a tiny queue and one batch per group, a burst of submits overflows: those tickets are
// Overloaded at once and write nothing; every accepted one commits.
#[tokio::test]
async fn overloaded_when_queue_is_full() {
    let journal = Journal::temporary(&JournalConfig {
        commit_batch_max: 1,
        commit_linger_group: 1,
        queue_max: 2,
        ..config()
    })
    .expect("open");
    let tickets: Vec<_> = (0..2_000)
        .map(|i| journal.submit(audited("s", &format!("{i}"))))
        .collect();
    let (mut accepted, mut overloaded) = (0u64, 0u64);
    for ticket in tickets {
        match ticket.await {
            Ok(_) => accepted += 1,
            Err(StorageError::Overloaded) => overloaded += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(overloaded > 0, "2000 submits never overflowed a queue of 2");
    assert_eq!(journal.audit_head().seq, accepted);
    assert_eq!(journal.verify_audit().expect("verify").records, accepted);
}

// close() commits everything already accepted before returning; later submits are Closed,
// close is idempotent, and reads still work.
#[tokio::test]
async fn close_drains_accepted_batches() {
    let journal = Journal::temporary(&config()).expect("open");
    let tickets: Vec<_> = (0..300)
        .map(|i| {
            let mut batch = audited("s", &format!("{i}"));
            batch.put(format!("k{i}"), "v");
            journal.submit(batch)
        })
        .collect();
    journal.close().expect("close");
    for ticket in tickets {
        ticket.await.expect("accepted before close, so committed");
    }
    assert!(matches!(
        journal.submit(audited("s", "late")).await,
        Err(StorageError::Closed)
    ));
    journal.close().expect("close twice");
    assert_eq!(journal.audit_head().seq, 300);
    assert_eq!(journal.get(b"k299").expect("get"), Some(b"v".to_vec()));
}

// Bad limits are refused with every problem listed.
#[test]
fn invalid_config_is_refused() {
    let bad = JournalConfig {
        commit_batch_max: 0,
        queue_max: 0,
        commit_linger_us: 20_001,
        commit_linger_group: 2,
        ..JournalConfig::default()
    };
    match Journal::temporary(&bad) {
        Err(StorageError::Invalid { reason }) => {
            for field in [
                "commit_batch_max",
                "queue_max",
                "commit_linger_us",
                "commit_linger_group",
            ] {
                assert!(reason.contains(field), "{field} missing in {reason}");
            }
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

// A value too large to stay inline in sled's synced log is refused (sled would write it as a
// blob file it never syncs); the largest allowed value is stored and read back.
#[tokio::test]
async fn values_above_the_inline_limit_are_refused() {
    let journal = Journal::temporary(&JournalConfig::default()).expect("journal");
    let mut huge = audited("s", "huge");
    huge.put("k/big", vec![1u8; orderd_storage::VALUE_BYTES_MAX + 1]);
    assert!(matches!(
        journal.submit(huge).await,
        Err(StorageError::Invalid { .. })
    ));
    assert_eq!(journal.get(b"k/big").expect("get"), None);
    assert_eq!(
        journal.audit_head().seq,
        0,
        "nothing of the refused batch was written"
    );
    let mut largest = audited("s", "largest");
    largest.put("k/max", vec![2u8; orderd_storage::VALUE_BYTES_MAX]);
    journal
        .submit(largest)
        .await
        .expect("the largest allowed value is stored");
    assert_eq!(
        journal.get(b"k/max").expect("get").map(|v| v.len()),
        Some(orderd_storage::VALUE_BYTES_MAX)
    );
}

// Readers that wait for durable records are woken by a flush that carries audit records, and
// only then: a batch of plain puts moves nothing.
#[tokio::test]
async fn durable_changes_follow_the_audit_head() {
    let journal = Journal::temporary(&config()).expect("journal");
    let mut changes = journal.durable_changes();
    assert_eq!(*changes.borrow_and_update(), 0);
    let mut put = Batch::default();
    put.put(b"m/x".to_vec(), b"1".to_vec());
    journal.submit(put).await.expect("commit");
    assert!(!changes.has_changed().expect("sender alive"));
    journal.submit(audited("s", "p")).await.expect("commit");
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("woken")
        .expect("sender alive");
    assert_eq!(*changes.borrow_and_update(), journal.audit_head().seq);
    assert_eq!(journal.audit_head().seq, 1);
}

/// Files under `dir`'s `blobs` folders, wherever sled keeps them.
fn blob_files(dir: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            count += if path.file_name().is_some_and(|n| n == "blobs") {
                std::fs::read_dir(&path).expect("blobs").count()
            } else {
                blob_files(&path)
            };
        }
    }
    count
}

// Neighbouring large values make sled log whole pages above its inline limit as blob files,
// which the vendored sled syncs before its log can point at them (vendor/README.md): the path
// is taken here, and every value reads back after a reopen.
#[tokio::test]
async fn large_neighbouring_values_go_through_blob_files_and_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let value = |i: u8| vec![i; 300 << 10];
    {
        let journal = Journal::open(dir.path(), &config()).expect("open");
        for i in 0..24u8 {
            let mut batch = Batch::default();
            batch.put(format!("big/{i:02}"), value(i));
            journal.submit(batch).await.expect("commit");
        }
        journal.close().expect("close");
    }
    assert!(blob_files(dir.path()) > 0, "no page went to a blob file");
    let journal = Journal::open(dir.path(), &config()).expect("reopen");
    for i in 0..24u8 {
        let got = journal.get(format!("big/{i:02}").as_bytes()).expect("get");
        assert!(got.as_deref() == Some(value(i).as_slice()), "big/{i:02}");
    }
}
