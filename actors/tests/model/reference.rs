//! The deliberately naive reference model. It keeps every order as a list of lines with their
//! allocations and recomputes everything else from scratch whenever asked: stock held per
//! warehouse and SKU, free stock, credit exposure. Its rules are written from DESIGN.md and the
//! world's tables, not from `ordering.rs`. Warehouse choice is the one thing it does not
//! predict: it adopts the allocations the real system reports and only checks that they are
//! plausible (right quantities, the requested warehouse, no split unless allowed) — invariant 2
//! is then checked against the stock those allocations hold (see `compare.rs`).

use super::world::{self, Level, ACCOUNTS, PRICE_BOOKS, STOCK, STOCK_SKUS, WAREHOUSES};
use orderd_domain::ids::OrderId;
use orderd_domain::order::OrderState;
use orderd_domain::validation::{LineRequest, OrderRequest, ProblemCode};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};

/// The moves DESIGN.md's state machine draws, copied from the picture.
pub fn legal(from: OrderState, to: OrderState) -> bool {
    use OrderState::*;
    const MOVES: [(OrderState, OrderState); 9] = [
        (Draft, PendingApproval),
        (Draft, Confirmed),
        (Draft, Cancelled),
        (PendingApproval, Confirmed),
        (PendingApproval, Rejected),
        (Confirmed, Allocated),
        (Confirmed, Cancelled),
        (Allocated, Shipped),
        (Allocated, Cancelled),
    ];
    MOVES.contains(&(from, to))
}

pub fn state_named(s: &str) -> Option<OrderState> {
    OrderState::ALL.into_iter().find(|x| x.as_str() == s)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MAlloc {
    pub wh: String,
    pub qty: u32,
    pub shipped: bool,
}

#[derive(Debug, Clone)]
pub struct MLine {
    pub line_no: u32,
    pub sku: String,
    pub qty: u32,
    pub unit: Decimal,
    pub wh: Option<String>,
    pub open: bool,
    pub allocs: Vec<MAlloc>,
}

impl MLine {
    pub fn total(&self) -> Decimal {
        self.unit * Decimal::from(self.qty)
    }

    fn unshipped_units(&self) -> u32 {
        let shipped: u32 = self
            .allocs
            .iter()
            .filter(|a| a.shipped)
            .map(|a| a.qty)
            .sum();
        self.qty - shipped
    }
}

/// Stock units `units` of `sku` take: itself, or a kit's components.
pub fn demand(sku: &str, units: u32) -> Vec<(String, u64)> {
    let item = world::item(sku).expect("only catalog SKUs reach stock");
    if item.kit.is_empty() {
        vec![(sku.to_owned(), u64::from(units))]
    } else {
        item.kit
            .iter()
            .map(|(c, q)| ((*c).to_owned(), u64::from(*q) * u64::from(units)))
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct MOrder {
    pub id: OrderId,
    pub acct: usize,
    pub state: OrderState,
    /// Accepted changes so far: the order's version, its audit records and its events.
    pub changes: u32,
    pub ship_to: String,
    pub speed: Option<String>,
    pub split: bool,
    pub lines: Vec<MLine>,
    /// Pending, and an approver rejected some of its lines before it was amended: it waits
    /// for an approver whatever the rules say (`ordering::REAPPROVAL`).
    pub reapproval: bool,
}

impl MOrder {
    pub fn open_lines(&self) -> impl Iterator<Item = &MLine> {
        self.lines.iter().filter(|l| l.open)
    }

    pub fn total(&self) -> Decimal {
        self.open_lines().map(MLine::total).sum()
    }

    /// The request this order would be placed with now (amendments start from it): its
    /// prices are quotes.
    pub fn request(&self) -> OrderRequest {
        OrderRequest {
            lines: self
                .open_lines()
                .map(|l| LineRequest {
                    sku: l.sku.clone(),
                    qty: l.qty,
                    note: None,
                    warehouse: l.wh.clone(),
                    quoted_unit_price: Some(l.unit),
                })
                .collect(),
            ship_to: Some(self.ship_to.clone()),
            delivery_speed: self.speed.clone(),
            customer_po: None,
            allow_split: self.split,
        }
    }

    /// Held stock per warehouse: (reserved, allocated), each SKU -> units.
    pub fn holding(&self) -> BTreeMap<String, Holding> {
        let mut out: BTreeMap<String, Holding> = BTreeMap::new();
        let allocated = match self.state {
            OrderState::PendingApproval | OrderState::Confirmed => false,
            OrderState::Allocated => true,
            _ => return out,
        };
        for l in self.open_lines() {
            for a in l.allocs.iter().filter(|a| !a.shipped) {
                let h = out.entry(a.wh.clone()).or_default();
                let slot = if allocated {
                    &mut h.allocated
                } else {
                    &mut h.reserved
                };
                for (sku, q) in demand(&l.sku, a.qty) {
                    *slot.entry(sku).or_default() += q;
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    pub reserved: BTreeMap<String, u64>,
    pub allocated: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MCartLine {
    pub id: u32,
    pub sku: String,
    pub qty: u32,
    pub wh: Option<String>,
    /// The unit price quoted when the line was added, its quantity changed or the cart was
    /// repriced (every SKU of the world has a price in every book).
    pub quote: Decimal,
}

/// What an idempotency key remembers: the request as sent, and the order it created.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed {
    pub req: OrderRequest,
    pub from_cart: bool,
    pub submit: bool,
}

#[derive(Debug, Clone, Default)]
pub struct MAccount {
    pub cart: Vec<MCartLine>,
    pub cart_next: u32,
    pub limit: Decimal,
    pub receivables: Decimal,
    /// An operator lowered the limit (or raised receivables) below the exposure: invariant 3
    /// holds again only once exposure is back within the limit.
    pub over_by_operator: bool,
    /// The exposure the last check found: what a step started from.
    pub exposure_checked: Decimal,
    pub keys: BTreeMap<String, (Keyed, OrderId)>,
}

/// Whether an order would run out of stock: known for sure, or not predictable by the naive
/// model (several lines competing for the same stock in an order only the planner knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    No,
    Maybe,
    Yes,
}

/// What submitting a request would meet.
#[derive(Debug, Clone)]
pub struct Eval {
    /// Every problem code except `out_of_stock`.
    pub codes: BTreeSet<ProblemCode>,
    pub oos: Tri,
    pub lines: Vec<MLine>,
    pub ship_to: Option<String>,
    pub total: Decimal,
    pub needs_approval: bool,
}

impl Eval {
    /// Checks the codes of a refusal (empty when accepted) against the prediction.
    pub fn matches(&self, real: &BTreeSet<ProblemCode>) -> bool {
        let mut with_oos = self.codes.clone();
        with_oos.insert(ProblemCode::OutOfStock);
        match self.oos {
            Tri::No => *real == self.codes,
            Tri::Yes => *real == with_oos,
            Tri::Maybe => *real == self.codes || *real == with_oos,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    pub accounts: Vec<MAccount>,
    /// In creation order.
    pub orders: Vec<MOrder>,
    pub on_hand: BTreeMap<(String, String), u64>,
    /// The price book in force, an index into [`PRICE_BOOKS`].
    pub book: usize,
}

impl Model {
    pub fn new() -> Model {
        Model {
            accounts: ACCOUNTS
                .iter()
                .map(|a| MAccount {
                    limit: world::cents(a.limit_cents),
                    receivables: world::cents(a.receivables_cents),
                    ..MAccount::default()
                })
                .collect(),
            orders: vec![],
            on_hand: STOCK
                .iter()
                .map(|(w, s, q)| (((*w).to_owned(), (*s).to_owned()), *q))
                .collect(),
            book: 0,
        }
    }

    pub fn index_of(&self, id: &OrderId) -> Option<usize> {
        self.orders.iter().position(|o| &o.id == id)
    }

    // ---- master data rules ---------------------------------------------------------------

    /// The most specific price level with an entry, then its largest tier not above `qty`.
    pub fn unit_price(&self, acct: usize, sku: &str, qty: u32) -> Decimal {
        let a = &ACCOUNTS[acct];
        let entries: Vec<_> = PRICE_BOOKS[self.book]
            .iter()
            .filter(|p| p.sku == sku)
            .collect();
        let pick = |want: &dyn Fn(&Level) -> bool| entries.iter().find(|p| want(&p.level));
        let entry = pick(&|l| matches!(l, Level::Contract(x) if *x == a.id))
            .or_else(|| pick(&|l| matches!(l, Level::Segment(s) if *s == a.segment)))
            .or_else(|| pick(&|l| matches!(l, Level::List)))
            .expect("every catalog SKU has a list price");
        let (_, c) = entry
            .tiers
            .iter()
            .filter(|(min, _)| *min <= qty.max(1))
            .max_by_key(|(min, _)| *min)
            .expect("first tier starts at 1");
        world::cents(*c)
    }

    fn spending_limit(acct: usize) -> Option<Decimal> {
        let a = &ACCOUNTS[acct];
        a.buyer.1.or(a.buyer_role_limit).map(world::cents)
    }

    fn approver_limit(acct: usize) -> Option<Decimal> {
        ACCOUNTS[acct].approver.1.map(world::cents)
    }

    /// Header and line checks that need neither stock nor credit. Returns the codes, the
    /// ship-to and the lines that passed.
    pub fn static_check(
        &self,
        acct: usize,
        req: &OrderRequest,
    ) -> (BTreeSet<ProblemCode>, Option<String>, Vec<MLine>) {
        let a = &ACCOUNTS[acct];
        let mut codes = BTreeSet::new();
        if req.lines.is_empty() {
            codes.insert(ProblemCode::EmptyOrder);
        }
        let ship_to = match &req.ship_to {
            Some(s) => a.ship_tos.iter().find(|t| t.0 == s).map(|t| t.0.to_owned()),
            None if a.ship_tos.len() == 1 => Some(a.ship_tos[0].0.to_owned()),
            None => None,
        };
        if ship_to.is_none() {
            codes.insert(ProblemCode::UnknownShipTo);
        }
        if let Some(speed) = &req.delivery_speed {
            let offered = WAREHOUSES
                .iter()
                .any(|w| w.speeds.iter().any(|b| b.0 == speed));
            if !offered {
                codes.insert(ProblemCode::InvalidField);
            }
        }
        let mut valid = vec![];
        for (i, l) in req.lines.iter().enumerate() {
            let Some(item) = world::item(&l.sku) else {
                codes.insert(ProblemCode::UnknownSku);
                continue;
            };
            if !item.segments.is_empty() && !item.segments.contains(&a.segment) {
                codes.insert(ProblemCode::NotVisible);
                continue;
            }
            let mut bad = vec![];
            if l.qty == 0 {
                bad.push(ProblemCode::InvalidQuantity);
            } else {
                if l.qty < item.min {
                    bad.push(ProblemCode::BelowMinimum);
                }
                if l.qty % item.pack != 0 {
                    bad.push(ProblemCode::NotPackMultiple);
                }
            }
            if let Some(w) = &l.warehouse {
                if !WAREHOUSES.iter().any(|x| x.id == w) {
                    bad.push(ProblemCode::UnknownWarehouse);
                }
            }
            let unit = self.unit_price(acct, &l.sku, l.qty);
            if l.quoted_unit_price.is_some_and(|q| q != unit) {
                bad.push(ProblemCode::PriceChanged);
            }
            if bad.is_empty() {
                valid.push(MLine {
                    line_no: u32::try_from(i + 1).expect("few lines"),
                    sku: l.sku.clone(),
                    qty: l.qty,
                    unit,
                    wh: l.warehouse.clone(),
                    open: true,
                    allocs: vec![],
                });
            }
            codes.extend(bad);
        }
        (codes, ship_to, valid)
    }

    // ---- figures recomputed from the orders ----------------------------------------------

    /// What each order holds in each warehouse.
    pub fn holdings(&self) -> BTreeMap<OrderId, BTreeMap<String, Holding>> {
        self.orders
            .iter()
            .map(|o| (o.id.clone(), o.holding()))
            .filter(|(_, h)| !h.is_empty())
            .collect()
    }

    /// (on hand, reserved, allocated) per warehouse and stock SKU.
    pub fn levels(&self) -> BTreeMap<(String, String), (u64, u64, u64)> {
        let mut out: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
        for w in &WAREHOUSES {
            for s in STOCK_SKUS {
                let key = (w.id.to_owned(), s.to_owned());
                let on_hand = self.on_hand.get(&key).copied().unwrap_or(0);
                out.insert(key, (on_hand, 0, 0));
            }
        }
        for o in &self.orders {
            for (w, h) in o.holding() {
                for (s, q) in h.reserved {
                    out.entry((w.clone(), s)).or_default().1 += q;
                }
                for (s, q) in h.allocated {
                    out.entry((w.clone(), s)).or_default().2 += q;
                }
            }
        }
        out
    }

    /// Free units per warehouse and SKU, counting what `exclude` holds as free (an amended
    /// order may reuse its own stock).
    fn free(&self, exclude: Option<usize>) -> BTreeMap<(String, String), u64> {
        let mut free: BTreeMap<(String, String), u64> = self
            .levels()
            .into_iter()
            .map(|(k, (on_hand, r, a))| (k, on_hand.saturating_sub(r + a)))
            .collect();
        if let Some(i) = exclude {
            for (w, h) in self.orders[i].holding() {
                for (s, q) in h.reserved.into_iter().chain(h.allocated) {
                    *free.entry((w.clone(), s)).or_default() += q;
                }
            }
        }
        free
    }

    /// Receivables plus the unshipped value of every order awaiting approval, confirmed or
    /// allocated (leaving out `exclude`).
    pub fn exposure(&self, acct: usize, exclude: Option<usize>) -> Decimal {
        let open: Decimal = self
            .orders
            .iter()
            .enumerate()
            .filter(|(i, o)| o.acct == acct && Some(*i) != exclude)
            .filter(|(_, o)| {
                matches!(
                    o.state,
                    OrderState::PendingApproval | OrderState::Confirmed | OrderState::Allocated
                )
            })
            .flat_map(|(_, o)| o.open_lines())
            .map(|l| l.unit * Decimal::from(l.unshipped_units()))
            .sum();
        self.accounts[acct].receivables + open
    }

    fn oos(&self, free: &BTreeMap<(String, String), u64>, lines: &[MLine], split: bool) -> Tri {
        let get = |w: &str, s: &str| free.get(&(w.to_owned(), s.to_owned())).copied();
        let fillable = |w: &str, sku: &str| -> u64 {
            demand(sku, 1)
                .iter()
                .map(|(c, q)| get(w, c).unwrap_or(0) / q)
                .min()
                .unwrap_or(0)
        };
        let alone = |l: &MLine| -> bool {
            let qty = u64::from(l.qty);
            match &l.wh {
                Some(w) => fillable(w, &l.sku) >= qty,
                None => {
                    WAREHOUSES.iter().any(|w| fillable(w.id, &l.sku) >= qty)
                        || (split
                            && WAREHOUSES
                                .iter()
                                .map(|w| fillable(w.id, &l.sku))
                                .sum::<u64>()
                                >= qty)
                }
            }
        };
        if !lines.iter().all(alone) {
            return Tri::Yes;
        }
        if lines.len() <= 1 {
            return Tri::No;
        }
        let fits = |w: &str, ls: &mut dyn Iterator<Item = &MLine>| -> bool {
            let mut need: BTreeMap<String, u64> = BTreeMap::new();
            for l in ls {
                for (s, q) in demand(&l.sku, l.qty) {
                    *need.entry(s).or_default() += q;
                }
            }
            need.iter().all(|(s, q)| get(w, s).unwrap_or(0) >= *q)
        };
        if lines.iter().all(|l| l.wh.is_some()) {
            // Each line can only go to its own warehouse: all fit or at least one fails.
            let ok = WAREHOUSES.iter().all(|w| {
                fits(
                    w.id,
                    &mut lines.iter().filter(|l| l.wh.as_deref() == Some(w.id)),
                )
            });
            return if ok { Tri::No } else { Tri::Yes };
        }
        // If every warehouse could take the whole order, no line can miss whatever the
        // planner's preference.
        if WAREHOUSES.iter().all(|w| fits(w.id, &mut lines.iter())) {
            return Tri::No;
        }
        Tri::Maybe
    }

    /// Stores an accepted order change (a new order is appended).
    pub fn store(&mut self, m: MOrder) {
        match self.index_of(&m.id) {
            Some(i) => self.orders[i] = m,
            None => self.orders.push(m),
        }
    }

    /// Whether the account has an order confirmed (or allocated, shipped) to `ship_to` now: the
    /// first order to any other ship-to waits for an approver when the account asks for that.
    fn ship_to_confirmed(&self, acct: usize, ship_to: &str) -> bool {
        self.orders.iter().any(|o| {
            o.acct == acct
                && o.ship_to == ship_to
                && matches!(
                    o.state,
                    OrderState::Confirmed | OrderState::Allocated | OrderState::Shipped
                )
        })
    }

    /// Everything submitting `req` for `acct` (by its buyer) would meet.
    pub fn evaluate(&self, acct: usize, req: &OrderRequest, exclude: Option<usize>) -> Eval {
        let (mut codes, ship_to, lines) = self.static_check(acct, req);
        let total: Decimal = lines.iter().map(MLine::total).sum();
        // Stock is checked also without a ship-to (the naive model ranks no warehouses anyway).
        let oos = if !lines.is_empty() {
            self.oos(&self.free(exclude), &lines, req.allow_split)
        } else {
            Tri::No
        };
        // An amendment that does not raise what its order counts adds no credit to check.
        let own = exclude.map_or(Decimal::ZERO, |_| {
            self.exposure(acct, None) - self.exposure(acct, exclude)
        });
        if (exclude.is_none() || total > own)
            && self.exposure(acct, exclude) + total > self.accounts[acct].limit
        {
            codes.insert(ProblemCode::CreditLimitExceeded);
        }
        let a = &ACCOUNTS[acct];
        let needs_approval = Model::spending_limit(acct).is_some_and(|l| total > l)
            || lines.iter().any(|l| a.restricted.contains(&l.sku.as_str()))
            || (a.approve_new_ship_to
                && ship_to
                    .as_ref()
                    .is_some_and(|s| !self.ship_to_confirmed(acct, s)));
        Eval {
            codes,
            oos,
            lines,
            ship_to,
            total,
            needs_approval,
        }
    }

    // ---- cart ----------------------------------------------------------------------------

    fn cart_sku_ok(acct: usize, sku: &str) -> bool {
        let seg = ACCOUNTS[acct].segment;
        world::item(sku).is_some_and(|i| i.segments.is_empty() || i.segments.contains(&seg))
    }

    /// The cart after adding, or `None` when it must be refused.
    pub fn cart_add(&self, acct: usize, sku: &str, qty: u32, wh: Option<&str>) -> Option<MAccount> {
        let mut a = self.accounts[acct].clone();
        if qty == 0 || !Model::cart_sku_ok(acct, sku) {
            return None;
        }
        match a
            .cart
            .iter_mut()
            .find(|l| l.sku == sku && l.wh.as_deref() == wh)
        {
            Some(l) => {
                l.qty += qty;
                l.quote = self.unit_price(acct, sku, l.qty);
            }
            None => {
                a.cart_next += 1;
                a.cart.push(MCartLine {
                    id: a.cart_next,
                    sku: sku.to_owned(),
                    qty,
                    wh: wh.map(str::to_owned),
                    quote: self.unit_price(acct, sku, qty),
                });
            }
        }
        Some(a)
    }

    pub fn cart_update(&self, acct: usize, id: u32, qty: u32) -> Option<MAccount> {
        let mut a = self.accounts[acct].clone();
        let line = a.cart.iter_mut().find(|l| l.id == id)?;
        if qty == 0 {
            return None;
        }
        if line.qty != qty {
            line.qty = qty;
            line.quote = self.unit_price(acct, &line.sku, qty);
        }
        Some(a)
    }

    /// The cart with every line quoted at today's price.
    pub fn cart_reprice(&self, acct: usize) -> MAccount {
        let mut a = self.accounts[acct].clone();
        for l in &mut a.cart {
            l.quote = self.unit_price(acct, &l.sku, l.qty);
        }
        a
    }

    pub fn cart_remove(&self, acct: usize, id: u32) -> Option<MAccount> {
        let mut a = self.accounts[acct].clone();
        let before = a.cart.len();
        a.cart.retain(|l| l.id != id);
        (a.cart.len() < before).then_some(a)
    }

    /// The request a place call makes: the header with the cart's lines when `from_cart`.
    pub fn effective_request(
        &self,
        acct: usize,
        req: &OrderRequest,
        from_cart: bool,
    ) -> OrderRequest {
        if !from_cart {
            return req.clone();
        }
        OrderRequest {
            lines: self.accounts[acct]
                .cart
                .iter()
                .map(|l| LineRequest {
                    sku: l.sku.clone(),
                    qty: l.qty,
                    note: None,
                    warehouse: l.wh.clone(),
                    quoted_unit_price: Some(l.quote),
                })
                .collect(),
            ..req.clone()
        }
    }

    // ---- order changes without stock planning ------------------------------------------

    /// Approve (optionally dropping lines): the order after it, or `None` when refused.
    pub fn approve(&self, i: usize, by_approver: bool, reject: &[u32]) -> Option<MOrder> {
        let mut o = self.orders[i].clone();
        if o.state != OrderState::PendingApproval || !by_approver {
            return None;
        }
        // A number named twice rejects its line once.
        for n in reject.iter().collect::<std::collections::BTreeSet<_>>() {
            let line = o.lines.iter_mut().find(|l| l.line_no == *n && l.open)?;
            line.open = false;
        }
        if Model::approver_limit(o.acct).is_some_and(|l| o.total() > l) {
            return None;
        }
        o.state = if o.open_lines().next().is_none() {
            OrderState::Rejected
        } else {
            OrderState::Allocated
        };
        o.changes += 1;
        Some(o)
    }

    /// Reject the whole order (no lines named) or some lines.
    pub fn reject(&self, i: usize, by_approver: bool, lines: &[u32]) -> Option<MOrder> {
        let mut o = self.orders[i].clone();
        if o.state != OrderState::PendingApproval || !by_approver {
            return None;
        }
        let all: Vec<u32> = o.open_lines().map(|l| l.line_no).collect();
        let named = if lines.is_empty() { &all } else { lines };
        for n in named.iter().collect::<std::collections::BTreeSet<_>>() {
            let line = o.lines.iter_mut().find(|l| l.line_no == *n && l.open)?;
            line.open = false;
        }
        if o.open_lines().next().is_none() {
            o.state = OrderState::Rejected;
        }
        o.changes += 1;
        Some(o)
    }

    /// Cancel: along the state machine, and never once anything shipped. A pending order is
    /// withdrawn: all of it rejected.
    pub fn cancel(&self, i: usize) -> Option<MOrder> {
        let mut o = self.orders[i].clone();
        if o.state == OrderState::PendingApproval {
            return self.reject(i, true, &[]);
        }
        let shipped = o.lines.iter().flat_map(|l| &l.allocs).any(|a| a.shipped);
        if shipped || !legal(o.state, OrderState::Cancelled) {
            return None;
        }
        o.state = OrderState::Cancelled;
        o.changes += 1;
        Some(o)
    }

    /// Ship what the order has allocated in `wh`: the order after it and the invoiced value.
    pub fn ship(&self, i: usize, wh: &str) -> Option<(MOrder, Decimal)> {
        let mut o = self.orders[i].clone();
        if o.state != OrderState::Allocated {
            return None;
        }
        let mut value = Decimal::ZERO;
        for l in o.lines.iter_mut().filter(|l| l.open) {
            for a in l.allocs.iter_mut().filter(|a| a.wh == wh && !a.shipped) {
                a.shipped = true;
                value += l.unit * Decimal::from(a.qty);
            }
        }
        if value.is_zero() {
            return None;
        }
        if o.open_lines()
            .all(|l| !l.allocs.is_empty() && l.allocs.iter().all(|a| a.shipped))
        {
            o.state = OrderState::Shipped;
        }
        o.changes += 1;
        Some((o, value))
    }

    /// A stock count: refused when it would drop below what orders hold.
    pub fn restock(&self, wh: &str, sku: &str, on_hand: u64) -> Option<Model> {
        let (_, r, a) = self.levels()[&(wh.to_owned(), sku.to_owned())];
        if on_hand < r + a {
            return None;
        }
        let mut m = self.clone();
        m.on_hand.insert((wh.to_owned(), sku.to_owned()), on_hand);
        Some(m)
    }

    /// An operator sets the limit and/or receivables: refused for a negative amount or one
    /// with more than two decimals.
    pub fn set_credit(
        &self,
        acct: usize,
        limit: Option<Decimal>,
        receivables: Option<Decimal>,
    ) -> Option<MAccount> {
        let ok = |d: &Decimal| !d.is_sign_negative() && d.normalize().scale() <= 2;
        if !limit.iter().chain(&receivables).all(ok) {
            return None;
        }
        let mut a = self.accounts[acct].clone();
        a.limit = limit.unwrap_or(a.limit);
        a.receivables = receivables.unwrap_or(a.receivables);
        Some(a)
    }

    /// Applies an accepted shipment: on hand goes down, receivables go up.
    pub fn apply_ship(&mut self, i: usize, wh: &str, after: MOrder, value: Decimal) {
        let before = &self.orders[i];
        for l in before.open_lines() {
            for a in l.allocs.iter().filter(|a| a.wh == wh && !a.shipped) {
                for (s, q) in demand(&l.sku, a.qty) {
                    let slot = self.on_hand.entry((wh.to_owned(), s)).or_default();
                    *slot = slot
                        .checked_sub(q)
                        .expect("model: shipped more than on hand");
                }
            }
        }
        self.accounts[after.acct].receivables += value;
        self.store(after);
    }
}
