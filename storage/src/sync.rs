//! The synchronisation primitives of the hand-written commit queue: std in production, loom's
//! model-checked doubles under `--cfg loom` (see the loom test in `commit_queue.rs`).

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
