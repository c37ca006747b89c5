//! Simulated-month soak: the example site (`examples/site.toml`, loaded the operator's way)
//! driven through 30 simulated days by the physics of `control_support` — training jobs
//! that start, swing and stop, inference following a day curve, tenant limit moves, GPU
//! surges — with random device faults (stale meters past the silent-meter limit, silent
//! miners, miners ignoring commands, stale GPU nodes, NVML lost, stale cooling units) and
//! cooling trips (one or two units of a zone), checking every invariant of
//! docs/control.md after every decision.
//!
//! Cadence: a month at the fast cadence is 2.6 M decisions, more than CI should spend.
//! The soak ticks at the runtime's own cadence (1 s, every 5th tick a slow one) for
//! `BUSY_MS` (60 s) after anything happens (an injected event, an action, an alert, a
//! command still in flight), and while the site is quiet it takes the slow ticks only
//! (every 5 s). Every event switches back to the full cadence at the tick it takes
//! effect, so no shed is skipped; in a quiet site a fast tick has nothing to do that the
//! next slow tick (which runs everything a fast tick does) would not. About 650,000
//! decisions for the month, each checked against every invariant.
//!
//! Run with `cargo test -p rackwarden --test soak_month -- --nocapture` to see the
//! counts; `SOAK_DAYS=n` shortens or lengthens it, `SOAK_SEED=n` picks another month.

// A panic is the failure report; the physics converts freely between time and floats.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    clippy::too_many_lines
)]

mod control_support;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::Path;

use control_support::invariants::{
    inv10_n_plus_1, inv11_ceiling, inv12_excursion, inv13_slow_out_of_trough, inv1_budget,
    inv2_priority, inv3_restore_order, inv4_hysteresis, inv5_stale, inv6_escalation, inv7_range,
    inv8_determinism, inv9_no_nvml, Memory,
};
use control_support::{Sim, Step};
use rackwarden::control::Loads;
use rackwarden::control::UnitState;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DAY_MS: u64 = 86_400_000;
/// After anything happens, this long at the fast cadence.
const BUSY_MS: u64 = 60_000;
/// While quiet, one slow tick every this long.
const QUIET_MS: u64 = 5_000;
/// Invariant 8 (determinism, with a trip through the persisted form) costs two more
/// decisions; it runs on every tick with actions or alerts and on every 50th other tick.
const DETERMINISM_EVERY: u64 = 50;

/// A change of the world, scheduled at a time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A training job starts on a GPU node: limit set, swings between idle and the cap.
    JobStart {
        g: usize,
        swing_mhz: u32,
        limit_pm: u32,
    },
    /// The job ends: back to the inference day curve.
    JobEnd {
        g: usize,
    },
    /// The tenant moves a node's limit anywhere in its range (per mille of the range).
    Limit {
        g: usize,
        pm: u32,
    },
    /// Every GPU to its maximum limit at once.
    Surge,
    MeterStale {
        n: usize,
        stale: bool,
    },
    MinerSilent {
        m: usize,
        silent: bool,
    },
    MinerIgnores {
        m: usize,
        ignores: bool,
    },
    GpuStale {
        g: usize,
        stale: bool,
    },
    Nvml {
        g: usize,
        available: bool,
    },
    UnitState {
        z: usize,
        u: usize,
        state: u8,
    },
    UnitStale {
        z: usize,
        u: usize,
        stale: bool,
    },
    /// Other (unmetered-by-device) load appears in a rack, W.
    Other {
        n: usize,
        w: u32,
    },
}

/// Fault and load kinds, for the counts.
fn kind(e: &Ev) -> Option<&'static str> {
    Some(match e {
        Ev::JobStart { .. } => "job_start",
        Ev::Limit { .. } => "tenant_limit",
        Ev::Surge => "gpu_surge",
        Ev::MeterStale { stale: true, .. } => "meter_stale",
        Ev::MinerSilent { silent: true, .. } => "miner_silent",
        Ev::MinerIgnores { ignores: true, .. } => "miner_ignores_commands",
        Ev::GpuStale { stale: true, .. } => "gpu_node_stale",
        Ev::Nvml {
            available: false, ..
        } => "nvml_lost",
        Ev::UnitState { state, .. } if *state != 0 => "cooling_trip",
        Ev::UnitStale { stale: true, .. } => "cooling_unit_stale",
        Ev::Other { w, .. } if *w > 0 => "other_load",
        _ => return None,
    })
}

fn is_fault(k: &str) -> bool {
    !matches!(k, "job_start" | "tenant_limit" | "gpu_surge" | "other_load")
}

struct World {
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    /// Per GPU node: a training job is running.
    training: Vec<bool>,
    counts: BTreeMap<&'static str, u64>,
}

impl World {
    fn at(&mut self, t: u64, e: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, e)));
    }
}

/// The month's schedule: every kind of event at its own rate, each fault with its end.
fn schedule(sim: &Sim, r: &mut ChaCha8Rng, end: u64) -> World {
    let mut w = World {
        queue: BinaryHeap::new(),
        seq: 0,
        training: vec![false; sim.gpus.len()],
        counts: BTreeMap::new(),
    };
    let mins = |r: &mut ChaCha8Rng, a: u64, b: u64| r.random_range(a * 60_000..b * 60_000);
    let secs = |r: &mut ChaCha8Rng, a: u64, b: u64| r.random_range(a * 1000..b * 1000);
    // Poisson arrivals at `per_day`, from a random start.
    let arrivals = |r: &mut ChaCha8Rng, per_day: f64| -> Vec<u64> {
        let mut t = 0.0;
        let mut out = Vec::new();
        loop {
            let u: f64 = r.random_range(f64::EPSILON..1.0);
            t += -u.ln() / per_day * DAY_MS as f64;
            if t >= end as f64 {
                return out;
            }
            out.push(t as u64);
        }
    };
    let racks: Vec<usize> = (0..sim.site.nodes.len())
        .filter(|&i| sim.site.nodes[i].is_rack())
        .collect();
    let metered: Vec<usize> = (0..sim.site.nodes.len())
        .filter(|&i| !sim.site.nodes[i].meters.is_empty())
        .collect();
    let (n_gpu, n_miners) = (sim.gpus.len(), sim.miners.len());
    for g in 0..n_gpu {
        // Training jobs: a few a day per node, 20 min to 10 h each.
        for t in arrivals(r, 3.0) {
            let swing_mhz = r.random_range(200..3000);
            let limit_pm = r.random_range(600..=1000);
            w.at(
                t,
                Ev::JobStart {
                    g,
                    swing_mhz,
                    limit_pm,
                },
            );
            let d = mins(r, 20, 600);
            w.at(t + d, Ev::JobEnd { g });
        }
        for t in arrivals(r, 4.0) {
            let pm = r.random_range(0..=1000);
            w.at(t, Ev::Limit { g, pm });
        }
        for t in arrivals(r, 0.5) {
            w.at(t, Ev::GpuStale { g, stale: true });
            let d = secs(r, 5, 120);
            w.at(t + d, Ev::GpuStale { g, stale: false });
        }
        for t in arrivals(r, 0.1) {
            w.at(
                t,
                Ev::Nvml {
                    g,
                    available: false,
                },
            );
            let d = mins(r, 5, 120);
            w.at(t + d, Ev::Nvml { g, available: true });
        }
    }
    for t in arrivals(r, 0.5) {
        w.at(t, Ev::Surge);
    }
    // Meters: short drop-outs and ones past the silent-meter limit.
    for t in arrivals(r, 6.0) {
        let n = metered[r.random_range(0..metered.len())];
        w.at(t, Ev::MeterStale { n, stale: true });
        let d = if r.random_bool(0.3) {
            mins(r, 1, 30)
        } else {
            secs(r, 2, 20)
        };
        w.at(t + d, Ev::MeterStale { n, stale: false });
    }
    for t in arrivals(r, 16.0) {
        let m = r.random_range(0..n_miners);
        w.at(t, Ev::MinerSilent { m, silent: true });
        let d = if r.random_bool(0.2) {
            mins(r, 10, 240)
        } else {
            secs(r, 10, 300)
        };
        w.at(t + d, Ev::MinerSilent { m, silent: false });
    }
    for t in arrivals(r, 8.0) {
        let m = r.random_range(0..n_miners);
        w.at(t, Ev::MinerIgnores { m, ignores: true });
        let d = mins(r, 5, 180);
        w.at(t + d, Ev::MinerIgnores { m, ignores: false });
    }
    // Cooling: a unit trips (alarm, offline) or goes to maintenance; sometimes a second
    // one in the same zone, which costs N+1.
    for t in arrivals(r, 2.0) {
        let z = r.random_range(0..sim.units.len());
        let n_units = sim.units[z].len();
        let u = r.random_range(0..n_units);
        let state = r.random_range(1..=3);
        w.at(t, Ev::UnitState { z, u, state });
        let d = mins(r, 10, 180);
        w.at(t + d, Ev::UnitState { z, u, state: 0 });
        if r.random_bool(0.3) {
            let u2 = (u + 1) % n_units;
            let t2 = t + mins(r, 1, 30);
            w.at(t2, Ev::UnitState { z, u: u2, state });
            let d2 = mins(r, 5, 60);
            w.at(t2 + d2, Ev::UnitState { z, u: u2, state: 0 });
        }
    }
    for t in arrivals(r, 1.0) {
        let z = r.random_range(0..sim.units.len());
        let u = r.random_range(0..sim.units[z].len());
        w.at(t, Ev::UnitStale { z, u, stale: true });
        let d = secs(r, 5, 600);
        w.at(t + d, Ev::UnitStale { z, u, stale: false });
    }
    for t in arrivals(r, 2.0) {
        let n = racks[r.random_range(0..racks.len())];
        let kw = r.random_range(1..30);
        w.at(t, Ev::Other { n, w: kw * 1000 });
        let d = mins(r, 5, 240);
        w.at(t + d, Ev::Other { n, w: 0 });
    }
    w
}

fn apply(sim: &mut Sim, w: &mut World, e: &Ev) {
    if let Some(k) = kind(e) {
        *w.counts.entry(k).or_default() += 1;
    }
    match *e {
        Ev::JobStart {
            g,
            swing_mhz,
            limit_pm,
        } => {
            w.training[g] = true;
            let l = &mut sim.gpus[g].limits;
            l.enforced_w = (l.min_w + f64::from(limit_pm) / 1000.0 * (l.max_w - l.min_w)).round();
            sim.gpus[g].swing_hz = f64::from(swing_mhz) / 1000.0;
        }
        Ev::JobEnd { g } => {
            w.training[g] = false;
            sim.gpus[g].swing_hz = 0.0;
        }
        Ev::Limit { g, pm } => {
            let l = &mut sim.gpus[g].limits;
            l.enforced_w = (l.min_w + f64::from(pm) / 1000.0 * (l.max_w - l.min_w)).round();
        }
        Ev::Surge => {
            for g in &mut sim.gpus {
                g.limits.enforced_w = g.limits.max_w;
                g.util = 1.0;
            }
        }
        Ev::MeterStale { n, stale } => sim.stale.meters[n] = stale,
        Ev::MinerSilent { m, silent } => sim.stale.miners[m] = silent,
        Ev::MinerIgnores { m, ignores } => sim.miners[m].ignores = ignores,
        Ev::GpuStale { g, stale } => sim.stale.gpus[g] = stale,
        Ev::Nvml { g, available } => sim.gpus[g].nvml = available,
        Ev::UnitState { z, u, state } => {
            sim.units[z][u] = match state {
                0 => UnitState::Running,
                1 => UnitState::Alarmed,
                2 => UnitState::Offline,
                _ => UnitState::Maintenance,
            };
        }
        Ev::UnitStale { z, u, stale } => sim.stale.units[z][u] = stale,
        Ev::Other { n, w } => sim.other_kw[n] = f64::from(w) / 1000.0,
    }
}

/// Inference: utilisation follows the day (trough at 04:00, peak at 16:00).
fn day_curve(now: u64) -> f64 {
    let h = (now % DAY_MS) as f64 / 3_600_000.0;
    0.55 - 0.35 * ((h - 4.0) / 24.0 * std::f64::consts::TAU).cos()
}

// ---- The invariants of docs/control.md, as in control_invariants.rs, on one step. ----

#[derive(Default, Debug)]
struct Tally {
    fast: u64,
    slow: u64,
    determinism_checked: u64,
    /// Ticks whose intent changed: a database commit.
    commits: u64,
    stale_checked: u64,
    actions: u64,
    sheds: u64,
    restores: u64,
    /// Restores that took trough headroom (reason `fill`).
    fills: u64,
    /// Excursions above B: count and longest, ms.
    excursions: u64,
    longest_excursion_ms: u64,
    alerts: BTreeMap<&'static str, u64>,
    violations: Vec<String>,
    t_tick: f64,
    t_check: f64,
}

/// Measured excursions above B per node: none may outlast `excursion_max_s` while fast
/// mining above idle is left under the node.
struct Excursions {
    since: Vec<Option<u64>>,
}

impl Excursions {
    fn new(n: usize) -> Excursions {
        Excursions {
            since: vec![None; n],
        }
    }

    fn check(&mut self, sim: &Sim, step: &Step, tally: &mut Tally) -> Result<(), String> {
        let p = &sim.site.policy;
        let loads = Loads::compute(&sim.site, &sim.topo, &step.snap, &step.pre, step.now);
        for (n, node) in sim.site.nodes.iter().enumerate() {
            let over = step.snap.meter(n).is_some_and(|r| {
                step.now - r.taken_at <= p.meter_stale_ms && r.kw > node.budget_kw + 1e-6
            });
            match (over, self.since[n]) {
                (true, None) => {
                    self.since[n] = Some(step.now);
                    tally.excursions += 1;
                }
                (true, Some(t)) => {
                    let len = step.now - t;
                    tally.longest_excursion_ms = tally.longest_excursion_ms.max(len);
                    let fast_left = sim.topo.miners_under[n].iter().any(|&i| {
                        loads.fast[i] && loads.miner_w[i] > sim.site.miners[i].idle_w + 1.0
                    });
                    if len > p.excursion_max_s * 1000 && fast_left {
                        return Err(format!(
                            "12 excursion: `{}` above B for {len} ms with fast mining left",
                            node.id
                        ));
                    }
                }
                (false, _) => self.since[n] = None,
            }
        }
        Ok(())
    }
}

/// Invariant 8 on the database: the intent read back from it is, bit for bit, what a
/// restart carries over of the state just committed (miners whole but for the alert
/// flags a restart resets, GPU caps and their pending commands, node bands and last
/// restores).
fn same_after_restart(
    store: &rackwarden::store::Store,
    st: &rackwarden::control::ControlState,
) -> Result<(), String> {
    let (_, back) = store.load_intent().unwrap().unwrap();
    let index = |ids: &[String]| -> std::collections::HashMap<String, usize> {
        ids.iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect()
    };
    let (bm, bg, bn) = (
        index(&back.miner_ids.0),
        index(&back.gpu_ids.0),
        index(&back.node_ids.0),
    );
    for (i, id) in st.miner_ids.0.iter().enumerate() {
        // The alert flags a restart resets are not kept.
        let want = rackwarden::control::MinerState {
            stale_alerted: false,
            no_driver_alerted: false,
            ..st.miners[i].clone()
        };
        if back.miners[bm[id]] != want {
            return Err(format!(
                "8 determinism: miner {id} read back from the database differs"
            ));
        }
    }
    for (i, id) in st.gpu_ids.0.iter().enumerate() {
        let (a, b) = (&back.gpus[bg[id]], &st.gpus[i]);
        if a.cap_w.map(f64::to_bits) != b.cap_w.map(f64::to_bits)
            || a.capped_by != b.capped_by
            || a.pending != b.pending
        {
            return Err(format!(
                "8 determinism: GPU node {id} read back from the database differs"
            ));
        }
    }
    for (i, id) in st.node_ids.0.iter().enumerate() {
        let (a, b) = (&back.nodes[bn[id]], &st.nodes[i]);
        if a.band != b.band || a.last_restore_at != b.last_restore_at {
            return Err(format!(
                "8 determinism: node {id} read back from the database differs"
            ));
        }
    }
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn soak_example_site_for_a_simulated_month() {
    let days = env_u64("SOAK_DAYS", 30);
    let seed = env_u64("SOAK_SEED", 20_261_125);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site.toml");
    let site = rackwarden_config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut sim = Sim::new(site, false);
    sim.keep_steps = false;
    let end = days * DAY_MS;
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut world = schedule(&sim, &mut r, end);
    let mut mem = Memory::default();
    let mut tally = Tally::default();
    let mut busy_until = BUSY_MS;
    let mut excursions = Excursions::new(sim.site.nodes.len());
    // The agent's database (issue 17): every decision's intent committed the runtime's
    // way (only the rows that changed since the last commit), read back and compared at
    // every determinism check.
    let db_dir = std::env::temp_dir().join(format!("rw-soak-db-{}", std::process::id()));
    std::fs::remove_dir_all(&db_dir).ok();
    let mut store = rackwarden::store::Store::open(&db_dir.join("rackwarden.db")).unwrap();
    let mut committed: Option<rackwarden::control::ControlState> = None;
    let started = std::time::Instant::now();

    while sim.now < end {
        // Quiet: jump to the next slow tick (the harness adds the last second).
        if sim.now >= busy_until {
            let next_slow = (sim.now / QUIET_MS + 1) * QUIET_MS;
            sim.now = next_slow - 1_000;
        }
        let t = sim.now + 1_000;
        while world
            .queue
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= t)
        {
            let Reverse((_, _, e)) = world.queue.pop().unwrap();
            apply(&mut sim, &mut world, &e);
            busy_until = t + BUSY_MS;
        }
        // Inference nodes follow the day curve.
        for g in 0..sim.gpus.len() {
            if !world.training[g] {
                sim.gpus[g].util = day_curve(t);
            }
        }
        let t0 = std::time::Instant::now();
        sim.tick();
        tally.t_tick += t0.elapsed().as_secs_f64();
        let t0 = std::time::Instant::now();
        let step = sim.steps.last().unwrap();
        match step.tick {
            rackwarden::control::Tick::Fast => tally.fast += 1,
            rackwarden::control::Tick::Slow => tally.slow += 1,
        }
        let eventful = !step.plan.actions.is_empty() || !step.plan.alerts.is_empty();
        if eventful || step.plan.state.miners.iter().any(|m| m.pending.is_some()) {
            busy_until = busy_until.max(step.now + BUSY_MS);
        }
        tally.actions += step.plan.actions.len() as u64;
        for a in &step.plan.actions {
            if a.lever.is_shed() {
                tally.sheds += 1;
            } else {
                tally.restores += 1;
                if a.reason == rackwarden::control::Reason::Fill {
                    tally.fills += 1;
                }
            }
        }
        for a in &step.plan.alerts {
            *tally.alerts.entry(a.name()).or_default() += 1;
        }
        let mut results = vec![
            inv1_budget(&sim, step),
            inv2_priority(&sim, step),
            inv3_restore_order(&sim, step),
            inv4_hysteresis(&sim, step, &mut mem),
            inv6_escalation(&sim, step),
            inv7_range(&sim, step),
            inv9_no_nvml(&sim, step, &mut mem),
            inv10_n_plus_1(&sim, step),
            inv11_ceiling(&sim, step),
            inv12_excursion(&sim, step),
            inv13_slow_out_of_trough(&sim, step),
            excursions.check(&sim, step, &mut tally),
        ];
        match inv5_stale(&sim, step) {
            Ok(true) => tally.stale_checked += 1,
            Ok(false) => {}
            Err(e) => results.push(Err(e)),
        }
        let ticks = tally.fast + tally.slow;
        if store
            .commit_intent(committed.as_ref(), &step.plan.state, step.now, &[], false)
            .unwrap()
            .is_some()
        {
            tally.commits += 1;
        }
        match &mut committed {
            Some(c) => c.clone_from(&step.plan.state),
            None => committed = Some(step.plan.state.clone()),
        }
        if eventful || ticks % DETERMINISM_EVERY == 0 {
            tally.determinism_checked += 1;
            results.push(inv8_determinism(&sim, step));
            results.push(same_after_restart(&store, &step.plan.state));
        }
        tally.t_check += t0.elapsed().as_secs_f64();
        for e in results.into_iter().filter_map(Result::err) {
            tally
                .violations
                .push(format!("t={} s ({:?}): {e}", step.now / 1000, step.tick));
        }
    }

    let faults: u64 = world
        .counts
        .iter()
        .filter(|(k, _)| is_fault(k))
        .map(|(_, v)| v)
        .sum();
    // Printed, and kept in target/hil-output/soak_month.txt for CI's log (a passing
    // test's output is captured).
    let mut report = String::new();
    macro_rules! say {
        ($($t:tt)*) => {{
            let line = format!($($t)*);
            println!("{line}");
            report.push_str(&line);
            report.push('\n');
        }};
    }
    let ticks = tally.fast + tally.slow;
    say!(
        "soak: {days} simulated days of `{}` (seed {seed}) in {:.1} s",
        sim.site.id,
        started.elapsed().as_secs_f64()
    );
    say!(
        "soak: ticks {ticks} (fast {}, slow {}); invariants 1-7, 9-13 checked at every tick, \
         5 with a worst-case re-decision on {} stale ticks, 8 on {} ticks (each also read \
         back from the database, which took {} commits of the changed rows)",
        tally.fast,
        tally.slow,
        tally.stale_checked,
        tally.determinism_checked,
        tally.commits
    );
    assert!(tally.commits > 0, "no intent ever committed");
    say!("soak: faults injected {faults}, load events {}", {
        world.counts.values().sum::<u64>() - faults
    });
    for (k, v) in &world.counts {
        say!("soak:   {k} {v}");
    }
    say!(
        "soak: actions {} (sheds {}, restores {}, of which trough fills {})",
        tally.actions,
        tally.sheds,
        tally.restores,
        tally.fills
    );
    say!(
        "soak: excursions above B {} (longest {:.1} s)",
        tally.excursions,
        tally.longest_excursion_ms as f64 / 1000.0
    );
    for (k, v) in &tally.alerts {
        say!("soak:   alert {k} {v}");
    }
    say!(
        "soak: violations {} (time in ticks {:.1} s, in checks {:.1} s)",
        tally.violations.len(),
        tally.t_tick,
        tally.t_check
    );
    for v in tally.violations.iter().take(20) {
        say!("soak:   {v}");
    }
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
            Into::into,
        )
        .join("hil-output");
    if std::fs::create_dir_all(&out).is_ok() {
        std::fs::write(out.join("soak_month.txt"), &report).ok();
    }
    // The month must have exercised the policy, not idled through it.
    for k in [
        "job_start",
        "meter_stale",
        "miner_silent",
        "miner_ignores_commands",
        "cooling_trip",
        "nvml_lost",
    ] {
        assert!(
            days < 30 || world.counts.get(k).copied().unwrap_or(0) > 0,
            "no {k} in the month"
        );
    }
    assert!(tally.sheds > 0, "the month never shed");
    assert!(tally.restores > 0, "the month never restored");
    assert!(
        tally.violations.is_empty(),
        "{} invariant violations, first: {:#?}",
        tally.violations.len(),
        tally.violations.iter().take(5).collect::<Vec<_>>()
    );
}
