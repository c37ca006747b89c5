//! One miner reading ([`MinerTelemetry`]) and the pure functions that fill it from the
//! replies of each firmware (cgminer sections, Whatsminer's flat objects, Avalon's
//! bracketed `estats` strings). No I/O: the parser tests run these over the fixtures.

use rackwarden_config::Firmware;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::reply::{field, text, Reply};

/// What the miner is doing, as far as its API says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MinerMode {
    Mining,
    /// Hashboards off, control board up (LuxOS curtail sleep, Whatsminer power_off,
    /// Antminer sleep, Avalon softoff).
    Sleeping,
    /// Hashing paused (Braiins pause, Vnish pause).
    Paused,
    Unknown,
}

/// One successful poll of one miner.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerTelemetry {
    pub miner_id: String,
    pub firmware: Firmware,
    pub hashrate_ths: Option<f64>,
    /// Input power; see `power_estimated`.
    pub power_w: Option<f64>,
    /// `power_w` is hashrate x J/TH (or the idle draw while not mining), not a reading.
    pub power_estimated: bool,
    /// The power limit/target the firmware is holding, where it has one.
    pub power_target_w: Option<f64>,
    pub mode: MinerMode,
    pub board_temps_c: Vec<f64>,
    pub chip_temps_c: Vec<f64>,
    pub fans_rpm: Vec<f64>,
    pub uptime_s: Option<u64>,
    pub firmware_version: Option<String>,
    pub model: Option<String>,
    /// When the last reply of this poll arrived.
    pub taken_at: Instant,
}

impl MinerTelemetry {
    pub fn empty(miner_id: &str, firmware: Firmware) -> Self {
        Self {
            miner_id: miner_id.to_owned(),
            firmware,
            hashrate_ths: None,
            power_w: None,
            power_estimated: false,
            power_target_w: None,
            mode: MinerMode::Unknown,
            board_temps_c: Vec::new(),
            chip_temps_c: Vec::new(),
            fans_rpm: Vec::new(),
            uptime_s: None,
            firmware_version: None,
            model: None,
            taken_at: Instant::now(),
        }
    }

    /// Fill in power from hashrate when the firmware reports none: hashrate x J/TH
    /// while mining, the configured idle draw otherwise.
    pub fn estimate_power(&mut self, efficiency_j_th: f64, idle_w: f64) {
        if self.power_w.is_some() {
            return;
        }
        let p = match (self.mode, self.hashrate_ths) {
            (MinerMode::Sleeping | MinerMode::Paused, _) => idle_w,
            (_, Some(ths)) => (ths * efficiency_j_th).max(idle_w),
            (_, None) => return,
        };
        self.power_w = Some(p);
        self.power_estimated = true;
    }

    /// Mode from hashrate, for firmwares with no explicit state: zero hashrate means
    /// the lever's state (`idle`), any hashrate means mining.
    pub fn mode_from_hashrate(&mut self, idle: MinerMode) {
        if self.mode == MinerMode::Unknown {
            if let Some(h) = self.hashrate_ths {
                self.mode = if h > 0.0 { MinerMode::Mining } else { idle };
            }
        }
    }
}

fn secs(v: f64) -> Option<u64> {
    // Elapsed seconds are non-negative integers well inside u64; the guard makes the
    // cast exact.
    if v.is_finite() && (0.0..1.0e15).contains(&v) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(v.round() as u64)
    } else {
        None
    }
}

/// `SUMMARY`: hashrate (GHS/MHS, or Whatsminer's `HS RT` in MH/s) and uptime.
pub fn apply_summary(t: &mut MinerTelemetry, r: &Reply) {
    let Ok(s) = r.first("SUMMARY") else { return };
    t.hashrate_ths = hashrate_ths(s).or(t.hashrate_ths);
    if let Some(e) = field(s, &["Elapsed"]).and_then(secs) {
        t.uptime_s = Some(e);
    }
    // Whatsminer's summary carries power and limit and temperatures directly.
    if let Some(p) = field(s, &["Power"]) {
        t.power_w = Some(p);
        t.power_estimated = false;
    }
    if let Some(p) = field(s, &["Power Limit"]) {
        t.power_target_w = Some(p);
    }
    if let Some(c) = field(s, &["Chip Temp Max"]) {
        t.chip_temps_c.push(c);
    }
    for k in ["Fan Speed In", "Fan Speed Out"] {
        if let Some(f) = field(s, &[k]) {
            t.fans_rpm.push(f);
        }
    }
    if t.firmware_version.is_none() && !r.status.description.is_empty() {
        t.firmware_version = Some(r.status.description.clone());
    }
}

fn hashrate_ths(s: &Map<String, Value>) -> Option<f64> {
    if let Some(g) = field(s, &["GHS 5s", "GHS av"]) {
        return Some(g / 1000.0);
    }
    field(s, &["HS RT", "MHS 5s", "MHS 1m", "MHS av"]).map(|m| m / 1.0e6)
}

/// bmminer-style `stats` (Antminer, LuxOS, Vnish): model, firmware, fans, board and chip
/// temperatures, and hashrate where `summary` is missing.
pub fn apply_stats(t: &mut MinerTelemetry, r: &Reply) {
    for o in r.all("STATS") {
        if let Some(ty) = text(o, &["Type"]) {
            t.model = Some(ty);
        }
        if let Some(v) = text(o, &["Miner", "BMMiner", "CGMiner"]) {
            t.firmware_version.get_or_insert(v);
        }
        if o.contains_key("fan_num") || o.contains_key("fan1") {
            for i in 1..=8 {
                if let Some(f) = field(o, &[&format!("fan{i}")]).filter(|f| *f > 0.0) {
                    t.fans_rpm.push(f);
                }
            }
            for i in 1..=4 {
                if let Some(b) = field(o, &[&format!("temp{i}")]).filter(|f| *f > 0.0) {
                    t.board_temps_c.push(b);
                }
                if let Some(c) = field(o, &[&format!("temp2_{i}")]).filter(|f| *f > 0.0) {
                    t.chip_temps_c.push(c);
                }
            }
            if t.hashrate_ths.is_none() {
                if let Some(g) = field(o, &["GHS 5s", "GHS av"]) {
                    t.hashrate_ths = Some(g / 1000.0);
                }
            }
            if t.uptime_s.is_none() {
                t.uptime_s = field(o, &["Elapsed"]).and_then(secs);
            }
        }
    }
}

/// `version`: model and firmware.
pub fn apply_version(t: &mut MinerTelemetry, r: &Reply) {
    let Ok(v) = r.first("VERSION") else { return };
    if let Some(ty) = text(v, &["Type", "PROD", "Model"]) {
        t.model = Some(ty);
    }
    if let Some(f) = text(
        v,
        &["LUXminer", "Miner", "BMMiner", "BOSminer", "CGMiner", "MM"],
    ) {
        t.firmware_version = Some(f);
    }
}

/// Braiins `tunerstatus`: approximate miner power and the power limit.
pub fn apply_tunerstatus(t: &mut MinerTelemetry, r: &Reply) {
    let Ok(s) = r.first("TUNERSTATUS") else {
        return;
    };
    if let Some(p) = field(s, &["ApproximateMinerPowerConsumption"]) {
        t.power_w = Some(p);
        t.power_estimated = false;
    }
    t.power_target_w = field(s, &["PowerLimit"]).or(t.power_target_w);
}

/// Braiins `temps`.
pub fn apply_temps(t: &mut MinerTelemetry, r: &Reply) {
    for o in r.all("TEMPS") {
        if let Some(b) = field(o, &["Board"]) {
            t.board_temps_c.push(b);
        }
        if let Some(c) = field(o, &["Chip"]) {
            t.chip_temps_c.push(c);
        }
    }
}

/// Braiins `fans`.
pub fn apply_fans(t: &mut MinerTelemetry, r: &Reply) {
    for o in r.all("FANS") {
        if let Some(f) = field(o, &["RPM"]) {
            t.fans_rpm.push(f);
        }
    }
}

/// LuxOS `power`.
pub fn apply_luxos_power(t: &mut MinerTelemetry, r: &Reply) {
    if let Some(w) = r.first("POWER").ok().and_then(|p| field(p, &["Watts"])) {
        t.power_w = Some(w);
        t.power_estimated = false;
    }
}

/// LuxOS `config`: curtail mode and model; returns the active profile name.
pub fn apply_luxos_config(t: &mut MinerTelemetry, r: &Reply) -> Option<String> {
    let c = r.first("CONFIG").ok()?;
    if let Some(m) = text(c, &["CurtailMode"]) {
        t.mode = match m.to_ascii_lowercase().as_str() {
            "none" | "" => MinerMode::Mining,
            "sleep" | "sleeping" => MinerMode::Sleeping,
            _ => MinerMode::Unknown,
        };
    }
    if let Some(model) = text(c, &["Model"]) {
        t.model = Some(model);
    }
    text(c, &["Profile"])
}

/// LuxOS `profiles`: (name, watts) of every preset.
pub fn luxos_profiles(r: &Reply) -> Vec<(String, f64)> {
    r.all("PROFILES")
        .filter_map(|p| Some((text(p, &["Profile Name"])?, field(p, &["Watts"])?)))
        .collect()
}

/// Whatsminer flat `status`: `mineroff` and the power limit set.
pub fn apply_whatsminer_status(t: &mut MinerTelemetry, r: &Reply) {
    let Ok(m) = r.msg_object() else { return };
    if let Some(off) = text(m, &["mineroff"]) {
        t.mode = if off.trim().eq_ignore_ascii_case("true") {
            MinerMode::Sleeping
        } else {
            MinerMode::Mining
        };
    }
    if let Some(p) = field(m, &["power_limit_set"]) {
        t.power_target_w = Some(p);
    }
    if let Some(fw) = text(m, &["FirmwareVersion"]) {
        t.firmware_version = Some(fw);
    }
}

/// Whatsminer flat `get_version`.
pub fn apply_whatsminer_version(t: &mut MinerTelemetry, r: &Reply) {
    if let Some(fw) = r.msg_object().ok().and_then(|m| text(m, &["fw_ver"])) {
        t.firmware_version = Some(fw);
    }
}

/// Vnish REST `/api/v1/summary`; false when the answer has no `miner` object.
pub fn apply_vnish_summary(t: &mut MinerTelemetry, v: &Value) -> bool {
    let Some(m) = v.get("miner").and_then(Value::as_object) else {
        return false;
    };
    let n = |p: &str| v.pointer(p).and_then(super::reply::num);
    // Vnish 1.2.6's API document: `hr_realtime` in GH/s (the `hr_measure` of `/info` on
    // SHA-256 miners); `power_consumption` in watts. `power_usage` is deprecated and "same
    // as power_efficiency" (J/TH): never watts.
    t.hashrate_ths = field(m, &["hr_realtime", "hr_average"])
        .map(|ghs| ghs / 1000.0)
        .or(t.hashrate_ths);
    if let Some(p) = field(m, &["power_consumption"]) {
        t.power_w = Some(p);
        t.power_estimated = false;
    }
    t.power_target_w = field(m, &["power_target"]).or(t.power_target_w);
    if let Some(state) = v
        .pointer("/miner/miner_status/miner_state")
        .and_then(Value::as_str)
    {
        t.mode = match state {
            "mining" | "starting" | "auto-tuning" => MinerMode::Mining,
            "paused" | "stopped" => MinerMode::Paused,
            _ => MinerMode::Unknown,
        };
    }
    if let Some(c) = n("/miner/chip_temp/max") {
        t.chip_temps_c.push(c);
    }
    if let Some(b) = n("/miner/pcb_temp/max") {
        t.board_temps_c.push(b);
    }
    for f in v
        .pointer("/miner/cooling/fans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(rpm) = f.get("rpm").and_then(super::reply::num) {
            t.fans_rpm.push(rpm);
        }
    }
    if let Some(ty) = text(m, &["miner_type"]) {
        t.model = Some(ty);
    }
    t.uptime_s = n("/miner/uptime").and_then(secs).or(t.uptime_s);
    true
}

/// Vnish `/api/v1/settings`: the active power preset (`miner.overclock.preset`, named by
/// its watts as `/api/v1/autotune/presets` lists them), when it is one.
pub fn vnish_preset_w(v: &Value) -> Option<f64> {
    v.pointer("/miner/overclock/preset")
        .and_then(super::reply::num)
        .filter(|w| *w > 0.0)
}

/// Avalon `estats`: the `MM ID0` string of `Key[value]` pairs.
pub fn apply_avalon_estats(t: &mut MinerTelemetry, r: &Reply) {
    let Some(mm) = r
        .all("STATS")
        .find_map(|o| o.get("MM ID0").and_then(Value::as_str))
    else {
        return;
    };
    let kv = avalon_pairs(mm);
    let get = |k: &str| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    // PS[...]: the fifth value is the input watts (as pyasic reads it).
    if let Some(w) = get("PS")
        .and_then(|ps| ps.split_whitespace().nth(4))
        .and_then(|w| w.parse::<f64>().ok())
        .filter(|w| w.is_finite())
    {
        t.power_w = Some(w);
        t.power_estimated = false;
    }
    if let Some(off) = get("SoftOFF") {
        t.mode = if off.trim() == "0" {
            MinerMode::Mining
        } else {
            MinerMode::Sleeping
        };
    }
    if let Some(v) = get("TMax").and_then(|v| v.trim().parse::<f64>().ok()) {
        t.chip_temps_c.push(v);
    }
    if let Some(v) = get("TAvg").and_then(|v| v.trim().parse::<f64>().ok()) {
        t.board_temps_c.push(v);
    }
    for i in 1..=4 {
        if let Some(v) = get(&format!("Fan{i}")).and_then(|v| v.trim().parse::<f64>().ok()) {
            t.fans_rpm.push(v);
        }
    }
    if let Some(e) = get("Elapsed").and_then(|v| v.trim().parse::<f64>().ok()) {
        t.uptime_s = secs(e);
    }
    if let Some(g) = get("GHSspd").and_then(|v| v.trim().parse::<f64>().ok()) {
        t.hashrate_ths.get_or_insert(g / 1000.0);
    }
}

/// Split `Ver[1246] PS[0 1209 2280 54 1240] SoftOFF[0]` into (key, value) pairs.
pub fn avalon_pairs(s: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let key = rest[..open].trim();
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        if !key.is_empty() {
            // A key may be preceded by other text: take its last word.
            let key = key.rsplit(' ').next().unwrap_or(key);
            out.push((key, &after[..close]));
        }
        rest = &after[close + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avalon_pairs_split() {
        let p = avalon_pairs("Ver[1246-83] PS[0 1209 2280 54 1240 2280] SoftOFF[1] Fan1[3000]");
        assert_eq!(p[0], ("Ver", "1246-83"));
        assert_eq!(p[1].0, "PS");
        assert_eq!(p[2], ("SoftOFF", "1"));
        assert_eq!(avalon_pairs("no brackets"), vec![]);
        assert_eq!(avalon_pairs("Unclosed[12"), vec![]);
    }

    #[test]
    fn estimate_marks_estimated() {
        let mut t = MinerTelemetry::empty("m1", Firmware::AntminerStock);
        t.hashrate_ths = Some(100.0);
        t.mode_from_hashrate(MinerMode::Sleeping);
        t.estimate_power(30.0, 20.0);
        assert_eq!(t.mode, MinerMode::Mining);
        assert_eq!(t.power_w, Some(3000.0));
        assert!(t.power_estimated);
        let mut t = MinerTelemetry::empty("m1", Firmware::AntminerStock);
        t.hashrate_ths = Some(0.0);
        t.mode_from_hashrate(MinerMode::Sleeping);
        t.estimate_power(30.0, 20.0);
        assert_eq!(t.mode, MinerMode::Sleeping);
        assert_eq!(t.power_w, Some(20.0));
    }
}
