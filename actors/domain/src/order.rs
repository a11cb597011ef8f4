//! The canonical order every channel produces, and its state machine.

use crate::ids::{AccountId, IdempotencyKey, OrderId, ShipToId, Sku, UserId, WarehouseId};
use crate::money::{Money, MoneyError};
use crate::pricing::PriceSource;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Draft,
    PendingApproval,
    Confirmed,
    Allocated,
    Shipped,
    Rejected,
    Cancelled,
}

impl OrderState {
    pub const ALL: [OrderState; 7] = [
        OrderState::Draft,
        OrderState::PendingApproval,
        OrderState::Confirmed,
        OrderState::Allocated,
        OrderState::Shipped,
        OrderState::Rejected,
        OrderState::Cancelled,
    ];

    /// The only moves DESIGN.md's state machine allows (invariant 8).
    pub fn can_become(self, to: OrderState) -> bool {
        use OrderState::*;
        matches!(
            (self, to),
            (Draft, PendingApproval | Confirmed | Cancelled)
                | (PendingApproval, Confirmed | Rejected)
                | (Confirmed, Allocated | Cancelled)
                | (Allocated, Shipped | Cancelled)
        )
    }

    /// States whose value counts towards credit exposure (invariant 3).
    pub fn counts_for_credit(self) -> bool {
        matches!(
            self,
            OrderState::PendingApproval | OrderState::Confirmed | OrderState::Allocated
        )
    }

    /// States that hold stock (reserved or allocated) in a warehouse.
    pub fn holds_stock(self) -> bool {
        self.counts_for_credit()
    }

    /// States no order leaves: the state machine has no move out of them. A closed order never
    /// changes again.
    pub fn is_closed(self) -> bool {
        let closed = matches!(
            self,
            OrderState::Shipped | OrderState::Rejected | OrderState::Cancelled
        );
        debug_assert_eq!(
            closed,
            OrderState::ALL.iter().all(|to| !self.can_become(*to)),
            "closed means no move out"
        );
        closed
    }

    /// Lines, ship-to and notes may change only before allocation.
    pub fn amendable(self) -> bool {
        matches!(
            self,
            OrderState::Draft | OrderState::PendingApproval | OrderState::Confirmed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Draft => "draft",
            OrderState::PendingApproval => "pending_approval",
            OrderState::Confirmed => "confirmed",
            OrderState::Allocated => "allocated",
            OrderState::Shipped => "shipped",
            OrderState::Rejected => "rejected",
            OrderState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order {order} cannot go from {from} to {to}")]
pub struct TransitionError {
    pub order: OrderId,
    pub from: &'static str,
    pub to: &'static str,
}

/// Where an order came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Portal,
    Api,
    Csv,
    Edi,
    Cxml,
    Nats,
}

/// Units of a line served by one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub warehouse: WarehouseId,
    pub qty: u32,
    pub shipped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineStatus {
    Open,
    /// Dropped by an approver; holds no stock and no credit.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// 1-based position, stable for the life of the order.
    pub line_no: u32,
    pub sku: Sku,
    pub qty: u32,
    pub uom: String,
    pub unit_price: Money,
    pub price_source: PriceSource,
    pub line_total: Money,
    /// A kit's components at the time of ordering (empty for a plain item), so stock held for
    /// the line can be recomputed even after the catalog changed.
    #[serde(default)]
    pub components: Vec<crate::catalog::KitComponent>,
    pub note: Option<String>,
    /// The buyer's choice, if any.
    pub requested_warehouse: Option<WarehouseId>,
    /// Assigned at submission; quantities add up to `qty` for an open submitted line.
    pub allocations: Vec<Allocation>,
    pub status: LineStatus,
}

impl OrderLine {
    /// Stock units `units` of this line take: the item itself, or its kit components.
    pub fn stock_demand(&self, units: u32) -> Vec<(Sku, u64)> {
        if self.components.is_empty() {
            vec![(self.sku.clone(), u64::from(units))]
        } else {
            self.components
                .iter()
                .map(|c| (c.sku.clone(), u64::from(c.qty) * u64::from(units)))
                .collect()
        }
    }

    /// The units of `sku` one unit of this line takes from warehouse `w` (the item itself, or a
    /// kit component), when the line holds unshipped units there and needs `sku`.
    pub fn takes_from(&self, w: &WarehouseId, sku: &Sku) -> Option<u64> {
        if !self
            .allocations
            .iter()
            .any(|a| &a.warehouse == w && !a.shipped)
        {
            return None;
        }
        let per_unit: u64 = self
            .stock_demand(1)
            .into_iter()
            .filter(|(s, _)| s == sku)
            .map(|(_, q)| q)
            .sum();
        (per_unit > 0).then_some(per_unit)
    }

    /// Value of the line not yet shipped (zero when rejected): the line total less what the
    /// shipped units were invoiced at, so that a line shipped in parts is invoiced exactly its
    /// total (each part's value is rounded from the units shipped so far, not on its own).
    pub fn unshipped_value(&self) -> Result<Money, MoneyError> {
        if self.status == LineStatus::Rejected {
            return Ok(Money::zero(self.unit_price.currency));
        }
        if self.allocations.is_empty() {
            return Ok(self.line_total);
        }
        let shipped: u32 = self
            .allocations
            .iter()
            .filter(|a| a.shipped)
            .map(|a| a.qty)
            .sum();
        if shipped == 0 {
            return Ok(self.line_total);
        }
        self.line_total
            .checked_sub(self.unit_price.times(shipped.min(self.qty))?)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub account: AccountId,
    pub state: OrderState,
    pub channel: Channel,
    pub placed_by: UserId,
    pub ship_to: ShipToId,
    pub delivery_speed: Option<String>,
    pub customer_po: Option<String>,
    pub allow_split: bool,
    pub lines: Vec<OrderLine>,
    /// Sum of open lines.
    pub total: Money,
    /// Why the order waits for an approver (empty when none applied).
    pub approval_reasons: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Bumped on every change; part of every event so consumers can order them.
    pub version: u32,
    /// The Idempotency-Key the order was placed with, if any. Kept in the order itself so that
    /// remembering a key costs no write of its own.
    pub idempotency: Option<PlacedWith>,
}

/// An Idempotency-Key and the digest of the request that used it: a retry with the same key
/// and the same request gets this order back; the same key with another request is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedWith {
    pub key: IdempotencyKey,
    pub request_digest: RequestDigest,
}

/// A SHA-256 digest: hex in JSON, 32 raw bytes in binary formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestDigest(pub [u8; 32]);

impl Serialize for RequestDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for RequestDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let hex = String::deserialize(d)?;
            let mut out = [0u8; 32];
            hex::decode_to_slice(&hex, &mut out)
                .map_err(|_| serde::de::Error::custom("a digest is 64 hex digits"))?;
            Ok(RequestDigest(out))
        } else {
            <[u8; 32]>::deserialize(d).map(RequestDigest)
        }
    }
}

impl Order {
    /// Moves along the state machine or refuses (invariant 8).
    pub fn transition(&mut self, to: OrderState) -> Result<(), TransitionError> {
        if !self.state.can_become(to) {
            return Err(TransitionError {
                order: self.id.clone(),
                from: self.state.as_str(),
                to: to.as_str(),
            });
        }
        self.state = to;
        Ok(())
    }

    pub fn open_lines(&self) -> impl Iterator<Item = &OrderLine> {
        self.lines.iter().filter(|l| l.status == LineStatus::Open)
    }

    /// Recomputes `total` from the open lines.
    pub fn recompute_total(&mut self) -> Result<(), MoneyError> {
        self.total = Money::sum(
            self.total.currency,
            self.open_lines().map(|l| &l.line_total),
        )?;
        Ok(())
    }

    /// What this order adds to the account's credit exposure now.
    pub fn exposure(&self) -> Result<Money, MoneyError> {
        let zero = Money::zero(self.total.currency);
        if !self.state.counts_for_credit() {
            return Ok(zero);
        }
        self.lines
            .iter()
            .try_fold(zero, |acc, l| acc.checked_add(l.unshipped_value()?))
    }

    /// Warehouses the order has open stock in.
    pub fn warehouses(&self) -> Vec<WarehouseId> {
        let mut w: Vec<WarehouseId> = self
            .open_lines()
            .flat_map(|l| {
                l.allocations
                    .iter()
                    .filter(|a| !a.shipped)
                    .map(|a| a.warehouse.clone())
            })
            .collect();
        w.sort();
        w.dedup();
        w
    }

    /// Stock this order holds (unshipped, open lines) per warehouse.
    pub fn stock_demand(&self) -> std::collections::BTreeMap<WarehouseId, Vec<(Sku, u64)>> {
        let mut out: std::collections::BTreeMap<WarehouseId, Vec<(Sku, u64)>> = Default::default();
        if !self.state.holds_stock() {
            return out;
        }
        for l in self.open_lines() {
            for a in l.allocations.iter().filter(|a| !a.shipped) {
                out.entry(a.warehouse.clone())
                    .or_default()
                    .extend(l.stock_demand(a.qty));
            }
        }
        out
    }

    /// True when every open line is fully shipped.
    pub fn fully_shipped(&self) -> bool {
        self.open_lines()
            .all(|l| !l.allocations.is_empty() && l.allocations.iter().all(|a| a.shipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderState::*;

    // A request digest is hex in JSON and round-trips; anything but 64 hex digits is refused.
    #[test]
    fn request_digest_json() {
        let d = RequestDigest(std::array::from_fn(|i| u8::try_from(i * 7).unwrap()));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json.len(), 66);
        assert!(json.starts_with("\"00070e15"));
        assert_eq!(serde_json::from_str::<RequestDigest>(&json).unwrap(), d);
        let not_hex = format!("\"zz{}\"", "0".repeat(62));
        for bad in ["\"00\"", not_hex.as_str(), "12"] {
            assert!(serde_json::from_str::<RequestDigest>(bad).is_err(), "{bad}");
        }
    }

    // What a line takes of a SKU per unit from a warehouse: 1 of its own SKU, a kit's component
    // quantities (summed when a component appears twice), nothing from a warehouse where it
    // holds nothing unshipped.
    #[test]
    fn what_a_line_takes_from_a_warehouse() {
        let eur = crate::money::Currency::parse("EUR").unwrap();
        let price = Money::parse("1", eur, 2).unwrap();
        let (sku, wh) = (
            |s: &str| Sku::parse(s).unwrap(),
            |w: &str| WarehouseId::parse(w).unwrap(),
        );
        let component = |s: &str, qty| crate::catalog::KitComponent { sku: sku(s), qty };
        let mut line = OrderLine {
            line_no: 1,
            sku: sku("KIT"),
            qty: 3,
            uom: "EA".into(),
            unit_price: price,
            price_source: crate::pricing::PriceSource {
                level: "list".into(),
                tier_min_qty: 1,
                valid_from: None,
                valid_to: None,
            },
            line_total: price.times(3).unwrap(),
            components: vec![component("X", 2), component("Y", 1), component("X", 1)],
            note: None,
            requested_warehouse: None,
            allocations: vec![Allocation {
                warehouse: wh("W1"),
                qty: 3,
                shipped: false,
            }],
            status: LineStatus::Open,
        };
        assert_eq!(line.takes_from(&wh("W1"), &sku("X")), Some(3));
        assert_eq!(line.takes_from(&wh("W1"), &sku("Y")), Some(1));
        assert_eq!(
            line.takes_from(&wh("W1"), &sku("KIT")),
            None,
            "a kit is held as its parts"
        );
        assert_eq!(line.takes_from(&wh("W2"), &sku("X")), None);
        line.components.clear();
        assert_eq!(line.takes_from(&wh("W1"), &sku("KIT")), Some(1));
        line.allocations[0].shipped = true;
        assert_eq!(
            line.takes_from(&wh("W1"), &sku("KIT")),
            None,
            "shipped units are not held"
        );
    }

    // A line shipped in parts is invoiced exactly its total: 4 × 0.0125 = 0.05, split 2 + 2
    // across warehouses, invoices 0.03 then 0.02 (not 0.03 twice), and the unshipped value
    // never rises.
    #[test]
    fn a_line_shipped_in_parts_invoices_its_total() {
        let eur = crate::money::Currency::parse("EUR").unwrap();
        let money = |s: &str| Money::parse(s, eur, 4).unwrap();
        let alloc = |w: &str| Allocation {
            warehouse: WarehouseId::parse(w).unwrap(),
            qty: 2,
            shipped: false,
        };
        let mut line = OrderLine {
            line_no: 1,
            sku: Sku::parse("A").unwrap(),
            qty: 4,
            uom: "EA".into(),
            unit_price: money("0.0125"),
            price_source: crate::pricing::PriceSource {
                level: "list".into(),
                tier_min_qty: 1,
                valid_from: None,
                valid_to: None,
            },
            line_total: money("0.0125").times(4).unwrap(),
            components: vec![],
            note: None,
            requested_warehouse: None,
            allocations: vec![alloc("W1"), alloc("W2")],
            status: LineStatus::Open,
        };
        assert_eq!(line.line_total, money("0.05"));
        let mut open = vec![line.unshipped_value().unwrap()];
        for i in 0..2 {
            line.allocations[i].shipped = true;
            open.push(line.unshipped_value().unwrap());
        }
        assert_eq!(open, [money("0.05"), money("0.02"), money("0")]);
    }

    // Exactly the transitions of DESIGN.md are allowed; everything else is refused.
    #[test]
    fn state_machine_table() {
        let allowed = [
            (Draft, PendingApproval),
            (Draft, Confirmed),
            (Draft, Cancelled),
            (PendingApproval, Confirmed),
            (PendingApproval, Rejected),
            (Confirmed, Allocated),
            (Confirmed, Cancelled),
            (Allocated, Shipped),
            (Allocated, Cancelled),
        ];
        for from in OrderState::ALL {
            for to in OrderState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
        for terminal in [Shipped, Rejected, Cancelled] {
            assert!(OrderState::ALL.iter().all(|to| !terminal.can_become(*to)));
        }
    }
}
