//! Events written to the outbox with every order change: CloudEvents 1.0 JSON. The per-order
//! `sequence` is the order's version, so consumers can order and deduplicate.

use orderd_domain::order::Order;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct CloudEvent<'a, T: Serialize> {
    pub specversion: &'static str,
    pub id: String,
    pub source: &'static str,
    #[serde(rename = "type")]
    pub kind: String,
    pub subject: String,
    pub time: String,
    pub datacontenttype: &'static str,
    pub data: &'a T,
}

#[derive(Debug, Serialize)]
pub struct OrderEventData<'a> {
    pub account: &'a str,
    pub order: &'a str,
    pub state: &'static str,
    pub sequence: u32,
    pub transitions: &'a [&'static str],
    pub total: &'a orderd_domain::money::Money,
    pub lines: &'a [orderd_domain::order::OrderLine],
}

/// The outbox payload for a change of `order` (after the change).
pub fn order_event(order: &Order, transitions: &[&'static str]) -> Vec<u8> {
    let data = OrderEventData {
        account: order.account.as_str(),
        order: order.id.as_str(),
        state: order.state.as_str(),
        sequence: order.version,
        transitions,
        total: &order.total,
        lines: &order.lines,
    };
    let ev = CloudEvent {
        specversion: "1.0",
        id: uuid::Uuid::now_v7().to_string(),
        source: "orderd",
        kind: format!("orderd.order.{}", order.state.as_str()),
        subject: format!("orders/{}/{}", order.account, order.id),
        time: crate::audit::now_rfc3339(),
        datacontenttype: "application/json",
        data: &data,
    };
    serde_json::to_vec(&ev).expect("plain data always encodes")
}
