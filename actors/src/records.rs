//! How domain state is laid out as journal records. Values are postcard (compact binary):
//! each insert costs several microseconds, so an order is one record, not one per line.
//!
//! | key                         | value                   |
//! |-----------------------------|-------------------------|
//! | `acct/<account>`            | `Account`, removed users included (see [`encode_account`]) |
//! | `cart/<account>`            | `Cart` (see [`encode_cart`]) |
//! | `ord/<account>/<order>`     | an open order: `Order` (with its Idempotency-Key, if any) and the audit seqs of its changes (see [`encode_order`]) |
//! | `closed/<account>/<order>`  | a closed order (shipped, rejected, cancelled): its [`OrderHead`] (id, placer, Idempotency-Key), then the same value; it moves here with the change that closes it |
//! | `shipped/<account>/<ship-to>` | empty: an order to this ship-to has shipped |
//! | `wh/<warehouse>`            | `Warehouse`             |
//! | `stock/<warehouse>/<sku>`   | on hand, `u64`          |
//! | `cat/<sku>`                 | `CatalogItem`           |
//! | `price/<n>`                 | `PriceEntry`            |
//! | `meta/<name>`               | daemon metadata         |

use orderd_domain::account::Account;
use orderd_domain::cart::Cart;
use orderd_domain::ids::{AccountId, OrderId, ShipToId, Sku, UserId, WarehouseId};
use orderd_domain::order::{Order, PlacedWith};
use orderd_storage::StorageError;
use serde::{de::DeserializeOwned, Serialize};

pub const ACCOUNT: &str = "acct/";
pub const CART: &str = "cart/";
pub const ORDER: &str = "ord/";
pub const CLOSED: &str = "closed/";
pub const SHIPPED: &str = "shipped/";
pub const WAREHOUSE: &str = "wh/";
pub const STOCK: &str = "stock/";
pub const CATALOG: &str = "cat/";
pub const PRICE: &str = "price/";
pub const META: &str = "meta/";

pub fn account_key(a: &AccountId) -> String {
    format!("{ACCOUNT}{a}")
}
pub fn cart_key(a: &AccountId) -> String {
    format!("{CART}{a}")
}
pub fn order_prefix(a: &AccountId) -> String {
    format!("{ORDER}{a}/")
}
pub fn order_key(a: &AccountId, o: &OrderId) -> String {
    format!("{ORDER}{a}/{o}")
}
pub fn closed_prefix(a: &AccountId) -> String {
    format!("{CLOSED}{a}/")
}
pub fn closed_key(a: &AccountId, o: &OrderId) -> String {
    format!("{CLOSED}{a}/{o}")
}
pub fn shipped_prefix(a: &AccountId) -> String {
    format!("{SHIPPED}{a}/")
}
pub fn shipped_key(a: &AccountId, s: &ShipToId) -> String {
    format!("{SHIPPED}{a}/{s}")
}
pub fn warehouse_key(w: &WarehouseId) -> String {
    format!("{WAREHOUSE}{w}")
}
pub fn stock_prefix(w: &WarehouseId) -> String {
    format!("{STOCK}{w}/")
}
pub fn stock_key(w: &WarehouseId, s: &Sku) -> String {
    format!("{STOCK}{w}/{s}")
}
pub fn catalog_key(s: &Sku) -> String {
    format!("{CATALOG}{s}")
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // postcard only fails for types serde cannot represent (maps with non-string keys are fine);
    // ours are plain data, so a failure here is a bug.
    postcard::to_stdvec(v).expect("plain data always encodes")
}

pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::corrupt(key, e.to_string()))
}

/// Marks a tagged account record: 0 can never start a record of the first layout, whose first
/// byte is the length (1..=64) of the account id.
const ACCOUNT_LAYOUT_TAG: u8 = 0;
/// The second layout: users carry their assigned ship-tos.
const ACCOUNT_LAYOUT_SHIP_TOS: u8 = 2;
/// The current layout: the account remembers removed users (tombstones).
const ACCOUNT_LAYOUT: u8 = 3;

/// An account record: a tag, the layout version, then the postcard `Account`. Records of the
/// earlier layouts are still read ([`decode_account`]).
pub fn encode_account(account: &Account) -> Vec<u8> {
    let mut bytes = vec![ACCOUNT_LAYOUT_TAG, ACCOUNT_LAYOUT];
    bytes.extend(encode(account));
    bytes
}

/// Reads an account record of any layout (earlier ones have no removed users).
pub fn decode_account(key: &[u8], bytes: &[u8]) -> Result<Account, StorageError> {
    match bytes {
        [ACCOUNT_LAYOUT_TAG, ACCOUNT_LAYOUT, rest @ ..] => decode(key, rest),
        [ACCOUNT_LAYOUT_TAG, ACCOUNT_LAYOUT_SHIP_TOS, rest @ ..] => {
            decode::<legacy::Account<orderd_domain::account::User>>(key, rest).map(Into::into)
        }
        [ACCOUNT_LAYOUT_TAG, ..] => Err(StorageError::corrupt(key, "unknown account layout")),
        _ => decode::<legacy::Account<legacy::User>>(key, bytes).map(Into::into),
    }
}

/// Marks a tagged cart record. A record of the first layout starts with the varint count of
/// its lines, at most `CART_LINES_MAX` (500): these two bytes would say 16,383.
const CART_LAYOUT_TAG: [u8; 2] = [0xFF, 0x7F];
/// The current layout: lines carry the price they were quoted.
const CART_LAYOUT_QUOTED: u8 = 1;

/// A cart record: the tag, the layout, then the postcard `Cart`. Records of the first layout
/// are still read ([`decode_cart`]).
pub fn encode_cart(cart: &Cart) -> Vec<u8> {
    let bytes = [CART_LAYOUT_TAG.as_slice(), &[CART_LAYOUT_QUOTED]].concat();
    postcard::to_extend(cart, bytes).expect("plain data always encodes")
}

/// Reads a cart record of any layout (the first has no quotes: its lines are quoted at the
/// cart's next change, and are `price_changed` until then).
pub fn decode_cart(key: &[u8], bytes: &[u8]) -> Result<Cart, StorageError> {
    match bytes.strip_prefix(CART_LAYOUT_TAG.as_slice()) {
        Some([CART_LAYOUT_QUOTED, rest @ ..]) => decode(key, rest),
        Some(_) => Err(StorageError::corrupt(key, "unknown cart layout")),
        None => decode::<legacy::Cart>(key, bytes).map(Into::into),
    }
}

/// The account's cart, empty when it has none.
pub fn load_cart(journal: &orderd_storage::Journal, a: &AccountId) -> Result<Cart, StorageError> {
    Ok(load_decoded_one(journal, &cart_key(a), decode_cart)?.unwrap_or_default())
}

/// Marks an order record of the stamped layouts: 0 can never start a record of the first
/// layout, whose first byte is the length (1..=64) of the order id.
const ORDER_LAYOUT_TAG: u8 = 0;
/// The layout of an open order: the record knows the audit records of its order's changes.
const ORDER_LAYOUT_STAMPED: u8 = 1;
/// The layout of a closed order: the stamped layout behind an [`OrderHead`], so that a starting
/// account reads its newest closed orders' Idempotency-Keys without decoding their lines.
const ORDER_LAYOUT_HEADED: u8 = 2;

/// An order record: a tag, the layout, for a closed order its [`OrderHead`], the postcard
/// `(Order, earlier)` where `earlier` are the audit seqs of the order's earlier changes, and
/// then the seq of this change's audit record, which the journal appends (written with
/// `Batch::put_stamped`, in the batch of that audit record). So the order's history needs no
/// index key per change.
pub fn encode_order(order: &Order, earlier: &[u64]) -> Vec<u8> {
    if order.state.is_closed() {
        let head = OrderHead::from(order);
        let bytes = vec![ORDER_LAYOUT_TAG, ORDER_LAYOUT_HEADED];
        postcard::to_extend(&(head, order, earlier), bytes).expect("plain data always encodes")
    } else {
        let bytes = vec![ORDER_LAYOUT_TAG, ORDER_LAYOUT_STAMPED];
        postcard::to_extend(&(order, earlier), bytes).expect("plain data always encodes")
    }
}

/// What a starting account needs of a closed order (see `account::IdempotencyMap`): who placed
/// it, with which Idempotency-Key. Written and read as the front of its record, by this one
/// definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OrderHead {
    pub id: OrderId,
    pub placed_by: UserId,
    pub idempotency: Option<PlacedWith>,
}

impl From<&Order> for OrderHead {
    fn from(o: &Order) -> OrderHead {
        OrderHead {
            id: o.id.clone(),
            placed_by: o.placed_by.clone(),
            idempotency: o.idempotency.clone(),
        }
    }
}

/// A stored order.
pub struct StoredOrder {
    pub order: Order,
    /// The audit seqs of its changes, oldest first. `None` for a record of the first layout:
    /// its changes' audit records are indexed by order id (`Journal::audit_for_subject`).
    pub audit_seqs: Option<Vec<u64>>,
}

impl StoredOrder {
    /// Whether the flush that made audit records up to `durable_seq` durable covers this
    /// record's write. A record written in the same batch as its change's audit record (every
    /// record of the current layout) is visible to reads as soon as sled applied the batch,
    /// before that flush; until then a crash could still undo it, so readers outside the
    /// account actor pass over it. A record of the first layout was written long ago.
    pub fn is_durable(&self, durable_seq: u64) -> bool {
        let last = self.audit_seqs.as_ref().and_then(|seqs| seqs.last());
        last.is_none_or(|seq| *seq <= durable_seq)
    }

    /// The order and the audit seqs of its changes, oldest first: for a record of the first
    /// layout, read from the journal's subject index, where earlier versions indexed them.
    pub fn with_audit_seqs(
        self,
        journal: &orderd_storage::Journal,
    ) -> Result<(Order, Vec<u64>), StorageError> {
        let seqs = match self.audit_seqs {
            Some(seqs) => seqs,
            None => journal
                .audit_for_subject(self.order.id.as_str().as_bytes(), usize::MAX)?
                .iter()
                .map(|r| r.seq)
                .collect(),
        };
        Ok((self.order, seqs))
    }
}

/// Reads an order record of any layout.
pub fn decode_order(key: &[u8], bytes: &[u8]) -> Result<StoredOrder, StorageError> {
    let rest = match bytes {
        [ORDER_LAYOUT_TAG, ORDER_LAYOUT_STAMPED, rest @ ..] => rest,
        [ORDER_LAYOUT_TAG, ORDER_LAYOUT_HEADED, rest @ ..] => take_head(key, rest)?.1,
        [ORDER_LAYOUT_TAG, ..] => return Err(StorageError::corrupt(key, "unknown order layout")),
        _ => {
            return Ok(StoredOrder {
                order: decode(key, bytes)?,
                audit_seqs: None,
            })
        }
    };
    let (rest, last) = orderd_storage::layout::split_stamp(rest)
        .ok_or_else(|| StorageError::corrupt(key, "order record without its audit stamp"))?;
    let (order, mut seqs): (Order, Vec<u64>) = decode(key, rest)?;
    if seqs.last().is_some_and(|s| *s >= last) {
        return Err(StorageError::corrupt(key, "audit seqs out of order"));
    }
    seqs.push(last);
    Ok(StoredOrder {
        order,
        audit_seqs: Some(seqs),
    })
}

/// The [`OrderHead`] of an order record of any layout: read from the front of a closed order's
/// record, decoded from the whole order for the earlier layouts.
pub fn decode_order_head(key: &[u8], bytes: &[u8]) -> Result<OrderHead, StorageError> {
    match bytes {
        [ORDER_LAYOUT_TAG, ORDER_LAYOUT_HEADED, rest @ ..] => Ok(take_head(key, rest)?.0),
        _ => Ok(OrderHead::from(&decode_order(key, bytes)?.order)),
    }
}

/// Splits a headed record (after its layout bytes) into its head and the rest.
fn take_head<'b>(key: &[u8], bytes: &'b [u8]) -> Result<(OrderHead, &'b [u8]), StorageError> {
    postcard::take_from_bytes(bytes).map_err(|e| StorageError::corrupt(key, e.to_string()))
}

/// Every order record under `prefix`.
pub fn load_orders(
    journal: &orderd_storage::Journal,
    prefix: &str,
) -> Result<Vec<StoredOrder>, StorageError> {
    load_decoded(journal, prefix, decode_order)
}

/// The stored order `o` of account `a`, open or closed. Blocking (reads sled).
pub fn load_order(
    journal: &orderd_storage::Journal,
    a: &AccountId,
    o: &OrderId,
) -> Result<Option<StoredOrder>, StorageError> {
    for key in [order_key(a, o), closed_key(a, o)] {
        if let Some(order) = load_decoded_one(journal, &key, decode_order)? {
            return Ok(Some(order));
        }
    }
    Ok(None)
}

/// Up to `max` closed orders of account `a` placed before order `before` (all when `None`),
/// newest first (order ids are time-ordered). Blocking (reads sled).
pub fn closed_orders_before(
    journal: &orderd_storage::Journal,
    a: &AccountId,
    before: Option<&OrderId>,
    max: usize,
) -> Result<Vec<StoredOrder>, StorageError> {
    let before = before.map(|o| o.as_str().as_bytes());
    journal.scan_prefix_rev(closed_prefix(a).as_bytes(), before, max, decode_order)
}

/// The heads of the newest `max` closed orders of account `a`, newest first. Blocking.
pub fn newest_closed_heads(
    journal: &orderd_storage::Journal,
    a: &AccountId,
    max: usize,
) -> Result<Vec<OrderHead>, StorageError> {
    journal.scan_prefix_rev(closed_prefix(a).as_bytes(), None, max, decode_order_head)
}

/// The ship-tos of account `a` that an order has shipped to. Blocking (reads sled).
pub fn shipped_ship_tos(
    journal: &orderd_storage::Journal,
    a: &AccountId,
) -> Result<Vec<ShipToId>, StorageError> {
    let prefix = shipped_prefix(a);
    journal
        .scan_prefix(prefix.as_bytes())?
        .into_iter()
        .map(|(k, _)| {
            let id = std::str::from_utf8(&k[prefix.len()..]).ok();
            id.and_then(|id| ShipToId::parse(id).ok())
                .ok_or_else(|| StorageError::corrupt(&k, "not a ship-to id"))
        })
        .collect()
}

/// Every account record.
pub fn load_accounts(journal: &orderd_storage::Journal) -> Result<Vec<Account>, StorageError> {
    load_decoded(journal, ACCOUNT, decode_account)
}

/// One account record, if stored.
pub fn load_account(
    journal: &orderd_storage::Journal,
    id: &AccountId,
) -> Result<Option<Account>, StorageError> {
    load_decoded_one(journal, &account_key(id), decode_account)
}

/// The earlier layouts: of accounts, the first, before users had assigned ship-tos, and the
/// second, before the account remembered removed users; of carts, the first, before quotes.
mod legacy {
    use orderd_domain::account::{ApprovalRules, Role, ShipTo};
    use orderd_domain::ids::{AccountId, Segment, Sku, UserId, WarehouseId};
    use orderd_domain::money::{Currency, Money};
    use serde::Deserialize;
    use std::collections::BTreeSet;

    /// A user of layout 1 (no assigned ship-tos).
    #[derive(Deserialize)]
    pub struct User {
        id: UserId,
        name: String,
        roles: BTreeSet<Role>,
        spending_limit: Option<Money>,
    }

    impl From<User> for orderd_domain::account::User {
        fn from(u: User) -> Self {
            orderd_domain::account::User {
                id: u.id,
                name: u.name,
                roles: u.roles,
                spending_limit: u.spending_limit,
                ship_tos: BTreeSet::new(),
            }
        }
    }

    /// An account of layouts 1 (`U` = [`User`]) and 2 (`U` = today's user): no removed users.
    #[derive(Deserialize)]
    pub struct Account<U> {
        id: AccountId,
        name: String,
        segment: Segment,
        currency: Currency,
        credit_limit: Money,
        open_receivables: Money,
        payment_terms: String,
        ship_tos: Vec<ShipTo>,
        users: Vec<U>,
        rules: ApprovalRules,
    }

    impl<U: Into<orderd_domain::account::User>> From<Account<U>> for orderd_domain::account::Account {
        fn from(a: Account<U>) -> Self {
            orderd_domain::account::Account {
                id: a.id,
                name: a.name,
                segment: a.segment,
                currency: a.currency,
                credit_limit: a.credit_limit,
                open_receivables: a.open_receivables,
                payment_terms: a.payment_terms,
                ship_tos: a.ship_tos,
                users: a.users.into_iter().map(Into::into).collect(),
                rules: a.rules,
                removed_users: BTreeSet::new(),
            }
        }
    }
    /// A cart line of layout 1: no quote.
    #[derive(Deserialize)]
    pub struct CartLine {
        id: u32,
        sku: Sku,
        qty: u32,
        note: Option<String>,
        warehouse: Option<WarehouseId>,
    }

    #[derive(Deserialize)]
    pub struct Cart {
        lines: Vec<CartLine>,
        next_id: u32,
    }

    impl From<Cart> for orderd_domain::cart::Cart {
        fn from(c: Cart) -> Self {
            let lines = c.lines.into_iter().map(|l| orderd_domain::cart::CartLine {
                id: l.id,
                sku: l.sku,
                qty: l.qty,
                note: l.note,
                warehouse: l.warehouse,
                quote: None,
            });
            orderd_domain::cart::Cart {
                lines: lines.collect(),
                last_id: c.next_id,
            }
        }
    }
}

/// Decodes every record under `prefix`.
pub fn load_all<T: DeserializeOwned>(
    journal: &orderd_storage::Journal,
    prefix: &str,
) -> Result<Vec<T>, StorageError> {
    load_decoded(journal, prefix, decode)
}

/// Every record under `prefix`, each decoded by `decode` (given its key and value).
fn load_decoded<T>(
    journal: &orderd_storage::Journal,
    prefix: &str,
    decode: impl Fn(&[u8], &[u8]) -> Result<T, StorageError>,
) -> Result<Vec<T>, StorageError> {
    journal
        .scan_prefix(prefix.as_bytes())?
        .into_iter()
        .map(|(k, v)| decode(&k, &v))
        .collect()
}

pub fn load_one<T: DeserializeOwned>(
    journal: &orderd_storage::Journal,
    key: &str,
) -> Result<Option<T>, StorageError> {
    load_decoded_one(journal, key, decode)
}

/// The record under `key`, if stored, decoded by `decode` (given its key and value).
fn load_decoded_one<T>(
    journal: &orderd_storage::Journal,
    key: &str,
    decode: impl Fn(&[u8], &[u8]) -> Result<T, StorageError>,
) -> Result<Option<T>, StorageError> {
    journal
        .get(key.as_bytes())?
        .map(|v| decode(key.as_bytes(), &v))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_domain::account::{ApprovalRules, Role, ShipTo, User};
    use orderd_domain::geo::GeoPoint;
    use orderd_domain::ids::{Segment, ShipToId, UserId};
    use orderd_domain::money::{Currency, Money};
    use std::collections::BTreeSet;

    // An account stored in the first layout (users without assigned ship-tos) still reads,
    // with no assignment; one of the second layout (no removed users) reads with none; the
    // current layout round-trips with both.
    #[test]
    fn account_records_of_every_layout_read() {
        #[derive(serde::Serialize)]
        struct UserV1<'a>(&'a UserId, &'a str, &'a BTreeSet<Role>, Option<Money>);
        /// Layouts 1 and 2 differ only in their users (`U`).
        #[derive(serde::Serialize)]
        #[allow(clippy::type_complexity)]
        struct OldAccount<'a, U>(
            &'a AccountId,
            &'a str,
            &'a Segment,
            Currency,
            Money,
            Money,
            &'a str,
            &'a [ShipTo],
            U,
            &'a ApprovalRules,
        );
        fn old_layout<U: serde::Serialize>(a: &Account, users: U) -> Vec<u8> {
            encode(&OldAccount(
                &a.id,
                &a.name,
                &a.segment,
                a.currency,
                a.credit_limit,
                a.open_receivables,
                &a.payment_terms,
                &a.ship_tos,
                users,
                &a.rules,
            ))
        }
        let eur = Currency::parse("EUR").unwrap();
        let money = |v: &str| Money::parse(v, eur, 2).unwrap();
        let hq = ShipToId::parse("HQ").unwrap();
        let mut account = Account {
            id: AccountId::parse("ACME").unwrap(),
            name: "Acme".into(),
            segment: Segment::parse("retail").unwrap(),
            currency: eur,
            credit_limit: money("100.00"),
            open_receivables: money("0.00"),
            payment_terms: "NET30".into(),
            ship_tos: vec![ShipTo {
                id: hq.clone(),
                address: "Berlin".into(),
                location: GeoPoint::new(52.5, 13.4).unwrap(),
            }],
            users: vec![User {
                id: UserId::parse("ann").unwrap(),
                name: "Ann".into(),
                roles: BTreeSet::from([Role::Buyer]),
                spending_limit: Some(money("5.00")),
                ship_tos: BTreeSet::new(),
            }],
            rules: ApprovalRules::default(),
            removed_users: BTreeSet::new(),
        };
        let u = &account.users[0];
        let old = old_layout(
            &account,
            vec![UserV1(&u.id, &u.name, &u.roles, u.spending_limit)],
        );
        assert_eq!(decode_account(b"k", &old).unwrap(), account);
        account.users[0].ship_tos.insert(hq);
        let mut v2 = vec![0, 2];
        v2.extend(old_layout(&account, &account.users));
        assert_eq!(decode_account(b"k", &v2).unwrap(), account);
        account.removed_users.insert(UserId::parse("gone").unwrap());
        let new = encode_account(&account);
        assert_eq!(decode_account(b"k", &new).unwrap(), account);
        assert!(decode_account(b"k", &[0, 9, 1]).is_err());
    }

    // A cart of the first layout (no quotes) reads with its lines unquoted, also an empty one
    // and ones of more than 127 lines (a two-byte count; 255 and 383 lines start with 0xFF,
    // like the tag); the current layout round-trips with its quotes; an unknown layout is
    // refused.
    #[test]
    fn cart_records_of_every_layout_read() {
        use orderd_domain::cart::CartLine;
        use orderd_domain::pricing::{PriceSource, Priced};
        #[derive(serde::Serialize)]
        struct LineV1<'a>(
            u32,
            &'a Sku,
            u32,
            &'a Option<String>,
            &'a Option<WarehouseId>,
        );
        let v1 = |c: &Cart| {
            let lines: Vec<_> = c
                .lines
                .iter()
                .map(|l| LineV1(l.id, &l.sku, l.qty, &l.note, &l.warehouse))
                .collect();
            encode(&(lines, c.last_id))
        };
        let line = |id: u32| CartLine {
            id,
            sku: Sku::parse(&format!("S{id}")).unwrap(),
            qty: id,
            note: id.is_multiple_of(2).then(|| "gate 4".into()),
            warehouse: id
                .is_multiple_of(3)
                .then(|| WarehouseId::parse("BER").unwrap()),
            quote: None,
        };
        for n in [0, 1, 200, 255, 383, 500] {
            let cart = Cart {
                lines: (1..=n).map(line).collect(),
                last_id: n + 7,
            };
            assert_eq!(decode_cart(b"k", &v1(&cart)).unwrap(), cart, "{n} lines");
        }
        let mut cart = Cart {
            lines: vec![line(1), line(2)],
            last_id: 2,
        };
        cart.lines[1].quote = Some(Priced {
            unit_price: Money::parse("9.50", Currency::parse("EUR").unwrap(), 4).unwrap(),
            source: PriceSource {
                level: "contract".into(),
                tier_min_qty: 1,
                valid_from: None,
                valid_to: None,
            },
        });
        assert_eq!(decode_cart(b"k", &encode_cart(&cart)).unwrap(), cart);
        assert!(decode_cart(b"k", &[0xFF, 0x7F, 9, 0, 0]).is_err());
    }

    // A closed order's record leads with its head, which reads alone; the whole record reads
    // back with its audit seqs. An open order keeps the stamped layout, and the head of a
    // record of any layout still reads (from the whole order).
    #[test]
    fn closed_order_records_lead_with_their_head() {
        use orderd_domain::ids::{IdempotencyKey, ShipToId};
        use orderd_domain::money::{Currency, Money};
        use orderd_domain::order::{Channel, OrderState, RequestDigest};
        let stamped = |order: &Order| {
            let mut bytes = encode_order(order, &[3, 5]);
            bytes.extend_from_slice(&9u64.to_be_bytes());
            bytes
        };
        let mut order = Order {
            id: OrderId::parse("o-1").unwrap(),
            account: AccountId::parse("ACME").unwrap(),
            state: OrderState::Confirmed,
            channel: Channel::Api,
            placed_by: UserId::parse("buyer").unwrap(),
            ship_to: ShipToId::parse("MUNICH").unwrap(),
            delivery_speed: None,
            customer_po: Some("PO-1".into()),
            allow_split: false,
            lines: vec![],
            total: Money::zero(Currency::parse("EUR").unwrap()),
            approval_reasons: vec![],
            created_at: "2026-11-24T10:00:00Z".into(),
            updated_at: "2026-11-24T10:00:00Z".into(),
            version: 3,
            idempotency: Some(PlacedWith {
                key: IdempotencyKey::parse("k-1").unwrap(),
                request_digest: RequestDigest([7; 32]),
            }),
        };
        let head = OrderHead::from(&order);
        let open = stamped(&order);
        assert_eq!(open[..2], [ORDER_LAYOUT_TAG, ORDER_LAYOUT_STAMPED]);
        assert_eq!(decode_order_head(b"k", &open).unwrap(), head);

        order.state = OrderState::Cancelled;
        let closed = stamped(&order);
        assert_eq!(closed[..2], [ORDER_LAYOUT_TAG, ORDER_LAYOUT_HEADED]);
        assert_eq!(decode_order_head(b"k", &closed).unwrap(), head);
        // The head alone: the record cut right after it still gives it.
        let head_len = 2 + encode(&head).len();
        assert_eq!(decode_order_head(b"k", &closed[..head_len]).unwrap(), head);
        let read = decode_order(b"k", &closed).unwrap();
        assert_eq!(
            (read.order, read.audit_seqs),
            (order.clone(), Some(vec![3, 5, 9]))
        );
        assert!(decode_order(b"k", &closed[..head_len]).is_err());

        // A closed order written before closed records led with their head.
        let mut earlier = vec![ORDER_LAYOUT_TAG, ORDER_LAYOUT_STAMPED];
        earlier.extend(encode(&(&order, &[3u64, 5][..])));
        earlier.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(decode_order_head(b"k", &earlier).unwrap(), head);
        assert_eq!(decode_order(b"k", &earlier).unwrap().order, order);
        assert!(decode_order_head(b"k", &[ORDER_LAYOUT_TAG, 9, 1]).is_err());
    }
}
