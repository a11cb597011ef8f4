//! A real OpenID Provider for the tests: `ops/oidc/provider.mjs` (the `oidc-provider` package,
//! installed by `ops/test` with `npm ci`) as a child process on a free port, and a client that
//! signs users in through its login and consent forms (code flow with PKCE).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::header::LOCATION;
use reqwest::{Client, StatusCode, Url};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// From spawn to the provider printing its issuer.
const PROVIDER_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed in one sign-in before giving up.
const SIGN_IN_HOPS_MAX: usize = 12;
/// Timeout of one request to the provider.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Lifetime of access and ID tokens unless a test asks for another.
const DEFAULT_TOKEN_TTL_S: u64 = 600;
/// The audience (resource indicator) of orderd's access tokens in the tests.
pub const AUDIENCE: &str = "urn:orderd";
/// The tests' own client at the provider, and where its codes go (never contacted).
pub const TEST_CLIENT: &str = "tests";
pub const TEST_SECRET: &str = "tests-secret-tests-secret-tests-secret";
pub const TEST_REDIRECT: &str = "http://127.0.0.1:9/callback";

pub struct Provider {
    child: Child,
    pub issuer: String,
    http: Client,
}

/// The tokens of one sign-in.
pub struct Tokens {
    pub access_token: String,
    pub id_token: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops/oidc/provider.mjs")
}

/// Claims the provider adds to the access tokens of `login`.
pub fn user(account: Option<&str>, roles: &[&str], warehouse: Option<&str>) -> Value {
    let mut v = json!({ "roles": roles });
    if let Some(a) = account {
        v["account_id"] = json!(a);
    }
    if let Some(w) = warehouse {
        v["warehouse_id"] = json!(w);
    }
    v
}

impl Provider {
    /// Starts the provider with `users` (login -> extra claims) and the tests' client plus
    /// `clients`. Panics, loudly, when Node or the installed package is missing: run `ops/test`.
    pub fn start(users: &Value, clients: &[Value]) -> Provider {
        Provider::start_with_token_ttl(users, clients, DEFAULT_TOKEN_TTL_S)
    }

    /// As [`Provider::start`], with access and ID tokens valid for `ttl_s` seconds.
    pub fn start_with_token_ttl(users: &Value, clients: &[Value], ttl_s: u64) -> Provider {
        let modules = script()
            .with_file_name("node_modules")
            .join("oidc-provider");
        assert!(
            modules.is_dir(),
            "{} is missing: run ops/test (it installs the pinned oidc-provider with npm ci)",
            modules.display()
        );
        let mut all = vec![
            json!({"client_id": TEST_CLIENT, "client_secret": TEST_SECRET, "redirect_uris": [TEST_REDIRECT]}),
        ];
        all.extend(clients.iter().cloned());
        let mut child = Command::new("node")
            .arg(script())
            .env("OIDC_AUDIENCE", AUDIENCE)
            .env("OIDC_USERS", users.to_string())
            .env("OIDC_CLIENTS", Value::from(all).to_string())
            .env("OIDC_TOKEN_TTL", ttl_s.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its warnings (unsupported Node version, development adapter) are expected.
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting node (install Node.js; ops/test does): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send(first);
            // Keep draining: a closed pipe would kill the provider at its next write.
            for _ in lines.map_while(Result::ok) {}
        });
        let line = rx
            .recv_timeout(PROVIDER_STARTUP_TIMEOUT)
            .expect("the OpenID Provider did not start in time");
        let issuer = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["issuer"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("the OpenID Provider printed {line:?}"));
        Provider {
            child,
            issuer,
            http: Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("HTTP client"),
        }
    }

    async fn test_call(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.issuer))
            .json(&body)
            .send()
            .await
            .expect("provider test endpoint");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.json().await.expect("JSON")
    }

    /// A new signing key first in the JWKS (the old ones kept unless `drop_old`); its kid.
    pub async fn rotate(&self, drop_old: bool) -> String {
        self.test_call("/_test/rotate", json!({"drop_old": drop_old}))
            .await["kid"]
            .as_str()
            .expect("kid")
            .to_owned()
    }

    /// Takes the JWKS endpoint down (503) or brings it back.
    pub async fn set_jwks_down(&self, down: bool) {
        self.test_call("/_test/jwks", json!({"down": down})).await;
    }

    /// Replaces the registered clients (the tests' own client stays).
    pub async fn set_clients(&self, clients: &[Value]) {
        let mut all = vec![
            json!({"client_id": TEST_CLIENT, "client_secret": TEST_SECRET, "redirect_uris": [TEST_REDIRECT]}),
        ];
        all.extend(clients.iter().cloned());
        self.test_call("/_test/clients", Value::from(all)).await;
    }

    /// A JWS of `payload` with `header` (alg RS256 and kid added unless given), signed with the
    /// provider's current key or, with `stranger`, a key it never published.
    pub async fn sign(&self, header: Value, payload: Value, stranger: bool) -> String {
        let key = if stranger { "stranger" } else { "current" };
        self.test_call(
            "/_test/sign",
            json!({"header": header, "payload": payload, "key": key}),
        )
        .await["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// A count of the provider's test statistics.
    async fn stat(&self, name: &str) -> u64 {
        let r = self
            .http
            .get(format!("{}/_test/stats", self.issuer))
            .send()
            .await
            .expect("stats");
        r.json::<Value>().await.expect("JSON")[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no count {name}"))
    }

    /// How often the JWKS was requested.
    pub async fn jwks_requests(&self) -> u64 {
        self.stat("jwks_requests").await
    }

    /// How many refresh grants succeeded.
    pub async fn refreshes(&self) -> u64 {
        self.stat("refreshes").await
    }

    /// Disables `login` (its refresh tokens stop working), or enables it again.
    pub async fn set_disabled(&self, login: &str, disabled: bool) {
        self.test_call(
            "/_test/disable",
            json!({"login": login, "disabled": disabled}),
        )
        .await;
    }

    /// The provider's published keys.
    pub async fn jwks(&self) -> Value {
        self.http
            .get(format!("{}/jwks", self.issuer))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("JSON")
    }

    /// Signs `login` in as the tests' client (code flow with PKCE) and redeems the code.
    pub async fn tokens(&self, login: &str) -> Tokens {
        let verifier = format!("v-{}-{}", login, uuid_like());
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let mut auth = Url::parse(&format!("{}/auth", self.issuer)).expect("URL");
        auth.query_pairs_mut()
            .append_pair("client_id", TEST_CLIENT)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid orders")
            .append_pair("redirect_uri", TEST_REDIRECT)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", "s1")
            .append_pair("nonce", "n1");
        let end = sign_in_at_provider(auth, login, TEST_REDIRECT).await;
        let code = end
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no code in {end}"));
        let r = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(TEST_CLIENT, Some(TEST_SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", TEST_REDIRECT),
                ("code_verifier", &verifier),
            ])
            .send()
            .await
            .expect("token request");
        let v: Value = r.json().await.expect("token JSON");
        Tokens {
            access_token: v["access_token"]
                .as_str()
                .unwrap_or_else(|| panic!("no access token: {v}"))
                .to_owned(),
            id_token: v["id_token"].as_str().expect("id token").to_owned(),
        }
    }

    /// The access token of `login`.
    pub async fn access_token(&self, login: &str) -> String {
        self.tokens(login).await.access_token
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{t:x}-0123456789abcdefghijklmnopqrstuvwxyz")
}

/// Follows a sign-in from `start` through the provider's login and consent forms, as a browser
/// would, until it is sent to a URL starting with `done_prefix`; that URL.
pub async fn sign_in_at_provider(start: Url, login: &str, done_prefix: &str) -> Url {
    let browser = Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("HTTP client");
    let mut url = start;
    let mut logged_in = false;
    for _ in 0..SIGN_IN_HOPS_MAX {
        let r = if url.path().starts_with("/interaction/") {
            let prompt = if logged_in { "consent" } else { "login" };
            logged_in = true;
            browser
                .post(url.clone())
                .form(&[("prompt", prompt), ("login", login), ("password", "any")])
                .send()
                .await
        } else {
            browser.get(url.clone()).send().await
        }
        .expect("provider request");
        let location = r
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{url} answered {} without a redirect", r.status()))
            .to_owned();
        url = url.join(&location).expect("redirect URL");
        if url.as_str().starts_with(done_prefix) {
            return url;
        }
    }
    panic!("the sign-in did not finish within {SIGN_IN_HOPS_MAX} redirects (at {url})")
}
