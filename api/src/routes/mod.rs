//! One module per resource. Every handler states the roles it needs in its first line.

pub mod admin;
pub mod cart;
pub mod catalog;
pub mod credit;
pub mod dev;
pub mod health;
pub mod orders;
pub mod portal;
pub mod users;

use orderd_domain::account::Role;

/// Roles that act inside a customer account.
pub const ACCOUNT_ROLES: &[Role] = &[Role::Buyer, Role::Approver, Role::AccountAdmin];
