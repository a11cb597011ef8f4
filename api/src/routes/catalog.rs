//! Catalog search and item detail, with the caller's own price tiers and availability per
//! warehouse. Only what the caller's segment may see.

use super::ACCOUNT_ROLES;
use crate::auth::Auth;
use crate::error::{echo, ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::ApiState;
use axum::extract::State;
use axum::Json;
use orderd_actors::account::{AccountMsg, Shopper};
use orderd_actors::audit::today;
use orderd_domain::catalog::CatalogItem;
use orderd_domain::ids::Sku;
use orderd_domain::pricing::Tier;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(item))
}

#[derive(Deserialize, IntoParams)]
pub struct SearchQuery {
    /// SKU prefix or words of the description.
    pub q: Option<String>,
    pub limit: Option<usize>,
    /// The last SKU of the previous page.
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ItemView {
    #[schema(value_type = Object)]
    pub item: CatalogItem,
    /// The price level that applies to the caller today, and its tiers.
    pub price_level: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub tiers: Vec<Tier>,
    /// Free units per warehouse (kits: how many whole kits).
    pub available: BTreeMap<String, u64>,
}

#[derive(Serialize, ToSchema)]
pub struct SearchPage {
    pub items: Vec<ItemView>,
    pub next_cursor: Option<String>,
}

/// Search the catalog (buyer, approver, account_admin).
#[utoipa::path(get, path = "/v1/catalog", tag = "catalog", params(SearchQuery),
    responses((status = 200, body = SearchPage)), security(("bearer" = [])))]
async fn search(
    State(s): State<ApiState>,
    auth: Auth,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json<SearchPage>> {
    auth.require(ACCOUNT_ROLES)?;
    let account = account_of(&s, &auth).await?;
    let limit =
        crate::extract::page_limit(q.limit, crate::extract::PAGE_DEFAULT, s.limits.page_max)?;
    let after = q
        .cursor
        .as_deref()
        .map(Sku::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_cursor", e.to_string()))?;
    // Off the runtime's workers: a search may walk a large catalog.
    let snap = s.engine.catalog.load();
    let segment = account.segment.clone();
    let items: Vec<CatalogItem> = tokio::task::spawn_blocking(move || {
        let query = q.q.as_deref().unwrap_or("");
        let found = snap.catalog.search(&segment, query, after.as_ref(), limit);
        found.map(|items| items.into_iter().cloned().collect())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("catalog search: {e}")))?
    .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(|i| i.sku.to_string()))
        .flatten();
    let items = views(&s, &account, items).await?;
    Ok(Json(SearchPage { items, next_cursor }))
}

/// One catalog item (buyer, approver, account_admin). 404 when not visible to the caller.
#[utoipa::path(get, path = "/v1/catalog/{sku}", tag = "catalog", params(("sku" = String, Path)),
    responses((status = 200, body = ItemView), (status = 404)), security(("bearer" = [])))]
async fn item(
    State(s): State<ApiState>,
    auth: Auth,
    Path(sku): Path<String>,
) -> ApiResult<Json<ItemView>> {
    auth.require(ACCOUNT_ROLES)?;
    let account = account_of(&s, &auth).await?;
    let not_found = || ApiError::NotFound(format!("SKU {} not found", echo(&sku)));
    let sku = Sku::parse(&sku).map_err(|_| not_found())?;
    let item = s
        .engine
        .catalog
        .load()
        .catalog
        .get(&sku)
        .filter(|i| i.visible_to(&account.segment))
        .cloned()
        .ok_or_else(not_found)?;
    let mut v = views(&s, &account, vec![item]).await?;
    v.pop().map(Json).ok_or_else(not_found)
}

async fn account_of(s: &ApiState, auth: &Auth) -> ApiResult<Shopper> {
    let id = auth.account()?;
    Ok(s.engine
        .account(id, |reply| AccountMsg::GetShopper { reply })
        .await?)
}

async fn views(
    s: &ApiState,
    account: &Shopper,
    items: Vec<CatalogItem>,
) -> ApiResult<Vec<ItemView>> {
    let snap = s.engine.catalog.load();
    let free = snap.free_stock(&items);
    let day = today();
    Ok(items
        .into_iter()
        .map(|item| {
            let entry = snap.prices.entry_for(
                &item.sku,
                &account.id,
                &account.segment,
                account.currency,
                day,
            );
            let per_unit = item.stock_demand(1);
            let available = free
                .warehouses()
                .map(|w| (w.to_string(), free.whole_units(w, &per_unit)))
                .collect();
            ItemView {
                price_level: entry.map(|e| e.level.name().to_owned()),
                tiers: entry.map(|e| e.tiers.clone()).unwrap_or_default(),
                available,
                item,
            }
        })
        .collect())
}
