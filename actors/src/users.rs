//! The flows an account admin runs on the account's users: create, update and remove a user
//! record (name, roles, spending limit, assigned ship-tos). They run inside the AccountActor, so
//! they are serialized with the account's orders, and each writes the new account record with
//! its audit entry in one journal batch before memory changes.

use crate::account::AccountState;
use crate::audit::Caller;
use crate::ordering::account_batch_for;
use crate::ActorError;
use orderd_domain::account::{Account, Role, User, USERS_MAX};
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
        Some(i) => {
            account.users[i] = user.clone();
            "user.update"
        }
        None => {
            account.users.push(user.clone());
            "user.create"
        }
    };
    write(st, caller, account, action, &user.id).await?;
    Ok(Ok(user))
}

/// Removes one user record of the account. Their orders stay; a token naming them later acts
/// with its own roles and no assigned ship-tos or own spending limit.
pub async fn delete_user(st: &mut AccountState, caller: &Caller, id: &UserId) -> Flow<()> {
    let Some(at) = st.account.users.iter().position(|u| &u.id == id) else {
        return Ok(Err(Rejection::NotFound(format!("user {id}"))));
    };
    if id == &caller.user {
        return Ok(Err(Rejection::Conflict(
            "an account admin cannot remove themselves".into(),
        )));
    }
    let mut account = st.account.clone();
    account.users.remove(at);
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
    Ok(())
}
