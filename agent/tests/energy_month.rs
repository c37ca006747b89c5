//! Energy accounting over a simulated month (issue 20, docs/energy.md): each tenant's
//! energy, the site's mining and their peak demand as `rackwarden energy` reports them,
//! against the simulator's own integral of the racks' power, with PDU counter resets
//! (reboots, one during a meter outage), meter outages the counter bridges, a counter
//! wrap and an agent restart mid-month injected.
//!
//! The racks' power follows the simulator's GPU profiles (`inference-day`) and a mining
//! day; each PDU's counter is the exact integral of its rack's power at 1 s resolution,
//! read (as the agent reads it) every 10 s at the register's 0.1 kWh resolution. The
//! agent's path is the runtime's: `Recorder::open` on the site file, Modbus readings
//! into the `EnergyBook`, commits to the SQLite database, then the `rackwarden energy`
//! binary on the same site file.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rackwarden::energy::recorder::Recorder;
use rackwarden::metrics::Metrics;
use rackwarden_sim::gpu::{rack_demand_fraction, LoadProfile};

/// 2026-11-01T00:00:00Z.
const START_MS: u64 = 1_793_491_200_000;
const DAYS: u64 = 30;
const READ_EVERY_S: u64 = 10;
/// generic-pdu's `inlet_energy`: u32 at 0.1 kWh.
const COUNTER_TOP_KWH: f64 = 4_294_967_296.0 * 0.1;

const RACKS: [(&str, &str); 9] = [
    ("gpu-a1", "gpu"),
    ("gpu-a2", "gpu"),
    ("gpu-b1", "gpu"),
    ("gpu-b2", "gpu"),
    ("mine-a1", "mining"),
    ("mine-a2", "mining"),
    ("mine-b1", "mining"),
    ("mine-b2", "mining"),
    ("mixed-b3", "mixed"),
];

fn site_text() -> String {
    let mut s = String::from(
        r#"[site]
id = "energy-month"

[agent]
state_file = "state/state.json"
journal_file = "state/journal.jsonl"

[[feeds]]
id = "feed-a"
rating_kw = 800

[[feeds]]
id = "feed-b"
rating_kw = 800

[[tenants]]
id = "acme"
name = "Acme AI"
racks = ["gpu-a1", "gpu-a2"]

[[tenants]]
id = "borealis"
racks = ["gpu-b1", "gpu-b2"]
"#,
    );
    for (i, (id, kind)) in RACKS.iter().enumerate() {
        let feed = if id.contains("-a") {
            "feed-a"
        } else {
            "feed-b"
        };
        let extra = if *kind == "mining" {
            String::new()
        } else {
            "rated_max_kw = 132\n".to_owned()
        };
        s.push_str(&format!(
            r#"
[[racks]]
id = "{id}"
kind = "{kind}"
parents = ["{feed}"]
rating_kw = 175
{extra}meters = [{{ device = "pdu-{id}" }}]

[[modbus_devices]]
id = "pdu-{id}"
transport = "tcp"
host = "127.0.0.1"
port = {}
profile = "generic-pdu"
"#,
            16_000 + i
        ));
    }
    s
}

/// Rack `r`'s power at `t` seconds into the month, kW.
fn kw(r: usize, t: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let t = t as f64;
    match RACKS[r].1 {
        "gpu" | "mixed" => {
            22.8 + 132.0 * rack_demand_fraction(LoadProfile::InferenceDay, r as u64, t, 86_400.0)
        }
        _ => {
            // Mining: full in the day, a third curtailed at night, a slow wobble.
            let hour = (t / 3600.0) % 24.0;
            let base = if (7.0..21.0).contains(&hour) {
                110.0
            } else {
                75.0
            };
            base + 5.0 * (t / 977.0 + r as f64).sin()
        }
    }
}

/// What happens to a rack's meter: outages (no reading) and counter resets.
struct Faults {
    /// [from, to) seconds with no reading of the rack's PDU.
    outages: Vec<(u64, u64)>,
    /// Seconds at which the PDU's counter restarts from zero.
    resets: Vec<u64>,
    /// The counter's value at the start of the month.
    counter_at_start: f64,
}

fn faults(r: usize) -> Faults {
    const H: u64 = 3600;
    const D: u64 = 86_400;
    let none = Faults {
        outages: Vec::new(),
        resets: Vec::new(),
        counter_at_start: 12_345.6,
    };
    match RACKS[r].0 {
        // A reboot (counter reset, 90 s without readings) and a two-hour outage.
        "gpu-a1" => Faults {
            outages: vec![
                (3 * D + 10 * H - 30, 3 * D + 10 * H + 60),
                (9 * D + 2 * H, 9 * D + 4 * H),
            ],
            resets: vec![3 * D + 10 * H],
            ..none
        },
        // The PDU replaced during a three-hour outage: the counter restarts unseen.
        "gpu-b1" => Faults {
            outages: vec![(15 * D + 13 * H, 15 * D + 16 * H)],
            resets: vec![15 * D + 14 * H],
            ..none
        },
        // Near the register's top at the start: it wraps within the first hour.
        "gpu-b2" => Faults {
            counter_at_start: COUNTER_TOP_KWH - 50.0,
            ..none
        },
        // A six-hour outage of a mining PDU, and two reboots.
        "mine-a1" => Faults {
            outages: vec![(20 * D, 20 * D + 6 * H)],
            resets: vec![5 * D + 7 * H + 11, 25 * D + 23 * H + 59 * 60],
            ..none
        },
        _ => none,
    }
}

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("rw-energy-month-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn energy_cli(site: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rackwarden"))
        .arg("energy")
        .arg("--config")
        .arg(site)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rackwarden energy {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
// Long on purpose: one month's scenario, read top to bottom.
#[allow(clippy::too_many_lines)]
fn a_month_of_tenant_energy_is_within_half_a_percent_of_the_simulators_integral() {
    let dir = tmpdir();
    let path = dir.join("site.toml");
    std::fs::write(&path, site_text()).unwrap();
    let site = rackwarden_config::load(&path).unwrap();
    let db = rackwarden::energy::database_path(&site, &dir);
    assert_eq!(db, dir.join("state/rackwarden.db"));
    let dev: Vec<usize> = RACKS
        .iter()
        .map(|(id, _)| {
            site.modbus_devices
                .iter()
                .position(|d| d.id == format!("pdu-{id}"))
                .unwrap()
        })
        .collect();
    let f: Vec<Faults> = (0..RACKS.len()).map(faults).collect();
    let mut metrics = Metrics::new();
    let (mut rec, mut book) = Recorder::open(&site, &db, &metrics, START_MS).unwrap();
    // The agent restarts in the middle of day 12, down for ten minutes.
    let restart = 12 * 86_400 + 7 * 3600;
    // The simulator's integral per rack (the truth), and each PDU's counter.
    let mut truth = vec![0.0; RACKS.len()];
    let mut counter: Vec<f64> = f.iter().map(|x| x.counter_at_start).collect();
    // Per rack, per 15-minute slot: the truth, for the peak demand.
    let mut slot_truth: HashMap<(usize, u64), f64> = HashMap::new();
    let month_s = DAYS * 86_400;
    for t in 0..month_s {
        for r in 0..RACKS.len() {
            if f[r].resets.contains(&t) {
                counter[r] = 0.0;
            }
            let e = kw(r, t) / 3600.0;
            truth[r] += e;
            counter[r] += e;
            if counter[r] >= COUNTER_TOP_KWH {
                counter[r] -= COUNTER_TOP_KWH;
            }
            *slot_truth.entry((r, t / 900)).or_default() += e;
        }
        let now = START_MS + (t + 1) * 1000;
        if (t + 1) % READ_EVERY_S == 0 {
            for r in 0..RACKS.len() {
                let tt = t + 1;
                if f[r].outages.iter().any(|&(a, b)| (a..b).contains(&tt))
                    || (restart..restart + 600).contains(&tt)
                {
                    continue;
                }
                // The registers' resolution: kW to 1 W, the counter to 0.1 kWh.
                let p = (kw(r, tt) * 1000.0).round() / 1000.0;
                let c = (counter[r] * 10.0).floor() / 10.0;
                book.observe_device(dev[r], now, |point, _| {
                    Some(if point.contains("energy") { c } else { p })
                });
            }
        }
        if rec.due(now) {
            rec.commit(book.take(), &metrics, now);
        }
        // The restart: the new process (its own /metrics, counting on from the
        // database) resumes from the stored last readings, and the counters bridge its
        // downtime.
        if t + 1 == restart {
            rec.commit(book.take(), &metrics, now);
            drop((rec, book));
            metrics = Metrics::new();
            let (r2, b2) = Recorder::open(&site, &db, &metrics, now).unwrap();
            (rec, book) = (r2, b2);
        }
    }
    rec.commit(book.take(), &metrics, START_MS + month_s * 1000);
    drop((rec, book));

    // What an operator runs: one row per account for November.
    let json = energy_cli(
        &path,
        &[
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--by",
            "month",
            "--json",
        ],
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let accounts = [
        ("acme", vec![0, 1]),
        ("borealis", vec![2, 3]),
        ("mining", vec![4, 5, 6, 7, 8]),
    ];
    assert_eq!(rows.len(), accounts.len(), "{json}");
    for (id, racks) in &accounts {
        let row = rows.iter().find(|r| r["account"] == *id).unwrap();
        assert_eq!(row["period"], "2026-11-01T00:00:00Z");
        let want: f64 = racks.iter().map(|&r| truth[r]).sum();
        let got = row["kwh"].as_f64().unwrap();
        let err = (got - want).abs() / want;
        eprintln!(
            "{id}: {got:.1} kWh reported, {want:.1} kWh drawn ({:.4}%), estimated {:.1} kWh, peak {:.1} kW",
            err * 100.0,
            row["estimated_kwh"].as_f64().unwrap(),
            row["peak_kw"].as_f64().unwrap()
        );
        assert!(
            err < 0.005,
            "{id}: {got} kWh against {want} kWh ({:.3}%)",
            err * 100.0
        );
        // Peak demand: the highest 15-minute mean of the account's summed racks.
        let mut per_slot: HashMap<u64, f64> = HashMap::new();
        for (&(r, s), e) in &slot_truth {
            if racks.contains(&r) {
                *per_slot.entry(s).or_default() += e;
            }
        }
        let peak = per_slot.values().fold(0.0_f64, |a, b| a.max(*b)) * 4.0;
        let got_peak = row["peak_kw"].as_f64().unwrap();
        assert!(
            (got_peak - peak).abs() / peak < 0.01,
            "{id}: peak {got_peak} kW against {peak} kW"
        );
    }
    // Every injected fault is flagged where it happened, none counted as zero.
    let acme = rows.iter().find(|r| r["account"] == "acme").unwrap();
    let borealis = rows.iter().find(|r| r["account"] == "borealis").unwrap();
    let mining = rows.iter().find(|r| r["account"] == "mining").unwrap();
    assert_eq!(acme["resets"], 1, "{acme}");
    // The two-hour outage and the restart's ten minutes (both racks), bridged.
    assert_eq!(acme["gaps"], 3, "{acme}");
    assert_eq!(
        mining["gaps"], 6,
        "the six-hour outage and the restart: {mining}"
    );
    assert_eq!(borealis["resets"], 1, "{borealis}");
    assert_eq!(borealis["wraps"], 1, "{borealis}");
    assert_eq!(mining["resets"], 2, "{mining}");
    for r in [acme, borealis, mining] {
        assert!(r["estimated_kwh"].as_f64().unwrap() > 0.0, "{r}");
        // Only the intervals a counter could not cover (resets) are estimated.
        assert!(
            r["estimated_kwh"].as_f64().unwrap() < 0.005 * r["kwh"].as_f64().unwrap(),
            "{r}"
        );
        assert_eq!(r["missing_h"].as_f64().unwrap(), 0.0, "{r}");
        assert_eq!(r["jumps"], 0, "{r}");
    }
    // The same figures per day, as CSV for a billing sheet: 30 days of one tenant.
    let csv = energy_cli(
        &path,
        &[
            "--tenant",
            "acme",
            "--by",
            "day",
            "--csv",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
        ],
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 31, "{csv}");
    assert!(lines[0].starts_with("period,account,kwh"));
    let day_sum: f64 = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(2).unwrap().parse::<f64>().unwrap())
        .sum();
    let acme_kwh = acme["kwh"].as_f64().unwrap();
    assert!(
        (day_sum - acme_kwh).abs() < 0.1,
        "{day_sum} against {acme_kwh}"
    );
    // /metrics counts the same energy per account.
    let text = metrics.encode();
    let line = text
        .lines()
        .find(|l| l.starts_with("rackwarden_energy_kwh_total{") && l.contains("account=\"acme\""))
        .unwrap();
    let m: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (m - acme_kwh).abs() / acme_kwh < 1e-6,
        "{line} against {acme_kwh}"
    );
    // An account the site does not have is an error naming the accounts it has.
    let out = Command::new(env!("CARGO_BIN_EXE_rackwarden"))
        .args(["energy", "--config"])
        .arg(&path)
        .args(["--tenant", "nobody"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nobody") && err.contains("`acme`"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
