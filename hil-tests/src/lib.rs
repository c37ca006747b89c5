//! Harness for the end-to-end scenarios in `tests/`: the `rackwarden` binary runs as
//! separate processes (the simulator and the agent) on a temporary copy of the example
//! site, talking over loopback sockets only. Every process is killed when its handle
//! drops, and every wait is bounded.
//!
//! The example site binds fixed loopback addresses, so the scenarios take [`serial`] and
//! run one at a time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is the report

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The password the simulated miners accept (the agent gets it through the environment
/// variables the example site names).
pub const SIM_PASSWORD: &str = "rackwarden-sim";

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `rackwarden` binary of this build, built first if `cargo test -p` skipped it.
pub fn bin() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    let exe = target.join("debug").join("rackwarden");
    if !exe.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "rackwarden", "--bin", "rackwarden"])
            .current_dir(repo())
            .status()
            .unwrap();
        assert!(st.success(), "cannot build the rackwarden binary");
    }
    exe
}

static SERIAL: Mutex<()> = Mutex::new(());

/// One scenario at a time: they share the example site's loopback addresses.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A temporary copy of examples/site.toml (plus its token file), edited by `edit`.
#[derive(Debug)]
pub struct TempSite {
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl TempSite {
    pub fn new(name: &str, edit: impl FnOnce(String) -> String) -> TempSite {
        let dir = std::env::temp_dir().join(format!("rw-hil-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(repo().join("examples/site.toml")).unwrap();
        std::fs::write(dir.join("site.toml"), edit(relocate(&text))).unwrap();
        std::fs::copy(
            repo().join("examples/gpu-node.token"),
            dir.join("gpu-node.token"),
        )
        .unwrap();
        TempSite {
            config: dir.join("site.toml"),
            dir,
        }
    }

    /// Where an agent from before the database kept its intent (imported once).
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state/state.json")
    }

    /// The agent's database (control intent, journal, energy).
    pub fn db_file(&self) -> PathBuf {
        self.dir.join("state/rackwarden.db")
    }

    /// The intent in force as `rackwarden state --all --json` prints it (the operator's
    /// way in); panics if the command fails.
    pub fn state(&self) -> Value {
        let out = Command::new(bin())
            .args(["state", "--all", "--json", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rackwarden state failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The database's journal as `rackwarden journal --json` prints it (one row per
    /// line), with `args` added (filters).
    pub fn journal_db(&self, args: &[&str]) -> Vec<Value> {
        let out = Command::new(bin())
            .args(["journal", "--json", "--config"])
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rackwarden journal failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Each miner's committed intent (`normal`, `target`, `sleep`, `outlet_off`), its
    /// power target (W) and whether a command of it awaits its read-back, by id.
    pub fn miner_intents(&self) -> std::collections::HashMap<String, (String, Option<f64>, bool)> {
        self.state()["miners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    (
                        m["intent"].as_str().unwrap().to_owned(),
                        m["target_w"].as_f64(),
                        !m["pending"].is_null(),
                    ),
                )
            })
            .collect()
    }

    pub fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("state/journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for TempSite {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Moves the example site off its fixed loopback addresses onto a network of this test
/// process (127.K.x.y), so a simulator left running elsewhere on the machine cannot take
/// its ports: miners `127.1.x.y` -> `127.K.x.y`, devices and GPU nodes `127.0.0.1` ->
/// `127.K.250.1`.
pub fn relocate(site: &str) -> String {
    let k = net_k();
    site.replace("\"127.1.", &format!("\"127.{k}."))
        .replace("\"127.0.0.1", &format!("\"127.{k}.250.1"))
}

/// The second octet of this test process's loopback network (`127.K.*`).
pub fn net_k() -> u32 {
    2 + std::process::id() % 250
}

/// A child process whose stdout and stderr lines are collected as they come.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        for var in [
            "RACKWARDEN_WHATSMINER_PASSWORD",
            "RACKWARDEN_ANTMINER_STOCK_PASSWORD",
            "RACKWARDEN_VNISH_PASSWORD",
        ] {
            cmd.env(var, SIM_PASSWORD);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child,
            lines,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Log lines that parse as JSON objects.
    pub fn json(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Alert events (`fields.alert`), in order.
    pub fn alerts(&self) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["fields"]["alert"].is_string())
            .collect()
    }

    pub fn alert_names(&self) -> Vec<String> {
        self.alerts()
            .iter()
            .map(|v| v["fields"]["alert"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Events with `fields.event == name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["fields"]["event"] == name)
            .collect()
    }

    /// Waits until `pred` holds for some line, up to `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return Some(l);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// How many lines it has printed so far: a mark for [`Proc::wait_json_after`].
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits up to `timeout` for a JSON line printed after `mark` that `pred` holds
    /// for, and returns it. Polls every 5 ms, so a kill that follows lands close to the
    /// step the line reports.
    pub fn wait_json_after(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let end = Instant::now() + timeout;
        let mut seen = mark;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                for l in lines.iter().skip(seen) {
                    if let Ok(v) = serde_json::from_str::<Value>(l) {
                        if v.is_object() && pred(&v) {
                            return Some(v);
                        }
                    }
                }
                seen = seen.max(lines.len());
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn signal(&self, sig: Signal) {
        let pid = i32::try_from(self.child.id()).unwrap();
        kill(Pid::from_raw(pid), sig).ok();
    }

    /// SIGTERM, then waits (bounded) for the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(Signal::SIGTERM);
        self.wait(Duration::from_secs(20))
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(200));
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: no goodbye, no final state write.
    pub fn kill9(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Everything it printed, for failure messages.
    pub fn dump(&self) -> String {
        let l = self.lines();
        let tail = l.len().saturating_sub(60);
        format!(
            "--- {} (last {} lines)\n{}",
            self.name,
            l.len() - tail,
            l[tail..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The simulator on `site` playing `scenario` at `speed`.
pub fn sim(site: &TempSite, scenario: &str, speed: f64) -> Proc {
    let p = Proc::spawn(
        "sim",
        &[
            "--log-format",
            "json",
            "sim",
            "--config",
            site.config.to_str().unwrap(),
            "--scenario",
            scenario,
            "--speed",
            &speed.to_string(),
        ],
    );
    assert!(
        p.wait_for(Duration::from_secs(30), |l| l.contains("sim.started"))
            .is_some(),
        "simulator did not start\n{}",
        p.dump()
    );
    p
}

/// The agent on `site` at `speed` (`extra`: e.g. `--dry-run`).
pub fn agent(site: &TempSite, speed: f64, extra: &[&str]) -> Proc {
    let speed = speed.to_string();
    let mut args = vec![
        "--log-format",
        "json",
        "run",
        "--config",
        site.config.to_str().unwrap(),
        "--speed",
        &speed,
    ];
    args.extend_from_slice(extra);
    let p = Proc::spawn("agent", &args);
    assert!(
        p.wait_for(Duration::from_secs(30), |l| l.contains("agent.started"))
            .is_some(),
        "agent did not start\n{}",
        p.dump()
    );
    p
}

/// `now_ms` of a JSON log event (the agent's virtual clock).
pub fn now_ms(v: &Value) -> u64 {
    v["fields"]["now_ms"].as_u64().unwrap_or(0)
}

/// Miner ids of the `action.sent` / `action.would` events with a given lever.
pub fn actions(p: &Proc, event: &str) -> Vec<(String, String, String)> {
    p.events(event)
        .iter()
        .map(|v| {
            (
                v["fields"]["device"].as_str().unwrap_or("").to_owned(),
                v["fields"]["lever"].as_str().unwrap_or("").to_owned(),
                v["fields"]["node"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// A node's two limits (docs/control.md, "Model"): the sustained budget B and the
/// never-trip ceiling H.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub budget_kw: f64,
    pub ceiling_kw: f64,
}

/// Each node's B and H (by id) and `excursion_max_s`, as the agent reads `config`.
pub fn limits_of(config: &Path) -> (std::collections::HashMap<String, Limits>, f64) {
    let s = rackwarden_config::load(config).unwrap_or_else(|e| panic!("{e}"));
    let limits = s
        .nodes
        .iter()
        .map(|n| {
            (
                n.id.clone(),
                Limits {
                    budget_kw: n.budget_kw,
                    ceiling_kw: n.ceiling_kw,
                },
            )
        })
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let max_s = s.policy.excursion_max_s as f64;
    (limits, max_s)
}

/// A stretch of consecutive `sim.meter` samples of one feed above its budget B (the
/// simulator reports each feed every 5 virtual seconds).
#[derive(Debug, Clone)]
pub struct Stretch {
    pub node: String,
    /// Simulator time of the first and the last sample above B.
    pub first_s: f64,
    pub last_s: f64,
    pub peak_kw: f64,
}

/// The stretches above B in the simulator's feed meter samples, in order.
pub fn meter_stretches(meters: &[Value]) -> Vec<Stretch> {
    let mut open: std::collections::HashMap<String, Stretch> = Default::default();
    let mut out = Vec::new();
    for m in meters {
        let node = m["fields"]["node"].as_str().unwrap_or("").to_owned();
        let kw = m["fields"]["kw"].as_f64().unwrap();
        let budget = m["fields"]["budget_kw"].as_f64().unwrap();
        let t = m["fields"]["t_s"].as_f64().unwrap();
        if kw > budget {
            let s = open.entry(node.clone()).or_insert(Stretch {
                node,
                first_s: t,
                last_s: t,
                peak_kw: kw,
            });
            s.last_s = t;
            s.peak_kw = s.peak_kw.max(kw);
        } else if let Some(s) = open.remove(&node) {
            out.push(s);
        }
    }
    out.extend(open.into_values());
    out
}

/// One excursion above B as the agent measured it (`power.excursion`, logged when it
/// ends): node, length in virtual seconds, peak kW.
#[derive(Debug, Clone)]
pub struct Excursion {
    pub node: String,
    pub len_s: f64,
    pub peak_kw: f64,
}

/// The agent's `power.excursion` alerts, their length read from the message ("back
/// within its budget after 5.0 s above it").
pub fn excursions(a: &Proc) -> Vec<Excursion> {
    a.alerts()
        .iter()
        .filter(|v| v["fields"]["alert"] == "power.excursion")
        .map(|v| {
            let msg = v["fields"]["message"].as_str().unwrap_or("");
            Excursion {
                node: v["fields"]["node"].as_str().unwrap_or("").to_owned(),
                len_s: excursion_len_s(msg)
                    .unwrap_or_else(|| panic!("no length in the excursion alert `{msg}`")),
                peak_kw: v["fields"]["kw"].as_f64().unwrap_or(0.0),
            }
        })
        .collect()
}

/// The length of an excursion from its alert's message: "... after 5.0 s above it ...".
pub fn excursion_len_s(msg: &str) -> Option<f64> {
    let (_, rest) = msg.split_once(" after ")?;
    let (len, _) = rest.split_once(" s above")?;
    len.trim().parse().ok()
}

/// The two-limit guarantee (docs/control.md, "Model"; docs/alerts.md): on every feed, the
/// simulator's meter never reached the ceiling H, and every stretch above the budget B
/// was shorter than `excursion_max_s` (its samples are 5 s apart, so a stretch lasted at
/// least `last_s - first_s`); the agent measured no excursion longer than that, never
/// had to take the emergency levers for one (`power.excursion.long`) and never saw a
/// feed at its ceiling (`power.budget.emergency`). `limits`: each feed's B and H.
pub fn assert_two_limits(
    meters: &[Value],
    agent: &Proc,
    limits: &std::collections::HashMap<String, Limits>,
    excursion_max_s: f64,
) {
    assert!(meters.len() > 50, "too few meter samples: {}", meters.len());
    for m in meters {
        let node = m["fields"]["node"].as_str().unwrap_or("");
        let kw = m["fields"]["kw"].as_f64().unwrap();
        let l = limits
            .get(node)
            .unwrap_or_else(|| panic!("no limits for {node}"));
        assert!(
            kw < l.ceiling_kw,
            "{node} measured {kw:.1} kW at {}: at or above its {:.1} kW ceiling",
            m["fields"]["t_s"],
            l.ceiling_kw
        );
    }
    for s in meter_stretches(meters) {
        assert!(
            s.last_s - s.first_s < excursion_max_s,
            "{} above its budget from {:.0} s to {:.0} s (peak {:.1} kW): longer than {excursion_max_s} s",
            s.node,
            s.first_s,
            s.last_s,
            s.peak_kw
        );
    }
    for e in excursions(agent) {
        assert!(
            e.len_s <= excursion_max_s,
            "the agent measured {} above its budget for {:.1} s (peak {:.1} kW)",
            e.node,
            e.len_s,
            e.peak_kw
        );
    }
    let names = agent.alert_names();
    for bad in ["power.excursion.long", "power.budget.emergency"] {
        assert!(
            !names.iter().any(|n| n == bad),
            "the agent raised {bad}\n{}",
            agent.dump()
        );
    }
}

/// With `RW_DEBUG_DUMP=/some/prefix`, both processes' lines go to `prefix.agent` and
/// `prefix.sim` (for working on these tests; nothing is written otherwise).
pub fn debug_dump(a: &Proc, s: &Proc) {
    if let Ok(p) = std::env::var("RW_DEBUG_DUMP") {
        std::fs::write(format!("{p}.agent"), a.lines().join("\n")).unwrap();
        std::fs::write(format!("{p}.sim"), s.lines().join("\n")).unwrap();
    }
}

/// The agent's `/api/v1/status` (its `http_listen` of the example site, moved by
/// [`relocate`]), or `Null` when it does not answer within a few seconds.
pub fn agent_status() -> Value {
    agent_get("/api/v1/status")
}

/// The agent's JSON at `GET path` (`Null` when it does not answer).
pub fn agent_get(path: &str) -> Value {
    use std::io::{Read, Write};
    let addr = format!("127.{}.250.1:9180", net_k());
    let Ok(mut c) =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
    else {
        return Value::Null;
    };
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return Value::Null;
    }
    let mut text = String::new();
    c.read_to_string(&mut text).ok();
    text.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null)
}

/// Node `id`'s row in a `/api/v1/status` frame (`Null` if absent).
pub fn status_node<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["frame"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .unwrap_or(&Value::Null)
}
