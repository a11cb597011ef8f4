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

use crate::ApiState;
use orderd_domain::account::Role;
use orderd_domain::ids::WarehouseId;

/// Roles that act inside a customer account.
pub const ACCOUNT_ROLES: &[Role] = &[Role::Buyer, Role::Approver, Role::AccountAdmin];

/// The warehouse `id` names, or why it names none (malformed, or no such warehouse): the
/// message of the request's `unknown_warehouse` problem.
pub fn known_warehouse(s: &ApiState, id: &str) -> Result<WarehouseId, String> {
    let w = WarehouseId::parse(id).map_err(|e| e.to_string())?;
    if s.engine.warehouse(&w).is_none() {
        return Err(format!("warehouse {w} does not exist"));
    }
    Ok(w)
}
