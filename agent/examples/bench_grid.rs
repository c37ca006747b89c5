//! Benchmark: a grid target (issue 19) from the moment it is set to the first shed
//! command arriving at a simulated miner, and to the site's metered load under the target.
//!
//! `cargo run --release -p rackwarden --example bench_grid -- [SITE.toml] [--trials N]
//!     [--shed-kw KW] [--json]`
//!
//! Each trial starts the site simulator and the live agent afresh (in this process, on
//! loopback, real time), waits until the agent decides and every input has been read for
//! a few seconds, then sets a target `site import at most (load - KW)` through the same
//! inbox `PUT /api/v1/grid/target` fills (the HTTP layer only parses and journals). Times
//! on this process's monotonic clock:
//! - first shed: the simulated miner's command log, first command after the target;
//! - under the target: the simulator's own site meter (its physics, not the agent's view),
//!   polled every 50 ms, at or below the target.
//!
//! With `--json` the last line is one JSON object of the figures.

#[path = "common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::time::Duration;

use common::{percentile, private_copy, Args};
use rackwarden::grid::{GridEvent, GridSignal, GridSource};
use rackwarden::runtime::agent::{self, AgentEvent, RunOptions};
use rackwarden::status::StatusHub;
use rackwarden_config::Site;
use rackwarden_sim::site::{Scenario, SiteSim};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

struct Trial {
    first_shed_ms: f64,
    under_ms: f64,
    load_kw: f64,
    limit_kw: f64,
}

async fn trial(site: &Site, shed_kw: f64, dir: &std::path::Path) -> Result<Trial, String> {
    let scenario = Scenario {
        name: "bench-grid".into(),
        gpu_profile: "inference".into(),
        tenant_limit_w: None,
        day_s: None,
        events: vec![],
    };
    for f in ["state.json", "rackwarden.db", "journal.jsonl"] {
        std::fs::remove_file(dir.join(f)).ok();
    }
    let sim = SiteSim::start(site, scenario, 1.0)
        .await
        .map_err(|e| format!("simulator: {e}"))?;
    let (events, _rx) = broadcast::channel::<AgentEvent>(1 << 12);
    let cancel = CancellationToken::new();
    let opts = RunOptions {
        dry_run: false,
        speed: 1.0,
        state_file: dir.join("state.json"),
        journal_file: dir.join("journal.jsonl"),
        database_file: dir.join("rackwarden.db"),
    };
    let hub = StatusHub::new();
    let agent = tokio::spawn(agent::run_with_hub(
        site.clone(),
        opts,
        events,
        cancel.clone(),
        hub.clone(),
    ));
    let result = async {
        // Deciding, and every input read for a while.
        let t0 = tokio::time::Instant::now();
        while hub.last_now() == 0 {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err("the agent made no decision within 30 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        let load = sim
            .node_kw(&site.id)
            .ok_or("no site meter in the simulator")?;
        let limit = load - shed_kw;
        let set_at = tokio::time::Instant::now();
        hub.grid.put(GridEvent {
            source: GridSource::Api,
            id: "bench".into(),
            signal: GridSignal::LimitKw(limit),
            start_ms: hub.last_now(),
            end_ms: None,
        });
        let deadline = set_at + Duration::from_secs(90);
        let mut first = None;
        let under = loop {
            if first.is_none() {
                first = sim.first_miner_command_since(set_at).map(|(t, _, _)| t);
            }
            if sim.node_kw(&site.id).is_some_and(|kw| kw <= limit) && first.is_some() {
                break tokio::time::Instant::now();
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "site not under {limit:.1} kW within 90 s (at {:.1} kW)",
                    sim.node_kw(&site.id).unwrap_or(f64::NAN)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let first = first.ok_or("no command")?;
        let ms = |a: tokio::time::Instant| a.saturating_duration_since(set_at).as_secs_f64() * 1e3;
        Ok(Trial {
            first_shed_ms: ms(first),
            under_ms: ms(under),
            load_kw: load,
            limit_kw: limit,
        })
    }
    .await;
    cancel.cancel();
    agent.await.ok();
    sim.shutdown().await;
    let t = result?;
    println!(
        "  site {:.1} kW, target {:.1} kW: first shed at a miner {:7.1} ms, metered under the target {:8.1} ms",
        t.load_kw, t.limit_kw, t.first_shed_ms, t.under_ms
    );
    Ok(t)
}

fn main() -> ExitCode {
    let args = Args::from_env();
    let path = args.site_path();
    let trials: usize = args.parsed("--trials", 5);
    let shed_kw: f64 = args.parsed("--shed-kw", 100.0);
    let json = args.flag("--json");
    let dir = std::env::temp_dir().join(format!("rackwarden-grid-bench-{}", std::process::id()));
    let site = match private_copy(&path, &dir, (78, 72)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(78);
        }
    };
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    println!(
        "grid: {trials} trials on {}, targets {shed_kw} kW under the site's load",
        site.id
    );
    let mut got = Vec::new();
    let mut failed = 0;
    for _ in 0..trials {
        match rt.block_on(trial(&site, shed_kw, &dir)) {
            Ok(t) => got.push(t),
            Err(e) => {
                failed += 1;
                println!("  trial failed: {e}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    let sorted = |f: fn(&Trial) -> f64| {
        let mut v: Vec<f64> = got.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let f = sorted(|t| t.first_shed_ms);
    let u = sorted(|t| t.under_ms);
    println!(
        "target -> first shed at a miner: p50 {:.1} ms  max {:.1} ms;  target -> metered under it: p50 {:.0} ms  max {:.0} ms  ({} trials, {failed} failed)",
        percentile(&f, 500),
        percentile(&f, 1000),
        percentile(&u, 500),
        percentile(&u, 1000),
        f.len()
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "trials": f.len(),
                "failed": failed,
                "shed_kw": shed_kw,
                "first_shed_p50_ms": percentile(&f, 500),
                "first_shed_max_ms": percentile(&f, 1000),
                "under_p50_ms": percentile(&u, 500),
                "under_max_ms": percentile(&u, 1000),
            })
        );
    }
    if got.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
