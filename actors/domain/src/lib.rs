//! orderd's business rules as plain code: money, catalog, contract pricing, accounts, stock,
//! orders and their state machine, validation, warehouse choice, credit and approval rules, and
//! the named invariants.
//!
//! Must not depend on tokio, ractor, sled, axum or NATS: only serde, rust_decimal and thiserror,
//! so that every rule here is an ordinary unit test. The clock comes in as a `Date` argument.

pub mod account;
pub mod allocation;
pub mod approval;
pub mod cart;
pub mod catalog;
pub mod credit;
pub mod date;
pub mod geo;
pub mod grant;
pub mod ids;
pub mod invariants;
pub mod money;
pub mod order;
pub mod pricing;
pub mod rejection;
pub mod validation;
pub mod warehouse;

#[cfg(test)]
mod tests;

pub use rust_decimal::Decimal;
