//! What the figures say: the cost rows and their linear fit, CPU per thread group, and plain
//! statements about where the time per order goes, each with its numbers.

use crate::SUSTAINED_REQUIRED;
use orderd_benches::loadgen::StepResult;
use orderd_benches::report::{self, CostFit, CostRow, Report, StepRecord};
use std::collections::BTreeMap;

pub fn cost_row(target: &str, lines: usize, body_bytes: f64, r: &StepResult) -> CostRow {
    let per_order = |secs: f64| {
        let orders = r.achieved_rate * r.server_cpu.as_ref().map_or(0.0, |c| c.wall_s);
        if orders > 0.0 {
            secs * 1e6 / orders
        } else {
            0.0
        }
    };
    CostRow {
        target: target.to_owned(),
        lines,
        body_bytes,
        rate: r.target_rate,
        achieved_rate: r.achieved_rate,
        p50_ms: r.latency.p50_ms,
        p99_ms: r.latency.p99_ms,
        errors: r.error_count(),
        cpu_us_per_order: r.server_cpu_us_per_ok().unwrap_or(0.0),
        groups_us_per_order: r
            .server_cpu
            .as_ref()
            .map(|c| {
                c.groups_s
                    .iter()
                    .map(|(k, v)| (k.clone(), per_order(*v)))
                    .collect()
            })
            .unwrap_or_default(),
        dirtied_bytes_per_order: r
            .server_cpu
            .as_ref()
            .and_then(|c| c.write_bytes)
            .map(|b| per_order(b as f64) / 1e6),
        device_bytes_per_order: r.device_written_bytes.map(|b| per_order(b as f64) / 1e6),
        loadgen_us_per_request: r.loadgen_cpu_us_per_request().unwrap_or(0.0),
    }
}

/// `fixed + per_line * lines` through the smallest and largest order size of each target.
pub fn fits(rows: &[CostRow]) -> Vec<CostFit> {
    let mut out = vec![];
    for target in ["orderd", "ceiling"] {
        let mine: Vec<&CostRow> = rows.iter().filter(|r| r.target == target).collect();
        let (Some(a), Some(b)) = (
            mine.iter().min_by_key(|r| r.lines),
            mine.iter().max_by_key(|r| r.lines),
        ) else {
            continue;
        };
        if b.lines <= a.lines {
            continue;
        }
        let per_line = (b.cpu_us_per_order - a.cpu_us_per_order) / (b.lines - a.lines) as f64;
        out.push(CostFit {
            target: target.to_owned(),
            fixed_us: a.cpu_us_per_order - per_line * a.lines as f64,
            per_line_us: per_line,
        });
    }
    out
}

/// CPU microseconds per successful request per thread group, averaged over steps.
fn groups_per_ok(steps: &[&StepResult]) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for s in steps {
        let Some(cpu) = &s.server_cpu else { continue };
        let oks = s.achieved_rate * cpu.wall_s;
        for (k, v) in &cpu.groups_s {
            let e = sums.entry(k.clone()).or_insert((0.0, 0.0));
            e.0 += v;
            e.1 += oks;
        }
    }
    sums.into_iter()
        .filter(|(_, (_, n))| *n > 0.0)
        .map(|(k, (s, n))| (k, s * 1e6 / n))
        .collect()
}

/// Plain statements about where the time per order goes, each with its numbers.
pub fn findings(r: &Report, steps: &[StepRecord]) -> Vec<String> {
    let mut out = vec![];
    let noise: Vec<f64> = steps.iter().filter_map(|s| s.result.other_cores).collect();
    if report::median(&noise) > 0.1 {
        out.push(format!(
            "CAUTION: other processes used {:.2} cores (median over steps, max {:.2}) of the {} while this ran; latency and rates are lower than on a quiet machine.",
            report::median(&noise),
            noise.iter().copied().fold(0.0, f64::max),
            r.machine.cores
        ));
    }
    let o = r.targets.get("orderd");
    let c = r.targets.get("ceiling");
    if let Some(o) = o {
        match o.sustained_max {
            Some(m) if m >= SUSTAINED_REQUIRED => out.push(format!(
                "orderd sustains {m} orders/s, {:.0}% of the required {SUSTAINED_REQUIRED}.",
                100.0 * m as f64 / SUSTAINED_REQUIRED as f64
            )),
            Some(m) => out.push(format!(
                "orderd sustains {m} orders/s: {:.0}% of the required {SUSTAINED_REQUIRED}, short by {} orders/s.",
                100.0 * m as f64 / SUSTAINED_REQUIRED as f64,
                SUSTAINED_REQUIRED - m
            )),
            None => out.push("orderd sustained no rate tried.".to_owned()),
        }
        // Why the step above the sustained max failed.
        let fails: Vec<&StepRecord> = steps
            .iter()
            .filter(|s| {
                s.target == "orderd" && s.phase.starts_with("search") && !s.result.verdict.pass
            })
            .filter(|s| o.sustained_max.is_none_or(|m| s.result.target_rate > m))
            .collect();
        if let Some(f) = fails.iter().min_by_key(|s| s.result.target_rate) {
            out.push(format!(
                "The lowest failing orderd step ({}/s) failed on: {}; the daemon used {:.2} cores and the load generator {:.2} cores of {} there.",
                f.result.target_rate,
                f.result.verdict.reasons.join("; "),
                f.result.server_cpu.as_ref().map_or(0.0, |c| c.cores()),
                f.result.loadgen_cpu.as_ref().map_or(0.0, |c| c.cores()),
                r.machine.cores
            ));
        }
        if !o.runs.is_empty() {
            out.push(format!(
                "At {}% ({} orders/s) orderd's median p50/p99/p999 are {:.2}/{:.2}/{:.2} ms (limit {} ms for p99).",
                r.setup.load_pct, o.load_rate, o.median.p50_ms, o.median.p99_ms, o.median.p999_ms, r.issue.p99_required_ms
            ));
        }
        if let (Some(om), Some(cm)) = (o.sustained_max, c.and_then(|c| c.sustained_max)) {
            out.push(format!(
                "The ceiling sustains {cm} requests/s with the same bodies and generator; orderd reaches {:.0}% of it. Half the ceiling (the goal beyond this issue) is {:.0}/s, {:.1}x orderd's sustained max.",
                100.0 * om as f64 / cm as f64,
                cm as f64 / 2.0,
                cm as f64 / 2.0 / om.max(1) as f64
            ));
        }
        if let Some(c) = c.filter(|c| !c.runs.is_empty()) {
            if o.median.server_cpu_us_per_ok > 0.0 && c.median.server_cpu_us_per_ok > 0.0 {
                out.push(format!(
                    "CPU per request with the mix: orderd {:.0} us, the ceiling {:.0} us (HTTP + JSON parse) -> HTTP and parsing are {:.0}% of orderd's CPU per order; the other {:.0} us are auth, actors, domain checks, the journal and serializing the answer.",
                    o.median.server_cpu_us_per_ok,
                    c.median.server_cpu_us_per_ok,
                    100.0 * c.median.server_cpu_us_per_ok / o.median.server_cpu_us_per_ok,
                    o.median.server_cpu_us_per_ok - c.median.server_cpu_us_per_ok
                ));
            }
        }
        let run_steps: Vec<&StepResult> = steps
            .iter()
            .filter(|s| s.target == "orderd" && s.phase.starts_with("run"))
            .map(|s| &s.result)
            .collect();
        let per_ok = |f: fn(&StepResult) -> Option<u64>| -> Vec<f64> {
            run_steps
                .iter()
                .filter_map(|s| {
                    let oks = s.achieved_rate * s.duration_s;
                    Some(f(s)? as f64 / oks).filter(|_| oks > 0.0)
                })
                .collect()
        };
        let device = per_ok(|s| s.device_written_bytes);
        let dirtied = per_ok(|s| s.server_cpu.as_ref()?.write_bytes);
        if !device.is_empty() {
            out.push(format!(
                "Disk: {:.0} bytes reach the data directory's disk per order of the mix (median of the runs, whole device, so an upper bound), {:.1} MB/s at {} orders/s; orderd dirties {:.0} bytes of page cache per order (/proc write_bytes: sled writes its log in many small pieces, so each group flush writes the same partly filled 4 KiB pages back again).",
                report::median(&device),
                report::median(&device) * o.load_rate as f64 / 1e6,
                o.load_rate,
                report::median(&dirtied)
            ));
        }
        let groups = groups_per_ok(&run_steps);
        if !groups.is_empty() {
            let total: f64 = groups.values().sum();
            let mut parts: Vec<(&String, &f64)> = groups.iter().collect();
            parts.sort_by(|a, b| b.1.total_cmp(a.1));
            out.push(format!(
                "orderd CPU per order by thread (runs at {}%): {}. Tokio workers run HTTP, JWT auth, JSON, the actors, the domain checks and the answer's serialization; `orderd-commit` builds and applies each sled batch and flushes it; `(exited threads)` are blocking-pool threads (outbox relay, actor loads) that ended in between.",
                r.setup.load_pct,
                parts
                    .iter()
                    .filter(|(_, v)| **v >= 0.5)
                    .map(|(k, v)| format!("{k} {v:.0} us ({:.0}%)", 100.0 * **v / total.max(1e-9)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if let (Some(commit), Some(m)) = (groups.get("orderd-commit"), o.sustained_max) {
                out.push(format!(
                    "The single committer thread needs {commit:.0} us of CPU per order: {:.2} of a core at the sustained max ({m}/s), so it {} the serial limit (its fsync wait comes on top of its CPU).",
                    commit * m as f64 / 1e6,
                    if commit * m as f64 / 1e6 > 0.8 { "is near" } else { "is not yet" }
                ));
            }
        }
        for f in &r.cost_fits {
            out.push(format!(
                "{}: CPU per order ~ {:.0} us fixed + {:.1} us per line (from the 1-line and largest-order runs at equal line throughput).",
                f.target, f.fixed_us, f.per_line_us
            ));
        }
        for c in r.costs.iter().filter(|c| c.target == "orderd") {
            if let Some(b) = c.device_bytes_per_order {
                out.push(format!(
                    "A {}-line order puts {:.0} bytes on the disk (device-wide, at {}/s).",
                    c.lines, b, c.rate
                ));
            }
        }
        if !o.runs.is_empty() {
            out.push(format!(
                "The load generator itself used {:.1} us of CPU per request ({:.2} cores at the orderd load rate), on the same {} cores.",
                o.median.loadgen_cpu_us_per_request, o.median.loadgen_cores, r.machine.cores
            ));
        }
    }
    if let (Some(first), Some(last)) = (r.aging.first(), r.aging.last()) {
        if let Some(base) = o
            .map(|o| &o.median)
            .filter(|m| m.server_cpu_us_per_ok > 0.0)
        {
            out.push(format!(
                "Stored state slows orderd: with ~{} orders already stored (over {} accounts) p99 is {:.2} ms and CPU {:.0} us/order, against {:.2} ms and {:.0} us on a fresh daemon{}.",
                last.orders_stored_before,
                r.setup.dataset.accounts,
                last.figures.p99_ms,
                last.figures.server_cpu_us_per_ok,
                base.p99_ms,
                base.server_cpu_us_per_ok,
                if r.aging.len() > 1 {
                    format!(" ({:.2} ms, {:.0} us at ~{})", first.figures.p99_ms, first.figures.server_cpu_us_per_ok, first.orders_stored_before)
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}
