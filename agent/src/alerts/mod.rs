//! Alerts: one structured event per alert, `target = "rackwarden::alert"`, with stable
//! fields (`alert`, `severity`, `node`/`zone`/`device`, `kw`, `budget_kw`, `fraction`).
//!
//! Every kind is in [`crate::catalogue::AlertKind`] (name, severity, doc);
//! docs/alerts.md lists them, and a test keeps it in step.
//!
//! With `[alerts]`, [`log`] also hands each alert to [`deliver`] (Alertmanager, a
//! webhook) without waiting on it.

use tracing::{error, info, warn};

pub mod deliver;

use crate::control::{Alert, Severity};

pub use crate::catalogue::{AlertKind, PAIRS};

/// Every alert name the agent can emit ([`AlertKind::ALL`]).
pub fn catalogue() -> Vec<&'static str> {
    AlertKind::ALL.iter().map(|k| k.name()).collect()
}

/// Logs one alert as a structured event, and offers it to delivery (`[alerts]`; never
/// blocks).
pub fn log(a: &Alert, now_ms: u64) {
    macro_rules! emit {
        ($mac:ident) => {
            $mac!(
                target: "rackwarden::alert",
                alert = a.kind.name(),
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
