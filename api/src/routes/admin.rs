//! Operator routes: CSV imports and account credit figures. Cross-account by design; only the
//! operator role may call them.

use crate::auth::Auth;
use crate::error::{echo, ApiError, ApiResult};
use crate::extract::{CsvBody, Path};
use crate::import_csv::{self, Kind};
use crate::json::Json;
use crate::ApiState;
use axum::extract::State;
use orderd_actors::account::{AccountMsg, CreditView};
use orderd_domain::account::Role;
use orderd_domain::ids::AccountId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(import))
        .routes(routes!(set_credit))
        .routes(routes!(list_accounts))
}

#[derive(Serialize, ToSchema)]
pub struct ImportResult {
    pub kind: String,
    pub rows: usize,
}

/// Import CSV (text/csv body) of one kind: catalog, prices, accounts, ship_tos, users,
/// warehouses, stock. A bad row refuses the file, and every bad row is listed (at most 100);
/// stored account by account (warehouse by warehouse for stock), a refusal then names in
/// `stored` the accounts or warehouses stored before it (operator). An import that orderd's
/// load, a shutdown or a fault stopped answers 429, 503 or 500, with `stored` all the same.
#[utoipa::path(post, path = "/v1/admin/import/{kind}", tag = "admin", params(("kind" = String, Path)),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = ImportResult), (status = 415), (status = 422, description = "rows refused"),
        (status = 429, description = "an account was busy: send the file again"),
        (status = 503, description = "orderd was busy or shutting down: send the file again"),
        (status = 500, description = "a fault, logged")), security(("bearer" = [])))]
async fn import(
    State(s): State<ApiState>,
    auth: Auth,
    Path(kind): Path<String>,
    CsvBody(body): CsvBody,
) -> ApiResult<axum::Json<ImportResult>> {
    let caller = auth.require(&[Role::Operator])?.clone();
    let kind = Kind::parse(&kind).ok_or_else(|| {
        ApiError::NotFound(format!(
            "import kind {:?} (known: {})",
            echo(&kind),
            Kind::names()
        ))
    })?;
    // In a task of its own, so that a client that gives up does not stop an import between
    // its write and the swap of the data in memory (the write stands either way).
    let (engine, rows_max) = (s.engine.clone(), s.limits.import_rows_max);
    let task = async move { import_csv::import(&engine, &caller, kind, &body, rows_max).await };
    let rows = tokio::spawn(task)
        .await
        .map_err(|e| ApiError::Internal(format!("import task: {e}")))?
        .map_err(ApiError::ImportRefused)?;
    Ok(axum::Json(ImportResult {
        kind: kind.name().into(),
        rows,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditUpdate {
    #[schema(value_type = Option<String>)]
    pub credit_limit: Option<orderd_domain::Decimal>,
    #[schema(value_type = Option<String>)]
    pub open_receivables: Option<orderd_domain::Decimal>,
}

#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct CreditBody(pub CreditView);

/// Update an account's credit limit and/or open receivables (operator).
#[utoipa::path(put, path = "/v1/admin/accounts/{account}/credit", tag = "admin", params(("account" = String, Path)), request_body = CreditUpdate,
    responses((status = 200, body = CreditBody), (status = 404), (status = 422)), security(("bearer" = [])))]
async fn set_credit(
    State(s): State<ApiState>,
    auth: Auth,
    Path(account): Path<String>,
    Json(b): Json<CreditUpdate>,
) -> ApiResult<axum::Json<CreditBody>> {
    let caller = auth.require(&[Role::Operator])?.clone();
    let id = AccountId::parse(&account)
        .map_err(|_| ApiError::NotFound(format!("account {} not found", echo(&account))))?;
    let view = s
        .engine
        .ask(&id, |reply| AccountMsg::SetCredit {
            caller,
            credit_limit: b.credit_limit,
            open_receivables: b.open_receivables,
            reply,
        })
        .await??;
    Ok(axum::Json(CreditBody(view)))
}

/// Every account id (operator).
#[utoipa::path(get, path = "/v1/admin/accounts", tag = "admin", responses((status = 200, body = Vec<String>)), security(("bearer" = [])))]
async fn list_accounts(
    State(s): State<ApiState>,
    auth: Auth,
) -> ApiResult<axum::Json<Vec<String>>> {
    auth.require(&[Role::Operator])?;
    Ok(axum::Json(
        s.engine
            .accounts
            .accounts()
            .into_iter()
            .map(|a| a.to_string())
            .collect(),
    ))
}
