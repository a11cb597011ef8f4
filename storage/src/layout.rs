//! The on-disk key layout of the journal.
//!
//! Everything lives in sled's default tree so that one `Tree::apply_batch` is atomic across user
//! data, audit records, the subject index and the meta keys (DESIGN invariant 4: a state change
//! and its audit record, which also carries its outbox event, are stored together or not at
//! all).
//! Separate sled trees would need a multi-tree transaction, which sled 0.34 does not batch as
//! cheaply. Every key therefore starts with a one-byte prefix:
//!
//! | prefix | key after the prefix                                   | value                        |
//! |--------|--------------------------------------------------------|------------------------------|
//! | `d`    | the caller's key, verbatim                             | the caller's value           |
//! | `a`    | audit seq, u64 big-endian                              | see [`crate::audit_chain`]   |
//! | `x`    | subject len u16 BE, subject, audit seq u64 BE          | empty (indexed records only) |
//! | `m`    | `audit_head`                                           | see [`META_AUDIT_HEAD`]      |
//!
//! Big-endian integers make sled's byte order equal to numeric order, so range scans return
//! records in seq order. This module is public so that offline tools (`orderd audit verify`) and
//! tamper tests can read and edit a journal directory with sled directly.

use crate::StorageError;

/// Prefix of user data keys (`Batch::put` / `Batch::remove`).
pub const DATA: u8 = b'd';
/// Prefix of audit records, keyed by seq.
pub const AUDIT: u8 = b'a';
/// Prefix of the audit subject index.
pub const SUBJECT_INDEX: u8 = b'x';
/// Prefix of meta keys.
pub const META: u8 = b'm';

/// Meta key of the audit chain head. Value: seq u64 BE (8 bytes) followed by the head hash (32
/// bytes). Absent means an empty chain (seq 0, zero hash).
pub const META_AUDIT_HEAD: &[u8] = b"maudit_head";
/// Length of an encoded [`META_AUDIT_HEAD`] value.
pub const AUDIT_HEAD_LEN: usize = SEQ_LEN + HASH_LEN;
/// Length of a big-endian seq.
pub const SEQ_LEN: usize = 8;
/// Length of a SHA-256 hash.
pub const HASH_LEN: usize = 32;
/// Longest audit subject: its length must fit the u16 of the subject index key.
pub const AUDIT_SUBJECT_LEN_MAX: usize = u16::MAX as usize;

/// The key of a user data entry.
pub fn data_key(user_key: &[u8]) -> Vec<u8> {
    prefixed(DATA, user_key)
}

/// The key of the audit record `seq`.
pub fn audit_key(seq: u64) -> [u8; 1 + SEQ_LEN] {
    seq_key(AUDIT, seq)
}

/// The prefix under which every index entry of `subject` lives.
///
/// Fails with `StorageError::Invalid` when the subject is longer than [`AUDIT_SUBJECT_LEN_MAX`].
pub fn subject_index_prefix(subject: &[u8]) -> Result<Vec<u8>, StorageError> {
    let len = u16::try_from(subject.len()).map_err(|_| StorageError::Invalid {
        reason: format!(
            "audit subject is {} bytes, at most {AUDIT_SUBJECT_LEN_MAX} allowed",
            subject.len()
        ),
    })?;
    let mut key = Vec::with_capacity(1 + 2 + subject.len() + SEQ_LEN);
    key.push(SUBJECT_INDEX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(subject);
    Ok(key)
}

/// The index key that points `subject` at audit record `seq`.
pub fn subject_index_key(subject: &[u8], seq: u64) -> Result<Vec<u8>, StorageError> {
    let mut key = subject_index_prefix(subject)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

/// Splits a value written with `Batch::put_stamped` into the caller's value and the seq of its
/// batch's first audit record. `None` when the value is too short to carry a stamp.
pub fn split_stamp(value: &[u8]) -> Option<(&[u8], u64)> {
    let at = value.len().checked_sub(SEQ_LEN)?;
    let (value, stamp) = value.split_at(at);
    Some((value, u64::from_be_bytes(stamp.try_into().ok()?)))
}

/// Reads the seq from a key made by [`audit_key`] or [`subject_index_key`] (the seq is always
/// the last 8 bytes). `None` when the key is too short.
pub fn seq_of_key(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(SEQ_LEN)?;
    let bytes: [u8; SEQ_LEN] = key.get(start..)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Encodes the value of [`META_AUDIT_HEAD`].
pub fn encode_audit_head(seq: u64, hash: &[u8; HASH_LEN]) -> [u8; AUDIT_HEAD_LEN] {
    let mut out = [0u8; AUDIT_HEAD_LEN];
    out[..SEQ_LEN].copy_from_slice(&seq.to_be_bytes());
    out[SEQ_LEN..].copy_from_slice(hash);
    out
}

/// Decodes the value of [`META_AUDIT_HEAD`].
pub fn decode_audit_head(value: &[u8]) -> Result<(u64, [u8; HASH_LEN]), StorageError> {
    let corrupt = || {
        StorageError::corrupt(
            META_AUDIT_HEAD,
            format!("expected {AUDIT_HEAD_LEN} bytes, found {}", value.len()),
        )
    };
    let seq: [u8; SEQ_LEN] = value
        .get(..SEQ_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    let hash: [u8; HASH_LEN] = value
        .get(SEQ_LEN..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    Ok((u64::from_be_bytes(seq), hash))
}

/// The exclusive upper bound of every key with `prefix` (prefixes are single bytes below 0xff).
pub(crate) fn prefix_end(prefix: u8) -> [u8; 1] {
    [prefix.saturating_add(1)]
}

/// The smallest key above every key that starts with `prefix`: the prefix with its last byte
/// below 0xff incremented and the rest dropped. `prefix` is a data key, so its first byte is
/// [`DATA`] and there always is one.
pub(crate) fn prefix_successor(prefix: &[u8]) -> Vec<u8> {
    let at = prefix
        .iter()
        .rposition(|b| *b < u8::MAX)
        .expect("a data key starts with a byte below 0xff");
    let mut end = prefix[..=at].to_vec();
    end[at] += 1;
    end
}

/// A printable form of a raw key for error messages.
pub(crate) fn describe_key(key: &[u8]) -> String {
    key.iter()
        .map(|b| {
            if b.is_ascii_graphic() {
                char::from(*b).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(prefix);
    key.extend_from_slice(rest);
    key
}

pub(crate) fn seq_key(prefix: u8, seq: u64) -> [u8; 1 + SEQ_LEN] {
    let mut key = [0u8; 1 + SEQ_LEN];
    key[0] = prefix;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    // Big-endian seq keys must sort like the numbers, or range scans would return records out
    // of seq order.
    #[test]
    fn seq_keys_sort_numerically() {
        let seqs = [1u64, 2, 255, 256, 65_536, u64::MAX];
        for pair in seqs.windows(2) {
            assert!(audit_key(pair[0]) < audit_key(pair[1]));
        }
        assert_eq!(seq_of_key(&audit_key(256)), Some(256));
        assert_eq!(seq_of_key(b"short"), None);
    }

    // The successor of a prefix is above every key with it and below every greater key.
    #[test]
    fn prefix_successor_bounds_the_prefix() {
        assert_eq!(prefix_successor(b"dord/A/"), b"dord/A0");
        assert_eq!(prefix_successor(b"da\xff\xff"), b"db");
        let end = prefix_successor(b"dord/A/");
        assert!(b"dord/A/zzzz".as_slice() < end.as_slice());
        assert!(end.as_slice() <= b"dord/A0".as_slice());
    }

    // A subject longer than the u16 length field is refused instead of being truncated.
    #[test]
    fn oversized_subject_is_refused() {
        let subject = vec![b's'; AUDIT_SUBJECT_LEN_MAX + 1];
        assert!(matches!(
            subject_index_key(&subject, 1),
            Err(StorageError::Invalid { .. })
        ));
        let key = subject_index_key(b"o-1", 7).expect("short subject fits");
        assert_eq!(key, [&b"x\x00\x03o-1"[..], &7u64.to_be_bytes()].concat());
    }

    // Meta values of the wrong length are corruption, not a panic.
    #[test]
    fn bad_meta_values_are_corrupt() {
        assert!(matches!(
            decode_audit_head(&[0; 39]),
            Err(StorageError::Corrupt { .. })
        ));
        let head = encode_audit_head(9, &[7; HASH_LEN]);
        assert_eq!(
            decode_audit_head(&head).expect("round trip"),
            (9, [7; HASH_LEN])
        );
    }
}
