//! The flows an AccountActor runs: evaluate an order (catalog, prices, stock plan, credit,
//! approval), hold stock, write one atomic batch, wait for its flush, then update memory.
//!
//! Two rules keep memory and storage consistent across crashes:
//! - stock is *grown* (reserved) before the write and *shrunk* (released) after it, so the
//!   warehouses never hold less than the durable orders need;
//! - the account's memory changes only after the write is durable.
//!
//! Each flow returns `Result<Result<T, Rejection>, ActorError>`: the inner result is the
//! business outcome for the caller; the outer error means storage or a warehouse failed. The
//! actor answers it and stops (it is rebuilt from the journal on its next message), except on
//! a write the journal refused at once, which comes before anything changed (see
//! `account::answer`).

use crate::account::{AccountState, CreditView};
use crate::audit::{today, AuditEntry, Caller};
use crate::catalog::Snapshot;
use crate::events::order_event;
use crate::records;
use crate::warehouse::WarehouseHandle;
use crate::ActorError;
use orderd_domain::account::{Account, Role};
use orderd_domain::allocation::{plan, Availability, PlanInput};
use orderd_domain::approval::{self, Submitter};
use orderd_domain::cart::{Cart, CartError};
use orderd_domain::grant::Grant;
use orderd_domain::ids::{IdempotencyKey, OrderId, ShipToId, Sku, UserId, WarehouseId};
use orderd_domain::money::{Currency, Money};
use orderd_domain::order::{
    Allocation, Channel, LineStatus, Order, OrderLine, OrderState, PlacedWith, RequestDigest,
    TransitionError,
};
use orderd_domain::rejection::Rejection;
use orderd_domain::validation::{
    check_order, Checked, HeldLine, LineRequest, OrderRequest, PricingContext, Problem,
    ProblemCode, Rebuilt, WarehouseQty, ORDER_LINES_MAX,
};
use orderd_domain::warehouse::StockError;
use orderd_domain::{credit, Decimal};
use orderd_storage::{Batch, Committed};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

type Flow<T> = Result<Result<T, Rejection>, ActorError>;
/// Stock per warehouse, in stock units (kits as components).
type Demand = BTreeMap<WarehouseId, Vec<(Sku, u64)>>;

#[derive(Debug, Clone, Serialize)]
pub struct Placed {
    pub order: Order,
    /// True when an earlier request with the same idempotency key created it.
    pub replayed: bool,
}

/// What submitting would do, without doing it.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub valid: bool,
    pub problems: Vec<Problem>,
    pub total: Money,
    pub approval_reasons: Vec<String>,
    pub lines: Vec<OrderLine>,
}

/// The order a change is for. With `if_match`, the change applies only while the order is at a
/// version it accepts (HTTP `If-Match`): an approver's decision is never applied to an order
/// that was amended after they read it.
#[derive(Clone)]
pub struct Target {
    pub id: OrderId,
    pub if_match: Option<VersionCheck>,
}

/// Which versions of an order a change accepts (`Order::version`).
pub type VersionCheck = std::sync::Arc<dyn Fn(u32) -> bool + Send + Sync>;

impl From<OrderId> for Target {
    /// A change for whatever version the order is at.
    fn from(id: OrderId) -> Target {
        Target { id, if_match: None }
    }
}

/// Changes to an order before allocation. Absent fields (`None`) stay as they are; the
/// optional ones are cleared by `Some(None)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Amendment {
    pub lines: Option<Vec<LineRequest>>,
    pub ship_to: Option<String>,
    pub delivery_speed: Option<Option<String>>,
    pub customer_po: Option<Option<String>>,
    pub allow_split: Option<bool>,
}

struct Evaluation {
    /// The catalog snapshot every check ran on; the order's lines are built from it too.
    snap: Arc<Snapshot>,
    checked: Checked,
    allocations: Option<Vec<Vec<Allocation>>>,
    problems: Vec<Problem>,
    total: Money,
    approval_reasons: Vec<String>,
}

// ---- cart -------------------------------------------------------------------------------

pub async fn cart_change(
    st: &mut AccountState,
    caller: &Caller,
    action: &str,
    change: impl FnOnce(&mut Cart) -> Result<(), CartError>,
) -> Flow<Cart> {
    let mut cart = st.cart.clone();
    if let Err(e) = change(&mut cart) {
        return Ok(Err(e.into()));
    }
    // Only lines the change adds or grows are checked (adding a SKU already in the cart grows
    // its line): a line whose SKU the account stopped seeing after it was added must not block
    // edits of the others (validation and submission name it; it can always shrink or go).
    let added = cart.lines.iter().filter(|l| {
        st.cart
            .lines
            .iter()
            .find(|old| old.id == l.id)
            .is_none_or(|old| l.qty > old.qty)
    });
    let problems: Vec<Problem> = added.filter_map(|l| sku_problem(st, &l.sku)).collect();
    if !problems.is_empty() {
        return Ok(Err(Rejection::Invalid(problems)));
    }
    let (snap, a, day) = (st.catalog.load(), &st.account, today());
    cart.quote(&st.cart, |sku, qty| {
        snap.prices
            .price(sku, qty, &a.id, &a.segment, a.currency, day)
    });
    let bytes = records::encode_cart(&cart);
    let mut batch = Batch::default();
    batch.audit.push(
        AuditEntry::new(caller, Some(&st.account.id), action, &bytes)
            .draft(&format!("cart:{}", st.account.id)),
    );
    batch.put(records::cart_key(&st.account.id), bytes);
    st.journal.submit(batch).await?;
    st.cart = cart;
    Ok(Ok(st.cart.clone()))
}

/// A cart may only hold SKUs the account can see.
fn sku_problem(st: &AccountState, sku: &Sku) -> Option<Problem> {
    let snap = st.catalog.load();
    match snap.catalog.get(sku) {
        Some(item) if item.visible_to(&st.account.segment) => None,
        _ => Some(
            Problem::new(
                ProblemCode::UnknownSku,
                format!("{sku} is not in the catalog"),
            )
            .sku(sku.as_str()),
        ),
    }
}

// ---- evaluation -------------------------------------------------------------------------

/// Whose order is judged. Its placer's spending limit and assigned ship-tos apply, whoever
/// sends the change: an account admin submitting a buyer's draft or amending their pending
/// order must not wave it through with their own higher limit.
struct Placer<'a> {
    user: &'a UserId,
    roles: Cow<'a, BTreeSet<Role>>,
}

impl<'a> Placer<'a> {
    /// The caller, acting on an order of their own.
    fn caller(caller: &'a Caller) -> Placer<'a> {
        Placer {
            user: &caller.user,
            roles: Cow::Borrowed(&caller.roles),
        }
    }

    /// `placed_by` as the account's records know them. A user without a record (their roles
    /// came from their token when they placed it) counts as a buyer; so does a removed one,
    /// whose order the approval rules then hold back.
    fn of(st: &AccountState, caller: &'a Caller, placed_by: &'a UserId) -> Placer<'a> {
        if *placed_by == caller.user {
            return Placer::caller(caller);
        }
        let roles = match st.account.grant(placed_by) {
            Some(Grant::Roles(roles)) => roles,
            Some(Grant::Removed) | None => BTreeSet::from([Role::Buyer]),
        };
        Placer {
            user: placed_by,
            roles: Cow::Owned(roles),
        }
    }
}

/// Catalog, visibility, quantity and price checks against today's snapshot, returned with it:
/// whoever builds the order's lines builds them from the snapshot that was checked (an import
/// landing meanwhile cannot give a kit the components of another definition). Alone, this is
/// what a draft needs (it holds no stock and no credit); `evaluate` adds stock, credit and
/// approval.
fn check_catalog(
    st: &AccountState,
    placer: &Placer,
    req: &OrderRequest,
) -> (Arc<Snapshot>, Checked) {
    let snap = st.catalog.load();
    let ctx = PricingContext {
        account: &st.account,
        user: placer.user,
        catalog: &snap.catalog,
        prices: &snap.prices,
        warehouses: &snap.warehouses,
        today: today(),
        lines_max: st.limits.order_lines_max,
    };
    let checked = check_order(&ctx, req);
    (snap, checked)
}

async fn evaluate(
    st: &AccountState,
    placer: &Placer<'_>,
    req: &OrderRequest,
    exclude: Option<&Order>,
) -> Result<Evaluation, ActorError> {
    let started = std::time::Instant::now();
    let ev = evaluate_untimed(st, placer, req, exclude);
    metrics::histogram!(crate::metric_names::VALIDATION_SECONDS)
        .record(started.elapsed().as_secs_f64());
    ev
}

/// Catalog, price, stock plan, credit and approval checks: pure work on the actor's state.
fn evaluate_untimed(
    st: &AccountState,
    placer: &Placer,
    req: &OrderRequest,
    exclude: Option<&Order>,
) -> Result<Evaluation, ActorError> {
    let (snap, checked) = check_catalog(st, placer, req);
    let mut problems = checked.problems.clone();
    let mut allocations = None;
    // Also without a ship-to (refused already): the buyer learns about the stock at once. Such
    // a plan only says whether the stock is there; its warehouses are not shown.
    if !checked.lines.is_empty() {
        let available = availability(&snap, &checked, exclude);
        let input = PlanInput {
            catalog: &snap.catalog,
            warehouses: &snap.warehouses,
            ship_to: checked.ship_to.as_ref().map(|s| s.location),
            delivery_speed: req.delivery_speed.as_deref(),
            allow_split: req.allow_split,
        };
        match plan(&input, &checked.lines, available) {
            Ok(p) => allocations = checked.ship_to.is_some().then_some(p),
            Err(mut p) => problems.append(&mut p),
        }
    }
    let total = checked.total(&st.account);
    // Exposure without the order being amended (its new amount is `total`).
    let own = match exclude {
        Some(o) => o
            .exposure()
            .map_err(|e| ActorError::Invariant(e.to_string()))?,
        None => Money::zero(st.account.currency),
    };
    let exposure = st
        .exposure()
        .checked_sub(own)
        .map_err(|e| ActorError::Invariant(e.to_string()))?;
    // An amendment that does not raise what the order counts toward the exposure is no new
    // credit: accepted also while the exposure is above a limit an operator lowered since (a
    // buyer may shrink a pending order to get under it).
    if exclude.is_none() || total.amount > own.amount {
        problems.extend(credit::check(st.account.credit_limit, exposure, total));
    }
    let who = Submitter {
        user: placer.user,
        roles: &placer.roles,
    };
    let approval_reasons = match &checked.ship_to {
        Some(s) => {
            // An amended order is not yet confirmed, so it never counts as the earlier order.
            let used = st.orders.ship_to_confirmed(&s.id);
            approval::reasons(
                &st.account,
                &who,
                &checked.lines,
                &snap.catalog,
                total,
                &s.id,
                used,
            )
        }
        None => vec![],
    };
    Ok(Evaluation {
        snap,
        checked,
        allocations,
        problems,
        total,
        approval_reasons,
    })
}

/// Free stock for the order's SKUs in every warehouse, plus what `exclude` already holds
/// (an amended order may reuse its own reservation).
fn availability(snap: &Snapshot, checked: &Checked, exclude: Option<&Order>) -> Availability {
    let items = checked
        .lines
        .iter()
        .filter_map(|l| snap.catalog.get(&l.sku));
    let mut out = snap.free_stock(items);
    if let Some(order) = exclude {
        for (w, demand) in order.stock_demand() {
            for (sku, q) in demand {
                out.add(&w, &sku, q);
            }
        }
    }
    out
}

fn build_lines(
    snap: &Snapshot,
    checked: &Checked,
    allocations: Option<Vec<Vec<Allocation>>>,
) -> Vec<OrderLine> {
    let mut allocations = allocations.unwrap_or_default().into_iter();
    checked
        .lines
        .iter()
        .map(|l| OrderLine {
            line_no: l.line_no,
            sku: l.sku.clone(),
            qty: l.qty,
            uom: l.uom.clone(),
            unit_price: l.unit_price,
            price_source: l.price_source.clone(),
            line_total: l.line_total,
            components: snap
                .catalog
                .get(&l.sku)
                .map(|i| i.kit.clone())
                .unwrap_or_default(),
            note: l.note.clone(),
            requested_warehouse: l.requested_warehouse.clone(),
            allocations: allocations.next().unwrap_or_default(),
            status: LineStatus::Open,
        })
        .collect()
}

// ---- stock --------------------------------------------------------------------------------

/// Per warehouse and SKU, how much `new` needs beyond `old` (grow) and below it (shrink).
fn deltas(old: &Demand, new: &Demand) -> (Demand, Demand) {
    let totals = |d: &Demand| -> BTreeMap<(WarehouseId, Sku), u64> {
        let mut m = BTreeMap::new();
        for (w, v) in d {
            for (s, q) in v {
                *m.entry((w.clone(), s.clone())).or_default() += q;
            }
        }
        m
    };
    let (o, n) = (totals(old), totals(new));
    let (mut grow, mut shrink) = (Demand::new(), Demand::new());
    // Each key once: a key in both maps visited twice would grow or shrink it twice.
    let keys: std::collections::BTreeSet<_> = o.keys().chain(n.keys()).collect();
    for key in keys {
        let (a, b) = (
            o.get(key).copied().unwrap_or(0),
            n.get(key).copied().unwrap_or(0),
        );
        let (w, s) = key.clone();
        if b > a {
            grow.entry(w).or_default().push((s, b - a));
        } else if a > b {
            shrink.entry(w).or_default().push((s, a - b));
        }
    }
    (grow, shrink)
}

/// Whose stock a [`hold`] takes.
#[derive(Clone, Copy)]
enum HoldFor {
    /// An order that holds nothing yet (placed, or a draft submitted); `allocate` takes the
    /// stock as allocated at once (the order is confirmed by this change).
    NewOrder { allocate: bool },
    /// More for an order that already holds stock (an amendment, before allocation).
    Growth,
}

/// Takes `grow` for `order` in every warehouse, all or nothing. Every warehouse is asked at
/// once, so holding takes as long as the slowest warehouse and never longer than one
/// `warehouse_call_timeout_ms`, however many warehouses the order needs (it must stay below the
/// time the account's caller waits). A shortage (stock taken since planning) in any warehouse
/// undoes what the others took and comes back as an `out_of_stock` problem for each line of
/// `order` that needs a short SKU there (see [`late_shortage`]); a
/// warehouse that does not answer undoes the same way and comes back as an error (also beside
/// a shortage, for an amendment: its growth may still be taken there, see below).
async fn hold(
    st: &AccountState,
    order: &Order,
    grow: &Demand,
    whose: HoldFor,
) -> Result<Result<(), Vec<Problem>>, ActorError> {
    let (lines, order) = (order, &order.id);
    let snap = st.catalog.load();
    let allocate = matches!(whose, HoldFor::NewOrder { allocate: true });
    let handles = grow
        .keys()
        .map(|w| {
            snap.handles
                .get(w)
                .ok_or_else(|| ActorError::Invariant(format!("no warehouse {w}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let answers = futures_util::future::join_all(handles.iter().map(|h| {
        h.hold(
            order.clone(),
            st.account.id.clone(),
            grow[&h.id].clone(),
            allocate,
        )
    }))
    .await;
    let mut taken: Vec<&WarehouseId> = Vec::new();
    let mut shortages = Vec::new();
    let mut failure = None;
    for (h, answer) in handles.iter().zip(answers) {
        match answer {
            Ok(Ok(())) => taken.push(&h.id),
            Ok(Err(e)) => shortages.extend(late_shortage(lines, &h.id, &e)),
            Err(e) => {
                // No answer in time: the hold may still be taken there. A new order's whole
                // holding can go (a warehouse handles its messages in order). An amendment's
                // growth cannot be told from what the order held before: it stays reserved
                // until the order is approved (every warehouse then allocates only what the
                // order's lines need there, see `Stock::allocate`), cancelled or rejected
                // (every warehouse releases the order).
                if matches!(whose, HoldFor::NewOrder { .. }) {
                    taken.push(&h.id);
                }
                failure.get_or_insert(e);
            }
        }
    }
    if shortages.is_empty() && failure.is_none() {
        return Ok(Ok(()));
    }
    undo_holds(&snap, order, grow, &taken, whose)?;
    // A shortage is a final answer, unless a warehouse that did not answer may still take an
    // amendment's growth: the caller must not be told that nothing changed.
    match failure {
        Some(e) if shortages.is_empty() || matches!(whose, HoldFor::Growth) => Err(e),
        _ => Ok(Err(shortages)),
    }
}

/// The `out_of_stock` problems of a hold that warehouse `w` refused with `e`: one for each open
/// line of `order` that needs a short SKU from `w` (itself or as a kit component), with what
/// `w` has free for the line (in the line's units: the fewest its short SKUs allow); one per
/// short SKU without a line if no line needs one.
fn late_shortage(order: &Order, w: &WarehouseId, e: &StockError) -> Vec<Problem> {
    let message = format!("stock changed while submitting: in {w}, {e}");
    let StockError::Shortage(short) = e else {
        return vec![Problem::new(ProblemCode::OutOfStock, message)];
    };
    let problems: Vec<Problem> = order
        .open_lines()
        .filter_map(|l| {
            let fits = (short.iter())
                .filter_map(|s| Some(s.available / l.takes_from(w, &s.sku)?))
                .min()?;
            let mut p = Problem::new(ProblemCode::OutOfStock, &message)
                .line(l.line_no)
                .sku(l.sku.as_str());
            p.available = vec![WarehouseQty {
                warehouse: w.clone(),
                qty: fits,
            }];
            Some(p)
        })
        .collect();
    if problems.is_empty() {
        (short.iter())
            .map(|s| Problem::new(ProblemCode::OutOfStock, &message).sku(s.sku.as_str()))
            .collect()
    } else {
        problems
    }
}

/// Gives back what [`hold`] took in the warehouses `taken`: all a new order holds there
/// (reserved or allocated), or the amendment's growth.
fn undo_holds(
    snap: &Snapshot,
    order: &OrderId,
    grow: &Demand,
    taken: &[&WarehouseId],
    whose: HoldFor,
) -> Result<(), ActorError> {
    ask_each(
        taken.iter().filter_map(|w| snap.handles.get(*w)),
        |h| match whose {
            HoldFor::NewOrder { .. } => h.release_all(order.clone()),
            HoldFor::Growth => h.release(order.clone(), grow[&h.id].clone()),
        },
    )
}

/// Gives back `shrink` of what the order holds, in each of its warehouses (also after one
/// could not be asked).
fn release(st: &AccountState, order: &OrderId, shrink: &Demand) -> Result<(), ActorError> {
    let snap = st.catalog.load();
    ask_each(shrink.keys().filter_map(|w| snap.handles.get(w)), |h| {
        h.release(order.clone(), shrink[&h.id].clone())
    })
}

/// Asks every one of `handles` with `f`, even after one could not be asked; the first error.
fn ask_each<'a>(
    handles: impl Iterator<Item = &'a WarehouseHandle>,
    f: impl Fn(&WarehouseHandle) -> Result<(), ActorError>,
) -> Result<(), ActorError> {
    let mut first_error = Ok(());
    for h in handles {
        let asked = f(h);
        if first_error.is_ok() {
            first_error = asked;
        }
    }
    first_error
}

fn for_each_warehouse(
    st: &AccountState,
    ws: &[WarehouseId],
    f: impl Fn(&WarehouseHandle) -> Result<(), ActorError>,
) -> Result<(), ActorError> {
    let snap = st.catalog.load();
    ask_each(ws.iter().filter_map(|w| snap.handles.get(w)), f)
}

/// [`for_each_warehouse`] over every warehouse, for a change that ends what an order holds:
/// besides the warehouses of its lines, one may hold an amendment's growth whose hold timed out
/// but was taken (see `hold`).
fn for_every_warehouse(
    st: &AccountState,
    f: impl Fn(&WarehouseHandle) -> Result<(), ActorError>,
) -> Result<(), ActorError> {
    ask_each(st.catalog.load().handles.values(), f)
}

// ---- writing ------------------------------------------------------------------------------

/// The batch for a change of `order`: the record and its audit entry, which carries the event.
///
/// Refused (as `too_many_lines`) when the record or its audit entry would exceed what one journal
/// value may hold: checked before any stock is held, so nothing needs undoing.
fn order_batch(
    st: &AccountState,
    caller: &Caller,
    order: &Order,
    action: &str,
    from: Option<OrderState>,
    transitions: &[&'static str],
) -> Result<Batch, Rejection> {
    let bytes = records::encode_order(order, st.orders.audit_seqs(&order.id));
    let mut entry = AuditEntry::new(caller, Some(&order.account), action, &bytes);
    entry.order = Some(order.id.to_string());
    entry.from = from.map(|s| s.as_str().to_owned());
    entry.to = Some(order.state.as_str().to_owned());
    entry.path = transitions
        .iter()
        .filter(|s| **s != "draft" || from.is_some())
        .map(|s| (*s).to_owned())
        .collect();
    entry.event = Some(order_event(order, transitions));
    let draft = entry.order_draft(&order.id);
    // The journal adds the stamp to the record.
    let size = (bytes.len() + orderd_storage::layout::SEQ_LEN).max(draft.payload.len());
    if size > orderd_storage::VALUE_BYTES_MAX {
        return Err(Rejection::Invalid(vec![Problem::new(
            ProblemCode::TooManyLines,
            format!(
                "the order is too large to store ({size} bytes, at most {}): split it into several orders",
                orderd_storage::VALUE_BYTES_MAX
            ),
        )]));
    }
    let mut batch = Batch::default();
    // The journal ends the record with the seq of `draft`, which it assigns at commit. A
    // closed order moves to the closed records, where no rebuild reads it again.
    let open = records::order_key(&order.account, &order.id);
    if order.state.is_closed() {
        batch.put_stamped(records::closed_key(&order.account, &order.id), bytes);
        batch.remove(open);
        if st.orders.first_shipment_to(order) {
            batch.put(records::shipped_key(&order.account, &order.ship_to), vec![]);
        }
    } else {
        batch.put_stamped(open, bytes);
    }
    batch.audit.push(draft);
    Ok(batch)
}

/// Submits `batch` and waits for the group commit that makes it durable, inside a
/// `journal.commit` span (a child of the order's span, so a slow commit shows up in its trace).
async fn durable(
    st: &AccountState,
    batch: Batch,
) -> Result<orderd_storage::Committed, orderd_storage::StorageError> {
    use tracing::Instrument;
    st.journal
        .submit(batch)
        .instrument(tracing::debug_span!(target: crate::ORDER_SPAN_TARGET, "journal.commit"))
        .await
}

fn touch(order: &mut Order) {
    order.version += 1;
    order.updated_at = crate::audit::now_rfc3339();
}

/// The order `target` names as `caller` may see it: a buyer who is not also an approver or
/// account admin sees the orders they placed, and another user's order is not found, like one
/// that does not exist. A closed order is found too, so that a change to it is refused by the
/// state machine, not as unknown. An order no longer at a version the target accepts is
/// refused as stale (checked after visibility, so a stale answer never reveals an order the
/// caller cannot see).
async fn find(st: &AccountState, caller: &Caller, target: &Target) -> Flow<Order> {
    find_seen_by(st, target, |o| caller.sees_order_of(&o.placed_by)).await
}

/// The order `target` names, when `sees` it (else not found, as if it did not exist).
async fn find_seen_by(
    st: &AccountState,
    target: &Target,
    sees: impl Fn(&Order) -> bool,
) -> Flow<Order> {
    let id = &target.id;
    let Some(order) = crate::account::order(st, id).await?.filter(|o| sees(o)) else {
        return Ok(Err(Rejection::NotFound(format!("order {id}"))));
    };
    if target
        .if_match
        .as_ref()
        .is_some_and(|accepts| !accepts(order.version))
    {
        return Ok(Err(Rejection::Stale(format!(
            "order {id} is at version {v} (ETag \"{v}\"), which If-Match does not name: it \
             changed since it was read; read it again, then decide",
            v = order.version
        ))));
    }
    Ok(Ok(order))
}

/// Moves `order` to PendingApproval, or to Confirmed and on to Allocated.
fn route(order: &mut Order, reasons: Vec<String>) -> Result<Vec<&'static str>, Rejection> {
    if reasons.is_empty() {
        Ok(confirm(order)?)
    } else {
        order.transition(OrderState::PendingApproval)?;
        order.approval_reasons = reasons;
        Ok(vec!["pending_approval"])
    }
}

/// Moves `order` to Confirmed and on to Allocated (its warehouses allocate once it is durable).
fn confirm(order: &mut Order) -> Result<Vec<&'static str>, TransitionError> {
    order.transition(OrderState::Confirmed)?;
    order.transition(OrderState::Allocated)?;
    Ok(vec!["confirmed", "allocated"])
}

// ---- flows --------------------------------------------------------------------------------

/// The request as sent, or the cart's lines under its header.
fn rebuild(st: &AccountState, req: OrderRequest, from_cart: bool) -> Rebuilt {
    if from_cart {
        st.cart.to_request(req, st.account.currency)
    } else {
        Rebuilt::as_sent(req)
    }
}

pub async fn validate(
    st: &AccountState,
    caller: &Caller,
    req: OrderRequest,
    from_cart: bool,
) -> Flow<Preview> {
    let rebuilt = rebuild(st, req, from_cart);
    let ev = evaluate(st, &Placer::caller(caller), &rebuilt.req, None).await?;
    let lines = build_lines(&ev.snap, &ev.checked, ev.allocations);
    let problems = rebuilt.problems(ev.problems);
    Ok(Ok(Preview {
        valid: problems.is_empty(),
        problems,
        total: ev.total,
        approval_reasons: ev.approval_reasons,
        lines,
    }))
}

fn request_digest(
    req: &OrderRequest,
    from_cart: bool,
    submit: bool,
    channel: Channel,
) -> RequestDigest {
    RequestDigest(Sha256::digest(records::encode(&(req, from_cart, submit, channel))).into())
}

pub async fn place(
    st: &mut AccountState,
    caller: &Caller,
    key: Option<IdempotencyKey>,
    req: OrderRequest,
    from_cart: bool,
    channel: Channel,
    submit: bool,
) -> Flow<crate::ordering::Placed> {
    // The request's digest matters only to remember or compare a key: no key, no hashing.
    let key = key.map(|key| PlacedWith {
        request_digest: request_digest(&req, from_cart, submit, channel),
        key,
    });
    if let Some(p) = &key {
        if let Some((digest, placed)) = st.idempotency.get(&caller.user, &p.key) {
            if *digest != p.request_digest {
                return Ok(Err(Rejection::IdempotencyMismatch(p.key.to_string())));
            }
            let order = crate::account::order(st, placed).await?.ok_or_else(|| {
                ActorError::Invariant(format!(
                    "idempotency key {} names missing order {placed}",
                    p.key
                ))
            })?;
            return Ok(Ok(Placed {
                order,
                replayed: true,
            }));
        }
    }
    let rebuilt = rebuild(st, req, from_cart);
    let req = &rebuilt.req;
    let id = OrderId::parse(&uuid::Uuid::now_v7().to_string())
        .map_err(|e| ActorError::Invariant(e.to_string()))?;
    // The caller's `order` span (API handler -> here -> journal commit) learns its id now.
    tracing::Span::current().record("order.id", id.as_str());
    let (mut order, transitions) = if submit {
        let ev = evaluate(st, &Placer::caller(caller), req, None).await?;
        let problems = rebuilt.problems(ev.problems);
        if !problems.is_empty() {
            return Ok(Err(Rejection::Invalid(problems)));
        }
        let lines = build_lines(&ev.snap, &ev.checked, ev.allocations);
        let mut order = new_order(
            st,
            caller,
            id.clone(),
            req,
            &ev.checked,
            lines,
            ev.total,
            channel,
        );
        let transitions = match route(&mut order, ev.approval_reasons) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        (order, transitions)
    } else {
        let (snap, checked) = check_catalog(st, &Placer::caller(caller), req);
        let problems = rebuilt.problems(checked.problems.clone());
        if !problems.is_empty() {
            return Ok(Err(Rejection::Invalid(problems)));
        }
        let total = checked.total(&st.account);
        let lines = build_lines(&snap, &checked, None);
        (
            new_order(st, caller, id.clone(), req, &checked, lines, total, channel),
            vec!["draft"],
        )
    };
    order.version = 1;
    order.idempotency = key;
    let action = if submit { "order.place" } else { "order.draft" };
    let mut batch = match order_batch(st, caller, &order, action, None, &transitions) {
        Ok(b) => b,
        Err(r) => return Ok(Err(r)),
    };
    let allocate = order.state == OrderState::Allocated;
    if let Err(p) = hold(
        st,
        &order,
        &order.stock_demand(),
        HoldFor::NewOrder { allocate },
    )
    .await?
    {
        return Ok(Err(Rejection::Invalid(rebuilt.renumber(p))));
    }
    if from_cart {
        batch.put(
            records::cart_key(&st.account.id),
            records::encode_cart(&Cart {
                lines: vec![],
                last_id: st.cart.last_id,
            }),
        );
    }
    let committed = match durable(st, batch).await {
        Ok(c) => c,
        Err(e) => {
            for_each_warehouse(st, &order.warehouses(), |h| h.release_all(id.clone()))?;
            return Err(e.into());
        }
    };
    let limit = st.limits.idempotency_keys_max;
    st.idempotency
        .remember(order.idempotency.as_ref(), &order.placed_by, &id, limit);
    if from_cart {
        st.cart.clear();
    }
    let before = st.exposure();
    order = commit_order(st, order, &committed);
    debug_assert_credit(st, &order, before);
    Ok(Ok(Placed {
        order,
        replayed: false,
    }))
}

#[allow(clippy::too_many_arguments)]
fn new_order(
    st: &AccountState,
    caller: &Caller,
    id: OrderId,
    req: &OrderRequest,
    checked: &Checked,
    lines: Vec<OrderLine>,
    total: Money,
    channel: Channel,
) -> Order {
    let now = crate::audit::now_rfc3339();
    Order {
        id,
        account: st.account.id.clone(),
        state: OrderState::Draft,
        channel,
        placed_by: caller.user.clone(),
        ship_to: checked
            .ship_to
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_else(|| ShipToId::parse("none").expect("valid id")),
        delivery_speed: req.delivery_speed.clone(),
        customer_po: req.customer_po.clone(),
        allow_split: req.allow_split,
        lines,
        total,
        approval_reasons: vec![],
        created_at: now.clone(),
        updated_at: now,
        version: 0,
        idempotency: None,
    }
}

/// Adopts the durable `order` in memory, changed by the audit record its batch `committed`,
/// and counts the state it entered, if any.
fn commit_order(st: &mut AccountState, order: Order, committed: &Committed) -> Order {
    let before = st.orders.get(&order.id).map(|o| o.state);
    if before != Some(order.state) {
        count_state_entered(order.state);
    }
    // An order's batch always carries its audit record (`order_batch`).
    debug_assert!(!committed.audit_seqs.is_empty());
    st.orders
        .put_changed(order.clone(), committed.audit_seqs.start);
    order
}

/// One counter per state with a static label set: no allocation per order.
fn count_state_entered(state: OrderState) {
    use crate::metric_names::ORDER_TRANSITIONS as N;
    let counter = match state {
        OrderState::Draft => metrics::counter!(N, "to" => "draft"),
        OrderState::PendingApproval => metrics::counter!(N, "to" => "pending_approval"),
        OrderState::Confirmed => metrics::counter!(N, "to" => "confirmed"),
        OrderState::Allocated => metrics::counter!(N, "to" => "allocated"),
        OrderState::Shipped => metrics::counter!(N, "to" => "shipped"),
        OrderState::Rejected => metrics::counter!(N, "to" => "rejected"),
        OrderState::Cancelled => metrics::counter!(N, "to" => "cancelled"),
    };
    counter.increment(1);
}

/// Invariant 3 after accepting `order`, with the account's exposure `before` it: exposure
/// above the limit never comes from an accepted change. Only an order that counts for credit
/// passed the credit check (a draft did not), and an operator may have moved the limit below
/// exposure meanwhile, when a change that adds nothing (a shrinking amendment) still passes.
fn debug_assert_credit(st: &AccountState, order: &Order, before: Money) {
    let after = st.exposure();
    debug_assert!(
        !order.state.counts_for_credit()
            || after.amount <= st.account.credit_limit.amount
            || after.amount <= before.amount,
        "invariant 3: exposure {after} (before the change {before}) above limit {}",
        st.account.credit_limit
    );
}

pub async fn submit_draft(st: &mut AccountState, caller: &Caller, target: &Target) -> Flow<Order> {
    let id = &target.id;
    let mut order = match find(st, caller, target).await? {
        Ok(o) => o,
        Err(e) => return Ok(Err(e)),
    };
    if order.state != OrderState::Draft {
        return Ok(Err(Rejection::Conflict(format!(
            "order {id} is {}, only a draft can be submitted",
            order.state.as_str()
        ))));
    }
    let rebuilt = request_of(&order, &Amendment::default(), st.account.currency);
    let placed_by = order.placed_by.clone();
    let ev = evaluate(st, &Placer::of(st, caller, &placed_by), &rebuilt.req, None).await?;
    let problems = rebuilt.problems(ev.problems);
    if !problems.is_empty() {
        return Ok(Err(Rejection::Invalid(problems)));
    }
    order.lines = build_lines(&ev.snap, &ev.checked, ev.allocations);
    order.total = ev.total;
    let transitions = match route(&mut order, ev.approval_reasons) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    touch(&mut order);
    let batch = match order_batch(
        st,
        caller,
        &order,
        "order.submit",
        Some(OrderState::Draft),
        &transitions,
    ) {
        Ok(b) => b,
        Err(r) => return Ok(Err(r)),
    };
    let allocate = order.state == OrderState::Allocated;
    if let Err(p) = hold(
        st,
        &order,
        &order.stock_demand(),
        HoldFor::NewOrder { allocate },
    )
    .await?
    {
        return Ok(Err(Rejection::Invalid(rebuilt.renumber(p))));
    }
    let committed = match durable(st, batch).await {
        Ok(c) => c,
        Err(e) => {
            for_each_warehouse(st, &order.warehouses(), |h| h.release_all(id.clone()))?;
            return Err(e.into());
        }
    };
    Ok(Ok(commit_order(st, order, &committed)))
}

/// Marks `lines` rejected; returns the stock they held (to release once durable). A number
/// that names no open line refuses the whole change, listing every such number (`field`: the
/// body field that named them).
fn reject_lines(order: &mut Order, lines: &[u32], field: &str) -> Result<Demand, Rejection> {
    // An order has at most ORDER_LINES_MAX lines: a longer list is refused before it is read.
    if lines.len() > ORDER_LINES_MAX {
        return Err(Rejection::Invalid(vec![Problem::new(
            ProblemCode::InvalidField,
            format!(
                "at most {ORDER_LINES_MAX} line numbers, {} given",
                lines.len()
            ),
        )
        .field(field)]));
    }
    // A number named twice rejects its line once.
    let lines: std::collections::BTreeSet<u32> = lines.iter().copied().collect();
    let open: std::collections::BTreeSet<u32> = order
        .lines
        .iter()
        .filter(|l| l.status == LineStatus::Open)
        .map(|l| l.line_no)
        .collect();
    let unknown: Vec<Problem> = lines
        .iter()
        .filter(|n| !open.contains(n))
        .map(|n| {
            Problem::new(
                ProblemCode::InvalidField,
                format!("the order has no open line {n}"),
            )
            .line(*n)
            .field(field)
        })
        .collect();
    if !unknown.is_empty() {
        return Err(Rejection::Invalid(unknown));
    }
    // Every named line is open (checked above), so these are exactly the named lines.
    let mut freed = Demand::new();
    for line in order
        .lines
        .iter_mut()
        .filter(|l| l.status == LineStatus::Open && lines.contains(&l.line_no))
    {
        line.status = LineStatus::Rejected;
        for a in &line.allocations {
            freed
                .entry(a.warehouse.clone())
                .or_default()
                .extend(line.stock_demand(a.qty));
        }
    }
    order
        .recompute_total()
        .map_err(|e| Rejection::Conflict(e.to_string()))?;
    Ok(freed)
}

pub async fn approve(
    st: &mut AccountState,
    caller: &Caller,
    target: &Target,
    reject: &[u32],
) -> Flow<Order> {
    let id = &target.id;
    let mut order = match find(st, caller, target).await? {
        Ok(o) => o,
        Err(e) => return Ok(Err(e)),
    };
    if order.state != OrderState::PendingApproval {
        return Ok(Err(Rejection::Conflict(format!(
            "order {id} is {}, not pending approval",
            order.state.as_str()
        ))));
    }
    // Four eyes: whoever placed the order may withdraw it (reject, cancel), never approve it;
    // nor may whoever wrote what it holds now (an approver who amended a colleague's order).
    if order.placed_by == caller.user {
        return Ok(Err(Rejection::Forbidden(format!(
            "order {id} was placed by {}: another approver of the account approves it",
            caller.user
        ))));
    }
    if let Some(action) = changed_by(st, id, &caller.user)? {
        return Ok(Err(Rejection::Forbidden(format!(
            "{} changed order {id} ({action}): another approver of the account approves it",
            caller.user
        ))));
    }
    let freed = match reject_lines(&mut order, reject, "reject_lines") {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let blocked = blocked_since_placed(&order, &st.catalog.load().catalog);
    if !blocked.is_empty() {
        return Ok(Err(Rejection::Invalid(blocked)));
    }
    if !approval::may_approve(&st.account, &caller.user, &caller.roles, order.total) {
        return Ok(Err(Rejection::Forbidden(format!(
            "approving {} needs an approver whose spending limit covers it",
            order.total
        ))));
    }
    let transitions = if order.open_lines().next().is_none() {
        order
            .transition(OrderState::Rejected)
            .map(|_| vec!["rejected"])
    } else {
        confirm(&mut order)
    };
    let transitions = match transitions {
        Ok(t) => t,
        Err(e) => return Ok(Err(e.into())),
    };
    touch(&mut order);
    let batch = match order_batch(
        st,
        caller,
        &order,
        "order.approve",
        Some(OrderState::PendingApproval),
        &transitions,
    ) {
        Ok(b) => b,
        Err(r) => return Ok(Err(r)),
    };
    let committed = st.journal.submit(batch).await?;
    // Both, even when a warehouse cannot be asked: the others must not keep the order's stock
    // reserved (as `ask_each` does within one step); the first error after both.
    let released = release(st, id, &freed);
    let settled = match order.state {
        OrderState::Allocated => allocate_held(st, &order),
        _ => for_every_warehouse(st, |h| h.release_all(id.clone())),
    };
    released.and(settled)?;
    Ok(Ok(commit_order(st, order, &committed)))
}

/// The open lines of `order` whose item, or a component of whose kit, the catalog blocks now
/// (a recall, a stop): it may have been blocked while the order waited for approval, and an
/// approval would send it to the warehouse. The approver rejects those lines, or the order.
/// (A discontinued item ships from the stock held for it.)
fn blocked_since_placed(order: &Order, catalog: &orderd_domain::catalog::Catalog) -> Vec<Problem> {
    let blocked = |sku: &Sku| {
        catalog
            .get(sku)
            .is_some_and(|i| i.status == orderd_domain::catalog::ItemStatus::Blocked)
    };
    order
        .open_lines()
        .filter_map(|l| {
            let what = match blocked(&l.sku) {
                true => l.sku.to_string(),
                false => {
                    let c = l.components.iter().find(|c| blocked(&c.sku))?;
                    format!("{}: its component {}", l.sku, c.sku)
                }
            };
            let message = format!(
                "{what} is blocked for ordering now: reject line {} (or the order) instead",
                l.line_no
            );
            let problem = Problem::new(ProblemCode::Blocked, message);
            Some(problem.line(l.line_no).sku(l.sku.as_str()))
        })
        .collect()
}

/// The first change of what order `id` holds (`order.submit` of a draft, `order.amend`) that
/// `user` made, from the order's audit records: who changed an order is what the log keeps,
/// and an approval reads them rarely enough (an order has at most [`ORDER_CHANGES_MAX`]).
/// Blocking (reads sled, mostly from its cache).
fn changed_by(
    st: &AccountState,
    id: &OrderId,
    user: &UserId,
) -> Result<Option<&'static str>, ActorError> {
    const CONTENT: [&str; 2] = ["order.submit", "order.amend"];
    for seq in st.orders.audit_seqs(id) {
        let entry = crate::audit::order_entry(&st.journal, id, *seq)?;
        if entry.user == user.as_str() {
            if let Some(action) = CONTENT.iter().find(|a| **a == entry.action) {
                return Ok(Some(action));
            }
        }
    }
    Ok(None)
}

/// Once a pending order is confirmed: each warehouse allocates what the order's lines need
/// there and releases any other reservation of the order (nothing, unless a hold timed out).
fn allocate_held(st: &AccountState, order: &Order) -> Result<(), ActorError> {
    let demand = order.stock_demand();
    for_every_warehouse(st, |h| {
        let here = demand.get(&h.id).cloned().unwrap_or_default();
        h.allocate(order.id.clone(), here)
    })
}

/// Longest reason an approver gives for a rejection (it joins the order's approval reasons).
pub const REJECT_REASON_LEN_MAX: usize = 200;

/// The most approval reasons a pending order keeps (its rules' reasons and rejection notes).
/// Each partial rejection with a reason adds one, and the order's record is written whole on
/// every change: without a bound, a 1,000-line order rejected line by line could outgrow what
/// a record may hold. Beyond it, a partial rejection must come without a reason (`409`); the
/// rejection or withdrawal that ends the order adds one more.
pub const APPROVAL_REASONS_MAX: usize = 100;

// Rejection notes (a reason of 4-byte characters and its prefix) fill at most an eighth of
// what a record may hold; the order's lines have the rest.
const _: () = assert!(
    APPROVAL_REASONS_MAX * (REJECT_REASON_LEN_MAX * 4 + 16) <= orderd_storage::VALUE_BYTES_MAX / 8
);

/// What an approver's rejection note starts with among a pending order's approval reasons.
pub const REJECTION_NOTE_PREFIX: &str = "rejected: ";

/// The approval reason a pending order keeps, through every amendment, once an approver
/// rejected some of its lines: it waits for an approver again whatever the rules say of it
/// now. (Otherwise the buyer could amend it, even only its PO number, and have it confirmed
/// unseen, or amend the rejected lines back in.)
pub const REAPPROVAL: &str =
    "an approver rejected lines of this order before it was amended: it needs an approver again";

/// The approval reasons of pending order `old` after an amendment: `now` (what the rules say
/// of it as amended) and, once an approver has rejected some of its lines, the approvers'
/// notes and [`REAPPROVAL`]. Empty: nothing holds it back.
fn approval_after_amendment(old: &Order, now: Vec<String>) -> Vec<String> {
    let acted = old.lines.iter().any(|l| l.status == LineStatus::Rejected)
        || old.approval_reasons.iter().any(|r| r == REAPPROVAL);
    if !acted {
        return now;
    }
    let notes = old
        .approval_reasons
        .iter()
        .filter(|r| r.starts_with(REJECTION_NOTE_PREFIX))
        .cloned();
    let mut reasons: Vec<String> = now
        .into_iter()
        .chain(notes)
        .take(APPROVAL_REASONS_MAX - 1)
        .collect();
    reasons.push(REAPPROVAL.to_owned());
    reasons
}

/// The most changes an order may have before amendments are refused (`409`). Each change adds
/// its audit seq to the order's record, which is written whole on every change: without a
/// bound, amending one order in a loop would grow each write until the record is too large to
/// store, when not even a cancellation could be written. The other changes are bounded by
/// the order itself (submit, approve, cancel once; ship once per warehouse; reject once per
/// line at most) and always allowed, though a partial rejection may have to come without a
/// reason ([`APPROVAL_REASONS_MAX`]).
pub const ORDER_CHANGES_MAX: usize = 1_000;

pub async fn reject(
    st: &mut AccountState,
    caller: &Caller,
    target: &Target,
    lines: &[u32],
    reason: Option<String>,
) -> Flow<Order> {
    let id = &target.id;
    let order = match find(st, caller, target).await? {
        Ok(o) => o,
        Err(e) => return Ok(Err(e)),
    };
    if !caller.has(Role::Approver) {
        return Ok(Err(Rejection::Forbidden(
            "only an approver may reject".into(),
        )));
    }
    if order.state != OrderState::PendingApproval {
        return Ok(Err(Rejection::Conflict(format!(
            "order {id} is {}, not pending approval",
            order.state.as_str()
        ))));
    }
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > REJECT_REASON_LEN_MAX)
    {
        return Ok(Err(Rejection::Invalid(vec![Problem::new(
            ProblemCode::InvalidField,
            format!("a reason is at most {REJECT_REASON_LEN_MAX} characters"),
        )
        .field("reason")])));
    }
    let note = reason.map(|r| format!("{REJECTION_NOTE_PREFIX}{r}"));
    reject_pending(st, caller, order, lines, note, "order.reject").await
}

/// Rejects `lines` of a pending order (all of its open lines when none are named): the order
/// ends Rejected once no line is open, and `note` joins its approval reasons.
async fn reject_pending(
    st: &mut AccountState,
    caller: &Caller,
    mut order: Order,
    lines: &[u32],
    note: Option<String>,
    action: &str,
) -> Flow<Order> {
    assert_eq!(order.state, OrderState::PendingApproval, "{}", order.id);
    let id = order.id.clone();
    let all: Vec<u32> = order.open_lines().map(|l| l.line_no).collect();
    let lines = if lines.is_empty() { &all } else { lines };
    let freed = match reject_lines(&mut order, lines, "lines") {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let whole = order.open_lines().next().is_none();
    if note.is_some() && !whole && order.approval_reasons.len() >= APPROVAL_REASONS_MAX {
        return Ok(Err(Rejection::Conflict(format!(
            "order {id} already has {APPROVAL_REASONS_MAX} approval reasons, the most it keeps while pending: reject these lines without a reason, or every open line with one"
        ))));
    }
    if whole {
        if let Err(e) = order.transition(OrderState::Rejected) {
            return Ok(Err(e.into()));
        }
    }
    order.approval_reasons.extend(note);
    touch(&mut order);
    let transitions: &[&'static str] = if whole { &["rejected"] } else { &[] };
    let batch = match order_batch(
        st,
        caller,
        &order,
        action,
        Some(OrderState::PendingApproval),
        transitions,
    ) {
        Ok(b) => b,
        Err(r) => return Ok(Err(r)),
    };
    let committed = st.journal.submit(batch).await?;
    if whole {
        for_every_warehouse(st, |h| h.release_all(id.clone()))?;
    } else {
        release(st, &id, &freed)?;
    }
    Ok(Ok(commit_order(st, order, &committed)))
}

pub async fn cancel(st: &mut AccountState, caller: &Caller, target: &Target) -> Flow<Order> {
    let id = &target.id;
    let mut order = match find(st, caller, target).await? {
        Ok(o) => o,
        Err(e) => return Ok(Err(e)),
    };
    if order
        .lines
        .iter()
        .flat_map(|l| &l.allocations)
        .any(|a| a.shipped)
    {
        let how = if order.state == OrderState::Shipped {
            "shipped"
        } else {
            "partly shipped"
        };
        return Ok(Err(Rejection::Conflict(format!(
            "order {id} is {how} and can no longer be cancelled"
        ))));
    }
    if order.state == OrderState::PendingApproval {
        // Withdrawn: DESIGN.md's state machine leads from PendingApproval only to Confirmed
        // or Rejected, so a pending order that is cancelled ends Rejected, saying by whom.
        let note = format!("withdrawn by {}", caller.user);
        return reject_pending(st, caller, order, &[], Some(note), "order.cancel").await;
    }
    let from = order.state;
    if let Err(e) = order.transition(OrderState::Cancelled) {
        return Ok(Err(e.into()));
    }
    touch(&mut order);
    let batch = match order_batch(
        st,
        caller,
        &order,
        "order.cancel",
        Some(from),
        &["cancelled"],
    ) {
        Ok(b) => b,
        Err(r) => return Ok(Err(r)),
    };
    let committed = st.journal.submit(batch).await?;
    for_every_warehouse(st, |h| h.release_all(id.clone()))?;
    Ok(Ok(commit_order(st, order, &committed)))
}

/// The request an order would be placed with, with `patch` applied. Lines the patch does not
/// replace carry the price the order shows as their quote, and problems name them by their
/// line number: submitting a draft or amending only the header never changes a price unseen
/// (`price_changed`). Sending the lines prices them as sent.
fn request_of(order: &Order, patch: &Amendment, currency: Currency) -> Rebuilt {
    let header = OrderRequest {
        lines: vec![],
        ship_to: Some(
            patch
                .ship_to
                .clone()
                .unwrap_or_else(|| order.ship_to.to_string()),
        ),
        delivery_speed: (patch.delivery_speed.clone())
            .unwrap_or_else(|| order.delivery_speed.clone()),
        customer_po: (patch.customer_po.clone()).unwrap_or_else(|| order.customer_po.clone()),
        allow_split: patch.allow_split.unwrap_or(order.allow_split),
    };
    if let Some(lines) = &patch.lines {
        return Rebuilt::as_sent(OrderRequest {
            lines: lines.clone(),
            ..header
        });
    }
    let held = order.open_lines().map(|l| HeldLine {
        id: l.line_no,
        line: LineRequest {
            sku: l.sku.to_string(),
            qty: l.qty,
            note: l.note.clone(),
            warehouse: l.requested_warehouse.as_ref().map(|w| w.to_string()),
            quoted_unit_price: None,
        },
        shown: Some(l.unit_price),
    });
    // Only an order priced in another currency than the account's now shows no quote.
    Rebuilt::from_held(header, held, currency, |l, shown| {
        let shown = shown.map_or_else(String::new, |m| m.currency.to_string());
        format!(
            "{}: the order shows a price in {shown}, the account now buys in {currency}; send \
             the lines again to price them today",
            l.sku
        )
    })
}

/// An amendment without `lines` leaves the lines as they were: the lines rebuilt from `old`'s
/// open lines get their numbers back (`ids`, in order) and the lines an approver rejected stay,
/// so a line's number is stable for the life of the order. (With `lines`, every line is new.)
fn keep_line_numbers(order: &mut Order, old: &Order, ids: &[u32]) {
    assert_eq!(
        order.lines.len(),
        ids.len(),
        "order {}: one rebuilt line per open line",
        order.id
    );
    for (line, id) in order.lines.iter_mut().zip(ids) {
        line.line_no = *id;
    }
    let rejected = old.lines.iter().filter(|l| l.status != LineStatus::Open);
    order.lines.extend(rejected.cloned());
    order.lines.sort_by_key(|l| l.line_no);
}

pub async fn amend(
    st: &mut AccountState,
    caller: &Caller,
    target: &Target,
    patch: Amendment,
) -> Flow<Order> {
    let id = &target.id;
    let old = match find(st, caller, target).await? {
        Ok(o) => o,
        Err(e) => return Ok(Err(e)),
    };
    if !old.state.amendable() {
        return Ok(Err(Rejection::Conflict(format!(
            "order {id} is {}: only orders not yet allocated can be amended",
            old.state.as_str()
        ))));
    }
    if st.orders.audit_seqs(id).len() >= ORDER_CHANGES_MAX {
        return Ok(Err(Rejection::Conflict(format!(
            "order {id} has had {ORDER_CHANGES_MAX} changes, the most an order may have: cancel it and place a new one"
        ))));
    }
    let rebuilt = request_of(&old, &patch, st.account.currency);
    let req = &rebuilt.req;
    let placer = Placer::of(st, caller, &old.placed_by);
    let mut order = old.clone();
    let mut transitions = vec![];
    if old.state == OrderState::Draft {
        let (snap, checked) = check_catalog(st, &placer, req);
        let problems = rebuilt.problems(checked.problems.clone());
        if !problems.is_empty() {
            return Ok(Err(Rejection::Invalid(problems)));
        }
        order.total = checked.total(&st.account);
        order.lines = build_lines(&snap, &checked, None);
        order.ship_to = checked.ship_to.map(|s| s.id).unwrap_or(order.ship_to);
    } else {
        let ev = evaluate(st, &placer, req, Some(&old)).await?;
        let problems = rebuilt.problems(ev.problems);
        if !problems.is_empty() {
            return Ok(Err(Rejection::Invalid(problems)));
        }
        order.total = ev.total;
        order.ship_to = ev
            .checked
            .ship_to
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or(order.ship_to);
        order.lines = build_lines(&ev.snap, &ev.checked, ev.allocations);
        // The approval rules are applied again: the approver sees why the order waits now,
        // and an order nothing holds back any longer goes on as if submitted so.
        if old.state == OrderState::PendingApproval {
            let reasons = approval_after_amendment(&old, ev.approval_reasons);
            if reasons.is_empty() {
                transitions = match confirm(&mut order) {
                    Ok(t) => t,
                    Err(e) => return Ok(Err(e.into())),
                };
                order.approval_reasons.clear();
            } else {
                order.approval_reasons = reasons;
            }
        }
    }
    order.delivery_speed = rebuilt.req.delivery_speed.clone();
    order.customer_po = rebuilt.req.customer_po.clone();
    order.allow_split = rebuilt.req.allow_split;
    if patch.lines.is_none() {
        keep_line_numbers(&mut order, &old, &rebuilt.line_ids);
    }
    let (grow, shrink) = deltas(&old.stock_demand(), &order.stock_demand());
    touch(&mut order);
    let batch = match order_batch(
        st,
        caller,
        &order,
        "order.amend",
        Some(old.state),
        &transitions,
    ) {
        Ok(b) => b,
        Err(r) => return Ok(Err(r)),
    };
    if let Err(p) = hold(st, &order, &grow, HoldFor::Growth).await? {
        // Kept lines already carry the caller's numbers (`keep_line_numbers`).
        let p = if patch.lines.is_none() {
            p
        } else {
            rebuilt.renumber(p)
        };
        return Ok(Err(Rejection::Invalid(p)));
    }
    let committed = match st.journal.submit(batch).await {
        Ok(c) => c,
        Err(e) => {
            release(st, id, &grow)?;
            return Err(e.into());
        }
    };
    // Both, even when a warehouse cannot be asked (see `approve`).
    let released = release(st, id, &shrink);
    let settled = if order.state == OrderState::Allocated {
        allocate_held(st, &order)
    } else {
        Ok(())
    };
    released.and(settled)?;
    let before = st.exposure();
    let order = commit_order(st, order, &committed);
    debug_assert_credit(st, &order, before);
    Ok(Ok(order))
}

pub async fn ship(
    st: &mut AccountState,
    caller: &Caller,
    target: &Target,
    warehouse: &WarehouseId,
) -> Flow<Order> {
    let id = &target.id;
    // A caller shipping for this warehouse reaches every order holding stock in it (the API
    // checked that this one does), whichever other roles it has.
    let ships_here = caller.has(Role::Warehouse) && caller.warehouse.as_ref() == Some(warehouse);
    let sees = |o: &Order| ships_here || caller.sees_order_of(&o.placed_by);
    let mut order = match find_seen_by(st, target, sees).await? {
        Ok(o) => o,
        Err(e) => return Ok(Err(e)),
    };
    if order.state != OrderState::Allocated {
        return Ok(Err(Rejection::Conflict(format!(
            "order {id} is {}, only allocated orders ship",
            order.state.as_str()
        ))));
    }
    let mut value = Money::zero(st.account.currency);
    let invariant = |e: orderd_domain::money::MoneyError| ActorError::Invariant(e.to_string());
    for line in order
        .lines
        .iter_mut()
        .filter(|l| l.status == LineStatus::Open)
    {
        // What this shipment invoices of the line: its unshipped value before less after.
        let before = line.unshipped_value().map_err(invariant)?;
        for a in line
            .allocations
            .iter_mut()
            .filter(|a| &a.warehouse == warehouse && !a.shipped)
        {
            a.shipped = true;
        }
        let after = line.unshipped_value().map_err(invariant)?;
        value = value
            .checked_add(before.checked_sub(after).map_err(invariant)?)
            .map_err(invariant)?;
    }
    if value.amount.is_zero()
        && !order
            .lines
            .iter()
            .flat_map(|l| &l.allocations)
            .any(|a| &a.warehouse == warehouse)
    {
        return Ok(Err(Rejection::Conflict(format!(
            "order {id} has nothing to ship from {warehouse}"
        ))));
    }
    let mut transitions = vec![];
    if order.fully_shipped() {
        if let Err(e) = order.transition(OrderState::Shipped) {
            return Ok(Err(e.into()));
        }
        transitions.push("shipped");
    }
    touch(&mut order);
    // Shipped goods are invoiced: their value moves from open orders to receivables, so
    // exposure stays the same until the customer pays.
    let mut account = st.account.clone();
    account.open_receivables = account
        .open_receivables
        .checked_add(value)
        .map_err(invariant)?;
    let mut batch = match order_batch(
        st,
        caller,
        &order,
        "order.ship",
        Some(OrderState::Allocated),
        &transitions,
    ) {
        Ok(b) => b,
        Err(r) => return Ok(Err(r)),
    };
    batch.put(
        records::account_key(&account.id),
        records::encode_account(&account),
    );
    let snap = st.catalog.load();
    let handle = snap
        .handles
        .get(warehouse)
        .ok_or_else(|| ActorError::Invariant(format!("no warehouse {warehouse}")))?;
    let ticket = match handle.ship(id.clone(), batch).await? {
        Ok(t) => t,
        Err(e) => return Ok(Err(Rejection::Conflict(e.to_string()))),
    };
    let committed = ticket.await?;
    st.account = account;
    Ok(Ok(commit_order(st, order, &committed)))
}

fn account_batch(caller: &Caller, account: &Account, action: &str) -> Batch {
    account_batch_for(caller, account, action, None)
}

/// The batch that stores `account` with its audit entry; `target` names what else the change
/// concerns (a user).
pub(crate) fn account_batch_for(
    caller: &Caller,
    account: &Account,
    action: &str,
    target: Option<String>,
) -> Batch {
    let bytes = records::encode_account(account);
    let mut entry = AuditEntry::new(caller, Some(&account.id), action, &bytes);
    entry.target = target;
    let mut batch = Batch::default();
    batch
        .audit
        .push(entry.draft(&format!("account:{}", account.id)));
    batch.put(records::account_key(&account.id), bytes);
    batch
}

/// Writes a new account's master record (the account has no actor yet).
pub fn create_account_batch(caller: &Caller, account: &Account) -> Batch {
    account_batch(caller, account, "account.create")
}

/// Replaces the account's master data (an import). Users the account had and `account` lacks
/// count as removed, and earlier removals stay (see [`Account::keep_removals_of`]).
pub async fn put_account(
    st: &mut AccountState,
    caller: &Caller,
    mut account: Account,
) -> Flow<Account> {
    if account.id != st.account.id {
        return Ok(Err(Rejection::Conflict("account id cannot change".into())));
    }
    if account.currency != st.account.currency
        && st.orders.values().any(|o| o.state.counts_for_credit())
    {
        return Ok(Err(Rejection::Conflict(
            "currency cannot change while orders are open".into(),
        )));
    }
    account.keep_removals_of(&st.account);
    let problems = account_problems(&account, Some(&st.account));
    if !problems.is_empty() {
        return Ok(Err(Rejection::Invalid(problems)));
    }
    st.journal
        .submit(account_batch(caller, &account, "account.update"))
        .await?;
    st.account = account;
    st.grants.publish(&st.account);
    Ok(Ok(st.account.clone()))
}

/// What is wrong with `account` as it would be stored over `before` (`None`: a new account):
/// its own rules, and an account admin's for each user that is new or changed (an import
/// writes users too; a user stored before keeps its record, so an older record never blocks
/// later changes).
pub(crate) fn account_problems(account: &Account, before: Option<&Account>) -> Vec<Problem> {
    let before: BTreeMap<_, _> = before
        .iter()
        .flat_map(|b| &b.users)
        .map(|u| (&u.id, u))
        .collect();
    let mut errs = account.check().err().unwrap_or_default();
    for u in &account.users {
        if before.get(&u.id) != Some(&u) {
            let bad = account.check_user_record(u).into_iter();
            errs.extend(bad.map(|e| format!("user {} {}: {}", u.id, e.field, e.message)));
        }
    }
    errs.into_iter()
        .map(|e| {
            Problem::new(
                ProblemCode::InvalidField,
                format!("account {}: {e}", account.id),
            )
        })
        .collect()
}

pub async fn set_credit(
    st: &mut AccountState,
    caller: &Caller,
    limit: Option<Decimal>,
    receivables: Option<Decimal>,
) -> Flow<CreditView> {
    let mut account = st.account.clone();
    let cur = account.currency;
    let mut problems = vec![];
    for (value, field, slot) in [
        (limit, "credit_limit", &mut account.credit_limit),
        (
            receivables,
            "open_receivables",
            &mut account.open_receivables,
        ),
    ] {
        match value.map(|d| Money::new(d, cur, orderd_domain::money::MONEY_SCALE)) {
            None => {}
            Some(Ok(m)) => *slot = m,
            Some(Err(e)) => {
                problems.push(Problem::new(ProblemCode::InvalidField, e.to_string()).field(field))
            }
        }
    }
    if !problems.is_empty() {
        return Ok(Err(Rejection::Invalid(problems)));
    }
    st.journal
        .submit(account_batch(caller, &account, "account.credit"))
        .await?;
    st.account = account;
    Ok(Ok(st.credit()))
}
