//! The decision function: one tick of the control policy of docs/control.md.
//!
//! Order within a tick, one file each:
//! - `telemetry.rs`: freshness of every input, its alerts, the start-up gate;
//! - `confirm.rs`: commands in flight confirmed by read-back (learning each miner's shed
//!   and restore times) or expired, and the escalation of the expired ones;
//! - loads ([`super::Loads`]: S, X, `P_proj`, `P_worst` per node);
//! - `act.rs`: the levers (one function per kind of command) and operator overrides;
//! - `power.rs`: per node, deepest first: emergency, over budget, excursion above B,
//!   the ceiling H, slow miners in the trough, a silent meter;
//! - `shed.rs`: the shed of one constraint in lever order;
//! - `grid.rs`: a grid limit on the site (every tick), price curtailment (slow tick);
//! - `cooling.rs` (slow tick): N+1 and N per zone;
//! - `restore.rs` (slow tick): restore holds, then GPU caps first, then power targets,
//!   wakes and outlets in seeded order, under the mining allowance `M_n`.

mod act;
mod confirm;
mod cooling;
pub mod grid;
mod power;
mod restore;
mod shed;
mod telemetry;

use rackwarden_config::{Miner, NodeIdx, Policy, PowerNode, Site};

use super::load::{fresh, Loads};
use super::plan::{Action, Alert, NodeView, Plan, Scope};
use super::snapshot::{GpuNodeReading, Snapshot};
use super::state::{Band, ControlState, Intent, MinerState};
use super::topology::Topology;
use super::{Millis, Tick};

pub use confirm::command_confirmed;

/// Below a watt is noise.
const EPS_W: f64 = 1.0;
/// Comparisons of kW figures.
const EPS_KW: f64 = 1e-6;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// A silent node meter with nothing below to bound it holds its miners to this
/// fraction of B less the sustained GPU reserve.
const SILENT_FRACTION: f64 = 0.8;

/// How a shed may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Straight to sleep, outlets for what does not sleep, anti-cycling waived.
    Emergency,
    /// Lever order (targets down as far as needed, then sleep), anti-cycling waived:
    /// the load must be off in this decision (over B, above H, a silent meter, a lost
    /// N+1).
    Now,
}

fn ms(s: u64) -> u64 {
    s.saturating_mul(1000)
}

/// The band of node `node` with effective load `eff_kw` and measured peak `measured_kw`.
pub(crate) fn band_of(
    p: &Policy,
    node: &PowerNode,
    eff_kw: f64,
    measured_kw: Option<f64>,
    over_rating: bool,
) -> Band {
    let b = node.budget_kw;
    if over_rating || measured_kw.is_some_and(|m| m >= p.emergency_fraction * node.ceiling_kw) {
        Band::Emergency
    } else if eff_kw >= p.shed_fraction * b {
        Band::Shed
    } else if eff_kw <= p.restore_fraction * b + EPS_KW {
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

/// The limits one per-GPU value must keep on a GPU node: inside every GPU's constraints.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GpuBounds {
    /// Highest minimum constraint, W.
    lo_w: f64,
    /// Lowest maximum constraint, W.
    hi_w: f64,
    /// Lowest default limit (within `hi_w`), W.
    default_w: f64,
    count: f64,
}

fn gpu_bounds(r: &GpuNodeReading) -> Option<GpuBounds> {
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
    (lo <= hi).then_some(GpuBounds {
        lo_w: lo,
        hi_w: hi,
        default_w: def,
        count,
    })
}

struct Cx<'a> {
    site: &'a Site,
    topo: &'a Topology,
    snap: &'a Snapshot,
    p: &'a Policy,
    now: Millis,
    actions: Vec<Action>,
    alerts: Vec<Alert>,
    grid_shortfall_kw: f64,
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
        grid_shortfall_kw: 0.0,
    };
    cx.telemetry(&mut st);
    let expired = cx.confirm(&mut st);
    let mut loads = Loads::compute(site, topo, snap, &st, now);
    cx.carry_loads(&mut st, &mut loads);
    let frozen = cx.frozen();
    let nodes = cx.views(&loads, &frozen);
    cx.trough_alerts(&mut st, &loads);
    cx.escalate(&mut st, &mut loads, &expired);
    cx.operator(&mut st, &mut loads);
    cx.power(&mut st, &mut loads);
    cx.grid(&mut st, &mut loads);
    let zones = if tick == Tick::Slow {
        cx.cooling(&mut st, &mut loads)
    } else {
        Vec::new()
    };
    cx.holds(&mut st, &loads, &frozen);
    if tick == Tick::Slow {
        cx.price(&mut st, &mut loads);
    }
    if tick == Tick::Slow && st.startup_done {
        cx.restore(&mut st, &mut loads, &frozen, &zones);
    }
    let price_curtailed = (0..site.miners.len())
        .filter(|&i| matches!(st.miners[i].intent, Intent::Sleep) && cx.price_blocked(i))
        .count();
    Plan {
        actions: cx.actions,
        alerts: cx.alerts,
        state: st,
        nodes,
        zones,
        grid_shortfall_kw: cx.grid_shortfall_kw,
        price_curtailed,
    }
}

impl Cx<'_> {
    fn alert(&mut self, a: Alert) {
        self.alerts.push(a);
    }

    /// Keeps what the loads learned (held other load, rolling peaks) and the running
    /// means of the thermal guard in the state.
    fn carry_loads(&self, st: &mut ControlState, loads: &mut Loads) {
        for (i, ns) in st.nodes.iter_mut().enumerate() {
            ns.other_kw = loads.other_kw[i];
            ns.other_at = loads.other_at[i];
            ns.other_reserve_kw = 0.0;
            ns.peak = loads.peaks[i].take();
            if let Some(m) = loads.measured_kw[i] {
                ns.mean = Some(power::running_mean(ns.mean, m, self.now));
            }
        }
    }

    /// The nodes as this decision saw them, before its actions.
    fn views(&self, loads: &Loads, frozen: &[bool]) -> Vec<NodeView> {
        let allowance = self.path_min(loads, |n| loads.allowance_kw(self.site, n));
        let guaranteed = self.path_min(loads, |n| loads.guaranteed_kw(self.site, n));
        self.site
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| NodeView {
                budget_kw: node.budget_kw,
                ceiling_kw: node.ceiling_kw,
                proj_kw: loads.proj_kw[i],
                worst_kw: loads.worst_kw[i],
                eff_kw: loads.eff_kw(i),
                measured_kw: loads.measured_kw[i],
                gpu_reserve_kw: loads.worst_reserve_kw[i],
                gpu_sustained_kw: loads.reserve_kw[i],
                mining_allowance_kw: allowance[i],
                guaranteed_kw: guaranteed[i],
                mining_kw: loads.miners_kw[i],
                band: band_of(
                    self.p,
                    node,
                    loads.eff_kw(i),
                    self.measured_or_worst(loads, i),
                    self.over_rating(loads, i),
                ),
                frozen: frozen[i],
            })
            .collect()
    }

    /// Per node: a mining limit of the node's own (`own(n)`: the most mining it may
    /// hold), lowered to what each ancestor leaves it (the ancestor's limit less its
    /// mining elsewhere), kW.
    fn path_min(&self, loads: &Loads, own: impl Fn(NodeIdx) -> f64) -> Vec<f64> {
        let n = self.site.nodes.len();
        let mine: Vec<f64> = (0..n).map(&own).collect();
        (0..n)
            .map(|i| {
                self.topo.ancestors[i]
                    .iter()
                    .map(|&a| mine[a] - (loads.miners_kw[a] - loads.miners_kw[i]))
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
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

    /// The node's measured load, or, where its meter is stale, its worst case: the
    /// projection (a stale meter never hides an emergency).
    fn measured_or_worst(&self, loads: &Loads, n: NodeIdx) -> Option<f64> {
        match loads.measured_kw[n] {
            Some(m) => Some(m),
            None if !self.site.nodes[n].meters.is_empty() => Some(loads.proj_kw[n]),
            None => None,
        }
    }

    fn over_rating(&self, loads: &Loads, n: NodeIdx) -> bool {
        let r = self.site.nodes[n].rating_kw;
        r > 0.0 && self.measured_or_worst(loads, n).is_some_and(|m| m > r)
    }

    fn scope_id(&self, scope: Scope, device: &str) -> String {
        match scope {
            Scope::Node(n) => self.site.nodes[n].id.clone(),
            Scope::Zone(z) => self.site.zones[z].id.clone(),
            Scope::Device => device.to_owned(),
        }
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
}
