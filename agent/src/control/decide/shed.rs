//! The shed of one constraint, in lever order: power targets down (spread first, by at
//! most `target_decrease_factor` each, then as far as needed), sleep, outlets (in an
//! emergency, or for a miner that has no other lever), and GPU caps last, only when no
//! mining with a lever left draws above idle.

use super::super::load::Loads;
use super::super::plan::{Lever, Reason, Scope};
use super::super::state::{ControlState, Intent};
use super::act::{GpuCmd, MinerCmd};
use super::{gpu_bounds, has_target, outlet_cycling_ok, Cx, Mode, EPS_KW, EPS_W};

/// One shed: what to take off, from which devices, how.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shed<'a> {
    pub scope: Scope,
    /// Candidates, in shed order.
    pub miners: &'a [usize],
    pub gpus: &'a [usize],
    pub need_kw: f64,
    /// Never shed more than needed plus this, kW (but one smallest step when nothing
    /// smaller fits).
    pub margin_kw: f64,
    pub mode: Mode,
    pub reason: Reason,
    /// GPU caps allowed once no mining is left.
    pub allow_gpu: bool,
    /// The need is in the worst case (`P_worst`): a GPU cap counts by what it takes off
    /// X, not S.
    pub worst: bool,
}

/// A GPU node a cap could lower.
#[derive(Debug, Clone, Copy)]
struct CapCandidate {
    g: usize,
    /// What the cap works down from, kW: the node's draw (sustained needs) or its
    /// limits (worst-case needs).
    from_kw: f64,
    floor_kw: f64,
    lo_w: f64,
    hi_w: f64,
    count: f64,
}

impl Cx<'_> {
    fn sleep_eligible(&self, st: &ControlState, i: usize) -> bool {
        let m = &self.site.miners[i];
        let ms_ = &st.miners[i];
        if ms_.pending.is_some_and(|pd| pd.lever != Lever::PowerTarget)
            || !matches!(ms_.intent, Intent::Normal | Intent::Target { .. })
            || !m.firmware.levers().sleep
            || self.snap.undriveable(i)
        {
            return false;
        }
        // Lever order: a miner with a power target is slept only once its target is at
        // the floor, or when it ignored a target.
        let target_done = match ms_.intent {
            Intent::Target { w } => m.min_w.is_some_and(|min| w <= min + EPS_W),
            _ => false,
        };
        !has_target(m) || ms_.failed == Some(Lever::PowerTarget) || target_done
    }

    /// Whether miner `i` still draws above idle with a lever left (GPU caps wait for it).
    fn blocks_caps(&self, st: &ControlState, loads: &Loads, i: usize) -> bool {
        let m = &self.site.miners[i];
        let ms_ = &st.miners[i];
        if loads.miner_w[i] <= m.idle_w + EPS_W {
            return false;
        }
        let api = m.firmware.levers().sleep && !self.snap.undriveable(i);
        match ms_.intent {
            Intent::Normal | Intent::Target { .. } => api || self.topo.outlet_ok[i],
            Intent::Sleep => self.topo.outlet_ok[i] && ms_.pending.is_none(),
            Intent::OutletOff => false,
        }
    }

    /// Sheds `s.need_kw`; returns what could not be shed, kW.
    pub(super) fn shed(&mut self, st: &mut ControlState, loads: &mut Loads, s: Shed<'_>) -> f64 {
        let mut rem = s.need_kw;
        if s.mode != Mode::Emergency {
            rem = self.targets_down(st, loads, &s, rem, true);
            rem = self.targets_down(st, loads, &s, rem, false);
        }
        rem = self.sleeps(st, loads, &s, rem);
        rem = self.outlets(st, loads, &s, rem);
        if rem > EPS_KW && s.allow_gpu && self.p.allow_gpu_caps {
            if s.miners.iter().any(|&i| self.blocks_caps(st, loads, i)) {
                return rem;
            }
            rem = self.caps(st, loads, &s, rem);
        }
        rem
    }

    /// Power targets down, never more than needed: `spread` lowers each by at most
    /// `target_decrease_factor`, the second pass as far as the floor.
    fn targets_down(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        s: &Shed<'_>,
        mut rem: f64,
        spread: bool,
    ) -> f64 {
        let site = self.site;
        for &i in s.miners {
            if rem <= EPS_KW {
                break;
            }
            let m = &site.miners[i];
            let ms_ = &st.miners[i];
            let replacing = ms_
                .pending
                .is_some_and(|p| p.lever == Lever::PowerTarget && !spread);
            if (ms_.pending.is_some() && !replacing)
                || !has_target(m)
                || ms_.failed == Some(Lever::PowerTarget)
                || self.curtailed(i)
                || self.snap.undriveable(i)
            {
                continue;
            }
            let cur = match ms_.intent {
                Intent::Normal => m.nominal_w,
                Intent::Target { w } => w,
                _ => continue,
            };
            let min = m.min_w.unwrap_or(m.nominal_w).min(m.nominal_w);
            let step = if spread {
                cur * self.p.target_decrease_factor
            } else {
                min
            };
            let new = step.max(min).max(cur - rem * 1000.0).min(cur);
            if new >= cur - EPS_W {
                continue;
            }
            let before = loads.miner_w[i];
            let cmd = MinerCmd {
                lever: Lever::PowerTarget,
                intent: Intent::Target { w: new },
                to_w: new,
                scope: s.scope,
                reason: s.reason,
                emergency: false,
            };
            self.miner_act(st, loads, i, cmd);
            rem -= (before - new) / 1000.0;
        }
        rem
    }

    /// Sleep, in shed order; never more than needed plus the margin, except one
    /// smallest step when nothing smaller fits.
    fn sleeps(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        s: &Shed<'_>,
        mut rem: f64,
    ) -> f64 {
        if rem <= EPS_KW {
            return rem;
        }
        let mut fallback: Option<(usize, f64)> = None;
        for &i in s.miners {
            if rem <= EPS_KW {
                break;
            }
            let eligible = self.sleep_eligible(st, i)
                || (s.mode == Mode::Emergency && self.emergency_sleepable(st, i));
            if !eligible {
                continue;
            }
            let d = (loads.miner_w[i] - self.site.miners[i].idle_w) / 1000.0;
            if d <= EPS_KW {
                continue;
            }
            if d > rem + s.margin_kw {
                if fallback.is_none_or(|(_, fd)| d < fd) {
                    fallback = Some((i, d));
                }
                continue;
            }
            self.sleep(st, loads, i, s.scope, s.reason, true);
            rem -= d;
        }
        if rem > EPS_KW {
            if let Some((i, d)) = fallback {
                self.sleep(st, loads, i, s.scope, s.reason, true);
                rem -= d;
            }
        }
        rem
    }

    /// In an emergency the lever order is skipped: any mining miner with an API sleeps.
    fn emergency_sleepable(&self, st: &ControlState, i: usize) -> bool {
        let m = &self.site.miners[i];
        let ms_ = &st.miners[i];
        ms_.pending.is_none_or(|pd| pd.lever == Lever::PowerTarget)
            && matches!(ms_.intent, Intent::Normal | Intent::Target { .. })
            && m.firmware.levers().sleep
            && !self.snap.undriveable(i)
    }

    /// Outlets: in an emergency for every miner that does not sleep (or sleeps and
    /// still draws); otherwise only for miners without a driver (their only lever),
    /// within the hard power-cycle limit.
    fn outlets(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        s: &Shed<'_>,
        mut rem: f64,
    ) -> f64 {
        let emergency = s.mode == Mode::Emergency;
        for &i in s.miners {
            if rem <= EPS_KW {
                break;
            }
            let m = &self.site.miners[i];
            let ms_ = &st.miners[i];
            if !self.topo.outlet_ok[i] || ms_.pending.is_some() {
                continue;
            }
            let no_api = !m.firmware.levers().sleep || self.snap.undriveable(i);
            let go = match ms_.intent {
                Intent::Sleep => emergency && loads.miner_w[i] > m.idle_w + EPS_W,
                Intent::Normal | Intent::Target { .. } => {
                    no_api
                        && (emergency || self.exempt(i) || outlet_cycling_ok(self.p, ms_, self.now))
                }
                Intent::OutletOff => false,
            };
            if go {
                let d = loads.miner_w[i] / 1000.0;
                self.outlet_off(st, loads, i, s.scope, s.reason, true);
                rem -= d;
            }
        }
        rem
    }

    /// GPU caps, spread over the candidates in proportion to what each can give.
    fn caps(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        s: &Shed<'_>,
        mut rem: f64,
    ) -> f64 {
        let mut cands = Vec::new();
        for &g in s.gpus {
            if st.gpus[g].pending.is_some() {
                continue;
            }
            let rack = self.site.gpu_nodes[g].rack;
            if !self.topo.rack_gpus[rack]
                .iter()
                .all(|&h| loads.gpu_kw[h].is_some())
            {
                continue;
            }
            let (Some(r), Some(limits)) = (self.gpu_cappable(g), loads.gpu_kw[g]) else {
                continue;
            };
            let Some(b) = gpu_bounds(r) else {
                continue;
            };
            let draw = (r.power_w / 1000.0).min(limits);
            let from_kw = if s.worst { limits } else { draw.max(0.0) };
            let floor_kw = b.lo_w * b.count / 1000.0;
            if from_kw > floor_kw + EPS_KW {
                cands.push(CapCandidate {
                    g,
                    from_kw,
                    floor_kw,
                    lo_w: b.lo_w,
                    hi_w: b.hi_w,
                    count: b.count,
                });
            }
        }
        let total: f64 = cands.iter().map(|c| c.from_kw - c.floor_kw).sum();
        if total <= EPS_KW {
            return rem;
        }
        let f = (rem / total).min(1.0);
        for c in cands {
            let target_kw = c.from_kw - f * (c.from_kw - c.floor_kw);
            let limit = (target_kw * 1000.0 / c.count).clamp(c.lo_w, c.hi_w);
            if limit * c.count / 1000.0 >= loads.gpu_kw[c.g].unwrap_or(0.0) - EPS_KW {
                continue;
            }
            let cmd = GpuCmd {
                limit_w: limit,
                to_default: false,
                count: c.count,
                scope: s.scope,
                reason: s.reason,
                emergency: s.mode == Mode::Emergency,
            };
            let d = self.gpu_set(st, loads, c.g, cmd);
            rem += if s.worst { d.worst_kw } else { d.sustained_kw };
        }
        rem
    }
}
