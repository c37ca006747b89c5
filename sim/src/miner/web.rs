//! The simulator's web APIs beyond the levers rackwarden's drivers pull: what the
//! independent clients (pyasic, asic-rs; hil-tests/tests/conformance.rs) read to identify
//! and poll a miner and to curtail it. Shapes follow the public captures and vendor API
//! documents (docs/miners.md, "Conformance"): stock Antminer's CGI set (digest auth),
//! Vnish 1.2.x's REST API (its published OpenAPI document, 1.2.6), Braiins OS 25.07's REST
//! API (its OpenAPI document and asic-rs's captures) plus the two GraphQL queries asic-rs
//! identifies a Braiins miner with, and each firmware's web root.
//!
//! Every API of one miner reports the same figures (hashrate, power, fans, temperatures,
//! mode) as its cgminer API, so a client reading either sees the same miner.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rackwarden_config::Firmware;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{digest_ok, now_epoch, MinerMode, SimMiner};

/// Seconds added to the time since start in uptime fields (cgminer API and web alike).
const UPTIME_OFFSET_S: u64 = 50_000;
/// The stock bmminer build the simulated Antminer and Vnish report (`version`, `stats`).
const BM_COMPILE_TIME: &str = "Tue Dec  6 16:12:30 CST 2022";
/// Braiins OS release the REST API and GraphQL report (asic-rs picks its 25.07 backend).
const BOS_VERSION: &str = "2025-07-23-0-8ee71e3e-25.07-plus";
/// Vnish release (as `Type` in `version`/`stats`: "Antminer S19 Pro (Vnish 1.2.5)").
const VNISH_VERSION: &str = "1.2.5";
/// Chips per hashboard of an S19 Pro.
const CHIPS: u32 = 114;

/// One consistent reading of a simulated miner.
pub(super) struct Snap {
    pub power: f64,
    pub hr_ths: f64,
    pub mode: MinerMode,
    pub target: f64,
    pub uptime_s: u64,
}

impl SimMiner {
    pub(super) fn snap(&self) -> Snap {
        let now = Instant::now();
        let st = self.st();
        Snap {
            power: st.ramp.at(now),
            hr_ths: self.hashrate_ths(&st, now),
            mode: st.mode,
            target: st.target_w,
            uptime_s: now.saturating_duration_since(st.booted).as_secs() + UPTIME_OFFSET_S,
        }
    }
}

/// bmminer-family thermals as the cgminer `stats` reply gives them (stock Antminer, Vnish,
/// LuxOS): four fans, and per board (3) a PCB and a chip temperature.
pub(super) struct BmThermals {
    pub fans: [i64; 4],
    pub pcb: [i64; 3],
    pub chip: [i64; 3],
}

pub(super) fn bm_thermals(mode: MinerMode) -> BmThermals {
    let (fan, t) = if mode == MinerMode::Mining {
        (6000, 73)
    } else {
        (1200, 35)
    };
    BmThermals {
        fans: [fan, fan, fan - 120, fan - 120],
        pcb: [t, t - 2, t - 4],
        chip: [t + 5, t + 3, t + 1],
    }
}

/// Braiins OS's per-board temperatures and fans (as its cgminer `temps` and `fans`).
pub(super) const BOS_BOARD_C: [f64; 3] = [81.875, 85.875, 84.4375];
pub(super) const BOS_CHIP_C: [f64; 3] = [104.625, 108.9375, 105.4375];
pub(super) const BOS_FANS_RPM: [i64; 2] = [5340, 4620];

/// A whole number, for the fields the vendors document as integers (`3250`, not `3250.0`:
/// asic-rs reads them as integers).
#[allow(clippy::cast_possible_truncation)] // rounded watts, far inside i64
fn int(x: f64) -> i64 {
    x.round() as i64
}

fn json_resp(v: Value) -> Response {
    axum::Json(v).into_response()
}

fn html(body: &str) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/html; charset=utf-8")],
        body.to_owned(),
    )
        .into_response()
}

/// The answer to a request the simulator's web APIs know beyond the drivers' levers, or
/// `None` (the caller's own routes, then 404).
pub(super) async fn answer(
    m: &Arc<SimMiner>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Option<Response> {
    let fw = m.spec.firmware;
    let get = method == Method::GET;
    match fw {
        Firmware::AntminerStock => antminer(m, get, path, headers),
        Firmware::Vnish if get => vnish_get(m, path),
        Firmware::Braiins => braiins(m, method, path, headers, body),
        _ => None,
    }
}

// ------------------------------------------------------------------ stock Antminer

/// The digest challenge the stock web server sends (pyasic and asic-rs identify a stock
/// Antminer by its realm).
pub(super) fn digest_challenge() -> Response {
    let nonce = format!("{:016x}", now_epoch().wrapping_mul(0x9E37_79B9));
    (
        StatusCode::UNAUTHORIZED,
        [(
            "www-authenticate",
            format!("Digest realm=\"antMiner Configuration\", nonce=\"{nonce}\", qop=\"auth\""),
        )],
        "",
    )
        .into_response()
}

fn antminer(m: &SimMiner, get: bool, path: &str, headers: &HeaderMap) -> Option<Response> {
    let known = matches!(
        path,
        "/" | "/cgi-bin/get_system_info.cgi"
            | "/cgi-bin/summary.cgi"
            | "/cgi-bin/stats.cgi"
            | "/cgi-bin/get_blink_status.cgi"
    );
    if !known || !get {
        return None;
    }
    // The whole web interface sits behind digest auth.
    if !digest_ok(m, headers, "GET") {
        return Some(digest_challenge());
    }
    let s = m.snap();
    let ghs = (s.hr_ths * 1000.0 * 100.0).round() / 100.0;
    let ideal = (m.spec.nominal_w / m.spec.efficiency_j_th * 1000.0).round();
    let info = json!({"miner_version": "49.0.1.3", "CompileTime": BM_COMPILE_TIME, "type": "Antminer S19 Pro"});
    let status =
        |msg: &str| json!({"STATUS": "S", "when": now_epoch(), "Msg": msg, "api_version": "1.0.0"});
    Some(match path {
        "/" => {
            html("<!DOCTYPE html><html><head><title>Antminer</title></head><body></body></html>")
        }
        "/cgi-bin/get_system_info.cgi" => json_resp(json!({
            "minertype": "Antminer S19 Pro", "nettype": "DHCP", "netdevice": "eth0",
            "macaddr": m.mac_text(true), "hostname": "Antminer", "ipaddress": m.spec.api_addr.ip().to_string(),
            "netmask": "255.0.0.0", "gateway": "", "dnsservers": "", "system_mode": "GNU/Linux",
            "system_kernel_version": "Linux 4.9.38 #1 SMP PREEMPT Tue Dec 6 16:05:06 CST 2022",
            "system_filesystem_version": BM_COMPILE_TIME, "firmware_type": "Release"
        })),
        "/cgi-bin/summary.cgi" => json_resp(json!({
            "STATUS": status("summary"), "INFO": info,
            "SUMMARY": [{
                "elapsed": s.uptime_s, "rate_5s": ghs, "rate_30m": ghs, "rate_avg": ghs,
                "rate_ideal": ideal, "rate_unit": "GH/s", "hw_all": 562, "bestshare": 12_904_207_043_u64,
                "status": [
                    {"type": "rate", "status": "s", "code": 0, "msg": ""},
                    {"type": "network", "status": "s", "code": 0, "msg": ""},
                    {"type": "fans", "status": "s", "code": 0, "msg": ""},
                    {"type": "temp", "status": "s", "code": 0, "msg": ""}
                ]
            }]
        })),
        "/cgi-bin/stats.cgi" => {
            let th = bm_thermals(s.mode);
            let chains: Vec<Value> = (0..3)
                .map(|i| {
                    let (p, c) = (th.pcb[i], th.chip[i]);
                    json!({
                        "index": i, "freq_avg": 650, "rate_ideal": ideal / 3.0,
                        "rate_real": (ghs / 3.0 * 100.0).round() / 100.0, "asic_num": CHIPS,
                        "temp_pic": [p - 10, p - 10, p - 8, p - 8], "temp_pcb": [p, p, p, p],
                        "temp_chip": [c, c, c, c], "hw": 187, "eeprom_loaded": true,
                        "sn": format!("SIMBHB{i}"), "hwp": 0.0001
                    })
                })
                .collect();
            let mode = if s.mode == MinerMode::Mining { 0 } else { 1 };
            json_resp(json!({
                "STATUS": status("stats"), "INFO": info,
                "STATS": [{
                    "elapsed": s.uptime_s, "rate_5s": ghs, "rate_30m": ghs, "rate_avg": ghs,
                    "rate_ideal": ideal, "rate_unit": "GH/s", "chain_num": 3, "fan_num": 4,
                    "fan": th.fans, "hwp_total": 0.0001, "miner-mode": mode, "freq-level": 100,
                    "chain": chains
                }]
            }))
        }
        _ => json_resp(json!({"blink": false})),
    })
}

// ------------------------------------------------------------------ Vnish

/// `GET /api/v1/summary` as Vnish 1.2.6's API document defines it (`AntmMinerStats`):
/// `power_consumption` in watts (`power_usage` is deprecated and equals the efficiency in
/// J/TH), `hr_realtime`/`hr_average` in GH/s (`hr_measure`), the deprecated
/// `instant_hashrate`/`average_hashrate` in MH/s, `miner_state` from the document's enum
/// (it has no `paused`: a paused or stopped miner reads `stopped`).
pub(super) fn vnish_summary(m: &SimMiner) -> Value {
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

fn vnish_get(m: &SimMiner, path: &str) -> Option<Response> {
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

// ------------------------------------------------------------------ Braiins OS

fn braiins(
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
