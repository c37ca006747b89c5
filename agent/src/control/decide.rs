//! The decision function: one tick of the control policy of docs/control.md.
//!
//! Order within a tick: telemetry (freshness, start-up gate) -> confirmation of commands
//! in flight -> loads -> escalation of unconfirmed commands -> operator overrides ->
//! power sheds per node, deepest first -> (slow tick) cooling -> restore holds ->
//! (slow tick) restores: GPU caps first, then outlets, wakes, targets in seeded order.

use rackwarden_config::{Miner, NodeIdx, Policy, Redundancy, Site};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::load::{fresh, Loads};
use super::plan::{
    Action, Alert, Device, Lever, NodeView, Plan, Reason, Scope, Severity, ZoneView,
    ACTION_UNCONFIRMED, CONTROL_STARTUP_HOLD, CONTROL_STARTUP_RELEASED, COOLING_CAPACITY_EXCEEDED,
    COOLING_CAPACITY_RESTORED, COOLING_REDUNDANCY_LOST, COOLING_REDUNDANCY_RESTORED,
    GPU_CAP_APPLIED, GPU_CAP_LIFTED, POWER_BUDGET_EMERGENCY, POWER_BUDGET_RESTORED,
    POWER_BUDGET_SHED, POWER_BUDGET_UNMET, TELEMETRY_FRESH, TELEMETRY_METER_SILENT,
    TELEMETRY_NVML_UNAVAILABLE, TELEMETRY_STALE,
};
use super::snapshot::{GpuNodeReading, MinerMode, Snapshot, UnitState};
use super::state::{Band, ControlState, GpuPending, Intent, MinerState, Pending};
use super::topology::Topology;
use super::{Millis, Tick};

/// Below a watt is noise.
const EPS_W: f64 = 1.0;
/// Comparisons of kW figures.
const EPS_KW: f64 = 1e-6;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// How a shed may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Straight to sleep, outlets for what does not sleep, anti-cycling waived.
    Emergency,
    /// Lever order: targets down, then sleep; `cycling`: keep the anti-cycling limits.
    Shed { cycling: bool },
}

fn ms(s: u64) -> u64 {
    s.saturating_mul(1000)
}

/// The band of a node with effective load `eff` and budget `b`.
pub(crate) fn band_of(p: &Policy, eff: f64, b: f64, over_rating: bool) -> Band {
    if over_rating || eff >= p.emergency_fraction * b {
        Band::Emergency
    } else if eff >= p.shed_fraction * b {
        Band::Shed
    } else if eff <= p.restore_fraction * b {
        Band::Normal
    } else {
        Band::Hold
    }
}

/// Count of times within `window` before `now`.
fn recent(times: &[Millis], now: Millis, window: u64) -> usize {
    times
        .iter()
        .filter(|&&t| now.saturating_sub(t) < window)
        .count()
}

/// Whether a miner may be slept outside an emergency (min on time, cycles per hour).
pub fn sleep_cycling_ok(p: &Policy, ms_: &MinerState, now: Millis) -> bool {
    ms_.woke_at
        .is_none_or(|t| now.saturating_sub(t) >= ms(p.min_on_s))
        && recent(&ms_.sleep_cycles, now, HOUR_MS)
            < usize::try_from(p.max_sleep_cycles_per_hour).unwrap_or(usize::MAX)
}

/// Whether a miner's outlet may be switched off outside an emergency (cycles per day).
pub fn outlet_cycling_ok(p: &Policy, ms_: &MinerState, now: Millis) -> bool {
    recent(&ms_.power_cycles, now, DAY_MS)
        < usize::try_from(p.max_power_cycles_per_day).unwrap_or(usize::MAX)
}

/// Whether the miner has a power-target lever (firmware offers it and the site gives a floor).
pub fn has_target(m: &Miner) -> bool {
    m.firmware.levers().power_target && m.min_w.is_some()
}

/// Limits of a GPU node for one per-GPU value: inside every GPU's constraints.
fn gpu_bounds(r: &GpuNodeReading) -> Option<(f64, f64, f64, f64)> {
    let count = f64::from(u32::try_from(r.gpus.len()).ok()?);
    if r.gpus.is_empty() {
        return None;
    }
    let lo = r.gpus.iter().map(|g| g.min_w).fold(f64::MIN, f64::max);
    let hi = r.gpus.iter().map(|g| g.max_w).fold(f64::MAX, f64::min);
    let def = r
        .gpus
        .iter()
        .map(|g| g.default_w)
        .fold(f64::MAX, f64::min)
        .min(hi);
    (lo <= hi).then_some((lo, hi, def, count))
}

struct Cx<'a> {
    site: &'a Site,
    topo: &'a Topology,
    snap: &'a Snapshot,
    p: &'a Policy,
    now: Millis,
    actions: Vec<Action>,
    alerts: Vec<Alert>,
}

/// One decision. Pure: the same arguments always give the same plan.
///
/// `topo` must be built from `site` (a mismatched one is rebuilt, at a cost); a `state`
/// of another shape is carried over by id ([`ControlState::for_site`]). Clones `state`;
/// [`decide_owned`] saves the clone where the caller hands its state over.
pub fn decide(
    site: &Site,
    topo: &Topology,
    snap: &Snapshot,
    state: &ControlState,
    now: Millis,
    tick: Tick,
) -> Plan {
    decide_owned(site, topo, snap, state.clone(), now, tick)
}

/// [`decide`], taking the state by value (the runtime's hot path: `state = plan.state`).
pub fn decide_owned(
    site: &Site,
    topo: &Topology,
    snap: &Snapshot,
    state: ControlState,
    now: Millis,
    tick: Tick,
) -> Plan {
    let rebuilt;
    let topo = if topo.fits(site) {
        topo
    } else {
        rebuilt = Topology::new(site);
        &rebuilt
    };
    let mut st = if state.fits(site) {
        state
    } else {
        ControlState::for_site(site, &state, now)
    };
    let mut cx = Cx {
        site,
        topo,
        snap,
        p: &site.policy,
        now,
        actions: Vec::new(),
        alerts: Vec::new(),
    };
    cx.telemetry(&mut st);
    let expired = cx.confirm(&mut st);
    let mut loads = Loads::compute(site, topo, snap, &st, now);
    for (i, ns) in st.nodes.iter_mut().enumerate() {
        ns.other_kw = loads.other_kw[i];
        ns.other_at = loads.other_at[i];
        ns.other_reserve_kw = loads.other_reserve_kw[i];
    }
    let frozen = cx.frozen();
    let nodes = site
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let eff = loads.eff_kw(i);
            NodeView {
                budget_kw: node.budget_kw,
                proj_kw: loads.proj_kw[i],
                eff_kw: eff,
                measured_kw: loads.measured_kw[i],
                gpu_reserve_kw: loads.reserve_kw[i],
                band: band_of(cx.p, eff, node.budget_kw, cx.over_rating(&loads, i)),
                frozen: frozen[i],
            }
        })
        .collect();
    cx.escalate(&mut st, &mut loads, &expired);
    cx.operator(&mut st, &mut loads);
    cx.power(&mut st, &mut loads);
    let zones = if tick == Tick::Slow {
        cx.cooling(&mut st, &mut loads)
    } else {
        Vec::new()
    };
    cx.holds(&mut st, &loads, &frozen);
    if tick == Tick::Slow && st.startup_done {
        cx.restore(&mut st, &mut loads, &frozen, &zones);
    }
    Plan {
        actions: cx.actions,
        alerts: cx.alerts,
        state: st,
        nodes,
        zones,
    }
}

impl Cx<'_> {
    fn alert(&mut self, a: Alert) {
        self.alerts.push(a);
    }

    fn curtailed(&self, i: usize) -> bool {
        let o = &self.snap.overrides;
        o.curtailed_miners.contains(&i)
            || (!o.curtailed_racks.is_empty()
                && o.curtailed_racks.contains(&self.site.miners[i].rack))
    }

    fn exempt(&self, i: usize) -> bool {
        self.snap.overrides.cycling_exempt.contains(&i)
    }

    fn miner_fresh(&self, i: usize) -> bool {
        self.snap
            .miner(i)
            .is_some_and(|r| fresh(r.taken_at, self.now, self.p.miner_stale_ms))
    }

    fn meter_fresh(&self, n: NodeIdx) -> bool {
        self.snap
            .meter(n)
            .is_some_and(|r| fresh(r.taken_at, self.now, self.p.meter_stale_ms))
    }

    /// GPU node readable enough to cap: NVML present, limits fresh (lowering a limit is
    /// safe whatever the power reading says).
    fn gpu_cappable(&self, g: usize) -> Option<&GpuNodeReading> {
        self.snap.gpu(g).filter(|r| {
            r.nvml_available
                && !r.gpus.is_empty()
                && fresh(r.limits_taken_at, self.now, self.p.gpu_limit_stale_ms)
        })
    }

    /// GPU node readable enough to lift a cap: also its power fresh (never add load from
    /// stale data).
    fn gpu_usable(&self, g: usize) -> Option<&GpuNodeReading> {
        self.gpu_cappable(g)
            .filter(|r| fresh(r.power_taken_at, self.now, self.p.gpu_power_stale_ms))
    }

    fn over_rating(&self, loads: &Loads, n: NodeIdx) -> bool {
        let r = self.site.nodes[n].rating_kw;
        r > 0.0 && loads.measured_kw[n].is_some_and(|m| m > r)
    }

    fn scope_id(&self, scope: Scope, device: &str) -> String {
        match scope {
            Scope::Node(n) => self.site.nodes[n].id.clone(),
            Scope::Zone(z) => self.site.zones[z].id.clone(),
            Scope::Device => device.to_owned(),
        }
    }

    // ---- telemetry -------------------------------------------------------------

    fn telemetry(&mut self, st: &mut ControlState) {
        let (site, p, now) = (self.site, self.p, self.now);
        let up = now.saturating_sub(st.started_at);
        let mut all_fresh = true;
        for (i, node) in site.nodes.iter().enumerate() {
            let Some(meter) = node.meters.first() else {
                continue;
            };
            let f = self.meter_fresh(i);
            all_fresh &= f;
            let dev = site.modbus_devices.get(meter.device).map(|d| d.id.clone());
            let ns = &mut st.nodes[i];
            if !f && !ns.meter_stale_alerted && up > p.meter_stale_ms {
                ns.meter_stale_alerted = true;
                let mut a = Alert::new(
                    TELEMETRY_STALE,
                    Severity::Warning,
                    format!(
                        "meter of `{}` is stale: it reads as its worst case, restores frozen",
                        node.id
                    ),
                );
                a.node = Some(node.id.clone());
                a.device = dev;
                self.alert(a);
            } else if f && ns.meter_stale_alerted {
                ns.meter_stale_alerted = false;
                let mut a = Alert::new(
                    TELEMETRY_FRESH,
                    Severity::Info,
                    format!("meter of `{}` reads again", node.id),
                );
                a.node = Some(node.id.clone());
                a.device = dev;
                self.alert(a);
            }
        }
        for (g, gn) in site.gpu_nodes.iter().enumerate() {
            let r = self.snap.gpu(g);
            let f = r.is_some_and(|r| {
                fresh(r.power_taken_at, now, p.gpu_power_stale_ms)
                    && (!r.nvml_available || fresh(r.limits_taken_at, now, p.gpu_limit_stale_ms))
            });
            all_fresh &= f;
            let gs = &mut st.gpus[g];
            match r {
                Some(r) if !r.nvml_available && !gs.nvml_alerted => {
                    gs.nvml_alerted = true;
                    let mut a = Alert::new(
                        TELEMETRY_NVML_UNAVAILABLE,
                        Severity::Warning,
                        format!(
                            "NVML unavailable on `{}`: GPUs metered at the PDU, rack reserved at its rated maximum, GPU caps off",
                            gn.id
                        ),
                    );
                    a.device = Some(gn.id.clone());
                    a.node = Some(site.nodes[gn.rack].id.clone());
                    self.alerts.push(a);
                }
                Some(r) if r.nvml_available => gs.nvml_alerted = false,
                _ => {}
            }
            let gs = &mut st.gpus[g];
            if !f && !gs.stale_alerted && up > p.gpu_power_stale_ms {
                gs.stale_alerted = true;
                let mut a = Alert::new(
                    TELEMETRY_STALE,
                    Severity::Warning,
                    format!(
                        "GPU node `{}` is stale: its rack is reserved at its rated maximum",
                        gn.id
                    ),
                );
                a.device = Some(gn.id.clone());
                self.alerts.push(a);
            } else if f && gs.stale_alerted {
                gs.stale_alerted = false;
                let mut a = Alert::new(
                    TELEMETRY_FRESH,
                    Severity::Info,
                    format!("GPU node `{}` reads again", gn.id),
                );
                a.device = Some(gn.id.clone());
                self.alerts.push(a);
            }
        }
        for (z, zone) in site.zones.iter().enumerate() {
            for (u, unit) in zone.units.iter().enumerate() {
                if unit.device.is_none() {
                    continue;
                }
                let f = self
                    .snap
                    .unit(z, u)
                    .is_some_and(|r| fresh(r.taken_at, now, p.cooling_stale_ms));
                all_fresh &= f;
                let flag = &mut st.zones[z].unit_stale_alerted[u];
                if f == *flag {
                    let stale_now = !f;
                    if stale_now && up <= p.cooling_stale_ms {
                        continue;
                    }
                    *flag = stale_now;
                    let (name, sev, what) = if stale_now {
                        (
                            TELEMETRY_STALE,
                            Severity::Warning,
                            "is stale: counted unavailable",
                        )
                    } else {
                        (TELEMETRY_FRESH, Severity::Info, "reads again")
                    };
                    let mut a = Alert::new(name, sev, format!("cooling unit `{}` {what}", unit.id));
                    a.zone = Some(zone.id.clone());
                    a.device = Some(unit.id.clone());
                    self.alerts.push(a);
                }
            }
        }
        for i in 0..site.miners.len() {
            if st.miners[i].intent == Intent::OutletOff || self.curtailed(i) {
                continue;
            }
            let f = self.miner_fresh(i);
            all_fresh &= f;
            let ms_ = &mut st.miners[i];
            if f == ms_.stale_alerted {
                if !f && up <= p.miner_stale_ms {
                    continue;
                }
                ms_.stale_alerted = !f;
                let m = &site.miners[i];
                let (name, sev, what) = if f {
                    (TELEMETRY_FRESH, Severity::Info, "reads again")
                } else {
                    (
                        TELEMETRY_STALE,
                        Severity::Warning,
                        "is stale: counted at nameplate",
                    )
                };
                let mut a = Alert::new(name, sev, format!("miner `{}` {what}", m.id));
                a.device = Some(m.id.clone());
                a.node = Some(site.nodes[m.rack].id.clone());
                self.alerts.push(a);
            }
        }
        // Start-up gate: no restores until every input has been fresh long enough.
        st.fresh_since = if all_fresh {
            Some(st.fresh_since.unwrap_or(now))
        } else {
            None
        };
        if !st.startup_alerted {
            st.startup_alerted = true;
            self.alert(Alert::new(
                CONTROL_STARTUP_HOLD,
                Severity::Info,
                format!(
                    "start-up: no restores until every input has been fresh for {} s; persisted intents kept",
                    p.startup_fresh_s
                ),
            ));
        }
        if !st.startup_done
            && st
                .fresh_since
                .is_some_and(|t| now.saturating_sub(t) >= ms(p.startup_fresh_s))
        {
            st.startup_done = true;
            self.alert(Alert::new(
                CONTROL_STARTUP_RELEASED,
                Severity::Info,
                "start-up hold over: every input fresh, restores allowed".to_owned(),
            ));
        }
    }

    // ---- confirmation ----------------------------------------------------------

    fn confirmed(&self, i: usize, pd: &Pending) -> bool {
        command_confirmed(self.site, self.snap, i, pd, self.now)
    }

    /// Confirms or expires every command in flight; returns the expired miner commands.
    fn confirm(&mut self, st: &mut ControlState) -> Vec<(usize, Pending)> {
        let mut expired = Vec::new();
        for i in 0..self.site.miners.len() {
            let Some(pd) = st.miners[i].pending else {
                continue;
            };
            if self.confirmed(i, &pd) {
                st.miners[i].pending = None;
                st.miners[i].failed = None;
            } else if self.now >= pd.deadline {
                st.miners[i].pending = None;
                st.miners[i].failed = Some(pd.lever);
                let m = &self.site.miners[i];
                let sev = if pd.lever.is_shed() {
                    Severity::Warning
                } else {
                    Severity::Info
                };
                let mut a = Alert::new(
                    ACTION_UNCONFIRMED,
                    sev,
                    format!(
                        "miner `{}` did not confirm `{}` within {} ms",
                        m.id,
                        pd.lever.name(),
                        pd.deadline.saturating_sub(pd.issued_at)
                    ),
                );
                a.device = Some(m.id.clone());
                a.node = Some(self.site.nodes[m.rack].id.clone());
                self.alert(a);
                expired.push((i, pd));
            }
        }
        for g in 0..self.site.gpu_nodes.len() {
            let Some(pd) = st.gpus[g].pending else {
                continue;
            };
            let ok = self.snap.gpu(g).is_some_and(|r| {
                r.limits_taken_at > pd.issued_at
                    && r.gpus.iter().all(|l| {
                        let want = pd.cap_w.unwrap_or(l.default_w);
                        (l.enforced_w - want).abs() <= (0.01 * want).max(1.0)
                    })
            });
            if ok {
                st.gpus[g].pending = None;
            } else if self.now >= pd.deadline {
                st.gpus[g].pending = None;
                let gn = &self.site.gpu_nodes[g];
                let mut a = Alert::new(
                    ACTION_UNCONFIRMED,
                    Severity::Warning,
                    format!("GPU node `{}` did not read back the commanded limit", gn.id),
                );
                a.device = Some(gn.id.clone());
                a.node = Some(self.site.nodes[gn.rack].id.clone());
                self.alert(a);
            }
        }
        expired
    }

    /// Per node: restores frozen (a stale meter at or below it).
    fn frozen(&self) -> Vec<bool> {
        let mut frozen = vec![false; self.site.nodes.len()];
        for (i, node) in self.site.nodes.iter().enumerate() {
            if !node.meters.is_empty() && !self.meter_fresh(i) {
                for &a in &self.topo.ancestors[i] {
                    frozen[a] = true;
                }
            }
        }
        frozen
    }

    // ---- actions ---------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn miner_act(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        i: usize,
        lever: Lever,
        intent: Intent,
        to_w: f64,
        scope: Scope,
        reason: Reason,
        emergency: bool,
    ) {
        let (p, now) = (self.p, self.now);
        let m = &self.site.miners[i];
        let from_w = loads.miner_w[i];
        let wait = if emergency && lever == Lever::Sleep {
            p.emergency_outlet_after_s
        } else {
            p.confirm_timeout_s
        };
        let ms_ = &mut st.miners[i];
        // A command replacing one still in flight keeps the power meters still show.
        let shown_w = ms_
            .pending
            .filter(|p| p.lever.is_shed())
            .map_or(from_w, |p| p.from_w.max(from_w));
        ms_.intent = intent;
        ms_.since = now;
        ms_.pending = Some(Pending {
            lever,
            issued_at: now,
            deadline: now.saturating_add(ms(wait)),
            from_w: shown_w,
            to_w,
            emergency,
        });
        match lever {
            Lever::Sleep => {
                ms_.slept_at = Some(now);
                ms_.sleep_cycles
                    .retain(|&t| now.saturating_sub(t) < HOUR_MS);
                ms_.sleep_cycles.push(now);
            }
            Lever::OutletOff => {
                ms_.slept_at = Some(now);
                ms_.power_cycles.retain(|&t| now.saturating_sub(t) < DAY_MS);
                ms_.power_cycles.push(now);
            }
            Lever::Wake | Lever::OutletOn => ms_.woke_at = Some(now),
            _ => {}
        }
        let d = (to_w - from_w) / 1000.0;
        for &a in &self.topo.ancestors[m.rack] {
            loads.proj_kw[a] += d;
            loads.miners_kw[a] += d;
            if lever.is_shed() && d < 0.0 {
                loads.pending_kw[a] -= d;
            }
        }
        loads.miner_w[i] = to_w;
        self.actions.push(Action {
            scope,
            constraint: self.scope_id(scope, &m.id),
            device: Device::Miner(i),
            device_id: m.id.clone(),
            lever,
            from_w,
            to_w,
            reason,
            emergency,
        });
    }

    fn sleep(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        i: usize,
        scope: Scope,
        reason: Reason,
        emergency: bool,
    ) {
        let idle = self.site.miners[i].idle_w;
        self.miner_act(
            st,
            loads,
            i,
            Lever::Sleep,
            Intent::Sleep,
            idle,
            scope,
            reason,
            emergency,
        );
    }

    fn outlet_off(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        i: usize,
        scope: Scope,
        reason: Reason,
        emergency: bool,
    ) {
        self.miner_act(
            st,
            loads,
            i,
            Lever::OutletOff,
            Intent::OutletOff,
            0.0,
            scope,
            reason,
            emergency,
        );
    }

    /// Sets GPU node `g` to `limit_w` per GPU (`None`: back to defaults at `limit_w`).
    #[allow(clippy::too_many_arguments)]
    fn gpu_set(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        g: usize,
        limit_w: f64,
        to_default: bool,
        count: f64,
        scope: Scope,
        reason: Reason,
        emergency: bool,
    ) {
        let gn = &self.site.gpu_nodes[g];
        let old_kw = loads.gpu_kw[g].unwrap_or(0.0);
        let new_kw = limit_w * count / 1000.0;
        let d = new_kw - old_kw;
        loads.gpu_kw[g] = Some(new_kw);
        loads.rack_reserve_kw[gn.rack] += d;
        for &a in &self.topo.ancestors[gn.rack] {
            loads.proj_kw[a] += d;
            loads.reserve_kw[a] += d;
            if d < 0.0 {
                loads.pending_kw[a] -= d;
            }
        }
        let was = st.gpus[g].cap_w;
        let cap = (!to_default).then_some(limit_w);
        st.gpus[g].cap_w = cap;
        if cap.is_none() {
            st.gpus[g].capped_by.clear();
        } else if d < 0.0 && !st.gpus[g].capped_by.contains(&scope) {
            st.gpus[g].capped_by.push(scope);
        }
        st.gpus[g].pending = Some(GpuPending {
            cap_w: cap,
            issued_at: self.now,
            deadline: self.now.saturating_add(ms(self.p.confirm_timeout_s)),
        });
        let lever = if d < 0.0 {
            Lever::GpuCap
        } else {
            Lever::GpuCapLift
        };
        let from_w = old_kw * 1000.0 / count;
        self.actions.push(Action {
            scope,
            constraint: self.scope_id(scope, &gn.id),
            device: Device::GpuNode(g),
            device_id: gn.id.clone(),
            lever,
            from_w,
            to_w: limit_w,
            reason,
            emergency,
        });
        let node = Some(self.site.nodes[gn.rack].id.clone());
        if was.is_none() && cap.is_some() {
            let mut a = Alert::new(
                GPU_CAP_APPLIED,
                Severity::Warning,
                format!(
                    "GPU node `{}` capped to {limit_w:.0} W per GPU: no mining left to shed under `{}`",
                    gn.id,
                    self.scope_id(scope, &gn.id)
                ),
            );
            a.device = Some(gn.id.clone());
            a.node = node;
            a.kw = Some(new_kw);
            self.alert(a);
        } else if was.is_some() && cap.is_none() {
            let mut a = Alert::new(
                GPU_CAP_LIFTED,
                Severity::Info,
                format!("GPU node `{}` back to its default limits", gn.id),
            );
            a.device = Some(gn.id.clone());
            a.node = node;
            a.kw = Some(new_kw);
            self.alert(a);
        }
    }

    // ---- escalation and overrides ------------------------------------------------

    fn escalate(&mut self, st: &mut ControlState, loads: &mut Loads, expired: &[(usize, Pending)]) {
        for &(i, pd) in expired {
            let m = &self.site.miners[i];
            let ms_ = &st.miners[i];
            match (pd.lever, ms_.intent) {
                (Lever::PowerTarget, Intent::Target { .. })
                    if m.firmware.levers().sleep
                        && (pd.emergency
                            || self.exempt(i)
                            || sleep_cycling_ok(self.p, ms_, self.now)) =>
                {
                    self.sleep(
                        st,
                        loads,
                        i,
                        Scope::Device,
                        Reason::Escalation,
                        pd.emergency,
                    );
                }
                (Lever::Sleep, Intent::Sleep)
                    if self.topo.outlet_ok[i]
                        && (pd.emergency
                            || self.exempt(i)
                            || outlet_cycling_ok(self.p, ms_, self.now)) =>
                {
                    self.outlet_off(
                        st,
                        loads,
                        i,
                        Scope::Device,
                        Reason::Escalation,
                        pd.emergency,
                    );
                }
                _ => {}
            }
        }
    }

    fn operator(&mut self, st: &mut ControlState, loads: &mut Loads) {
        let o = &self.snap.overrides;
        if o.curtailed_miners.is_empty() && o.curtailed_racks.is_empty() {
            return;
        }
        let mut list: Vec<usize> = o.curtailed_miners.iter().copied().collect();
        for &r in &o.curtailed_racks {
            if let Some(ms_) = self.topo.rack_miners.get(r) {
                list.extend(ms_.iter().copied());
            }
        }
        list.sort_unstable();
        list.dedup();
        for i in list {
            let Some(m) = self.site.miners.get(i) else {
                continue;
            };
            let ms_ = &st.miners[i];
            if ms_.pending.is_some_and(|p| p.lever != Lever::PowerTarget) {
                continue;
            }
            if matches!(ms_.intent, Intent::Normal | Intent::Target { .. }) {
                if m.firmware.levers().sleep {
                    self.sleep(st, loads, i, Scope::Device, Reason::Operator, false);
                } else if self.topo.outlet_ok[i] {
                    self.outlet_off(st, loads, i, Scope::Device, Reason::Operator, false);
                }
            }
        }
    }

    // ---- shedding --------------------------------------------------------------

    fn sleep_eligible(&self, st: &ControlState, i: usize, mode: Mode) -> bool {
        let m = &self.site.miners[i];
        let ms_ = &st.miners[i];
        let emergency = mode == Mode::Emergency;
        if let Some(pd) = ms_.pending {
            if !(emergency && pd.lever == Lever::PowerTarget) {
                return false;
            }
        }
        if !matches!(ms_.intent, Intent::Normal | Intent::Target { .. })
            || !m.firmware.levers().sleep
        {
            return false;
        }
        if emergency {
            return true;
        }
        // Lever order: a miner with a power target is slept only once its target is at
        // the floor, or when it ignored a target.
        let target_done = match ms_.intent {
            Intent::Target { w } => m.min_w.is_some_and(|min| w <= min + EPS_W),
            _ => false,
        };
        if has_target(m) && ms_.failed != Some(Lever::PowerTarget) && !target_done {
            return false;
        }
        match mode {
            Mode::Shed { cycling: true } => {
                self.exempt(i) || sleep_cycling_ok(self.p, ms_, self.now)
            }
            _ => true,
        }
    }

    /// Whether miner `i` still draws above idle with a lever left (GPU caps wait for it).
    fn blocks_caps(&self, st: &ControlState, loads: &Loads, i: usize) -> bool {
        let m = &self.site.miners[i];
        let ms_ = &st.miners[i];
        if loads.miner_w[i] <= m.idle_w + EPS_W {
            return false;
        }
        match ms_.intent {
            Intent::Normal | Intent::Target { .. } => {
                m.firmware.levers().sleep || self.topo.outlet_ok[i]
            }
            Intent::Sleep => self.topo.outlet_ok[i] && ms_.pending.is_none(),
            Intent::OutletOff => false,
        }
    }

    /// Sheds `need_kw` from `miners` (in shed order), then GPU caps on `gpus` when
    /// allowed and no mining is left. Returns what could not be shed, kW.
    #[allow(clippy::too_many_arguments)]
    fn shed(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        scope: Scope,
        miners: &[usize],
        gpus: &[usize],
        need_kw: f64,
        margin_kw: f64,
        mode: Mode,
        reason: Reason,
        allow_gpu: bool,
    ) -> f64 {
        let (site, p) = (self.site, self.p);
        let emergency = mode == Mode::Emergency;
        // Actions flagged `emergency` are those taken with anti-cycling waived.
        let waived = mode != Mode::Shed { cycling: true };
        let mut rem = need_kw;
        // 1. Power targets down, multiplicatively, never more than needed.
        if !emergency {
            for &i in miners {
                if rem <= EPS_KW {
                    break;
                }
                let m = &site.miners[i];
                let ms_ = &st.miners[i];
                if ms_.pending.is_some()
                    || !has_target(m)
                    || ms_.failed == Some(Lever::PowerTarget)
                    || self.curtailed(i)
                {
                    continue;
                }
                let cur = match ms_.intent {
                    Intent::Normal => m.nominal_w,
                    Intent::Target { w } => w,
                    _ => continue,
                };
                let min = m.min_w.unwrap_or(m.nominal_w).min(m.nominal_w);
                let new = (cur * p.target_decrease_factor)
                    .max(min)
                    .max(cur - rem * 1000.0)
                    .min(cur);
                if new >= cur - EPS_W {
                    continue;
                }
                let before = loads.miner_w[i];
                self.miner_act(
                    st,
                    loads,
                    i,
                    Lever::PowerTarget,
                    Intent::Target { w: new },
                    new,
                    scope,
                    reason,
                    false,
                );
                rem -= (before - new) / 1000.0;
            }
        }
        // 2. Sleep, least efficient first; never more than needed plus the margin, except
        //    one smallest step when nothing smaller fits.
        if rem > EPS_KW {
            let mut fallback: Option<(usize, f64)> = None;
            for &i in miners {
                if rem <= EPS_KW {
                    break;
                }
                if !self.sleep_eligible(st, i, mode) {
                    continue;
                }
                let d = (loads.miner_w[i] - site.miners[i].idle_w) / 1000.0;
                if d <= EPS_KW {
                    continue;
                }
                if d > rem + margin_kw {
                    if fallback.is_none_or(|(_, fd)| d < fd) {
                        fallback = Some((i, d));
                    }
                    continue;
                }
                self.sleep(st, loads, i, scope, reason, waived);
                rem -= d;
            }
            if rem > EPS_KW {
                if let Some((i, d)) = fallback {
                    if self.sleep_eligible(st, i, mode) {
                        self.sleep(st, loads, i, scope, reason, waived);
                        rem -= d;
                    }
                }
            }
        }
        // 3. Emergency: outlets of miners that do not sleep (or sleep and still draw).
        if emergency && rem > EPS_KW {
            for &i in miners {
                if rem <= EPS_KW {
                    break;
                }
                let m = &site.miners[i];
                let ms_ = &st.miners[i];
                if !self.topo.outlet_ok[i] || ms_.pending.is_some() {
                    continue;
                }
                let go = match ms_.intent {
                    Intent::Sleep => loads.miner_w[i] > m.idle_w + EPS_W,
                    Intent::Normal | Intent::Target { .. } => !m.firmware.levers().sleep,
                    Intent::OutletOff => false,
                };
                if go {
                    let d = loads.miner_w[i] / 1000.0;
                    self.outlet_off(st, loads, i, scope, reason, true);
                    rem -= d;
                }
            }
        }
        // 4. GPU caps: last resort, only when no mining with a lever left draws above idle.
        if rem > EPS_KW && allow_gpu && p.allow_gpu_caps {
            if miners.iter().any(|&i| self.blocks_caps(st, loads, i)) {
                return rem;
            }
            let mut cands = Vec::new();
            for &g in gpus {
                if st.gpus[g].pending.is_some() {
                    continue;
                }
                let rack = site.gpu_nodes[g].rack;
                if !self.topo.rack_gpus[rack]
                    .iter()
                    .all(|&h| loads.gpu_kw[h].is_some())
                {
                    continue;
                }
                let (Some(r), Some(cur)) = (self.gpu_cappable(g), loads.gpu_kw[g]) else {
                    continue;
                };
                let Some((lo, hi, _, count)) = gpu_bounds(r) else {
                    continue;
                };
                let floor = lo * count / 1000.0;
                if cur > floor + EPS_KW {
                    cands.push((g, cur, floor, lo, hi, count));
                }
            }
            let total: f64 = cands.iter().map(|c| c.1 - c.2).sum();
            if total > EPS_KW {
                let f = (rem / total).min(1.0);
                for (g, cur, floor, lo, hi, count) in cands {
                    let target_kw = cur - f * (cur - floor);
                    let limit = (target_kw * 1000.0 / count).clamp(lo, hi);
                    if limit * count / 1000.0 < cur - EPS_KW {
                        let d = cur - limit * count / 1000.0;
                        self.gpu_set(st, loads, g, limit, false, count, scope, reason, emergency);
                        rem -= d;
                    }
                }
            }
        }
        rem
    }

    /// Node meter silent long enough to shed on it.
    fn meter_silent(&self, st: &ControlState, n: NodeIdx) -> bool {
        if self.site.nodes[n].meters.is_empty() {
            return false;
        }
        let last = self.snap.meter(n).map_or(st.started_at, |r| r.taken_at);
        self.now.saturating_sub(last)
            > self
                .p
                .meter_stale_ms
                .saturating_add(ms(self.p.meter_silent_shed_after_s))
    }

    /// Whether the devices below `n` bound its load without its own meter: every rack
    /// below has a fresh meter or fresh readings of all its devices.
    fn bounded(&self, n: NodeIdx) -> bool {
        let now = self.now;
        self.topo.racks_under[n].iter().all(|&r| {
            (r != n && self.meter_fresh(r))
                || (self.topo.rack_miners[r]
                    .iter()
                    .all(|&m| self.miner_fresh(m))
                    && self.topo.rack_gpus[r].iter().all(|&g| {
                        self.snap.gpu(g).is_some_and(|x| {
                            fresh(x.power_taken_at, now, self.p.gpu_power_stale_ms)
                        })
                    }))
        })
    }

    fn power(&mut self, st: &mut ControlState, loads: &mut Loads) {
        let (site, topo, p) = (self.site, self.topo, self.p);
        for &n in &topo.bottom_up {
            let node = &site.nodes[n];
            let b = node.budget_kw;
            if b <= 0.0 {
                continue;
            }
            let eff = loads.eff_kw(n);
            let band = band_of(p, eff, b, self.over_rating(loads, n));
            let (mut need, mut mode, mut reason) = match band {
                Band::Emergency => (
                    eff - p.shed_target_fraction * b,
                    Mode::Emergency,
                    Reason::Emergency,
                ),
                Band::Shed => (
                    eff - p.shed_target_fraction * b,
                    Mode::Shed { cycling: true },
                    Reason::Shed,
                ),
                _ => (0.0, Mode::Shed { cycling: true }, Reason::Shed),
            };
            // Band alerts fire on changes; the hold band keeps the last one.
            let old = st.nodes[n].band;
            let new = match band {
                Band::Hold => old.min(Band::Shed),
                b => b,
            };
            if new != old {
                let (name, sev, what) = match new {
                    Band::Emergency => (
                        POWER_BUDGET_EMERGENCY,
                        Severity::Critical,
                        "at or above its budget: emergency shed",
                    ),
                    Band::Shed => (
                        POWER_BUDGET_SHED,
                        Severity::Warning,
                        "in the shed band: lowering mining",
                    ),
                    _ => (
                        POWER_BUDGET_RESTORED,
                        Severity::Info,
                        "back under the restore threshold",
                    ),
                };
                if new > old || old >= Band::Shed && new == Band::Normal {
                    let mut a =
                        Alert::new(name, sev, format!("`{}` {what}", node.id)).figures(eff, b);
                    a.node = Some(node.id.clone());
                    self.alert(a);
                }
                st.nodes[n].band = new;
            }
            // A silent meter with nothing below to bound it: miners to 0.8 x B - reserve.
            if self.meter_silent(st, n) && !self.bounded(n) {
                let allowance = (p.restore_fraction * b - loads.reserve_kw[n]).max(0.0);
                let excess = loads.miners_kw[n] - allowance;
                if !st.nodes[n].silent_alerted {
                    st.nodes[n].silent_alerted = true;
                    let mut a = Alert::new(
                        TELEMETRY_METER_SILENT,
                        Severity::Critical,
                        format!(
                            "meter of `{}` silent with no device-level bound: miners held to {allowance:.1} kW",
                            node.id
                        ),
                    )
                    .figures(loads.miners_kw[n], allowance);
                    a.node = Some(node.id.clone());
                    self.alert(a);
                }
                if excess > need {
                    need = excess;
                    // An emergency stays one (its levers and its reason).
                    if mode != Mode::Emergency {
                        reason = Reason::MeterSilent;
                        mode = Mode::Shed { cycling: false };
                    }
                }
            } else {
                st.nodes[n].silent_alerted = false;
            }
            if need <= EPS_KW {
                st.nodes[n].unmet_alerted = false;
                continue;
            }
            let rem = self.shed(
                st,
                loads,
                Scope::Node(n),
                &topo.miners_under[n],
                &topo.gpus_under[n],
                need,
                p.shed_margin_fraction * b,
                mode,
                reason,
                band >= Band::Shed,
            );
            if rem > EPS_KW && !st.nodes[n].unmet_alerted {
                st.nodes[n].unmet_alerted = true;
                let mut a = Alert::new(
                    POWER_BUDGET_UNMET,
                    Severity::Critical,
                    format!(
                        "`{}` needs {rem:.1} kW more shed than any lever left can give",
                        node.id
                    ),
                )
                .figures(loads.eff_kw(n), b);
                a.node = Some(node.id.clone());
                self.alert(a);
            } else if rem <= EPS_KW {
                st.nodes[n].unmet_alerted = false;
            }
        }
    }

    // ---- cooling ---------------------------------------------------------------

    fn zone_heat(&self, loads: &Loads, z: usize) -> f64 {
        self.site.zones[z]
            .racks
            .iter()
            .map(|&r| loads.eff_kw(r))
            .sum()
    }

    /// Available capacity and largest available unit of zone `z`, kW.
    fn zone_capacity(&self, z: usize) -> (f64, f64) {
        let zone = &self.site.zones[z];
        let (mut sum, mut max) = (0.0f64, 0.0f64);
        for (u, unit) in zone.units.iter().enumerate() {
            if self.snap.overrides.units_in_maintenance.contains(&(z, u)) {
                continue;
            }
            let cap = match (unit.device, self.snap.unit(z, u)) {
                // A unit nobody reads is taken as configured; a read one must be fresh and running.
                (None, None) => unit.capacity_kw,
                (_, Some(r))
                    if fresh(r.taken_at, self.now, self.p.cooling_stale_ms)
                        && r.state == UnitState::Running =>
                {
                    r.capacity_kw.unwrap_or(unit.capacity_kw)
                }
                _ => continue,
            };
            sum += cap;
            max = max.max(cap);
        }
        (sum, max)
    }

    fn cooling(&mut self, st: &mut ControlState, loads: &mut Loads) -> Vec<ZoneView> {
        let (site, topo, p) = (self.site, self.topo, self.p);
        let mut views = Vec::with_capacity(site.zones.len());
        for (z, zone) in site.zones.iter().enumerate() {
            let (sum, max) = self.zone_capacity(z);
            let heat = self.zone_heat(loads, z);
            let k = 1.0 + zone.margin;
            let nplus1 = zone.redundancy == Redundancy::None || sum - max >= heat * k - EPS_KW;
            let n_ok = sum >= heat - EPS_KW;
            views.push(ZoneView {
                heat_kw: heat,
                available_kw: sum,
                largest_kw: max,
                n_plus_1: nplus1,
                n: n_ok,
            });
            let zs = &mut st.zones[z];
            let mut alerts = Vec::new();
            if zs.n_plus_1 != nplus1 {
                zs.n_plus_1 = nplus1;
                let (name, sev, what) = if nplus1 {
                    (
                        COOLING_REDUNDANCY_RESTORED,
                        Severity::Info,
                        "N+1 holds again",
                    )
                } else {
                    (
                        COOLING_REDUNDANCY_LOST,
                        Severity::Critical,
                        "lost N+1: restores frozen, shedding the zone's miners",
                    )
                };
                alerts.push(
                    Alert::new(name, sev, format!("zone `{}` {what}", zone.id))
                        .figures(heat * k, sum - max),
                );
            }
            if zs.n != n_ok {
                zs.n = n_ok;
                let (name, sev, what) = if n_ok {
                    (
                        COOLING_CAPACITY_RESTORED,
                        Severity::Info,
                        "capacity covers the heat load again",
                    )
                } else {
                    (
                        COOLING_CAPACITY_EXCEEDED,
                        Severity::Critical,
                        "heat load above the available capacity: emergency shed",
                    )
                };
                alerts.push(
                    Alert::new(name, sev, format!("zone `{}` {what}", zone.id)).figures(heat, sum),
                );
            }
            for mut a in alerts {
                a.zone = Some(zone.id.clone());
                self.alert(a);
            }
            let target = if zone.redundancy == Redundancy::None {
                sum
            } else {
                sum - max
            };
            let need = heat * k - target;
            let (mode, reason, gpu) = if !n_ok {
                (Mode::Emergency, Reason::CoolingCapacity, true)
            } else if !nplus1 {
                (
                    Mode::Shed { cycling: false },
                    Reason::CoolingRedundancy,
                    false,
                )
            } else {
                continue;
            };
            if need > EPS_KW {
                self.shed(
                    st,
                    loads,
                    Scope::Zone(z),
                    &topo.zone_miners[z],
                    &topo.zone_gpus[z],
                    need,
                    p.shed_margin_fraction * target.max(heat),
                    mode,
                    reason,
                    gpu,
                );
            }
        }
        views
    }

    // ---- restore ---------------------------------------------------------------

    fn holds(&mut self, st: &mut ControlState, loads: &Loads, frozen: &[bool]) {
        let p = self.p;
        for (n, node) in self.site.nodes.iter().enumerate() {
            let b = node.budget_kw;
            let cond = !frozen[n]
                && loads.eff_kw(n) + p.restore_step_fraction * b <= p.restore_fraction * b + EPS_KW;
            let ns = &mut st.nodes[n];
            ns.below_since = if cond {
                Some(ns.below_since.unwrap_or(self.now))
            } else {
                None
            };
        }
    }

    fn restore(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        frozen: &[bool],
        zones: &[ZoneView],
    ) {
        let (site, topo, p, now) = (self.site, self.topo, self.p, self.now);
        let n = site.nodes.len();
        let open: Vec<bool> = (0..n)
            .map(|a| {
                let ns = &st.nodes[a];
                !frozen[a]
                    && ns
                        .below_since
                        .is_some_and(|t| now.saturating_sub(t) >= ms(p.restore_hold_s))
                    && ns
                        .last_restore_at
                        .is_none_or(|t| now.saturating_sub(t) >= ms(p.restore_step_interval_s))
            })
            .collect();
        if !open.first().copied().unwrap_or(false) {
            return;
        }
        let mut ramp: Vec<f64> = site
            .nodes
            .iter()
            .map(|x| p.restore_step_fraction * x.budget_kw)
            .collect();
        let mut touched = vec![false; n];
        // Zone headroom for added heat, kW of electrical load.
        let mut zone_room: Vec<f64> = site
            .zones
            .iter()
            .enumerate()
            .map(|(z, zone)| {
                let Some(v) = zones.get(z) else {
                    return f64::NEG_INFINITY;
                };
                if !v.n_plus_1 || !v.n {
                    return f64::NEG_INFINITY;
                }
                let target = if zone.redundancy == Redundancy::None {
                    v.available_kw
                } else {
                    v.available_kw - v.largest_kw
                };
                (target - self.zone_heat(loads, z) * (1.0 + zone.margin)) / (1.0 + zone.margin)
            })
            .collect();
        let allowed = |loads: &Loads, ramp: &[f64], zone_room: &[f64], rack: NodeIdx| -> f64 {
            let mut a = f64::INFINITY;
            for &x in &topo.ancestors[rack] {
                if !open[x] {
                    return 0.0;
                }
                let b = site.nodes[x].budget_kw;
                a = a.min(ramp[x]).min(p.restore_fraction * b - loads.eff_kw(x));
            }
            if let Some(z) = topo.rack_zone[rack] {
                a = a.min(zone_room[z]);
            }
            a.max(0.0)
        };
        let take = |ramp: &mut [f64],
                    zone_room: &mut [f64],
                    touched: &mut [bool],
                    rack: NodeIdx,
                    d: f64| {
            for &x in &topo.ancestors[rack] {
                ramp[x] -= d;
                touched[x] = true;
            }
            if let Some(z) = topo.rack_zone[rack] {
                zone_room[z] -= d;
            }
        };
        // 1. GPU caps first.
        for g in 0..site.gpu_nodes.len() {
            let gs = &st.gpus[g];
            let (Some(_), None) = (gs.cap_w, gs.pending) else {
                continue;
            };
            let rack = site.gpu_nodes[g].rack;
            let (Some(r), Some(cur)) = (self.gpu_usable(g), loads.gpu_kw[g]) else {
                continue;
            };
            let Some((_, _, def, count)) = gpu_bounds(r) else {
                continue;
            };
            let full = def * count / 1000.0 - cur;
            let a = allowed(loads, &ramp, &zone_room, rack);
            if full <= EPS_KW {
                // Already at the defaults (e.g. reset by a reboot): just forget the cap.
                st.gpus[g].cap_w = None;
                continue;
            }
            if a <= EPS_KW {
                continue;
            }
            let add = full.min(a);
            let to_default = add >= full - EPS_KW;
            let limit = if to_default {
                def
            } else {
                (cur + add) * 1000.0 / count
            };
            self.gpu_set(
                st,
                loads,
                g,
                limit,
                to_default,
                count,
                Scope::Node(rack),
                Reason::Restore,
                false,
            );
            take(&mut ramp, &mut zone_room, &mut touched, rack, add);
        }
        // 2. No miner comes back under a constraint that still holds a GPU cap.
        let mut capped = vec![false; n];
        let mut capped_zone = vec![false; site.zones.len()];
        for gs in st.gpus.iter().filter(|g| g.cap_w.is_some()) {
            if gs.capped_by.is_empty() {
                capped[0] = true;
            }
            for scope in &gs.capped_by {
                match *scope {
                    Scope::Node(x) => {
                        if let Some(c) = capped.get_mut(x) {
                            *c = true;
                        }
                    }
                    Scope::Zone(z) => {
                        if let Some(c) = capped_zone.get_mut(z) {
                            *c = true;
                        }
                    }
                    Scope::Device => capped[0] = true,
                }
            }
        }
        if capped[0] {
            // The site is on every path.
            self.mark(st, &touched);
            return;
        }
        // 3. Miners: outlets, then wakes, then targets; each group in a seeded order.
        let mut groups: [Vec<usize>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (i, ms_) in st.miners.iter().enumerate() {
            if ms_.pending.is_some() || ms_.intent == Intent::Normal || self.curtailed(i) {
                continue;
            }
            match ms_.intent {
                Intent::OutletOff
                    if self
                        .snap
                        .outlet(i)
                        .is_some_and(|o| !o.on && fresh(o.taken_at, now, p.meter_stale_ms)) =>
                {
                    groups[0].push(i);
                }
                Intent::Sleep if self.miner_fresh(i) => groups[1].push(i),
                Intent::Target { .. } if self.miner_fresh(i) => groups[2].push(i),
                _ => {}
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ now.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for (gi, group) in groups.iter_mut().enumerate() {
            group.shuffle(&mut rng);
            for &i in group.iter() {
                let m = &site.miners[i];
                let rack = m.rack;
                if topo.ancestors[rack].iter().any(|&x| capped[x])
                    || topo.rack_zone[rack].is_some_and(|z| capped_zone[z])
                {
                    continue;
                }
                let ms_ = &st.miners[i];
                let exempt = self.exempt(i);
                let cm = loads.miner_w[i];
                let a = allowed(loads, &ramp, &zone_room, rack);
                let (lever, intent, to) = match gi {
                    0 => {
                        if !exempt && now.saturating_sub(ms_.since) < ms(p.min_off_s) {
                            continue;
                        }
                        (Lever::OutletOn, Intent::Normal, m.nominal_w)
                    }
                    1 => {
                        if !exempt
                            && ms_
                                .slept_at
                                .is_some_and(|t| now.saturating_sub(t) < ms(p.min_off_s))
                        {
                            continue;
                        }
                        (Lever::Wake, Intent::Normal, m.nominal_w)
                    }
                    _ => {
                        let to = m.nominal_w.min(cm + a * 1000.0);
                        if to >= m.nominal_w - EPS_W {
                            (Lever::PowerTargetRaise, Intent::Normal, m.nominal_w)
                        } else {
                            (Lever::PowerTargetRaise, Intent::Target { w: to }, to)
                        }
                    }
                };
                let d = (to - cm) / 1000.0;
                if d <= EPS_W / 1000.0 || d > a + EPS_KW {
                    continue;
                }
                self.miner_act(
                    st,
                    loads,
                    i,
                    lever,
                    intent,
                    to,
                    Scope::Node(rack),
                    Reason::Restore,
                    false,
                );
                take(&mut ramp, &mut zone_room, &mut touched, rack, d);
            }
        }
        self.mark(st, &touched);
    }

    fn mark(&self, st: &mut ControlState, touched: &[bool]) {
        for (ns, &t) in st.nodes.iter_mut().zip(touched) {
            if t {
                ns.last_restore_at = Some(self.now);
            }
        }
    }
}

/// Whether readings taken after command `pd` to miner `i` show it carried out (fresh
/// readings only). The rule `decide` confirms commands by; the runtime also asks it when
/// a new HA leader finds commands its predecessor left in flight.
pub fn command_confirmed(
    site: &Site,
    snap: &Snapshot,
    i: usize,
    pd: &Pending,
    now: Millis,
) -> bool {
    let p = &site.policy;
    let m = &site.miners[i];
    let reading = snap
        .miner(i)
        .filter(|r| r.taken_at > pd.issued_at && fresh(r.taken_at, now, p.miner_stale_ms));
    let outlet = snap
        .outlet(i)
        .filter(|o| o.taken_at > pd.issued_at && fresh(o.taken_at, now, p.meter_stale_ms));
    match pd.lever {
        Lever::PowerTarget => reading.is_some_and(|r| {
            r.mode == MinerMode::Mining
                && (r
                    .power_target_w
                    .is_some_and(|t| (t - pd.to_w).abs() <= (0.02 * pd.to_w).max(10.0))
                    || r.power_w <= pd.to_w * 1.05 + 10.0)
        }),
        Lever::Sleep => reading.is_some_and(|r| {
            matches!(r.mode, MinerMode::Sleeping | MinerMode::Paused)
                || r.power_w <= m.idle_w * 1.5 + 50.0
        }),
        Lever::Wake | Lever::PowerTargetRaise => {
            reading.is_some_and(|r| r.mode == MinerMode::Mining)
        }
        Lever::OutletOff => outlet.is_some_and(|o| !o.on),
        Lever::OutletOn => outlet.is_some_and(|o| o.on),
        Lever::GpuCap | Lever::GpuCapLift => false,
    }
}
