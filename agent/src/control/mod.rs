//! The control core: the pure decision function of docs/control.md.
//!
//! Files (none does I/O, none is async, none reads a clock; time is the `now` argument
//! and the only randomness is a ChaCha RNG seeded from `policy.seed` and `now`):
//! - `mod.rs`: this map, [`Millis`], [`Tick`], re-exports.
//! - `snapshot.rs`: [`Snapshot`], the latest reading of every source with its time stamp,
//!   and the operator [`Overrides`].
//! - `state.rs`: [`ControlState`], what persists between ticks and across restarts
//!   (miner intents, commands in flight, cycle history, GPU caps, timers, alert flags).
//! - `plan.rs`: [`Plan`] (actions, alerts, next state, load views), [`Action`], [`Lever`],
//!   [`Alert`], their kinds ([`AlertKind`], the catalogue).
//! - `topology.rs`: [`Topology`], per-site indices built once (paths, shed order).
//! - `load.rs`: [`Loads`]: per GPU rack the worst-case reserve X and the sustained
//!   reserve S (rolling peak), per node `P_proj`, `P_worst`, measured load, the mining
//!   allowance `M_n` and the guaranteed allocation; which miners are fast.
//! - `decide/`: [`decide`], one tick of the policy: `telemetry.rs`, `confirm.rs`
//!   (read-backs, learned times, escalation), `act.rs` (the levers), `power.rs` (sheds
//!   against B and H), `shed.rs` (one shed in lever order), `cooling.rs`, `restore.rs`
//!   (restores and trough filling).
//!
//! Use: build a [`Topology`] from the [`rackwarden_config::Site`] once, start from
//! [`ControlState::new`] (or [`ControlState::for_site`] on a persisted state), and every
//! tick call [`decide`] with the current [`Snapshot`]; carry `plan.state` to the next
//! tick (persist it first), hand `plan.actions` to the actuator, log `plan.alerts`.

pub mod decide;
pub mod load;
pub mod plan;
pub mod snapshot;
pub mod state;
pub mod topology;

pub use decide::{decide, decide_owned};
pub use load::Loads;
pub use plan::{
    Action, Alert, AlertKind, Device, Lever, NodeView, Plan, Reason, Scope, Severity, ZoneView,
};
pub use snapshot::{
    GpuLimits, GpuNodeReading, GridInput, MeterReading, MinerMode, MinerReading, OutletReading,
    Overrides, Snapshot, UnitReading, UnitState,
};
pub use state::{Band, ControlState, GpuState, Intent, MinerState, NodeState, Pending, ZoneState};
pub use topology::Topology;

/// Milliseconds on the agent's monotonic clock.
pub type Millis = u64;

/// Which loop a decision runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tick {
    /// Every `fast_loop_ms` (1 s): confirmations, escalations, sheds.
    Fast,
    /// Every `slow_loop_ms` (5 s): all of the fast tick, plus cooling and restores.
    Slow,
}
