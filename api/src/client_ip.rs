//! The client IP recorded in the audit log: the socket peer, or the right-most untrusted
//! X-Forwarded-For hop when the peer is a configured trusted proxy.

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use std::net::{IpAddr, SocketAddr};

pub fn client_ip(parts: &Parts, trusted_proxies: &[IpAddr]) -> String {
    let Some(peer) = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return "unknown".into();
    };
    if !trusted_proxies.contains(&peer) {
        return peer.to_string();
    }
    // Walk from the right: the first hop that is not one of our proxies is the client.
    let forwarded: Vec<IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    forwarded
        .iter()
        .rev()
        .find(|ip| !trusted_proxies.contains(ip))
        .unwrap_or(&peer)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(peer: &str, xff: Option<&str>) -> Parts {
        let mut b = Request::builder();
        if let Some(x) = xff {
            b = b.header("x-forwarded-for", x);
        }
        let (mut p, _) = b.body(()).unwrap().into_parts();
        p.extensions
            .insert(ConnectInfo::<SocketAddr>(peer.parse().unwrap()));
        p
    }

    // X-Forwarded-For counts only behind a trusted proxy, and only its untrusted hops.
    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(&parts("1.2.3.4:5", Some("9.9.9.9")), &[proxy]),
            "1.2.3.4"
        );
        assert_eq!(
            client_ip(&parts("10.0.0.1:5", Some("6.6.6.6, 9.9.9.9")), &[proxy]),
            "9.9.9.9"
        );
        assert_eq!(
            client_ip(&parts("10.0.0.1:5", Some("9.9.9.9, 10.0.0.1")), &[proxy]),
            "9.9.9.9"
        );
        assert_eq!(client_ip(&parts("10.0.0.1:5", None), &[proxy]), "10.0.0.1");
        assert_eq!(
            client_ip(&parts("10.0.0.1:5", Some("garbage")), &[proxy]),
            "10.0.0.1"
        );
    }
}
