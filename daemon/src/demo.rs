//! The demo data set of the embedded default, loaded when the store is empty: 300 SKUs with
//! quantity tiers (some kits, some discontinued or blocked, some only for wholesale), segment
//! and contract prices, six accounts in two segments with users and ship-tos, and three
//! warehouses in different cities with stock. Deterministic, so the README's walk-through works.

use orderd_actors::audit::Caller;
use orderd_actors::engine::ImportRefusal;
use orderd_actors::Engine;
use orderd_domain::account::{Account, ApprovalRules, Role, ShipTo, User};
use orderd_domain::catalog::{CatalogItem, ItemStatus, KitComponent};
use orderd_domain::geo::GeoPoint;
use orderd_domain::ids::{AccountId, Segment, ShipToId, Sku, UserId, WarehouseId};
use orderd_domain::money::{Currency, Money};
use orderd_domain::pricing::{PriceEntry, PriceLevel, Tier};
use orderd_domain::warehouse::{SpeedBand, Warehouse};
use orderd_domain::Decimal;
use orderd_storage::Batch;
use std::collections::BTreeSet;

pub const SKUS: usize = 300;
const KINDS: [(&str, &str, &str); 10] = [
    ("BOLT", "Hex bolt", "EA"),
    ("NUT", "Hex nut", "EA"),
    ("SCRW", "Wood screw", "BOX"),
    ("PIPE", "Copper pipe", "M"),
    ("CABL", "Power cable", "M"),
    ("GLOV", "Work gloves", "PR"),
    ("HELM", "Safety helmet", "EA"),
    ("DRIL", "Drill bit", "EA"),
    ("TAPE", "Insulation tape", "RL"),
    ("VALV", "Ball valve", "EA"),
];
const SIZES: [&str; 6] = ["M6", "M8", "M10", "small", "medium", "large"];

fn id<T>(parse: fn(&str) -> Result<T, orderd_domain::ids::IdError>, s: &str) -> T {
    parse(s).expect("demo ids are valid")
}

fn euros(whole: i64) -> Money {
    eur(whole * 100)
}

fn eur(cents: i64) -> Money {
    Money {
        amount: Decimal::new(cents, 2),
        currency: Currency::parse("EUR").expect("valid"),
    }
}

/// SKU code of item `i`, e.g. `BOLT-0012`.
pub fn sku_code(i: usize) -> String {
    format!("{}-{i:04}", KINDS[i % KINDS.len()].0)
}

fn catalog() -> Vec<CatalogItem> {
    let mut items: Vec<CatalogItem> = (0..SKUS)
        .map(|i| {
            let (_, name, uom) = KINDS[i % KINDS.len()];
            let mut segments = BTreeSet::new();
            if i % 29 == 7 {
                segments.insert(id(Segment::parse, "wholesale"));
            }
            CatalogItem {
                sku: id(Sku::parse, &sku_code(i)),
                description: format!("{name} {} grade {}", SIZES[i % SIZES.len()], 1 + i % 3),
                uom: uom.into(),
                pack_size: if uom == "BOX" { 10 } else { 1 },
                min_qty: if i % 17 == 3 { 5 } else { 1 },
                status: match i % 97 {
                    13 => ItemStatus::Discontinued,
                    41 => ItemStatus::Blocked,
                    _ => ItemStatus::Active,
                },
                segments,
                kit: vec![],
            }
        })
        .collect();
    for k in 0..5 {
        items.push(CatalogItem {
            sku: id(Sku::parse, &format!("KIT-{k:02}")),
            description: format!("Installer starter kit {k}"),
            uom: "KIT".into(),
            pack_size: 1,
            min_qty: 1,
            status: ItemStatus::Active,
            segments: BTreeSet::new(),
            kit: vec![
                KitComponent {
                    sku: id(Sku::parse, &sku_code(k * 10)),
                    qty: 4,
                },
                KitComponent {
                    sku: id(Sku::parse, &sku_code(k * 10 + 1)),
                    qty: 4,
                },
                KitComponent {
                    sku: id(Sku::parse, &sku_code(k * 10 + 6)),
                    qty: 1,
                },
            ],
        });
    }
    items
}

fn prices(items: &[CatalogItem]) -> Vec<PriceEntry> {
    let mut out = vec![];
    for (i, item) in items.iter().enumerate() {
        let base = 50 + (i as i64 * 37) % 2_000; // cents
        let tiers = |b: i64| {
            vec![
                Tier {
                    min_qty: 1,
                    unit_price: eur(b),
                },
                Tier {
                    min_qty: 10,
                    unit_price: eur(b * 95 / 100),
                },
                Tier {
                    min_qty: 100,
                    unit_price: eur(b * 85 / 100),
                },
            ]
        };
        out.push(PriceEntry {
            level: PriceLevel::List,
            sku: item.sku.clone(),
            valid_from: None,
            valid_to: None,
            tiers: tiers(base),
        });
        if i % 3 == 0 {
            out.push(PriceEntry {
                level: PriceLevel::Segment(id(Segment::parse, "wholesale")),
                sku: item.sku.clone(),
                valid_from: None,
                valid_to: None,
                tiers: tiers(base * 90 / 100),
            });
        }
        if i % 10 == 0 {
            out.push(PriceEntry {
                level: PriceLevel::Contract(id(AccountId::parse, "ACME")),
                sku: item.sku.clone(),
                valid_from: None,
                valid_to: None,
                tiers: vec![Tier {
                    min_qty: 1,
                    unit_price: eur(base * 80 / 100),
                }],
            });
        }
    }
    out
}

fn warehouses() -> Vec<Warehouse> {
    let bands = |express_km: f64| {
        vec![
            SpeedBand {
                speed: "express".into(),
                max_distance_km: express_km,
                days: 1,
            },
            SpeedBand {
                speed: "standard".into(),
                max_distance_km: 2_000.0,
                days: 3,
            },
        ]
    };
    [
        ("BER", "Berlin Nord", 52.56, 13.29),
        ("MUC", "München Süd", 48.10, 11.55),
        ("HAM", "Hamburg Hafen", 53.54, 9.98),
    ]
    .into_iter()
    .map(|(code, name, lat, lon)| Warehouse {
        id: id(WarehouseId::parse, code),
        name: name.into(),
        location: GeoPoint::new(lat, lon).expect("valid"),
        speeds: bands(300.0),
    })
    .collect()
}

fn city(name: &str) -> (f64, f64) {
    match name {
        "Berlin" => (52.52, 13.40),
        "Munich" => (48.14, 11.58),
        "Hamburg" => (53.55, 10.00),
        "Cologne" => (50.94, 6.96),
        "Frankfurt" => (50.11, 8.68),
        _ => (51.34, 12.37), // Leipzig
    }
}

/// The demo accounts: `(id, name, segment, credit limit in euros, cities)`.
const ACCOUNTS: [(&str, &str, &str, i64, &[&str]); 6] = [
    (
        "ACME",
        "Acme Construction GmbH",
        "wholesale",
        250_000,
        &["Berlin", "Munich"],
    ),
    (
        "BAUHAUS",
        "Bauhaus Renovierung KG",
        "wholesale",
        100_000,
        &["Hamburg"],
    ),
    ("KLEMPNER", "Klempner Meier", "retail", 20_000, &["Cologne"]),
    (
        "ELEKTRO",
        "Elektro Schulz",
        "retail",
        15_000,
        &["Frankfurt", "Leipzig"],
    ),
    (
        "HANDWERK",
        "Handwerk Hoffmann",
        "retail",
        5_000,
        &["Munich"],
    ),
    (
        "STADTWERK",
        "Stadtwerke Nord",
        "wholesale",
        500_000,
        &["Hamburg", "Berlin"],
    ),
];

fn accounts() -> Vec<Account> {
    ACCOUNTS
        .iter()
        .map(|(code, name, segment, limit, cities)| Account {
            id: id(AccountId::parse, code),
            name: (*name).into(),
            segment: id(Segment::parse, segment),
            currency: Currency::parse("EUR").expect("valid"),
            credit_limit: euros(*limit),
            open_receivables: euros(limit / 10), // 10% of the limit already invoiced
            payment_terms: "NET30".into(),
            ship_tos: cities
                .iter()
                .map(|c| {
                    let (lat, lon) = city(c);
                    ShipTo {
                        id: id(ShipToId::parse, &c.to_uppercase()),
                        address: format!("Hauptstraße 1, {c}"),
                        location: GeoPoint::new(lat, lon).expect("valid"),
                    }
                })
                .collect(),
            users: [
                ("alice", "Alice Buyer", &[Role::Buyer][..], Some(2_000)),
                (
                    "bob",
                    "Bob Approver",
                    &[Role::Buyer, Role::Approver][..],
                    None,
                ),
                (
                    "carol",
                    "Carol Admin",
                    &[Role::AccountAdmin, Role::Buyer][..],
                    None,
                ),
            ]
            .iter()
            .map(|(u, n, roles, limit)| User {
                id: id(UserId::parse, u),
                name: (*n).into(),
                roles: roles.iter().copied().collect(),
                spending_limit: limit.map(euros),
                ship_tos: Default::default(),
            })
            .collect(),
            rules: ApprovalRules {
                role_limits: [(Role::Buyer, euros(5_000))].into(),
                restricted_skus: [id(Sku::parse, &sku_code(6))].into(),
                approve_new_ship_to: false,
            },
            removed_users: Default::default(),
        })
        .collect()
}

/// Deterministic stock: most SKUs in stock everywhere, some scarce, some only in one place.
fn stock(items: &[CatalogItem], whs: &[Warehouse]) -> Vec<(WarehouseId, Sku, u64)> {
    let mut rows = vec![];
    for (i, item) in items.iter().enumerate().filter(|(_, it)| it.kit.is_empty()) {
        for (w, wh) in whs.iter().enumerate() {
            let q = match (i + w * 7) % 11 {
                0 => 0,
                1 => 3,
                _ => 200 + ((i * 131 + w * 977) % 1_800) as u64,
            };
            rows.push((wh.id.clone(), item.sku.clone(), q));
        }
    }
    rows
}

/// Journal key present while the demo set is being loaded: a load that a crash cut short (it is
/// several commits) is finished at the next start, since its steps are imports that may run
/// again. Without it, a store holding a catalog but no accounts would stay that way for good.
const LOADING_KEY: &[u8] = b"meta/demo_loading";

/// Loads the demo set into an empty store, or finishes a load that was cut short; whether it
/// loaded. A store with data of its own is left alone.
pub async fn load_if_wanted(engine: &Engine) -> anyhow::Result<bool> {
    let journal = &engine.journal;
    let resuming = journal.get(LOADING_KEY)?.is_some();
    let empty = engine.accounts.accounts().is_empty() && engine.catalog.load().catalog.is_empty();
    if !resuming && !empty {
        return Ok(false);
    }
    if resuming {
        tracing::warn!("the demo data load of an earlier start was cut short; loading it again");
    } else {
        let mut mark = Batch::default();
        mark.put(LOADING_KEY, Vec::new());
        journal.submit(mark).await?;
    }
    load(engine).await?;
    let mut done = Batch::default();
    done.remove(LOADING_KEY);
    journal.submit(done).await?;
    Ok(true)
}

/// Loads the demo set through the same paths as imports (so it is audited like one). Every
/// step replaces what it loads, so a load may run again over a part of itself.
async fn load(engine: &Engine) -> anyhow::Result<()> {
    let caller = Caller::system();
    let items = catalog();
    let whs = warehouses();
    let fail = |what: &str, e: ImportRefusal| anyhow::anyhow!("demo {what}: {e}");
    engine
        .import_catalog(&caller, items.clone())
        .await?
        .map_err(|e| fail("catalog", e.into()))?;
    engine.import_warehouses(&caller, whs.clone()).await?;
    engine
        .set_stock(&caller, stock(&items, &whs))
        .await
        .map_err(|e| fail("stock", e))?;
    for a in accounts() {
        engine
            .put_account(&caller, a)
            .await?
            .map_err(|e| anyhow::anyhow!("demo account: {e}"))?;
    }
    // After the accounts and segments its entries name.
    engine
        .import_prices(&caller, prices(&items))
        .await?
        .map_err(|e| fail("prices", e.into()))?;
    tracing::info!(
        skus = items.len(),
        accounts = ACCOUNTS.len(),
        warehouses = whs.len(),
        "demo data loaded"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_actors::Limits;
    use orderd_storage::{Journal, JournalConfig};

    // A first start cut short after the demo catalog went in (the load is several commits)
    // finishes the load at the next start; once loaded, nothing is loaded again.
    #[tokio::test]
    async fn a_demo_load_cut_short_is_finished_at_the_next_start() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let engine = Engine::start(journal.clone(), Limits::default())
            .await
            .unwrap();
        let mut mark = Batch::default();
        mark.put(LOADING_KEY, Vec::new());
        journal.submit(mark).await.unwrap();
        engine
            .import_catalog(&Caller::system(), catalog())
            .await
            .unwrap()
            .unwrap();
        assert!(load_if_wanted(&engine).await.unwrap());
        assert_eq!(engine.accounts.accounts().len(), ACCOUNTS.len());
        assert_eq!(engine.catalog.load().warehouses.len(), warehouses().len());
        assert!(journal.get(LOADING_KEY).unwrap().is_none());
        assert!(!load_if_wanted(&engine).await.unwrap());
    }

    // A store with data of its own (a catalog, no accounts yet) gets no demo data.
    #[tokio::test]
    async fn a_store_with_data_of_its_own_is_left_alone() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let engine = Engine::start(journal, Limits::default()).await.unwrap();
        engine
            .import_catalog(&Caller::system(), catalog()[..3].to_vec())
            .await
            .unwrap()
            .unwrap();
        assert!(!load_if_wanted(&engine).await.unwrap());
        assert!(engine.accounts.accounts().is_empty());
        assert_eq!(engine.catalog.load().catalog.len(), 3);
    }
}
