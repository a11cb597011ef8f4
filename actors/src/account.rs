//! AccountActor: one per customer account. It serializes every change to the account's cart,
//! orders and credit, so no locks guard account data. A handler decides with pure domain code,
//! appends the result to the journal, waits for the group commit, then replies.
//!
//! It stops itself when idle and is rebuilt from the journal on its next message.

use crate::audit::Caller;
use crate::catalog::CatalogStore;
use crate::grants::Grants;
use crate::order_book::OrderBook;
use crate::order_reads::OrderFilter;
use crate::ordering::{self, Amendment, Placed, Preview, Target};
use crate::records::{self, OrderHead};
use crate::users::{self, PutMode};
use crate::{ActorError, Limits, StorageError};
use orderd_domain::account::{Account, User};
use orderd_domain::cart::Cart;
use orderd_domain::ids::{AccountId, IdempotencyKey, OrderId, Segment, Sku, UserId, WarehouseId};
use orderd_domain::money::{Currency, Money};
use orderd_domain::order::{Channel, Order, PlacedWith, RequestDigest};
use orderd_domain::rejection::Rejection;
use orderd_domain::validation::OrderRequest;
use orderd_domain::Decimal;
use orderd_storage::Journal;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The answer to a request that may change the account: done, refused (a business refusal), or
/// failed (see [`answer`]).
pub type Reply<T> = RpcReplyPort<Result<Result<T, Rejection>, ActorError>>;

/// A change of an account's master data, applied in its actor.
pub type AccountUpdate = Box<dyn FnOnce(&mut Account) + Send>;

/// Whom a catalog read prices for and what it may show: the account's id, segment and
/// currency.
#[derive(Debug, Clone)]
pub struct Shopper {
    pub id: AccountId,
    pub segment: Segment,
    pub currency: Currency,
}

impl Shopper {
    pub fn of(account: &Account) -> Shopper {
        Shopper {
            id: account.id.clone(),
            segment: account.segment.clone(),
            currency: account.currency,
        }
    }
}

pub enum AccountMsg {
    GetCart {
        reply: RpcReplyPort<Cart>,
    },
    CartAdd {
        caller: Caller,
        sku: Sku,
        qty: u32,
        note: Option<String>,
        warehouse: Option<WarehouseId>,
        reply: Reply<Cart>,
    },
    CartUpdate {
        caller: Caller,
        line: u32,
        qty: Option<u32>,
        note: Option<Option<String>>,
        reply: Reply<Cart>,
    },
    CartRemove {
        caller: Caller,
        line: u32,
        reply: Reply<Cart>,
    },
    /// Quote every line again at today's price: the buyer accepts the prices that changed.
    CartReprice {
        caller: Caller,
        reply: Reply<Cart>,
    },
    /// Validate an order request (or the cart, when `from_cart`) without changing anything.
    Validate {
        caller: Caller,
        req: OrderRequest,
        from_cart: bool,
        reply: Reply<Preview>,
    },
    Place {
        /// The order's span (see [`crate::ORDER_SPAN_TARGET`]); `Span::none()` when untraced.
        span: tracing::Span,
        caller: Caller,
        key: Option<IdempotencyKey>,
        req: OrderRequest,
        from_cart: bool,
        channel: Channel,
        submit: bool,
        reply: Reply<Placed>,
    },
    Submit {
        /// The order's span, as in `Place`.
        span: tracing::Span,
        caller: Caller,
        order: Target,
        reply: Reply<Order>,
    },
    Approve {
        caller: Caller,
        order: Target,
        reject_lines: Vec<u32>,
        reply: Reply<Order>,
    },
    Reject {
        caller: Caller,
        order: Target,
        lines: Vec<u32>,
        reason: Option<String>,
        reply: Reply<Order>,
    },
    Cancel {
        caller: Caller,
        order: Target,
        reply: Reply<Order>,
    },
    Amend {
        caller: Caller,
        order: Target,
        patch: Amendment,
        reply: Reply<Order>,
    },
    Ship {
        caller: Caller,
        order: Target,
        warehouse: WarehouseId,
        reply: Reply<Order>,
    },
    /// The open order, if it is open (`Engine::order` reads a closed one from the journal).
    OpenOrder {
        order: OrderId,
        reply: RpcReplyPort<Option<Order>>,
    },
    /// Up to `limit` open orders placed before `before` that `filter` matches, newest first
    /// (`Engine::list_orders` merges them with the closed ones).
    OpenOrders {
        filter: OrderFilter,
        before: Option<OrderId>,
        limit: usize,
        reply: RpcReplyPort<Vec<Order>>,
    },
    Credit {
        reply: RpcReplyPort<CreditView>,
    },
    GetAccount {
        reply: RpcReplyPort<Account>,
    },
    /// What a catalog read needs of the account, without copying its users and ship-tos.
    GetShopper {
        reply: RpcReplyPort<Shopper>,
    },
    /// Change the master data as `update` says, applied to the account as the actor holds it
    /// (a replacement, or an import that keeps what it does not carry, with nothing changed in
    /// between). Receivables come from the update too.
    UpdateAccount {
        caller: Caller,
        update: AccountUpdate,
        reply: Reply<Account>,
    },
    SetCredit {
        caller: Caller,
        credit_limit: Option<Decimal>,
        open_receivables: Option<Decimal>,
        reply: Reply<CreditView>,
    },
    /// An account admin creates or replaces a user record.
    PutUser {
        caller: Caller,
        user: User,
        mode: PutMode,
        reply: Reply<User>,
    },
    /// An account admin removes a user record.
    DeleteUser {
        caller: Caller,
        user: UserId,
        reply: Reply<()>,
    },
    /// Timer: stop when idle long enough.
    IdleTick,
}

/// Credit figures of an account, recomputed from its orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreditView {
    pub credit_limit: Money,
    pub open_receivables: Money,
    pub exposure: Money,
    /// Limit minus exposure; negative when an operator lowered the limit below exposure.
    pub available: Decimal,
}

pub struct AccountArgs {
    pub id: AccountId,
    pub journal: Journal,
    pub catalog: CatalogStore,
    /// The shared view of what the account's user records grant; the actor publishes to it.
    pub grants: Arc<Grants>,
    pub limits: Limits,
    /// Called when idle: returns true when the directory forgot this account and it may stop.
    pub retire: Box<dyn Fn() -> bool + Send + Sync>,
}

/// The Idempotency-Keys of the account's newest `limits.idempotency_keys_max` orders: a key
/// is forgotten once that many orders were placed after its own. Counting orders, not keys,
/// lets a started actor rebuild the same map from a bounded read: its open orders and its
/// newest `idempotency_keys_max` closed ones. Not stored on its own: each key is part of the
/// order it placed ([`Order::idempotency`]).
#[derive(Default)]
pub struct IdempotencyMap {
    // std SipHash: the client chooses the keys. Per user, then per key: an Idempotency-Key
    // belongs to the user who sent it, so two users of one account may use the same key for
    // different orders, and neither is answered with the other's order.
    by_user: HashMap<UserId, HashMap<IdempotencyKey, (RequestDigest, OrderId)>>,
    /// The newest orders, oldest first, with their placer and key.
    newest: VecDeque<Option<(UserId, IdempotencyKey)>>,
}

impl IdempotencyMap {
    /// The keys of the newest `limit` of `orders`. Order ids are UUIDv7, so their order is the
    /// order in which the orders were placed.
    pub fn from_orders(orders: impl Iterator<Item = OrderHead>, limit: usize) -> Self {
        let mut placed: Vec<OrderHead> = orders.collect();
        placed.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let mut map = IdempotencyMap::default();
        let skip = placed.len().saturating_sub(limit);
        for o in &placed[skip..] {
            map.remember(o.idempotency.as_ref(), &o.placed_by, &o.id, limit);
        }
        map
    }

    /// The digest of the request with which `user` sent `key`, and the order it placed.
    pub fn get(&self, user: &UserId, key: &IdempotencyKey) -> Option<&(RequestDigest, OrderId)> {
        self.by_user.get(user)?.get(key)
    }

    /// Remembers that `order` was just placed by `user`, with its key if it had one, and
    /// forgets the key of the order placed `limit` orders before it.
    pub fn remember(
        &mut self,
        placed: Option<&PlacedWith>,
        user: &UserId,
        order: &OrderId,
        limit: usize,
    ) {
        if let Some(p) = placed {
            self.by_user
                .entry(user.clone())
                .or_default()
                .insert(p.key.clone(), (p.request_digest, order.clone()));
        }
        self.newest
            .push_back(placed.map(|p| (user.clone(), p.key.clone())));
        while self.newest.len() > limit.max(1) {
            if let Some(Some((old_user, old_key))) = self.newest.pop_front() {
                if let Some(keys) = self.by_user.get_mut(&old_user) {
                    keys.remove(&old_key);
                    if keys.is_empty() {
                        self.by_user.remove(&old_user);
                    }
                }
            }
        }
        debug_assert_eq!(
            self.by_user.values().map(HashMap::len).sum::<usize>(),
            self.newest.iter().flatten().count(),
            "each remembered key belongs to one of the newest orders"
        );
    }
}

pub struct AccountState {
    pub account: Account,
    pub cart: Cart,
    pub orders: OrderBook,
    pub idempotency: IdempotencyMap,
    pub journal: Journal,
    pub catalog: CatalogStore,
    pub grants: Arc<Grants>,
    pub limits: Limits,
    last_activity: Instant,
    retire: Box<dyn Fn() -> bool + Send + Sync>,
}

impl AccountState {
    pub fn credit(&self) -> CreditView {
        let exposure = self.exposure();
        CreditView {
            credit_limit: self.account.credit_limit,
            open_receivables: self.account.open_receivables,
            exposure,
            available: self.account.credit_limit.amount - exposure.amount,
        }
    }

    /// Receivables plus the open orders. The orders' part is updated on every order change
    /// (and checked against a full recomputation in debug builds).
    pub fn exposure(&self) -> Money {
        let orders = Money {
            amount: self.orders.open_exposure(),
            currency: self.account.currency,
        };
        // Bounded amounts: overflow would need ~10^28 of a currency.
        self.account
            .open_receivables
            .checked_add(orders)
            .unwrap_or(self.account.credit_limit)
    }
}

pub struct AccountActor;

impl Actor for AccountActor {
    type Msg = AccountMsg;
    type State = AccountState;
    type Arguments = AccountArgs;

    async fn pre_start(
        &self,
        me: ActorRef<AccountMsg>,
        args: AccountArgs,
    ) -> Result<AccountState, ActorProcessingErr> {
        let journal = args.journal.clone();
        let id = args.id.clone();
        // Loading scans the journal: keep it off the async workers.
        let keys_max = args.limits.idempotency_keys_max;
        let loaded = tokio::task::spawn_blocking(move || load(&journal, &id, keys_max)).await??;
        let (account, cart, orders, idempotency) = loaded;
        // The view was built from the same record at start and follows every write; publishing
        // again keeps it right should a write have failed after it became durable.
        args.grants.publish(&account);
        let period = std::time::Duration::from_millis(args.limits.account_idle_ms.max(100) / 2);
        me.send_interval(period, || AccountMsg::IdleTick);
        tracing::debug!(account.id = %args.id, orders = orders.len(), "account started");
        Ok(AccountState {
            account,
            cart,
            orders,
            idempotency,
            journal: args.journal,
            catalog: args.catalog,
            grants: args.grants,
            limits: args.limits,
            last_activity: Instant::now(),
            retire: args.retire,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<AccountMsg>,
        msg: AccountMsg,
        st: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(msg, AccountMsg::IdleTick) {
            st.last_activity = Instant::now();
        }
        match msg {
            AccountMsg::GetCart { reply } => drop(reply.send(st.cart.clone())),
            AccountMsg::CartAdd {
                caller,
                sku,
                qty,
                note,
                warehouse,
                reply,
            } => {
                answer(
                    reply,
                    ordering::cart_change(st, &caller, "cart.add", |c| {
                        c.add(sku, qty, note, warehouse).map(|_| ())
                    })
                    .await,
                )?;
            }
            AccountMsg::CartUpdate {
                caller,
                line,
                qty,
                note,
                reply,
            } => {
                answer(
                    reply,
                    ordering::cart_change(st, &caller, "cart.update", |c| {
                        c.update(line, qty, note)
                    })
                    .await,
                )?;
            }
            AccountMsg::CartRemove {
                caller,
                line,
                reply,
            } => {
                answer(
                    reply,
                    ordering::cart_change(st, &caller, "cart.remove", |c| c.remove(line)).await,
                )?;
            }
            AccountMsg::CartReprice { caller, reply } => {
                answer(
                    reply,
                    ordering::cart_change(st, &caller, "cart.reprice", |c| {
                        c.forget_quotes();
                        Ok(())
                    })
                    .await,
                )?;
            }
            AccountMsg::Validate {
                caller,
                req,
                from_cart,
                reply,
            } => {
                answer(reply, ordering::validate(st, &caller, req, from_cart).await)?;
            }
            AccountMsg::Place {
                span,
                caller,
                key,
                req,
                from_cart,
                channel,
                submit,
                reply,
            } => {
                answer(
                    reply,
                    ordering::place(st, &caller, key, req, from_cart, channel, submit)
                        .instrument(span)
                        .await,
                )?;
            }
            AccountMsg::Submit {
                span,
                caller,
                order,
                reply,
            } => {
                answer(
                    reply,
                    ordering::submit_draft(st, &caller, &order)
                        .instrument(span)
                        .await,
                )?;
            }
            AccountMsg::Approve {
                caller,
                order,
                reject_lines,
                reply,
            } => {
                answer(
                    reply,
                    ordering::approve(st, &caller, &order, &reject_lines).await,
                )?;
            }
            AccountMsg::Reject {
                caller,
                order,
                lines,
                reason,
                reply,
            } => {
                answer(
                    reply,
                    ordering::reject(st, &caller, &order, &lines, reason).await,
                )?;
            }
            AccountMsg::Cancel {
                caller,
                order,
                reply,
            } => {
                answer(reply, ordering::cancel(st, &caller, &order).await)?;
            }
            AccountMsg::Amend {
                caller,
                order,
                patch,
                reply,
            } => {
                answer(reply, ordering::amend(st, &caller, &order, patch).await)?;
            }
            AccountMsg::Ship {
                caller,
                order,
                warehouse,
                reply,
            } => {
                answer(reply, ordering::ship(st, &caller, &order, &warehouse).await)?;
            }
            AccountMsg::OpenOrder { order, reply } => {
                drop(reply.send(st.orders.get(&order).cloned()));
            }
            AccountMsg::OpenOrders {
                filter,
                before,
                limit,
                reply,
            } => {
                let open = st
                    .orders
                    .values()
                    .rev()
                    .filter(|o| before.as_ref().is_none_or(|b| &o.id < b))
                    .filter(|o| filter.matches(o))
                    .take(limit)
                    .cloned()
                    .collect();
                drop(reply.send(open));
            }
            AccountMsg::Credit { reply } => drop(reply.send(st.credit())),
            AccountMsg::GetAccount { reply } => drop(reply.send(st.account.clone())),
            AccountMsg::GetShopper { reply } => drop(reply.send(Shopper::of(&st.account))),
            AccountMsg::UpdateAccount {
                caller,
                update,
                reply,
            } => {
                let mut account = st.account.clone();
                update(&mut account);
                answer(reply, ordering::put_account(st, &caller, account).await)?;
            }
            AccountMsg::SetCredit {
                caller,
                credit_limit,
                open_receivables,
                reply,
            } => {
                answer(
                    reply,
                    ordering::set_credit(st, &caller, credit_limit, open_receivables).await,
                )?;
            }
            AccountMsg::PutUser {
                caller,
                user,
                mode,
                reply,
            } => {
                answer(reply, users::put_user(st, &caller, user, mode).await)?;
            }
            AccountMsg::DeleteUser {
                caller,
                user,
                reply,
            } => {
                answer(reply, users::delete_user(st, &caller, &user).await)?;
            }
            AccountMsg::IdleTick => {
                let idle =
                    st.last_activity.elapsed().as_millis() >= u128::from(st.limits.account_idle_ms);
                if idle && (st.retire)() {
                    tracing::debug!(account.id = %st.account.id, "account idle, stopping");
                    me.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}

/// Sends a flow's outcome to its caller. A failure also stops the actor, so that its next
/// message rebuilds it from the journal: a flow may have written a change and then failed
/// before adopting it (a warehouse gone after the commit, a journal that failed). One failure
/// comes only before a flow writes or adopts anything: the journal refusing a write at once
/// (`Overloaded`; what the flow held is given back first). On that one the actor goes on with
/// its memory as stored, and the requests queued behind it are still answered.
fn answer<T>(
    reply: Reply<T>,
    outcome: Result<Result<T, Rejection>, ActorError>,
) -> Result<(), ActorProcessingErr> {
    let stop = match &outcome {
        Ok(_) | Err(ActorError::Storage(StorageError::Overloaded)) => None,
        Err(e) => Some(e.to_string()),
    };
    let _ = reply.send(outcome);
    match stop {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

/// The order `id` of the account: open from the book, closed from the journal.
pub async fn order(st: &AccountState, id: &OrderId) -> Result<Option<Order>, ActorError> {
    if let Some(o) = st.orders.get(id) {
        return Ok(Some(o.clone()));
    }
    let (journal, account, id) = (st.journal.clone(), st.account.id.clone(), id.clone());
    let stored = tokio::task::spawn_blocking(move || records::load_order(&journal, &account, &id))
        .await
        .map_err(|e| ActorError::Invariant(format!("reading an order: {e}")))??;
    Ok(stored.map(|s| s.order))
}

type Loaded = (Account, Cart, OrderBook, IdempotencyMap);

/// The account, its cart, its open orders and its recent idempotency keys. Closed orders stay
/// in the journal; of them only the newest `keys_max` are read, for their keys.
fn load(journal: &Journal, id: &AccountId, keys_max: usize) -> Result<Loaded, ActorProcessingErr> {
    let account: Account = records::load_account(journal, id)?
        .ok_or_else(|| format!("account {id} has no master record"))?;
    let cart = records::load_cart(journal, id)?;
    // A record of the first layout gets its seqs from the index; its next change writes the
    // current layout with them.
    let orders = records::load_orders(journal, &records::order_prefix(id))?
        .into_iter()
        .map(|stored| stored.with_audit_seqs(journal))
        .collect::<Result<Vec<_>, _>>()?;
    let shipped_to = records::shipped_ship_tos(journal, id)?;
    let book = OrderBook::new(orders, shipped_to);
    // Only the front of each closed record: a closed order's lines stay undecoded.
    let recent_closed = records::newest_closed_heads(journal, id, keys_max)?;
    let idempotency = IdempotencyMap::from_orders(
        book.values().map(OrderHead::from).chain(recent_closed),
        keys_max,
    );
    Ok((account, cart, book, idempotency))
}
