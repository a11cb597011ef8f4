//! The engine: rebuilds every actor's state from the journal at start and hands out the typed
//! handles the API and daemon use.

use crate::account::{AccountMsg, Reply};
use crate::audit::{AuditEntry, Caller};
use crate::catalog::{self, CatalogStore, Snapshot};
use crate::directory::Directory;
use crate::grants::Grants;
use crate::order_reads::{self, OrderFilter, OrderList};
use crate::records;
use crate::warehouse::{RebuiltHolding, WarehouseArgs, WarehouseHandle};
use crate::{ActorError, Limits, StorageError};
use orderd_domain::account::Account;
use orderd_domain::catalog::CatalogItem;
use orderd_domain::ids::{AccountId, OrderId, Sku, UserId, WarehouseId};
use orderd_domain::invariants::stock_is_conserved;
use orderd_domain::order::{Order, OrderState};
use orderd_domain::pricing::PriceEntry;
use orderd_domain::rejection::Rejection;
use orderd_domain::warehouse::{StockError, Warehouse};
use orderd_storage::{Batch, Journal};
use ractor::RpcReplyPort;
use std::collections::{BTreeMap, BTreeSet};

type Holdings = Vec<RebuiltHolding>;

/// Most problems an import reports; the rest are left for the next attempt. The API cuts every
/// import's list to this many (with a last line saying so); checks that can stop early stop
/// once they have found one more.
pub const IMPORT_ERRORS_MAX: usize = 100;

/// An import refused, perhaps after it stored part of its file: what it stored (account or
/// warehouse ids, in the order stored; a stock import goes on past a refused warehouse) and
/// why it was refused. Importing the file again (corrected, when its rows were the reason) is
/// safe: every import sets what it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportRefusal {
    /// The accounts or warehouses stored; empty when nothing was.
    pub stored: Vec<String>,
    /// Every problem its rows had, each a readable sentence naming what it concerns.
    pub errors: Vec<String>,
    /// Set when the import stopped on orderd's state rather than on its rows.
    pub interrupted: Option<Interrupted>,
}

/// What stopped an import that its rows did not stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    pub kind: Interruption,
    /// Where it stopped and why (for a [`Interruption::Failed`], for the log only).
    pub cause: String,
}

/// The kinds of [`Interrupted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// orderd was too busy (a full commit queue): send the file again shortly.
    Busy,
    /// The account was too busy (its bound of requests in flight): send it again shortly.
    AccountBusy,
    /// orderd is shutting down, or an actor did not answer (what it was storing may have
    /// been stored): send the file again shortly.
    Unavailable,
    /// A fault (storage failed).
    Failed,
}

impl Interruption {
    pub fn of(e: &ActorError) -> Interruption {
        match e {
            ActorError::Busy(crate::BusyScope::Account) => Interruption::AccountBusy,
            ActorError::Busy(_) | ActorError::Storage(StorageError::Overloaded) => {
                Interruption::Busy
            }
            ActorError::Timeout | ActorError::Gone | ActorError::Storage(StorageError::Closed) => {
                Interruption::Unavailable
            }
            _ => Interruption::Failed,
        }
    }
}

impl ImportRefusal {
    /// An import that stopped on `e` while storing `what`, after storing `stored`, with the
    /// problems its rows had before that (`errors`).
    pub fn interrupted(
        stored: Vec<String>,
        errors: Vec<String>,
        what: &str,
        e: &ActorError,
    ) -> ImportRefusal {
        ImportRefusal {
            stored,
            errors,
            interrupted: Some(Interrupted {
                kind: Interruption::of(e),
                cause: format!("{what}: {e}"),
            }),
        }
    }

    /// The kind of what interrupted it, if something did.
    pub fn interruption(&self) -> Option<Interruption> {
        self.interrupted.as_ref().map(|i| i.kind)
    }

    /// What the refusal stored, as the API's detail and `orderd import` say it.
    pub fn stored_note(&self) -> String {
        if self.stored.is_empty() {
            return "nothing was stored".into();
        }
        let again = match self.interrupted {
            None => "importing the corrected file again is safe",
            Some(_) => "importing the file again is safe",
        };
        format!("stored all the same: {} ({again})", self.stored.join(", "))
    }
}

impl std::fmt::Display for ImportRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(i) = &self.interrupted {
            write!(f, "the import stopped before its end: {}; ", i.cause)?;
        }
        for e in &self.errors {
            write!(f, "{e}; ")?;
        }
        f.write_str(&self.stored_note())
    }
}

impl From<Vec<String>> for ImportRefusal {
    /// A refusal that stored nothing.
    fn from(errors: Vec<String>) -> ImportRefusal {
        ImportRefusal {
            stored: vec![],
            errors,
            interrupted: None,
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    pub journal: Journal,
    pub catalog: CatalogStore,
    pub accounts: Directory,
    /// What the accounts' user records grant, read by the access guard on every request.
    pub grants: std::sync::Arc<Grants>,
    pub limits: Limits,
    /// The daemon-wide bound on state-changing API requests inside (see [`crate::admission`]).
    pub admission: std::sync::Arc<crate::admission::Admission>,
    /// Where the outbox readers (NATS publisher, bus relay, webhooks) are in the audit log.
    pub outbox: crate::events::OutboxReaders,
    /// Warehouse actors that stopped on their own: the daemon stops on the first.
    pub lost_warehouses: crate::warehouse::LostWarehouses,
    import_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Engine {
    /// Loads master data, rebuilds every warehouse's stock from the stored on-hand figures and
    /// the open orders and the user grants from the account records, and starts the account
    /// directory (accounts start lazily).
    pub async fn start(journal: Journal, limits: Limits) -> Result<Engine, ActorError> {
        let j = journal.clone();
        let (master, open, accounts, grants) =
            tokio::task::spawn_blocking(move || -> Result<_, ActorError> {
                let master = catalog::load_master(&j)?;
                let open = open_orders(&j)?;
                let stored = records::load_accounts(&j)?;
                // Read anyway for the ids: the grants cost one pass over the users.
                let grants = Grants::from_accounts(&stored);
                let accounts: BTreeSet<AccountId> = stored.into_iter().map(|a| a.id).collect();
                Ok((master, open, accounts, grants))
            })
            .await
            .map_err(|e| ActorError::Start(e.to_string()))??;
        let OpenOrders {
            count,
            mut holdings,
            moves,
        } = open;
        if !moves.is_empty() {
            tracing::info!(
                orders = moves.len(),
                "moving closed orders of an earlier layout to the closed records"
            );
            let mut moves = std::collections::VecDeque::from(moves);
            while !moves.is_empty() {
                let j = journal.clone();
                let (batch, rest) = tokio::task::spawn_blocking(move || move_batch(&j, moves))
                    .await
                    .map_err(|e| ActorError::Start(e.to_string()))??;
                journal.submit(batch).await?;
                moves = rest;
            }
        }
        let (cat, prices, warehouses) = master;
        let mut handles = BTreeMap::new();
        let lost_warehouses = crate::warehouse::LostWarehouses::default();
        for w in &warehouses {
            let handle = spawn_warehouse(
                &journal,
                w.clone(),
                holdings.remove(&w.id).unwrap_or_default(),
                &limits,
                &lost_warehouses,
            )
            .await?;
            handles.insert(w.id.clone(), handle);
        }
        if let Some((w, _)) = holdings.into_iter().next() {
            return Err(ActorError::Invariant(format!(
                "open orders hold stock in unknown warehouse {w}"
            )));
        }
        tracing::info!(
            skus = cat.len(),
            warehouses = warehouses.len(),
            accounts = accounts.len(),
            accounts_with_users = grants.accounts(),
            orders = count,
            "state rebuilt from the journal"
        );
        let store = CatalogStore::new(Snapshot {
            catalog: cat,
            prices,
            warehouses,
            handles,
        });
        let grants = std::sync::Arc::new(grants);
        let accounts = Directory::start(
            journal.clone(),
            store.clone(),
            limits.clone(),
            accounts,
            grants.clone(),
        )
        .await?;
        Ok(Engine {
            journal,
            catalog: store,
            accounts,
            grants,
            admission: std::sync::Arc::new(crate::admission::Admission::new(
                limits.admission(),
                std::time::Instant::now(),
            )),
            limits,
            outbox: Default::default(),
            lost_warehouses,
            import_lock: Default::default(),
        })
    }

    /// Sends a request to an account's actor.
    pub async fn account<T: Send + 'static>(
        &self,
        account: &AccountId,
        build: impl FnOnce(RpcReplyPort<T>) -> AccountMsg,
    ) -> Result<T, ActorError> {
        self.accounts.call(account, build).await
    }

    /// Sends a request that may change the account to its actor: done, refused (`Ok(Err)`),
    /// or failed.
    pub async fn ask<T: Send + 'static>(
        &self,
        account: &AccountId,
        build: impl FnOnce(Reply<T>) -> AccountMsg,
    ) -> Result<Result<T, Rejection>, ActorError> {
        self.accounts.ask(account, build).await
    }

    /// Order `id` of `account` (with `placed_by`: only if that user placed it). The account's
    /// actor answers for an open order; a closed one is read from the journal afterwards, so
    /// the read never holds up the account. A record not yet durable is not an answer (see
    /// [`order_reads`]).
    pub async fn order(
        &self,
        account: &AccountId,
        id: &OrderId,
        placed_by: Option<&UserId>,
    ) -> Result<Option<Order>, ActorError> {
        let (journal, acct, order) = (self.journal.clone(), account.clone(), id.clone());
        let found = self
            .accounts
            .call_then_read(
                account,
                |reply| AccountMsg::OpenOrder {
                    order: id.clone(),
                    reply,
                },
                move |open| match open {
                    Some(o) => Ok(Some(o)),
                    None => {
                        let stored = records::load_order(&journal, &acct, &order)?;
                        let durable = journal.audit_head().seq;
                        Ok(stored.filter(|s| s.is_durable(durable)).map(|s| s.order))
                    }
                },
            )
            .await?;
        Ok(found.filter(|o| placed_by.is_none_or(|u| &o.placed_by == u)))
    }

    /// Who placed order `id` of `account`, read from its record (open or closed), never from
    /// the account's actor. Blocking (reads sled): for a caller on the blocking pool.
    pub fn placed_by_blocking(
        &self,
        account: &AccountId,
        id: &OrderId,
    ) -> Result<Option<UserId>, ActorError> {
        Ok(records::load_order(&self.journal, account, id)?.map(|s| s.order.placed_by))
    }

    /// A page of `account`'s orders that `filter` matches, placed before `before`, newest
    /// first: the open ones from its actor, the closed ones read from the journal afterwards
    /// (at most `limits.list_scan_max` records; see [`order_reads::page`]).
    pub async fn list_orders(
        &self,
        account: &AccountId,
        filter: OrderFilter,
        before: Option<OrderId>,
        limit: usize,
    ) -> Result<OrderList, ActorError> {
        let (journal, acct) = (self.journal.clone(), account.clone());
        let scan_max = self.limits.list_scan_max;
        let (f, b) = (filter.clone(), before.clone());
        self.accounts
            .call_then_read(
                account,
                move |reply| AccountMsg::OpenOrders {
                    filter: f,
                    before: b,
                    limit,
                    reply,
                },
                move |open| {
                    order_reads::page(
                        open,
                        &filter,
                        before.as_ref(),
                        limit,
                        scan_max,
                        |from, max| {
                            let read = records::closed_orders_before(&journal, &acct, from, max)?;
                            // Read after the records: a record the flush covers by now is durable.
                            let durable = journal.audit_head().seq;
                            Ok::<_, ActorError>(
                                read.into_iter()
                                    .map(|s| order_reads::ClosedRecord {
                                        durable: s.is_durable(durable),
                                        order: s.order,
                                    })
                                    .collect(),
                            )
                        },
                    )
                },
            )
            .await
    }

    /// Per kind of outbox reader, the durable audit records it has yet to hand on (see
    /// [`crate::events::OutboxReaders::depths`]).
    pub fn outbox_depths(&self) -> [(&'static str, u64); 3] {
        self.outbox.depths(self.journal.audit_head().seq)
    }

    pub fn warehouse(&self, id: &WarehouseId) -> Option<WarehouseHandle> {
        self.catalog.load().handles.get(id).cloned()
    }

    pub async fn import_catalog(
        &self,
        caller: &Caller,
        items: Vec<CatalogItem>,
    ) -> Result<Result<usize, Vec<String>>, ActorError> {
        let _one = self.import_lock.lock().await;
        catalog::import_catalog(&self.catalog, &self.journal, caller, items).await
    }

    pub async fn import_prices(
        &self,
        caller: &Caller,
        entries: Vec<PriceEntry>,
    ) -> Result<Result<usize, Vec<String>>, ActorError> {
        let _one = self.import_lock.lock().await;
        catalog::import_prices(&self.catalog, &self.journal, caller, entries).await
    }

    /// Creates or updates warehouses; new ones start with no stock. The actors of new ones are
    /// started before the import is stored, so a start that fails leaves nothing stored (and
    /// stops those already started), and a stored import always has its actors in memory.
    pub async fn import_warehouses(
        &self,
        caller: &Caller,
        list: Vec<Warehouse>,
    ) -> Result<usize, ActorError> {
        let _one = self.import_lock.lock().await;
        let snap = self.catalog.load();
        // One per id, the last given.
        let imported: BTreeMap<WarehouseId, Warehouse> =
            list.iter().map(|w| (w.id.clone(), w.clone())).collect();
        let mut handles = snap.handles.clone();
        let mut started = vec![];
        for w in imported.values() {
            if handles.contains_key(&w.id) {
                continue;
            }
            let spawned = spawn_warehouse(
                &self.journal,
                w.clone(),
                vec![],
                &self.limits,
                &self.lost_warehouses,
            );
            match spawned.await {
                Ok(h) => {
                    started.push(h.clone());
                    handles.insert(w.id.clone(), h);
                }
                Err(e) => {
                    started.iter().for_each(WarehouseHandle::stop);
                    return Err(e);
                }
            }
        }
        let mut batch = Batch::default();
        for w in imported.values() {
            batch.put(records::warehouse_key(&w.id), records::encode(w));
        }
        batch.audit.push(
            AuditEntry::new(caller, None, "warehouses.import", &records::encode(&list))
                .draft("warehouses"),
        );
        if let Err(e) = self.journal.submit(batch).await {
            started.iter().for_each(WarehouseHandle::stop);
            return Err(e.into());
        }
        let n = list.len();
        let mut all: BTreeMap<WarehouseId, Warehouse> = snap
            .warehouses
            .iter()
            .map(|w| (w.id.clone(), w.clone()))
            .collect();
        all.extend(imported);
        catalog::set_warehouses(&self.catalog, all.into_values().collect(), handles);
        Ok(n)
    }

    /// Sets on-hand per warehouse and SKU. Per warehouse all rows or none. Refused rows are
    /// reported (more than [`IMPORT_ERRORS_MAX`] of a file that stores nothing: the first
    /// beyond it ends the check), with the warehouses whose rows were stored, if any.
    pub async fn set_stock(
        &self,
        caller: &Caller,
        rows: Vec<(WarehouseId, Sku, u64)>,
    ) -> Result<usize, ImportRefusal> {
        let mut by_wh: BTreeMap<WarehouseId, Vec<(Sku, u64)>> = BTreeMap::new();
        let mut errors = vec![];
        let snap = self.catalog.load();
        for (w, s, q) in rows {
            if self.warehouse(&w).is_none() {
                errors.push(format!("warehouse {w} does not exist"));
                continue;
            }
            // Stock is counted in the catalog's items (a kit is stocked as its components); a
            // count of 0 may still clear what an item left in the catalog before.
            match snap.catalog.get(&s) {
                None if q > 0 => errors.push(format!("SKU {s} is not in the catalog")),
                Some(item) if q > 0 && !item.kit.is_empty() => {
                    errors.push(format!("SKU {s} is a kit: its stock is its components'"))
                }
                _ => by_wh.entry(w).or_default().push((s, q)),
            }
            if errors.len() > IMPORT_ERRORS_MAX {
                break;
            }
        }
        if !errors.is_empty() {
            return Err(errors.into());
        }
        let (mut n, mut stored) = (0, vec![]);
        for (w, rows) in by_wh {
            let count = rows.len();
            match self.store_stock(&w, rows, caller).await {
                Ok(Ok(())) => {
                    n += count;
                    stored.push(w.to_string());
                }
                Ok(Err(errs)) => {
                    errors.extend(errs.iter().map(|e: &StockError| format!("{w}: {e}")))
                }
                // A write the journal turns away (a full queue) ends the import, reported
                // with the warehouses stored before it, since the client needs to know
                // (sending the file again sets the same counts).
                Err(e) => return Err(ImportRefusal::interrupted(stored, errors, w.as_str(), &e)),
            }
        }
        if errors.is_empty() {
            return Ok(n);
        }
        Err(ImportRefusal {
            stored,
            errors,
            interrupted: None,
        })
    }

    /// One warehouse's rows of a stock import, durable: stored, or refused with every reason.
    async fn store_stock(
        &self,
        w: &WarehouseId,
        rows: Vec<(Sku, u64)>,
        caller: &Caller,
    ) -> Result<Result<(), Vec<StockError>>, ActorError> {
        let handle = self.warehouse(w).ok_or(ActorError::Gone)?;
        match handle.set_stock(rows, caller.clone()).await? {
            Ok(ticket) => {
                ticket.await?;
                Ok(Ok(()))
            }
            Err(errs) => Ok(Err(errs)),
        }
    }

    pub async fn put_account(
        &self,
        caller: &Caller,
        account: Account,
    ) -> Result<Result<Account, Rejection>, ActorError> {
        self.accounts.put_account(caller, account).await
    }

    /// See [`Directory::import_account`].
    pub async fn import_account(
        &self,
        caller: &Caller,
        account: Account,
        merge: impl FnOnce(&mut Account, Account) + Send + 'static,
    ) -> Result<Result<Account, Rejection>, ActorError> {
        self.accounts.import_account(caller, account, merge).await
    }

    /// See [`Directory::update_account`].
    pub async fn update_account(
        &self,
        caller: &Caller,
        id: &AccountId,
        update: crate::account::AccountUpdate,
    ) -> Result<Result<Account, Rejection>, ActorError> {
        self.accounts.update_account(caller, id, update).await
    }

    /// Up to `limit` durable audit records of `account`'s order `order` after seq `after`,
    /// oldest first (none for an order that is not stored). Its record names them
    /// (`records::encode_order`); for a record of the first layout they are indexed by order
    /// id. Blocking (reads sled).
    pub fn history(
        &self,
        account: &AccountId,
        order: &OrderId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, AuditEntry)>, ActorError> {
        let Some(stored) = records::load_order(&self.journal, account, order)? else {
            return Ok(vec![]);
        };
        let (_, seqs) = stored.with_audit_seqs(&self.journal)?;
        // Only what a flush covers: sled shows an applied batch before its flush.
        let durable = self.journal.audit_head().seq;
        seqs.into_iter()
            .skip_while(|seq| *seq <= after)
            .take_while(|seq| *seq <= durable)
            .take(limit)
            .map(|seq| Ok((seq, crate::audit::order_entry(&self.journal, order, seq)?)))
            .collect()
    }

    /// Checks invariant 2 in every warehouse (tests and chaos runs call this).
    pub async fn check_stock(&self) -> Result<(), String> {
        for (id, h) in &self.catalog.load().handles {
            let stock = h.snapshot().await.map_err(|e| e.to_string())?;
            stock_is_conserved(&stock).map_err(|e| format!("warehouse {id}: {e}"))?;
        }
        Ok(())
    }

    /// Stops every actor and closes the journal after its last flush.
    pub async fn shutdown(&self) -> Result<(), ActorError> {
        self.accounts.stop_all();
        for h in self.catalog.load().handles.values() {
            h.stop();
        }
        let j = self.journal.clone();
        tokio::task::spawn_blocking(move || j.close())
            .await
            .map_err(|e| ActorError::Start(e.to_string()))??;
        Ok(())
    }
}

async fn spawn_warehouse(
    journal: &Journal,
    w: Warehouse,
    holdings: Holdings,
    limits: &Limits,
    lost: &crate::warehouse::LostWarehouses,
) -> Result<WarehouseHandle, ActorError> {
    let j = journal.clone();
    let prefix = records::stock_prefix(&w.id);
    let on_hand = tokio::task::spawn_blocking(move || -> Result<Vec<(Sku, u64)>, ActorError> {
        j.scan_prefix(prefix.as_bytes())?
            .into_iter()
            .map(|(k, v)| {
                let sku = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let sku = Sku::parse(&sku).map_err(|e| ActorError::Invariant(e.to_string()))?;
                Ok((sku, records::decode(&k, &v)?))
            })
            .collect()
    })
    .await
    .map_err(|e| ActorError::Start(e.to_string()))??;
    WarehouseHandle::spawn(
        WarehouseArgs {
            warehouse: w,
            journal: journal.clone(),
            on_hand,
            holdings,
            free: Default::default(),
        },
        limits,
        lost,
    )
    .await
}

/// Most closed orders of an earlier layout moved per batch at start, and most bytes of their
/// records (a batch closes at the first order past either).
const MOVES_PER_BATCH: usize = 1_000;
const MOVE_BYTES_PER_BATCH: usize = 16 << 20;

/// A closed order found among the open order records (stores written before closed orders
/// had records of their own): its keys only, so that a large store is not held in memory
/// while it is moved.
struct Move {
    open: Vec<u8>,
    closed: String,
    /// The ship-to marker of a shipped order.
    shipped: Option<String>,
}

/// The next batch of `moves`, its records read and moved as they are stored, and the moves
/// left. Blocking (reads sled).
fn move_batch(
    journal: &Journal,
    mut moves: std::collections::VecDeque<Move>,
) -> Result<(Batch, std::collections::VecDeque<Move>), ActorError> {
    let (mut batch, mut n, mut bytes) = (Batch::default(), 0, 0);
    while let Some(m) = moves.pop_front() {
        // Nothing else writes while the engine starts.
        let value = journal.get(&m.open)?.ok_or_else(|| {
            ActorError::Invariant("an order record vanished while moving it".into())
        })?;
        (n, bytes) = (n + 1, bytes + value.len());
        batch.put(m.closed, value);
        batch.remove(m.open);
        if let Some(marker) = m.shipped {
            batch.put(marker, vec![]);
        }
        if n >= MOVES_PER_BATCH || bytes >= MOVE_BYTES_PER_BATCH {
            break;
        }
    }
    Ok((batch, moves))
}

/// What the open orders come to at start.
struct OpenOrders {
    /// How many orders are open.
    count: usize,
    /// What they hold, per warehouse.
    holdings: BTreeMap<WarehouseId, Holdings>,
    /// The closed orders that an earlier layout kept among them.
    moves: Vec<Move>,
}

/// One pass over the open order records, an order at a time: only what each holds is kept, so
/// a start needs memory for the holdings, not for every open order. Blocking.
fn open_orders(journal: &Journal) -> Result<OpenOrders, ActorError> {
    let mut open = OpenOrders {
        count: 0,
        holdings: BTreeMap::new(),
        moves: vec![],
    };
    journal.for_each_prefix(records::ORDER.as_bytes(), |key, value| {
        let order = records::decode_order(key, value)?.order;
        if order.state.is_closed() {
            let (account, id) = (&order.account, &order.id);
            open.moves.push(Move {
                open: key.to_vec(),
                closed: records::closed_key(account, id),
                shipped: (order.state == OrderState::Shipped)
                    .then(|| records::shipped_key(account, &order.ship_to)),
            });
            return Ok(());
        }
        open.count += 1;
        if !order.state.holds_stock() {
            return Ok(());
        }
        for (w, demand) in order.stock_demand() {
            let (reserved, allocated) = if order.state == OrderState::Allocated {
                (vec![], demand)
            } else {
                (demand, vec![])
            };
            open.holdings.entry(w).or_default().push(RebuiltHolding {
                order: order.id.clone(),
                account: order.account.clone(),
                reserved,
                allocated,
            });
        }
        Ok(())
    })?;
    Ok(open)
}
