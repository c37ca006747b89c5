//! The OpenADR 3 VEN against a real VTN (issue 19): the `openleadr-vtn` server (crates.io,
//! built by `bash tools/deps.sh --test`) on a PostgreSQL cluster the test creates in a
//! temporary directory (Debian's `postgresql`), both started and stopped by the test;
//! the simulator and the agent (`[grid.openadr]` pointing at the VTN) as separate
//! processes, all at speed 1 (the VTN speaks wall time).
//!
//! - an event: the test, as the utility's business logic, creates a program and an
//!   `IMPORT_CAPACITY_LIMIT` event (from now, 50 s) a little under the site's load; the
//!   agent sheds miners with reason `grid` within seconds, the site's load goes under the
//!   limit, `/api/v1/grid` shows the limit from `openadr`, the VTN holds a USAGE report
//!   of the site's load from the VEN; after the event the limit is gone and miners come
//!   back (`restore` / `fill`).
//! - VTN down at start: nothing listens at the VTN URL; the agent keeps deciding and
//!   logs `grid.openadr.error` naming the URL, again and again (no peer needed).
//!
//! PostgreSQL runs as `nobody` when the test runs as root (postgres refuses root). The
//! VTN binds every interface on a free port (it has no listen-address setting); the
//! agent and the test reach it on 127.0.0.1. Without the binaries the test fails, unless
//! `RACKWARDEN_SKIP_PEERS=1`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rackwarden_hil_tests::{agent, agent_get, agent_status, net_k, serial, sim, Proc, TempSite};
use serde_json::{json, Value};

fn skip_peers() -> bool {
    std::env::var("RACKWARDEN_SKIP_PEERS").is_ok_and(|v| v == "1")
}

/// `name` on PATH, else in `dirs` (the first that has it).
fn find_bin(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(dirs.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A PostgreSQL server binary: PATH, /usr/local/bin, then Debian's
/// /usr/lib/postgresql/<version>/bin (newest first).
fn pg_bin(name: &str) -> Option<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/local/bin")];
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    debian.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.extend(debian.into_iter().map(|d| d.1));
    find_bin(name, &dirs)
}

/// The VTN: `RACKWARDEN_OPENADR_VTN`, PATH, or where tools/deps.sh --test installs it.
fn vtn_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RACKWARDEN_OPENADR_VTN") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let tools = std::env::var_os("RACKWARDEN_TOOLS")
        .map_or_else(|| home.join(".cache/rackwarden/tools"), PathBuf::from);
    find_bin("openleadr-vtn", &[tools.join("bin")])
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Collects a child's stderr (and stdout) into a string, for failure messages.
fn collect(child: &mut Child) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let streams: Vec<Box<dyn Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for mut s in streams {
        let l = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    log
}

fn tail(log: &Arc<Mutex<String>>) -> String {
    let l = log.lock().unwrap();
    let start = l.len().saturating_sub(4000);
    let start = (start..l.len())
        .find(|&i| l.is_char_boundary(i))
        .unwrap_or(0);
    l[start..].to_owned()
}

/// Stops a child: `sig`, then SIGKILL after `grace`.
fn stop_child(child: &mut Child, sig: Signal, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        kill(Pid::from_raw(pid), sig).ok();
    }
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().ok();
    child.wait().ok();
}

/// A PostgreSQL cluster in a temporary directory on 127.0.0.1, trust authentication for
/// the user `openadr`; stopped and removed on drop.
struct Postgres {
    child: Child,
    dir: PathBuf,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Postgres {
    fn start(initdb: &Path, postgres: &Path) -> Postgres {
        let dir = std::env::temp_dir().join(format!("rw-hil-pg-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        let root = is_root();
        if root {
            let st = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success(), "cannot chown {}", dir.display());
        }
        // As nobody when root: postgres refuses to run as root. setpriv execs (no
        // forked parent that a kill would leave the server behind).
        let as_user = |bin: &Path| {
            if root {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
                    .arg(bin);
                c
            } else {
                Command::new(bin)
            }
        };
        let out = as_user(initdb)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "openadr", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port("127.0.0.1");
        let mut child = as_user(postgres)
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(dir.join("sock"))
            .args(["-c", "fsync=off", "-c", "max_connections=40"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = collect(&mut child);
        let pg = Postgres {
            child,
            dir,
            port,
            log,
        };
        let end = Instant::now() + Duration::from_secs(30);
        while !pg
            .log
            .lock()
            .unwrap()
            .contains("ready to accept connections")
        {
            assert!(
                Instant::now() < end,
                "PostgreSQL did not get ready on port {port}\n{}",
                tail(&pg.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    fn url(&self) -> String {
        format!("postgres://openadr@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown (the backends end with it).
        stop_child(&mut self.child, Signal::SIGINT, Duration::from_secs(10));
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// The business logic's and the VEN's OAuth clients, as the VTN's own fixtures make them
/// (fixtures/users.sql: argon2 hashes of the secrets `bl-client` and `ven-client`). The
/// scopes are those of the VTN's `scope` type among the names 0.2.3 and 0.2.8 use
/// (0.2.8 split `write_reports` and `write_subscriptions` per client kind).
const USERS_SQL: &str = r#"
CREATE FUNCTION pg_temp.scopes(names text[]) RETURNS scope[] AS
  $$ SELECT array(SELECT s FROM unnest(enum_range(NULL::scope)) s WHERE s::text = ANY(names)) $$
  LANGUAGE sql;
INSERT INTO "user" (id, reference, description, scopes, created, modified)
VALUES ('bl-client', 'bl-client-ref', null,
        pg_temp.scopes('{read_all, write_vens_bl, write_programs, write_events, write_users}'),
        now(), now());
INSERT INTO user_credentials (user_id, client_id, client_secret)
VALUES ('bl-client', 'bl-client', '$argon2id$v=19$m=16,t=2,p=1$MWt1QVNFdHdlZVJhNEZzUA$Rmkguwgaz+A2GWIaDRtv8w');
INSERT INTO "user" (id, reference, description, scopes, created, modified)
VALUES ('ven-client', 'ven-client-ref', 'desc',
        pg_temp.scopes('{read_targets, read_ven_objects, write_reports, write_reports_ven, write_vens_ven}'),
        now(), now());
INSERT INTO user_credentials (user_id, client_id, client_secret)
VALUES ('ven-client', 'ven-client-client-id', '$argon2id$v=19$m=16,t=2,p=1$YWlOSE8xRGFVdVVIa212Ug$tjmQC+zNC3QXc9K8mEXRrA');
"#;
const VEN_CLIENT_ID: &str = "ven-client-client-id";
const VEN_SECRET: &str = "ven-client";
const VEN_NAME: &str = "rw-hil-ven";

/// The VTN on a free port, its database migrated (it migrates at start), the two
/// clients created; killed on drop.
struct Vtn {
    child: Child,
    dir: PathBuf,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Vtn {
    fn start(bin: &Path, pg: &Postgres) -> Vtn {
        let dir = std::env::temp_dir().join(format!("rw-hil-vtn-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port("0.0.0.0");
        let url = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(bin)
            // Its own empty directory: the VTN reads a `.env` from where it runs.
            .current_dir(&dir)
            .env_remove("MQTT_URL")
            .env_remove("MQTT_USERNAME")
            .env_remove("MQTT_PASSWORD")
            .env("RUST_LOG", "info")
            .env("PORT", port.to_string())
            .env("DATABASE_URL", pg.url())
            .env("OAUTH_TYPE", "INTERNAL")
            .env("OAUTH_KEY_TYPE", "HMAC")
            // 32 bytes, base64: signs the test's tokens only.
            .env(
                "OAUTH_BASE64_SECRET",
                "cmFja3dhcmRlbi1oaWwtdGVzdC1zZWNyZXQtMzItYnl0ZXMh",
            )
            .env("OAUTH_TOKEN_URL", format!("{url}/auth/token"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = collect(&mut child);
        let mut vtn = Vtn {
            child,
            dir,
            url,
            log,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while http_status(addr, "/health") != Some(200) {
            if let Ok(Some(st)) = vtn.child.try_wait() {
                panic!("the VTN exited ({st})\n{}", tail(&vtn.log));
            }
            assert!(
                Instant::now() < end,
                "the VTN did not answer /health on {addr}\n{}",
                tail(&vtn.log)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let psql = pg_bin("psql").expect("psql (postgresql-client)");
        let out = Command::new(psql)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-d"])
            .arg(pg.url())
            .args(["-c", USERS_SQL])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot create the VTN's clients: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        vtn
    }
}

impl Drop for Vtn {
    fn drop(&mut self) {
        stop_child(&mut self.child, Signal::SIGTERM, Duration::from_secs(5));
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// The status of `GET path` over HTTP/1.0, None if nothing answers.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::Write;
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The utility's business logic: an OAuth token of `bl-client`, JSON over HTTP.
struct Bl {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Bl {
    fn new(vtn: &Vtn) -> Bl {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = vtn.url.clone();
        let token = rt.block_on(async {
            let res = http
                .post(format!("{url}/auth/token"))
                .basic_auth("bl-client", Some("bl-client"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials")
                .send()
                .await
                .unwrap();
            let status = res.status();
            let v: Value = res.json().await.unwrap();
            assert!(status.is_success(), "token: {status} {v}");
            v["access_token"].as_str().unwrap().to_owned()
        });
        Bl {
            rt,
            http,
            url,
            token,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        self.rt.block_on(async {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.url))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let res = req.send().await.unwrap();
            let status = res.status();
            let text = res.text().await.unwrap();
            assert!(status.is_success(), "{method} {path}: {status} {text}");
            serde_json::from_str(&text).unwrap()
        })
    }
}

/// The example site with `[grid.openadr]` at `vtn_url` (polled every second, reports
/// every 5 s), restores quick enough for the test to see them after the event.
fn site_with_openadr(name: &str, vtn_url: &str) -> TempSite {
    let site = TempSite::new(name, |s| {
        let s = s
            .replace("restore_hold_s = 60", "restore_hold_s = 5")
            .replace(
                "restore_step_interval_s = 30",
                "restore_step_interval_s = 5",
            );
        format!(
            "{s}\n[grid.openadr]\nvtn_url = \"{vtn_url}\"\nclient_id = \"{VEN_CLIENT_ID}\"\nclient_secret_file = \"ven.secret\"\nven_name = \"{VEN_NAME}\"\npoll_interval_s = 1\nreport_interval_s = 5\n"
        )
    });
    // The secret file must be there when the site file is checked: written before any
    // agent starts (TempSite::new only writes the site file).
    std::fs::write(site.dir.join("ven.secret"), format!("{VEN_SECRET}\n")).unwrap();
    site
}

/// The agent's `GET /api/v1/grid` (`Null` when it does not answer).
fn agent_grid() -> Value {
    agent_get("/api/v1/grid")
}

fn grid_actions(a: &Proc, reasons: &[&str]) -> Vec<Value> {
    a.events("action.sent")
        .into_iter()
        .filter(|v| {
            v["fields"]["reason"]
                .as_str()
                .is_some_and(|r| reasons.contains(&r))
        })
        .collect()
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
// Long on purpose: one scenario against the VTN, read top to bottom.
#[allow(clippy::too_many_lines)]
fn a_vtn_event_sheds_miners_reports_the_load_and_they_come_back_after_it() {
    let (Some(initdb), Some(postgres), Some(vtn_bin)) =
        (pg_bin("initdb"), pg_bin("postgres"), vtn_bin())
    else {
        assert!(
            skip_peers(),
            "PostgreSQL (initdb, postgres) or openleadr-vtn is not installed: bash tools/deps.sh --test (or RACKWARDEN_SKIP_PEERS=1)"
        );
        return;
    };
    let _g = serial();
    let t0 = Instant::now();
    let pg = Postgres::start(&initdb, &postgres);
    let vtn = Vtn::start(&vtn_bin, &pg);
    let bl = Bl::new(&vtn);
    let site = site_with_openadr("openadr-event", &vtn.url);
    let mut s = sim(&site, "steady", 1.0);
    let mut a = agent(&site, 1.0, &[]);

    // Enrolled: the VEN object exists at the VTN under its name.
    assert!(
        a.wait_for(Duration::from_secs(20), |l| l
            .contains("grid.openadr.connected"))
            .is_some(),
        "the VEN never enrolled\n{}\n--- vtn\n{}",
        a.dump(),
        tail(&vtn.log)
    );
    let vens = bl.call(reqwest::Method::GET, "/vens", None);
    assert!(
        vens.as_array()
            .unwrap()
            .iter()
            .any(|v| v["venName"] == VEN_NAME),
        "{vens:#}"
    );
    // The site's load once the agent measures it (and has settled its start-up fills).
    let mut load = 0.0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            load = agent_grid()["load_kw"].as_f64().unwrap_or(0.0);
            load > 300.0
        }),
        "no site load in /api/v1/grid: {:#}",
        agent_grid()
    );
    std::thread::sleep(Duration::from_secs(3));
    let load = agent_grid()["load_kw"].as_f64().unwrap_or(load);
    // 150 kW under the load: mining (600 kW on the example site) can give it.
    let limit = (load - 150.0).round();

    let program = bl.call(
        reqwest::Method::POST,
        "/programs",
        Some(&json!({"objectType": "PROGRAM", "programName": "rw-hil-dr"})),
    );
    let start = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let event = bl.call(
        reqwest::Method::POST,
        "/events",
        Some(&json!({
            "objectType": "EVENT",
            "programID": program["id"],
            "eventName": "rw-hil-peak",
            "payloadDescriptors": [{
                "objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                "payloadType": "IMPORT_CAPACITY_LIMIT",
                "units": "KW"
            }],
            "reportDescriptors": [{"payloadType": "USAGE", "units": "KW"}],
            "intervalPeriod": {"start": start, "duration": "PT50S"},
            "intervals": [{
                "id": 0,
                "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [limit]}]
            }]
        })),
    );
    let created = Instant::now();
    let event_id = event["id"].as_str().unwrap().to_owned();

    // Shed for the grid within seconds of the event's start.
    assert!(
        wait_until(Duration::from_secs(10), || !grid_actions(&a, &["grid"])
            .is_empty()),
        "no shed with reason grid within 10 s of the event (limit {limit} kW, load {load} kW)\n{}",
        a.dump()
    );
    let first_shed = created.elapsed();
    eprintln!(
        "openadr: event created -> first grid shed {:.2} s",
        first_shed.as_secs_f64()
    );
    // /api/v1/grid: the limit, from openadr, this event.
    let g = agent_grid();
    assert_eq!(g["limit_kw"].as_f64(), Some(limit), "{g:#}");
    assert_eq!(g["source"], "openadr", "{g:#}");
    assert!(
        g["event"]
            .as_str()
            .is_some_and(|e| e.starts_with(&event_id)),
        "{g:#}"
    );
    // The site's load under the limit within 30 s.
    let mut last = f64::NAN;
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = agent_grid()["load_kw"].as_f64().unwrap_or(f64::NAN);
            last < limit
        }),
        "load {last} kW still over the limit {limit} kW 30 s into the event\n{}",
        a.dump()
    );
    // A report of the site's load reached the VTN, read back as the business logic.
    let mut reports = Value::Null;
    assert!(
        wait_until(Duration::from_secs(15), || {
            reports = bl.call(
                reqwest::Method::GET,
                &format!("/reports?eventID={event_id}"),
                None,
            );
            reports.as_array().is_some_and(|r| !r.is_empty())
        }),
        "no report at the VTN\n{}",
        a.dump()
    );
    let r = &reports[0];
    assert_eq!(r["clientName"], VEN_NAME, "{r:#}");
    let payload = &r["resources"][0]["intervals"][0]["payloads"][0];
    assert_eq!(payload["type"], "USAGE", "{r:#}");
    let kw = payload["values"][0].as_f64().unwrap();
    assert!(
        kw > limit * 0.5 && kw < load * 1.1,
        "reported {kw} kW: not the site's load (about {load} kW, then under {limit} kW) {r:#}"
    );
    eprintln!(
        "openadr: load {load} kW, limit {limit} kW, under it after the shed: {last} kW, first report {kw} kW"
    );

    // The event ends (50 s after its start): the limit goes, miners come back.
    let end_wait = Duration::from_secs(60).saturating_sub(created.elapsed());
    assert!(
        wait_until(end_wait, || agent_grid()["limit_kw"].is_null()),
        "the limit is still there after the event: {:#}",
        agent_grid()
    );
    let ended = Instant::now();
    assert!(
        created.elapsed() > Duration::from_secs(45),
        "the limit went {:.1} s into a 50 s event",
        created.elapsed().as_secs_f64()
    );
    let mark = grid_actions(&a, &["restore", "fill"]).len();
    assert!(
        wait_until(Duration::from_secs(40), || grid_actions(
            &a,
            &["restore", "fill"]
        )
        .len()
            > mark),
        "no miner restored within 40 s of the event's end\n{}",
        a.dump()
    );
    let restore = grid_actions(&a, &["restore", "fill"]);
    eprintln!(
        "openadr: event end -> first restore {:.1} s ({})",
        ended.elapsed().as_secs_f64(),
        restore[mark]["fields"]["device"]
    );
    // Reported again every 5 s while the event lasted.
    let reports = bl.call(
        reqwest::Method::GET,
        &format!("/reports?eventID={event_id}"),
        None,
    );
    let n = reports.as_array().map_or(0, Vec::len);
    assert!(
        n >= 3,
        "{n} reports in a 50 s event at one per 5 s: {reports:#}"
    );
    assert!(
        a.events("grid.openadr.error").is_empty(),
        "errors while the VTN was up: {:#?}",
        a.events("grid.openadr.error")
    );
    assert_eq!(a.stop(), Some(0), "{}", a.dump());
    let _ = s.stop();
    eprintln!("openadr: whole test {:.1} s", t0.elapsed().as_secs_f64());
    drop(vtn);
    drop(pg);
}

#[test]
fn a_vtn_that_is_down_never_stops_the_agent_and_is_named_in_the_log() {
    let _g = serial();
    // Nothing listens there.
    let port = free_port(&format!("127.{}.252.1", net_k()));
    let url = format!("http://127.{}.252.1:{port}", net_k());
    let site = site_with_openadr("openadr-down", &url);
    let mut s = sim(&site, "steady", 4.0);
    let mut a = agent(&site, 4.0, &[]);
    let errors = |a: &Proc| -> Vec<Value> {
        a.events("grid.openadr.error")
            .into_iter()
            .filter(|v| v["fields"]["vtn_url"] == url.as_str())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || !errors(&a).is_empty()),
        "no grid.openadr.error naming {url}\n{}",
        a.dump()
    );
    let e = &errors(&a)[0];
    assert!(
        e["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&url)),
        "{e:#}"
    );
    // It retries (1 s, then 2 s: backoff) and keeps deciding meanwhile.
    assert!(
        wait_until(Duration::from_secs(10), || errors(&a).len() >= 2),
        "no retry\n{}",
        a.dump()
    );
    let status = agent_status();
    assert!(status["frame"].is_object(), "{status:#}");
    assert!(status["grid"]["limit_kw"].is_null(), "{status:#}");
    assert_eq!(a.stop(), Some(0), "{}", a.dump());
    let _ = s.stop();
}
