//! The loads every decision compares with the two limits of a node (docs/control.md,
//! "Model"):
//!
//! - per GPU rack, the worst-case reserve `X` (its GPUs' enforced limits plus its non-GPU
//!   peak, or its `rated_max_kw` without GPU telemetry) and the sustained reserve
//!   `S = min(X, rolling peak of its measured load + uplift)` (`S = X` with
//!   `reserve = "limits"` or stale telemetry);
//! - per node, `P_proj = sum(S) + miners' committed power + other load` (held at its
//!   peak) and `P_worst = sum(X) + miners + other`, summed per rack and added to every
//!   node above the rack (a dual-corded rack's whole load counts against each feed of
//!   its pair). Stale inputs read as their worst case.

use rackwarden_config::{GpuReserve, Miner, NodeIdx, Policy, RackKind, Site};

use super::snapshot::Snapshot;
use super::state::{ControlState, Intent, MinerState, PeakTrack};
use super::topology::Topology;
use super::Millis;

/// The uplift of S above the rolling peak: `max(3% of X, 2 kW)`.
pub const UPLIFT_FRACTION: f64 = 0.03;
pub const UPLIFT_MIN_KW: f64 = 2.0;
/// The rolling peak falls by at most this fraction of X per minute.
pub const DECAY_FRACTION_PER_MIN: f64 = 0.02;
const MINUTE_MS: u64 = 60_000;

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
/// reading is stale or it has no driver (an outlet read back off counts zero).
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
    if snap.undriveable(i) {
        return m.nominal_w;
    }
    match snap.miner(i) {
        Some(r) if fresh(r.taken_at, now, site.policy.miner_stale_ms) => {
            base.max(r.power_w.max(0.0))
        }
        _ => m.nominal_w,
    }
}

/// Whether miner `i` may hold trough headroom: it has a driver, can sleep, and its
/// learned p99 shed time is within `policy.fast_shed_s`.
pub fn miner_fast(site: &Site, snap: &Snapshot, ms: &MinerState, i: usize) -> bool {
    let m = &site.miners[i];
    !snap.undriveable(i)
        && m.firmware.levers().sleep
        && u64::from(ms.times.shed(m.firmware.default_shed_ms()).p99_ms)
            <= site.policy.fast_shed_s.saturating_mul(1000)
}

/// A GPU node's enforced limits, kW (the commanded cap while a cap command is in
/// flight). `None` when NVML is unavailable or its limits are stale.
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

/// The uplift of S over the peak for a rack whose worst case is `x_kw`.
pub fn uplift_kw(x_kw: f64) -> f64 {
    (UPLIFT_FRACTION * x_kw).max(UPLIFT_MIN_KW)
}

/// One GPU rack's measured AI load (its meter less its miners), kW.
#[derive(Debug, Clone, Copy, PartialEq)]
struct AiReading {
    /// Peak over the meter's last interval.
    peak_kw: f64,
    /// The meter's present value.
    now_kw: f64,
}

/// What a GPU rack's meter says of its AI load this decision.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AiRead {
    Fresh(AiReading),
    /// A miner command in flight in the rack: the last peak stands.
    Busy,
    /// Meter or a miner stale: S = X, the rolling peak waits for fresh readings. With a
    /// fresh meter, a stale miner and no command in flight in the rack, the meter less
    /// the miners with the stale ones at their committed power (nameplate, their worst
    /// case): a lower bound of the load beside the miners, which still counts in X and
    /// in the other load (a stale miner must not hide what the meter shows).
    Stale(Option<AiReading>),
}

/// The two reserves of one rack.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RackReserve {
    /// Worst case X, kW.
    pub worst_kw: f64,
    /// Sustained S, kW.
    pub sustained_kw: f64,
    /// The rolling peak covers a whole window: trough filling may count on S.
    pub warm: bool,
}

/// The loads one decision works with; updated in place as the decision acts.
#[derive(Debug, Clone, PartialEq)]
pub struct Loads {
    /// Per miner: committed power, W.
    pub miner_w: Vec<f64>,
    /// Per miner: may hold trough headroom ([`miner_fast`]).
    pub fast: Vec<bool>,
    /// Per GPU node: its enforced limits, kW (`None`: not known from NVML).
    pub gpu_kw: Vec<Option<f64>>,
    /// Per node (racks only): the rack's reserves.
    pub rack: Vec<RackReserve>,
    /// Per node (GPU and mixed racks): the rolling peak after this decision's reading.
    pub peaks: Vec<Option<PeakTrack>>,
    /// Per node (racks only): peak other load and when that peak was set.
    pub other_kw: Vec<f64>,
    pub other_at: Vec<Millis>,
    /// Per rack: the GPU reserve the held `other_kw` was measured against.
    pub other_reserve_kw: Vec<f64>,
    /// Per node: `P_proj`, kW.
    pub proj_kw: Vec<f64>,
    /// Per node: `P_worst`, kW.
    pub worst_kw: Vec<f64>,
    /// Per node: `sum(S)` under it, kW.
    pub reserve_kw: Vec<f64>,
    /// Per node: `sum(X)` under it, kW.
    pub worst_reserve_kw: Vec<f64>,
    /// Per node: `sum(X - S)` of the racks under it whose peak window is not full yet
    /// (restores count them at X).
    pub cold_kw: Vec<f64>,
    /// Per node: other (non-GPU, non-miner) load under it, kW.
    pub others_kw: Vec<f64>,
    /// Per node: miners' committed power under it, kW.
    pub miners_kw: Vec<f64>,
    /// Per node: committed power of the miners under it that are not fast, kW.
    pub slow_kw: Vec<f64>,
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
        let ms_of = |i: usize| st.miners.get(i).unwrap_or(&default_ms);
        let miner_w: Vec<f64> = (0..site.miners.len())
            .map(|i| miner_committed_w(site, snap, ms_of(i), i, now))
            .collect();
        let fast = (0..site.miners.len())
            .map(|i| miner_fast(site, snap, ms_of(i), i))
            .collect();
        let gpu_kw: Vec<Option<f64>> = (0..site.gpu_nodes.len())
            .map(|g| gpu_reserve_kw(site, snap, st, g, now))
            .collect();
        let mut loads = Loads {
            miner_w,
            fast,
            gpu_kw,
            rack: vec![RackReserve::default(); n],
            peaks: vec![None; n],
            other_kw: vec![0.0; n],
            other_at: vec![now; n],
            other_reserve_kw: vec![0.0; n],
            proj_kw: vec![0.0; n],
            worst_kw: vec![0.0; n],
            reserve_kw: vec![0.0; n],
            worst_reserve_kw: vec![0.0; n],
            cold_kw: vec![0.0; n],
            others_kw: vec![0.0; n],
            miners_kw: vec![0.0; n],
            slow_kw: vec![0.0; n],
            measured_kw: vec![None; n],
            pending_kw: vec![0.0; n],
        };
        let pending_rack = pending_per_rack(site, snap, st, &loads);
        for (i, node) in site.nodes.iter().enumerate() {
            loads.measured_kw[i] = snap
                .meter(i)
                .filter(|r| fresh(r.taken_at, now, p.meter_stale_ms))
                .map(|r| r.kw.max(r.max_kw));
            let Some(kind) = node.rack_kind() else {
                continue;
            };
            let miners: f64 = topo.rack_miners[i]
                .iter()
                .map(|&m| loads.miner_w[m])
                .sum::<f64>()
                / 1000.0;
            let slow: f64 = topo.rack_miners[i]
                .iter()
                .filter(|&&m| !loads.fast[m])
                .map(|&m| loads.miner_w[m])
                .sum::<f64>()
                / 1000.0;
            let (reserve, other_now) = if kind == RackKind::Mining && topo.rack_gpus[i].is_empty() {
                let other = snap
                    .meter(i)
                    .filter(|r| fresh(r.taken_at, now, p.meter_stale_ms))
                    .map_or(0.0, |r| (r.kw - miners - pending_rack[i]).max(0.0));
                (RackReserve::default(), other)
            } else {
                let (reserve, other) = loads.gpu_rack(site, topo, snap, st, i, now);
                // A cap in flight: the meter still shows what it will take off.
                (reserve, (other - pending_rack[i]).max(0.0))
            };
            let other = loads.held_other(site, st, i, other_now, now);
            loads.rack[i] = reserve;
            let cold = if reserve.warm {
                0.0
            } else {
                reserve.worst_kw - reserve.sustained_kw
            };
            for &a in &topo.ancestors[i] {
                loads.proj_kw[a] += reserve.sustained_kw + miners + other;
                loads.worst_kw[a] += reserve.worst_kw + miners + other;
                loads.reserve_kw[a] += reserve.sustained_kw;
                loads.worst_reserve_kw[a] += reserve.worst_kw;
                loads.cold_kw[a] += cold;
                loads.others_kw[a] += other;
                loads.miners_kw[a] += miners;
                loads.slow_kw[a] += slow;
                loads.pending_kw[a] += pending_rack[i];
            }
        }
        loads
    }

    /// A rack's other load (what its meter shows beyond its miners and its GPU
    /// reserve), held at its peak for `restore_hold_s` so it never flickers.
    fn held_other(
        &mut self,
        site: &Site,
        st: &ControlState,
        i: NodeIdx,
        now_other: f64,
        now: Millis,
    ) -> f64 {
        let p = &site.policy;
        let (prev, prev_at) = st
            .nodes
            .get(i)
            .map_or((0.0, now), |s| (s.other_kw, s.other_at));
        let held = now.saturating_sub(prev_at) < p.restore_hold_s.saturating_mul(1000);
        let (other, at) = if now_other >= prev || !held {
            (now_other, now)
        } else {
            (prev, prev_at)
        };
        self.other_kw[i] = other;
        self.other_at[i] = at;
        other
    }

    /// A GPU or mixed rack's reserves and the load its meter shows above X (other
    /// load), and its rolling peak updated with this reading.
    fn gpu_rack(
        &mut self,
        site: &Site,
        topo: &Topology,
        snap: &Snapshot,
        st: &ControlState,
        i: NodeIdx,
        now: Millis,
    ) -> (RackReserve, f64) {
        let p = &site.policy;
        let node = &site.nodes[i];
        let gpus = &topo.rack_gpus[i];
        let limits: Option<f64> = if gpus.is_empty() {
            None
        } else {
            gpus.iter().map(|&g| self.gpu_kw[g]).sum()
        };
        let read = self.ai_reading(site, topo, snap, st, i, now);
        // What the meter shows beside the miners: a fresh reading, or with a stale miner
        // the bound its nameplate leaves (for X and the other load, never for the peak).
        let (ai, seen) = match read {
            AiRead::Fresh(a) => (Some(a), Some(a)),
            AiRead::Stale(bound) => (None, bound),
            AiRead::Busy => (None, None),
        };
        // Non-GPU load: the rack meter less its GPUs' measured power; a stale power
        // reading reads as its worst case, the limits.
        let gpu_power: Option<f64> = if gpus.is_empty() {
            None
        } else {
            gpus.iter()
                .map(|&g| {
                    snap.gpu(g).filter(|r| r.nvml_available).and_then(|r| {
                        if fresh(r.power_taken_at, now, p.gpu_power_stale_ms) {
                            Some(r.power_w / 1000.0)
                        } else {
                            self.gpu_kw[g]
                        }
                    })
                })
                .sum()
        };
        let prev = st.nodes.get(i).and_then(|s| s.peak.clone());
        let base_x = match (limits, node.rated_max_kw) {
            (Some(k), _) => k,
            (None, Some(max)) => max,
            (None, None) => gpus
                .iter()
                .map(|&g| {
                    let gn = &site.gpu_nodes[g];
                    f64::from(gn.gpus) * gn.gpu_max_w.unwrap_or(0.0) / 1000.0
                })
                .sum(),
        };
        let prev_non_gpu = prev.as_ref().map_or(0.0, |t| t.non_gpu_kw);
        let non_gpu_now = match (seen, limits, gpu_power) {
            (Some(a), Some(_), Some(g)) => (a.now_kw - g).max(0.0),
            _ => 0.0,
        };
        // X: the limits (or rated maximum) plus the non-GPU peak. The rolling peak is
        // of the load within X; what the meter shows above X is other load.
        let worst_now = base_x
            + if limits.is_some() {
                non_gpu_now.max(prev_non_gpu)
            } else {
                0.0
            };
        let track = match ai {
            Some(a) => Some(update_peak(
                prev,
                a.peak_kw.min(worst_now),
                non_gpu_now,
                base_x,
                p,
                now,
            )),
            None => prev,
        };
        let non_gpu = match (limits, read) {
            // A stale miner: the held peak, or more where the meter (less the miner at
            // nameplate) shows more now; the peak itself is left as it was.
            (Some(_), AiRead::Stale(_)) => track
                .as_ref()
                .map_or(0.0, |t| t.non_gpu_kw)
                .max(non_gpu_now),
            (Some(_), _) => track.as_ref().map_or(0.0, |t| t.non_gpu_kw),
            (None, _) => 0.0,
        };
        let worst = base_x + non_gpu;
        // With GPU telemetry every non-GPU watt is in X already; without, what the
        // meter shows above the rated maximum is other load.
        let other = match (limits, seen) {
            (None, Some(a)) => (a.now_kw - worst).max(0.0),
            _ => 0.0,
        };
        let measured = node.reserve == GpuReserve::Measured;
        let sustained = match (&track, read, measured) {
            (Some(t), AiRead::Fresh(_) | AiRead::Busy, true) => {
                worst.min(t.peak_kw + uplift_kw(worst))
            }
            _ => worst,
        };
        let warm = measured
            && !matches!(read, AiRead::Stale(_))
            && track.as_ref().is_some_and(|t| {
                now.saturating_sub(t.since) >= p.reserve_window_s.saturating_mul(1000)
            });
        self.peaks[i] = track;
        (
            RackReserve {
                worst_kw: worst,
                sustained_kw: sustained,
                warm,
            },
            other,
        )
    }

    /// The rack's meter less its miners' committed power. Stale when the meter or any of
    /// the rack's miners is (with a fresh meter and no command in flight, the reading
    /// with the stale miners at their committed power, nameplate, comes along as a
    /// bound); busy while a command to one of its miners is in flight (the meter and the
    /// miner's reading may disagree about it for seconds: neither is taken as AI load,
    /// the last peak stands).
    fn ai_reading(
        &self,
        site: &Site,
        topo: &Topology,
        snap: &Snapshot,
        st: &ControlState,
        i: NodeIdx,
        now: Millis,
    ) -> AiRead {
        let p = &site.policy;
        let Some(meter) = snap
            .meter(i)
            .filter(|r| fresh(r.taken_at, now, p.meter_stale_ms))
        else {
            return AiRead::Stale(None);
        };
        let mut miners = 0.0;
        let mut busy = false;
        let mut stale = false;
        for &m in &topo.rack_miners[i] {
            let ms = st.miners.get(m);
            busy |= ms.is_some_and(|s| s.pending.is_some());
            let off = snap
                .outlet(m)
                .is_some_and(|o| !o.on && fresh(o.taken_at, now, p.meter_stale_ms));
            if off {
                continue;
            }
            if !snap
                .miner(m)
                .is_some_and(|r| fresh(r.taken_at, now, p.miner_stale_ms))
            {
                stale = true;
            }
            // Its committed power (at least its reading; nameplate when stale): what the
            // projection counts for it is not counted again as AI load.
            miners += self.miner_w[m] / 1000.0;
        }
        let reading = AiReading {
            peak_kw: (meter.kw.max(meter.max_kw) - miners).max(0.0),
            now_kw: (meter.kw - miners).max(0.0),
        };
        if stale {
            // A command in flight: the meter still shows what the command takes off
            // (the miner counts at its commanded power already), so no bound either.
            AiRead::Stale((!busy).then_some(reading))
        } else if busy {
            AiRead::Busy
        } else {
            AiRead::Fresh(reading)
        }
    }

    /// `P_eff = max(P_proj, measured peak less what in-flight sheds will remove)`.
    pub fn eff_kw(&self, n: NodeIdx) -> f64 {
        let meas = self.measured_kw[n].map_or(0.0, |m| m - self.pending_kw[n]);
        self.proj_kw[n].max(meas)
    }

    /// The load restores compare with the fill line: `P_eff` with the racks whose
    /// peak window is not full yet counted at X.
    pub fn fill_kw(&self, n: NodeIdx) -> f64 {
        let meas = self.measured_kw[n].map_or(0.0, |m| m - self.pending_kw[n]);
        (self.proj_kw[n] + self.cold_kw[n]).max(meas)
    }

    /// The guaranteed mining allocation of node `n`: `B - sum(X) - other`, kW (what any
    /// miner may hold whatever the AI load does).
    pub fn guaranteed_kw(&self, site: &Site, n: NodeIdx) -> f64 {
        site.nodes[n].budget_kw - self.worst_reserve_kw[n] - self.others_kw[n]
    }

    /// The mining allowance `M_n` of node `n` alone (without its ancestors): `min(F -
    /// sum(S) - other, H - sum(X) - other)` with the fill line `F =
    /// restore_fraction x B`, kW.
    pub fn allowance_kw(&self, site: &Site, n: NodeIdx) -> f64 {
        let node = &site.nodes[n];
        let f = site.policy.restore_fraction * node.budget_kw;
        (f - self.reserve_kw[n] - self.others_kw[n])
            .min(node.ceiling_kw - self.worst_reserve_kw[n] - self.others_kw[n])
    }
}

/// Sheds in flight, per rack, kW: meters do not show them yet.
fn pending_per_rack(site: &Site, snap: &Snapshot, st: &ControlState, loads: &Loads) -> Vec<f64> {
    let n = site.nodes.len();
    let mut pending_rack = vec![0.0; n];
    for (i, ms) in st.miners.iter().enumerate() {
        if let (Some(pd), Some(m)) = (ms.pending, site.miners.get(i)) {
            if pd.lever.is_shed() && pd.from_w > pd.to_w && m.rack < n {
                pending_rack[m.rack] += (pd.from_w - pd.to_w) / 1000.0;
            }
        }
    }
    for (g, gs) in st.gpus.iter().enumerate() {
        let (Some(pd), Some(r), Some(gn)) = (gs.pending, snap.gpu(g), site.gpu_nodes.get(g)) else {
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
    pending_rack
}

/// The rolling peak after a reading of `peak_kw` (and a non-GPU load of `non_gpu_kw`)
/// at `now`: per-minute maxima over `reserve_window_s`; the peak rises at once and
/// falls by at most [`DECAY_FRACTION_PER_MIN`] of `x_kw` a minute.
pub fn update_peak(
    prev: Option<PeakTrack>,
    peak_kw: f64,
    non_gpu_kw: f64,
    x_kw: f64,
    p: &Policy,
    now: Millis,
) -> PeakTrack {
    let mut t = prev.unwrap_or(PeakTrack {
        since: now,
        at: now,
        peak_kw,
        last_kw: peak_kw,
        minutes: Vec::new(),
        non_gpu_kw,
    });
    t.last_kw = peak_kw;
    let minute = now / MINUTE_MS;
    match t.minutes.last_mut() {
        Some((m, kw)) if *m == minute => *kw = kw.max(peak_kw),
        _ => t.minutes.push((minute, peak_kw)),
    }
    let window_min = p.reserve_window_s.div_ceil(60).max(1);
    t.minutes.retain(|&(m, _)| m + window_min > minute);
    let window_peak = t.minutes.iter().map(|&(_, kw)| kw).fold(0.0, f64::max);
    // Both are whole milliseconds far below 2^53: exact as f64.
    #[allow(clippy::cast_precision_loss)]
    let minutes = now.saturating_sub(t.at) as f64 / 60_000.0;
    let fall = DECAY_FRACTION_PER_MIN * x_kw * minutes;
    t.peak_kw = if window_peak >= t.peak_kw {
        window_peak
    } else {
        window_peak.max(t.peak_kw - fall)
    };
    t.non_gpu_kw = non_gpu_kw.max(t.non_gpu_kw - fall);
    t.at = now;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::default()
    }

    #[test]
    fn peak_rises_at_once_and_falls_at_most_two_percent_of_x_a_minute() {
        let p = policy();
        let x = 100.0;
        let mut t = update_peak(None, 80.0, 0.0, x, &p, 0);
        assert!((t.peak_kw - 80.0).abs() < 1e-9);
        // A trough: within the window the peak holds.
        for s in 1..=600u64 {
            t = update_peak(Some(t), 30.0, 0.0, x, &p, s * 1000);
        }
        assert!(
            (t.peak_kw - 80.0).abs() < 1e-9,
            "held inside the window: {}",
            t.peak_kw
        );
        // Past the window the minute maxima expire; the fall is bounded.
        for s in 601..=1_860u64 {
            t = update_peak(Some(t), 30.0, 0.0, x, &p, s * 1000);
        }
        let t_before = t.peak_kw;
        t = update_peak(Some(t), 30.0, 0.0, x, &p, 1_920_000);
        assert!(
            t_before - t.peak_kw <= 2.0 + 1e-9,
            "fell {}",
            t_before - t.peak_kw
        );
        assert!(t.peak_kw >= 30.0);
        // A new high counts at once.
        t = update_peak(Some(t), 95.0, 0.0, x, &p, 1_921_000);
        assert!((t.peak_kw - 95.0).abs() < 1e-9);
    }

    #[test]
    fn peak_update_at_the_same_instant_changes_nothing() {
        let p = policy();
        let t = update_peak(None, 50.0, 3.0, 100.0, &p, 10_000);
        let again = update_peak(Some(t.clone()), 50.0, 3.0, 100.0, &p, 10_000);
        assert_eq!(t, again);
    }
}
