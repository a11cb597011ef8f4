//! The account's cart: lines a buyer collects before submitting.

use crate::ids::{Sku, WarehouseId};
use crate::validation::{LineRequest, OrderRequest, LINE_QTY_MAX, NOTE_LEN_MAX};
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
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cart {
    pub lines: Vec<CartLine>,
    pub next_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    #[error("the cart holds at most {CART_LINES_MAX} lines")]
    Full,
    #[error("cart line {0} does not exist")]
    NoSuchLine(u32),
    #[error("quantity must be 1..={LINE_QTY_MAX}")]
    Quantity,
    #[error("a note is at most {NOTE_LEN_MAX} characters")]
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
        self.next_id += 1;
        self.lines.push(CartLine {
            id: self.next_id,
            sku,
            qty,
            note,
            warehouse,
        });
        Ok(self.next_id)
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

    /// The cart as an order request with the given header.
    pub fn to_request(&self, header: OrderRequest) -> OrderRequest {
        OrderRequest {
            lines: self
                .lines
                .iter()
                .map(|l| LineRequest {
                    sku: l.sku.to_string(),
                    qty: l.qty,
                    note: l.note.clone(),
                    warehouse: l.warehouse.as_ref().map(|w| w.to_string()),
                    quoted_unit_price: None,
                })
                .collect(),
            ..header
        }
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
        c.remove(id).unwrap();
        assert!(c.remove(id).is_err());
        for i in 0..CART_LINES_MAX {
            c.add(Sku::parse(&format!("S{i}")).unwrap(), 1, None, None)
                .unwrap();
        }
        assert_eq!(c.add(s, 1, None, None), Err(CartError::Full));
    }
}
