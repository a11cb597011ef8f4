//! WarehouseActor: owns one warehouse's stock in memory (on hand, reserved, allocated, and what
//! each order holds). Reservations and allocations are not written by the warehouse: they are
//! derived from the orders, which the account writes durably, and rebuilt from them at start.
//! On-hand changes (shipments, stock imports) are written by the warehouse itself, in message
//! order, so two writers can never interleave on one SKU.
//!
//! Warehouses never call accounts (invariant of the concurrency model: no cycles, no deadlock).
//!
//! Free units per SKU are also published in a shared [`FreeStock`] view after every change, so
//! accounts plan an order without a round trip per warehouse. The view can be a moment behind;
//! that is safe because the one message that takes stock ([`WarehouseHandle::hold`]) checks
//! again inside the actor and refuses all of it when stock ran out in between.

use crate::audit::{AuditEntry, Caller};
use crate::records::{self, stock_key};
use crate::{call, call_to_the_end, ActorError, Limits};
use orderd_domain::ids::{AccountId, IdMap, OrderId, Sku, WarehouseId};
use orderd_domain::invariants::stock_is_conserved;
use orderd_domain::warehouse::{Stock, StockError, StockLevel, Warehouse};
use orderd_storage::{Batch, Journal, StorageError, Ticket};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Reports a warehouse actor that stopped on its own (a panic in a handler): its stock in
/// memory (what each order holds) is gone with it, and every order that reaches it would fail.
/// It is not restarted in place: what it held is rebuilt from the open orders, which accounts
/// keep changing meanwhile. The daemon stops instead (like after a failed commit) and its
/// supervisor restarts it, rebuilding every warehouse from the journal.
#[derive(Clone)]
pub struct LostWarehouses(Arc<tokio::sync::watch::Sender<Option<WarehouseId>>>);

impl Default for LostWarehouses {
    fn default() -> LostWarehouses {
        LostWarehouses(Arc::new(tokio::sync::watch::channel(None).0))
    }
}

impl LostWarehouses {
    /// Resolves with the first warehouse whose actor stopped without being asked to.
    pub async fn first(&self) -> WarehouseId {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let lost = match rx.wait_for(Option::is_some).await {
            Ok(lost) => lost.clone(),
            Err(_) => None,
        };
        match lost {
            Some(id) => id,
            None => std::future::pending().await,
        }
    }

    fn report(&self, id: WarehouseId) {
        tracing::error!(warehouse.id = %id, "warehouse actor stopped on its own; its stock in memory is lost");
        self.0.send_if_modified(|lost| {
            let first = lost.is_none();
            if first {
                *lost = Some(id);
            }
            first
        });
    }
}

/// Free units (on hand - reserved - allocated) per SKU of one warehouse, written only by its
/// actor after each change and read by anyone. SKUs never stocked are absent (0 free).
#[derive(Debug, Default)]
pub struct FreeStock(RwLock<IdMap<Sku, u64>>);

impl FreeStock {
    /// Free units of each SKU, in the same order (0 for unknown ones).
    pub fn of(&self, skus: &[Sku]) -> Vec<u64> {
        let free = self.0.read().unwrap_or_else(PoisonError::into_inner);
        skus.iter()
            .map(|s| free.get(s).copied().unwrap_or(0))
            .collect()
    }

    /// Whether the view shows exactly the free units of `stock` (checked after every message in
    /// debug builds).
    fn agrees_with(&self, stock: &Stock) -> bool {
        let free = self.0.read().unwrap_or_else(PoisonError::into_inner);
        stock
            .levels()
            .all(|(s, l)| free.get(s).copied().unwrap_or(0) == l.available())
    }

    /// Copies the current free units of `skus` from the authoritative `stock`.
    fn publish<'a>(&self, stock: &Stock, skus: impl IntoIterator<Item = &'a Sku>) {
        let mut free = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for sku in skus {
            let now = stock.level(sku).available();
            match free.get_mut(sku) {
                Some(units) => *units = now,
                None => {
                    free.insert(sku.clone(), now);
                }
            }
        }
    }
}

/// A change the warehouse wrote: its ticket once the write is queued, or the business refusal
/// `E`; a write the journal refused at once (`Overloaded`, `Closed`) is the outer error, and
/// then memory is unchanged.
pub type Queued<E> = Result<Result<Ticket, E>, StorageError>;

pub enum WarehouseMsg {
    /// Full levels for display.
    Levels {
        skus: Vec<Sku>,
        reply: RpcReplyPort<Vec<(Sku, StockLevel)>>,
    },
    /// Reserve all of `demand` for the order, or nothing; with `allocate`, move the order's
    /// whole reservation on to allocated in the same step (an order confirmed at once).
    Hold {
        order: OrderId,
        account: AccountId,
        demand: Vec<(Sku, u64)>,
        allocate: bool,
        reply: RpcReplyPort<Result<(), StockError>>,
    },
    /// Release part of the order's reservation.
    Release {
        order: OrderId,
        demand: Vec<(Sku, u64)>,
    },
    /// Release everything the order holds (cancel, reject).
    ReleaseAll { order: OrderId },
    /// Reserved -> allocated for the order (after its confirmation is durable).
    Allocate {
        order: OrderId,
        /// What the order needs here by its lines: a reservation beyond it is released.
        demand: Vec<(Sku, u64)>,
    },
    /// Ship what the order has allocated here: the account's part of the write comes in
    /// `batch`; the warehouse adds the new on-hand figures and submits it as one atomic write.
    Ship {
        order: OrderId,
        batch: Batch,
        reply: RpcReplyPort<Queued<StockError>>,
    },
    /// Set on-hand for several SKUs (import, stock count): all rows or none.
    SetStock {
        rows: Vec<(Sku, u64)>,
        caller: Caller,
        reply: RpcReplyPort<Queued<Vec<StockError>>>,
    },
    /// The account an order held here belongs to (for the warehouse role's ship call).
    Owner {
        order: OrderId,
        reply: RpcReplyPort<Option<AccountId>>,
    },
    /// A copy of the stock, for invariant checks.
    Snapshot { reply: RpcReplyPort<Stock> },
}

pub struct WarehouseArgs {
    pub warehouse: Warehouse,
    pub journal: Journal,
    pub on_hand: Vec<(Sku, u64)>,
    /// Rebuilt from the open orders.
    pub holdings: Vec<RebuiltHolding>,
    /// The shared view this actor keeps up to date.
    pub free: Arc<FreeStock>,
}

/// What one open order holds in this warehouse, as derived from the stored order.
pub struct RebuiltHolding {
    pub order: OrderId,
    pub account: AccountId,
    pub reserved: Vec<(Sku, u64)>,
    pub allocated: Vec<(Sku, u64)>,
}

pub struct WarehouseState {
    warehouse: Warehouse,
    journal: Journal,
    stock: Stock,
    owners: IdMap<OrderId, AccountId>,
    free: Arc<FreeStock>,
}

pub struct WarehouseActor;

impl Actor for WarehouseActor {
    type Msg = WarehouseMsg;
    type State = WarehouseState;
    type Arguments = WarehouseArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<Self::Msg>,
        args: WarehouseArgs,
    ) -> Result<WarehouseState, ActorProcessingErr> {
        let mut stock = Stock::default();
        let mut owners = IdMap::default();
        for (sku, q) in &args.on_hand {
            stock.set_on_hand(sku, *q)?;
        }
        for h in args.holdings {
            // Stored state satisfied invariant 2 when it was written; if it does not now, the
            // store is damaged and starting would hide it.
            let damaged = |e: StockError| {
                format!(
                    "warehouse {}: rebuilding {}: {e}",
                    args.warehouse.id, h.order
                )
            };
            stock.reserve(&h.order, &h.allocated).map_err(damaged)?;
            stock.allocate(&h.order, &h.allocated);
            stock.reserve(&h.order, &h.reserved).map_err(damaged)?;
            owners.insert(h.order, h.account);
        }
        stock_is_conserved(&stock)?;
        let skus: Vec<Sku> = stock.levels().map(|(s, _)| s.clone()).collect();
        args.free.publish(&stock, &skus);
        Ok(WarehouseState {
            warehouse: args.warehouse,
            journal: args.journal,
            stock,
            owners,
            free: args.free,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: WarehouseMsg,
        st: &mut WarehouseState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WarehouseMsg::Levels { skus, reply } => {
                let _ = reply.send(
                    skus.into_iter()
                        .map(|s| {
                            let l = st.stock.level(&s);
                            (s, l)
                        })
                        .collect(),
                );
            }
            WarehouseMsg::Hold {
                order,
                account,
                demand,
                allocate,
                reply,
            } => {
                let r = st.stock.reserve(&order, &demand);
                if r.is_ok() {
                    if allocate {
                        // A new order: nothing reserved beyond `demand`, nothing released.
                        let released = st.stock.allocate(&order, &demand);
                        debug_assert!(released.is_empty(), "{released:?}");
                    }
                    st.free.publish(&st.stock, demand.iter().map(|(s, _)| s));
                    st.owners.insert(order, account);
                }
                let _ = reply.send(r);
            }
            WarehouseMsg::Release { order, demand } => {
                st.stock.release(&order, &demand);
                st.free.publish(&st.stock, demand.iter().map(|(s, _)| s));
                st.forget_if_done(&order);
            }
            WarehouseMsg::ReleaseAll { order } => {
                let held: Vec<Sku> = st
                    .stock
                    .holding(&order)
                    .map(|h| {
                        h.reserved
                            .keys()
                            .chain(h.allocated.keys())
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                st.stock.release_all(&order);
                st.free.publish(&st.stock, &held);
                st.forget_if_done(&order);
            }
            // Reserved -> allocated leaves the free units as they are; a reservation released
            // beyond the order's demand frees them.
            WarehouseMsg::Allocate { order, demand } => {
                let released = st.stock.allocate(&order, &demand);
                st.free.publish(&st.stock, &released);
                st.forget_if_done(&order);
            }
            WarehouseMsg::Ship {
                order,
                batch,
                reply,
            } => {
                let _ = reply.send(st.ship(&order, batch));
            }
            WarehouseMsg::SetStock {
                rows,
                caller,
                reply,
            } => {
                let _ = reply.send(st.set_stock(rows, &caller));
            }
            WarehouseMsg::Owner { order, reply } => {
                let _ = reply.send(st.owners.get(&order).cloned());
            }
            WarehouseMsg::Snapshot { reply } => {
                let _ = reply.send(st.stock.clone());
            }
        }
        debug_assert!(
            stock_is_conserved(&st.stock).is_ok(),
            "{:?}",
            stock_is_conserved(&st.stock)
        );
        debug_assert!(
            st.free.agrees_with(&st.stock),
            "the shared free-stock view of {} drifted from the stock",
            st.warehouse.id
        );
        Ok(())
    }
}

impl WarehouseState {
    fn forget_if_done(&mut self, order: &OrderId) {
        if self.stock.holding(order).is_none() {
            self.owners.remove(order);
        }
    }

    /// Ships the order's allocation here with `batch` (the order's own change). Memory changes
    /// only once the write is queued: a refused write (a full commit queue) leaves it as stored,
    /// and queued writes are applied in order, so the absolute on-hand rows of later changes
    /// build on this one.
    fn ship(&mut self, order: &OrderId, mut batch: Batch) -> Queued<StockError> {
        let touched = match self.stock.shipped_levels(order) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        for (sku, on_hand) in &touched {
            batch.put(stock_key(&self.warehouse.id, sku), records::encode(on_hand));
        }
        let ticket = self.journal.try_submit(batch)?;
        let shipped = self.stock.ship(order);
        debug_assert_eq!(shipped.as_ref(), Ok(&touched));
        self.free
            .publish(&self.stock, touched.iter().map(|(s, _)| s));
        self.forget_if_done(order);
        Ok(Ok(ticket))
    }

    fn set_stock(&mut self, rows: Vec<(Sku, u64)>, caller: &Caller) -> Queued<Vec<StockError>> {
        let mut next = self.stock.clone();
        let errors: Vec<StockError> = rows
            .iter()
            .filter_map(|(sku, q)| next.set_on_hand(sku, *q).err())
            .collect();
        if !errors.is_empty() {
            return Ok(Err(errors));
        }
        let mut batch = Batch::default();
        for (sku, q) in &rows {
            batch.put(stock_key(&self.warehouse.id, sku), records::encode(q));
        }
        let digest = records::encode(&rows);
        let mut entry = AuditEntry::new(caller, None, "stock.set", &digest);
        entry.to = Some(format!("{} rows", rows.len()));
        batch
            .audit
            .push(entry.draft(&format!("warehouse:{}", self.warehouse.id)));
        // As for a shipment: memory changes only once the write is queued.
        let ticket = self.journal.try_submit(batch)?;
        self.stock = next;
        self.free.publish(&self.stock, rows.iter().map(|(s, _)| s));
        Ok(Ok(ticket))
    }
}

/// Typed handle: the only way other crates talk to a warehouse.
#[derive(Clone)]
pub struct WarehouseHandle {
    pub id: WarehouseId,
    actor: ActorRef<WarehouseMsg>,
    free: Arc<FreeStock>,
    timeout: Duration,
    /// How long a hold may take (`Limits::warehouse_call_timeout_ms`).
    hold_timeout: Duration,
    /// Set by [`WarehouseHandle::stop`]: the actor ending then is not lost.
    stopping: Arc<AtomicBool>,
}

impl WarehouseHandle {
    /// Starts the actor; if it ever stops other than by [`WarehouseHandle::stop`], `lost`
    /// hears of it.
    pub async fn spawn(
        args: WarehouseArgs,
        limits: &Limits,
        lost: &LostWarehouses,
    ) -> Result<WarehouseHandle, ActorError> {
        let id = args.warehouse.id.clone();
        let free = args.free.clone();
        let (actor, ended) = Actor::spawn(None, WarehouseActor, args)
            .await
            .map_err(|e| ActorError::Start(format!("warehouse {id}: {e}")))?;
        let stopping = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let (stopping, lost, id) = (stopping.clone(), lost.clone(), id.clone());
            async move {
                // Ends when the actor does, also after a panic in a handler.
                let _ = ended.await;
                if !stopping.load(Ordering::Acquire) {
                    lost.report(id);
                }
            }
        });
        Ok(WarehouseHandle {
            id,
            actor,
            free,
            timeout: Duration::from_millis(limits.call_timeout_ms),
            hold_timeout: Duration::from_millis(limits.warehouse_call_timeout_ms),
            stopping,
        })
    }

    /// Free units of each SKU, in the same order, from the shared view (no message; may be a
    /// moment behind).
    pub fn free(&self, skus: &[Sku]) -> Vec<u64> {
        self.free.of(skus)
    }
    pub async fn levels(&self, skus: Vec<Sku>) -> Result<Vec<(Sku, StockLevel)>, ActorError> {
        call(&self.actor, self.timeout, |reply| WarehouseMsg::Levels {
            skus,
            reply,
        })
        .await
    }
    /// Takes `demand` for the order (all or nothing): reserved, or with `allocate` allocated.
    pub async fn hold(
        &self,
        order: OrderId,
        account: AccountId,
        demand: Vec<(Sku, u64)>,
        allocate: bool,
    ) -> Result<Result<(), StockError>, ActorError> {
        call(&self.actor, self.hold_timeout, |reply| WarehouseMsg::Hold {
            order,
            account,
            demand,
            allocate,
            reply,
        })
        .await
    }
    pub fn release(&self, order: OrderId, demand: Vec<(Sku, u64)>) -> Result<(), ActorError> {
        self.cast(WarehouseMsg::Release { order, demand })
    }
    pub fn release_all(&self, order: OrderId) -> Result<(), ActorError> {
        self.cast(WarehouseMsg::ReleaseAll { order })
    }
    pub fn allocate(&self, order: OrderId, demand: Vec<(Sku, u64)>) -> Result<(), ActorError> {
        self.cast(WarehouseMsg::Allocate { order, demand })
    }
    /// Ships the order's stock here and queues `batch` (the order's and account's records)
    /// for the journal, in this warehouse's message order. Waits for the answer however long it
    /// takes: a caller that gave up could not tell a shipment written late from one refused,
    /// and a late write of records from before would overwrite the caller's newer ones.
    pub async fn ship(
        &self,
        order: OrderId,
        batch: Batch,
    ) -> Result<Result<Ticket, StockError>, ActorError> {
        Ok(call_to_the_end(&self.actor, |reply| WarehouseMsg::Ship {
            order,
            batch,
            reply,
        })
        .await??)
    }
    /// Sets on-hand stock and queues its write, in this warehouse's message order; waits for
    /// the answer however long it takes, like [`ship`](Self::ship), so that an import is never
    /// reported failed while its write is still to come.
    pub async fn set_stock(
        &self,
        rows: Vec<(Sku, u64)>,
        caller: Caller,
    ) -> Result<Result<Ticket, Vec<StockError>>, ActorError> {
        Ok(
            call_to_the_end(&self.actor, |reply| WarehouseMsg::SetStock {
                rows,
                caller,
                reply,
            })
            .await??,
        )
    }
    pub async fn owner(&self, order: OrderId) -> Result<Option<AccountId>, ActorError> {
        call(&self.actor, self.timeout, |reply| WarehouseMsg::Owner {
            order,
            reply,
        })
        .await
    }
    pub async fn snapshot(&self) -> Result<Stock, ActorError> {
        call(&self.actor, self.timeout, |reply| WarehouseMsg::Snapshot {
            reply,
        })
        .await
    }
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.actor.stop(None);
    }

    fn cast(&self, msg: WarehouseMsg) -> Result<(), ActorError> {
        self.actor.cast(msg).map_err(|_| ActorError::Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_domain::geo::GeoPoint;
    use orderd_storage::JournalConfig;

    async fn start(id: &str, journal: &Journal, lost: &LostWarehouses) -> WarehouseHandle {
        start_with(id, vec![], journal, lost).await
    }

    async fn start_with(
        id: &str,
        on_hand: Vec<(Sku, u64)>,
        journal: &Journal,
        lost: &LostWarehouses,
    ) -> WarehouseHandle {
        let args = WarehouseArgs {
            warehouse: Warehouse {
                id: WarehouseId::parse(id).unwrap(),
                name: id.into(),
                location: GeoPoint::new(52.5, 13.4).unwrap(),
                speeds: vec![],
            },
            journal: journal.clone(),
            on_hand,
            holdings: vec![],
            free: Arc::default(),
        };
        WarehouseHandle::spawn(args, &Limits::default(), lost)
            .await
            .unwrap()
    }

    // A warehouse actor that ends without being stopped (killed here, as a panic in a handler
    // would end it) is reported, the first one only; one stopped on purpose is not.
    #[tokio::test]
    async fn a_warehouse_actor_that_ends_on_its_own_is_reported() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let lost = LostWarehouses::default();
        let (stopped, killed, later) = (
            start("W-STOP", &journal, &lost).await,
            start("W-KILL", &journal, &lost).await,
            start("W-LATER", &journal, &lost).await,
        );
        stopped.stop();
        let quiet = tokio::time::timeout(Duration::from_millis(200), lost.first()).await;
        assert!(quiet.is_err(), "a stopped warehouse was reported");
        killed.actor.kill();
        let first = tokio::time::timeout(Duration::from_secs(5), lost.first()).await;
        assert_eq!(first.unwrap().as_str(), "W-KILL");
        later.actor.kill();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(lost.first().await.as_str(), "W-KILL", "the first stays");
    }

    // A real panic in a handler (here the debug assertion that a new order, confirmed at once,
    // held nothing before: the account never sends this) ends the actor like a kill, and it is
    // reported; the caller sees the actor gone, not an answer.
    #[cfg(debug_assertions)]
    #[tokio::test]
    async fn a_panic_in_a_warehouse_handler_is_reported() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let lost = LostWarehouses::default();
        let sku = Sku::parse("SKU-1").unwrap();
        let w = start_with("W-PANIC", vec![(sku.clone(), 10)], &journal, &lost).await;
        let order = OrderId::parse("o-1").unwrap();
        let account = AccountId::parse("ACME").unwrap();
        let held = (w.hold(
            order.clone(),
            account.clone(),
            vec![(sku.clone(), 5)],
            false,
        ))
        .await;
        assert_eq!(held.unwrap(), Ok(()));
        let panicked = w.hold(order, account, vec![(sku, 1)], true).await;
        assert!(panicked.is_err(), "{panicked:?}");
        let first = tokio::time::timeout(Duration::from_secs(5), lost.first()).await;
        assert_eq!(first.unwrap().as_str(), "W-PANIC");
    }
}
