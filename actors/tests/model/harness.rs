//! The harness: runs each command against the engine and the model and decides whether the
//! real outcome is one the model allows. What a step must have written is checked afterwards
//! (`checks.rs`); submissions, which need stock planning, live in `submissions.rs`.

use crate::compare::compare_order;
use crate::ops::{Header, LineSpec, Op, OrderPick};
use crate::reference::{self, MOrder, Model};
use crate::stats;
use crate::world::{self, ACCOUNTS};
use orderd_actors::account::{AccountMsg, Reply};
use orderd_actors::audit::Caller;
use orderd_actors::engine::Interruption;
use orderd_actors::order_reads::{OrderFilter, OrderList};
use orderd_actors::ordering::Amendment;
use orderd_actors::{ActorError, Engine, StorageError};
use orderd_domain::cart::Cart;
use orderd_domain::ids::{OrderId, Sku, WarehouseId};
use orderd_domain::order::{Order, OrderState};
use orderd_domain::rejection::Rejection;
use orderd_domain::validation::{LineRequest, OrderRequest, ProblemCode};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};

/// What a step must have written.
pub struct Written {
    /// Subject of the one audit record an accepted step writes; `None` when refused.
    pub audit_subject: Option<String>,
    /// The order change, for steps that change an order (they also write one event).
    pub order: Option<OrderChange>,
}

pub struct OrderChange {
    pub id: OrderId,
    pub action: &'static str,
    pub from: Option<OrderState>,
    pub to: OrderState,
    pub version: u32,
}

impl Written {
    pub fn nothing() -> Written {
        Written {
            audit_subject: None,
            order: None,
        }
    }

    fn cart(acct: usize) -> Written {
        Written::other(format!("cart:{}", ACCOUNTS[acct].id))
    }

    /// One audit record about `subject`, no event.
    fn other(subject: String) -> Written {
        Written {
            audit_subject: Some(subject),
            order: None,
        }
    }

    pub fn order(m: &MOrder, action: &'static str, from: Option<OrderState>) -> Written {
        Written {
            audit_subject: Some(m.id.to_string()),
            order: Some(OrderChange {
                id: m.id.clone(),
                action,
                from,
                to: m.state,
                version: m.changes,
            }),
        }
    }
}

/// One outbox event of an order, as far as the checks need it.
#[derive(Clone)]
pub struct EventSeen {
    pub sequence: u32,
    pub state: String,
    pub transitions: Vec<String>,
}

/// How a place command sends its request.
#[derive(Debug, Clone, Copy)]
pub struct Placing {
    pub from_cart: bool,
    pub submit: bool,
    /// Idempotency key `key-<n>`.
    pub key: Option<u8>,
}

#[derive(Clone)]
pub struct Harness {
    pub model: Model,
    /// The newest audit record (and so outbox event) already accounted for.
    pub audit_seen: u64,
    /// Every order's events seen so far, in order.
    pub events: BTreeMap<String, Vec<EventSeen>>,
}

pub fn problem_codes(r: &Rejection) -> Option<BTreeSet<ProblemCode>> {
    match r {
        Rejection::Invalid(ps) => Some(ps.iter().map(|p| p.code).collect()),
        _ => None,
    }
}

pub fn line_request(l: &LineSpec) -> LineRequest {
    LineRequest {
        sku: l.sku.to_owned(),
        qty: l.qty,
        note: None,
        warehouse: l.wh.map(str::to_owned),
        quoted_unit_price: None,
    }
}

pub fn header_request(acct: usize, lines: &[LineSpec], h: &Header) -> OrderRequest {
    OrderRequest {
        lines: lines.iter().map(line_request).collect(),
        ship_to: h.ship_to.resolve(ACCOUNTS[acct].ship_tos),
        delivery_speed: h.speed.map(str::to_owned),
        customer_po: None,
        allow_split: h.split,
    }
}

/// How a step reports a failure of the actors (never expected, except a write refused while
/// the journal refuses writes).
pub fn actor_failure(e: &ActorError) -> String {
    format!("actor error (never expected here): {e}")
}

/// A request that may change account `acct`: done or refused; a failure is an error.
pub async fn ask<T: Send + 'static>(
    engine: &Engine,
    acct: usize,
    build: impl FnOnce(Reply<T>) -> AccountMsg,
) -> Result<Result<T, Rejection>, String> {
    engine
        .ask(&world::account_id(acct), build)
        .await
        .map_err(|e| actor_failure(&e))
}

/// A read of account `acct`'s actor.
pub async fn read<T: Send + 'static>(
    engine: &Engine,
    acct: usize,
    build: impl FnOnce(ractor::RpcReplyPort<T>) -> AccountMsg,
) -> Result<T, String> {
    engine
        .account(&world::account_id(acct), build)
        .await
        .map_err(|e| actor_failure(&e))
}

/// Order `id` of account `acct`, open or closed, as the API reads it.
pub async fn get_order(
    engine: &Engine,
    acct: usize,
    id: &OrderId,
) -> Result<Option<Order>, String> {
    engine
        .order(&world::account_id(acct), id, None)
        .await
        .map_err(|e| format!("reading order {id}: {e}"))
}

/// A page of account `acct`'s orders in `state` (all when `None`), as the API lists them.
pub async fn list_orders(
    engine: &Engine,
    acct: usize,
    state: Option<OrderState>,
    before: Option<OrderId>,
    limit: usize,
) -> Result<OrderList, String> {
    let filter = OrderFilter {
        placed_by: None,
        state,
    };
    engine
        .list_orders(&world::account_id(acct), filter, before, limit)
        .await
        .map_err(|e| format!("listing orders: {e}"))
}

impl Harness {
    pub fn new(engine: &Engine) -> Result<Harness, String> {
        let j = &engine.journal;
        let audit_seen = j
            .audit_after(0, 100_000)
            .map_err(|e| e.to_string())?
            .last()
            .map_or(0, |r| r.seq);
        Ok(Harness {
            model: Model::new(),
            audit_seen,
            events: BTreeMap::new(),
        })
    }

    /// The order `pick` names: counted from the newest, among the orders in one of `fitting`
    /// states when asked to and there are any, else among all.
    fn pick(&self, pick: OrderPick, fitting: &[OrderState]) -> Option<usize> {
        let all: Vec<usize> = (0..self.model.orders.len()).rev().collect();
        let fit: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| fitting.contains(&self.model.orders[*i].state))
            .collect();
        let from = if pick.fitting && !fit.is_empty() {
            fit
        } else {
            all
        };
        (!from.is_empty()).then(|| from[usize::from(pick.nth) % from.len()])
    }

    // ---- steps ---------------------------------------------------------------------------

    /// Runs one command against the engine and the model; returns what it must have written.
    pub async fn step(&mut self, engine: &Engine, op: &Op) -> Result<Written, String> {
        use OrderState::{Allocated, Draft, PendingApproval};
        // Commands on one order, with the states in which they can succeed.
        let (pick, fitting): (OrderPick, &[OrderState]) = match op {
            Op::Submit { order } => (*order, &[Draft]),
            Op::Approve { order, .. } | Op::Reject { order, .. } => (*order, &[PendingApproval]),
            Op::Cancel { order } => (*order, &[Draft, PendingApproval, Allocated]),
            Op::Amend { order, .. } => (*order, &[Draft, PendingApproval]),
            Op::Ship { order, .. } => (*order, &[Allocated]),
            other => return self.account_step(engine, other).await,
        };
        let Some(i) = self.pick(pick, fitting) else {
            return self.missing_order(engine).await;
        };
        match op {
            Op::Submit { .. } => self.submit(engine, i).await,
            Op::Approve {
                by_approver,
                reject,
                ..
            } => self.approve(engine, i, *by_approver, reject).await,
            Op::Reject {
                by_approver, lines, ..
            } => self.reject(engine, i, *by_approver, lines).await,
            Op::Cancel { .. } => self.cancel(engine, i).await,
            Op::Amend {
                lines,
                ship_to,
                speed,
                split,
                ..
            } => {
                let acct = self.model.orders[i].acct;
                let patch = Amendment {
                    lines: lines
                        .as_ref()
                        .map(|ls| ls.iter().map(line_request).collect()),
                    ship_to: ship_to.and_then(|s| s.resolve(ACCOUNTS[acct].ship_tos)),
                    delivery_speed: speed.map(|s| Some(s.to_owned())),
                    customer_po: None,
                    allow_split: *split,
                };
                self.amend(engine, i, patch).await
            }
            Op::Ship { wh, .. } => self.ship(engine, i, *wh).await,
            _ => unreachable!("only order commands pick an order"),
        }
    }

    /// Commands on an account's cart, new orders, master data and previews.
    async fn account_step(&mut self, engine: &Engine, op: &Op) -> Result<Written, String> {
        match op {
            Op::CartAdd { acct, line } => self.cart_add(engine, *acct, line).await,
            Op::CartUpdate { acct, pick, qty } => {
                let line = self.cart_line_id(*acct, *pick);
                let expect = self.model.cart_update(*acct, line, *qty);
                let (acct, qty) = (*acct, *qty);
                let real = ask(engine, acct, |reply| AccountMsg::CartUpdate {
                    caller: world::buyer(acct),
                    line,
                    qty: Some(qty),
                    note: None,
                    reply,
                })
                .await?;
                self.cart_outcome(acct, expect, real)
            }
            Op::CartRemove { acct, pick } => {
                let (acct, line) = (*acct, self.cart_line_id(*acct, *pick));
                let expect = self.model.cart_remove(acct, line);
                let real = ask(engine, acct, |reply| AccountMsg::CartRemove {
                    caller: world::buyer(acct),
                    line,
                    reply,
                })
                .await?;
                self.cart_outcome(acct, expect, real)
            }
            Op::Place {
                acct,
                lines,
                header,
                from_cart,
                submit,
                key,
            } => {
                let how = Placing {
                    from_cart: *from_cart,
                    submit: *submit,
                    key: *key,
                };
                self.place(engine, *acct, lines, header, how).await
            }
            Op::CartReprice { acct } => {
                let acct = *acct;
                let expect = Some(self.model.cart_reprice(acct));
                let real = ask(engine, acct, |reply| AccountMsg::CartReprice {
                    caller: world::buyer(acct),
                    reply,
                })
                .await?;
                self.cart_outcome(acct, expect, real)
            }
            Op::SetPrices { book } => self.set_prices(engine, *book).await,
            Op::Restock { wh, sku, on_hand } => self.restock(engine, wh, sku, *on_hand).await,
            Op::SetCredit {
                acct,
                limit,
                receivables,
            } => {
                let (limit, receivables) = (limit.map(world::cents), receivables.map(world::cents));
                self.set_credit(engine, *acct, limit, receivables).await
            }
            Op::Validate {
                acct,
                lines,
                header,
                from_cart,
            } => {
                self.validate(engine, *acct, lines, header, *from_cart)
                    .await
            }
            other => Err(format!("{other:?} is not a step")),
        }
    }

    async fn cart_add(
        &mut self,
        engine: &Engine,
        acct: usize,
        line: &LineSpec,
    ) -> Result<Written, String> {
        let expect = self.model.cart_add(acct, line.sku, line.qty, line.wh);
        let (sku, qty) = (Sku::parse(line.sku).map_err(|e| e.to_string())?, line.qty);
        let warehouse = line.wh.map(|w| WarehouseId::parse(w).expect("valid id"));
        let real = ask(engine, acct, |reply| AccountMsg::CartAdd {
            caller: world::buyer(acct),
            sku,
            qty,
            note: None,
            warehouse,
            reply,
        })
        .await?;
        self.cart_outcome(acct, expect, real)
    }

    /// An operator imports price book `book`: carts and orders keep the prices they show.
    async fn set_prices(&mut self, engine: &Engine, book: usize) -> Result<Written, String> {
        engine
            .import_prices(&Caller::system(), world::prices(book))
            .await
            .map_err(|e| actor_failure(&e))?
            .map_err(|e| format!("price import refused: {e:?}"))?;
        self.model.book = book;
        Ok(Written::other("prices".into()))
    }

    async fn restock(
        &mut self,
        engine: &Engine,
        wh: &str,
        sku: &str,
        on_hand: u64,
    ) -> Result<Written, String> {
        let expect = self.model.restock(wh, sku, on_hand);
        let rows = vec![(
            WarehouseId::parse(wh).expect("valid id"),
            Sku::parse(sku).expect("valid sku"),
            on_hand,
        )];
        let real = engine.set_stock(&Caller::system(), rows).await;
        match (expect, real) {
            // Only the journal interrupts a stock import (warehouses have no busy bound):
            // a refused write, told as the other commands tell it.
            (_, Err(r)) if r.interruption() == Some(Interruption::Busy) => Err(actor_failure(
                &ActorError::Storage(StorageError::Overloaded),
            )),
            (_, Err(r)) if r.interrupted.is_some() => Err(format!(
                "stock import interrupted (never expected here): {r}"
            )),
            (Some(m), Ok(1)) => {
                self.model = m;
                Ok(Written::other(format!("warehouse:{wh}")))
            }
            (None, Err(_)) => Ok(Written::nothing()),
            (Some(_), r) => Err(format!("stock count refused: {r:?}")),
            (None, Ok(_)) => Err("a stock count below the held stock was accepted".into()),
        }
    }

    async fn set_credit(
        &mut self,
        engine: &Engine,
        acct: usize,
        limit: Option<Decimal>,
        receivables: Option<Decimal>,
    ) -> Result<Written, String> {
        let expect = self.model.set_credit(acct, limit, receivables);
        let real = ask(engine, acct, |reply| AccountMsg::SetCredit {
            caller: Caller::system(),
            credit_limit: limit,
            open_receivables: receivables,
            reply,
        })
        .await?;
        match (expect, real) {
            (Some(a), Ok(_)) => {
                self.model.accounts[acct] = a;
                if self.model.exposure(acct, None) > self.model.accounts[acct].limit {
                    self.model.accounts[acct].over_by_operator = true;
                }
                Ok(Written::other(format!("account:{}", ACCOUNTS[acct].id)))
            }
            (None, Err(_)) => Ok(Written::nothing()),
            (Some(_), Err(r)) => Err(format!("credit change refused: {r:?}")),
            (None, Ok(v)) => Err(format!("invalid credit change accepted: {v:?}")),
        }
    }

    /// A preview must find what a submission would, and change nothing.
    async fn validate(
        &mut self,
        engine: &Engine,
        acct: usize,
        lines: &[LineSpec],
        header: &Header,
        from_cart: bool,
    ) -> Result<Written, String> {
        let req = header_request(acct, if from_cart { &[] } else { lines }, header);
        let full = self.model.effective_request(acct, &req, from_cart);
        let ev = self.model.evaluate(acct, &full, None);
        let real = ask(engine, acct, |reply| AccountMsg::Validate {
            caller: world::buyer(acct),
            req,
            from_cart,
            reply,
        })
        .await?
        .map_err(|r| format!("validation refused: {r:?}"))?;
        let codes: BTreeSet<ProblemCode> = real.problems.iter().map(|p| p.code).collect();
        if !ev.matches(&codes) || real.valid != codes.is_empty() {
            return Err(format!(
                "preview valid={} {codes:?}; the model expects {:?} (out of stock: {:?})",
                real.valid, ev.codes, ev.oos
            ));
        }
        if real.total.amount != ev.total
            || (real.valid && real.approval_reasons.is_empty() == ev.needs_approval)
        {
            return Err(format!(
                "preview total {} approval {:?}; the model: {} approval {}",
                real.total.amount, real.approval_reasons, ev.total, ev.needs_approval
            ));
        }
        Ok(Written::nothing())
    }

    async fn approve(
        &mut self,
        engine: &Engine,
        i: usize,
        by_approver: bool,
        reject: &[u32],
    ) -> Result<Written, String> {
        let expect = self.model.approve(i, by_approver, reject);
        let (acct, id) = (self.model.orders[i].acct, self.model.orders[i].id.clone());
        let caller = if by_approver {
            world::approver(acct)
        } else {
            world::buyer(acct)
        };
        let reject_lines = reject.to_vec();
        let real = ask(engine, acct, |reply| AccountMsg::Approve {
            caller,
            order: id.into(),
            reject_lines,
            reply,
        })
        .await?;
        self.simple_outcome(i, "order.approve", expect, real)
    }

    async fn reject(
        &mut self,
        engine: &Engine,
        i: usize,
        by_approver: bool,
        lines: &[u32],
    ) -> Result<Written, String> {
        let expect = self.model.reject(i, by_approver, lines);
        let (acct, id) = (self.model.orders[i].acct, self.model.orders[i].id.clone());
        let caller = if by_approver {
            world::approver(acct)
        } else {
            world::buyer(acct)
        };
        let lines = lines.to_vec();
        let real = ask(engine, acct, |reply| AccountMsg::Reject {
            caller,
            order: id.into(),
            lines,
            reason: Some("model test".into()),
            reply,
        })
        .await?;
        self.simple_outcome(i, "order.reject", expect, real)
    }

    async fn cancel(&mut self, engine: &Engine, i: usize) -> Result<Written, String> {
        let expect = self.model.cancel(i);
        let (acct, id) = (self.model.orders[i].acct, self.model.orders[i].id.clone());
        let real = ask(engine, acct, |reply| AccountMsg::Cancel {
            caller: world::buyer(acct),
            order: id.into(),
            reply,
        })
        .await?;
        self.simple_outcome(i, "order.cancel", expect, real)
    }

    fn cart_line_id(&self, acct: usize, pick: u8) -> u32 {
        let cart = &self.model.accounts[acct].cart;
        cart.get(usize::from(pick)).map_or(999, |l| l.id)
    }

    fn cart_outcome(
        &mut self,
        acct: usize,
        expect: Option<reference::MAccount>,
        real: Result<Cart, Rejection>,
    ) -> Result<Written, String> {
        match (expect, real) {
            (Some(m), Ok(cart)) => {
                self.model.accounts[acct] = m;
                self.compare_cart(acct, &cart)?;
                Ok(Written::cart(acct))
            }
            (None, Err(_)) => Ok(Written::nothing()),
            (Some(_), Err(r)) => Err(format!("refused, the model accepts: {r:?}")),
            (None, Ok(cart)) => Err(format!("accepted, the model refuses: {cart:?}")),
        }
    }

    /// The cart's lines, each with the price it quotes.
    pub fn compare_cart(&self, acct: usize, cart: &Cart) -> Result<(), String> {
        type Line = (u32, String, u32, Option<String>, Option<Decimal>);
        let m = &self.model.accounts[acct];
        let real: Vec<Line> = cart
            .lines
            .iter()
            .map(|l| {
                (
                    l.id,
                    l.sku.to_string(),
                    l.qty,
                    l.warehouse.as_ref().map(|w| w.to_string()),
                    l.quote.as_ref().map(|q| q.unit_price.amount),
                )
            })
            .collect();
        let model: Vec<Line> = m
            .cart
            .iter()
            .map(|l| (l.id, l.sku.clone(), l.qty, l.wh.clone(), Some(l.quote)))
            .collect();
        if real != model || cart.last_id != m.cart_next {
            return Err(format!(
                "cart of {}: model {model:?} next {}, real {real:?} next {}",
                ACCOUNTS[acct].id, m.cart_next, cart.last_id
            ));
        }
        Ok(())
    }

    /// Approve, reject and cancel: the model computes the whole order after the change.
    fn simple_outcome(
        &mut self,
        i: usize,
        action: &'static str,
        expect: Option<MOrder>,
        real: Result<Order, Rejection>,
    ) -> Result<Written, String> {
        let from = self.model.orders[i].state;
        match (expect, real) {
            (Some(m), Ok(order)) => {
                compare_order(&m, &order)?;
                let w = Written::order(&m, action, Some(from));
                self.model.store(m);
                Ok(w)
            }
            (None, Err(r)) => {
                let kind = format!("{r:?}");
                stats::note((action, from, kind.split('(').next().unwrap_or_default()));
                Ok(Written::nothing())
            }
            (Some(m), Err(r)) => Err(format!(
                "refused ({r:?}); the model accepts, giving {:?}",
                m.state
            )),
            (None, Ok(order)) => Err(format!(
                "accepted, the model refuses it in state {from:?} (now {:?})",
                order.state
            )),
        }
    }

    /// With no order yet, order commands go to an unknown id and must be refused.
    async fn missing_order(&mut self, engine: &Engine) -> Result<Written, String> {
        let id = OrderId::parse("no-such-order").expect("valid id");
        let real = ask(engine, 0, |reply| AccountMsg::Cancel {
            caller: world::buyer(0),
            order: id.into(),
            reply,
        })
        .await?;
        match real {
            Err(Rejection::NotFound(_)) => Ok(Written::nothing()),
            other => Err(format!("unknown order: expected not found, got {other:?}")),
        }
    }
}
