//! A stop waits for the commands already handed to the actuator (issue 16: "tasks
//! tracked so a stop waits for them"): every shed command the agent reported as sent has
//! its result (the device's answer, or its error) before `run` returns, and the stop
//! stays bounded (the read-backs after a command end at once).
//!
//! The colocation site (examples/site-colo.toml) runs live against its simulator; feed
//! A's tenant racks jump to their rated maximum, the agent sheds miners under feed A, and
//! the test stops the agent the moment the first shed command is reported sent, while
//! the simulated miners take 250 ms to answer it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod colo_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rackwarden::runtime::agent::{run, AgentEvent};
use rackwarden_sim::miner::Fault;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Virtual seconds per real second.
const SPEED: f64 = 20.0;
/// When feed A's tenant racks go to their rated maximum (virtual s).
const SURGE_S: f64 = 120.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_the_commands_on_the_wire() {
    // Loopback addresses of this test process (not the urgent-shed test's).
    let (site, dir) = colo_support::colo_site("stop-waits", 200 + std::process::id() % 50, "");
    let sim = colo_support::surge_sim(&site, &dir, SURGE_S, SPEED).await;
    // Every miner answers 250 ms late (real time; under the agent's poll bound at this
    // speed): a command is still on the wire when the stop comes.
    assert!(sim.set_miner_fault("", Fault::SlowAnswer(Duration::from_millis(250))) > 0);
    let (events, mut rx) = broadcast::channel(1 << 16);
    let cancel = CancellationToken::new();
    let opts = colo_support::options(&dir, false, SPEED);
    let agent = tokio::spawn(run(site.clone(), opts, events, cancel.clone()));

    // The commands reported sent, and the results reported, by (device, lever).
    let mut sent = BTreeSet::new();
    let mut answered = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64((SURGE_S + 200.0) / SPEED);
    loop {
        let ev = tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            ev = rx.recv() => ev,
        };
        match ev {
            Ok(AgentEvent::Action {
                action,
                dry_run: false,
                ..
            }) if action.lever.is_shed() => {
                sent.insert((action.device_id.clone(), action.lever.name()));
                // Stop now: this command (and any sent with it) is on its way.
                break;
            }
            Ok(AgentEvent::ActionResult {
                device_id, lever, ..
            }) => {
                answered.insert((device_id, lever.name()));
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    assert!(!sent.is_empty(), "no shed command within the test's window");
    let stop = Instant::now();
    cancel.cancel();
    agent.await.unwrap().unwrap();
    let stop_took = stop.elapsed();
    // What the agent reported before `run` returned.
    while let Ok(ev) = rx.try_recv() {
        match ev {
            AgentEvent::Action {
                action,
                dry_run: false,
                ..
            } if action.lever.is_shed() => {
                sent.insert((action.device_id.clone(), action.lever.name()));
            }
            AgentEvent::ActionResult {
                device_id, lever, ..
            } => {
                answered.insert((device_id, lever.name()));
            }
            _ => {}
        }
    }
    sim.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();

    let unanswered: Vec<_> = sent.difference(&answered).collect();
    assert!(
        unanswered.is_empty(),
        "run returned before these commands were answered: {unanswered:?}"
    );
    // Bounded: the read-backs after each command end at the stop (the actuator's own
    // bound on waiting is 5 s, the rest is the last commit and the collectors' end).
    assert!(
        stop_took < Duration::from_secs(10),
        "the stop took {stop_took:?}"
    );
    println!(
        "stop: {} shed command(s) answered before run returned, in {stop_took:?}",
        sent.len()
    );
}
