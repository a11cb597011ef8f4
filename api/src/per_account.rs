//! How many of something each account has now (open event streams, live browser sessions), for
//! the per-account bounds that keep one account from taking what every account shares.

use orderd_domain::ids::AccountId;
use std::collections::HashMap;

/// Counts per account; an account with none has no entry, so the map holds only accounts that
/// have some.
#[derive(Debug, Default)]
pub(crate) struct PerAccount(HashMap<AccountId, usize>);

impl PerAccount {
    pub(crate) fn of(&self, account: &AccountId) -> usize {
        self.0.get(account).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, account: &AccountId) {
        *self.0.entry(account.clone()).or_default() += 1;
    }

    /// One fewer; the account must have one.
    pub(crate) fn sub(&mut self, account: &AccountId) {
        let n = self
            .0
            .get_mut(account)
            .unwrap_or_else(|| panic!("{account} has nothing counted to take away"));
        *n -= 1;
        if *n == 0 {
            self.0.remove(account);
        }
    }

    /// Every account with some, and how many.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> &HashMap<AccountId, usize> {
        &self.0
    }
}
