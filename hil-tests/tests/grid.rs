//! A grid target through the operator API on the live agent (issue 19, docs/grid.md):
//! `rackwarden sim` and `rackwarden run` as separate processes on the example site. A
//! `PUT /api/v1/grid/target` sheds mining (reason `grid`, never a GPU cap) until the
//! site is under the limit; the journal, the API and the logs name the reason alike;
//! withdrawing it lets mining come back. How fast (event start to first shed, site under
//! the target) is measured by `bash bench/run.sh --only grid`, not here.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use rackwarden_hil_tests::{agent, net_k, serial, sim, TempSite};
use serde_json::Value;

const SPEED: f64 = 8.0;
const TOKEN: &str = "grid-operator-token-for-the-test";

/// One HTTP/1.0 request to the agent's `http_listen` (moved by `relocate`).
fn http(method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let addr = format!("127.{}.250.1:9180", net_k());
    let Ok(mut c) =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
    else {
        return (0, String::new());
    };
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if c.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    c.read_to_string(&mut text).ok();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (code, body.unwrap_or_default())
}

fn grid() -> Value {
    let (_, b) = http("GET", "/api/v1/grid", None);
    serde_json::from_str(&b).unwrap_or(Value::Null)
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `secs` real seconds.
fn wait<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn an_api_grid_target_sheds_mining_only_holds_the_site_under_it_and_ends() {
    let _g = serial();
    let site = TempSite::new("grid", |t| {
        t.replace("[agent]\n", "[agent]\nhttp_token_file = \"http.token\"\n")
    });
    std::fs::write(site.dir.join("http.token"), format!("{TOKEN}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            site.dir.join("http.token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let mut s = sim(&site, "steady", SPEED);
    let mut a = agent(&site, SPEED, &[]);

    // The agent decides and knows the site's load.
    let load0 = wait(60, || grid()["load_kw"].as_f64())
        .unwrap_or_else(|| panic!("no grid load in /api/v1/grid\n{}", a.dump()));
    assert!(grid()["limit_kw"].is_null());
    // Let the start-up hold pass (60 s virtual) so the end of the event can restore.
    std::thread::sleep(Duration::from_secs_f64(70.0 / SPEED));
    let load0 = grid()["load_kw"].as_f64().unwrap_or(load0);
    let limit = (load0 - 120.0).round();

    // Refused without a body that says what; accepted with one.
    let (code, text) = http("PUT", "/api/v1/grid/target", Some(r#"{"limit_kw": 0}"#));
    assert_eq!(code, 400, "{text}");
    let body = format!(r#"{{"id": "hil-dr", "limit_kw": {limit}, "duration_s": 3600}}"#);
    let (code, text) = http("PUT", "/api/v1/grid/target", Some(&body));
    assert_eq!(code, 200, "{text}\n{}", a.dump());
    let start_ms = serde_json::from_str::<Value>(&text).unwrap()["event"]["start_ms"]
        .as_u64()
        .unwrap();

    // Sheds with reason `grid`, the site under the limit, no shortfall.
    let under = wait(60, || {
        let g = grid();
        let kw = g["load_kw"].as_f64()?;
        (g["limit_kw"].as_f64() == Some(limit) && kw <= limit && g["shortfall_kw"] == 0.0)
            .then_some(kw)
    });
    assert!(
        under.is_some(),
        "site never under {limit} kW: {}\n{}",
        grid(),
        a.dump()
    );
    let g = grid();
    assert_eq!(g["source"], "api");
    assert_eq!(g["event"], "hil-dr");
    let sheds: Vec<Value> = a
        .events("action.sent")
        .into_iter()
        .filter(|v| v["fields"]["reason"] == "grid")
        .collect();
    assert!(!sheds.is_empty(), "no shed with reason grid\n{}", a.dump());
    let first = sheds
        .iter()
        .filter_map(|v| v["fields"]["now_ms"].as_u64())
        .min()
        .unwrap();
    assert!(
        first >= start_ms && first - start_ms <= 5_000,
        "first grid shed {} ms (virtual) after the event started",
        first.saturating_sub(start_ms)
    );
    assert!(a
        .events("action.sent")
        .iter()
        .all(|v| v["fields"]["lever"] != "gpu_cap"));
    assert!(a.lines().iter().any(|l| l.contains("grid.target.active")));

    // The same reason spelled alike in the API's actions and the journal.
    let (_, st) = http("GET", "/api/v1/status", None);
    let st: Value = serde_json::from_str(&st).unwrap();
    assert!(
        st["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"] == "grid"),
        "{st}"
    );

    // Withdrawn: the limit is gone and mining comes back (targets raised or miners woken).
    let (code, text) = http("DELETE", "/api/v1/grid/target?id=hil-dr", None);
    assert_eq!(code, 200, "{text}");
    let back = wait(120, || {
        a.events("action.sent")
            .iter()
            .any(|v| {
                matches!(
                    v["fields"]["lever"].as_str(),
                    Some("power_target_raise" | "wake")
                ) && v["fields"]["now_ms"].as_u64() > Some(first)
            })
            .then_some(())
    });
    assert!(
        back.is_some(),
        "nothing restored after the event\n{}",
        a.dump()
    );
    assert!(grid()["limit_kw"].is_null());
    assert!(a.lines().iter().any(|l| l.contains("grid.target.ended")));

    assert_eq!(a.stop(), Some(0), "agent exit\n{}", a.dump());
    let rows = site.journal_db(&[]);
    assert!(
        rows.iter().any(|r| r["reason"] == "grid"),
        "journal rows: {}",
        rows.len()
    );
    assert_eq!(s.stop(), Some(0));
}
