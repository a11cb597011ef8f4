//! The caller's account cart.

use super::{known_warehouse, ACCOUNT_ROLES};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::json::{Json, Quantity};
use crate::routes::orders::{OrderHeader, PreviewBody};
use crate::ApiState;
use axum::extract::State;
use orderd_actors::account::AccountMsg;
use orderd_domain::cart::Cart;
use orderd_domain::ids::Sku;
use orderd_domain::validation::{Problem, ProblemCode};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(get_cart))
        .routes(routes!(add_line))
        .routes(routes!(update_line, remove_line))
        .routes(routes!(reprice_cart))
        .routes(routes!(validate_cart))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddLine {
    pub sku: String,
    #[schema(value_type = u32)]
    pub qty: Quantity,
    pub note: Option<String>,
    pub warehouse: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateLine {
    #[schema(value_type = Option<u32>)]
    pub qty: Option<Quantity>,
    /// `null` clears the note; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub note: Option<Option<String>>,
}

/// Tells an absent field (`None`, via `default`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn invalid(code: ProblemCode, field: &str, msg: String) -> ApiError {
    ApiError::Invalid(vec![Problem::new(code, msg).field(field)])
}

/// The cart (buyer, approver, account_admin).
#[utoipa::path(get, path = "/v1/cart", tag = "cart", responses((status = 200, body = Object)), security(("bearer" = [])))]
async fn get_cart(State(s): State<ApiState>, auth: Auth) -> ApiResult<axum::Json<Cart>> {
    auth.require(ACCOUNT_ROLES)?;
    Ok(axum::Json(
        s.engine
            .account(auth.account()?, |reply| AccountMsg::GetCart { reply })
            .await?,
    ))
}

/// Add a line, quoted at today's price for its quantity; the same SKU (and warehouse) adds to
/// its line (buyer, approver, account_admin).
#[utoipa::path(post, path = "/v1/cart/lines", tag = "cart", request_body = AddLine,
    responses((status = 200, body = Object), (status = 422)), security(("bearer" = [])))]
async fn add_line(
    State(s): State<ApiState>,
    auth: Auth,
    Json(b): Json<AddLine>,
) -> ApiResult<axum::Json<Cart>> {
    let caller = auth.require(ACCOUNT_ROLES)?.clone();
    let qty = b.qty.get()?;
    let sku =
        Sku::parse(&b.sku).map_err(|e| invalid(ProblemCode::UnknownSku, "sku", e.to_string()))?;
    let warehouse = b
        .warehouse
        .as_deref()
        .map(|w| known_warehouse(&s, w))
        .transpose()
        .map_err(|why| invalid(ProblemCode::UnknownWarehouse, "warehouse", why))?;
    let cart = s
        .engine
        .ask(auth.account()?, |reply| AccountMsg::CartAdd {
            caller,
            sku,
            qty,
            note: b.note,
            warehouse,
            reply,
        })
        .await??;
    Ok(axum::Json(cart))
}

/// Change a line's quantity (quoted again: another tier may apply) or note (buyer, approver,
/// account_admin).
#[utoipa::path(patch, path = "/v1/cart/lines/{line}", tag = "cart", params(("line" = u32, Path)), request_body = UpdateLine,
    responses((status = 200, body = Object), (status = 404), (status = 422)), security(("bearer" = [])))]
async fn update_line(
    State(s): State<ApiState>,
    auth: Auth,
    Path(line): Path<u32>,
    Json(b): Json<UpdateLine>,
) -> ApiResult<axum::Json<Cart>> {
    let caller = auth.require(ACCOUNT_ROLES)?.clone();
    let qty = b.qty.map(Quantity::get).transpose()?;
    let cart = s
        .engine
        .ask(auth.account()?, |reply| AccountMsg::CartUpdate {
            caller,
            line,
            qty,
            note: b.note,
            reply,
        })
        .await??;
    Ok(axum::Json(cart))
}

/// Remove a line (buyer, approver, account_admin).
#[utoipa::path(delete, path = "/v1/cart/lines/{line}", tag = "cart", params(("line" = u32, Path)),
    responses((status = 200, body = Object), (status = 404)), security(("bearer" = [])))]
async fn remove_line(
    State(s): State<ApiState>,
    auth: Auth,
    Path(line): Path<u32>,
) -> ApiResult<axum::Json<Cart>> {
    let caller = auth.require(ACCOUNT_ROLES)?.clone();
    let cart = s
        .engine
        .ask(auth.account()?, |reply| AccountMsg::CartRemove {
            caller,
            line,
            reply,
        })
        .await??;
    Ok(axum::Json(cart))
}

/// Quote every line again at today's price: how a buyer accepts the prices that validation or
/// submission reported as `price_changed` (buyer, approver, account_admin).
#[utoipa::path(post, path = "/v1/cart/reprice", tag = "cart",
    responses((status = 200, body = Object)), security(("bearer" = [])))]
async fn reprice_cart(State(s): State<ApiState>, auth: Auth) -> ApiResult<axum::Json<Cart>> {
    let caller = auth.require(ACCOUNT_ROLES)?.clone();
    let cart = s
        .engine
        .ask(auth.account()?, |reply| AccountMsg::CartReprice {
            caller,
            reply,
        })
        .await??;
    Ok(axum::Json(cart))
}

/// Validate the cart as an order would be: every problem, nothing changed (buyer, approver, account_admin).
#[utoipa::path(post, path = "/v1/cart/validate", tag = "cart", request_body(content = OrderHeader, description = "ship-to, speed, PO; may be empty"),
    responses((status = 200, body = PreviewBody)), security(("bearer" = [])))]
async fn validate_cart(
    State(s): State<ApiState>,
    auth: Auth,
    body: Option<Json<OrderHeader>>,
) -> ApiResult<axum::Json<PreviewBody>> {
    let caller = auth.require(ACCOUNT_ROLES)?.clone();
    let header = body
        .map(|Json(h)| h)
        .unwrap_or_default()
        .into_request(vec![]);
    let preview = s
        .engine
        .ask(auth.account()?, |reply| AccountMsg::Validate {
            caller,
            req: header,
            from_cart: true,
            reply,
        })
        .await??;
    Ok(axum::Json(PreviewBody(preview)))
}
