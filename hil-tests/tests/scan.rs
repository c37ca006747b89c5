//! `rackwarden scan` (issue 18) against the simulated example site: the real binary
//! scans 1,024 loopback addresses of this test's network (127.K.*) that hold the site's
//! 188 simulated miners (six firmwares), a listener that answers garbage and one that
//! never answers. Every miner must come back with its address, firmware and a model;
//! the TOML, racks filled in, must pass the site validation in place of the site's own
//! miners; the two odd listeners are reported, not fatal. Timing is the benchmark's
//! (bench/run.py, `scan`), not asserted here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rackwarden_config::Firmware;
use rackwarden_hil_tests::{bin, net_k, serial, sim, TempSite};

/// What `rackwarden scan` printed and how it ended.
struct ScanRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `rackwarden scan ARGS`, killed after `limit`.
fn run_scan(args: &[String], limit: Duration) -> ScanRun {
    let mut child = Command::new(bin())
        .arg("scan")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let end = Instant::now() + limit;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() >= end {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ScanRun {
        code,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// A loopback listener on `addr` that serves each connection with `serve` until
/// dropped.
struct Peer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    fn start(addr: &str, serve: fn(std::net::TcpStream, &mut Vec<std::net::TcpStream>)) -> Peer {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        serve(c, &mut held);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Peer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// Answers any request with bytes that are no API reply, then closes.
fn garbage(mut c: std::net::TcpStream, _: &mut Vec<std::net::TcpStream>) {
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 512];
    let _answered = c.read(&mut buf);
    c.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\xff\xfe{{{garbage")
        .ok();
}

/// Accepts and keeps the connection, never answering.
fn silent(c: std::net::TcpStream, held: &mut Vec<std::net::TcpStream>) {
    held.push(c);
}

/// One `[[miners]]` or `[[miner_groups]]` entry of the output, with the model from its
/// comment line (`# model: ...; ...`).
#[derive(Debug)]
struct Entry {
    table: toml::Table,
    models: Vec<String>,
}

/// The entries of a scan's TOML, in order, with the models their comments give.
fn entries(text: &str, key: &str) -> Vec<Entry> {
    let v: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let tables: Vec<toml::Table> = v
        .get(key)
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().map(|t| t.as_table().unwrap().clone()).collect())
        .unwrap_or_default();
    // Comment lines between one header and the next belong to that entry.
    let header = format!("[[{key}]]");
    let mut models: Vec<Vec<String>> = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("[[") {
            inside = line == header;
            if inside {
                models.push(Vec::new());
            }
        } else if inside {
            if let Some(pos) = line.find("model: ") {
                let rest = &line[pos + "model: ".len()..];
                let m = rest.split("; ").next().unwrap_or("").trim().to_owned();
                models.last_mut().unwrap().push(m);
            }
        }
    }
    assert_eq!(
        models.len(),
        tables.len(),
        "{key}: headers and tables disagree"
    );
    tables
        .into_iter()
        .zip(models)
        .map(|(table, models)| Entry { table, models })
        .collect()
}

/// The site file with its miners replaced by a scan's output, `RACK?` set to each
/// miner's rack in `racks` (by address) unless `racks` is `None`.
fn merged_site(site: &TempSite, scan: &str, racks: Option<&BTreeMap<String, String>>) -> String {
    let mut base: toml::Table =
        toml::from_str(&std::fs::read_to_string(&site.config).unwrap()).unwrap();
    base.remove("miner_groups");
    base.remove("miners");
    let mut out = toml::to_string(&base).unwrap();
    out.push('\n');
    let mut last_addr = String::new();
    for line in scan.lines() {
        let trimmed = line.trim_start();
        for key in ["address = \"", "first_address = \""] {
            if let Some(rest) = trimmed.strip_prefix(key) {
                last_addr = rest.trim_end_matches('"').to_owned();
            }
        }
        match racks {
            Some(r) if trimmed.starts_with("rack = \"RACK?\"") => {
                let rack = r
                    .get(&last_addr)
                    .unwrap_or_else(|| panic!("no rack for {last_addr}"));
                out.push_str(&format!("rack = \"{rack}\"\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn load(site: &TempSite, name: &str, text: &str) -> Result<rackwarden_config::Site, String> {
    let path = site.dir.join(name);
    std::fs::write(&path, text).unwrap();
    rackwarden_config::load(Path::new(&path)).map_err(|e| e.to_string())
}

#[test]
// Long on purpose: one scenario, read top to bottom.
#[allow(clippy::too_many_lines)]
fn scan_finds_every_simulated_miner_and_reports_odd_peers() {
    let _g = serial();
    let site = TempSite::new("scan", |s| s);
    let k = net_k();
    let expected = rackwarden_config::load(&site.config).unwrap();
    assert_eq!(expected.miners.len(), 188, "the example site changed");
    // address -> (firmware, rack id)
    let want: BTreeMap<String, (Firmware, String)> = expected
        .miners
        .iter()
        .map(|m| {
            (
                format!("{}:{}", m.host, m.port),
                (m.firmware, expected.nodes[m.rack].id.clone()),
            )
        })
        .collect();
    let racks: BTreeMap<String, String> = want
        .iter()
        .map(|(a, (_, r))| (a.clone(), r.clone()))
        .collect();

    let garbage_addr = format!("127.{k}.9.1:4028");
    let silent_addr = format!("127.{k}.9.2:4028");
    let _garbage = Peer::start(&garbage_addr, garbage);
    let _silent = Peer::start(&silent_addr, silent);
    let _sim = sim(&site, "steady", 1.0);

    // 8 x /25 (126 hosts each) + /28 (14) + /31 (2): 1,024 addresses.
    let mut nets: Vec<String> = (1..=8).map(|n| format!("127.{k}.{n}.0/25")).collect();
    nets.push(format!("127.{k}.9.0/28"));
    nets.push(format!("127.{k}.9.16/31"));
    let mut args = nets.clone();
    args.extend(["--timeout-ms".to_owned(), "1000".to_owned()]);
    let r = run_scan(&args, Duration::from_secs(120));
    assert_eq!(r.code, Some(0), "scan failed\n{}\n{}", r.stderr, r.stdout);
    assert!(
        r.stdout
            .contains(": 1024 addresses, 188 miners found, 2 answered but not identified."),
        "header\n{}",
        r.stdout
    );

    // Every miner, with its firmware and a model; nothing else.
    let found = entries(&r.stdout, "miners");
    let mut seen = BTreeSet::new();
    let mut macs = BTreeSet::new();
    for e in &found {
        let addr = e.table["address"].as_str().unwrap().to_owned();
        let fw = e.table["firmware"].as_str().unwrap();
        let (want_fw, _) = want
            .get(&addr)
            .unwrap_or_else(|| panic!("{addr} reported as a miner, but none is there"));
        assert_eq!(fw, want_fw.name(), "{addr}: firmware");
        assert_eq!(e.models.len(), 1, "{addr}: one model line");
        let model = &e.models[0];
        assert!(
            !model.is_empty() && model != "unknown",
            "{addr}: no model ({model})"
        );
        assert_eq!(e.table["rack"].as_str(), Some("RACK?"));
        assert!(
            e.table["nominal_w"].as_integer().unwrap() > 0,
            "{addr}: nominal_w"
        );
        assert!(seen.insert(addr.clone()), "{addr} listed twice");
        // The firmwares whose API gives a MAC (Whatsminer summary, LuxOS config, Avalon
        // version) have one, each its own.
        if matches!(
            want_fw,
            Firmware::Whatsminer | Firmware::Luxos | Firmware::Avalon
        ) {
            let block = r
                .stdout
                .split("[[miners]]")
                .find(|b| b.contains(&format!("address = \"{addr}\"")))
                .unwrap();
            let mac = block
                .split("mac: ")
                .nth(1)
                .unwrap_or_else(|| panic!("{addr}: no MAC\n{block}"))
                .get(..17)
                .unwrap()
                .to_owned();
            assert!(macs.insert(mac.clone()), "{addr}: MAC {mac} seen before");
        }
    }
    let missing: Vec<&String> = want.keys().filter(|a| !seen.contains(*a)).collect();
    assert!(missing.is_empty(), "not found: {missing:?}\n{}", r.stdout);
    let with_mac = want
        .values()
        .filter(|(f, _)| matches!(f, Firmware::Whatsminer | Firmware::Luxos | Firmware::Avalon))
        .count();
    assert_eq!(macs.len(), with_mac);

    // The two odd listeners are reported with their reason.
    let unidentified = r
        .stdout
        .split("# Answered, but not identified:")
        .nth(1)
        .unwrap();
    let line = |a: &str| {
        unidentified
            .lines()
            .find(|l| l.contains(a))
            .unwrap_or_else(|| panic!("{a} not reported\n{}", r.stdout))
            .to_owned()
    };
    assert!(
        line(&garbage_addr).contains("no cgminer API reply"),
        "{}",
        line(&garbage_addr)
    );
    assert!(
        line(&silent_addr).contains("did not answer `version` within 1000 ms"),
        "{}",
        line(&silent_addr)
    );

    // Pasted into the site in place of its miners: the placeholder fails by name ...
    let err = load(
        &site,
        "scanned-raw.toml",
        &merged_site(&site, &r.stdout, None),
    )
    .unwrap_err();
    assert!(err.contains("unknown rack `RACK?`"), "{err}");
    // ... and with the racks set, the site validates with the same 188 miners.
    let merged = load(
        &site,
        "scanned.toml",
        &merged_site(&site, &r.stdout, Some(&racks)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.miners.len(), 188);
    for m in &merged.miners {
        let addr = format!("{}:{}", m.host, m.port);
        assert_eq!(m.firmware, want[&addr].0, "{addr}");
        assert_eq!(merged.nodes[m.rack].id, want[&addr].1, "{addr}");
    }

    // --groups: the site's 16 runs of one firmware come back as 16 groups.
    let mut args = nets;
    args.push("--groups".to_owned());
    let g = run_scan(&args, Duration::from_secs(120));
    assert_eq!(
        g.code,
        Some(0),
        "scan --groups failed\n{}\n{}",
        g.stderr,
        g.stdout
    );
    let groups = entries(&g.stdout, "miner_groups");
    assert!(entries(&g.stdout, "miners").is_empty(), "{}", g.stdout);
    let mut got: Vec<(String, String, i64)> = groups
        .iter()
        .map(|e| {
            assert!(e.models.iter().all(|m| !m.is_empty() && m != "unknown"));
            (
                e.table["first_address"].as_str().unwrap().to_owned(),
                e.table["firmware"].as_str().unwrap().to_owned(),
                e.table["count"].as_integer().unwrap(),
            )
        })
        .collect();
    got.sort();
    let text = std::fs::read_to_string(&site.config).unwrap();
    let site_toml: toml::Table = toml::from_str(&text).unwrap();
    let mut want_groups: Vec<(String, String, i64)> = site_toml["miner_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["first_address"].as_str().unwrap().to_owned(),
                g["firmware"].as_str().unwrap().to_owned(),
                g["count"].as_integer().unwrap(),
            )
        })
        .collect();
    want_groups.sort();
    assert_eq!(got, want_groups);
    let merged = load(
        &site,
        "scanned-groups.toml",
        &merged_site(&site, &g.stdout, Some(&racks)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.miners.len(), 188);
}

#[test]
fn scan_refuses_too_many_addresses_and_bad_networks() {
    // Refused before any connection: no simulator needed.
    let r = run_scan(&["10.0.0.0/8".to_owned()], Duration::from_secs(30));
    assert_eq!(r.code, Some(64), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("16777214 addresses to scan, over the cap of 65536"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    let r = run_scan(
        &[
            "127.0.0.0/24".to_owned(),
            "--max-addresses".to_owned(),
            "100".to_owned(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(64), "{}", r.stderr);
    let r = run_scan(&["127.0.0.0/40".to_owned()], Duration::from_secs(30));
    assert_eq!(r.code, Some(64), "{}", r.stderr);
    assert!(
        r.stderr.contains("`127.0.0.0/40` is not a network"),
        "{}",
        r.stderr
    );
}
