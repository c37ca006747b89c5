//! The simulated LuxOS: the twin of
//! `rackwarden_protocols::miner::firmware::luxos`.

use rackwarden_config::Firmware;
use rackwarden_protocols::miner::telemetry::MinerMode;
use serde_json::{json, Value};

use super::{cg_obj, invalid, profile_name, sim_model, status, web, Cg};

/// LuxOS's own cgminer-API commands (the shared ones are answered in
/// `super::command_answer`).
pub(super) fn command(c: &Cg<'_>, cmd: &str, param: &str) -> Vec<u8> {
    let m = c.m;
    let fw = c.fw;
    let d = c.d;
    let power = c.power;
    let mode = c.mode;
    let profile = &c.profile;
    let ok = |code: i64, msg: &str, section: Option<(&str, Value)>| c.ok(code, msg, section);
    match (fw, cmd) {
        // LuxOS and stock bmminer as in the fixtures (luxos_version.json,
        // antminer-s19pro-stock_version.json); Vnish's `Type` names it.
        (Firmware::Luxos, "version") => ok(
            22,
            "LUXminer versions",
            Some((
                "VERSION",
                json!([{"API": "3.7", "CompileTime": "Tue Apr  8 22:05:35 UTC 2025", "LUXminer": "2025.4.8.220305-57b389c7", "Miner": "2025.4.8.220305", "Type": sim_model(fw)}]),
            )),
        ),
        // LuxOS `fans` and `temps` (as LUXminer 2025.4.8 answers, asic-rs's luxminer test
        // data), the same figures as `stats`.
        (Firmware::Luxos, "fans") => {
            let th = web::bm_thermals(mode);
            let fans: Vec<Value> = th.fans.iter().enumerate().map(|(i, rpm)| json!({"FAN": format!("FAN{}", i + 1), "ID": i, "RPM": rpm, "Speed": 100})).collect();
            ok(202, "4 Fan(s)", Some(("FANS", json!(fans))))
        }
        (Firmware::Luxos, "temps") => {
            let th = web::bm_thermals(mode);
            let temps: Vec<Value> = (0..3).map(|i| json!({"TEMP": i, "ID": i, "TopLeft": th.pcb[i], "BottomLeft": th.pcb[i], "TopRight": th.pcb[i] - 10, "BottomRight": th.pcb[i] - 10})).collect();
            ok(201, "3 Temp(s)", Some(("TEMPS", json!(temps))))
        }
        (Firmware::Luxos, "power") => ok(
            311,
            "Power usage",
            Some(("POWER", json!([{"PSU": false, "Watts": power.round()}]))),
        ),
        (Firmware::Luxos, "config") => ok(
            33,
            "LUXminer config",
            Some((
                "CONFIG",
                json!([{
                    "CurtailMode": if mode == MinerMode::Mining { "None" } else { "Sleep" },
                    "Profile": profile, "Model": "Antminer S19k Pro", "OS": "LuxOS", "IsTuning": true,
                    "MACAddr": m.mac_text(false), "NameplateTHS": 121.8
                }]),
            )),
        ),
        (Firmware::Luxos, "profiles") => {
            let steps = 8;
            let span = m.spec.nominal_w - m.spec.min_w;
            let list: Vec<Value> = (0..=steps)
                .map(|i| {
                    let w = m.spec.min_w + span * f64::from(i) / f64::from(steps);
                    json!({"Profile Name": profile_name(w), "Watts": w.round(), "Hashrate": ((w / m.spec.efficiency_j_th) * 10.0).round() / 10.0, "Step": i.to_string(), "IsDynamic": true})
                })
                .collect();
            ok(323, "List profiles", Some(("PROFILES", json!(list))))
        }
        (Firmware::Luxos, "logon") => {
            let mut st = m.st();
            if st.session.is_some() {
                drop(st);
                cg_obj(status("E", 45, "Another session is active", d), None).into_bytes()
            } else {
                st.counter += 1;
                let sid = format!("{:08x}", st.counter.wrapping_mul(2_654_435_761));
                st.session = Some(sid.clone());
                drop(st);
                ok(
                    317,
                    "Logon successful",
                    Some(("SESSION", json!([{"SessionID": sid}]))),
                )
            }
        }
        (Firmware::Luxos, "session") => {
            let sid = m.st().session.clone().unwrap_or_default();
            ok(
                318,
                "Session",
                Some(("SESSION", json!([{"SessionID": sid}]))),
            )
        }
        (Firmware::Luxos, "curtail" | "profileset") => {
            let mut it = param.splitn(2, ',');
            let (sid, arg) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if m.st().session.as_deref() != Some(sid) || sid.is_empty() {
                return cg_obj(status("E", 43, "Invalid session id", d), None).into_bytes();
            }
            if cmd == "curtail" {
                let (mode, action) = match arg {
                    "sleep" => (MinerMode::Sleeping, "sleep mode"),
                    "wakeup" => (MinerMode::Mining, "wake up"),
                    _ => {
                        return cg_obj(status("E", 336, "Invalid curtail mode", d), None)
                            .into_bytes()
                    }
                };
                m.control(&format!("curtail {arg}"), Some(mode), None);
                ok(
                    335,
                    "Curtailment command sent",
                    Some(("CURTAIL", json!([{"Action": action}]))),
                )
            } else {
                let Some(w) = arg.strip_suffix('W').and_then(|w| w.parse::<f64>().ok()) else {
                    return cg_obj(status("E", 325, "Invalid profile", d), None).into_bytes();
                };
                m.control(&format!("profileset {arg}"), None, Some(w));
                ok(
                    324,
                    "Profile set",
                    Some(("PROFILE", json!([{"Profile": arg}]))),
                )
            }
        }
        _ => invalid(fw),
    }
}
