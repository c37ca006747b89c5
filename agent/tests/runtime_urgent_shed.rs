//! The shed path is event-driven (issue 16): a meter reading that puts its node over the
//! shed threshold makes the loop decide at once, between its periodic ticks, and the
//! excursion's shed goes out in that decision. Restores stay on the ticks.
//!
//! The colocation site (examples/site-colo.toml: GPU racks seen through their PDUs only,
//! so the meters are the only signal) runs dry against its simulator, with the periodic
//! tick stretched to 300 s: the first decision comes at 150 s, the next periodic one at
//! 450 s. Feed A's tenant racks jump to their rated maximum at 200 s; a shed of that
//! excursion before 450 s can only come from the reading. How fast the path is, in milliseconds, is measured by
//! `bash bench/run.sh --only reaction` (docs/performance.md), not here.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod colo_support;

use std::time::Duration;

use rackwarden::control::{Reason, Tick};
use rackwarden::runtime::agent::{run, AgentEvent};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Virtual seconds per real second.
const SPEED: f64 = 20.0;
/// The periodic tick of this test (virtual ms): far longer than the whole surge.
const TICK_MS: u64 = 300_000;
/// When feed A's tenant racks go to their rated maximum (virtual s).
const SURGE_S: f64 = 200.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_over_its_budget_is_shed_between_ticks() {
    // Loopback addresses of this test process, and the long tick.
    let (site, dir) = colo_support::colo_site(
        "urgent",
        100 + std::process::id() % 100,
        &format!("fast_loop_ms = {TICK_MS}\nslow_loop_ms = {TICK_MS}\n"),
    );
    assert_eq!(site.policy.fast_loop_ms, TICK_MS);
    let sim = colo_support::surge_sim(&site, &dir, SURGE_S, SPEED).await;
    let (events, mut rx) = broadcast::channel(1 << 16);
    let cancel = CancellationToken::new();
    let opts = colo_support::options(&dir, true, SPEED);
    let agent = tokio::spawn(run(site.clone(), opts, events, cancel.clone()));

    // Decisions (time, tick) and the first shed for an excursion on feed A.
    let mut decisions: Vec<(u64, Tick)> = Vec::new();
    let mut shed_at: Option<u64> = None;
    // Until 100 s (virtual) after the surge: still 150 s before the next periodic tick.
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64((SURGE_S + 100.0) / SPEED);
    while shed_at.is_none() {
        let ev = tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            ev = rx.recv() => ev,
        };
        match ev {
            Ok(AgentEvent::Decision { now, tick, .. }) => decisions.push((now, tick)),
            Ok(AgentEvent::Action { now, action, .. })
                if action.lever.is_shed()
                    && action.reason == Reason::Excursion
                    && action.constraint == "feed-a" =>
            {
                shed_at = Some(now);
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    cancel.cancel();
    agent.await.ok();
    sim.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();

    let shed_at =
        shed_at.unwrap_or_else(|| panic!("feed A's excursion was never shed: {decisions:?}"));
    // The shed's decision came between the first periodic decision and the second
    // (which is due a whole tick after the first, after this test's end).
    let first = decisions
        .first()
        .unwrap_or_else(|| panic!("no decision at all"))
        .0;
    println!(
        "urgent shed: decided {} s (virtual) after the first periodic decision; tick {} s; decisions {decisions:?}",
        (shed_at - first) / 1000,
        TICK_MS / 1000
    );
    assert!(
        shed_at > first,
        "the excursion was shed by the first decision"
    );
    assert!(
        shed_at < first + TICK_MS * 9 / 10,
        "the shed waited for the periodic tick: {decisions:?}"
    );
    let urgent = decisions.iter().find(|&&(t, _)| t == shed_at);
    assert_eq!(
        urgent.map(|d| d.1),
        Some(Tick::Fast),
        "an urgent decision is a fast one: {decisions:?}"
    );
}
