//! The actuator: carries out a plan's actions (journaled already) through the device
//! side, fenced by the HA term, bounded in flight, each followed by read-backs so the
//! next decisions can confirm it. In a dry run it logs what it would have done.

use std::sync::Arc;
use std::time::Duration;

use rackwarden_config::profile::Role;
use rackwarden_config::Site;
use tracing::warn;

use super::agent::{AgentEvent, Shared};
use super::clock::Millis;
use super::collect::poll_bounded;
use super::io::IoError;
use super::journal::journal_row;
use super::persist::ActionJournal;
use crate::catalogue::AlertKind;
use crate::control::{self, Action, Alert, ControlState, Device, Lever};

/// Commands and read-back polls in flight at once (as many as the poll loop's).
pub(super) const COMMANDS_IN_FLIGHT: usize = 512;

/// The shed commands a previous run left in flight (`pending`), to send again on resume,
/// each with a fresh confirmation window of the same length.
///
/// The intent is saved before its commands go out, so a run killed in between leaves
/// commands that never reached a miner. Left alone they would expire unconfirmed and
/// escalate (power target -> sleep -> outlet off): a crash would cost harsher levers
/// than the decision chose, and a crash loop hard power cycles. Shed commands are
/// idempotent, so sending one that did arrive again is harmless; restores are never sent
/// again (nothing is woken on boot: they expire as usual).
pub(super) fn resend_after_restart(
    site: &Site,
    state: &mut ControlState,
    now: Millis,
) -> Vec<Action> {
    let mut out = Vec::new();
    for (i, (ms, m)) in state.miners.iter_mut().zip(&site.miners).enumerate() {
        let Some(p) = ms.pending.as_mut() else {
            continue;
        };
        if !matches!(
            p.lever,
            Lever::PowerTarget | Lever::Sleep | Lever::OutletOff
        ) {
            continue;
        }
        let window = p.deadline.saturating_sub(p.issued_at);
        p.issued_at = now;
        p.deadline = now.saturating_add(window);
        out.push(Action {
            scope: control::Scope::Device,
            constraint: m.id.clone(),
            device: Device::Miner(i),
            device_id: m.id.clone(),
            lever: p.lever,
            from_w: p.from_w,
            to_w: p.to_w,
            reason: control::Reason::Resume,
            emergency: p.emergency,
        });
    }
    out
}

/// Carries out one action (journaled already, [`journal_actions`]): (live) the command
/// through its driver.
pub(super) fn execute(
    shared: &Arc<Shared>,
    journal: &mut ActionJournal,
    a: Action,
    now: Millis,
    dry_run: bool,
    fence: Option<i64>,
) {
    if let (Some(h), Some(f)) = (&shared.ha, fence) {
        if !h.may_act(f) {
            // The term ended between the decision and now: the journal says so.
            journal.record(journal_row(&a, now, dry_run, "fenced"));
            fenced(shared, &a, f);
            return;
        }
    }
    if shared.io.lacks_driver(&a) {
        // `decide` knows these miners (`Snapshot::undriveable`) and plans only their
        // outlet; anything else reaching here (a command a previous run left in flight,
        // resent after a restart or a takeover) is refused before the journal and the
        // wire. It stays unconfirmed, and its escalation is the outlet.
        warn!(
            event = "action.refused",
            now_ms = now,
            device = %a.device_id,
            lever = a.lever.name(),
            "{} {} not sent: the miner has no driver",
            a.lever.name(),
            a.device_id
        );
        shared
            .events
            .send(AgentEvent::ActionResult {
                now,
                device_id: a.device_id.clone(),
                lever: a.lever,
                error: Some(
                    IoError::NoDriver {
                        device: a.device_id.clone(),
                    }
                    .to_string(),
                ),
            })
            .ok();
        return;
    }
    shared.report_action(now, &a, dry_run);
    if dry_run {
        return;
    }
    let sh = shared.clone();
    shared.commands.spawn(async move {
        // The semaphore is never closed; a closed one would only lift the bound.
        let permit = sh.in_flight.acquire().await.ok();
        // Fencing: the last check before the wire. An action decided under a term
        // that has ended (or whose deadline passed while it waited) is refused.
        let r = match (&sh.ha, fence) {
            (Some(h), Some(f)) if !h.may_act(f) => {
                fenced(&sh, &a, f);
                Err(IoError::Fenced)
            }
            _ => command(&sh, &a).await,
        };
        drop(permit);
        if let Err(e) = &r {
            warn!(device = %a.device_id, lever = a.lever.name(), error = %e, "command failed; it stays unconfirmed and escalates");
        } else if let Device::Miner(i) = a.device {
            // Confirmation comes from readings, and the next regular poll may be up to
            // a whole interval away: read the miner back a few times before the
            // confirmation deadline so a slow ramp is not taken for a refusal.
            if let Some(d) = sh.io.miners[i].clone() {
                let step = sh.site.policy.confirm_timeout_s * 1000 / 5;
                for _ in 0..4 {
                    // A stop ends the read-backs: the next run reads the miner anyway.
                    tokio::select! {
                        () = sh.cancel.cancelled() => break,
                        () = tokio::time::sleep(sh.clock.real(step)) => {}
                    }
                    let _permit = sh.in_flight.acquire().await.ok();
                    if let Ok(t) = poll_bounded(d.as_ref(), sh.clock.real(step)).await {
                        sh.apply_miner(i, &t, sh.clock.now_ms());
                    }
                }
            }
        }
        sh.events
            .send(AgentEvent::ActionResult {
                now: sh.clock.now_ms(),
                device_id: a.device_id.clone(),
                lever: a.lever,
                // The edge that prints it: observers get the text.
                error: r.err().map(|e| e.to_string()),
            })
            .ok();
    });
}

/// How long a stop waits for the commands on the wire (their read-backs end at once).
const STOP_WAITS_FOR_COMMANDS: Duration = Duration::from_secs(5);

/// At a stop: waits for the commands already handed to the actuator, at most
/// [`STOP_WAITS_FOR_COMMANDS`] (a hung device cannot hold the stop); says how many were
/// left when the bound ran out. Returns how many were still running then.
pub(super) async fn wait_for_commands(sh: &Shared) -> usize {
    sh.commands.close();
    if tokio::time::timeout(STOP_WAITS_FOR_COMMANDS, sh.commands.wait())
        .await
        .is_err()
    {
        let left = sh.commands.len();
        warn!(
            event = "action.abandoned",
            commands = left,
            "stopping with {left} command(s) unanswered after {} s: they stay unconfirmed in the intent",
            STOP_WAITS_FOR_COMMANDS.as_secs()
        );
        return left;
    }
    0
}

/// Says that `a`, decided in term `fence`, was refused: that term has ended.
pub(super) fn fenced(sh: &Shared, a: &Action, fence: i64) {
    let mut alert = Alert::new(
        AlertKind::HaActionFenced,
        control::Severity::Warning,
        format!(
            "{} {} refused: decided in term {fence}, which has ended",
            a.lever.name(),
            a.device_id
        ),
    );
    alert.device = Some(a.device_id.clone());
    sh.raise(sh.clock.now_ms(), &alert);
}

pub(super) async fn command(sh: &Shared, a: &Action) -> Result<(), IoError> {
    match a.device {
        Device::Miner(i) => {
            let m = &sh.site.miners[i];
            match a.lever {
                Lever::OutletOff | Lever::OutletOn => {
                    let o = m.outlet.as_ref().ok_or_else(|| IoError::NoOutlet {
                        device: m.id.clone(),
                    })?;
                    let on = if a.lever == Lever::OutletOn { 1.0 } else { 0.0 };
                    sh.io
                        .modbus
                        .write_point(o.device, Role::OutletSwitch.name(), o.outlet, on)
                        .await
                        .map_err(IoError::from)
                }
                lever => {
                    let d = sh.io.miners[i].as_ref().ok_or_else(|| IoError::NoDriver {
                        device: m.id.clone(),
                    })?;
                    let r = match lever {
                        Lever::PowerTarget | Lever::PowerTargetRaise => {
                            d.set_power_target(a.to_w).await
                        }
                        Lever::Sleep => d.sleep().await,
                        Lever::Wake => d.wake().await,
                        other => {
                            return Err(IoError::NotAMinerLever {
                                lever: other.name(),
                            })
                        }
                    };
                    r.map(|_| ()).map_err(IoError::from)
                }
            }
        }
        Device::GpuNode(g) => sh.io.cap_gpu(&sh.site, g, a.to_w).await,
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock::Millis;
    use super::*;
    use crate::control::{Intent, Pending};

    fn site() -> Site {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        rackwarden_config::load(&repo.join("config/tests/data/valid/minimal.toml")).unwrap()
    }

    fn pending(lever: Lever, issued_at: Millis) -> Option<Pending> {
        Some(Pending {
            lever,
            issued_at,
            deadline: issued_at + 10_000,
            from_w: 3250.0,
            to_w: 2600.0,
            emergency: false,
        })
    }

    #[test]
    fn shed_commands_left_in_flight_are_sent_again_with_a_fresh_window() {
        let site = site();
        let mut st = ControlState::new(&site, 1_000);
        st.miners[0].intent = Intent::Target { w: 2600.0 };
        st.miners[0].pending = pending(Lever::PowerTarget, 5_000);
        let now = 60_000;
        let again = resend_after_restart(&site, &mut st, now);
        assert_eq!(again.len(), 1);
        let a = &again[0];
        assert_eq!(
            (a.device, a.lever, a.to_w, a.reason),
            (
                Device::Miner(0),
                Lever::PowerTarget,
                2600.0,
                control::Reason::Resume
            )
        );
        assert_eq!(a.device_id, site.miners[0].id);
        // Confirmed only by readings after the new send, within a window as long as the
        // first one: not expired on arrival, so no escalation for a lost command.
        let p = st.miners[0].pending.unwrap();
        assert_eq!((p.issued_at, p.deadline), (now, now + 10_000));
        assert_eq!(st.miners[0].intent, Intent::Target { w: 2600.0 });
    }

    #[test]
    fn restores_left_in_flight_are_not_sent_on_boot() {
        let site = site();
        let mut st = ControlState::new(&site, 1_000);
        for lever in [Lever::Wake, Lever::PowerTargetRaise, Lever::OutletOn] {
            st.miners[0].pending = pending(lever, 5_000);
            assert!(resend_after_restart(&site, &mut st, 60_000).is_empty());
            // Left to expire as before.
            assert_eq!(st.miners[0].pending.unwrap().issued_at, 5_000);
        }
        st.miners[0].pending = None;
        assert!(resend_after_restart(&site, &mut st, 60_000).is_empty());
    }
}
