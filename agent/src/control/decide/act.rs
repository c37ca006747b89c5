//! The levers: every command `decide` gives goes through one function here, which
//! records the intent, the command in flight and its deadline, updates the loads the
//! rest of the decision sees, and pushes the action. Operator overrides too.

use super::super::load::Loads;
use super::super::plan::{Action, Alert, AlertKind, Device, Lever, Reason, Scope, Severity};
use super::super::state::{ControlState, GpuPending, Intent, Pending};
use super::{ms, Cx, DAY_MS, HOUR_MS};

/// One miner command.
#[derive(Debug, Clone, Copy)]
pub(super) struct MinerCmd {
    pub lever: Lever,
    pub intent: Intent,
    pub to_w: f64,
    pub scope: Scope,
    pub reason: Reason,
    /// Anti-cycling waived (and, for a sleep, the emergency outlet deadline).
    pub emergency: bool,
}

/// One GPU limit command.
#[derive(Debug, Clone, Copy)]
pub(super) struct GpuCmd {
    /// Per-GPU limit, W.
    pub limit_w: f64,
    /// Back to the GPUs' defaults (the cap forgotten).
    pub to_default: bool,
    pub count: f64,
    pub scope: Scope,
    pub reason: Reason,
    pub emergency: bool,
}

/// What a GPU command changed in the projection, kW (negative for a cap).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct GpuDelta {
    /// Change of the rack's sustained reserve S.
    pub sustained_kw: f64,
    /// Change of its worst case X.
    pub worst_kw: f64,
}

impl Cx<'_> {
    /// The confirmation deadline of a command: a shed or restore waits for the miner's
    /// learned p99 (never less than `confirm_timeout_s`), an emergency sleep for
    /// `emergency_outlet_after_s`.
    fn deadline_ms(&self, st: &ControlState, i: usize, lever: Lever, emergency: bool) -> u64 {
        let m = &self.site.miners[i];
        let t = &st.miners[i].times;
        let floor = ms(self.p.confirm_timeout_s);
        match lever {
            Lever::Sleep if emergency => ms(self.p.emergency_outlet_after_s),
            Lever::Sleep | Lever::PowerTarget => {
                floor.max(u64::from(t.shed(m.firmware.default_shed_ms()).p99_ms))
            }
            Lever::Wake | Lever::PowerTargetRaise => {
                floor.max(u64::from(t.restore(m.firmware.default_restore_ms()).p99_ms))
            }
            _ => floor,
        }
    }

    pub(super) fn miner_act(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        i: usize,
        cmd: MinerCmd,
    ) {
        let now = self.now;
        let m = &self.site.miners[i];
        let mut from_w = loads.miner_w[i];
        // A command of this same decision that this one supersedes (a target taken to
        // the floor, then a sleep: the need was larger) is not sent at all.
        if st.miners[i].pending.is_some_and(|p| p.issued_at == now) {
            if let Some(k) = self
                .actions
                .iter()
                .rposition(|a| a.device == Device::Miner(i))
            {
                from_w = self.actions.remove(k).from_w;
            }
        }
        let wait = self.deadline_ms(st, i, cmd.lever, cmd.emergency);
        let ms_ = &mut st.miners[i];
        // A command replacing one still in flight keeps the power meters still show.
        let shown_w = ms_
            .pending
            .filter(|p| p.lever.is_shed())
            .map_or(from_w, |p| p.from_w.max(from_w));
        ms_.intent = cmd.intent;
        ms_.since = now;
        ms_.pending = Some(Pending {
            lever: cmd.lever,
            issued_at: now,
            deadline: now.saturating_add(wait),
            from_w: shown_w,
            to_w: cmd.to_w,
            emergency: cmd.emergency,
        });
        match cmd.lever {
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
        let d = (cmd.to_w - loads.miner_w[i]) / 1000.0;
        let slow = !loads.fast[i];
        for &a in &self.topo.ancestors[m.rack] {
            loads.proj_kw[a] += d;
            loads.worst_kw[a] += d;
            loads.miners_kw[a] += d;
            if slow {
                loads.slow_kw[a] += d;
            }
            if cmd.lever.is_shed() && d < 0.0 {
                loads.pending_kw[a] -= d;
            }
        }
        loads.miner_w[i] = cmd.to_w;
        self.actions.push(Action {
            scope: cmd.scope,
            constraint: self.scope_id(cmd.scope, &m.id),
            device: Device::Miner(i),
            device_id: m.id.clone(),
            lever: cmd.lever,
            from_w,
            to_w: cmd.to_w,
            reason: cmd.reason,
            emergency: cmd.emergency,
        });
    }

    pub(super) fn sleep(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        i: usize,
        scope: Scope,
        reason: Reason,
        emergency: bool,
    ) {
        let cmd = MinerCmd {
            lever: Lever::Sleep,
            intent: Intent::Sleep,
            to_w: self.site.miners[i].idle_w,
            scope,
            reason,
            emergency,
        };
        self.miner_act(st, loads, i, cmd);
    }

    pub(super) fn outlet_off(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        i: usize,
        scope: Scope,
        reason: Reason,
        emergency: bool,
    ) {
        let cmd = MinerCmd {
            lever: Lever::OutletOff,
            intent: Intent::OutletOff,
            to_w: 0.0,
            scope,
            reason,
            emergency,
        };
        self.miner_act(st, loads, i, cmd);
    }

    /// Sets GPU node `g` to `cmd.limit_w` per GPU; returns what it changed in the
    /// projection.
    pub(super) fn gpu_set(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        g: usize,
        cmd: GpuCmd,
    ) -> GpuDelta {
        let gn = &self.site.gpu_nodes[g];
        let old_kw = loads.gpu_kw[g].unwrap_or(0.0);
        let new_kw = cmd.limit_w * cmd.count / 1000.0;
        let d = new_kw - old_kw;
        loads.gpu_kw[g] = Some(new_kw);
        let rack = &mut loads.rack[gn.rack];
        let worst = rack.worst_kw + d;
        // A cap bounds the sustained load too; a lift may let it rise as far.
        let sustained = if d < 0.0 {
            rack.sustained_kw.min(worst)
        } else {
            (rack.sustained_kw + d).min(worst)
        };
        let delta = GpuDelta {
            sustained_kw: sustained - rack.sustained_kw,
            worst_kw: d,
        };
        rack.worst_kw = worst;
        rack.sustained_kw = sustained;
        for &a in &self.topo.ancestors[gn.rack] {
            loads.proj_kw[a] += delta.sustained_kw;
            loads.reserve_kw[a] += delta.sustained_kw;
            loads.worst_kw[a] += delta.worst_kw;
            loads.worst_reserve_kw[a] += delta.worst_kw;
            if delta.sustained_kw < 0.0 {
                loads.pending_kw[a] -= delta.sustained_kw;
            }
        }
        let was = st.gpus[g].cap_w;
        let cap = (!cmd.to_default).then_some(cmd.limit_w);
        st.gpus[g].cap_w = cap;
        if cap.is_none() {
            st.gpus[g].capped_by.clear();
        } else if d < 0.0 && !st.gpus[g].capped_by.contains(&cmd.scope) {
            st.gpus[g].capped_by.push(cmd.scope);
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
        self.actions.push(Action {
            scope: cmd.scope,
            constraint: self.scope_id(cmd.scope, &gn.id),
            device: Device::GpuNode(g),
            device_id: gn.id.clone(),
            lever,
            from_w: old_kw * 1000.0 / cmd.count,
            to_w: cmd.limit_w,
            reason: cmd.reason,
            emergency: cmd.emergency,
        });
        self.gpu_cap_alert(g, was, cap, cmd, new_kw);
        delta
    }

    fn gpu_cap_alert(
        &mut self,
        g: usize,
        was: Option<f64>,
        cap: Option<f64>,
        cmd: GpuCmd,
        kw: f64,
    ) {
        let gn = &self.site.gpu_nodes[g];
        let mut a = match (was, cap) {
            (None, Some(limit_w)) => Alert::new(
                AlertKind::GpuCapApplied,
                Severity::Warning,
                format!(
                    "GPU node `{}` capped to {limit_w:.0} W per GPU: no mining left to shed under `{}`",
                    gn.id,
                    self.scope_id(cmd.scope, &gn.id)
                ),
            ),
            (Some(_), None) => Alert::new(
                AlertKind::GpuCapLifted,
                Severity::Info,
                format!("GPU node `{}` back to its default limits", gn.id),
            ),
            _ => return,
        };
        a.device = Some(gn.id.clone());
        a.node = Some(self.site.nodes[gn.rack].id.clone());
        a.kw = Some(kw);
        self.alert(a);
    }

    pub(super) fn operator(&mut self, st: &mut ControlState, loads: &mut Loads) {
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
                if m.firmware.levers().sleep && !self.snap.undriveable(i) {
                    self.sleep(st, loads, i, Scope::Device, Reason::Operator, false);
                } else if self.topo.outlet_ok[i] {
                    self.outlet_off(st, loads, i, Scope::Device, Reason::Operator, false);
                }
            }
        }
    }
}
