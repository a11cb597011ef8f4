//! Configuration: defaults in code, then the config file (TOML), then `ORDERD_*` environment
//! variables, then command-line flags. `validate` reports every bad value at once.
//!
//! Any setting can come from the environment: `ORDERD_LISTEN=0.0.0.0:8080`,
//! `ORDERD_LIMITS__CALL_TIMEOUT_MS=20000` (a double underscore descends into a table), and
//! values are read as TOML where they parse (`ORDERD_TRUSTED_PROXIES='["10.0.0.1"]'`), else as
//! plain strings.

use orderd_actors::Limits;
use orderd_api::oidc::OidcSettings;
use orderd_api::session::SessionSettings;
use orderd_api::ApiLimits;
use orderd_storage::JournalConfig;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub const ENV_PREFIX: &str = "ORDERD_";
/// `ORDERD_*` variables that are not settings: `ORDERD_LOG` is the log filter, and the chaos
/// harness's seed is read by the harness.
pub const NOT_SETTINGS: &[&str] = &["ORDERD_LOG", "ORDERD_CHAOS_SEED"];
/// Shortest `outbox_stall_ms`: a false stall restarts the daemon, so a slow round of a busy
/// relay must never look like one.
pub const OUTBOX_STALL_MIN_MS: u64 = 5_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    pub listen: SocketAddr,
    /// A second address serving only `GET /metrics`, without authentication, for Prometheus
    /// (keep it on loopback or a private network). Unset: no second listener; `/metrics` on
    /// `listen` always needs the operator role.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the journal (sled) and the development signing key live.
    pub data_dir: PathBuf,
    /// Load the demo data set when the store is empty.
    pub demo_data: bool,
    /// Mount `POST /v1/dev/token`. Development only: it signs tokens for anyone who asks.
    /// Unset: on in the embedded default, off when an identity provider is configured; set to
    /// `true` together with an identity provider, start-up is refused.
    pub dev_signin: Option<bool>,
    /// Peers whose X-Forwarded-For header is believed for the audit log's client IP.
    pub trusted_proxies: Vec<IpAddr>,
    /// "text" or "json".
    pub log_format: String,
    /// How long shutdown waits for in-flight requests before closing the journal.
    pub shutdown_grace_ms: u64,
    /// Longest wait of the outbox relay when idle (new durable records wake it at once).
    pub outbox_poll_ms: u64,
    /// How long the outbox relay may stay behind the durable audit head without moving before
    /// orderd counts it as stalled and stops (non-zero exit: its supervisor restarts it).
    pub outbox_stall_ms: u64,
    pub limits: Limits,
    pub api: ApiLimits,
    pub storage: StorageSettings,
    /// Identity providers (OIDC): `--oidc-issuer`, `--oidc-audience`, or `[[oidc.issuers]]`.
    pub oidc: OidcSettings,
    /// Browser sessions (sign-in with the code flow).
    pub session: SessionSettings,
    /// NATS JetStream for events (`--nats-url`); off when `nats.url` is empty.
    pub nats: crate::publisher::NatsSettings,
    /// Signed webhooks: delivery limits and whether private addresses are allowed.
    pub webhooks: orderd_actors::webhooks::WebhookSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    pub commit_batch_max: usize,
    pub commit_linger_group: usize,
    pub commit_linger_us: u64,
    pub queue_max: usize,
    pub cache_capacity_bytes: u64,
    /// fdatasync sled's data file after every group flush (power-loss durability).
    pub sync_data: bool,
    /// A group commit running longer than this: `/readyz` answers 503 and the systemd
    /// watchdog is no longer pinged.
    pub commit_stall_ms: u64,
}

impl Default for StorageSettings {
    fn default() -> StorageSettings {
        let d = JournalConfig::default();
        StorageSettings {
            commit_batch_max: d.commit_batch_max,
            commit_linger_group: d.commit_linger_group,
            commit_linger_us: d.commit_linger_us,
            queue_max: d.queue_max,
            cache_capacity_bytes: d.cache_capacity_bytes,
            sync_data: d.sync_data,
            commit_stall_ms: d.commit_stall_ms,
        }
    }
}

impl StorageSettings {
    pub fn journal(&self) -> JournalConfig {
        JournalConfig {
            commit_batch_max: self.commit_batch_max,
            commit_linger_group: self.commit_linger_group,
            commit_linger_us: self.commit_linger_us,
            queue_max: self.queue_max,
            cache_capacity_bytes: self.cache_capacity_bytes,
            sync_data: self.sync_data,
            commit_stall_ms: self.commit_stall_ms,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            data_dir: PathBuf::from("./data"),
            demo_data: true,
            dev_signin: None,
            trusted_proxies: vec![],
            log_format: "text".into(),
            shutdown_grace_ms: 10_000,
            outbox_poll_ms: 50,
            outbox_stall_ms: 30_000,
            limits: Limits::default(),
            api: ApiLimits::default(),
            storage: StorageSettings::default(),
            oidc: OidcSettings::default(),
            session: SessionSettings::default(),
            nats: Default::default(),
            webhooks: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file: {0}")]
    File(String),
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Parses the file text, overlays `ORDERD_*` variables, then validates.
    pub fn load(file_text: &str, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut table: toml::Table = file_text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File(e.to_string()))?;
        let mut vars: Vec<(&String, &String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !NOT_SETTINGS.contains(&k.as_str()))
            .collect();
        vars.sort();
        for (var, value) in vars {
            let path: Vec<String> = var[ENV_PREFIX.len()..]
                .split("__")
                .map(|p| p.to_ascii_lowercase())
                .collect();
            overlay(&mut table, &path, value).map_err(|reason| ConfigError::Env {
                var: var.clone(),
                reason,
            })?;
        }
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(vec![e.to_string()]))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = self.limits.validate();
        if let Err(e) = self.storage.journal().validate() {
            errs.push(format!("storage: {e}"));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            errs.push(format!(
                "log_format must be text or json, got {:?}",
                self.log_format
            ));
        }
        for (key, zero) in [
            ("api.body_max_bytes", self.api.body_max_bytes == 0),
            ("api.page_max", self.api.page_max == 0),
            ("api.import_rows_max", self.api.import_rows_max == 0),
            (
                "api.import_body_max_bytes",
                self.api.import_body_max_bytes == 0,
            ),
            ("api.event_streams_max", self.api.event_streams_max == 0),
            (
                "api.event_streams_per_account_max",
                self.api.event_streams_per_account_max == 0,
            ),
            (
                "api.event_stream_keepalive_ms",
                self.api.event_stream_keepalive_ms == 0,
            ),
        ] {
            if zero {
                errs.push(format!("{key} must be above 0"));
            }
        }
        for (key, value, max) in [
            (
                "api.event_stream_max_ms",
                self.api.event_stream_max_ms,
                orderd_api::EVENT_STREAM_MAX_MS,
            ),
            (
                "api.event_stream_recheck_ms",
                self.api.event_stream_recheck_ms,
                orderd_api::EVENT_STREAM_RECHECK_MAX_MS,
            ),
            (
                "api.event_reads_max",
                u64::try_from(self.api.event_reads_max).unwrap_or(u64::MAX),
                u64::try_from(orderd_api::EVENT_READS_MAX).unwrap_or(u64::MAX),
            ),
            (
                "api.event_read_wait_ms",
                self.api.event_read_wait_ms,
                orderd_api::EVENT_READ_WAIT_MAX_MS,
            ),
            (
                "api.header_read_timeout_ms",
                self.api.header_read_timeout_ms,
                orderd_api::READ_TIMEOUT_MAX_MS,
            ),
            (
                "api.body_read_timeout_ms",
                self.api.body_read_timeout_ms,
                orderd_api::READ_TIMEOUT_MAX_MS,
            ),
        ] {
            if !(1..=max).contains(&value) {
                errs.push(format!("{key} must be 1 to {max}, got {value}"));
            }
        }
        let body_largest = self.api.body_max_bytes.max(self.api.import_body_max_bytes);
        if self.api.body_buffer_bytes_max < body_largest {
            // A body is refused when it does not fit: one of the largest must.
            errs.push(format!(
                "api.body_buffer_bytes_max must be at least api.body_max_bytes and api.import_body_max_bytes ({body_largest})"
            ));
        }
        errs.extend(self.api.rate_limit.validate());
        errs.extend(self.nats.problems());
        if self.nats.enabled() && self.nats.ack_timeout_ms >= self.shutdown_grace_ms {
            // A graceful stop waits for the publisher's rounds in flight, each up to this long.
            errs.push("nats.ack_timeout_ms must be below shutdown_grace_ms".into());
        }
        errs.extend(self.webhooks.problems());
        errs.extend(self.oidc.validate());
        errs.extend(self.session.validate());
        if self.dev_signin == Some(true) && self.oidc.enabled() {
            errs.push(
                "dev_signin cannot be on when an identity provider is configured (oidc)".into(),
            );
        }
        if self
            .metrics_listen
            .is_some_and(|m| m == self.listen && m.port() != 0)
        {
            errs.push("metrics_listen must differ from listen".into());
        }
        if self.outbox_poll_ms == 0 {
            errs.push("outbox_poll_ms must be above 0".into());
        }
        if self.outbox_stall_ms < OUTBOX_STALL_MIN_MS.max(2 * self.outbox_poll_ms) {
            errs.push(format!(
                "outbox_stall_ms must be at least {OUTBOX_STALL_MIN_MS} and twice outbox_poll_ms"
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

impl Config {
    /// Whether the development sign-in is mounted: only in the embedded default (no identity
    /// provider), unless turned off.
    pub fn dev_signin_on(&self) -> bool {
        !self.oidc.enabled() && self.dev_signin.unwrap_or(true)
    }
}

fn overlay(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty name")?;
    let mut t = table;
    for p in parents {
        t = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or(format!("{p} is not a table"))?;
    }
    // A TOML literal (number, bool, array) when it parses as one; otherwise a plain string.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut v| v.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // Defaults, file, then environment; nested keys and typed values.
    #[test]
    fn file_then_environment() {
        let c = Config::load("", &env(&[])).unwrap();
        assert_eq!(c.listen.port(), 8080);
        let file = "listen = \"127.0.0.1:9000\"\n[limits]\ncall_timeout_ms = 12345\n";
        let c = Config::load(
            file,
            &env(&[
                ("ORDERD_LIMITS__ACCOUNT_INFLIGHT_MAX", "7"),
                ("ORDERD_DATA_DIR", "/tmp/x"),
                ("ORDERD_TRUSTED_PROXIES", "[\"10.0.0.1\"]"),
                ("OTHER", "1"),
                ("ORDERD_LOG", "debug"), // the log filter, not a setting
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.call_timeout_ms, 12345);
        assert_eq!(c.limits.account_inflight_max, 7);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.trusted_proxies.len(), 1);
    }

    // Every bad value is reported, not only the first; unknown keys are refused.
    #[test]
    fn every_bad_value_is_reported() {
        let file = "log_format = \"xml\"\n[limits]\ncall_timeout_ms = 0\norder_lines_max = 0\n";
        let Err(ConfigError::Invalid(errs)) = Config::load(file, &env(&[])) else {
            panic!("should be invalid")
        };
        // The format, both zeros, and a call timeout no longer above the warehouse's.
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(Config::load("nonsense = 1", &env(&[])).is_err());
        assert!(Config::load("", &env(&[("ORDERD_LISTEN", "not an address")])).is_err());
    }

    // An event stream's longest time, its recheck interval, the event log's readers at once
    // and the request read timeouts are bounded both ways.
    #[test]
    fn event_stream_bounds() {
        let load = |file: &str| Config::load(file, &env(&[]));
        assert!(load(
            "[api]\nevent_stream_max_ms = 3600000\nevent_stream_recheck_ms = 60000\nevent_reads_max = 256\nevent_read_wait_ms = 60000\nheader_read_timeout_ms = 600000\nbody_read_timeout_ms = 600000\n"
        )
        .is_ok());
        for bad in [
            "event_stream_max_ms = 0",
            "event_stream_max_ms = 3600001",
            "event_stream_recheck_ms = 0",
            "event_stream_recheck_ms = 60001",
            "event_reads_max = 0",
            "event_reads_max = 257",
            "event_read_wait_ms = 0",
            "event_read_wait_ms = 60001",
            "header_read_timeout_ms = 0",
            "header_read_timeout_ms = 600001",
            "body_read_timeout_ms = 0",
            "body_read_timeout_ms = 600001",
        ] {
            let Err(ConfigError::Invalid(errs)) = load(&format!("[api]\n{bad}\n")) else {
                panic!("{bad} should be refused")
            };
            assert!(errs[0].contains("must be 1 to"), "{bad}: {errs:?}");
        }
    }

    // The memory budget of request bodies holds the largest body a route takes.
    #[test]
    fn body_budget_holds_the_largest_body() {
        let load = |file: &str| Config::load(file, &env(&[]));
        assert!(load("[api]\nbody_buffer_bytes_max = 67108864\n").is_ok());
        let Err(ConfigError::Invalid(errs)) = load("[api]\nbody_buffer_bytes_max = 67108863\n")
        else {
            panic!("below the import limit should be refused")
        };
        assert!(errs[0].contains("api.body_buffer_bytes_max"), "{errs:?}");
    }

    // The relay's stall limit leaves room for an idle relay's wait and a busy round.
    #[test]
    fn outbox_stall_limit() {
        let load = |file: &str| Config::load(file, &env(&[]));
        assert!(load("outbox_stall_ms = 5000\n").is_ok());
        assert!(load("outbox_stall_ms = 4999\n").is_err());
        assert!(load("outbox_poll_ms = 3000\noutbox_stall_ms = 5000\n").is_err());
        assert!(load("outbox_poll_ms = 3000\noutbox_stall_ms = 6000\n").is_ok());
    }

    // A graceful stop can wait for the NATS publisher's PubAcks within the shutdown grace.
    #[test]
    fn nats_ack_timeout_within_the_shutdown_grace() {
        let load = |file: &str| Config::load(file, &env(&[]));
        let nats = "[nats]\nurl = \"nats://127.0.0.1:4222\"\n";
        assert!(load(nats).is_ok());
        assert!(load(&format!("shutdown_grace_ms = 5000\n{nats}")).is_err());
        assert!(load(&format!("shutdown_grace_ms = 5001\n{nats}")).is_ok());
        assert!(
            load("shutdown_grace_ms = 5000\n").is_ok(),
            "no NATS, no PubAcks to wait for"
        );
    }

    // The example production config in ops/ is valid, with its secrets from the environment
    // as it says, and turns the development sign-in off.
    #[test]
    fn the_example_config_is_valid() {
        let file = include_str!("../../ops/orderd.example.toml");
        let c = Config::load(
            file,
            &env(&[
                ("ORDERD_NATS__PASSWORD", "from-the-environment"),
                ("ORDERD_OIDC__CLIENT_SECRET", "from-the-environment"),
            ]),
        )
        .unwrap_or_else(|e| panic!("ops/orderd.example.toml: {e}"));
        assert!(c.nats.enabled() && !c.demo_data && !c.dev_signin_on());
        assert!(
            Config::load(file, &env(&[])).is_err(),
            "without its secrets"
        );
    }

    // A limit of 0 is refused by its key, every one at once.
    #[test]
    fn zero_limits_are_named() {
        let err = Config::load(
            "[api]\npage_max = 0\nevent_stream_keepalive_ms = 0\n",
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("api.page_max must be above 0"), "{err}");
        assert!(
            err.contains("api.event_stream_keepalive_ms must be above 0"),
            "{err}"
        );
    }

    // NATS sign-in settings: a user goes with a password (which Debug never shows), a
    // client certificate with its key, and TLS files must exist.
    #[test]
    fn nats_sign_in() {
        let load = |file: &str, vars: &[(&str, &str)]| Config::load(file, &env(vars));
        let nats = "[nats]\nurl = \"nats://127.0.0.1:4222\"\n";
        let with = |more: &str| format!("{nats}{more}");
        let c = load(
            &with("user = \"orderd\"\n"),
            &[("ORDERD_NATS__PASSWORD", "s3cret")],
        )
        .expect("a user with a password");
        assert_eq!(c.nats.password.0, "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let problems = |file: &str| match load(file, &[]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{file} was taken"),
        };
        let user_alone = problems(&with("user = \"orderd\"\n"));
        assert!(
            user_alone.contains("nats.user and nats.password go together"),
            "{user_alone}"
        );
        let cert_alone = problems(&with("tls_cert_file = \"Cargo.toml\"\n"));
        assert!(
            cert_alone.contains("nats.tls_cert_file and nats.tls_key_file go together"),
            "{cert_alone}"
        );
        let missing = problems(&with("tls_ca_file = \"/nonexistent/ca.pem\"\n"));
        assert!(
            missing.contains("nats.tls_ca_file: no such file \"/nonexistent/ca.pem\""),
            "{missing}"
        );
        let in_url = problems("[nats]\nurl = \"nats://orderd:s3cret@127.0.0.1:4222\"\n");
        assert!(
            in_url.contains("nats.url must not carry a user or password"),
            "{in_url}"
        );
        assert!(!in_url.contains("s3cret"), "{in_url}");
        assert!(
            load("[nats]\nuser = \"orderd\"\n", &[]).is_ok(),
            "without NATS its settings are not checked"
        );
    }

    // Identity providers from the file and the environment; the development sign-in is off
    // with them, and asking for both is refused.
    #[test]
    fn identity_providers() {
        let c = Config::load("", &env(&[])).unwrap();
        assert!(c.dev_signin_on());
        let file = "[oidc]\nissuer = \"https://idp.example\"\naudience = \"urn:orderd\"\n";
        let c = Config::load(file, &env(&[])).unwrap();
        assert!(!c.dev_signin_on());
        assert_eq!(c.oidc.all_issuers()[0].accounts, ["*"]);
        let c = Config::load(
            "",
            &env(&[(
                "ORDERD_OIDC__ISSUERS",
                "[{issuer = \"https://x.example\", audience = \"urn:orderd\", accounts = [\"ACME\"], roles_claim = \"groups\"}]",
            )]),
        )
        .unwrap();
        let x = &c.oidc.all_issuers()[0];
        assert_eq!(
            (
                x.accounts.as_slice(),
                x.roles_claim.as_str(),
                x.user_claim.as_str()
            ),
            (&["ACME".to_owned()][..], "groups", "sub")
        );
        let Err(ConfigError::Invalid(errs)) = Config::load(
            &format!("dev_signin = true\n{file}leeway_s = 61\n"),
            &env(&[]),
        ) else {
            panic!("should be invalid")
        };
        assert!(
            errs.iter().any(|e| e.contains("dev_signin cannot be on")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("leeway_s")), "{errs:?}");
        let Err(ConfigError::Invalid(errs)) = Config::load(
            "[oidc]\nissuer = \"http://idp.example\"\naudience = \"a\"\n[[oidc.issuers]]\nissuer = \"https://y.example\"\naudience = \"a\"\n",
            &env(&[]),
        ) else {
            panic!("should be invalid")
        };
        assert!(errs.iter().any(|e| e.contains("must be https")), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains("accounts must list")),
            "{errs:?}"
        );

        // The verified-token cache: on by default, sized (or turned off) like any limit.
        assert_eq!(
            Config::load("", &env(&[])).unwrap().oidc.token_cache_max,
            10_000
        );
        let c = Config::load(file, &env(&[("ORDERD_OIDC__TOKEN_CACHE_MAX", "0")])).unwrap();
        assert_eq!(c.oidc.token_cache_max, 0);
        let Err(ConfigError::Invalid(errs)) =
            Config::load(&format!("{file}token_cache_max = 100000000\n"), &env(&[]))
        else {
            panic!("should be invalid")
        };
        assert!(
            errs.iter().any(|e| e.contains("token_cache_max")),
            "{errs:?}"
        );
    }
}
