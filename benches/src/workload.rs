//! The benchmark's data set and order mix.
//!
//! The data set is imported through the API as CSV (formats: `orderd_api::import_csv`):
//! a flat catalog of active SKUs with list-price tiers, warehouses with speed bands and so much
//! stock that it never runs out during a run, accounts with credit limits no run can reach and
//! no approval rules, and one ship-to per account. Every account's ship-to is called
//! [`SHIP_TO`], so one order body fits every account and bodies can be built before the run.
//!
//! The mix is a list of order sizes (lines per order) with weights in percent, e.g.
//! `1:70,10:25,100:5`.

use crate::loadgen::RequestSource;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::Request;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::Arc;

/// The ship-to id every account has.
pub const SHIP_TO: &str = "MAIN";
/// On-hand stock of every SKU in every warehouse: no run gets near it.
pub const STOCK_ON_HAND: u64 = 1_000_000_000_000;
/// Credit limit of every account (EUR): no run gets near it.
pub const CREDIT_LIMIT: &str = "1000000000000";
/// Largest quantity on one line (quantities are 1..=this).
pub const LINE_QTY_MAX: u64 = 10;

/// Warehouses of the data set: id, name, lat, lon, speed bands.
const WAREHOUSES: [(&str, &str, f64, f64, &str); 3] = [
    (
        "W-HAM",
        "Hamburg",
        53.55,
        9.99,
        "express:300:1;standard:2000:3",
    ),
    (
        "W-MUC",
        "Munich",
        48.14,
        11.58,
        "express:300:1;standard:2000:3",
    ),
    (
        "W-BER",
        "Berlin",
        52.52,
        13.40,
        "express:300:1;standard:2000:2",
    ),
];

/// A small, fast, deterministic generator (SplitMix64). Not for anything but load shaping.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant for load shaping).
    pub fn below(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).unwrap_or(u64::MAX).max(1);
        usize::try_from(self.next_u64() % n64).unwrap_or(0)
    }
}

/// Sizes of the data set.
#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub skus: usize,
    pub accounts: usize,
    /// Buyer tokens are issued for the first this many accounts only (`None`: all); the scale
    /// test loads far more accounts than it drives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_accounts: Option<usize>,
}

impl Dataset {
    pub fn sku(i: usize) -> String {
        format!("SKU-{i:05}")
    }

    pub fn account(i: usize) -> String {
        format!("A{i:04}")
    }

    pub fn warehouses(&self) -> usize {
        WAREHOUSES.len()
    }

    /// The imports in the order they must run (warehouses and catalog before stock, accounts
    /// before their ship-tos, prices last): (kind, CSV text).
    pub fn imports(&self) -> Vec<(&'static str, String)> {
        vec![
            ("catalog", self.catalog_csv()),
            ("warehouses", warehouses_csv()),
            ("accounts", self.accounts_csv()),
            ("ship_tos", self.ship_tos_csv()),
            ("prices", self.prices_csv()),
        ]
        .into_iter()
        // One stock import per warehouse: a million SKUs in three warehouses would be more
        // rows than one import may have.
        .chain(
            WAREHOUSES
                .iter()
                .map(|(w, ..)| ("stock", self.stock_csv_of(w))),
        )
        .collect()
    }

    /// Stock of one warehouse.
    pub fn stock_csv_of(&self, warehouse: &str) -> String {
        let mut s = String::from("warehouse,sku,on_hand\n");
        for i in 0..self.skus {
            let _ = writeln!(s, "{warehouse},{},{STOCK_ON_HAND}", Dataset::sku(i));
        }
        s
    }

    pub fn catalog_csv(&self) -> String {
        let mut s = String::from("sku,description,uom,pack_size,min_qty,status,segments,kit\n");
        for i in 0..self.skus {
            let _ = writeln!(s, "{},Bench item {i},EA,1,1,active,,", Dataset::sku(i));
        }
        s
    }

    /// List prices with three quantity tiers, 0.50 to 20.49 EUR.
    pub fn prices_csv(&self) -> String {
        let mut s = String::from("level,owner,sku,currency,valid_from,valid_to,tiers\n");
        for i in 0..self.skus {
            let cents = 50 + (i * 37) % 2_000;
            let tier = |pct: usize| {
                let c = cents * pct / 100;
                format!("{}.{:02}", c / 100, c % 100)
            };
            let _ = writeln!(
                s,
                "list,,{},EUR,,,1:{};10:{};100:{}",
                Dataset::sku(i),
                tier(100),
                tier(95),
                tier(85)
            );
        }
        s
    }

    pub fn stock_csv(&self) -> String {
        let mut s = String::from("warehouse,sku,on_hand\n");
        for (w, ..) in WAREHOUSES {
            for i in 0..self.skus {
                let _ = writeln!(s, "{w},{},{STOCK_ON_HAND}", Dataset::sku(i));
            }
        }
        s
    }

    /// No buyer or approver limits, no restricted SKUs, no approval for new ship-tos: every
    /// valid order is confirmed and allocated at once.
    pub fn accounts_csv(&self) -> String {
        let mut s = String::from(
            "id,name,segment,currency,credit_limit,open_receivables,payment_terms,buyer_limit,approver_limit,restricted_skus,approve_new_ship_to\n",
        );
        for i in 0..self.accounts {
            let _ = writeln!(
                s,
                "{},Bench account {i},retail,EUR,{CREDIT_LIMIT},0,net30,,,,false",
                Dataset::account(i)
            );
        }
        s
    }

    /// One ship-to per account, spread over Germany.
    pub fn ship_tos_csv(&self) -> String {
        let mut s = String::from("account,id,address,lat,lon\n");
        for i in 0..self.accounts {
            let lat = 47.5 + (i % 50) as f64 * 0.1;
            let lon = 6.0 + (i % 80) as f64 * 0.1;
            let _ = writeln!(
                s,
                "{},{SHIP_TO},Bench street {i},{lat:.2},{lon:.2}",
                Dataset::account(i)
            );
        }
        s
    }
}

fn warehouses_csv() -> String {
    let mut s = String::from("id,name,lat,lon,speeds\n");
    for (id, name, lat, lon, speeds) in WAREHOUSES {
        let _ = writeln!(s, "{id},{name},{lat},{lon},{speeds}");
    }
    s
}

/// One order size of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SizeClass {
    pub lines: usize,
    pub weight_pct: u32,
}

/// Order sizes with weights summing to 100.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mix {
    pub classes: Vec<SizeClass>,
}

impl Mix {
    /// Parses `LINES:PCT,LINES:PCT,...`; the weights must sum to 100 and every size be at
    /// least 1 and at most `skus` (lines of one order use distinct SKUs).
    pub fn parse(s: &str, skus: usize) -> Result<Mix, String> {
        let mut classes = vec![];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (l, w) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not LINES:PERCENT"))?;
            let lines: usize = l.trim().parse().map_err(|_| format!("lines {l:?}"))?;
            let weight_pct: u32 = w.trim().parse().map_err(|_| format!("percent {w:?}"))?;
            if lines == 0 || lines > skus {
                return Err(format!("an order has 1..={skus} lines, not {lines}"));
            }
            if weight_pct > 0 {
                classes.push(SizeClass { lines, weight_pct });
            }
        }
        let sum: u32 = classes.iter().map(|c| c.weight_pct).sum();
        if sum != 100 {
            return Err(format!("the weights sum to {sum}, not 100"));
        }
        Ok(Mix { classes })
    }

    /// Only orders of `lines` lines.
    pub fn single(lines: usize) -> Mix {
        Mix {
            classes: vec![SizeClass {
                lines,
                weight_pct: 100,
            }],
        }
    }

    /// The class for a number uniform in `0..100`.
    pub fn pick(&self, percentile: u32) -> usize {
        let mut acc = 0;
        for (i, c) in self.classes.iter().enumerate() {
            acc += c.weight_pct;
            if percentile < acc {
                return i;
            }
        }
        self.classes.len().saturating_sub(1)
    }

    pub fn describe(&self) -> String {
        self.classes
            .iter()
            .map(|c| format!("{} line(s) {}%", c.lines, c.weight_pct))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Mean lines per order.
    pub fn mean_lines(&self) -> f64 {
        self.classes
            .iter()
            .map(|c| c.lines as f64 * f64::from(c.weight_pct) / 100.0)
            .sum()
    }
}

#[derive(Serialize)]
struct LineJson<'a> {
    sku: &'a str,
    qty: u64,
}

#[derive(Serialize)]
struct OrderJson<'a> {
    lines: Vec<LineJson<'a>>,
    ship_to: &'a str,
}

/// The JSON body of `POST /v1/orders` with `lines` distinct random SKUs and quantities.
pub fn order_body(dataset: &Dataset, lines: usize, rng: &mut Rng) -> Vec<u8> {
    let mut picked: Vec<usize> = Vec::with_capacity(lines);
    while picked.len() < lines.min(dataset.skus) {
        let i = rng.below(dataset.skus);
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    let skus: Vec<String> = picked.into_iter().map(Dataset::sku).collect();
    let body = OrderJson {
        lines: skus
            .iter()
            .map(|s| LineJson {
                sku: s,
                qty: 1 + rng.next_u64() % LINE_QTY_MAX,
            })
            .collect(),
        ship_to: SHIP_TO,
    };
    serde_json::to_vec(&body).expect("serializing plain structs cannot fail")
}

/// Bodies built before the run, per size class, so the generator only picks one.
pub struct BodyPool {
    pub mix: Mix,
    pub bodies: Vec<Vec<Bytes>>,
}

impl BodyPool {
    pub fn build(dataset: &Dataset, mix: &Mix, per_class: usize, seed: u64) -> BodyPool {
        let mut rng = Rng::new(seed);
        let bodies = mix
            .classes
            .iter()
            .map(|c| {
                (0..per_class.max(1))
                    .map(|_| Bytes::from(order_body(dataset, c.lines, &mut rng)))
                    .collect()
            })
            .collect();
        BodyPool {
            mix: mix.clone(),
            bodies,
        }
    }

    /// Mean body size per class, in bytes.
    pub fn class_body_bytes(&self) -> Vec<f64> {
        self.bodies
            .iter()
            .map(|b| b.iter().map(Bytes::len).sum::<usize>() as f64 / b.len().max(1) as f64)
            .collect()
    }

    /// Mean body size of the mix (weighted by the class weights), in bytes.
    pub fn mean_body_bytes(&self) -> f64 {
        self.class_body_bytes()
            .iter()
            .zip(&self.mix.classes)
            .map(|(b, c)| b * f64::from(c.weight_pct) / 100.0)
            .sum()
    }
}

/// The requests of a step: `POST /v1/orders` with a body of the mix, the bearer token of a
/// random account and a unique `Idempotency-Key`.
pub struct OrderSource {
    pub pool: Arc<BodyPool>,
    /// `Bearer ...` header values, one per account.
    pub tokens: Vec<HeaderValue>,
    /// Starts every idempotency key (the request's number follows it).
    pub key_prefix: String,
    pub seed: u64,
}

impl RequestSource for OrderSource {
    fn request(&self, seq: u64) -> (usize, Request<Full<Bytes>>) {
        // One generator per request, derived from its number: no shared state between tasks.
        let mut rng = Rng::new(self.seed ^ seq.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let percentile = u32::try_from(rng.next_u64() % 100).unwrap_or(0);
        let class = self.pool.mix.pick(percentile);
        let bodies = &self.pool.bodies[class];
        let body = bodies[rng.below(bodies.len())].clone();
        let key = format!("{}-{seq}", self.key_prefix);
        let mut req = Request::post("/v1/orders")
            .header(HOST, "orderd-bench")
            .header(CONTENT_TYPE, "application/json")
            .header("idempotency-key", key);
        if !self.tokens.is_empty() {
            let token = self.tokens[rng.below(self.tokens.len())].clone();
            req = req.header(AUTHORIZATION, token);
        }
        let req = req.body(Full::new(body)).expect("static parts are valid");
        (class, req)
    }

    fn class_labels(&self) -> Vec<String> {
        self.pool
            .mix
            .classes
            .iter()
            .map(|c| format!("{}-line", c.lines))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The mix parses, refuses bad weights, and picks classes in proportion to their weights.
    #[test]
    fn mix_parses_and_picks_by_weight() {
        let mix = Mix::parse("1:70, 10:25, 100:5", 2000).unwrap();
        assert_eq!(mix.classes.len(), 3);
        let counts = (0..100).fold([0u32; 3], |mut acc, p| {
            acc[mix.pick(p)] += 1;
            acc
        });
        assert_eq!(counts, [70, 25, 5]);
        assert!((mix.mean_lines() - (0.7 + 2.5 + 5.0)).abs() < 1e-9);
        assert!(Mix::parse("1:70,10:20", 2000).unwrap_err().contains("90"));
        assert!(Mix::parse("0:100", 2000).is_err());
        assert!(Mix::parse("100:100", 50).is_err());
        assert!(Mix::parse("1-100", 50).is_err());
    }

    // Generated CSVs have a header and one row per item, and a body has distinct SKUs that
    // exist in the catalog.
    #[test]
    fn csvs_and_bodies_match_the_data_set() {
        let d = Dataset {
            skus: 30,
            accounts: 4,
            token_accounts: None,
        };
        let rows = |s: &str| s.lines().count() - 1;
        assert_eq!(rows(&d.catalog_csv()), 30);
        assert_eq!(rows(&d.prices_csv()), 30);
        assert_eq!(rows(&d.stock_csv()), 30 * d.warehouses());
        assert_eq!(rows(&d.accounts_csv()), 4);
        assert_eq!(rows(&d.ship_tos_csv()), 4);
        assert!(d
            .prices_csv()
            .contains("list,,SKU-00000,EUR,,,1:0.50;10:0.47;100:0.42"));
        for (_, csv) in d.imports() {
            let header_cols = csv.lines().next().unwrap().split(',').count();
            assert!(
                csv.lines().all(|l| l.split(',').count() == header_cols),
                "{csv}"
            );
        }
        let mut rng = Rng::new(7);
        let body: serde_json::Value =
            serde_json::from_slice(&order_body(&d, 20, &mut rng)).unwrap();
        let lines = body["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 20);
        let mut skus: Vec<&str> = lines.iter().map(|l| l["sku"].as_str().unwrap()).collect();
        skus.sort();
        skus.dedup();
        assert_eq!(skus.len(), 20);
        assert!(skus
            .iter()
            .all(|s| d.catalog_csv().contains(&format!("\n{s},"))));
        assert_eq!(body["ship_to"], SHIP_TO);
    }
}
