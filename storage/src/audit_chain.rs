//! The hash-chained audit log: hashing, the stored record format and verification.
//!
//! Each record's hash is
//! `SHA-256(seq u64 BE || prev_hash || subject_len u32 BE || subject || payload)`, and the next
//! record stores that hash as its `prev_hash`. Seqs start at 1 and are contiguous; the first
//! record's `prev_hash` is all zeros. The meta key [`layout::META_AUDIT_HEAD`] holds the last
//! (seq, hash) and is written in the same atomic batch as the records, so it anchors the tail:
//! deleting the last records is detected too, unless the meta head is rewritten with them (to
//! the earlier record's own seq and hash, copied bytes). That cut is detected only against a head
//! recorded outside the store: the daemon logs it at start and at shutdown, and
//! `orderd audit verify --expect-head SEQ:HASH` checks the chain still reaches it.
//!
//! Stored value of `a`+seq (format version 1):
//!
//! | bytes | field                         |
//! |-------|-------------------------------|
//! | 1     | format version, `1`           |
//! | 32    | prev_hash                     |
//! | 32    | hash                          |
//! | 4     | subject length, u32 BE        |
//! | n     | subject                       |
//! | rest  | payload                       |
//!
//! The seq is not repeated in the value: it is part of the hash, so a record moved to another
//! key fails its hash check. Limit: SHA-256 is unkeyed, so someone who can write the sled files
//! can recompute every hash and the meta head; detecting that needs the head anchored outside
//! the database (see [`crate::Journal::audit_head`]).

use sha2::{Digest, Sha256};

use crate::layout::{self, HASH_LEN, SEQ_LEN};
use crate::StorageError;

/// Version byte at the start of every stored audit record.
pub const RECORD_FORMAT_VERSION: u8 = 1;
/// Bytes of a stored record before the subject.
const RECORD_HEADER_LEN: usize = 1 + HASH_LEN + HASH_LEN + 4;

/// One stored audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    pub subject: Vec<u8>,
    pub payload: Vec<u8>,
}

/// The last link of the chain: seq 0 and a zero hash when the log is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl AuditHead {
    /// The head of an empty log.
    pub const EMPTY: AuditHead = AuditHead {
        seq: 0,
        hash: [0; HASH_LEN],
    };
}

/// `SEQ:HEX`, the form `orderd audit verify` prints and `--expect-head` reads: a head recorded
/// outside the store is what detects a log cut back to an earlier record.
impl std::fmt::Display for AuditHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, hex::encode(self.hash))
    }
}

impl std::str::FromStr for AuditHead {
    type Err = String;
    fn from_str(s: &str) -> Result<AuditHead, String> {
        let (seq, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not SEQ:HASH"))?;
        let seq = seq
            .parse()
            .map_err(|_| format!("{seq:?} is not a sequence number"))?;
        let mut out = [0u8; HASH_LEN];
        hex::decode_to_slice(hash, &mut out)
            .map_err(|_| format!("{hash:?} is not {HASH_LEN} bytes of hex"))?;
        Ok(AuditHead { seq, hash: out })
    }
}

/// What [`verify_tree`] found on an intact chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditReport {
    /// Number of records walked.
    pub records: u64,
    /// The meta head the walk ended on.
    pub head: AuditHead,
}

/// The chain hash of one record.
pub fn chain_hash(seq: u64, prev_hash: &[u8; 32], subject: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(seq.to_be_bytes());
    hasher.update(prev_hash);
    hasher.update(subject_len_u32(subject).to_be_bytes());
    hasher.update(subject);
    hasher.update(payload);
    hasher.finalize().into()
}

/// Builds the record that follows `prev`.
pub fn next_record(prev: &AuditHead, subject: Vec<u8>, payload: Vec<u8>) -> AuditRecord {
    let seq = prev.seq.saturating_add(1);
    let hash = chain_hash(seq, &prev.hash, &subject, &payload);
    AuditRecord {
        seq,
        prev_hash: prev.hash,
        hash,
        subject,
        payload,
    }
}

/// Named invariant: `record` correctly extends the chain whose head is `prev` (next seq, links to
/// the head's hash, and its own hash matches its contents). The error says which part fails.
pub fn audit_chain_links(prev: &AuditHead, record: &AuditRecord) -> Result<(), String> {
    if Some(record.seq) != prev.seq.checked_add(1) {
        return Err(format!("seq {} does not follow {}", record.seq, prev.seq));
    }
    if record.prev_hash != prev.hash {
        return Err(format!(
            "prev_hash does not match the hash of record {}",
            prev.seq
        ));
    }
    let expected = chain_hash(
        record.seq,
        &record.prev_hash,
        &record.subject,
        &record.payload,
    );
    if record.hash != expected {
        return Err("stored hash does not match the record contents".to_owned());
    }
    Ok(())
}

/// Encodes a record as the value of its `a`+seq key (format in the module docs).
pub fn encode_record(record: &AuditRecord) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(RECORD_HEADER_LEN + record.subject.len() + record.payload.len());
    out.push(RECORD_FORMAT_VERSION);
    out.extend_from_slice(&record.prev_hash);
    out.extend_from_slice(&record.hash);
    out.extend_from_slice(&subject_len_u32(&record.subject).to_be_bytes());
    out.extend_from_slice(&record.subject);
    out.extend_from_slice(&record.payload);
    out
}

/// Decodes the value stored under audit key `seq`. Malformed bytes are `StorageError::Corrupt`.
pub fn decode_record(seq: u64, value: &[u8]) -> Result<AuditRecord, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        key: layout::describe_key(&layout::audit_key(seq)),
        reason,
    };
    let header = value.get(..RECORD_HEADER_LEN).ok_or_else(|| {
        corrupt(format!(
            "record is {} bytes, shorter than its {RECORD_HEADER_LEN}-byte header",
            value.len()
        ))
    })?;
    let (version, rest) = header.split_at(1);
    if version != [RECORD_FORMAT_VERSION] {
        return Err(corrupt(format!("unknown record format {}", version[0])));
    }
    let (prev_hash, rest) = rest.split_at(HASH_LEN);
    let (hash, len) = rest.split_at(HASH_LEN);
    let len: [u8; 4] = len
        .try_into()
        .map_err(|_| corrupt("bad subject length".to_owned()))?;
    let subject_len = usize::try_from(u32::from_be_bytes(len))
        .map_err(|_| corrupt("subject length does not fit in memory".to_owned()))?;
    let body = &value[RECORD_HEADER_LEN..];
    if subject_len > body.len() {
        return Err(corrupt(format!(
            "subject length {subject_len} exceeds the {} bytes left",
            body.len()
        )));
    }
    let (subject, payload) = body.split_at(subject_len);
    Ok(AuditRecord {
        seq,
        prev_hash: to_hash(prev_hash),
        hash: to_hash(hash),
        subject: subject.to_vec(),
        payload: payload.to_vec(),
    })
}

/// Reads the chain head from the meta key (seq 0 and a zero hash when absent).
pub fn read_head(tree: &sled::Tree) -> Result<AuditHead, StorageError> {
    match tree.get(layout::META_AUDIT_HEAD)? {
        None => Ok(AuditHead::EMPTY),
        Some(value) => {
            let (seq, hash) = layout::decode_audit_head(&value)?;
            Ok(AuditHead { seq, hash })
        }
    }
}

/// The cheap check done when a journal opens: the last stored record is the meta head.
/// Returns that head. A full walk is [`verify_tree`].
pub fn check_tail(tree: &sled::Tree) -> Result<AuditHead, StorageError> {
    let head = read_head(tree)?;
    let last = tree.scan_prefix([layout::AUDIT]).next_back().transpose()?;
    match last {
        None if head.seq == 0 => Ok(head),
        None => Err(broken(
            head.seq,
            "no audit records, but the meta head exists",
        )),
        Some((key, value)) => {
            let seq = audit_seq_of(&key).ok_or_else(|| {
                broken(
                    head.seq,
                    format!("undecodable audit key {}", layout::describe_key(&key)),
                )
            })?;
            if seq != head.seq {
                // The first bad seq is the first one past the shorter of the two.
                return Err(broken(
                    seq.min(head.seq).saturating_add(1),
                    format!("last record is {seq}, the meta head is {}", head.seq),
                ));
            }
            let record =
                decode_record(seq, &value).map_err(|e| broken(seq, format!("undecodable: {e}")))?;
            if record.hash != head.hash {
                return Err(broken(seq, "last record's hash differs from the meta head"));
            }
            Ok(head)
        }
    }
}

/// Walks every audit record in seq order and checks each link, the contiguity of seqs and that
/// the chain ends exactly at the meta head. Reports the FIRST bad seq as
/// `StorageError::ChainBroken`; read failures are `StorageError::Io`. A meta head that does not
/// decode is reported at the last record that links (the one the head should name; 0 when
/// there is none), after the whole walk.
///
/// The store alone cannot show that its tail was cut off, meta head included (the head is
/// rewritten to an earlier record's hash, which that record's successor holds). `expect` is a
/// head recorded outside the store (the daemon logs it at start and at shutdown): the chain must
/// reach it and the record at its seq must carry its hash.
///
/// Safe to run while the journal commits: records appended after the head was read are ignored.
/// Cost: one sequential read of the whole log.
pub fn verify_tree(
    tree: &sled::Tree,
    expect: Option<AuditHead>,
) -> Result<AuditReport, StorageError> {
    // A damaged meta head is a broken chain too: walk every record, then name the last one
    // (the record the head should name) with why.
    let (head, damaged) = match read_head(tree) {
        Ok(head) => (head, None),
        Err(StorageError::Corrupt { reason, .. }) => (
            AuditHead {
                seq: u64::MAX,
                ..AuditHead::EMPTY
            },
            Some(reason),
        ),
        Err(e) => return Err(e),
    };
    let mut prev = AuditHead::EMPTY;
    let mut records = 0u64;
    let mut beyond_head = None;
    for item in tree.scan_prefix([layout::AUDIT]) {
        let (key, value) = item?;
        let expected = prev.seq.saturating_add(1);
        let seq = audit_seq_of(&key).ok_or_else(|| {
            broken(
                expected,
                format!("undecodable audit key {}", layout::describe_key(&key)),
            )
        })?;
        if seq > head.seq {
            beyond_head = Some(seq);
            break;
        }
        if seq != expected {
            let reason = if seq > expected {
                format!("record missing (the next stored record is {seq})")
            } else {
                format!("unexpected record {seq} where {expected} belongs")
            };
            return Err(broken(expected, reason));
        }
        let record =
            decode_record(seq, &value).map_err(|e| broken(seq, format!("undecodable: {e}")))?;
        audit_chain_links(&prev, &record).map_err(|reason| broken(seq, reason))?;
        if expect.is_some_and(|e| e.seq == seq && e.hash != record.hash) {
            return Err(broken(
                seq,
                "the record's hash differs from the expected head",
            ));
        }
        prev = AuditHead {
            seq,
            hash: record.hash,
        };
        records = records.saturating_add(1);
    }
    if let Some(reason) = damaged {
        return Err(broken(
            prev.seq,
            format!(
                "the meta head is damaged ({reason}); the records link up to seq {}",
                prev.seq
            ),
        ));
    }
    if prev.seq < head.seq {
        return Err(broken(
            prev.seq.saturating_add(1),
            format!(
                "record missing: the chain ends at {} but the meta head is {}",
                prev.seq, head.seq
            ),
        ));
    }
    if prev.hash != head.hash {
        return Err(broken(
            head.seq,
            "last record's hash differs from the meta head",
        ));
    }
    if let Some(e) = expect.filter(|e| e.seq > head.seq) {
        return Err(broken(
            head.seq.saturating_add(1),
            format!(
                "record missing: the chain ends at {} before the expected head {} (the tail was cut off)",
                head.seq, e.seq
            ),
        ));
    }
    if let Some(seq) = beyond_head {
        // A concurrent commit moves the head; only a record beyond an unchanged head is foreign.
        if read_head(tree)? == head {
            return Err(broken(
                seq,
                format!("record beyond the meta head {}", head.seq),
            ));
        }
    }
    Ok(AuditReport { records, head })
}

fn audit_seq_of(key: &[u8]) -> Option<u64> {
    if key.len() == 1 + SEQ_LEN {
        layout::seq_of_key(key)
    } else {
        None
    }
}

fn broken(seq: u64, reason: impl Into<String>) -> StorageError {
    StorageError::ChainBroken {
        seq,
        reason: reason.into(),
    }
}

fn to_hash(bytes: &[u8]) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(bytes);
    out
}

/// Subjects are limited to `layout::AUDIT_SUBJECT_LEN_MAX` (u16) before they get here and
/// decoded subjects come from a u32, so saturating never changes a real length.
fn subject_len_u32(subject: &[u8]) -> u32 {
    u32::try_from(subject.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A record survives encode/decode unchanged, and links to its predecessor.
    #[test]
    fn record_round_trip_and_link() {
        let first = next_record(&AuditHead::EMPTY, b"o-1".to_vec(), b"created".to_vec());
        assert_eq!(first.seq, 1);
        assert_eq!(first.prev_hash, [0; 32]);
        assert_eq!(audit_chain_links(&AuditHead::EMPTY, &first), Ok(()));
        let decoded = decode_record(1, &encode_record(&first)).expect("decodes");
        assert_eq!(decoded, first);
        let head = AuditHead {
            seq: 1,
            hash: first.hash,
        };
        let second = next_record(&head, Vec::new(), Vec::new());
        assert_eq!(audit_chain_links(&head, &second), Ok(()));
        assert!(audit_chain_links(&AuditHead::EMPTY, &second).is_err());
    }

    // The hash covers seq, prev_hash, subject and payload, and the subject length separates
    // subject from payload (so "ab"+"c" and "a"+"bc" differ).
    #[test]
    fn hash_covers_every_field() {
        let base = chain_hash(1, &[0; 32], b"ab", b"c");
        assert_ne!(base, chain_hash(2, &[0; 32], b"ab", b"c"));
        assert_ne!(base, chain_hash(1, &[1; 32], b"ab", b"c"));
        assert_ne!(base, chain_hash(1, &[0; 32], b"a", b"bc"));
        assert_ne!(base, chain_hash(1, &[0; 32], b"ab", b"d"));
    }

    // Truncated or garbled values are Corrupt, never a panic.
    #[test]
    fn garbage_values_are_corrupt() {
        let good = encode_record(&next_record(
            &AuditHead::EMPTY,
            b"s".to_vec(),
            b"p".to_vec(),
        ));
        let mut wrong_version = good.clone();
        wrong_version[0] = 9;
        let mut long_subject = good.clone();
        long_subject[65..69].copy_from_slice(&u32::MAX.to_be_bytes());
        for bad in [&good[..10], &wrong_version[..], &long_subject[..], &[][..]] {
            assert!(matches!(
                decode_record(1, bad),
                Err(StorageError::Corrupt { .. })
            ));
        }
    }
}
