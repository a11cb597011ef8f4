//! Submissions: placing, submitting and amending orders (the commands that plan stock and check
//! credit), and shipping. The model predicts every problem code except where the planner's
//! choice of warehouse decides (`Tri::Maybe`), and adopts the allocations the system chose.

use crate::compare::{adopt_allocations, compare_order};
use crate::harness::{ask, header_request, problem_codes, Harness, Placing, Written};
use crate::ops::{Header, LineSpec, WhPick};
use crate::reference::{Eval, Keyed, MLine, MOrder, Model};
use crate::{stats, world};
use orderd_actors::account::AccountMsg;
use orderd_actors::ordering::{Amendment, Placed};
use orderd_actors::Engine;
use orderd_domain::ids::{IdempotencyKey, OrderId, WarehouseId};
use orderd_domain::order::{Channel, Order, OrderState};
use orderd_domain::rejection::Rejection;
use orderd_domain::validation::OrderRequest;
use std::collections::BTreeSet;

type Judged = Result<Option<Vec<MLine>>, String>;

/// Checks the outcome of a request that was evaluated in full (stock, credit) against the
/// model's evaluation. Accepted: the order must be in `state` with the model's prices, and the
/// model's lines take the allocations the system chose.
fn judge_evaluated(
    ev: &Eval,
    real: &Result<Order, Rejection>,
    split: bool,
    state: OrderState,
) -> Judged {
    let order = match real {
        Ok(order) => order,
        Err(r) => {
            return match problem_codes(r) {
                Some(codes) if ev.matches(&codes) => {
                    stats::note(&codes);
                    Ok(None)
                }
                _ => Err(format!(
                    "refused with {r:?}; the model expects {:?} (out of stock: {:?})",
                    ev.codes, ev.oos
                )),
            }
        }
    };
    if !ev.matches(&BTreeSet::new()) {
        return Err(format!(
            "accepted; the model expects problems {:?} (out of stock: {:?})",
            ev.codes, ev.oos
        ));
    }
    if order.total.amount != ev.total || order.state != state {
        return Err(format!(
            "accepted as {:?} with total {}; the model expects {state:?} and {}",
            order.state, order.total.amount, ev.total
        ));
    }
    let mut lines = ev.lines.clone();
    adopt_allocations(&mut lines, order, split)?;
    Ok(Some(lines))
}

/// Checks the outcome of a draft request (catalog checks only; no stock, no allocations).
fn judge_draft(
    model: &Model,
    acct: usize,
    req: &OrderRequest,
    real: &Result<Order, Rejection>,
) -> Judged {
    let (codes, _, lines) = model.static_check(acct, req);
    match real {
        Ok(order) if codes.is_empty() => {
            if order.lines.iter().any(|l| !l.allocations.is_empty()) {
                return Err("a draft has allocations".into());
            }
            Ok(Some(lines))
        }
        Ok(_) => Err(format!("draft accepted; the model expects {codes:?}")),
        Err(r) if problem_codes(r).as_ref() == Some(&codes) && !codes.is_empty() => {
            stats::note(&codes);
            Ok(None)
        }
        Err(r) => Err(format!(
            "draft refused with {r:?}; the model expects {codes:?}"
        )),
    }
}

/// Where a submitted order goes: to an approver, or straight on to allocation.
fn routed(ev: &Eval) -> OrderState {
    if ev.needs_approval {
        OrderState::PendingApproval
    } else {
        OrderState::Allocated
    }
}

impl Harness {
    /// Places an order (a draft, or submitted at once), fresh or under an idempotency key.
    pub async fn place(
        &mut self,
        engine: &Engine,
        acct: usize,
        lines: &[LineSpec],
        header: &Header,
        how: Placing,
    ) -> Result<Written, String> {
        let req = header_request(acct, if how.from_cart { &[] } else { lines }, header);
        let key = how.key.map(|k| format!("key-{k}"));
        let keyed = Keyed {
            req: req.clone(),
            from_cart: how.from_cart,
            submit: how.submit,
        };
        let remembered = key
            .as_ref()
            .and_then(|k| self.model.accounts[acct].keys.get(k).cloned());
        let full = self.model.effective_request(acct, &req, how.from_cart);
        let real = {
            let key = key
                .as_ref()
                .map(|k| IdempotencyKey::parse(k).expect("valid key"));
            ask(engine, acct, |reply| AccountMsg::Place {
                span: tracing::Span::none(),
                caller: world::buyer(acct),
                key,
                req,
                from_cart: how.from_cart,
                channel: Channel::Api,
                submit: how.submit,
                reply,
            })
            .await?
        };
        if let Some(before) = remembered {
            return self.reused_key(before, &keyed, real);
        }
        let real = match real {
            Ok(Placed { replayed: true, .. }) => return Err("a fresh key was replayed".into()),
            Ok(p) => Ok(p.order),
            Err(r) => Err(r),
        };
        let ev = self.model.evaluate(acct, &full, None);
        let (judged, state) = if how.submit {
            let state = routed(&ev);
            (judge_evaluated(&ev, &real, full.allow_split, state)?, state)
        } else {
            (
                judge_draft(&self.model, acct, &full, &real)?,
                OrderState::Draft,
            )
        };
        let (Some(lines), Ok(order)) = (judged, real) else {
            return Ok(Written::nothing());
        };
        let m = MOrder {
            id: order.id.clone(),
            acct,
            state,
            changes: 1,
            ship_to: ev.ship_to.ok_or("accepted without a ship-to")?,
            speed: full.delivery_speed,
            split: full.allow_split,
            lines,
            reapproval: false,
        };
        compare_order(&m, &order)?;
        let action = if how.submit {
            "order.place"
        } else {
            "order.draft"
        };
        let w = Written::order(&m, action, None);
        if let Some(k) = key {
            self.model.accounts[acct]
                .keys
                .insert(k, (keyed, m.id.clone()));
        }
        if how.from_cart {
            self.model.accounts[acct].cart.clear();
        }
        self.model.store(m);
        Ok(w)
    }

    /// A key used before: the same request replays its order (writing nothing), another one
    /// is refused.
    fn reused_key(
        &self,
        (before, id): (Keyed, OrderId),
        now: &Keyed,
        real: Result<Placed, Rejection>,
    ) -> Result<Written, String> {
        match real {
            Ok(Placed {
                order,
                replayed: true,
            }) if before == *now && order.id == id => {
                let i = self.model.index_of(&id).ok_or("replayed unknown order")?;
                compare_order(&self.model.orders[i], &order)?;
                Ok(Written::nothing())
            }
            Err(Rejection::IdempotencyMismatch(_)) if before != *now => Ok(Written::nothing()),
            other => Err(format!(
                "reused key (same request: {}): unexpected {other:?}",
                before == *now
            )),
        }
    }

    pub async fn submit(&mut self, engine: &Engine, i: usize) -> Result<Written, String> {
        let o = self.model.orders[i].clone();
        let ev = self.model.evaluate(o.acct, &o.request(), None);
        let id = o.id.clone();
        let real = ask(engine, o.acct, |reply| AccountMsg::Submit {
            span: tracing::Span::none(),
            caller: world::buyer(o.acct),
            order: id.into(),
            reply,
        })
        .await?;
        if o.state != OrderState::Draft {
            return match real {
                Err(_) => Ok(Written::nothing()),
                Ok(order) => Err(format!(
                    "submitted an order in state {:?} (now {:?})",
                    o.state, order.state
                )),
            };
        }
        let state = routed(&ev);
        let Some(lines) = judge_evaluated(&ev, &real, o.split, state)? else {
            return Ok(Written::nothing());
        };
        let m = MOrder {
            state,
            changes: o.changes + 1,
            lines,
            ..o
        };
        compare_order(&m, real.as_ref().expect("accepted"))?;
        let w = Written::order(&m, "order.submit", Some(OrderState::Draft));
        self.model.store(m);
        Ok(w)
    }

    /// Amends an order before allocation: a draft is checked like a draft, a pending order is
    /// evaluated again (its own stock and credit count as available) and routed again: it
    /// stays pending while a rule holds it back, else it is confirmed and allocated.
    pub async fn amend(
        &mut self,
        engine: &Engine,
        i: usize,
        patch: Amendment,
    ) -> Result<Written, String> {
        let o = self.model.orders[i].clone();
        let mut req = o.request();
        if let Some(lines) = &patch.lines {
            req.lines = lines.clone();
        }
        if let Some(s) = &patch.ship_to {
            req.ship_to = Some(s.clone());
        }
        if let Some(s) = &patch.delivery_speed {
            req.delivery_speed = s.clone();
        }
        req.allow_split = patch.allow_split.unwrap_or(req.allow_split);
        let header_only = patch.lines.is_none();
        let id = o.id.clone();
        let real = ask(engine, o.acct, |reply| AccountMsg::Amend {
            caller: world::buyer(o.acct),
            order: id.into(),
            patch,
            reply,
        })
        .await?;
        let amendable = matches!(
            o.state,
            OrderState::Draft | OrderState::PendingApproval | OrderState::Confirmed
        );
        if !amendable {
            return match real {
                Err(_) => Ok(Written::nothing()),
                Ok(order) => Err(format!(
                    "amended an order in state {:?} (now {:?})",
                    o.state, order.state
                )),
            };
        }
        // Once an approver rejected lines of a pending order, it waits for one again.
        let reapproval = o.state == OrderState::PendingApproval
            && (o.reapproval || o.lines.iter().any(|l| !l.open));
        let (judged, state) = if o.state == OrderState::Draft {
            (judge_draft(&self.model, o.acct, &req, &real)?, o.state)
        } else {
            let ev = self.model.evaluate(o.acct, &req, Some(i));
            let state = if reapproval {
                OrderState::PendingApproval
            } else {
                routed(&ev)
            };
            (judge_evaluated(&ev, &real, req.allow_split, state)?, state)
        };
        let Some(mut lines) = judged else {
            return Ok(Written::nothing());
        };
        if header_only {
            // The lines stay as they were: their numbers, and the rejected ones.
            for (l, old) in lines.iter_mut().zip(o.open_lines()) {
                l.line_no = old.line_no;
            }
            lines.extend(o.lines.iter().filter(|l| !l.open).cloned());
            lines.sort_by_key(|l| l.line_no);
        }
        let (_, ship_to, _) = self.model.static_check(o.acct, &req);
        let from = o.state;
        let m = MOrder {
            state,
            changes: o.changes + 1,
            ship_to: ship_to.ok_or("amended without a ship-to")?,
            speed: req.delivery_speed.clone(),
            split: req.allow_split,
            lines,
            reapproval,
            ..o
        };
        compare_order(&m, real.as_ref().expect("accepted"))?;
        let w = Written::order(&m, "order.amend", Some(from));
        self.model.store(m);
        Ok(w)
    }

    pub async fn ship(
        &mut self,
        engine: &Engine,
        i: usize,
        pick: WhPick,
    ) -> Result<Written, String> {
        let o = &self.model.orders[i];
        let wh = match pick {
            WhPick::Named(w) => w.to_owned(),
            WhPick::Allocated(n) => {
                let mut whs: Vec<&str> = vec![];
                for a in o.lines.iter().flat_map(|l| &l.allocs) {
                    if !whs.contains(&a.wh.as_str()) {
                        whs.push(&a.wh);
                    }
                }
                whs.get(usize::from(n) % whs.len().max(1))
                    .map_or("W1".to_owned(), |w| (*w).to_owned())
            }
        };
        let expect = self.model.ship(i, &wh);
        let (acct, id, from) = (o.acct, o.id.clone(), o.state);
        let warehouse = WarehouseId::parse(&wh).expect("valid id");
        let real = ask(engine, acct, |reply| AccountMsg::Ship {
            caller: world::warehouse_caller(&wh),
            order: id.into(),
            warehouse,
            reply,
        })
        .await?;
        match (expect, real) {
            (Some((m, value)), Ok(order)) => {
                compare_order(&m, &order)?;
                let w = Written::order(&m, "order.ship", Some(from));
                self.model.apply_ship(i, &wh, m, value);
                Ok(w)
            }
            (None, Err(_)) => Ok(Written::nothing()),
            (Some(_), Err(r)) => Err(format!("ship from {wh} refused ({r:?}); the model ships")),
            (None, Ok(order)) => Err(format!(
                "shipped from {wh} in state {from:?} (now {:?}); the model refuses",
                order.state
            )),
        }
    }
}
