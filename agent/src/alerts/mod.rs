//! Alerts: one structured event per alert, `target = "rackwarden::alert"`, with stable
//! fields (`alert`, `severity`, `node`/`zone`/`device`, `kw`, `budget_kw`, `fraction`).
//!
//! The names `decide` emits are in [`crate::control::ALERTS`]; the runtime's own are in
//! [`RUNTIME_ALERTS`]. docs/alerts.md lists both, and a test keeps it in step.
//!
//! With `[alerts]`, [`log`] also hands each alert to [`deliver`] (Alertmanager, a
//! webhook) without waiting on it.

use tracing::{error, info, warn};

pub mod deliver;

use crate::control::{Alert, Severity};

/// The control intent file could not be read and was set aside.
pub const STATE_CORRUPT: &str = "control.state.corrupt";
/// The control intent could not be committed to the database (kept in memory, retried).
pub const STATE_UNSAVED: &str = "control.state.unsaved";
/// A new config was refused on reload; the old one stays in force.
pub const CONFIG_RELOAD_FAILED: &str = "config.reload.failed";
/// A new config was validated and is in force.
pub const CONFIG_RELOADED: &str = "config.reloaded";

/// An operator override was set over the HTTP API (miner or rack held curtailed, unit in
/// maintenance).
pub const OPERATOR_OVERRIDE_SET: &str = "operator.override.set";
/// An operator override was cleared.
pub const OPERATOR_OVERRIDE_CLEARED: &str = "operator.override.cleared";

/// HA (issue 11): this agent won the election and acts from now on.
pub const HA_LEADER_ACQUIRED: &str = "ha.leader.acquired";
/// HA: this agent stopped acting (lease not renewed in time, etcd unreachable, another
/// leader's key in place, shutdown).
pub const HA_LEADER_LOST: &str = "ha.leader.lost";
/// HA: an action decided under a leadership that has since ended was refused before
/// the wire (fencing).
pub const HA_ACTION_FENCED: &str = "ha.action.fenced";
/// HA: the etcd cluster cannot be reached; this agent cannot lead (it keeps polling).
pub const HA_ETCD_UNREACHABLE: &str = "ha.etcd.unreachable";
/// HA: the leader could not store its control intent in etcd (it keeps acting while its
/// lease holds; a takeover would start from the last stored intent).
pub const HA_INTENT_UNSAVED: &str = "ha.intent.unsaved";
/// Energy accounting: the agent's database could not be read and was set aside (a new
/// one started).
pub const ENERGY_STORE_CORRUPT: &str = "energy.store.corrupt";
/// Energy accounting: slots could not be committed to the database (kept in memory and
/// retried).
pub const ENERGY_STORE_FAILED: &str = "energy.store.failed";

/// Alerts raised by the runtime rather than by `decide`.
pub const RUNTIME_ALERTS: &[&str] = &[
    STATE_CORRUPT,
    STATE_UNSAVED,
    CONFIG_RELOAD_FAILED,
    CONFIG_RELOADED,
    OPERATOR_OVERRIDE_SET,
    OPERATOR_OVERRIDE_CLEARED,
    HA_LEADER_ACQUIRED,
    HA_LEADER_LOST,
    HA_ACTION_FENCED,
    HA_ETCD_UNREACHABLE,
    HA_INTENT_UNSAVED,
    ENERGY_STORE_CORRUPT,
    ENERGY_STORE_FAILED,
];

/// Every alert name the agent can emit.
pub fn catalogue() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = crate::control::ALERTS.to_vec();
    v.extend_from_slice(RUNTIME_ALERTS);
    // Said by the GPU sources themselves, once per host or per unsupported call.
    for name in [
        rackwarden_protocols::gpu::ALERT_NVML_UNAVAILABLE,
        rackwarden_protocols::gpu::ALERT_NVML_UNSUPPORTED,
    ] {
        if !v.contains(&name) {
            v.push(name);
        }
    }
    v
}

/// Logs one alert as a structured event, and offers it to delivery (`[alerts]`; never
/// blocks).
pub fn log(a: &Alert, now_ms: u64) {
    macro_rules! emit {
        ($mac:ident) => {
            $mac!(
                target: "rackwarden::alert",
                alert = a.name,
                severity = a.severity.name(),
                node = a.node.as_deref(),
                zone = a.zone.as_deref(),
                device = a.device.as_deref(),
                kw = a.kw,
                budget_kw = a.budget_kw,
                fraction = a.fraction,
                now_ms,
                "{}",
                a.message
            )
        };
    }
    match a.severity {
        Severity::Critical => emit!(error),
        Severity::Warning => emit!(warn),
        Severity::Info => emit!(info),
    }
    deliver::offer(a);
}
