//! CSV imports for master data, shared by `POST /v1/admin/import/{kind}` and `orderd import`.
//! Every row is parsed first; any bad row refuses the whole file and every problem is listed
//! with its line number. The rows are then stored account by account (accounts, ship_tos,
//! users) or warehouse by warehouse (stock), each all or none: one refused as a whole (the
//! account as merged fails its checks, a count below the stock held, a busy account) is
//! reported with the accounts or warehouses stored before it; so is one that orderd's state
//! interrupts (a write turned away, a shutdown), marked as such (`ImportRefusal::interrupted`:
//! the API answers 503 or 500, not 422). Importing the (corrected) file again is safe: every
//! import sets what it names. A catalog or prices file is the whole
//! catalog or price book: what it does not have is removed (`catalog::import_catalog`).
//!
//! What rows name must exist (a stock row's warehouse and SKU, a ship-to's or user's account,
//! an account's restricted SKUs, a price's SKU, contract account and segment), so files are
//! imported in this order: catalog, warehouses, stock, accounts, ship_tos, users, prices.
//!
//! A column that its kind does not have refuses the file (a misspelled optional column would
//! otherwise be read as empty). Accounts and users are merged into what exists: an optional
//! column the file does not have leaves that field of an existing account or user as it is;
//! an empty value in a column the file has clears it.
//!
//! | kind       | columns                                                                                   |
//! |------------|-------------------------------------------------------------------------------------------|
//! | catalog    | sku, description, uom, pack_size, min_qty, status, segments (`a;b`), kit (`SKU*2;SKU*1`)  |
//! | prices     | level (list/segment/contract), owner (segment or account), sku, currency, valid_from, valid_to, tiers (`1:10.00;10:9.50`) |
//! | accounts   | id, name, segment, currency, credit_limit, open_receivables, payment_terms, buyer_limit, approver_limit, restricted_skus (`a;b`), approve_new_ship_to (true/false) |
//! | ship_tos   | account, id, address, lat, lon                                                            |
//! | users      | account, id, name, roles (`buyer;approver`), spending_limit, currency, ship_tos (`HQ;PLANT`, empty: all) |
//! | warehouses | id, name, lat, lon, speeds (`express:300:1;standard:2000:3` = speed:max km:days)           |
//! | stock      | warehouse, sku, on_hand                                                                   |

use orderd_actors::audit::Caller;
use orderd_actors::engine::{ImportRefusal, IMPORT_ERRORS_MAX as ERRORS_MAX};
use orderd_actors::ActorError;
use orderd_actors::Engine;
use orderd_domain::account::{
    Account, ApprovalRules, Role, ShipTo, User, ACCOUNT_NAME_LEN_MAX, ADDRESS_LEN_MAX,
    PAYMENT_TERMS_LEN_MAX,
};
use orderd_domain::catalog::{check_item, CatalogItem, ItemStatus, KitComponent};
use orderd_domain::date::Date;
use orderd_domain::geo::GeoPoint;
use orderd_domain::ids::{AccountId, Segment, ShipToId, Sku, UserId, WarehouseId};
use orderd_domain::money::{Currency, Money, MONEY_SCALE, UNIT_PRICE_SCALE_MAX};
use orderd_domain::pricing::{check_entry, PriceEntry, PriceLevel, Tier};
use orderd_domain::rejection::Rejection;
use orderd_domain::validation::DELIVERY_SPEED_LEN_MAX;
use orderd_domain::warehouse::{SpeedBand, Warehouse, WAREHOUSE_NAME_LEN_MAX};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Catalog,
    Prices,
    Accounts,
    ShipTos,
    Users,
    Warehouses,
    Stock,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Catalog,
        Kind::Prices,
        Kind::Accounts,
        Kind::ShipTos,
        Kind::Users,
        Kind::Warehouses,
        Kind::Stock,
    ];

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s.replace('-', "_"))
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Catalog => "catalog",
            Kind::Prices => "prices",
            Kind::Accounts => "accounts",
            Kind::ShipTos => "ship_tos",
            Kind::Users => "users",
            Kind::Warehouses => "warehouses",
            Kind::Stock => "stock",
        }
    }
    pub fn names() -> String {
        Kind::ALL.map(|k| k.name()).join(", ")
    }
}

type Errors = Vec<String>;

/// `value` when it is at most `max` characters; else what is wrong, naming `column`.
fn text(column: &str, value: String, max: usize) -> Result<String, String> {
    if value.chars().count() > max {
        return Err(format!("column {column}: at most {max} characters"));
    }
    Ok(value)
}

/// `errors` with at most [`ERRORS_MAX`] of them, and a last one saying so when cut.
fn capped(mut errors: Errors) -> Errors {
    if errors.len() > ERRORS_MAX {
        errors.truncate(ERRORS_MAX);
        errors.push(format!("stopping after {ERRORS_MAX} errors"));
    }
    errors
}

/// Parses and applies one import. Returns the number of rows applied; a refusal lists at most
/// [`ERRORS_MAX`] problems (and a last line saying so when there were more).
pub async fn import(
    engine: &Engine,
    caller: &Caller,
    kind: Kind,
    csv: &[u8],
    rows_max: usize,
) -> Result<usize, ImportRefusal> {
    apply_import(engine, caller, kind, csv, rows_max)
        .await
        .map_err(|r| ImportRefusal {
            errors: capped(r.errors),
            ..r
        })
}

/// [`import`], its problems not yet capped.
async fn apply_import(
    engine: &Engine,
    caller: &Caller,
    kind: Kind,
    csv: &[u8],
    rows_max: usize,
) -> Result<usize, ImportRefusal> {
    let internal =
        |e: orderd_actors::ActorError| ImportRefusal::interrupted(vec![], vec![], "import", &e);
    match kind {
        Kind::Catalog => {
            let items = parse_apart(csv, rows_max, catalog_row, catalog_sets())
                .await?
                .rows;
            // Checks across items (a kit's components) come back from building the catalog.
            Ok(engine
                .import_catalog(caller, items)
                .await
                .map_err(internal)??)
        }
        Kind::Prices => {
            let entries = parse_apart(csv, rows_max, price_row, price_sets())
                .await?
                .rows;
            Ok(engine
                .import_prices(caller, entries)
                .await
                .map_err(internal)??)
        }
        Kind::Warehouses => {
            let ws = parse_apart(csv, rows_max, warehouse_row, warehouse_sets())
                .await?
                .rows;
            Ok(engine
                .import_warehouses(caller, ws)
                .await
                .map_err(internal)?)
        }
        Kind::Stock => {
            let rows = parse_apart(csv, rows_max, stock_row, stock_sets())
                .await?
                .rows;
            engine.set_stock(caller, rows).await
        }
        Kind::Accounts => {
            let Parsed { rows, columns } =
                parse_apart(csv, rows_max, account_row, account_sets()).await?;
            let unlisted = unlisted_restrictions(&engine.catalog.load().catalog, &rows);
            if !unlisted.is_empty() {
                return Err(unlisted.into());
            }
            let carried = AccountColumns::of(&columns);
            let n = rows.len();
            let mut stored = vec![];
            for a in rows {
                let id = a.id.clone();
                let merge = move |current: &mut Account, imported| carried.merge(current, imported);
                answered(&id, engine.import_account(caller, a, merge).await, &stored)?;
                stored.push(id);
            }
            Ok(n)
        }
        Kind::ShipTos => {
            let rows = parse_apart(csv, rows_max, ship_to_row, ship_to_sets())
                .await?
                .rows;
            merge(engine, caller, rows, |a, s: ShipTo| {
                upsert(&mut a.ship_tos, s, |x| x.id.clone())
            })
            .await
        }
        Kind::Users => {
            let Parsed { rows, columns } =
                parse_apart(csv, rows_max, user_row, user_sets()).await?;
            let carried = UserColumns::of(&columns);
            merge(engine, caller, rows, move |a, u: ImportedUser| {
                u.put(a, carried)
            })
            .await
        }
    }
}

/// The accounts' restricted SKUs that are not in the catalog: such a restriction would hold
/// nothing back (a misspelt SKU), so the file is refused before any account is stored.
fn unlisted_restrictions(catalog: &orderd_domain::catalog::Catalog, rows: &[Account]) -> Errors {
    rows.iter()
        .flat_map(|a| {
            (a.rules.restricted_skus.iter())
                .filter(|sku| catalog.get(sku).is_none())
                .map(move |sku| {
                    format!(
                        "account {}: restricted SKU {sku} is not in the catalog",
                        a.id
                    )
                })
        })
        .take(ERRORS_MAX + 1)
        .collect()
}

/// An account write's answer as the import reports it, with the accounts `stored` before.
fn answered(
    id: &AccountId,
    r: Result<Result<Account, Rejection>, ActorError>,
    stored: &[AccountId],
) -> Result<(), ImportRefusal> {
    let stored = stored.iter().map(AccountId::to_string).collect();
    let errors = match r {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(Rejection::Invalid(problems))) => problems.into_iter().map(|p| p.message).collect(),
        Ok(Err(rej)) => vec![format!("account {id}: {rej}")],
        Err(e) => {
            let what = format!("account {id}");
            return Err(ImportRefusal::interrupted(stored, vec![], &what, &e));
        }
    };
    Err(ImportRefusal {
        stored,
        errors,
        interrupted: None,
    })
}

/// Applies rows that belong to existing accounts, each account's in its actor (to the account
/// as it holds it); every unknown account is an error.
async fn merge<T: Send + 'static>(
    engine: &Engine,
    caller: &Caller,
    rows: Vec<(AccountId, T)>,
    apply: impl Fn(&mut Account, T) + Copy + Send + 'static,
) -> Result<usize, ImportRefusal> {
    let n = rows.len();
    let mut by_account: BTreeMap<AccountId, Vec<T>> = BTreeMap::new();
    for (a, t) in rows {
        by_account.entry(a).or_default().push(t);
    }
    let missing: Errors = by_account
        .keys()
        .filter(|a| !engine.accounts.exists(a))
        .map(|a| format!("account {a} does not exist"))
        .collect();
    if !missing.is_empty() {
        return Err(missing.into());
    }
    let mut stored = vec![];
    for (id, items) in by_account {
        let update = move |account: &mut Account| {
            for t in items {
                apply(account, t);
            }
        };
        let r = engine.update_account(caller, &id, Box::new(update)).await;
        answered(&id, r, &stored)?;
        stored.push(id);
    }
    Ok(n)
}

fn upsert<T, K: PartialEq>(list: &mut Vec<T>, item: T, key: impl Fn(&T) -> K) {
    match list.iter_mut().find(|x| key(x) == key(&item)) {
        Some(slot) => *slot = item,
        None => list.push(item),
    }
}

/// The rows of a file, and the columns its header names.
#[derive(Debug)]
struct Parsed<T> {
    rows: Vec<T>,
    columns: Columns,
}

/// The columns a file's header names, each known to its kind and named once.
#[derive(Debug)]
struct Columns(csv::StringRecord);

impl Columns {
    /// The header of a file of rows `R`: every column must be one of `R`'s fields.
    fn check<R: DeserializeOwned>(headers: csv::StringRecord) -> Result<Columns, Errors> {
        let known = serde_aux::serde_introspection::serde_introspect::<R>();
        let mut errors = vec![];
        for (i, h) in headers.iter().enumerate() {
            if !known.contains(&h) {
                errors.push(format!(
                    "line 1: unknown column {h:?} (the columns are {})",
                    known.join(", ")
                ));
            } else if headers.iter().take(i).any(|earlier| earlier == h) {
                errors.push(format!("line 1: column {h:?} appears twice"));
            }
        }
        if errors.is_empty() {
            Ok(Columns(headers))
        } else {
            Err(errors)
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|h| h == name)
    }
}

/// [`parse`] on the blocking pool: a large file takes seconds, which must not stall the
/// runtime's workers (and the orders they capture).
async fn parse_apart<R, T, K>(
    csv: &[u8],
    rows_max: usize,
    convert: fn(R) -> Result<T, String>,
    sets: Sets<T, K>,
) -> Result<Parsed<T>, Errors>
where
    R: DeserializeOwned + 'static,
    T: Send + 'static,
    K: Eq + std::hash::Hash + 'static,
{
    let csv = csv.to_vec();
    tokio::task::spawn_blocking(move || parse(&csv, rows_max, convert, sets))
        .await
        .map_err(|e| vec![format!("import failed: {e}")])?
}

/// Reads every record, converting each; all errors are collected with line numbers.
fn parse<R: DeserializeOwned, T, K: Eq + std::hash::Hash>(
    csv: &[u8],
    rows_max: usize,
    convert: impl Fn(R) -> Result<T, String>,
    sets: Sets<T, K>,
) -> Result<Parsed<T>, Errors> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(csv);
    let headers = reader
        .headers()
        .map_err(|e| vec![format!("line 1: {e}")])?
        .clone();
    let columns = Columns::check::<R>(headers)?;
    let headers = &columns.0;
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    // The line of the row that set each key.
    let mut set_by: HashMap<K, u64> = HashMap::new();
    let mut record = csv::StringRecord::new();
    let mut rows = 0;
    loop {
        // Lines as the file has them (a quoted field may span lines).
        let (line, converted) = match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => (
                record.position().map_or(0, csv::Position::line),
                record
                    .deserialize::<R>(Some(headers))
                    .map_err(|e| field_error(&e, headers))
                    .and_then(&convert),
            ),
            Err(e) => (
                e.position().map_or(0, csv::Position::line),
                Err(e.to_string()),
            ),
        };
        rows += 1;
        if rows > rows_max {
            errors.push(format!("more than {rows_max} rows"));
            break;
        }
        match converted {
            Ok(t) => match set_by.entry((sets.key)(&t)) {
                Entry::Occupied(first) => errors.push(format!(
                    "line {line}: sets {} again (line {})",
                    (sets.what)(&t),
                    first.get()
                )),
                Entry::Vacant(v) => {
                    v.insert(line);
                    out.push(t);
                }
            },
            Err(e) => errors.push(format!("line {line}: {e}")),
        }
        if errors.len() > ERRORS_MAX {
            break;
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push("the file has no rows".into());
    }
    if errors.is_empty() {
        Ok(Parsed { rows: out, columns })
    } else {
        Err(errors)
    }
}

/// A row that does not fit its kind's columns, said without the CSV reader's own position
/// (the caller names the line): the column and what is wrong with its value.
fn field_error(e: &csv::Error, headers: &csv::StringRecord) -> String {
    match e.kind() {
        csv::ErrorKind::Deserialize { err, .. } => {
            let column = err
                .field()
                .and_then(|i| headers.get(usize::try_from(i).ok()?));
            match column {
                Some(c) => format!("column {c}: {}", err.kind()),
                None => err.kind().to_string(),
            }
        }
        _ => e.to_string(),
    }
}

/// What the rows of a kind set: rows with the same `key` set the same thing, which a file may
/// do once; `what` names it in an error.
struct Sets<T, K> {
    key: fn(&T) -> K,
    what: fn(&T) -> String,
}

fn catalog_sets() -> Sets<CatalogItem, Sku> {
    Sets {
        key: |i| i.sku.clone(),
        what: |i| format!("SKU {}", i.sku),
    }
}

/// Prices: one row per level, SKU, currency and validity window. Windows may overlap (a
/// promotion over a base price): pricing takes the valid row whose window started last, then
/// the one ending first (`PriceBook::entry_for`).
fn price_sets() -> Sets<PriceEntry, PriceKey> {
    Sets {
        key: |e| {
            let window = (e.valid_from, e.valid_to);
            (e.level.clone(), e.sku.clone(), e.currency(), window)
        },
        what: |e| {
            let level = match &e.level {
                PriceLevel::List => "list".to_owned(),
                PriceLevel::Segment(s) => format!("segment {s}"),
                PriceLevel::Contract(a) => format!("contract {a}"),
            };
            format!("the {level} price of {} for the same days", e.sku)
        },
    }
}

type PriceKey = (
    PriceLevel,
    Sku,
    Option<Currency>,
    (Option<Date>, Option<Date>),
);

fn warehouse_sets() -> Sets<Warehouse, WarehouseId> {
    Sets {
        key: |w| w.id.clone(),
        what: |w| format!("warehouse {}", w.id),
    }
}

fn stock_sets() -> Sets<(WarehouseId, Sku, u64), (WarehouseId, Sku)> {
    Sets {
        key: |r| (r.0.clone(), r.1.clone()),
        what: |r| format!("the stock of {} in {}", r.1, r.0),
    }
}

fn account_sets() -> Sets<Account, AccountId> {
    Sets {
        key: |a| a.id.clone(),
        what: |a| format!("account {}", a.id),
    }
}

fn ship_to_sets() -> Sets<(AccountId, ShipTo), (AccountId, ShipToId)> {
    Sets {
        key: |r| (r.0.clone(), r.1.id.clone()),
        what: |r| format!("ship-to {} of {}", r.1.id, r.0),
    }
}

fn user_sets() -> Sets<(AccountId, ImportedUser), (AccountId, UserId)> {
    Sets {
        key: |r| (r.0.clone(), r.1.user.id.clone()),
        what: |r| format!("user {} of {}", r.1.user.id, r.0),
    }
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(';').map(str::trim).filter(|x| !x.is_empty())
}

fn opt(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|x| !x.is_empty())
}

#[derive(Deserialize)]
struct CatalogRow {
    sku: String,
    description: String,
    uom: String,
    pack_size: u32,
    min_qty: u32,
    status: String,
    #[serde(default)]
    segments: String,
    #[serde(default)]
    kit: String,
}

fn catalog_row(r: CatalogRow) -> Result<CatalogItem, String> {
    let status = match r.status.as_str() {
        "active" => ItemStatus::Active,
        "discontinued" => ItemStatus::Discontinued,
        "blocked" => ItemStatus::Blocked,
        other => {
            return Err(format!(
                "status {other:?} is not active, discontinued or blocked"
            ))
        }
    };
    let segments = list(&r.segments)
        .map(Segment::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let kit = list(&r.kit)
        .map(|c| {
            let (sku, qty) = c
                .split_once('*')
                .ok_or_else(|| format!("kit component {c:?} is not SKU*QTY"))?;
            Ok(KitComponent {
                sku: Sku::parse(sku).map_err(|e| e.to_string())?,
                qty: qty
                    .trim()
                    .parse()
                    .map_err(|_| format!("kit quantity {qty:?}"))?,
            })
        })
        .collect::<Result<_, String>>()?;
    let item = CatalogItem {
        sku: Sku::parse(&r.sku).map_err(|e| e.to_string())?,
        description: r.description,
        uom: r.uom,
        pack_size: r.pack_size,
        min_qty: r.min_qty,
        status,
        segments,
        kit,
    };
    check_item(&item)?;
    Ok(item)
}

#[derive(Deserialize)]
struct PriceRow {
    level: String,
    #[serde(default)]
    owner: String,
    sku: String,
    currency: String,
    #[serde(default)]
    valid_from: String,
    #[serde(default)]
    valid_to: String,
    tiers: String,
}

fn price_row(r: PriceRow) -> Result<PriceEntry, String> {
    let level = match (r.level.as_str(), opt(&r.owner)) {
        ("list", None) => PriceLevel::List,
        ("segment", Some(o)) => PriceLevel::Segment(Segment::parse(o).map_err(|e| e.to_string())?),
        ("contract", Some(o)) => {
            PriceLevel::Contract(AccountId::parse(o).map_err(|e| e.to_string())?)
        }
        (l, o) => {
            return Err(format!(
                "level {l:?} with owner {o:?}: list has no owner; segment and contract need one"
            ))
        }
    };
    let currency = Currency::parse(&r.currency).map_err(|e| e.to_string())?;
    let date = |s: &str| {
        opt(s)
            .map(Date::parse)
            .transpose()
            .map_err(|e| e.to_string())
    };
    let tiers = list(&r.tiers)
        .map(|t| {
            let (q, p) = t
                .split_once(':')
                .ok_or_else(|| format!("tier {t:?} is not QTY:PRICE"))?;
            Ok(Tier {
                min_qty: q
                    .trim()
                    .parse()
                    .map_err(|_| format!("tier quantity {q:?}"))?,
                unit_price: Money::parse(p, currency, UNIT_PRICE_SCALE_MAX)
                    .map_err(|e| e.to_string())?,
            })
        })
        .collect::<Result<_, String>>()?;
    let mut entry = PriceEntry {
        level,
        sku: Sku::parse(&r.sku).map_err(|e| e.to_string())?,
        valid_from: date(&r.valid_from)?,
        valid_to: date(&r.valid_to)?,
        tiers,
    };
    entry.tiers.sort_by_key(|t| t.min_qty);
    check_entry(&entry)?;
    Ok(entry)
}

#[derive(Deserialize)]
struct AccountRow {
    id: String,
    name: String,
    segment: String,
    currency: String,
    credit_limit: String,
    open_receivables: String,
    payment_terms: String,
    #[serde(default)]
    buyer_limit: String,
    #[serde(default)]
    approver_limit: String,
    #[serde(default)]
    restricted_skus: String,
    #[serde(default)]
    approve_new_ship_to: String,
}

fn account_row(r: AccountRow) -> Result<Account, String> {
    let currency = Currency::parse(&r.currency).map_err(|e| e.to_string())?;
    let money = |s: &str| Money::parse(s, currency, MONEY_SCALE).map_err(|e| e.to_string());
    let mut role_limits = BTreeMap::new();
    for (role, v) in [
        (Role::Buyer, &r.buyer_limit),
        (Role::Approver, &r.approver_limit),
    ] {
        if let Some(v) = opt(v) {
            role_limits.insert(role, money(v)?);
        }
    }
    let approve_new_ship_to = match r.approve_new_ship_to.as_str() {
        "" | "false" => false,
        "true" => true,
        other => {
            return Err(format!(
                "approve_new_ship_to {other:?} is not true or false"
            ))
        }
    };
    Ok(Account {
        id: AccountId::parse(&r.id).map_err(|e| e.to_string())?,
        name: text("name", r.name, ACCOUNT_NAME_LEN_MAX)?,
        segment: Segment::parse(&r.segment).map_err(|e| e.to_string())?,
        currency,
        credit_limit: money(&r.credit_limit)?,
        open_receivables: money(&r.open_receivables)?,
        payment_terms: text("payment_terms", r.payment_terms, PAYMENT_TERMS_LEN_MAX)?,
        ship_tos: vec![],
        users: vec![],
        rules: ApprovalRules {
            role_limits,
            restricted_skus: list(&r.restricted_skus)
                .map(Sku::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
            approve_new_ship_to,
        },
        // An import never removes users; the account keeps its removals (see `put_account`).
        removed_users: Default::default(),
    })
}

/// Which of the optional columns of an accounts file it has.
#[derive(Clone, Copy)]
struct AccountColumns {
    buyer_limit: bool,
    approver_limit: bool,
    restricted_skus: bool,
    approve_new_ship_to: bool,
}

impl AccountColumns {
    fn of(columns: &Columns) -> Self {
        AccountColumns {
            buyer_limit: columns.has("buyer_limit"),
            approver_limit: columns.has("approver_limit"),
            restricted_skus: columns.has("restricted_skus"),
            approve_new_ship_to: columns.has("approve_new_ship_to"),
        }
    }

    /// An existing account as the import leaves it: `imported`, but with the account's own
    /// ship-tos and users (they have imports of their own) and every approval rule the file has
    /// no column for.
    fn merge(self, current: &mut Account, imported: Account) {
        let mut merged = Account {
            ship_tos: std::mem::take(&mut current.ship_tos),
            users: std::mem::take(&mut current.users),
            removed_users: std::mem::take(&mut current.removed_users),
            ..imported
        };
        let (rules, kept) = (&mut merged.rules, &mut current.rules);
        for (role, carried) in [
            (Role::Buyer, self.buyer_limit),
            (Role::Approver, self.approver_limit),
        ] {
            if !carried {
                match kept.role_limits.remove(&role) {
                    Some(limit) => rules.role_limits.insert(role, limit),
                    None => rules.role_limits.remove(&role),
                };
            }
        }
        if !self.restricted_skus {
            rules.restricted_skus = std::mem::take(&mut kept.restricted_skus);
        }
        if !self.approve_new_ship_to {
            rules.approve_new_ship_to = kept.approve_new_ship_to;
        }
        *current = merged;
    }
}

#[derive(Deserialize)]
struct ShipToRow {
    account: String,
    id: String,
    address: String,
    lat: f64,
    lon: f64,
}

fn ship_to_row(r: ShipToRow) -> Result<(AccountId, ShipTo), String> {
    let location = GeoPoint::new(r.lat, r.lon)
        .ok_or_else(|| format!("lat/lon {},{} out of range", r.lat, r.lon))?;
    Ok((
        AccountId::parse(&r.account).map_err(|e| e.to_string())?,
        ShipTo {
            id: ShipToId::parse(&r.id).map_err(|e| e.to_string())?,
            address: text("address", r.address, ADDRESS_LEN_MAX)?,
            location,
        },
    ))
}

#[derive(Deserialize)]
struct UserRow {
    account: String,
    id: String,
    name: String,
    roles: String,
    #[serde(default)]
    spending_limit: String,
    #[serde(default)]
    currency: String,
    /// Assigned ship-tos (`HQ;PLANT`); empty means all of the account's.
    #[serde(default)]
    ship_tos: String,
}

/// A user row: the user, and whether its spending limit named a currency (without one, the
/// limit is in the account's currency, set where the account is at hand).
struct ImportedUser {
    user: User,
    limit_currency_given: bool,
}

fn user_row(r: UserRow) -> Result<(AccountId, ImportedUser), String> {
    let roles = list(&r.roles)
        .map(|x| Role::parse(x).ok_or_else(|| format!("unknown role {x:?}")))
        .collect::<Result<_, _>>()?;
    let given = opt(&r.currency).map(Currency::parse).transpose();
    let given = given.map_err(|e| e.to_string())?;
    let spending_limit = match opt(&r.spending_limit) {
        None => None,
        // A placeholder currency when none is given; `put` sets the account's.
        Some(v) => {
            let cur = given.unwrap_or(Currency::parse("XXX").expect("valid code"));
            Some(Money::parse(v, cur, MONEY_SCALE).map_err(|e| e.to_string())?)
        }
    };
    let user = User {
        id: UserId::parse(&r.id).map_err(|e| e.to_string())?,
        name: r.name,
        roles,
        spending_limit,
        ship_tos: list(&r.ship_tos)
            .map(ShipToId::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
    };
    Ok((
        AccountId::parse(&r.account).map_err(|e| e.to_string())?,
        ImportedUser {
            user,
            limit_currency_given: given.is_some(),
        },
    ))
}

/// Which of the optional columns of a users file it has.
#[derive(Clone, Copy)]
struct UserColumns {
    spending_limit: bool,
    ship_tos: bool,
}

impl UserColumns {
    fn of(columns: &Columns) -> Self {
        UserColumns {
            spending_limit: columns.has("spending_limit"),
            ship_tos: columns.has("ship_tos"),
        }
    }
}

impl ImportedUser {
    /// Writes the user into `account` (one removed by the account admin is created again). An
    /// existing user keeps the spending limit and ship-tos the file has no column for.
    fn put(self, account: &mut Account, carried: UserColumns) {
        let mut user = self.user;
        // The file's amount without a currency is in the account's. A limit kept from the
        // stored user keeps its own currency (`Account::check` refuses one the account's
        // currency no longer matches, instead of reading it in another currency).
        if !self.limit_currency_given {
            if let Some(limit) = &mut user.spending_limit {
                limit.currency = account.currency;
            }
        }
        if let Some(existing) = account.user(&user.id) {
            if !carried.spending_limit {
                user.spending_limit = existing.spending_limit;
            }
            if !carried.ship_tos {
                user.ship_tos = existing.ship_tos.clone();
            }
        }
        account.put_user(user);
    }
}

#[derive(Deserialize)]
struct WarehouseRow {
    id: String,
    name: String,
    lat: f64,
    lon: f64,
    speeds: String,
}

fn warehouse_row(r: WarehouseRow) -> Result<Warehouse, String> {
    let location = GeoPoint::new(r.lat, r.lon)
        .ok_or_else(|| format!("lat/lon {},{} out of range", r.lat, r.lon))?;
    let speeds: Vec<SpeedBand> = list(&r.speeds)
        .map(|b| {
            let parts: Vec<&str> = b.split(':').collect();
            match parts.as_slice() {
                [speed, km, days] => Ok(SpeedBand {
                    // Orders name a speed of at most this many bytes.
                    speed: (!speed.is_empty() && speed.len() <= DELIVERY_SPEED_LEN_MAX)
                        .then(|| speed.to_string())
                        .ok_or_else(|| {
                            format!("speed {speed:?}: 1 to {DELIVERY_SPEED_LEN_MAX} bytes")
                        })?,
                    max_distance_km: km
                        .parse::<f64>()
                        .ok()
                        .filter(|d| d.is_finite() && *d >= 0.0)
                        .ok_or_else(|| format!("distance {km:?} is not a number of km"))?,
                    days: days.parse().map_err(|_| format!("days {days:?}"))?,
                }),
                _ => Err(format!("speed band {b:?} is not speed:km:days")),
            }
        })
        .collect::<Result<_, String>>()?;
    if speeds.len() > orderd_domain::warehouse::SPEED_BANDS_MAX {
        return Err(format!(
            "at most {} speed bands",
            orderd_domain::warehouse::SPEED_BANDS_MAX
        ));
    }
    if let Some(twice) = (speeds.iter().enumerate()).find_map(|(i, b)| {
        speeds[..i]
            .iter()
            .any(|a| a.speed == b.speed && a.max_distance_km == b.max_distance_km)
            .then_some(b)
    }) {
        return Err(format!(
            "speed band {}:{} is given twice",
            twice.speed, twice.max_distance_km
        ));
    }
    Ok(Warehouse {
        id: WarehouseId::parse(&r.id).map_err(|e| e.to_string())?,
        name: text("name", r.name, WAREHOUSE_NAME_LEN_MAX)?,
        location,
        speeds,
    })
}

#[derive(Deserialize)]
struct StockRow {
    warehouse: String,
    sku: String,
    on_hand: u64,
}

fn stock_row(r: StockRow) -> Result<(WarehouseId, Sku, u64), String> {
    Ok((
        WarehouseId::parse(&r.warehouse).map_err(|e| e.to_string())?,
        Sku::parse(&r.sku).map_err(|e| e.to_string())?,
        r.on_hand,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every bad row is reported with its line; good files parse.
    #[test]
    fn csv_rows_parse_or_report_every_line() {
        let good = "sku,description,uom,pack_size,min_qty,status,segments,kit\nA,Bolt,EA,1,1,active,,\nK,Kit,EA,1,1,active,retail;wholesale,A*2\n";
        let items = parse(good.as_bytes(), 10, catalog_row, catalog_sets())
            .unwrap()
            .rows;
        assert_eq!(items[1].kit[0].qty, 2);
        assert_eq!(items[1].segments.len(), 2);
        let bad = "sku,description,uom,pack_size,min_qty,status,segments,kit\nA,Bolt,EA,x,1,active,,\nB,Nut,EA,1,1,sold,,\nC,Pin,EA,1,1,active,,\n";
        let errs = parse(bad.as_bytes(), 10, catalog_row, catalog_sets()).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(
            errs[0], "line 2: column pack_size: invalid digit found in string",
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("line 3:") && errs[1].contains("sold"),
            "{errs:?}"
        );
        let prices = "level,owner,sku,currency,valid_from,valid_to,tiers\nlist,,A,EUR,,,1:10.00;10:9.50\ncontract,ACME,A,EUR,2026-01-01,2026-12-31,1:8\nsegment,,A,EUR,,,1:1\n";
        let errs = parse(prices.as_bytes(), 10, price_row, price_sets()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("line 4:"), "{errs:?}");
        assert!(parse(
            b"sku,description,uom,pack_size,min_qty,status,segments,kit\n",
            10,
            catalog_row,
            catalog_sets()
        )
        .is_err());
        let many = "warehouse,sku,on_hand\nW,A,1\nW,B,1\nW,C,1\n";
        assert!(
            parse(many.as_bytes(), 2, stock_row, stock_sets()).unwrap_err()[0]
                .contains("more than 2")
        );
    }

    // Lines are the file's own: a quoted field over two lines counts two. A row that sets
    // what an earlier one set is refused, naming both lines; prices may overlap in time (a
    // promotion over a base price), but not repeat one window.
    #[test]
    fn lines_are_the_files_and_a_thing_is_set_once() {
        let csv = "sku,description,uom,pack_size,min_qty,status,segments,kit\nA,\"Bolt,\nlong\",EA,1,1,active,,\nB,Nut,EA,x,1,active,,\nA,Bolt,EA,1,1,active,,\n";
        let errs = parse(csv.as_bytes(), 10, catalog_row, catalog_sets()).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("line 4: "), "{errs:?}");
        assert_eq!(errs[1], "line 5: sets SKU A again (line 2)");
        let header = "level,owner,sku,currency,valid_from,valid_to,tiers\n";
        let apart = format!(
            "{header}list,,A,EUR,,2026-06-30,1:10\nlist,,A,EUR,2026-07-01,,1:11\nlist,,A,USD,,,1:12\n"
        );
        let entries = parse(apart.as_bytes(), 10, price_row, price_sets()).unwrap();
        assert_eq!(entries.rows.len(), 3);
        let promotion =
            format!("{header}list,,A,EUR,2026-07-01,2026-07-31,1:8\nlist,,A,EUR,,,1:10\n");
        let entries = parse(promotion.as_bytes(), 10, price_row, price_sets()).unwrap();
        assert_eq!(entries.rows.len(), 2);
        let again = format!("{header}list,,A,EUR,2026-07-01,,1:10\nlist,,A,EUR,2026-07-01,,1:11\n");
        let errs = parse(again.as_bytes(), 10, price_row, price_sets()).unwrap_err();
        assert_eq!(
            errs,
            ["line 3: sets the list price of A for the same days again (line 2)"]
        );
        let stock = "warehouse,sku,on_hand\nW,A,1\nW,A,2\n";
        let errs = parse(stock.as_bytes(), 10, stock_row, stock_sets()).unwrap_err();
        assert_eq!(errs, ["line 3: sets the stock of A in W again (line 2)"]);
    }

    // A warehouse names each speed band (speed and distance) once: the same band twice with
    // other days would be ambiguous. The same speed over other distances is a band each.
    // An item is shown to at most ITEM_SEGMENTS_MAX segments.
    #[test]
    fn speed_bands_once_and_segments_bounded() {
        let header = "id,name,lat,lon,speeds\n";
        let ok = format!("{header}W,West,52.5,13.4,standard:300:2;standard:2000:3\n");
        let ws = parse(ok.as_bytes(), 10, warehouse_row, warehouse_sets()).unwrap();
        assert_eq!(ws.rows[0].speeds.len(), 2);
        let twice =
            format!("{header}W,West,52.5,13.4,standard:300:2;express:300:1;standard:300:3\n");
        let errs = parse(twice.as_bytes(), 10, warehouse_row, warehouse_sets()).unwrap_err();
        assert_eq!(errs, ["line 2: speed band standard:300 is given twice"]);
        let max = orderd_domain::catalog::ITEM_SEGMENTS_MAX;
        let segments = |n: usize| {
            (0..n)
                .map(|i| format!("s{i}"))
                .collect::<Vec<_>>()
                .join(";")
        };
        let header = "sku,description,uom,pack_size,min_qty,status,segments,kit\n";
        let csv = |n| format!("{header}A,Bolt,EA,1,1,active,{},\n", segments(n));
        assert!(parse(csv(max).as_bytes(), 10, catalog_row, catalog_sets()).is_ok());
        let errs = parse(csv(max + 1).as_bytes(), 10, catalog_row, catalog_sets()).unwrap_err();
        assert_eq!(
            errs,
            [format!(
                "line 2: an item is shown to at most {max} segments"
            )]
        );
    }
}
