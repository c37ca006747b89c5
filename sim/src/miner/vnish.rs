//! The simulated Vnish: the twin of
//! `rackwarden_protocols::miner::firmware::vnish`.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rackwarden_config::Firmware;
use rackwarden_protocols::miner::telemetry::MinerMode;
use serde_json::{json, Value};

use super::web::{bm_thermals, html, int, json_resp, BM_COMPILE_TIME, VNISH_VERSION};
use super::{not_found, SimMiner};

/// Vnish's levers over HTTP (what rackwarden's driver calls; the rest of its web
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
        (Firmware::Vnish, "GET", "/api/v1/summary") => axum::Json(vnish_summary(m)).into_response(),
        (Firmware::Vnish, "GET", "/api/v1/autotune/presets") => {
            let steps = 6;
            let span = m.spec.nominal_w - m.spec.min_w;
            let list: Vec<Value> = (0..=steps)
                .map(|i| {
                    let w = (m.spec.min_w + span * f64::from(i) / f64::from(steps)).round();
                    json!({"name": format!("{w:.0}"), "pretty": format!("{w:.0} watt ~ {:.0} TH", w / m.spec.efficiency_j_th), "status": "tuned", "modded_psu_required": false})
                })
                .collect();
            axum::Json(json!(list)).into_response()
        }
        (Firmware::Vnish, "POST", "/api/v1/unlock") => {
            if body.get("pw").and_then(Value::as_str) != Some(m.spec.password.as_str()) {
                return bad(StatusCode::FORBIDDEN);
            }
            let mut st = m.st();
            st.counter += 1;
            let t = format!("tok{:x}", st.counter.wrapping_mul(2_654_435_761));
            st.http_token = Some(t.clone());
            axum::Json(json!({"token": t})).into_response()
        }
        (Firmware::Vnish, "POST", p) if p.starts_with("/api/v1/") => {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let ok = m.st().http_token.as_deref().map(|t| format!("Bearer {t}"))
                == Some(auth.to_owned());
            if !ok {
                return bad(StatusCode::UNAUTHORIZED);
            }
            match p {
                "/api/v1/mining/pause" => m.control("pause", Some(MinerMode::Paused), None),
                "/api/v1/mining/resume" => m.control("resume", Some(MinerMode::Mining), None),
                // asic-rs's pause/resume and pyasic's stop_mining: the cgminer process
                // stops and starts (the same power and `stopped` state as a pause here).
                "/api/v1/mining/stop" => m.control("stop", Some(MinerMode::Sleeping), None),
                "/api/v1/mining/start" => m.control("start", Some(MinerMode::Mining), None),
                "/api/v1/settings" => {
                    let Some(w) = body
                        .pointer("/miner/overclock/preset")
                        .and_then(rackwarden_protocols::miner::reply::num)
                    else {
                        return bad(StatusCode::BAD_REQUEST);
                    };
                    m.control(&format!("preset {w:.0}"), None, Some(w));
                }
                _ => return bad(StatusCode::NOT_FOUND),
            }
            axum::Json(json!({})).into_response()
        }
        _ => not_found(),
    }
}

// ------------------------------------------------------------------ web API (super::web)

/// `GET /api/v1/summary` as Vnish 1.2.6's API document defines it (`AntmMinerStats`):
/// `power_consumption` in watts (`power_usage` is deprecated and equals the efficiency in
/// J/TH), `hr_realtime`/`hr_average` in GH/s (`hr_measure`), the deprecated
/// `instant_hashrate`/`average_hashrate` in MH/s, `miner_state` from the document's enum
/// (it has no `paused`: a paused or stopped miner reads `stopped`).
fn vnish_summary(m: &SimMiner) -> Value {
    let s = m.snap();
    let th = bm_thermals(s.mode);
    let ghs = (s.hr_ths * 1000.0 * 100.0).round() / 100.0;
    let stock_ghs = (m.spec.nominal_w / m.spec.efficiency_j_th * 1000.0).round();
    let state = if s.mode == MinerMode::Mining {
        "mining"
    } else {
        "stopped"
    };
    let watts = int(s.power);
    let eff = if s.hr_ths > 0.01 {
        ((s.power / s.hr_ths) * 10.0).round() / 10.0
    } else {
        0.0
    };
    let chains: Vec<Value> = (0..3)
        .map(|i| {
            json!({
                "id": i + 1, "frequency": 650.0, "voltage": 13400, "power_consumption": int(s.power / 3.0),
                "hashrate_ideal": stock_ghs / 3.0, "hashrate_rt": (ghs / 3.0 * 100.0).round() / 100.0,
                "hashrate_percentage": 100.0, "hr_error": 0.0, "hw_errors": 62,
                "pcb_temp": {"min": th.pcb[i] - 2, "max": th.pcb[i]},
                "chip_temp": {"min": th.chip[i] - 4, "max": th.chip[i]},
                "chip_statuses": {"red": 0, "orange": 0, "grey": 0},
                "status": {"state": if s.mode == MinerMode::Mining { "mining" } else { "stopped" }}
            })
        })
        .collect();
    let fans: Vec<Value> = th
        .fans
        .iter()
        .enumerate()
        .map(|(i, rpm)| json!({"id": i, "rpm": rpm, "status": "ok", "max_rpm": 6600}))
        .collect();
    json!({"miner": {
        "miner_type": format!("Antminer S19 Pro (Vnish {VNISH_VERSION})"),
        "miner_status": {"miner_state": state, "miner_state_time": 120},
        "hr_stock": stock_ghs, "hr_nominal": stock_ghs,
        "hr_realtime": ghs, "hr_average": ghs, "hr_error": 0.0,
        "instant_hashrate": ghs * 1000.0, "average_hashrate": ghs * 1000.0,
        "power_consumption": watts, "power_efficiency": eff, "power_usage": int(eff),
        "pcb_temp": {"min": th.pcb[2], "max": th.pcb[0]},
        "chip_temp": {"min": th.chip[2], "max": th.chip[0]},
        "hw_errors_percent": 0.01, "hw_errors": 187, "devfee_percent": 2.8, "devfee": 0.0,
        "pools": [{
            "id": 0, "url": "stratum+tcp://btc.example.pool:3333", "pool_type": "UserPool",
            "user": "sim.worker", "status": "active", "asic_boost": true, "diff": "65.5K",
            "accepted": 4057, "rejected": 11, "stale": 0, "ls_diff": 65536.0, "ls_time": "0:00:07",
            "diffa": 265_863_168.0, "ping": 42
        }],
        "cooling": {"fan_num": 4, "fans": fans, "settings": {"mode": {"name": "auto"}}, "fan_duty": 100},
        "chains": chains, "found_blocks": 0, "best_share": 12_904_207_043_u64
    }})
}

/// Vnish's REST reads and web root, as the independent clients read them.
pub(super) fn web_get(m: &SimMiner, path: &str) -> Option<Response> {
    let s = m.snap();
    Some(match path {
        // The web UI's page, by the name pyasic and asic-rs recognise.
        "/" => html("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>AnthillOS</title></head><body><div id=\"app\"></div></body></html>"),
        "/api/v1/info" => json_resp(json!({
            "miner": "Antminer S19 Pro", "model": "s19pro", "fw_name": "Vnish",
            "fw_version": VNISH_VERSION, "build_name": "", "build_time": "2024-05-20 10:00:00",
            "build_uuid": "00000000-0000-0000-0000-000000000000", "platform": "xil",
            "install_type": "nand", "algorithm": "sha256d", "hr_measure": "GH/s", "serial": "",
            "system": {
                "os": "GNU/Linux", "miner_name": "Antminer S19 Pro",
                "file_system_version": BM_COMPILE_TIME,
                "mem_total": 233_012, "mem_free": 120_000, "mem_free_percent": 51,
                "mem_buf": 8_000, "mem_buf_percent": 3,
                "network_status": {
                    "mac": m.mac_text(true), "dhcp": true, "ip": m.spec.api_addr.ip().to_string(),
                    "netmask": "255.0.0.0", "gateway": "", "dns": [], "hostname": "Antminer"
                },
                "uptime": format!("{} min", s.uptime_s / 60)
            }
        })),
        "/api/v1/status" => json_resp(json!({
            "miner_state": if s.mode == MinerMode::Mining { "mining" } else { "stopped" },
            "miner_state_time": 120, "restart_required": false, "reboot_required": false,
            "find_miner": false, "unlocked": false
        })),
        // The active preset (`PerfSummary` of the API document), as `/autotune/presets`
        // lists it.
        "/api/v1/perf-summary" => json_resp(json!({
            "current_preset": {
                "name": format!("{:.0}", s.target),
                "pretty": format!("{:.0} watt ~ {:.0} TH", s.target, s.target / m.spec.efficiency_j_th),
                "status": "tuned", "modded_psu_required": false
            },
            "preset_switcher": {"enabled": false, "top_preset": null, "min_preset": null}
        })),
        // The active profile is the power preset's name (watts), as `/autotune/presets`.
        "/api/v1/settings" => json_resp(json!({
            "miner": {
                "overclock": {"preset": format!("{:.0}", s.target), "modded_psu": false, "globals": {"volt": 1340, "freq": 650}},
                "pools": [{"url": "stratum+tcp://btc.example.pool:3333", "user": "sim.worker", "pass": "x"}],
                "cooling": {"mode": {"name": "auto"}}
            },
            "ui": {"theme": "dark"}, "regional": {"timezone": {"current": "UTC"}}, "network": {"hostname": "Antminer", "dhcp": true}
        })),
        _ => return None,
    })
}
