//! The simulator's web APIs beyond the levers rackwarden's drivers pull (each firmware's
//! routes in its module, `web`/`web_get`; here what they share and the dispatch): what the
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
use serde_json::Value;
use tokio::time::Instant;

use super::{MinerMode, SimMiner};

/// Seconds added to the time since start in uptime fields (cgminer API and web alike).
pub(super) const UPTIME_OFFSET_S: u64 = 50_000;
/// The stock bmminer build the simulated Antminer and Vnish report (`version`, `stats`).
pub(super) const BM_COMPILE_TIME: &str = "Tue Dec  6 16:12:30 CST 2022";
/// Braiins OS release the REST API and GraphQL report (asic-rs picks its 25.07 backend).
pub(super) const BOS_VERSION: &str = "2025-07-23-0-8ee71e3e-25.07-plus";
/// Vnish release (as `Type` in `version`/`stats`: "Antminer S19 Pro (Vnish 1.2.5)").
pub(super) const VNISH_VERSION: &str = "1.2.5";
/// Chips per hashboard of an S19 Pro.
pub(super) const CHIPS: u32 = 114;

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
pub(super) fn int(x: f64) -> i64 {
    x.round() as i64
}

pub(super) fn json_resp(v: Value) -> Response {
    axum::Json(v).into_response()
}

pub(super) fn html(body: &str) -> Response {
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
        Firmware::AntminerStock => super::antminer_stock::web(m, get, path, headers),
        Firmware::Vnish if get => super::vnish::web_get(m, path),
        Firmware::Braiins => super::braiins::web(m, method, path, headers, body),
        _ => None,
    }
}
