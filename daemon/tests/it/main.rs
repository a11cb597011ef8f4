//! Black-box tests of the built `orderd` binary: it is started as a process on a temporary
//! data directory and driven over HTTP, signals and its CLI, like an operator would.
//!
//! - `crash`: SIGKILL under concurrent load; every acknowledged order survives (invariant 1).
//! - `audit`: `orderd audit verify` finds each kind of tampering at the right seq (invariant
//!   5); the order history shows who did what, from where, when.
//! - `lifecycle`: graceful shutdown, configuration errors, tenancy (invariant 7), the approval
//!   flow with credit, and 429 when an account is over its in-flight limit.
//! - `events`: the server-sent-event stream, per account, resuming with Last-Event-ID.
//! - `grants`: the roles account admins store for users narrow their tokens' roles; removed
//!   users are refused; both hold after a restart.
//! - `nats`: events on NATS JetStream, checked by nats-py; a NATS outage and a crash during it
//!   lose nothing.
//! - `oidc`: tokens of a real OpenID Provider (`provider`): accepted, forged ones refused, key
//!   rotation and JWKS outages, issuers bound to their accounts, the role x route and
//!   cross-account matrices, rate limits, browser sign-in with sessions.
//! - `webhooks`: signed deliveries verified by the Standard Webhooks library, retries, 410,
//!   dead letters and replay, secret rotation, a crash, tenancy.
//! - `dashboard`: the operators' live dashboard in headless Chromium under load; the metrics
//!   listener; the per-order spans in the JSON log.
//! - `systemd`: the notify protocol (ready, watchdog, stopping), the unit file as
//!   systemd-analyze reads it, and `ops/setup` installing what the unit runs.

mod audit;
mod crash;
mod dashboard;
mod env;
mod events;
mod grants;
mod lifecycle;
mod nats;
mod oidc;
mod provider;
mod systemd;
mod webhooks;
