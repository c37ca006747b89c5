//! The closed loop end to end: `rackwarden sim` and `rackwarden run` as separate
//! processes over loopback sockets, on the example site, at a compressed time scale.
//! Each test plays a built-in scenario and checks what the agent logged (JSON alerts and
//! actions), what the simulator's meters showed and what the devices received.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::time::Duration;

use rackwarden_hil_tests::{
    actions, agent, assert_two_limits, debug_dump, excursion_len_s, limits_of, now_ms, repo,
    serial, sim, Limits, Proc, TempSite,
};

/// Virtual seconds per real second. The debug binary on a 2-core machine keeps up with
/// the example site at this speed (meters every 1 s virtual = 100 ms real).
const SPEED: f64 = 8.0;

/// Feed A's meter reaches at least this share of its budget B in the gpu-surge (its
/// baseline is ~91%): the agent sheds once the surge's projection reaches B.
const PEAK_FRACTION: f64 = 0.95;

fn real(virtual_s: f64) -> Duration {
    Duration::from_secs_f64(virtual_s / SPEED)
}

/// Virtual seconds since the agent started, per `action.sent` event.
fn action_times(a: &Proc, event: &str) -> Vec<(f64, String, String, String)> {
    let t0 = a
        .events("agent.started")
        .first()
        .map(now_ms)
        .unwrap_or_default();
    a.events(event)
        .iter()
        .map(|v| {
            #[allow(clippy::cast_precision_loss)]
            let t = now_ms(v).saturating_sub(t0) as f64 / 1000.0;
            (
                t,
                v["fields"]["device"].as_str().unwrap_or("").to_owned(),
                v["fields"]["lever"].as_str().unwrap_or("").to_owned(),
                v["fields"]["node"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Each node's B and H, and `excursion_max_s`, as the agent reads the site file.
fn site_limits(site: &TempSite) -> (HashMap<String, Limits>, f64) {
    limits_of(&site.config)
}

fn is_shed(lever: &str) -> bool {
    matches!(lever, "power_target" | "sleep" | "outlet_off" | "gpu_cap")
}

fn sim_summary(s: &mut Proc) -> (usize, usize) {
    assert_eq!(s.stop(), Some(0), "simulator exit\n{}", s.dump());
    let line = s
        .lines()
        .into_iter()
        .find(|l| l.starts_with("sim summary:"))
        .unwrap_or_else(|| panic!("no summary\n{}", s.dump()));
    let num = |key: &str| -> usize {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("modbus_writes="), num("miners_commanded="))
}

#[test]
fn gpu_surge_sheds_feed_a_only_within_its_ceiling_and_restores_without_cycling() {
    let _g = serial();
    let site = TempSite::new("surge", |s| s);
    let mut s = sim(&site, "gpu-surge", SPEED);
    let mut a = agent(&site, SPEED, &[]);
    // Surge at 120 s, over at 420 s; restores need 60 s of headroom, then ramp.
    std::thread::sleep(real(760.0));
    debug_dump(&a, &s);
    let acts = action_times(&a, "action.sent");
    let alerts = a.alert_names();
    // The feeds' energy counters as the agent stops (the simulator runs on after it).
    let meters_at_stop = s.events("sim.meter");
    assert_eq!(a.stop(), Some(0), "{}", a.dump());
    let meters = s.events("sim.meter");
    sim_summary(&mut s);

    let sheds: Vec<_> = acts.iter().filter(|x| is_shed(&x.2)).collect();
    assert!(!sheds.is_empty(), "no shed at all\n{}", a.dump());
    for (t, dev, lever, node) in &sheds {
        // A cooling zone may shed on its own account (a CRAH reading late on a loaded
        // machine counts as unavailable); every power shed is feed A's.
        if matches!(node.as_str(), "air-mining" | "liquid-gpu") {
            continue;
        }
        assert!(
            dev.starts_with("mine-a") && *t >= 115.0,
            "power shed outside feed A or before the surge: {dev} {lever} on {node} at {t:.0} s"
        );
    }
    // Mining was there to shed: no GPU was capped (CONTROL.md invariant 2).
    assert!(
        !acts.iter().any(|x| x.2 == "gpu_cap"),
        "a GPU cap while miners could be shed\n{}",
        a.dump()
    );
    assert!(
        alerts.iter().any(|n| n == "power.budget.shed"),
        "{alerts:?}"
    );
    // The two limits (docs/control.md, "Model"): feed A's own meter may go above its
    // budget B while the agent sheds (an excursion, by design), never to its ceiling H,
    // and never for longer than `excursion_max_s`; feed B never above B at all.
    let (limits, excursion_max_s) = site_limits(&site);
    assert_two_limits(&meters, &a, &limits, excursion_max_s);
    let mut peak_a: f64 = 0.0;
    for m in &meters {
        let kw = m["fields"]["kw"].as_f64().unwrap();
        if m["fields"]["node"] == "feed-a" {
            if (120.0..420.0).contains(&m["fields"]["t_s"].as_f64().unwrap()) {
                peak_a = peak_a.max(kw);
            }
        } else {
            assert!(
                kw <= m["fields"]["budget_kw"].as_f64().unwrap(),
                "{} measured {kw} kW above its budget without a surge",
                m["fields"]["node"]
            );
        }
    }
    // The surge loaded feed A: its meter went up to (about) its budget.
    let b_a = limits["feed-a"].budget_kw;
    assert!(
        peak_a > PEAK_FRACTION * b_a,
        "the surge never loaded feed A: {peak_a} of {b_a} kW"
    );
    // Mining came back after the surge, no miner cycling faster than the limits.
    let restores: Vec<_> = acts.iter().filter(|x| !is_shed(&x.2)).collect();
    assert!(
        restores.iter().any(|x| x.0 > 420.0),
        "no restore after the surge\n{}",
        a.dump()
    );
    let mut last_shed: HashMap<&str, f64> = HashMap::new();
    let mut sleeps: HashMap<&str, usize> = HashMap::new();
    for (t, dev, lever, _) in &acts {
        match lever.as_str() {
            "sleep" => {
                *sleeps.entry(dev).or_default() += 1;
                last_shed.insert(dev, *t);
            }
            "wake" => {
                let off = last_shed.get(dev.as_str()).copied().unwrap_or(f64::MIN);
                assert!(
                    t - off >= 300.0 - 1.0,
                    "{dev} woke {:.0} s after sleeping",
                    t - off
                );
            }
            _ => {}
        }
    }
    assert!(sleeps.values().all(|&n| n <= 6), "sleep cycles: {sleeps:?}");
    energy_matches_the_simulator(&site, &meters_at_stop);
}

/// Energy accounting through the operator's path (docs/energy.md): after the run,
/// `rackwarden energy` on the site file reports every account, and their sum is the
/// energy the simulator's feeds drew while the agent ran (its feed meters' `kwh`, from
/// the first sample to the last one taken as the agent was told to stop), within 3% (the
/// samples are 5 s apart, the agent's first and last readings fall between them); the surge's
/// shed shows as mining's curtailed miner-hours for power.
fn energy_matches_the_simulator(site: &TempSite, meters: &[serde_json::Value]) {
    let out = std::process::Command::new(rackwarden_hil_tests::bin())
        .args([
            "energy",
            "--by",
            "month",
            "--json",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--config",
        ])
        .arg(&site.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let kwh = |id: &str| -> f64 {
        rows.iter()
            .filter(|r| r["account"] == id)
            .map(|r| r["kwh"].as_f64().unwrap())
            .sum()
    };
    let reported = kwh("acme") + kwh("borealis") + kwh("mining");
    for id in ["acme", "borealis", "mining"] {
        assert!(kwh(id) > 0.0, "no energy for {id}: {rows:?}");
    }
    // Each feed's kWh counter: first and last samples.
    let mut first: HashMap<String, f64> = HashMap::new();
    let mut last: HashMap<String, f64> = HashMap::new();
    for m in meters {
        let node = m["fields"]["node"].as_str().unwrap().to_owned();
        let e = m["fields"]["kwh"].as_f64().unwrap();
        first.entry(node.clone()).or_insert(e);
        last.insert(node, e);
    }
    let drawn: f64 = last.iter().map(|(n, e)| e - first[n]).sum();
    eprintln!("energy: {reported:.2} kWh reported, {drawn:.2} kWh drawn by the feeds");
    assert!(
        (reported - drawn).abs() / drawn < 0.03,
        "{reported:.2} kWh reported against {drawn:.2} kWh drawn: {rows:?}"
    );
    let curtailed: f64 = rows
        .iter()
        .filter(|r| r["account"] == "mining")
        .filter_map(|r| r["curtailed_miner_h"]["power"].as_f64())
        .sum();
    assert!(
        curtailed > 0.0,
        "the surge's shed shows no curtailed miner-hours: {rows:?}"
    );
}

#[test]
fn cooling_trip_loses_and_regains_n_plus_1_and_sheds_the_zone_in_between() {
    let _g = serial();
    let site = TempSite::new("cooling", |s| s);
    let mut s = sim(&site, "cooling-trip", SPEED);
    let mut a = agent(&site, SPEED, &[]);
    std::thread::sleep(real(560.0));
    let acts = action_times(&a, "action.sent");
    let alerts = a.alerts();
    assert_eq!(a.stop(), Some(0), "{}", a.dump());
    sim_summary(&mut s);

    let at = |name: &str| -> Option<f64> {
        let t0 = now_ms(&a.events("agent.started")[0]);
        alerts
            .iter()
            .find(|v| v["fields"]["alert"] == name && v["fields"]["zone"] == "air-mining")
            .map(|v| {
                #[allow(clippy::cast_precision_loss)]
                let t = now_ms(v).saturating_sub(t0) as f64 / 1000.0;
                t
            })
    };
    let lost = at("cooling.redundancy.lost").unwrap_or_else(|| panic!("no N+1 loss\n{}", a.dump()));
    let back = at("cooling.redundancy.restored")
        .unwrap_or_else(|| panic!("N+1 never restored\n{}", a.dump()));
    assert!((115.0..200.0).contains(&lost), "lost at {lost}");
    assert!(back > lost, "restored at {back}, lost at {lost}");
    let zone_sheds: Vec<_> = acts
        .iter()
        .filter(|x| is_shed(&x.2) && x.3 == "air-mining")
        .collect();
    assert!(!zone_sheds.is_empty(), "no shed for the zone\n{}", a.dump());
    assert!(zone_sheds
        .iter()
        .all(|x| x.0 >= lost - 1.0 && x.1.starts_with("mine-")));
    // No restore in the zone while it lacked redundancy.
    for (t, dev, lever, _) in &acts {
        if !is_shed(lever) {
            assert!(
                !(*t > lost + 1.0 && *t < back - 1.0),
                "{dev} {lever} at {t:.0} s while N+1 was lost ({lost:.0}..{back:.0})"
            );
        }
    }
}

#[test]
fn silent_feed_meter_is_stale_and_freezes_restores_on_that_feed() {
    let _g = serial();
    let site = TempSite::new("silent", |s| s);
    let mut s = sim(&site, "meter-silent", SPEED);
    let mut a = agent(&site, SPEED, &[]);
    std::thread::sleep(real(280.0));
    let acts = action_times(&a, "action.sent");
    let alerts = a.alerts();
    assert_eq!(a.stop(), Some(0), "{}", a.dump());
    sim_summary(&mut s);
    let stale: Vec<_> = alerts
        .iter()
        .filter(|v| v["fields"]["alert"] == "telemetry.stale" && v["fields"]["node"] == "feed-b")
        .collect();
    assert!(
        !stale.is_empty(),
        "no telemetry.stale for feed-b\n{}",
        a.dump()
    );
    let t0 = now_ms(&a.events("agent.started")[0]);
    #[allow(clippy::cast_precision_loss)]
    let stale_at = now_ms(stale[0]).saturating_sub(t0) as f64 / 1000.0;
    assert!((118.0..140.0).contains(&stale_at), "stale at {stale_at}");
    // While it is silent nothing on feed B is restored; what is shed there is shed
    // conservatively (CONTROL.md: stale reads as worst case, sheds only).
    for (t, dev, lever, _) in &acts {
        if dev.starts_with("mine-b") && *t >= stale_at {
            assert!(
                is_shed(lever),
                "{dev} {lever} at {t:.0} s while feed-b was silent"
            );
        }
    }
}

#[test]
fn miner_ignoring_sleep_is_unconfirmed_and_its_outlet_goes_off() {
    let _g = serial();
    let site = TempSite::new("ignores", |s| s);
    let mut s = sim(&site, "miner-ignores-sleep", SPEED);
    let mut a = agent(&site, SPEED, &[]);
    std::thread::sleep(real(240.0));
    let acts = action_times(&a, "action.sent");
    let alerts = a.alert_names();
    assert_eq!(a.stop(), Some(0), "{}", a.dump());
    let (writes, _) = sim_summary(&mut s);
    assert!(
        alerts.iter().any(|n| n == "action.unconfirmed"),
        "{alerts:?}\n{}",
        a.dump()
    );
    let outlets: Vec<_> = acts.iter().filter(|x| x.2 == "outlet_off").collect();
    assert!(!outlets.is_empty(), "no outlet switched off\n{}", a.dump());
    assert!(outlets.iter().all(|x| x.1.starts_with("mine-a")));
    // Escalation is monotone: each switched-off miner was asked gently first.
    for (t, dev, _, _) in &outlets {
        assert!(
            acts.iter().any(|x| &x.1 == dev
                && x.0 < *t
                && matches!(x.2.as_str(), "sleep" | "power_target")),
            "{dev}: outlet off without an earlier lever"
        );
    }
    assert!(writes >= outlets.len(), "simulator saw {writes} PDU writes");
}

#[test]
fn restart_mid_curtail_keeps_miners_curtailed_until_inputs_are_fresh() {
    let _g = serial();
    let site = TempSite::new("restart", |s| s);
    let mut s = sim(&site, "restart-mid-curtail", SPEED);
    let mut a = agent(&site, SPEED, &[]);
    std::thread::sleep(real(200.0));
    let before = action_times(&a, "action.sent");
    assert!(
        before.iter().any(|x| is_shed(&x.2)),
        "nothing curtailed before the kill\n{}",
        a.dump()
    );
    a.kill9();
    assert!(site.db_file().exists(), "no database after the kill");
    let b = agent(&site, SPEED, &[]);
    std::thread::sleep(real(120.0));
    let resumed = b.events("state.resumed");
    assert_eq!(resumed.len(), 1, "{}", b.dump());
    assert!(resumed[0]["fields"]["curtailed"].as_u64().unwrap() > 0);
    let after = action_times(&b, "action.sent");
    // When the start-up hold ended (every input fresh for 60 s), from b's start.
    let t0 = now_ms(&b.events("agent.started")[0]);
    #[allow(clippy::cast_precision_loss)]
    let released = b
        .alerts()
        .iter()
        .find(|v| v["fields"]["alert"] == "control.startup.released")
        .map_or(f64::INFINITY, |v| {
            now_ms(v).saturating_sub(t0) as f64 / 1000.0
        });
    drop(b);
    sim_summary(&mut s);
    // Nothing comes back within the start-up hold. After it, the surge still runs (until
    // 420 s): a power target may be raised where the shed left room under the fill line
    // (docs/control.md, trough filling), but no slept miner is woken and no outlet is
    // switched back on (their minimum off time runs past the surge).
    for (t, dev, lever, _) in &after {
        if is_shed(lever) {
            continue;
        }
        assert!(
            *t >= released - 0.5 && lever == "power_target_raise",
            "{dev} {lever} at {t:.0} s after the restart (hold released at {released:.0} s, still surging)"
        );
    }
}

#[test]
fn dry_run_decides_the_same_surge_and_writes_nothing() {
    let _g = serial();
    let site = TempSite::new("dry", |s| s);
    let mut s = sim(&site, "gpu-surge", SPEED);
    let mut a = agent(&site, SPEED, &["--dry-run"]);
    std::thread::sleep(real(200.0));
    let would = actions(&a, "action.would");
    let sent = actions(&a, "action.sent");
    assert_eq!(a.stop(), Some(0));
    let (writes, commanded) = sim_summary(&mut s);
    assert!(!would.is_empty(), "no would-be action\n{}", a.dump());
    // Nothing obeys in a dry run, so the agent escalates (up to GPU caps, the last lever):
    // all of it on feed A.
    let elsewhere: Vec<_> = would
        .iter()
        .filter(|x| !(x.0.starts_with("mine-a") || x.0.starts_with("gpunode-gpu-a")))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "would-be actions off feed A: {elsewhere:?}"
    );
    assert!(sent.is_empty(), "dry run sent {sent:?}");
    assert_eq!(writes, 0, "PDU writes in a dry run");
    assert_eq!(commanded, 0, "miner commands in a dry run");
    let journal = site.journal();
    assert!(!journal.is_empty());
    assert!(journal
        .iter()
        .all(|j| j["dry_run"] == true && j["result"] == "would"));
}

#[test]
fn the_readme_demo_runs_and_summarises() {
    let _g = serial();
    let mut d = Proc::spawn("demo", &["demo", "--speed", "10", "--duration-s", "700"]);
    assert_eq!(d.wait(Duration::from_secs(150)), Some(0), "{}", d.dump());
    let out = d.lines().join("\n");
    let field = |key: &str| -> usize {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no `{key}` in\n{out}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(out.contains("demo summary"), "{out}");
    // The terminal is the timeline (issue 18): short enough to read, no raw log lines,
    // no colour codes, no warning about the files the demo made.
    let lines = d.lines();
    assert!(
        lines.len() < 60,
        "{} lines on the terminal\n{out}",
        lines.len()
    );
    for l in &lines {
        assert!(
            !l.contains('\u{1b}') && !l.contains(" WARN ") && !l.contains("rackwarden::"),
            "a log line on the terminal: {l}"
        );
    }
    let shed_line = lines
        .iter()
        .find(|l| l.contains(" SHED ") && l.contains("why: "))
        .unwrap_or_else(|| panic!("no SHED line with its reason\n{out}"));
    assert!(shed_line.contains("mine-a"), "{shed_line}");
    let feed_lines = lines
        .iter()
        .filter(|l| l.contains(" feeds ") && l.contains("% of B") && l.contains("% of H"))
        .count();
    assert!(
        feed_lines >= 8,
        "a feed line a simulated minute: {feed_lines}\n{out}"
    );
    // The logs went to the file named at the start and at the end.
    let named: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("agent logs: "))
        .map(|l| l.split(" (").next().unwrap_or(l))
        .collect();
    assert_eq!(named.len(), 2, "log file named at start and end\n{out}");
    assert_eq!(named[0], named[1]);
    let log = std::fs::read_to_string(named[0]).unwrap();
    assert!(
        log.lines().count() > 100 && log.contains("alert") && !log.contains('\u{1b}'),
        "log file {}: {} lines",
        named[0],
        log.lines().count()
    );
    std::fs::remove_file(named[0]).ok();
    let shed = field("miners shed:");
    let restored = field("miners restored:");
    assert!(shed > 0 && restored > 0, "shed {shed}, restored {restored}");
    for needle in [
        "power.budget.shed",
        "cooling.redundancy.lost",
        "cooling.redundancy.restored",
    ] {
        assert!(out.contains(needle), "summary lacks {needle}\n{out}");
    }
    // The two limits (docs/control.md, "Model"): during the surge feed A may go above its
    // budget B while the agent sheds (an excursion, by design), never to its ceiling H,
    // and no excursion lasts longer than `excursion_max_s`.
    let (limits, excursion_max_s) = limits_of(&repo().join("examples/site.toml"));
    let mut peaks = 0;
    for l in out
        .lines()
        .filter(|l| l.trim_start().starts_with("peak feed-"))
    {
        // "  peak feed-a: 475 kW measured of 456 kW budget (104%)"
        let (feed, rest) = l
            .trim()
            .trim_start_matches("peak ")
            .split_once(':')
            .unwrap();
        let kw: f64 = rest.split_whitespace().next().unwrap().parse().unwrap();
        let h = limits[feed].ceiling_kw;
        assert!(kw < h, "{l}: at or above its {h} kW ceiling");
        peaks += 1;
    }
    assert_eq!(peaks, 2, "a peak per feed\n{out}");
    for l in out.lines().filter(|l| l.contains("power.excursion")) {
        if let Some(len) = excursion_len_s(l) {
            assert!(len <= excursion_max_s, "{l}");
        }
    }
    for bad in ["power.excursion.long", "power.budget.emergency"] {
        assert!(!out.contains(bad), "the demo raised {bad}\n{out}");
    }
}
