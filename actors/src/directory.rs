//! AccountDirectory: finds or starts the actor of an account, supervises it, forgets it when it
//! stops, and bounds in-flight work per account and in total. ractor mailboxes are unbounded,
//! so the bound sits here, at the edge: above it callers get `Busy` at once instead of queueing.
//! (The API also bounds state-changing requests inside the daemon: [`crate::admission`].)

use crate::account::{AccountActor, AccountArgs, AccountMsg, AccountUpdate, Reply};
use crate::audit::Caller;
use crate::catalog::CatalogStore;
use crate::grants::Grants;
use crate::{call, ActorError, BusyScope, Limits};
use orderd_domain::account::Account;
use orderd_domain::ids::AccountId;
use orderd_domain::rejection::Rejection;
use orderd_storage::Journal;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;
use tracing::Instrument;

struct Slot {
    actor: OnceCell<ActorRef<AccountMsg>>,
    inflight: AtomicUsize,
}

type Slots = Arc<Mutex<HashMap<AccountId, Arc<Slot>>>>;

struct Inner {
    /// Shared with the supervisor, which forgets slots of stopped actors.
    slots: Slots,
    known: Mutex<BTreeSet<AccountId>>,
    inflight_total: AtomicUsize,
    supervisor: ActorRef<()>,
    journal: Journal,
    catalog: CatalogStore,
    grants: Arc<Grants>,
    limits: Limits,
    create_lock: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub struct Directory(Arc<Inner>);

/// Holds one in-flight slot of an account and of the total; released on drop.
struct Permit {
    slot: Arc<Slot>,
    dir: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.slot.inflight.fetch_sub(1, Ordering::AcqRel);
        self.dir.inflight_total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Directory {
    pub async fn start(
        journal: Journal,
        catalog: CatalogStore,
        limits: Limits,
        known: BTreeSet<AccountId>,
        grants: Arc<Grants>,
    ) -> Result<Directory, ActorError> {
        let slots: Slots = Arc::default();
        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor {
                slots: slots.clone(),
            },
            (),
        )
        .await
        .map_err(|e| ActorError::Start(e.to_string()))?;
        let inner = Inner {
            slots,
            known: Mutex::new(known),
            inflight_total: AtomicUsize::new(0),
            supervisor,
            journal,
            catalog,
            grants,
            limits,
            create_lock: tokio::sync::Mutex::new(()),
        };
        Ok(Directory(Arc::new(inner)))
    }

    pub fn exists(&self, account: &AccountId) -> bool {
        self.0.known.lock().expect("poisoned").contains(account)
    }

    pub fn accounts(&self) -> Vec<AccountId> {
        self.0
            .known
            .lock()
            .expect("poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// Accounts with a running actor (for metrics and tests).
    pub fn running(&self) -> usize {
        self.0
            .slots
            .lock()
            .expect("poisoned")
            .values()
            .filter(|s| s.actor.initialized())
            .count()
    }

    pub fn inflight(&self) -> usize {
        self.0.inflight_total.load(Ordering::Acquire)
    }

    /// The most requests in flight for any one account right now (a mailbox depth proxy: ractor
    /// mailboxes have no length, and every request to an account passes its in-flight count).
    /// Walks every started account, so it is for scrapes, not for the request path.
    pub fn inflight_account_max(&self) -> usize {
        self.0
            .slots
            .lock()
            .expect("poisoned")
            .values()
            .map(|s| s.inflight.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// Sends a request to the account's actor, starting it if needed. `NotFound` when the
    /// account does not exist; `Busy` above the in-flight limits.
    pub async fn call<T: Send + 'static>(
        &self,
        account: &AccountId,
        build: impl FnOnce(RpcReplyPort<T>) -> AccountMsg,
    ) -> Result<T, ActorError> {
        if !self.exists(account) {
            return Err(ActorError::NoSuchAccount);
        }
        let permit = self.permit(account)?;
        let r = self.call_with(&permit, account, build).await;
        drop(permit);
        r
    }

    /// [`call`](Self::call) for a request answered with a [`Reply`]: the actor's failure and
    /// the call's come as one error.
    pub async fn ask<T: Send + 'static>(
        &self,
        account: &AccountId,
        build: impl FnOnce(Reply<T>) -> AccountMsg,
    ) -> Result<Result<T, Rejection>, ActorError> {
        self.call(account, build).await?
    }

    /// Like [`Directory::call`], then `read(answer)` on the blocking pool: a journal read
    /// outside the actor, so that it does not hold up the account's other requests. The read
    /// still counts in the account's and the daemon's in-flight bounds until it ends, so an
    /// account cannot run more reads at once than requests; its caller waits at most the call
    /// timeout for it.
    pub async fn call_then_read<T: Send + 'static, U: Send + 'static>(
        &self,
        account: &AccountId,
        build: impl FnOnce(RpcReplyPort<T>) -> AccountMsg,
        read: impl FnOnce(T) -> Result<U, ActorError> + Send + 'static,
    ) -> Result<U, ActorError> {
        if !self.exists(account) {
            return Err(ActorError::NoSuchAccount);
        }
        let permit = self.permit(account)?;
        let answer = self.call_with(&permit, account, build).await?;
        let reading = tokio::task::spawn_blocking(move || {
            let _counted = permit;
            read(answer)
        });
        let timeout = Duration::from_millis(self.0.limits.call_timeout_ms);
        match tokio::time::timeout(timeout, reading).await {
            Ok(read) => read.map_err(|e| ActorError::Invariant(format!("a journal read: {e}")))?,
            Err(_) => Err(ActorError::Timeout),
        }
    }

    /// Calls the account's actor (starting it if needed) under `permit`.
    async fn call_with<T: Send + 'static>(
        &self,
        permit: &Permit,
        account: &AccountId,
        build: impl FnOnce(RpcReplyPort<T>) -> AccountMsg,
    ) -> Result<T, ActorError> {
        let actor = permit
            .slot
            .actor
            .get_or_try_init(|| self.spawn(account.clone()))
            .await?
            .clone();
        let timeout = Duration::from_millis(self.0.limits.call_timeout_ms);
        call(&actor, timeout, build).await
    }

    /// After a failed commit nothing reaches an account: one rebuilt now would read the failed
    /// group from sled's memory as if it were durable (see `Journal::failed`).
    fn refuse_after_a_failed_commit(&self) -> Result<(), ActorError> {
        if self.0.journal.has_failed() {
            return Err(ActorError::Storage(orderd_storage::StorageError::Closed));
        }
        Ok(())
    }

    fn permit(&self, account: &AccountId) -> Result<Permit, ActorError> {
        self.refuse_after_a_failed_commit()?;
        let limits = &self.0.limits;
        if self.0.inflight_total.fetch_add(1, Ordering::AcqRel) >= limits.inflight_total_max {
            self.0.inflight_total.fetch_sub(1, Ordering::AcqRel);
            return Err(ActorError::Busy(BusyScope::Daemon));
        }
        let slot = {
            let mut slots = self.0.slots.lock().expect("poisoned");
            let slot = slots.entry(account.clone()).or_insert_with(|| {
                Arc::new(Slot {
                    actor: OnceCell::new(),
                    inflight: AtomicUsize::new(0),
                })
            });
            // Counted under the map lock, so an idle actor cannot retire in between.
            slot.inflight.fetch_add(1, Ordering::AcqRel);
            slot.clone()
        };
        let permit = Permit {
            slot,
            dir: self.0.clone(),
        };
        if permit.slot.inflight.load(Ordering::Acquire) > limits.account_inflight_max {
            return Err(ActorError::Busy(BusyScope::Account));
        }
        Ok(permit)
    }

    async fn spawn(&self, id: AccountId) -> Result<ActorRef<AccountMsg>, ActorError> {
        // Checked again here: a permit taken just before a failure must not rebuild an account.
        self.refuse_after_a_failed_commit()?;
        let weak = Arc::downgrade(&self.0);
        let retire_id = id.clone();
        let args = AccountArgs {
            id: id.clone(),
            journal: self.0.journal.clone(),
            catalog: self.0.catalog.clone(),
            grants: self.0.grants.clone(),
            limits: self.0.limits.clone(),
            retire: Box::new(move || weak.upgrade().is_some_and(|d| retire(&d, &retire_id))),
        };
        // Outside the caller's span: the actor outlives the request that happened to start it,
        // and its own span must not claim to be part of that order.
        let (actor, _) =
            Actor::spawn_linked(None, AccountActor, args, self.0.supervisor.get_cell())
                .instrument(tracing::Span::none())
                .await
                .map_err(|e| ActorError::Start(format!("account {id}: {e}")))?;
        Ok(actor)
    }

    /// Creates an account, or merges it into the existing one with `merge(current, account)`
    /// in its actor (the accounts import, which decides what an existing account keeps).
    pub async fn import_account(
        &self,
        caller: &Caller,
        account: Account,
        merge: impl FnOnce(&mut Account, Account) + Send + 'static,
    ) -> Result<Result<Account, Rejection>, ActorError> {
        self.create_or_update(caller, account, |account| {
            Box::new(move |current: &mut Account| merge(current, account))
        })
        .await
    }

    /// Creates or replaces an account's master data.
    pub async fn put_account(
        &self,
        caller: &Caller,
        account: Account,
    ) -> Result<Result<Account, Rejection>, ActorError> {
        self.create_or_update(caller, account, |account| {
            Box::new(move |current: &mut Account| *current = account)
        })
        .await
    }

    /// Changes an existing account's master data with `update`, in its actor.
    pub async fn update_account(
        &self,
        caller: &Caller,
        id: &AccountId,
        update: AccountUpdate,
    ) -> Result<Result<Account, Rejection>, ActorError> {
        let caller = caller.clone();
        self.ask(id, |reply| AccountMsg::UpdateAccount {
            caller,
            update,
            reply,
        })
        .await
    }

    /// Creates `account` when it does not exist, else applies `update(account)` to it. One at
    /// a time, so that two writers never both create it.
    async fn create_or_update(
        &self,
        caller: &Caller,
        account: Account,
        update: impl FnOnce(Account) -> AccountUpdate,
    ) -> Result<Result<Account, Rejection>, ActorError> {
        let _one_at_a_time = self.0.create_lock.lock().await;
        if !self.exists(&account.id) {
            return self.create(caller, account).await;
        }
        let id = account.id.clone();
        self.update_account(caller, &id, update(account)).await
    }

    /// Stores a new account; the caller holds `create_lock`, and the account does not exist.
    async fn create(
        &self,
        caller: &Caller,
        account: Account,
    ) -> Result<Result<Account, Rejection>, ActorError> {
        let problems = crate::ordering::account_problems(&account, None);
        if !problems.is_empty() {
            return Ok(Err(Rejection::Invalid(problems)));
        }
        self.0
            .journal
            .submit(crate::ordering::create_account_batch(caller, &account))
            .await?;
        self.0.grants.publish(&account);
        self.0
            .known
            .lock()
            .expect("poisoned")
            .insert(account.id.clone());
        Ok(Ok(account))
    }

    /// Stops every account actor (shutdown).
    pub fn stop_all(&self) {
        self.0.supervisor.stop_children(None);
        self.0.supervisor.stop(None);
    }
}

/// The directory forgets an idle account only when nothing is in flight for it.
fn retire(dir: &Inner, id: &AccountId) -> bool {
    let mut slots = dir.slots.lock().expect("poisoned");
    match slots.get(id) {
        Some(s) if s.inflight.load(Ordering::Acquire) == 0 => {
            slots.remove(id);
            true
        }
        _ => false,
    }
}

/// Supervises account actors: when one stops or fails, its slot is forgotten so the next
/// message rebuilds it from the journal.
struct Supervisor {
    slots: Slots,
}

impl Actor for Supervisor {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _me: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<()>,
        evt: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure): (ActorCell, Option<String>) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        self.slots
            .lock()
            .expect("poisoned")
            .retain(|_, s| s.actor.get().is_none_or(|a| a.get_id() != cell.get_id()));
        if let Some(err) = failure {
            tracing::error!(actor = %cell.get_id(), error = %err, "account actor failed; it is rebuilt from the journal on its next message");
        }
        Ok(())
    }
}
