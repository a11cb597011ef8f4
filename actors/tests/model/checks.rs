//! The checks after every step (invariants 2, 3, 4 and 8, and everything the model knows) and
//! the restart: a new engine on the same journal must rebuild exactly the same state.

use crate::compare::compare_order;
use crate::harness::{ask, get_order, list_orders, read, EventSeen, Harness, Written};
use crate::reference::{self, legal, state_named, MOrder};
use crate::start;
use crate::world::{self, ACCOUNTS, STOCK_SKUS, WAREHOUSES};
use orderd_actors::account::AccountMsg;
use orderd_actors::audit::AuditEntry;
use orderd_actors::ordering::Placed;
use orderd_actors::Engine;
use orderd_domain::ids::{AccountId, IdempotencyKey, OrderId, Sku, WarehouseId};
use orderd_domain::invariants::{credit_within_limit, states_follow_machine};
use orderd_domain::order::{Channel, Order, OrderState};
use std::collections::BTreeMap;

pub fn parse_entry(payload: &[u8]) -> Result<AuditEntry, String> {
    AuditEntry::decode(payload).map_err(|e| e.to_string())
}

/// (order id, what the checks need) of the outbox event an audit record carries, as rendered
/// for consumers (CloudEvents JSON); `None` for a record without an event.
fn parse_event(payload: &[u8]) -> Result<Option<(String, EventSeen)>, String> {
    let Some(stored) = orderd_actors::events::from_audit(payload).map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let rendered = orderd_actors::events::render(&stored);
    let json: serde_json::Value =
        serde_json::from_slice(&rendered).map_err(|e| format!("event is not JSON: {e}"))?;
    let data = &json["data"];
    let order = data["order"]
        .as_str()
        .ok_or("event without an order")?
        .to_owned();
    let seen = EventSeen {
        sequence: data["sequence"]
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .ok_or("event without a sequence")?,
        state: data["state"].as_str().unwrap_or_default().to_owned(),
        transitions: data["transitions"]
            .as_array()
            .ok_or("event without transitions")?
            .iter()
            .map(|t| t.as_str().unwrap_or_default().to_owned())
            .collect(),
    };
    Ok(Some((order, seen)))
}

/// The states an event's `transitions` walk through, starting after `from`.
fn walk(from: OrderState, transitions: &[String]) -> Result<Vec<OrderState>, String> {
    let mut states = vec![from];
    for t in transitions {
        states.push(state_named(t).ok_or_else(|| format!("unknown transition {t:?}"))?);
    }
    Ok(states)
}

fn follows_machine(states: &[OrderState]) -> Result<(), String> {
    states_follow_machine(states)?;
    match states
        .windows(2)
        .find(|w| w[0] != w[1] && !legal(w[0], w[1]))
    {
        Some(w) => Err(format!("model: illegal move {:?} -> {:?}", w[0], w[1])),
        None => Ok(()),
    }
}

impl Harness {
    // ---- restart ----------------------------------------------------------------------------

    /// Shuts `engine` down and starts a new one on the same journal, then checks what only a
    /// restart shows: the whole outbox read back from the start, and every remembered
    /// idempotency key still answering with its order. `check_all` compares the rest.
    pub async fn restart(
        &mut self,
        engine: Engine,
        dir: &std::path::Path,
    ) -> Result<Engine, String> {
        engine
            .shutdown()
            .await
            .map_err(|e| format!("shutdown: {e}"))?;
        drop(engine);
        let engine = start(dir).await.map_err(|e| format!("restart: {e}"))?;
        self.check_outbox_from_start(&engine)?;
        self.check_replays(&engine).await?;
        Ok(engine)
    }

    fn check_outbox_from_start(&self, engine: &Engine) -> Result<(), String> {
        type Seen = BTreeMap<String, Vec<(u32, String, Vec<String>)>>;
        let mut stored: Seen = BTreeMap::new();
        for r in engine
            .journal
            .audit_after(0, 100_000)
            .map_err(|e| e.to_string())?
        {
            let Some((order, e)) = parse_event(&r.payload)? else {
                continue;
            };
            stored
                .entry(order)
                .or_default()
                .push((e.sequence, e.state, e.transitions));
        }
        let seen: Seen = self
            .events
            .iter()
            .map(|(o, evs)| {
                let evs = evs
                    .iter()
                    .map(|e| (e.sequence, e.state.clone(), e.transitions.clone()));
                (o.clone(), evs.collect())
            })
            .collect();
        if stored != seen {
            return Err(format!(
                "invariant 4: outbox after restart {stored:?}, events written {seen:?}"
            ));
        }
        Ok(())
    }

    async fn check_replays(&self, engine: &Engine) -> Result<(), String> {
        for (acct, a) in self.model.accounts.iter().enumerate() {
            for (k, (keyed, id)) in &a.keys {
                let key = IdempotencyKey::parse(k).expect("valid key");
                let (req, from_cart, submit) = (keyed.req.clone(), keyed.from_cart, keyed.submit);
                let real = ask(engine, acct, |reply| AccountMsg::Place {
                    span: tracing::Span::none(),
                    caller: world::buyer(acct),
                    key: Some(key),
                    req,
                    from_cart,
                    channel: Channel::Api,
                    submit,
                    reply,
                })
                .await?;
                match real {
                    Ok(Placed {
                        order,
                        replayed: true,
                    }) if &order.id == id => {
                        let i = self.model.index_of(id).ok_or("replayed unknown order")?;
                        compare_order(&self.model.orders[i], &order)?;
                    }
                    other => {
                        return Err(format!(
                            "after a restart, key {k} of {} should replay {id}: {other:?}",
                            ACCOUNTS[acct].id
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    // ---- checks after every step ----------------------------------------------------------

    pub async fn check_all(&mut self, engine: &Engine, written: &Written) -> Result<(), String> {
        self.check_writes(engine, written)?;
        engine
            .journal
            .verify_audit()
            .map_err(|e| format!("invariant 5: {e}"))?;
        self.check_stock(engine).await?;
        // An order change that can add exposure must have stayed within the limit.
        let ordered = written.order.as_ref().and_then(|ch| {
            let adds = matches!(ch.action, "order.place" | "order.submit" | "order.amend")
                && ch.to != OrderState::Draft;
            adds.then(|| {
                self.model
                    .index_of(&ch.id)
                    .map(|i| self.model.orders[i].acct)
            })
            .flatten()
        });
        for acct in 0..ACCOUNTS.len() {
            self.check_account(engine, acct, ordered == Some(acct))
                .await?;
        }
        self.check_histories(engine)
    }

    /// Invariant 4, step by step: an accepted step wrote one audit record (carrying, for an order
    /// change, one event with the order's next sequence); a refused step wrote nothing.
    fn check_writes(&mut self, engine: &Engine, w: &Written) -> Result<(), String> {
        let j = &engine.journal;
        let records = j
            .audit_after(self.audit_seen, 1_000)
            .map_err(|e| e.to_string())?;
        let want = usize::from(w.audit_subject.is_some());
        if records.len() != want {
            return Err(format!(
                "invariant 4: {} audit records written, expected {want}",
                records.len()
            ));
        }
        if let (Some(r), Some(subject)) = (records.last(), &w.audit_subject) {
            if r.subject != subject.as_bytes() {
                return Err(format!(
                    "audit record about {:?}, expected {subject}",
                    String::from_utf8_lossy(&r.subject)
                ));
            }
            self.audit_seen = r.seq;
        }
        let mut events = Vec::new();
        for r in &records {
            events.extend(parse_event(&r.payload)?);
        }
        let want = usize::from(w.order.is_some());
        if events.len() != want {
            return Err(format!(
                "invariant 4: {} events written, expected {want}",
                events.len()
            ));
        }
        let (Some((order, seen)), Some(ch)) = (events.pop(), &w.order) else {
            return Ok(());
        };
        if order != ch.id.as_str() || seen.sequence != ch.version || seen.state != ch.to.as_str() {
            return Err(format!(
                "event for {order} seq {} state {}; expected {} seq {} state {}",
                seen.sequence,
                seen.state,
                ch.id,
                ch.version,
                ch.to.as_str()
            ));
        }
        let path = walk(ch.from.unwrap_or(OrderState::Draft), &seen.transitions)?;
        follows_machine(&path).map_err(|e| format!("invariant 8: event transitions: {e}"))?;
        if path.last() != Some(&ch.to) {
            return Err(format!(
                "event transitions {:?} from {:?} do not end in {:?}",
                seen.transitions, ch.from, ch.to
            ));
        }
        let entry = parse_entry(&records.last().ok_or("no audit record")?.payload)?;
        let from = ch.from.map(|s| s.as_str().to_owned());
        if entry.action != ch.action
            || entry.order.as_deref() != Some(ch.id.as_str())
            || entry.from != from
            || entry.to.as_deref() != Some(ch.to.as_str())
        {
            return Err(format!(
                "audit entry {} {:?} -> {:?}; expected {} {from:?} -> {:?}",
                entry.action, entry.from, entry.to, ch.action, ch.to
            ));
        }
        self.events.entry(ch.id.to_string()).or_default().push(seen);
        Ok(())
    }

    /// Invariant 2: the real stock is conserved and equals what the model's open orders hold.
    async fn check_stock(&self, engine: &Engine) -> Result<(), String> {
        engine
            .check_stock()
            .await
            .map_err(|e| format!("invariant 2: {e}"))?;
        let levels = self.model.levels();
        for ((w, s), (on_hand, r, a)) in &levels {
            if r + a > *on_hand {
                return Err(format!(
                    "invariant 2 (accepted orders, model): {w}/{s} holds {r} + {a} of {on_hand}"
                ));
            }
        }
        let holdings = self.model.holdings();
        for w in &WAREHOUSES {
            let wid = WarehouseId::parse(w.id).expect("valid id");
            let stock = engine
                .warehouse(&wid)
                .ok_or_else(|| format!("no warehouse {}", w.id))?
                .snapshot()
                .await
                .map_err(|e| e.to_string())?;
            for s in STOCK_SKUS {
                let l = stock.level(&Sku::parse(s).expect("valid sku"));
                let real = (l.on_hand, l.reserved, l.allocated);
                let model = levels[&(w.id.to_owned(), s.to_owned())];
                if real != model {
                    return Err(format!(
                        "invariant 2: {}/{s} (on hand, reserved, allocated) model {model:?} real {real:?}",
                        w.id
                    ));
                }
            }
            let real: BTreeMap<OrderId, reference::Holding> = stock
                .holdings()
                .map(|(o, h)| {
                    let conv = |m: &BTreeMap<Sku, u64>| {
                        m.iter().map(|(s, q)| (s.to_string(), *q)).collect()
                    };
                    (
                        o.clone(),
                        reference::Holding {
                            reserved: conv(&h.reserved),
                            allocated: conv(&h.allocated),
                        },
                    )
                })
                .collect();
            let model: BTreeMap<OrderId, reference::Holding> = holdings
                .iter()
                .filter_map(|(o, hs)| hs.get(w.id).map(|h| (o.clone(), h.clone())))
                .collect();
            if real != model {
                return Err(format!(
                    "invariant 2: holdings in {}: model {model:?}, real {real:?}",
                    w.id
                ));
            }
        }
        Ok(())
    }

    /// Invariant 3 and the account's orders and cart. Exposure must be within the limit at all
    /// times unless an operator moved the limit below it; then an accepted order change must
    /// not have raised it.
    async fn check_account(
        &mut self,
        engine: &Engine,
        acct: usize,
        ordered: bool,
    ) -> Result<(), String> {
        let a = &ACCOUNTS[acct];
        let m = &self.model.accounts[acct];
        let (limit, receivables) = (m.limit, m.receivables);
        let exposure = self.model.exposure(acct, None);
        let view = read(engine, acct, |reply| AccountMsg::Credit { reply }).await?;
        if view.exposure.amount != exposure
            || view.open_receivables.amount != receivables
            || view.credit_limit.amount != limit
        {
            return Err(format!(
                "invariant 3: {}: model {exposure} ({receivables} + orders, limit {limit}), real {view:?}",
                a.id
            ));
        }
        if exposure <= limit {
            self.model.accounts[acct].over_by_operator = false;
        }
        // Over a limit an operator lowered, an accepted change may only keep or lower the
        // exposure (a shrinking amendment).
        let before = std::mem::replace(&mut self.model.accounts[acct].exposure_checked, exposure);
        let must_hold =
            !self.model.accounts[acct].over_by_operator || (ordered && exposure > before);
        if must_hold && exposure > limit {
            return Err(format!(
                "invariant 3: {} exposure {exposure} above limit {limit}",
                a.id
            ));
        }
        let account = read(engine, acct, |reply| AccountMsg::GetAccount { reply }).await?;
        // Every page, small ones so that the merge of open and closed orders across pages is
        // checked too.
        let mut orders: Vec<Order> = vec![];
        let mut before = None;
        loop {
            let page = list_orders(engine, acct, None, before, 3).await?;
            orders.extend(page.orders);
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        if !orders.windows(2).all(|w| w[0].id > w[1].id) {
            return Err(format!("{} lists its orders out of order or twice", a.id));
        }
        if must_hold {
            credit_within_limit(&account, &orders.iter().collect::<Vec<_>>())
                .map_err(|e| format!("invariant 3: {e}"))?;
        }
        let mine: Vec<&MOrder> = self
            .model
            .orders
            .iter()
            .filter(|o| o.acct == acct)
            .collect();
        if orders.len() != mine.len() {
            return Err(format!(
                "{} lists {} orders, the model has {}",
                a.id,
                orders.len(),
                mine.len()
            ));
        }
        let by_id: BTreeMap<&OrderId, &Order> = orders.iter().map(|o| (&o.id, o)).collect();
        for m in mine {
            let real = by_id
                .get(&m.id)
                .ok_or_else(|| format!("order {} missing from the list", m.id))?;
            compare_order(m, real)?;
            let got = get_order(engine, acct, &m.id)
                .await?
                .ok_or_else(|| format!("reading order {}: not found", m.id))?;
            if got.state != m.state || got.version != m.changes {
                return Err(format!(
                    "invariant 8: order {} reads as {:?} v{}, the model {:?} v{}",
                    m.id, got.state, got.version, m.state, m.changes
                ));
            }
        }
        let cart = read(engine, acct, |reply| AccountMsg::GetCart { reply }).await?;
        self.compare_cart(acct, &cart)
    }

    /// Invariants 4 and 8 per order: as many audit records and events as accepted changes,
    /// events numbered 1..=version, and the records replay along the state machine to the
    /// current state.
    fn check_histories(&self, engine: &Engine) -> Result<(), String> {
        for m in &self.model.orders {
            let account = AccountId::parse(ACCOUNTS[m.acct].id).map_err(|e| e.to_string())?;
            let records = engine
                .history(&account, &m.id, 0, 10_000)
                .map_err(|e| e.to_string())?;
            let no_events = vec![];
            let events = self.events.get(m.id.as_str()).unwrap_or(&no_events);
            let seqs: Vec<u32> = events.iter().map(|e| e.sequence).collect();
            let want: Vec<u32> = (1..=m.changes).collect();
            if records.len() != want.len() || seqs != want {
                return Err(format!(
                    "invariant 4: order {} has {} audit records, events {seqs:?}; model: {} changes",
                    m.id,
                    records.len(),
                    m.changes
                ));
            }
            let mut history = vec![OrderState::Draft];
            let mut last: Option<String> = None;
            for ((seq, entry), ev) in records.into_iter().zip(events) {
                if entry.from != last {
                    return Err(format!(
                        "order {}: audit record {seq} starts from {:?}, the last ended in {last:?}",
                        m.id, entry.from
                    ));
                }
                if entry.to.as_deref() != Some(ev.state.as_str()) {
                    return Err(format!(
                        "order {}: audit record {seq} ends in {:?}, its event in {}",
                        m.id, entry.to, ev.state
                    ));
                }
                let from = *history.last().expect("never empty");
                history.extend(walk(from, &ev.transitions)?.into_iter().skip(1));
                if history.last().map(|s| s.as_str()) != entry.to.as_deref() {
                    return Err(format!(
                        "order {}: record {seq} says {:?}, its transitions {:?} lead elsewhere",
                        m.id, entry.to, ev.transitions
                    ));
                }
                last = entry.to;
            }
            follows_machine(&history).map_err(|e| format!("invariant 8: order {}: {e}", m.id))?;
            if last.as_deref() != Some(m.state.as_str()) {
                return Err(format!(
                    "invariant 8: order {} last recorded as {last:?}, the model has {:?}",
                    m.id, m.state
                ));
            }
        }
        Ok(())
    }
}
