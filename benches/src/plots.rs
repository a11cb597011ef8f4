//! SVG plots of the report, drawn with plotters' SVG backend and linked from `report.md`:
//!
//! - `spike.svg`: the spike profile per second: accepted-latency p50/p99 (log scale) and the
//!   share of refused requests, with the offered rate;
//! - `latency-vs-rate.svg`: p99 against the offered rate of every search step, per target (the
//!   knee of each curve is where its sustained max lies).

use crate::report::StepRecord;
use crate::spike::ProfileResult;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

const SIZE: (u32, u32) = (900, 480);
/// Lowest latency shown on a log axis (ms).
const LATENCY_FLOOR_MS: f64 = 0.1;

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn colour(i: usize) -> RGBColor {
    [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK][i % 6]
}

/// Writes the plots that have data into `dir`; returns their file names. A plot that fails to
/// draw is reported on stderr and left out: plots never fail the benchmark.
pub fn write_all(dir: &Path, steps: &[StepRecord], spike: Option<&ProfileResult>) -> Vec<String> {
    let mut written = vec![];
    let mut attempt = |name: &str, draw: &dyn Fn(&Path) -> DrawResult| {
        let path = dir.join(name);
        match draw(&path) {
            Ok(()) => written.push(name.to_owned()),
            Err(e) => eprintln!("plot {name} not drawn: {e}"),
        }
    };
    if let Some(sp) = spike.filter(|s| !s.seconds.is_empty()) {
        attempt("spike-latency.svg", &|p| spike_latency(p, sp));
        attempt("spike-refused.svg", &|p| spike_refused(p, sp));
    }
    let searches: Vec<&StepRecord> = steps
        .iter()
        .filter(|s| s.phase.starts_with("search") && s.result.ok > 0)
        .collect();
    if !searches.is_empty() {
        attempt("latency-vs-rate.svg", &|p| latency_vs_rate(p, &searches));
    }
    written
}

fn spike_latency(path: &Path, sp: &ProfileResult) -> DrawResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let t_max = sp.seconds.len() as f64;
    let y_max = sp
        .seconds
        .iter()
        .map(|s| s.max_ms.max(s.p99_ms))
        .fold(1.0, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Spike profile: latency of accepted orders per second",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, (LATENCY_FLOOR_MS..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since start (due time)")
        .y_desc("ms (log)")
        .draw()?;
    let at = |v: f64| v.max(LATENCY_FLOOR_MS);
    let accepted = || sp.seconds.iter().filter(|s| s.accepted > 0);
    chart
        .draw_series(LineSeries::new(
            accepted().map(|s| (s.t_s as f64 + 0.5, at(s.p50_ms))),
            &BLUE,
        ))?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            accepted().map(|s| (s.t_s as f64 + 0.5, at(s.p99_ms))),
            &RED,
        ))?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(
            accepted().map(|s| (s.t_s as f64 + 0.5, at(s.max_ms))),
            &BLACK.mix(0.4),
        ))?
        .label("max")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    shade_phases(&mut chart, sp, LATENCY_FLOOR_MS, y_max)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn spike_refused(path: &Path, sp: &ProfileResult) -> DrawResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let t_max = sp.seconds.len() as f64;
    let rate_max = sp
        .seconds
        .iter()
        .map(|s| s.offered_rate.max(s.accepted_completed) as f64)
        .fold(1.0, f64::max)
        * 1.1;
    let (upper, lower) = root.split_vertically(SIZE.1 / 2);
    let mut share = ChartBuilder::on(&upper)
        .caption(
            "Spike profile: share of refused requests (429/503/io/timeout) per second",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(20)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..100.0)?;
    share.configure_mesh().y_desc("% refused").draw()?;
    share.draw_series(LineSeries::new(
        sp.seconds
            .iter()
            .map(|s| (s.t_s as f64 + 0.5, s.refused_share * 100.0)),
        &RED,
    ))?;
    shade_phases(&mut share, sp, 0.0, 100.0)?;
    let mut rate = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..rate_max)?;
    rate.configure_mesh()
        .x_desc("seconds since start (due time)")
        .y_desc("orders/s")
        .draw()?;
    rate.draw_series(LineSeries::new(
        sp.seconds
            .iter()
            .map(|s| (s.t_s as f64 + 0.5, s.offered_rate as f64)),
        &BLACK.mix(0.5),
    ))?
    .label("offered")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    rate.draw_series(LineSeries::new(
        sp.seconds
            .iter()
            .map(|s| (s.t_s as f64 + 0.5, s.accepted_completed as f64)),
        &BLUE,
    ))?
    .label("accepted answers")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    rate.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Light bands over the spike phase(s) (every phase whose rate is above the first phase's).
fn shade_phases<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    sp: &ProfileResult,
    y_min: f64,
    y_max: f64,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let base = sp.phases.first().map_or(0, |p| p.rate);
    let mut t = 0.0;
    for p in &sp.phases {
        let end = t + p.secs as f64;
        if p.rate > base {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(t, y_min), (end, y_max)],
                RED.mix(0.08).filled(),
            )))?;
        }
        t = end;
    }
    Ok(())
}

fn latency_vs_rate(path: &Path, searches: &[&StepRecord]) -> DrawResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut by_target: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for s in searches {
        by_target
            .entry(s.target.as_str())
            .or_default()
            .push((s.result.target_rate as f64, s.result.latency.p99_ms));
    }
    for points in by_target.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let x_max = searches
        .iter()
        .map(|s| s.result.target_rate as f64)
        .fold(1.0, f64::max)
        * 1.1;
    let y_max = searches
        .iter()
        .map(|s| s.result.latency.p99_ms)
        .fold(1.0, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "p99 latency against offered rate (search steps, open loop)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (50.0..x_max).log_scale(),
            (LATENCY_FLOOR_MS..y_max).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("offered rate, requests/s (log)")
        .y_desc("p99 ms (log)")
        .draw()?;
    for (i, (target, points)) in by_target.iter().enumerate() {
        let c = colour(i);
        let pts: Vec<(f64, f64)> = points
            .iter()
            .map(|(x, y)| (*x, y.max(LATENCY_FLOOR_MS)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), &c))?
            .label(*target)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
