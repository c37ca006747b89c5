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
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::Path;

use control_support::checks::{
    controllable, is_miner_restore, rack_of, restore_kw, scope_miners, window_count,
};
use control_support::{Sim, Step};
use rackwarden::control::decide::has_target;
use rackwarden::control::{
    decide, Action, ControlState, Device, GpuLimits, GpuNodeReading, Intent, Lever, Loads,
    MeterReading, MinerMode, MinerReading, Reason, Scope, UnitReading, UnitState,
};
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

/// Memory the invariants need across ticks.
#[derive(Default)]
struct Memory {
    /// Restores of the last interval: (time, rack, kW).
    restores: Vec<(u64, usize, f64)>,
    /// `telemetry.nvml.unavailable` said, per GPU node.
    nvml_said: HashMap<String, usize>,
}

fn inv1_budget(sim: &Sim, step: &Step) -> Result<(), String> {
    let loads = Loads::compute(&sim.site, &sim.topo, &step.snap, &step.plan.state, step.now);
    for (n, node) in sim.site.nodes.iter().enumerate() {
        if loads.proj_kw[n] > node.budget_kw + 1e-6 {
            if let Some(&m) = sim.topo.miners_under[n].iter().find(|&&m| {
                controllable(sim, &step.plan.state, m) && sim.site.miners[m].firmware.levers().sleep
            }) {
                return Err(format!(
                    "1 budget: `{}` projects {:.2} kW over its {:.2} kW budget while `{}` still mines",
                    node.id, loads.proj_kw[n], node.budget_kw, sim.site.miners[m].id
                ));
            }
        }
    }
    Ok(())
}

fn inv2_priority(sim: &Sim, step: &Step) -> Result<(), String> {
    for a in step
        .plan
        .actions
        .iter()
        .filter(|a| a.lever == Lever::GpuCap)
    {
        if let Some(&m) = scope_miners(sim, a.scope)
            .iter()
            .find(|&&m| controllable(sim, &step.plan.state, m))
        {
            return Err(format!(
                "2 priority: {} capped while `{}` mines under `{}`",
                a.device_id, sim.site.miners[m].id, a.constraint
            ));
        }
    }
    Ok(())
}

fn inv3_restore_order(sim: &Sim, step: &Step) -> Result<(), String> {
    for a in step.plan.actions.iter().filter(|a| is_miner_restore(a)) {
        let rack = rack_of(sim, a);
        for (g, gs) in step
            .plan
            .state
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| g.cap_w.is_some())
        {
            let on_path = gs.capped_by.is_empty()
                || gs.capped_by.iter().any(|s| match *s {
                    Scope::Node(n) => sim.topo.ancestors[rack].contains(&n),
                    Scope::Zone(z) => sim.topo.rack_zone[rack] == Some(z),
                    Scope::Device => true,
                });
            if on_path {
                return Err(format!(
                    "3 restore order: {} restored while `{}` is capped by {:?}",
                    a.device_id, sim.site.gpu_nodes[g].id, gs.capped_by
                ));
            }
        }
    }
    Ok(())
}

fn inv4_hysteresis(sim: &Sim, step: &Step, mem: &mut Memory) -> Result<(), String> {
    let p = &sim.site.policy;
    let now = step.now;
    for a in &step.plan.actions {
        let rack = rack_of(sim, a);
        if !a.lever.is_shed() {
            for &n in &sim.topo.ancestors[rack] {
                let held = step.plan.state.nodes[n].below_since.map(|t| now - t);
                if held.is_none_or(|h| h < p.restore_hold_s * 1000) {
                    return Err(format!(
                        "4 hysteresis: {} restored with `{}` held only {held:?} ms",
                        a.device_id, sim.site.nodes[n].id
                    ));
                }
            }
            mem.restores.push((now, rack, restore_kw(step, a)));
        }
        let Device::Miner(i) = a.device else { continue };
        if a.emergency || a.reason == Reason::Operator {
            continue;
        }
        let pre = &step.pre.miners[i];
        let ok = match a.lever {
            Lever::Sleep => {
                pre.woke_at.is_none_or(|t| now - t >= p.min_on_s * 1000)
                    && window_count(&pre.sleep_cycles, now, 3_600_000)
                        < p.max_sleep_cycles_per_hour as usize
            }
            Lever::Wake => pre.slept_at.is_none_or(|t| now - t >= p.min_off_s * 1000),
            Lever::OutletOn => now - pre.since >= p.min_off_s * 1000,
            Lever::OutletOff => {
                window_count(&pre.power_cycles, now, DAY_MS) < p.max_power_cycles_per_day as usize
            }
            _ => true,
        };
        if !ok {
            return Err(format!(
                "4 hysteresis: {} {} breaks the anti-cycling limits: {pre:?}",
                a.device_id,
                a.lever.name()
            ));
        }
    }
    let window = p.restore_step_interval_s * 1000;
    mem.restores.retain(|(t, _, _)| now - t < window);
    for (n, node) in sim.site.nodes.iter().enumerate() {
        let sum: f64 = mem
            .restores
            .iter()
            .filter(|(_, r, _)| sim.topo.ancestors[*r].contains(&n))
            .map(|(_, _, d)| d)
            .sum();
        if sum > p.restore_step_fraction * node.budget_kw + 1e-6 {
            return Err(format!(
                "4 hysteresis: `{}` restored {sum:.2} kW within {window} ms",
                node.id
            ));
        }
    }
    Ok(())
}

/// 5. Returns whether any input was stale (the check then ran a second decision).
fn inv5_stale(sim: &Sim, step: &Step) -> Result<bool, String> {
    let (site, p, now) = (&sim.site, &sim.site.policy, step.now);
    let fresh = |t: u64, limit: u64| now.saturating_sub(t) <= limit;
    let mut worst = step.snap.clone();
    let mut any = false;
    let stale_meter: Vec<bool> = (0..site.nodes.len())
        .map(|n| {
            !site.nodes[n].meters.is_empty()
                && !step
                    .snap
                    .meter(n)
                    .is_some_and(|r| fresh(r.taken_at, p.meter_stale_ms))
        })
        .collect();
    for (n, _) in stale_meter.iter().enumerate().filter(|(_, s)| **s) {
        any = true;
        let kw = step.plan.nodes[n].proj_kw;
        worst.meters[n] = Some(MeterReading {
            kw,
            max_kw: kw,
            taken_at: now,
        });
    }
    let stale_miner: Vec<bool> = (0..site.miners.len())
        .map(|m| {
            !step
                .snap
                .miner(m)
                .is_some_and(|r| fresh(r.taken_at, p.miner_stale_ms))
        })
        .collect();
    for (m, miner) in site.miners.iter().enumerate() {
        if stale_miner[m] && step.pre.miners[m].intent != Intent::OutletOff {
            any = true;
            worst.miners[m] = Some(MinerReading {
                power_w: miner.nominal_w,
                mode: MinerMode::Unknown,
                power_target_w: None,
                taken_at: now,
            });
        }
    }
    let stale_gpu: Vec<bool> = (0..site.gpu_nodes.len())
        .map(|g| {
            !step.snap.gpu(g).is_some_and(|r| {
                fresh(r.power_taken_at, p.gpu_power_stale_ms)
                    && fresh(r.limits_taken_at, p.gpu_limit_stale_ms)
            })
        })
        .collect();
    for (g, gn) in site.gpu_nodes.iter().enumerate() {
        if !stale_gpu[g] {
            continue;
        }
        any = true;
        match step.snap.gpu(g) {
            Some(r) if fresh(r.limits_taken_at, p.gpu_limit_stale_ms) => {
                let mut r = r.clone();
                r.power_w = r.gpus.iter().map(|l| l.enforced_w).sum();
                r.power_taken_at = now;
                worst.gpus[g] = Some(r);
            }
            _ => {
                let count = gn.gpus as usize;
                let per = site.nodes[gn.rack].rated_max_kw.unwrap_or(0.0) * 1000.0 / count as f64;
                let l = GpuLimits {
                    enforced_w: per,
                    min_w: per,
                    max_w: per,
                    default_w: per,
                };
                worst.gpus[g] = Some(GpuNodeReading {
                    power_w: per * count as f64,
                    power_taken_at: now,
                    nvml_available: false,
                    gpus: vec![l; count],
                    limits_taken_at: now,
                });
            }
        }
    }
    for (z, zone) in site.zones.iter().enumerate() {
        for u in 0..zone.units.len() {
            if !step
                .snap
                .unit(z, u)
                .is_some_and(|r| fresh(r.taken_at, p.cooling_stale_ms))
            {
                any = true;
                worst.units[z][u] = Some(UnitReading {
                    state: UnitState::Offline,
                    capacity_kw: None,
                    taken_at: now,
                });
            }
        }
    }
    if !any {
        return Ok(false);
    }
    for a in step.plan.actions.iter().filter(|a| !a.lever.is_shed()) {
        let rack = rack_of(sim, a);
        let device_stale = match a.device {
            Device::Miner(m) => stale_miner[m] && a.lever != Lever::OutletOn,
            Device::GpuNode(g) => stale_gpu[g],
        };
        if device_stale || sim.topo.ancestors[rack].iter().any(|&n| stale_meter[n]) {
            return Err(format!(
                "5 stale: {} {} from stale data",
                a.device_id,
                a.lever.name()
            ));
        }
    }
    let shed = |acts: &[Action]| -> f64 {
        acts.iter()
            .filter(|a| a.lever.is_shed() && matches!(a.device, Device::Miner(_)))
            .map(|a| (a.from_w - a.to_w) / 1000.0)
            .sum()
    };
    let w = decide(site, &sim.topo, &worst, &step.pre, now, step.tick);
    let (s_stale, s_worst) = (shed(&step.plan.actions), shed(&w.actions));
    if s_stale + 1e-6 < s_worst {
        return Err(format!(
            "5 stale: stale input shed {s_stale:.3} kW, worst case {s_worst:.3} kW"
        ));
    }
    Ok(true)
}

fn inv6_escalation(sim: &Sim, step: &Step) -> Result<(), String> {
    for a in step.plan.actions.iter().filter(|a| a.lever.is_shed()) {
        if matches!(a.reason, Reason::Operator) {
            continue;
        }
        let true_emergency = matches!(a.reason, Reason::Emergency | Reason::CoolingCapacity)
            || a.emergency && a.reason == Reason::Escalation;
        match a.device {
            Device::Miner(i) => {
                let m = &sim.site.miners[i];
                let pre = &step.pre.miners[i];
                let pending = pre.pending.map(|p| p.lever);
                let ok = match a.lever {
                    Lever::Sleep => {
                        true_emergency
                            || !has_target(m)
                            || pre.failed == Some(Lever::PowerTarget)
                            || pending == Some(Lever::PowerTarget)
                            || matches!(pre.intent, Intent::Target { w } if w <= m.min_w.unwrap() + 1.0)
                    }
                    Lever::OutletOff => {
                        pre.failed == Some(Lever::Sleep)
                            || pending == Some(Lever::Sleep)
                            || !m.firmware.levers().sleep
                            || (true_emergency && pre.intent == Intent::Sleep)
                    }
                    _ => true,
                };
                if !ok {
                    return Err(format!(
                        "6 escalation: {} {} skipped a lever: {pre:?}",
                        a.device_id,
                        a.lever.name()
                    ));
                }
            }
            Device::GpuNode(_) => {
                if let Some(&m) = scope_miners(sim, a.scope)
                    .iter()
                    .find(|&&m| controllable(sim, &step.plan.state, m))
                {
                    return Err(format!(
                        "6 escalation: {} capped before `{}` was shed",
                        a.device_id, sim.site.miners[m].id
                    ));
                }
            }
        }
    }
    Ok(())
}

fn inv7_range(sim: &Sim, step: &Step) -> Result<(), String> {
    for a in &step.plan.actions {
        let ok = match (a.device, a.lever) {
            (Device::Miner(i), Lever::PowerTarget | Lever::PowerTargetRaise) => {
                let m = &sim.site.miners[i];
                has_target(m) && a.to_w >= m.min_w.unwrap() - 1e-9 && a.to_w <= m.nominal_w + 1e-9
            }
            (Device::GpuNode(g), Lever::GpuCap | Lever::GpuCapLift) => {
                let r = step.snap.gpu(g).unwrap();
                r.gpus
                    .iter()
                    .all(|l| a.to_w >= l.min_w - 1e-9 && a.to_w <= l.max_w + 1e-9)
            }
            _ => true,
        };
        if !ok {
            return Err(format!(
                "7 range: {} {} to {} out of range",
                a.device_id,
                a.lever.name(),
                a.to_w
            ));
        }
    }
    Ok(())
}

fn inv8_determinism(sim: &Sim, step: &Step) -> Result<(), String> {
    let again = decide(
        &sim.site, &sim.topo, &step.snap, &step.pre, step.now, step.tick,
    );
    if again != step.plan {
        return Err("8 determinism: a second run gave another plan".to_owned());
    }
    let json = serde_json::to_string(&step.pre).unwrap();
    let back: ControlState = serde_json::from_str(&json).unwrap();
    let third = decide(&sim.site, &sim.topo, &step.snap, &back, step.now, step.tick);
    if third != step.plan {
        return Err("8 determinism: the persisted state gave another plan".to_owned());
    }
    Ok(())
}

/// 9. A GPU node without NVML: its rack reserved at the rated maximum, no GPU lever on
///    it, and `telemetry.nvml.unavailable` said exactly once per outage (on the first
///    reading without NVML; again only after NVML came back in between).
fn inv9_no_nvml(sim: &Sim, step: &Step, mem: &mut Memory) -> Result<(), String> {
    for a in step
        .plan
        .alerts
        .iter()
        .filter(|a| a.name == "telemetry.nvml.unavailable")
    {
        let d = a.device.clone().unwrap_or_default();
        let said = mem.nvml_said.entry(d.clone()).or_default();
        *said += 1;
        if *said > 1 {
            return Err(format!(
                "9 no NVML: said {said} times in one outage of `{d}`"
            ));
        }
    }
    for (g, gn) in sim.site.gpu_nodes.iter().enumerate() {
        match step.snap.gpu(g) {
            Some(r) if r.nvml_available => {
                mem.nvml_said.remove(&gn.id);
            }
            Some(_) if !mem.nvml_said.contains_key(&gn.id) => {
                return Err(format!("9 no NVML: `{}` lost NVML unsaid", gn.id));
            }
            _ => {}
        }
    }
    for (g, gn) in sim.site.gpu_nodes.iter().enumerate() {
        let Some(r) = step.snap.gpu(g) else { continue };
        if r.nvml_available {
            continue;
        }
        if let Some(a) = step
            .plan
            .actions
            .iter()
            .find(|a| a.device == Device::GpuNode(g))
        {
            return Err(format!(
                "9 no NVML: {} {} without NVML",
                a.device_id,
                a.lever.name()
            ));
        }
        let want = sim.site.nodes[gn.rack].rated_max_kw.unwrap();
        let got = step.plan.nodes[gn.rack].gpu_reserve_kw;
        if (got - want).abs() > 1e-9 {
            return Err(format!(
                "9 no NVML: `{}` reserves {got} kW, rated maximum {want}",
                sim.site.nodes[gn.rack].id
            ));
        }
    }
    Ok(())
}

fn inv10_n_plus_1(sim: &Sim, step: &Step) -> Result<(), String> {
    let p = &sim.site.policy;
    for (z, zone) in sim.site.zones.iter().enumerate() {
        let Some(view) = step.plan.zones.get(z) else {
            continue;
        };
        let mut avail = 0.0;
        for (u, unit) in zone.units.iter().enumerate() {
            if step.snap.unit(z, u).is_some_and(|r| {
                r.state == UnitState::Running && step.now - r.taken_at <= p.cooling_stale_ms
            }) {
                avail += unit.capacity_kw;
            }
        }
        if (avail - view.available_kw).abs() > 1e-9 {
            return Err(format!(
                "10 N+1: zone `{}` available {avail} kW, decide saw {}",
                zone.id, view.available_kw
            ));
        }
        if view.n_plus_1 {
            continue;
        }
        let in_zone = |a: &Action| sim.topo.rack_zone[rack_of(sim, a)] == Some(z);
        if let Some(a) = step
            .plan
            .actions
            .iter()
            .find(|a| !a.lever.is_shed() && in_zone(a))
        {
            return Err(format!(
                "10 N+1: restore {} in zone `{}` without N+1",
                a.device_id, zone.id
            ));
        }
        let shed_here = step
            .plan
            .actions
            .iter()
            .any(|a| a.lever.is_shed() && in_zone(a));
        if !shed_here {
            if let Some(&m) = sim.topo.zone_miners[z].iter().find(|&&m| {
                controllable(sim, &step.plan.state, m)
                    && step.plan.state.miners[m].pending.is_none()
                    && sim.site.miners[m].firmware.levers().sleep
            }) {
                return Err(format!(
                    "10 N+1: zone `{}` lacks N+1 and `{}` still mines unshed",
                    zone.id, sim.site.miners[m].id
                ));
            }
        }
    }
    Ok(())
}

#[derive(Default, Debug)]
struct Tally {
    fast: u64,
    slow: u64,
    determinism_checked: u64,
    stale_checked: u64,
    actions: u64,
    sheds: u64,
    restores: u64,
    alerts: BTreeMap<&'static str, u64>,
    violations: Vec<String>,
    t_tick: f64,
    t_check: f64,
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
            }
        }
        for a in &step.plan.alerts {
            *tally.alerts.entry(a.name).or_default() += 1;
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
        ];
        match inv5_stale(&sim, step) {
            Ok(true) => tally.stale_checked += 1,
            Ok(false) => {}
            Err(e) => results.push(Err(e)),
        }
        let ticks = tally.fast + tally.slow;
        if eventful || ticks % DETERMINISM_EVERY == 0 {
            tally.determinism_checked += 1;
            results.push(inv8_determinism(&sim, step));
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
    let ticks = tally.fast + tally.slow;
    println!(
        "soak: {days} simulated days of `{}` (seed {seed}) in {:.1} s",
        sim.site.id,
        started.elapsed().as_secs_f64()
    );
    println!(
        "soak: ticks {ticks} (fast {}, slow {}); invariants 1-7, 9, 10 checked at every tick, \
         5 with a worst-case re-decision on {} stale ticks, 8 on {} ticks",
        tally.fast, tally.slow, tally.stale_checked, tally.determinism_checked
    );
    println!("soak: faults injected {faults}, load events {}", {
        world.counts.values().sum::<u64>() - faults
    });
    for (k, v) in &world.counts {
        println!("soak:   {k} {v}");
    }
    println!(
        "soak: actions {} (sheds {}, restores {})",
        tally.actions, tally.sheds, tally.restores
    );
    for (k, v) in &tally.alerts {
        println!("soak:   alert {k} {v}");
    }
    println!(
        "soak: violations {} (time in ticks {:.1} s, in checks {:.1} s)",
        tally.violations.len(),
        tally.t_tick,
        tally.t_check
    );
    for v in tally.violations.iter().take(20) {
        println!("soak:   {v}");
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
