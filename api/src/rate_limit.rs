//! Rate limits (governor's GCRA): state-changing requests per account and per token, sign-ins
//! per client address. Over a limit the answer is 429 with Retry-After.
//!
//! Each limiter keeps one entry per key; above `keys_max` entries it first forgets keys that are
//! back at full allowance, and refuses new keys while it is still full.

use crate::error::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// State-changing requests per second, per account (operators and warehouses: per user).
    pub account_mutations_per_s: u32,
    /// Burst above that rate, per account.
    pub account_mutations_burst: u32,
    /// State-changing requests per second, per token or session.
    pub token_mutations_per_s: u32,
    pub token_mutations_burst: u32,
    /// Sign-in attempts (`/auth/login`, `/auth/callback`, `/v1/dev/token`) per minute, per
    /// client address.
    pub logins_per_min: u32,
    pub logins_burst: u32,
    /// Most keys each limiter tracks at once.
    pub keys_max: usize,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            account_mutations_per_s: 200,
            account_mutations_burst: 400,
            token_mutations_per_s: 100,
            token_mutations_burst: 200,
            logins_per_min: 60,
            logins_burst: 30,
            keys_max: 100_000,
        }
    }
}

impl RateLimits {
    pub fn validate(&self) -> Vec<String> {
        let mut errs = vec![];
        for (name, v) in [
            ("account_mutations_per_s", self.account_mutations_per_s),
            ("account_mutations_burst", self.account_mutations_burst),
            ("token_mutations_per_s", self.token_mutations_per_s),
            ("token_mutations_burst", self.token_mutations_burst),
            ("logins_per_min", self.logins_per_min),
            ("logins_burst", self.logins_burst),
        ] {
            if v == 0 {
                errs.push(format!("api.rate_limit.{name} must be above 0"));
            }
        }
        if self.keys_max == 0 {
            errs.push("api.rate_limit.keys_max must be above 0".into());
        }
        errs
    }
}

/// The key a sign-in from `client` counts under: an IPv4 address itself, an IPv6 address its
/// /64. One site or host is usually handed a whole /64, so counting per IPv6 address would give
/// it 2^64 allowances, and the addresses of one /64 could fill the limiter's `keys_max` and
/// lock every new client out of signing in. Anything else (no address known) is one key.
pub fn login_key(client: &str) -> String {
    match client.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V6(v6)) => {
            let prefix = u128::from(v6) & !(u128::MAX >> 64);
            format!("{}/64", Ipv6Addr::from(prefix))
        }
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => client.to_owned(),
    }
}

/// What a limit applies to (named in the 429's detail).
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Account,
    Token,
    Login,
}

impl Scope {
    /// What the limit counts, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Token => "token",
            Scope::Login => "sign-in",
        }
    }
}

pub struct RateLimiter {
    account: DefaultKeyedRateLimiter<String>,
    token: DefaultKeyedRateLimiter<String>,
    login: DefaultKeyedRateLimiter<String>,
    keys_max: usize,
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

impl RateLimiter {
    /// From validated limits (a zero is read as one).
    pub fn new(l: &RateLimits) -> RateLimiter {
        let per_s = |rate, burst| Quota::per_second(nz(rate)).allow_burst(nz(burst));
        RateLimiter {
            account: governor::RateLimiter::keyed(per_s(
                l.account_mutations_per_s,
                l.account_mutations_burst,
            )),
            token: governor::RateLimiter::keyed(per_s(
                l.token_mutations_per_s,
                l.token_mutations_burst,
            )),
            login: governor::RateLimiter::keyed(
                Quota::per_minute(nz(l.logins_per_min)).allow_burst(nz(l.logins_burst)),
            ),
            keys_max: l.keys_max,
        }
    }

    /// One state-changing request of `account` (or user) with `token` (a digest of it). The
    /// token is charged first, so that requests it is refused do not use up the account's budget:
    /// one runaway client then cannot lock the account's other users out.
    pub fn mutation(&self, account: &str, token: &str) -> Result<(), ApiError> {
        self.check(&self.token, token, Scope::Token)?;
        self.check(&self.account, account, Scope::Account)
    }

    /// One sign-in attempt from `client` (an address; see [`login_key`]).
    pub fn login(&self, client: &str) -> Result<(), ApiError> {
        self.check(&self.login, &login_key(client), Scope::Login)
    }

    fn check(
        &self,
        limiter: &DefaultKeyedRateLimiter<String>,
        key: &str,
        scope: Scope,
    ) -> Result<(), ApiError> {
        if limiter.len() >= self.keys_max {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            if limiter.len() >= self.keys_max {
                return Err(ApiError::RateLimited {
                    scope,
                    retry_after_s: 1,
                });
            }
        }
        limiter.check_key(&key.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                scope,
                retry_after_s: u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Sign-ins count per IPv4 address and per IPv6 /64: the addresses of one /64 share one
    // allowance, another /64 has its own.
    #[test]
    fn sign_ins_count_per_ipv6_prefix() {
        assert_eq!(login_key("203.0.113.7"), "203.0.113.7");
        assert_eq!(login_key("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(login_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(login_key("unknown"), "unknown");
        let limiter = RateLimiter::new(&RateLimits {
            logins_burst: 2,
            logins_per_min: 1,
            ..RateLimits::default()
        });
        assert!(limiter.login("2001:db8:1:2::1").is_ok());
        assert!(limiter.login("2001:db8:1:2::2").is_ok());
        assert!(
            limiter.login("2001:db8:1:2:ffff::3").is_err(),
            "a third address of the same /64 shares its allowance"
        );
        assert!(limiter.login("2001:db8:1:3::1").is_ok(), "another /64");
        assert!(limiter.login("203.0.113.7").is_ok());
    }
}
