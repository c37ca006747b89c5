//! Property tests: the ten invariants of docs/control.md (CONTROL.md), one named test
//! each, over random small sites (generated TOML, loaded like an operator's file), random
//! traces (GPU limits, GPU swings at 0.2-3 Hz between idle and the cap, other load,
//! cooling units tripping, miners ignoring commands) and random staleness.

// Helpers outside #[test] functions: a panic is the failure report; trace values are
// small floats turned into indices.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]

mod control_support;

use control_support::checks::{
    controllable, is_miner_restore, rack_of, restore_kw, scope_miners, window_count,
};
use control_support::{gen_site, load, Sim, Step};
use proptest::prelude::*;
use rackwarden::control::decide::has_target;
use rackwarden::control::{
    decide, Action, ControlState, Device, GpuLimits, GpuNodeReading, Intent, Lever, Loads,
    MeterReading, MinerMode, MinerReading, Reason, Scope, UnitReading, UnitState,
};

/// One change of the world at a time.
#[derive(Debug, Clone)]
struct Ev {
    t_s: u64,
    kind: u8,
    idx: u32,
    x: f64,
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (0u64..400, any::<u8>(), any::<u32>(), 0.0f64..1.0).prop_map(|(t_s, kind, idx, x)| Ev {
            t_s,
            kind,
            idx,
            x,
        }),
        0..40,
    )
}

fn pick(len: usize, idx: u32) -> Option<usize> {
    (len > 0).then(|| usize::try_from(idx).unwrap() % len)
}

fn apply(sim: &mut Sim, e: &Ev) {
    match e.kind % 9 {
        // The tenant moves a GPU node's limit anywhere in its range.
        0 => {
            if let Some(g) = pick(sim.gpus.len(), e.idx) {
                let l = &mut sim.gpus[g].limits;
                l.enforced_w = (l.min_w + e.x * (l.max_w - l.min_w)).round();
            }
        }
        // GPU swings between idle and the cap at 0.2-3 Hz, or steady.
        1 => {
            if let Some(g) = pick(sim.gpus.len(), e.idx) {
                sim.gpus[g].swing_hz = if e.x < 0.2 { 0.0 } else { 0.2 + 2.8 * e.x };
                sim.gpus[g].util = e.x;
            }
        }
        // Inputs go stale or come back.
        2 => {
            if let Some(n) = pick(sim.stale.meters.len(), e.idx) {
                sim.stale.meters[n] = e.x < 0.5;
            }
        }
        3 => {
            if let Some(m) = pick(sim.stale.miners.len(), e.idx) {
                sim.stale.miners[m] = e.x < 0.5;
            }
        }
        4 => {
            if let Some(g) = pick(sim.stale.gpus.len(), e.idx) {
                sim.stale.gpus[g] = e.x < 0.5;
            }
        }
        // Cooling units trip, go to maintenance, come back; or go stale.
        5 => {
            if let Some(z) = pick(sim.units.len(), e.idx) {
                if let Some(u) = pick(sim.units[z].len(), e.idx / 7) {
                    sim.units[z][u] = match (e.x * 4.0) as u32 {
                        0 => UnitState::Alarmed,
                        1 => UnitState::Offline,
                        2 => UnitState::Maintenance,
                        _ => UnitState::Running,
                    };
                    sim.stale.units[z][u] = e.x > 0.9;
                }
            }
        }
        // A miner starts or stops ignoring its API.
        6 => {
            if let Some(m) = pick(sim.miners.len(), e.idx) {
                sim.miners[m].ignores = e.x < 0.5;
            }
        }
        // Other load appears in a rack.
        7 => {
            let racks: Vec<usize> = (0..sim.site.nodes.len())
                .filter(|&i| sim.site.nodes[i].is_rack())
                .collect();
            if let Some(r) = pick(racks.len(), e.idx) {
                sim.other_kw[racks[r]] = if e.x < 0.5 { 0.0 } else { e.x * 10.0 };
            }
        }
        // All GPUs to their maximum (a surge).
        _ => {
            for g in &mut sim.gpus {
                g.limits.enforced_w = g.limits.max_w;
            }
        }
    }
}

/// Runs a random site through a random trace, checking `check` after every decision.
fn simulate(
    seed: u64,
    evs: &[Ev],
    no_nvml: bool,
    secs: u64,
    mut check: impl FnMut(&Sim, &Step) -> Result<(), String>,
) -> Result<Sim, TestCaseError> {
    let site = load(&gen_site(seed));
    let mut sim = Sim::new(site, no_nvml);
    sim.keep_steps = false;
    let mut evs = evs.to_vec();
    evs.sort_by_key(|e| e.t_s);
    let mut k = 0;
    while sim.now < secs * 1000 {
        while k < evs.len() && evs[k].t_s * 1000 <= sim.now {
            apply(&mut sim, &evs[k]);
            k += 1;
        }
        sim.tick();
        let step = sim.steps.last().unwrap();
        if let Err(msg) = check(&sim, step) {
            let acts: Vec<String> = step
                .plan
                .actions
                .iter()
                .map(|a| {
                    format!(
                        "{} {} {:?} {:.0}->{:.0} em={} @{}",
                        a.device_id,
                        a.lever.name(),
                        a.reason,
                        a.from_w,
                        a.to_w,
                        a.emergency,
                        a.constraint
                    )
                })
                .collect();
            return Err(TestCaseError::fail(format!(
                "t={} ms ({:?}): {msg}\nactions: {acts:#?}\nsite seed {seed}",
                step.now, step.tick
            )));
        }
    }
    Ok(sim)
}

const SECS: u64 = 480;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 12,
        max_shrink_iters: 50,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// 1. After each decision P_proj(node) <= B(node) wherever controllable mining is left.
    #[test]
    fn invariant_01_budget(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, |sim, step| {
            let loads = Loads::compute(&sim.site, &sim.topo, &step.snap, &step.plan.state, step.now);
            for (n, node) in sim.site.nodes.iter().enumerate() {
                if loads.proj_kw[n] > node.budget_kw + 1e-6 {
                    if let Some(&m) = sim.topo.miners_under[n].iter().find(|&&m| {
                        controllable(sim, &step.plan.state, m) && sim.site.miners[m].firmware.levers().sleep
                    }) {
                        return Err(format!(
                            "`{}` projects {:.2} kW over its {:.2} kW budget while `{}` still mines",
                            node.id, loads.proj_kw[n], node.budget_kw, sim.site.miners[m].id
                        ));
                    }
                }
            }
            Ok(())
        })?;
    }

    /// 2. No GPU cap is lowered while a controllable miner on the same path draws above idle.
    #[test]
    fn invariant_02_priority(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, |sim, step| {
            for a in step.plan.actions.iter().filter(|a| a.lever == Lever::GpuCap) {
                if let Some(&m) = scope_miners(sim, a.scope).iter().find(|&&m| controllable(sim, &step.plan.state, m)) {
                    return Err(format!("{} capped while `{}` mines under `{}`", a.device_id, sim.site.miners[m].id, a.constraint));
                }
            }
            Ok(())
        })?;
    }

    /// 3. GPU caps are back to default before any miner on that path is restored: no
    ///    miner comes back under a constraint (node or zone) that capped a GPU still capped.
    #[test]
    fn invariant_03_restore_order(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, |sim, step| {
            for a in step.plan.actions.iter().filter(|a| is_miner_restore(a)) {
                let rack = rack_of(sim, a);
                for (g, gs) in step.plan.state.gpus.iter().enumerate().filter(|(_, g)| g.cap_w.is_some()) {
                    let on_path = gs.capped_by.is_empty() || gs.capped_by.iter().any(|s| match *s {
                        Scope::Node(n) => sim.topo.ancestors[rack].contains(&n),
                        Scope::Zone(z) => sim.topo.rack_zone[rack] == Some(z),
                        Scope::Device => true,
                    });
                    if on_path {
                        return Err(format!("{} restored while `{}` is capped by {:?}", a.device_id, sim.site.gpu_nodes[g].id, gs.capped_by));
                    }
                }
            }
            Ok(())
        })?;
    }

    /// 4. Hysteresis: restores only after the 80% condition held 60 s, at most 5% of B per
    ///    30 s per node; min on/off times and cycle limits (emergencies excepted).
    #[test]
    fn invariant_04_hysteresis(seed in any::<u64>(), evs in events()) {
        let mut history: Vec<(u64, usize, f64)> = Vec::new();
        simulate(seed, &evs, false, SECS, |sim, step| {
            let p = &sim.site.policy;
            let now = step.now;
            for a in &step.plan.actions {
                let rack = rack_of(sim, a);
                if !a.lever.is_shed() {
                    for &n in &sim.topo.ancestors[rack] {
                        let held = step.plan.state.nodes[n].below_since.map(|t| now - t);
                        if held.is_none_or(|h| h < p.restore_hold_s * 1000) {
                            return Err(format!("{} restored with `{}` held only {held:?} ms", a.device_id, sim.site.nodes[n].id));
                        }
                    }
                    history.push((now, rack, restore_kw(step, a)));
                }
                let Device::Miner(i) = a.device else { continue };
                if a.emergency || a.reason == Reason::Operator {
                    continue;
                }
                let pre = &step.pre.miners[i];
                let ok = match a.lever {
                    Lever::Sleep => pre.woke_at.is_none_or(|t| now - t >= p.min_on_s * 1000)
                        && window_count(&pre.sleep_cycles, now, 3_600_000) < p.max_sleep_cycles_per_hour as usize,
                    Lever::Wake => pre.slept_at.is_none_or(|t| now - t >= p.min_off_s * 1000),
                    Lever::OutletOn => now - pre.since >= p.min_off_s * 1000,
                    Lever::OutletOff => window_count(&pre.power_cycles, now, 86_400_000) < p.max_power_cycles_per_day as usize,
                    _ => true,
                };
                if !ok {
                    return Err(format!("{} {} breaks the anti-cycling limits: {pre:?}", a.device_id, a.lever.name()));
                }
            }
            let window = p.restore_step_interval_s * 1000;
            history.retain(|(t, _, _)| now - t < window);
            for (n, node) in sim.site.nodes.iter().enumerate() {
                let sum: f64 = history
                    .iter()
                    .filter(|(_, r, _)| sim.topo.ancestors[*r].contains(&n))
                    .map(|(_, _, d)| d)
                    .sum();
                if sum > p.restore_step_fraction * node.budget_kw + 1e-6 {
                    return Err(format!("`{}` restored {sum:.2} kW within {window} ms", node.id));
                }
            }
            Ok(())
        })?;
    }

    /// 5. A decision with stale input never adds load through it, and sheds at least as
    ///    much as the same decision with fresh worst-case readings in place of the stale ones.
    #[test]
    fn invariant_05_stale_is_conservative(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, |sim, step| {
            let (site, p, now) = (&sim.site, &sim.site.policy, step.now);
            let fresh = |t: u64, limit: u64| now.saturating_sub(t) <= limit;
            let mut worst = step.snap.clone();
            let mut any = false;
            let stale_meter: Vec<bool> = (0..site.nodes.len())
                .map(|n| !site.nodes[n].meters.is_empty() && !step.snap.meter(n).is_some_and(|r| fresh(r.taken_at, p.meter_stale_ms)))
                .collect();
            for (n, _) in stale_meter.iter().enumerate().filter(|(_, s)| **s) {
                {
                    any = true;
                    let kw = step.plan.nodes[n].proj_kw;
                    worst.meters[n] = Some(MeterReading { kw, max_kw: kw, taken_at: now });
                }
            }
            let stale_miner: Vec<bool> = (0..site.miners.len())
                .map(|m| !step.snap.miner(m).is_some_and(|r| fresh(r.taken_at, p.miner_stale_ms)))
                .collect();
            for (m, miner) in site.miners.iter().enumerate() {
                if stale_miner[m] && step.pre.miners[m].intent != Intent::OutletOff {
                    any = true;
                    worst.miners[m] = Some(MinerReading { power_w: miner.nominal_w, mode: MinerMode::Unknown, power_target_w: None, taken_at: now });
                }
            }
            let stale_gpu: Vec<bool> = (0..site.gpu_nodes.len())
                .map(|g| !step.snap.gpu(g).is_some_and(|r| fresh(r.power_taken_at, p.gpu_power_stale_ms) && fresh(r.limits_taken_at, p.gpu_limit_stale_ms)))
                .collect();
            for (g, gn) in site.gpu_nodes.iter().enumerate() {
                if !stale_gpu[g] {
                    continue;
                }
                any = true;
                match step.snap.gpu(g) {
                    // Limits still fresh: the worst power is every GPU at its limit.
                    Some(r) if fresh(r.limits_taken_at, p.gpu_limit_stale_ms) => {
                        let mut r = r.clone();
                        r.power_w = r.gpus.iter().map(|l| l.enforced_w).sum();
                        r.power_taken_at = now;
                        worst.gpus[g] = Some(r);
                    }
                    // Limits unknown: the rack at its rated maximum, no NVML lever.
                    _ => {
                        let count = gn.gpus as usize;
                        let per = site.nodes[gn.rack].rated_max_kw.unwrap_or(0.0) * 1000.0 / count as f64;
                        let l = GpuLimits { enforced_w: per, min_w: per, max_w: per, default_w: per };
                        worst.gpus[g] = Some(GpuNodeReading { power_w: per * count as f64, power_taken_at: now, nvml_available: false, gpus: vec![l; count], limits_taken_at: now });
                    }
                }
            }
            for (z, zone) in site.zones.iter().enumerate() {
                for u in 0..zone.units.len() {
                    if !step.snap.unit(z, u).is_some_and(|r| fresh(r.taken_at, p.cooling_stale_ms)) {
                        any = true;
                        worst.units[z][u] = Some(UnitReading { state: UnitState::Offline, capacity_kw: None, taken_at: now });
                    }
                }
            }
            if !any {
                return Ok(());
            }
            // Never adds load from stale data.
            for a in step.plan.actions.iter().filter(|a| !a.lever.is_shed()) {
                let rack = rack_of(sim, a);
                let device_stale = match a.device {
                    Device::Miner(m) => stale_miner[m] && a.lever != Lever::OutletOn,
                    Device::GpuNode(g) => stale_gpu[g],
                };
                if device_stale || sim.topo.ancestors[rack].iter().any(|&n| stale_meter[n]) {
                    return Err(format!("{} {} from stale data", a.device_id, a.lever.name()));
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
                let wa: Vec<String> = w.actions.iter().map(|a| format!("{} {} {:?} {:.0}->{:.0} @{}", a.device_id, a.lever.name(), a.reason, a.from_w, a.to_w, a.constraint)).collect();
                let extra: Vec<String> = w.actions.iter().filter(|a| !step.plan.actions.iter().any(|b| b.device_id == a.device_id)).map(|a| match a.device {
                    Device::Miner(i) => format!("{} rack {} pre {:?} read {:?} post-stale {:?}", a.device_id, site.nodes[site.miners[i].rack].id, step.pre.miners[i], step.snap.miner(i), step.plan.state.miners[i]),
                    Device::GpuNode(g) => format!("{} pre {:?} read {:?}", a.device_id, step.pre.gpus[g], step.snap.gpu(g).map(|r| (r.power_taken_at, r.limits_taken_at, r.nvml_available))),
                }).collect();
                return Err(format!(
                    "extra {extra:#?}\nstale input shed {s_stale:.3} kW, worst case {s_worst:.3} kW: {wa:#?}\nstale meters {stale_meter:?} miners {stale_miner:?} gpus {stale_gpu:?}\ndiffering views {:#?}",
                    (0..site.nodes.len())
                        .filter(|&n| step.plan.nodes[n] != w.nodes[n])
                        .map(|n| (site.nodes[n].id.clone(), step.plan.nodes[n], w.nodes[n]))
                        .collect::<Vec<_>>()
                ));
            }
            Ok(())
        })?;
    }

    /// 6. Escalation is monotone: lever k+1 only after lever k was tried, or in an emergency.
    #[test]
    fn invariant_06_escalation_monotone(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, |sim, step| {
            for a in step.plan.actions.iter().filter(|a| a.lever.is_shed()) {
                if matches!(a.reason, Reason::Operator) {
                    continue;
                }
                let true_emergency = matches!(a.reason, Reason::Emergency | Reason::CoolingCapacity) || a.emergency && a.reason == Reason::Escalation;
                match a.device {
                    Device::Miner(i) => {
                        let m = &sim.site.miners[i];
                        let pre = &step.pre.miners[i];
                        let pending = pre.pending.map(|p| p.lever);
                        let ok = match a.lever {
                            Lever::Sleep => true_emergency
                                || !has_target(m)
                                || pre.failed == Some(Lever::PowerTarget)
                                || pending == Some(Lever::PowerTarget)
                                || matches!(pre.intent, Intent::Target { w } if w <= m.min_w.unwrap() + 1.0),
                            Lever::OutletOff => pre.failed == Some(Lever::Sleep)
                                || pending == Some(Lever::Sleep)
                                || !m.firmware.levers().sleep
                                || (true_emergency && pre.intent == Intent::Sleep),
                            _ => true,
                        };
                        if !ok {
                            return Err(format!("{} {} skipped a lever: {pre:?}", a.device_id, a.lever.name()));
                        }
                    }
                    Device::GpuNode(_) => {
                        if let Some(&m) = scope_miners(sim, a.scope).iter().find(|&&m| controllable(sim, &step.plan.state, m)) {
                            return Err(format!("{} capped before `{}` was shed", a.device_id, sim.site.miners[m].id));
                        }
                    }
                }
            }
            Ok(())
        })?;
    }

    /// 7. GPU limits inside their constraints; miner targets inside the firmware's range.
    #[test]
    fn invariant_07_commands_in_range(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, |sim, step| {
            for a in &step.plan.actions {
                let ok = match (a.device, a.lever) {
                    (Device::Miner(i), Lever::PowerTarget | Lever::PowerTargetRaise) => {
                        let m = &sim.site.miners[i];
                        has_target(m) && a.to_w >= m.min_w.unwrap() - 1e-9 && a.to_w <= m.nominal_w + 1e-9
                    }
                    (Device::GpuNode(g), Lever::GpuCap | Lever::GpuCapLift) => {
                        let r = step.snap.gpu(g).unwrap();
                        r.gpus.iter().all(|l| a.to_w >= l.min_w - 1e-9 && a.to_w <= l.max_w + 1e-9)
                    }
                    _ => true,
                };
                if !ok {
                    return Err(format!("{} {} to {} out of range", a.device_id, a.lever.name(), a.to_w));
                }
            }
            Ok(())
        })?;
    }

    /// 8. Determinism: same state and inputs, same plan; also after the state went
    ///    through its persisted form.
    #[test]
    fn invariant_08_determinism(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, 120, |sim, step| {
            let again = decide(&sim.site, &sim.topo, &step.snap, &step.pre, step.now, step.tick);
            if again != step.plan {
                return Err("a second run gave another plan".to_owned());
            }
            let json = serde_json::to_string(&step.pre).unwrap();
            let back: ControlState = serde_json::from_str(&json).unwrap();
            let third = decide(&sim.site, &sim.topo, &step.snap, &back, step.now, step.tick);
            if third != step.plan {
                return Err("the persisted state gave another plan".to_owned());
            }
            Ok(())
        })?;
    }

    /// 9. No NVML: the agent runs, meters GPUs at the PDU, reserves racks at their rated
    ///    maximum, never caps, and says so once per GPU node.
    #[test]
    fn invariant_09_no_nvml(seed in any::<u64>(), evs in events()) {
        let mut said = std::collections::HashMap::<String, usize>::new();
        let mut heard = std::collections::HashSet::<String>::new();
        let sim = simulate(seed, &evs, true, SECS, |sim, step| {
            for (g, gn) in sim.site.gpu_nodes.iter().enumerate() {
                if step.snap.gpu(g).is_some() {
                    heard.insert(gn.id.clone());
                }
            }
            for a in step.plan.alerts.iter().filter(|a| a.name == "telemetry.nvml.unavailable") {
                *said.entry(a.device.clone().unwrap()).or_default() += 1;
            }
            if let Some(a) = step.plan.actions.iter().find(|a| matches!(a.device, Device::GpuNode(_))) {
                return Err(format!("GPU lever used without NVML: {}", a.device_id));
            }
            for (n, node) in sim.site.nodes.iter().enumerate() {
                if !sim.topo.rack_gpus[n].is_empty() {
                    let want = node.rated_max_kw.unwrap();
                    if (step.plan.nodes[n].gpu_reserve_kw - want).abs() > 1e-9 {
                        return Err(format!("`{}` reserves {} kW, rated maximum {want}", node.id, step.plan.nodes[n].gpu_reserve_kw));
                    }
                }
            }
            Ok(())
        })?;
        for g in &sim.site.gpu_nodes {
            // Said once by every node that ever answered (a node never heard from cannot say).
            let want = usize::from(heard.contains(&g.id));
            prop_assert_eq!(said.get(&g.id).copied().unwrap_or(0), want, "NVML unavailable said once for {}", g.id);
        }
    }

    /// 10. N+1: while a zone lacks redundancy, no restores in it, and shedding goes on
    ///     until redundancy is back or no mining is left.
    #[test]
    fn invariant_10_n_plus_1(seed in any::<u64>(), evs in events()) {
        simulate(seed, &evs, false, SECS, |sim, step| {
            let p = &sim.site.policy;
            for (z, zone) in sim.site.zones.iter().enumerate() {
                let Some(view) = step.plan.zones.get(z) else { continue };
                // Availability, counted independently of decide.
                let mut avail = 0.0;
                for (u, unit) in zone.units.iter().enumerate() {
                    if step.snap.unit(z, u).is_some_and(|r| r.state == UnitState::Running && step.now - r.taken_at <= p.cooling_stale_ms) {
                        avail += unit.capacity_kw;
                    }
                }
                if (avail - view.available_kw).abs() > 1e-9 {
                    return Err(format!("zone `{}` available {avail} kW, decide saw {}", zone.id, view.available_kw));
                }
                if view.n_plus_1 {
                    continue;
                }
                let in_zone = |a: &Action| sim.topo.rack_zone[rack_of(sim, a)] == Some(z);
                if let Some(a) = step.plan.actions.iter().find(|a| !a.lever.is_shed() && in_zone(a)) {
                    return Err(format!("restore {} in zone `{}` without N+1", a.device_id, zone.id));
                }
                let shed_here = step.plan.actions.iter().any(|a| a.lever.is_shed() && in_zone(a));
                if !shed_here {
                    if let Some(&m) = sim.topo.zone_miners[z].iter().find(|&&m| {
                        controllable(sim, &step.plan.state, m)
                            && step.plan.state.miners[m].pending.is_none()
                            && sim.site.miners[m].firmware.levers().sleep
                    }) {
                        return Err(format!("zone `{}` lacks N+1 and `{}` still mines unshed", zone.id, sim.site.miners[m].id));
                    }
                }
            }
            Ok(())
        })?;
    }
}
