//! Mining's own account beyond its energy: the miner-hours it spent curtailed, by
//! cause, and the energy trough filling gave it (docs/energy.md).
//!
//! A miner is curtailed while its intent is not `normal` (a power target below its
//! nameplate, asleep, outlet off); its cause is the reason of the shed that curtailed it
//! (an escalation keeps the first cause). Trough energy is what mining drew above its
//! guaranteed allocation `B - sum(X) - other` on each feed (docs/control.md): the
//! energy only the measured-reserve model lets it have.

use std::collections::BTreeMap;

use serde::Serialize;

use super::meter::slot_of;
use crate::control::{Action, ControlState, Device, Intent, Millis, NodeView, Reason};

/// Why a miner was curtailed, as the energy report sums it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A power limit: budget, ceiling, excursion, emergency, a silent meter, the
    /// trough kept for fast miners.
    Power,
    /// A cooling zone short of N+1 or of capacity.
    Cooling,
    /// An operator override.
    Operator,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::Power => "power",
            Cause::Cooling => "cooling",
            Cause::Operator => "operator",
        }
    }

    pub fn of(r: Reason) -> Option<Cause> {
        match r {
            Reason::Shed
            | Reason::Emergency
            | Reason::Excursion
            | Reason::Ceiling
            | Reason::SlowInTrough
            | Reason::MeterSilent => Some(Cause::Power),
            Reason::CoolingRedundancy | Reason::CoolingCapacity => Some(Cause::Cooling),
            Reason::Operator => Some(Cause::Operator),
            // An escalation carries on the shed it escalates; a restore is no cause.
            _ => None,
        }
    }
}

/// A decision further apart than this from the last is not counted across (the agent
/// was stopped, or stood by): its time is not known.
const MAX_STEP_MS: Millis = 30_000;

/// Miner-seconds curtailed per (slot, cause) and trough kWh per slot, since the last
/// [`MiningBook::take`].
#[derive(Debug, Default, PartialEq)]
pub struct MiningTake {
    pub curtailed_s: BTreeMap<(Millis, Cause), f64>,
    pub trough_kwh: BTreeMap<Millis, f64>,
}

#[derive(Debug)]
pub struct MiningBook {
    cause: Vec<Option<Cause>>,
    last: Option<(Millis, f64)>,
    take: MiningTake,
}

impl MiningBook {
    pub fn new(miners: usize) -> MiningBook {
        MiningBook {
            cause: vec![None; miners],
            last: None,
            take: MiningTake::default(),
        }
    }

    /// One decision at `now`: `state` the intent it leaves, `actions` what it sent,
    /// `feeds` the feeds' views (mining kW and guaranteed allocation). The time since
    /// the last decision is counted at the last decision's figures.
    pub fn on_decision(
        &mut self,
        now: Millis,
        state: &ControlState,
        actions: &[Action],
        feeds: &[&NodeView],
    ) {
        if let Some((t0, trough_kw)) = self.last {
            let dt = now.saturating_sub(t0);
            if dt > 0 && dt <= MAX_STEP_MS {
                #[allow(clippy::cast_precision_loss)]
                let secs = dt as f64 / 1000.0;
                let slot = slot_of(t0);
                let mut per = [0.0_f64; 3];
                for c in self.cause.iter().flatten() {
                    per[*c as usize] += secs;
                }
                for (c, s) in [Cause::Power, Cause::Cooling, Cause::Operator]
                    .into_iter()
                    .zip(per)
                {
                    if s > 0.0 {
                        *self.take.curtailed_s.entry((slot, c)).or_default() += s;
                    }
                }
                if trough_kw > 0.0 {
                    *self.take.trough_kwh.entry(slot).or_default() += trough_kw * secs / 3600.0;
                }
            }
        }
        for a in actions {
            let Device::Miner(i) = a.device else { continue };
            if !a.lever.is_shed() {
                continue;
            }
            if let (Some(slot), Some(c)) = (self.cause.get_mut(i), Cause::of(a.reason)) {
                if slot.is_none() {
                    *slot = Some(c);
                }
            }
        }
        for (i, m) in state.miners.iter().enumerate() {
            match (m.intent, self.cause.get_mut(i)) {
                (Intent::Normal, Some(c)) => *c = None,
                // Curtailed before this run (a persisted intent): a power cause unless
                // a shed said otherwise.
                (_, Some(c @ None)) => *c = Some(Cause::Power),
                _ => {}
            }
        }
        let trough: f64 = feeds
            .iter()
            .map(|n| (n.mining_kw - n.guaranteed_kw).max(0.0))
            .sum();
        self.last = Some((now, trough));
    }

    /// What was counted since the last call.
    pub fn take(&mut self) -> MiningTake {
        std::mem::take(&mut self.take)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::control::{Band, Lever, Scope};

    fn site() -> rackwarden_config::Site {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site.toml");
        rackwarden_config::load(&p).unwrap()
    }

    fn shed(i: usize, lever: Lever, reason: Reason) -> Action {
        Action {
            scope: Scope::Device,
            constraint: String::new(),
            device: Device::Miner(i),
            device_id: format!("m{i}"),
            lever,
            from_w: 3000.0,
            to_w: 0.0,
            reason,
            emergency: false,
        }
    }

    fn feed(mining_kw: f64, guaranteed_kw: f64) -> NodeView {
        NodeView {
            budget_kw: 456.0,
            ceiling_kw: 494.0,
            proj_kw: 0.0,
            worst_kw: 0.0,
            eff_kw: 0.0,
            measured_kw: None,
            gpu_reserve_kw: 0.0,
            gpu_sustained_kw: 0.0,
            mining_allowance_kw: 0.0,
            guaranteed_kw,
            mining_kw,
            band: Band::default(),
            frozen: false,
        }
    }

    #[test]
    fn curtailed_time_counts_by_the_first_cause_and_trough_above_the_guarantee() {
        let site = site();
        let mut st = ControlState::new(&site, 0);
        let mut b = MiningBook::new(site.miners.len());
        let t0 = 1_800_000_000_000 - 1_800_000_000_000 % crate::energy::meter::SLOT_MS;
        let f = feed(300.0, 238.0);
        // Miner 0 slept for power, miner 1 for cooling; its escalation keeps cooling.
        st.miners[0].intent = Intent::Sleep;
        st.miners[1].intent = Intent::OutletOff;
        b.on_decision(
            t0,
            &st,
            &[
                shed(0, Lever::Sleep, Reason::Shed),
                shed(1, Lever::Sleep, Reason::CoolingCapacity),
                shed(1, Lever::OutletOff, Reason::Escalation),
            ],
            &[&f],
        );
        b.on_decision(t0 + 10_000, &st, &[], &[&f]);
        // Miner 0 restored: it no longer counts.
        st.miners[0].intent = Intent::Normal;
        b.on_decision(t0 + 20_000, &st, &[], &[&feed(200.0, 238.0)]);
        // A pause longer than a decision could take (a stop) is not counted.
        b.on_decision(t0 + 200_000, &st, &[], &[&f]);
        let m = b.take();
        assert_eq!(m.curtailed_s[&(t0, Cause::Power)], 20.0);
        assert_eq!(m.curtailed_s[&(t0, Cause::Cooling)], 20.0 + 0.0);
        // 62 kW above the guarantee for 20 s; nothing at 200 kW.
        assert!(
            (m.trough_kwh[&t0] - 62.0 * 20.0 / 3600.0).abs() < 1e-9,
            "{m:?}"
        );
        assert_eq!(b.take(), MiningTake::default());
    }
}
