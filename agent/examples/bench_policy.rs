//! Policy benchmark (issue 15): how much of the power the AI load leaves unused the
//! mining actually gets, and at what risk, over simulated hours of `examples/site.toml`,
//! in-process (the control tests' physics, as the month soak runs it).
//!
//!     cargo run --release -p rackwarden --example bench_policy -- [--hours 24] [--json]
//!
//! Profiles (`rackwarden_sim::gpu::rack_demand_fraction`): `inference-day`
//! (diurnal demand, limits unchanged), `training-swings` (0.2-3 Hz swings between ~30% and
//! the cap, checkpoint dips, job restarts) and `colo` (the same site with its GPU racks
//! seen through their PDUs only: no GPU nodes, reserved at `rated_max_kw`, following the
//! inference day); and `colo` on `examples/site-colo.toml`, whose PDU-only GPU racks'
//! rated maxima nearly fill each feed's B. Each runs once with `gpu_reserve = "limits"`
//! and once `"measured"`.
//!
//! Per run: mining MWh delivered; the ideal (per feed, the integral of
//! `min(mining nameplate within its racks' budgets, B - AI load, H - X)`, the site's own
//! B on top); the share captured; sleep cycles per miner per day; GPU caps; excursions
//! above B (count, p99, longest); the highest worst case as a share of H (after each
//! decision), decisions leaving `P_worst > H` with mining left, and the highest physics
//! sample as a share of the breaker rating.
// A benchmark harness: panics are its failure report; time and power convert freely.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    clippy::too_many_lines,
    clippy::needless_range_loop
)]

#[path = "../tests/control_support/mod.rs"]
mod control_support;

use std::path::Path;

use control_support::invariants::inv11_ceiling;
use control_support::Sim;
use rackwarden::control::{Lever, Loads};
use rackwarden_config::{NodeKind, RackKind};
use rackwarden_sim::gpu::{rack_demand_fraction, LoadProfile, REAL_DAY_S};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Profile {
    InferenceDay,
    TrainingSwings,
    Colo,
    /// `examples/site-colo.toml`: PDU-only GPU racks whose rated maxima nearly fill B.
    ColoSite,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::InferenceDay => "inference-day",
            Profile::TrainingSwings => "training-swings",
            Profile::Colo => "colo",
            Profile::ColoSite => "colo (site-colo)",
        }
    }

    fn load(self) -> LoadProfile {
        match self {
            Profile::TrainingSwings => LoadProfile::TrainingSwings,
            _ => LoadProfile::InferenceDay,
        }
    }
}

#[derive(Debug, Default)]
struct Figures {
    mining_mwh: f64,
    ideal_mwh: f64,
    sleeps: u64,
    gpu_caps: u64,
    excursions: Vec<f64>,
    worst_over_h: f64,
    ceiling_breaches: u64,
    rating_max: f64,
    samples_over_rating: u64,
    miners: usize,
    days: f64,
    fills: u64,
}

/// The site file for a run: the reserve mode set, GPU nodes dropped for `colo`.
fn site_text(profile: Profile, mode: &str) -> String {
    let file = if profile == Profile::ColoSite {
        "../examples/site-colo.toml"
    } else {
        "../examples/site.toml"
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(path).unwrap();
    let text = if text.contains("gpu_reserve = ") {
        text.replace(
            "gpu_reserve = \"measured\"",
            &format!("gpu_reserve = \"{mode}\""),
        )
    } else {
        text.replacen(
            "[policy]\n",
            &format!("[policy]\ngpu_reserve = \"{mode}\"\n"),
            1,
        )
    };
    if profile != Profile::Colo {
        return text;
    }
    // Drop every [[gpu_nodes]] table: the tenant's servers are theirs.
    let mut out = String::new();
    let mut skip = false;
    for line in text.lines() {
        if line.starts_with("[[") || line.starts_with('[') {
            skip = line.trim() == "[[gpu_nodes]]";
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn run(profile: Profile, mode: &str, hours: u64) -> Figures {
    let site = control_support::load(&site_text(profile, mode));
    let mut sim = Sim::new(site, false);
    sim.keep_steps = false;
    let n = sim.site.nodes.len();
    let load = profile.load();
    // GPU racks: their non-GPU overhead (as the site simulator gives them), and per rack
    // a seed of its own.
    let gpu_racks: Vec<usize> = (0..n)
        .filter(|&i| {
            matches!(
                sim.site.nodes[i].kind,
                NodeKind::Rack(RackKind::Gpu | RackKind::Mixed)
            )
        })
        .collect();
    let overhead: Vec<f64> = (0..n)
        .map(|i| {
            let node = &sim.site.nodes[i];
            let gpu_max: f64 = sim.topo.rack_gpus[i]
                .iter()
                .map(|&g| {
                    let gn = &sim.site.gpu_nodes[g];
                    f64::from(gn.gpus) * gn.gpu_max_w.unwrap_or(0.0) / 1000.0
                })
                .sum();
            if sim.topo.rack_gpus[i].is_empty() {
                0.0
            } else {
                (node.rated_max_kw.unwrap_or(0.0) - gpu_max).max(0.0) * 0.5
            }
        })
        .collect();
    for &r in &gpu_racks {
        sim.other_kw[r] = overhead[r];
    }
    let feeds: Vec<usize> = (0..n)
        .filter(|&i| sim.site.nodes[i].kind == NodeKind::Feed)
        .collect();
    let mut f = Figures {
        miners: sim.site.miners.len(),
        days: hours as f64 / 24.0,
        ..Figures::default()
    };
    let mut since: Vec<Option<u64>> = vec![None; n];
    let end = hours * 3_600_000;
    while sim.now < end {
        let t = (sim.now + 1_000) as f64 / 1000.0;
        // The AI load for this second (and its peak within it).
        let frac = |seed: u64, at: f64| rack_demand_fraction(load, seed, at, REAL_DAY_S);
        for &r in &gpu_racks {
            let seed = sim.site.policy.seed ^ (r as u64).wrapping_mul(0x9E37);
            let now_f = frac(seed, t);
            let peak_f = (0..10)
                .map(|k| frac(seed, t - f64::from(k) * 0.1))
                .fold(now_f, f64::max);
            if sim.topo.rack_gpus[r].is_empty() {
                sim.other_kw[r] = sim.site.nodes[r].rated_max_kw.unwrap_or(0.0) * now_f;
            } else {
                for &g in &sim.topo.rack_gpus[r] {
                    sim.gpus[g].util = now_f;
                    sim.gpus[g].peak_util = Some(peak_f);
                }
            }
        }
        sim.tick();
        let step = sim.steps.last().unwrap();
        // Mining delivered, and the AI load per feed, from the physics.
        let mining_w: f64 = sim
            .miners
            .iter()
            .filter(|m| m.outlet_on)
            .map(|m| m.power_w)
            .sum();
        f.mining_mwh += mining_w / 3.6e9;
        let post = Loads::compute(&sim.site, &sim.topo, &step.snap, &step.plan.state, step.now);
        let mut ideal_kw = 0.0;
        let mut ai_site = 0.0;
        for &fd in &feeds {
            let node = &sim.site.nodes[fd];
            let mut cap = 0.0;
            let mut ai = 0.0;
            let mut x = 0.0;
            for &r in &sim.topo.racks_under[fd] {
                let rack = &sim.site.nodes[r];
                let nameplate: f64 = sim.topo.rack_miners[r]
                    .iter()
                    .map(|&m| sim.site.miners[m].nominal_w)
                    .sum::<f64>()
                    / 1000.0;
                cap += nameplate.min(rack.budget_kw);
                if gpu_racks.contains(&r) {
                    let gpu: f64 = sim.topo.rack_gpus[r]
                        .iter()
                        .map(|&g| {
                            let p = &sim.gpus[g];
                            p.limits.enforced_w * p.count as f64 * p.util / 1000.0
                        })
                        .sum();
                    ai += gpu + sim.other_kw[r];
                    x += post.rack[r].worst_kw;
                }
            }
            ai_site += ai;
            ideal_kw += cap
                .min(node.budget_kw - ai)
                .min(node.ceiling_kw - x)
                .max(0.0);
        }
        let site_b = sim.site.nodes[0].budget_kw;
        ideal_kw = ideal_kw.min((site_b - ai_site).max(0.0));
        f.ideal_mwh += ideal_kw / 3600.0 / 1000.0;
        for a in &step.plan.actions {
            match a.lever {
                Lever::Sleep | Lever::OutletOff => f.sleeps += 1,
                Lever::GpuCap => f.gpu_caps += 1,
                _ => {}
            }
            if a.reason == rackwarden::control::Reason::Fill {
                f.fills += 1;
            }
        }
        for i in 0..n {
            let node = &sim.site.nodes[i];
            if node.ceiling_kw > 0.0 {
                f.worst_over_h = f.worst_over_h.max(post.worst_kw[i] / node.ceiling_kw);
            }
            let Some(m) = step.snap.meter(i).filter(|m| m.taken_at == step.now) else {
                continue;
            };
            if node.rating_kw > 0.0 {
                f.rating_max = f.rating_max.max(m.max_kw.max(m.kw) / node.rating_kw);
                if m.max_kw.max(m.kw) > node.rating_kw {
                    f.samples_over_rating += 1;
                }
            }
            if m.kw > node.budget_kw + 1e-6 {
                since[i].get_or_insert(step.now);
            } else if let Some(t0) = since[i].take() {
                f.excursions.push((step.now - t0) as f64 / 1000.0);
            }
        }
        if inv11_ceiling(&sim, step).is_err() {
            f.ceiling_breaches += 1;
        }
    }
    f
}

fn p99(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((0.99 * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let hours = args
        .iter()
        .position(|a| a == "--hours")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(24u64);
    let json = args.iter().any(|a| a == "--json");
    println!(
        "{:<16} {:<9} {:>10} {:>10} {:>8} {:>13} {:>8} {:>11} {:>8} {:>8} {:>10} {:>11} {:>9}",
        "profile",
        "reserve",
        "mining MWh",
        "ideal MWh",
        "share",
        "sleeps/miner/d",
        "GPU caps",
        "excursions",
        "p99 s",
        "max s",
        "worst/H",
        "P_worst>H",
        "peak/rating"
    );
    let mut out = Vec::new();
    for profile in [
        Profile::InferenceDay,
        Profile::TrainingSwings,
        Profile::Colo,
        Profile::ColoSite,
    ] {
        let mut limits_mwh = f64::NAN;
        for mode in ["limits", "measured"] {
            let started = std::time::Instant::now();
            let f = run(profile, mode, hours);
            let share = f.mining_mwh / f.ideal_mwh;
            let per_miner_day = f.sleeps as f64 / f.miners as f64 / f.days;
            let longest = f.excursions.iter().copied().fold(0.0, f64::max);
            println!(
                "{:<16} {:<9} {:>10.2} {:>10.2} {:>7.1}% {:>13.2} {:>8} {:>11} {:>8.1} {:>8.1} {:>9.1}% {:>11} {:>8.1}%",
                profile.name(),
                mode,
                f.mining_mwh,
                f.ideal_mwh,
                100.0 * share,
                per_miner_day,
                f.gpu_caps,
                f.excursions.len(),
                p99(&f.excursions),
                longest,
                100.0 * f.worst_over_h,
                f.ceiling_breaches,
                100.0 * f.rating_max,
            );
            if mode == "limits" {
                limits_mwh = f.mining_mwh;
            } else {
                println!(
                    "{:<16} measured / limits: {:.2}x mining energy; trough fills {}; samples above a rating {}; {:.1} s",
                    "",
                    f.mining_mwh / limits_mwh,
                    f.fills,
                    f.samples_over_rating,
                    started.elapsed().as_secs_f64()
                );
            }
            out.push(format!(
                "{{\"profile\":\"{}\",\"reserve\":\"{mode}\",\"hours\":{hours},\"mining_mwh\":{:.4},\"ideal_mwh\":{:.4},\"share\":{:.4},\"sleeps_per_miner_day\":{:.3},\"gpu_caps\":{},\"excursions\":{},\"excursion_p99_s\":{:.1},\"excursion_max_s\":{:.1},\"worst_over_h\":{:.4},\"ceiling_breaches\":{},\"peak_over_rating\":{:.4},\"samples_over_rating\":{},\"fills\":{}}}",
                profile.name(),
                f.mining_mwh,
                f.ideal_mwh,
                share,
                per_miner_day,
                f.gpu_caps,
                f.excursions.len(),
                p99(&f.excursions),
                longest,
                f.worst_over_h,
                f.ceiling_breaches,
                f.rating_max,
                f.samples_over_rating,
                f.fills
            ));
        }
    }
    if json {
        println!("[{}]", out.join(","));
    }
}
