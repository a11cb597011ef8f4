//! The invariants of DESIGN.md that plain data can show, as named pure functions. Production
//! code calls them in `debug_assert!`; tests and the chaos harness call them directly.

use crate::account::Account;
use crate::credit;
use crate::order::{Order, OrderState};
use crate::warehouse::Stock;
use std::collections::BTreeMap;

/// Invariant 2: no SKU has more reserved + allocated than on hand, and the per-order holdings
/// add up to the per-SKU totals.
pub fn stock_is_conserved(stock: &Stock) -> Result<(), String> {
    let mut reserved: BTreeMap<_, u64> = BTreeMap::new();
    let mut allocated: BTreeMap<_, u64> = BTreeMap::new();
    for (_, h) in stock.holdings() {
        for (sku, q) in &h.reserved {
            *reserved.entry(sku.clone()).or_default() += q;
        }
        for (sku, q) in &h.allocated {
            *allocated.entry(sku.clone()).or_default() += q;
        }
    }
    for (sku, level) in stock.levels() {
        if level.reserved + level.allocated > level.on_hand {
            return Err(format!(
                "{sku}: reserved {} + allocated {} > on hand {}",
                level.reserved, level.allocated, level.on_hand
            ));
        }
        let (r, a) = (
            reserved.remove(sku).unwrap_or(0),
            allocated.remove(sku).unwrap_or(0),
        );
        if (r, a) != (level.reserved, level.allocated) {
            return Err(format!(
                "{sku}: holdings ({r}, {a}) differ from totals ({}, {})",
                level.reserved, level.allocated
            ));
        }
    }
    match reserved.into_iter().chain(allocated).find(|(_, q)| *q > 0) {
        Some((sku, q)) => Err(format!("{sku}: {q} held by orders but no stock level")),
        None => Ok(()),
    }
}

/// Invariant 3: the account's exposure (receivables + open orders) is within its credit limit.
/// Holds after every step that accepts an order; an operator may still lower the limit or raise
/// receivables later, after which no new order is accepted until exposure is back below it.
pub fn credit_within_limit(account: &Account, orders: &[&Order]) -> Result<(), String> {
    let exposure = credit::exposure(account.open_receivables, orders.iter().copied())
        .map_err(|e| e.to_string())?;
    if exposure.amount > account.credit_limit.amount {
        return Err(format!(
            "{}: exposure {exposure} above limit {}",
            account.id, account.credit_limit
        ));
    }
    Ok(())
}

/// Invariant 8 for a recorded history: each consecutive pair of states is an allowed move.
pub fn states_follow_machine(history: &[OrderState]) -> Result<(), String> {
    for w in history.windows(2) {
        if w[0] != w[1] && !w[0].can_become(w[1]) {
            return Err(format!("illegal transition {:?} -> {:?}", w[0], w[1]));
        }
    }
    Ok(())
}
