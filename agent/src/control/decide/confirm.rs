//! Commands in flight: confirmed by a later reading (never by the command's reply), or
//! expired at their deadline and escalated to the next lever. Each confirmation of a
//! miner command is a sample of that miner's shed or restore time.

use rackwarden_config::Site;

use super::super::load::{fresh, Loads};
use super::super::plan::{Alert, AlertKind, Lever, Reason, Scope, Severity};
use super::super::snapshot::{MinerMode, Snapshot};
use super::super::state::{ControlState, Intent, Pending};
use super::super::Millis;
use super::{outlet_cycling_ok, sleep_cycling_ok, Cx};

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
    confirming_reading_at(site, snap, i, pd, now).is_some()
}

/// When the reading that confirms command `pd` was taken, if one does.
fn confirming_reading_at(
    site: &Site,
    snap: &Snapshot,
    i: usize,
    pd: &Pending,
    now: Millis,
) -> Option<Millis> {
    let p = &site.policy;
    let m = &site.miners[i];
    let reading = snap
        .miner(i)
        .filter(|r| r.taken_at > pd.issued_at && fresh(r.taken_at, now, p.miner_stale_ms));
    let outlet = snap
        .outlet(i)
        .filter(|o| o.taken_at > pd.issued_at && fresh(o.taken_at, now, p.meter_stale_ms));
    let ok = match pd.lever {
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
        Lever::OutletOff => return outlet.filter(|o| !o.on).map(|o| o.taken_at),
        Lever::OutletOn => return outlet.filter(|o| o.on).map(|o| o.taken_at),
        Lever::GpuCap | Lever::GpuCapLift => false,
    };
    ok.then(|| reading.map(|r| r.taken_at)).flatten()
}

impl Cx<'_> {
    /// Confirms or expires every command in flight; returns the expired miner commands.
    pub(super) fn confirm(&mut self, st: &mut ControlState) -> Vec<(usize, Pending)> {
        let mut expired = Vec::new();
        for i in 0..self.site.miners.len() {
            let Some(pd) = st.miners[i].pending else {
                continue;
            };
            if let Some(at) = confirming_reading_at(self.site, self.snap, i, &pd, self.now) {
                let ms_ = &mut st.miners[i];
                ms_.pending = None;
                ms_.failed = None;
                let took = u32::try_from(at.saturating_sub(pd.issued_at)).unwrap_or(u32::MAX);
                match pd.lever {
                    Lever::PowerTarget | Lever::Sleep => ms_.times.record_shed(took),
                    Lever::Wake | Lever::PowerTargetRaise => ms_.times.record_restore(took),
                    _ => {}
                }
            } else if self.now >= pd.deadline {
                st.miners[i].pending = None;
                st.miners[i].failed = Some(pd.lever);
                // A shed that did not show within its deadline took at least that long:
                // the sample keeps a miner that never confirms out of the trough.
                if matches!(pd.lever, Lever::PowerTarget | Lever::Sleep) {
                    let took =
                        u32::try_from(self.now.saturating_sub(pd.issued_at)).unwrap_or(u32::MAX);
                    st.miners[i].times.record_shed(took);
                }
                let m = &self.site.miners[i];
                let sev = if pd.lever.is_shed() {
                    Severity::Warning
                } else {
                    Severity::Info
                };
                let mut a = Alert::new(
                    AlertKind::ActionUnconfirmed,
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
        self.confirm_gpus(st);
        expired
    }

    fn confirm_gpus(&mut self, st: &mut ControlState) {
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
                    AlertKind::ActionUnconfirmed,
                    Severity::Warning,
                    format!("GPU node `{}` did not read back the commanded limit", gn.id),
                );
                a.device = Some(gn.id.clone());
                a.node = Some(self.site.nodes[gn.rack].id.clone());
                self.alert(a);
            }
        }
    }

    /// `miner.slow` when a miner's learned p99 shed time passes `fast_shed_s` (it leaves
    /// the trough) and `miner.slow` resolved when it is back within it.
    pub(super) fn trough_alerts(&mut self, st: &mut ControlState, loads: &Loads) {
        for (i, m) in self.site.miners.iter().enumerate() {
            if self.snap.undriveable(i) || !m.firmware.levers().sleep {
                continue;
            }
            let slow = !loads.fast[i];
            let ms_ = &mut st.miners[i];
            if slow == ms_.slow_alerted {
                continue;
            }
            ms_.slow_alerted = slow;
            let pc = ms_.times.shed(m.firmware.default_shed_ms());
            let (sev, what) = if slow {
                (
                    Severity::Warning,
                    format!(
                        "sheds slowly (p99 {} ms over {} samples, limit {} s): kept out of the trough",
                        pc.p99_ms, pc.samples, self.p.fast_shed_s
                    ),
                )
            } else {
                (
                    Severity::Info,
                    format!(
                        "sheds within {} s again (p99 {} ms): may fill the trough",
                        self.p.fast_shed_s, pc.p99_ms
                    ),
                )
            };
            let mut a = Alert::new(
                AlertKind::MinerSlow,
                sev,
                format!("miner `{}` {what}", m.id),
            );
            a.device = Some(m.id.clone());
            a.node = Some(self.site.nodes[m.rack].id.clone());
            self.alert(a);
        }
    }

    pub(super) fn escalate(
        &mut self,
        st: &mut ControlState,
        loads: &mut Loads,
        expired: &[(usize, Pending)],
    ) {
        for &(i, pd) in expired {
            let m = &self.site.miners[i];
            let ms_ = &st.miners[i];
            let waived = pd.emergency || self.exempt(i);
            match (pd.lever, ms_.intent) {
                (Lever::PowerTarget, Intent::Target { .. })
                    if m.firmware.levers().sleep
                        && (waived || sleep_cycling_ok(self.p, ms_, self.now)) =>
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
                        && (waived || outlet_cycling_ok(self.p, ms_, self.now)) =>
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
}
