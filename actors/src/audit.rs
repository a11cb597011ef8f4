//! The audit record every change writes, in the same atomic batch as the change itself
//! (invariant 4). The record of an order change also carries the change's outbox event
//! ([`AuditEntry::event`]): the audit log is the outbox, read by publishers from their own
//! cursor. The storage chains the payloads by hash.
//!
//! A payload is one tag byte, [`COMPACT_ENTRY`], then the entry in postcard (compact binary):
//! every payload byte is written and flushed on the capture path, and JSON spent three times as
//! many (field names, quoted numbers) on an order's lines. Journals written before that hold
//! JSON payloads (a JSON object starts with `{`); [`AuditEntry::decode`] reads both, and
//! `history` shows either as JSON.

use orderd_domain::account::Role;
use orderd_domain::ids::{AccountId, OrderId, UserId, WarehouseId};
use orderd_storage::AuditDraft;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// Who is acting, from where: taken from the verified token and the connection, never from
/// the request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The account the token speaks for; `None` only for operators and warehouses.
    pub account: Option<AccountId>,
    pub user: UserId,
    pub roles: BTreeSet<Role>,
    /// For the warehouse role: the warehouse the token speaks for.
    pub warehouse: Option<WarehouseId>,
    /// Client IP (socket peer, or X-Forwarded-For from a trusted proxy).
    pub ip: String,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether this caller sees the orders `placed_by` placed. A buyer sees only their own
    /// orders, unless they are also an approver or account admin, who see all of their
    /// account's; an operator sees those its routes reach. The warehouse role lifts nothing
    /// here: a warehouse reaches an order only through its stock (`ship`), so a buyer who also
    /// ships for a warehouse still sees only their own orders on the account's routes.
    pub fn sees_order_of(&self, placed_by: &UserId) -> bool {
        self.placed_by_filter().is_none_or(|me| me == placed_by)
    }

    /// The user whose orders are all this caller may see, or `None` for every order.
    pub fn placed_by_filter(&self) -> Option<&UserId> {
        let sees_all = [Role::Approver, Role::AccountAdmin, Role::Operator];
        (self.has(Role::Buyer) && !sees_all.iter().any(|r| self.has(*r))).then_some(&self.user)
    }

    /// A caller for work orderd does on its own (demo seeding, recovery).
    pub fn system() -> Caller {
        Caller {
            account: None,
            user: UserId::parse("orderd").expect("valid id"),
            roles: BTreeSet::from([Role::Operator]),
            warehouse: None,
            ip: "local".into(),
        }
    }
}

/// One audit log entry. `digest` is the SHA-256 of the record as stored after the change.
///
/// No field is skipped when empty: postcard is not self-describing, so every field is always
/// written (`default` only fills fields missing from the older JSON payloads). For the same
/// reason the compact form cannot evolve in place: adding, removing or reordering a field here
/// or in any type it holds (the event, its lines, money, allocations), or reordering an enum's
/// variants, misreads every stored record, and the hash chain forbids rewriting them. Such a
/// change needs a new tag byte, with the old layout kept to read the old tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub ts: String,
    pub user: String,
    pub roles: Vec<String>,
    pub ip: String,
    pub account: Option<String>,
    pub action: String,
    pub order: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Every state the order moved through, in order, ending with `to` (one request may make
    /// several moves, e.g. pending_approval -> confirmed -> allocated). Empty when the state
    /// did not change. With `from`, each step is one move of the state machine (invariant 8).
    #[serde(default)]
    pub path: Vec<String>,
    pub digest: String,
    /// What else the change concerns (the user an account admin changed).
    #[serde(default)]
    pub target: Option<String>,
    /// The event this change announces (order changes only).
    #[serde(default)]
    pub event: Option<crate::events::OrderChanged>,
}

impl AuditEntry {
    pub fn new(
        caller: &Caller,
        account: Option<&AccountId>,
        action: &str,
        changed: &[u8],
    ) -> AuditEntry {
        AuditEntry {
            ts: now_rfc3339(),
            user: caller.user.to_string(),
            roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            ip: caller.ip.clone(),
            account: account.map(|a| a.to_string()),
            action: action.to_owned(),
            order: None,
            from: None,
            to: None,
            path: vec![],
            digest: hex::encode(Sha256::digest(changed)),
            target: None,
            event: None,
        }
    }

    /// The draft for the journal, indexed under `subject` (`account:<id>`, `cart:<id>`, ...).
    pub fn draft(&self, subject: &str) -> AuditDraft {
        let payload = vec![COMPACT_ENTRY];
        // postcard only fails for types serde cannot represent; an entry is plain data.
        let payload = postcard::to_extend(self, payload).expect("plain data always encodes");
        AuditDraft {
            subject: subject.as_bytes().to_vec(),
            payload,
            indexed: true,
        }
    }

    /// The draft of an order change: about the order, not indexed. Its order record names it
    /// (`records::encode_order`), which costs no extra key.
    pub fn order_draft(&self, order: &OrderId) -> AuditDraft {
        AuditDraft {
            indexed: false,
            ..self.draft(order.as_str())
        }
    }

    /// Reads a stored payload: compact (tagged [`COMPACT_ENTRY`]) or the JSON of older
    /// journals. Fails for anything else: only a damaged or edited store has such a record.
    pub fn decode(payload: &[u8]) -> Result<AuditEntry, NotAnEntry> {
        match payload.split_first() {
            Some((&COMPACT_ENTRY, rest)) => match postcard::take_from_bytes(rest) {
                Ok((entry, [])) => Ok(entry),
                Ok((_, extra)) => Err(NotAnEntry {
                    reason: format!("{} bytes after the compact entry", extra.len()),
                }),
                Err(e) => Err(NotAnEntry {
                    reason: format!("compact entry does not decode: {e}"),
                }),
            },
            Some((b'{', _)) => serde_json::from_slice(payload).map_err(|e| NotAnEntry {
                reason: format!("JSON entry does not parse: {e}"),
            }),
            Some((tag, _)) => Err(NotAnEntry {
                reason: format!("unknown format tag 0x{tag:02x}"),
            }),
            None => Err(NotAnEntry {
                reason: "empty payload".into(),
            }),
        }
    }
}

/// The entry of audit record `seq`, one of the records order `order` names as its changes: a
/// missing or undecodable one is a broken invariant (the order and its record were one write).
/// Blocking (reads sled).
pub fn order_entry(
    journal: &orderd_storage::Journal,
    order: &OrderId,
    seq: u64,
) -> Result<AuditEntry, crate::ActorError> {
    use crate::ActorError::Invariant;
    let record = journal
        .audit_record(seq)?
        .ok_or_else(|| Invariant(format!("order {order} names missing audit record {seq}")))?;
    AuditEntry::decode(&record.payload).map_err(|e| Invariant(format!("audit record {seq}: {e}")))
}

/// The tag byte of a compact (postcard) audit payload. JSON payloads of older journals start
/// with `{`, so the two never mix up.
pub const COMPACT_ENTRY: u8 = 0x01;

/// An audit payload that is not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit payload is not an entry: {reason}")]
pub struct NotAnEntry {
    pub reason: String,
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn today() -> orderd_domain::date::Date {
    let d = time::OffsetDateTime::now_utc().date();
    // `time` dates are always valid calendar dates within 1..=9999 for "now".
    orderd_domain::date::Date::new(
        u16::try_from(d.year()).unwrap_or(1970),
        u8::from(d.month()),
        d.day(),
    )
    .expect("today is a valid date")
}
