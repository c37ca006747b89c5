//! Finding miners on a network (`rackwarden scan`): which addresses answer the
//! cgminer-compatible API, which of the six supported firmwares each runs, and what it
//! says about itself (model, MAC, hashrate, the power it is set to draw).
//!
//! Identification asks `version` first, as cgminer forks all answer it, and reads the
//! firmware from what the reply names: `BOSminer` (Braiins), `LUXminer` (LuxOS), `Vnish`
//! (in the model string), `AvalonMiner` (Canaan), `Antminer` with none of those (stock
//! Bitmain); btminer (Whatsminer) answers in its flat envelope and is confirmed by its
//! own `get_version`. When `version` names nothing, `devdetails` and `stats` are asked
//! too. Then the firmware's own commands give model, MAC, hashrate and power, read by
//! the same parsers the drivers use ([`super::telemetry`]). Only reads are sent: no
//! login, no write.
//!
//! Everything is bounded: each request (connect, then reply) by the per-address timeout,
//! an address by [`MAX_REQUESTS`] requests, the scan by its concurrency; an address that
//! answers with something unusable becomes [`Outcome::Unidentified`] with the reason,
//! never an error of the scan.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use ipnet::IpNet;
use rackwarden_config::Firmware;
use serde_json::{json, Map, Value};

use super::client::{ApiClient, ApiError};
use super::reply::{field, text, Reply, ReplyError};
use super::telemetry::{self as tm, MinerTelemetry};
use super::DEFAULT_EFFICIENCY_J_TH;

/// The most requests one address gets (identification and details together).
pub const MAX_REQUESTS: usize = 6;

/// How a scan runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScanOptions {
    /// The API port asked on every address.
    pub port: u16,
    /// Addresses probed at once.
    pub concurrency: usize,
    /// Limit of one request to an address (connect, and reply).
    pub timeout: Duration,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            port: 4028,
            concurrency: 256,
            timeout: Duration::from_millis(1000),
        }
    }
}

/// Why the networks to scan cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TargetError {
    #[error("`{0}` is not a network (CIDR such as 10.0.1.0/24) or an address")]
    Parse(String),
    #[error("{count} addresses to scan, over the cap of {cap}: scan fewer or smaller networks")]
    TooMany { count: u128, cap: u64 },
}

/// The distinct host addresses of `networks` (CIDR, or a bare address), in order.
/// IPv4 networks lose their network and broadcast addresses (not for /31 and /32).
/// More than `cap` addresses is an error, found before any is listed.
pub fn expand(networks: &[String], cap: u64) -> Result<Vec<IpAddr>, TargetError> {
    let mut nets = Vec::with_capacity(networks.len());
    for n in networks {
        let s = n.trim();
        let net = match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match s.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => return Err(TargetError::Parse(n.clone())),
            },
        };
        nets.push(net);
    }
    // Count before listing: an IPv6 /64 must fail here, not fill the memory.
    let mut total: u128 = 0;
    for net in &nets {
        let bits = u32::from(net.max_prefix_len() - net.prefix_len());
        let size = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
        let hosts = match net {
            IpNet::V4(_) if bits >= 2 => size - 2,
            _ => size,
        };
        total = total.saturating_add(hosts);
    }
    if total > u128::from(cap) {
        return Err(TargetError::TooMany { count: total, cap });
    }
    let mut set = BTreeSet::new();
    for net in &nets {
        set.extend(net.hosts());
    }
    Ok(set.into_iter().collect())
}

/// What the power figure of an identified miner is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PowerSource {
    /// The power limit or target the firmware holds.
    Limit,
    /// The watts of the firmware's active power profile (LuxOS).
    Profile,
    /// The miner's own reading of its draw while hashing.
    Measured,
    /// Hashrate (TH/s) x J/TH: the firmware reports no power.
    Estimated { ths: f64, j_th: f64 },
}

/// An address that runs one of the six firmwares, and what it said about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Identified {
    pub firmware: Firmware,
    pub model: Option<String>,
    pub firmware_version: Option<String>,
    /// Lowercase, colon-separated, where the firmware's API gives it.
    pub mac: Option<String>,
    pub hashrate_ths: Option<f64>,
    /// The power it is set to draw at full work (W), and where that figure comes from.
    pub nominal_w: Option<(f64, PowerSource)>,
    /// Detail requests that failed (the identification stands without them).
    pub notes: Vec<String>,
}

/// What one address turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing listens there (connection refused, unreachable, or no answer to connect).
    Silent,
    Miner(Identified),
    /// Something answered but is none of the six firmwares, or its answer is unusable.
    Unidentified {
        reason: String,
    },
    /// The scan could not probe it (a local error, such as too many open files).
    NotProbed {
        reason: String,
    },
}

/// One probed address.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub addr: SocketAddr,
    pub outcome: Outcome,
}

/// Probe every address (at most `concurrency` at once); results in address order.
pub async fn scan(addrs: &[IpAddr], opts: ScanOptions) -> Vec<Probe> {
    let concurrency = opts.concurrency.max(1);
    let mut out: Vec<Probe> = stream::iter(addrs.iter().copied())
        .map(move |ip| async move {
            let addr = SocketAddr::new(ip, opts.port);
            Probe {
                addr,
                outcome: identify(addr, opts.timeout).await,
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    out.sort_by_key(|p| p.addr);
    out
}

/// Identify the miner at `addr`; `timeout` bounds each request.
pub async fn identify(addr: SocketAddr, timeout: Duration) -> Outcome {
    let api = ApiClient::new(addr.to_string(), timeout, timeout);
    let version = match api.request(&json!({"command": "version"}), "version").await {
        Ok(r) => r,
        Err(e) => return first_contact(&e, timeout),
    };
    let mut seen = vec![version];
    let mut firmware = fingerprint(&seen[0]);
    if firmware.is_none() && flat_envelope(&seen[0].body) {
        // btminer answers what it does not know in its flat form: ask its own version.
        if let Ok(r) = api
            .request(&json!({"cmd": "get_version"}), "get_version")
            .await
        {
            if btminer_version(&r).is_some() {
                firmware = Some(Firmware::Whatsminer);
            }
            seen.push(r);
        }
    }
    if firmware.is_none() {
        for cmd in ["devdetails", "stats"] {
            if let Ok(r) = api.request(&json!({ "command": cmd }), cmd).await {
                firmware = fingerprint(&r);
                seen.push(r);
                if firmware.is_some() {
                    break;
                }
            }
        }
    }
    let Some(fw) = firmware else {
        return Outcome::Unidentified {
            reason: unknown_reason(&seen),
        };
    };
    Outcome::Miner(details(&api, fw, &seen).await)
}

/// The outcome of a first request that failed: nothing there, something that does not
/// speak the API, or a failure on this side.
fn first_contact(e: &ApiError, timeout: Duration) -> Outcome {
    use std::io::ErrorKind;
    let ms = timeout.as_millis();
    match e {
        ApiError::ConnectTimeout { .. } => Outcome::Silent,
        ApiError::Connect { source, .. } => match source.kind() {
            ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::AddrNotAvailable
            | ErrorKind::TimedOut => Outcome::Silent,
            _ => Outcome::NotProbed {
                reason: format!("cannot connect: {source}"),
            },
        },
        ApiError::Timeout { .. } => Outcome::Unidentified {
            reason: format!("accepted a connection but did not answer `version` within {ms} ms"),
        },
        ApiError::NoReply { .. } => Outcome::Unidentified {
            reason: "closed the connection without answering `version`".into(),
        },
        ApiError::TooLong { .. } => Outcome::Unidentified {
            reason: "answered `version` with more than 256 KiB".into(),
        },
        ApiError::Io { source, .. } => Outcome::Unidentified {
            reason: format!("connection failed during `version`: {source}"),
        },
        ApiError::Reply { source, .. } => Outcome::Unidentified {
            reason: match source {
                ReplyError::NoStatus => {
                    "answered `version` with JSON that has no cgminer STATUS".into()
                }
                other => format!("answered `version` with no cgminer API reply ({other})"),
            },
        },
    }
}

fn flat_envelope(body: &Value) -> bool {
    body.get("STATUS").is_some_and(Value::is_string)
}

/// btminer's `get_version` (flat envelope, `Msg.fw_ver`): the firmware version.
pub fn btminer_version(r: &Reply) -> Option<String> {
    if !flat_envelope(&r.body) {
        return None;
    }
    let m = r.msg_object().ok()?;
    text(m, &["fw_ver", "FirmwareVersion"]).or_else(|| m.contains_key("api_ver").then(String::new))
}

/// The firmware a reply names, if it is one of the six. Pure: the unit tests run it on
/// the real payloads in `tests/data/miners/`.
pub fn fingerprint(r: &Reply) -> Option<Firmware> {
    if btminer_version(r).is_some() {
        return Some(Firmware::Whatsminer);
    }
    let mut words = String::new();
    words.push_str(&r.status.description);
    words.push(' ');
    words.push_str(&r.status.msg);
    for section in ["VERSION", "STATS", "DEVDETAILS"] {
        // The first object names the software; the others are per-board figures.
        if let Some(o) = r.all(section).next() {
            for (k, v) in o {
                words.push(' ');
                words.push_str(k);
                if let Value::String(s) = v {
                    words.push(' ');
                    words.push_str(s);
                }
            }
        }
        for o in r.all(section) {
            if let Some(d) = text(o, &["Driver"]) {
                words.push(' ');
                words.push_str(&d);
            }
        }
    }
    let w = words.to_ascii_uppercase();
    let has = |s: &str| w.contains(s);
    if has("BOSMINER") || has("BOSER") || has("BRAIINS") {
        Some(Firmware::Braiins)
    } else if has("LUXMINER") {
        Some(Firmware::Luxos)
    } else if has("BTMINER") || has("BITMICRO") || has("WHATSMINER") {
        Some(Firmware::Whatsminer)
    } else if has("VNISH") {
        Some(Firmware::Vnish)
    } else if has("AVALON") {
        Some(Firmware::Avalon)
    } else if has("ANTMINER") && !(has("HIVEON") || has("KAONSU") || has("MARATHON")) {
        // Other Antminer firmwares (Hiveon, Marathon) copy the stock replies and are
        // none of the six: they stay unidentified.
        Some(Firmware::AntminerStock)
    } else {
        None
    }
}

fn unknown_reason(seen: &[Reply]) -> String {
    let Some(first) = seen.first() else {
        return "no usable reply".into();
    };
    let mut named = Vec::new();
    if !first.status.description.is_empty() {
        named.push(first.status.description.clone());
    }
    for r in seen {
        if let Some(t) = r
            .all("VERSION")
            .chain(r.all("STATS"))
            .chain(r.all("DEVDETAILS"))
            .find_map(|o| text(o, &["Type", "PROD", "Model"]))
        {
            named.push(t);
            break;
        }
    }
    if named.is_empty() {
        format!(
            "answers the cgminer API (`version`: {} {}) but names none of the six supported firmwares",
            first.status.kind.letter(),
            first.status.msg
        )
    } else {
        format!(
            "answers the cgminer API as `{}`, none of the six supported firmwares",
            named.join("`, `")
        )
    }
}

/// Model, firmware version and MAC from replies already received.
fn read_identity(fw: Firmware, r: &Reply, id: &mut Identified) {
    for o in r.all("VERSION").chain(r.all("STATS").take(1)) {
        if id.model.is_none() {
            if let Some(m) = model_of(fw, o) {
                let (model, extra) = split_model(&m);
                id.model = Some(model);
                if extra.is_some() && id.firmware_version.is_none() {
                    id.firmware_version = extra;
                }
            }
        }
        if id.firmware_version.is_none() {
            id.firmware_version = text(
                o,
                &[
                    "LUXminer", "BOSminer", "Miner", "BMMiner", "CGMiner", "VERSION",
                ],
            );
        }
        if id.mac.is_none() {
            id.mac = text(o, &["MAC", "MACAddr", "mac"]).and_then(|m| normalize_mac(&m));
        }
    }
    for o in r.all("DEVDETAILS").take(1) {
        if id.model.is_none() {
            id.model = text(o, &["Model"])
                .map(|m| m.trim_start_matches("Bitmain ").trim().to_owned())
                .filter(|m| !m.is_empty());
        }
    }
    for o in r.all("SUMMARY").take(1).chain(r.all("CONFIG").take(1)) {
        if id.mac.is_none() {
            id.mac = text(o, &["MAC", "MACAddr"]).and_then(|m| normalize_mac(&m));
        }
        if id.model.is_none() {
            id.model = text(o, &["Model"]).filter(|m| !m.is_empty());
        }
    }
    if fw == Firmware::Whatsminer && id.firmware_version.is_none() {
        id.firmware_version = btminer_version(r).filter(|v| !v.is_empty());
    }
}

fn model_of(fw: Firmware, o: &Map<String, Value>) -> Option<String> {
    let m = match fw {
        // Canaan: `PROD` ("AvalonMiner 1246", "AvalonMiner 1246-83"), else `MODEL`.
        Firmware::Avalon => text(o, &["PROD"])
            .map(|p| p.split('-').next().unwrap_or(&p).trim().to_owned())
            .or_else(|| text(o, &["MODEL"]).map(|m| format!("AvalonMiner {m}"))),
        _ => text(o, &["Type"]),
    }?;
    let m = m.trim().to_owned();
    (!m.is_empty()).then_some(m)
}

/// "Antminer S19 Pro (Vnish 1.2.5)" -> ("Antminer S19 Pro", Some("Vnish 1.2.5")).
pub fn split_model(s: &str) -> (String, Option<String>) {
    match s.split_once(" (") {
        Some((m, rest)) => (
            m.trim().to_owned(),
            Some(rest.trim_end_matches(')').trim().to_owned()).filter(|r| !r.is_empty()),
        ),
        None => (s.trim().to_owned(), None),
    }
}

/// A MAC in any of the firmwares' spellings ("D4:01:02:03:04:05", "62:f7:5e:b7:10:46",
/// Avalon's "123456789012") as lowercase colon-separated octets; `None` when it is not
/// six octets.
pub fn normalize_mac(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.' | ' '))
        .collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    let octets: Vec<&str> = (0..6).map(|i| &hex[2 * i..2 * i + 2]).collect();
    let mac = octets.join(":");
    (mac != "00:00:00:00:00:00").then_some(mac)
}

/// The commands that give an identified firmware's hashrate, power and MAC (read-only).
pub fn detail_commands(fw: Firmware) -> &'static [&'static str] {
    match fw {
        Firmware::Braiins => &["summary", "tunerstatus"],
        Firmware::Luxos => &["summary", "config", "power", "profiles"],
        Firmware::Whatsminer => &["summary", "devdetails"],
        Firmware::Avalon => &["summary", "estats"],
        Firmware::AntminerStock | Firmware::Vnish => &["stats"],
    }
}

fn blank(fw: Firmware) -> Identified {
    Identified {
        firmware: fw,
        model: None,
        firmware_version: None,
        mac: None,
        hashrate_ths: None,
        nominal_w: None,
        notes: Vec::new(),
    }
}

async fn details(api: &ApiClient, fw: Firmware, seen: &[Reply]) -> Identified {
    let mut id = blank(fw);
    for r in seen {
        read_identity(fw, r, &mut id);
    }
    let mut cmds = detail_commands(fw).to_vec();
    // BOSminer's `version` may not name the model; its `devdetails` does.
    if fw == Firmware::Braiins && id.model.is_none() {
        cmds.push("devdetails");
    }
    let mut notes = Vec::new();
    let mut replies: Vec<(&str, Reply)> = Vec::new();
    let budget = MAX_REQUESTS.saturating_sub(seen.len());
    for cmd in cmds.into_iter().take(budget) {
        let req = if fw == Firmware::Whatsminer && cmd != "devdetails" {
            json!({ "cmd": cmd })
        } else {
            json!({ "command": cmd })
        };
        match api.request(&req, cmd).await.and_then(|r| {
            r.ok().map_err(|source| ApiError::Reply {
                addr: api.addr().to_owned(),
                command: cmd.to_owned(),
                source,
            })
        }) {
            Ok(r) => replies.push((cmd, r)),
            Err(e) => notes.push(format!("`{cmd}` failed: {}", error_chain(&e))),
        }
    }
    let mut id = assemble(fw, seen, &replies);
    id.notes = notes;
    id
}

/// What a miner of firmware `fw` says about itself, from the identification replies
/// (`seen`) and the answers to [`detail_commands`] (`replies`, by command). Pure: the
/// unit tests run it on the fixtures.
pub fn assemble(fw: Firmware, seen: &[Reply], replies: &[(&str, Reply)]) -> Identified {
    let mut id = blank(fw);
    let all: Vec<&Reply> = seen.iter().chain(replies.iter().map(|(_, r)| r)).collect();
    for r in &all {
        read_identity(fw, r, &mut id);
    }
    let get = |c: &str| replies.iter().find(|(n, _)| *n == c).map(|(_, r)| r);
    let mut t = MinerTelemetry::empty("scan", fw);
    for r in &all {
        tm::apply_summary(&mut t, r);
        tm::apply_stats(&mut t, r);
    }
    let mut power: Option<(f64, PowerSource)> = None;
    match fw {
        Firmware::Braiins => {
            if let Some(r) = get("tunerstatus") {
                tm::apply_tunerstatus(&mut t, r);
            }
            power = t
                .power_target_w
                .map(|w| (w, PowerSource::Limit))
                .or(t.power_w.map(|w| (w, PowerSource::Measured)));
        }
        Firmware::Luxos => {
            if let Some(r) = get("power") {
                tm::apply_luxos_power(&mut t, r);
            }
            let profile = get("config").and_then(|r| tm::apply_luxos_config(&mut t, r));
            if let (Some(name), Some(r)) = (profile, get("profiles")) {
                power = tm::luxos_profiles(r)
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, w)| (w, PowerSource::Profile));
            }
            power = power.or(t.power_w.map(|w| (w, PowerSource::Measured)));
        }
        Firmware::Whatsminer => {
            power = t
                .power_target_w
                .map(|w| (w, PowerSource::Limit))
                .or(t.power_w.map(|w| (w, PowerSource::Measured)));
        }
        Firmware::Avalon => {
            if let Some(r) = get("estats") {
                tm::apply_avalon_estats(&mut t, r);
            }
            power = t.power_w.map(|w| (w, PowerSource::Measured));
        }
        Firmware::AntminerStock | Firmware::Vnish => {}
    }
    id.hashrate_ths = t.hashrate_ths;
    let hashing = t.hashrate_ths.is_some_and(|h| h > 0.0);
    // A measured draw says nothing of the nominal power while the boards are idle.
    if matches!(power, Some((_, PowerSource::Measured))) && !hashing {
        power = None;
    }
    if power.is_none() {
        // No power figure: the rated hashrate (bmminer's `total_rateideal`, GH/s) or
        // the present one, at the default efficiency.
        let ideal = all
            .iter()
            .flat_map(|r| r.all("STATS"))
            .find_map(|o| field(o, &["total_rateideal"]))
            .map(|g| g / 1000.0)
            .filter(|t| *t > 0.0);
        if let Some(ths) = ideal.or(t.hashrate_ths.filter(|h| *h > 0.0)) {
            power = Some((
                ths * DEFAULT_EFFICIENCY_J_TH,
                PowerSource::Estimated {
                    ths,
                    j_th: DEFAULT_EFFICIENCY_J_TH,
                },
            ));
        }
    }
    id.nominal_w = power.filter(|(w, _)| w.is_finite() && *w > 0.0);
    if id.firmware_version.is_none() {
        id.firmware_version = t.firmware_version.clone();
    }
    id
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_hosts_dedup_and_cap() {
        let a = expand(&["10.0.0.0/30".into(), "10.0.0.1".into()], 100).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].to_string(), "10.0.0.1");
        let b = expand(&["10.0.0.0/31".into()], 100).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(expand(&["10.0.0.0/25".into()], 1000).unwrap().len(), 126);
        assert_eq!(
            expand(&["10.0.0.0/16".into()], 1000),
            Err(TargetError::TooMany {
                count: 65534,
                cap: 1000
            })
        );
        assert!(matches!(
            expand(&["fd00::/64".into()], 65536),
            Err(TargetError::TooMany { .. })
        ));
        assert_eq!(
            expand(&["10.0.0.0/33".into()], 10),
            Err(TargetError::Parse("10.0.0.0/33".into()))
        );
        assert!(expand(&["miner-7".into()], 10).is_err());
    }

    #[test]
    fn macs() {
        assert_eq!(
            normalize_mac("D4:01:02:03:04:05").as_deref(),
            Some("d4:01:02:03:04:05")
        );
        assert_eq!(
            normalize_mac("123456789012").as_deref(),
            Some("12:34:56:78:90:12")
        );
        assert_eq!(normalize_mac("00:00:00:00:00:00"), None);
        assert_eq!(normalize_mac("12:34"), None);
        assert_eq!(normalize_mac("zz:01:02:03:04:05"), None);
    }

    #[test]
    fn model_suffix() {
        assert_eq!(
            split_model("Antminer S19 Pro (Vnish 1.2.5)"),
            ("Antminer S19 Pro".into(), Some("Vnish 1.2.5".into()))
        );
        assert_eq!(
            split_model("Antminer S19 Pro"),
            ("Antminer S19 Pro".into(), None)
        );
    }
}
