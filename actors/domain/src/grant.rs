//! What an account admin's user records grant a signed-in user. The identity provider (or the
//! development sign-in) vouches for who the user is and which roles the company gives them; the
//! account admin may narrow that for their account, never widen it:
//!
//! - no record for the user id: the token's roles as they are (SSO users work before anyone
//!   provisions them);
//! - a record: the token's account roles (buyer, approver, account_admin) that the record also
//!   has;
//! - a record the account admin removed: no account role at all, until a record is created
//!   again.
//!
//! Roles that do not act inside an account (warehouse, operator) are never touched.

use crate::account::{Role, ACCOUNT_ROLES};
use std::collections::BTreeSet;

/// What the account holds about one user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A user record with these roles.
    Roles(BTreeSet<Role>),
    /// The account admin removed the user's record (a tombstone).
    Removed,
}

/// Why a caller is left with no role at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotGranted {
    /// The user's record was removed.
    Removed,
    /// The record grants none of the token's account roles (listed here).
    NoneOf(BTreeSet<Role>),
}

/// The roles a caller acts with: `token` narrowed by the account's `grant` for them (see the
/// module doc). `Err` when nothing is left.
pub fn effective_roles(
    token: &BTreeSet<Role>,
    grant: Option<&Grant>,
) -> Result<BTreeSet<Role>, NotGranted> {
    let Some(grant) = grant else {
        return Ok(token.clone());
    };
    let (asked, mut effective): (BTreeSet<Role>, BTreeSet<Role>) =
        token.iter().partition(|r| ACCOUNT_ROLES.contains(r));
    if let Grant::Roles(stored) = grant {
        effective.extend(asked.intersection(stored));
    }
    if !effective.is_empty() {
        return Ok(effective);
    }
    Err(match grant {
        Grant::Removed => NotGranted::Removed,
        Grant::Roles(_) => NotGranted::NoneOf(asked),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;

    fn set(roles: &[Role]) -> BTreeSet<Role> {
        roles.iter().copied().collect()
    }

    // Every case of the rule: no record, a record (intersection, empty intersection), a
    // tombstone, and roles outside the account that no record touches.
    #[test]
    fn stored_records_narrow_token_roles() {
        let stored = |r: &[Role]| Some(Grant::Roles(set(r)));
        // (token roles, what the account holds, effective roles or why none)
        type Case = (
            &'static [Role],
            Option<Grant>,
            Result<&'static [Role], NotGranted>,
        );
        let cases: &[Case] = &[
            // No record: the token's roles as they are.
            (&[Buyer, Approver], None, Ok(&[Buyer, Approver])),
            (&[AccountAdmin], None, Ok(&[AccountAdmin])),
            // A record: the intersection.
            (&[Buyer, Approver], stored(&[Buyer]), Ok(&[Buyer])),
            (&[Buyer], stored(&[Buyer, Approver]), Ok(&[Buyer])),
            (
                &[Buyer, Approver, AccountAdmin],
                stored(&[Approver, AccountAdmin]),
                Ok(&[Approver, AccountAdmin]),
            ),
            // Nothing in common.
            (
                &[Approver],
                stored(&[Buyer]),
                Err(NotGranted::NoneOf(set(&[Approver]))),
            ),
            (
                &[Buyer, Approver],
                stored(&[AccountAdmin]),
                Err(NotGranted::NoneOf(set(&[Buyer, Approver]))),
            ),
            // A tombstone takes every account role.
            (&[Buyer], Some(Grant::Removed), Err(NotGranted::Removed)),
            (
                &[Buyer, Approver, AccountAdmin],
                Some(Grant::Removed),
                Err(NotGranted::Removed),
            ),
            // Roles outside the account stay whatever the record says.
            (&[Operator], stored(&[Buyer]), Ok(&[Operator])),
            (&[Operator, Buyer], Some(Grant::Removed), Ok(&[Operator])),
            (&[Warehouse, Approver], stored(&[Buyer]), Ok(&[Warehouse])),
            (
                &[Warehouse, Buyer, Approver],
                stored(&[Buyer]),
                Ok(&[Buyer, Warehouse]),
            ),
        ];
        for (token, grant, want) in cases {
            let got = effective_roles(&set(token), grant.as_ref());
            let want = want.clone().map(set);
            assert_eq!(got, want, "token {token:?}, grant {grant:?}");
        }
    }
}
