//! The master catalog: items, their ordering rules, visibility per segment and kits.
//! A `Catalog` is an immutable snapshot; imports build a new one and swap it whole.

use crate::ids::{IdMap, Segment, Sku};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Largest number of components a kit may have.
pub const KIT_COMPONENTS_MAX: usize = 50;
/// Longest description accepted.
pub const DESCRIPTION_LEN_MAX: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Active,
    Discontinued,
    Blocked,
}

/// One component of a kit: `qty` units of `sku` per kit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KitComponent {
    pub sku: Sku,
    pub qty: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogItem {
    pub sku: Sku,
    pub description: String,
    /// Unit of measure the quantity counts in ("EA", "BOX", "M").
    pub uom: String,
    /// Orders must be a multiple of this (1 = any quantity).
    pub pack_size: u32,
    /// Smallest quantity per line.
    pub min_qty: u32,
    pub status: ItemStatus,
    /// Segments allowed to see the item; empty means everyone.
    pub segments: BTreeSet<Segment>,
    /// Non-empty for a kit: ordered as one line, held in stock as these components.
    pub kit: Vec<KitComponent>,
}

impl CatalogItem {
    pub fn visible_to(&self, segment: &Segment) -> bool {
        self.segments.is_empty() || self.segments.contains(segment)
    }

    /// Stock demand of `units` of this item: itself, or its components for a kit.
    pub fn stock_demand(&self, units: u32) -> Vec<(Sku, u64)> {
        if self.kit.is_empty() {
            vec![(self.sku.clone(), u64::from(units))]
        } else {
            self.kit
                .iter()
                .map(|c| (c.sku.clone(), u64::from(c.qty) * u64::from(units)))
                .collect()
        }
    }
}

/// Problems with a catalog import, one per offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{sku}: {reason}")]
pub struct CatalogError {
    pub sku: String,
    pub reason: String,
}

/// An immutable catalog snapshot with a word index for search.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Sorted by SKU (search pages through them in that order).
    items: Vec<CatalogItem>,
    /// SKU -> position in `items` (an order looks up each of its lines several times).
    index: IdMap<Sku, usize>,
    /// lower-case word of a description -> SKUs containing it.
    words: BTreeMap<String, BTreeSet<Sku>>,
}

impl Catalog {
    /// Builds a snapshot; every item is checked and every problem reported.
    pub fn new(items: Vec<CatalogItem>) -> Result<Catalog, Vec<CatalogError>> {
        let mut errors = Vec::new();
        let mut map = BTreeMap::new();
        for mut item in items {
            merge_repeated_components(&mut item);
            if let Err(reason) = check_item(&item) {
                errors.push(CatalogError {
                    sku: item.sku.to_string(),
                    reason,
                });
                continue;
            }
            map.insert(item.sku.clone(), item);
        }
        for item in map.values() {
            for c in &item.kit {
                match map.get(&c.sku) {
                    None => errors.push(CatalogError {
                        sku: item.sku.to_string(),
                        reason: format!("kit component {} is not in the catalog", c.sku),
                    }),
                    Some(comp) if !comp.kit.is_empty() => errors.push(CatalogError {
                        sku: item.sku.to_string(),
                        reason: format!("kit component {} is itself a kit", c.sku),
                    }),
                    Some(_) => {}
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut words: BTreeMap<String, BTreeSet<Sku>> = BTreeMap::new();
        for item in map.values() {
            for w in tokenize(&item.description) {
                words.entry(w).or_default().insert(item.sku.clone());
            }
        }
        let items: Vec<CatalogItem> = map.into_values().collect();
        let index = items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.sku.clone(), i))
            .collect();
        Ok(Catalog {
            items,
            index,
            words,
        })
    }

    pub fn get(&self, sku: &Sku) -> Option<&CatalogItem> {
        self.index.get(sku).map(|&i| &self.items[i])
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn items(&self) -> impl Iterator<Item = &CatalogItem> {
        self.items.iter()
    }

    /// The items after `after` in SKU order (all of them without a cursor).
    fn items_after(&self, after: Option<&Sku>) -> &[CatalogItem] {
        let start = after.map_or(0, |a| self.items.partition_point(|it| &it.sku <= a));
        &self.items[start..]
    }

    /// Items visible to `segment` matching `query` (a SKU prefix, or every word found in the
    /// description), in SKU order, strictly after `after`, at most `limit`.
    pub fn search(
        &self,
        segment: &Segment,
        query: &str,
        after: Option<&Sku>,
        limit: usize,
    ) -> Vec<&CatalogItem> {
        let q = query.trim();
        let visible = |it: &&CatalogItem| it.visible_to(segment);
        if q.is_empty() {
            return self
                .items_after(after)
                .iter()
                .filter(visible)
                .take(limit)
                .collect();
        }
        let q_upper = q.to_ascii_uppercase();
        let terms: Vec<String> = tokenize(q).collect();
        // Every term must prefix-match some word of the description.
        let word_hits: Option<BTreeSet<Sku>> = terms.iter().fold(None, |acc, t| {
            let hits: BTreeSet<Sku> = self
                .words
                .range(t.clone()..)
                .take_while(|(w, _)| w.starts_with(t.as_str()))
                .flat_map(|(_, s)| s.iter().cloned())
                .collect();
            Some(match acc {
                None => hits,
                Some(prev) => &prev & &hits,
            })
        });
        self.items_after(after)
            .iter()
            .filter(|it| {
                it.sku.as_str().to_ascii_uppercase().starts_with(&q_upper)
                    || word_hits.as_ref().is_some_and(|h| h.contains(&it.sku))
            })
            .filter(visible)
            .take(limit)
            .collect()
    }
}

fn tokenize(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

/// A kit listing a component more than once keeps it once, with the quantities summed: planning
/// counts the kits a warehouse can make per component row, so a repeated row would count the
/// same stock twice. (Earlier versions stored such kits, so this also runs on a stored catalog.)
fn merge_repeated_components(item: &mut CatalogItem) {
    let mut merged: Vec<KitComponent> = Vec::with_capacity(item.kit.len());
    for c in item.kit.drain(..) {
        match merged.iter_mut().find(|m| m.sku == c.sku) {
            Some(m) => m.qty = m.qty.saturating_add(c.qty),
            None => merged.push(c),
        }
    }
    item.kit = merged;
}

fn check_item(item: &CatalogItem) -> Result<(), String> {
    if item.description.trim().is_empty() || item.description.len() > DESCRIPTION_LEN_MAX {
        return Err(format!(
            "description must be 1 to {DESCRIPTION_LEN_MAX} characters"
        ));
    }
    if item.uom.trim().is_empty() || item.uom.len() > 8 {
        return Err("unit of measure must be 1 to 8 characters".into());
    }
    if item.pack_size == 0 || item.min_qty == 0 {
        return Err("pack size and minimum quantity must be at least 1".into());
    }
    if item.kit.len() > KIT_COMPONENTS_MAX {
        return Err(format!("a kit has at most {KIT_COMPONENTS_MAX} components"));
    }
    if item.kit.iter().any(|c| c.qty == 0 || c.sku == item.sku) {
        return Err("kit components need a quantity of at least 1 and cannot be the kit".into());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn item(sku: &str, desc: &str) -> CatalogItem {
        CatalogItem {
            sku: Sku::parse(sku).unwrap(),
            description: desc.into(),
            uom: "EA".into(),
            pack_size: 1,
            min_qty: 1,
            status: ItemStatus::Active,
            segments: BTreeSet::new(),
            kit: vec![],
        }
    }

    // Search matches SKU prefixes and description words, honours visibility and pages by SKU.
    #[test]
    fn search_by_sku_and_words_with_visibility() {
        let mut hidden = item("B-2", "Blue steel bolt");
        hidden.segments.insert(Segment::parse("wholesale").unwrap());
        let cat = Catalog::new(vec![
            item("A-1", "Steel bolt M8"),
            hidden,
            item("C-3", "Copper pipe 15mm"),
        ])
        .unwrap();
        let retail = Segment::parse("retail").unwrap();
        let wholesale = Segment::parse("wholesale").unwrap();
        let skus = |v: Vec<&CatalogItem>| v.iter().map(|i| i.sku.to_string()).collect::<Vec<_>>();
        assert_eq!(skus(cat.search(&retail, "bolt", None, 10)), ["A-1"]);
        assert_eq!(
            skus(cat.search(&wholesale, "steel bo", None, 10)),
            ["A-1", "B-2"]
        );
        assert_eq!(skus(cat.search(&retail, "c-", None, 10)), ["C-3"]);
        assert_eq!(skus(cat.search(&retail, "", None, 1)), ["A-1"]);
        let a1 = Sku::parse("A-1").unwrap();
        assert_eq!(skus(cat.search(&retail, "", Some(&a1), 10)), ["C-3"]);
        // A cursor need not be a SKU of the catalog (one may have been removed meanwhile).
        let between = Sku::parse("B-1").unwrap();
        assert_eq!(
            skus(cat.search(&wholesale, "steel", Some(&between), 10)),
            ["B-2"]
        );
        let last = Sku::parse("C-3").unwrap();
        assert!(cat.search(&retail, "", Some(&last), 10).is_empty());
        assert_eq!(
            cat.get(&a1).map(|i| i.description.as_str()),
            Some("Steel bolt M8")
        );
        assert!(cat.get(&between).is_none());
        assert!(cat.search(&retail, "nothing", None, 10).is_empty());
    }

    // Kits must reference existing, non-kit components; every bad item is reported.
    #[test]
    fn catalog_checks_kits_and_reports_all_errors() {
        let mut kit = item("KIT", "Starter kit");
        kit.kit = vec![KitComponent {
            sku: Sku::parse("A").unwrap(),
            qty: 2,
        }];
        let mut bad = item("BAD", "x");
        bad.pack_size = 0;
        let errs = Catalog::new(vec![kit.clone(), bad]).unwrap_err();
        assert_eq!(errs.len(), 2);

        let cat = Catalog::new(vec![kit.clone(), item("A", "Bolt")]).unwrap();
        let k = cat.get(&Sku::parse("KIT").unwrap()).unwrap();
        assert_eq!(k.stock_demand(3), vec![(Sku::parse("A").unwrap(), 6)]);
        // A component listed twice is one row with the quantities summed.
        let mut twice = item("TWICE", "A kit listing A twice");
        twice.kit = vec![kit.kit[0].clone(), kit.kit[0].clone()];
        let cat = Catalog::new(vec![kit, twice, item("A", "Bolt")]).unwrap();
        let t = cat.get(&Sku::parse("TWICE").unwrap()).unwrap();
        assert_eq!(t.stock_demand(1), vec![(Sku::parse("A").unwrap(), 4)]);
    }
}
