//! Contract pricing: quantity-break tiers with validity dates at three levels. The most specific
//! level with a valid entry wins (account contract, then segment list, then catalog list price);
//! within it, the tier with the largest minimum quantity not above the line's quantity.

use crate::date::Date;
use crate::ids::{AccountId, IdMap, Segment, Sku};
use crate::money::{Currency, Money};
use serde::{Deserialize, Serialize};

/// Most tiers one price entry may have.
pub const TIERS_MAX: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
// Externally tagged (serde's default): journal records are postcard, which cannot decode the
// adjacently tagged form (`tag`/`content`), so a daemon could not restart on its own data.
#[serde(rename_all = "snake_case")]
pub enum PriceLevel {
    /// The account's own contract.
    Contract(AccountId),
    /// The segment's price list.
    Segment(Segment),
    /// The catalog list price.
    List,
}

impl PriceLevel {
    pub fn name(&self) -> &'static str {
        match self {
            PriceLevel::Contract(_) => "contract",
            PriceLevel::Segment(_) => "segment",
            PriceLevel::List => "list",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub min_qty: u32,
    pub unit_price: Money,
}

/// One set of tiers for a SKU at a level, valid from/to (inclusive; open when absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceEntry {
    pub level: PriceLevel,
    pub sku: Sku,
    pub valid_from: Option<Date>,
    pub valid_to: Option<Date>,
    /// Sorted by `min_qty` ascending, first `min_qty` is 1.
    pub tiers: Vec<Tier>,
}

impl PriceEntry {
    pub fn valid_on(&self, day: Date) -> bool {
        self.valid_from.is_none_or(|f| f <= day) && self.valid_to.is_none_or(|t| day <= t)
    }

    pub fn currency(&self) -> Option<Currency> {
        self.tiers.first().map(|t| t.unit_price.currency)
    }

    /// The tier for `qty`: the largest `min_qty` not above it.
    pub fn tier_for(&self, qty: u32) -> Option<&Tier> {
        self.tiers.iter().rev().find(|t| t.min_qty <= qty)
    }
}

/// Where a line's unit price came from, kept on every priced line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceSource {
    pub level: String,
    pub tier_min_qty: u32,
    pub valid_from: Option<Date>,
    pub valid_to: Option<Date>,
}

/// A unit price and where it came from: what a line is priced at, and what a cart line quotes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Priced {
    pub unit_price: Money,
    pub source: PriceSource,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("price for {sku}: {reason}")]
pub struct PriceError {
    pub sku: String,
    pub reason: String,
}

/// Every price entry, indexed by SKU. An immutable snapshot, swapped whole on import.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    by_sku: IdMap<Sku, Vec<PriceEntry>>,
}

impl PriceBook {
    pub fn new(entries: Vec<PriceEntry>) -> Result<PriceBook, Vec<PriceError>> {
        let mut errors = Vec::new();
        let mut by_sku: IdMap<Sku, Vec<PriceEntry>> = IdMap::default();
        for mut e in entries {
            e.tiers.sort_by_key(|t| t.min_qty);
            if let Err(reason) = check_entry(&e) {
                errors.push(PriceError {
                    sku: e.sku.to_string(),
                    reason,
                });
                continue;
            }
            by_sku.entry(e.sku.clone()).or_default().push(e);
        }
        if errors.is_empty() {
            Ok(PriceBook { by_sku })
        } else {
            Err(errors)
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = &PriceEntry> {
        self.by_sku.values().flatten()
    }

    /// The entry that applies to this account on `day`: the most specific level with a valid
    /// entry and, within it, the entry whose window started last (a promotion inside a
    /// year-long price), then the one that ends first. The order of the import file does not
    /// matter.
    pub fn entry_for(
        &self,
        sku: &Sku,
        account: &AccountId,
        segment: &Segment,
        currency: Currency,
        day: Date,
    ) -> Option<&PriceEntry> {
        let entries = self.by_sku.get(sku)?;
        let usable = |e: &&PriceEntry| e.valid_on(day) && e.currency() == Some(currency);
        // Smallest first: the latest start (none is the earliest), then the earliest end (none
        // is the latest); of equal windows the first entry.
        let precedence = |e: &&PriceEntry| {
            (
                std::cmp::Reverse(e.valid_from),
                (e.valid_to.is_none(), e.valid_to),
            )
        };
        let at = |want: &dyn Fn(&PriceLevel) -> bool| {
            entries
                .iter()
                .filter(usable)
                .filter(|e| want(&e.level))
                .min_by_key(precedence)
        };
        at(&|l| matches!(l, PriceLevel::Contract(a) if a == account))
            .or_else(|| at(&|l| matches!(l, PriceLevel::Segment(s) if s == segment)))
            .or_else(|| at(&|l| matches!(l, PriceLevel::List)))
    }

    /// Prices `qty` of `sku` for the account; `None` when no level has a valid entry.
    pub fn price(
        &self,
        sku: &Sku,
        qty: u32,
        account: &AccountId,
        segment: &Segment,
        currency: Currency,
        day: Date,
    ) -> Option<Priced> {
        let entry = self.entry_for(sku, account, segment, currency, day)?;
        let tier = entry.tier_for(qty)?;
        Some(Priced {
            unit_price: tier.unit_price,
            source: PriceSource {
                level: entry.level.name().to_owned(),
                tier_min_qty: tier.min_qty,
                valid_from: entry.valid_from,
                valid_to: entry.valid_to,
            },
        })
    }
}

/// Checks one entry on its own, its tiers sorted by `min_qty` (what a price import can report
/// on the entry's line).
pub fn check_entry(e: &PriceEntry) -> Result<(), String> {
    if e.tiers.is_empty() || e.tiers.len() > TIERS_MAX {
        return Err(format!("needs 1 to {TIERS_MAX} tiers"));
    }
    if e.tiers[0].min_qty != 1 {
        return Err("the first tier must start at quantity 1".into());
    }
    if e.tiers.windows(2).any(|w| w[0].min_qty == w[1].min_qty) {
        return Err("two tiers with the same minimum quantity".into());
    }
    let cur = e.tiers[0].unit_price.currency;
    if e.tiers.iter().any(|t| t.unit_price.currency != cur) {
        return Err("tiers of one entry must share a currency".into());
    }
    if let (Some(f), Some(t)) = (e.valid_from, e.valid_to) {
        if f > t {
            return Err(format!("valid_from {f} is after valid_to {t}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(s: &str) -> Money {
        Money::parse(s, Currency::parse("EUR").unwrap(), 4).unwrap()
    }
    fn d(s: &str) -> Date {
        Date::parse(s).unwrap()
    }
    fn entry(
        level: PriceLevel,
        tiers: &[(u32, &str)],
        from: Option<&str>,
        to: Option<&str>,
    ) -> PriceEntry {
        PriceEntry {
            level,
            sku: Sku::parse("S1").unwrap(),
            valid_from: from.map(d),
            valid_to: to.map(d),
            tiers: tiers
                .iter()
                .map(|(q, p)| Tier {
                    min_qty: *q,
                    unit_price: eur(p),
                })
                .collect(),
        }
    }

    // The most specific valid level wins, and within it the tier for the quantity.
    #[test]
    fn levels_and_tiers() {
        let acct = AccountId::parse("ACME").unwrap();
        let other = AccountId::parse("OTHER").unwrap();
        let seg = Segment::parse("retail").unwrap();
        let book = PriceBook::new(vec![
            entry(
                PriceLevel::List,
                &[(1, "10.00"), (10, "9.00"), (100, "8.00")],
                None,
                None,
            ),
            entry(
                PriceLevel::Segment(seg.clone()),
                &[(1, "9.50"), (50, "8.50")],
                None,
                Some("2026-12-31"),
            ),
            entry(
                PriceLevel::Contract(acct.clone()),
                &[(1, "7.00")],
                Some("2026-06-01"),
                Some("2026-06-30"),
            ),
        ])
        .unwrap();
        let sku = Sku::parse("S1").unwrap();
        let eur_c = Currency::parse("EUR").unwrap();
        let price =
            |a: &AccountId, s: &Segment, q, day| book.price(&sku, q, a, s, eur_c, d(day)).unwrap();
        let table = [
            // (account, qty, day, price, level, tier)
            (&acct, 5, "2026-06-15", "7.00", "contract", 1),
            (&acct, 60, "2026-07-01", "8.50", "segment", 50),
            (&acct, 49, "2026-07-01", "9.50", "segment", 1),
            (&other, 5, "2026-06-15", "9.50", "segment", 1),
        ];
        for (a, q, day, p, level, tier) in table {
            let got = price(a, &seg, q, day);
            assert_eq!(got.unit_price, eur(p), "{a} {q} {day}");
            assert_eq!(got.source.level, level);
            assert_eq!(got.source.tier_min_qty, tier);
        }
        let wholesale = Segment::parse("wholesale").unwrap();
        let got = price(&other, &wholesale, 150, "2027-01-01");
        assert_eq!(
            (
                got.unit_price,
                got.source.level.as_str(),
                got.source.tier_min_qty
            ),
            (eur("8.00"), "list", 100)
        );
        // Another currency finds nothing.
        assert!(book
            .price(
                &sku,
                1,
                &acct,
                &seg,
                Currency::parse("USD").unwrap(),
                d("2026-06-15")
            )
            .is_none());
    }

    // Within a level, overlapping windows resolve to the one that started last, then the one
    // that ends first, in whatever order the entries came.
    #[test]
    fn the_narrowest_window_of_a_level_wins() {
        let acct = AccountId::parse("ACME").unwrap();
        let seg = Segment::parse("retail").unwrap();
        let year = entry(PriceLevel::List, &[(1, "10.00")], None, None);
        let july = entry(
            PriceLevel::List,
            &[(1, "8.00")],
            Some("2026-07-01"),
            Some("2026-07-31"),
        );
        let first_week = entry(
            PriceLevel::List,
            &[(1, "7.00")],
            Some("2026-07-01"),
            Some("2026-07-07"),
        );
        let all = [year, july, first_week];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1]] {
            let book = PriceBook::new(order.iter().map(|i| all[*i].clone()).collect()).unwrap();
            let sku = Sku::parse("S1").unwrap();
            let eur_c = Currency::parse("EUR").unwrap();
            let price = |day| {
                book.price(&sku, 1, &acct, &seg, eur_c, d(day))
                    .unwrap()
                    .unit_price
            };
            assert_eq!(price("2026-06-30"), eur("10.00"), "{order:?}");
            assert_eq!(price("2026-07-03"), eur("7.00"), "{order:?}");
            assert_eq!(price("2026-07-08"), eur("8.00"), "{order:?}");
            assert_eq!(price("2026-08-01"), eur("10.00"), "{order:?}");
        }
    }

    // Bad entries are each reported.
    #[test]
    fn bad_entries_are_refused() {
        let bad = vec![
            entry(PriceLevel::List, &[(5, "1.00")], None, None),
            entry(PriceLevel::List, &[(1, "1.00"), (1, "2.00")], None, None),
            entry(
                PriceLevel::List,
                &[(1, "1.00")],
                Some("2026-02-01"),
                Some("2026-01-01"),
            ),
            entry(PriceLevel::List, &[], None, None),
        ];
        assert_eq!(PriceBook::new(bad).unwrap_err().len(), 4);
    }
}
