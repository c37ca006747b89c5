//! Fault matrix, end to end: `rackwarden sim` and `rackwarden run` as separate processes
//! on the example site, one fault each, beyond the scenarios of `scenarios.rs` (GPU surge,
//! cooling trip, silent meter, ignored sleep, kill mid-curtail). For each: the agent keeps
//! running, raises the documented alert, and keeps guarding the site.
//!
//! - the database corrupt at start-up (`control.state.corrupt` naming it, the file set
//!   aside as it was, a surge still shed, the intent in a sound database again);
//! - the database missing (start-up hold, no miner woken, every miner's row written);
//! - GPU nodes refusing the agent (a token that no longer matches: every request 401), so
//!   they stop answering (`telemetry.stale` per GPU node, no GPU lever used);
//! - Modbus wire faults on meters and PDUs (`late`, `reset`, `exception`, `garbage`,
//!   `timeout`) while feeds surge: stale alerts per device, surges still shed, no restore
//!   anywhere while a meter is stale, restores once all are fresh;
//! - a single-connection PDU taken by another client, and the CRAHs' RTU-over-TCP gateway
//!   rebooting (ridden through when short; stale units, lost cooling and a zone shed when
//!   long), with the shed miners' intent kept;
//! - miners answering garbage, hanging, closing mid-reply and flapping, before and
//!   during surges: stale alerts per miner, healthy miners unaffected, no restore from
//!   stale data, intent kept (a miner ignoring commands: `scenarios.rs`);
//! - GPU nodes that hang (accept, never answer): stale, rack reserved at its rated
//!   maximum (feed shed), no GPU cap, clean stop with requests in flight.
//!
//! The fault scenarios are TOML files written into the site's temporary directory (event
//! kinds in `sim/src/site/scenario.rs`); times are the simulator's virtual seconds, and
//! both processes' log lines are put on that clock through their wall-clock timestamps.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use rackwarden_hil_tests::{
    actions, agent, agent_status, assert_two_limits, debug_dump, limits_of, serial, sim,
    status_node, Proc, TempSite,
};

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
fn corrupt_database_is_set_aside_and_the_agent_keeps_guarding() {
    let _g = serial();
    let site = TempSite::new("fault-corrupt-state", |s| s);
    let db = site.db_file();
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    // Not a database at all (a disk fault, a file written over): SQLite refuses it.
    let mut garbage = b"rackwarden-garbage ".to_vec();
    garbage.resize(16_384, 0x5a);
    std::fs::write(&db, &garbage).unwrap();
    let mut s = sim(&site, "gpu-surge", SPEED);
    let mut a = agent(&site, SPEED, &[]);
    // The surge on feed-a starts at 120 s.
    std::thread::sleep(real(240.0));
    let corrupt = alerts_named(&a, "control.state.corrupt");
    assert_eq!(corrupt.len(), 1, "{}", a.dump());
    assert_eq!(corrupt[0]["fields"]["severity"].as_str(), Some("critical"));
    assert!(
        corrupt[0]["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rackwarden.db")),
        "the alert names the file: {}",
        corrupt[0]
    );
    // Set aside for the post-mortem, not overwritten; energy's own open finds the new
    // database sound (no second alert).
    assert!(alerts_named(&a, "energy.store.corrupt").is_empty());
    let dir = db.parent().unwrap();
    let aside: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("rackwarden.db.corrupt.") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    assert_eq!(aside.len(), 1, "quarantined copies: {aside:?}");
    let kept = std::fs::read(aside[0].path()).unwrap();
    assert_eq!(kept, garbage, "the corrupt file is kept as it was");
    // Still guarding: the surge is shed.
    let sent = actions(&a, "action.sent");
    assert!(
        sent.iter().any(|(_, lever, _)| is_shed(lever)),
        "no shed after a corrupt database\n{}",
        a.dump()
    );
    assert_eq!(a.stop(), Some(0), "agent exit\n{}", a.dump());
    // A sound database holds the intent again: the sheds are in it.
    let intents = site.miner_intents();
    assert!(
        intents.values().any(|(i, _, _)| i != "normal"),
        "no curtailed miner in the new database: {intents:?}"
    );
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn missing_database_starts_on_hold_and_wakes_nothing() {
    let _g = serial();
    let site = TempSite::new("fault-missing-state", |s| s);
    assert!(!site.db_file().exists() && !site.state_file().exists());
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
    // Every miner of the site has its row after a clean stop.
    let intents = site.miner_intents();
    assert!(intents.len() > 100, "{} miner rows", intents.len());
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

// ---------------------------------------------------------------------------------
// The rest of the fault matrix: scenarios written as TOML files into the site's
// temporary directory, events at the simulator's virtual seconds.

/// Seconds since midnight (UTC) of a JSON log line's `timestamp`.
fn wall_s(v: &serde_json::Value) -> f64 {
    let ts = v["timestamp"].as_str().unwrap_or("");
    // 2026-11-25T20:52:12.747467Z
    let time = ts.split('T').nth(1).unwrap_or("").trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let m: f64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let s: f64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
    h * 3600.0 + m * 60.0 + s
}

/// Maps log lines of both processes onto the simulator's virtual clock (the one the
/// scenario's `at_s` use), through their wall-clock timestamps.
struct SimClock {
    start_wall: f64,
}

impl SimClock {
    fn of(sim: &Proc) -> SimClock {
        let started = sim.events("sim.started");
        SimClock {
            start_wall: wall_s(&started[0]),
        }
    }

    /// Virtual seconds of the simulator when `v` was logged.
    fn at(&self, v: &serde_json::Value) -> f64 {
        let mut w = wall_s(v) - self.start_wall;
        if w < -43_200.0 {
            w += 86_400.0; // the run crossed midnight
        }
        w * SPEED
    }
}

/// One `action.sent`: simulator time, device, lever, constraint.
#[derive(Debug, Clone)]
struct Act {
    t: f64,
    dev: String,
    lever: String,
}

fn acts(a: &Proc, clock: &SimClock) -> Vec<Act> {
    a.events("action.sent")
        .iter()
        .map(|v| Act {
            t: clock.at(v),
            dev: v["fields"]["device"].as_str().unwrap_or("").to_owned(),
            lever: v["fields"]["lever"].as_str().unwrap_or("").to_owned(),
        })
        .collect()
}

/// Simulator time of the first alert `name` about `device` (at or after `after`).
fn alert_at(a: &Proc, clock: &SimClock, name: &str, device: &str, after: f64) -> Option<f64> {
    alerts_named(a, name)
        .iter()
        .filter(|v| v["fields"]["device"].as_str() == Some(device))
        .map(|v| clock.at(v))
        .find(|t| *t >= after)
}

fn write_scenario(site: &TempSite, name: &str, toml: &str) -> String {
    let path = site.dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("name = \"{name}\"\n{toml}")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The two limits (docs/control.md, "Model") on every feed: the simulator's meters never
/// reached a ceiling H, every stretch above a budget B was shorter than
/// `excursion_max_s`, and the agent measured no longer one ([`assert_two_limits`]).
fn feeds_within_limits(site: &TempSite, a: &Proc, s: &Proc) {
    let (limits, max_s) = limits_of(&site.config);
    assert_two_limits(&s.events("sim.meter"), a, &limits, max_s);
}

/// Stops both processes: the agent must exit 0 on SIGTERM (it kept running through the
/// faults), and must never have panicked.
fn stop_clean(a: &mut Proc, s: &mut Proc) {
    let lines = a.lines();
    assert!(
        !lines.iter().any(|l| l.contains("panicked")),
        "the agent panicked\n{}",
        a.dump()
    );
    assert_eq!(a.stop(), Some(0), "agent exit\n{}", a.dump());
    assert_eq!(s.stop(), Some(0), "simulator exit\n{}", s.dump());
}

fn is_restore(lever: &str) -> bool {
    matches!(
        lever,
        "power_target_raise" | "wake" | "outlet_on" | "gpu_cap_lift"
    )
}

/// Modbus wire faults on feed B's meters and PDUs while feed B surges, and a feed-A
/// meter that times out when feed A's restores would begin:
/// - `late` (answers after the agent's timeout) on meter-feed-b, `reset` on
///   meter-rpp-b-mining, `exception` on pdu-mine-b1, `garbage` on pdu-mine-b2, `timeout`
///   on pdu-mine-b3, from 60 s to 360 s: each raises `telemetry.stale` naming the device
///   and its node, and `telemetry.fresh` once it is back;
/// - feed B surges at 200 s with its meters stale: it is still shed (feed-forward from
///   the GPUs' limits), and no feed reaches its ceiling H or stays above its budget B
///   longer than `excursion_max_s`;
/// - feed A surges from 120 s to 300 s (shed), then meter-feed-a times out from 300 s to
///   360 s. A stale meter freezes restores on its node and every node above it, the site
///   included: no miner anywhere is restored until every meter is fresh again, and feed
///   A's miners are restored after that (the freeze held back restores that were due);
/// - the agent keeps deciding throughout and exits 0.
#[test]
fn modbus_wire_faults_go_stale_never_free_capacity_and_surges_still_shed() {
    let _g = serial();
    let site = TempSite::new("fault-modbus-wire", |s| s);
    let mut toml = String::from(
        r#"tenant_limit_w = 600
[[events]]
at_s = 120
kind = "gpu_limits"
feed = "feed-a"
limit_w = 1200
[[events]]
at_s = 300
kind = "gpu_limits"
feed = "feed-a"
limit_w = 600
[[events]]
at_s = 200
kind = "gpu_limits"
feed = "feed-b"
limit_w = 1200
[[events]]
at_s = 380
kind = "gpu_limits"
feed = "feed-b"
limit_w = 600
[[events]]
at_s = 300
kind = "modbus_fault"
device = "meter-feed-a"
fault = "timeout"
until_s = 360
"#,
    );
    let b_faults = [
        ("meter-feed-b", "late", "feed-b"),
        ("meter-rpp-b-mining", "reset", "rpp-b-mining"),
        ("pdu-mine-b1", "exception", "mine-b1"),
        ("pdu-mine-b2", "garbage", "mine-b2"),
        ("pdu-mine-b3", "timeout", "mine-b3"),
    ];
    for (dev, fault, _) in b_faults {
        toml.push_str(&format!(
            "[[events]]\nat_s = 60\nkind = \"modbus_fault\"\ndevice = \"{dev}\"\nfault = \"{fault}\"\nuntil_s = 360\n"
        ));
    }
    let scenario = write_scenario(&site, "modbus-wire", &toml);
    let mut s = sim(&site, &scenario, SPEED);
    let mut a = agent(&site, SPEED, &[]);
    std::thread::sleep(real(520.0));
    let clock = SimClock::of(&s);
    let acts = acts(&a, &clock);
    debug_dump(&a, &s);

    // Every faulted device is reported stale, by id and node, after its fault began,
    // and fresh again after it ended.
    let mut b_fresh_at: f64 = 0.0;
    for (dev, fault, node) in b_faults {
        let stale = alert_at(&a, &clock, "telemetry.stale", dev, 55.0)
            .unwrap_or_else(|| panic!("{dev} ({fault}) never stale\n{}", a.dump()));
        assert!(stale < 200.0, "{dev} ({fault}) stale only at {stale:.0} s");
        let v = alerts_named(&a, "telemetry.stale")
            .into_iter()
            .find(|v| v["fields"]["device"].as_str() == Some(dev))
            .unwrap();
        assert_eq!(v["fields"]["node"].as_str(), Some(node), "{v}");
        let fresh = alert_at(&a, &clock, "telemetry.fresh", dev, stale)
            .unwrap_or_else(|| panic!("{dev} ({fault}) never fresh again\n{}", a.dump()));
        assert!(fresh >= 355.0, "{dev} ({fault}) fresh at {fresh:.0} s");
        b_fresh_at = b_fresh_at.max(fresh);
    }
    // Feed B's surge is shed although its meters are stale.
    let b_sheds: Vec<&Act> = acts
        .iter()
        .filter(|x| x.dev.starts_with("mine-b") && is_shed(&x.lever) && x.t >= 195.0)
        .collect();
    assert!(
        !b_sheds.is_empty(),
        "feed B's surge was not shed while its meters were stale\n{}",
        a.dump()
    );
    // Feed A: shed during its surge, frozen while its meter is silent, restored after.
    assert!(
        acts.iter()
            .any(|x| x.dev.starts_with("mine-a") && is_shed(&x.lever) && x.t < 300.0),
        "feed A's surge was not shed\n{}",
        a.dump()
    );
    let a_stale = alert_at(&a, &clock, "telemetry.stale", "meter-feed-a", 295.0)
        .unwrap_or_else(|| panic!("meter-feed-a never stale\n{}", a.dump()));
    let a_fresh = alert_at(&a, &clock, "telemetry.fresh", "meter-feed-a", a_stale)
        .unwrap_or_else(|| panic!("meter-feed-a never fresh again\n{}", a.dump()));
    let all_fresh = b_fresh_at.max(a_fresh);
    // No restore anywhere while a meter was stale (60 s until the last one reads again).
    for x in &acts {
        if x.t >= 60.0 && x.t <= all_fresh {
            assert!(
                !is_restore(&x.lever),
                "{x:?} while a meter was stale (until {all_fresh:.0} s)"
            );
        }
    }
    // The freeze held back restores that were due: feed A's come once all is fresh.
    let a_restores: Vec<f64> = acts
        .iter()
        .filter(|x| x.dev.starts_with("mine-a") && is_restore(&x.lever))
        .map(|x| x.t)
        .collect();
    assert!(
        !a_restores.is_empty(),
        "no restore on feed A after every meter was fresh again at {all_fresh:.0} s\n{}",
        a.dump()
    );
    stop_clean(&mut a, &mut s);
    feeds_within_limits(&site, &a, &s);
}

/// Each miner's intent in the database at the agent's stop (`normal`, `target`,
/// `sleep`, `outlet_off`), by id, as `rackwarden state` prints it.
fn final_intents(site: &TempSite) -> std::collections::HashMap<String, String> {
    site.miner_intents()
        .into_iter()
        .map(|(id, (intent, _, _))| (id, intent))
        .collect()
}

/// A single-connection PDU taken by another client, and the CRAHs' RTU-over-TCP gateway
/// rebooting twice:
/// - pdu-mine-b4's only connection is held by another client from 60 s to 200 s: it
///   goes `telemetry.stale` (device and node named) and `telemetry.fresh` once the other
///   client lets go (the agent gets the slot back by itself);
/// - the gateway reboots for 4 s at 60 s: shorter than the cooling staleness limit, so
///   it is ridden through (no unit stale, no shed);
/// - it reboots for 45 s at 150 s: the four CRAHs behind it go stale together, count as
///   unavailable, the air-mining zone loses its cooling (`cooling.capacity.exceeded`) and
///   its miners are shed; the units read again afterwards;
/// - the miners shed for it stay shed (no restore before the end, every one of them
///   still curtailed in the database at the stop), feeds stay within their two limits
///   (under H, above B never longer than `excursion_max_s`), and the
///   agent exits 0.
#[test]
fn taken_connection_and_gateway_reboot_go_stale_shed_and_keep_intent() {
    let _g = serial();
    let site = TempSite::new("fault-modbus-gateway", |s| s);
    let scenario = write_scenario(
        &site,
        "modbus-gateway",
        r#"tenant_limit_w = 600
[[events]]
at_s = 60
kind = "modbus_taken"
device = "pdu-mine-b4"
until_s = 200
[[events]]
at_s = 60
kind = "gateway_reboot"
device = "dev-crah-1"
down_s = 4
[[events]]
at_s = 150
kind = "gateway_reboot"
device = "dev-crah-1"
down_s = 45
"#,
    );
    let mut s = sim(&site, &scenario, SPEED);
    let mut a = agent(&site, SPEED, &[]);
    std::thread::sleep(real(330.0));
    let clock = SimClock::of(&s);
    let acts = acts(&a, &clock);
    debug_dump(&a, &s);

    // The taken PDU.
    let stale = alert_at(&a, &clock, "telemetry.stale", "pdu-mine-b4", 55.0)
        .unwrap_or_else(|| panic!("pdu-mine-b4 never stale while taken\n{}", a.dump()));
    assert!(stale < 100.0, "pdu-mine-b4 stale only at {stale:.0} s");
    let v = alerts_named(&a, "telemetry.stale")
        .into_iter()
        .find(|v| v["fields"]["device"].as_str() == Some("pdu-mine-b4"))
        .unwrap();
    assert_eq!(v["fields"]["node"].as_str(), Some("mine-b4"), "{v}");
    let fresh = alert_at(&a, &clock, "telemetry.fresh", "pdu-mine-b4", stale)
        .unwrap_or_else(|| panic!("pdu-mine-b4 never read again after release\n{}", a.dump()));
    assert!(
        fresh >= 195.0,
        "pdu-mine-b4 fresh at {fresh:.0} s, still taken"
    );

    // The gateway: ridden through at 60 s, stale together at 150 s.
    let crahs = ["crah-1", "crah-2", "crah-3", "crah-4"];
    let mut back_at: f64 = 0.0;
    for u in crahs {
        let t = alert_at(&a, &clock, "telemetry.stale", u, 0.0)
            .unwrap_or_else(|| panic!("{u} never stale during the reboot\n{}", a.dump()));
        assert!(
            (150.0..200.0).contains(&t),
            "{u} stale at {t:.0} s (a 4 s reboot must be ridden through; the 45 s one not)"
        );
        let f = alert_at(&a, &clock, "telemetry.fresh", u, t)
            .unwrap_or_else(|| panic!("{u} never read again after the reboot\n{}", a.dump()));
        assert!(f >= 190.0, "{u} fresh at {f:.0} s, during the reboot");
        back_at = back_at.max(f);
    }
    let zone_alert = a
        .alerts()
        .into_iter()
        .find(|v| {
            v["fields"]["zone"] == "air-mining"
                && matches!(
                    v["fields"]["alert"].as_str(),
                    Some("cooling.capacity.exceeded" | "cooling.redundancy.lost")
                )
        })
        .unwrap_or_else(|| panic!("no cooling alert for the air-mining zone\n{}", a.dump()));
    let lost_at = clock.at(&zone_alert);
    assert!(
        lost_at >= 150.0,
        "cooling lost at {lost_at:.0} s, before the reboot"
    );
    // Before the long reboot nothing was shed (the short one was ridden through).
    let early: Vec<&Act> = acts.iter().filter(|x| x.t < 150.0).collect();
    assert!(
        early.is_empty(),
        "actions before the long reboot: {early:?}"
    );
    let shed: Vec<&Act> = acts
        .iter()
        .filter(|x| x.t >= 150.0 && is_shed(&x.lever))
        .collect();
    assert!(
        shed.iter().any(|x| x.dev.starts_with("mine-")),
        "no miner shed while the zone's cooling was unknown\n{}",
        a.dump()
    );
    // Intent kept: nothing restored, every shed miner still curtailed at the stop.
    let restores: Vec<&Act> = acts.iter().filter(|x| is_restore(&x.lever)).collect();
    assert!(
        restores.is_empty(),
        "restored within the off time: {restores:?}"
    );
    stop_clean(&mut a, &mut s);
    feeds_within_limits(&site, &a, &s);
    let intents = final_intents(&site);
    for x in &shed {
        if x.dev.starts_with("mine-") {
            assert_ne!(
                intents.get(&x.dev).map(String::as_str),
                Some("normal"),
                "{} was shed at {:.0} s and lost its intent",
                x.dev,
                x.t
            );
        }
    }
    eprintln!("gateway back at {back_at:.0} s; {} sheds", shed.len());
}

/// Per device: the spans during which its `telemetry.stale` alert was out (simulator
/// time; an alert never cleared runs to infinity).
fn stale_spans(a: &Proc, clock: &SimClock) -> std::collections::HashMap<String, Vec<(f64, f64)>> {
    let mut spans: std::collections::HashMap<String, Vec<(f64, f64)>> = Default::default();
    for v in a.alerts() {
        let Some(dev) = v["fields"]["device"].as_str() else {
            continue;
        };
        let t = clock.at(&v);
        // Only the stale/fresh pair makes a span: a device with another alert (an
        // unconfirmed action, say) was not stale and gets no entry.
        match v["fields"]["alert"].as_str() {
            Some("telemetry.stale") => spans
                .entry(dev.to_owned())
                .or_default()
                .push((t, f64::INFINITY)),
            Some("telemetry.fresh") => {
                if let Some(last) = spans.get_mut(dev).and_then(|l| l.last_mut()) {
                    if last.1.is_infinite() {
                        last.1 = t;
                    }
                }
            }
            _ => {}
        }
    }
    spans
}

/// Miners misbehaving, before and during surges:
/// - at 180 s, after feed A's surge (120 s) had them shed: mine-a1-braiins answer
///   garbage, mine-a1-luxos hang (accept, never answer), mine-a4-luxos close the
///   connection half-way through each reply, mine-a4-braiins flap (20 s answering, 20 s
///   silent); the same four faults on feed B's mine-b3/mine-b4 groups, which are not
///   shed yet;
/// - each faulted group raises `telemetry.stale` naming its miners (and their rack);
/// - feed B surges at 240 s: it is still shed (around the broken miners: other miners'
///   targets, sleeps or outlets), and no feed reaches its ceiling H or stays above its
///   budget B longer than `excursion_max_s`;
/// - feed A's surge ends at 330 s: its healthy miners are restored, but no miner is ever
///   restored while its stale alert is out, and the broken miners shed before the faults
///   (garbage, hang, close-early) are still curtailed in the database at the stop;
/// - the agent keeps deciding and exits 0. (A miner that ignores commands is
///   `scenarios.rs`'s `miner_ignoring_sleep_is_unconfirmed_and_its_outlet_goes_off`.)
#[test]
fn misbehaving_miners_go_stale_keep_their_intent_and_surges_still_shed() {
    let _g = serial();
    let site = TempSite::new("fault-miners", |s| s);
    let mut toml = String::from(
        r#"tenant_limit_w = 600
[[events]]
at_s = 120
kind = "gpu_limits"
feed = "feed-a"
limit_w = 1200
[[events]]
at_s = 330
kind = "gpu_limits"
feed = "feed-a"
limit_w = 600
[[events]]
at_s = 240
kind = "gpu_limits"
feed = "feed-b"
limit_w = 1200
"#,
    );
    let faults = [
        ("mine-a1-braiins-", "garbage"),
        ("mine-a1-luxos-", "hang"),
        ("mine-a4-luxos-", "close_early"),
        ("mine-a4-braiins-", "flap"),
        ("mine-b3-braiins-", "garbage"),
        ("mine-b3-luxos-", "hang"),
        ("mine-b4-luxos-", "close_early"),
        ("mine-b4-braiins-", "flap"),
    ];
    for (prefix, fault) in faults {
        toml.push_str(&format!(
            "[[events]]\nat_s = 180\nkind = \"miner_fault\"\nprefix = \"{prefix}\"\nfault = \"{fault}\"\nperiod_s = 20\n"
        ));
    }
    let scenario = write_scenario(&site, "miners", &toml);
    let mut s = sim(&site, &scenario, SPEED);
    let mut a = agent(&site, SPEED, &[]);
    std::thread::sleep(real(450.0));
    let clock = SimClock::of(&s);
    let acts = acts(&a, &clock);
    debug_dump(&a, &s);
    let spans = stale_spans(&a, &clock);

    // Each faulted group is reported, miner by miner, rack named.
    for (prefix, fault) in faults {
        let stale: Vec<&String> = spans
            .iter()
            .filter(|(d, sp)| d.starts_with(prefix) && sp.iter().any(|s| s.0 >= 180.0))
            .map(|(d, _)| d)
            .collect();
        assert!(
            !stale.is_empty(),
            "no miner of {prefix} ({fault}) reported stale\n{}",
            a.dump()
        );
        let rack = &prefix[..7];
        let v = alerts_named(&a, "telemetry.stale")
            .into_iter()
            .find(|v| v["fields"]["device"].as_str() == Some(stale[0].as_str()))
            .unwrap();
        assert_eq!(v["fields"]["node"].as_str(), Some(rack), "{v}");
    }
    // The healthy miners stay fresh: hung ones do not hold back everyone's readings.
    let healthy = ["mine-a2-", "mine-a3-", "mine-b1-", "mine-b2-"];
    let dragged: Vec<(&String, &Vec<(f64, f64)>)> = spans
        .iter()
        .filter(|(d, _)| healthy.iter().any(|p| d.starts_with(p)))
        .collect();
    assert!(
        dragged.is_empty(),
        "healthy miners went stale with the broken ones: {dragged:?}"
    );
    // Nothing is restored while its stale alert is out.
    for x in acts.iter().filter(|x| is_restore(&x.lever)) {
        if let Some(sp) = spans.get(&x.dev) {
            assert!(
                !sp.iter().any(|(from, to)| x.t > *from && x.t < *to),
                "{x:?} while its reading was stale ({sp:?})"
            );
        }
    }
    // Feed B's surge is shed although a third of its miners misbehave.
    assert!(
        acts.iter()
            .any(|x| x.dev.starts_with("mine-b") && is_shed(&x.lever) && x.t >= 235.0),
        "feed B's surge was not shed\n{}",
        a.dump()
    );
    // Feed A: the healthy miners come back after its surge (the restore phase was
    // reached); the broken ones shed before their faults keep their intent.
    assert!(
        acts.iter().any(|x| x.t > 330.0
            && is_restore(&x.lever)
            && (x.dev.starts_with("mine-a2") || x.dev.starts_with("mine-a3"))),
        "no healthy feed-A miner restored after the surge\n{}",
        a.dump()
    );
    stop_clean(&mut a, &mut s);
    feeds_within_limits(&site, &a, &s);
    let intents = final_intents(&site);
    let broken_a = ["mine-a1-braiins-", "mine-a1-luxos-", "mine-a4-luxos-"];
    let mut kept = 0;
    for x in acts.iter().filter(|x| x.t < 180.0 && is_shed(&x.lever)) {
        if broken_a.iter().any(|p| x.dev.starts_with(p)) {
            let i = intents.get(&x.dev).map(String::as_str);
            assert!(
                matches!(i, Some("target" | "sleep" | "outlet_off")),
                "{} was shed at {:.0} s, broke at 180 s, and ended `{i:?}`",
                x.dev,
                x.t
            );
            kept += 1;
        }
    }
    assert!(kept > 0, "no broken miner had been shed before its fault");
}

/// GPU nodes that stop answering (accept the request, never reply), unlike the 401 case:
/// - gpunode-gpu-b1 hangs from 60 s to 180 s: `telemetry.stale` naming it; its rack's
///   worst case X is its rated maximum while its limits are unknown (stale never counts
///   as free capacity: `/api/v1/status` shows it, and feed B's worst case stays under its
///   ceiling H), nothing on feed B is restored, and feed A is left alone; no GPU cap is
///   sent to the hung node; it reads again (`telemetry.fresh`) once it answers and its
///   rack is reserved at its limits again. (Its sustained reserve S still follows the
///   rack's PDU, which reads on: feed B, short of its budget, need not shed.)
/// - gpunode-gpu-a2 hangs from 200 s to the end: stale too, reserved at its rated
///   maximum, and both processes still stop cleanly (exit 0) with its requests in
///   flight.
#[test]
fn hung_gpu_nodes_go_stale_reserve_their_rack_and_never_block_the_agent() {
    let _g = serial();
    let site = TempSite::new("fault-gpu-hang", |s| s);
    let scenario = write_scenario(
        &site,
        "gpu-hang",
        r#"tenant_limit_w = 600
[[events]]
at_s = 60
kind = "gpu_node_hang"
host = "gpunode-gpu-b1"
until_s = 180
[[events]]
at_s = 200
kind = "gpu_node_hang"
host = "gpunode-gpu-a2"
"#,
    );
    let mut s = sim(&site, &scenario, SPEED);
    let t0 = std::time::Instant::now();
    let mut a = agent(&site, SPEED, &[]);
    // What the agent reserves for each GPU rack (X: `gpu_reserve_kw` of the rack's row),
    // while gpunode-gpu-b1 hangs and after, while gpunode-gpu-a2 hangs.
    let status_at = |t: f64| {
        std::thread::sleep((t0 + real(t)).saturating_duration_since(std::time::Instant::now()));
        agent_status()
    };
    let during = status_at(130.0);
    let after = status_at(240.0);
    std::thread::sleep((t0 + real(255.0)).saturating_duration_since(std::time::Instant::now()));
    let clock = SimClock::of(&s);
    let acts = acts(&a, &clock);
    debug_dump(&a, &s);

    let b1_stale = alert_at(&a, &clock, "telemetry.stale", "gpunode-gpu-b1", 55.0)
        .unwrap_or_else(|| panic!("gpunode-gpu-b1 never stale while hung\n{}", a.dump()));
    assert!(
        b1_stale < 90.0,
        "gpunode-gpu-b1 stale only at {b1_stale:.0} s"
    );
    let b1_fresh = alert_at(&a, &clock, "telemetry.fresh", "gpunode-gpu-b1", b1_stale)
        .unwrap_or_else(|| panic!("gpunode-gpu-b1 never read again\n{}", a.dump()));
    assert!(
        b1_fresh >= 175.0,
        "gpunode-gpu-b1 fresh at {b1_fresh:.0} s, still hung"
    );
    let a2_stale = alert_at(&a, &clock, "telemetry.stale", "gpunode-gpu-a2", 195.0)
        .unwrap_or_else(|| panic!("gpunode-gpu-a2 never stale while hung\n{}", a.dump()));
    assert!(
        a2_stale < 230.0,
        "gpunode-gpu-a2 stale only at {a2_stale:.0} s"
    );
    // No other GPU node was dragged along.
    for g in ["gpunode-gpu-a1", "gpunode-gpu-b2"] {
        assert!(
            alert_at(&a, &clock, "telemetry.stale", g, 0.0).is_none(),
            "{g} went stale with the hung ones\n{}",
            a.dump()
        );
    }
    // Worst case for the hung rack: X at its rated maximum while its limits are unknown,
    // at its limits (the tenant's 600 W) otherwise; feed B's worst case with it under H.
    let cfg = rackwarden_config::load(&site.config).unwrap();
    let rated = |id: &str| {
        cfg.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.rated_max_kw)
            .unwrap()
    };
    let x = |status: &serde_json::Value, id: &str| {
        status_node(status, id)["gpu_reserve_kw"]
            .as_f64()
            .unwrap_or_else(|| panic!("no reserve of {id} in the status\n{status}"))
    };
    for (status, hung, fresh) in [
        (&during, "gpu-b1", ["gpu-a1", "gpu-a2", "gpu-b2"]),
        (&after, "gpu-a2", ["gpu-a1", "gpu-b1", "gpu-b2"]),
    ] {
        eprintln!(
            "{hung} hung: X {:?} kW, feed-b worst case {} kW",
            ["gpu-a1", "gpu-a2", "gpu-b1", "gpu-b2"].map(|r| x(status, r)),
            status_node(status, "feed-b")["worst_kw"]
        );
        let max = rated(hung);
        assert!(
            (x(status, hung) - max).abs() < 0.5,
            "{hung}'s node hung, yet reserved at {} kW, not its rated {max} kW\n{status}",
            x(status, hung)
        );
        for r in fresh {
            assert!(
                x(status, r) < 0.8 * rated(r),
                "{r} reserved at {} kW with its limits known\n{status}",
                x(status, r)
            );
        }
        for feed in ["feed-a", "feed-b"] {
            let n = status_node(status, feed);
            let (worst, h) = (
                n["worst_kw"].as_f64().unwrap(),
                n["ceiling_kw"].as_f64().unwrap(),
            );
            assert!(
                worst <= h,
                "{feed}'s worst case {worst} kW above its ceiling {h} kW"
            );
        }
    }
    // Nothing on feed B was freed while gpunode-gpu-b1 was unknown, and feed A was not
    // acted on before its own node hung.
    let b_restores: Vec<&Act> = acts
        .iter()
        .filter(|x| x.dev.starts_with("mine-b") && is_restore(&x.lever) && x.t < b1_fresh)
        .collect();
    assert!(
        b_restores.is_empty(),
        "restored on feed B while gpunode-gpu-b1 was unknown: {b_restores:?}"
    );
    let early_a: Vec<&Act> = acts
        .iter()
        .filter(|x| x.dev.starts_with("mine-a") && x.t < 200.0)
        .collect();
    assert!(early_a.is_empty(), "feed A acted on: {early_a:?}");
    let caps: Vec<&Act> = acts
        .iter()
        .filter(|x| x.lever.starts_with("gpu_cap"))
        .collect();
    assert!(caps.is_empty(), "GPU lever used: {caps:?}");
    // A hang, not a refusal.
    assert!(!s.dump().contains("gpu node request refused"));
    stop_clean(&mut a, &mut s);
    feeds_within_limits(&site, &a, &s);
}
