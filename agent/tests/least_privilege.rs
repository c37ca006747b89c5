//! Least privilege, one test per rule of issue 10 (docs/security.md):
//! - a write to a point that is not allowlisted (device without `control = true`, point
//!   not in `write_points`, point the profile does not mark writable) is refused before
//!   the wire, and the control core never plans one;
//! - a secret (miner password, GPU node token) never appears in logs, errors or Debug
//!   output, whether the exchange succeeds or is refused;
//! - secret files readable by others are warned about at load (the site file, which
//!   names secrets and never holds one, is not);
//! - HTTP listens on loopback unless the site file says otherwise.
//!
//! The logs of the whole binary go to one global subscriber at TRACE level, so that a
//! secret logged from any thread (blocking pool, spawned tasks) is caught.

// A panic is the failure report.
#![allow(clippy::unwrap_used)]

mod control_support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use rackwarden::control::{Device, Intent, Lever};
use rackwarden_config::Site;
use rackwarden_protocols::gpu::node::{self, GpuNodeClient, Token};
use rackwarden_protocols::gpu::nvml::{FakeGpu, FakeNvml, NvmlSource};
use rackwarden_protocols::gpu::{GpuSource, GpuTarget};
use rackwarden_protocols::miner::{DriverFactory, DriverOptions};
use rackwarden_protocols::modbus::{ModbusError, ModbusPool};
use rackwarden_sim::miner::{MinerSim, SimMinerSpec, SimOptions};
use rackwarden_sim::modbus::Simulator;

/// A small site: one feed, one mixed rack, a PDU that may only be read (`pdu-ro`), one
/// with `control = true` but nothing allowlisted (`pdu-nolist`) and one allowed to switch
/// outlets (`pdu-rw`), all on one simulated Modbus server (units 1, 2, 3).
const SITE: &str = r#"
[site]
id = "least-privilege"

[agent]
http_token_file = "http.token"

[[feeds]]
id = "feed"
rating_kw = 200
meters = [{ device = "pdu-ro" }]

[[racks]]
id = "rack"
kind = "mixed"
parents = ["feed"]
rating_kw = 20
rated_max_kw = 8
meters = [{ device = "pdu-rw" }]

[[miners]]
id = "m-outlet"
address = "127.0.0.1:4028"
firmware = "antminer_stock"
http_port = 8080
rack = "rack"
nominal_w = 3000
credentials = { username = "root", password_file = "miner.pw" }
outlet = { device = "OUTLET_PDU", outlet = 1 }

[[miners]]
id = "m-plain"
address = "127.0.0.2:4028"
firmware = "braiins"
rack = "rack"
nominal_w = 3000
min_w = 1500

[[gpu_nodes]]
id = "gn"
rack = "rack"
source = "remote"
address = "127.0.0.1:17001"
token_file = "gpu.token"
gpus = 8
gpu_max_w = 700

[[modbus_devices]]
id = "pdu-ro"
transport = "tcp"
host = "127.0.0.1"
port = PORT
unit_id = 1
profile = "generic-pdu"
timeout_ms = 1000

[[modbus_devices]]
id = "pdu-nolist"
transport = "tcp"
host = "127.0.0.1"
port = PORT
unit_id = 2
profile = "generic-pdu"
timeout_ms = 1000
control = true

[[modbus_devices]]
id = "pdu-rw"
transport = "tcp"
host = "127.0.0.1"
port = PORT
unit_id = 3
profile = "generic-pdu"
timeout_ms = 1000
control = true
write_points = ["outlet_switch"]
"#;

fn site_text(port: u16, outlet_pdu: &str) -> String {
    SITE.replace("PORT", &port.to_string())
        .replace("OUTLET_PDU", outlet_pdu)
}

fn load(text: &str) -> Site {
    rackwarden_config::load_str(text, Path::new("lp.toml"), Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn device(site: &Site, id: &str) -> usize {
    site.modbus_devices.iter().position(|d| d.id == id).unwrap()
}

// ---- Log capture: one global subscriber for the binary. ----

#[derive(Clone)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = Buf(buf.clone());
        let sub = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_global_default(sub).unwrap();
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// An error with its whole `source()` chain, as the runtime logs it.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = format!("{e} / {e:?}");
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(" / {c} / {c:?}"));
        cur = c.source();
    }
    s
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rw-lp-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[cfg(unix)]
fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---- 1. Writes only to allowlisted points on control = true devices. ----

#[tokio::test]
async fn write_to_a_point_not_allowlisted_is_refused_before_the_wire() {
    let profile = rackwarden_config::profile::builtin("generic-pdu").unwrap();
    let sim = Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        rackwarden_sim::modbus::Framing::Tcp,
        vec![(1, profile.clone()), (2, profile.clone()), (3, profile)],
    )
    .await
    .unwrap();
    let site = load(&site_text(sim.local_addr().port(), "pdu-rw"));
    let pool = ModbusPool::new(&site);
    let refused = [
        // Not a control device.
        (device(&site, "pdu-ro"), "outlet_switch", "control = true"),
        // A control device, the point not allowlisted.
        (device(&site, "pdu-nolist"), "outlet_switch", "write_points"),
        // Allowlisted device, a read-only point of its profile.
        (device(&site, "pdu-rw"), "outlet_state", "writable"),
        (device(&site, "pdu-rw"), "inlet_power_kw", "writable"),
    ];
    for (d, point, why) in refused {
        let e = tokio::time::timeout(Duration::from_secs(5), pool.write_point(d, point, 1, 0.0))
            .await
            .unwrap()
            .err()
            .unwrap_or_else(|| panic!("write to {point} on device {d} accepted"));
        assert!(
            matches!(e, ModbusError::WriteRefused { .. }),
            "{point} on {d}: {e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("before the wire") && msg.contains(why),
            "{msg}"
        );
    }
    // Nothing reached the device: no write, not even a request.
    assert!(sim.writes().is_empty(), "{:?}", sim.writes());
    assert_eq!(sim.requests(), 0);
    // The allowlisted write goes through (the refusals above are not a broken pool).
    tokio::time::timeout(
        Duration::from_secs(5),
        pool.write_point(device(&site, "pdu-rw"), "outlet_switch", 1, 0.0),
    )
    .await
    .unwrap()
    .unwrap();
    let w = sim.writes();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!((w[0].unit, w[0].index, w[0].value), (3, 1, 0.0));
    sim.shutdown().await;
}

#[test]
fn outlets_of_a_pdu_not_allowlisted_are_refused_by_validation() {
    let text = site_text(15_099, "pdu-nolist");
    let e = rackwarden_config::load_str(&text, Path::new("lp.toml"), Path::new("."))
        .expect_err("outlet on a PDU without outlet_switch in write_points accepted");
    assert!(e.to_string().contains("write_points"), "{e}");
}

/// The control core plans no outlet switch where the PDU may not be written, even in an
/// emergency with a miner that ignores its API (where it would, on an allowlisted PDU).
#[test]
fn decide_switches_outlets_only_on_allowlisted_pdus() {
    for (allowed, wants_outlet) in [(true, true), (false, false)] {
        let mut text = site_text(15_099, "pdu-rw");
        if !allowed {
            // Same site, the PDU's write permission taken away (and the outlet with it:
            // validation would refuse an outlet on it).
            text = text
                .replace("write_points = [\"outlet_switch\"]\n", "")
                .replace("outlet = { device = \"pdu-rw\", outlet = 1 }\n", "");
        }
        let mut sim = control_support::Sim::new(load(&text), false);
        sim.keep_steps = false;
        let m = sim.miner("m-outlet");
        sim.miners[m].ignores = true;
        let mut outlet_offs = 0;
        let mut emergency = false;
        for t in 0..180u64 {
            // A surge: far above the rack's budget from t = 70 s.
            if t == 70 {
                let r = sim.node("rack");
                sim.other_kw[r] = 15.0;
            }
            let step = sim.tick();
            emergency |= step
                .plan
                .alerts
                .iter()
                .any(|a| a.name() == "power.budget.emergency");
            for a in &step.plan.actions {
                if matches!(a.lever, Lever::OutletOff | Lever::OutletOn) {
                    assert!(allowed, "{} switched on a read-only PDU", a.device_id);
                    assert_eq!(a.device, Device::Miner(m));
                    outlet_offs += 1;
                }
            }
        }
        assert!(emergency, "the surge never made an emergency");
        assert_eq!(outlet_offs > 0, wants_outlet, "allowed={allowed}");
        if !allowed {
            // The miner that ignores its API is still asked (sleep), never switched off.
            assert_ne!(sim.state.miners[m].intent, Intent::OutletOff);
        }
    }
}

// ---- 2. Secrets never in logs, errors or Debug output. ----

const MINER_PW: &str = "pw-7c1f9e-never-log-me";
const WRONG_PW: &str = "pw-wrong-2b8d4a-never-log-me";
const GPU_TOKEN: &str = "tok-41aa0c-never-log-me";
const WRONG_TOKEN: &str = "tok-wrong-93be17-never-log-me";

fn assert_secret_free(what: &str, text: &str) {
    for s in [MINER_PW, WRONG_PW, GPU_TOKEN, WRONG_TOKEN] {
        assert!(!text.contains(s), "{what} shows a secret: {text}");
    }
}

#[tokio::test]
async fn miner_passwords_never_appear_in_logs_or_errors() {
    logs();
    let dir = temp_dir("miner");
    let good = dir.join("good.pw");
    let bad = dir.join("bad.pw");
    std::fs::write(&good, format!("{MINER_PW}\n")).unwrap();
    std::fs::write(&bad, format!("{WRONG_PW}\n")).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut specs = Vec::new();
    for (i, fw) in [
        rackwarden_config::Firmware::Whatsminer,
        rackwarden_config::Firmware::Vnish,
        rackwarden_config::Firmware::AntminerStock,
        rackwarden_config::Firmware::Luxos,
    ]
    .into_iter()
    .enumerate()
    {
        let http = fw.needs_http().then_some(any);
        let mut s = SimMinerSpec::new(format!("m{i}"), fw, any, http);
        s.password = MINER_PW.to_owned();
        specs.push(s);
    }
    let sim = MinerSim::start(specs, SimOptions { time_scale: 100.0 })
        .await
        .unwrap();
    let opts = DriverOptions {
        connect_timeout: Duration::from_secs(2),
        reply_timeout: Duration::from_secs(3),
        http_timeout: Duration::from_secs(5),
        ..DriverOptions::default()
    };
    let factory = DriverFactory::new(opts).unwrap();
    let mut outcomes = String::new();
    for m in sim.miners() {
        for pw in [&good, &bad] {
            let mut cfg = m.to_config();
            cfg.credentials = Some(rackwarden_config::Credentials {
                username: None,
                password_env: None,
                password_file: Some(pw.display().to_string()),
            });
            assert_secret_free("miner config Debug", &format!("{cfg:?}"));
            let d = factory.build(&cfg).unwrap();
            let calls: [(&str, _); 4] = [
                ("poll", async { d.poll().await.map(|_| ()) }.boxed_local()),
                (
                    "target",
                    async { d.set_power_target(2500.0).await.map(|_| ()) }.boxed_local(),
                ),
                ("sleep", async { d.sleep().await.map(|_| ()) }.boxed_local()),
                ("wake", async { d.wake().await.map(|_| ()) }.boxed_local()),
            ];
            for (op, f) in calls {
                match tokio::time::timeout(Duration::from_secs(10), f).await {
                    Ok(Ok(())) => outcomes.push_str(&format!("{} {op} ok\n", d.id())),
                    Ok(Err(e)) => {
                        let c = chain(&e);
                        assert_secret_free("miner error", &c);
                        tracing::warn!(device = d.id(), error = %c, "miner call failed");
                        outcomes.push_str(&format!("{} {op} err\n", d.id()));
                    }
                    Err(_) => panic!("{} {op} hung", d.id()),
                }
            }
        }
    }
    sim.shutdown().await;
    // The exchanges happened (with the right password the commands go through, with the
    // wrong one the firmwares that check it refuse), and nothing printed a password.
    assert!(outcomes.contains(" ok\n"), "{outcomes}");
    assert!(outcomes.contains(" err\n"), "{outcomes}");
    let logs = log_text();
    assert!(!logs.is_empty());
    assert_secret_free("logs", &logs);
}

#[tokio::test]
async fn gpu_node_tokens_never_appear_in_logs_or_errors() {
    logs();
    let nvml = FakeNvml::new(vec![FakeGpu::h100(0, 300), FakeGpu::h100(1, 350)]);
    let source: Arc<dyn GpuSource> = Arc::new(NvmlSource::with_backend("gn", nvml));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let server = tokio::spawn(node::serve_with_shutdown(
        listener,
        source,
        Token::new(GPU_TOKEN),
        async move { s.cancelled().await },
    ));
    let timeout = Duration::from_secs(3);
    let good = GpuNodeClient::new("gn", addr, Token::new(GPU_TOKEN), timeout).unwrap();
    let bad = GpuNodeClient::new("gn", addr, Token::new(WRONG_TOKEN), timeout).unwrap();
    assert_secret_free("client Debug", &format!("{good:?} {bad:?}"));
    let r = good.read().await.unwrap();
    assert_eq!(r.gpus.len(), 2);
    good.set_power_limit(GpuTarget::All, 500.0).await.unwrap();
    let e = bad.read().await.expect_err("wrong token accepted");
    let c = chain(&e);
    assert!(
        c.contains("401") || c.to_lowercase().contains("unauthor"),
        "{c}"
    );
    assert_secret_free("gpu error", &c);
    let e = bad
        .set_power_limit(GpuTarget::All, 300.0)
        .await
        .expect_err("wrong token capped GPUs");
    let c = chain(&e);
    tracing::warn!(error = %c, "gpu call failed");
    assert_secret_free("gpu error", &c);
    // The refused cap changed nothing: both GPUs still at the good client's 500 W.
    let r = good.read().await.unwrap();
    assert!(
        r.gpus
            .iter()
            .all(|g| g.enforced_limit_w.is_some_and(|w| (w - 500.0).abs() < 1e-6)),
        "{r:?}"
    );
    stop.cancel();
    server.await.unwrap().unwrap();
    let logs = log_text();
    assert!(logs.contains("gpu node request refused"), "{logs}");
    assert_secret_free("logs", &logs);
}

// ---- 3. Files readable by others are warned about. ----

#[cfg(unix)]
#[test]
fn secret_files_readable_by_others_are_warned_about_and_the_site_file_is_not() {
    logs();
    let dir = temp_dir("perm");
    let site = dir.join("site.toml");
    std::fs::write(&site, site_text(15_099, "pdu-rw")).unwrap();
    let (pw, tok, http) = (
        dir.join("miner.pw"),
        dir.join("gpu.token"),
        dir.join("http.token"),
    );
    for p in [&pw, &tok, &http] {
        std::fs::write(p, "s3cret\n").unwrap();
    }
    for p in [&site, &pw, &tok, &http] {
        chmod(p, 0o600);
    }
    let loaded = rackwarden_config::load(&site).unwrap();
    assert!(
        rackwarden_config::exposed_files(&site, &loaded, &dir).is_empty(),
        "0600 files reported"
    );
    chmod(&site, 0o644);
    chmod(&tok, 0o640);
    chmod(&http, 0o604);
    let loaded = rackwarden_config::load(&site).unwrap();
    let exposed = rackwarden_config::exposed_files(&site, &loaded, &dir);
    let mut got: Vec<(String, &str, u32)> = exposed
        .iter()
        .map(|e| {
            (
                e.path.file_name().unwrap().to_string_lossy().into_owned(),
                e.what,
                e.mode,
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("gpu.token".to_owned(), "gpu node token file", 0o640),
            ("http.token".to_owned(), "http token file", 0o604),
        ]
    );
    // `load` logged each one, with its path and mode.
    let logs = log_text();
    for (name, mode) in [("gpu.token", "640"), ("http.token", "604")] {
        let line = logs
            .lines()
            .find(|l| l.contains("readable by group or others") && l.contains(name))
            .unwrap_or_else(|| panic!("no warning for {name}: {logs}"));
        assert!(line.contains("WARN") && line.contains(mode), "{line}");
    }
    // The 0600 password file and the site file (it names secrets, never holds one) are
    // not warned about, though the site file is 0644.
    for quiet in ["miner.pw", "site.toml"] {
        assert!(
            !logs
                .lines()
                .any(|l| l.contains("readable by group or others") && l.contains(quiet)),
            "{quiet} warned about: {logs}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ---- 4. HTTP on loopback unless configured. ----

#[test]
fn http_listens_on_loopback_unless_configured() {
    let default = load(&site_text(15_099, "pdu-rw"));
    let addr: SocketAddr = default.agent.http_listen.parse().unwrap();
    assert!(addr.ip().is_loopback(), "default listen address {addr}");
    let text = site_text(15_099, "pdu-rw")
        .replace("[agent]\n", "[agent]\nhttp_listen = \"0.0.0.0:9180\"\n");
    let open = load(&text);
    let addr: SocketAddr = open.agent.http_listen.parse().unwrap();
    assert!(
        addr.ip().is_unspecified(),
        "configured address kept: {addr}"
    );
}
