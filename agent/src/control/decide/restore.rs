//! Restores and trough filling (slow tick), under the mining allowance of every node on
//! the path: `M_n = min(F - sum(S) - other, H - sum(X) - other)` with the fill line
//! `F = restore_fraction x B`; racks whose peak window is not full yet count at X.
//!
//! - A node restores only after its condition (`P_fill + smallest restorable miner <=
//!   F`) has held `restore_hold_s`, while its 10-minute running mean is within B
//!   (thermal guard), and never from stale data.
//! - The step limit (`restore_step_fraction x B` per `restore_step_interval_s`) guards
//!   feeds and the site; it never blocks the first miner of a step, so a rack of miners
//!   larger than the step still gets them back one by one.
//! - Miners that are not fast stay within the guaranteed allocation `B - sum(X) - other`.
//! - Order: GPU caps first; then power targets raised (continuous), then wakes, then
//!   outlets (discrete), each group in a seeded order.

use rackwarden_config::{NodeIdx, NodeKind, Redundancy};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::super::load::{fresh, Loads};
use super::super::plan::{Lever, Reason, Scope, ZoneView};
use super::super::state::{ControlState, Intent};
use super::act::{GpuCmd, MinerCmd};
use super::{gpu_bounds, ms, Cx, EPS_KW, EPS_W};

/// A target raise smaller than this share of nameplate (or 50 W) is not worth a command.
const MIN_RAISE_FRACTION: f64 = 0.05;
const MIN_RAISE_W: f64 = 50.0;

/// What one restore step may still add, per node and zone, kW.
struct Room {
    /// Per node: open for restores this step.
    open: Vec<bool>,
    /// Feeds and the site: what the step limit still allows.
    ramp: Vec<f64>,
    /// Feeds and the site: something was restored through it this step.
    touched: Vec<bool>,
    /// Per zone: heat headroom, kW of electrical load.
    zone: Vec<f64>,
    /// Under a grid limit: what mining may still add at the site, kW (infinite without).
    grid: f64,
}

/// A miner restore candidate: its group (0 targets, 1 wakes, 2 outlets).
#[derive(Debug, Clone, Copy)]
enum Group {
    Targets,
    Wakes,
    Outlets,
}

impl Cx<'_> {
    fn fill_line(&self, n: NodeIdx) -> f64 {
        self.p.restore_fraction * self.site.nodes[n].budget_kw
    }

    /// The smallest restore (kW) of a curtailed miner under each node; 0 with none, or
    /// with a miner at a lowered target (any raise is possible).
    fn smallest_restores(&self, st: &ControlState, loads: &Loads) -> Vec<f64> {
        let mut small = vec![f64::INFINITY; self.site.nodes.len()];
        for (i, ms_) in st.miners.iter().enumerate() {
            let m = &self.site.miners[i];
            let d = match ms_.intent {
                Intent::Normal => continue,
                Intent::Target { .. } => 0.0,
                Intent::Sleep | Intent::OutletOff => (m.nominal_w - loads.miner_w[i]) / 1000.0,
            };
            for &a in &self.topo.ancestors[m.rack] {
                small[a] = small[a].min(d.max(0.0));
            }
        }
        small
            .into_iter()
            .map(|x| if x.is_finite() { x } else { 0.0 })
            .collect()
    }

    pub(super) fn holds(&mut self, st: &mut ControlState, loads: &Loads, frozen: &[bool]) {
        let small = self.smallest_restores(st, loads);
        for n in 0..self.site.nodes.len() {
            let cond = !frozen[n] && loads.fill_kw(n) + small[n] <= self.fill_line(n) + EPS_KW;
            let ns = &mut st.nodes[n];
            ns.below_since = if cond {
                Some(ns.below_since.unwrap_or(self.now))
            } else {
                None
            };
        }
    }

    fn room(&self, st: &ControlState, loads: &Loads, frozen: &[bool], zones: &[ZoneView]) -> Room {
        let (site, p, now) = (self.site, self.p, self.now);
        let stepped = |n: NodeIdx| matches!(site.nodes[n].kind, NodeKind::Site | NodeKind::Feed);
        let open = (0..site.nodes.len())
            .map(|a| {
                let ns = &st.nodes[a];
                !frozen[a]
                    && ns
                        .below_since
                        .is_some_and(|t| now.saturating_sub(t) >= ms(p.restore_hold_s))
                    && ns
                        .mean
                        .is_none_or(|m| m.kw <= site.nodes[a].budget_kw + EPS_KW)
                    && (!stepped(a)
                        || ns
                            .last_restore_at
                            .is_none_or(|t| now.saturating_sub(t) >= ms(p.restore_step_interval_s)))
            })
            .collect();
        let ramp = site
            .nodes
            .iter()
            .enumerate()
            .map(|(i, x)| {
                if stepped(i) {
                    p.restore_step_fraction * x.budget_kw
                } else {
                    f64::INFINITY
                }
            })
            .collect();
        let zone = site
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
        let grid = self
            .grid_fill_line()
            .map_or(f64::INFINITY, |f| f - loads.fill_kw(0));
        Room {
            open,
            ramp,
            touched: vec![false; site.nodes.len()],
            zone,
            grid,
        }
    }

    /// What may be added at `rack` now (kW), by a miner that is `fast` or not (GPU
    /// lifts count as not fast: they hold no trough).
    fn allowed(&self, loads: &Loads, room: &Room, rack: NodeIdx, fast: bool) -> f64 {
        let mut a = f64::INFINITY;
        for &x in &self.topo.ancestors[rack] {
            if !room.open[x] {
                return 0.0;
            }
            let node = &self.site.nodes[x];
            a = a
                .min(self.fill_line(x) - loads.fill_kw(x))
                .min(node.ceiling_kw - loads.worst_kw[x]);
            if !fast {
                a = a.min(loads.guaranteed_kw(self.site, x) - loads.slow_kw[x]);
            }
        }
        if let Some(z) = self.topo.rack_zone[rack] {
            a = a.min(room.zone[z]);
        }
        a.max(0.0)
    }

    /// Whether the step limit lets `d` through at every stepped node above `rack` (the
    /// first restore of a step through a node always passes).
    fn ramp_ok(&self, room: &Room, rack: NodeIdx, d: f64) -> bool {
        self.topo.ancestors[rack]
            .iter()
            .all(|&x| !room.touched[x] || d <= room.ramp[x] + EPS_KW)
    }

    fn take(&self, room: &mut Room, rack: NodeIdx, d: f64) {
        for &x in &self.topo.ancestors[rack] {
            room.ramp[x] -= d;
            room.touched[x] = true;
        }
        if let Some(z) = self.topo.rack_zone[rack] {
            room.zone[z] -= d;
        }
    }

    pub(super) fn restore(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        frozen: &[bool],
        zones: &[ZoneView],
    ) {
        let mut room = self.room(st, loads, frozen, zones);
        if !room.open.first().copied().unwrap_or(false) {
            return;
        }
        self.lift_caps(st, loads, &mut room);
        let Some(blocked) = self.capped_paths(st) else {
            // The site is on every path.
            self.mark(st, &room.touched);
            return;
        };
        let mut groups = self.restore_groups(st);
        let p = self.p;
        let mut rng =
            ChaCha8Rng::seed_from_u64(p.seed ^ self.now.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for (group, list) in &mut groups {
            list.shuffle(&mut rng);
            for &i in list.iter() {
                let rack = self.site.miners[i].rack;
                if self.topo.ancestors[rack].iter().any(|&x| blocked.nodes[x])
                    || self.topo.rack_zone[rack].is_some_and(|z| blocked.zones[z])
                {
                    continue;
                }
                self.restore_miner(st, loads, &mut room, i, *group);
            }
        }
        self.mark(st, &room.touched);
    }

    /// One miner back (or its target up) if it fits.
    fn restore_miner(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        room: &mut Room,
        i: usize,
        group: Group,
    ) {
        let (p, now) = (self.p, self.now);
        let m = &self.site.miners[i];
        let ms_ = &st.miners[i];
        let exempt = self.exempt(i);
        let cm = loads.miner_w[i];
        let fast = loads.fast[i];
        // A grid limit holds mining, not the GPU lifts before it.
        let a = self
            .allowed(loads, room, m.rack, fast)
            .min(room.grid.max(0.0));
        let (lever, intent, to) = match group {
            Group::Outlets => {
                if !exempt && now.saturating_sub(ms_.since) < ms(p.min_off_s) {
                    return;
                }
                (Lever::OutletOn, Intent::Normal, m.nominal_w)
            }
            Group::Wakes => {
                if !exempt
                    && ms_
                        .slept_at
                        .is_some_and(|t| now.saturating_sub(t) < ms(p.min_off_s))
                {
                    return;
                }
                (Lever::Wake, Intent::Normal, m.nominal_w)
            }
            Group::Targets => {
                let to = m.nominal_w.min(cm + a * 1000.0);
                if to >= m.nominal_w - EPS_W {
                    (Lever::PowerTargetRaise, Intent::Normal, m.nominal_w)
                } else if to - cm < (MIN_RAISE_FRACTION * m.nominal_w).max(MIN_RAISE_W) {
                    return;
                } else {
                    (Lever::PowerTargetRaise, Intent::Target { w: to }, to)
                }
            }
        };
        let d = (to - cm) / 1000.0;
        if d <= EPS_W / 1000.0 || d > a + EPS_KW || !self.ramp_ok(room, m.rack, d) {
            return;
        }
        // Above the guaranteed allocation anywhere on the path: trough filling.
        let fill = self.topo.ancestors[m.rack]
            .iter()
            .any(|&x| loads.miners_kw[x] + d > loads.guaranteed_kw(self.site, x) + EPS_KW);
        let cmd = MinerCmd {
            lever,
            intent,
            to_w: to,
            scope: Scope::Node(m.rack),
            reason: if fill { Reason::Fill } else { Reason::Restore },
            emergency: false,
        };
        self.miner_act(st, loads, i, cmd);
        self.take(room, m.rack, d);
        room.grid -= d;
    }

    /// The miners to restore, by group: targets, then wakes, then outlets.
    fn restore_groups(&self, st: &ControlState) -> [(Group, Vec<usize>); 3] {
        let (p, now) = (self.p, self.now);
        let mut groups = [
            (Group::Targets, Vec::new()),
            (Group::Wakes, Vec::new()),
            (Group::Outlets, Vec::new()),
        ];
        for (i, ms_) in st.miners.iter().enumerate() {
            if ms_.pending.is_some()
                || ms_.intent == Intent::Normal
                || self.curtailed(i)
                || self.price_blocked(i)
            {
                continue;
            }
            let api = !self.snap.undriveable(i);
            match ms_.intent {
                Intent::OutletOff
                    if self
                        .snap
                        .outlet(i)
                        .is_some_and(|o| !o.on && fresh(o.taken_at, now, p.meter_stale_ms)) =>
                {
                    groups[2].1.push(i);
                }
                Intent::Sleep if api && self.miner_fresh(i) => groups[1].1.push(i),
                Intent::Target { .. } if api && self.miner_fresh(i) => groups[0].1.push(i),
                _ => {}
            }
        }
        groups
    }

    /// GPU caps are lifted before any miner comes back.
    fn lift_caps(&mut self, st: &mut ControlState, loads: &mut Loads, room: &mut Room) {
        for g in 0..self.site.gpu_nodes.len() {
            let gs = &st.gpus[g];
            let (Some(_), None) = (gs.cap_w, gs.pending) else {
                continue;
            };
            let rack = self.site.gpu_nodes[g].rack;
            let (Some(r), Some(cur)) = (self.gpu_usable(g), loads.gpu_kw[g]) else {
                continue;
            };
            let Some(b) = gpu_bounds(r) else {
                continue;
            };
            let full = b.default_w * b.count / 1000.0 - cur;
            if full <= EPS_KW {
                // Already at the defaults (e.g. reset by a reboot): just forget the cap.
                st.gpus[g].cap_w = None;
                continue;
            }
            let a = self.allowed(loads, room, rack, false);
            if a <= EPS_KW {
                continue;
            }
            let add = full.min(a);
            let to_default = add >= full - EPS_KW;
            let limit_w = if to_default {
                b.default_w
            } else {
                (cur + add) * 1000.0 / b.count
            };
            let cmd = GpuCmd {
                limit_w,
                to_default,
                count: b.count,
                scope: Scope::Node(rack),
                reason: Reason::Restore,
                emergency: false,
            };
            self.gpu_set(st, loads, g, cmd);
            self.take(room, rack, add);
        }
    }

    /// The nodes and zones that still hold a GPU cap (no miner under them comes back);
    /// `None` when the site itself does.
    fn capped_paths(&self, st: &ControlState) -> Option<Blocked> {
        let mut b = Blocked {
            nodes: vec![false; self.site.nodes.len()],
            zones: vec![false; self.site.zones.len()],
        };
        for gs in st.gpus.iter().filter(|g| g.cap_w.is_some()) {
            if gs.capped_by.is_empty() {
                return None;
            }
            for scope in &gs.capped_by {
                match *scope {
                    Scope::Node(0) | Scope::Device => return None,
                    Scope::Node(x) => {
                        if let Some(c) = b.nodes.get_mut(x) {
                            *c = true;
                        }
                    }
                    Scope::Zone(z) => {
                        if let Some(c) = b.zones.get_mut(z) {
                            *c = true;
                        }
                    }
                }
            }
        }
        Some(b)
    }

    fn mark(&self, st: &mut ControlState, touched: &[bool]) {
        for (ns, &t) in st.nodes.iter_mut().zip(touched) {
            if t {
                ns.last_restore_at = Some(self.now);
            }
        }
    }
}

/// Where a GPU cap still holds.
struct Blocked {
    nodes: Vec<bool>,
    zones: Vec<bool>,
}
