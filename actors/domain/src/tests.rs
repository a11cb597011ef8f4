//! Table-driven tests across modules: every validation code, warehouse choice, credit, approval.

use crate::account::{Account, ApprovalRules, Role, ShipTo, User, USER_NAME_LEN_MAX};
use crate::allocation::{plan, Availability, PlanInput};
use crate::approval;
use crate::catalog::{Catalog, CatalogItem, ItemStatus, KitComponent};
use crate::credit;
use crate::date::Date;
use crate::geo::GeoPoint;
use crate::grant::Grant;
use crate::ids::*;
use crate::money::{Currency, Money};
use crate::pricing::{PriceBook, PriceEntry, PriceLevel, Tier};
use crate::validation::*;
use crate::warehouse::{SpeedBand, Warehouse};
use std::collections::BTreeSet;

fn eur(s: &str) -> Money {
    Money::parse(s, Currency::parse("EUR").unwrap(), 4).unwrap()
}
fn sku(s: &str) -> Sku {
    Sku::parse(s).unwrap()
}
fn wid(s: &str) -> WarehouseId {
    WarehouseId::parse(s).unwrap()
}

fn item(code: &str) -> CatalogItem {
    CatalogItem {
        sku: sku(code),
        description: format!("item {code}"),
        uom: "EA".into(),
        pack_size: 1,
        min_qty: 1,
        status: ItemStatus::Active,
        segments: BTreeSet::new(),
        kit: vec![],
    }
}

struct Fixture {
    account: Account,
    catalog: Catalog,
    prices: PriceBook,
    warehouses: Vec<Warehouse>,
    /// Who orders in `ctx`.
    user: UserId,
}

fn fixture() -> Fixture {
    let mut packed = item("PACK");
    packed.pack_size = 6;
    packed.min_qty = 12;
    let mut hidden = item("HIDDEN");
    hidden.segments.insert(Segment::parse("wholesale").unwrap());
    let mut disc = item("OLD");
    disc.status = ItemStatus::Discontinued;
    let mut blocked = item("BLK");
    blocked.status = ItemStatus::Blocked;
    let mut kit = item("KIT");
    kit.kit = vec![
        KitComponent {
            sku: sku("A"),
            qty: 2,
        },
        KitComponent {
            sku: sku("B"),
            qty: 1,
        },
    ];
    // Kits of an orderable item and one that is not.
    let kit_of = |code: &str, component: &str| CatalogItem {
        kit: vec![
            KitComponent {
                sku: sku("A"),
                qty: 1,
            },
            KitComponent {
                sku: sku(component),
                qty: 1,
            },
        ],
        ..item(code)
    };
    let catalog = Catalog::new(vec![
        kit_of("OLDKIT", "OLD"),
        kit_of("BLKKIT", "BLK"),
        item("A"),
        item("B"),
        item("NOPRICE"),
        packed,
        hidden,
        disc,
        blocked,
        kit,
    ])
    .unwrap();
    let list = |s: &str, p: &str| PriceEntry {
        level: PriceLevel::List,
        sku: sku(s),
        valid_from: None,
        valid_to: None,
        tiers: vec![Tier {
            min_qty: 1,
            unit_price: eur(p),
        }],
    };
    let prices = PriceBook::new(vec![
        list("A", "10.00"),
        list("B", "5.00"),
        list("PACK", "1.00"),
        list("HIDDEN", "1.00"),
        list("OLD", "1.00"),
        list("BLK", "1.00"),
        list("KIT", "20.00"),
        list("OLDKIT", "11.00"),
        list("BLKKIT", "11.00"),
    ])
    .unwrap();
    let account = Account {
        id: AccountId::parse("ACME").unwrap(),
        name: "Acme".into(),
        segment: Segment::parse("retail").unwrap(),
        currency: Currency::parse("EUR").unwrap(),
        credit_limit: eur("1000"),
        open_receivables: eur("100"),
        payment_terms: "NET30".into(),
        ship_tos: vec![
            ShipTo {
                id: ShipToId::parse("BERLIN").unwrap(),
                address: "Berlin".into(),
                location: GeoPoint::new(52.52, 13.40).unwrap(),
            },
            ShipTo {
                id: ShipToId::parse("MUNICH").unwrap(),
                address: "Munich".into(),
                location: GeoPoint::new(48.14, 11.58).unwrap(),
            },
        ],
        users: vec![User {
            id: UserId::parse("bob").unwrap(),
            name: "Bob".into(),
            roles: BTreeSet::from([Role::Buyer]),
            spending_limit: Some(eur("200")),
            ship_tos: BTreeSet::new(),
        }],
        rules: ApprovalRules {
            role_limits: [(Role::Buyer, eur("500"))].into(),
            restricted_skus: BTreeSet::from([sku("B")]),
            approve_new_ship_to: true,
        },
        removed_users: BTreeSet::new(),
    };
    let band = |speed: &str, km: f64, days| SpeedBand {
        speed: speed.into(),
        max_distance_km: km,
        days,
    };
    let warehouses = vec![
        Warehouse {
            id: wid("BER"),
            name: "Berlin".into(),
            location: GeoPoint::new(52.4, 13.5).unwrap(),
            speeds: vec![band("express", 300.0, 1), band("standard", 2000.0, 3)],
        },
        Warehouse {
            id: wid("MUC"),
            name: "Munich".into(),
            location: GeoPoint::new(48.2, 11.6).unwrap(),
            speeds: vec![band("express", 300.0, 1), band("standard", 2000.0, 3)],
        },
        Warehouse {
            id: wid("HAM"),
            name: "Hamburg".into(),
            location: GeoPoint::new(53.55, 10.0).unwrap(),
            speeds: vec![band("standard", 2000.0, 2)],
        },
    ];
    Fixture {
        account,
        catalog,
        prices,
        warehouses,
        user: UserId::parse("bob").unwrap(),
    }
}

fn ctx(f: &Fixture) -> PricingContext<'_> {
    PricingContext {
        account: &f.account,
        user: &f.user,
        catalog: &f.catalog,
        prices: &f.prices,
        warehouses: &f.warehouses,
        today: Date::parse("2026-11-22").unwrap(),
        lines_max: 3,
    }
}

fn line(s: &str, qty: u32) -> LineRequest {
    LineRequest {
        sku: s.into(),
        qty,
        note: None,
        warehouse: None,
        quoted_unit_price: None,
    }
}

/// A line naming its warehouse.
fn line_at(s: &str, qty: u32, warehouse: &str) -> LineRequest {
    LineRequest {
        warehouse: Some(warehouse.into()),
        ..line(s, qty)
    }
}

/// A line of "A" whose note is `chars` characters of two bytes each (notes are bounded in bytes).
fn noted(chars: usize) -> LineRequest {
    LineRequest {
        note: Some("é".repeat(chars)),
        ..line("A", 1)
    }
}

fn req(lines: Vec<LineRequest>) -> OrderRequest {
    OrderRequest {
        lines,
        ship_to: Some("BERLIN".into()),
        ..Default::default()
    }
}

/// A problem's code and line.
type Coded = (ProblemCode, Option<u32>);

fn codes(c: &Checked) -> Vec<Coded> {
    c.problems.iter().map(|p| (p.code, p.line)).collect()
}

// Each catalog/quantity/price/header code, alone, on the line it concerns.
#[test]
fn every_validation_code_is_reported_on_its_line() {
    use ProblemCode::*;
    let f = fixture();
    let quoted = LineRequest {
        quoted_unit_price: Some("9.99".parse().unwrap()),
        ..line("A", 1)
    };
    let bad_wh = LineRequest {
        warehouse: Some("NOPE".into()),
        ..line("A", 1)
    };
    let table: Vec<(OrderRequest, Vec<Coded>)> = vec![
        (req(vec![line("ZZZ", 1)]), vec![(UnknownSku, Some(1))]),
        (req(vec![line("bad sku", 1)]), vec![(UnknownSku, Some(1))]),
        (req(vec![line("HIDDEN", 1)]), vec![(NotVisible, Some(1))]),
        (req(vec![line("OLD", 1)]), vec![(Discontinued, Some(1))]),
        (req(vec![line("BLK", 1)]), vec![(Blocked, Some(1))]),
        (req(vec![line("OLDKIT", 1)]), vec![(Discontinued, Some(1))]),
        (req(vec![line("BLKKIT", 1)]), vec![(Blocked, Some(1))]),
        (req(vec![line("PACK", 6)]), vec![(BelowMinimum, Some(1))]),
        (
            req(vec![line("PACK", 13)]),
            vec![(NotPackMultiple, Some(1))],
        ),
        (req(vec![line("A", 0)]), vec![(InvalidQuantity, Some(1))]),
        (
            req(vec![noted(NOTE_LEN_MAX / 2 + 1)]),
            vec![(InvalidField, Some(1))],
        ),
        (req(vec![noted(NOTE_LEN_MAX / 2)]), vec![]),
        (req(vec![line("NOPRICE", 1)]), vec![(NoPrice, Some(1))]),
        (req(vec![quoted]), vec![(PriceChanged, Some(1))]),
        (req(vec![bad_wh]), vec![(UnknownWarehouse, Some(1))]),
        (req(vec![]), vec![(EmptyOrder, None)]),
        (req(vec![line("A", 1); 4]), vec![(TooManyLines, None)]),
        // Its lines are checked too, up to the hard ceiling.
        (
            req(vec![
                line("A", 1),
                line("A", 1),
                line("ZZZ", 1),
                line("A", 1),
            ]),
            vec![(TooManyLines, None), (UnknownSku, Some(3))],
        ),
        (
            req(vec![line("ZZZ", 1); ORDER_LINES_MAX + 1]),
            vec![(TooManyLines, None)],
        ),
        (
            OrderRequest {
                ship_to: Some("PARIS".into()),
                ..req(vec![line("A", 1)])
            },
            vec![(UnknownShipTo, None)],
        ),
        (
            OrderRequest {
                ship_to: None,
                ..req(vec![line("A", 1)])
            },
            vec![(UnknownShipTo, None)],
        ),
        (
            OrderRequest {
                delivery_speed: Some("teleport".into()),
                ..req(vec![line("A", 1)])
            },
            vec![(InvalidField, None)],
        ),
        // Several problems at once, on their own lines.
        (
            req(vec![line("A", 1), line("ZZZ", 1), line("PACK", 7)]),
            vec![
                (UnknownSku, Some(2)),
                (BelowMinimum, Some(3)),
                (NotPackMultiple, Some(3)),
            ],
        ),
    ];
    for (r, want) in table {
        let got = ctx(&f);
        let checked = check_order(&got, &r);
        assert_eq!(codes(&checked), want, "request {r:?}");
        assert!(checked.problems.iter().all(|p| !p.message.is_empty()));
    }
}

// A clean order prices every line with its source.
#[test]
fn clean_order_is_priced() {
    let f = fixture();
    let c = check_order(&ctx(&f), &req(vec![line("A", 3), line("KIT", 1)]));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.lines[0].line_total, eur("30.00"));
    assert_eq!(c.lines[0].price_source.level, "list");
    assert_eq!(c.total(&f.account), eur("50.00"));
    assert_eq!(c.ship_to.unwrap().id.as_str(), "BERLIN");
}

// A user assigned to some ship-tos orders only to those (ship_to_not_assigned otherwise, with
// the field named); without a ship-to in the request their only assigned one is the default.
// A user without assignment, or without a record, orders anywhere in the account.
#[test]
fn assigned_ship_tos_limit_where_a_user_orders() {
    let mut f = fixture();
    f.account.users.push(User {
        id: UserId::parse("carl").unwrap(),
        name: "Carl".into(),
        roles: BTreeSet::from([Role::Buyer]),
        spending_limit: None,
        ship_tos: BTreeSet::from([ShipToId::parse("MUNICH").unwrap()]),
    });
    let to = |s: Option<&str>| OrderRequest {
        ship_to: s.map(Into::into),
        ..req(vec![line("A", 1)])
    };
    for (user, ship_to, want) in [
        ("carl", Some("BERLIN"), Some(ProblemCode::ShipToNotAssigned)),
        ("carl", Some("MUNICH"), None),
        ("carl", None, None),
        ("bob", Some("BERLIN"), None),
        ("bob", None, Some(ProblemCode::UnknownShipTo)),
        ("nobody", Some("MUNICH"), None),
    ] {
        f.user = UserId::parse(user).unwrap();
        let c = check_order(&ctx(&f), &to(ship_to));
        let got = c.problems.first().map(|p| p.code);
        assert_eq!(got, want, "{user} to {ship_to:?}: {:?}", c.problems);
        if let Some(p) = c.problems.first() {
            assert_eq!(p.field.as_deref(), Some("ship_to"));
        }
        if want.is_none() {
            assert!(c.ship_to.is_some());
        }
    }
}

// An account admin's user record: only account roles, the account's currency and ship-tos, a
// name of bounded length; every bad field is named.
#[test]
fn user_records_are_checked_field_by_field() {
    let f = fixture();
    let good = User {
        id: UserId::parse("dora").unwrap(),
        name: "Dora".into(),
        roles: BTreeSet::from([Role::Buyer, Role::AccountAdmin]),
        spending_limit: Some(eur("10")),
        ship_tos: BTreeSet::from([ShipToId::parse("BERLIN").unwrap()]),
    };
    assert!(f.account.check_user(&good).is_empty());
    let usd = Money::parse("1", Currency::parse("USD").unwrap(), 2).unwrap();
    for (bad, field) in [
        (
            User {
                roles: BTreeSet::from([Role::Operator]),
                ..good.clone()
            },
            "roles",
        ),
        (
            User {
                roles: BTreeSet::from([Role::Buyer, Role::Warehouse]),
                ..good.clone()
            },
            "roles",
        ),
        (
            User {
                roles: BTreeSet::new(),
                ..good.clone()
            },
            "roles",
        ),
        (
            User {
                name: " ".into(),
                ..good.clone()
            },
            "name",
        ),
        (
            User {
                name: "x".repeat(USER_NAME_LEN_MAX + 1),
                ..good.clone()
            },
            "name",
        ),
        (
            User {
                spending_limit: Some(usd),
                ..good.clone()
            },
            "spending_limit",
        ),
        (
            User {
                ship_tos: BTreeSet::from([ShipToId::parse("PARIS").unwrap()]),
                ..good.clone()
            },
            "ship_tos",
        ),
    ] {
        let errs = f.account.check_user(&bad);
        assert_eq!(errs.len(), 1, "{bad:?}: {errs:?}");
        assert_eq!(errs[0].field, field, "{bad:?}");
    }
}

fn avail(rows: &[(&str, &str, u64)]) -> Availability {
    let mut a = Availability::new(rows.iter().map(|(_, s, _)| sku(s)).collect());
    for (w, s, q) in rows {
        a.add(&wid(w), &sku(s), *q);
    }
    a
}

fn plan_for(
    f: &Fixture,
    ship_to: &str,
    speed: Option<&str>,
    split: bool,
    lines: Vec<LineRequest>,
    a: Availability,
) -> Result<Vec<Vec<(String, u32)>>, Vec<Problem>> {
    let r = OrderRequest {
        ship_to: Some(ship_to.into()),
        delivery_speed: speed.map(Into::into),
        allow_split: split,
        lines,
        customer_po: None,
    };
    let c = check_order(&ctx(f), &r);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let input = PlanInput {
        catalog: &f.catalog,
        warehouses: &f.warehouses,
        ship_to: c.ship_to.as_ref().map(|s| s.location),
        delivery_speed: speed,
        allow_split: split,
    };
    plan(&input, &c.lines, a).map(|p| {
        p.into_iter()
            .map(|allocs| {
                allocs
                    .into_iter()
                    .map(|x| (x.warehouse.to_string(), x.qty))
                    .collect()
            })
            .collect()
    })
}

// A split line is split in whole packs: PACK comes in 6s, so BER's 5 are no part of it.
#[test]
fn a_split_keeps_whole_packs() {
    let f = fixture();
    let split_24 = |stock| {
        plan_for(
            &f,
            "BERLIN",
            Some("express"),
            true,
            vec![line("PACK", 24)],
            stock,
        )
    };
    let stock = avail(&[("BER", "PACK", 5), ("HAM", "PACK", 19), ("MUC", "PACK", 10)]);
    assert_eq!(
        split_24(stock).unwrap(),
        vec![vec![("HAM".into(), 18), ("MUC".into(), 6)]]
    );
    let short = avail(&[("BER", "PACK", 5), ("HAM", "PACK", 11), ("MUC", "PACK", 11)]);
    let e = split_24(short).unwrap_err();
    assert_eq!(
        e[0].code,
        ProblemCode::OutOfStock,
        "27 units, but 12 in packs"
    );
}

// Warehouse choice: buyer's choice, fastest for the speed, nearest with stock, split only when allowed.
#[test]
fn warehouse_choice() {
    let f = fixture();
    // No delivery speed, no split, to Berlin.
    let berlin = |lines, stock| plan_for(&f, "BERLIN", None, false, lines, stock);
    let all = avail(&[("BER", "A", 10), ("MUC", "A", 10), ("HAM", "A", 10)]);
    // Express to Munich: MUC is next-day.
    assert_eq!(
        plan_for(
            &f,
            "MUNICH",
            Some("express"),
            false,
            vec![line("A", 5)],
            all.clone()
        )
        .unwrap(),
        vec![vec![("MUC".into(), 5)]]
    );
    // Standard to Berlin: HAM is 2 days, BER and MUC 3 -> HAM wins on speed, not distance.
    assert_eq!(
        plan_for(
            &f,
            "BERLIN",
            Some("standard"),
            false,
            vec![line("A", 5)],
            all.clone()
        )
        .unwrap(),
        vec![vec![("HAM".into(), 5)]]
    );
    // Buyer's choice wins.
    let chosen = line_at("A", 5, "MUC");
    assert_eq!(
        plan_for(
            &f,
            "BERLIN",
            Some("express"),
            false,
            vec![chosen],
            all.clone()
        )
        .unwrap(),
        vec![vec![("MUC".into(), 5)]]
    );
    // Only BER does express to Berlin and it has too little: the nearest other with stock
    // (HAM, 255 km) beats MUC (504 km).
    let short = avail(&[("BER", "A", 2), ("MUC", "A", 10), ("HAM", "A", 10)]);
    assert_eq!(
        plan_for(
            &f,
            "BERLIN",
            Some("express"),
            false,
            vec![line("A", 5)],
            short.clone()
        )
        .unwrap(),
        vec![vec![("HAM".into(), 5)]]
    );
    // No speed: nearest to Berlin with stock is BER... when it has enough.
    assert_eq!(
        berlin(vec![line("A", 2)], short.clone()).unwrap(),
        vec![vec![("BER".into(), 2)]]
    );
    // Nobody can fill 15 alone: refused without split, split across by preference with it.
    let e = plan_for(
        &f,
        "BERLIN",
        Some("express"),
        false,
        vec![line("A", 15)],
        short.clone(),
    )
    .unwrap_err();
    assert_eq!(e[0].code, ProblemCode::OutOfStock);
    assert_eq!(
        e[0].available
            .iter()
            .map(|w| (w.warehouse.to_string(), w.qty))
            .collect::<Vec<_>>(),
        vec![("BER".into(), 2), ("HAM".into(), 10), ("MUC".into(), 10)]
    );
    assert_eq!(
        plan_for(
            &f,
            "BERLIN",
            Some("express"),
            true,
            vec![line("A", 15)],
            short
        )
        .unwrap(),
        vec![vec![
            ("BER".into(), 2),
            ("HAM".into(), 10),
            ("MUC".into(), 3)
        ]]
    );
    // Two lines of one SKU cannot count the same units.
    let one = avail(&[("BER", "A", 5)]);
    let e = berlin(vec![line("A", 3), line("A", 3)], one).unwrap_err();
    assert_eq!((e[0].code, e[0].line), (ProblemCode::OutOfStock, Some(2)));
    // A line naming its warehouse is planned first: the line before it, free to go anywhere,
    // does not take the stock only the named warehouse has.
    let named = line_at("A", 5, "BER");
    assert_eq!(
        berlin(
            vec![line("A", 5), named],
            avail(&[("BER", "A", 5), ("MUC", "A", 5)])
        )
        .unwrap(),
        vec![vec![("MUC".into(), 5)], vec![("BER".into(), 5)]]
    );
    // Planned out of turn, their problems still come in line order.
    let named = line_at("A", 50, "BER");
    let e = berlin(vec![line("A", 50), named], avail(&[("BER", "A", 5)])).unwrap_err();
    let lines: Vec<Option<u32>> = e.iter().map(|p| p.line).collect();
    assert_eq!(lines, [Some(1), Some(2)], "{e:?}");
    // A kit is filled from its components: 2xA + 1xB per kit.
    let kit_stock = avail(&[
        ("BER", "A", 4),
        ("BER", "B", 5),
        ("MUC", "A", 100),
        ("MUC", "B", 100),
    ]);
    assert_eq!(
        berlin(vec![line("KIT", 2)], kit_stock.clone()).unwrap(),
        vec![vec![("BER".into(), 2)]]
    );
    assert_eq!(
        berlin(vec![line("KIT", 3)], kit_stock).unwrap(),
        vec![vec![("MUC".into(), 3)]]
    );
}

// Without a ship-to, planning still tells what stock is missing (warehouses ranked by id).
#[test]
fn stock_is_checked_without_a_ship_to() {
    let f = fixture();
    let c = check_order(&ctx(&f), &req(vec![line("A", 15), line("B", 1)]));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let input = PlanInput {
        catalog: &f.catalog,
        warehouses: &f.warehouses,
        ship_to: None,
        delivery_speed: None,
        allow_split: true,
    };
    let stock = avail(&[("MUC", "A", 10), ("BER", "A", 4), ("HAM", "B", 1)]);
    let e = plan(&input, &c.lines, stock.clone()).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].code, e[0].line), (ProblemCode::OutOfStock, Some(1)));
    let available: Vec<(String, u64)> = (e[0].available.iter())
        .map(|w| (w.warehouse.to_string(), w.qty))
        .collect();
    assert_eq!(
        available,
        vec![("BER".into(), 4), ("HAM".into(), 0), ("MUC".into(), 10)]
    );
    let enough = avail(&[("MUC", "A", 11), ("BER", "A", 4), ("HAM", "B", 1)]);
    assert!(plan(&input, &c.lines, enough).is_ok());
}

// Credit: refused above the limit with the figures; exactly at the limit is fine.
#[test]
fn credit_check_figures() {
    let p = credit::check(eur("1000"), eur("900"), eur("100.01")).unwrap();
    assert_eq!(p.code, ProblemCode::CreditLimitExceeded);
    let c = p.credit.unwrap();
    assert_eq!(
        (c.limit, c.exposure, c.order_amount),
        (eur("1000"), eur("900"), eur("100.01"))
    );
    assert!(credit::check(eur("1000"), eur("900"), eur("100.00")).is_none());
}

// Approval rules: user limit beats role limit, a role without a limit orders with the buyer
// role's, restricted SKUs (also inside a kit), first order to a ship-to, a removed placer.
#[test]
fn approval_rules() {
    let f = fixture();
    let bob = UserId::parse("bob").unwrap();
    let ann = UserId::parse("ann").unwrap();
    let buyer = BTreeSet::from([Role::Buyer]);
    let admin = BTreeSet::from([Role::AccountAdmin]);
    let c = check_order(&ctx(&f), &req(vec![line("A", 25)]));
    let over = check_order(&ctx(&f), &req(vec![line("A", 51)]));
    let berlin = ShipToId::parse("BERLIN").unwrap();
    let r_as = |who: &UserId, roles: &BTreeSet<Role>, c: &Checked, used| {
        approval::reasons(
            &f.account,
            &approval::Submitter { user: who, roles },
            &c.lines,
            &f.catalog,
            c.total(&f.account),
            &berlin,
            used,
        )
    };
    let r = |who: &UserId, c: &Checked, used| r_as(who, &buyer, c, used);
    assert_eq!(r(&bob, &c, true).len(), 1, "250 > bob's own 200");
    assert!(r(&ann, &c, true).is_empty(), "250 <= buyer role's 500");
    assert_eq!(r(&ann, &over, true).len(), 1, "510 > buyer role's 500");
    assert_eq!(
        r_as(&ann, &admin, &over, true),
        r(&ann, &over, true),
        "an account admin without a limit of the role orders with the buyer role's"
    );
    assert_eq!(r(&ann, &c, false).len(), 1, "first order to BERLIN");
    let restricted = check_order(&ctx(&f), &req(vec![line("B", 1)]));
    assert!(r(&ann, &restricted, true)[0].contains("restricted"));
    let kit = check_order(&ctx(&f), &req(vec![line("KIT", 1)]));
    assert_eq!(
        r(&ann, &kit, true),
        vec!["restricted items need approval: KIT".to_owned()],
        "B is one of the kit's components"
    );
    let mut removed = f.account.clone();
    assert!(removed.remove_user(&bob));
    let bobs = |account| {
        let who = approval::Submitter {
            user: &bob,
            roles: &buyer,
        };
        approval::reasons(account, &who, &c.lines, &f.catalog, eur("1"), &berlin, true)
    };
    assert!(bobs(&f.account).is_empty(), "1 <= bob's own 200");
    assert_eq!(
        bobs(&removed),
        ["placed by bob, who is no longer a user of the account"],
        "a removed placer's order waits, whatever its total"
    );
    let approver = BTreeSet::from([Role::Approver]);
    assert!(approval::may_approve(
        &f.account,
        &ann,
        &approver,
        eur("10000")
    ));
    // A limit in another currency than the order's is never read as a number in it (the
    // account's check refuses to store one): the order waits, and no one approves it on it.
    let mut usd = f.account.clone();
    let limit = Money::parse("200", Currency::parse("USD").unwrap(), 2).unwrap();
    usd.users
        .iter_mut()
        .for_each(|u| u.spending_limit = Some(limit));
    usd.rules.role_limits.values_mut().for_each(|m| *m = limit);
    let errs = usd.check().unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.contains("user bob's spending limit 200 USD")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("the buyer limit 200 USD")),
        "{errs:?}"
    );
    let who = approval::Submitter {
        user: &bob,
        roles: &buyer,
    };
    let r = approval::reasons(&usd, &who, &c.lines, &f.catalog, eur("1"), &berlin, true);
    assert_eq!(
        r,
        ["the spending limit 200 USD is not in the order's currency EUR"]
    );
    assert!(!approval::may_approve(&usd, &bob, &approver, eur("1")));
    assert!(
        !approval::may_approve(&f.account, &bob, &approver, eur("201")),
        "bob's own limit"
    );
    assert!(
        !approval::may_approve(&f.account, &ann, &buyer, eur("1")),
        "not an approver"
    );
}

// The account's records as grants: a record, none, a removal that is remembered until the user
// is created again, and replacing the account (an import) that keeps removals and counts a
// dropped user as removed. A user both present and removed is inconsistent.
#[test]
fn removed_users_are_remembered() {
    let mut a = fixture().account;
    let bob = UserId::parse("bob").unwrap();
    let ann = UserId::parse("ann").unwrap();
    assert_eq!(
        a.grant(&bob),
        Some(Grant::Roles(BTreeSet::from([Role::Buyer])))
    );
    assert_eq!(a.grant(&ann), None, "never had a record");
    let before = a.clone();
    assert!(a.remove_user(&bob));
    assert!(!a.remove_user(&bob), "already gone");
    assert_eq!(a.grant(&bob), Some(Grant::Removed));
    assert!(a.check().is_ok());

    // An import replaces the account with its old users: the removal stays.
    let mut replaced = before.clone();
    replaced.users.clear();
    let mut imported = replaced.clone();
    imported.keep_removals_of(&a);
    assert_eq!(imported.grant(&bob), Some(Grant::Removed));
    // A replacement that drops a user removes them, one that has them creates them again.
    let mut dropped = replaced;
    dropped.keep_removals_of(&before);
    assert_eq!(dropped.grant(&bob), Some(Grant::Removed));
    let mut again = before.clone();
    again.keep_removals_of(&a);
    assert_eq!(again.grant(&bob), before.grant(&bob));
    assert!(again.removed_users.is_empty());

    let user = before.users[0].clone();
    a.put_user(user);
    assert_eq!(a.grant(&bob), before.grant(&bob), "created again");
    assert!(a.removed_users.is_empty());

    a.removed_users.insert(bob);
    let errs = a.check().unwrap_err();
    assert!(errs.iter().any(|e| e.contains("both present and removed")));
}

// Availability keeps one row per warehouse, aligned with its sorted SKUs: a SKU outside the set
// reads 0 and is never added, a warehouse without a row reads 0 and gets one when added to.
#[test]
fn availability_rows() {
    let mut a = Availability::new(vec![sku("B"), sku("A"), sku("B")]);
    assert_eq!(a.skus(), [sku("A"), sku("B")]);
    a.set(wid("BER"), vec![3, 7]);
    assert_eq!(a.get(&wid("BER"), &sku("A")), 3);
    assert_eq!(a.get(&wid("BER"), &sku("B")), 7);
    assert_eq!(a.get(&wid("BER"), &sku("C")), 0);
    assert_eq!(a.get(&wid("MUC"), &sku("A")), 0);
    a.add(&wid("BER"), &sku("C"), 5);
    assert_eq!(a.get(&wid("BER"), &sku("C")), 0);
    a.add(&wid("MUC"), &sku("B"), 2);
    assert_eq!(a.get(&wid("MUC"), &sku("B")), 2);
    assert_eq!(a.get(&wid("MUC"), &sku("A")), 0);
    let mut ws: Vec<String> = a.warehouses().map(ToString::to_string).collect();
    ws.sort();
    assert_eq!(ws, ["BER", "MUC"]);
    // A kit of 2 A and 1 B: BER can make 1 (A limits), MUC none.
    let kit = [(sku("A"), 2), (sku("B"), 1)];
    assert_eq!(a.whole_units(&wid("BER"), &kit), 1);
    assert_eq!(a.whole_units(&wid("MUC"), &kit), 0);
}

#[test]
#[should_panic(expected = "a row per SKU of the set")]
fn availability_refuses_a_short_row() {
    let mut a = Availability::new(vec![sku("A"), sku("B")]);
    a.set(wid("BER"), vec![1]);
}
