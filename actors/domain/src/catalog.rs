//! The master catalog: items, their ordering rules, visibility per segment and kits.
//! A `Catalog` is an immutable snapshot; imports build a new one and swap it whole.

use crate::ids::{IdMap, Segment, Sku};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Largest number of components a kit may have.
pub const KIT_COMPONENTS_MAX: usize = 50;
/// Most units of one component per kit (a repeated component counts its rows summed).
pub const KIT_COMPONENT_QTY_MAX: u32 = 1_000_000;
/// Longest description accepted.
pub const DESCRIPTION_LEN_MAX: usize = 500;
/// Most segments one item is shown to (checked at import).
pub const ITEM_SEGMENTS_MAX: usize = 100;

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
    /// Builds a snapshot of an import; every item is checked and every problem reported.
    pub fn new(items: Vec<CatalogItem>) -> Result<Catalog, Vec<CatalogError>> {
        Catalog::build(items, Bounds::Import)
    }

    /// The snapshot of a stored catalog: checked as [`Catalog::new`] does, except for bounds
    /// added since earlier versions stored it (`KIT_COMPONENT_QTY_MAX`). A stored catalog
    /// refused by a newer rule would stop orderd from starting, with no way to import a
    /// better one; the next import meets today's rules.
    pub fn restore(items: Vec<CatalogItem>) -> Result<Catalog, Vec<CatalogError>> {
        Catalog::build(items, Bounds::Stored)
    }

    fn build(items: Vec<CatalogItem>, bounds: Bounds) -> Result<Catalog, Vec<CatalogError>> {
        let mut errors = Vec::new();
        let mut map = BTreeMap::new();
        for mut item in items {
            merge_repeated_components(&mut item);
            let checked = match bounds {
                Bounds::Import => check_item(&item),
                Bounds::Stored => check_lasting(&item),
            };
            if let Err(reason) = checked {
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

    /// Items visible to `segment` matching `query` (a SKU prefix, ASCII case ignored, or
    /// every word a prefix of some word of the description), in SKU order, strictly after
    /// `after`, at most `limit`. A query is refused when it is longer than
    /// [`SEARCH_QUERY_BYTES_MAX`] or has more than [`SEARCH_WORDS_MAX`] distinct words.
    ///
    /// The cost stays near what the answer needs: the SKUs of the query's rarest word come
    /// from the word index, and the other words are checked on those items' descriptions; a
    /// word so common that walking the items in SKU order finds `limit` matches sooner is
    /// checked on the walk instead.
    pub fn search(
        &self,
        segment: &Segment,
        query: &str,
        after: Option<&Sku>,
        limit: usize,
    ) -> Result<Vec<&CatalogItem>, SearchError> {
        let q = query.trim();
        if q.len() > SEARCH_QUERY_BYTES_MAX {
            return Err(SearchError::TooLong);
        }
        let mut terms: Vec<String> = tokenize(q).collect();
        terms.sort_unstable();
        terms.dedup();
        if terms.len() > SEARCH_WORDS_MAX {
            return Err(SearchError::TooManyWords);
        }
        let visible = |it: &&CatalogItem| it.visible_to(segment);
        let items = self.items_after(after);
        if q.is_empty() {
            return Ok(items.iter().filter(visible).take(limit).collect());
        }
        let sku_matches = |it: &CatalogItem| {
            it.sku
                .as_str()
                .as_bytes()
                .get(..q.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(q.as_bytes()))
        };
        // The description is split once, however many words the query has.
        let words_match = |it: &CatalogItem| {
            if terms.is_empty() {
                return false;
            }
            let words: Vec<String> = tokenize(&it.description).collect();
            terms
                .iter()
                .all(|t| words.iter().any(|w| w.starts_with(t.as_str())))
        };
        let matches = |it: &&CatalogItem| sku_matches(it) || words_match(it);
        let rarest = terms
            .iter()
            .map(|t| (self.word_hits(t).map(BTreeSet::len).sum::<usize>(), t))
            .min();
        match rarest {
            // Walking the items finds `limit` matches after about limit * items / hits of
            // them; the index costs about `hits`.
            Some((hits, t)) if hits.saturating_mul(hits) < limit.saturating_mul(items.len()) => {
                // Both in SKU order: the first `limit` of the SKU prefix matches suffice.
                let by_sku = items.iter().filter(|it| sku_matches(it)).filter(visible);
                let mut found: Vec<&CatalogItem> = self
                    .word_hits(t)
                    .flatten()
                    .filter(|sku| after.is_none_or(|a| *sku > a))
                    .filter_map(|sku| self.get(sku))
                    .filter(|it| words_match(it))
                    .filter(visible)
                    .chain(by_sku.take(limit))
                    .collect();
                found.sort_unstable_by(|a, b| a.sku.cmp(&b.sku));
                found.dedup_by(|a, b| a.sku == b.sku);
                found.truncate(limit);
                Ok(found)
            }
            _ => Ok(items
                .iter()
                .filter(matches)
                .filter(visible)
                .take(limit)
                .collect()),
        }
    }

    /// The SKUs of every description word that `prefix` begins, word by word.
    fn word_hits<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a BTreeSet<Sku>> + 'a {
        self.words
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(w, _)| w.starts_with(prefix))
            .map(|(_, skus)| skus)
    }
}

/// The longest search query, in bytes.
pub const SEARCH_QUERY_BYTES_MAX: usize = 200;
/// The most distinct words in a search query.
pub const SEARCH_WORDS_MAX: usize = 8;

/// A search query refused for its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("the query is longer than {SEARCH_QUERY_BYTES_MAX} bytes")]
    TooLong,
    #[error("the query has more than {SEARCH_WORDS_MAX} distinct words")]
    TooManyWords,
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
            // Saturating: a sum past the bound is refused by `check_item` either way.
            Some(m) => m.qty = m.qty.saturating_add(c.qty),
            None => merged.push(c),
        }
    }
    item.kit = merged;
}

/// Checks one item on its own (what a catalog import can report on the item's line); a
/// catalog also checks its kits' components ([`Catalog::new`]).
pub fn check_item(item: &CatalogItem) -> Result<(), String> {
    check_lasting(item)?;
    if item.segments.len() > ITEM_SEGMENTS_MAX {
        return Err(format!(
            "an item is shown to at most {ITEM_SEGMENTS_MAX} segments"
        ));
    }
    check_kit_bound(item)
}

/// The rules a stored item met when it was imported, also under earlier versions: what the
/// rest of orderd relies on (a pack size to divide by, components to hold).
fn check_lasting(item: &CatalogItem) -> Result<(), String> {
    if item.description.trim().is_empty() || item.description.chars().count() > DESCRIPTION_LEN_MAX
    {
        return Err(format!(
            "description must be 1 to {DESCRIPTION_LEN_MAX} characters"
        ));
    }
    if item.uom.trim().is_empty() || item.uom.chars().count() > 8 {
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

/// Which checks a catalog is built under.
#[derive(Clone, Copy)]
enum Bounds {
    /// An import: every rule of this version.
    Import,
    /// A stored catalog: the rules it was imported under (see [`Catalog::restore`]).
    Stored,
}

/// Each kit component at most `KIT_COMPONENT_QTY_MAX` units per kit (rows of a repeated
/// component summed, once merged).
fn check_kit_bound(item: &CatalogItem) -> Result<(), String> {
    match item.kit.iter().find(|c| c.qty > KIT_COMPONENT_QTY_MAX) {
        Some(c) => Err(format!(
            "kit component {} needs 1 to {KIT_COMPONENT_QTY_MAX} units per kit, got {}",
            c.sku, c.qty
        )),
        None => Ok(()),
    }
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
        let skus = |v: Result<Vec<&CatalogItem>, SearchError>| {
            v.unwrap()
                .iter()
                .map(|i| i.sku.to_string())
                .collect::<Vec<_>>()
        };
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
        assert!(skus(cat.search(&retail, "", Some(&last), 10)).is_empty());
        assert_eq!(
            cat.get(&a1).map(|i| i.description.as_str()),
            Some("Steel bolt M8")
        );
        assert!(cat.get(&between).is_none());
        assert!(skus(cat.search(&retail, "nothing", None, 10)).is_empty());
    }

    // Whichever way a search finds its items (the rarest word's index entries, or a walk in
    // SKU order), it answers what checking every item would: the same items, in SKU order,
    // after the cursor, at most `limit`.
    #[test]
    fn search_answers_what_checking_every_item_would() {
        let vocabulary = [
            "steel",
            "stainless",
            "bolt",
            "bracket",
            "pipe",
            "copper",
            "m8",
        ];
        let hidden = Segment::parse("wholesale").unwrap();
        let items: Vec<CatalogItem> = (0..400usize)
            .map(|i| {
                // Word k is in the description of every (k+2)-th item: common to rare words.
                let words: Vec<&str> = (0..vocabulary.len())
                    .filter(|k| i % (k * 7 + 2) == 0)
                    .map(|k| vocabulary[k])
                    .collect();
                let mut it = item(
                    &format!("S{i:03}"),
                    &format!("part {} {i}", words.join(" ")),
                );
                if i % 5 == 0 {
                    it.segments.insert(hidden.clone());
                }
                it
            })
            .collect();
        let cat = Catalog::new(items.clone()).unwrap();
        let retail = Segment::parse("retail").unwrap();
        let reference = |q: &str, after: Option<&Sku>, limit: usize| -> Vec<String> {
            let terms: Vec<String> = tokenize(q).collect();
            items
                .iter()
                .filter(|it| after.is_none_or(|a| &it.sku > a) && it.visible_to(&retail))
                .filter(|it| {
                    it.sku
                        .as_str()
                        .to_ascii_uppercase()
                        .starts_with(&q.to_ascii_uppercase())
                        || (!terms.is_empty()
                            && terms.iter().all(|t| {
                                tokenize(&it.description).any(|w| w.starts_with(t.as_str()))
                            }))
                })
                .take(limit)
                .map(|it| it.sku.to_string())
                .collect()
        };
        let cursor = Sku::parse("S150").unwrap();
        for q in [
            "st", "steel", "bolt st", "cop", "m8 pipe", "s1", "S2", "br bolt", "zinc", "part 12",
            "1",
        ] {
            for after in [None, Some(&cursor)] {
                for limit in [1, 3, 20, 1000] {
                    let got: Vec<String> = cat
                        .search(&retail, q, after, limit)
                        .unwrap()
                        .iter()
                        .map(|it| it.sku.to_string())
                        .collect();
                    assert_eq!(
                        got,
                        reference(q, after, limit),
                        "{q:?} after {after:?} limit {limit}"
                    );
                }
            }
        }
    }

    #[test]
    fn search_refuses_queries_beyond_its_limits() {
        let cat = Catalog::new(vec![item("A-1", "Steel bolt")]).unwrap();
        let retail = Segment::parse("retail").unwrap();
        let long = "a".repeat(SEARCH_QUERY_BYTES_MAX + 1);
        assert_eq!(
            cat.search(&retail, &long, None, 10),
            Err(SearchError::TooLong)
        );
        let many = "a b c d e f g h i";
        assert_eq!(
            cat.search(&retail, many, None, 10),
            Err(SearchError::TooManyWords)
        );
        // Repeated words count once.
        let repeated = "bolt ".repeat(30);
        assert_eq!(
            cat.search(&retail, &repeated, None, 10).map(|v| v.len()),
            Ok(1)
        );
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
        let cat = Catalog::new(vec![kit, twice.clone(), item("A", "Bolt")]).unwrap();
        let t = cat.get(&Sku::parse("TWICE").unwrap()).unwrap();
        assert_eq!(t.stock_demand(1), vec![(Sku::parse("A").unwrap(), 4)]);
        // Rows that are each within the bound but not together are refused, not capped.
        let half = KitComponent {
            qty: KIT_COMPONENT_QTY_MAX / 2 + 1,
            ..twice.kit[0].clone()
        };
        twice.kit = vec![half.clone(), half];
        assert!(
            check_item(&twice).is_ok(),
            "each row alone is within the bound"
        );
        let errs = Catalog::new(vec![twice.clone(), item("A", "Bolt")]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].reason.contains("1 to 1000000"), "{errs:?}");
        // A catalog an earlier version stored with such a kit still loads.
        let stored = Catalog::restore(vec![twice, item("A", "Bolt")]).unwrap();
        let t = stored.get(&Sku::parse("TWICE").unwrap()).unwrap();
        let units = u64::from(KIT_COMPONENT_QTY_MAX + 2);
        assert_eq!(t.stock_demand(1), vec![(Sku::parse("A").unwrap(), units)]);
    }
}
