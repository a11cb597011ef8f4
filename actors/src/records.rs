//! How domain state is laid out as journal records. Values are postcard (compact binary):
//! each insert costs several microseconds, so an order is one record, not one per line.
//!
//! | key                         | value                   |
//! |-----------------------------|-------------------------|
//! | `acct/<account>`            | `Account`               |
//! | `cart/<account>`            | `Cart`                  |
//! | `ord/<account>/<order>`     | `Order` (with its Idempotency-Key, if any) |
//! | `wh/<warehouse>`            | `Warehouse`             |
//! | `stock/<warehouse>/<sku>`   | on hand, `u64`          |
//! | `cat/<sku>`                 | `CatalogItem`           |
//! | `price/<n>`                 | `PriceEntry`            |
//! | `meta/<name>`               | daemon metadata         |

use orderd_domain::ids::{AccountId, OrderId, Sku, WarehouseId};
use orderd_storage::StorageError;
use serde::{de::DeserializeOwned, Serialize};

pub const ACCOUNT: &str = "acct/";
pub const CART: &str = "cart/";
pub const ORDER: &str = "ord/";
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
    postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Decodes every record under `prefix`.
pub fn load_all<T: DeserializeOwned>(
    journal: &orderd_storage::Journal,
    prefix: &str,
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
    journal
        .get(key.as_bytes())?
        .map(|v| decode(key.as_bytes(), &v))
        .transpose()
}
