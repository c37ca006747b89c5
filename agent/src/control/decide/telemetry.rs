//! Freshness of every input: `telemetry.*` alerts on changes, and the start-up gate (no
//! restores until every input has been fresh for `startup_fresh_s`).

use super::super::load::fresh;
use super::super::plan::{Alert, AlertKind, Severity};
use super::super::state::{ControlState, Intent};
use super::{ms, Cx};

/// A stale/fresh alert pair's words for one input.
struct Change {
    stale: bool,
    what_stale: &'static str,
    what_fresh: &'static str,
}

impl Change {
    fn alert(&self, subject: String) -> Alert {
        if self.stale {
            Alert::new(
                AlertKind::TelemetryStale,
                Severity::Warning,
                format!("{subject} {}", self.what_stale),
            )
        } else {
            Alert::new(
                AlertKind::TelemetryFresh,
                Severity::Info,
                format!("{subject} {}", self.what_fresh),
            )
        }
    }
}

impl Cx<'_> {
    pub(super) fn telemetry(&mut self, st: &mut ControlState) {
        let up = self.now.saturating_sub(st.started_at);
        let mut all_fresh = self.meters_fresh(st, up);
        all_fresh &= self.gpus_fresh(st, up);
        all_fresh &= self.units_fresh(st, up);
        all_fresh &= self.miners_fresh(st, up);
        self.startup_gate(st, all_fresh);
    }

    fn meters_fresh(&mut self, st: &mut ControlState, up: u64) -> bool {
        let (site, p) = (self.site, self.p);
        let mut all = true;
        for (i, node) in site.nodes.iter().enumerate() {
            let Some(meter) = node.meters.first() else {
                continue;
            };
            let f = self.meter_fresh(i);
            all &= f;
            let ns = &mut st.nodes[i];
            let change = if !f && !ns.meter_stale_alerted && up > p.meter_stale_ms {
                true
            } else if f && ns.meter_stale_alerted {
                false
            } else {
                continue;
            };
            ns.meter_stale_alerted = change;
            let mut a = Change {
                stale: change,
                what_stale: "is stale: it reads as its worst case, restores frozen",
                what_fresh: "reads again",
            }
            .alert(format!("meter of `{}`", node.id));
            a.node = Some(node.id.clone());
            a.device = site.modbus_devices.get(meter.device).map(|d| d.id.clone());
            self.alert(a);
        }
        all
    }

    fn gpus_fresh(&mut self, st: &mut ControlState, up: u64) -> bool {
        let (site, p, now) = (self.site, self.p, self.now);
        let mut all = true;
        for (g, gn) in site.gpu_nodes.iter().enumerate() {
            let r = self.snap.gpu(g);
            let f = r.is_some_and(|r| {
                fresh(r.power_taken_at, now, p.gpu_power_stale_ms)
                    && (!r.nvml_available || fresh(r.limits_taken_at, now, p.gpu_limit_stale_ms))
            });
            all &= f;
            let gs = &mut st.gpus[g];
            match r {
                Some(r) if !r.nvml_available && !gs.nvml_alerted => {
                    gs.nvml_alerted = true;
                    let mut a = Alert::new(
                        AlertKind::TelemetryNvmlUnavailable,
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
            let change = if !f && !gs.stale_alerted && up > p.gpu_power_stale_ms {
                true
            } else if f && gs.stale_alerted {
                false
            } else {
                continue;
            };
            gs.stale_alerted = change;
            let mut a = Change {
                stale: change,
                what_stale: "is stale: its rack is reserved at its rated maximum",
                what_fresh: "reads again",
            }
            .alert(format!("GPU node `{}`", gn.id));
            a.device = Some(gn.id.clone());
            self.alerts.push(a);
        }
        all
    }

    fn units_fresh(&mut self, st: &mut ControlState, up: u64) -> bool {
        let (site, p, now) = (self.site, self.p, self.now);
        let mut all = true;
        for (z, zone) in site.zones.iter().enumerate() {
            for (u, unit) in zone.units.iter().enumerate() {
                if unit.device.is_none() {
                    continue;
                }
                let f = self
                    .snap
                    .unit(z, u)
                    .is_some_and(|r| fresh(r.taken_at, now, p.cooling_stale_ms));
                all &= f;
                let flag = &mut st.zones[z].unit_stale_alerted[u];
                if f != *flag || (!f && up <= p.cooling_stale_ms) {
                    continue;
                }
                *flag = !f;
                let mut a = Change {
                    stale: !f,
                    what_stale: "is stale: counted unavailable",
                    what_fresh: "reads again",
                }
                .alert(format!("cooling unit `{}`", unit.id));
                a.zone = Some(zone.id.clone());
                a.device = Some(unit.id.clone());
                self.alerts.push(a);
            }
        }
        all
    }

    fn miners_fresh(&mut self, st: &mut ControlState, up: u64) -> bool {
        let (site, p) = (self.site, self.p);
        let mut all = true;
        for i in 0..site.miners.len() {
            let m = &site.miners[i];
            if self.snap.undriveable(i) && !st.miners[i].no_driver_alerted {
                st.miners[i].no_driver_alerted = true;
                let mut a = Alert::new(
                    AlertKind::MinerNoDriver,
                    Severity::Warning,
                    format!(
                        "miner `{}` has no driver: no command is sent to it, counted at nameplate{}",
                        m.id,
                        if self.topo.outlet_ok[i] {
                            ", its outlet is the only lever"
                        } else {
                            ", no lever left"
                        }
                    ),
                );
                a.device = Some(m.id.clone());
                a.node = Some(site.nodes[m.rack].id.clone());
                self.alerts.push(a);
            }
            // Neither an outlet read back off, an operator's curtailment nor a miner
            // nobody can drive holds the start-up gate.
            if st.miners[i].intent == Intent::OutletOff
                || self.curtailed(i)
                || self.snap.undriveable(i)
            {
                continue;
            }
            let f = self.miner_fresh(i);
            all &= f;
            let ms_ = &mut st.miners[i];
            if f != ms_.stale_alerted || (!f && up <= p.miner_stale_ms) {
                continue;
            }
            ms_.stale_alerted = !f;
            let mut a = Change {
                stale: !f,
                what_stale: "is stale: counted at nameplate",
                what_fresh: "reads again",
            }
            .alert(format!("miner `{}`", m.id));
            a.device = Some(m.id.clone());
            a.node = Some(site.nodes[m.rack].id.clone());
            self.alerts.push(a);
        }
        all
    }

    fn startup_gate(&mut self, st: &mut ControlState, all_fresh: bool) {
        let (p, now) = (self.p, self.now);
        st.fresh_since = if all_fresh {
            Some(st.fresh_since.unwrap_or(now))
        } else {
            None
        };
        if !st.startup_alerted {
            st.startup_alerted = true;
            self.alert(Alert::new(
                AlertKind::ControlStartupHold,
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
                AlertKind::ControlStartupReleased,
                Severity::Info,
                "start-up hold over: every input fresh, restores allowed".to_owned(),
            ));
        }
    }
}
