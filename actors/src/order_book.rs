//! An account's open orders, with what is derived from them kept current on every change: the
//! credit exposure of its open orders and the ship-tos it has already had an order confirmed
//! or shipped to. Both would otherwise cost a pass over the account's whole history on every
//! request.
//!
//! Closed orders (shipped, rejected, cancelled) never change again, so the book lets go of an
//! order when it closes: an account's memory and the time to rebuild it grow with its open
//! orders, not with its history. Closed orders are read from the journal when asked for
//! (`records::load_order`, `records::closed_orders_before`, through `order_reads`).

use orderd_domain::ids::{OrderId, ShipToId};
use orderd_domain::order::{Order, OrderState};
use orderd_domain::Decimal;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Default)]
pub struct OrderBook {
    by_id: BTreeMap<OrderId, Booked>,
    /// Sum of `Order::exposure` over every order (zero for those that do not count).
    open_exposure: Decimal,
    /// Per ship-to, how many open orders are confirmed or allocated to it now.
    confirmed_ship_tos: BTreeMap<ShipToId, usize>,
    /// The ship-tos an order has shipped to (stored as `records::shipped_key`). With
    /// `confirmed_ship_tos`: the "first order to a new ship-to" approval rule no longer applies
    /// once an order to it is confirmed, allocated or shipped.
    shipped_to: BTreeSet<ShipToId>,
}

/// An order and the audit seqs of its changes, oldest first: its next record carries them
/// (`records::encode_order`).
struct Booked {
    order: Order,
    audit_seqs: Vec<u64>,
}

impl OrderBook {
    /// The book of the open `orders`, each with the audit seqs of its changes, and the ship-tos
    /// orders have shipped to.
    pub fn new(
        orders: impl IntoIterator<Item = (Order, Vec<u64>)>,
        shipped_to: impl IntoIterator<Item = ShipToId>,
    ) -> OrderBook {
        let mut book = OrderBook {
            shipped_to: shipped_to.into_iter().collect(),
            ..OrderBook::default()
        };
        for (o, seqs) in orders {
            book.put(o, seqs);
        }
        book
    }

    /// The audit seqs of the changes of order `id` so far, oldest first.
    pub fn audit_seqs(&self, id: &OrderId) -> &[u64] {
        self.by_id.get(id).map_or(&[], |b| b.audit_seqs.as_slice())
    }

    /// Adopts `order` as changed by the audit record `audit_seq`; a closed order leaves the
    /// book.
    pub fn put_changed(&mut self, order: Order, audit_seq: u64) {
        let mut seqs = self
            .by_id
            .get_mut(&order.id)
            .map(|b| std::mem::take(&mut b.audit_seqs))
            .unwrap_or_default();
        debug_assert!(
            seqs.last().is_none_or(|s| *s < audit_seq),
            "audit seqs of an order only grow"
        );
        seqs.push(audit_seq);
        self.put(order, seqs);
    }

    /// The open order `id`.
    pub fn get(&self, id: &OrderId) -> Option<&Order> {
        self.by_id.get(id).map(|b| &b.order)
    }

    /// The open orders, oldest first (ids are time-ordered UUIDv7).
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Order> {
        self.by_id.values().map(|b| &b.order)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// What the open orders add to the account's credit exposure.
    pub fn open_exposure(&self) -> Decimal {
        self.open_exposure
    }

    /// Whether an order to `ship_to` is confirmed, allocated or shipped.
    pub fn ship_to_confirmed(&self, ship_to: &ShipToId) -> bool {
        self.confirmed_ship_tos.contains_key(ship_to) || self.shipped_to.contains(ship_to)
    }

    /// Whether `order` ships to a ship-to no order has shipped to before: its change stores
    /// the ship-to as shipped to.
    pub fn first_shipment_to(&self, order: &Order) -> bool {
        order.state == OrderState::Shipped && !self.shipped_to.contains(&order.ship_to)
    }

    /// Inserts, replaces or (when closed) drops an order, with the audit seqs of its changes,
    /// and updates what is derived from it.
    fn put(&mut self, order: Order, audit_seqs: Vec<u64>) {
        if let Some(prev) = self.by_id.remove(&order.id) {
            self.open_exposure -= contribution(&prev.order);
            if confirmed(&prev.order) {
                if let Some(n) = self.confirmed_ship_tos.get_mut(&prev.order.ship_to) {
                    *n -= 1;
                    if *n == 0 {
                        self.confirmed_ship_tos.remove(&prev.order.ship_to);
                    }
                }
            }
        }
        if order.state == OrderState::Shipped {
            self.shipped_to.insert(order.ship_to.clone());
        }
        if !order.state.is_closed() {
            self.open_exposure += contribution(&order);
            if confirmed(&order) {
                *self
                    .confirmed_ship_tos
                    .entry(order.ship_to.clone())
                    .or_default() += 1;
            }
            self.by_id
                .insert(order.id.clone(), Booked { order, audit_seqs });
        }
        debug_assert_eq!(
            self.open_exposure,
            self.values().map(contribution).sum::<Decimal>(),
            "incremental exposure drifted from the recomputed one"
        );
    }
}

/// An order's exposure; amounts are bounded (`LINE_QTY_MAX` and `AMOUNT_MAX`), so it cannot
/// overflow.
fn contribution(order: &Order) -> Decimal {
    order.exposure().map(|m| m.amount).unwrap_or(Decimal::ZERO)
}

fn confirmed(order: &Order) -> bool {
    matches!(order.state, OrderState::Confirmed | OrderState::Allocated)
}
