//! `rackwarden demo`: the agent against its own simulated site, in one process.
//!
//! Serves examples/site.toml (compiled in) on loopback, plays the `demo` scenario (a GPU
//! surge on feed A, then a CRAH trip in the mining hall) at `--speed` times real time,
//! runs the agent live against it and prints a timeline a newcomer can read: what
//! happened, where and why (sheds and restores grouped per rack and decision, alerts
//! grouped per decision, each feed's load against its budget B and ceiling H once a
//! simulated minute), then a summary. The agent's own logs go to a file named at the
//! start and the end (`--verbose` puts them on the terminal instead). Nothing outside
//! 127.0.0.0/8 is touched; the database and the journal go to a temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use rackwarden_config::{NodeKind, Site};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::control::{Action, Alert, Device, Millis, NodeView, Reason, Severity, Tick};
use crate::runtime::agent::{self, AgentEvent, RunOptions};
use rackwarden_sim::site::{Scenario, SiteSim, SIM_MINER_PASSWORD};

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
    /// The agent's logs on the terminal (stderr) instead of the log file.
    #[arg(long)]
    pub verbose: bool,
    /// Where the agent's logs go (default: rackwarden-demo-<pid>.log in the temporary
    /// directory).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
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

/// Commands of one kind (shed, restore or fill) for one reason within one simulated
/// minute: one line.
#[derive(Debug)]
struct Episode {
    shed: bool,
    reason: Reason,
    /// The constraint for sheds (restores and fills name their racks instead).
    constraint: Option<String>,
    first: Millis,
    last: Millis,
    miners: BTreeSet<String>,
    gpu_nodes: BTreeSet<String>,
    places: BTreeSet<String>,
    levers: BTreeMap<&'static str, usize>,
    delta_w: f64,
}

/// Alerts of one name within one simulated minute: one line.
#[derive(Debug)]
struct AlertGroup {
    first: Millis,
    name: &'static str,
    severity: Severity,
    places: Vec<String>,
    message: String,
}

/// The terminal timeline: `time  what  where  detail`. Within each simulated minute the
/// commands are grouped by kind and reason and the alerts by name; the minute's lines
/// come out in time order, then the line of the feeds' load against B and H.
struct Timeline<'a> {
    site: &'a Site,
    t0: Option<Millis>,
    episodes: Vec<Episode>,
    alerts: Vec<AlertGroup>,
    lines: usize,
}

/// Why, in words, with the reason's own (serde) name as the journal and the API spell it.
fn why(reason: Reason, at: &str) -> String {
    let words = match reason {
        Reason::Shed => format!("projected load over B on {at}"),
        Reason::Emergency => format!("measured load near the ceiling H on {at}"),
        Reason::Excursion => format!("measured load above B on {at}"),
        Reason::Ceiling => format!("worst case above the ceiling H on {at}"),
        Reason::SlowInTrough => format!("slow miners kept out of the trough on {at}"),
        Reason::MeterSilent => format!("meter silent on {at}"),
        Reason::CoolingRedundancy => format!("N+1 cooling lost in {at}"),
        Reason::CoolingCapacity => format!("cooling short of the heat load in {at}"),
        Reason::Escalation => "the previous lever was not confirmed".to_owned(),
        Reason::Operator => "operator override".to_owned(),
        Reason::Restore => "headroom back".to_owned(),
        Reason::Fill => "trough headroom the AI load leaves".to_owned(),
        Reason::Resume => "resent after a restart".to_owned(),
        Reason::Grid => format!("grid limit on {at}"),
        Reason::Price => "power price above the miner's breakeven".to_owned(),
    };
    let name = serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("{words} [{name}]")
}

fn clock(ms: Millis) -> String {
    let s = ms / 1000;
    format!("{:>3}:{:02}", s / 60, s % 60)
}

/// `a, b, c` or `a, b and 3 more`.
fn some_of<'s>(items: impl IntoIterator<Item = &'s str>, n: usize) -> String {
    let all: Vec<&str> = items.into_iter().collect();
    if all.len() <= n + 1 {
        return all.join(", ");
    }
    format!("{} and {} more", all[..n].join(", "), all.len() - n)
}

impl<'a> Timeline<'a> {
    fn new(site: &'a Site) -> Self {
        Timeline {
            site,
            t0: None,
            episodes: Vec::new(),
            alerts: Vec::new(),
            lines: 0,
        }
    }

    fn line(&mut self, at: Millis, what: &str, place: &str, detail: &str) {
        let t = at.saturating_sub(self.t0.unwrap_or(at));
        println!("{}  {what:<8} {place:<12} {detail}", clock(t));
        self.lines += 1;
    }

    fn at(&mut self, now: Millis) {
        self.t0.get_or_insert(now);
    }

    fn action(&mut self, now: Millis, a: &Action) {
        let shed = a.lever.is_shed();
        let constraint = shed.then(|| a.constraint.clone());
        let rack = match a.device {
            Device::Miner(i) => self.site.miners.get(i).map(|m| m.rack),
            Device::GpuNode(i) => self.site.gpu_nodes.get(i).map(|g| g.rack),
        }
        .and_then(|r| self.site.nodes.get(r))
        .map_or_else(|| a.constraint.clone(), |n| n.id.clone());
        let i = match self
            .episodes
            .iter()
            .position(|e| e.shed == shed && e.reason == a.reason && e.constraint == constraint)
        {
            Some(i) => i,
            None => {
                self.episodes.push(Episode {
                    shed,
                    reason: a.reason,
                    constraint,
                    first: now,
                    last: now,
                    miners: BTreeSet::new(),
                    gpu_nodes: BTreeSet::new(),
                    places: BTreeSet::new(),
                    levers: BTreeMap::new(),
                    delta_w: 0.0,
                });
                self.episodes.len() - 1
            }
        };
        let e = &mut self.episodes[i];
        e.last = now;
        match a.device {
            Device::Miner(_) => e.miners.insert(a.device_id.clone()),
            Device::GpuNode(_) => e.gpu_nodes.insert(a.device_id.clone()),
        };
        e.places.insert(rack);
        *e.levers.entry(a.lever.name()).or_default() += 1;
        e.delta_w += a.to_w - a.from_w;
    }

    fn alert(&mut self, now: Millis, a: &Alert) {
        let place = a
            .node
            .clone()
            .or_else(|| a.zone.clone())
            .or_else(|| a.device.clone())
            .unwrap_or_else(|| "site".to_owned());
        if let Some(g) = self.alerts.iter_mut().find(|g| g.name == a.kind.name()) {
            if !g.places.contains(&place) {
                g.places.push(place);
            }
            return;
        }
        self.alerts.push(AlertGroup {
            first: now,
            name: a.kind.name(),
            severity: a.severity,
            places: vec![place],
            message: a.message.clone(),
        });
    }

    /// Prints what the minute did, in time order.
    fn flush(&mut self) {
        enum Entry {
            Commands(Episode),
            Alerts(AlertGroup),
        }
        let mut entries: Vec<(Millis, Entry)> = std::mem::take(&mut self.episodes)
            .into_iter()
            .map(|e| (e.first, Entry::Commands(e)))
            .chain(
                std::mem::take(&mut self.alerts)
                    .into_iter()
                    .map(|g| (g.first, Entry::Alerts(g))),
            )
            .collect();
        entries.sort_by_key(|(t, _)| *t);
        for (t, entry) in entries {
            match entry {
                Entry::Commands(e) => {
                    let what = if e.shed {
                        "SHED"
                    } else if e.reason == Reason::Fill {
                        "fill"
                    } else {
                        "restore"
                    };
                    let count = |set: &BTreeSet<String>, what: &str| match set.len() {
                        0 => None,
                        1 => set.iter().next().cloned(),
                        n => Some(format!("{n} {what}")),
                    };
                    let who: Vec<String> =
                        [count(&e.miners, "miners"), count(&e.gpu_nodes, "GPU nodes")]
                            .into_iter()
                            .flatten()
                            .collect();
                    let who = who.join(" and ");
                    let levers: Vec<String> =
                        e.levers.iter().map(|(l, k)| format!("{k} {l}")).collect();
                    let over = if e.last > e.first {
                        format!(" over {} s", (e.last - e.first) / 1000)
                    } else {
                        String::new()
                    };
                    // Sheds: where the limit is; restores and fills: the racks they reach.
                    let place = e.constraint.clone().unwrap_or_else(|| {
                        if e.places.len() == 1 {
                            e.places.iter().next().cloned().unwrap_or_default()
                        } else {
                            format!("{} racks", e.places.len())
                        }
                    });
                    let on = format!(" on {}", some_of(e.places.iter().map(String::as_str), 3));
                    let detail = format!(
                        "{who}{on}: {} ({:+.0} kW){over}; why: {}",
                        levers.join(", "),
                        e.delta_w / 1000.0,
                        why(e.reason, e.constraint.as_deref().unwrap_or("")),
                    );
                    self.line(t, what, &place, &detail);
                }
                Entry::Alerts(g) => {
                    let sev = match g.severity {
                        Severity::Critical => "CRITICAL",
                        Severity::Warning => "warning",
                        Severity::Info => "info",
                    };
                    let (place, detail) = if g.places.len() == 1 {
                        (
                            g.places[0].clone(),
                            format!("{sev} {}: {}", g.name, g.message),
                        )
                    } else {
                        (
                            format!("{} places", g.places.len()),
                            format!(
                                "{sev} {} ({}): {}",
                                g.name,
                                some_of(g.places.iter().map(String::as_str), 3),
                                g.message
                            ),
                        )
                    };
                    self.line(t, "alert", &place, &detail);
                }
            }
        }
    }

    /// The minute's lines, then each feed's load against B and H (measured, or projected
    /// with no fresh meter).
    fn feeds(&mut self, now: Millis, feeds: &[usize], nodes: &[NodeView]) {
        self.flush();
        let parts: Vec<String> = feeds
            .iter()
            .filter_map(|&f| {
                let v = nodes.get(f)?;
                let (kw, src) = v
                    .measured_kw
                    .map_or((v.proj_kw, " (projected)"), |m| (m, ""));
                Some(format!(
                    "{} {kw:.0} kW{src} = {:.0}% of B, {:.0}% of H",
                    self.site.nodes[f].id,
                    100.0 * kw / v.budget_kw,
                    100.0 * kw / v.ceiling_kw
                ))
            })
            .collect();
        self.line(now, "feeds", "", &parts.join(" | "));
    }
}

/// Writes a file only its owner can read (the demo's GPU node token).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)?.write_all(text.as_bytes())
}

pub fn run(args: DemoArgs, log_format_given: bool) -> ExitCode {
    let pid = std::process::id();
    let log_path = args
        .log_file
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rackwarden-demo-{pid}.log")));
    let to_terminal = args.verbose || log_format_given;
    if to_terminal {
        if !log_format_given {
            crate::logging::init(rackwarden_config::LogFormat::Text);
        }
    } else if let Err(e) = crate::logging::init_file(&log_path) {
        eprintln!(
            "demo: cannot write the log file {}: {e}",
            log_path.display()
        );
        return ExitCode::FAILURE;
    }
    let dir = std::env::temp_dir().join(format!("rackwarden-demo-{pid}"));
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|()| write_private(&dir.join("gpu-node.token"), TOKEN))
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
    let logs = (!to_terminal).then_some(log_path.as_path());
    let code = rt.block_on(play(site, scenario, args, dir.clone(), logs));
    std::fs::remove_dir_all(&dir).ok();
    code
}

async fn play(
    site: Site,
    scenario: Scenario,
    args: DemoArgs,
    dir: PathBuf,
    logs: Option<&std::path::Path>,
) -> ExitCode {
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
    if let Some(p) = logs {
        println!("agent logs: {} (--verbose shows them here)", p.display());
    }
    println!(
        "B: a node's sustained budget; H: its never-trip ceiling. Times are simulated m:ss.\n"
    );
    println!("{:>6}  {:<8} {:<12} detail", "time", "what", "where");
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
    let mut timeline = Timeline::new(&site);
    let mut last_feeds: Option<Millis> = None;
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
                timeline.at(now);
                for &f in &feeds {
                    let Some(v) = nodes.get(f) else { continue };
                    let measured = v.measured_kw.unwrap_or(0.0);
                    let e = tally
                        .peak
                        .entry(site.nodes[f].id.clone())
                        .or_insert((0.0, v.budget_kw));
                    e.0 = e.0.max(measured);
                }
                if tick == Tick::Slow && last_feeds.is_none_or(|l| now >= l + 60_000) {
                    last_feeds = Some(now);
                    timeline.feeds(now, &feeds, &nodes);
                }
            }
            AgentEvent::Action { now, action, .. } => {
                timeline.at(now);
                *tally.actions.entry(action.lever.name()).or_default() += 1;
                if let Device::Miner(_) = action.device {
                    if action.lever.is_shed() {
                        tally.shed.insert(action.device_id.clone());
                    } else {
                        tally.restored.insert(action.device_id.clone());
                    }
                }
                timeline.action(now, &action);
            }
            AgentEvent::Alert { now, alert } => {
                timeline.at(now);
                *tally.alerts.entry(alert.kind.name()).or_default() += 1;
                timeline.alert(now, &alert);
            }
            AgentEvent::ActionResult { .. } => {}
        }
    }
    timeline.flush();
    cancel.cancel();
    agent.await.ok();
    let writes = sim.modbus_writes().len();
    sim.shutdown().await;

    println!();
    println!("demo summary ({} timeline lines above)", timeline.lines);
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
    println!(
        "  commands: {} (PDU writes seen by the simulator: {writes})",
        acts.join(", ")
    );
    let al: Vec<String> = tally
        .alerts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("  alerts: {}", al.join(", "));
    print_energy(&site, &dir.join("rackwarden.db"));
    if let Some(p) = logs {
        println!("  agent logs: {}", p.display());
    }
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
            let parts: Vec<String> = per
                .into_iter()
                .map(|(account, (kwh, trough, curtailed))| {
                    if account == rackwarden_config::MINING_ACCOUNT {
                        format!(
                            "{account} {kwh:.1} kWh ({trough:.1} kWh from trough filling, \
                             {curtailed:.2} miner-hours curtailed)"
                        )
                    } else {
                        format!("{account} {kwh:.1} kWh")
                    }
                })
                .collect();
            println!("  energy: {}", parts.join(", "));
        }
        Err(e) => println!("  energy: not recorded ({e})"),
    }
}
