//! Read-mostly master data as one immutable snapshot (catalog, price book, warehouses and
//! their handles), swapped whole on import so readers never lock.

use crate::audit::{AuditEntry, Caller};
use crate::records;
use crate::warehouse::WarehouseHandle;
use crate::ActorError;
use arc_swap::ArcSwap;
use orderd_domain::account::Account;
use orderd_domain::allocation::Availability;
use orderd_domain::catalog::{Catalog, CatalogItem};
use orderd_domain::ids::{AccountId, Segment, WarehouseId};
use orderd_domain::pricing::{PriceBook, PriceEntry, PriceLevel};
use orderd_domain::warehouse::Warehouse;
use orderd_storage::{Batch, Journal};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Default)]
pub struct Snapshot {
    pub catalog: Catalog,
    pub prices: PriceBook,
    pub warehouses: Vec<Warehouse>,
    pub handles: BTreeMap<WarehouseId, WarehouseHandle>,
}

impl Snapshot {
    /// Free stock, per warehouse, of every SKU these items are held as (a kit as its
    /// components), read from each warehouse's shared view (no message).
    pub fn free_stock<'a>(&self, items: impl IntoIterator<Item = &'a CatalogItem>) -> Availability {
        let mut out = Availability::new(
            items
                .into_iter()
                .flat_map(|item| item.stock_demand(1).into_iter().map(|(s, _)| s))
                .collect(),
        );
        for (id, handle) in &self.handles {
            let row = handle.free(out.skus());
            out.set(id.clone(), row);
        }
        out
    }
}

#[derive(Clone, Default)]
pub struct CatalogStore(Arc<ArcSwap<Snapshot>>);

impl CatalogStore {
    pub fn new(s: Snapshot) -> CatalogStore {
        CatalogStore(Arc::new(ArcSwap::from_pointee(s)))
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    fn replace(&self, f: impl Fn(&Snapshot) -> Snapshot) {
        // rcu retries `f` if another swap happened meanwhile, so nothing is lost.
        self.0.rcu(|cur| Arc::new(f(cur)));
    }
}

/// `f` on the blocking pool: building the snapshot of a large import (its checks, the word
/// index) takes seconds, which must not hold up a runtime worker.
async fn apart<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ActorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ActorError::Invariant(format!("building an import: {e}")))
}

/// A batch in which `build` writes the new records under `prefix` and the audit entry, and
/// which removes every old record under `prefix` it does not write again (a batch may not both
/// write and remove a key). Built on the blocking pool: it reads the old keys from sled and
/// encodes every record, seconds for a million items, which must not hold up a runtime worker.
async fn replacing_batch(
    journal: &Journal,
    prefix: &'static str,
    build: impl FnOnce(&mut Batch) + Send + 'static,
) -> Result<Batch, ActorError> {
    let journal = journal.clone();
    apart(move || -> Result<Batch, ActorError> {
        let mut batch = Batch::default();
        build(&mut batch);
        debug_assert!(batch
            .puts
            .iter()
            .all(|(k, _)| k.starts_with(prefix.as_bytes())));
        let written: std::collections::HashSet<&[u8]> =
            batch.puts.iter().map(|(k, _)| k.as_slice()).collect();
        let stale: Vec<Vec<u8>> = journal
            .scan_prefix(prefix.as_bytes())?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !written.contains(k.as_slice()))
            .collect();
        batch.removes.extend(stale);
        Ok(batch)
    })
    .await?
}

/// Replaces the whole catalog: items not in `items` are removed. Durable before it is visible.
pub async fn import_catalog(
    store: &CatalogStore,
    journal: &Journal,
    caller: &Caller,
    items: Vec<CatalogItem>,
) -> Result<Result<usize, Vec<String>>, ActorError> {
    let (built, items) = apart(move || (Catalog::new(items.clone()), items)).await?;
    let catalog = match built {
        Ok(c) => c,
        Err(errs) => return Ok(Err(errs.into_iter().map(|e| e.to_string()).collect())),
    };
    let caller = caller.clone();
    let batch = replacing_batch(journal, records::CATALOG, move |batch| {
        for item in &items {
            batch.put(records::catalog_key(&item.sku), records::encode(item));
        }
        let digest = records::encode(&items);
        batch
            .audit
            .push(AuditEntry::new(&caller, None, "catalog.import", &digest).draft("catalog"));
    })
    .await?;
    journal.submit(batch).await?;
    let n = catalog.len();
    store.replace(|cur| Snapshot {
        catalog: catalog.clone(),
        prices: cur.prices.clone(),
        warehouses: cur.warehouses.clone(),
        handles: cur.handles.clone(),
    });
    Ok(Ok(n))
}

/// Replaces the whole price book. Its entries must name what exists (see [`dangling`]): the
/// book replaces the old one whole, so a misspelt SKU, account or segment would otherwise
/// drop that price without a word.
pub async fn import_prices(
    store: &CatalogStore,
    journal: &Journal,
    caller: &Caller,
    entries: Vec<PriceEntry>,
) -> Result<Result<usize, Vec<String>>, ActorError> {
    let (snap, j) = (store.load(), journal.clone());
    let (checked, entries) = apart(move || {
        let checked = records::load_accounts(&j).map(|accounts| {
            let dangling = dangling(&snap.catalog, &accounts, &entries);
            match dangling.is_empty() {
                true => PriceBook::new(entries.clone())
                    .map_err(|errs| errs.into_iter().map(|e| e.to_string()).collect()),
                false => Err(dangling),
            }
        });
        (checked, entries)
    })
    .await?;
    let book = match checked? {
        Ok(b) => b,
        Err(errors) => return Ok(Err(errors)),
    };
    let (caller, n) = (caller.clone(), entries.len());
    let batch = replacing_batch(journal, records::PRICE, move |batch| {
        for (i, e) in entries.iter().enumerate() {
            batch.put(format!("{}{i:08}", records::PRICE), records::encode(e));
        }
        let digest = records::encode(&entries);
        batch
            .audit
            .push(AuditEntry::new(&caller, None, "prices.import", &digest).draft("prices"));
    })
    .await?;
    journal.submit(batch).await?;
    store.replace(|cur| Snapshot {
        catalog: cur.catalog.clone(),
        prices: book.clone(),
        warehouses: cur.warehouses.clone(),
        handles: cur.handles.clone(),
    });
    Ok(Ok(n))
}

/// What price entries name that does not exist, each named once with the number of entries
/// naming it: a SKU not in the catalog, a contract's account that is not stored, a segment
/// that no account is in and no catalog item is shown to. One more than
/// [`crate::engine::IMPORT_ERRORS_MAX`] at most (which tells the import's reader there are more).
pub fn dangling(catalog: &Catalog, accounts: &[Account], entries: &[PriceEntry]) -> Vec<String> {
    let ids: BTreeSet<&AccountId> = accounts.iter().map(|a| &a.id).collect();
    let segments: BTreeSet<&Segment> = (accounts.iter().map(|a| &a.segment))
        .chain(catalog.items().flat_map(|i| &i.segments))
        .collect();
    let mut missing: BTreeMap<String, usize> = BTreeMap::new();
    for e in entries {
        if catalog.get(&e.sku).is_none() {
            *missing
                .entry(format!("SKU {} is not in the catalog", e.sku))
                .or_default() += 1;
        }
        let owner = match &e.level {
            PriceLevel::Contract(a) if !ids.contains(a) => {
                format!("contract account {a} does not exist (import accounts before the prices that name them)")
            }
            PriceLevel::Segment(s) if !segments.contains(s) => {
                format!("segment {s} has no account and no catalog item (a misspelt segment?)")
            }
            _ => continue,
        };
        *missing.entry(owner).or_default() += 1;
    }
    missing
        .into_iter()
        .take(crate::engine::IMPORT_ERRORS_MAX + 1)
        .map(|(what, n)| match n {
            1 => format!("{what}: 1 price row names it"),
            n => format!("{what}: {n} price rows name it"),
        })
        .collect()
}

/// Reads the stored catalog and price book.
pub fn load_master(journal: &Journal) -> Result<(Catalog, PriceBook, Vec<Warehouse>), ActorError> {
    let items: Vec<CatalogItem> = records::load_all(journal, records::CATALOG)?;
    let catalog = Catalog::restore(items)
        .map_err(|e| ActorError::Invariant(format!("stored catalog is invalid: {e:?}")))?;
    let prices: Vec<PriceEntry> = records::load_all(journal, records::PRICE)?;
    let prices = PriceBook::new(prices)
        .map_err(|e| ActorError::Invariant(format!("stored prices are invalid: {e:?}")))?;
    let warehouses: Vec<Warehouse> = records::load_all(journal, records::WAREHOUSE)?;
    Ok((catalog, prices, warehouses))
}

pub(crate) fn set_warehouses(
    store: &CatalogStore,
    warehouses: Vec<Warehouse>,
    handles: BTreeMap<WarehouseId, WarehouseHandle>,
) {
    store.replace(|cur| Snapshot {
        catalog: cur.catalog.clone(),
        prices: cur.prices.clone(),
        warehouses: warehouses.clone(),
        handles: handles.clone(),
    });
}
