//! The account's cart: lines a buyer collects before submitting.

use crate::ids::{Sku, WarehouseId};
use crate::money::Currency;
use crate::pricing::Priced;
use crate::validation::{HeldLine, LineRequest, OrderRequest, Rebuilt, LINE_QTY_MAX, NOTE_LEN_MAX};
use serde::{Deserialize, Serialize};

/// Most lines a cart may hold.
pub const CART_LINES_MAX: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    pub id: u32,
    pub sku: Sku,
    pub qty: u32,
    pub note: Option<String>,
    pub warehouse: Option<WarehouseId>,
    /// The unit price the buyer was shown for this quantity, and its source: quoted when the
    /// line is added, when its quantity changes (another tier may apply), at any change of the
    /// cart while it has none, and when the cart is repriced. Submitting the cart refuses the line as `price_changed` when the quote no
    /// longer holds. Absent while the SKU has no price for the account.
    pub quote: Option<Priced>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cart {
    pub lines: Vec<CartLine>,
    /// The id of the line added last (0 before any): ids are never used twice, also after a
    /// line was removed or the cart cleared.
    pub last_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    #[error("the cart holds at most {CART_LINES_MAX} lines")]
    Full,
    #[error("cart line {0} does not exist")]
    NoSuchLine(u32),
    #[error("quantity must be 1 to {LINE_QTY_MAX}")]
    Quantity,
    #[error("a note is at most {NOTE_LEN_MAX} bytes of UTF-8")]
    Note,
}

impl Cart {
    /// Adds a line; the same SKU for the same warehouse adds to the existing line.
    pub fn add(
        &mut self,
        sku: Sku,
        qty: u32,
        note: Option<String>,
        warehouse: Option<WarehouseId>,
    ) -> Result<u32, CartError> {
        check_qty(qty)?;
        check_note(note.as_deref())?;
        if let Some(l) = self
            .lines
            .iter_mut()
            .find(|l| l.sku == sku && l.warehouse == warehouse)
        {
            let sum = l.qty.checked_add(qty).ok_or(CartError::Quantity)?;
            check_qty(sum)?;
            l.qty = sum;
            if note.is_some() {
                l.note = note;
            }
            return Ok(l.id);
        }
        if self.lines.len() >= CART_LINES_MAX {
            return Err(CartError::Full);
        }
        self.last_id += 1;
        self.lines.push(CartLine {
            id: self.last_id,
            sku,
            qty,
            note,
            warehouse,
            quote: None,
        });
        Ok(self.last_id)
    }

    /// Quotes `price` (SKU, quantity -> today's price) for every line that has no quote or
    /// whose quantity differs from its line in `before` (a line `before` lacks is new). The
    /// other lines keep the price the buyer was shown.
    pub fn quote(&mut self, before: &Cart, price: impl Fn(&Sku, u32) -> Option<Priced>) {
        for line in &mut self.lines {
            let same_qty = before
                .lines
                .iter()
                .any(|old| old.id == line.id && old.qty == line.qty);
            if line.quote.is_none() || !same_qty {
                line.quote = price(&line.sku, line.qty);
            }
        }
    }

    /// Forgets every quote, so that [`Cart::quote`] quotes each line again: how a buyer
    /// accepts the prices that changed since they were shown.
    pub fn forget_quotes(&mut self) {
        for line in &mut self.lines {
            line.quote = None;
        }
    }

    /// Changes quantity and/or note of a line.
    pub fn update(
        &mut self,
        id: u32,
        qty: Option<u32>,
        note: Option<Option<String>>,
    ) -> Result<(), CartError> {
        if let Some(q) = qty {
            check_qty(q)?;
        }
        if let Some(n) = &note {
            check_note(n.as_deref())?;
        }
        let line = self
            .lines
            .iter_mut()
            .find(|l| l.id == id)
            .ok_or(CartError::NoSuchLine(id))?;
        if let Some(q) = qty {
            line.qty = q;
        }
        if let Some(n) = note {
            line.note = n;
        }
        Ok(())
    }

    pub fn remove(&mut self, id: u32) -> Result<(), CartError> {
        let before = self.lines.len();
        self.lines.retain(|l| l.id != id);
        if self.lines.len() == before {
            return Err(CartError::NoSuchLine(id));
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        self.lines.clear();
    }

    /// The cart as an order request with the given header: each line with its quote, when it
    /// has one in `currency` (the account's), and named by its id in problems.
    pub fn to_request(&self, header: OrderRequest, currency: Currency) -> Rebuilt {
        let held = self.lines.iter().map(|l| HeldLine {
            id: l.id,
            line: LineRequest {
                sku: l.sku.to_string(),
                qty: l.qty,
                note: l.note.clone(),
                warehouse: l.warehouse.as_ref().map(|w| w.to_string()),
                quoted_unit_price: None,
            },
            shown: l.quote.as_ref().map(|q| q.unit_price),
        });
        Rebuilt::from_held(header, held, currency, |l, _| {
            format!(
                "{}: the cart shows no price in {currency} for this line; reprice the cart to \
                 see today's price before ordering it",
                l.sku
            )
        })
    }
}

fn check_qty(q: u32) -> Result<(), CartError> {
    if q == 0 || q > LINE_QTY_MAX {
        Err(CartError::Quantity)
    } else {
        Ok(())
    }
}

fn check_note(n: Option<&str>) -> Result<(), CartError> {
    if n.is_some_and(|n| n.len() > NOTE_LEN_MAX) {
        Err(CartError::Note)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Adding the same SKU merges; update/remove refuse unknown lines; limits hold.
    #[test]
    fn cart_operations() {
        let mut c = Cart::default();
        let s = Sku::parse("A").unwrap();
        let id = c.add(s.clone(), 2, None, None).unwrap();
        assert_eq!(c.add(s.clone(), 3, Some("x".into()), None).unwrap(), id);
        assert_eq!(c.lines[0].qty, 5);
        assert_eq!(c.lines[0].note.as_deref(), Some("x"));
        c.update(id, Some(7), Some(None)).unwrap();
        assert_eq!((c.lines[0].qty, c.lines[0].note.clone()), (7, None));
        assert_eq!(c.update(99, Some(1), None), Err(CartError::NoSuchLine(99)));
        assert_eq!(c.add(s.clone(), 0, None, None), Err(CartError::Quantity));
        // A note is bounded in bytes, which bound a cart's record ("é" is two bytes).
        let longest = "é".repeat(NOTE_LEN_MAX / 2);
        c.update(id, None, Some(Some(longest))).unwrap();
        let over = "é".repeat(NOTE_LEN_MAX / 2 + 1);
        assert_eq!(c.update(id, None, Some(Some(over))), Err(CartError::Note));
        c.remove(id).unwrap();
        assert!(c.remove(id).is_err());
        for i in 0..CART_LINES_MAX {
            c.add(Sku::parse(&format!("S{i}")).unwrap(), 1, None, None)
                .unwrap();
        }
        assert_eq!(c.add(s, 1, None, None), Err(CartError::Full));
    }

    /// A price of `cents` per unit, tiered at 10 units, for `sku` at `qty`.
    fn tiered(cents: i64) -> impl Fn(&Sku, u32) -> Option<Priced> {
        move |sku, qty| {
            let tier_min_qty = if qty >= 10 { 10 } else { 1 };
            let cents = if qty >= 10 { cents - 100 } else { cents };
            (sku.as_str() != "FREE").then(|| Priced {
                unit_price: crate::money::Money::new(
                    rust_decimal::Decimal::new(cents, 2),
                    crate::money::Currency::parse("EUR").unwrap(),
                    2,
                )
                .unwrap(),
                source: crate::pricing::PriceSource {
                    level: "list".into(),
                    tier_min_qty,
                    valid_from: None,
                    valid_to: None,
                },
            })
        }
    }

    fn quoted(c: &Cart) -> Vec<Option<String>> {
        c.lines
            .iter()
            .map(|l| l.quote.as_ref().map(|q| q.unit_price.amount.to_string()))
            .collect()
    }

    // A line is quoted when it is added and when its quantity changes (its tier may change),
    // not when only its note does; the request from the cart carries the quotes; forgetting
    // them quotes every line again, at the price of the day.
    #[test]
    fn cart_lines_keep_the_price_they_were_quoted() {
        let (a, b) = (Sku::parse("A").unwrap(), Sku::parse("B").unwrap());
        let mut c = Cart::default();
        let before = c.clone();
        c.add(a.clone(), 2, None, None).unwrap();
        c.quote(&before, tiered(500));
        assert_eq!(quoted(&c), [Some("5.00".into())]);

        // The price rises to 6.00: a new line and the grown line get it, the note does not.
        let before = c.clone();
        c.add(b, 1, None, None).unwrap();
        c.update(1, None, Some(Some("gate 4".into()))).unwrap();
        c.quote(&before, tiered(600));
        assert_eq!(quoted(&c), [Some("5.00".into()), Some("6.00".into())]);
        let before = c.clone();
        c.update(1, Some(12), None).unwrap();
        c.quote(&before, tiered(600));
        assert_eq!(quoted(&c), [Some("5.00".into()), Some("6.00".into())]);
        assert_eq!(c.lines[0].quote.as_ref().unwrap().source.tier_min_qty, 10);
        let eur = Currency::parse("EUR").unwrap();
        let req = c.to_request(OrderRequest::default(), eur);
        assert!(req.unquoted.is_empty());
        let sent: Vec<_> = req.req.lines.iter().map(|l| l.quoted_unit_price).collect();
        assert_eq!(
            sent,
            [Some("5.00".parse().unwrap()), Some("6.00".parse().unwrap())]
        );

        // The price rises to 7.00; the buyer accepts it.
        let before = c.clone();
        c.forget_quotes();
        c.quote(&before, tiered(700));
        assert_eq!(quoted(&c), [Some("6.00".into()), Some("7.00".into())]);

        // A SKU without a price has no quote, and is quoted once it has one.
        let before = c.clone();
        c.add(Sku::parse("FREE").unwrap(), 1, None, None).unwrap();
        c.quote(&before, tiered(700));
        assert_eq!(quoted(&c)[2], None);
        let req = c.to_request(OrderRequest::default(), eur);
        assert_eq!(req.req.lines[2].quoted_unit_price, None);
        assert_eq!(req.line_ids, [1, 2, 3]);
        assert_eq!(req.unquoted.len(), 1);
        assert_eq!(req.unquoted[0].line, Some(3));
        assert_eq!(
            req.unquoted[0].code,
            crate::validation::ProblemCode::PriceChanged
        );
        // A quote in another currency (the account changed its currency) counts as none.
        let chf = c.to_request(OrderRequest::default(), Currency::parse("CHF").unwrap());
        assert_eq!(chf.unquoted.len(), 3);
        assert!(chf.req.lines.iter().all(|l| l.quoted_unit_price.is_none()));
        let before = c.clone();
        c.quote(&before, |_, _| tiered(800)(&Sku::parse("X").unwrap(), 1));
        assert_eq!(
            quoted(&c),
            [
                Some("6.00".into()),
                Some("7.00".into()),
                Some("8.00".into())
            ]
        );
    }
}
