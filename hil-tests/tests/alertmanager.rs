//! Alert delivery to a real Alertmanager (issue 18): Debian's `prometheus-alertmanager`
//! started by the test on a loopback address of this test process, with a temporary
//! config and storage; the simulator and the agent as separate processes, the agent's
//! site file with `[alerts] alertmanager_url` and a 1 s resend interval. What
//! Alertmanager holds is read through its own API (`GET /api/v2/alerts`).
//!
//! - fire, re-send, resolve: feed B's meter goes silent; `telemetry.stale` shows in
//!   Alertmanager with the labels alertname, severity, site, node and device; it stays
//!   active with `endsAt` moving ahead (re-sent); once the meter answers again and the
//!   agent says `telemetry.fresh`, Alertmanager no longer lists it (resolved). (A silent
//!   meter rather than a cooling trip: shedding a zone can give it N+1 back within a
//!   second, while a meter stays stale until it answers.)
//! - receiver down: the agent points at an address where nothing listens; it keeps
//!   deciding (its fast decisions counted at their pace), logs each failed send with
//!   the URL and counts them in `/metrics`; once Alertmanager starts there, the alert
//!   raised while it was down reaches it.
//!
//! Alertmanager must be installed (`bash tools/deps.sh --test`); without it the tests
//! fail, unless `RACKWARDEN_SKIP_PEERS=1` says to skip the tests that need outside peers.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rackwarden_hil_tests::{agent, net_k, serial, sim, Proc, TempSite};
use serde_json::Value;

/// Virtual seconds per real second.
const SPEED: f64 = 8.0;

fn real(virtual_s: f64) -> Duration {
    Duration::from_secs_f64(virtual_s / SPEED)
}

fn skip_peers() -> bool {
    std::env::var("RACKWARDEN_SKIP_PEERS").is_ok_and(|v| v == "1")
}

fn alertmanager_bin() -> Option<PathBuf> {
    for name in ["prometheus-alertmanager", "alertmanager"] {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()?;
        let p = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// A free port on `ip` (bound, then let go).
fn free_addr(ip: &str) -> SocketAddr {
    let l = TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap()
}

/// `GET path` over HTTP/1.0: status and body, or None if nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// An Alertmanager on `addr` (clustering off), its config and data in a temporary
/// directory; killed on drop.
struct Alertmanager {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Alertmanager {
    fn start(bin: &PathBuf, addr: SocketAddr, tag: &str) -> Alertmanager {
        let dir = std::env::temp_dir().join(format!("rw-hil-am-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // Routed to a receiver that notifies nobody: the test reads the API.
        std::fs::write(
            dir.join("alertmanager.yml"),
            "route:\n  receiver: 'null'\n  group_wait: 1s\nreceivers:\n  - name: 'null'\n",
        )
        .unwrap();
        let mut child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (l, mut err) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let am = Alertmanager {
            child,
            dir,
            addr,
            log,
        };
        let end = Instant::now() + Duration::from_secs(30);
        while http_get(addr, "/-/ready").map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < end,
                "Alertmanager did not get ready on {addr}\n{}",
                am.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        am
    }

    /// The alerts it lists (active ones: resolved alerts are not listed).
    fn alerts(&self) -> Vec<Value> {
        let Some((200, body)) = http_get(self.addr, "/api/v2/alerts") else {
            return Vec::new();
        };
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The alert `name` about `device`, if listed.
    fn find(&self, name: &str, device: &str) -> Option<Value> {
        self.alerts()
            .into_iter()
            .find(|a| a["labels"]["alertname"] == name && a["labels"]["device"] == device)
    }

    /// Waits up to `timeout` for `pred` on [`Alertmanager::find`].
    fn wait(
        &self,
        timeout: Duration,
        name: &str,
        device: &str,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Option<Value>> {
        let end = Instant::now() + timeout;
        loop {
            let a = self.find(name, device);
            if pred(a.as_ref()) {
                return Some(a);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// The example site with `[alerts]` pointing at `am` (re-sent every second).
fn site_with_alerts(name: &str, am: SocketAddr) -> TempSite {
    TempSite::new(name, |s| {
        format!("{s}\n[alerts]\nalertmanager_url = \"http://{am}\"\nresend_interval_s = 1\n")
    })
}

/// The alert the tests follow, about the device whose silence raises it.
const STALE: &str = "telemetry.stale";
const FRESH: &str = "telemetry.fresh";
const METER: &str = "meter-feed-b";

/// A scenario: feed B's meter stops answering at 40 s and, with `back_s`, answers again
/// then.
fn silent_meter_scenario(site: &TempSite, back_s: Option<f64>) -> String {
    let mut toml = format!(
        "name = \"am-meter\"\ntenant_limit_w = 600\n[[events]]\nat_s = 40\nkind = \"meter_silent\"\ndevice = \"{METER}\"\n"
    );
    if let Some(t) = back_s {
        toml.push_str(&format!(
            "[[events]]\nat_s = {t}\nkind = \"meter_back\"\ndevice = \"{METER}\"\n"
        ));
    }
    let path = site.dir.join("am-meter.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The agent's `/metrics` sample `series` (as written, labels included), 0 if absent.
fn agent_metric(series: &str) -> f64 {
    let addr: SocketAddr = format!("127.{}.250.1:9180", net_k()).parse().unwrap();
    http_get(addr, "/metrics")
        .and_then(|(_, body)| {
            body.lines().find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0.0)
}

fn meter_alert_logged(a: &Proc, name: &str) -> bool {
    a.alerts()
        .iter()
        .any(|v| v["fields"]["alert"] == name && v["fields"]["device"] == METER)
}

fn wait_logged(a: &Proc, timeout: Duration, name: &str) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if meter_alert_logged(a, name) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn an_alert_fires_in_alertmanager_is_resent_and_resolves_with_its_counterpart() {
    let Some(bin) = alertmanager_bin() else {
        assert!(
            skip_peers(),
            "prometheus-alertmanager is not installed: bash tools/deps.sh --test (or RACKWARDEN_SKIP_PEERS=1)"
        );
        return;
    };
    let _g = serial();
    let addr = free_addr(&format!("127.{}.251.1", net_k()));
    let am = Alertmanager::start(&bin, addr, "fire");
    let site = site_with_alerts("am-fire", addr);
    let scenario = silent_meter_scenario(&site, Some(200.0));
    let mut s = sim(&site, &scenario, SPEED);
    let mut a = agent(&site, SPEED, &[]);

    // Fires: listed with its labels, active.
    let fired = am
        .wait(real(200.0), STALE, METER, |x| x.is_some())
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "{STALE} never reached Alertmanager; it lists {:#?}\n{}",
                am.alerts(),
                a.dump()
            )
        });
    let labels = fired["labels"].as_object().unwrap();
    let mut keys: Vec<&str> = labels.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["alertname", "device", "node", "severity", "site"],
        "{fired:#}"
    );
    assert_eq!(labels["severity"], "warning");
    assert_eq!(labels["site"], "example-site");
    assert_eq!(labels["node"], "feed-b");
    assert_eq!(fired["status"]["state"], "active", "{fired:#}");
    assert!(
        fired["annotations"]["summary"]
            .as_str()
            .is_some_and(|m| m.contains("feed-b")),
        "{fired:#}"
    );
    assert!(meter_alert_logged(&a, STALE));

    // Stays active, re-sent: a later send moves endsAt (only a re-send changes it).
    let later = am
        .wait(Duration::from_secs(5), STALE, METER, |x| {
            x.is_some_and(|x| {
                x["endsAt"] != fired["endsAt"] && x["updatedAt"] != fired["updatedAt"]
            })
        })
        .flatten()
        .unwrap_or_else(|| panic!("not re-sent within 5 s: {:#?}", am.alerts()));
    assert_eq!(later["startsAt"], fired["startsAt"], "the same alert");
    assert_eq!(later["status"]["state"], "active");
    // Still active a while later: 6 s is past the first endsAt (4 s after a send), so
    // only re-sends keep it listed.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        !meter_alert_logged(&a, FRESH),
        "the meter read again too early: the scenario is too short\n{}",
        a.dump()
    );
    let still = am.find(STALE, METER);
    assert!(
        still
            .as_ref()
            .is_some_and(|x| x["status"]["state"] == "active"),
        "no longer active while the meter is silent: {:#?}",
        am.alerts()
    );

    // Resolves once the agent says the meter reads again.
    assert!(
        wait_logged(&a, real(300.0), FRESH),
        "the meter never read again\n{}",
        a.dump()
    );
    let gone = am.wait(Duration::from_secs(3), STALE, METER, |x| x.is_none());
    assert!(
        gone.is_some(),
        "still listed 3 s after {FRESH} (re-sent alerts end 4 s after the last send): {:#?}",
        am.alerts()
    );
    assert!(
        agent_metric("rackwarden_alert_notifications_sent_total{receiver=\"alertmanager\"}") >= 3.0
    );
    assert_eq!(
        agent_metric("rackwarden_alert_send_failures_total{receiver=\"alertmanager\"}"),
        0.0
    );
    assert_eq!(
        agent_metric("rackwarden_alerts_active{receiver=\"alertmanager\"}"),
        0.0,
        "the agent still holds an alert active"
    );
    assert_eq!(a.stop(), Some(0), "{}", a.dump());
    let _ = s.stop();
}

#[test]
fn a_receiver_that_is_down_never_stops_the_agent_and_gets_the_alerts_once_up() {
    let Some(bin) = alertmanager_bin() else {
        assert!(
            skip_peers(),
            "prometheus-alertmanager is not installed: bash tools/deps.sh --test (or RACKWARDEN_SKIP_PEERS=1)"
        );
        return;
    };
    let _g = serial();
    // Nothing listens there until the test starts Alertmanager.
    let addr = free_addr(&format!("127.{}.251.2", net_k()));
    let site = site_with_alerts("am-down", addr);
    let scenario = silent_meter_scenario(&site, None);
    let mut s = sim(&site, &scenario, SPEED);
    let mut a = agent(&site, SPEED, &[]);

    assert!(
        wait_logged(&a, real(200.0), STALE),
        "the meter never went stale\n{}",
        a.dump()
    );
    // Failed sends: logged with the URL, counted.
    let url = format!("http://{addr}/api/v2/alerts");
    let delivery_lines = |a: &Proc| -> Vec<String> {
        a.lines()
            .into_iter()
            .filter(|l| l.contains("alert.delivery"))
            .collect()
    };
    let failed = a.wait_for(Duration::from_secs(10), |l| {
        l.contains("alert.delivery.failed") && l.contains(&url)
    });
    assert!(
        failed.is_some(),
        "no failure logged for {url}: {:#?}",
        delivery_lines(&a)
    );
    let failures = agent_metric("rackwarden_alert_send_failures_total{receiver=\"alertmanager\"}");
    assert!(failures >= 1.0, "failures counted: {failures}");
    // The agent keeps deciding at its pace: one fast decision per virtual second, 24 in
    // 3 s at SPEED 8 (slack for a loaded machine).
    let decisions = || agent_metric("rackwarden_decisions_total{tick=\"fast\"}");
    let d0 = decisions();
    std::thread::sleep(Duration::from_secs(3));
    let d1 = decisions();
    assert!(
        d1 - d0 >= 8.0,
        "only {} fast decisions in 3 s while the receiver was down\n{}",
        d1 - d0,
        a.dump()
    );
    assert!(
        agent_metric("rackwarden_alert_send_failures_total{receiver=\"alertmanager\"}") > failures,
        "no retries while down"
    );
    assert!(
        !meter_alert_logged(&a, FRESH),
        "the meter read again\n{}",
        a.dump()
    );

    // Alertmanager comes up: the alert raised while it was down arrives.
    let am = Alertmanager::start(&bin, addr, "down");
    let got = am
        .wait(Duration::from_secs(20), STALE, METER, |x| x.is_some())
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "the alert raised while Alertmanager was down never arrived: {:#?}\ndelivery: {:#?}",
                am.alerts(),
                delivery_lines(&a)
            )
        });
    assert_eq!(got["status"]["state"], "active");
    assert_eq!(got["labels"]["node"], "feed-b");
    assert!(a
        .wait_for(Duration::from_secs(10), |l| l
            .contains("alert.delivery.recovered"))
        .is_some());
    assert_eq!(a.stop(), Some(0), "{}", a.dump());
    let _ = s.stop();
}
