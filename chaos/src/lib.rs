//! orderd-chaos: fault injection against the real `orderd` binary and the checks of what must
//! survive it. It starts the daemon on a data directory, drives it with concurrent load
//! clients, kills it with SIGKILL at seeded random moments, restarts it, and checks that every
//! acknowledged order is still there as acknowledged (DESIGN invariant 1), that in-flight
//! requests were applied wholly or not at all, and, with the daemon stopped, that `orderd
//! check` (invariants 2, 3, 5) and `orderd audit verify` pass.
//!
//! It talks to orderd only as a client does (HTTP, signals, the CLI): it must not depend on the
//! daemon, api or actors crates, so what it checks is the behaviour, not the implementation.
//! The daemon's black-box tests (`daemon/tests/it`) and the `orderd-chaos` binary both use it.

pub mod client;
pub mod ledger;
pub mod load;
pub mod process;
pub mod scenario;

pub use client::{Api, Reply};
pub use process::{Daemon, DaemonSpec, ToolOutput};
pub use scenario::{run, seed_from_env, Harness, Report, RoundEnd, Scenario, SEED_ENV};
