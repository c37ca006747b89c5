//! The simulated Braiins OS / OS+: the twin of
//! `rackwarden_protocols::miner::firmware::braiins`.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rackwarden_config::Firmware;
use rackwarden_protocols::miner::telemetry::MinerMode;
use serde_json::{json, Value};

use super::web::{html, int, json_resp, BOS_BOARD_C, BOS_CHIP_C, BOS_FANS_RPM, BOS_VERSION, CHIPS};
use super::{invalid, not_found, Cg, SimMiner};

/// Braiins OS / OS+'s own cgminer-API commands (the shared ones are answered in
/// `super::command_answer`).
pub(super) fn command(c: &Cg<'_>, cmd: &str, _param: &str) -> Vec<u8> {
    let fw = c.fw;
    let m = c.m;
    let power = c.power;
    let hr_ths = c.hr_ths;
    let target = c.target;
    let elapsed = c.elapsed;
    let ok = |code: i64, msg: &str, section: Option<(&str, Value)>| c.ok(code, msg, section);
    match (fw, cmd) {
        // BOSminer's `version` names the software only; the model is in `devdetails`
        // (where pyasic reads it, with a `Bitmain ` prefix).
        (Firmware::Braiins, "version") => ok(
            22,
            "BOSminer versions",
            Some((
                "VERSION",
                json!([{"API": "3.7", "BOSminer": "0.2.0-ea64aec8e"}]),
            )),
        ),
        (Firmware::Braiins, "devdetails") => ok(
            69,
            "Device Details",
            Some((
                "DEVDETAILS",
                json!([6, 7, 8].iter().enumerate().map(|(i, id)| json!({"DEVDETAILS": i, "Name": "Hashchain", "ID": id, "Driver": "bitmain", "Kernel": "", "Model": "Bitmain Antminer S19 Pro", "Chips": 114, "Frequency": 650.0, "Voltage": 13.4})).collect::<Vec<_>>()),
            )),
        ),
        (Firmware::Braiins, "tunerstatus") => ok(
            203,
            "Tuner Status",
            Some((
                "TUNERSTATUS",
                json!([{
                    "ApproximateMinerPowerConsumption": power.round(),
                    "ApproximateChainPowerConsumption": (power * 0.95).round(),
                    "PowerLimit": target.round(), "DynamicPowerScaling": "Disabled", "TunerChainStatus": []
                }]),
            )),
        ),
        (Firmware::Braiins, "temps") => ok(
            201,
            "3 Temp(s)",
            Some((
                "TEMPS",
                json!([{"TEMP": 0, "ID": 6, "Board": 81.875, "Chip": 104.625}, {"TEMP": 1, "ID": 7, "Board": 85.875, "Chip": 108.9375}, {"TEMP": 2, "ID": 8, "Board": 84.4375, "Chip": 105.4375}]),
            )),
        ),
        // BOSminer's `devs`: one entry per hashboard (ID 6..8 as `temps`), `MHS 5s` zero
        // while paused (pyasic reads the mining state from it).
        (Firmware::Braiins, "devs") => {
            let per = hr_ths * 1.0e6 / 3.0;
            let nominal = m.spec.nominal_w / m.spec.efficiency_j_th * 1.0e6 / 3.0;
            let devs: Vec<Value> = [6, 7, 8]
                .iter()
                .enumerate()
                .map(|(i, id)| json!({"ASC": i, "Name": "", "ID": id, "Enabled": "Y", "Status": "Alive", "Temperature": 0.0, "MHS av": per, "MHS 5s": per, "MHS 1m": per, "MHS 5m": per, "MHS 15m": per, "Nominal MHS": nominal, "Accepted": 1350, "Rejected": 3, "Hardware Errors": 0, "Device Elapsed": elapsed}))
                .collect();
            ok(9, "3 ASC(s)", Some(("DEVS", json!(devs))))
        }
        (Firmware::Braiins, "fans") => ok(
            202,
            "2 Fan(s)",
            Some((
                "FANS",
                json!([{"FAN": 0, "ID": 0, "RPM": 5340, "Speed": 100}, {"FAN": 1, "ID": 1, "RPM": 4620, "Speed": 100}]),
            )),
        ),
        (Firmware::Braiins, "pause") => {
            m.control("pause", Some(MinerMode::Paused), None);
            ok(204, "Pause", Some(("PAUSE", json!([true]))))
        }
        (Firmware::Braiins, "resume") => {
            m.control("resume", Some(MinerMode::Mining), None);
            ok(205, "Resume", Some(("RESUME", json!([true]))))
        }
        _ => invalid(fw),
    }
}

/// Braiins OS / OS+'s levers over HTTP (what rackwarden's driver calls; the rest of its web
/// API is in `super::web`).
pub(super) async fn http(
    m: &Arc<SimMiner>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Response {
    let bad = |s: StatusCode| (s, "{}").into_response();
    match (m.spec.firmware, method.as_str(), path) {
        (Firmware::Braiins, "POST", "/api/v1/auth/login") => {
            if body.get("password").and_then(Value::as_str) != Some(m.spec.password.as_str()) {
                return bad(StatusCode::UNAUTHORIZED);
            }
            let mut st = m.st();
            st.counter += 1;
            let t = format!("bos{:x}", st.counter.wrapping_mul(2_654_435_761));
            st.http_token = Some(t.clone());
            axum::Json(json!({"token": t, "timeout_s": 3600})).into_response()
        }
        (Firmware::Braiins, "PUT", "/api/v1/performance/power-target") => {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
            if auth.is_none() || m.st().http_token.as_deref() != auth {
                return bad(StatusCode::UNAUTHORIZED);
            }
            let Some(w) = body
                .get("watt")
                .and_then(rackwarden_protocols::miner::reply::num)
            else {
                return bad(StatusCode::BAD_REQUEST);
            };
            m.control(&format!("power-target {w:.0}"), None, Some(w));
            axum::Json(json!({"watt": w})).into_response()
        }
        _ => not_found(),
    }
}

// ------------------------------------------------------------------ web API (super::web)

/// Braiins OS's REST API, GraphQL and web root, as the independent clients read them.
pub(super) fn web(
    m: &SimMiner,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Option<Response> {
    let s = m.snap();
    let ths = s.hr_ths;
    let gh = |t: f64| json!({"gigahash_per_second": t * 1000.0});
    let nominal_ths = m.spec.nominal_w / m.spec.efficiency_j_th;
    if *method == Method::GET && path == "/" {
        return Some(html("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Braiins OS</title></head><body><div id=\"root\"></div></body></html>"));
    }
    if *method == Method::POST && path == "/graphql" {
        // The two queries asic-rs identifies a Braiins miner with.
        let q = body.get("query").and_then(Value::as_str).unwrap_or("");
        return Some(if q.contains("modelName") {
            json_resp(json!({"data": {"bosminer": {"info": {"modelName": "Antminer S19 Pro"}}}}))
        } else if q.contains("version") {
            json_resp(json!({"data": {"bos": {"info": {"version": {"full": BOS_VERSION}}}}}))
        } else {
            json_resp(json!({"errors": [{"message": "unknown query"}]}))
        });
    }
    let rest = path.strip_prefix("/api/v1/")?.trim_end_matches('/');
    if *method == Method::PUT && matches!(rest, "actions/pause" | "actions/resume") {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth.is_none() || m.st().http_token.as_deref() != auth {
            return Some((StatusCode::UNAUTHORIZED, "{}").into_response());
        }
        // The answer says whether the miner was already in the state asked for.
        return Some(if rest == "actions/pause" {
            let already = s.mode != MinerMode::Mining;
            m.control("pause", Some(MinerMode::Paused), None);
            json_resp(json!(already))
        } else {
            let already = s.mode == MinerMode::Mining;
            m.control("resume", Some(MinerMode::Mining), None);
            json_resp(json!(already))
        });
    }
    if *method != Method::GET {
        return None;
    }
    let mining = s.mode == MinerMode::Mining;
    Some(json_resp(match rest {
        "version" => json!({"major": 1, "minor": 0, "patch": 0}),
        "network" => json!({
            "name": "eth0", "mac_address": m.mac_text(false), "hostname": "Antminer", "protocol": 1,
            "dns_servers": [], "networks": [{"address": m.spec.api_addr.ip().to_string(), "netmask": "255.0.0.0"}],
            "default_gateway": ""
        }),
        "miner/details" => json!({
            "uid": "sim", "miner_identity": {"brand": 1, "model": 7, "name": "Antminer S19 Pro", "miner_model": "Antminer S19 Pro"},
            "platform": 4, "bos_mode": 4,
            "bos_version": {"current": BOS_VERSION, "major": "2022-09-13-0-11012d53-22.08-plus", "bos_plus": true},
            "hostname": "Antminer", "mac_address": m.mac_text(false), "system_uptime": s.uptime_s,
            "system_uptime_s": s.uptime_s, "bosminer_uptime_s": s.uptime_s,
            "sticker_hashrate": gh(nominal_ths), "kernel_version": "4.9.113",
            "control_board_soc_family": 3, "serial_number": null,
            // 2: normal (mining), 3: paused.
            "status": if mining { 2 } else { 3 }
        }),
        "miner/stats" => json!({
            "miner_stats": {
                "nominal_hashrate": gh(nominal_ths),
                "real_hashrate": {"last_5s": gh(ths), "last_15s": gh(ths), "last_30s": gh(ths), "last_1m": gh(ths), "last_5m": gh(ths), "last_15m": gh(ths), "last_30m": gh(ths), "last_1h": gh(ths), "last_24h": gh(ths), "since_restart": gh(ths)},
                "error_hashrate": {"megahash_per_second": 0.0}, "found_blocks": 0, "best_share": 776_342_690
            },
            "pool_stats": {"accepted_shares": 4057, "rejected_shares": 11, "stale_shares": 0, "last_difficulty": 262_144, "best_share": 776_342_690, "generated_work": 17_793_548_288_u64},
            "power_stats": {
                "approximated_consumption": {"watt": int(s.power)},
                "efficiency": {"joule_per_terahash": if ths > 0.01 { s.power / ths } else { 0.0 }}
            }
        }),
        "performance/tuner-state" => json!({
            "overall_tuner_state": 2,
            "mode_state": {"powertargetmodestate": {
                "current_target": {"watt": int(s.target)},
                "profile": {"target": {"watt": int(s.target)}, "estimated_power_consumption": {"watt": int(s.target)}, "measured_hashrate": gh(s.target / m.spec.efficiency_j_th)}
            }}
        }),
        "configuration/miner" => json!({
            "pool_groups": [],
            "tuner": {"enabled": true, "tuner_mode": 1, "power_target": {"watt": int(s.target)}, "hashrate_target": null}
        }),
        "cooling/state" => json!({
            "fans": BOS_FANS_RPM.iter().enumerate().map(|(i, rpm)| json!({"position": i, "rpm": rpm, "target_speed_ratio": 1.0})).collect::<Vec<_>>(),
            "highest_temperature": {"id": null, "location": 1, "temperature": {"degree_c": BOS_CHIP_C[1]}}
        }),
        "miner/hw/hashboards" => json!({
            "hashboards": (0..3).map(|i| json!({
                // Numbered from 1 as in the capture (the cgminer API's IDs are 6..8).
                "id": format!("{}", i + 1), "enabled": true, "board_name": "BHB42601", "model": "BHB42601",
                "chip_type": "BM1398", "chips_count": CHIPS,
                "board_temp": {"degree_c": BOS_BOARD_C[i]},
                "highest_chip_temp": {"id": 1, "location": 1, "temperature": {"degree_c": BOS_CHIP_C[i]}},
                "current_frequency": {"hertz": 650.0e6}, "current_voltage": {"volt": 13.4},
                "stats": {"nominal_hashrate": gh(nominal_ths / 3.0), "real_hashrate": {"last_5s": gh(ths / 3.0)}}
            })).collect::<Vec<_>>()
        }),
        "pools" => json!([{
            "name": "Default", "strategy": {"quota": {"value": 1}},
            "pools": [{"uid": "p0", "url": "stratum+tcp://btc.example.pool:3333", "user": "sim.worker", "enabled": true, "alive": true, "active": true,
                       "stats": {"accepted_shares": 4057, "rejected_shares": 11, "stale_shares": 0, "last_difficulty": 262_144, "best_share": 776_342_690, "generated_work": 17_793_548_288_u64}}]
        }]),
        "actions/locate" => json!(false),
        _ => return None,
    }))
}
