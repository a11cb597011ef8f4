//! The commands a case is made of, and how proptest generates them. Orders are named by how
//! recent they are (0 = the newest order of any account), so a shrunk sequence stays readable
//! and most commands hit an order that was just placed.

use super::world::{PRICE_BOOKS, SPEEDS, UNKNOWN_SHIP_TO, UNKNOWN_SKU, UNKNOWN_WAREHOUSE};
use proptest::prelude::*;

#[derive(Debug, Clone)]
pub struct LineSpec {
    pub sku: &'static str,
    pub qty: u32,
    pub wh: Option<&'static str>,
}

#[derive(Debug, Clone, Copy)]
pub enum ShipToPick {
    /// None in the request: fine only for an account with one ship-to.
    Default,
    First,
    Last,
    Unknown,
}

impl ShipToPick {
    pub fn resolve(self, ship_tos: &[(&'static str, f64, f64)]) -> Option<String> {
        match self {
            ShipToPick::Default => None,
            ShipToPick::First => Some(ship_tos[0].0.to_owned()),
            ShipToPick::Last => Some(ship_tos[ship_tos.len() - 1].0.to_owned()),
            ShipToPick::Unknown => Some(UNKNOWN_SHIP_TO.to_owned()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Header {
    pub ship_to: ShipToPick,
    pub speed: Option<&'static str>,
    pub split: bool,
}

/// An order, by how recent it is (0 = the newest). `fitting` looks only at orders in a state
/// where the command can succeed (when there are any), so most commands do something.
#[derive(Debug, Clone, Copy)]
pub struct OrderPick {
    pub nth: u8,
    pub fitting: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum WhPick {
    /// The n-th warehouse the order has an allocation in (W1 when it has none).
    Allocated(u8),
    Named(&'static str),
}

#[derive(Debug, Clone)]
pub enum Op {
    CartAdd {
        acct: usize,
        line: LineSpec,
    },
    /// Line picked by position; one past the end names a line that does not exist.
    CartUpdate {
        acct: usize,
        pick: u8,
        qty: u32,
    },
    CartRemove {
        acct: usize,
        pick: u8,
    },
    /// The buyer accepts today's prices for the whole cart.
    CartReprice {
        acct: usize,
    },
    Place {
        acct: usize,
        lines: Vec<LineSpec>,
        header: Header,
        from_cart: bool,
        submit: bool,
        key: Option<u8>,
    },
    Submit {
        order: OrderPick,
    },
    Approve {
        order: OrderPick,
        by_approver: bool,
        reject: Vec<u32>,
    },
    Reject {
        order: OrderPick,
        by_approver: bool,
        lines: Vec<u32>,
    },
    Cancel {
        order: OrderPick,
    },
    Amend {
        order: OrderPick,
        lines: Option<Vec<LineSpec>>,
        ship_to: Option<ShipToPick>,
        speed: Option<&'static str>,
        split: Option<bool>,
    },
    Ship {
        order: OrderPick,
        wh: WhPick,
    },
    /// An operator imports one of the world's price books.
    SetPrices {
        book: usize,
    },
    /// A stock count sets on-hand of one SKU in one warehouse.
    Restock {
        wh: &'static str,
        sku: &'static str,
        on_hand: u64,
    },
    /// An operator sets an account's credit limit and/or receivables (in cents).
    SetCredit {
        acct: usize,
        limit: Option<i64>,
        receivables: Option<i64>,
    },
    /// Validate a request (or the cart) without changing anything.
    Validate {
        acct: usize,
        lines: Vec<LineSpec>,
        header: Header,
        from_cart: bool,
    },
    /// Shut the engine down and start a new one on the same journal.
    Restart,
}

impl Op {
    /// The command's name, for counts and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CartAdd { .. } => "CartAdd",
            Op::CartUpdate { .. } => "CartUpdate",
            Op::CartRemove { .. } => "CartRemove",
            Op::CartReprice { .. } => "CartReprice",
            Op::SetPrices { .. } => "SetPrices",
            Op::Place { .. } => "Place",
            Op::Submit { .. } => "Submit",
            Op::Approve { .. } => "Approve",
            Op::Reject { .. } => "Reject",
            Op::Cancel { .. } => "Cancel",
            Op::Amend { .. } => "Amend",
            Op::Ship { .. } => "Ship",
            Op::Restock { .. } => "Restock",
            Op::SetCredit { .. } => "SetCredit",
            Op::Validate { .. } => "Validate",
            Op::Restart => "Restart",
        }
    }
}

fn line() -> impl Strategy<Value = LineSpec> {
    let sku = prop_oneof![
        12 => Just("A"),
        12 => Just("B"),
        9 => Just("K"),
        6 => Just("P"),
        1 => Just(UNKNOWN_SKU),
    ];
    let qty = prop_oneof![30 => 1u32..=3, 8 => 4u32..=6, 1 => Just(0u32)];
    let wh = prop_oneof![
        24 => Just(None),
        6 => Just(Some("W1")),
        6 => Just(Some("W2")),
        1 => Just(Some(UNKNOWN_WAREHOUSE)),
    ];
    (sku, qty, wh).prop_map(|(sku, qty, wh)| LineSpec { sku, qty, wh })
}

fn lines() -> impl Strategy<Value = Vec<LineSpec>> {
    prop_oneof![
        1 => Just(vec![]),
        20 => proptest::collection::vec(line(), 1..=3),
    ]
}

fn ship_to() -> impl Strategy<Value = ShipToPick> {
    prop_oneof![
        2 => Just(ShipToPick::Default),
        8 => Just(ShipToPick::First),
        8 => Just(ShipToPick::Last),
        1 => Just(ShipToPick::Unknown),
    ]
}

fn speed() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        8 => Just(None),
        4 => Just(Some(SPEEDS[0])),
        4 => Just(Some(SPEEDS[1])),
        1 => Just(Some(SPEEDS[2])),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (ship_to(), speed(), any::<bool>()).prop_map(|(ship_to, speed, split)| Header {
        ship_to,
        speed,
        split,
    })
}

fn line_numbers() -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![
        3 => Just(vec![]),
        2 => proptest::collection::vec(1u32..=3, 1..=2),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let acct = 0usize..3;
    let order = (
        prop_oneof![4 => 0u8..2, 1 => 0u8..8],
        prop_oneof![3 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(nth, fitting)| OrderPick { nth, fitting });
    prop_oneof![
        4 => (acct.clone(), line()).prop_map(|(acct, line)| Op::CartAdd { acct, line }),
        1 => (acct.clone(), 0u8..4, prop_oneof![4 => 1u32..=4, 1 => Just(0u32)])
            .prop_map(|(acct, pick, qty)| Op::CartUpdate { acct, pick, qty }),
        1 => (acct.clone(), 0u8..4).prop_map(|(acct, pick)| Op::CartRemove { acct, pick }),
        1 => acct.clone().prop_map(|acct| Op::CartReprice { acct }),
        1 => (0..PRICE_BOOKS.len()).prop_map(|book| Op::SetPrices { book }),
        9 => (
            acct.clone(),
            lines(),
            header(),
            prop_oneof![5 => Just(false), 1 => Just(true)],
            prop_oneof![4 => Just(true), 1 => Just(false)],
            prop_oneof![2 => Just(None), 1 => (0u8..3).prop_map(Some)],
        )
            .prop_map(|(acct, lines, header, from_cart, submit, key)| Op::Place {
                acct,
                lines,
                header,
                from_cart,
                submit,
                key,
            }),
        2 => order.clone().prop_map(|order| Op::Submit { order }),
        4 => (order.clone(), prop_oneof![5 => Just(true), 1 => Just(false)], line_numbers())
            .prop_map(|(order, by_approver, reject)| Op::Approve { order, by_approver, reject }),
        2 => (order.clone(), prop_oneof![5 => Just(true), 1 => Just(false)], line_numbers())
            .prop_map(|(order, by_approver, lines)| Op::Reject { order, by_approver, lines }),
        2 => order.clone().prop_map(|order| Op::Cancel { order }),
        3 => (
            order.clone(),
            proptest::option::of(lines()),
            proptest::option::weighted(0.3, ship_to()),
            proptest::option::weighted(0.3, speed().prop_filter_map("a speed", |s| s)),
            proptest::option::weighted(0.3, any::<bool>()),
        )
            .prop_map(|(order, lines, ship_to, speed, split)| Op::Amend {
                order,
                lines,
                ship_to,
                speed,
                split,
            }),
        5 => (
            order,
            prop_oneof![
                6 => (0u8..2).prop_map(WhPick::Allocated),
                1 => Just(WhPick::Named("W1")),
                1 => Just(WhPick::Named("W2")),
            ],
        )
            .prop_map(|(order, wh)| Op::Ship { order, wh }),
        1 => (
            prop_oneof![Just("W1"), Just("W2")],
            prop_oneof![Just("A"), Just("B"), Just("P")],
            0u64..=20,
        )
            .prop_map(|(wh, sku, on_hand)| Op::Restock { wh, sku, on_hand }),
        1 => (
            acct.clone(),
            proptest::option::of(prop_oneof![8 => 50i64..=400, 1 => Just(-1i64)]),
            proptest::option::weighted(0.3, 0i64..=200),
        )
            .prop_map(|(acct, limit, receivables)| Op::SetCredit {
                acct,
                // Whole euros in cents; -1.00 must be refused.
                limit: limit.map(|e| e * 100),
                receivables: receivables.map(|e| e * 100),
            }),
        1 => (acct, lines(), header(), prop_oneof![4 => Just(false), 1 => Just(true)])
            .prop_map(|(acct, lines, header, from_cart)| Op::Validate {
                acct,
                lines,
                header,
                from_cart,
            }),
        1 => Just(Op::Restart),
    ]
}

/// A case: up to `steps_max` commands.
pub fn sequence(steps_max: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..=steps_max)
}
