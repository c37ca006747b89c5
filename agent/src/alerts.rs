//! Alerts: one structured event per alert, `target = "rackwarden::alert"`, with stable
//! fields (`alert`, `severity`, `node`/`zone`/`device`, `kw`, `budget_kw`, `fraction`).
//!
//! The names `decide` emits are in [`crate::control::ALERTS`]; the runtime's own are in
//! [`RUNTIME_ALERTS`]. docs/alerts.md lists both, and a test keeps it in step.

use tracing::{error, info, warn};

use crate::control::{Alert, Severity};

/// The control intent file could not be read and was set aside.
pub const STATE_CORRUPT: &str = "control.state.corrupt";
/// A new config was refused on reload; the old one stays in force.
pub const CONFIG_RELOAD_FAILED: &str = "config.reload.failed";
/// A new config was validated and is in force.
pub const CONFIG_RELOADED: &str = "config.reloaded";

/// An operator override was set over the HTTP API (miner or rack held curtailed, unit in
/// maintenance).
pub const OPERATOR_OVERRIDE_SET: &str = "operator.override.set";
/// An operator override was cleared.
pub const OPERATOR_OVERRIDE_CLEARED: &str = "operator.override.cleared";

/// Alerts raised by the runtime rather than by `decide`.
pub const RUNTIME_ALERTS: &[&str] = &[
    STATE_CORRUPT,
    CONFIG_RELOAD_FAILED,
    CONFIG_RELOADED,
    OPERATOR_OVERRIDE_SET,
    OPERATOR_OVERRIDE_CLEARED,
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

/// Logs one alert as a structured event.
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
}
