//! The audit record every change writes, in the same atomic batch as the change itself
//! (invariant 4). The record of an order change also carries the change's outbox event
//! ([`AuditEntry::event`]): the audit log is the outbox, read by publishers from their own
//! cursor. Audit payloads are JSON so `history` and `audit verify` can show them as they are;
//! the storage chains them by hash.

use orderd_domain::account::Role;
use orderd_domain::ids::{AccountId, UserId, WarehouseId};
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

    /// Whether this caller sees the orders `placed_by` placed. A caller who is only a buyer
    /// sees only their own orders; approvers and account admins see all of their account's,
    /// operators and warehouses those their routes reach.
    pub fn sees_order_of(&self, placed_by: &UserId) -> bool {
        self.placed_by_filter().is_none_or(|me| me == placed_by)
    }

    /// The user whose orders are all this caller may see, or `None` for every order.
    pub fn placed_by_filter(&self) -> Option<&UserId> {
        self.roles
            .iter()
            .all(|r| *r == Role::Buyer)
            .then_some(&self.user)
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    pub digest: String,
    /// What else the change concerns (the user an account admin changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The event this change announces (order changes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

    /// The draft for the journal, indexed under `subject` (an order id, `account:<id>`, ...).
    pub fn draft(&self, subject: &str) -> AuditDraft {
        AuditDraft {
            subject: subject.as_bytes().to_vec(),
            payload: serde_json::to_vec(self).expect("plain data always encodes"),
        }
    }
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
