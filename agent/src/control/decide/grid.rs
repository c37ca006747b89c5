//! Grid signals (`[grid]`, docs/grid.md): a site import limit from outside (demand
//! response) and the power price (price curtailment), with the ordinary levers.
//!
//! - A limit L on the site: sheds start when `P_eff > (1 - m) x L` and aim at
//!   `(1 - 2m) x L` (m = `grid.margin_fraction`), in shed order (least efficient
//!   first), power targets before sleeps; restores and trough filling stop at
//!   `(1 - 3m) x L`. GPUs are capped for it only with `grid.allow_gpu_caps`; what mining
//!   cannot give is reported (`grid.target.unmet`, with the shortfall).
//! - A price: a miner whose breakeven (`hashprice x 1e6 / (24 x J/TH)` USD/MWh) is at or
//!   under the price sleeps (slow tick, least efficient first, anti-cycling kept); it
//!   may come back once the price is `price_hysteresis_fraction` under its breakeven.
//!
//! A grid signal only ever lowers what mining may hold: it never wakes a miner and never
//! lifts a limit of the power policy.

use super::super::plan::{Alert, AlertKind, Reason, Scope, Severity};
use super::super::state::{ControlState, Intent};
use super::super::Loads;
use super::shed::Shed;
use super::{sleep_cycling_ok, Cx, Mode, EPS_KW};

/// The site node.
const SITE: usize = 0;

/// The power price (USD/MWh) at which a miner of `j_th` J/TH earns what its power costs,
/// with mining revenue `hashprice` USD per TH/s per day.
pub fn breakeven_usd_per_mwh(hashprice: f64, j_th: f64) -> f64 {
    // Revenue per day: hashprice x W / (J/TH); energy per day: W x 24 h.
    hashprice * 1e6 / (24.0 * j_th)
}

impl Cx<'_> {
    /// The fill line under a grid limit, kW (None: no limit in force).
    pub(super) fn grid_fill_line(&self) -> Option<f64> {
        let l = self.snap.grid.limit_kw?;
        Some(l * (1.0 - 3.0 * self.site.grid.margin_fraction))
    }

    /// Miner `i`'s breakeven price, USD/MWh (None: no price curtailment configured).
    fn breakeven(&self, i: usize) -> Option<f64> {
        let h = self.site.grid.hashprice_usd_per_th_day?;
        let j = self.site.miners[i]
            .efficiency_j_th
            .unwrap_or(rackwarden_protocols::miner::DEFAULT_EFFICIENCY_J_TH);
        Some(breakeven_usd_per_mwh(h, j))
    }

    /// Whether the price keeps miner `i` asleep (its breakeven, less the hysteresis, is
    /// at or under the price).
    pub(super) fn price_blocked(&self, i: usize) -> bool {
        let (Some(p), Some(b)) = (self.snap.grid.price_usd_per_mwh, self.breakeven(i)) else {
            return false;
        };
        p >= b * (1.0 - self.site.grid.price_hysteresis_fraction)
    }

    /// The site under its grid limit, every tick.
    pub(super) fn grid(&mut self, st: &mut ControlState, loads: &mut Loads) {
        if self.site.nodes.is_empty() {
            return;
        }
        let limit = self.snap.grid.limit_kw;
        self.grid_alerts(st, loads, limit);
        let Some(l) = limit else {
            st.nodes[SITE].grid_unmet_alerted = false;
            return;
        };
        let m = self.site.grid.margin_fraction * l;
        let eff = loads.eff_kw(SITE);
        let rem = if eff > l - m + EPS_KW {
            let topo = self.topo;
            let allow_gpu = self.site.grid.allow_gpu_caps;
            self.shed(
                st,
                loads,
                Shed {
                    scope: Scope::Node(SITE),
                    miners: &topo.miners_under[SITE],
                    gpus: if allow_gpu {
                        &topo.gpus_under[SITE]
                    } else {
                        &[]
                    },
                    need_kw: eff - (l - 2.0 * m),
                    margin_kw: m,
                    mode: Mode::Now,
                    reason: Reason::Grid,
                    allow_gpu,
                    worst: false,
                },
            )
        } else {
            0.0
        };
        // What the load would still be above the limit itself after this decision.
        let short = (loads.eff_kw(SITE) - l).max(rem - m);
        self.grid_shortfall_kw = short.max(0.0);
        let ns = &mut st.nodes[SITE];
        if short > EPS_KW && !ns.grid_unmet_alerted {
            ns.grid_unmet_alerted = true;
            let mut a = Alert::new(
                AlertKind::GridTargetUnmet,
                Severity::Warning,
                format!(
                    "site load {:.1} kW cannot meet the grid limit {l:.1} kW ({}): {short:.1} kW short with no mining left to shed{}",
                    loads.eff_kw(SITE),
                    self.snap.grid.limit_from,
                    if self.site.grid.allow_gpu_caps { "" } else { "; GPUs are not capped for grid events" }
                ),
            )
            .figures(loads.eff_kw(SITE), l);
            a.node = Some(self.site.nodes[SITE].id.clone());
            self.alert(a);
        } else if short <= EPS_KW && ns.grid_unmet_alerted {
            ns.grid_unmet_alerted = false;
            let mut a = Alert::new(
                AlertKind::GridTargetMet,
                Severity::Info,
                format!("site load within the grid limit {l:.1} kW again"),
            )
            .figures(loads.eff_kw(SITE), l);
            a.node = Some(self.site.nodes[SITE].id.clone());
            self.alert(a);
        }
    }

    /// `grid.target.active` when a limit starts or changes, `grid.target.ended` when
    /// none is left.
    fn grid_alerts(&mut self, st: &mut ControlState, loads: &Loads, limit: Option<f64>) {
        let old = st.nodes[SITE].grid_limit_kw;
        let same = match (old, limit) {
            (Some(a), Some(b)) => (a - b).abs() <= EPS_KW,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        st.nodes[SITE].grid_limit_kw = limit;
        let eff = loads.eff_kw(SITE);
        let mut a = match limit {
            Some(l) => Alert::new(
                AlertKind::GridTargetActive,
                Severity::Info,
                format!(
                    "grid limit {l:.1} kW in force ({}); site load {eff:.1} kW",
                    self.snap.grid.limit_from
                ),
            )
            .figures(eff, l),
            None => {
                st.nodes[SITE].grid_unmet_alerted = false;
                Alert::new(
                    AlertKind::GridTargetEnded,
                    Severity::Info,
                    format!("no grid limit in force any more; site load {eff:.1} kW"),
                )
            }
        };
        a.node = Some(self.site.nodes[SITE].id.clone());
        self.alert(a);
    }

    /// Price curtailment (slow tick): miners at or above their breakeven sleep, least
    /// efficient first, within their anti-cycling limits.
    pub(super) fn price(&mut self, st: &mut ControlState, loads: &mut Loads) {
        let Some(price) = self.snap.grid.price_usd_per_mwh else {
            return;
        };
        if self.site.grid.hashprice_usd_per_th_day.is_none() || self.site.nodes.is_empty() {
            return;
        }
        let topo = self.topo;
        for &i in &topo.miners_under[SITE] {
            let Some(b) = self.breakeven(i) else {
                continue;
            };
            let ms_ = &st.miners[i];
            if price < b
                || ms_.pending.is_some()
                || !matches!(ms_.intent, Intent::Normal | Intent::Target { .. })
                || !self.site.miners[i].firmware.levers().sleep
                || self.snap.undriveable(i)
                || !(self.exempt(i) || sleep_cycling_ok(self.p, ms_, self.now))
            {
                continue;
            }
            self.sleep(st, loads, i, Scope::Node(SITE), Reason::Price, false);
        }
    }
}
