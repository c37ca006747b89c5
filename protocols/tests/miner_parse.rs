//! Parser tests over every miner fixture in `tests/data/miners/` (see its README for
//! sources): each file as stored and compacted, with a NUL appended as on the wire, and
//! the raw quirk file. Every file must have a check here (a new fixture without one
//! fails `every_fixture_is_checked`).

// Test code: helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use rackwarden_config::Firmware;
use rackwarden_protocols::miner::reply::{field, parse_json, text};
use rackwarden_protocols::miner::telemetry::{self as tm, MinerMode, MinerTelemetry};
use rackwarden_protocols::miner::{Reply, ReplyError, StatusKind};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/miners")
}

fn file(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap()
}

/// The forms a fixture is tested in: as stored + NUL, compact + NUL.
fn wire_forms(name: &str) -> Vec<Vec<u8>> {
    let raw = file(name);
    let mut a = raw.clone();
    a.push(0);
    let compact = serde_json::to_vec(&serde_json::from_slice::<Value>(&raw).unwrap()).unwrap();
    let mut b = compact;
    b.push(0);
    vec![a, b]
}

/// Parse every wire form of a cgminer-envelope fixture, check they agree, return one.
fn reply(name: &str) -> Reply {
    let forms = wire_forms(name);
    let first = Reply::parse(&forms[0]).unwrap();
    for f in &forms[1..] {
        assert_eq!(Reply::parse(f).unwrap(), first, "{name}: forms disagree");
    }
    first
}

fn json(name: &str) -> Value {
    let forms = wire_forms(name);
    let v = parse_json(&forms[0]).unwrap();
    assert_eq!(parse_json(&forms[1]).unwrap(), v);
    v
}

fn t() -> MinerTelemetry {
    MinerTelemetry::empty("m-test", Firmware::AntminerStock)
}

fn close(a: Option<f64>, b: f64) {
    let a = a.unwrap_or_else(|| panic!("expected {b}, got none"));
    assert!((a - b).abs() < 1e-6, "{a} != {b}");
}

const CHECKED: &[&str] = &[
    "antminer-s19pro-stock_devs.json",
    "antminer-s19pro-stock_pools.json",
    "antminer-s19pro-stock_stats.json",
    "antminer-s19pro-stock_summary.json",
    "antminer-s19pro-stock_version.json",
    "avalon_ascset_help.json",
    "avalon_ascset_softoff.json",
    "avalon_ascset_softon.json",
    "avalon_ascset_workmode.json",
    "braiins-os-bosminer_fans.json",
    "braiins-os-bosminer_pause.json",
    "braiins-os-bosminer_resume.json",
    "braiins-os-bosminer_temps.json",
    "braiins-os-bosminer_tunerstatus.json",
    "braiins-os-v25.07-rest_miner_details.json",
    "braiins-os-v25.07-rest_miner_stats.json",
    "braiins-os-v25.07-rest_performance_tuner_state.json",
    "luxos_config.json",
    "luxos_curtail_sleep.json",
    "luxos_curtail_wakeup.json",
    "luxos_devs.json",
    "luxos_pools.json",
    "luxos_power.json",
    "luxos_profiles.json",
    "luxos_stats.json",
    "luxos_summary.json",
    "luxos_version.json",
    "quirk_cgminer-stats-missing-comma.raw.txt",
    "whatsminer-apiv2_devs.json",
    "whatsminer-apiv2_get_psu.json",
    "whatsminer-apiv2_get_version.json",
    "whatsminer-apiv2_pools.json",
    "whatsminer-apiv2_status.json",
    "whatsminer-apiv2_summary.json",
    "whatsminer-apiv3_get_device_info.json",
    "whatsminer-apiv3_get_miner_status_edevs.json",
    "whatsminer-apiv3_get_miner_status_pools.json",
    "whatsminer-apiv3_get_miner_status_summary.json",
];

#[test]
fn every_fixture_is_checked() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "README.md")
        .collect();
    let checked: BTreeSet<String> = CHECKED.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(on_disk, checked);
}

#[test]
fn antminer_stock() {
    let s = reply("antminer-s19pro-stock_summary.json");
    assert_eq!(s.status.kind, StatusKind::Success);
    assert_eq!(s.status.code, Some(11));
    let mut tel = t();
    tm::apply_summary(&mut tel, &s);
    close(tel.hashrate_ths, 110.56689);
    assert_eq!(tel.uptime_s, Some(50474));
    assert_eq!(tel.power_w, None, "stock firmware reports no power");

    let st = reply("antminer-s19pro-stock_stats.json");
    tm::apply_stats(&mut tel, &st);
    assert_eq!(tel.model.as_deref(), Some("Antminer S19 Pro"));
    assert_eq!(tel.fans_rpm, vec![6000.0, 5880.0, 5040.0, 5040.0]);
    assert_eq!(tel.board_temps_c, vec![73.0, 66.0, 64.0]);
    assert_eq!(tel.chip_temps_c, vec![78.0, 71.0, 69.0]);
    // chain_rate* are strings on bmminer: the lenient reader takes them.
    let chain = st.all("STATS").nth(1).unwrap();
    close(field(chain, &["chain_rate1"]), 37603.30);
    assert_eq!(field(chain, &["chain_rate4"]), None);
    tel.mode_from_hashrate(MinerMode::Sleeping);
    tel.estimate_power(29.5, 25.0);
    assert_eq!(tel.mode, MinerMode::Mining);
    assert!(tel.power_estimated);
    close(tel.power_w, 110.56689 * 29.5);

    let v = reply("antminer-s19pro-stock_version.json");
    let mut tv = t();
    tm::apply_version(&mut tv, &v);
    assert_eq!(tv.model.as_deref(), Some("Antminer S19 Pro"));
    assert_eq!(tv.firmware_version.as_deref(), Some("49.0.1.3"));

    let d = reply("antminer-s19pro-stock_devs.json");
    assert_eq!(d.status.code, Some(9));
    let dev = d.first("DEVS").unwrap();
    // Upstream typo kept: "Tenperature".
    assert_eq!(field(dev, &["Temperature", "Tenperature"]), Some(0.0));
    assert_eq!(text(dev, &["Status"]).as_deref(), Some("Alive"));

    let p = reply("antminer-s19pro-stock_pools.json");
    assert_eq!(p.all("POOLS").count(), 3);
    let p0 = p.first("POOLS").unwrap();
    assert_eq!(field(p0, &["Pool Stale%", "Pool Stale%%"]), Some(0.0));
    assert_eq!(field(p0, &["Accepted"]), Some(4057.0));
}

#[test]
fn quirk_missing_comma_raw_and_with_nul() {
    let raw = file("quirk_cgminer-stats-missing-comma.raw.txt");
    assert!(
        serde_json::from_slice::<Value>(&raw).is_err(),
        "the quirk file must be broken"
    );
    let mut with_nul = raw.clone();
    with_nul.push(0);
    for bytes in [raw, with_nul] {
        let r = Reply::parse(&bytes).unwrap();
        assert_eq!(r.status.kind, StatusKind::Success);
        assert_eq!(r.status.msg, "CGMiner stats");
        let objs: Vec<_> = r.all("STATS").collect();
        assert_eq!(objs.len(), 2);
        assert_eq!(text(objs[0], &["CGMiner"]).as_deref(), Some("2.3.3"));
        assert_eq!(field(objs[1], &["fan1"]), Some(5610.0));
        assert_eq!(field(objs[1], &["chain_acn1"]), Some(105.0));
        let mut tel = t();
        tm::apply_stats(&mut tel, &r);
        assert_eq!(tel.fans_rpm, vec![5610.0]);
    }
}

#[test]
fn avalon_ascset() {
    let off = reply("avalon_ascset_softoff.json");
    assert_eq!(off.status.kind, StatusKind::Info);
    assert!(off.status.kind.is_ok());
    assert_eq!(off.status.code, Some(118));
    assert!(off.status.msg.contains("success softoff"));
    let on = reply("avalon_ascset_softon.json");
    assert!(on.status.msg.contains("success softon"));
    let help = reply("avalon_ascset_help.json");
    assert!(help.status.msg.contains("softoff") && help.status.msg.contains("softon"));
    assert_eq!(help.status.description, "cgminer 4.11.1");
    let wm = reply("avalon_ascset_workmode.json");
    assert_eq!(wm.status.kind, StatusKind::Success);
    assert_eq!(wm.status.code, Some(119));
}

#[test]
fn braiins_bosminer() {
    let mut tel = t();
    tm::apply_tunerstatus(&mut tel, &reply("braiins-os-bosminer_tunerstatus.json"));
    assert_eq!(tel.power_w, Some(1419.0));
    assert!(!tel.power_estimated);
    assert_eq!(tel.power_target_w, Some(1420.0));
    tm::apply_temps(&mut tel, &reply("braiins-os-bosminer_temps.json"));
    assert_eq!(tel.board_temps_c, vec![81.875, 85.875, 84.4375]);
    assert_eq!(tel.chip_temps_c, vec![104.625, 108.9375, 105.4375]);
    tm::apply_fans(&mut tel, &reply("braiins-os-bosminer_fans.json"));
    assert_eq!(tel.fans_rpm, vec![5340.0, 4620.0, 0.0, 0.0]);
    let p = reply("braiins-os-bosminer_pause.json");
    assert_eq!(p.status.code, Some(204));
    assert_eq!(p.body["PAUSE"][0], true);
    let r = reply("braiins-os-bosminer_resume.json");
    assert_eq!(r.status.code, Some(205));
    assert_eq!(r.body["RESUME"][0], true);
}

#[test]
fn braiins_rest_json_has_no_cgminer_envelope() {
    let stats = json("braiins-os-v25.07-rest_miner_stats.json");
    assert_eq!(
        stats
            .pointer("/power_stats/approximated_consumption/watt")
            .and_then(Value::as_f64),
        Some(3137.0)
    );
    let tuner = json("braiins-os-v25.07-rest_performance_tuner_state.json");
    assert_eq!(
        tuner
            .pointer("/mode_state/powertargetmodestate/current_target/watt")
            .and_then(Value::as_f64),
        Some(3031.0)
    );
    let details = json("braiins-os-v25.07-rest_miner_details.json");
    assert_eq!(
        details
            .pointer("/miner_identity/miner_model")
            .and_then(Value::as_str),
        Some("Antminer S19 XP")
    );
    let mut bytes = file("braiins-os-v25.07-rest_miner_stats.json");
    bytes.push(0);
    assert_eq!(Reply::parse(&bytes).unwrap_err(), ReplyError::NoStatus);
}

#[test]
fn luxos() {
    let mut tel = MinerTelemetry::empty("m-lux", Firmware::Luxos);
    tm::apply_summary(&mut tel, &reply("luxos_summary.json"));
    close(tel.hashrate_ths, 59.75606);
    assert_eq!(tel.uptime_s, Some(3453));
    tm::apply_stats(&mut tel, &reply("luxos_stats.json"));
    assert_eq!(tel.model.as_deref(), Some("Antminer S19k Pro"));
    assert_eq!(tel.fans_rpm, vec![1920.0, 1920.0, 2340.0, 2340.0]);
    assert_eq!(tel.board_temps_c, vec![47.0, 47.0, 47.0]);
    tm::apply_luxos_power(&mut tel, &reply("luxos_power.json"));
    assert_eq!(tel.power_w, Some(1051.0));
    let profile = tm::apply_luxos_config(&mut tel, &reply("luxos_config.json"));
    assert_eq!(profile.as_deref(), Some("290MHz"));
    assert_eq!(tel.mode, MinerMode::Mining, "CurtailMode None is mining");
    let profiles = tm::luxos_profiles(&reply("luxos_profiles.json"));
    assert!(profiles.len() >= 20, "{}", profiles.len());
    assert!(profiles.contains(&("290MHz".to_owned(), 1188.0)));
    assert!(profiles.contains(&("default".to_owned(), 2794.0)));
    let mut tv = t();
    tm::apply_version(&mut tv, &reply("luxos_version.json"));
    assert_eq!(
        tv.firmware_version.as_deref(),
        Some("2025.4.8.220305-57b389c7")
    );
    let sleep = reply("luxos_curtail_sleep.json");
    assert_eq!(sleep.status.code, Some(335));
    assert_eq!(
        text(sleep.first("CURTAIL").unwrap(), &["Action"]).as_deref(),
        Some("sleep mode")
    );
    let wake = reply("luxos_curtail_wakeup.json");
    assert_eq!(
        text(wake.first("CURTAIL").unwrap(), &["Action"]).as_deref(),
        Some("wake up")
    );
    let devs = reply("luxos_devs.json");
    assert_eq!(devs.all("DEVS").count(), 3);
    close(
        field(devs.first("DEVS").unwrap(), &["MHS 5s"]),
        20751652.263361264,
    );
    let pools = reply("luxos_pools.json");
    assert_eq!(
        text(pools.first("POOLS").unwrap(), &["User"]).as_deref(),
        Some("asic-rs.user1")
    );
}

#[test]
fn whatsminer_v2() {
    let mut tel = MinerTelemetry::empty("m-wm", Firmware::Whatsminer);
    tm::apply_summary(&mut tel, &reply("whatsminer-apiv2_summary.json"));
    close(tel.hashrate_ths, 124.5);
    assert_eq!(tel.power_w, Some(3200.0));
    assert_eq!(tel.power_target_w, Some(3300.0));
    assert_eq!(tel.fans_rpm, vec![5400.0, 5280.0]);
    assert_eq!(tel.chip_temps_c, vec![81.0]);
    assert_eq!(tel.uptime_s, Some(25000));
    // The flat envelope.
    let st = reply("whatsminer-apiv2_status.json");
    assert_eq!(st.status.kind, StatusKind::Success);
    assert_eq!(st.status.code, Some(131));
    tm::apply_whatsminer_status(&mut tel, &st);
    assert_eq!(tel.mode, MinerMode::Mining);
    assert_eq!(tel.power_target_w, Some(3600.0));
    let v = reply("whatsminer-apiv2_get_version.json");
    tm::apply_whatsminer_version(&mut tel, &v);
    assert_eq!(tel.firmware_version.as_deref(), Some("20230803.11.REL"));
    let psu = reply("whatsminer-apiv2_get_psu.json");
    assert_eq!(
        text(psu.msg_object().unwrap(), &["model"]).as_deref(),
        Some("P222B")
    );
    close(field(psu.msg_object().unwrap(), &["fan_speed"]), 6000.0);
    let devs = reply("whatsminer-apiv2_devs.json");
    assert_eq!(devs.all("DEVS").count(), 3);
    assert_eq!(
        field(devs.first("DEVS").unwrap(), &["Temperature"]),
        Some(65.0)
    );
    let pools = reply("whatsminer-apiv2_pools.json");
    assert_eq!(pools.all("POOLS").count(), 3);
}

#[test]
fn whatsminer_v3_is_json_without_cgminer_status() {
    let s = json("whatsminer-apiv3_get_miner_status_summary.json");
    assert_eq!(
        s.pointer("/msg/summary/power-realtime")
            .and_then(Value::as_f64),
        Some(3156.0)
    );
    assert_eq!(
        s.pointer("/msg/summary/power-limit")
            .and_then(Value::as_f64),
        Some(3600.0)
    );
    let e = json("whatsminer-apiv3_get_miner_status_edevs.json");
    assert_eq!(
        e.pointer("/msg/edevs")
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(3)
    );
    let p = json("whatsminer-apiv3_get_miner_status_pools.json");
    assert_eq!(
        p.pointer("/msg/pools/0/account").and_then(Value::as_str),
        Some("asic-rs.test")
    );
    let d = json("whatsminer-apiv3_get_device_info.json");
    assert_eq!(
        d.pointer("/msg/miner/type").and_then(Value::as_str),
        Some("M60S_VK40")
    );
    let mut bytes = file("whatsminer-apiv3_get_device_info.json");
    bytes.push(0);
    assert_eq!(Reply::parse(&bytes).unwrap_err(), ReplyError::NoStatus);
}

/// Every prefix of every fixture (a truncated reply) parses to an object or fails with
/// an error; none panics.
#[test]
fn truncations_never_panic() {
    for name in CHECKED {
        let raw = file(name);
        let compact = serde_json::from_slice::<Value>(&raw)
            .map(|v| serde_json::to_vec(&v).unwrap())
            .unwrap_or(raw.clone());
        for cut in (1..compact.len()).step_by(5) {
            if let Ok(v) = parse_json(&compact[..cut]) {
                assert!(v.is_object(), "{name} cut at {cut}");
            }
            Reply::parse(&compact[..cut]).ok();
        }
    }
}

/// A truncated reply keeps its complete fields (btminer cuts replies).
#[test]
fn truncated_summary_keeps_status_and_leading_fields() {
    let compact = serde_json::to_vec(
        &serde_json::from_slice::<Value>(&file("whatsminer-apiv2_summary.json")).unwrap(),
    )
    .unwrap();
    let text = String::from_utf8(compact).unwrap();
    let cut = text.find("\"Elapsed\"").unwrap() + 12;
    let r = Reply::parse(&text.as_bytes()[..cut]).unwrap();
    assert_eq!(r.status.code, Some(11));
    let s = r.first("SUMMARY").unwrap();
    assert_eq!(field(s, &["Chip Temp Avg"]), Some(72.5));
    assert_eq!(
        field(s, &["Elapsed"]),
        None,
        "a cut number is dropped, not misread"
    );
}
