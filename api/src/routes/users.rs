//! An account admin manages the account's own users: names, roles (buyer, approver,
//! account_admin only), spending limits and assigned ship-tos. The account is the token's; a
//! user of another account gets the same 404 as one that does not exist. Changes go through the
//! AccountActor, so they are serialized with the account's orders, stored and audited.
//!
//! The stored roles govern the user's tokens from the next request on (see `policy.rs`): a
//! record keeps only the token roles it also has, and a removed user is refused until they are
//! created again.

use crate::auth::Auth;
use crate::error::{echo, ApiError, ApiResult};
use crate::extract::Path;
use crate::json::Json;
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orderd_actors::account::AccountMsg;
use orderd_actors::users::PutMode;
use orderd_domain::account::{Account, Role, User};
use orderd_domain::ids::{ShipToId, UserId};
use orderd_domain::money::{Money, MONEY_SCALE};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

const ADMIN: &[Role] = &[Role::AccountAdmin];

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(update_user, delete_user))
}

/// A user of the account as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct UserBody {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    /// In the account's currency; `null`: the limits of the user's roles apply.
    pub spending_limit: Option<String>,
    /// The ship-tos this user may order to; empty: all of the account's.
    pub ship_tos: Vec<String>,
}

impl From<&User> for UserBody {
    fn from(u: &User) -> UserBody {
        UserBody {
            id: u.id.to_string(),
            name: u.name.clone(),
            roles: u.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            spending_limit: u.spending_limit.map(|m| m.amount.to_string()),
            ship_tos: u.ship_tos.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// What an account admin sets on a user. Any other field (an account, a credit limit, ...) is
/// refused with 422 naming it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserFields {
    pub name: String,
    /// Among buyer, approver, account_admin.
    pub roles: Vec<String>,
    /// A decimal string in the account's currency; absent or `null`: the roles' limits apply.
    #[schema(value_type = Option<String>)]
    pub spending_limit: Option<orderd_domain::Decimal>,
    /// Ship-to ids of the account; absent or empty: all.
    #[serde(default)]
    pub ship_tos: Vec<String>,
}

/// A new user: its id and fields.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    #[schema(value_type = Option<String>)]
    pub spending_limit: Option<orderd_domain::Decimal>,
    #[serde(default)]
    pub ship_tos: Vec<String>,
}

/// Parses the fields at the edge; the account's rules (roles it may grant, its ship-tos and
/// currency) are checked by the account itself.
fn user_of(id: UserId, f: UserFields, account: &Account) -> ApiResult<User> {
    let roles = f
        .roles
        .iter()
        .map(|r| {
            Role::parse(r).ok_or_else(|| {
                ApiError::invalid_field("roles", format!("unknown role {:?}", echo(r)))
            })
        })
        .collect::<ApiResult<_>>()?;
    let spending_limit = f
        .spending_limit
        .map(|d| Money::new(d, account.currency, MONEY_SCALE))
        .transpose()
        .map_err(|e| ApiError::invalid_field("spending_limit", e.to_string()))?;
    if f.ship_tos.len() > orderd_domain::account::SHIP_TOS_MAX {
        return Err(ApiError::invalid_field(
            "ship_tos",
            format!("at most {} ship-tos", orderd_domain::account::SHIP_TOS_MAX),
        ));
    }
    let ship_tos = f
        .ship_tos
        .iter()
        .map(|s| ShipToId::parse(s).map_err(|e| ApiError::invalid_field("ship_tos", e.to_string())))
        .collect::<ApiResult<_>>()?;
    Ok(User {
        id,
        name: f.name.trim().to_owned(),
        roles,
        spending_limit,
        ship_tos,
    })
}

async fn account_of(s: &ApiState, auth: &Auth) -> ApiResult<Account> {
    Ok(s.engine
        .account(auth.account()?, |reply| AccountMsg::GetAccount { reply })
        .await?)
}

async fn put(s: &ApiState, auth: &Auth, user: User, mode: PutMode) -> ApiResult<User> {
    let caller = auth.require(ADMIN)?.clone();
    Ok(s.engine
        .ask(auth.account()?, |reply| AccountMsg::PutUser {
            caller,
            user,
            mode,
            reply,
        })
        .await??)
}

/// The account's users (account_admin).
#[utoipa::path(get, path = "/v1/account/users", tag = "account", responses((status = 200, body = Vec<UserBody>)), security(("bearer" = [])))]
async fn list_users(State(s): State<ApiState>, auth: Auth) -> ApiResult<axum::Json<Vec<UserBody>>> {
    auth.require(ADMIN)?;
    let account = account_of(&s, &auth).await?;
    Ok(axum::Json(
        account.users.iter().map(UserBody::from).collect(),
    ))
}

/// Add a user to the account: 201, or 409 when the id is taken (account_admin).
#[utoipa::path(post, path = "/v1/account/users", tag = "account", request_body = NewUser,
    responses((status = 201, body = UserBody), (status = 409), (status = 422)), security(("bearer" = [])))]
async fn create_user(
    State(s): State<ApiState>,
    auth: Auth,
    Json(b): Json<NewUser>,
) -> ApiResult<Response> {
    auth.require(ADMIN)?;
    let id = UserId::parse(&b.id).map_err(|e| ApiError::invalid_field("id", e.to_string()))?;
    let account = account_of(&s, &auth).await?;
    let fields = UserFields {
        name: b.name,
        roles: b.roles,
        spending_limit: b.spending_limit,
        ship_tos: b.ship_tos,
    };
    let user = put(&s, &auth, user_of(id, fields, &account)?, PutMode::Create).await?;
    Ok((StatusCode::CREATED, axum::Json(UserBody::from(&user))).into_response())
}

/// Replace a user's name, roles, spending limit and ship-tos (account_admin).
#[utoipa::path(put, path = "/v1/account/users/{user}", tag = "account", params(("user" = String, Path)), request_body = UserFields,
    responses((status = 200, body = UserBody), (status = 404), (status = 409), (status = 422)), security(("bearer" = [])))]
async fn update_user(
    State(s): State<ApiState>,
    auth: Auth,
    Path(user): Path<String>,
    Json(b): Json<UserFields>,
) -> ApiResult<axum::Json<UserBody>> {
    auth.require(ADMIN)?;
    let id = UserId::parse(&user)
        .map_err(|_| ApiError::NotFound(format!("user {} not found", echo(&user))))?;
    let account = account_of(&s, &auth).await?;
    let user = put(&s, &auth, user_of(id, b, &account)?, PutMode::Update).await?;
    Ok(axum::Json(UserBody::from(&user)))
}

/// Remove a user from the account; their orders stay, and their tokens get 403 on the account's
/// routes until the user is created again (account_admin).
#[utoipa::path(delete, path = "/v1/account/users/{user}", tag = "account", params(("user" = String, Path)),
    responses((status = 204), (status = 404), (status = 409)), security(("bearer" = [])))]
async fn delete_user(
    State(s): State<ApiState>,
    auth: Auth,
    Path(user): Path<String>,
) -> ApiResult<StatusCode> {
    let caller = auth.require(ADMIN)?.clone();
    let id = UserId::parse(&user)
        .map_err(|_| ApiError::NotFound(format!("user {} not found", echo(&user))))?;
    s.engine
        .ask(auth.account()?, |reply| AccountMsg::DeleteUser {
            caller,
            user: id,
            reply,
        })
        .await??;
    Ok(StatusCode::NO_CONTENT)
}
