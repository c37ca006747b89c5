//! The probe: reads every Modbus device of a site once, never writes, and lays the
//! answers out as a table (device, point, value, unit, latency). `rackwarden probe`
//! calls [`probe_site`] and prints [`format_table`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use rackwarden_config::Site;

use super::client::ModbusPool;

/// One line of the probe's table.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    pub device: String,
    pub unit_id: u8,
    /// `name` or `name[index]`; empty when the whole device failed.
    pub point: String,
    /// The value, or the error text.
    pub value: Result<f64, String>,
    pub unit: Option<String>,
    /// The device read's latency (all its requests).
    pub latency: Option<Duration>,
}

/// Reads every device once, devices on different connections in parallel.
pub async fn probe_site(site: &Site) -> Vec<ProbeRow> {
    let pool = Arc::new(ModbusPool::new(site));
    let mut set = JoinSet::new();
    for i in 0..pool.devices().len() {
        let pool = pool.clone();
        set.spawn(async move { (i, pool.read_device(i).await) });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        // A read task cannot panic short of a bug; a lost row is reported by its absence.
        if let Ok(r) = r {
            results.push(r);
        }
    }
    results.sort_by_key(|(i, _)| *i);
    let mut rows = Vec::new();
    for (i, r) in results {
        let d = &site.modbus_devices[i];
        match r {
            Ok(reading) => {
                for v in &reading.values {
                    let repeated = d.profile.point(&v.point).is_some_and(|p| p.count > 1);
                    rows.push(ProbeRow {
                        device: d.id.clone(),
                        unit_id: reading.unit_id,
                        point: v.label(repeated),
                        value: v.value.clone().map_err(|e| e.to_string()),
                        unit: v.unit.as_deref().map(str::to_owned),
                        latency: Some(reading.latency),
                    });
                }
            }
            Err(e) => rows.push(ProbeRow {
                device: d.id.clone(),
                unit_id: d.link.unit_id(),
                point: String::new(),
                value: Err(error_chain(&e)),
                unit: None,
                latency: None,
            }),
        }
    }
    rows
}

/// An error with its sources, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        write!(s, ": {c}").ok();
        cur = c.source();
    }
    s
}

/// The rows as an aligned text table; errors go to a last, unpadded NOTE column so a
/// long message does not widen every line.
pub fn format_table(rows: &[ProbeRow]) -> String {
    let cells: Vec<([String; 5], String)> = rows
        .iter()
        .map(|r| {
            let (value, note) = match &r.value {
                Ok(v) => (format!("{v}"), String::new()),
                Err(e) => ("ERROR".to_owned(), e.clone()),
            };
            (
                [
                    format!("{} (unit {})", r.device, r.unit_id),
                    if r.point.is_empty() {
                        "-".into()
                    } else {
                        r.point.clone()
                    },
                    value,
                    r.unit.clone().unwrap_or_default(),
                    r.latency.map_or_else(
                        || "-".into(),
                        |l| format!("{:.1} ms", l.as_secs_f64() * 1e3),
                    ),
                ],
                note,
            )
        })
        .collect();
    let head = ["DEVICE", "POINT", "VALUE", "UNIT", "LATENCY"];
    let mut w = head.map(str::len);
    for (c, _) in &cells {
        for (k, s) in c.iter().enumerate() {
            w[k] = w[k].max(s.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |c: &[String], note: &str| {
        let text = format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:<w3$}  {:>w4$}  {note}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        );
        writeln!(out, "{}", text.trim_end()).ok();
    };
    line(&head.map(String::from), "NOTE");
    for (c, note) in &cells {
        line(c, note);
    }
    out
}
