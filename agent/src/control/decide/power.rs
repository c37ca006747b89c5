//! Power sheds, node by node, deepest first, against both limits of each node:
//!
//! 1. emergency: measured at `emergency_fraction x H`, or above a rating: sleep now;
//! 2. over budget: `P_eff >= shed_fraction x B` (an excursion above B, or the sustained
//!    projection over it): shed in this decision toward `shed_target_fraction x B`,
//!    fast miners first; an excursion past `excursion_max_s` goes to the emergency
//!    levers;
//! 3. ceiling: `P_worst > H`: shed until it is not (no GPU cap for a worst case);
//! 4. the trough: miners that are not fast may hold only `B - sum(X) - other`;
//! 5. a silent node meter with nothing below it to bound it.

use rackwarden_config::NodeIdx;

use super::super::load::{fresh, Loads};
use super::super::plan::{Alert, AlertKind, Reason, Scope, Severity};
use super::super::state::{Band, ControlState, Excursion, RunningMean};
use super::super::Millis;
use super::shed::Shed;
use super::{band_of, ms, Cx, Mode, EPS_KW, SILENT_FRACTION};

/// Time constant of the thermal guard's running mean.
const MEAN_TAU_MS: f64 = 600_000.0;

/// The running mean after a reading of `kw` at `now`.
pub(super) fn running_mean(prev: Option<RunningMean>, kw: f64, now: Millis) -> RunningMean {
    match prev {
        None => RunningMean { kw, at: now },
        Some(m) => {
            // Whole milliseconds far below 2^53: exact as f64.
            #[allow(clippy::cast_precision_loss)]
            let dt = now.saturating_sub(m.at) as f64;
            let alpha = 1.0 - (-dt / MEAN_TAU_MS).exp();
            RunningMean {
                kw: m.kw + alpha * (kw - m.kw),
                at: now,
            }
        }
    }
}

impl Cx<'_> {
    pub(super) fn power(&mut self, st: &mut ControlState, loads: &mut Loads) {
        for k in 0..self.topo.bottom_up.len() {
            let n = self.topo.bottom_up[k];
            if self.site.nodes[n].budget_kw <= 0.0 {
                continue;
            }
            let unmet = self.budget(st, loads, n);
            let unmet = unmet.max(self.ceiling(st, loads, n));
            self.trough(st, loads, n);
            let unmet = unmet.max(self.silent(st, loads, n));
            self.unmet_alert(st, loads, n, unmet);
        }
    }

    /// Miners under `n` in shed order, fast ones first (an excursion is shed by the
    /// miners that shed within seconds).
    fn fast_first(&self, loads: &Loads, n: NodeIdx) -> Vec<usize> {
        let all = &self.topo.miners_under[n];
        let mut v: Vec<usize> = all.iter().copied().filter(|&i| loads.fast[i]).collect();
        v.extend(all.iter().copied().filter(|&i| !loads.fast[i]));
        v
    }

    /// Emergency and over-budget sheds; returns what could not be shed, kW.
    fn budget(&mut self, st: &mut ControlState, loads: &mut Loads, n: NodeIdx) -> f64 {
        let (node, p) = (&self.site.nodes[n], self.p);
        let b = node.budget_kw;
        let eff = loads.eff_kw(n);
        let measured = loads.measured_kw[n];
        let band = band_of(
            p,
            node,
            eff,
            self.measured_or_worst(loads, n),
            self.over_rating(loads, n),
        );
        self.band_alert(st, n, band, eff);
        let long = self.excursion(st, n, measured, loads);
        let (mode, reason) = match band {
            Band::Emergency => (Mode::Emergency, Reason::Emergency),
            // Past its bound an excursion gets the emergency levers.
            Band::Shed if long => (Mode::Emergency, Reason::Emergency),
            Band::Shed if measured.is_some_and(|m| m >= p.shed_fraction * b) => {
                (Mode::Now, Reason::Excursion)
            }
            Band::Shed => (Mode::Now, Reason::Shed),
            _ => return 0.0,
        };
        let need = eff - p.shed_target_fraction * b;
        if need <= EPS_KW {
            return 0.0;
        }
        let miners = self.fast_first(loads, n);
        let topo = self.topo;
        self.shed(
            st,
            loads,
            Shed {
                scope: Scope::Node(n),
                miners: &miners,
                gpus: &topo.gpus_under[n],
                need_kw: need,
                margin_kw: p.shed_margin_fraction * b,
                mode,
                reason,
                allow_gpu: true,
                worst: false,
            },
        )
    }

    /// Band alerts fire on changes; the hold band keeps the last one.
    fn band_alert(&mut self, st: &mut ControlState, n: NodeIdx, band: Band, eff: f64) {
        let node = &self.site.nodes[n];
        let old = st.nodes[n].band;
        let new = match band {
            Band::Hold => old.min(Band::Shed),
            b => b,
        };
        if new == old {
            return;
        }
        st.nodes[n].band = new;
        let (name, sev, what) = match new {
            Band::Emergency => (
                AlertKind::PowerBudgetEmergency,
                Severity::Critical,
                "at its ceiling or above a rating: emergency shed",
            ),
            Band::Shed => (
                AlertKind::PowerBudgetShed,
                Severity::Warning,
                "over its budget: shedding mining now",
            ),
            _ => (
                AlertKind::PowerBudgetRestored,
                Severity::Info,
                "back under the fill line",
            ),
        };
        if new > old || old >= Band::Shed && new == Band::Normal {
            let mut a =
                Alert::new(name, sev, format!("`{}` {what}", node.id)).figures(eff, node.budget_kw);
            a.node = Some(node.id.clone());
            self.alert(a);
        }
    }

    /// Tracks a measured excursion above B: its length and peak are logged when it
    /// ends; returns whether it has lasted past `excursion_max_s` (the next levers).
    fn excursion(
        &mut self,
        st: &mut ControlState,
        n: NodeIdx,
        measured: Option<f64>,
        loads: &Loads,
    ) -> bool {
        let node = &self.site.nodes[n];
        let b = node.budget_kw;
        let now = self.now;
        let Some(m) = measured else {
            // A stale meter neither starts nor ends one.
            return false;
        };
        let ns = &mut st.nodes[n];
        if m > b + EPS_KW {
            let e = ns.excursion.get_or_insert(Excursion {
                since: now,
                peak_kw: m,
                escalated: false,
            });
            e.peak_kw = e.peak_kw.max(m);
            let long = now.saturating_sub(e.since) > ms(self.p.excursion_max_s);
            let fast_left = self.topo.miners_under[n]
                .iter()
                .any(|&i| loads.fast[i] && loads.miner_w[i] > self.site.miners[i].idle_w + 1.0);
            if long && fast_left && !e.escalated {
                e.escalated = true;
                let mut a = Alert::new(
                    AlertKind::PowerExcursionLong,
                    Severity::Critical,
                    format!(
                        "`{}` above its budget for over {} s with fast mining left: emergency levers",
                        node.id, self.p.excursion_max_s
                    ),
                )
                .figures(m, b);
                a.node = Some(node.id.clone());
                self.alert(a);
            }
            return long;
        }
        if let Some(e) = ns.excursion.take() {
            let len_ms = now.saturating_sub(e.since);
            let sev = if len_ms > ms(self.p.excursion_max_s) {
                Severity::Warning
            } else {
                Severity::Info
            };
            let mut a = Alert::new(
                AlertKind::PowerExcursion,
                sev,
                format!(
                    "`{}` back within its budget after {:.1} s above it (peak {:.1} kW, {:.1}% of B, {:.1}% of its rating)",
                    node.id,
                    len_ms as f64 / 1000.0,
                    e.peak_kw,
                    100.0 * e.peak_kw / b,
                    if node.rating_kw > 0.0 { 100.0 * e.peak_kw / node.rating_kw } else { 0.0 }
                ),
            )
            .figures(e.peak_kw, b);
            a.node = Some(node.id.clone());
            self.alert(a);
        }
        false
    }

    /// `P_worst <= H`: the worst case (every GPU at its limit, every shed failing) is
    /// held under the ceiling. Returns what could not be shed, kW.
    fn ceiling(&mut self, st: &mut ControlState, loads: &mut Loads, n: NodeIdx) -> f64 {
        let node = &self.site.nodes[n];
        let h = node.ceiling_kw;
        let need = loads.worst_kw[n] - h;
        let over = need > EPS_KW;
        if over != st.nodes[n].ceiling_alerted {
            st.nodes[n].ceiling_alerted = over;
            if over {
                let mut a = Alert::new(
                    AlertKind::PowerCeilingShed,
                    Severity::Warning,
                    format!(
                        "`{}` worst case {:.1} kW above its ceiling {h:.1} kW: shedding mining",
                        node.id, loads.worst_kw[n]
                    ),
                )
                .figures(loads.worst_kw[n], h);
                a.node = Some(node.id.clone());
                self.alert(a);
            }
        }
        if !over {
            return 0.0;
        }
        let topo = self.topo;
        self.shed(
            st,
            loads,
            Shed {
                scope: Scope::Node(n),
                miners: &topo.miners_under[n],
                gpus: &[],
                need_kw: need,
                margin_kw: self.p.shed_margin_fraction * node.budget_kw,
                mode: Mode::Now,
                reason: Reason::Ceiling,
                allow_gpu: false,
                worst: true,
            },
        )
    }

    /// The trough is for fast miners: the others fit in `B - sum(X) - other`.
    fn trough(&mut self, st: &mut ControlState, loads: &mut Loads, n: NodeIdx) {
        let need = loads.slow_kw[n] - loads.guaranteed_kw(self.site, n).max(0.0);
        if need <= EPS_KW {
            return;
        }
        let slow: Vec<usize> = self.topo.miners_under[n]
            .iter()
            .copied()
            .filter(|&i| !loads.fast[i])
            .collect();
        self.shed(
            st,
            loads,
            Shed {
                scope: Scope::Node(n),
                miners: &slow,
                gpus: &[],
                need_kw: need,
                margin_kw: self.p.shed_margin_fraction * self.site.nodes[n].budget_kw,
                mode: Mode::Now,
                reason: Reason::SlowInTrough,
                allow_gpu: false,
                worst: false,
            },
        );
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

    /// A silent meter with nothing below to bound it: miners to `0.8 x B - sum(S)`.
    fn silent(&mut self, st: &mut ControlState, loads: &mut Loads, n: NodeIdx) -> f64 {
        if !self.meter_silent(st, n) || self.bounded(n) {
            st.nodes[n].silent_alerted = false;
            return 0.0;
        }
        let node = &self.site.nodes[n];
        let b = node.budget_kw;
        let allowance = (SILENT_FRACTION * b - loads.reserve_kw[n]).max(0.0);
        let excess = loads.miners_kw[n] - allowance;
        if !st.nodes[n].silent_alerted {
            st.nodes[n].silent_alerted = true;
            let mut a = Alert::new(
                AlertKind::TelemetryMeterSilent,
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
        if excess <= EPS_KW {
            return 0.0;
        }
        let topo = self.topo;
        self.shed(
            st,
            loads,
            Shed {
                scope: Scope::Node(n),
                miners: &topo.miners_under[n],
                gpus: &topo.gpus_under[n],
                need_kw: excess,
                margin_kw: self.p.shed_margin_fraction * b,
                mode: Mode::Now,
                reason: Reason::MeterSilent,
                allow_gpu: false,
                worst: false,
            },
        )
    }

    fn unmet_alert(&mut self, st: &mut ControlState, loads: &Loads, n: NodeIdx, rem: f64) {
        if rem <= EPS_KW {
            st.nodes[n].unmet_alerted = false;
            return;
        }
        if st.nodes[n].unmet_alerted {
            return;
        }
        st.nodes[n].unmet_alerted = true;
        let node = &self.site.nodes[n];
        let mut a = Alert::new(
            AlertKind::PowerBudgetUnmet,
            Severity::Critical,
            format!(
                "`{}` needs {rem:.1} kW more shed than any lever left can give",
                node.id
            ),
        )
        .figures(loads.eff_kw(n), node.budget_kw);
        a.node = Some(node.id.clone());
        self.alert(a);
    }
}
