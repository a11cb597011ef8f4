//! The bounded cache of verified access tokens (see `oidc.rs`): a token whose signature and
//! claims were checked once is served from here until it expires, so the signature check (the
//! costly part, ~200 µs for RS256) runs once per token rather than once per request.
//!
//! Keyed by the SHA-256 of the raw token: the token itself is never kept. An entry holds only
//! what the full check established (the caller without the request's IP, `exp`, `nbf`, issuer,
//! `kid` and the fingerprint of the key that verified it); whether it may still be served is
//! decided by `oidc.rs` on every hit. Failures are never cached. Eviction is the cache crate's
//! (S3-FIFO); this file adds no eviction of its own.

use orderd_actors::audit::Caller;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, OptionsBuilder, UnitWeighter};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Most shards of the cache (each has its own lock); fewer when the capacity is small.
const SHARDS_MAX: usize = 8;
/// Smallest number of entries per shard (below this, fewer shards).
const SHARD_ENTRIES_MIN: usize = 32;

/// SHA-256 of a raw token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }
}

/// What the full check of one token established.
#[derive(Debug)]
pub struct Verified {
    /// The caller the token speaks for, with an empty `ip` (each request brings its own).
    pub caller: Caller,
    /// `exp` and `nbf` (Unix seconds), checked again on every hit.
    pub exp: u64,
    pub nbf: Option<u64>,
    /// The issuer (`iss`) whose key verified the token.
    pub issuer: String,
    /// The header's `kid` (`None`: the issuer's only key) and a fingerprint of the key it
    /// named then: the entry is served only while the issuer still publishes that same key.
    pub kid: Option<String>,
    pub key_fingerprint: [u8; 32],
}

impl Verified {
    /// Whether `exp` and `nbf` hold at `now_s` within `leeway_s`, by jsonwebtoken's rules (the
    /// ones the full check applied): expired when `exp < now - leeway`, not yet valid when
    /// `nbf > now + leeway`.
    pub fn in_time(&self, now_s: u64, leeway_s: u64) -> bool {
        self.exp >= now_s.saturating_sub(leeway_s)
            && self
                .nbf
                .is_none_or(|nbf| nbf <= now_s.saturating_add(leeway_s))
    }

    /// The cached caller, for the request from `ip`.
    pub fn caller_at(&self, ip: String) -> Caller {
        Caller {
            ip,
            ..self.caller.clone()
        }
    }
}

/// At most `capacity` verified tokens.
pub struct TokenCache {
    entries: Cache<TokenDigest, Arc<Verified>>,
}

impl TokenCache {
    /// A cache of at most `max` entries; `None` when `max` is 0 (caching off).
    ///
    /// The crate splits the capacity evenly over its shards (rounding each shard up), so the
    /// capacity handed to it is `max` rounded down to a multiple of the shard count: the cache
    /// never holds more than `max` (at most `SHARDS_MAX - 1` fewer).
    pub fn new(max: usize) -> Option<TokenCache> {
        if max == 0 {
            return None;
        }
        let mut shards = SHARDS_MAX;
        while shards > 1 && max / shards < SHARD_ENTRIES_MIN {
            shards /= 2;
        }
        let capacity = max - max % shards;
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(capacity)
            .weight_capacity(u64::try_from(capacity).unwrap_or(u64::MAX))
            .build()
            .ok()?;
        Some(TokenCache {
            entries: Cache::with_options(
                options,
                UnitWeighter,
                DefaultHashBuilder::default(),
                Default::default(),
            ),
        })
    }

    pub fn get(&self, digest: &TokenDigest) -> Option<Arc<Verified>> {
        self.entries.get(digest)
    }

    pub fn insert(&self, digest: TokenDigest, verified: Verified) {
        self.entries.insert(digest, Arc::new(verified));
    }

    pub fn remove(&self, digest: &TokenDigest) {
        self.entries.remove(digest);
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_domain::account::Role;
    use orderd_domain::ids::UserId;

    fn verified(exp: u64, nbf: Option<u64>) -> Verified {
        Verified {
            caller: Caller {
                account: None,
                user: UserId::parse("op").expect("user id"),
                roles: [Role::Operator].into(),
                warehouse: None,
                ip: String::new(),
            },
            exp,
            nbf,
            issuer: "https://idp.example".into(),
            kid: Some("k1".into()),
            key_fingerprint: [0; 32],
        }
    }

    // The time rules on a hit, at their edges, with and without leeway.
    #[test]
    fn in_time_follows_the_full_checks_rules() {
        let now = 1_000_000;
        let cases = [
            // (exp, nbf, leeway, usable)
            (now, None, 0, true),
            (now - 1, None, 0, false),
            (now - 60, None, 60, true),
            (now - 61, None, 60, false),
            (now + 10, Some(now), 0, true),
            (now + 10, Some(now + 1), 0, false),
            (now + 100, Some(now + 60), 60, true),
            (now + 100, Some(now + 61), 60, false),
        ];
        for (exp, nbf, leeway, usable) in cases {
            assert_eq!(
                verified(exp, nbf).in_time(now, leeway),
                usable,
                "exp {exp} nbf {nbf:?} leeway {leeway}"
            );
        }
    }

    // Many more tokens than the capacity: the cache never holds more than its setting, for
    // capacities small (one shard) and larger (several shards, not a multiple of their count).
    #[test]
    fn capacity_is_never_exceeded() {
        for max in [1, 7, 100, 1_001, 10_000] {
            let cache = TokenCache::new(max).expect("a cache");
            for i in 0..max * 3 + 50 {
                cache.insert(TokenDigest::of(&format!("token-{i}")), verified(1, None));
                assert!(cache.len() <= max, "max {max}: {} entries", cache.len());
            }
            assert!(
                cache.len() + SHARDS_MAX > max,
                "max {max}: only {}",
                cache.len()
            );
        }
        assert!(TokenCache::new(0).is_none(), "0 turns the cache off");
    }

    // A digest is of the whole string: one changed character is another key.
    #[test]
    fn digests_differ_for_different_tokens() {
        let cache = TokenCache::new(10).expect("a cache");
        cache.insert(TokenDigest::of("aaa.bbb.ccc"), verified(1, None));
        assert!(cache.get(&TokenDigest::of("aaa.bbb.ccc")).is_some());
        assert!(cache.get(&TokenDigest::of("aaa.bbb.ccd")).is_none());
        assert!(cache.get(&TokenDigest::of("aaa.bbb.cc")).is_none());
    }
}
