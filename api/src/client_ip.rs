//! The client IP recorded in the audit log: the socket peer, or the right-most untrusted
//! X-Forwarded-For hop when the peer is a configured trusted proxy.

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use std::net::{IpAddr, SocketAddr};

pub fn client_ip(parts: &Parts, trusted_proxies: &[IpAddr]) -> String {
    let Some(peer) = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())
    else {
        return "unknown".into();
    };
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|p| p.to_canonical() == *ip);
    if !trusted(&peer) {
        return peer.to_string();
    }
    // Walk from the right: the first hop that is not one of our proxies is the client. A hop
    // that is no address (`unknown`, a typo) ends the walk at the peer: what lies left of it
    // came from further out, the client itself included, and may be forged.
    // Split as bytes: a hop that is not text (a client may send anything to the left of what
    // our proxies append) spoils only itself, not the hops our proxies wrote right of it.
    let mut client = peer;
    let hops = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|hop| std::str::from_utf8(hop).unwrap_or_default())
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        match parse_hop(hop.trim()) {
            Some(ip) if trusted(&ip) => client = ip,
            Some(ip) => return ip.to_string(),
            None => return peer.to_string(),
        }
    }
    client.to_string()
}

/// One X-Forwarded-For hop: an address, also with a port (`1.2.3.4:5`, `[2001:db8::1]:443`) or
/// in brackets (`[2001:db8::1]`), as proxies write them.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(hop)
                .parse::<IpAddr>()
        })
        .ok()?;
    Some(ip.to_canonical())
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
        // A hop the proxy writes with a port or in brackets is the client; a forged hop left of
        // it is not taken instead.
        for (xff, client) in [
            ("6.6.6.6, 9.9.9.9:51234", "9.9.9.9"),
            ("6.6.6.6, [2001:db8::1]:443", "2001:db8::1"),
            ("6.6.6.6, [2001:db8::1]", "2001:db8::1"),
            // A hop that is no address ends the walk: not the forged one left of it.
            ("6.6.6.6, unknown", "10.0.0.1"),
        ] {
            assert_eq!(
                client_ip(&parts("10.0.0.1:5", Some(xff)), &[proxy]),
                client,
                "{xff}"
            );
        }
        // Bytes that are not text spoil only their own hop: the hop the proxy appended right
        // of them is the client; a non-text hop on the right ends the walk at the peer.
        let mut bytes = parts("10.0.0.1:5", None);
        for (value, client) in [
            (&b"\xff\xfe, 9.9.9.9"[..], "9.9.9.9"),
            (b"9.9.9.9, \xff", "10.0.0.1"),
        ] {
            bytes.headers.insert(
                "x-forwarded-for",
                axum::http::HeaderValue::from_bytes(value).unwrap(),
            );
            assert_eq!(client_ip(&bytes, &[proxy]), client, "{value:?}");
        }
        // A trusted proxy seen over IPv6 as an IPv4-mapped address is still trusted.
        assert_eq!(
            client_ip(&parts("[::ffff:10.0.0.1]:5", Some("9.9.9.9")), &[proxy]),
            "9.9.9.9"
        );
    }
}
