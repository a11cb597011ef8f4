//! The audit log from the outside: `orderd audit verify` on intact and tampered journals
//! (DESIGN invariant 5), `orderd check` on a journal with over-allocated stock, and the order
//! history of the API.

use crate::env::{open_journal, str_field, warehouses_of, TestEnv};
use orderd_chaos::process::{copy_dir, DaemonSpec};
use orderd_chaos::ToolOutput;
use orderd_storage::audit_chain::{
    chain_hash, decode_record, encode_record, next_record, read_head, AuditHead, AuditRecord,
};
use orderd_storage::layout;
use serde_json::{json, Value};

fn record(db: &sled::Db, seq: u64) -> AuditRecord {
    let value = db
        .get(layout::audit_key(seq))
        .expect("reading")
        .unwrap_or_else(|| panic!("no audit record {seq}"));
    decode_record(seq, &value).expect("decoding")
}

fn put_record(db: &sled::Db, seq: u64, r: &AuditRecord) {
    db.insert(layout::audit_key(seq), encode_record(r))
        .expect("writing");
}

/// An edit of a stopped daemon's journal, given the chain's head seq.
type Tamper = Box<dyn FnOnce(&sled::Db, u64)>;

/// `audit verify` on a copy of `data_dir` after `tamper` edited its journal.
async fn verify_tampered(
    env: &TestEnv,
    name: &str,
    expect_head: Option<String>,
    tamper: impl FnOnce(&sled::Db, u64),
) -> ToolOutput {
    let tool = move |spec: DaemonSpec| match expect_head {
        Some(head) => spec.audit_verify_expecting(&head),
        None => spec.audit_verify(),
    };
    tool_on_tampered(env, name, tool, tamper).await
}

/// `tool` (an orderd command) on a copy of `data_dir` after `tamper` edited its journal.
async fn tool_on_tampered(
    env: &TestEnv,
    name: &str,
    tool: impl FnOnce(DaemonSpec) -> anyhow::Result<ToolOutput> + Send + 'static,
    tamper: impl FnOnce(&sled::Db, u64),
) -> ToolOutput {
    let copy = env.data_dir().with_file_name(format!(
        "{}-{name}",
        env.data_dir()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("copy")
    ));
    copy_dir(env.data_dir(), &copy).expect("copying the data directory");
    {
        let db = open_journal(&copy);
        let head = read_head(&db).expect("reading the head").seq;
        tamper(&db, head);
        db.flush().expect("flushing");
    }
    let mut spec = env.spec.clone();
    spec.data_dir = copy.clone();
    let out = tokio::task::spawn_blocking(move || tool(spec))
        .await
        .expect("tool task")
        .expect("running orderd");
    std::fs::remove_dir_all(&copy).expect("removing the copy");
    out
}

fn broken_seq(out: &ToolOutput) -> Option<u64> {
    let rest = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("audit log BROKEN at seq "))?;
    rest.split(':').next()?.trim().parse().ok()
}

/// Places, approves, ships and cancels a few orders; returns nothing, the journal is the point.
async fn some_history(env: &TestEnv) {
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    let mut ids = vec![];
    for (i, lines) in [
        vec![("BOLT-0010", 5)],
        vec![("HELM-0006", 1)],
        vec![("NUT-0021", 2), ("CABL-0014", 3)],
    ]
    .iter()
    .enumerate()
    {
        let r = env
            .place(&alice, &format!("audit-{i}"), lines, "BERLIN")
            .await;
        assert_eq!(r.status, 201, "{r}");
        ids.push(str_field(&r.body, "id").to_owned());
    }
    let r = env
        .post(&bob, &format!("/v1/orders/{}/approve", ids[1]), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    let r = env
        .post(&bob, &format!("/v1/orders/{}/cancel", ids[2]), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    let r = env.get(&alice, &format!("/v1/orders/{}", ids[0])).await;
    for w in warehouses_of(&r.body) {
        let t = env.warehouse_token(&w).await;
        let r = env
            .post(&t, &format!("/v1/orders/{}/ship", ids[0]), json!({}))
            .await;
        assert_eq!(r.status, 200, "{r}");
    }
}

// A daemon with demo data and a few placed, approved, shipped and cancelled orders is stopped;
// `audit verify` passes. Then copies of its journal are tampered with in each way an attacker
// with file access might try (edit a payload, edit and re-hash one record, delete, swap,
// insert in the middle, append beyond the head, cut the tail) and `audit verify` must exit 1
// naming the first bad seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_finds_every_tampering() {
    let mut env = TestEnv::start().await;
    some_history(&env).await;
    assert!(env.terminate().await.success());
    let intact = env.audit_verify().await;
    assert_eq!(intact.code(), Some(0), "{intact}");
    let (records, head) =
        orderd_chaos::scenario::parse_intact(&intact).unwrap_or_else(|| panic!("{intact}"));
    assert_eq!(records, head, "{intact}");
    // Demo data is a dozen records, our orders six more: room for a middle and a tail.
    assert!(head >= 10, "{intact}");
    let mid = head / 2;

    let cases: Vec<(&str, u64, Tamper)> = vec![
        (
            "edit-payload",
            mid,
            Box::new(move |db, _| {
                let mut r = record(db, mid);
                let last = r.payload.last_mut().expect("a payload");
                *last ^= 0x01;
                put_record(db, mid, &r);
            }),
        ),
        (
            // The record is self-consistent again, but the next one no longer links to it.
            "edit-and-rehash",
            mid + 1,
            Box::new(move |db, _| {
                let mut r = record(db, mid);
                r.payload = br#"{"action":"nothing to see"}"#.to_vec();
                r.hash = chain_hash(mid, &r.prev_hash, &r.subject, &r.payload);
                put_record(db, mid, &r);
            }),
        ),
        (
            "delete",
            mid,
            Box::new(move |db, _| {
                db.remove(layout::audit_key(mid)).expect("removing");
            }),
        ),
        (
            "swap",
            mid,
            Box::new(move |db, _| {
                let a = db.get(layout::audit_key(mid)).expect("a").expect("a");
                let b = db.get(layout::audit_key(mid + 1)).expect("b").expect("b");
                db.insert(layout::audit_key(mid), b).expect("writing");
                db.insert(layout::audit_key(mid + 1), a).expect("writing");
            }),
        ),
        (
            // Records mid.. move up one seq to make room for a forged record that links
            // correctly to its predecessor; the moved records no longer link.
            "insert-middle",
            mid + 1,
            Box::new(move |db, head| {
                for seq in (mid..=head).rev() {
                    let v = db.get(layout::audit_key(seq)).expect("r").expect("r");
                    db.insert(layout::audit_key(seq + 1), v).expect("writing");
                }
                let prev = record(db, mid - 1);
                let forged = next_record(
                    &AuditHead {
                        seq: mid - 1,
                        hash: prev.hash,
                    },
                    b"forged".to_vec(),
                    br#"{"action":"order.place"}"#.to_vec(),
                );
                put_record(db, mid, &forged);
            }),
        ),
        (
            // A well-formed record after the head, without moving the head.
            "append-beyond-head",
            head + 1,
            Box::new(|db, head| {
                let last = record(db, head);
                let extra = next_record(
                    &AuditHead {
                        seq: head,
                        hash: last.hash,
                    },
                    b"extra".to_vec(),
                    b"{}".to_vec(),
                );
                put_record(db, head + 1, &extra);
            }),
        ),
        (
            // The meta head overwritten with bytes that do not decode: the records still link,
            // and the walk names the last one, which the head should name.
            "damaged-meta-head",
            head,
            Box::new(|db, _| {
                db.insert(layout::META_AUDIT_HEAD, &b"bad"[..])
                    .expect("writing");
            }),
        ),
        (
            "truncate-tail",
            head - 2,
            Box::new(|db, head| {
                for seq in head - 2..=head {
                    db.remove(layout::audit_key(seq)).expect("removing");
                }
            }),
        ),
    ];
    for (name, expected, tamper) in cases {
        let out = verify_tampered(&env, name, None, tamper).await;
        assert_eq!(out.code(), Some(1), "{name}: {out}");
        assert_eq!(broken_seq(&out), Some(expected), "{name}: {out}");
    }
    // The last two records cut off with the meta head moved back to the record before them
    // (copied bytes): the store alone looks intact; against the head printed before, it is not.
    let printed = intact
        .stdout
        .split_once("(head ")
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(h, _)| h.to_owned())
        .unwrap_or_else(|| panic!("no head printed: {intact}"));
    let cut = |db: &sled::Db, head: u64| {
        let kept = record(db, head - 2);
        for seq in head - 1..=head {
            db.remove(layout::audit_key(seq)).expect("removing");
        }
        db.insert(
            layout::META_AUDIT_HEAD,
            &layout::encode_audit_head(head - 2, &kept.hash)[..],
        )
        .expect("moving the head back");
    };
    let alone = verify_tampered(&env, "cut-with-head", None, cut).await;
    assert_eq!(alone.code(), Some(0), "{alone}");
    let anchored =
        verify_tampered(&env, "cut-with-head-anchored", Some(printed.clone()), cut).await;
    assert_eq!(anchored.code(), Some(1), "{anchored}");
    assert_eq!(broken_seq(&anchored), Some(head - 1), "{anchored}");
    let untouched = verify_tampered(&env, "anchored", Some(printed.clone()), |_, _| {}).await;
    assert_eq!(untouched.code(), Some(0), "{untouched}");
    // `orderd check` takes the recorded head too.
    let recorded = printed.clone();
    let checked = tool_on_tampered(
        &env,
        "cut-with-head-checked",
        move |spec| spec.check_expecting(&recorded),
        cut,
    )
    .await;
    assert_eq!(checked.code(), Some(1), "{checked}");
    assert!(
        checked.stdout.contains(&format!(
            "BROKEN: audit chain: audit chain broken at seq {}",
            head - 1
        )),
        "{checked}"
    );
    // The original is untouched by all of that.
    let again = env.audit_verify().await;
    assert_eq!(again.code(), Some(0), "{again}");
}

/// Encodes a u64 as postcard does (LEB128 varint), for editing a stock record in place.
fn postcard_u64(mut v: u64) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let byte = (v & 0x7f).to_le_bytes()[0];
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

// `orderd check` passes on a healthy journal and fails (exit 1, a BROKEN line) once the stock
// on hand of a SKU is edited below what an open order holds of it (invariant 2), or an
// account's records no longer load. An account whose limit an operator lowered below its open orders is a note, not a break; a journal the
// running daemon holds is an error of the tool (exit 2), not a broken audit chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_over_allocated_stock() {
    let mut env = TestEnv::start().await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let r = env
        .place(&alice, "check-1", &[("BOLT-0010", 5)], "BERLIN")
        .await;
    assert_eq!(r.status, 201, "{r}");
    let warehouse = warehouses_of(&r.body).pop().expect("an allocation");
    let op = env.api().operator_token().await.expect("operator token");
    let lowered = env
        .api()
        .put(
            &op,
            "/v1/admin/accounts/ACME/credit",
            &json!({"credit_limit": "0.01"}),
        )
        .await
        .expect("request");
    assert_eq!(lowered.status, 200, "{lowered}");
    let busy = env.check().await;
    assert_eq!(busy.code(), Some(2), "{busy}");
    assert!(!busy.stdout.contains("BROKEN"), "{busy}");
    assert!(env.terminate().await.success());
    let ok = env.check().await;
    assert_eq!(ok.code(), Some(0), "{ok}");
    assert!(ok.stdout.contains("all invariants hold"), "{ok}");
    assert!(
        ok.stdout.contains("NOTE: credit: account ACME exposure"),
        "{ok}"
    );
    // An account whose records do not load (its cart's, here) is broken: the daemon would
    // answer its every request with an error.
    let cart = layout::data_key(b"cart/BAUHAUS");
    let edit = |f: &dyn Fn(&sled::Db)| {
        let db = open_journal(env.data_dir());
        f(&db);
        db.flush().expect("flushing");
    };
    edit(&|db| {
        db.insert(&cart, &b"not a cart"[..]).expect("writing");
    });
    let unloadable = env.check().await;
    assert_eq!(unloadable.code(), Some(1), "{unloadable}");
    assert!(
        unloadable.stdout.contains("BROKEN: account BAUHAUS"),
        "{unloadable}"
    );
    edit(&|db| {
        db.remove(&cart).expect("removing");
    });
    {
        let db = open_journal(env.data_dir());
        let key = layout::data_key(format!("stock/{warehouse}/BOLT-0010").as_bytes());
        assert!(db.get(&key).expect("reading").is_some(), "no stock record");
        db.insert(key, postcard_u64(1)).expect("writing");
        db.flush().expect("flushing");
    }
    let broken = env.check().await;
    assert_eq!(broken.code(), Some(1), "{broken}");
    assert!(broken.stdout.contains("BROKEN: "), "{broken}");
}

// An order placed by alice, approved by bob and shipped by the warehouse has a history of
// exactly those three steps, each with the user, the client IP, a timestamp and the state
// change, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_history_shows_who_did_what_from_where() {
    let env = TestEnv::start().await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    // A restricted item: the order waits for approval.
    let r = env
        .place(&alice, "hist-1", &[("HELM-0006", 2)], "BERLIN")
        .await;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(str_field(&r.body, "state"), "pending_approval", "{r}");
    let id = str_field(&r.body, "id").to_owned();
    let r = env
        .post(&bob, &format!("/v1/orders/{id}/approve"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    let warehouses = warehouses_of(&r.body);
    assert_eq!(warehouses.len(), 1, "one line, one warehouse: {r}");
    let picker = env.warehouse_token(&warehouses[0]).await;
    let r = env
        .post(&picker, &format!("/v1/orders/{id}/ship"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(str_field(&r.body, "state"), "shipped", "{r}");

    let h = env.get(&alice, &format!("/v1/orders/{id}/history")).await;
    assert_eq!(h.status, 200, "{h}");
    assert!(h.body["next_cursor"].is_null(), "{h}");
    let entries = h.body["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{h}"));
    let expected = [
        ("order.place", "alice", Value::Null, "pending_approval"),
        (
            "order.approve",
            "bob",
            json!("pending_approval"),
            "allocated",
        ),
        ("order.ship", "picker", json!("allocated"), "shipped"),
    ];
    assert_eq!(entries.len(), expected.len(), "{h}");
    let mut last_seq = 0;
    let mut last_ts = time::OffsetDateTime::UNIX_EPOCH;
    for (e, (action, user, from, to)) in entries.iter().zip(expected) {
        let seq = e["seq"].as_u64().unwrap_or_else(|| panic!("{e}"));
        assert!(seq > last_seq, "seqs increase: {h}");
        last_seq = seq;
        let entry = &e["entry"];
        assert_eq!(entry["action"], action, "{e}");
        assert_eq!(entry["user"], user, "{e}");
        assert_eq!(entry["ip"], "127.0.0.1", "{e}");
        assert_eq!(entry["order"], id.as_str(), "{e}");
        assert_eq!(entry["from"], from, "{e}");
        assert_eq!(entry["to"], to, "{e}");
        let ts = time::OffsetDateTime::parse(
            str_field(entry, "ts"),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or_else(|err| panic!("{e}: {err}"));
        assert!(ts >= last_ts, "timestamps do not go back: {h}");
        last_ts = ts;
    }
}
