//! Projected and measured load per node: the figures every decision compares with B.
//!
//! `P_proj = GPU_reserve + sum(miner committed power) + other measured load`, summed
//! per rack and added to every node above the rack (a dual-corded rack's whole load
//! counts against each feed of its pair). Stale inputs read as their worst case.

use rackwarden_config::{Miner, NodeIdx, RackKind, Site};

use super::snapshot::Snapshot;
use super::state::{ControlState, Intent, MinerState};
use super::topology::Topology;
use super::Millis;

/// Whether a reading taken at `taken_at` is still fresh at `now`.
pub fn fresh(taken_at: Millis, now: Millis, stale_ms: u64) -> bool {
    now.saturating_sub(taken_at) <= stale_ms
}

/// The power a miner's intent commits, watts.
pub fn commanded_w(m: &Miner, intent: Intent) -> f64 {
    match intent {
        Intent::Normal => m.nominal_w,
        Intent::Target { w } => w,
        Intent::Sleep => m.idle_w,
        Intent::OutletOff => 0.0,
    }
}

/// A miner's committed power, watts: the commanded power while a command is in flight
/// (feed-forward); afterwards the larger of commanded and measured; nameplate when its
/// reading is stale (an outlet read back off counts zero).
pub fn miner_committed_w(
    site: &Site,
    snap: &Snapshot,
    ms: &MinerState,
    i: usize,
    now: Millis,
) -> f64 {
    let m = &site.miners[i];
    let base = commanded_w(m, ms.intent);
    if ms.pending.is_some() {
        return base;
    }
    if ms.intent == Intent::OutletOff {
        return match snap.outlet(i) {
            Some(o) if !o.on && fresh(o.taken_at, now, site.policy.meter_stale_ms) => 0.0,
            _ => m.nominal_w,
        };
    }
    match snap.miner(i) {
        Some(r) if fresh(r.taken_at, now, site.policy.miner_stale_ms) => {
            base.max(r.power_w.max(0.0))
        }
        _ => m.nominal_w,
    }
}

/// A GPU node's reserve, kW: the sum of its enforced limits (the commanded cap while a
/// cap command is in flight). `None` when NVML is unavailable or its limits are stale:
/// the rack is then reserved at its rated maximum.
pub fn gpu_reserve_kw(
    site: &Site,
    snap: &Snapshot,
    st: &ControlState,
    g: usize,
    now: Millis,
) -> Option<f64> {
    let r = snap.gpu(g)?;
    if !r.nvml_available
        || r.gpus.is_empty()
        || !fresh(r.limits_taken_at, now, site.policy.gpu_limit_stale_ms)
    {
        return None;
    }
    let sum: f64 = r.gpus.iter().map(|l| l.enforced_w).sum();
    let count = f64::from(u32::try_from(r.gpus.len()).unwrap_or(u32::MAX));
    let w = match st.gpus.get(g).and_then(|s| s.pending) {
        Some(p) => match p.cap_w {
            Some(c) => c * count,
            None => sum.max(r.gpus.iter().map(|l| l.default_w).sum()),
        },
        None => sum,
    };
    Some(w / 1000.0)
}

/// The loads one decision works with; updated in place as the decision acts.
#[derive(Debug, Clone, PartialEq)]
pub struct Loads {
    /// Per miner: committed power, W.
    pub miner_w: Vec<f64>,
    /// Per GPU node: reserve, kW (`None`: not known from NVML).
    pub gpu_kw: Vec<Option<f64>>,
    /// Per node (racks only): the rack's GPU reserve, kW.
    pub rack_reserve_kw: Vec<f64>,
    /// Per node (racks only): peak other load and when that peak was set.
    pub other_kw: Vec<f64>,
    pub other_at: Vec<Millis>,
    /// Per rack: the GPU reserve the held `other_kw` was measured against.
    pub other_reserve_kw: Vec<f64>,
    /// Per node: projected load, kW.
    pub proj_kw: Vec<f64>,
    /// Per node: GPU reserve under it, kW.
    pub reserve_kw: Vec<f64>,
    /// Per node: miners' committed power under it, kW.
    pub miners_kw: Vec<f64>,
    /// Per node: fresh measured peak, kW.
    pub measured_kw: Vec<Option<f64>>,
    /// Per node: load shed by commands still in flight (not yet visible in meters), kW.
    pub pending_kw: Vec<f64>,
}

impl Loads {
    /// Computes every node's load from the snapshot and the state.
    pub fn compute(
        site: &Site,
        topo: &Topology,
        snap: &Snapshot,
        st: &ControlState,
        now: Millis,
    ) -> Loads {
        let n = site.nodes.len();
        let p = &site.policy;
        let default_ms = MinerState::default();
        let miner_w: Vec<f64> = (0..site.miners.len())
            .map(|i| miner_committed_w(site, snap, st.miners.get(i).unwrap_or(&default_ms), i, now))
            .collect();
        let gpu_kw: Vec<Option<f64>> = (0..site.gpu_nodes.len())
            .map(|g| gpu_reserve_kw(site, snap, st, g, now))
            .collect();
        let mut loads = Loads {
            miner_w,
            gpu_kw,
            rack_reserve_kw: vec![0.0; n],
            other_kw: vec![0.0; n],
            other_at: vec![now; n],
            other_reserve_kw: vec![0.0; n],
            proj_kw: vec![0.0; n],
            reserve_kw: vec![0.0; n],
            miners_kw: vec![0.0; n],
            measured_kw: vec![None; n],
            pending_kw: vec![0.0; n],
        };
        // Sheds in flight, per rack: meters do not show them yet.
        let mut pending_rack = vec![0.0; n];
        for (i, ms) in st.miners.iter().enumerate() {
            if let (Some(pd), Some(m)) = (ms.pending, site.miners.get(i)) {
                if pd.lever.is_shed() && pd.from_w > pd.to_w && m.rack < n {
                    pending_rack[m.rack] += (pd.from_w - pd.to_w) / 1000.0;
                }
            }
        }
        for (g, gs) in st.gpus.iter().enumerate() {
            let (Some(pd), Some(r), Some(gn)) = (gs.pending, snap.gpu(g), site.gpu_nodes.get(g))
            else {
                continue;
            };
            if let (Some(c), Some(res)) = (pd.cap_w, loads.gpu_kw[g]) {
                let enforced: f64 = r.gpus.iter().map(|l| l.enforced_w).sum::<f64>() / 1000.0;
                let count = f64::from(u32::try_from(r.gpus.len()).unwrap_or(0));
                let drop = enforced - res.min(c * count / 1000.0);
                if drop > 0.0 && gn.rack < n {
                    pending_rack[gn.rack] += drop;
                }
            }
        }
        for (i, node) in site.nodes.iter().enumerate() {
            loads.measured_kw[i] = snap
                .meter(i)
                .filter(|r| fresh(r.taken_at, now, p.meter_stale_ms))
                .map(|r| r.kw.max(r.max_kw));
            let Some(kind) = node.rack_kind() else {
                continue;
            };
            let gpus = &topo.rack_gpus[i];
            let reserve = if gpus.is_empty() {
                match kind {
                    RackKind::Mining => 0.0,
                    RackKind::Gpu | RackKind::Mixed => node.rated_max_kw.unwrap_or(0.0),
                }
            } else {
                let known: Option<f64> = gpus.iter().map(|&g| loads.gpu_kw[g]).sum();
                match (known, node.rated_max_kw) {
                    (Some(k), _) => k,
                    (None, Some(max)) => max,
                    (None, None) => gpus
                        .iter()
                        .map(|&g| {
                            let gn = &site.gpu_nodes[g];
                            loads.gpu_kw[g].unwrap_or(
                                f64::from(gn.gpus) * gn.gpu_max_w.unwrap_or(0.0) / 1000.0,
                            )
                        })
                        .sum(),
                }
            };
            let miners: f64 = topo.rack_miners[i]
                .iter()
                .map(|&m| loads.miner_w[m])
                .sum::<f64>()
                / 1000.0;
            // Other load: what the rack meter shows beyond the projection, held at its
            // peak for restore_hold_s so GPU swings never make it flicker.
            let now_other = snap
                .meter(i)
                .filter(|r| fresh(r.taken_at, now, p.meter_stale_ms))
                .map_or(0.0, |r| {
                    (r.kw - reserve - miners - pending_rack[i]).max(0.0)
                });
            let (prev, prev_at, prev_reserve) = st.nodes.get(i).map_or((0.0, now, reserve), |s| {
                (s.other_kw, s.other_at, s.other_reserve_kw)
            });
            // A held peak measured while the limits were lower partly is GPU load the
            // reserve now counts: take the reserve's rise off it.
            let prev = (prev - (reserve - prev_reserve).max(0.0)).max(0.0);
            let held = now.saturating_sub(prev_at) < p.restore_hold_s.saturating_mul(1000);
            let (other, other_at) = if now_other >= prev || !held {
                (now_other, now)
            } else {
                (prev, prev_at)
            };
            loads.rack_reserve_kw[i] = reserve;
            loads.other_kw[i] = other;
            loads.other_at[i] = other_at;
            loads.other_reserve_kw[i] = reserve;
            let total = reserve + miners + other;
            for &a in &topo.ancestors[i] {
                loads.proj_kw[a] += total;
                loads.reserve_kw[a] += reserve;
                loads.miners_kw[a] += miners;
                loads.pending_kw[a] += pending_rack[i];
            }
        }
        loads
    }

    /// `P_eff = max(P_proj, measured peak less what in-flight sheds will remove)`.
    pub fn eff_kw(&self, n: NodeIdx) -> f64 {
        let meas = self.measured_kw[n].map_or(0.0, |m| m - self.pending_kw[n]);
        self.proj_kw[n].max(meas)
    }
}
