//! One module per resource. Every handler states the roles it needs in its first line.

pub mod admin;
pub mod cart;
pub mod catalog;
pub mod credit;
pub mod dev;
pub mod events;
pub mod health;
pub mod ops;
pub mod orders;
pub mod portal;
pub mod users;
pub mod webhooks;

use orderd_domain::account::Role;

/// Roles that act inside a customer account.
pub const ACCOUNT_ROLES: &[Role] = &[Role::Buyer, Role::Approver, Role::AccountAdmin];
