//! Identifiers parsed once at the edge. Code further in never re-validates them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A hash map keyed by ids, hashed with foldhash instead of std's SipHash. An order looks up
/// each of its SKUs several times (catalog, prices, stock), and SipHash was most of each
/// lookup. foldhash is seeded per process. It does not promise resistance to crafted collisions,
/// so these maps are keyed only by what operators import (SKUs) or orderd assigns (order ids),
/// never by what a client chooses (idempotency keys stay on SipHash).
pub type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Longest identifier we accept anywhere (SKU, account, user, warehouse, ship-to, key).
pub const ID_LEN_MAX: usize = 64;

/// How much of a value from a request an error message repeats: enough to recognise it, never
/// a whole oversized path segment, cursor or identifier.
pub const ECHO_CHARS_MAX: usize = 80;

/// `s` as an error message repeats it: its first [`ECHO_CHARS_MAX`] characters, `…` when cut.
pub fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be 1 to {ID_LEN_MAX} characters of A-Z a-z 0-9 . _ - : (got {got:?})")]
pub struct IdError {
    pub kind: &'static str,
    pub got: String,
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= ID_LEN_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        // Written as the plain string, without the copy `into = "String"` would make.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let s = s.trim();
                if valid_id(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError { kind: $kind, got: echo(s) })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A stock keeping unit code from the master catalog.
    Sku, "sku");
id_type!(
    /// A customer account (one business customer).
    AccountId, "account id");
id_type!(
    /// A user inside a customer account (the token's subject).
    UserId, "user id");
id_type!(
    /// A warehouse.
    WarehouseId, "warehouse id");
id_type!(
    /// A ship-to location of an account.
    ShipToId, "ship-to id");
id_type!(
    /// A customer segment; price lists and catalog visibility hang off it.
    Segment, "segment");
id_type!(
    /// An order id, assigned by orderd.
    OrderId, "order id");
id_type!(
    /// The caller's `Idempotency-Key`.
    IdempotencyKey, "idempotency key");

#[cfg(test)]
mod tests {
    use super::*;

    // Ids accept the documented alphabet and refuse everything else without panicking.
    #[test]
    fn ids_parse_at_the_edge() {
        assert_eq!(Sku::parse(" AB-12.x ").unwrap().as_str(), "AB-12.x");
        for bad in ["", "a b", "ü", "x/y", &"a".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let e = AccountId::parse("a b").unwrap_err();
        assert_eq!(e.kind, "account id");
        assert_eq!(e.got, "a b");
        // A long refused value is repeated cut, and says so.
        let e = Sku::parse(&"ü".repeat(200)).unwrap_err();
        assert_eq!(e.got, format!("{}…", "ü".repeat(ECHO_CHARS_MAX)));
        let json: Result<Sku, _> = serde_json::from_str("\"bad sku\"");
        assert!(json.is_err());
    }
}
