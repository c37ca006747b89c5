//! The simulated Canaan Avalon: the twin of
//! `rackwarden_protocols::miner::firmware::avalon`.

use rackwarden_config::Firmware;
use rackwarden_protocols::miner::telemetry::MinerMode;
use serde_json::{json, Value};

use super::{cg_obj, invalid, now_epoch, status, Cg};

/// Canaan Avalon's own cgminer-API commands (the shared ones are answered in
/// `super::command_answer`).
pub(super) fn command(c: &Cg<'_>, cmd: &str, param: &str) -> Vec<u8> {
    let fw = c.fw;
    let m = c.m;
    let d = c.d;
    let power = c.power;
    let hr_ths = c.hr_ths;
    let mode = c.mode;
    let elapsed = c.elapsed;
    let ghs = c.ghs;
    let ok = |code: i64, msg: &str, section: Option<(&str, Value)>| c.ok(code, msg, section);
    match (fw, cmd) {
        // cgminer's `stats` carries the same MM string on an Avalon (asic-rs reads it).
        (Firmware::Avalon, "estats" | "stats") => {
            let (soft, work) = if mode == MinerMode::Mining {
                (0, "In Work")
            } else {
                (1, "In Idle")
            };
            // As the A1246 capture (asic-rs avalon_a_stats.json): power in PS[] (5th
            // value), no WALLPOWER.
            let mm = format!(
                "Ver[1246-83-21082601_4ec6bb0_61407fa] Elapsed[{elapsed}] Temp[30] TMax[91] TAvg[78] Fan1[3000] Fan2[3010] FanR[60%] SoftOFF[{soft}] SYSTEMSTATU[Work: {work}, Hash Board: 3 ] GHSspd[{ghs:.2}] GHSmm[{:.2}] MTmax[91 90 89] MTavg[78 77 76] WORKMODE[1] PS[0 1209 2280 54 {:.0} 2280 1270]",
                m.spec.nominal_w / m.spec.efficiency_j_th * 1000.0,
                power
            );
            ok(
                70,
                "CGMiner stats",
                Some((
                    "STATS",
                    json!([{"STATS": 0, "ID": "AVA100", "Elapsed": elapsed, "Calls": 0, "Wait": 0.0, "Max": 0.0, "Min": 99_999_999.0, "MM Count": 1, "MM ID0": mm}]),
                )),
            )
        }
        // cgminer's `devs`: one ASC, rates in MH/s (pyasic and asic-rs read `MHS 1m`).
        (Firmware::Avalon, "devs") => ok(
            9,
            "1 ASC(s)",
            Some((
                "DEVS",
                json!([{"ASC": 0, "Name": "AVALON", "ID": 0, "Enabled": "Y", "Status": "Alive", "Temperature": 0.0, "MHS av": hr_ths * 1.0e6, "MHS 5s": hr_ths * 1.0e6, "MHS 1m": hr_ths * 1.0e6, "MHS 5m": hr_ths * 1.0e6, "MHS 15m": hr_ths * 1.0e6, "Accepted": 890, "Rejected": 2, "Hardware Errors": 0, "Device Elapsed": elapsed}]),
            )),
        ),
        (Firmware::Avalon, "version") => ok(
            22,
            "CGMiner versions",
            Some((
                "VERSION",
                json!([{"CGMiner": "4.11.1", "API": "3.7", "STM8": "20.08.01", "PROD": "AvalonMiner 1246", "MODEL": "1246", "HWTYPE": "MM3v2_X3", "SWTYPE": "MM314", "VERSION": "21082601_4ec6bb0_61407fa", "LOADER": "d0d779de.00", "DNA": "020100008c699117", "MAC": m.mac_text(false).replace(':', ""), "UPAPI": "2"}]),
            )),
        ),
        (Firmware::Avalon, "ascset") => {
            let verb = param.split(',').nth(1).unwrap_or("");
            let mode = match verb {
                "softoff" => MinerMode::Sleeping,
                "softon" => MinerMode::Mining,
                _ => {
                    return cg_obj(
                        status("I", 118, "ASC 0 set info: help|softon|softoff|workmode|", d),
                        None,
                    )
                    .into_bytes()
                }
            };
            m.control(&format!("ascset {verb}"), Some(mode), None);
            cg_obj(
                status(
                    "I",
                    118,
                    &format!("ASC 0 set info: success {verb}:{}", now_epoch()),
                    d,
                ),
                None,
            )
            .into_bytes()
        }
        _ => invalid(fw),
    }
}
