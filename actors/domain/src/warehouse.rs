//! Warehouses and their stock. `Stock` is what a WarehouseActor owns: per SKU the quantity on
//! hand, reserved (submitted, not yet allocated) and allocated, and per order what it holds, so a
//! release or allocation can only ever touch the order's own stock.

use crate::geo::GeoPoint;
use crate::ids::{IdMap, OrderId, Sku, WarehouseId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most speed bands one warehouse may declare.
pub const SPEED_BANDS_MAX: usize = 16;
/// Longest warehouse name, in characters.
pub const WAREHOUSE_NAME_LEN_MAX: usize = 200;

/// A delivery speed a warehouse can serve within a distance: e.g. "express" within 300 km in
/// 1 day, "standard" within 1500 km in 3 days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeedBand {
    pub speed: String,
    pub max_distance_km: f64,
    pub days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warehouse {
    pub id: WarehouseId,
    pub name: String,
    pub location: GeoPoint,
    pub speeds: Vec<SpeedBand>,
}

impl Warehouse {
    /// Days to deliver `distance_km` away at `speed` (any speed when `None`), fastest band.
    pub fn days_for(&self, speed: Option<&str>, distance_km: f64) -> Option<u32> {
        self.speeds
            .iter()
            .filter(|b| speed.is_none_or(|s| b.speed == s) && distance_km <= b.max_distance_km)
            .map(|b| b.days)
            .min()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    pub on_hand: u64,
    pub reserved: u64,
    pub allocated: u64,
}

impl StockLevel {
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved + self.allocated)
    }
}

/// What one order holds in one warehouse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub reserved: BTreeMap<Sku, u64>,
    pub allocated: BTreeMap<Sku, u64>,
}

impl Holding {
    fn is_empty(&self) -> bool {
        self.reserved.is_empty() && self.allocated.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    /// Every SKU of the demand that is short, in SKU order.
    #[error("{}", Short::list(.0))]
    Shortage(Vec<Short>),
    #[error(
        "{sku}: on hand {on_hand} would be below the {committed} already reserved or allocated"
    )]
    BelowCommitted {
        sku: Sku,
        on_hand: u64,
        committed: u64,
    },
    #[error("order {0} has nothing allocated here")]
    NothingAllocated(OrderId),
}

/// One SKU a reservation wants more of than is free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Short {
    pub sku: Sku,
    pub wanted: u64,
    pub available: u64,
}

impl Short {
    fn list(shorts: &[Short]) -> String {
        let each: Vec<String> = (shorts.iter())
            .map(|s| format!("{}: wanted {}, available {}", s.sku, s.wanted, s.available))
            .collect();
        format!("not enough {}", each.join("; "))
    }
}

/// Stock of one warehouse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stock {
    levels: IdMap<Sku, StockLevel>,
    holdings: IdMap<OrderId, Holding>,
}

impl Stock {
    pub fn level(&self, sku: &Sku) -> StockLevel {
        self.levels.get(sku).copied().unwrap_or_default()
    }

    /// The level of `sku`, created empty if it was never stocked (without copying the SKU when
    /// it exists, the common case).
    fn level_mut(&mut self, sku: &Sku) -> &mut StockLevel {
        if !self.levels.contains_key(sku) {
            self.levels.insert(sku.clone(), StockLevel::default());
        }
        self.levels.get_mut(sku).expect("inserted above")
    }

    /// Every SKU ever stocked here with its level, in no particular order.
    pub fn levels(&self) -> impl Iterator<Item = (&Sku, &StockLevel)> {
        self.levels.iter()
    }

    pub fn holding(&self, order: &OrderId) -> Option<&Holding> {
        self.holdings.get(order)
    }

    pub fn holdings(&self) -> impl Iterator<Item = (&OrderId, &Holding)> {
        self.holdings.iter()
    }

    /// Sets on-hand (import, stock count). Refused when it would drop below what is committed.
    pub fn set_on_hand(&mut self, sku: &Sku, on_hand: u64) -> Result<(), StockError> {
        let level = self.level_mut(sku);
        let committed = level.reserved + level.allocated;
        if on_hand < committed {
            return Err(StockError::BelowCommitted {
                sku: sku.clone(),
                on_hand,
                committed,
            });
        }
        level.on_hand = on_hand;
        Ok(())
    }

    /// Reserves all of `demand` for `order`, or nothing (the first shortage is returned).
    pub fn reserve(&mut self, order: &OrderId, demand: &[(Sku, u64)]) -> Result<(), StockError> {
        // One sum per SKU (two lines may hold the same SKU, e.g. a kit's component), in SKU
        // order so that the shortage reported does not depend on the order of the lines.
        let mut wanted: Vec<(&Sku, u64)> = demand.iter().map(|(s, q)| (s, *q)).collect();
        wanted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        wanted.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 += next.1;
            }
            same
        });
        let short: Vec<Short> = (wanted.iter())
            .map(|&(sku, q)| Short {
                sku: sku.clone(),
                wanted: q,
                available: self.level(sku).available(),
            })
            .filter(|s| s.wanted > s.available)
            .collect();
        if !short.is_empty() {
            return Err(StockError::Shortage(short));
        }
        for &(sku, q) in &wanted {
            self.level_mut(sku).reserved += q;
        }
        let holding = self.holdings.entry(order.clone()).or_default();
        for (sku, q) in wanted {
            *holding.reserved.entry(sku.clone()).or_default() += q;
        }
        Ok(())
    }

    /// Releases up to `demand` of the order's reservation (never someone else's).
    pub fn release(&mut self, order: &OrderId, demand: &[(Sku, u64)]) {
        let Some(holding) = self.holdings.get_mut(order) else {
            return;
        };
        for (sku, q) in demand {
            if let Some(held) = holding.reserved.get_mut(sku) {
                let take = (*q).min(*held);
                *held -= take;
                if *held == 0 {
                    holding.reserved.remove(sku);
                }
                if let Some(level) = self.levels.get_mut(sku) {
                    level.reserved -= take;
                }
            }
        }
        if holding.is_empty() {
            self.holdings.remove(order);
        }
    }

    /// Releases everything the order holds here, reserved or allocated (cancel, reject).
    pub fn release_all(&mut self, order: &OrderId) {
        let Some(holding) = self.holdings.remove(order) else {
            return;
        };
        for (sku, q) in holding.reserved {
            if let Some(level) = self.levels.get_mut(&sku) {
                level.reserved -= q;
            }
        }
        for (sku, q) in holding.allocated {
            if let Some(level) = self.levels.get_mut(&sku) {
                level.allocated -= q;
            }
        }
    }

    /// Moves the order's reservation to allocated (confirmation), up to `demand`: what the
    /// order needs here in all by its lines (what it has allocated already counts). A
    /// reservation beyond it is released: a hold its account gave up on (a timeout) but that
    /// was taken here after all, which must not be allocated and shipped. Returns the SKUs
    /// whose free units that changed.
    pub fn allocate(&mut self, order: &OrderId, demand: &[(Sku, u64)]) -> Vec<Sku> {
        let Some(holding) = self.holdings.get_mut(order) else {
            return vec![];
        };
        let mut wanted: BTreeMap<&Sku, u64> = BTreeMap::new();
        for (sku, q) in demand {
            *wanted.entry(sku).or_default() += q;
        }
        let mut released = Vec::new();
        for (sku, q) in std::mem::take(&mut holding.reserved) {
            let allocated = holding.allocated.get(&sku).copied().unwrap_or(0);
            let need = wanted
                .get(&sku)
                .copied()
                .unwrap_or(0)
                .saturating_sub(allocated);
            let take = need.min(q);
            if let Some(level) = self.levels.get_mut(&sku) {
                level.reserved -= q;
                level.allocated += take;
            }
            if take > 0 {
                *holding.allocated.entry(sku.clone()).or_default() += take;
            }
            if take < q {
                released.push(sku);
            }
        }
        if holding.is_empty() {
            self.holdings.remove(order);
        }
        released
    }

    /// What [`Stock::ship`] would leave: the SKUs the order has allocated here with their
    /// on-hand after shipping, without changing anything (to write them before they change).
    pub fn shipped_levels(&self, order: &OrderId) -> Result<Vec<(Sku, u64)>, StockError> {
        match self.holdings.get(order) {
            Some(h) if !h.allocated.is_empty() => Ok(h
                .allocated
                .iter()
                .map(|(sku, q)| (sku.clone(), self.level(sku).on_hand - q))
                .collect()),
            _ => Err(StockError::NothingAllocated(order.clone())),
        }
    }

    /// Ships what the order has allocated here: on-hand and allocated both go down. Returns the
    /// SKUs touched with their new on-hand, for persisting (the same as
    /// [`Stock::shipped_levels`] before).
    pub fn ship(&mut self, order: &OrderId) -> Result<Vec<(Sku, u64)>, StockError> {
        let allocated = match self.holdings.get(order) {
            Some(h) if !h.allocated.is_empty() => h.allocated.clone(),
            _ => return Err(StockError::NothingAllocated(order.clone())),
        };
        let mut touched = Vec::with_capacity(allocated.len());
        for (sku, q) in allocated {
            let level = self.level_mut(&sku);
            level.allocated -= q;
            level.on_hand -= q;
            touched.push((sku, level.on_hand));
        }
        if let Some(h) = self.holdings.get_mut(order) {
            h.allocated.clear();
            if h.is_empty() {
                self.holdings.remove(order);
            }
        }
        Ok(touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::stock_is_conserved;

    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }
    fn oid(s: &str) -> OrderId {
        OrderId::parse(s).unwrap()
    }

    // Confirmation allocates what the order's lines need and releases a reservation beyond it
    // (a hold its account gave up on, taken after all).
    #[test]
    fn allocate_takes_only_the_orders_demand() {
        let mut st = Stock::default();
        st.set_on_hand(&sku("A"), 10).unwrap();
        st.reserve(&oid("o1"), &[(sku("A"), 3)]).unwrap();
        st.reserve(&oid("o1"), &[(sku("A"), 2)]).unwrap(); // the stray hold
        let released = st.allocate(&oid("o1"), &[(sku("A"), 1), (sku("A"), 2)]);
        assert_eq!(released, [sku("A")]);
        // Again with the same demand (what is allocated counts): nothing changes.
        assert!(st.allocate(&oid("o1"), &[(sku("A"), 3)]).is_empty());
        let want = StockLevel {
            on_hand: 10,
            reserved: 0,
            allocated: 3,
        };
        assert_eq!(st.level(&sku("A")), want);
        let held = st.holding(&oid("o1")).unwrap();
        assert!(held.reserved.is_empty());
        assert_eq!(held.allocated.get(&sku("A")), Some(&3));
        assert_eq!(st.ship(&oid("o1")).unwrap(), vec![(sku("A"), 7)]);
    }

    // Reserve is all-or-nothing; release, allocate and ship touch only the order's own stock.
    #[test]
    fn stock_lifecycle() {
        let mut st = Stock::default();
        st.set_on_hand(&sku("A"), 10).unwrap();
        st.set_on_hand(&sku("B"), 1).unwrap();
        let err = st
            .reserve(&oid("o1"), &[(sku("A"), 5), (sku("B"), 2)])
            .unwrap_err();
        let short = |s: &str, wanted, available| Short {
            sku: sku(s),
            wanted,
            available,
        };
        assert_eq!(err, StockError::Shortage(vec![short("B", 2, 1)]));
        assert_eq!(
            st.level(&sku("A")).reserved,
            0,
            "nothing reserved after a shortage"
        );
        // Two lines of one SKU count together.
        assert_eq!(
            st.reserve(&oid("o1"), &[(sku("A"), 6), (sku("B"), 1), (sku("A"), 6)]),
            Err(StockError::Shortage(vec![short("A", 12, 10)]))
        );
        // Every short SKU is named, in SKU order.
        let both = st
            .reserve(&oid("o1"), &[(sku("B"), 3), (sku("A"), 11)])
            .unwrap_err();
        assert_eq!(
            both,
            StockError::Shortage(vec![short("A", 11, 10), short("B", 3, 1)])
        );
        assert_eq!(
            both.to_string(),
            "not enough A: wanted 11, available 10; B: wanted 3, available 1"
        );
        assert_eq!(st.level(&sku("B")).reserved, 0);
        st.reserve(&oid("o1"), &[(sku("A"), 5)]).unwrap();
        st.reserve(&oid("o2"), &[(sku("A"), 5)]).unwrap();
        assert!(st.reserve(&oid("o3"), &[(sku("A"), 1)]).is_err());
        st.release(&oid("o3"), &[(sku("A"), 5)]); // holds nothing: no effect
        assert_eq!(st.level(&sku("A")).reserved, 10);
        assert!(st.allocate(&oid("o1"), &[(sku("A"), 5)]).is_empty());
        assert_eq!(
            st.level(&sku("A")),
            StockLevel {
                on_hand: 10,
                reserved: 5,
                allocated: 5
            }
        );
        assert_eq!(st.ship(&oid("o1")).unwrap(), vec![(sku("A"), 5)]);
        assert_eq!(
            st.level(&sku("A")),
            StockLevel {
                on_hand: 5,
                reserved: 5,
                allocated: 0
            }
        );
        assert!(matches!(
            st.set_on_hand(&sku("A"), 4),
            Err(StockError::BelowCommitted { .. })
        ));
        st.release_all(&oid("o2"));
        assert_eq!(st.level(&sku("A")).available(), 5);
        assert!(st.ship(&oid("o2")).is_err());
        assert!(stock_is_conserved(&st).is_ok());
    }

    // Speed bands: the fastest band that covers the distance.
    #[test]
    fn days_for_speed_and_distance() {
        let w = Warehouse {
            id: WarehouseId::parse("W").unwrap(),
            name: "W".into(),
            location: GeoPoint::new(0.0, 0.0).unwrap(),
            speeds: vec![
                SpeedBand {
                    speed: "express".into(),
                    max_distance_km: 300.0,
                    days: 1,
                },
                SpeedBand {
                    speed: "standard".into(),
                    max_distance_km: 2000.0,
                    days: 3,
                },
            ],
        };
        assert_eq!(w.days_for(Some("express"), 100.0), Some(1));
        assert_eq!(w.days_for(Some("express"), 400.0), None);
        assert_eq!(w.days_for(None, 400.0), Some(3));
        assert_eq!(w.days_for(Some("standard"), 100.0), Some(3));
    }
}
