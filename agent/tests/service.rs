//! `rackwarden run` as systemd runs it (issue 8): READY and watchdog pings on
//! `NOTIFY_SOCKET`, HTTP up on `agent.http_listen`, `/readyz` not ready while no device
//! answers (nothing serves the example site here), STOPPING and exit 0 on SIGTERM.
//! Loopback only; every wait is bounded.

// A test crate: an unwrap that fails is a failed test (helpers included).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

#[test]
fn run_notifies_systemd_serves_http_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("rackwarden-service-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Devices on loopback networks nothing serves (another simulator of the example may
    // run on this machine at the example's own addresses).
    let pid = std::process::id();
    let (a, b) = (100 + pid % 50, 50 + pid % 50);
    let toml = std::fs::read_to_string(repo.join("examples/site.toml"))
        .unwrap()
        .replace("127.0.0.1:9180", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.", &format!("127.{a}.0."))
        .replace("127.1.", &format!("127.{b}."))
        .replace(&format!("127.{a}.0.1:{port}"), &format!("127.0.0.1:{port}"));
    std::fs::write(dir.join("site.toml"), toml).unwrap();
    std::fs::copy(
        repo.join("examples/gpu-node.token"),
        dir.join("gpu-node.token"),
    )
    .unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_rackwarden"))
        .args(["run", "--dry-run", "--config"])
        .arg(dir.join("site.toml"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // READY, then watchdog pings.
    let mut got: Vec<String> = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20)
        && !(got.iter().any(|m| m.contains("READY=1"))
            && got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        let mut buf = [0u8; 512];
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let ready = got.iter().position(|m| m.contains("READY=1"));
    let first_ping = got.iter().position(|m| m.contains("WATCHDOG=1"));
    assert!(ready.is_some(), "no READY=1: {got:?}");
    assert!(first_ping.is_some(), "no watchdog ping: {got:?}");

    // HTTP is up; nothing answers for the devices, so not ready, with reasons.
    assert_eq!(http_get(port, "/healthz").0, 200);
    let (code, body) = http_get(port, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"ready\":false"), "{body}");
    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("rackwarden_ready 0"), "{metrics}");

    // SIGTERM: STOPPING, exit 0 within the grace period.
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut stopping = false;
    let mut buf = [0u8; 512];
    while let Ok(n) = sock.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    std::fs::remove_dir_all(&dir).ok();
}
