//! Benchmark: reaction time from the reading that shows a GPU step to the first shed
//! command arriving at a simulated miner.
//!
//! `cargo run --release -p rackwarden --example bench_reaction -- [SITE.toml] [--trials N]
//!     [--feeds feed-a,feed-b] [--json]`
//!
//! Each trial starts the site simulator and the live agent afresh (in this process, on
//! loopback, real time), waits for the agent's first decision, then the tenant of one
//! feed raises every GPU limit of the feed to its maximum (the `gpu_limits` scenario
//! event; the example site's feeds then need mining shed). Times, all on this process's
//! monotonic clock:
//! - readings: the agent's `rackwarden::reading` trace events (a meter or GPU-node
//!   reading reaching the snapshot), kept when they show the step: a GPU node of the
//!   feed reporting the new limits, or a meter under the feed above its pre-step value;
//! - the decision: the agent's `action.sent` log event of the first shed;
//! - arrival: the simulated miner's command log.
//!
//! The reaction is arrival minus the first reading that showed the step (the earliest
//! the agent could know; it includes the wait for the next fast-loop tick). Also printed:
//! from the last reading that showed it before the decision, from the decision, and from
//! the step itself (which adds the wait for the next poll).
//! With `--json` the last line is one JSON object of the figures.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{percentile, private_copy, Args};
use rackwarden::runtime::agent::{self, AgentEvent, RunOptions};
use rackwarden_config::Site;
use rackwarden_sim::site::{EventKind, Scenario, SiteSim};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// What the agent logged, with the instant it was logged.
#[derive(Debug, Clone)]
enum Seen {
    Meter { node: usize, kw: f64 },
    Gpu { node: usize, enforced_w: f64 },
    Shed,
}

#[derive(Default)]
struct Fields {
    node: Option<usize>,
    gpu_node: Option<usize>,
    kw: Option<f64>,
    enforced_w: Option<f64>,
    event: Option<String>,
    lever: Option<String>,
}

impl Visit for Fields {
    fn record_u64(&mut self, f: &Field, v: u64) {
        let v = usize::try_from(v).ok();
        match f.name() {
            "node" => self.node = v,
            "gpu_node" => self.gpu_node = v,
            _ => {}
        }
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        match f.name() {
            "kw" => self.kw = Some(v),
            "enforced_w" => self.enforced_w = Some(v),
            _ => {}
        }
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        match f.name() {
            "event" => self.event = Some(v.to_owned()),
            "lever" => self.lever = Some(v.to_owned()),
            _ => {}
        }
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "event" || f.name() == "lever" {
            self.record_str(f, format!("{v:?}").trim_matches('"'));
        }
    }
}

type Log = Arc<Mutex<Vec<(Instant, Seen)>>>;

struct Recorder(Log);

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_event(&self, e: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        e.record(&mut f);
        let seen = match (f.node, f.kw, f.gpu_node, f.enforced_w, f.event.as_deref()) {
            (Some(node), Some(kw), _, _, _) => Seen::Meter { node, kw },
            (_, _, Some(node), Some(enforced_w), _) => Seen::Gpu { node, enforced_w },
            (_, _, _, _, Some("action.sent"))
                if f.lever
                    .as_deref()
                    .is_some_and(|l| ["power_target", "sleep", "outlet_off"].contains(&l)) =>
            {
                Seen::Shed
            }
            _ => return,
        };
        if let Ok(mut g) = self.0.lock() {
            g.push((Instant::now(), seen));
        }
    }
}

struct Trial {
    /// From the first reading that showed the step.
    reaction_ms: f64,
    /// From the last reading that showed it before the decision.
    last_reading_ms: f64,
    decision_to_arrival_ms: f64,
    step_to_arrival_ms: f64,
}

async fn trial(site: &Site, feed: &str, dir: &std::path::Path, log: &Log) -> Result<Trial, String> {
    let feed_idx = site
        .node_index(feed)
        .ok_or_else(|| format!("no feed `{feed}` in the site"))?;
    let step_at_s = 8.0;
    let max_w = site
        .gpu_nodes
        .iter()
        .filter_map(|g| g.gpu_max_w)
        .fold(0.0_f64, f64::max)
        .max(700.0);
    let scenario = Scenario {
        name: "bench-reaction".into(),
        gpu_profile: "training".into(),
        tenant_limit_w: Some(max_w / 2.0),
        day_s: None,
        events: vec![rackwarden_sim::site::scenario::Event {
            at_s: step_at_s,
            kind: EventKind::GpuLimits {
                racks: vec![],
                feed: Some(feed.to_owned()),
                limit_w: max_w,
            },
        }],
    };
    std::fs::remove_file(dir.join("state.json")).ok();
    let sim = SiteSim::start(site, scenario, 1.0)
        .await
        .map_err(|e| format!("simulator: {e}"))?;
    let sim_start = tokio::time::Instant::now();
    let (events, _rx) = broadcast::channel::<AgentEvent>(1 << 12);
    let cancel = CancellationToken::new();
    let opts = RunOptions {
        dry_run: false,
        speed: 1.0,
        state_file: dir.join("state.json"),
        journal_file: dir.join("journal.jsonl"),
        database_file: dir.join("rackwarden.db"),
    };
    let agent = tokio::spawn(agent::run(site.clone(), opts, events, cancel.clone()));
    // The step happens at the simulator's first 100 ms physics tick at or after
    // `step_at_s`; wait for it, then for the first command after it.
    let step = sim_start + Duration::from_secs_f64(step_at_s);
    let pre_step = {
        tokio::time::sleep_until(step - Duration::from_millis(150)).await;
        log.lock().map(|g| g.len()).unwrap_or(0)
    };
    let deadline = step + Duration::from_secs(8);
    let arrival = loop {
        if let Some(found) = sim.first_miner_command_since(step) {
            break Some(found);
        }
        if tokio::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    cancel.cancel();
    agent.await.ok();
    sim.shutdown().await;
    let (arrived, miner, cmd) = arrival.ok_or("no shed command within 8 s of the step")?;
    let arrived = arrived.into_std();
    let step = step.into_std();
    let entries: Vec<(Instant, Seen)> = {
        let mut g = log.lock().map_err(|_| "log poisoned")?;
        std::mem::take(&mut *g)
    };
    let under_feed = |node: usize| site.ancestors(node).contains(&feed_idx);
    // Baselines before the step: each meter's last value, each GPU node's limit.
    let mut base_kw: HashMap<usize, f64> = HashMap::new();
    let mut base_gpu: HashMap<usize, f64> = HashMap::new();
    for (_, s) in entries.iter().take(pre_step) {
        match s {
            Seen::Meter { node, kw } => {
                base_kw.insert(*node, *kw);
            }
            Seen::Gpu { node, enforced_w } => {
                base_gpu.insert(*node, *enforced_w);
            }
            Seen::Shed => {}
        }
    }
    let decision = entries
        .iter()
        .skip(pre_step)
        .find(|(t, s)| *t >= step && matches!(s, Seen::Shed))
        .map(|(t, _)| *t)
        .ok_or("no shed decision logged after the step")?;
    let shows = |s: &Seen| match s {
        Seen::Meter { node, kw } => {
            under_feed(*node) && base_kw.get(node).is_some_and(|b| *kw > b * 1.01 + 0.5)
        }
        Seen::Gpu { node, enforced_w } => {
            under_feed(site.gpu_nodes[*node].rack)
                && base_gpu.get(node).is_some_and(|b| *enforced_w > b * 1.01)
        }
        Seen::Shed => false,
    };
    let showing: Vec<Instant> = entries
        .iter()
        .skip(pre_step)
        .filter(|(t, s)| *t >= step && *t <= decision && shows(s))
        .map(|(t, _)| *t)
        .collect();
    let (Some(&first), Some(&last)) = (showing.first(), showing.last()) else {
        return Err("no reading showed the step before the decision".into());
    };
    let ms = |a: Instant, b: Instant| a.saturating_duration_since(b).as_secs_f64() * 1e3;
    let t = Trial {
        reaction_ms: ms(arrived, first),
        last_reading_ms: ms(arrived, last),
        decision_to_arrival_ms: ms(arrived, decision),
        step_to_arrival_ms: ms(arrived, step),
    };
    println!(
        "  {feed}: first reading -> arrival {:7.1} ms   last reading -> arrival {:6.1} ms   decision -> arrival {:6.1} ms   step -> arrival {:7.1} ms   ({miner}: {cmd})",
        t.reaction_ms, t.last_reading_ms, t.decision_to_arrival_ms, t.step_to_arrival_ms
    );
    Ok(t)
}

fn main() -> ExitCode {
    let args = Args::from_env();
    let path = args.site_path();
    let trials: usize = args.parsed("--trials", 12);
    let feeds: Vec<String> = args
        .opt("--feeds")
        .unwrap_or_else(|| "feed-a,feed-b".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let json = args.flag("--json");
    let dir = std::env::temp_dir().join(format!("rackwarden-reaction-{}", std::process::id()));
    let site = match private_copy(&path, &dir, (77, 71)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(78);
        }
    };
    let log: Log = Arc::default();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("rackwarden::reading", tracing::Level::TRACE)
        .with_target("rackwarden", tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(Recorder(log.clone()).with_filter(filter))
        .init();
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    println!(
        "reaction: {trials} trials on {} (meter interval {} ms, fast loop {} ms)",
        site.id, site.policy.meter_poll_ms, site.policy.fast_loop_ms
    );
    let mut got = Vec::new();
    let mut failed = 0;
    for k in 0..trials {
        let feed = &feeds[k % feeds.len().max(1)];
        match rt.block_on(trial(&site, feed, &dir, &log)) {
            Ok(t) => got.push(t),
            Err(e) => {
                failed += 1;
                println!("  {feed}: trial failed: {e}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    let sorted = |f: fn(&Trial) -> f64| {
        let mut v: Vec<f64> = got.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let r = sorted(|t| t.reaction_ms);
    let l = sorted(|t| t.last_reading_ms);
    let d = sorted(|t| t.decision_to_arrival_ms);
    let s = sorted(|t| t.step_to_arrival_ms);
    println!(
        "first reading showing the step -> first shed arrival: p50 {:.1} ms  p99 {:.1} ms  ({} trials, {failed} failed)",
        percentile(&r, 500),
        percentile(&r, 990),
        r.len()
    );
    println!(
        "last reading before the decision -> arrival: p50 {:.1} ms  p99 {:.1} ms",
        percentile(&l, 500),
        percentile(&l, 990)
    );
    println!(
        "decision -> arrival: p50 {:.1} ms  p99 {:.1} ms;  step -> arrival: p50 {:.1} ms  p99 {:.1} ms",
        percentile(&d, 500),
        percentile(&d, 990),
        percentile(&s, 500),
        percentile(&s, 990)
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "trials": r.len(),
                "failed": failed,
                "meter_interval_ms": site.policy.meter_poll_ms,
                "reaction_p50_ms": percentile(&r, 500),
                "reaction_p99_ms": percentile(&r, 990),
                "last_reading_p50_ms": percentile(&l, 500),
                "last_reading_p99_ms": percentile(&l, 990),
                "decision_to_arrival_p50_ms": percentile(&d, 500),
                "decision_to_arrival_p99_ms": percentile(&d, 990),
                "step_to_arrival_p50_ms": percentile(&s, 500),
                "step_to_arrival_p99_ms": percentile(&s, 990),
            })
        );
    }
    if got.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
