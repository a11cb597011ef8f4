//! The roles the accounts' user records grant, as a shared read-mostly view, so the access
//! guard narrows a caller's roles (see [`orderd_domain::grant`]) without a round trip to the
//! account actor on every request.
//!
//! Like [`crate::warehouse::FreeStock`], one owner writes and anyone reads: an account's entry is
//! replaced whole by its actor after every durable write that can change its users (user
//! flows, account imports) and when the actor starts, and by the directory when it creates an
//! account. At start the engine builds it from the stored account records it reads anyway.
//! A change is visible before the admin's request is answered, so every request admitted after
//! that answer sees it. Accounts without user records or removals have no entry.

use crate::audit::Caller;
use orderd_domain::account::{Account, Role};
use orderd_domain::grant::{effective_roles, Grant, NotGranted};
use orderd_domain::ids::{AccountId, UserId};
use std::collections::{BTreeSet, HashMap};
use std::sync::{PoisonError, RwLock};

/// One user's entry, compact (the view holds every user of every account).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// A record with these roles (one bit per [`Role::ALL`] index).
    Roles(u8),
    Removed,
}

// One bit per role.
const _: () = assert!(Role::ALL.len() <= u8::BITS as usize);

fn bit(role: Role) -> u8 {
    let i = Role::ALL.iter().position(|r| *r == role).unwrap_or(0);
    1 << i
}

impl Stored {
    fn roles<'a>(roles: impl IntoIterator<Item = &'a Role>) -> Stored {
        Stored::Roles(roles.into_iter().fold(0, |m, r| m | bit(*r)))
    }

    fn grant(self) -> Grant {
        match self {
            Stored::Roles(mask) => Grant::Roles(
                Role::ALL
                    .into_iter()
                    .filter(|r| mask & bit(*r) != 0)
                    .collect(),
            ),
            Stored::Removed => Grant::Removed,
        }
    }
}

type AccountGrants = HashMap<UserId, Stored>;

#[derive(Debug, Default)]
pub struct Grants(RwLock<HashMap<AccountId, AccountGrants>>);

impl Grants {
    /// The view of these stored accounts (start-up).
    pub fn from_accounts<'a>(accounts: impl IntoIterator<Item = &'a Account>) -> Grants {
        let all = accounts
            .into_iter()
            .filter_map(|a| entry_of(a).map(|e| (a.id.clone(), e)))
            .collect();
        Grants(RwLock::new(all))
    }

    /// Replaces the entry of `account` with what its records grant now. Call it only with the
    /// account as stored (after the write is durable).
    pub fn publish(&self, account: &Account) {
        let entry = entry_of(account);
        let mut all = self.0.write().unwrap_or_else(PoisonError::into_inner);
        match entry {
            Some(e) => all.insert(account.id.clone(), e),
            None => all.remove(&account.id),
        };
    }

    /// What `account` grants `user` (`None`: no record, ever).
    pub fn of(&self, account: &AccountId, user: &UserId) -> Option<Grant> {
        let all = self.0.read().unwrap_or_else(PoisonError::into_inner);
        all.get(account)?.get(user).map(|s| s.grant())
    }

    /// Narrows the caller's roles to those its account grants (a caller without an account is
    /// left as it is). Returns the token roles that were withheld (empty when none); `Err`
    /// when the caller is left with no role at all, and then the caller is unchanged.
    pub fn narrow(&self, caller: &mut Caller) -> Result<BTreeSet<Role>, NotGranted> {
        let Some(account) = &caller.account else {
            return Ok(BTreeSet::new());
        };
        let Some(grant) = self.of(account, &caller.user) else {
            return Ok(BTreeSet::new());
        };
        let effective = effective_roles(&caller.roles, Some(&grant))?;
        let withheld = caller.roles.difference(&effective).copied().collect();
        caller.roles = effective;
        Ok(withheld)
    }

    /// Accounts with an entry (for tests).
    pub fn accounts(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// The entry of one account, `None` when it has no records and no removals. Linear in its
/// users (an account has up to `USERS_MAX`).
fn entry_of(account: &Account) -> Option<AccountGrants> {
    if account.users.is_empty() && account.removed_users.is_empty() {
        return None;
    }
    let removed = account
        .removed_users
        .iter()
        .map(|id| (id.clone(), Stored::Removed));
    // Records last: an id in both (never stored, see `Account::check`) counts as a record.
    let records = account
        .users
        .iter()
        .map(|u| (u.id.clone(), Stored::roles(&u.roles)));
    Some(removed.chain(records).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_domain::account::{ApprovalRules, User};
    use orderd_domain::ids::Segment;
    use orderd_domain::money::{Currency, Money};

    fn account(id: &str, users: &[(&str, &[Role])]) -> Account {
        let eur = Currency::parse("EUR").unwrap();
        Account {
            id: AccountId::parse(id).unwrap(),
            name: id.into(),
            segment: Segment::parse("retail").unwrap(),
            currency: eur,
            credit_limit: Money::zero(eur),
            open_receivables: Money::zero(eur),
            payment_terms: "NET30".into(),
            ship_tos: vec![],
            users: users
                .iter()
                .map(|(u, roles)| User {
                    id: UserId::parse(u).unwrap(),
                    name: u.to_string(),
                    roles: roles.iter().copied().collect(),
                    spending_limit: None,
                    ship_tos: Default::default(),
                })
                .collect(),
            rules: ApprovalRules::default(),
            removed_users: Default::default(),
        }
    }

    fn caller(account: Option<&str>, user: &str, roles: &[Role]) -> Caller {
        Caller {
            account: account.map(|a| AccountId::parse(a).unwrap()),
            user: UserId::parse(user).unwrap(),
            roles: roles.iter().copied().collect(),
            warehouse: None,
            ip: "test".into(),
        }
    }

    // The view narrows callers by their own account's records only: a record gives the
    // intersection, a user without a record or of another account keeps the token's roles, a
    // removed user keeps nothing, and a republished account replaces its entry whole.
    #[test]
    fn the_view_narrows_by_the_callers_own_account() {
        use Role::*;
        let mut a = account(
            "A",
            &[("ann", &[Buyer]), ("ada", &[AccountAdmin, Approver])],
        );
        let grants = Grants::from_accounts([&a, &account("B", &[])]);
        assert_eq!(grants.accounts(), 1, "B has nothing to narrow");

        let mut ann = caller(Some("A"), "ann", &[Buyer, Approver]);
        assert_eq!(grants.narrow(&mut ann), Ok(BTreeSet::from([Approver])));
        assert_eq!(ann.roles, BTreeSet::from([Buyer]));
        let mut ada = caller(Some("A"), "ada", &[Buyer, Approver, AccountAdmin, Operator]);
        grants.narrow(&mut ada).unwrap();
        assert_eq!(
            ada.roles,
            BTreeSet::from([Approver, AccountAdmin, Operator]),
            "every bit of the compact form round-trips"
        );
        for mut untouched in [
            caller(Some("A"), "zed", &[Buyer, Approver]),
            caller(Some("B"), "ann", &[Buyer, Approver]),
            caller(None, "ann", &[Operator]),
        ] {
            let before = untouched.roles.clone();
            assert_eq!(grants.narrow(&mut untouched), Ok(BTreeSet::new()));
            assert_eq!(untouched.roles, before);
        }
        let mut approver = caller(Some("A"), "ann", &[Approver]);
        assert_eq!(
            grants.narrow(&mut approver),
            Err(NotGranted::NoneOf(BTreeSet::from([Approver])))
        );
        assert_eq!(approver.roles, BTreeSet::from([Approver]), "unchanged");

        a.remove_user(&UserId::parse("ann").unwrap());
        grants.publish(&a);
        let mut ann = caller(Some("A"), "ann", &[Buyer]);
        assert_eq!(grants.narrow(&mut ann), Err(NotGranted::Removed));
        a.removed_users.clear();
        a.users.clear();
        grants.publish(&a);
        assert_eq!(grants.accounts(), 0);
        assert_eq!(grants.narrow(&mut ann), Ok(BTreeSet::new()));
    }
}
