//! The HA pair's side of the loop (docs/ha.md): a new leader takes over the intent the
//! last one stored in etcd; a leader stores its intent under its term's fence.

use rackwarden_config::Site;
use serde::Serialize;
use tracing::{info, warn};

use super::agent::Persisted;
use super::clock::Millis;
use crate::alerts;
use crate::control::{self, Alert, ControlState};
use crate::ha::Ha;

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
                alerts::log(
                    &Alert::new(
                        alerts::STATE_CORRUPT,
                        control::Severity::Critical,
                        format!("intent stored in etcd unreadable ({e}); keeping this agent's own"),
                    ),
                    now,
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
