//! Fault matrix, end to end: `rackwarden sim` and `rackwarden run` as separate processes
//! on the example site, one fault each, beyond the scenarios of `scenarios.rs` (GPU surge,
//! cooling trip, silent meter, ignored sleep, kill mid-curtail). For each: the agent keeps
//! running, raises the documented alert, and keeps guarding the site.
//!
//! - the state file corrupt at start-up (`control.state.corrupt`, the file set aside, a
//!   surge still shed, a valid state written again);
//! - the state file missing (start-up hold, no miner woken);
//! - GPU nodes refusing the agent (a token that no longer matches: every request 401), so
//!   they stop answering (`telemetry.stale` per GPU node, no GPU lever used).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use rackwarden_hil_tests::{actions, agent, serial, sim, Proc, TempSite};

/// Virtual seconds per real second (as in scenarios.rs).
const SPEED: f64 = 8.0;

fn real(virtual_s: f64) -> Duration {
    Duration::from_secs_f64(virtual_s / SPEED)
}

fn is_shed(lever: &str) -> bool {
    matches!(lever, "power_target" | "sleep" | "outlet_off" | "gpu_cap")
}

fn alerts_named(p: &Proc, name: &str) -> Vec<serde_json::Value> {
    p.alerts()
        .into_iter()
        .filter(|v| v["fields"]["alert"].as_str() == Some(name))
        .collect()
}

#[test]
fn corrupt_state_file_is_set_aside_and_the_agent_keeps_guarding() {
    let _g = serial();
    let site = TempSite::new("fault-corrupt-state", |s| s);
    let state = site.state_file();
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, b"{\"last_now\": 12, \"control\": {\"miners\": [tor").unwrap();
    let mut s = sim(&site, "gpu-surge", SPEED);
    let mut a = agent(&site, SPEED, &[]);
    // The surge on feed-a starts at 120 s.
    std::thread::sleep(real(240.0));
    let corrupt = alerts_named(&a, "control.state.corrupt");
    assert_eq!(corrupt.len(), 1, "{}", a.dump());
    assert_eq!(corrupt[0]["fields"]["severity"].as_str(), Some("critical"));
    // Set aside for the post-mortem, not overwritten with the garbage lost.
    let dir = state.parent().unwrap();
    let aside: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert_eq!(aside.len(), 1, "quarantined copies: {aside:?}");
    let kept = std::fs::read(aside[0].path()).unwrap();
    assert!(
        kept.starts_with(b"{\"last_now\": 12"),
        "the corrupt file is kept"
    );
    // Still guarding: the surge is shed.
    let sent = actions(&a, "action.sent");
    assert!(
        sent.iter().any(|(_, lever, _)| is_shed(lever)),
        "no shed after a corrupt state file\n{}",
        a.dump()
    );
    assert_eq!(a.stop(), Some(0), "agent exit\n{}", a.dump());
    let text = std::fs::read_to_string(&state).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["control"]["miners"].is_array(),
        "a valid state is written again"
    );
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn missing_state_file_starts_on_hold_and_wakes_nothing() {
    let _g = serial();
    let site = TempSite::new("fault-missing-state", |s| s);
    assert!(!site.state_file().exists());
    let mut s = sim(&site, "steady", SPEED);
    let mut a = agent(&site, SPEED, &[]);
    std::thread::sleep(real(90.0));
    let names = a.alert_names();
    assert!(
        names.iter().any(|n| n == "control.startup.hold"),
        "{names:?}\n{}",
        a.dump()
    );
    assert!(a.events("state.resumed").is_empty());
    for (dev, lever, _) in actions(&a, "action.sent") {
        assert!(is_shed(&lever), "{dev} {lever} on a fresh start");
    }
    assert_eq!(a.stop(), Some(0), "agent exit\n{}", a.dump());
    assert!(
        site.state_file().exists(),
        "no state file after a clean stop"
    );
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn gpu_nodes_refusing_the_agent_go_stale_and_no_gpu_lever_is_used() {
    let _g = serial();
    let site = TempSite::new("fault-gpu-token", |s| s);
    let mut s = sim(&site, "steady", SPEED);
    // The simulator read the token at start; the agent will read another one, so every
    // request it makes to a GPU node is refused.
    let token = site.dir.join("gpu-node.token");
    std::fs::write(&token, "not-the-nodes-token\n").unwrap();
    let mut a = agent(&site, SPEED, &[]);
    std::thread::sleep(real(120.0));
    let stale: Vec<String> = alerts_named(&a, "telemetry.stale")
        .iter()
        .filter_map(|v| v["fields"]["device"].as_str().map(str::to_owned))
        .filter(|d| d.starts_with("gpunode-"))
        .collect();
    for g in [
        "gpunode-gpu-a1",
        "gpunode-gpu-a2",
        "gpunode-gpu-b1",
        "gpunode-gpu-b2",
    ] {
        // Never read counts as stale once the start-up grace has passed.
        assert!(
            stale.iter().any(|d| d == g),
            "{g} not reported stale: {stale:?}\n{}",
            a.dump()
        );
    }
    let gpu_actions: Vec<_> = actions(&a, "action.sent")
        .into_iter()
        .filter(|(_, lever, _)| lever.starts_with("gpu_cap"))
        .collect();
    assert!(
        gpu_actions.is_empty(),
        "GPU lever without readings: {gpu_actions:?}"
    );
    // Refused on the node's side (401), and the agent still decides every tick.
    let sim_lines = s.dump();
    assert!(
        sim_lines.contains("gpu node request refused"),
        "the nodes never refused: {sim_lines}"
    );
    assert_eq!(a.stop(), Some(0), "agent exit\n{}", a.dump());
    assert_eq!(s.stop(), Some(0));
}
