//! A customer account: who may order, where to, with which credit and approval rules.

use crate::geo::GeoPoint;
use crate::ids::{AccountId, Segment, ShipToId, Sku, UserId};
use crate::money::{Currency, Money};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Limits on account master data.
pub const SHIP_TOS_MAX: usize = 1_000;
pub const USERS_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Buyer,
    Approver,
    AccountAdmin,
    Warehouse,
    Operator,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Buyer,
        Role::Approver,
        Role::AccountAdmin,
        Role::Warehouse,
        Role::Operator,
    ];

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s.trim())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Approver => "approver",
            Role::AccountAdmin => "account_admin",
            Role::Warehouse => "warehouse",
            Role::Operator => "operator",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShipTo {
    pub id: ShipToId,
    pub address: String,
    pub location: GeoPoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub roles: BTreeSet<Role>,
    /// Orders above this total need approval (also the most this user may approve).
    pub spending_limit: Option<Money>,
}

/// When an order needs an approver before it is confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ApprovalRules {
    /// Spending limit per role for users without their own.
    pub role_limits: BTreeMap<Role, Money>,
    /// Any order containing one of these needs approval.
    pub restricted_skus: BTreeSet<Sku>,
    /// The first order to a ship-to needs approval.
    pub approve_new_ship_to: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub segment: Segment,
    pub currency: Currency,
    pub credit_limit: Money,
    pub open_receivables: Money,
    /// e.g. "NET30".
    pub payment_terms: String,
    pub ship_tos: Vec<ShipTo>,
    pub users: Vec<User>,
    pub rules: ApprovalRules,
}

impl Account {
    pub fn ship_to(&self, id: &ShipToId) -> Option<&ShipTo> {
        self.ship_tos.iter().find(|s| &s.id == id)
    }

    pub fn user(&self, id: &UserId) -> Option<&User> {
        self.users.iter().find(|u| &u.id == id)
    }

    /// The spending limit of a user acting with `roles`: their own, else the highest of their
    /// roles' limits, else none (unlimited).
    pub fn spending_limit(&self, user: &UserId, roles: &BTreeSet<Role>) -> Option<Money> {
        if let Some(limit) = self.user(user).and_then(|u| u.spending_limit) {
            return Some(limit);
        }
        roles
            .iter()
            .filter_map(|r| self.rules.role_limits.get(r).copied())
            .max_by(|a, b| a.amount.cmp(&b.amount))
    }

    /// Checks the account's own consistency; every problem is listed.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.name.trim().is_empty() {
            errs.push("name is empty".to_owned());
        }
        for m in [self.credit_limit, self.open_receivables] {
            if m.currency != self.currency {
                errs.push(format!(
                    "{m} is not in the account currency {}",
                    self.currency
                ));
            }
        }
        if self.ship_tos.len() > SHIP_TOS_MAX {
            errs.push(format!("more than {SHIP_TOS_MAX} ship-tos"));
        }
        if self.users.len() > USERS_MAX {
            errs.push(format!("more than {USERS_MAX} users"));
        }
        let unique: BTreeSet<_> = self.ship_tos.iter().map(|s| &s.id).collect();
        if unique.len() != self.ship_tos.len() {
            errs.push("duplicate ship-to id".to_owned());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}
