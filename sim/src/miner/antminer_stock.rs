//! The simulated stock Bitmain Antminer: the twin of
//! `rackwarden_protocols::miner::firmware::antminer_stock`.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rackwarden_config::Firmware;
use rackwarden_protocols::miner::telemetry::MinerMode;
use serde_json::{json, Value};

use super::web::{bm_thermals, html, json_resp, BM_COMPILE_TIME, CHIPS};
use super::{digest_ok, not_found, now_epoch, SimMiner};

/// Stock Bitmain Antminer's levers over HTTP (what rackwarden's driver calls; the rest of its web
/// API is in `super::web`).
pub(super) async fn http(
    m: &Arc<SimMiner>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Response {
    match (m.spec.firmware, method.as_str(), path) {
        (
            Firmware::AntminerStock,
            _,
            "/cgi-bin/get_miner_conf.cgi" | "/cgi-bin/set_miner_conf.cgi",
        ) => {
            if !digest_ok(m, headers, method.as_str()) {
                let nonce = format!("{:016x}", now_epoch().wrapping_mul(0x9E37_79B9));
                return (
                    StatusCode::UNAUTHORIZED,
                    [("www-authenticate", format!("Digest realm=\"antMiner Configuration\", nonce=\"{nonce}\", qop=\"auth\""))],
                    "",
                )
                    .into_response();
            }
            if path.ends_with("get_miner_conf.cgi") {
                // The stock firmware reads the mode back as `bitmain-work-mode` (a
                // string) and takes it as `miner-mode` in set_miner_conf.cgi; pyasic reads
                // the first, asic-rs writes both.
                let mode = if m.mode() == MinerMode::Mining {
                    "0"
                } else {
                    "1"
                };
                return axum::Json(json!({
                    "pools": [{"url": "stratum+tcp://btc.example.pool:3333", "user": "sim.worker", "pass": "x"}],
                    "api-listen": true, "api-network": true, "bitmain-fan-ctrl": false, "bitmain-fan-pwm": "100",
                    "bitmain-work-mode": mode, "bitmain-freq-level": "100"
                }))
                .into_response();
            }
            let Some(mode) = body
                .get("miner-mode")
                .and_then(rackwarden_protocols::miner::reply::num)
            else {
                return axum::Json(json!({"stats": "error", "code": "M001", "msg": "bad conf"}))
                    .into_response();
            };
            // The stock CGI answers a mode change after it has applied it (~20 s).
            m.pause(m.scaled(20.0)).await;
            if mode >= 1.0 {
                m.control("miner-mode 1", Some(MinerMode::Sleeping), None);
            } else {
                m.control("miner-mode 0", Some(MinerMode::Mining), None);
            }
            axum::Json(json!({"stats": "success", "code": "M000", "msg": "OK!"})).into_response()
        }
        _ => not_found(),
    }
}

// ------------------------------------------------------------------ web API (super::web)

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

/// The stock web server's CGI set and web root, as the independent clients read them.
pub(super) fn web(m: &SimMiner, get: bool, path: &str, headers: &HeaderMap) -> Option<Response> {
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
