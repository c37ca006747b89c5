//! The HA pair's side of the loop (docs/ha.md): a new leader takes over the intent the
//! last one stored in etcd; a leader stores its intent under its term's fence.

use rackwarden_config::Site;
use serde::Serialize;
use tracing::{info, warn};

use super::actuate::{execute, resend_after_restart};
use super::agent::Persisted;
use super::clock::Millis;
use super::journal::journal_actions;
use super::tick::Acting;
use crate::catalogue::AlertKind;
use crate::control::{self, Alert, ControlState, Device};
use crate::ha::Ha;
use crate::status::StatusHub;

/// [`Persisted`] borrowed for writing (the state file, the HA intent): serialising a
/// 30,000-miner state clones nothing.
#[derive(Serialize)]
pub(super) struct PersistedRef<'a> {
    pub(super) last_now: Millis,
    pub(super) control: &'a ControlState,
}

/// A new leader's first step: the intent the last leader stored in etcd replaces this
/// agent's own (a start-up hold follows, as after a restart: no wake until it is over).
pub(super) async fn take_over(
    h: &Ha,
    hub: &StatusHub,
    site: &Site,
    state: &mut ControlState,
    now: Millis,
) -> Result<(), crate::ha::HaError> {
    match h.read_intent().await? {
        Some(bytes) => match crate::ha::decode_intent(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|json| serde_json::from_slice::<Persisted>(&json).map_err(|e| e.to_string()))
        {
            Ok(p) => {
                *state = ControlState::for_site(site, &p.control, now);
                info!(
                    event = "ha.intent.taken",
                    node = h.node(),
                    curtailed = state
                        .miners
                        .iter()
                        .filter(|m| m.intent != control::Intent::Normal)
                        .count(),
                    "taking over the control intent stored by the last leader"
                );
            }
            Err(e) => {
                // Not ours to throw away: keep this agent's own intent and say so.
                hub.raise(
                    now,
                    &Alert::new(
                        AlertKind::ControlStateCorrupt,
                        control::Severity::Critical,
                        format!("intent stored in etcd unreadable ({e}); keeping this agent's own"),
                    ),
                );
                *state = ControlState::for_site(site, state, now);
            }
        },
        None => {
            info!(
                event = "ha.intent.none",
                node = h.node(),
                "no intent stored in etcd yet: starting from this agent's own"
            );
            *state = ControlState::for_site(site, state, now);
        }
    }
    Ok(())
}

/// Stores the intent in etcd under the term's fence.
pub(super) async fn store(
    h: &Ha,
    fence: i64,
    state: &ControlState,
    now: Millis,
) -> Result<(), crate::ha::HaError> {
    let json = serde_json::to_vec(&PersistedRef {
        last_now: now,
        control: state,
    })
    .unwrap_or_default();
    match crate::ha::encode_intent(&json) {
        Ok(bytes) => h.store_intent(fence, bytes).await,
        // Compressing into memory cannot fail short of allocation failure; say so.
        Err(e) => {
            warn!(error = %e, "control intent not compressed; not stored in etcd");
            Ok(())
        }
    }
}

impl super::tick::Loop {
    /// Who may act this tick: alone, the leader of a term (a new term first takes over
    /// the intent the last leader stored), or a standby (whose views follow the leader's
    /// intent).
    pub(super) async fn acting(&mut self, now: Millis) -> Acting {
        let Some(h) = self.agent.wiring.ha.clone() else {
            return Acting::Alone;
        };
        match h.leadership() {
            Some(l) if self.term == Some(l.fence) => Acting::Leader(l.fence),
            Some(l) => {
                // A new term: take over the intent the last leader stored before the
                // first action, or stand by another tick if it cannot be read.
                match take_over(&h, &self.agent.wiring.hub, &self.site, &mut self.state, now).await
                {
                    Ok(()) => {
                        self.term = Some(l.fence);
                        // The local database follows the intent taken over, whole.
                        self.intents.rewrite();
                        self.resend_taken_over(&h, l.fence, now).await;
                        Acting::Leader(l.fence)
                    }
                    Err(e) => {
                        warn!(error = %e, "elected, but the stored intent cannot be read: not acting yet");
                        Acting::Standby
                    }
                }
            }
            None => {
                self.term = None;
                // The standby's views follow the leader's intent (who is shed and why),
                // refreshed every 30 s; a takeover reads it afresh anyway.
                if now.saturating_sub(self.last_sync) >= 30_000 {
                    self.last_sync = now;
                    if let Ok(Some(p)) = h.read_intent().await.map(|b| {
                        b.and_then(|b| crate::ha::decode_intent(&b).ok())
                            .and_then(|j| serde_json::from_slice::<Persisted>(&j).ok())
                    }) {
                        self.state = ControlState::for_site(&self.site, &p.control, now);
                    }
                }
                Acting::Standby
            }
        }
    }

    /// Shed commands the last leader left in flight may never have reached their miners
    /// (it may have died between storing the intent and sending): sent again, as after a
    /// restart. A hot standby can see which of them did arrive (decide's own
    /// confirmation rule): those are not sent twice.
    async fn resend_taken_over(&mut self, h: &Ha, fence: i64, now: Millis) {
        let (site, snap) = (&self.site, &self.snap);
        let arrived: Vec<bool> = self
            .state
            .miners
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.pending
                    .is_some_and(|p| control::decide::command_confirmed(site, snap, i, &p, now))
            })
            .collect();
        let mut again = resend_after_restart(site, &mut self.state, now);
        again.retain(|a| !matches!(a.device, Device::Miner(i) if arrived[i]));
        if again.is_empty() {
            return;
        }
        info!(
            event = "state.resent",
            now_ms = now,
            commands = again.len(),
            "sending again {} shed command(s) the last leader left unconfirmed",
            again.len()
        );
        if let Err(e) = store(h, fence, &self.state, now).await {
            warn!(error = %e, "resent intent not stored in etcd");
        }
        // Into the database with this tick's commit.
        let dry_run = self.agent.opts.dry_run;
        journal_actions(&self.shared, &mut self.journal, &again, now, dry_run);
        for a in again {
            execute(
                &self.shared,
                &mut self.journal,
                a,
                now,
                dry_run,
                Some(fence),
            );
        }
    }
}
