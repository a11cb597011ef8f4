//! Credit exposure (invariant 3): open receivables plus the value of orders awaiting approval,
//! confirmed or allocated and not yet shipped. Recomputed from the orders, never accumulated.

use crate::money::{Money, MoneyError};
use crate::order::Order;
use crate::validation::{CreditFigures, Problem, ProblemCode};

/// Exposure of an account with `receivables` and these orders.
pub fn exposure<'a>(
    receivables: Money,
    orders: impl IntoIterator<Item = &'a Order>,
) -> Result<Money, MoneyError> {
    orders
        .into_iter()
        .try_fold(receivables, |acc, o| acc.checked_add(o.exposure()?))
}

/// A problem when `exposure + amount` would exceed `limit`.
pub fn check(limit: Money, exposure: Money, amount: Money) -> Option<Problem> {
    // Entered amounts are bounded (`AMOUNT_MAX`), so this sum fits; one that did not would be
    // above any limit.
    let after = exposure.amount.checked_add(amount.amount);
    debug_assert!(after.is_some(), "exposure {exposure} + {amount} overflows");
    let after = after.unwrap_or(rust_decimal::Decimal::MAX);
    if after <= limit.amount {
        return None;
    }
    let mut p = Problem::new(
        ProblemCode::CreditLimitExceeded,
        format!(
            "this order of {amount} would bring exposure to {after} {cur}, above the credit limit of {limit} (current exposure {exposure})",
            cur = limit.currency
        ),
    );
    p.credit = Some(CreditFigures {
        limit,
        exposure,
        order_amount: amount,
    });
    Some(p)
}
