//! The output of one decision: actions for the actuator, alerts for the log, the next
//! control state, and a view of the loads the decision saw (for status and metrics).

use rackwarden_config::NodeIdx;
use serde::{Deserialize, Serialize};

use super::state::{Band, ControlState};

/// A lever the controller pulls, in shed order, then the restore counterparts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lever {
    /// Lower a miner's power target (multiplicative decrease).
    PowerTarget,
    /// Sleep / pause a miner through its API.
    Sleep,
    /// Switch off the PDU outlet feeding a miner.
    OutletOff,
    /// Lower a GPU node's per-GPU power limit.
    GpuCap,
    /// Raise a miner's power target (to nameplate: `to_w = nominal_w`, target cleared).
    PowerTargetRaise,
    /// Wake a sleeping miner.
    Wake,
    /// Switch a miner's outlet back on.
    OutletOn,
    /// Raise a GPU node's limit (to the GPUs' defaults when `to_w` reaches them).
    GpuCapLift,
}

impl Lever {
    /// Shed levers lower load; the others restore it.
    pub fn is_shed(self) -> bool {
        matches!(
            self,
            Lever::PowerTarget | Lever::Sleep | Lever::OutletOff | Lever::GpuCap
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Lever::PowerTarget => "power_target",
            Lever::Sleep => "sleep",
            Lever::OutletOff => "outlet_off",
            Lever::GpuCap => "gpu_cap",
            Lever::PowerTargetRaise => "power_target_raise",
            Lever::Wake => "wake",
            Lever::OutletOn => "outlet_on",
            Lever::GpuCapLift => "gpu_cap_lift",
        }
    }
}

/// The device an action is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    Miner(usize),
    GpuNode(usize),
}

/// The constraint that caused an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// A node of the power tree (its budget).
    Node(NodeIdx),
    /// A cooling zone (its N+1 or N capacity).
    Zone(usize),
    /// No constraint: an operator override or an escalation of an earlier command.
    Device,
}

/// Why an action was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `P_eff` at or above the shed threshold (`shed_fraction x B`): the sustained
    /// projection went over the budget.
    Shed,
    /// A measured load at or above the emergency threshold (`emergency_fraction x H`),
    /// or a reading above a breaker rating.
    Emergency,
    /// Measured above B (an excursion, typically a GPU job starting in a trough that
    /// mining filled): fast miners shed in the same decision.
    Excursion,
    /// The worst case `P_worst` (every GPU at its cap, every shed failing) above the
    /// ceiling H.
    Ceiling,
    /// Miners that are not fast held more than the guaranteed allocation
    /// `B - sum(X) - other` (the trough is for fast miners only).
    SlowInTrough,
    /// A node meter silent with no device-level bound: miners down to `0.8 x B - GPU_reserve`.
    MeterSilent,
    /// A zone lost N+1.
    CoolingRedundancy,
    /// A zone's capacity is below its heat load.
    CoolingCapacity,
    /// The previous lever was not confirmed in time.
    Escalation,
    /// An operator override.
    Operator,
    /// Headroom came back, within the guaranteed allocation.
    Restore,
    /// Trough filling: a fast miner takes headroom the AI load leaves unused, above the
    /// guaranteed allocation.
    Fill,
    /// A shed command the previous run persisted as in flight, sent again after a
    /// restart (the run may have died before it left).
    Resume,
    /// A grid limit on the site's import (demand response: the API, an OpenADR event).
    Grid,
    /// The power price is above the miner's breakeven (price curtailment).
    Price,
}

impl Reason {
    /// Every reason, for the tests that check the names.
    pub const ALL: [Reason; 15] = [
        Reason::Shed,
        Reason::Emergency,
        Reason::Excursion,
        Reason::Ceiling,
        Reason::SlowInTrough,
        Reason::MeterSilent,
        Reason::CoolingRedundancy,
        Reason::CoolingCapacity,
        Reason::Escalation,
        Reason::Operator,
        Reason::Restore,
        Reason::Fill,
        Reason::Resume,
        Reason::Grid,
        Reason::Price,
    ];

    /// The name the journal, the API, the metrics and the logs all use (its serde name).
    pub fn name(self) -> &'static str {
        match self {
            Reason::Shed => "shed",
            Reason::Emergency => "emergency",
            Reason::Excursion => "excursion",
            Reason::Ceiling => "ceiling",
            Reason::SlowInTrough => "slow_in_trough",
            Reason::MeterSilent => "meter_silent",
            Reason::CoolingRedundancy => "cooling_redundancy",
            Reason::CoolingCapacity => "cooling_capacity",
            Reason::Escalation => "escalation",
            Reason::Operator => "operator",
            Reason::Restore => "restore",
            Reason::Fill => "fill",
            Reason::Resume => "resume",
            Reason::Grid => "grid",
            Reason::Price => "price",
        }
    }
}

/// One command for the actuator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub scope: Scope,
    /// The constraint's id (node or zone id; the device id for `Scope::Device`).
    pub constraint: String,
    pub device: Device,
    /// The miner's or GPU node's id.
    pub device_id: String,
    pub lever: Lever,
    /// Miners: committed power before and after, watts (a power target's `to_w` is the
    /// target to set). GPU nodes: the per-GPU limit before and after, watts.
    pub from_w: f64,
    pub to_w: f64,
    pub reason: Reason,
    /// Taken with the anti-cycling limits waived: a power emergency, a cooling loss or a
    /// silent meter (see `reason`).
    pub emergency: bool,
}

pub use crate::catalogue::{AlertKind, Severity};

/// One alert, fired on a transition (not every tick).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Its kind; serialized as its dotted name (`name`).
    #[serde(rename = "name")]
    pub kind: AlertKind,
    pub severity: Severity,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub device: Option<String>,
    /// The figure behind the alert (load, heat), kW.
    pub kw: Option<f64>,
    /// The limit it is compared with (budget, capacity), kW.
    pub budget_kw: Option<f64>,
    /// `kw / budget_kw`.
    pub fraction: Option<f64>,
    /// One line for humans.
    pub message: String,
}

impl Alert {
    /// Its dotted name (`power.budget.shed`).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    pub fn new(kind: AlertKind, severity: Severity, message: String) -> Alert {
        Alert {
            kind,
            severity,
            node: None,
            zone: None,
            device: None,
            kw: None,
            budget_kw: None,
            fraction: None,
            message,
        }
    }

    pub(crate) fn figures(mut self, kw: f64, budget_kw: f64) -> Alert {
        self.kw = Some(kw);
        self.budget_kw = Some(budget_kw);
        self.fraction = (budget_kw > 0.0).then(|| kw / budget_kw);
        self
    }
}

/// A node as the decision saw it (before its actions).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NodeView {
    /// Sustained budget B, kW.
    pub budget_kw: f64,
    /// Never-trip ceiling H, kW.
    pub ceiling_kw: f64,
    /// Feed-forward projection `P_proj = sum(S) + miners + other`, kW.
    pub proj_kw: f64,
    /// Worst case `P_worst = sum(X) + miners + other`, kW.
    pub worst_kw: f64,
    /// `max(P_proj, measured peak less in-flight sheds)`, kW.
    pub eff_kw: f64,
    /// Fresh measured peak, kW (None: no fresh meter).
    pub measured_kw: Option<f64>,
    /// Worst-case GPU reserve `sum(X)` under the node, kW.
    pub gpu_reserve_kw: f64,
    /// Sustained GPU reserve `sum(S)` under the node, kW.
    pub gpu_sustained_kw: f64,
    /// Mining the node allows, `M_n` (its ancestors' limits included), kW.
    pub mining_allowance_kw: f64,
    /// The guaranteed mining allocation `B - sum(X) - other` (ancestors included), kW.
    pub guaranteed_kw: f64,
    /// Miners' committed power under the node, kW.
    pub mining_kw: f64,
    pub band: Band,
    /// Restores are frozen here (stale meter at or below it).
    pub frozen: bool,
}

/// A cooling zone as the decision saw it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ZoneView {
    pub heat_kw: f64,
    pub available_kw: f64,
    pub largest_kw: f64,
    pub n_plus_1: bool,
    pub n: bool,
}

/// The result of one decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub alerts: Vec<Alert>,
    #[serde(skip)]
    pub state: ControlState,
    pub nodes: Vec<NodeView>,
    /// Filled on slow ticks only (cooling is checked every slow tick).
    pub zones: Vec<ZoneView>,
    /// Under a grid limit: how far the site's load stays above it after this
    /// decision's sheds (what mining could not give), kW; 0 without a limit.
    pub grid_shortfall_kw: f64,
    /// Miners asleep that the power price keeps asleep.
    pub price_curtailed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_and_lever_names_are_their_serde_names() {
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.name(), "{r:?}");
        }
        for l in [
            Lever::PowerTarget,
            Lever::Sleep,
            Lever::OutletOff,
            Lever::GpuCap,
            Lever::PowerTargetRaise,
            Lever::Wake,
            Lever::OutletOn,
            Lever::GpuCapLift,
        ] {
            assert_eq!(serde_json::to_value(l).unwrap(), l.name(), "{l:?}");
        }
    }
}
