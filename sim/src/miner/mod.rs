//! A miner simulator: N miners of any firmware on loopback, each on its own address
//! (distinct `127.x.y.z`, so every miner can sit on port 4028 as real ones do) or port.
//!
//! Replies follow the fixtures' shapes byte for byte where the firmware has quirks: a
//! NUL terminator on cgminer forks, stock Antminer's `}{` inside `STATS` and its refusal
//! of `summary+stats`, Whatsminer's flat envelope, EOF instead of NUL and AES-encrypted
//! writes, LuxOS's single session, digest auth on the Antminer CGI, Avalon's
//! one-connection-at-a-time API. Power ramps to idle or back after the firmware's delay
//! (divided by `time_scale`, so tests run fast). Faults: no answer, slow answer, garbage,
//! commands accepted but ignored, a reply cut off mid-way (connection closed early), and
//! flapping (answering and silent in turn). State is shared (`Arc<SimMiner>`) so a site simulator
//! can read power and mode and script faults; `shutdown` cancels every task.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rackwarden_config::{Firmware, Miner, Site};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use rackwarden_protocols::miner::telemetry::MinerMode;

// The web APIs the independent clients (pyasic, asic-rs) read: web roots, stock Antminer's
// CGI set, Vnish's info/status/settings, Braiins OS's GraphQL and REST API.
mod web;

// One module per firmware, each the twin of its driver in
// `rackwarden_protocols::miner::firmware` (same name): the firmware's own cgminer-API
// commands and web levers. What several firmwares share (the server loops, faults, the
// bmminer `stats`/`version`, the status objects) stays here.
mod antminer_stock;
mod avalon;
mod braiins;
mod luxos;
mod vnish;
mod whatsminer;

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulated miner {id}: cannot bind {addr}")]
    Bind {
        id: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("simulated miner {id}: bad address {addr}")]
    Address { id: String, addr: String },
}

/// A scripted misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// Accept the connection, never answer.
    NoAnswer,
    /// Answer after this long (not scaled).
    SlowAnswer(Duration),
    /// Answer bytes that are not JSON.
    Garbage,
    /// Reply success to control commands but change nothing.
    IgnoreCommands,
    /// Send the first half of the reply, then close the connection.
    CloseEarly,
    /// Answer for this long, then stay silent (as [`Fault::NoAnswer`]) for as long, in
    /// turn, from when the fault was set (not scaled).
    Flap(Duration),
}

/// One simulated miner's fixed description.
#[derive(Debug, Clone, PartialEq)]
pub struct SimMinerSpec {
    pub id: String,
    pub firmware: Firmware,
    pub api_addr: SocketAddr,
    /// Web interface (Vnish, stock Antminer CGI, Braiins REST); `None`: no HTTP.
    pub http_addr: Option<SocketAddr>,
    pub nominal_w: f64,
    pub min_w: f64,
    pub idle_w: f64,
    pub efficiency_j_th: f64,
    pub username: String,
    pub password: String,
}

impl SimMinerSpec {
    /// A spec with the firmware's factory login and typical S19-class figures.
    pub fn new(
        id: impl Into<String>,
        firmware: Firmware,
        api_addr: SocketAddr,
        http_addr: Option<SocketAddr>,
    ) -> Self {
        let login = rackwarden_protocols::miner::secret::Login::factory_default(firmware);
        Self {
            id: id.into(),
            firmware,
            api_addr,
            http_addr,
            nominal_w: 3250.0,
            min_w: 1800.0,
            idle_w: 25.0,
            efficiency_j_th: 29.5,
            username: login.username,
            password: login.password.expose().to_owned(),
        }
    }
}

/// Simulator settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimOptions {
    /// Firmware delays are divided by this (1.0: real time).
    pub time_scale: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self { time_scale: 1.0 }
    }
}

/// (sleep, wake) delays of a firmware in seconds, from field reports (CONTROL.md).
pub fn firmware_delays_s(fw: Firmware) -> (f64, f64) {
    match fw {
        Firmware::Braiins => (6.0, 10.0),
        Firmware::Luxos => (5.0, 10.0),
        Firmware::Whatsminer => (10.0, 20.0),
        Firmware::Vnish => (6.0, 10.0),
        Firmware::AntminerStock => (20.0, 30.0),
        Firmware::Avalon => (10.0, 20.0),
    }
}

#[derive(Debug, Clone, Copy)]
struct Ramp {
    from: f64,
    to: f64,
    start: Instant,
    dur: Duration,
}

impl Ramp {
    fn at(&self, now: Instant) -> f64 {
        let el = now.saturating_duration_since(self.start).as_secs_f64();
        let d = self.dur.as_secs_f64();
        let f = if d <= 0.0 { 1.0 } else { (el / d).min(1.0) };
        self.from + (self.to - self.from) * f
    }
}

/// Mutable state of one simulated miner.
#[derive(Debug)]
struct SimState {
    mode: MinerMode,
    target_w: f64,
    ramp: Ramp,
    fault: Fault,
    /// When `fault` was set (a flap's phase counts from it).
    fault_since: Instant,
    log: Vec<String>,
    /// When each logged command arrived (benchmarks measure reaction times from it).
    log_at: Vec<Instant>,
    session: Option<String>,
    wm_token: Option<(String, String, String)>,
    http_token: Option<String>,
    profile: String,
    booted: Instant,
    counter: u64,
}

/// One simulated miner, shared between its server tasks and the caller.
#[derive(Debug)]
pub struct SimMiner {
    pub spec: SimMinerSpec,
    time_scale: f64,
    state: Mutex<SimState>,
    /// The simulator's shutdown: waits inside handlers end on it, so a graceful HTTP
    /// shutdown never waits for a scripted hang.
    cancel: CancellationToken,
}

impl SimMiner {
    fn new(spec: SimMinerSpec, time_scale: f64, cancel: CancellationToken) -> Self {
        let now = Instant::now();
        let st = SimState {
            mode: MinerMode::Mining,
            target_w: spec.nominal_w,
            ramp: Ramp {
                from: spec.nominal_w,
                to: spec.nominal_w,
                start: now,
                dur: Duration::ZERO,
            },
            fault: Fault::None,
            fault_since: now,
            log: Vec::new(),
            log_at: Vec::new(),
            session: None,
            wm_token: None,
            http_token: None,
            profile: profile_name(spec.nominal_w),
            booted: now,
            counter: 0,
        };
        Self {
            spec,
            time_scale: if time_scale > 0.0 { time_scale } else { 1.0 },
            state: Mutex::new(st),
            cancel,
        }
    }

    /// Sleep `d`, or less when the simulator shuts down.
    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = sleep(d) => {}
            _ = self.cancel.cancelled() => {}
        }
    }

    fn st(&self) -> MutexGuard<'_, SimState> {
        // A panicked server task must not take the whole simulator down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Present input power (W).
    pub fn power_w(&self) -> f64 {
        self.st().ramp.at(Instant::now())
    }

    pub fn mode(&self) -> MinerMode {
        self.st().mode
    }

    /// Power target held while mining (W).
    pub fn target_w(&self) -> f64 {
        self.st().target_w
    }

    pub fn fault(&self) -> Fault {
        self.st().fault
    }

    pub fn set_fault(&self, fault: Fault) {
        let mut st = self.st();
        if st.fault != fault {
            st.fault_since = Instant::now();
        }
        st.fault = fault;
    }

    /// The fault that applies to a request arriving now: a flap resolves to no fault or
    /// to no answer, by phase.
    pub fn fault_now(&self) -> Fault {
        let st = self.st();
        match st.fault {
            Fault::Flap(period) => {
                let p = period.as_secs_f64();
                let el = Instant::now()
                    .saturating_duration_since(st.fault_since)
                    .as_secs_f64();
                if p > 0.0 && (el / p).floor() % 2.0 >= 1.0 {
                    Fault::NoAnswer
                } else {
                    Fault::None
                }
            }
            f => f,
        }
    }

    /// Control commands received, in order (`pause`, `curtail sleep`, `power_off`, ...).
    pub fn commands(&self) -> Vec<String> {
        self.st().log.clone()
    }

    /// Control commands received with the instant each arrived, in order.
    pub fn commands_at(&self) -> Vec<(Instant, String)> {
        let st = self.st();
        st.log_at
            .iter()
            .copied()
            .zip(st.log.iter().cloned())
            .collect()
    }

    /// The site-model miner that points at this simulated one (factory login: set
    /// `credentials` when the spec's password differs).
    pub fn to_config(&self) -> Miner {
        Miner {
            id: self.spec.id.clone(),
            host: self.spec.api_addr.ip().to_string(),
            port: self.spec.api_addr.port(),
            http_port: self.spec.http_addr.map(|a| a.port()),
            firmware: self.spec.firmware,
            rack: 0,
            nominal_w: self.spec.nominal_w,
            min_w: self
                .spec
                .firmware
                .levers()
                .power_target
                .then_some(self.spec.min_w),
            idle_w: self.spec.idle_w,
            efficiency_j_th: Some(self.spec.efficiency_j_th),
            credentials: None,
            outlet: None,
        }
    }

    fn hashrate_ths(&self, st: &SimState, now: Instant) -> f64 {
        if st.mode == MinerMode::Mining {
            st.ramp.at(now).max(0.0) / self.spec.efficiency_j_th
        } else {
            // Boards wind down with the power ramp: hashrate ends at zero with it.
            (st.ramp.at(now) - self.spec.idle_w).max(0.0) / self.spec.efficiency_j_th
        }
    }

    /// This miner's MAC: locally administered (`02:...`), derived from its id so every
    /// simulated miner has its own and keeps it across runs.
    pub fn mac(&self) -> [u8; 6] {
        // FNV-1a over the id.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.spec.id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = h.to_be_bytes();
        [0x02, b[3], b[4], b[5], b[6], b[7]]
    }

    /// [`SimMiner::mac`] as `aa:bb:cc:dd:ee:ff` (`upper`: as btminer writes it).
    pub fn mac_text(&self, upper: bool) -> String {
        let s = self
            .mac()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        if upper {
            s.to_ascii_uppercase()
        } else {
            s
        }
    }

    fn scaled(&self, secs: f64) -> Duration {
        Duration::from_secs_f64((secs / self.time_scale).max(0.0))
    }

    /// Apply a control command (unless the fault says to ignore it) and log it.
    fn control(&self, what: &str, mode: Option<MinerMode>, target: Option<f64>) {
        // Operators and the hil-tests see each command the moment it arrives.
        tracing::info!(event = "sim.miner.command", device = %self.spec.id, command = what, "miner command received");
        let mut st = self.st();
        st.log.push(what.to_owned());
        st.log_at.push(Instant::now());
        // The simulator's write log, as the hil-tests read it (who was told what, when).
        tracing::info!(
            event = "sim.command",
            miner = %self.spec.id,
            command = what,
            ignored = st.fault == Fault::IgnoreCommands,
            "miner command"
        );
        if st.fault == Fault::IgnoreCommands {
            return;
        }
        let now = Instant::now();
        let (sleep_s, wake_s) = firmware_delays_s(self.spec.firmware);
        if let Some(t) = target {
            st.target_w = t.clamp(self.spec.min_w, self.spec.nominal_w);
            st.profile = profile_name(st.target_w);
        }
        let new_mode = mode.unwrap_or(st.mode);
        let (to, secs) = match new_mode {
            MinerMode::Mining => (
                st.target_w,
                if st.mode == MinerMode::Mining {
                    10.0
                } else {
                    wake_s
                },
            ),
            _ => (self.spec.idle_w, sleep_s),
        };
        let from = st.ramp.at(now);
        st.mode = new_mode;
        st.ramp = Ramp {
            from,
            to,
            start: now,
            dur: self.scaled(secs),
        };
    }
}

fn profile_name(w: f64) -> String {
    format!("{w:.0}W")
}

/// The running simulator.
#[derive(Debug)]
pub struct MinerSim {
    miners: Vec<Arc<SimMiner>>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl MinerSim {
    /// Bind every miner's listeners and serve them until [`MinerSim::shutdown`].
    pub async fn start(specs: Vec<SimMinerSpec>, opts: SimOptions) -> Result<Self, SimError> {
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut miners = Vec::with_capacity(specs.len());
        for mut spec in specs {
            let api = TcpListener::bind(spec.api_addr)
                .await
                .map_err(|source| SimError::Bind {
                    id: spec.id.clone(),
                    addr: spec.api_addr,
                    source,
                })?;
            let http = match spec.http_addr {
                Some(a) => Some(
                    TcpListener::bind(a)
                        .await
                        .map_err(|source| SimError::Bind {
                            id: spec.id.clone(),
                            addr: a,
                            source,
                        })?,
                ),
                None => None,
            };
            // Port 0 binds a free port: record what was bound.
            if let Ok(a) = api.local_addr() {
                spec.api_addr = a;
            }
            if let Some(a) = http.as_ref().and_then(|l| l.local_addr().ok()) {
                spec.http_addr = Some(a);
            }
            let m = Arc::new(SimMiner::new(spec, opts.time_scale, cancel.clone()));
            tasks.spawn(serve_api(api, m.clone(), cancel.clone()));
            if let Some(l) = http {
                let router = axum::Router::new()
                    .fallback(http_handler)
                    .with_state(m.clone());
                let c = cancel.clone();
                tasks.spawn(async move {
                    axum::serve(l, router)
                        .with_graceful_shutdown(async move { c.cancelled().await })
                        .await
                        .ok();
                });
            }
            miners.push(m);
        }
        Ok(Self {
            miners,
            cancel,
            tasks,
        })
    }

    pub fn miners(&self) -> &[Arc<SimMiner>] {
        &self.miners
    }

    pub fn miner(&self, id: &str) -> Option<&Arc<SimMiner>> {
        self.miners.iter().find(|m| m.spec.id == id)
    }

    /// A token that stops the simulator when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stop every listener and connection and wait for the tasks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Specs for every miner of a validated site, with `password` as every miner's
/// password (the site names where the agent reads it; the simulator just needs one).
pub fn specs_from_site(site: &Site, password: &str) -> Result<Vec<SimMinerSpec>, SimError> {
    site.miners
        .iter()
        .map(|m| {
            let api_addr: SocketAddr = m.api_addr().parse().map_err(|_| SimError::Address {
                id: m.id.clone(),
                addr: m.api_addr(),
            })?;
            let needs_http = m.firmware.needs_http() || m.firmware == Firmware::Braiins;
            let http_addr =
                needs_http.then(|| SocketAddr::new(api_addr.ip(), m.http_port.unwrap_or(80)));
            let mut s = SimMinerSpec::new(m.id.clone(), m.firmware, api_addr, http_addr);
            s.nominal_w = m.nominal_w;
            s.min_w = m.min_w.unwrap_or(m.nominal_w * 0.5);
            s.idle_w = m.idle_w;
            if let Some(e) = m.efficiency_j_th {
                s.efficiency_j_th = e;
            }
            // Miners configured with credentials get `password`; the others keep their
            // firmware's factory login, which is what the agent's drivers use for them.
            if let Some(c) = &m.credentials {
                if let Some(u) = &c.username {
                    s.username.clone_from(u);
                }
                s.password = password.to_owned();
            }
            Ok(s)
        })
        .collect()
}

// ------------------------------------------------------------------ API server

async fn serve_api(listener: TcpListener, m: Arc<SimMiner>, cancel: CancellationToken) {
    let single_threaded = m.spec.firmware == Firmware::Avalon;
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            acc = listener.accept() => {
                let Ok((stream, _)) = acc else { continue };
                if single_threaded {
                    // Avalon's API answers one connection at a time.
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = handle_conn(stream, &m) => {}
                    }
                } else {
                    let m = m.clone();
                    let c = cancel.clone();
                    conns.spawn(async move {
                        tokio::select! {
                            _ = c.cancelled() => {}
                            _ = handle_conn(stream, &m) => {}
                        }
                    });
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn handle_conn(mut stream: TcpStream, m: &SimMiner) {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    let read = timeout(Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if serde_json::from_slice::<serde::de::IgnoredAny>(&buf).is_ok() || buf.len() > 65536 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let fault = m.fault_now();
    match fault {
        Fault::NoAnswer => {
            m.pause(Duration::from_secs(3600)).await;
            return;
        }
        Fault::SlowAnswer(d) => m.pause(d).await,
        Fault::Garbage => {
            stream
                .write_all(b"\x16\x03\x01garbage{{{:}\xff\xfe\0")
                .await
                .ok();
            return;
        }
        Fault::None | Fault::IgnoreCommands | Fault::CloseEarly | Fault::Flap(_) => {}
    }
    let reply = answer(m, &buf);
    if fault == Fault::CloseEarly {
        // Half the reply, then the connection goes away (a crashing cgminer, a watchdog
        // restart): the client sees a truncated reply, never a whole one.
        stream.write_all(&reply[..reply.len() / 2]).await.ok();
        stream.flush().await.ok();
        return;
    }
    stream.write_all(&reply).await.ok();
    stream.shutdown().await.ok();
}

fn status(letter: &str, code: i64, msg: &str, desc: &str) -> Value {
    json!([{ "STATUS": letter, "When": now_epoch(), "Code": code, "Msg": msg, "Description": desc }])
}

fn now_epoch() -> u64 {
    // The simulator's clock only feeds `When` fields; wall time is not used for logic.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn desc(fw: Firmware) -> &'static str {
    match fw {
        Firmware::Braiins => "BOSminer+ 0.2.0-ea64aec8e",
        Firmware::Luxos => "LUXminer 2025.4.8.220305-57b389c7",
        Firmware::Whatsminer => "cgminer 4.9.2",
        Firmware::Vnish => "cgminer 1.0.0",
        Firmware::AntminerStock => "cgminer 1.0.0",
        Firmware::Avalon => "cgminer 4.11.1",
    }
}

/// Build the reply bytes for one request.
fn answer(m: &SimMiner, req: &[u8]) -> Vec<u8> {
    let fw = m.spec.firmware;
    let v: Value =
        serde_json::from_slice(&req[..req.iter().position(|&b| b == 0).unwrap_or(req.len())])
            .unwrap_or(Value::Null);
    let mut out = if fw == Firmware::Whatsminer {
        whatsminer::answer(m, &v)
    } else {
        let cmd = v.get("command").and_then(Value::as_str).unwrap_or("");
        let param = v.get("parameter").and_then(Value::as_str).unwrap_or("");
        if cmd.contains('+') {
            if fw == Firmware::AntminerStock {
                cg_obj(status("E", 14, "Invalid command", desc(fw)), None).into_bytes()
            } else {
                let mut parts = Vec::new();
                for c in cmd.split('+') {
                    let one = String::from_utf8_lossy(&command_answer(m, c, "")).into_owned();
                    parts.push(format!("\"{c}\":[{one}]"));
                }
                format!("{{{},\"id\":1}}", parts.join(",")).into_bytes()
            }
        } else {
            command_answer(m, cmd, param)
        }
    };
    // cgminer forks end with NUL; btminer (Whatsminer) closes the socket instead.
    if fw != Firmware::Whatsminer {
        out.push(0);
    }
    out
}

/// The model a simulated bmminer-family miner reports (`Type` of `version` and `stats`).
/// Vnish appends its name and version, as its REST summary's `miner_type` does.
fn sim_model(fw: Firmware) -> &'static str {
    match fw {
        Firmware::Luxos => "Antminer S19k Pro",
        Firmware::Vnish => "Antminer S19 Pro (Vnish 1.2.5)",
        _ => "Antminer S19 Pro",
    }
}

fn cg_obj(status: Value, section: Option<(&str, Value)>) -> String {
    let mut o = serde_json::Map::new();
    o.insert("STATUS".into(), status);
    if let Some((k, v)) = section {
        o.insert(k.into(), v);
    }
    o.insert("id".into(), json!(1));
    Value::Object(o).to_string()
}

fn invalid(fw: Firmware) -> Vec<u8> {
    cg_obj(status("E", 14, "Invalid command", desc(fw)), None).into_bytes()
}

/// One request's reading of a miner, as every cgminer-API answer reports it (shared by
/// the firmwares' modules).
struct Cg<'a> {
    m: &'a SimMiner,
    fw: Firmware,
    /// The `Description` of the firmware's status objects.
    d: &'static str,
    power: f64,
    hr_ths: f64,
    mode: MinerMode,
    target: f64,
    elapsed: u64,
    profile: String,
    ghs: f64,
}

impl Cg<'_> {
    /// A success reply with `section`.
    fn ok(&self, code: i64, msg: &str, section: Option<(&str, Value)>) -> Vec<u8> {
        cg_obj(status("S", code, msg, self.d), section).into_bytes()
    }
}

fn command_answer(m: &SimMiner, cmd: &str, param: &str) -> Vec<u8> {
    let fw = m.spec.firmware;
    let d = desc(fw);
    let now = Instant::now();
    let (power, hr_ths, mode, target, elapsed, profile) = {
        let st = m.st();
        (
            st.ramp.at(now),
            m.hashrate_ths(&st, now),
            st.mode,
            st.target_w,
            now.saturating_duration_since(st.booted).as_secs() + 50_000,
            st.profile.clone(),
        )
    };
    let ghs = (hr_ths * 1000.0 * 100.0).round() / 100.0;
    let c = Cg {
        m,
        fw,
        d,
        power,
        hr_ths,
        mode,
        target,
        elapsed,
        profile,
        ghs,
    };
    let ok = |code: i64, msg: &str, section: Option<(&str, Value)>| c.ok(code, msg, section);
    match (fw, cmd) {
        (_, "summary") => {
            let s = match fw {
                Firmware::Braiins | Firmware::Avalon => json!({
                    "Elapsed": elapsed, "MHS 5s": hr_ths * 1.0e6, "MHS av": hr_ths * 1.0e6,
                    "Accepted": 4057, "Rejected": 11, "Hardware Errors": 0
                }),
                _ => json!({
                    "Elapsed": elapsed, "GHS 5s": ghs, "GHS av": ghs, "GHS 30m": ghs,
                    "Accepted": 4057, "Rejected": 11, "Hardware Errors": 562, "Best Share": 12904207043u64
                }),
            };
            ok(11, "Summary", Some(("SUMMARY", json!([s]))))
        }
        (Firmware::AntminerStock | Firmware::Vnish | Firmware::Luxos, "stats") => {
            let model = sim_model(fw);
            let head = json!({"BMMiner": "1.0.0", "Miner": "49.0.1.3", "CompileTime": "Tue Dec  6 16:12:30 CST 2022", "Type": model});
            let on = mode == MinerMode::Mining;
            let (fan, t) = if on { (6000, 73) } else { (1200, 35) };
            let per = format!("{:.2}", ghs / 3.0);
            let body = json!({
                "STATS": 0, "ID": "BTM_SOC0", "Elapsed": elapsed, "GHS 5s": ghs, "GHS av": ghs,
                "rate_unit": "GH", "fan_num": 4, "fan1": fan, "fan2": fan, "fan3": fan - 120, "fan4": fan - 120,
                "temp_num": 3, "temp1": t, "temp2": t - 2, "temp3": t - 4,
                "temp2_1": t + 5, "temp2_2": t + 3, "temp2_3": t + 1,
                "chain_rate1": per, "chain_rate2": per, "chain_rate3": per, "chain_rate4": "",
                "miner_count": 3, "total_rateideal": 110000.0,
                // Per-chain chip counts and sensor strings, as in the LuxOS and stock
                // captures (pyasic finds the boards by `chain_acnN`).
                "chain_acn1": 114, "chain_acn2": 114, "chain_acn3": 114, "chain_acn4": 0,
                "temp_pcb1": format!("{t}-{t}-{t}-{t}"), "temp_pcb2": format!("{0}-{0}-{0}-{0}", t - 2),
                "temp_pcb3": format!("{0}-{0}-{0}-{0}", t - 4), "temp_pcb4": "0-0-0-0",
                "temp_chip1": format!("{0}-{0}-{0}-{0}", t + 5), "temp_chip2": format!("{0}-{0}-{0}-{0}", t + 3),
                "temp_chip3": format!("{0}-{0}-{0}-{0}", t + 1), "temp_chip4": "0-0-0-0",
                "temp_pic1": format!("{0}-{0}-{0}-{0}", t - 10), "temp_pic2": format!("{0}-{0}-{0}-{0}", t - 12),
                "temp_pic3": format!("{0}-{0}-{0}-{0}", t - 14), "temp_pic4": "0-0-0-0"
            });
            // bmminer's missing comma between STATS objects (`}{`), as on the wire.
            let stats = if fw == Firmware::AntminerStock {
                format!("[{head}{body}]")
            } else {
                format!("[{head},{body}]")
            };
            format!(
                "{{\"STATUS\":{},\"STATS\":{stats},\"id\":1}}",
                status("S", 70, "CGMiner stats", d)
            )
            .into_bytes()
        }
        (Firmware::AntminerStock | Firmware::Vnish, "version") => ok(
            22,
            "CGMiner versions",
            Some((
                "VERSION",
                json!([{"API": "3.1", "BMMiner": "1.0.0", "CompileTime": "Tue Dec  6 16:12:30 CST 2022", "Miner": "49.0.1.3", "Type": sim_model(fw)}]),
            )),
        ),
        // Each firmware's own commands, in its module (stock Antminer and Vnish answer
        // the bmminer set above only; Whatsminer's btminer API is `whatsminer::answer`).
        _ => match fw {
            Firmware::Braiins => braiins::command(&c, cmd, param),
            Firmware::Luxos => luxos::command(&c, cmd, param),
            Firmware::Avalon => avalon::command(&c, cmd, param),
            Firmware::Whatsminer | Firmware::Vnish | Firmware::AntminerStock => invalid(fw),
        },
    }
}

// ------------------------------------------------------------------ HTTP server

async fn http_handler(
    State(m): State<Arc<SimMiner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = m.fault_now();
    match fault {
        Fault::NoAnswer => {
            m.pause(Duration::from_secs(3600)).await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Fault::SlowAnswer(d) => m.pause(d).await,
        Fault::Garbage => return (StatusCode::OK, "\u{fffd}garbage{{").into_response(),
        _ => {}
    }
    let resp = http_answer(&m, method, uri, headers, body).await;
    if fault == Fault::CloseEarly {
        return cut_short(resp).await;
    }
    resp
}

/// A response whose body stops half-way with an error: hyper then closes the connection
/// without finishing the body, as a miner whose web server dies mid-reply does.
async fn cut_short(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated close mid-reply",
        )),
    ];
    let mut parts = parts;
    // A length the body never reaches: the client must notice the truncation.
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        axum::body::Body::from_stream(futures::stream::iter(chunks)),
    )
}

async fn http_answer(
    m: &Arc<SimMiner>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(resp) = web::answer(m, &method, &path, &headers, &body).await {
        return resp;
    }
    // Each firmware's levers over HTTP, in its module.
    match m.spec.firmware {
        Firmware::AntminerStock => antminer_stock::http(m, &method, &path, &headers, &body).await,
        Firmware::Vnish => vnish::http(m, &method, &path, &headers, &body).await,
        Firmware::Braiins => braiins::http(m, &method, &path, &headers, &body).await,
        Firmware::Luxos | Firmware::Whatsminer | Firmware::Avalon => not_found(),
    }
}

/// What a firmware's web server answers a path it does not serve.
fn not_found() -> Response {
    // Not JSON: pyasic takes any JSON answer to its Marathon probe
    // (`/kaonsu/v1/brief`) for a Marathon miner.
    (StatusCode::NOT_FOUND, "404 Not Found").into_response()
}

/// Check an `Authorization: Digest ...` header against the miner's password.
fn digest_ok(m: &SimMiner, headers: &HeaderMap, method: &str) -> bool {
    let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Ok(mut hdr) = digest_auth::AuthorizationHeader::parse(h) else {
        return false;
    };
    if hdr.username != m.spec.username {
        return false;
    }
    let claimed = hdr.response.clone();
    let uri = hdr.uri.clone();
    let ctx = digest_auth::AuthContext::new_with_method(
        m.spec.username.as_str(),
        m.spec.password.as_str(),
        uri.as_str(),
        Option::<&[u8]>::None,
        digest_auth::HttpMethod::from(method.to_owned()),
    );
    hdr.digest(&ctx);
    hdr.response == claimed
}
