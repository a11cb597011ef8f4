//! Warehouse choice per line: the buyer's choice if given; else the warehouse that can fill the
//! whole line fastest for the requested delivery speed; else the nearest with stock; a line is
//! split across warehouses only when the order allows split shipments.

use crate::catalog::Catalog;
use crate::geo::GeoPoint;
use crate::ids::{Sku, WarehouseId};
use crate::order::Allocation;
use crate::validation::{PricedLine, Problem, ProblemCode, WarehouseQty};
use crate::warehouse::Warehouse;
use std::collections::HashMap;

/// Free stock of a set of SKUs in each warehouse, as the warehouses reported it just before
/// planning: per warehouse one row of units, aligned with the sorted SKUs. (Built once per order
/// and read a few times per line: a row is one allocation, and no SKU is copied per warehouse.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// Sorted, without duplicates.
    skus: Vec<Sku>,
    /// Per warehouse, `free[w][i]` units of `skus[i]`.
    free: HashMap<WarehouseId, Vec<u64>>,
}

impl Availability {
    /// Availability of `skus` (in any order, repeats allowed), in no warehouse yet.
    pub fn new(mut skus: Vec<Sku>) -> Availability {
        skus.sort_unstable();
        skus.dedup();
        Availability {
            skus,
            free: HashMap::new(),
        }
    }

    /// The SKUs, sorted: the order of a row given to [`Availability::set`].
    pub fn skus(&self) -> &[Sku] {
        &self.skus
    }

    /// Sets warehouse `w`'s row: `units[i]` free units of `self.skus()[i]`.
    pub fn set(&mut self, w: WarehouseId, units: Vec<u64>) {
        assert_eq!(units.len(), self.skus.len(), "a row per SKU of the set");
        self.free.insert(w, units);
    }

    /// The warehouses with a row.
    pub fn warehouses(&self) -> impl Iterator<Item = &WarehouseId> {
        self.free.keys()
    }

    /// Free units of `sku` in `w` (0 for a SKU outside the set or a warehouse without a row).
    pub fn get(&self, w: &WarehouseId, sku: &Sku) -> u64 {
        match (self.free.get(w), self.skus.binary_search(sku)) {
            (Some(row), Ok(i)) => row[i],
            _ => 0,
        }
    }

    /// Adds `units` of `sku` in `w` (what an amended order already holds). A SKU outside the
    /// set is left out: nothing that plans with this availability asks for it.
    pub fn add(&mut self, w: &WarehouseId, sku: &Sku, units: u64) {
        if let Some(slot) = self.slot(w, sku) {
            *slot = slot.saturating_add(units);
        }
    }

    /// Takes `units` of `sku` in `w` (at most what is there).
    fn take(&mut self, w: &WarehouseId, sku: &Sku, units: u64) {
        if let Some(slot) = self.slot(w, sku) {
            *slot = slot.saturating_sub(units);
        }
    }

    fn slot(&mut self, w: &WarehouseId, sku: &Sku) -> Option<&mut u64> {
        let i = self.skus.binary_search(sku).ok()?;
        let width = self.skus.len();
        let row = self.free.entry(w.clone()).or_insert_with(|| vec![0; width]);
        row.get_mut(i)
    }

    /// Whole units of an item that `w`'s free stock can make: `per_unit` is the item's stock
    /// demand for one unit (itself, or a kit's components), so a kit counts the fewest any
    /// component allows.
    pub fn whole_units(&self, w: &WarehouseId, per_unit: &[(Sku, u64)]) -> u64 {
        per_unit
            .iter()
            .map(|(sku, q)| self.get(w, sku) / (*q).max(1))
            .min()
            .unwrap_or(0)
    }
}

pub struct PlanInput<'a> {
    pub catalog: &'a Catalog,
    pub warehouses: &'a [Warehouse],
    /// Where the order goes; `None` when it names no ship-to of the account (the plan then
    /// only tells whether the stock is there, ranking the warehouses by id).
    pub ship_to: Option<GeoPoint>,
    pub delivery_speed: Option<&'a str>,
    pub allow_split: bool,
}

/// Plans every line. Availability is consumed as lines are planned, so two lines of one SKU
/// cannot both count the same units. Lines that name their warehouse are planned first: they
/// can take stock from nowhere else, while a line without a choice may go elsewhere. Returns
/// allocations per line (same order as `lines`), or the problems in line order.
pub fn plan(
    input: &PlanInput<'_>,
    lines: &[PricedLine],
    mut available: Availability,
) -> Result<Vec<Vec<Allocation>>, Vec<Problem>> {
    let order = preference(input);
    let mut plans: Vec<Option<Vec<Allocation>>> = vec![None; lines.len()];
    let mut problems = Vec::new();
    let mut turns: Vec<usize> = (0..lines.len()).collect();
    turns.sort_by_key(|&i| lines[i].requested_warehouse.is_none());
    for i in turns {
        let line = &lines[i];
        let Some(item) = input.catalog.get(&line.sku) else {
            problems.push(
                Problem::new(ProblemCode::UnknownSku, "not in the catalog").line(line.line_no),
            );
            continue;
        };
        let per_unit = item.stock_demand(1);
        let fillable = |avail: &Availability, w: &WarehouseId| avail.whole_units(w, &per_unit);
        let qty = u64::from(line.qty);
        let candidates: Vec<&WarehouseId> = match &line.requested_warehouse {
            Some(w) => vec![w],
            None => order.iter().collect(),
        };
        let whole = candidates.iter().find(|w| fillable(&available, w) >= qty);
        let mut allocs: Vec<(WarehouseId, u64)> = Vec::new();
        if let Some(w) = whole {
            allocs.push(((*w).clone(), qty));
        } else if input.allow_split && line.requested_warehouse.is_none() {
            // Split in whole packs: a line is a pack multiple (validated), so every part is too.
            let pack = u64::from(item.pack_size.max(1));
            debug_assert_eq!(qty % pack, 0, "line {} is not in whole packs", line.line_no);
            let mut left = qty;
            for w in &candidates {
                let take = fillable(&available, w).min(left) / pack * pack;
                if take > 0 {
                    allocs.push(((*w).clone(), take));
                    left -= take;
                }
                if left == 0 {
                    break;
                }
            }
            if left > 0 {
                allocs.clear();
            }
        }
        if allocs.is_empty() {
            let mut p = Problem::new(
                ProblemCode::OutOfStock,
                format!("not enough {} for {} {}", line.sku, line.qty, line.uom),
            )
            .line(line.line_no)
            .sku(line.sku.as_str());
            p.available = order
                .iter()
                .map(|w| WarehouseQty {
                    warehouse: w.clone(),
                    qty: fillable(&available, w),
                })
                .collect();
            problems.push(p);
            continue;
        }
        for (w, units) in &allocs {
            for (sku, q) in &per_unit {
                available.take(w, sku, q * units);
            }
        }
        plans[i] = Some(
            allocs
                .into_iter()
                .map(|(warehouse, units)| Allocation {
                    warehouse,
                    // `units <= line.qty`, which is a u32.
                    qty: u32::try_from(units).unwrap_or(line.qty),
                    shipped: false,
                })
                .collect(),
        );
    }
    if problems.is_empty() {
        let plans: Vec<Vec<Allocation>> = plans.into_iter().flatten().collect();
        assert_eq!(plans.len(), lines.len(), "a plan for every line");
        Ok(plans)
    } else {
        problems.sort_by_key(|p| p.line);
        Err(problems)
    }
}

/// Warehouses in order of preference: those serving the requested speed to the ship-to, fastest
/// first, then by distance; then all others by distance. Without a ship-to: by id.
fn preference(input: &PlanInput<'_>) -> Vec<WarehouseId> {
    let Some(ship_to) = input.ship_to else {
        let mut ids: Vec<WarehouseId> = input.warehouses.iter().map(|w| w.id.clone()).collect();
        ids.sort_unstable();
        return ids;
    };
    let mut ranked: Vec<(bool, u32, f64, &WarehouseId)> = input
        .warehouses
        .iter()
        .map(|w| {
            let dist = w.location.distance_km(ship_to);
            match w.days_for(input.delivery_speed, dist) {
                Some(days) => (false, days, dist, &w.id),
                None => (true, u32::MAX, dist, &w.id),
            }
        })
        .collect();
    ranked.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)));
    ranked.into_iter().map(|r| r.3.clone()).collect()
}
