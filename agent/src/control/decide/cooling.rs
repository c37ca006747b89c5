//! Cooling, every slow tick, per zone: N+1 holds when `available - largest >= heat x
//! (1 + margin)`. N+1 lost: shed the zone's miners until it holds; capacity below the
//! heat (not even N): emergency shed, GPU caps only when no mining is left.

use rackwarden_config::Redundancy;

use super::super::load::{fresh, Loads};
use super::super::plan::{Alert, AlertKind, Reason, Scope, Severity, ZoneView};
use super::super::snapshot::UnitState;
use super::super::state::ControlState;
use super::shed::Shed;
use super::{Cx, Mode, EPS_KW};

/// Available capacity of a zone: the sum and the largest available unit, kW.
#[derive(Debug, Clone, Copy)]
struct Capacity {
    sum_kw: f64,
    largest_kw: f64,
}

impl Cx<'_> {
    pub(super) fn zone_heat(&self, loads: &Loads, z: usize) -> f64 {
        self.site.zones[z]
            .racks
            .iter()
            .map(|&r| loads.eff_kw(r))
            .sum()
    }

    /// Available capacity and largest available unit of zone `z`, kW.
    fn zone_capacity(&self, z: usize) -> Capacity {
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
        Capacity {
            sum_kw: sum,
            largest_kw: max,
        }
    }

    pub(super) fn cooling(&mut self, st: &mut ControlState, loads: &mut Loads) -> Vec<ZoneView> {
        let (site, topo, p) = (self.site, self.topo, self.p);
        let mut views = Vec::with_capacity(site.zones.len());
        for (z, zone) in site.zones.iter().enumerate() {
            let cap = self.zone_capacity(z);
            let heat = self.zone_heat(loads, z);
            let k = 1.0 + zone.margin;
            let nplus1 = zone.redundancy == Redundancy::None
                || cap.sum_kw - cap.largest_kw >= heat * k - EPS_KW;
            let n_ok = cap.sum_kw >= heat - EPS_KW;
            let view = ZoneView {
                heat_kw: heat,
                available_kw: cap.sum_kw,
                largest_kw: cap.largest_kw,
                n_plus_1: nplus1,
                n: n_ok,
            };
            views.push(view);
            self.zone_alerts(st, z, &view);
            let target = if zone.redundancy == Redundancy::None {
                cap.sum_kw
            } else {
                cap.sum_kw - cap.largest_kw
            };
            let need = heat * k - target;
            let (mode, reason, gpu) = if !n_ok {
                (Mode::Emergency, Reason::CoolingCapacity, true)
            } else if !nplus1 {
                (Mode::Now, Reason::CoolingRedundancy, false)
            } else {
                continue;
            };
            if need > EPS_KW {
                self.shed(
                    st,
                    loads,
                    Shed {
                        scope: Scope::Zone(z),
                        miners: &topo.zone_miners[z],
                        gpus: &topo.zone_gpus[z],
                        need_kw: need,
                        margin_kw: p.shed_margin_fraction * target.max(heat),
                        mode,
                        reason,
                        allow_gpu: gpu,
                        worst: false,
                    },
                );
            }
        }
        views
    }

    /// N+1 and N alerts on changes.
    fn zone_alerts(&mut self, st: &mut ControlState, z: usize, v: &ZoneView) {
        let zone = &self.site.zones[z];
        let k = 1.0 + zone.margin;
        let zs = &mut st.zones[z];
        let mut alerts = Vec::new();
        if zs.n_plus_1 != v.n_plus_1 {
            zs.n_plus_1 = v.n_plus_1;
            let (name, sev, what) = if v.n_plus_1 {
                (
                    AlertKind::CoolingRedundancyRestored,
                    Severity::Info,
                    "N+1 holds again",
                )
            } else {
                (
                    AlertKind::CoolingRedundancyLost,
                    Severity::Critical,
                    "lost N+1: restores frozen, shedding the zone's miners",
                )
            };
            alerts.push(
                Alert::new(name, sev, format!("zone `{}` {what}", zone.id))
                    .figures(v.heat_kw * k, v.available_kw - v.largest_kw),
            );
        }
        if zs.n != v.n {
            zs.n = v.n;
            let (name, sev, what) = if v.n {
                (
                    AlertKind::CoolingCapacityRestored,
                    Severity::Info,
                    "capacity covers the heat load again",
                )
            } else {
                (
                    AlertKind::CoolingCapacityExceeded,
                    Severity::Critical,
                    "heat load above the available capacity: emergency shed",
                )
            };
            alerts.push(
                Alert::new(name, sev, format!("zone `{}` {what}", zone.id))
                    .figures(v.heat_kw, v.available_kw),
            );
        }
        for mut a in alerts {
            a.zone = Some(zone.id.clone());
            self.alert(a);
        }
    }
}
