//! A customer account: who may order, where to, with which credit and approval rules.

use crate::geo::GeoPoint;
use crate::grant::Grant;
use crate::ids::{AccountId, Segment, ShipToId, Sku, UserId};
use crate::money::{Currency, Money};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Limits on account master data.
pub const SHIP_TOS_MAX: usize = 1_000;
pub const USERS_MAX: usize = 10_000;
/// Most SKUs an account's approval rules restrict.
pub const RESTRICTED_SKUS_MAX: usize = 10_000;
/// Removed users an account remembers (see [`Account::removed_users`]).
pub const REMOVED_USERS_MAX: usize = 10_000;
/// Longest user name.
pub const USER_NAME_LEN_MAX: usize = 200;
/// Longest account name, in characters.
pub const ACCOUNT_NAME_LEN_MAX: usize = 200;
/// Longest payment terms (`NET30`, ...), in characters.
pub const PAYMENT_TERMS_LEN_MAX: usize = 64;
/// Longest ship-to address, in characters.
pub const ADDRESS_LEN_MAX: usize = 500;
/// Roles an account admin may grant: those that act inside the account.
pub const ACCOUNT_ROLES: [Role; 3] = [Role::Buyer, Role::Approver, Role::AccountAdmin];

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
    /// The ship-tos this user may order to; empty means all of the account's.
    #[serde(default)]
    pub ship_tos: BTreeSet<ShipToId>,
}

impl User {
    /// Whether this user may order to `ship_to` (no assignment means every ship-to).
    pub fn may_ship_to(&self, ship_to: &ShipToId) -> bool {
        self.ship_tos.is_empty() || self.ship_tos.contains(ship_to)
    }
}

/// Why an account admin's change of a user is refused: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFieldError {
    pub field: &'static str,
    pub message: String,
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
    /// Users whose record an account admin removed (tombstones): their tokens act with no
    /// account role until a record with their id is created again. Never an id of `users`.
    #[serde(default)]
    pub removed_users: BTreeSet<UserId>,
}

impl Account {
    pub fn ship_to(&self, id: &ShipToId) -> Option<&ShipTo> {
        self.ship_tos.iter().find(|s| &s.id == id)
    }

    pub fn user(&self, id: &UserId) -> Option<&User> {
        self.users.iter().find(|u| &u.id == id)
    }

    /// What the account's records grant `user` (see [`crate::grant`]): `None` when the account
    /// never had a record for them.
    pub fn grant(&self, user: &UserId) -> Option<Grant> {
        match self.user(user) {
            Some(u) => Some(Grant::Roles(u.roles.clone())),
            None => self.removed_users.contains(user).then_some(Grant::Removed),
        }
    }

    /// Creates or replaces the record of `user.id` (a removed user is created again).
    pub fn put_user(&mut self, user: User) {
        self.removed_users.remove(&user.id);
        match self.users.iter_mut().find(|u| u.id == user.id) {
            Some(slot) => *slot = user,
            None => self.users.push(user),
        }
    }

    /// Removes the record of `user` and remembers the removal, so the user's tokens no longer
    /// act for the account. `false` when there is no such record.
    pub fn remove_user(&mut self, user: &UserId) -> bool {
        let before = self.users.len();
        self.users.retain(|u| &u.id != user);
        if self.users.len() == before {
            return false;
        }
        self.removed_users.insert(user.clone());
        true
    }

    /// For a replacement of the account's master data (an import): keeps the removals of
    /// `before`, and counts a user `before` had and this record lacks as removed, so replacing
    /// an account can never give a removed user their access back. A user this record has is
    /// not removed.
    pub fn keep_removals_of(&mut self, before: &Account) {
        let present: BTreeSet<&UserId> = self.users.iter().map(|u| &u.id).collect();
        let dropped = before.users.iter().map(|u| &u.id);
        let removed = before.removed_users.iter().chain(dropped);
        self.removed_users
            .extend(removed.filter(|id| !present.contains(id)).cloned());
        self.removed_users.retain(|id| !present.contains(id));
    }

    /// Whether `user` may order to `ship_to`: a user without a record, or without assigned
    /// ship-tos, may order to every ship-to of the account.
    pub fn may_ship_to(&self, user: &UserId, ship_to: &ShipToId) -> bool {
        self.user(user).is_none_or(|u| u.may_ship_to(ship_to))
    }

    /// Checks a user record an account admin wants to store; every bad field is listed.
    /// Only the account's own roles may be granted, the spending limit is in the account's
    /// currency, and assigned ship-tos must be the account's.
    pub fn check_user(&self, user: &User) -> Vec<UserFieldError> {
        let mut errs = self.check_user_record(user);
        if let Some(s) = user.ship_tos.iter().find(|s| self.ship_to(s).is_none()) {
            errs.push(UserFieldError {
                field: "ship_tos",
                message: format!("ship-to {s} is not one of this account's locations"),
            });
        }
        errs
    }

    /// [`Account::check_user`] without the ship-tos' membership, which [`Account::check`]
    /// checks for every user.
    pub fn check_user_record(&self, user: &User) -> Vec<UserFieldError> {
        let mut errs = Vec::new();
        let mut bad = |field, message: String| errs.push(UserFieldError { field, message });
        let name = user.name.trim();
        if name.is_empty() || name.chars().count() > USER_NAME_LEN_MAX {
            bad(
                "name",
                format!("a name is 1 to {USER_NAME_LEN_MAX} characters"),
            );
        }
        if user.roles.is_empty() {
            bad("roles", "a user needs at least one role".to_owned());
        }
        if let Some(r) = user.roles.iter().find(|r| !ACCOUNT_ROLES.contains(r)) {
            bad(
                "roles",
                format!(
                    "an account admin may grant buyer, approver and account_admin, not {}",
                    r.as_str()
                ),
            );
        }
        if let Some(m) = user.spending_limit {
            if m.currency != self.currency {
                bad(
                    "spending_limit",
                    format!("{m} is not in the account currency {}", self.currency),
                );
            }
        }
        if user.ship_tos.len() > SHIP_TOS_MAX {
            bad("ship_tos", format!("at most {SHIP_TOS_MAX} ship-tos"));
        }
        errs
    }

    /// The spending limit of a user placing an order while acting with `roles`: their own, else
    /// the highest limit among those roles that have one, else the buyer role's (placing an
    /// order is buying, whatever role the caller signed in with: an account admin or approver
    /// without a limit of their role does not order without one), else none (unlimited).
    pub fn spending_limit(&self, user: &UserId, roles: &BTreeSet<Role>) -> Option<Money> {
        if let Some(limit) = self.user(user).and_then(|u| u.spending_limit) {
            return Some(limit);
        }
        roles
            .iter()
            .filter_map(|r| self.rules.role_limits.get(r).copied())
            .max_by(|a, b| a.amount.cmp(&b.amount))
            .or_else(|| self.rules.role_limits.get(&Role::Buyer).copied())
    }

    /// The most a user may approve: their own spending limit, else the approver role's, else
    /// none (any total).
    pub fn approval_limit(&self, user: &UserId) -> Option<Money> {
        self.user(user)
            .and_then(|u| u.spending_limit)
            .or_else(|| self.rules.role_limits.get(&Role::Approver).copied())
    }

    /// Checks the account's own consistency; every problem is listed. Of its users only the
    /// ship-tos they name are checked here; each new or changed user also gets
    /// [`Account::check_user_record`] where it is written.
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
        // Approval compares an order's total with these limits: every one must be in the
        // account's currency, also after the currency changed (an import that changes it must
        // set the role limits again, and users' own limits must be cleared or set first).
        for (role, m) in &self.rules.role_limits {
            if m.currency != self.currency {
                errs.push(format!(
                    "the {} limit {m} is not in the account currency {}",
                    role.as_str(),
                    self.currency
                ));
            }
        }
        for u in &self.users {
            if let Some(m) = u.spending_limit.filter(|m| m.currency != self.currency) {
                errs.push(format!(
                    "user {}'s spending limit {m} is not in the account currency {}",
                    u.id, self.currency
                ));
            }
        }
        if self.ship_tos.len() > SHIP_TOS_MAX {
            errs.push(format!("more than {SHIP_TOS_MAX} ship-tos"));
        }
        if self.users.len() > USERS_MAX {
            errs.push(format!("more than {USERS_MAX} users"));
        }
        if self.rules.restricted_skus.len() > RESTRICTED_SKUS_MAX {
            errs.push(format!("more than {RESTRICTED_SKUS_MAX} restricted SKUs"));
        }
        if self.removed_users.len() > REMOVED_USERS_MAX {
            errs.push(format!("more than {REMOVED_USERS_MAX} removed users"));
        }
        if let Some(u) = self
            .users
            .iter()
            .find(|u| self.removed_users.contains(&u.id))
        {
            errs.push(format!("user {} is both present and removed", u.id));
        }
        let unique: BTreeSet<_> = self.ship_tos.iter().map(|s| &s.id).collect();
        if unique.len() != self.ship_tos.len() {
            errs.push("duplicate ship-to id".to_owned());
        }
        for u in &self.users {
            if let Some(s) = u.ship_tos.iter().find(|s| !unique.contains(s)) {
                errs.push(format!("user {} is assigned unknown ship-to {s}", u.id));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}
