//! The flows an account admin runs on the account's users: create, update and remove a user
//! record (name, roles, spending limit, assigned ship-tos). They run inside the AccountActor, so
//! they are serialized with the account's orders, and each writes the new account record with
//! its audit entry in one journal batch before memory changes.
//!
//! The records govern what the users may do (see [`orderd_domain::grant`]): a record narrows
//! the roles of the user's tokens to the record's, and a removed record is remembered in the
//! account (a tombstone), so the user's tokens act with no account role until a record is
//! created again. After each write the account's entry in the shared [`crate::grants::Grants`]
//! view is replaced, before the admin gets the answer.

use crate::account::AccountState;
use crate::audit::Caller;
use crate::ordering::account_batch_for;
use crate::ActorError;
use orderd_domain::account::{Account, Role, User, REMOVED_USERS_MAX, USERS_MAX};
use orderd_domain::ids::UserId;
use orderd_domain::rejection::Rejection;
use orderd_domain::validation::{Problem, ProblemCode};

type Flow<T> = Result<Result<T, Rejection>, ActorError>;

/// Whether a put creates a user or changes an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Refused with a conflict when the id is taken.
    Create,
    /// Not found when the account has no such user.
    Update,
}

/// Creates or replaces one user record of the account.
pub async fn put_user(
    st: &mut AccountState,
    caller: &Caller,
    user: User,
    mode: PutMode,
) -> Flow<User> {
    let at = st.account.users.iter().position(|u| u.id == user.id);
    match (mode, at) {
        (PutMode::Create, Some(_)) => {
            return Ok(Err(Rejection::Conflict(format!(
                "user {} already exists",
                user.id
            ))))
        }
        (PutMode::Update, None) => {
            return Ok(Err(Rejection::NotFound(format!("user {}", user.id))))
        }
        (PutMode::Create, None) if st.account.users.len() >= USERS_MAX => {
            return Ok(Err(Rejection::Conflict(format!(
                "an account has at most {USERS_MAX} users"
            ))))
        }
        _ => {}
    }
    let problems: Vec<Problem> = st
        .account
        .check_user(&user)
        .into_iter()
        .map(|e| Problem::new(ProblemCode::InvalidField, e.message).field(e.field))
        .collect();
    if !problems.is_empty() {
        return Ok(Err(Rejection::Invalid(problems)));
    }
    if user.id == caller.user && !user.roles.contains(&Role::AccountAdmin) {
        return Ok(Err(Rejection::Conflict(
            "an account admin cannot take away their own account_admin role".into(),
        )));
    }
    let mut account = st.account.clone();
    let action = match at {
        Some(_) => "user.update",
        None => "user.create",
    };
    // A removed user created again gets exactly the new record's roles.
    account.put_user(user.clone());
    write(st, caller, account, action, &user.id).await?;
    Ok(Ok(user))
}

/// Removes one user record of the account and remembers the removal: their orders stay, and a
/// token naming them gets no account role (403 on the account's routes) until an account admin
/// creates the user again. An account remembers at most `REMOVED_USERS_MAX` removals; beyond,
/// removing is refused (narrow the user's roles instead).
pub async fn delete_user(st: &mut AccountState, caller: &Caller, id: &UserId) -> Flow<()> {
    if st.account.user(id).is_none() {
        return Ok(Err(Rejection::NotFound(format!("user {id}"))));
    }
    if id == &caller.user {
        return Ok(Err(Rejection::Conflict(
            "an account admin cannot remove themselves".into(),
        )));
    }
    if st.account.removed_users.len() >= REMOVED_USERS_MAX {
        return Ok(Err(Rejection::Conflict(format!(
            "an account remembers at most {REMOVED_USERS_MAX} removed users; change this user's roles instead"
        ))));
    }
    let mut account = st.account.clone();
    account.remove_user(id);
    write(st, caller, account, "user.delete", id).await?;
    Ok(Ok(()))
}

async fn write(
    st: &mut AccountState,
    caller: &Caller,
    account: Account,
    action: &str,
    user: &UserId,
) -> Result<(), ActorError> {
    let batch = account_batch_for(caller, &account, action, Some(user.to_string()));
    st.journal.submit(batch).await?;
    st.account = account;
    st.grants.publish(&st.account);
    Ok(())
}
