//! The account's credit figures.

use super::ACCOUNT_ROLES;
use crate::auth::Auth;
use crate::error::ApiResult;
use crate::ApiState;
use axum::extract::State;
use orderd_actors::account::{AccountMsg, CreditView};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(credit))
}

#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct CreditBody(pub CreditView);

/// Limit, open receivables, exposure (receivables + open orders) and what is available
/// (buyer, approver, account_admin).
#[utoipa::path(get, path = "/v1/credit", tag = "credit", responses((status = 200, body = CreditBody)), security(("bearer" = [])))]
async fn credit(State(s): State<ApiState>, auth: Auth) -> ApiResult<axum::Json<CreditBody>> {
    auth.require(ACCOUNT_ROLES)?;
    Ok(axum::Json(CreditBody(
        s.engine
            .account(auth.account()?, |reply| AccountMsg::Credit { reply })
            .await?,
    )))
}
