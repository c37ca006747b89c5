//! The action journal's rows: commands as they are decided (before the intent commit
//! that holds them) and as later readings confirm them or they escalate.

use rackwarden_config::Site;
use tracing::info;

use super::agent::Shared;
use super::clock::Millis;
use super::persist::ActionJournal;
use crate::control::{Action, ControlState};
use crate::store::journal::JournalRow;

/// Journals commands that a later reading confirmed (or that escalated unconfirmed).
pub(super) fn journal_confirmations(
    journal: &mut ActionJournal,
    site: &Site,
    old: &ControlState,
    new: &ControlState,
    now: Millis,
    dry_run: bool,
) {
    for (i, (o, n)) in old.miners.iter().zip(&new.miners).enumerate() {
        let Some(p) = o.pending else { continue };
        if n.pending.is_some_and(|np| np.issued_at == p.issued_at) {
            continue;
        }
        let confirmed = n.failed != Some(p.lever);
        let event = if confirmed {
            "action.confirmed"
        } else {
            // Not `action.unconfirmed`: that is the alert the decision raises for it.
            "action.escalated"
        };
        info!(
            event,
            now_ms = now,
            device = %site.miners[i].id,
            lever = p.lever.name(),
            "{} {} {}",
            p.lever.name(),
            site.miners[i].id,
            if confirmed { "confirmed by read-back" } else { "not confirmed in time: escalated" }
        );
        journal.record(JournalRow {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            now_ms: now,
            node: String::new(),
            device: site.miners[i].id.clone(),
            lever: p.lever.name().to_owned(),
            from_w: p.from_w,
            to_w: p.to_w,
            reason: if confirmed {
                "confirmed by read-back".into()
            } else {
                "not confirmed in time: escalated".into()
            },
            confirmed,
            dry_run,
            result: None,
        });
    }
}

/// Journals the actions about to be carried out, before the intent commit that holds
/// them (their rows go into the database in the same transaction). An action the
/// actuator will refuse for want of a driver is not journaled.
pub(super) fn journal_actions<'a>(
    shared: &Shared,
    journal: &mut ActionJournal,
    actions: impl IntoIterator<Item = &'a Action>,
    now: Millis,
    dry_run: bool,
) {
    for a in actions {
        if shared.io.lacks_driver(a) {
            continue;
        }
        journal.record(journal_row(
            a,
            now,
            dry_run,
            if dry_run { "would" } else { "sent" },
        ));
    }
}

pub(super) fn journal_row(a: &Action, now: Millis, dry_run: bool, result: &str) -> JournalRow {
    JournalRow {
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        now_ms: now,
        node: a.constraint.clone(),
        device: a.device_id.clone(),
        lever: a.lever.name().to_owned(),
        from_w: a.from_w,
        to_w: a.to_w,
        // The serde name, as the API and the logs spell it (`meter_silent`).
        reason: serde_json::to_value(a.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        confirmed: false,
        dry_run,
        result: Some(result.to_owned()),
    }
}
