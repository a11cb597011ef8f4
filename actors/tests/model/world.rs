//! The tiny world every case starts from, as plain tables: four SKUs (one kit, one sold in
//! packs and only to the wholesale segment), two warehouses with little stock, three accounts
//! with small credit limits and different approval rules. `seed` turns the tables into master
//! data through the engine; the reference model reads the same tables with its own rules.

use orderd_actors::audit::Caller;
use orderd_actors::warehouse::WarehouseHandle;
use orderd_actors::Engine;
use orderd_domain::account::{Account, ApprovalRules, Role, ShipTo, User};
use orderd_domain::catalog::{CatalogItem, ItemStatus, KitComponent};
use orderd_domain::geo::GeoPoint;
use orderd_domain::ids::{AccountId, Segment, ShipToId, Sku, UserId, WarehouseId};
use orderd_domain::money::{Currency, Money};
use orderd_domain::pricing::{PriceEntry, PriceLevel, Tier};
use orderd_domain::warehouse::{SpeedBand, Warehouse};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};

pub const CURRENCY: &str = "EUR";

pub struct Item {
    pub sku: &'static str,
    pub pack: u32,
    pub min: u32,
    /// Empty: visible to every segment.
    pub segments: &'static [&'static str],
    /// Non-empty for a kit: (component, units per kit).
    pub kit: &'static [(&'static str, u32)],
}

pub const ITEMS: [Item; 4] = [
    Item {
        sku: "A",
        pack: 1,
        min: 1,
        segments: &[],
        kit: &[],
    },
    Item {
        sku: "B",
        pack: 1,
        min: 1,
        segments: &[],
        kit: &[],
    },
    Item {
        sku: "K",
        pack: 1,
        min: 1,
        segments: &[],
        kit: &[("A", 1), ("B", 2)],
    },
    Item {
        sku: "P",
        pack: 2,
        min: 2,
        segments: &["wholesale"],
        kit: &[],
    },
];

/// Requests may name this SKU; it is not in the catalog.
pub const UNKNOWN_SKU: &str = "ZZ";
/// SKUs held in stock (the kit is held as its components).
pub const STOCK_SKUS: [&str; 3] = ["A", "B", "P"];

pub enum Level {
    List,
    Segment(&'static str),
    Contract(&'static str),
}

pub struct PriceRow {
    pub sku: &'static str,
    pub level: Level,
    /// (min qty, unit price in cents), first tier at 1.
    pub tiers: &'static [(u32, i64)],
}

const fn price(sku: &'static str, level: Level, tiers: &'static [(u32, i64)]) -> PriceRow {
    PriceRow { sku, level, tiers }
}

/// The price books an operator switches between (`Op::SetPrices`); the run starts with the
/// first. The second changes some levels and tiers and keeps others, so that a quote may
/// still hold or no longer.
pub const PRICE_BOOKS: [&[PriceRow]; 2] = [
    &[
        price("A", Level::List, &[(1, 1000), (5, 900)]),
        price("A", Level::Contract("BETA"), &[(1, 800)]),
        price("B", Level::List, &[(1, 450)]),
        price("B", Level::Segment("wholesale"), &[(1, 400)]),
        price("K", Level::List, &[(1, 2500)]),
        price("P", Level::List, &[(1, 725)]),
    ],
    &[
        price("A", Level::List, &[(1, 1100), (5, 950)]),
        price("A", Level::Contract("BETA"), &[(1, 800)]),
        price("B", Level::List, &[(1, 480)]),
        price("B", Level::Segment("wholesale"), &[(1, 400)]),
        price("K", Level::List, &[(1, 2400)]),
        price("P", Level::List, &[(1, 725)]),
    ],
];

pub struct Wh {
    pub id: &'static str,
    pub lat: f64,
    pub lon: f64,
    /// (speed, max distance km, days).
    pub speeds: &'static [(&'static str, f64, u32)],
}

pub const WAREHOUSES: [Wh; 2] = [
    Wh {
        id: "W1",
        lat: 53.55,
        lon: 10.0,
        speeds: &[("express", 300.0, 1), ("standard", 2000.0, 3)],
    },
    Wh {
        id: "W2",
        lat: 48.14,
        lon: 11.58,
        speeds: &[("standard", 2000.0, 2)],
    },
];
/// Requests may name this warehouse; it does not exist.
pub const UNKNOWN_WAREHOUSE: &str = "W9";
/// Speeds requests may ask for; the last is offered by no warehouse.
pub const SPEEDS: [&str; 3] = ["express", "standard", "teleport"];
/// A ship-to no account has.
pub const UNKNOWN_SHIP_TO: &str = "NOWHERE";

/// (warehouse, sku, on hand).
pub const STOCK: [(&str, &str, u64); 6] = [
    ("W1", "A", 12),
    ("W1", "B", 16),
    ("W1", "P", 8),
    ("W2", "A", 8),
    ("W2", "B", 10),
    ("W2", "P", 10),
];

pub struct Acct {
    pub id: &'static str,
    pub segment: &'static str,
    pub limit_cents: i64,
    pub receivables_cents: i64,
    /// (id, lat, lon).
    pub ship_tos: &'static [(&'static str, f64, f64)],
    /// (user, own spending limit in cents).
    pub buyer: (&'static str, Option<i64>),
    pub approver: (&'static str, Option<i64>),
    /// Spending limit of the buyer role, for buyers without their own.
    pub buyer_role_limit: Option<i64>,
    pub restricted: &'static [&'static str],
    pub approve_new_ship_to: bool,
}

pub const ACCOUNTS: [Acct; 3] = [
    Acct {
        id: "ACME",
        segment: "retail",
        limit_cents: 25_000,
        receivables_cents: 0,
        ship_tos: &[("S1", 53.5, 10.1), ("S2", 48.1, 11.6)],
        buyer: ("ann", Some(4_000)),
        approver: ("amy", Some(12_000)),
        buyer_role_limit: None,
        restricted: &["K"],
        approve_new_ship_to: false,
    },
    Acct {
        id: "BETA",
        segment: "wholesale",
        limit_cents: 15_000,
        receivables_cents: 1_500,
        ship_tos: &[("T1", 52.52, 13.4)],
        buyer: ("bob", None),
        approver: ("bea", None),
        buyer_role_limit: Some(5_000),
        restricted: &[],
        approve_new_ship_to: false,
    },
    Acct {
        id: "GAMMA",
        segment: "retail",
        limit_cents: 30_000,
        receivables_cents: 0,
        ship_tos: &[("G1", 50.94, 6.96), ("G2", 51.34, 12.37)],
        buyer: ("gus", None),
        approver: ("gil", None),
        buyer_role_limit: None,
        restricted: &[],
        approve_new_ship_to: true,
    },
];

pub fn cents(c: i64) -> Decimal {
    Decimal::new(c, 2)
}

fn eur(c: i64) -> Money {
    Money {
        amount: cents(c),
        currency: Currency::parse(CURRENCY).expect("valid currency"),
    }
}

pub fn item(sku: &str) -> Option<&'static Item> {
    ITEMS.iter().find(|i| i.sku == sku)
}

pub fn sku(s: &str) -> Sku {
    Sku::parse(s).expect("valid sku")
}

/// The running warehouse `id` of `engine`.
pub fn warehouse(engine: &Engine, id: &str) -> WarehouseHandle {
    engine
        .warehouse(&WarehouseId::parse(id).expect("valid id"))
        .expect("a warehouse of the world")
}

pub fn account_id(acct: usize) -> AccountId {
    AccountId::parse(ACCOUNTS[acct].id).expect("valid id")
}

fn caller(acct: usize, user: &str, role: Role) -> Caller {
    Caller {
        account: Some(account_id(acct)),
        user: UserId::parse(user).expect("valid id"),
        roles: BTreeSet::from([role]),
        warehouse: None,
        ip: "127.0.0.1".into(),
    }
}

pub fn buyer(acct: usize) -> Caller {
    caller(acct, ACCOUNTS[acct].buyer.0, Role::Buyer)
}

pub fn approver(acct: usize) -> Caller {
    caller(acct, ACCOUNTS[acct].approver.0, Role::Approver)
}

pub fn warehouse_caller(wh: &str) -> Caller {
    Caller {
        account: None,
        user: UserId::parse("dock").expect("valid id"),
        roles: BTreeSet::from([Role::Warehouse]),
        warehouse: WarehouseId::parse(wh).ok(),
        ip: "127.0.0.1".into(),
    }
}

pub fn catalog() -> Vec<CatalogItem> {
    ITEMS
        .iter()
        .map(|i| CatalogItem {
            sku: Sku::parse(i.sku).expect("valid sku"),
            description: format!("Item {}", i.sku),
            uom: "EA".into(),
            pack_size: i.pack,
            min_qty: i.min,
            status: ItemStatus::Active,
            segments: i
                .segments
                .iter()
                .map(|s| Segment::parse(s).expect("valid segment"))
                .collect(),
            kit: i
                .kit
                .iter()
                .map(|(c, q)| KitComponent {
                    sku: Sku::parse(c).expect("valid sku"),
                    qty: *q,
                })
                .collect(),
        })
        .collect()
}

/// Price book `book` of [`PRICE_BOOKS`] as an import.
pub fn prices(book: usize) -> Vec<PriceEntry> {
    PRICE_BOOKS[book]
        .iter()
        .map(|PriceRow { sku, level, tiers }| PriceEntry {
            level: match level {
                Level::List => PriceLevel::List,
                Level::Segment(s) => PriceLevel::Segment(Segment::parse(s).expect("valid")),
                Level::Contract(a) => PriceLevel::Contract(AccountId::parse(a).expect("valid")),
            },
            sku: Sku::parse(sku).expect("valid sku"),
            valid_from: None,
            valid_to: None,
            tiers: tiers
                .iter()
                .map(|(min_qty, c)| Tier {
                    min_qty: *min_qty,
                    unit_price: eur(*c),
                })
                .collect(),
        })
        .collect()
}

fn warehouses() -> Vec<Warehouse> {
    WAREHOUSES
        .iter()
        .map(|w| Warehouse {
            id: WarehouseId::parse(w.id).expect("valid id"),
            name: format!("Warehouse {}", w.id),
            location: GeoPoint::new(w.lat, w.lon).expect("valid point"),
            speeds: w
                .speeds
                .iter()
                .map(|(speed, km, days)| SpeedBand {
                    speed: (*speed).into(),
                    max_distance_km: *km,
                    days: *days,
                })
                .collect(),
        })
        .collect()
}

fn account(a: &Acct) -> Account {
    let user = |(id, limit): (&str, Option<i64>), role: Role| User {
        id: UserId::parse(id).expect("valid id"),
        name: id.to_uppercase(),
        roles: BTreeSet::from([role]),
        spending_limit: limit.map(eur),
        ship_tos: Default::default(),
    };
    let mut role_limits = BTreeMap::new();
    if let Some(c) = a.buyer_role_limit {
        role_limits.insert(Role::Buyer, eur(c));
    }
    Account {
        id: AccountId::parse(a.id).expect("valid id"),
        name: format!("Account {}", a.id),
        segment: Segment::parse(a.segment).expect("valid segment"),
        currency: Currency::parse(CURRENCY).expect("valid currency"),
        credit_limit: eur(a.limit_cents),
        open_receivables: eur(a.receivables_cents),
        payment_terms: "NET30".into(),
        ship_tos: a
            .ship_tos
            .iter()
            .map(|(id, lat, lon)| ShipTo {
                id: ShipToId::parse(id).expect("valid id"),
                address: format!("Dock {id}"),
                location: GeoPoint::new(*lat, *lon).expect("valid point"),
            })
            .collect(),
        users: vec![user(a.buyer, Role::Buyer), user(a.approver, Role::Approver)],
        rules: ApprovalRules {
            role_limits,
            restricted_skus: a
                .restricted
                .iter()
                .map(|s| Sku::parse(s).expect("valid sku"))
                .collect(),
            approve_new_ship_to: a.approve_new_ship_to,
        },
        removed_users: Default::default(),
    }
}

/// Loads the world into a fresh engine as the system caller.
pub async fn seed(engine: &Engine) -> Result<(), String> {
    let sys = Caller::system();
    let fail = |what: &str, e: String| format!("seeding {what}: {e}");
    engine
        .import_catalog(&sys, catalog())
        .await
        .map_err(|e| fail("catalog", e.to_string()))?
        .map_err(|e| fail("catalog", e.join("; ")))?;
    engine
        .import_warehouses(&sys, warehouses())
        .await
        .map_err(|e| fail("warehouses", e.to_string()))?;
    let rows = STOCK
        .iter()
        .map(|(w, s, q)| {
            (
                WarehouseId::parse(w).expect("valid id"),
                Sku::parse(s).expect("valid sku"),
                *q,
            )
        })
        .collect();
    engine
        .set_stock(&sys, rows)
        .await
        .map_err(|e| fail("stock", e.to_string()))?;
    for a in &ACCOUNTS {
        engine
            .put_account(&sys, account(a))
            .await
            .map_err(|e| fail(a.id, e.to_string()))?
            .map_err(|e| fail(a.id, e.to_string()))?;
    }
    // After the accounts its contracts name.
    engine
        .import_prices(&sys, prices(0))
        .await
        .map_err(|e| fail("prices", e.to_string()))?
        .map_err(|e| fail("prices", e.join("; ")))?;
    Ok(())
}
