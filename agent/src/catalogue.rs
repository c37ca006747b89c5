//! The alert catalogue: every alert the agent can raise, as one enum with its name, its
//! severity and a line of doc. docs/alerts.md is checked against it
//! (agent/tests/alerts_catalogue.rs), and [`PAIRS`] says which alert resolves which.
//!
//! A leaf module: it imports nothing from the crate, so the control core, the runtime and
//! the delivery can all use it.

use serde::{Deserialize, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

macro_rules! alert_kinds {
    ($($variant:ident = $name:literal, $severity:ident, $doc:literal;)*) => {
        /// One kind of alert. Its dotted name is what the logs, the journal, the API,
        /// Alertmanager and the webhook carry.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum AlertKind {
            $(#[doc = $doc] $variant,)*
        }

        impl AlertKind {
            /// Every kind, in docs/alerts.md's order.
            pub const ALL: &'static [AlertKind] = &[$(AlertKind::$variant,)*];

            /// The dotted name (`power.budget.shed`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(AlertKind::$variant => $name,)*
                }
            }

            /// The severity docs/alerts.md gives it. A few are raised at another level
            /// too (`miner.slow` is `info` when the miner is back within bounds,
            /// `power.excursion` a warning when it lasted long): the alert carries its
            /// own.
            pub const fn severity(self) -> Severity {
                match self {
                    $(AlertKind::$variant => Severity::$severity,)*
                }
            }

            /// One line on what it means.
            pub const fn doc(self) -> &'static str {
                match self {
                    $(AlertKind::$variant => $doc,)*
                }
            }
        }
    };
}

alert_kinds! {
    PowerBudgetShed = "power.budget.shed", Warning, "A node's effective load reached its sustained budget B: mining under it is shed";
    PowerBudgetEmergency = "power.budget.emergency", Critical, "A node's measured load reached its never-trip ceiling H or a breaker rating: miners sleep now";
    PowerExcursion = "power.excursion", Info, "A node measured above its budget B is back within it (length and peak in the message)";
    PowerExcursionLong = "power.excursion.long", Critical, "A node has been above B longer than excursion_max_s with fast mining left: emergency levers";
    PowerCeilingShed = "power.ceiling.shed", Warning, "A node's worst case went above its ceiling H: mining is shed until it is not";
    MinerSlow = "miner.slow", Warning, "A miner's learned p99 shed time went above fast_shed_s";
    MinerNoDriver = "miner.no_driver", Warning, "No driver could be built for a miner: no command is sent to it, it counts at nameplate";
    GridTargetActive = "grid.target.active", Info, "A grid limit on the site's import is in force or changed";
    GridTargetEnded = "grid.target.ended", Info, "No grid limit is in force any more";
    GridTargetUnmet = "grid.target.unmet", Warning, "Mining left under the site cannot bring its load under the grid limit";
    GridTargetMet = "grid.target.met", Info, "The site's load is within the grid limit again";
    PowerBudgetUnmet = "power.budget.unmet", Critical, "Even with every lever left, a node cannot be brought under its budget";
    PowerBudgetRestored = "power.budget.restored", Info, "A node is back under the fill line; restores and trough filling resume after the hold";
    CoolingRedundancyLost = "cooling.redundancy.lost", Critical, "A zone no longer has N+1";
    CoolingRedundancyRestored = "cooling.redundancy.restored", Info, "The zone has N+1 again; restores resume there";
    CoolingCapacityExceeded = "cooling.capacity.exceeded", Critical, "A zone's capacity is below its heat load (not even N)";
    CoolingCapacityRestored = "cooling.capacity.restored", Info, "The zone's capacity covers its heat load again";
    TelemetryStale = "telemetry.stale", Warning, "A source has not answered within its staleness limit: it reads as its worst case";
    TelemetryFresh = "telemetry.fresh", Info, "A stale source answers again";
    TelemetryMeterSilent = "telemetry.meter.silent", Critical, "A node meter has been silent too long with no device-level bound below it: mining is reduced";
    TelemetryNvmlUnavailable = "telemetry.nvml.unavailable", Warning, "NVML is absent on a GPU host: its GPUs are reserved at the rack's rated maximum";
    TelemetryNvmlUnsupported = "telemetry.nvml.unsupported", Warning, "An NVML call is unsupported on a GPU: that figure is missing and the documented fallback applies";
    ActionUnconfirmed = "action.unconfirmed", Warning, "A command was not confirmed by a later reading in time: the next lever is used";
    GpuCapApplied = "gpu.cap.applied", Warning, "A GPU node's power limit was lowered";
    GpuCapLifted = "gpu.cap.lifted", Info, "A GPU cap was lifted (always before any miner under it is woken)";
    ControlStartupHold = "control.startup.hold", Info, "The agent (re)started: no restores until every input has been fresh for the hold";
    ControlStartupReleased = "control.startup.released", Info, "The start-up hold is over; restores are allowed when the policy allows them";
    ControlStateCorrupt = "control.state.corrupt", Critical, "The control intent could not be read and was set aside";
    ControlStateUnsaved = "control.state.unsaved", Critical, "The control intent could not be committed to the database (kept in memory, retried)";
    EnergyStoreCorrupt = "energy.store.corrupt", Critical, "The agent's database could not be opened for energy accounting: set aside, a new one started";
    EnergyStoreFailed = "energy.store.failed", Warning, "Energy slots could not be committed to the database (kept in memory, retried)";
    ConfigReloaded = "config.reloaded", Info, "SIGHUP: the site file was validated and is now in force";
    ConfigReloadFailed = "config.reload.failed", Warning, "SIGHUP: the site file is invalid; the running config stays in force";
    OperatorOverrideSet = "operator.override.set", Warning, "An operator override was set over the HTTP API";
    OperatorOverrideCleared = "operator.override.cleared", Info, "An operator override was cleared";
    HaLeaderAcquired = "ha.leader.acquired", Info, "HA: this agent won the election and acts from now on";
    HaLeaderLost = "ha.leader.lost", Critical, "HA: this agent stopped acting (lease not renewed, etcd unreachable, another leader, shutdown)";
    HaActionFenced = "ha.action.fenced", Warning, "HA: an action decided under a leadership that has since ended was refused before the wire";
    HaEtcdUnreachable = "ha.etcd.unreachable", Warning, "HA: the etcd cluster cannot be reached; this agent cannot lead";
    HaIntentUnsaved = "ha.intent.unsaved", Warning, "HA: the leader could not store its control intent in etcd";
}

impl AlertKind {
    /// The kind with this dotted name.
    pub fn from_name(name: &str) -> Option<AlertKind> {
        AlertKind::ALL.iter().copied().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for AlertKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Which alert resolves which: `(fires, resolved_by)`, for the same node / zone /
/// device. Where both are the same (`miner.slow`), the `info` event resolves the one of
/// higher severity. Alerts not listed here as `fires` are one-shots.
pub const PAIRS: &[(AlertKind, AlertKind)] = &[
    (AlertKind::PowerBudgetShed, AlertKind::PowerBudgetRestored),
    (
        AlertKind::PowerBudgetEmergency,
        AlertKind::PowerBudgetRestored,
    ),
    (AlertKind::PowerBudgetUnmet, AlertKind::PowerBudgetRestored),
    (AlertKind::PowerExcursionLong, AlertKind::PowerExcursion),
    (
        AlertKind::CoolingRedundancyLost,
        AlertKind::CoolingRedundancyRestored,
    ),
    (
        AlertKind::CoolingCapacityExceeded,
        AlertKind::CoolingCapacityRestored,
    ),
    (AlertKind::TelemetryStale, AlertKind::TelemetryFresh),
    (AlertKind::GpuCapApplied, AlertKind::GpuCapLifted),
    (
        AlertKind::ControlStartupHold,
        AlertKind::ControlStartupReleased,
    ),
    (AlertKind::MinerSlow, AlertKind::MinerSlow),
    (AlertKind::GridTargetActive, AlertKind::GridTargetEnded),
    (AlertKind::GridTargetUnmet, AlertKind::GridTargetMet),
    (AlertKind::GridTargetUnmet, AlertKind::GridTargetEnded),
    (
        AlertKind::OperatorOverrideSet,
        AlertKind::OperatorOverrideCleared,
    ),
    (AlertKind::HaLeaderLost, AlertKind::HaLeaderAcquired),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for k in AlertKind::ALL {
            assert!(seen.insert(k.name()), "{} twice", k.name());
            assert_eq!(AlertKind::from_name(k.name()), Some(*k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
            assert!(!k.doc().is_empty());
        }
        assert_eq!(AlertKind::from_name("power.budget.nope"), None);
    }
}
