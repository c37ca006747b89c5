//! The simulated Whatsminer (btminer API v2): the twin of
//! `rackwarden_protocols::miner::firmware::whatsminer`.

use rackwarden_protocols::miner::telemetry::MinerMode;
use rackwarden_protocols::miner::wmcrypto::TokenKeys;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{now_epoch, status, SimMiner};

fn wm_flat(letter: &str, code: i64, msg: Value) -> Value {
    json!({"STATUS": letter, "When": now_epoch(), "Code": code, "Msg": msg, "Description": ""})
}

/// The btminer API's answer to one request: reads in the clear (joined ones too) and
/// encrypted writes.
pub(super) fn answer(m: &SimMiner, v: &Value) -> Vec<u8> {
    let cmd = v
        .get("cmd")
        .or_else(|| v.get("command"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if v.get("enc").is_some() {
        return write(m, v).to_string().into_bytes();
    }
    // Joined reads (`summary+devs`, as pyasic sends them): cgminer's form, each reply
    // under its command's name (btminer's trailing `,}` repaired inside).
    if cmd.contains('+') {
        let parts: Vec<String> = cmd
            .split('+')
            .map(|c| {
                let one = answer(m, &json!({"cmd": c}));
                let one = String::from_utf8_lossy(&one).replace(",}", "}");
                format!("\"{c}\":[{one}]")
            })
            .collect();
        return format!("{{{},\"id\":1}}", parts.join(",")).into_bytes();
    }
    let now = Instant::now();
    let (power, hr, mode, target, elapsed) = {
        let st = m.st();
        (
            st.ramp.at(now),
            m.hashrate_ths(&st, now),
            st.mode,
            st.target_w,
            now.saturating_duration_since(st.booted).as_secs() + 25_000,
        )
    };
    let body = match cmd {
        "summary" => {
            let s = json!({
                "Elapsed": elapsed, "MHS av": hr * 1.0e6, "MHS 5s": hr * 1.0e6, "MHS 1m": hr * 1.0e6,
                "MHS 5m": hr * 1.0e6, "MHS 15m": hr * 1.0e6, "HS RT": hr * 1.0e6, "Power": power.round(),
                "Factory GHS": (m.spec.nominal_w / m.spec.efficiency_j_th * 1000.0).round(), "Chip Temp Min": 62.0,
                "Power Limit": target.round(), "Chip Temp Max": 81.0, "Chip Temp Avg": 72.5,
                "Fan Speed In": 5400, "Fan Speed Out": 5280, "Env Temp": 28.5, "Power Mode": "Normal",
                "Uptime": elapsed, "MAC": m.mac_text(true)
            });
            // btminer v1/v2 sends a trailing comma before the closing brace.
            let mut text = json!({"STATUS": status("S", 11, "Summary", "cgminer 4.9.2"), "SUMMARY": [s], "id": 1}).to_string();
            if text.ends_with('}') {
                text.pop();
                text.push_str(",}");
            }
            return text.into_bytes();
        }
        // btminer's `devs` (code 9): one entry per hashboard, as whatsminer-apiv2_devs.json.
        "devs" => {
            let boards: Vec<Value> = (0..3)
                .map(|i| json!({
                    "ASC": i, "Name": "SM", "ID": i, "Slot": i, "Enabled": "Y", "Status": "Alive",
                    "Temperature": 65.0, "Chip Frequency": 600, "Frequency": 600.0,
                    "Fan Speed In": 5400, "Fan Speed Out": 5280, "MHS av": hr * 1.0e6 / 3.0,
                    "Accepted": 1804, "Rejected": 0, "Device Elapsed": elapsed,
                    "Factory GHS": (m.spec.nominal_w / m.spec.efficiency_j_th * 1000.0 / 3.0).round(),
                    "Chip Temp Min": 62.0, "Chip Temp Max": 81.0, "Chip Temp Avg": 72.5,
                    "Effective Chips": 135, "PCB SN": format!("BHM5CSD13028SIM{i:04}")
                }))
                .collect();
            return json!({"STATUS": status("S", 9, "3 ASC(s)", "cgminer 4.9.2"), "DEVS": boards, "id": 1})
                .to_string()
                .into_bytes();
        }
        // cgminer's `devdetails` (code 69) with btminer's driver name and model code,
        // the fields pyasic reads to name a Whatsminer (`DEVDETAILS[0].Model`).
        "devdetails" => {
            let boards: Vec<Value> = (0..3)
                .map(|i| json!({"DEVDETAILS": i, "Name": "SM", "ID": i, "Driver": "bitmicro", "Kernel": "", "Model": "M30S+VE40"}))
                .collect();
            return json!({"STATUS": status("S", 69, "Device Details", "cgminer 4.9.2"), "DEVDETAILS": boards, "id": 1})
                .to_string()
                .into_bytes();
        }
        "status" => wm_flat(
            "S",
            131,
            json!({"mineroff": if mode == MinerMode::Mining { "false" } else { "true" }, "power_limit_set": format!("{target:.0}"), "FirmwareVersion": "20240624.18.REL", "power_mode": "normal"}),
        ),
        "get_version" => wm_flat(
            "S",
            131,
            json!({"api_ver": "2.0.5", "fw_ver": "20230803.11.REL", "platform": "H616"}),
        ),
        "get_token" => {
            let mut st = m.st();
            st.counter += 1;
            let salt = format!("s{:07x}", st.counter.wrapping_mul(40_503) & 0x0fff_ffff);
            let newsalt = format!("n{:07x}", st.counter.wrapping_mul(69_069) & 0x0fff_ffff);
            let time = format!("{}", 1000 + st.counter);
            st.wm_token = Some((salt.clone(), newsalt.clone(), time.clone()));
            wm_flat(
                "S",
                134,
                json!({"time": time, "salt": salt, "newsalt": newsalt}),
            )
        }
        _ => wm_flat("E", 14, json!("invalid cmd")),
    };
    body.to_string().into_bytes()
}

fn write(m: &SimMiner, v: &Value) -> Value {
    let Some((salt, newsalt, time)) = m.st().wm_token.clone() else {
        return wm_flat("E", 135, json!("check token err"));
    };
    let Ok(keys) = TokenKeys::derive(&m.spec.password, &salt, &newsalt, &time) else {
        return wm_flat("E", 135, json!("check token err"));
    };
    let data = v.get("data").and_then(Value::as_str).unwrap_or("");
    let Ok(inner) = keys.open(data) else {
        return wm_flat("E", 135, json!("check token err"));
    };
    if inner.get("token").and_then(Value::as_str) != Some(keys.sign.as_str()) {
        return wm_flat("E", 136, json!("token has expired"));
    }
    let cmd = inner.get("cmd").and_then(Value::as_str).unwrap_or("");
    let reply = match cmd {
        "power_off" => {
            m.control("power_off", Some(MinerMode::Sleeping), None);
            wm_flat("S", 131, json!("API command OK"))
        }
        "power_on" => {
            m.control("power_on", Some(MinerMode::Mining), None);
            wm_flat("S", 131, json!("API command OK"))
        }
        "adjust_power_limit" => match inner
            .get("power_limit")
            .and_then(rackwarden_protocols::miner::reply::num)
        {
            Some(w) => {
                m.control(&format!("adjust_power_limit {w:.0}"), None, Some(w));
                wm_flat("S", 131, json!("API command OK"))
            }
            None => wm_flat("E", 14, json!("invalid power_limit")),
        },
        _ => wm_flat("E", 14, json!("invalid cmd")),
    };
    json!({ "enc": keys.seal(reply.to_string().as_bytes()) })
}
