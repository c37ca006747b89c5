//! Accounts and periods: what `rackwarden energy` prints and `/api/v1/energy` serves.
//!
//! An account is a tenant (its `[[tenants]]` racks), `mining` (the site's mining racks
//! and the mixed racks no tenant holds), `unassigned` (GPU racks no tenant holds) or
//! `site` (the site's own meter, where it has one: what the utility bills, losses and
//! the management load included). Periods are
//! UTC hours, days or calendar months. Peak demand is the highest 15-minute mean kW of
//! the account in the period: the sum of its racks' energy in one slot, times four.

use std::collections::{BTreeMap, HashMap};

use rackwarden_config::{NodeKind, RackKind, Site, MINING_ACCOUNT};
use serde::Serialize;

use super::meter::{Slot, SLOT_MS};
use super::store::{Store, StoreError};
use crate::control::Millis;

/// The period rows are summed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum By {
    Hour,
    Day,
    Month,
}

/// An energy account and the nodes it sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: String,
    pub name: String,
    /// `tenant`, `mining`, `unassigned` or `site`.
    pub kind: &'static str,
    pub nodes: Vec<String>,
    /// Racks of the account with no meter at all: their energy cannot be known.
    pub unmetered: Vec<String>,
}

/// The site's accounts: tenants in file order, then `mining`, `unassigned` (if any GPU
/// rack is held by no tenant), `site` (if metered).
pub fn accounts(site: &Site) -> Vec<Account> {
    let metered = |n: usize| !site.nodes[n].meters.is_empty();
    let mut held = vec![false; site.nodes.len()];
    let mut out = Vec::new();
    let split = |racks: &mut dyn Iterator<Item = usize>| -> (Vec<String>, Vec<String>) {
        let (mut m, mut u) = (Vec::new(), Vec::new());
        for r in racks {
            let id = site.nodes[r].id.clone();
            if metered(r) {
                m.push(id);
            } else {
                u.push(id);
            }
        }
        (m, u)
    };
    for t in &site.tenants {
        for &r in &t.racks {
            held[r] = true;
        }
        let (nodes, unmetered) = split(&mut t.racks.iter().copied());
        out.push(Account {
            id: t.id.clone(),
            name: t.name.clone(),
            kind: "tenant",
            nodes,
            unmetered,
        });
    }
    let mut mining = (0..site.nodes.len()).filter(|&n| {
        matches!(
            site.nodes[n].kind,
            NodeKind::Rack(RackKind::Mining | RackKind::Mixed)
        ) && !held[n]
    });
    let (nodes, unmetered) = split(&mut mining);
    out.push(Account {
        id: MINING_ACCOUNT.to_owned(),
        name: "mining (the site's own)".to_owned(),
        kind: "mining",
        nodes,
        unmetered,
    });
    // GPU racks no tenant holds: still accounted, never silently in no account.
    let mut free = (0..site.nodes.len())
        .filter(|&n| matches!(site.nodes[n].kind, NodeKind::Rack(RackKind::Gpu)) && !held[n]);
    let (nodes, unmetered) = split(&mut free);
    if !nodes.is_empty() || !unmetered.is_empty() {
        out.push(Account {
            id: "unassigned".to_owned(),
            name: "GPU racks no tenant holds".to_owned(),
            kind: "unassigned",
            nodes,
            unmetered,
        });
    }
    if metered(0) {
        out.push(Account {
            id: "site".to_owned(),
            name: "site meter (what the utility bills)".to_owned(),
            kind: "site",
            nodes: vec![site.nodes[0].id.clone()],
            unmetered: Vec::new(),
        });
    }
    out
}

/// One account in one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Period start, RFC 3339 UTC.
    pub period: String,
    pub period_start_ms: Millis,
    pub account: String,
    pub kwh: f64,
    pub measured_kwh: f64,
    /// From power readings: racks without a counter, and intervals across a counter
    /// reset or jump.
    pub estimated_kwh: f64,
    /// Meter-hours nothing could account for (summed over the account's meters).
    pub missing_h: f64,
    /// The highest 15-minute mean kW of the account in the period.
    pub peak_kw: f64,
    pub peak_at: String,
    pub resets: u32,
    pub wraps: u32,
    pub jumps: u32,
    pub gaps: u32,
    /// Racks of the account that have no meter (not in any figure).
    pub unmetered: Vec<String>,
    /// `mining` only: miner-hours curtailed in the period, by cause (`power`,
    /// `cooling`, `operator`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub curtailed_miner_h: BTreeMap<String, f64>,
    /// `mining` only: energy mining drew above its guaranteed allocation (what trough
    /// filling gave it), kWh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trough_kwh: Option<f64>,
}

/// The start of the period holding `t` (UTC).
pub fn period_of(t: Millis, by: By) -> Millis {
    match by {
        By::Hour => t - t % 3_600_000,
        By::Day => t - t % 86_400_000,
        By::Month => {
            let (y, m, _) = civil_from_days(t / 86_400_000);
            days_from_civil(y, m, 1) * 86_400_000
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 (UTC, seconds) of `t`.
pub fn rfc3339(t: Millis) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(t))
        .to_string()
}

/// Reads a date (`2026-12-01`) or an RFC 3339 time (`2026-12-01T06:00:00Z`) as UTC ms.
pub fn parse_time(s: &str) -> Result<Millis, String> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    let t = humantime::parse_rfc3339_weak(&full)
        .map_err(|e| format!("`{s}` is not a date (2026-12-01) or an RFC 3339 time: {e}"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| format!("`{s}` is before 1970"))
}

/// What a report asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// One account (`None`: every account).
    pub account: Option<String>,
    pub from: Millis,
    pub to: Millis,
    pub by: By,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no account `{0}`: the site's accounts are {1}")]
    NoAccount(String, String),
}

/// The rows of `q`: per period (ascending), per account (in [`accounts`] order).
pub fn report(store: &Store, site: &Site, q: &Query) -> Result<Vec<Row>, ReportError> {
    let all = accounts(site);
    let chosen: Vec<&Account> = match &q.account {
        Some(id) => vec![all.iter().find(|a| &a.id == id).ok_or_else(|| {
            ReportError::NoAccount(
                id.clone(),
                all.iter()
                    .map(|a| format!("`{}`", a.id))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?],
        None => all.iter().collect(),
    };
    let mut owner: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, a) in chosen.iter().enumerate() {
        for n in &a.nodes {
            owner.entry(n.as_str()).or_default().push(i);
        }
    }
    // (period, account) -> figures, and (period, account) -> per-slot sums for the peak.
    let mut sums: BTreeMap<(Millis, usize), Slot> = BTreeMap::new();
    let mut slot_kwh: HashMap<(usize, Millis), f64> = HashMap::new();
    for (node, start, s) in store.slots(q.from, q.to)? {
        let Some(list) = owner.get(node.as_str()) else {
            continue;
        };
        for &a in list {
            sums.entry((period_of(start, q.by), a)).or_default().add(&s);
            *slot_kwh.entry((a, start)).or_default() += s.kwh();
        }
    }
    // Mining's own figures, on the `mining` row of each period that has one.
    let mining_at = chosen.iter().position(|a| a.kind == "mining");
    let mut curtailed: HashMap<Millis, BTreeMap<String, f64>> = HashMap::new();
    let mut trough: HashMap<Millis, f64> = HashMap::new();
    if let Some(m) = mining_at {
        let (c, t) = store.mining(q.from, q.to)?;
        for (start, cause, secs) in c {
            let p = period_of(start, q.by);
            *curtailed.entry(p).or_default().entry(cause).or_default() += secs / 3600.0;
            sums.entry((p, m)).or_default();
        }
        for (start, kwh) in t {
            let p = period_of(start, q.by);
            *trough.entry(p).or_default() += kwh;
            sums.entry((p, m)).or_default();
        }
    }
    let mut peaks: HashMap<(Millis, usize), (f64, Millis)> = HashMap::new();
    for ((a, start), kwh) in slot_kwh {
        #[allow(clippy::cast_precision_loss)]
        let kw = kwh * (3_600_000.0 / SLOT_MS as f64);
        let p = peaks
            .entry((period_of(start, q.by), a))
            .or_insert((kw, start));
        if kw > p.0 || (kw == p.0 && start < p.1) {
            *p = (kw, start);
        }
    }
    Ok(sums
        .into_iter()
        .map(|((period, a), s)| {
            let (peak_kw, at) = peaks.get(&(period, a)).copied().unwrap_or((0.0, period));
            Row {
                period: rfc3339(period),
                period_start_ms: period,
                account: chosen[a].id.clone(),
                kwh: s.kwh(),
                measured_kwh: s.measured_kwh,
                estimated_kwh: s.estimated_kwh,
                missing_h: s.missing_s / 3600.0,
                peak_kw,
                peak_at: rfc3339(at),
                resets: s.resets,
                wraps: s.wraps,
                jumps: s.jumps,
                gaps: s.gaps,
                unmetered: chosen[a].unmetered.clone(),
                curtailed_miner_h: if Some(a) == mining_at {
                    curtailed.remove(&period).unwrap_or_default()
                } else {
                    BTreeMap::new()
                },
                trough_kwh: (Some(a) == mining_at)
                    .then(|| trough.get(&period).copied().unwrap_or(0.0)),
            }
        })
        .collect())
}

/// The rows as CSV (a header, one line per row).
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "period,account,kwh,measured_kwh,estimated_kwh,missing_h,peak_kw,peak_at,resets,wraps,jumps,gaps,unmetered,trough_kwh,curtailed_power_miner_h,curtailed_cooling_miner_h,curtailed_operator_miner_h\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{},{},{},{:.3},{:.3},{:.3}\n",
            r.period,
            r.account,
            r.kwh,
            r.measured_kwh,
            r.estimated_kwh,
            r.missing_h,
            r.peak_kw,
            r.peak_at,
            r.resets,
            r.wraps,
            r.jumps,
            r.gaps,
            r.unmetered.join(" "),
            r.trough_kwh.map(|v| format!("{v:.3}")).unwrap_or_default(),
            r.curtailed_miner_h.get("power").copied().unwrap_or(0.0),
            r.curtailed_miner_h.get("cooling").copied().unwrap_or(0.0),
            r.curtailed_miner_h.get("operator").copied().unwrap_or(0.0),
        ));
    }
    out
}

/// The rows as an aligned table for a terminal.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<20} {:<14} {:>12} {:>12} {:>10} {:>10}  {}\n",
        "period", "account", "kWh", "estimated", "peak kW", "missing h", "flags"
    );
    for r in rows {
        let mut flags = Vec::new();
        for (n, what) in [
            (r.resets, "counter resets"),
            (r.wraps, "wraps"),
            (r.jumps, "jumps"),
            (r.gaps, "gaps bridged"),
        ] {
            if n > 0 {
                flags.push(format!("{n} {what}"));
            }
        }
        if !r.unmetered.is_empty() {
            flags.push(format!("unmetered: {}", r.unmetered.join(" ")));
        }
        if let Some(t) = r.trough_kwh {
            flags.push(format!("trough {t:.1} kWh"));
        }
        for (cause, h) in &r.curtailed_miner_h {
            flags.push(format!("curtailed {h:.1} miner-h ({cause})"));
        }
        out.push_str(&format!(
            "{:<20} {:<14} {:>12.1} {:>12.1} {:>10.1} {:>10.2}  {}\n",
            r.period,
            r.account,
            r.kwh,
            r.estimated_kwh,
            r.peak_kw,
            r.missing_h,
            flags.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_hours_days_and_calendar_months() {
        let t = parse_time("2026-02-28T23:59:59Z").unwrap();
        assert_eq!(rfc3339(period_of(t, By::Hour)), "2026-02-28T23:00:00Z");
        assert_eq!(rfc3339(period_of(t, By::Day)), "2026-02-28T00:00:00Z");
        assert_eq!(rfc3339(period_of(t, By::Month)), "2026-02-01T00:00:00Z");
        let leap = parse_time("2028-02-29").unwrap();
        assert_eq!(rfc3339(period_of(leap, By::Month)), "2028-02-01T00:00:00Z");
        assert_eq!(
            rfc3339(period_of(
                parse_time("2026-12-31T12:00:00Z").unwrap(),
                By::Month
            )),
            "2026-12-01T00:00:00Z"
        );
        assert!(parse_time("yesterday").unwrap_err().contains("yesterday"));
    }
}
