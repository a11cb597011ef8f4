//! Approval rules: when an order must wait for an approver of the same account.

use crate::account::{Account, Role};
use crate::ids::{ShipToId, UserId};
use crate::money::Money;
use crate::validation::PricedLine;
use std::collections::BTreeSet;

/// Who submits, and what the account knows of its past orders.
pub struct Submitter<'a> {
    pub user: &'a UserId,
    pub roles: &'a BTreeSet<Role>,
}

/// Reasons the order needs approval; empty means it goes straight to Confirmed.
pub fn reasons(
    account: &Account,
    who: &Submitter<'_>,
    lines: &[PricedLine],
    total: Money,
    ship_to: &ShipToId,
    ship_to_used_before: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(limit) = account.spending_limit(who.user, who.roles) {
        if total.amount > limit.amount {
            out.push(format!(
                "order total {total} is above the spending limit of {limit}"
            ));
        }
    }
    let restricted: Vec<&str> = lines
        .iter()
        .filter(|l| account.rules.restricted_skus.contains(&l.sku))
        .map(|l| l.sku.as_str())
        .collect();
    if !restricted.is_empty() {
        out.push(format!(
            "restricted items need approval: {}",
            restricted.join(", ")
        ));
    }
    if account.rules.approve_new_ship_to && !ship_to_used_before {
        out.push(format!("first order to ship-to {ship_to}"));
    }
    out
}

/// Whether `approver` may approve an order of `total`: an approver of the account whose own
/// spending limit (if any) covers it.
pub fn may_approve(
    account: &Account,
    approver: &UserId,
    roles: &BTreeSet<Role>,
    total: Money,
) -> bool {
    roles.contains(&Role::Approver)
        && account
            .spending_limit(approver, &BTreeSet::from([Role::Approver]))
            .is_none_or(|limit| total.amount <= limit.amount)
}
