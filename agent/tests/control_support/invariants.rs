//! The ten invariants of docs/control.md as checks of one decision (`Step`), shared by
//! the property tests (control_invariants.rs: random small sites) and the simulated
//! month (soak_month.rs: the example site for 30 days). Each returns the violation in
//! words, prefixed with the invariant's number.

use std::collections::HashMap;

use rackwarden_config::NodeKind;

use rackwarden::control::decide::has_target;
use rackwarden::control::{
    decide, Action, ControlState, Device, GpuLimits, GpuNodeReading, Intent, Lever, Loads,
    MeterReading, MinerMode, MinerReading, Reason, Scope, UnitReading, UnitState,
};

use super::checks::{
    controllable, is_miner_restore, rack_of, restore_kw, scope_miners, window_count,
};
use super::{Sim, Step};

const DAY_MS: u64 = 86_400_000;

/// What the invariants remember across ticks.
#[derive(Default)]
pub(crate) struct Memory {
    /// Restores of the last interval: (time, rack, kW).
    pub restores: Vec<(u64, usize, f64)>,
    /// `telemetry.nvml.unavailable` said, per GPU node.
    pub nvml_said: HashMap<String, usize>,
}

pub(crate) fn inv1_budget(sim: &Sim, step: &Step) -> Result<(), String> {
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

pub(crate) fn inv2_priority(sim: &Sim, step: &Step) -> Result<(), String> {
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

pub(crate) fn inv3_restore_order(sim: &Sim, step: &Step) -> Result<(), String> {
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

pub(crate) fn inv4_hysteresis(sim: &Sim, step: &Step, mem: &mut Memory) -> Result<(), String> {
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
    // The step limit guards feeds and the site; the first restore of a step through a
    // node passes whatever its size (a miner larger than the step must come back), so
    // a window holds at most the step plus its largest single restore.
    for (n, node) in sim.site.nodes.iter().enumerate() {
        if !matches!(node.kind, NodeKind::Site | NodeKind::Feed) {
            continue;
        }
        let through = mem
            .restores
            .iter()
            .filter(|(_, r, _)| sim.topo.ancestors[*r].contains(&n));
        let (sum, largest) = through.fold((0.0f64, 0.0f64), |(s, l), (_, _, d)| (s + d, l.max(*d)));
        if sum > p.restore_step_fraction * node.budget_kw + largest + 1e-6 {
            return Err(format!(
                "4 hysteresis: `{}` restored {sum:.2} kW within {window} ms",
                node.id
            ));
        }
    }
    Ok(())
}

/// 5. Returns whether any input was stale (the check then ran a second decision).
// Long on purpose: one invariant: each stale input put at its worst case, in turn.
#[allow(clippy::too_many_lines)]
pub(crate) fn inv5_stale(sim: &Sim, step: &Step) -> Result<bool, String> {
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
        // A rack meter at its worst case has its GPUs at their limits: the GPU power
        // readings say so too (else the gap would read as non-GPU load).
        for &g in &sim.topo.rack_gpus[n] {
            if let Some(r) = worst.gpus[g].as_mut() {
                r.power_w = r.gpus.iter().map(|l| l.enforced_w).sum();
            }
        }
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
            "5 stale: stale input shed {s_stale:.3} kW, worst case {s_worst:.3} kW ({:?}) {:?}",
            w.actions
                .iter()
                .map(|a| format!(
                    "{} {} {:?} @{}",
                    a.device_id,
                    a.lever.name(),
                    a.reason,
                    a.constraint
                ))
                .collect::<Vec<_>>(),
            (0..site.nodes.len())
                .filter(
                    |&n| (w.nodes[n].worst_kw - step.plan.nodes[n].worst_kw).abs() > 1e-6
                        || (w.nodes[n].proj_kw - step.plan.nodes[n].proj_kw).abs() > 1e-6
                )
                .map(|n| format!(
                    "{}: worst {:.2}/{:.2} proj {:.2}/{:.2} H {:.2}",
                    site.nodes[n].id,
                    step.plan.nodes[n].worst_kw,
                    w.nodes[n].worst_kw,
                    step.plan.nodes[n].proj_kw,
                    w.nodes[n].proj_kw,
                    site.nodes[n].ceiling_kw
                ))
                .collect::<Vec<_>>()
        ));
    }
    Ok(true)
}

pub(crate) fn inv6_escalation(sim: &Sim, step: &Step) -> Result<(), String> {
    for a in step.plan.actions.iter().filter(|a| a.lever.is_shed()) {
        if matches!(a.reason, Reason::Operator) {
            continue;
        }
        let true_emergency = matches!(a.reason, Reason::Emergency | Reason::CoolingCapacity)
            || a.emergency && a.reason == Reason::Escalation;
        // A shed that must be done in this decision (over B, above H, slow miners in
        // the trough, a silent meter, lost N+1) may sleep a miner with a power target
        // whose target it did not try, once every power target under the constraint
        // is at its floor (or its miner cannot take one): lever order inside one
        // decision.
        let must_now = a.emergency
            && matches!(
                a.reason,
                Reason::Excursion
                    | Reason::Shed
                    | Reason::Ceiling
                    | Reason::SlowInTrough
                    | Reason::MeterSilent
                    | Reason::CoolingRedundancy
            )
            && scope_miners(sim, a.scope).iter().all(|&m| {
                let miner = &sim.site.miners[m];
                if a.reason == Reason::SlowInTrough
                    && Loads::compute(&sim.site, &sim.topo, &step.snap, &step.pre, step.now).fast[m]
                {
                    return true;
                }
                let post = &step.plan.state.miners[m];
                !has_target(miner)
                    || post.failed == Some(Lever::PowerTarget)
                    || post.pending.is_some_and(|p| p.issued_at < step.now)
                    || match post.intent {
                        Intent::Target { w } => w <= miner.min_w.unwrap() + 1.0,
                        Intent::Normal => step.snap.overrides.curtailed_miners.contains(&m),
                        _ => true,
                    }
            });
        match a.device {
            Device::Miner(i) => {
                let m = &sim.site.miners[i];
                let pre = &step.pre.miners[i];
                let pending = pre.pending.map(|p| p.lever);
                let ok = match a.lever {
                    Lever::Sleep => {
                        true_emergency
                            || must_now
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

pub(crate) fn inv7_range(sim: &Sim, step: &Step) -> Result<(), String> {
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

pub(crate) fn inv8_determinism(sim: &Sim, step: &Step) -> Result<(), String> {
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
pub(crate) fn inv9_no_nvml(sim: &Sim, step: &Step, mem: &mut Memory) -> Result<(), String> {
    for a in step
        .plan
        .alerts
        .iter()
        .filter(|a| a.name() == "telemetry.nvml.unavailable")
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

pub(crate) fn inv10_n_plus_1(sim: &Sim, step: &Step) -> Result<(), String> {
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

/// Whether a miner under the node can still be shed by `decide` (mining, with an API
/// sleep): where one is left, the node's limits must hold.
fn sheddable_under(sim: &Sim, step: &Step, n: usize, slow_only: Option<&[bool]>) -> Option<usize> {
    sim.topo.miners_under[n].iter().copied().find(|&m| {
        controllable(sim, &step.plan.state, m)
            && sim.site.miners[m].firmware.levers().sleep
            && !step.snap.undriveable(m)
            && step.plan.state.miners[m]
                .pending
                .is_none_or(|p| p.issued_at == step.now)
            && slow_only.is_none_or(|fast| !fast[m])
    })
}

/// 11. Ceiling: after each decision `P_worst <= H` wherever mining with a lever is left
///     below; no restore or fill takes a node on its path above H.
pub(crate) fn inv11_ceiling(sim: &Sim, step: &Step) -> Result<(), String> {
    let loads = Loads::compute(&sim.site, &sim.topo, &step.snap, &step.plan.state, step.now);
    for (n, node) in sim.site.nodes.iter().enumerate() {
        if loads.worst_kw[n] <= node.ceiling_kw + 1e-6 {
            continue;
        }
        if let Some(m) = sheddable_under(sim, step, n, None) {
            return Err(format!(
                "11 ceiling: `{}` worst case {:.2} kW over its {:.2} kW ceiling while `{}` still mines",
                node.id, loads.worst_kw[n], node.ceiling_kw, sim.site.miners[m].id
            ));
        }
        if let Some(a) = step
            .plan
            .actions
            .iter()
            .find(|a| !a.lever.is_shed() && sim.topo.ancestors[rack_of(sim, a)].contains(&n))
        {
            return Err(format!(
                "11 ceiling: {} {} restored under `{}`, worst case {:.2} kW over H {:.2} kW",
                a.device_id,
                a.lever.name(),
                node.id,
                loads.worst_kw[n],
                node.ceiling_kw
            ));
        }
    }
    Ok(())
}

/// 12. Excursion: a node measured above B (less the sheds in flight) with fast mining
///     above idle under it gets a shed in the same decision.
pub(crate) fn inv12_excursion(sim: &Sim, step: &Step) -> Result<(), String> {
    let pre = Loads::compute(&sim.site, &sim.topo, &step.snap, &step.pre, step.now);
    for (n, node) in sim.site.nodes.iter().enumerate() {
        let Some(m) = pre.measured_kw[n] else {
            continue;
        };
        let b = node.budget_kw;
        if m - pre.pending_kw[n] < sim.site.policy.shed_fraction * b + 1e-6 {
            continue;
        }
        let fast_left = sim.topo.miners_under[n].iter().any(|&i| {
            pre.fast[i]
                && pre.miner_w[i] > sim.site.miners[i].idle_w + 1.0
                && controllable(sim, &step.pre, i)
                && step.pre.miners[i].pending.is_none()
                && !sim.snap.overrides.curtailed_miners.contains(&i)
        });
        if !fast_left {
            continue;
        }
        let shed_here = step
            .plan
            .actions
            .iter()
            .any(|a| a.lever.is_shed() && sim.topo.ancestors[rack_of(sim, a)].contains(&n));
        if !shed_here {
            return Err(format!(
                "12 excursion: `{}` measured {m:.2} kW over its {b:.2} kW budget, fast mining left, no shed",
                node.id
            ));
        }
    }
    Ok(())
}

/// 13. Slow miners never hold trough headroom: the committed power of the miners under a
///     node that are not fast fits in `B - sum(X) - other`, wherever a slow one with a
///     lever is left.
pub(crate) fn inv13_slow_out_of_trough(sim: &Sim, step: &Step) -> Result<(), String> {
    let loads = Loads::compute(&sim.site, &sim.topo, &step.snap, &step.plan.state, step.now);
    for (n, node) in sim.site.nodes.iter().enumerate() {
        let g = loads.guaranteed_kw(&sim.site, n).max(0.0);
        if loads.slow_kw[n] <= g + 1e-6 {
            continue;
        }
        if let Some(m) = sheddable_under(sim, step, n, Some(&loads.fast)) {
            return Err(format!(
                "13 slow: `{}` holds {:.2} kW of slow mining, guaranteed allocation {g:.2} kW, `{}` still mines",
                node.id, loads.slow_kw[n], sim.site.miners[m].id
            ));
        }
    }
    Ok(())
}
