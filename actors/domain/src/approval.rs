//! Approval rules: when an order must wait for an approver of the same account.

use crate::account::{Account, Role};
use crate::catalog::Catalog;
use crate::grant::Grant;
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
    catalog: &Catalog,
    total: Money,
    ship_to: &ShipToId,
    ship_to_used_before: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(limit) = account.spending_limit(who.user, who.roles) {
        // `Account::check` keeps limits in the account's currency; a limit in another one
        // cannot be compared, so the order waits for an approver rather than pass unchecked.
        if limit.currency != total.currency {
            out.push(format!(
                "the spending limit {limit} is not in the order's currency {}",
                total.currency
            ));
        } else if total.amount > limit.amount {
            out.push(format!(
                "order total {total} is above the spending limit of {limit}"
            ));
        }
    }
    // A kit counts as restricted when it or one of its components is.
    let restricted_skus = &account.rules.restricted_skus;
    let restricted: Vec<&str> = lines
        .iter()
        .filter(|l| {
            restricted_skus.contains(&l.sku)
                || catalog
                    .get(&l.sku)
                    .is_some_and(|i| i.kit.iter().any(|c| restricted_skus.contains(&c.sku)))
        })
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
    // A placer the account removed since (their order judged again) has no limit of their own
    // left, so no limit may wave it through.
    if account.grant(who.user) == Some(Grant::Removed) {
        out.push(format!(
            "placed by {}, who is no longer a user of the account",
            who.user
        ));
    }
    out
}

/// Whether `approver` may approve an order of `total`: an approver of the account whose own
/// approval limit (if any) covers it. Who placed the order is checked where it is approved.
pub fn may_approve(
    account: &Account,
    approver: &UserId,
    roles: &BTreeSet<Role>,
    total: Money,
) -> bool {
    roles.contains(&Role::Approver)
        && account
            .approval_limit(approver)
            .is_none_or(|limit| limit.currency == total.currency && total.amount <= limit.amount)
}
