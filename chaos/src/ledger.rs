//! The acknowledged set: what the load clients were told, and the pure checks of what must
//! therefore hold after a crash (DESIGN invariant 1: an acknowledged order is never lost).
//!
//! An order is tracked from its 201. Each later change (approve, cancel, ship) is tracked from
//! the moment it is sent: until its answer arrives the order may be in the state before it or
//! after it, never anything in between.

use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;

/// A change a load client makes to one of its orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Approve,
    /// Reject the whole order (it waits for approval).
    Reject,
    Cancel,
    /// Ship what the named warehouse holds for the order.
    Ship(String),
}

impl Op {
    /// The path suffix after `/v1/orders/{id}/`.
    pub fn action(&self) -> &'static str {
        match self {
            Op::Approve => "approve",
            Op::Reject => "reject",
            Op::Cancel => "cancel",
            Op::Ship(_) => "ship",
        }
    }

    /// States an order may be in once this change applied. Shipping one of several
    /// warehouses leaves the order allocated.
    pub fn targets(&self) -> &'static [&'static str] {
        match self {
            Op::Approve => &["allocated", "rejected"],
            Op::Reject => &["rejected"],
            Op::Cancel => &["cancelled"],
            Op::Ship(_) => &["shipped", "allocated"],
        }
    }

    /// Whether `after` shows this change fully applied to an order that was `before`.
    pub fn applied(&self, before: &Seen, after: &Seen) -> bool {
        let moved =
            after.version > before.version && self.targets().contains(&after.state.as_str());
        match self {
            Op::Ship(w) => moved && !after.unshipped.contains(w),
            Op::Approve | Op::Reject | Op::Cancel => moved,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Ship(w) => write!(f, "ship from {w}"),
            other => f.write_str(other.action()),
        }
    }
}

/// The facts of an order that the checks compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub state: String,
    pub version: u64,
    /// Warehouses still holding unshipped allocations of open lines.
    pub unshipped: BTreeSet<String>,
}

impl Seen {
    /// Reads an order as the API returns it; `None` when fields are missing.
    pub fn from_order(order: &Value) -> Option<Seen> {
        let state = order.get("state")?.as_str()?.to_owned();
        let version = order.get("version")?.as_u64()?;
        let mut unshipped = BTreeSet::new();
        for line in order.get("lines")?.as_array()? {
            if line.get("status").and_then(Value::as_str) != Some("open") {
                continue;
            }
            for a in line.get("allocations")?.as_array()? {
                if a.get("shipped").and_then(Value::as_bool) == Some(false) {
                    unshipped.insert(a.get("warehouse")?.as_str()?.to_owned());
                }
            }
        }
        Some(Seen {
            state,
            version,
            unshipped,
        })
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}", self.state, self.version)
    }
}

/// A placement, kept so that it can be sent again with the same key and body.
#[derive(Debug, Clone)]
pub struct Placement {
    pub key: String,
    pub body: Value,
    /// Index of the token that sent it (see `load::Worker`).
    pub user: usize,
}

/// One acknowledged order.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// What the last acknowledged answer said.
    pub acked: Seen,
    /// A change sent after that answer whose own answer never came.
    pub pending: Option<Op>,
    /// How it was placed (for the replay check).
    pub placement: Placement,
}

/// Checks one acknowledged order against what the restarted daemon returns for it.
pub fn check_survivor(id: &str, t: &Tracked, found: Option<&Seen>) -> Result<(), String> {
    let Some(found) = found else {
        return Err(format!(
            "acknowledged order {id} ({}) is lost after the restart",
            t.acked
        ));
    };
    if *found == t.acked {
        return Ok(());
    }
    match &t.pending {
        None => Err(format!(
            "order {id}: acknowledged as {}, found {} although nothing else was sent for it",
            t.acked, found
        )),
        Some(op) if op.applied(&t.acked, found) => Ok(()),
        Some(op) => Err(format!(
            "order {id}: '{op}' was in flight on {}, found {}: neither before nor after it",
            t.acked, found
        )),
    }
}

/// Checks the answer to a change: it must show the change applied.
pub fn check_ack(id: &str, op: &Op, before: &Seen, after: &Seen) -> Result<(), String> {
    if op.applied(before, after) {
        Ok(())
    } else {
        Err(format!(
            "order {id}: '{op}' on {before} was acknowledged as {after}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seen(state: &str, version: u64, unshipped: &[&str]) -> Seen {
        Seen {
            state: state.into(),
            version,
            unshipped: unshipped.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn tracked(acked: Seen, pending: Option<Op>) -> Tracked {
        Tracked {
            acked,
            pending,
            placement: Placement {
                key: "k".into(),
                body: json!({}),
                user: 0,
            },
        }
    }

    // Orders parse from the API's JSON; rejected lines and shipped allocations hold nothing.
    #[test]
    fn seen_reads_the_api_shape() {
        let order = json!({"state":"allocated","version":3,"lines":[
            {"status":"open","allocations":[{"warehouse":"BER","qty":1,"shipped":false},
                                            {"warehouse":"MUC","qty":1,"shipped":true}]},
            {"status":"rejected","allocations":[{"warehouse":"HAM","qty":1,"shipped":false}]}]});
        assert_eq!(
            Seen::from_order(&order),
            Some(seen("allocated", 3, &["BER"]))
        );
        assert_eq!(Seen::from_order(&json!({"state":"x"})), None);
    }

    // Without a later request the order must be exactly as acknowledged; with one, exactly
    // before or fully after it.
    #[test]
    fn survivors_are_checked_exactly() {
        let acked = seen("allocated", 1, &["BER"]);
        let quiet = tracked(acked.clone(), None);
        assert!(check_survivor("o", &quiet, Some(&acked)).is_ok());
        assert!(check_survivor("o", &quiet, None).is_err());
        assert!(check_survivor("o", &quiet, Some(&seen("allocated", 2, &["BER"]))).is_err());
        assert!(check_survivor("o", &quiet, Some(&seen("cancelled", 2, &[]))).is_err());

        let cancelling = tracked(acked.clone(), Some(Op::Cancel));
        assert!(check_survivor("o", &cancelling, Some(&acked)).is_ok());
        assert!(check_survivor("o", &cancelling, Some(&seen("cancelled", 2, &["BER"]))).is_ok());
        // Version moved but state did not: half applied.
        assert!(check_survivor("o", &cancelling, Some(&seen("allocated", 2, &["BER"]))).is_err());

        let shipping = tracked(acked.clone(), Some(Op::Ship("BER".into())));
        assert!(check_survivor("o", &shipping, Some(&seen("shipped", 2, &[]))).is_ok());
        assert!(check_survivor("o", &shipping, Some(&seen("allocated", 2, &["BER"]))).is_err());
        assert!(check_ack(
            "o",
            &Op::Approve,
            &seen("pending_approval", 1, &["BER"]),
            &seen("allocated", 2, &["BER"])
        )
        .is_ok());
        assert!(check_ack("o", &Op::Approve, &acked, &acked).is_err());
    }
}
