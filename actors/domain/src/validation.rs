//! Order validation: every problem at once, each with a stable code, the line it concerns and a
//! readable message. Nothing here changes state; the actor decides what to do with the result.

use crate::account::{Account, ShipTo};
use crate::catalog::{Catalog, ItemStatus};
use crate::date::Date;
use crate::ids::{ShipToId, Sku, UserId, WarehouseId};
use crate::money::{Currency, Money};
use crate::pricing::{PriceBook, PriceSource};
use crate::warehouse::Warehouse;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Hard ceiling on lines per order; the configured limit may only be lower.
pub const ORDER_LINES_MAX: usize = 1_000;
/// Largest quantity on one line.
pub const LINE_QTY_MAX: u32 = 1_000_000;
pub const NOTE_LEN_MAX: usize = 500;
pub const CUSTOMER_PO_LEN_MAX: usize = 64;
pub const DELIVERY_SPEED_LEN_MAX: usize = 32;

/// Stable machine codes. Clients match on these, so never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    EmptyOrder,
    TooManyLines,
    UnknownSku,
    NotVisible,
    Discontinued,
    Blocked,
    InvalidQuantity,
    BelowMinimum,
    NotPackMultiple,
    NoPrice,
    PriceChanged,
    OutOfStock,
    CreditLimitExceeded,
    UnknownShipTo,
    UnknownWarehouse,
    /// The ship-to is the account's, but not one the ordering user is assigned to.
    ShipToNotAssigned,
    InvalidField,
}

impl ProblemCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::EmptyOrder => "empty_order",
            ProblemCode::TooManyLines => "too_many_lines",
            ProblemCode::UnknownSku => "unknown_sku",
            ProblemCode::NotVisible => "not_visible",
            ProblemCode::Discontinued => "discontinued",
            ProblemCode::Blocked => "blocked",
            ProblemCode::InvalidQuantity => "invalid_quantity",
            ProblemCode::BelowMinimum => "below_minimum",
            ProblemCode::NotPackMultiple => "not_pack_multiple",
            ProblemCode::NoPrice => "no_price",
            ProblemCode::PriceChanged => "price_changed",
            ProblemCode::OutOfStock => "out_of_stock",
            ProblemCode::CreditLimitExceeded => "credit_limit_exceeded",
            ProblemCode::UnknownShipTo => "unknown_ship_to",
            ProblemCode::UnknownWarehouse => "unknown_warehouse",
            ProblemCode::ShipToNotAssigned => "ship_to_not_assigned",
            ProblemCode::InvalidField => "invalid_field",
        }
    }
}

/// Units of a line one warehouse could supply now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarehouseQty {
    pub warehouse: WarehouseId,
    pub qty: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditFigures {
    pub limit: Money,
    pub exposure: Money,
    pub order_amount: Money,
}

/// One thing wrong with an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub code: ProblemCode,
    /// 1-based line number, when the problem concerns a line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Request field the problem concerns, when not a line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// For `out_of_stock`: what each warehouse has.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub available: Vec<WarehouseQty>,
    /// For `credit_limit_exceeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit: Option<CreditFigures>,
    /// For `price_changed` of a quoted line: the unit price that holds today, for the buyer to
    /// see (and send as the new quote).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<Money>,
}

impl Problem {
    pub fn new(code: ProblemCode, message: impl Into<String>) -> Problem {
        Problem {
            code,
            line: None,
            field: None,
            message: message.into(),
            sku: None,
            available: vec![],
            credit: None,
            unit_price: None,
        }
    }
    pub fn line(mut self, line: u32) -> Problem {
        self.line = Some(line);
        self
    }
    pub fn field(mut self, field: &str) -> Problem {
        self.field = Some(field.to_owned());
        self
    }
    pub fn sku(mut self, sku: &str) -> Problem {
        self.sku = Some(sku.to_owned());
        self
    }
}

/// One requested line, as any channel delivers it (not yet trusted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRequest {
    pub sku: String,
    pub qty: u32,
    #[serde(default)]
    pub note: Option<String>,
    /// The buyer's warehouse choice.
    #[serde(default)]
    pub warehouse: Option<String>,
    /// The unit price the buyer was quoted; refused as `price_changed` if it no longer holds.
    #[serde(default)]
    pub quoted_unit_price: Option<Decimal>,
}

/// The canonical order request every channel adapter produces.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OrderRequest {
    pub lines: Vec<LineRequest>,
    #[serde(default)]
    pub ship_to: Option<String>,
    #[serde(default)]
    pub delivery_speed: Option<String>,
    #[serde(default)]
    pub customer_po: Option<String>,
    #[serde(default)]
    pub allow_split: bool,
}

/// A request rebuilt from lines the caller already holds (the cart's, an order's own), with
/// what it takes to report on them in the caller's terms.
#[derive(Debug, Clone, Default)]
pub struct Rebuilt {
    pub req: OrderRequest,
    /// The number the caller knows each request line by, in order: the cart line's id, the
    /// order's line number.
    pub line_ids: Vec<u32>,
    /// Lines without a quote in the account's currency: their price was never shown, so they
    /// are not ordered until it is.
    pub unquoted: Vec<Problem>,
}

/// A line the caller already holds (in the cart, in an order): the number they know it by, the
/// request it makes, and the unit price it shows them, if any.
pub struct HeldLine {
    pub id: u32,
    pub line: LineRequest,
    pub shown: Option<Money>,
}

impl Rebuilt {
    /// A request as its sender wrote it: its lines are numbered as sent.
    pub fn as_sent(req: OrderRequest) -> Rebuilt {
        Rebuilt {
            req,
            ..Rebuilt::default()
        }
    }

    /// The request of lines the caller holds, under `header`. A line quotes the price it shows
    /// when that is in `currency` (the account's); one that shows none in it is unquoted, its
    /// problem saying `why` (given the line and the price it shows).
    pub fn from_held(
        header: OrderRequest,
        held: impl IntoIterator<Item = HeldLine>,
        currency: Currency,
        why: impl Fn(&LineRequest, Option<&Money>) -> String,
    ) -> Rebuilt {
        let mut rebuilt = Rebuilt::as_sent(header);
        for HeldLine {
            id,
            mut line,
            shown,
        } in held
        {
            line.quoted_unit_price = shown.filter(|m| m.currency == currency).map(|m| m.amount);
            if line.quoted_unit_price.is_none() {
                let problem = Problem::new(ProblemCode::PriceChanged, why(&line, shown.as_ref()));
                rebuilt.unquoted.push(problem.line(id).sku(&line.sku));
            }
            rebuilt.line_ids.push(id);
            rebuilt.req.lines.push(line);
        }
        rebuilt
    }

    /// `problems` of checking the request, each line named by the caller's number, and the
    /// unquoted lines that have no other problem (a line without a price, or not in the
    /// catalog, says so already).
    pub fn problems(&self, problems: Vec<Problem>) -> Vec<Problem> {
        let mut problems = self.renumber(problems);
        let unquoted: Vec<Problem> = (self.unquoted.iter())
            .filter(|u| !problems.iter().any(|p| p.line == u.line))
            .cloned()
            .collect();
        problems.extend(unquoted);
        problems
    }

    /// `problems` with each line named by the caller's number.
    pub fn renumber(&self, mut problems: Vec<Problem>) -> Vec<Problem> {
        for p in &mut problems {
            let id = p
                .line
                .and_then(|n| self.line_ids.get(n.checked_sub(1)? as usize));
            if let Some(id) = id {
                p.line = Some(*id);
            }
        }
        problems
    }
}

/// A line that passed catalog, quantity and price checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    pub line_no: u32,
    pub sku: Sku,
    pub qty: u32,
    pub uom: String,
    pub unit_price: Money,
    pub price_source: PriceSource,
    pub line_total: Money,
    pub note: Option<String>,
    pub requested_warehouse: Option<WarehouseId>,
}

/// Everything the catalog/price stage needs. `today` comes from the caller's clock.
pub struct PricingContext<'a> {
    pub account: &'a Account,
    /// Who orders: their assigned ship-tos limit where the order may go.
    pub user: &'a UserId,
    pub catalog: &'a Catalog,
    pub prices: &'a PriceBook,
    pub warehouses: &'a [Warehouse],
    pub today: Date,
    /// Configured line limit (at most `ORDER_LINES_MAX`).
    pub lines_max: usize,
}

/// Result of the catalog/price stage: the lines that passed, and every problem found.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub lines: Vec<PricedLine>,
    pub ship_to: Option<ShipTo>,
    pub problems: Vec<Problem>,
}

impl Checked {
    pub fn total(&self, account: &Account) -> Money {
        // Line totals are bounded (`LINE_QTY_MAX` and `AMOUNT_MAX`), so the sum cannot overflow a
        // Decimal.
        Money::sum(account.currency, self.lines.iter().map(|l| &l.line_total))
            .unwrap_or(Money::zero(account.currency))
    }
}

/// Checks the header and every line against catalog, visibility, quantity rules and prices.
pub fn check_order(ctx: &PricingContext<'_>, req: &OrderRequest) -> Checked {
    let mut out = Checked::default();
    check_header(ctx, req, &mut out);
    let lines_max = ctx.lines_max.min(ORDER_LINES_MAX);
    if req.lines.len() > lines_max {
        out.problems.push(Problem::new(
            ProblemCode::TooManyLines,
            format!(
                "an order has at most {lines_max} lines, this one has {}",
                req.lines.len()
            ),
        ));
        // The lines are still checked, so that the parts the buyer splits it into come back
        // with no surprise, up to the hard ceiling: past it, the work is not worth doing.
        if req.lines.len() > ORDER_LINES_MAX {
            return out;
        }
    }
    for (i, line) in req.lines.iter().enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        match check_line(ctx, line_no, line) {
            Ok(priced) => out.lines.push(priced),
            Err(mut problems) => out.problems.append(&mut problems),
        }
    }
    out
}

fn check_header(ctx: &PricingContext<'_>, req: &OrderRequest, out: &mut Checked) {
    if req.lines.is_empty() {
        out.problems.push(Problem::new(
            ProblemCode::EmptyOrder,
            "the order has no lines",
        ));
    }
    let allowed = |s: &&ShipTo| ctx.account.may_ship_to(ctx.user, &s.id);
    let ship_to = match &req.ship_to {
        Some(s) => ShipToId::parse(s)
            .ok()
            .and_then(|id| ctx.account.ship_to(&id)),
        // One ship-to only (of those the user may use): it is the obvious default.
        None => {
            let mut usable = ctx.account.ship_tos.iter().filter(allowed);
            match (usable.next(), usable.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    };
    match ship_to {
        Some(st) if !allowed(&st) => out.problems.push(
            Problem::new(
                ProblemCode::ShipToNotAssigned,
                format!(
                    "{} may order only to their assigned ship-tos, not {}",
                    ctx.user, st.id
                ),
            )
            .field("ship_to"),
        ),
        Some(st) => out.ship_to = Some(st.clone()),
        None => out.problems.push(
            Problem::new(
                ProblemCode::UnknownShipTo,
                match &req.ship_to {
                    Some(s) => format!("ship-to {s:?} is not one of this account's locations"),
                    None => "choose a ship-to: this account has several".to_owned(),
                },
            )
            .field("ship_to"),
        ),
    }
    if req
        .customer_po
        .as_ref()
        .is_some_and(|p| p.chars().count() > CUSTOMER_PO_LEN_MAX)
    {
        out.problems.push(
            Problem::new(
                ProblemCode::InvalidField,
                format!("a customer PO is at most {CUSTOMER_PO_LEN_MAX} characters"),
            )
            .field("customer_po"),
        );
    }
    if let Some(speed) = &req.delivery_speed {
        let known = ctx
            .warehouses
            .iter()
            .flat_map(|w| &w.speeds)
            .any(|b| &b.speed == speed);
        if speed.len() > DELIVERY_SPEED_LEN_MAX || !known {
            out.problems.push(
                Problem::new(
                    ProblemCode::InvalidField,
                    format!("no warehouse offers delivery speed {speed:?}"),
                )
                .field("delivery_speed"),
            );
        }
    }
}

fn check_line(
    ctx: &PricingContext<'_>,
    line_no: u32,
    req: &LineRequest,
) -> Result<PricedLine, Vec<Problem>> {
    let p = |code, msg: String| Problem::new(code, msg).line(line_no).sku(&req.sku);
    let sku = Sku::parse(&req.sku).map_err(|e| vec![p(ProblemCode::UnknownSku, e.to_string())])?;
    let unknown = || {
        vec![p(
            ProblemCode::UnknownSku,
            format!("{sku} is not in the catalog"),
        )]
    };
    let item = ctx.catalog.get(&sku).ok_or_else(unknown)?;
    if !item.visible_to(&ctx.account.segment) {
        // Same words as an unknown SKU would be a lie; the code tells clients what happened.
        return Err(vec![p(
            ProblemCode::NotVisible,
            format!("{sku} is not available to your account"),
        )]);
    }
    let mut problems = Vec::new();
    let unorderable = |status, what: String| match status {
        ItemStatus::Active => None,
        ItemStatus::Discontinued => Some(p(
            ProblemCode::Discontinued,
            format!("{what} is discontinued"),
        )),
        ItemStatus::Blocked => Some(p(
            ProblemCode::Blocked,
            format!("{what} is blocked for ordering"),
        )),
    };
    match unorderable(item.status, sku.to_string()) {
        Some(problem) => problems.push(problem),
        // A kit is shipped as its components: one that may not be ordered holds the kit back.
        // Their visibility does not: the kit is what is sold, and a part sold only in kits is
        // hidden from a segment on its own (README, Errors).
        None => problems.extend(item.kit.iter().filter_map(|c| {
            let component = ctx.catalog.get(&c.sku)?;
            unorderable(component.status, format!("{sku}: its component {}", c.sku))
        })),
    }
    let qty = req.qty;
    if qty == 0 || qty > LINE_QTY_MAX {
        problems.push(p(
            ProblemCode::InvalidQuantity,
            format!("quantity must be 1 to {LINE_QTY_MAX}, got {qty}"),
        ));
    } else {
        if qty < item.min_qty {
            problems.push(p(
                ProblemCode::BelowMinimum,
                format!(
                    "{sku}: minimum order quantity is {} {}, got {qty}",
                    item.min_qty, item.uom
                ),
            ));
        }
        if !qty.is_multiple_of(item.pack_size) {
            problems.push(p(
                ProblemCode::NotPackMultiple,
                format!(
                    "{sku} comes in packs of {}: {qty} is not a multiple",
                    item.pack_size
                ),
            ));
        }
    }
    if req.note.as_ref().is_some_and(|n| n.len() > NOTE_LEN_MAX) {
        problems.push(
            p(
                ProblemCode::InvalidField,
                format!("a line note is at most {NOTE_LEN_MAX} bytes of UTF-8"),
            )
            .field("note"),
        );
    }
    let requested_warehouse = match &req.warehouse {
        None => None,
        Some(w) => match WarehouseId::parse(w)
            .ok()
            .filter(|id| ctx.warehouses.iter().any(|x| &x.id == id))
        {
            Some(id) => Some(id),
            None => {
                problems.push(p(
                    ProblemCode::UnknownWarehouse,
                    format!("warehouse {w:?} does not exist"),
                ));
                None
            }
        },
    };
    let a = ctx.account;
    let priced = ctx
        .prices
        .price(&sku, qty.max(1), &a.id, &a.segment, a.currency, ctx.today);
    let Some(priced) = priced else {
        problems.push(p(
            ProblemCode::NoPrice,
            format!("{sku} has no valid price for your account today"),
        ));
        return Err(problems);
    };
    if let Some(quoted) = req.quoted_unit_price {
        if quoted != priced.unit_price.amount {
            let mut changed = p(
                ProblemCode::PriceChanged,
                format!(
                    "{sku}: the quoted price {quoted} is no longer valid; the price now is {}",
                    priced.unit_price
                ),
            );
            changed.unit_price = Some(priced.unit_price);
            problems.push(changed);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let line_total = priced
        .unit_price
        .times(qty)
        .map_err(|e| vec![p(ProblemCode::InvalidQuantity, e.to_string())])?;
    Ok(PricedLine {
        line_no,
        sku,
        qty,
        uom: item.uom.clone(),
        unit_price: priced.unit_price,
        price_source: priced.source,
        line_total,
        note: req.note.clone(),
        requested_warehouse,
    })
}
