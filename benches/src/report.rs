//! The benchmark's report: `report.json` (every step, the final figures, the machine, the
//! limits) and `report.md` (the same, as tables a person reads).

use crate::loadgen::{Criteria, StepResult};
use crate::workload::{Dataset, Mix};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub mem_total_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            mem_total_gib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0 / 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub search_warmup_s: f64,
    pub search_window_s: f64,
    pub run_warmup_s: f64,
    pub run_window_s: f64,
    pub drain_max_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub dataset: Dataset,
    pub mix: Mix,
    pub mix_description: String,
    pub mean_lines_per_order: f64,
    /// (lines per order, mean body bytes)
    pub body_bytes_per_class: Vec<(usize, f64)>,
    pub mean_body_bytes: f64,
    pub connections: usize,
    pub client_threads: usize,
    /// Environment given to orderd (its limits for the run).
    pub daemon_env: Vec<(String, String)>,
    pub fresh_daemon_per_step: bool,
    /// Mean seconds to start orderd and load the data set.
    pub daemon_setup_s: f64,
    pub ceiling: String,
    pub timings: Timings,
    pub criteria: Criteria,
    pub load_pct: u32,
}

/// The figures of one fixed-rate run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunFigures {
    pub rate: u64,
    pub achieved_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub server_cores: f64,
    pub server_cpu_us_per_ok: f64,
    pub loadgen_cores: f64,
    pub loadgen_cpu_us_per_request: f64,
    /// Cores used by other processes on the machine (noise).
    pub other_cores: f64,
    /// p99 per size class (label, ms).
    pub class_p99_ms: Vec<(String, f64)>,
}

impl RunFigures {
    pub fn of(s: &StepResult) -> RunFigures {
        RunFigures {
            rate: s.target_rate,
            achieved_rate: s.achieved_rate,
            p50_ms: s.latency.p50_ms,
            p99_ms: s.latency.p99_ms,
            p999_ms: s.latency.p999_ms,
            max_ms: s.latency.max_ms,
            errors: s.error_count(),
            server_cores: s.server_cpu.as_ref().map_or(0.0, |c| c.cores()),
            server_cpu_us_per_ok: s.server_cpu_us_per_ok().unwrap_or(0.0),
            loadgen_cores: s.loadgen_cpu.as_ref().map_or(0.0, |c| c.cores()),
            loadgen_cpu_us_per_request: s.loadgen_cpu_us_per_request().unwrap_or(0.0),
            other_cores: s.other_cores.unwrap_or(0.0),
            class_p99_ms: s
                .classes
                .iter()
                .map(|c| (c.class.clone(), c.latency.p99_ms))
                .collect(),
        }
    }

    /// Field-wise medians (class p99s too, matched by position).
    pub fn median(runs: &[RunFigures]) -> RunFigures {
        let m = |f: fn(&RunFigures) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let first = runs.first().cloned().unwrap_or_default();
        RunFigures {
            rate: first.rate,
            achieved_rate: m(|r| r.achieved_rate),
            p50_ms: m(|r| r.p50_ms),
            p99_ms: m(|r| r.p99_ms),
            p999_ms: m(|r| r.p999_ms),
            max_ms: m(|r| r.max_ms),
            errors: crate::round_u64(m(|r| r.errors as f64)),
            server_cores: m(|r| r.server_cores),
            server_cpu_us_per_ok: m(|r| r.server_cpu_us_per_ok),
            loadgen_cores: m(|r| r.loadgen_cores),
            loadgen_cpu_us_per_request: m(|r| r.loadgen_cpu_us_per_request),
            other_cores: m(|r| r.other_cores),
            class_p99_ms: first
                .class_p99_ms
                .iter()
                .enumerate()
                .map(|(i, (label, _))| {
                    let v: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| r.class_p99_ms.get(i).map(|c| c.1))
                        .collect();
                    (label.clone(), median(&v))
                })
                .collect(),
        }
    }
}

/// The median (mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetSummary {
    /// Best passing rate of each search (`None`: nothing passed).
    pub searches: Vec<Option<u64>>,
    /// Median of the searches' results.
    pub sustained_max: Option<u64>,
    /// `load_pct` % of the sustained max: the rate of the runs below.
    pub load_rate: u64,
    pub runs: Vec<RunFigures>,
    pub median: RunFigures,
}

/// One row of the cost breakdown: one target, one order size, a fixed rate.
#[derive(Debug, Clone, Serialize)]
pub struct CostRow {
    pub target: String,
    pub lines: usize,
    pub body_bytes: f64,
    pub rate: u64,
    pub achieved_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub cpu_us_per_order: f64,
    /// CPU microseconds per order per thread group of the server.
    pub groups_us_per_order: BTreeMap<String, f64>,
    /// Page cache dirtied by the server per order (`/proc/PID/io` write_bytes).
    pub dirtied_bytes_per_order: Option<f64>,
    /// Bytes written to the data directory's disk per order (device-wide).
    pub device_bytes_per_order: Option<f64>,
    pub loadgen_us_per_request: f64,
}

/// CPU per order as `fixed + per_line * lines`, from the 1-line and N-line rows.
#[derive(Debug, Clone, Serialize)]
pub struct CostFit {
    pub target: String,
    pub fixed_us: f64,
    pub per_line_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgingPoint {
    /// Orders the daemon held when the run started (estimated from what it accepted).
    pub orders_stored_before: u64,
    pub figures: RunFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub target: String,
    pub phase: String,
    pub mix: String,
    pub result: StepResult,
}

/// orderd's figures as ratios of one ceiling's, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingRatio {
    /// `ceiling` (bare axum, parse only) or `sled-ceiling` (parse + orderd's group commit of
    /// the same records).
    pub ceiling: String,
    /// orderd's sustained max over the ceiling's.
    pub sustained_ratio: Option<f64>,
    /// orderd's median p99 at its load rate over the ceiling's at the ceiling's load rate.
    pub p99_ratio_at_own_load: Option<f64>,
    /// The ceiling's median p99 when driven at orderd's load rate.
    pub ceiling_p99_at_orderd_rate_ms: Option<f64>,
    /// orderd's median p99 over the ceiling's, both at orderd's load rate.
    pub p99_ratio_same_rate: Option<f64>,
}

impl CeilingRatio {
    /// The ratios of orderd to `ceiling` from the targets' summaries and the ceiling's runs at
    /// orderd's rate (median).
    pub fn of(
        targets: &BTreeMap<String, TargetSummary>,
        ceiling: &str,
        at_orderd_rate: Option<&RunFigures>,
    ) -> Option<CeilingRatio> {
        let o = targets.get("orderd")?;
        let c = targets.get(ceiling)?;
        let ratio = |a: f64, b: f64| (a > 0.0 && b > 0.0).then(|| a / b);
        let has_runs = !o.runs.is_empty() && !c.runs.is_empty();
        Some(CeilingRatio {
            ceiling: ceiling.to_owned(),
            sustained_ratio: o
                .sustained_max
                .zip(c.sustained_max)
                .and_then(|(o, c)| ratio(o as f64, c as f64)),
            p99_ratio_at_own_load: has_runs
                .then(|| ratio(o.median.p99_ms, c.median.p99_ms))
                .flatten(),
            ceiling_p99_at_orderd_rate_ms: at_orderd_rate.map(|f| f.p99_ms),
            p99_ratio_same_rate: at_orderd_rate
                .filter(|_| !o.runs.is_empty())
                .and_then(|f| ratio(o.median.p99_ms, f.p99_ms)),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IssueCheck {
    pub sustained_required: u64,
    pub p99_required_ms: f64,
    pub sustained_met: bool,
    pub p99_at_load_met: bool,
    pub ceiling_goal_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub mode: String,
    pub unix_time: u64,
    pub elapsed_s: f64,
    pub machine: Machine,
    pub setup: Setup,
    pub targets: BTreeMap<String, TargetSummary>,
    /// orderd's sustained max over the ceiling's.
    pub sustained_ratio: Option<f64>,
    /// orderd's figures as ratios of each ceiling's (HTTP and storage).
    pub ratios: Vec<CeilingRatio>,
    /// What orderd stores per order of each size class, as measured from its journal: the
    /// storage ceiling writes records of these sizes.
    pub record_shapes: Vec<crate::ceiling::RecordShape>,
    /// Each ceiling's runs at orderd's load rate (median).
    pub ceilings_at_orderd_rate: BTreeMap<String, RunFigures>,
    /// The spike profile on orderd, per second.
    pub spike: Option<crate::spike::ProfileResult>,
    /// The scale test: large data set, memory per account actor, start-up and recovery.
    pub scale: Option<crate::scale::ScaleResult>,
    /// SVG plots written next to the report (file names).
    pub plots: Vec<String>,
    pub issue: IssueCheck,
    pub costs: Vec<CostRow>,
    pub cost_fits: Vec<CostFit>,
    pub aging: Vec<AgingPoint>,
    /// Statements about where the time goes, derived from the figures above.
    pub findings: Vec<String>,
    pub daemon_log_warnings: u64,
    pub daemon_log_errors: u64,
    pub steps: Vec<StepRecord>,
}

impl Report {
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = self.write_markdown(&mut s);
        s
    }

    fn write_markdown(&self, s: &mut String) -> std::fmt::Result {
        let st = &self.setup;
        writeln!(s, "# orderd capture benchmark ({} mode)\n", self.mode)?;
        writeln!(s, "Command: `{}`  ", self.command)?;
        writeln!(
            s,
            "Machine: {} cores ({}), {:.1} GiB, Linux {}; load generator on the same machine. Took {:.0} s.\n",
            self.machine.cores, self.machine.cpu_model, self.machine.mem_total_gib, self.machine.kernel, self.elapsed_s
        )?;
        writeln!(
            s,
            "Workload: `POST /v1/orders`, open loop, {} keep-alive connections, {} client thread(s); mix {} (mean {:.1} lines, mean body {:.0} B: {}); {} SKUs, {} accounts (random account per order), {} warehouses. orderd env: {}. {}",
            st.connections,
            st.client_threads,
            st.mix_description,
            st.mean_lines_per_order,
            st.mean_body_bytes,
            st.body_bytes_per_class
                .iter()
                .map(|(l, b)| format!("{l}-line {b:.0} B"))
                .collect::<Vec<_>>()
                .join(", "),
            st.dataset.skus,
            st.dataset.accounts,
            3,
            st.daemon_env
                .iter()
                .map(|(k, v)| format!("`{k}={v}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if st.fresh_daemon_per_step {
                format!("Every orderd step starts a fresh daemon on a new data directory (setup {:.1} s).", st.daemon_setup_s)
            } else {
                "One orderd daemon serves every step.".to_owned()
            }
        )?;
        writeln!(
            s,
            "\nSustained = p99 <= {} ms, failures <= {}%, achieved >= {}% of target; steps {} s after {} s warm-up; runs at {}% of the sustained max last {} s after {} s warm-up. Ceiling: {}.\n",
            st.criteria.p99_max_ms,
            st.criteria.error_max_ratio * 100.0,
            st.criteria.achieved_min_ratio * 100.0,
            st.timings.search_window_s,
            st.timings.search_warmup_s,
            st.load_pct,
            st.timings.run_window_s,
            st.timings.run_warmup_s,
            st.ceiling
        )?;
        writeln!(s, "## Result\n")?;
        writeln!(
            s,
            "| | orderd | ceiling (bare axum, parse only) | sled-ceiling (parse + group commit of the same records) |"
        )?;
        writeln!(s, "|---|---|---|---|")?;
        let o = self.targets.get("orderd");
        let c = self.targets.get("ceiling");
        let g = self.targets.get("sled-ceiling");
        let rate = |t: Option<&TargetSummary>| {
            t.map_or("-".to_owned(), |t| {
                format!(
                    "{} /s (searches: {})",
                    t.sustained_max.map_or("none".into(), |r| r.to_string()),
                    t.searches
                        .iter()
                        .map(|r| r.map_or("none".into(), |r| r.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        };
        writeln!(
            s,
            "| sustained max (median of searches) | {} | {} | {} |",
            rate(o),
            rate(c),
            rate(g)
        )?;
        let fig = |t: Option<&TargetSummary>, f: &dyn Fn(&TargetSummary) -> String| {
            t.map_or("-".to_owned(), f)
        };
        let row = |s: &mut String, name: &str, f: &dyn Fn(&TargetSummary) -> String| {
            writeln!(
                s,
                "| {name} | {} | {} | {} |",
                fig(o, f),
                fig(c, f),
                fig(g, f)
            )
        };
        row(s, &format!("runs at {}% (rate)", st.load_pct), &|t| {
            format!("{} x {} /s", t.runs.len(), t.load_rate)
        })?;
        row(s, "achieved (median)", &|t| {
            format!("{:.0} /s", t.median.achieved_rate)
        })?;
        row(s, "p50 / p99 / p999 (median)", &|t| {
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                t.median.p50_ms, t.median.p99_ms, t.median.p999_ms
            )
        })?;
        row(s, "p99 per order size (median)", &|t| {
            t.median
                .class_p99_ms
                .iter()
                .map(|(l, v)| format!("{l} {v:.2} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        })?;
        row(s, "failed requests (median)", &|t| {
            t.median.errors.to_string()
        })?;
        row(s, "server CPU (median)", &|t| {
            format!(
                "{:.2} cores, {:.0} us/request",
                t.median.server_cores, t.median.server_cpu_us_per_ok
            )
        })?;
        row(s, "other processes on the machine (median)", &|t| {
            format!("{:.2} cores", t.median.other_cores)
        })?;
        row(s, "load generator CPU (median)", &|t| {
            format!(
                "{:.2} cores, {:.1} us/request",
                t.median.loadgen_cores, t.median.loadgen_cpu_us_per_request
            )
        })?;
        if !self.ratios.is_empty() {
            writeln!(s, "\n### orderd as a ratio of the ceilings (same run)\n")?;
            writeln!(s, "| ceiling | sustained max: orderd / ceiling | p99 at each one's load rate: orderd / ceiling | ceiling p99 at orderd's load rate | p99 at orderd's load rate: orderd / ceiling |")?;
            writeln!(s, "|---|---|---|---|---|")?;
            let x = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.2}{unit}"));
            for r in &self.ratios {
                writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    r.ceiling,
                    x(r.sustained_ratio, ""),
                    x(r.p99_ratio_at_own_load, ""),
                    x(r.ceiling_p99_at_orderd_rate_ms, " ms"),
                    x(r.p99_ratio_same_rate, "")
                )?;
            }
        }
        if !self.record_shapes.is_empty() {
            writeln!(
                s,
                "\nRecords per order (measured from orderd's journal; the sled-ceiling writes the same through `orderd_storage::Journal`, which adds the chain head once per group): {}.",
                self.record_shapes
                    .iter()
                    .map(|r| format!(
                        "{}-line: {} put(s) {:?} + {} audit record(s) {:?} (key/subject, value bytes), {} B",
                        r.lines,
                        r.puts.len(),
                        r.puts,
                        r.audits.len(),
                        r.audits,
                        r.bytes()
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            )?;
        }
        for p in self.plots.iter().filter(|p| p.starts_with("latency")) {
            writeln!(s, "\n![{p}]({p})")?;
        }
        let i = &self.issue;
        writeln!(
            s,
            "\nIssue targets: sustained >= {} orders/s: **{}**; p99 < {} ms at {}% of the sustained max: **{}**.{}\n",
            i.sustained_required,
            if i.sustained_met { "met" } else { "NOT met" },
            i.p99_required_ms,
            st.load_pct,
            if i.p99_at_load_met { "met" } else { "NOT met" },
            i.ceiling_goal_rate
                .map_or(String::new(), |g| format!(" Goal beyond the issue (half the ceiling): {g:.0} orders/s."))
        )?;
        if !self.findings.is_empty() {
            writeln!(s, "## Where the time per order goes\n")?;
            for f in &self.findings {
                writeln!(s, "- {f}")?;
            }
            writeln!(s)?;
        }
        if !self.costs.is_empty() {
            writeln!(s, "### CPU per order by order size (fixed rates)\n")?;
            writeln!(s, "| target | lines | body B | rate /s | achieved /s | p50 ms | p99 ms | failed | server CPU us/order | by thread group (us/order) | disk B/order (device) | page cache dirtied B/order | loadgen us/req |")?;
            writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
            for r in &self.costs {
                writeln!(
                    s,
                    "| {} | {} | {:.0} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {} | {} | {} | {:.1} |",
                    r.target,
                    r.lines,
                    r.body_bytes,
                    r.rate,
                    r.achieved_rate,
                    r.p50_ms,
                    r.p99_ms,
                    r.errors,
                    r.cpu_us_per_order,
                    r.groups_us_per_order
                        .iter()
                        .filter(|(_, v)| **v >= 0.5)
                        .map(|(k, v)| format!("{k} {v:.0}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.device_bytes_per_order
                        .map_or("-".into(), |b| format!("{b:.0}")),
                    r.dirtied_bytes_per_order
                        .map_or("-".into(), |b| format!("{b:.0}")),
                    r.loadgen_us_per_request
                )?;
            }
            for f in &self.cost_fits {
                writeln!(
                    s,
                    "\n{}: CPU per order ~ {:.0} us + {:.1} us per line.",
                    f.target, f.fixed_us, f.per_line_us
                )?;
            }
            writeln!(s)?;
        }
        if let Some(sp) = &self.spike {
            self.write_spike(s, sp)?;
        }
        if let Some(sc) = &self.scale {
            write_scale(s, sc)?;
        }
        if !self.aging.is_empty() {
            writeln!(s, "### Same daemon, consecutive runs (state grows)\n")?;
            writeln!(s, "| orders stored before | rate /s | achieved /s | p50 ms | p99 ms | p999 ms | failed | server us/order |")?;
            writeln!(s, "|---|---|---|---|---|---|---|---|")?;
            for a in &self.aging {
                let f = &a.figures;
                writeln!(
                    s,
                    "| ~{} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.0} |",
                    a.orders_stored_before,
                    f.rate,
                    f.achieved_rate,
                    f.p50_ms,
                    f.p99_ms,
                    f.p999_ms,
                    f.errors,
                    f.server_cpu_us_per_ok
                )?;
            }
            writeln!(s)?;
        }
        writeln!(s, "## Every step\n")?;
        writeln!(s, "| target | phase | mix | rate /s | achieved /s | p50 ms | p99 ms | p999 ms | max ms | pool wait p99 ms | failed | server cores | loadgen cores | other cores | verdict |")?;
        writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )?;
        for r in &self.steps {
            let x = &r.result;
            writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} |",
                r.target,
                r.phase,
                r.mix,
                x.target_rate,
                x.achieved_rate,
                x.latency.p50_ms,
                x.latency.p99_ms,
                x.latency.p999_ms,
                x.latency.max_ms,
                x.pool_wait.p99_ms,
                if x.errors.is_empty() {
                    "0".to_owned()
                } else {
                    x.errors
                        .iter()
                        .map(|(k, v)| format!("{v}x{k}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                },
                x.server_cpu.as_ref().map_or(0.0, |c| c.cores()),
                x.loadgen_cpu.as_ref().map_or(0.0, |c| c.cores()),
                x.other_cores.unwrap_or(0.0),
                if x.verdict.pass {
                    "pass".to_owned()
                } else {
                    format!("fail: {}", x.verdict.reasons.join("; "))
                }
            )?;
        }
        writeln!(
            s,
            "\norderd logged {} warning(s) and {} error(s) during the benchmark.",
            self.daemon_log_warnings, self.daemon_log_errors
        )?;
        Ok(())
    }
}

fn write_scale(s: &mut String, sc: &crate::scale::ScaleResult) -> std::fmt::Result {
    let mb = |b: u64| b as f64 / 1e6;
    let c = &sc.config;
    writeln!(s, "## Scale (orderd)\n")?;
    writeln!(
        s,
        "Generated data set: {} accounts, {} SKUs (3 warehouses, list prices), imported through the API in {:.1} s; {:.1} MB on disk.\n",
        c.accounts, c.skus, sc.load_s, mb(sc.data_bytes_loaded)
    )?;
    writeln!(s, "| figure | value |")?;
    writeln!(s, "|---|---|")?;
    writeln!(
        s,
        "| start-up to ready on the loaded store (after kill -9) | {:.2} s |",
        sc.startup_s
    )?;
    let opt_mb = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1} MB", mb(b)));
    writeln!(
        s,
        "| RSS idle after start-up | {} |",
        opt_mb(sc.rss_idle_bytes)
    )?;
    writeln!(
        s,
        "| RSS after {} account actors (one 1-line order each) | {} |",
        sc.touched,
        opt_mb(sc.rss_touched_bytes)
    )?;
    writeln!(
        s,
        "| memory per account actor (RSS growth / actors) | {} |",
        sc.bytes_per_account_actor
            .map_or("-".into(), |b| format!("{:.1} KiB", b / 1024.0))
    )?;
    writeln!(
        s,
        "\nRecovery after kill -9 as the store grows (orders placed open loop at {}/s for {} s over the {} accounts between points):\n",
        c.growth_rate, c.growth_secs, sc.touched
    )?;
    writeln!(
        s,
        "| orders stored | data directory MB | recovery s (kill -9 to listening) | RSS after MB |"
    )?;
    writeln!(s, "|---|---|---|---|")?;
    for p in &sc.points {
        writeln!(
            s,
            "| {} | {:.1} | {:.2} | {} |",
            p.orders_stored,
            mb(p.data_bytes),
            p.recovery_s,
            p.rss_after_bytes
                .map_or("-".into(), |b| format!("{:.1}", mb(b)))
        )?;
    }
    writeln!(s)
}

impl Report {
    fn write_spike(&self, s: &mut String, sp: &crate::spike::ProfileResult) -> std::fmt::Result {
        writeln!(s, "## Spike profile (orderd)\n")?;
        writeln!(
            s,
            "Phases: {}; {} connections at the start, more opened on demand up to {} requests in flight; a request unanswered {:.0} ms after its due time counts as refused (`timeout`). Latency is of accepted orders (201), from the due time.\n",
            sp.phases
                .iter()
                .map(|p| format!("{} {} /s for {} s", p.name, p.rate, p.secs))
                .collect::<Vec<_>>()
                .join(", "),
            sp.connections,
            sp.connections_max,
            sp.timeout_ms
        )?;
        for p in self.plots.iter().filter(|p| p.starts_with("spike")) {
            writeln!(s, "![{p}]({p})\n")?;
        }
        writeln!(s, "| phase | worst second p99 ms | refused |")?;
        writeln!(s, "|---|---|---|")?;
        for p in &sp.phases {
            if let Some((p99, refused)) = sp.phase_summary(&p.name) {
                writeln!(s, "| {} | {:.1} | {:.1}% |", p.name, p99, refused * 100.0)?;
            }
        }
        writeln!(s, "\n| s | phase | offered /s | due | accepted | accepted answers in this second | refused | refused share | p50 ms | p99 ms | max ms |")?;
        writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|")?;
        for x in &sp.seconds {
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1}% | {:.2} | {:.2} | {:.1} |",
                x.t_s,
                x.phase,
                x.offered_rate,
                x.sent,
                x.accepted,
                x.accepted_completed,
                if x.refused.is_empty() {
                    "0".to_owned()
                } else {
                    x.refused
                        .iter()
                        .map(|(k, v)| format!("{v}x{k}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                },
                x.refused_share * 100.0,
                x.p50_ms,
                x.p99_ms,
                x.max_ms
            )?;
        }
        writeln!(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Medians of odd and even counts; non-finite values are ignored.
    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert_eq!(median(&[]), 0.0);
    }
}
