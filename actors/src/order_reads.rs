//! Reading an account's orders without holding up its actor. The actor answers from memory with
//! its open orders; the closed ones (which never change again) are read from the journal
//! afterwards, outside the actor, so a long read never delays the account's captures.
//!
//! An open order may close between the two reads. Its closed record is then the newer of the
//! two: it replaces the open copy, so a page never lists an order twice. A record the journal
//! shows before the flush that makes it durable (sled applies a batch, then the committer
//! flushes) is passed over: the actor has not acknowledged that change yet, and a crash could
//! still undo it. Only the actor, which waits for its own flushes, reads such records.

use orderd_domain::ids::{OrderId, UserId};
use orderd_domain::order::{Order, OrderState};
use std::collections::HashSet;

/// Which orders a read wants.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    /// Only the orders this user placed (a buyer who is not also an approver or account admin).
    pub placed_by: Option<UserId>,
    /// Only the orders in this state.
    pub state: Option<OrderState>,
}

impl OrderFilter {
    pub fn matches(&self, o: &Order) -> bool {
        self.state.is_none_or(|s| o.state == s)
            && self.placed_by.as_ref().is_none_or(|u| &o.placed_by == u)
    }
}

/// A page of an account's orders, newest first.
#[derive(Debug, Clone)]
pub struct OrderList {
    pub orders: Vec<Order>,
    /// Where the next page starts (its `before`); `None` when there are no more.
    pub next: Option<OrderId>,
}

/// A closed order record as read from the journal.
#[derive(Debug, Clone)]
pub struct ClosedRecord {
    pub order: Order,
    /// Whether a flush has made its write durable (`records::StoredOrder::is_durable`).
    pub durable: bool,
}

/// Fewest closed order records a list reads from the journal at a time.
pub const LIST_CHUNK_MIN: usize = 64;

/// Up to `limit` orders placed before `before` that `filter` matches, newest first: `open` (the
/// actor's open orders that match, before `before`, newest first, at most `limit`) merged with
/// the closed records `read_closed(from, max)` gives (up to `max` closed orders placed before
/// `from`, newest first), of which only the durable ones count.
///
/// At most `scan_max` closed records are read (in chunks of at least [`LIST_CHUNK_MIN`]); when
/// they run out first, the page lists only orders newer than the last record read and the next
/// page goes on from there. A filter on an open state reads no closed records.
pub fn page<E>(
    mut open: Vec<Order>,
    filter: &OrderFilter,
    before: Option<&OrderId>,
    limit: usize,
    scan_max: usize,
    mut read_closed: impl FnMut(Option<&OrderId>, usize) -> Result<Vec<ClosedRecord>, E>,
) -> Result<OrderList, E> {
    debug_assert!(
        open.len() <= limit
            && open
                .iter()
                .all(|o| filter.matches(o) && !o.state.is_closed())
            && open.iter().all(|o| before.is_none_or(|b| &o.id < b))
            && open.windows(2).all(|w| w[0].id > w[1].id),
        "the open part is the newest matching open orders before the cursor"
    );
    let mut closed: Vec<Order> = vec![];
    // Open orders whose closed record was read: they closed after the actor answered.
    let mut closed_since = HashSet::new();
    // The last closed record read while more may follow: nothing below it is known yet.
    let mut floor: Option<OrderId> = None;
    if filter.state.is_none_or(OrderState::is_closed) {
        let listed_open: HashSet<OrderId> = open.iter().map(|o| o.id.clone()).collect();
        let mut at = before.cloned();
        let mut scanned = 0;
        while closed.len() < limit && scanned < scan_max {
            let chunk = (limit - closed.len())
                .max(LIST_CHUNK_MIN)
                .min(scan_max - scanned);
            let read = read_closed(at.as_ref(), chunk)?;
            scanned += read.len();
            let ended = read.len() < chunk;
            at = read.last().map(|r| r.order.id.clone()).or(at);
            // A change not yet durable is not shown: the order's open copy, if listed, stays.
            for o in read.into_iter().filter(|r| r.durable).map(|r| r.order) {
                if listed_open.contains(&o.id) {
                    closed_since.insert(o.id.clone());
                }
                if filter.matches(&o) {
                    closed.push(o);
                }
            }
            floor = if ended { None } else { at.clone() };
            if ended {
                break;
            }
        }
    }
    open.retain(|o| !closed_since.contains(&o.id));
    let open = open
        .into_iter()
        .take_while(|o| floor.as_ref().is_none_or(|f| &o.id > f));
    let mut orders: Vec<Order> = open.chain(closed).collect();
    orders.sort_unstable_by(|a, b| b.id.cmp(&a.id));
    orders.truncate(limit);
    debug_assert!(
        orders.windows(2).all(|w| w[0].id > w[1].id),
        "a page lists an order once"
    );
    let next = if orders.len() == limit {
        orders.last().map(|o| o.id.clone())
    } else {
        floor
    };
    Ok(OrderList { orders, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_domain::ids::{AccountId, ShipToId};
    use orderd_domain::money::{Currency, Money};
    use orderd_domain::order::Channel;
    use std::cell::Cell;
    use std::convert::Infallible;
    use OrderState::*;

    fn order(n: u32, state: OrderState, by: &str) -> Order {
        Order {
            id: OrderId::parse(&format!("o{n:04}")).unwrap(),
            account: AccountId::parse("A").unwrap(),
            state,
            channel: Channel::Api,
            placed_by: UserId::parse(by).unwrap(),
            ship_to: ShipToId::parse("S").unwrap(),
            delivery_speed: None,
            customer_po: None,
            allow_split: false,
            lines: vec![],
            total: Money::zero(Currency::parse("EUR").unwrap()),
            approval_reasons: vec![],
            created_at: String::new(),
            updated_at: String::new(),
            version: 0,
            idempotency: None,
        }
    }

    /// Serves the closed orders `closed` (any order) as `records::closed_orders_before` does,
    /// counting the records it hands out in `read`.
    fn journal<'a>(
        closed: &'a [Order],
        read: &'a Cell<usize>,
    ) -> impl FnMut(Option<&OrderId>, usize) -> Result<Vec<ClosedRecord>, Infallible> + 'a {
        move |before, max| {
            let mut below: Vec<ClosedRecord> = closed
                .iter()
                .filter(|o| before.is_none_or(|b| &o.id < b))
                .map(|o| ClosedRecord {
                    order: o.clone(),
                    // Version 99 marks a change sled applied but has not flushed yet.
                    durable: o.version != 99,
                })
                .collect();
            below.sort_by(|a, b| b.order.id.cmp(&a.order.id));
            below.truncate(max);
            read.set(read.get() + below.len());
            Ok(below)
        }
    }

    fn ids(list: &OrderList) -> Vec<String> {
        list.orders.iter().map(|o| o.id.to_string()).collect()
    }

    // Open and closed orders interleave newest first; pages follow each other without gaps.
    #[test]
    fn pages_merge_the_actors_open_orders_with_the_closed_records() {
        let count = Cell::new(0);
        let all = (1..=10).map(|n| order(n, if n % 3 == 0 { Confirmed } else { Cancelled }, "bob"));
        let (open, closed): (Vec<Order>, Vec<Order>) = all.partition(|o| o.state == Confirmed);
        let mut open_newest_first = open.clone();
        open_newest_first.reverse();
        let filter = OrderFilter::default();
        let read = journal(&closed, &count);
        let first = page(open_newest_first.clone(), &filter, None, 4, 2000, read).unwrap();
        assert_eq!(ids(&first), ["o0010", "o0009", "o0008", "o0007"]);
        let before = first.next.clone().unwrap();
        let rest: Vec<Order> = open_newest_first
            .into_iter()
            .filter(|o| o.id < before)
            .collect();
        let read = journal(&closed, &count);
        let second = page(rest, &filter, Some(&before), 10, 2000, read).unwrap();
        assert_eq!(
            ids(&second),
            ["o0006", "o0005", "o0004", "o0003", "o0002", "o0001"]
        );
        assert_eq!(second.next, None);
    }

    // An order the actor listed as open that closed before the journal was read is listed once,
    // as its closed record says, or not at all when its closed state is not wanted.
    #[test]
    fn an_order_that_closed_meanwhile_is_listed_once_as_closed() {
        let count = Cell::new(0);
        let was_open = vec![order(3, Confirmed, "bob"), order(2, Allocated, "bob")];
        let closed = vec![order(3, Cancelled, "bob"), order(1, Shipped, "bob")];
        let read = journal(&closed, &count);
        let all = page(
            was_open.clone(),
            &OrderFilter::default(),
            None,
            10,
            2000,
            read,
        )
        .unwrap();
        let states: Vec<OrderState> = all.orders.iter().map(|o| o.state).collect();
        assert_eq!(ids(&all), ["o0003", "o0002", "o0001"]);
        assert_eq!(states, [Cancelled, Allocated, Shipped]);

        let shipped_only = OrderFilter {
            state: Some(Shipped),
            ..OrderFilter::default()
        };
        let read = journal(&closed, &count);
        let shipped = page(vec![], &shipped_only, None, 10, 2000, read).unwrap();
        assert_eq!(ids(&shipped), ["o0001"]);
        // The open part only ever holds orders the filter matched when the actor answered.
        let by_bob = OrderFilter {
            placed_by: Some(UserId::parse("bob").unwrap()),
            state: None,
        };
        let read = journal(&closed, &count);
        let bobs = page(was_open, &by_bob, None, 2, 2000, read).unwrap();
        assert_eq!(ids(&bobs), ["o0003", "o0002"]);
        assert_eq!(bobs.orders[0].state, Cancelled);
        assert_eq!(bobs.next, Some(OrderId::parse("o0002").unwrap()));
    }

    // A closed record that is not durable yet is passed over: the order stays listed as the
    // actor answered (open), or is not listed when the actor did not list it; it still counts
    // as read, so the page's end and cursor stay where they were.
    #[test]
    fn a_close_not_yet_durable_is_not_shown() {
        let count = Cell::new(0);
        let was_open = vec![order(3, Confirmed, "bob")];
        let mut closing = order(3, Cancelled, "bob");
        closing.version = 99;
        let mut other = order(2, Shipped, "bob");
        other.version = 99;
        let closed = vec![closing, other, order(1, Rejected, "bob")];
        let read = journal(&closed, &count);
        let list = page(was_open, &OrderFilter::default(), None, 10, 2000, read).unwrap();
        let states: Vec<OrderState> = list.orders.iter().map(|o| o.state).collect();
        assert_eq!(ids(&list), ["o0003", "o0001"]);
        assert_eq!((states, list.next), (vec![Confirmed, Rejected], None));

        let read = journal(&closed, &count);
        let bounded = page(vec![], &OrderFilter::default(), None, 1, 2, read).unwrap();
        assert!(bounded.orders.is_empty());
        assert_eq!(bounded.next, Some(OrderId::parse("o0002").unwrap()));
    }

    // A filter on an open state reads nothing from the journal; a filter that matches few
    // closed orders reads at most `scan_max` records and the page ends at the last one read.
    #[test]
    fn the_journal_is_read_only_as_far_as_needed() {
        let closed: Vec<Order> = (1..=100)
            .map(|n| order(n, if n == 5 { Rejected } else { Cancelled }, "bob"))
            .collect();
        let open = vec![order(101, PendingApproval, "bob")];
        let pending = OrderFilter {
            state: Some(PendingApproval),
            ..OrderFilter::default()
        };
        let records = Cell::new(0);
        let read = journal(&closed, &records);
        let list = page(open, &pending, None, 10, 2000, read).unwrap();
        assert_eq!((ids(&list), records.get()), (vec!["o0101".to_string()], 0));

        let rejected = OrderFilter {
            state: Some(Rejected),
            ..OrderFilter::default()
        };
        let records = Cell::new(0);
        let read = journal(&closed, &records);
        let bounded = page(vec![], &rejected, None, 10, 70, read).unwrap();
        assert!(bounded.orders.is_empty());
        assert_eq!(records.get(), 70);
        assert_eq!(bounded.next, Some(OrderId::parse("o0031").unwrap()));
        let read = journal(&closed, &records);
        let rest = page(vec![], &rejected, bounded.next.as_ref(), 10, 70, read).unwrap();
        assert_eq!((ids(&rest), rest.next), (vec!["o0005".to_string()], None));
    }
}
