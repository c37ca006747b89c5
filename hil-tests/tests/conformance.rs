//! Conformance (issue 21): two independent clients of the miner firmwares, pyasic (PyPI,
//! through hil-tests/peers/pyasic_conformance.py) and asic-rs (crates.io, in process),
//! against the simulated miner of each of the six firmwares, next to our own driver.
//!
//! For each firmware and peer: identify (make, model, firmware), read (hashrate, power
//! where the firmware reports it, fans, temperatures, mining state), curtail and resume
//! (the peer's own `stop_mining`/`resume_mining`, `pause`/`resume`) and its power target
//! call, each checked in the simulated miner's state and command log, and the peer's
//! figures against our driver's within the tolerances below. Where a peer cannot do
//! something against what the real firmware serves, the exact failure is asserted (each
//! case's `PeerExpect`, with the reason next to it), so docs/miners.md's table, written
//! from these expectations, stays true: a peer that starts working, or ours that stops,
//! fails the test.
//!
//! Loopback only (127.K.240.n, the miners on ports 4028 and 80 as real ones, which the
//! peers insist on), every peer call under a timeout, firmware delays 20x faster.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test: a panic is the report

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use asic_rs::MinerFactory;
use rackwarden_config::Firmware;
use rackwarden_hil_tests::{net_k, repo};
use rackwarden_protocols::miner::{DriverFactory, DriverOptions, MinerMode, MinerTelemetry};
use rackwarden_sim::miner::{MinerSim, SimMiner, SimMinerSpec, SimOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep, timeout};

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
        self.stdin.write_all(b"quit\n").await.ok();
        timeout(Duration::from_secs(5), self.child.wait())
            .await
            .ok();
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

// ------------------------------------------------------------------ expectations

/// What a peer is expected to do with one firmware. `None` in a figure: the peer reads
/// none (a known difference, asserted as such); the notes say why (docs/miners.md).
struct PeerExpect {
    /// pyasic: class name; asic-rs: unused.
    class: &'static str,
    make: &'static str,
    model: &'static str,
    firmware: &'static str,
    /// The read fails as a whole with an error containing this (the other figures unused).
    read_error: Option<&'static str>,
    hashrate: bool,
    power: Pw,
    fans: bool,
    /// The highest board and chip temperature the peer reports (degrees C, while mining;
    /// `None`: it reports none). Ours: `Case::ours_temps`.
    temps: (Option<f64>, Option<f64>),
    /// Its curtail reaches the miner and changes its state; `Err(text)`: the exact failure.
    curtail: Result<(), &'static str>,
    /// What the peer's curtail call returns when it reaches the miner.
    curtail_returns: bool,
    /// What the peer reads as the mining state once curtailed (`None`: not checked,
    /// curtail did not happen).
    mining_after_curtail: Option<bool>,
}

/// The power targets pyasic and asic-rs are asked for (W), within every simulated
/// miner's range and different, so that each one's effect shows.
const POWER_ASK_W: f64 = 2400.0;
const RS_POWER_ASK_W: f64 = 2300.0;

/// A peer's power-target call and its effect.
#[derive(Clone, Copy, Debug)]
struct Pt {
    /// The peer's answer as the test writes it (pyasic: `true`/`false` or `error: ...`;
    /// asic-rs: `Ok(true)`, `Err(...)`), a prefix of it.
    said: &'static str,
    /// The miner's power target afterwards; `None`: unchanged by the call.
    target_w: Option<f64>,
}

/// Checks a peer's power-target call against the miner.
fn check_power(who: &str, m: &SimMiner, before_w: f64, said: &str, e: Pt) {
    assert!(
        said.starts_with(e.said),
        "{who} power target: answered {said:?}, known {:?}",
        e.said
    );
    let want = e.target_w.unwrap_or(before_w);
    assert!(
        (m.target_w() - want).abs() < 1.0,
        "{who} power target: the miner holds {} W, expected {want} W",
        m.target_w()
    );
}

/// A peer's power reading.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Pw {
    /// Agrees with ours (the firmware reports power).
    Agree,
    /// Reads none although the firmware reports it.
    Missing,
    /// The firmware reports none (ours is an estimate), nor does the peer.
    NotReported,
    /// Reads this, not the power.
    Wrong(f64),
}

struct Case {
    fw: Firmware,
    n: u8,
    /// The simulator's command log after a curtail and a resume by each peer.
    py_cmds: &'static [&'static str],
    rs_cmds: &'static [&'static str],
    /// The miner's mode once curtailed.
    curtailed: MinerMode,
    /// Our highest board and chip temperature while mining.
    ours_temps: (Option<f64>, Option<f64>),
    /// Each peer's power target call (`POWER_ASK_W`).
    py_power: Pt,
    rs_power: Pt,
    pyasic: PeerExpect,
    asic_rs: PeerExpect,
}

// ------------------------------------------------------------------ checks

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn max_of(xs: impl IntoIterator<Item = f64>) -> Option<f64> {
    xs.into_iter().reduce(f64::max)
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn close(what: &str, peer: Option<f64>, ours: f64, tol: f64) {
    let p = peer.unwrap_or_else(|| panic!("{what}: the peer read none (ours {ours})"));
    assert!(
        (p - ours).abs() <= tol,
        "{what}: peer {p}, ours {ours} (tolerance {tol})"
    );
}

/// The peer's reading against ours (identification aside).
fn check_read(who: &str, e: &PeerExpect, r: &PeerReading, t: &MinerTelemetry) {
    let hr = t.hashrate_ths.expect("our hashrate");
    if e.hashrate {
        close(
            &format!("{who} hashrate TH/s"),
            r.hashrate_ths,
            hr,
            hr * HASHRATE_TOL,
        );
    } else {
        assert_eq!(
            r.hashrate_ths, None,
            "{who}: reads a hashrate now (known: none)"
        );
    }
    match e.power {
        Pw::Agree => {
            assert!(!t.power_estimated, "{who}: the firmware reports power");
            close(
                &format!("{who} power W"),
                r.power_w,
                t.power_w.unwrap(),
                POWER_TOL_W,
            );
        }
        Pw::Missing => {
            assert!(!t.power_estimated, "{who}: the firmware reports power");
            assert_eq!(r.power_w, None, "{who}: reads power now (known: none)");
        }
        Pw::NotReported => {
            assert!(t.power_estimated, "{who}: our power is an estimate here");
            assert_eq!(
                r.power_w, None,
                "{who}: reads power (the firmware reports none)"
            );
        }
        Pw::Wrong(w) => {
            assert_eq!(r.power_w, Some(w), "{who}: power (known wrong: {w})");
            assert!(
                (w - t.power_w.unwrap()).abs() > POWER_TOL_W,
                "{who}: power agrees now"
            );
        }
    }
    if e.fans {
        let mut ours = t.fans_rpm.clone();
        let mut peer = r.fans.clone();
        ours.sort_by(f64::total_cmp);
        peer.sort_by(f64::total_cmp);
        assert_eq!(peer, ours, "{who}: fans (rpm)");
    } else {
        assert!(
            r.fans.is_empty(),
            "{who}: reads fans now (known: none): {:?}",
            r.fans
        );
    }
    let peer = (
        max_of(r.board_temps.iter().copied()),
        max_of(r.chip_temps.iter().copied()),
    );
    assert_eq!(peer, e.temps, "{who}: highest (board, chip) temperature");
    assert_eq!(r.is_mining, Some(true), "{who}: mining state while mining");
}

/// A peer's reading, in plain numbers.
#[derive(Debug, Default)]
struct PeerReading {
    hashrate_ths: Option<f64>,
    power_w: Option<f64>,
    fans: Vec<f64>,
    board_temps: Vec<f64>,
    chip_temps: Vec<f64>,
    is_mining: Option<bool>,
}

fn py_reading(v: &Value) -> PeerReading {
    let boards = v["boards"].as_array().cloned().unwrap_or_default();
    PeerReading {
        hashrate_ths: f(&v["hashrate_ths"]),
        power_w: f(&v["wattage"]),
        fans: nums(&v["fans"]),
        board_temps: boards.iter().filter_map(|b| b["temp"].as_f64()).collect(),
        chip_temps: boards
            .iter()
            .filter_map(|b| b["chip_temp"].as_f64())
            .collect(),
        is_mining: v["is_mining"].as_bool(),
    }
}

fn rs_reading(v: &Value) -> PeerReading {
    PeerReading {
        hashrate_ths: f(&v["hashrate_ths"]),
        power_w: f(&v["wattage"]),
        fans: nums(&v["fans"]),
        board_temps: nums(&v["board_temps"]),
        chip_temps: nums(&v["chip_temps"]),
        is_mining: v["is_mining"].as_bool(),
    }
}

/// Firmware delays at `SCALE`, and a margin: the ramp to idle or back is over.
async fn settle(fw: Firmware) {
    let (sleep_s, wake_s) = rackwarden_sim::miner::firmware_delays_s(fw);
    sleep(Duration::from_secs_f64(sleep_s.max(wake_s) / SCALE + 0.5)).await;
}

/// Our driver after the peer's curtail: the miner is asleep, and we see it.
async fn ours_see_curtailed(m: &SimMiner, want: MinerMode) {
    settle(m.spec.firmware).await;
    assert_eq!(m.mode(), want, "simulated miner's mode once curtailed");
    let t = ours(m).await;
    assert!(
        matches!(t.mode, MinerMode::Sleeping | MinerMode::Paused),
        "our driver reads {:?} after the peer's curtail",
        t.mode
    );
    assert!(
        t.power_w.unwrap() < 100.0,
        "power after the peer's curtail: {t:?}"
    );
}

/// The cases run one at a time: each starts a pyasic process, and two cores share them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// Long on purpose: one firmware's checks against both peers, in order.
#[allow(clippy::too_many_lines)]
async fn run_case(c: Case) {
    let _g = ONE_AT_A_TIME.lock().await;
    let fw = c.fw.name();
    let (sim, m) = start(c.fw, c.n).await;
    let ipt = m.spec.api_addr.ip().to_string();

    // Ours: the reference reading, checked against the simulator's truth.
    let t = ours(&m).await;
    let truth_ths = m.spec.nominal_w / m.spec.efficiency_j_th;
    close(
        &format!("{fw} our hashrate"),
        t.hashrate_ths,
        truth_ths,
        truth_ths * HASHRATE_TOL,
    );
    close(
        &format!("{fw} our power"),
        t.power_w,
        m.power_w(),
        POWER_TOL_W,
    );
    assert_eq!(t.mode, MinerMode::Mining, "{fw}: our mode");
    assert!(!t.fans_rpm.is_empty(), "{fw}: our fans {t:?}");
    let ours_t = (
        max_of(t.board_temps_c.iter().copied()),
        max_of(t.chip_temps_c.iter().copied()),
    );
    assert_eq!(
        ours_t, c.ours_temps,
        "{fw}: our highest (board, chip) temperature"
    );

    // pyasic.
    if skip_peers() {
        eprintln!("RACKWARDEN_SKIP_PEERS=1: pyasic part of {fw} skipped");
    } else {
        let mut py = Py::start().await;
        let e = &c.pyasic;
        let id = py.call(&format!("identify {ipt}")).await;
        assert_eq!(id["ok"], json!(true), "{fw} pyasic identify: {id}");
        let got = (
            id["class"].as_str(),
            id["make"].as_str(),
            id["model"].as_str(),
            id["firmware"].as_str(),
        );
        let want = (Some(e.class), Some(e.make), Some(e.model), Some(e.firmware));
        if c.fw == Firmware::Vnish && got != want {
            // pyasic races its web probe (AnthillOS: Vnish) against its `version` probe
            // (the Type names an Antminer, and pyasic tests for ANTMINER before VNISH):
            // either answer can win. The other one is exactly stock Antminer's.
            assert_eq!(
                got,
                (
                    Some("BMMinerS19Pro"),
                    Some("AntMiner"),
                    Some("S19 Pro"),
                    Some("Stock")
                ),
                "{fw} pyasic identification"
            );
            let u = py.call(&format!("use {ipt} {}", e.class)).await;
            assert_eq!(u["ok"], json!(true), "{u}");
        } else {
            assert_eq!(got, want, "{fw} pyasic identification");
        }
        let rd = py.call(&format!("read {ipt}")).await;
        if let Some(err) = e.read_error {
            assert_eq!(rd["ok"], json!(false), "{fw} pyasic read works now: {rd}");
            let msg = rd["error"].as_str().unwrap_or("");
            assert!(msg.contains(err), "{fw} pyasic read fails otherwise: {msg}");
        } else {
            assert_eq!(rd["ok"], json!(true), "{fw} pyasic read: {rd}");
            check_read(&format!("{fw} pyasic"), e, &py_reading(&rd), &t);
        }
        let st = py.call(&format!("stop {ipt}")).await;
        match e.curtail {
            Ok(()) => {
                assert_eq!(
                    st,
                    json!({"ok": true, "result": e.curtail_returns}),
                    "{fw} pyasic stop_mining"
                );
                ours_see_curtailed(&m, c.curtailed).await;
                if let Some(want) = e.mining_after_curtail {
                    let rd = py.call(&format!("read {ipt}")).await;
                    assert_eq!(
                        rd["is_mining"].as_bool(),
                        Some(want),
                        "{fw} pyasic mining state once curtailed: {rd}"
                    );
                }
                let rs = py.call(&format!("resume {ipt}")).await;
                assert_eq!(
                    rs,
                    json!({"ok": true, "result": e.curtail_returns}),
                    "{fw} pyasic resume_mining"
                );
                assert_eq!(
                    m.mode(),
                    MinerMode::Mining,
                    "{fw}: mining again after pyasic's resume"
                );
                assert_eq!(m.commands(), c.py_cmds, "{fw}: what pyasic sent");
            }
            Err(text) => {
                assert_eq!(
                    st["ok"],
                    json!(false),
                    "{fw} pyasic stop_mining works now: {st}"
                );
                let msg = st["error"].as_str().unwrap_or("");
                assert!(
                    msg.contains(text),
                    "{fw} pyasic stop_mining fails otherwise: {msg}"
                );
                assert_eq!(
                    m.mode(),
                    MinerMode::Mining,
                    "{fw}: pyasic's failed stop changed nothing"
                );
                assert!(
                    m.commands().is_empty(),
                    "{fw}: pyasic's failed stop reached the miner"
                );
            }
        }
        let before_w = m.target_w();
        let pw = py.call(&format!("power {ipt} {POWER_ASK_W:.0}")).await;
        let said = if pw["ok"] == json!(true) {
            pw["result"].to_string()
        } else {
            format!("error: {}", pw["error"].as_str().unwrap_or(""))
        };
        settle(c.fw).await;
        check_power(&format!("{fw} pyasic"), &m, before_w, &said, c.py_power);
        py.quit().await;
        settle(c.fw).await;
    }

    // asic-rs, against our reading of the miner as pyasic left it (its power target).
    let t = ours(&m).await;
    let before = m.commands().len();
    let e = &c.asic_rs;
    let a = asic_rs_miner(&m)
        .await
        .unwrap_or_else(|err| panic!("{fw} asic-rs identify: {err}"));
    let d = timeout(STEP, a.get_data())
        .await
        .expect("asic-rs get_data timed out");
    let v = asic_rs_reading(&d);
    assert_eq!(
        (
            v["make"].as_str(),
            v["model"].as_str(),
            v["firmware"].as_str()
        ),
        (Some(e.make), Some(e.model), Some(e.firmware)),
        "{fw} asic-rs identification"
    );
    check_read(&format!("{fw} asic-rs"), e, &rs_reading(&v), &t);
    let p = timeout(STEP, a.pause(None))
        .await
        .expect("asic-rs pause timed out");
    match e.curtail {
        Ok(()) => {
            assert_eq!(
                p.map_err(|e| e.to_string()),
                Ok(e.curtail_returns),
                "{fw} asic-rs pause"
            );
            ours_see_curtailed(&m, c.curtailed).await;
            if let Some(want) = e.mining_after_curtail {
                let d = timeout(STEP, a.get_data())
                    .await
                    .expect("asic-rs get_data timed out");
                assert_eq!(
                    d.is_mining, want,
                    "{fw} asic-rs mining state once curtailed"
                );
            }
            let r = timeout(STEP, a.resume(None))
                .await
                .expect("asic-rs resume timed out");
            assert_eq!(
                r.map_err(|e| e.to_string()),
                Ok(e.curtail_returns),
                "{fw} asic-rs resume"
            );
            assert_eq!(
                m.mode(),
                MinerMode::Mining,
                "{fw}: mining again after asic-rs's resume"
            );
            assert_eq!(
                &m.commands()[before..],
                c.rs_cmds,
                "{fw}: what asic-rs sent"
            );
        }
        Err(text) => {
            // The call "succeeds" or fails, but nothing reaches the miner.
            let said = format!("{p:?}");
            assert!(
                said.contains(text),
                "{fw} asic-rs pause answers otherwise: {said}"
            );
            settle(c.fw).await;
            assert_eq!(
                m.mode(),
                MinerMode::Mining,
                "{fw}: asic-rs's pause changed the miner now"
            );
            assert_eq!(
                m.commands().len(),
                before,
                "{fw}: asic-rs's pause reached the miner now"
            );
        }
    }
    let before_w = m.target_w();
    let pw = timeout(
        STEP,
        a.set_power_limit(measurements::Power::from_watts(RS_POWER_ASK_W)),
    )
    .await
    .expect("asic-rs set_power_limit timed out");
    let said = match pw {
        Ok(b) => format!("Ok({b})"),
        Err(e) => format!("Err({e})"),
    };
    settle(c.fw).await;
    check_power(&format!("{fw} asic-rs"), &m, before_w, &said, c.rs_power);
    sim.shutdown().await;
}

fn skip_peers() -> bool {
    std::env::var("RACKWARDEN_SKIP_PEERS").is_ok_and(|v| v == "1")
}

const OK: Result<(), &str> = Ok(());

#[allow(clippy::too_many_arguments)]
fn peer(
    class: &'static str,
    (make, model, firmware): (&'static str, &'static str, &'static str),
    read_error: Option<&'static str>,
    hashrate: bool,
    power: Pw,
    fans: bool,
    temps: (Option<f64>, Option<f64>),
    curtail: Result<(), &'static str>,
    curtail_returns: bool,
    mining_after_curtail: Option<bool>,
) -> PeerExpect {
    PeerExpect {
        class,
        make,
        model,
        firmware,
        read_error,
        hashrate,
        power,
        fans,
        temps,
        curtail,
        curtail_returns,
        mining_after_curtail,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn braiins() {
    run_case(Case {
        fw: Firmware::Braiins,
        n: 1,
        py_cmds: &[],
        rs_cmds: &["pause", "resume"],
        curtailed: MinerMode::Paused,
        py_power: Pt {
            said: "error: ConnectionRefusedError",
            target_w: None,
        },
        rs_power: Pt {
            said: "Ok(true)",
            target_w: Some(RS_POWER_ASK_W),
        },
        ours_temps: (Some(85.875), Some(108.9375)),
        // pyasic 0.79 reads and curtails Braiins OS through its gRPC API (port 50051); the
        // simulator serves the cgminer API and the REST API (25.07), not gRPC.
        pyasic: peer(
            "BOSMinerS19Pro",
            ("AntMiner", "S19 Pro", "BOS+"),
            Some("Failed to call expected_hashrate"),
            false,
            Pw::Missing,
            false,
            (None, None),
            Err("Connect call failed"),
            false,
            None,
        ),
        // asic-rs 0.8.6 through the REST API of Braiins OS 25.07.
        asic_rs: peer(
            "",
            ("Antminer", "S19Pro", "Braiins"),
            None,
            true,
            Pw::Agree,
            true,
            (Some(85.875), Some(108.9375)),
            OK,
            true,
            Some(false),
        ),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn luxos() {
    run_case(Case {
        fw: Firmware::Luxos,
        n: 2,
        py_cmds: &["curtail sleep", "curtail wakeup"],
        rs_cmds: &["curtail sleep", "curtail wakeup"],
        curtailed: MinerMode::Sleeping,
        // The simulator does not serve LuxOS `groups` (pyasic's get_config needs it).
        py_power: Pt {
            said: "error: KeyError: 'GROUPS'",
            target_w: None,
        },
        rs_power: Pt {
            said: "Err(Setting power limit is not supported",
            target_w: None,
        },
        ours_temps: (Some(73.0), Some(78.0)),
        // Neither peer reads LuxOS's sleep (config CurtailMode): mining after a curtail.
        pyasic: peer(
            "LUXMinerS19kPro",
            ("AntMiner", "S19k Pro", "LuxOS"),
            None,
            true,
            Pw::Agree,
            true,
            (Some(73.0), Some(78.0)),
            OK,
            true,
            Some(true),
        ),
        // asic-rs: the `temps` board sensors (73) as the chip temperature.
        asic_rs: peer(
            "",
            ("Antminer", "S19KPro", "LuxOS"),
            None,
            true,
            Pw::Agree,
            true,
            (Some(73.0), Some(73.0)),
            OK,
            true,
            Some(true),
        ),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsminer() {
    run_case(Case {
        fw: Firmware::Whatsminer,
        n: 3,
        py_cmds: &["power_off", "power_on"],
        rs_cmds: &[],
        curtailed: MinerMode::Sleeping,
        // Ours reads `summary` only: Chip Temp Max; the boards' `Temperature` is in `devs`.
        py_power: Pt {
            said: "true",
            target_w: Some(POWER_ASK_W),
        },
        // asic-rs: refused (`command` for `cmd`), the target stays.
        rs_power: Pt {
            said: "Ok(false)",
            target_w: None,
        },
        ours_temps: (None, Some(81.0)),
        // pyasic: board temperature from devs, chip temperature the average (72.5).
        pyasic: peer(
            "BTMinerM30SPlusVE40",
            ("WhatsMiner", "M30S+ VE40", "Stock"),
            None,
            true,
            Pw::Agree,
            true,
            (Some(65.0), Some(72.0)),
            OK,
            true,
            Some(false),
        ),
        // asic-rs 0.8.6: `summary` unread (btminer's trailing `,}` not repaired): no
        // hashrate, power or fans; pause sends `command` where API v2's privileged commands
        // take `cmd`, ignores the refusal and returns Ok(true).
        asic_rs: peer(
            "",
            ("Whatsminer", "M30SPlusVE40", "WhatsMiner Stock"),
            None,
            false,
            Pw::Missing,
            false,
            (Some(65.0), Some(81.0)),
            Err("Ok(true)"),
            true,
            None,
        ),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vnish() {
    run_case(Case {
        fw: Firmware::Vnish,
        n: 4,
        py_cmds: &[],
        rs_cmds: &["stop", "start"],
        curtailed: MinerMode::Sleeping,
        // pyasic 0.79's MiningModeConfig.from_vnish never finds the preset mode (its
        // `cls.preset.from_vnish` is the enum's own method): false, nothing sent.
        py_power: Pt {
            said: "false",
            target_w: None,
        },
        // asic-rs picks the largest tuned preset not above the ask, as ours does.
        rs_power: Pt {
            said: "Ok(true)",
            target_w: Some(2283.0),
        },
        ours_temps: (Some(73.0), Some(78.0)),
        // pyasic 0.79: power from `power_usage`, which Vnish 1.2.6's API document defines as
        // the efficiency (J/TH); board and chip temperatures (cgminer `stats`) swapped;
        // mining/stop sends the token without the Bearer scheme the document requires.
        pyasic: peer(
            "VNishS19Pro",
            ("AntMiner", "S19 Pro", "VNish"),
            None,
            true,
            Pw::Wrong(30.0),
            true,
            (Some(78.0), Some(73.0)),
            Err("Failed to send command"),
            false,
            None,
        ),
        asic_rs: peer(
            "",
            ("Antminer", "S19Pro", "VNish"),
            None,
            true,
            Pw::Agree,
            true,
            (Some(73.0), Some(78.0)),
            OK,
            true,
            Some(false),
        ),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn antminer_stock() {
    run_case(Case {
        fw: Firmware::AntminerStock,
        n: 5,
        py_cmds: &["miner-mode 1", "miner-mode 0"],
        rs_cmds: &["miner-mode 1", "miner-mode 0"],
        curtailed: MinerMode::Sleeping,
        py_power: Pt {
            said: "false",
            target_w: None,
        },
        rs_power: Pt {
            said: "Err(Setting power limit is not supported",
            target_w: None,
        },
        ours_temps: (Some(73.0), Some(78.0)),
        pyasic: peer(
            "BMMinerS19Pro",
            ("AntMiner", "S19 Pro", "Stock"),
            None,
            true,
            Pw::NotReported,
            true,
            (Some(73.0), Some(78.0)),
            OK,
            true,
            Some(false),
        ),
        // asic-rs 0.8.6 does not repair bmminer's missing comma in `stats` (`}{`): no
        // fans, no temperatures.
        asic_rs: peer(
            "",
            ("Antminer", "S19Pro", "AntMiner Stock"),
            None,
            true,
            Pw::NotReported,
            false,
            (None, None),
            OK,
            true,
            Some(false),
        ),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avalon() {
    run_case(Case {
        fw: Firmware::Avalon,
        n: 6,
        py_cmds: &["ascset softoff", "ascset softon"],
        rs_cmds: &["ascset softoff", "ascset softon"],
        curtailed: MinerMode::Sleeping,
        py_power: Pt {
            said: "false",
            target_w: None,
        },
        rs_power: Pt {
            said: "Ok(false)",
            target_w: None,
        },
        ours_temps: (Some(78.0), Some(91.0)),
        // pyasic 0.79 reads power only from WALLPOWER[], which the A1246's MM string lacks
        // (its PS[] carries it), the boards' MTmax as board and chip temperature, and no
        // mining state (SoftOFF).
        pyasic: peer(
            "CGMinerAvalon1246",
            ("AvalonMiner", "Avalon 1246", "Stock"),
            None,
            true,
            Pw::Missing,
            true,
            (Some(91.0), Some(91.0)),
            OK,
            true,
            Some(true),
        ),
        // asic-rs 0.8.6 takes only `S`/"ASC 0 set OK" as success; the firmware answers
        // `I`/118 "success softoff" (asic-rs's own capture): the miner sleeps and wakes,
        // pause and resume return false; nor does it read SoftOFF as a mining state.
        asic_rs: peer(
            "",
            ("Avalonminer", "Avalon1246", "AvalonMiner Stock"),
            None,
            true,
            Pw::Agree,
            true,
            (Some(78.0), Some(91.0)),
            OK,
            false,
            Some(true),
        ),
    })
    .await;
}
