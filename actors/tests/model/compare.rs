//! Where the model meets the real system: adopting the allocations the planner chose (after
//! checking they are plausible) and comparing a real order with the model's, field by field.

use crate::reference::{MAlloc, MLine, MOrder};
use crate::world::{self, WAREHOUSES};
use orderd_domain::order::{LineStatus, Order};

/// Adopts the allocations the real system chose for `lines` (its open lines), after checking
/// they are plausible. `real` is the order as the system returned it.
pub fn adopt_allocations(lines: &mut [MLine], real: &Order, split: bool) -> Result<(), String> {
    let open: Vec<_> = real.open_lines().collect();
    if open.len() != lines.len() {
        return Err(format!(
            "real order has {} open lines, model {}",
            open.len(),
            lines.len()
        ));
    }
    for (m, r) in lines.iter_mut().zip(open) {
        let allocs: Vec<MAlloc> = r
            .allocations
            .iter()
            .map(|a| MAlloc {
                wh: a.warehouse.to_string(),
                qty: a.qty,
                shipped: a.shipped,
            })
            .collect();
        let sum: u32 = allocs.iter().map(|a| a.qty).sum();
        let mut whs: Vec<&str> = allocs.iter().map(|a| a.wh.as_str()).collect();
        whs.sort_unstable();
        whs.dedup();
        let bad = if sum != m.qty {
            Some("allocations do not add up to the quantity")
        } else if allocs.iter().any(|a| a.shipped || a.qty == 0) {
            Some("a new allocation is shipped or empty")
        } else if whs.len() != allocs.len() {
            Some("two allocations in one warehouse")
        } else if allocs
            .iter()
            .any(|a| !WAREHOUSES.iter().any(|w| w.id == a.wh))
        {
            Some("allocation in an unknown warehouse")
        } else if m.wh.is_some() && allocs.iter().any(|a| Some(&a.wh) != m.wh.as_ref()) {
            Some("allocation outside the requested warehouse")
        } else if !split && allocs.len() != 1 {
            Some("line split although the order does not allow it")
        } else {
            None
        };
        if let Some(why) = bad {
            return Err(format!("line {}: {why}: {:?}", m.line_no, r.allocations));
        }
        m.allocs = allocs;
    }
    Ok(())
}

/// Compares the real order with the model's, field by field that the model knows.
pub fn compare_order(m: &MOrder, r: &Order) -> Result<(), String> {
    let ctx = |what: &str, model: String, real: String| {
        Err(format!("order {} {what}: model {model}, real {real}", m.id))
    };
    if r.state != m.state {
        return ctx("state", format!("{:?}", m.state), format!("{:?}", r.state));
    }
    if r.version != m.changes {
        return ctx("version", m.changes.to_string(), r.version.to_string());
    }
    if r.ship_to.as_str() != m.ship_to || r.delivery_speed != m.speed || r.allow_split != m.split {
        return ctx(
            "header",
            format!("{} {:?} split={}", m.ship_to, m.speed, m.split),
            format!(
                "{} {:?} split={}",
                r.ship_to, r.delivery_speed, r.allow_split
            ),
        );
    }
    if r.total.amount != m.total() {
        return ctx("total", m.total().to_string(), r.total.amount.to_string());
    }
    if r.lines.len() != m.lines.len() {
        return ctx(
            "line count",
            m.lines.len().to_string(),
            r.lines.len().to_string(),
        );
    }
    for (ml, rl) in m.lines.iter().zip(&r.lines) {
        let r_allocs: Vec<MAlloc> = rl
            .allocations
            .iter()
            .map(|a| MAlloc {
                wh: a.warehouse.to_string(),
                qty: a.qty,
                shipped: a.shipped,
            })
            .collect();
        let same = rl.line_no == ml.line_no
            && rl.sku.as_str() == ml.sku
            && rl.qty == ml.qty
            && rl.unit_price.amount == ml.unit
            && rl.line_total.amount == ml.total()
            && rl.requested_warehouse.as_ref().map(|w| w.to_string()) == ml.wh
            && (rl.status == LineStatus::Open) == ml.open
            && r_allocs == ml.allocs;
        if !same {
            return ctx("line", format!("{ml:?}"), format!("{rl:?}"));
        }
        let kit: Vec<(String, u32)> = rl
            .components
            .iter()
            .map(|c| (c.sku.to_string(), c.qty))
            .collect();
        let want: Vec<(String, u32)> = world::item(&ml.sku)
            .map(|i| i.kit.iter().map(|(c, q)| ((*c).to_owned(), *q)).collect())
            .unwrap_or_default();
        if kit != want {
            return ctx("kit components", format!("{want:?}"), format!("{kit:?}"));
        }
    }
    Ok(())
}
