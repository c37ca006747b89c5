//! Fuzz the miner reply path: bytes off port 4028 -> repair -> JSON -> STATUS envelope
//! -> telemetry extraction. Nothing may panic; a parsed value must be a JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rackwarden_config::Firmware;
use rackwarden_protocols::miner::reply::{parse_json, repair, Reply};
use rackwarden_protocols::miner::telemetry::{self as tm, MinerTelemetry};

fuzz_target!(|data: &[u8]| {
    let _ = repair(data);
    if let Ok(v) = parse_json(data) {
        assert!(v.is_object());
        let _ = Reply::split_multi(v, &["summary", "stats"]);
    }
    if let Ok(r) = Reply::parse(data) {
        let mut t = MinerTelemetry::empty("fuzz", Firmware::AntminerStock);
        tm::apply_summary(&mut t, &r);
        tm::apply_stats(&mut t, &r);
        tm::apply_version(&mut t, &r);
        tm::apply_tunerstatus(&mut t, &r);
        tm::apply_temps(&mut t, &r);
        tm::apply_fans(&mut t, &r);
        tm::apply_luxos_power(&mut t, &r);
        let _ = tm::apply_luxos_config(&mut t, &r);
        let _ = tm::luxos_profiles(&r);
        tm::apply_whatsminer_status(&mut t, &r);
        tm::apply_whatsminer_version(&mut t, &r);
        tm::apply_avalon_estats(&mut t, &r);
        t.mode_from_hashrate(rackwarden_protocols::miner::MinerMode::Sleeping);
        t.estimate_power(30.0, 20.0);
        let _ = r.ok();
    }
});
