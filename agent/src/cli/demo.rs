//! `rackwarden demo`: the agent against its own simulated site, in one process.
//!
//! Serves examples/site.toml (compiled in) on loopback, plays the `demo` scenario (a GPU
//! surge on feed A, then a CRAH trip in the mining hall) at `--speed` times real time,
//! runs the agent live against it, prints decisions and alerts as they happen, and ends
//! with a summary. Nothing outside 127.0.0.0/8 is touched; state and journal go to a
//! temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use rackwarden_config::{NodeKind, Site};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::control::{Device, Lever, Severity, Tick};
use crate::runtime::agent::{self, AgentEvent, RunOptions};
use crate::sim::{Scenario, SiteSim, SIM_MINER_PASSWORD};

const SITE: &str = include_str!("../../../examples/site.toml");
const TOKEN: &str = include_str!("../../../examples/gpu-node.token");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Virtual time runs this many times faster than real time.
    #[arg(long, default_value_t = 15.0)]
    pub speed: f64,
    /// Virtual seconds to play.
    #[arg(long, default_value_t = 840.0)]
    pub duration_s: f64,
    /// Scenario to play (built-in name or TOML file).
    #[arg(long, default_value = "demo")]
    pub scenario: String,
}

/// What the demo saw, for the summary (and the test that reads it).
#[derive(Debug, Default)]
struct Tally {
    peak: BTreeMap<String, (f64, f64)>,
    shed: BTreeSet<String>,
    restored: BTreeSet<String>,
    actions: BTreeMap<&'static str, usize>,
    alerts: BTreeMap<&'static str, usize>,
}

pub fn run(args: DemoArgs) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("rackwarden-demo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("gpu-node.token"), TOKEN))
    {
        eprintln!("demo: cannot prepare {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let file = dir.join("site.toml");
    let site = match rackwarden_config::load_str(SITE, &file, &dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(super::EX_CONFIG);
        }
    };
    let scenario = match Scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(super::EX_USAGE);
        }
    };
    // The miners' credentials come from the environment variables the site file names;
    // the simulator accepts one password. Set before any thread starts.
    for m in &site.miners {
        if let Some(var) = m.credentials.as_ref().and_then(|c| c.password_env.as_ref()) {
            if std::env::var_os(var).is_none() {
                std::env::set_var(var, SIM_MINER_PASSWORD);
            }
        }
    }
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    let code = rt.block_on(play(site, scenario, args, dir.clone()));
    let _ = std::fs::remove_dir_all(&dir);
    code
}

async fn play(site: Site, scenario: Scenario, args: DemoArgs, dir: PathBuf) -> ExitCode {
    println!(
        "rackwarden demo: site `{}` ({} miners, {} GPU racks), scenario `{}`, {}x real time",
        site.id,
        site.miners.len(),
        site.nodes
            .iter()
            .filter(|n| matches!(n.kind, NodeKind::Rack(rackwarden_config::RackKind::Gpu)))
            .count(),
        scenario.name,
        args.speed
    );
    let sim = match SiteSim::start(&site, scenario, args.speed).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo: simulator failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (events, mut rx) = broadcast::channel(1 << 16);
    let cancel = CancellationToken::new();
    let opts = RunOptions {
        dry_run: false,
        speed: args.speed,
        state_file: dir.join("state.json"),
        journal_file: dir.join("journal.jsonl"),
        database_file: dir.join("rackwarden.db"),
    };
    let agent = tokio::spawn(agent::run(site.clone(), opts, events, cancel.clone()));
    let real = Duration::from_secs_f64(args.duration_s / args.speed.max(1e-3));
    let deadline = tokio::time::sleep(real);
    tokio::pin!(deadline);
    let mut tally = Tally::default();
    let mut t0: Option<u64> = None;
    let mut last_status = 0u64;
    let feeds: Vec<usize> = (0..site.nodes.len())
        .filter(|&i| site.nodes[i].kind == NodeKind::Feed)
        .collect();
    loop {
        let ev = tokio::select! {
            () = &mut deadline => break,
            ev = rx.recv() => ev,
        };
        let ev = match ev {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        };
        match ev {
            AgentEvent::Decision {
                now, tick, nodes, ..
            } => {
                let t = now - *t0.get_or_insert(now);
                for &f in &feeds {
                    let Some(v) = nodes.get(f) else { continue };
                    let measured = v.measured_kw.unwrap_or(0.0);
                    let e = tally
                        .peak
                        .entry(site.nodes[f].id.clone())
                        .or_insert((0.0, v.budget_kw));
                    e.0 = e.0.max(measured);
                }
                if tick == Tick::Slow && t >= last_status + 60_000 {
                    last_status = t;
                    let line: Vec<String> = feeds
                        .iter()
                        .filter_map(|&f| {
                            let v = nodes.get(f)?;
                            Some(format!(
                                "{} measured {:>5.0} kW, projected {:>5.0} kW of {:.0} ({:>3.0}%)",
                                site.nodes[f].id,
                                v.measured_kw.unwrap_or(f64::NAN),
                                v.proj_kw,
                                v.budget_kw,
                                100.0 * v.eff_kw / v.budget_kw
                            ))
                        })
                        .collect();
                    println!("[{:>5.0} s] {}", t as f64 / 1000.0, line.join(" | "));
                }
            }
            AgentEvent::Action { now, action, .. } => {
                let t = now.saturating_sub(t0.unwrap_or(now));
                *tally.actions.entry(action.lever.name()).or_default() += 1;
                if let Device::Miner(_) = action.device {
                    if action.lever.is_shed() {
                        tally.shed.insert(action.device_id.clone());
                    } else {
                        tally.restored.insert(action.device_id.clone());
                    }
                }
                let verb = match action.lever {
                    Lever::PowerTarget => {
                        format!("power target {:.0} -> {:.0} W", action.from_w, action.to_w)
                    }
                    Lever::PowerTargetRaise => {
                        format!("power target back up to {:.0} W", action.to_w)
                    }
                    Lever::Sleep => "sleep".to_owned(),
                    Lever::Wake => "wake".to_owned(),
                    Lever::OutletOff => "PDU outlet off".to_owned(),
                    Lever::OutletOn => "PDU outlet on".to_owned(),
                    Lever::GpuCap => format!("GPU cap {:.0} W per GPU", action.to_w),
                    Lever::GpuCapLift => format!("GPU cap lifted to {:.0} W", action.to_w),
                };
                println!(
                    "[{:>5.0} s]   {:<14} {:<28} {verb}  ({:?} on {})",
                    t as f64 / 1000.0,
                    if action.lever.is_shed() {
                        "shed"
                    } else {
                        "restore"
                    },
                    action.device_id,
                    action.reason,
                    action.constraint
                );
            }
            AgentEvent::Alert { now, alert } => {
                let t = now.saturating_sub(t0.unwrap_or(now));
                *tally.alerts.entry(alert.name).or_default() += 1;
                let sev = match alert.severity {
                    Severity::Critical => "CRITICAL",
                    Severity::Warning => "WARNING ",
                    Severity::Info => "info    ",
                };
                println!(
                    "[{:>5.0} s] {sev} {:<28} {}",
                    t as f64 / 1000.0,
                    alert.name,
                    alert.message
                );
            }
            AgentEvent::ActionResult { .. } => {}
        }
    }
    cancel.cancel();
    let _ = agent.await;
    let writes = sim.modbus_writes().len();
    sim.shutdown().await;

    println!();
    println!("demo summary");
    for (feed, (peak, budget)) in &tally.peak {
        println!(
            "  peak {feed}: {peak:.0} kW measured of {budget:.0} kW budget ({:.0}%)",
            100.0 * peak / budget
        );
    }
    let restored_after_shed = tally.restored.intersection(&tally.shed).count();
    println!("  miners shed: {}", tally.shed.len());
    println!("  miners restored: {restored_after_shed}");
    let acts: Vec<String> = tally
        .actions
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("  actions: {}", acts.join(", "));
    let al: Vec<String> = tally
        .alerts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("  alerts: {}", al.join(", "));
    println!("  PDU writes seen by the simulator: {writes}");
    print_energy(&site, &dir.join("rackwarden.db"));
    ExitCode::SUCCESS
}

/// Energy per account over the demo, from the agent's database (what `rackwarden energy`
/// prints for a real site; docs/energy.md).
fn print_energy(site: &rackwarden_config::Site, db: &std::path::Path) {
    use crate::energy::report::{self, By, Query};
    let rows = crate::energy::store::Store::open_read_only(db)
        .map_err(|e| e.to_string())
        .and_then(|store| {
            let q = Query {
                account: None,
                from: 0,
                to: u64::MAX / 4,
                by: By::Month,
            };
            report::report(&store, site, &q).map_err(|e| e.to_string())
        });
    match rows {
        Ok(rows) => {
            let mut per: std::collections::BTreeMap<&str, (f64, f64, f64)> = Default::default();
            for r in &rows {
                let e = per.entry(r.account.as_str()).or_default();
                e.0 += r.kwh;
                e.1 += r.trough_kwh.unwrap_or(0.0);
                e.2 += r.curtailed_miner_h.values().sum::<f64>();
            }
            for (account, (kwh, trough, curtailed)) in per {
                if account == rackwarden_config::MINING_ACCOUNT {
                    println!(
                        "  energy {account}: {kwh:.1} kWh ({trough:.1} kWh from trough filling, {curtailed:.2} miner-hours curtailed)"
                    );
                } else {
                    println!("  energy {account}: {kwh:.1} kWh");
                }
            }
        }
        Err(e) => println!("  energy: not recorded ({e})"),
    }
}
