//! The agent killed (SIGKILL) at every step of a curtail, then restarted on the same
//! database, against one simulator that keeps running (issue 10's fault matrix).
//!
//! A curtail goes: decision (`control.decided`) -> intent saved, journal line,
//! `action.sent` -> the command reaches the miner (the simulator logs
//! `sim.miner.command`) -> a read-back confirms it (`action.confirmed`) -> the database
//! records the confirmation. The test kills the agent right after each of these, in
//! turn, each time on the next curtail the scenario (or the restarted agent) makes, and
//! checks that no control intent is lost: the restarted agent resumes what the file
//! holds and sends again every shed command the killed one left unconfirmed (it may never
//! have left the process), every miner shed before a kill stays at least as shed to the
//! end (`rackwarden state`), no miner is woken or raised by anyone (agents' actions and the
//! commands the simulated miners received), no sleep is sent more than once per run, the
//! journal has no torn line, the agent raises no alert that a restart should not cause,
//! and the last one exits 0 on SIGTERM.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rackwarden_hil_tests::{actions, agent, serial, sim, Proc, TempSite};
use serde_json::Value;

/// Virtual seconds per real second (as scenarios.rs).
const SPEED: f64 = 8.0;

fn real(virtual_s: f64) -> Duration {
    Duration::from_secs_f64(virtual_s / SPEED)
}

/// Curtails at known times: feed A crosses its shed threshold once both of its GPU racks
/// run at 1200 W, then feed B, then two CRAHs of the mining zone trip one after the
/// other (N+1 lost: the zone's miners are shed). The GPU limits stay up and the units
/// stay down: nothing may be restored while the test runs.
const SCENARIO: &str = r#"
name = "crash-points"
gpu_profile = "training"
tenant_limit_w = 600

[[events]]
at_s = 30
kind = "gpu_limits"
racks = ["gpu-a1"]
limit_w = 1200

[[events]]
at_s = 50
kind = "gpu_limits"
racks = ["gpu-a2"]
limit_w = 1200

[[events]]
at_s = 90
kind = "gpu_limits"
racks = ["gpu-b1"]
limit_w = 1200

[[events]]
at_s = 100
kind = "gpu_limits"
racks = ["gpu-b2"]
limit_w = 1200

[[events]]
at_s = 150
kind = "unit_trip"
unit = "crah-1"

[[events]]
at_s = 210
kind = "unit_trip"
unit = "crah-2"
"#;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// `control.decided`: the plan exists; intent maybe not saved, nothing sent.
    Decided,
    /// `action.sent`: intent saved and journaled; the command may not be out yet.
    Sent,
    /// The simulated miner received the command; no read-back yet.
    OnWire,
    /// `action.confirmed`: confirmed in memory, maybe not yet in the database.
    Confirmed,
    /// The database records the confirmation.
    Persisted,
}

/// A miner's persisted intent, ordered by how much it sheds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Intent {
    Normal,
    Target(f64),
    Sleep,
    OutletOff,
}

impl Intent {
    /// Whether `self` sheds at least as much as `before`.
    fn at_least(self, before: Intent) -> bool {
        let rank = |i: Intent| match i {
            Intent::Normal => 0,
            Intent::Target(_) => 1,
            Intent::Sleep => 2,
            Intent::OutletOff => 3,
        };
        match (self, before) {
            (Intent::Target(now), Intent::Target(then)) => now <= then,
            _ => rank(self) >= rank(before),
        }
    }
}

/// Each miner's persisted intent and whether a command of it awaits confirmation.
type Intents = HashMap<String, (Intent, bool)>;

fn persisted(site: &TempSite) -> Intents {
    site.miner_intents()
        .into_iter()
        .map(|(id, (intent, w, pending))| {
            let i = match intent.as_str() {
                "normal" => Intent::Normal,
                "target" => Intent::Target(w.unwrap()),
                "sleep" => Intent::Sleep,
                "outlet_off" => Intent::OutletOff,
                other => panic!("unknown intent {other}"),
            };
            (id, (i, pending))
        })
        .collect()
}

fn event(v: &Value) -> &str {
    v["fields"]["event"].as_str().unwrap_or("")
}

/// Waits for `step` in the current agent `a` (or, for `OnWire`, in the simulator's log
/// after `sim_mark`), then kills the agent. Returns what the kill followed.
fn kill_at(step: Step, a: &mut Proc, s: &Proc, sim_mark: usize, site: &TempSite) -> String {
    let wait = real(160.0);
    let found = |v: Option<Value>, what: &str| -> Value {
        v.unwrap_or_else(|| panic!("no {what} within {wait:?}\n{}\n{}", a.dump(), s.dump()))
    };
    let what = match step {
        Step::Decided => {
            let v = found(
                a.wait_json_after(0, wait, |v| event(v) == "control.decided"),
                "decision",
            );
            format!("decision of {} actions", v["fields"]["actions"])
        }
        Step::Sent => {
            let v = found(
                a.wait_json_after(0, wait, |v| event(v) == "action.sent"),
                "action.sent",
            );
            format!(
                "{} {} sent",
                v["fields"]["lever"].as_str().unwrap(),
                v["fields"]["device"].as_str().unwrap()
            )
        }
        Step::OnWire => {
            let v = found(
                s.wait_json_after(sim_mark, wait, |v| event(v) == "sim.miner.command"),
                "miner command",
            );
            format!(
                "`{}` received by {}",
                v["fields"]["command"].as_str().unwrap(),
                v["fields"]["device"].as_str().unwrap()
            )
        }
        Step::Confirmed | Step::Persisted => {
            let v = found(
                a.wait_json_after(0, wait, |v| event(v) == "action.confirmed"),
                "action.confirmed",
            );
            let dev = v["fields"]["device"].as_str().unwrap().to_owned();
            if step == Step::Persisted {
                let end = Instant::now() + Duration::from_secs(10);
                while persisted(site)[&dev].1 {
                    assert!(
                        Instant::now() < end,
                        "confirmation of {dev} never saved\n{}",
                        a.dump()
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            format!(
                "{} of {dev} confirmed",
                v["fields"]["lever"].as_str().unwrap()
            )
        }
    };
    a.kill9();
    what
}

/// Commands a simulated miner receives that undo a shed.
fn is_restore_command(c: &str) -> bool {
    matches!(
        c,
        "resume" | "curtail wakeup" | "ascset softon" | "power_on" | "miner-mode 0"
    )
}

fn is_sleep_command(c: &str) -> bool {
    matches!(
        c,
        "pause" | "curtail sleep" | "ascset softoff" | "power_off" | "miner-mode 1"
    )
}

/// Watts of a power-target command (`profileset 2900W`, `preset 2900`, ...).
fn target_w(c: &str) -> Option<f64> {
    let (verb, arg) = c.split_once(' ')?;
    matches!(
        verb,
        "profileset" | "preset" | "power-target" | "adjust_power_limit"
    )
    .then(|| arg.trim_end_matches('W').parse().ok())
    .flatten()
}

#[test]
// Long on purpose: one scenario, read top to bottom.
#[allow(clippy::too_many_lines)]
fn agent_killed_at_every_step_of_a_curtail_loses_no_intent() {
    let _g = serial();
    let started = Instant::now();
    let site = TempSite::new("crash", |s| s);
    let scenario = site.dir.join("crash-points.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let mut s = sim(&site, scenario.to_str().unwrap(), SPEED);
    let mut a = agent(&site, SPEED, &[]);
    let mut sim_mark = 0;
    let mut killed: Vec<Proc> = Vec::new();
    // (step, what the kill followed, each miner's persisted intent at the kill)
    let mut kills: Vec<(Step, String, Intents)> = Vec::new();
    for step in [
        Step::Decided,
        Step::Sent,
        Step::OnWire,
        Step::Confirmed,
        Step::Persisted,
    ] {
        let what = kill_at(step, &mut a, &s, sim_mark, &site);
        let before = persisted(&site);
        let shed = before
            .values()
            .filter(|(i, _)| *i != Intent::Normal)
            .count();
        let pending = before.values().filter(|(_, p)| *p).count();
        eprintln!(
            "killed after {step:?} ({what}) at {:.1} s: {shed} miners shed in the database, {pending} awaiting confirmation",
            started.elapsed().as_secs_f64()
        );
        sim_mark = s.mark();
        let b = agent(&site, SPEED, &[]);
        let resumed = b
            .wait_json_after(0, Duration::from_secs(10), |v| event(v) == "state.resumed")
            .unwrap_or_else(|| panic!("no state.resumed after {step:?}\n{}", b.dump()));
        assert_eq!(
            resumed["fields"]["curtailed"].as_u64(),
            u64::try_from(shed).ok(),
            "the restart after {step:?} resumed another intent than the file holds"
        );
        // Shed commands the killed run left in flight are sent again, with a fresh
        // deadline, rather than left to expire into the next lever.
        if pending > 0 {
            let resent = b
                .wait_json_after(0, Duration::from_secs(10), |v| event(v) == "state.resent")
                .unwrap_or_else(|| panic!("nothing resent after {step:?}\n{}", b.dump()));
            assert_eq!(
                resent["fields"]["commands"].as_u64(),
                u64::try_from(pending).ok(),
                "after {step:?}"
            );
        }
        killed.push(std::mem::replace(&mut a, b));
        kills.push((step, what, before));
    }
    // The last agent runs through its start-up hold while everything stays surged.
    std::thread::sleep(real(70.0));
    assert_eq!(a.stop(), Some(0), "agent exit on SIGTERM\n{}", a.dump());
    assert_eq!(s.stop(), Some(0), "simulator exit\n{}", s.dump());
    let end = persisted(&site);
    killed.push(a);

    // 1. No intent lost: whatever was shed at a kill is at least as shed at the end.
    for (step, what, before) in &kills {
        for (id, (intent, _)) in before {
            let (now, _) = end[id];
            assert!(
                now.at_least(*intent),
                "{id}: {intent:?} at the kill after {step:?} ({what}), {now:?} at the end"
            );
        }
    }
    let shed_at_end = end.values().filter(|(i, _)| *i != Intent::Normal).count();
    assert!(shed_at_end > 0, "nothing shed at the end");

    // 2. Nobody restored anything, and nothing an unneeded restart would raise.
    for (n, p) in killed.iter().enumerate() {
        for (dev, lever, _) in actions(p, "action.sent") {
            assert!(
                matches!(lever.as_str(), "power_target" | "sleep" | "outlet_off"),
                "agent #{n}: {lever} {dev} while the surge and the trips last\n{}",
                p.dump()
            );
        }
        for alert in p.alert_names() {
            assert!(
                !matches!(
                    alert.as_str(),
                    "control.state.corrupt"
                        | "power.budget.unmet"
                        | "power.budget.emergency"
                        | "cooling.capacity.exceeded"
                        | "gpu.cap.applied"
                ),
                "agent #{n} raised {alert}\n{}",
                p.dump()
            );
        }
        assert!(
            !p.lines().iter().any(|l| l.contains("panicked")),
            "agent #{n} panicked\n{}",
            p.dump()
        );
    }

    // 3. What the miners received: no wake, no raise, no sleep twice.
    let mut per_miner: HashMap<String, Vec<String>> = HashMap::new();
    for v in s.events("sim.miner.command") {
        per_miner
            .entry(v["fields"]["device"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["fields"]["command"].as_str().unwrap().to_owned());
    }
    assert!(!per_miner.is_empty(), "no miner received a command");
    for (id, cmds) in &per_miner {
        assert!(
            !cmds.iter().any(|c| is_restore_command(c)),
            "{id} was woken: {cmds:?}"
        );
        // The same sleep again after a restart is the resend (idempotent); more than
        // one per run is a duplicate.
        assert!(
            cmds.iter().filter(|c| is_sleep_command(c)).count() <= kills.len() + 1,
            "{id} was put to sleep more often than once per run: {cmds:?}"
        );
        let targets: Vec<f64> = cmds.iter().filter_map(|c| target_w(c)).collect();
        assert!(
            targets.windows(2).all(|w| w[1] <= w[0]),
            "{id}'s power target went up: {cmds:?}"
        );
        // A miner that received a command is shed in the final intent.
        assert!(
            end[id].0 != Intent::Normal,
            "{id} got {cmds:?} but its final intent is normal"
        );
    }

    // 4. The journal: whole lines only (a kill may lose the line in flight, never tear
    //    one in the middle of the file).
    let journal = std::fs::read_to_string(site.dir.join("state/journal.jsonl")).unwrap();
    let lines: Vec<&str> = journal.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let ok = serde_json::from_str::<Value>(l).is_ok();
        assert!(ok || i + 1 == lines.len(), "torn journal line {i}: {l}");
    }
    // 5. The database's journal (`rackwarden journal`, the operator's way in): every
    //    command any of the agents sent is in it (its row commits with the intent,
    //    before the command goes out), however the agent that sent it died.
    let rows = site.journal_db(&[]);
    let in_db: std::collections::HashSet<(String, String, u64)> = rows
        .iter()
        .filter(|r| r["result"].as_str() == Some("sent"))
        .map(|r| {
            (
                r["device"].as_str().unwrap().to_owned(),
                r["lever"].as_str().unwrap().to_owned(),
                r["now_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut sent_total = 0;
    for (n, p) in killed.iter().enumerate() {
        for v in p.events("action.sent") {
            sent_total += 1;
            let key = (
                v["fields"]["device"].as_str().unwrap().to_owned(),
                v["fields"]["lever"].as_str().unwrap().to_owned(),
                v["fields"]["now_ms"].as_u64().unwrap(),
            );
            assert!(
                in_db.contains(&key),
                "agent #{n} sent {key:?}, not in the database's journal"
            );
        }
    }
    assert!(sent_total > 0);
    // Filters: one device's rows are exactly its rows of the whole journal.
    let dev = &rows[0]["device"];
    let one = site.journal_db(&["--device", dev.as_str().unwrap()]);
    assert_eq!(
        one.len(),
        rows.iter().filter(|r| r["device"] == *dev).count(),
        "--device {dev}"
    );
    eprintln!(
        "{} kills, {} miners commanded, {shed_at_end} shed at the end, {:.0} s wall",
        kills.len(),
        per_miner.len(),
        started.elapsed().as_secs_f64()
    );
}
