//! Business outcomes that refuse a request. They travel back in replies as values; they are
//! not failures of the system.

use crate::cart::CartError;
use crate::order::TransitionError;
use crate::validation::Problem;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The order (or cart) has problems; every one is listed.
    #[error("the order has {} problem(s)", .0.len())]
    Invalid(Vec<Problem>),
    /// No such thing for this caller (also what another account's ids get).
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The caller's role or limits do not allow this.
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// The idempotency key was used before with a different request.
    #[error("idempotency key {0} was already used with a different request")]
    IdempotencyMismatch(String),
    #[error(transparent)]
    Cart(#[from] CartError),
    /// A request that is well-formed but cannot apply now (e.g. nothing to ship here).
    #[error("{0}")]
    Conflict(String),
    /// The order is no longer at the version the caller saw (HTTP `If-Match`): nothing changed.
    #[error("{0}")]
    Stale(String),
}
