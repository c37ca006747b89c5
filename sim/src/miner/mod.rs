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
use rackwarden_protocols::miner::wmcrypto::TokenKeys;

// The web APIs the independent clients (pyasic, asic-rs) read: web roots, stock Antminer's
// CGI set, Vnish's info/status/settings, Braiins OS's GraphQL and REST API.
mod web;

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
                    let _ = axum::serve(l, router)
                        .with_graceful_shutdown(async move { c.cancelled().await })
                        .await;
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
            let _ = stream
                .write_all(b"\x16\x03\x01garbage{{{:}\xff\xfe\0")
                .await;
            return;
        }
        Fault::None | Fault::IgnoreCommands | Fault::CloseEarly | Fault::Flap(_) => {}
    }
    let reply = answer(m, &buf);
    if fault == Fault::CloseEarly {
        // Half the reply, then the connection goes away (a crashing cgminer, a watchdog
        // restart): the client sees a truncated reply, never a whole one.
        let _ = stream.write_all(&reply[..reply.len() / 2]).await;
        let _ = stream.flush().await;
        return;
    }
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
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
        whatsminer_answer(m, &v)
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
    let ok = |code: i64, msg: &str, section: Option<(&str, Value)>| {
        cg_obj(status("S", code, msg, d), section).into_bytes()
    };
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
        // LuxOS and stock bmminer as in the fixtures (luxos_version.json,
        // antminer-s19pro-stock_version.json); Vnish's `Type` names it.
        (Firmware::Luxos, "version") => ok(
            22,
            "LUXminer versions",
            Some((
                "VERSION",
                json!([{"API": "3.7", "CompileTime": "Tue Apr  8 22:05:35 UTC 2025", "LUXminer": "2025.4.8.220305-57b389c7", "Miner": "2025.4.8.220305", "Type": sim_model(fw)}]),
            )),
        ),
        // BOSminer's `version` names the software only; the model is in `devdetails`
        // (where pyasic reads it, with a `Bitmain ` prefix).
        (Firmware::Braiins, "version") => ok(
            22,
            "BOSminer versions",
            Some((
                "VERSION",
                json!([{"API": "3.7", "BOSminer": "0.2.0-ea64aec8e"}]),
            )),
        ),
        (Firmware::Braiins, "devdetails") => ok(
            69,
            "Device Details",
            Some((
                "DEVDETAILS",
                json!([6, 7, 8].iter().enumerate().map(|(i, id)| json!({"DEVDETAILS": i, "Name": "Hashchain", "ID": id, "Driver": "bitmain", "Kernel": "", "Model": "Bitmain Antminer S19 Pro", "Chips": 114, "Frequency": 650.0, "Voltage": 13.4})).collect::<Vec<_>>()),
            )),
        ),
        (Firmware::AntminerStock | Firmware::Vnish, "version") => ok(
            22,
            "CGMiner versions",
            Some((
                "VERSION",
                json!([{"API": "3.1", "BMMiner": "1.0.0", "CompileTime": "Tue Dec  6 16:12:30 CST 2022", "Miner": "49.0.1.3", "Type": sim_model(fw)}]),
            )),
        ),
        (Firmware::Braiins, "tunerstatus") => ok(
            203,
            "Tuner Status",
            Some((
                "TUNERSTATUS",
                json!([{
                    "ApproximateMinerPowerConsumption": power.round(),
                    "ApproximateChainPowerConsumption": (power * 0.95).round(),
                    "PowerLimit": target.round(), "DynamicPowerScaling": "Disabled", "TunerChainStatus": []
                }]),
            )),
        ),
        (Firmware::Braiins, "temps") => ok(
            201,
            "3 Temp(s)",
            Some((
                "TEMPS",
                json!([{"TEMP": 0, "ID": 6, "Board": 81.875, "Chip": 104.625}, {"TEMP": 1, "ID": 7, "Board": 85.875, "Chip": 108.9375}, {"TEMP": 2, "ID": 8, "Board": 84.4375, "Chip": 105.4375}]),
            )),
        ),
        // BOSminer's `devs`: one entry per hashboard (ID 6..8 as `temps`), `MHS 5s` zero
        // while paused (pyasic reads the mining state from it).
        (Firmware::Braiins, "devs") => {
            let per = hr_ths * 1.0e6 / 3.0;
            let nominal = m.spec.nominal_w / m.spec.efficiency_j_th * 1.0e6 / 3.0;
            let devs: Vec<Value> = [6, 7, 8]
                .iter()
                .enumerate()
                .map(|(i, id)| json!({"ASC": i, "Name": "", "ID": id, "Enabled": "Y", "Status": "Alive", "Temperature": 0.0, "MHS av": per, "MHS 5s": per, "MHS 1m": per, "MHS 5m": per, "MHS 15m": per, "Nominal MHS": nominal, "Accepted": 1350, "Rejected": 3, "Hardware Errors": 0, "Device Elapsed": elapsed}))
                .collect();
            ok(9, "3 ASC(s)", Some(("DEVS", json!(devs))))
        }
        (Firmware::Braiins, "fans") => ok(
            202,
            "2 Fan(s)",
            Some((
                "FANS",
                json!([{"FAN": 0, "ID": 0, "RPM": 5340, "Speed": 100}, {"FAN": 1, "ID": 1, "RPM": 4620, "Speed": 100}]),
            )),
        ),
        (Firmware::Braiins, "pause") => {
            m.control("pause", Some(MinerMode::Paused), None);
            ok(204, "Pause", Some(("PAUSE", json!([true]))))
        }
        (Firmware::Braiins, "resume") => {
            m.control("resume", Some(MinerMode::Mining), None);
            ok(205, "Resume", Some(("RESUME", json!([true]))))
        }
        // LuxOS `fans` and `temps` (as LUXminer 2025.4.8 answers, asic-rs's luxminer test
        // data), the same figures as `stats`.
        (Firmware::Luxos, "fans") => {
            let th = web::bm_thermals(mode);
            let fans: Vec<Value> = th.fans.iter().enumerate().map(|(i, rpm)| json!({"FAN": format!("FAN{}", i + 1), "ID": i, "RPM": rpm, "Speed": 100})).collect();
            ok(202, "4 Fan(s)", Some(("FANS", json!(fans))))
        }
        (Firmware::Luxos, "temps") => {
            let th = web::bm_thermals(mode);
            let temps: Vec<Value> = (0..3).map(|i| json!({"TEMP": i, "ID": i, "TopLeft": th.pcb[i], "BottomLeft": th.pcb[i], "TopRight": th.pcb[i] - 10, "BottomRight": th.pcb[i] - 10})).collect();
            ok(201, "3 Temp(s)", Some(("TEMPS", json!(temps))))
        }
        (Firmware::Luxos, "power") => ok(
            311,
            "Power usage",
            Some(("POWER", json!([{"PSU": false, "Watts": power.round()}]))),
        ),
        (Firmware::Luxos, "config") => ok(
            33,
            "LUXminer config",
            Some((
                "CONFIG",
                json!([{
                    "CurtailMode": if mode == MinerMode::Mining { "None" } else { "Sleep" },
                    "Profile": profile, "Model": "Antminer S19k Pro", "OS": "LuxOS", "IsTuning": true,
                    "MACAddr": m.mac_text(false), "NameplateTHS": 121.8
                }]),
            )),
        ),
        (Firmware::Luxos, "profiles") => {
            let steps = 8;
            let span = m.spec.nominal_w - m.spec.min_w;
            let list: Vec<Value> = (0..=steps)
                .map(|i| {
                    let w = m.spec.min_w + span * f64::from(i) / f64::from(steps);
                    json!({"Profile Name": profile_name(w), "Watts": w.round(), "Hashrate": ((w / m.spec.efficiency_j_th) * 10.0).round() / 10.0, "Step": i.to_string(), "IsDynamic": true})
                })
                .collect();
            ok(323, "List profiles", Some(("PROFILES", json!(list))))
        }
        (Firmware::Luxos, "logon") => {
            let mut st = m.st();
            if st.session.is_some() {
                drop(st);
                cg_obj(status("E", 45, "Another session is active", d), None).into_bytes()
            } else {
                st.counter += 1;
                let sid = format!("{:08x}", st.counter.wrapping_mul(2_654_435_761));
                st.session = Some(sid.clone());
                drop(st);
                ok(
                    317,
                    "Logon successful",
                    Some(("SESSION", json!([{"SessionID": sid}]))),
                )
            }
        }
        (Firmware::Luxos, "session") => {
            let sid = m.st().session.clone().unwrap_or_default();
            ok(
                318,
                "Session",
                Some(("SESSION", json!([{"SessionID": sid}]))),
            )
        }
        (Firmware::Luxos, "curtail" | "profileset") => {
            let mut it = param.splitn(2, ',');
            let (sid, arg) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if m.st().session.as_deref() != Some(sid) || sid.is_empty() {
                return cg_obj(status("E", 43, "Invalid session id", d), None).into_bytes();
            }
            if cmd == "curtail" {
                let (mode, action) = match arg {
                    "sleep" => (MinerMode::Sleeping, "sleep mode"),
                    "wakeup" => (MinerMode::Mining, "wake up"),
                    _ => {
                        return cg_obj(status("E", 336, "Invalid curtail mode", d), None)
                            .into_bytes()
                    }
                };
                m.control(&format!("curtail {arg}"), Some(mode), None);
                ok(
                    335,
                    "Curtailment command sent",
                    Some(("CURTAIL", json!([{"Action": action}]))),
                )
            } else {
                let Some(w) = arg.strip_suffix('W').and_then(|w| w.parse::<f64>().ok()) else {
                    return cg_obj(status("E", 325, "Invalid profile", d), None).into_bytes();
                };
                m.control(&format!("profileset {arg}"), None, Some(w));
                ok(
                    324,
                    "Profile set",
                    Some(("PROFILE", json!([{"Profile": arg}]))),
                )
            }
        }
        // cgminer's `stats` carries the same MM string on an Avalon (asic-rs reads it).
        (Firmware::Avalon, "estats" | "stats") => {
            let (soft, work) = if mode == MinerMode::Mining {
                (0, "In Work")
            } else {
                (1, "In Idle")
            };
            // As the A1246 capture (asic-rs avalon_a_stats.json): power in PS[] (5th
            // value), no WALLPOWER.
            let mm = format!(
                "Ver[1246-83-21082601_4ec6bb0_61407fa] Elapsed[{elapsed}] Temp[30] TMax[91] TAvg[78] Fan1[3000] Fan2[3010] FanR[60%] SoftOFF[{soft}] SYSTEMSTATU[Work: {work}, Hash Board: 3 ] GHSspd[{ghs:.2}] GHSmm[{:.2}] MTmax[91 90 89] MTavg[78 77 76] WORKMODE[1] PS[0 1209 2280 54 {:.0} 2280 1270]",
                m.spec.nominal_w / m.spec.efficiency_j_th * 1000.0,
                power
            );
            ok(
                70,
                "CGMiner stats",
                Some((
                    "STATS",
                    json!([{"STATS": 0, "ID": "AVA100", "Elapsed": elapsed, "Calls": 0, "Wait": 0.0, "Max": 0.0, "Min": 99_999_999.0, "MM Count": 1, "MM ID0": mm}]),
                )),
            )
        }
        // cgminer's `devs`: one ASC, rates in MH/s (pyasic and asic-rs read `MHS 1m`).
        (Firmware::Avalon, "devs") => ok(
            9,
            "1 ASC(s)",
            Some((
                "DEVS",
                json!([{"ASC": 0, "Name": "AVALON", "ID": 0, "Enabled": "Y", "Status": "Alive", "Temperature": 0.0, "MHS av": hr_ths * 1.0e6, "MHS 5s": hr_ths * 1.0e6, "MHS 1m": hr_ths * 1.0e6, "MHS 5m": hr_ths * 1.0e6, "MHS 15m": hr_ths * 1.0e6, "Accepted": 890, "Rejected": 2, "Hardware Errors": 0, "Device Elapsed": elapsed}]),
            )),
        ),
        (Firmware::Avalon, "version") => ok(
            22,
            "CGMiner versions",
            Some((
                "VERSION",
                json!([{"CGMiner": "4.11.1", "API": "3.7", "STM8": "20.08.01", "PROD": "AvalonMiner 1246", "MODEL": "1246", "HWTYPE": "MM3v2_X3", "SWTYPE": "MM314", "VERSION": "21082601_4ec6bb0_61407fa", "LOADER": "d0d779de.00", "DNA": "020100008c699117", "MAC": m.mac_text(false).replace(':', ""), "UPAPI": "2"}]),
            )),
        ),
        (Firmware::Avalon, "ascset") => {
            let verb = param.split(',').nth(1).unwrap_or("");
            let mode = match verb {
                "softoff" => MinerMode::Sleeping,
                "softon" => MinerMode::Mining,
                _ => {
                    return cg_obj(
                        status("I", 118, "ASC 0 set info: help|softon|softoff|workmode|", d),
                        None,
                    )
                    .into_bytes()
                }
            };
            m.control(&format!("ascset {verb}"), Some(mode), None);
            cg_obj(
                status(
                    "I",
                    118,
                    &format!("ASC 0 set info: success {verb}:{}", now_epoch()),
                    d,
                ),
                None,
            )
            .into_bytes()
        }
        _ => invalid(fw),
    }
}

fn wm_flat(letter: &str, code: i64, msg: Value) -> Value {
    json!({"STATUS": letter, "When": now_epoch(), "Code": code, "Msg": msg, "Description": ""})
}

fn whatsminer_answer(m: &SimMiner, v: &Value) -> Vec<u8> {
    let cmd = v
        .get("cmd")
        .or_else(|| v.get("command"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if v.get("enc").is_some() {
        return whatsminer_write(m, v).to_string().into_bytes();
    }
    // Joined reads (`summary+devs`, as pyasic sends them): cgminer's form, each reply
    // under its command's name (btminer's trailing `,}` repaired inside).
    if cmd.contains('+') {
        let parts: Vec<String> = cmd
            .split('+')
            .map(|c| {
                let one = whatsminer_answer(m, &json!({"cmd": c}));
                let one = String::from_utf8_lossy(&one).replace(",}", "}");
                format!("\"{c}\":[{one}]")
            })
            .collect();
        return format!("{{{},\"id\":1}}", parts.join(",")).into_bytes();
    }
    let now = Instant::now();
    let (power, hr, mode, target, elapsed) = {
        let st = m.st();
        (
            st.ramp.at(now),
            m.hashrate_ths(&st, now),
            st.mode,
            st.target_w,
            now.saturating_duration_since(st.booted).as_secs() + 25_000,
        )
    };
    let body = match cmd {
        "summary" => {
            let s = json!({
                "Elapsed": elapsed, "MHS av": hr * 1.0e6, "MHS 5s": hr * 1.0e6, "MHS 1m": hr * 1.0e6,
                "MHS 5m": hr * 1.0e6, "MHS 15m": hr * 1.0e6, "HS RT": hr * 1.0e6, "Power": power.round(),
                "Factory GHS": (m.spec.nominal_w / m.spec.efficiency_j_th * 1000.0).round(), "Chip Temp Min": 62.0,
                "Power Limit": target.round(), "Chip Temp Max": 81.0, "Chip Temp Avg": 72.5,
                "Fan Speed In": 5400, "Fan Speed Out": 5280, "Env Temp": 28.5, "Power Mode": "Normal",
                "Uptime": elapsed, "MAC": m.mac_text(true)
            });
            // btminer v1/v2 sends a trailing comma before the closing brace.
            let mut text = json!({"STATUS": status("S", 11, "Summary", "cgminer 4.9.2"), "SUMMARY": [s], "id": 1}).to_string();
            if text.ends_with('}') {
                text.pop();
                text.push_str(",}");
            }
            return text.into_bytes();
        }
        // btminer's `devs` (code 9): one entry per hashboard, as whatsminer-apiv2_devs.json.
        "devs" => {
            let boards: Vec<Value> = (0..3)
                .map(|i| json!({
                    "ASC": i, "Name": "SM", "ID": i, "Slot": i, "Enabled": "Y", "Status": "Alive",
                    "Temperature": 65.0, "Chip Frequency": 600, "Frequency": 600.0,
                    "Fan Speed In": 5400, "Fan Speed Out": 5280, "MHS av": hr * 1.0e6 / 3.0,
                    "Accepted": 1804, "Rejected": 0, "Device Elapsed": elapsed,
                    "Factory GHS": (m.spec.nominal_w / m.spec.efficiency_j_th * 1000.0 / 3.0).round(),
                    "Chip Temp Min": 62.0, "Chip Temp Max": 81.0, "Chip Temp Avg": 72.5,
                    "Effective Chips": 135, "PCB SN": format!("BHM5CSD13028SIM{i:04}")
                }))
                .collect();
            return json!({"STATUS": status("S", 9, "3 ASC(s)", "cgminer 4.9.2"), "DEVS": boards, "id": 1})
                .to_string()
                .into_bytes();
        }
        // cgminer's `devdetails` (code 69) with btminer's driver name and model code,
        // the fields pyasic reads to name a Whatsminer (`DEVDETAILS[0].Model`).
        "devdetails" => {
            let boards: Vec<Value> = (0..3)
                .map(|i| json!({"DEVDETAILS": i, "Name": "SM", "ID": i, "Driver": "bitmicro", "Kernel": "", "Model": "M30S+VE40"}))
                .collect();
            return json!({"STATUS": status("S", 69, "Device Details", "cgminer 4.9.2"), "DEVDETAILS": boards, "id": 1})
                .to_string()
                .into_bytes();
        }
        "status" => wm_flat(
            "S",
            131,
            json!({"mineroff": if mode == MinerMode::Mining { "false" } else { "true" }, "power_limit_set": format!("{target:.0}"), "FirmwareVersion": "20240624.18.REL", "power_mode": "normal"}),
        ),
        "get_version" => wm_flat(
            "S",
            131,
            json!({"api_ver": "2.0.5", "fw_ver": "20230803.11.REL", "platform": "H616"}),
        ),
        "get_token" => {
            let mut st = m.st();
            st.counter += 1;
            let salt = format!("s{:07x}", st.counter.wrapping_mul(40_503) & 0x0fff_ffff);
            let newsalt = format!("n{:07x}", st.counter.wrapping_mul(69_069) & 0x0fff_ffff);
            let time = format!("{}", 1000 + st.counter);
            st.wm_token = Some((salt.clone(), newsalt.clone(), time.clone()));
            wm_flat(
                "S",
                134,
                json!({"time": time, "salt": salt, "newsalt": newsalt}),
            )
        }
        _ => wm_flat("E", 14, json!("invalid cmd")),
    };
    body.to_string().into_bytes()
}

fn whatsminer_write(m: &SimMiner, v: &Value) -> Value {
    let Some((salt, newsalt, time)) = m.st().wm_token.clone() else {
        return wm_flat("E", 135, json!("check token err"));
    };
    let Ok(keys) = TokenKeys::derive(&m.spec.password, &salt, &newsalt, &time) else {
        return wm_flat("E", 135, json!("check token err"));
    };
    let data = v.get("data").and_then(Value::as_str).unwrap_or("");
    let Ok(inner) = keys.open(data) else {
        return wm_flat("E", 135, json!("check token err"));
    };
    if inner.get("token").and_then(Value::as_str) != Some(keys.sign.as_str()) {
        return wm_flat("E", 136, json!("token has expired"));
    }
    let cmd = inner.get("cmd").and_then(Value::as_str).unwrap_or("");
    let reply = match cmd {
        "power_off" => {
            m.control("power_off", Some(MinerMode::Sleeping), None);
            wm_flat("S", 131, json!("API command OK"))
        }
        "power_on" => {
            m.control("power_on", Some(MinerMode::Mining), None);
            wm_flat("S", 131, json!("API command OK"))
        }
        "adjust_power_limit" => match inner
            .get("power_limit")
            .and_then(rackwarden_protocols::miner::reply::num)
        {
            Some(w) => {
                m.control(&format!("adjust_power_limit {w:.0}"), None, Some(w));
                wm_flat("S", 131, json!("API command OK"))
            }
            None => wm_flat("E", 14, json!("invalid power_limit")),
        },
        _ => wm_flat("E", 14, json!("invalid cmd")),
    };
    json!({ "enc": keys.seal(reply.to_string().as_bytes()) })
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
    let bad = |s: StatusCode| (s, "{}").into_response();
    if let Some(resp) = web::answer(m, &method, &path, &headers, &body).await {
        return resp;
    }
    match (m.spec.firmware, method.as_str(), path.as_str()) {
        (
            Firmware::AntminerStock,
            _,
            "/cgi-bin/get_miner_conf.cgi" | "/cgi-bin/set_miner_conf.cgi",
        ) => {
            if !digest_ok(m, &headers, method.as_str()) {
                let nonce = format!("{:016x}", now_epoch().wrapping_mul(0x9E37_79B9));
                return (
                    StatusCode::UNAUTHORIZED,
                    [("www-authenticate", format!("Digest realm=\"antMiner Configuration\", nonce=\"{nonce}\", qop=\"auth\""))],
                    "",
                )
                    .into_response();
            }
            if path.ends_with("get_miner_conf.cgi") {
                // The stock firmware reads the mode back as `bitmain-work-mode` (a
                // string) and takes it as `miner-mode` in set_miner_conf.cgi; pyasic reads
                // the first, asic-rs writes both.
                let mode = if m.mode() == MinerMode::Mining {
                    "0"
                } else {
                    "1"
                };
                return axum::Json(json!({
                    "pools": [{"url": "stratum+tcp://btc.example.pool:3333", "user": "sim.worker", "pass": "x"}],
                    "api-listen": true, "api-network": true, "bitmain-fan-ctrl": false, "bitmain-fan-pwm": "100",
                    "bitmain-work-mode": mode, "bitmain-freq-level": "100"
                }))
                .into_response();
            }
            let Some(mode) = body
                .get("miner-mode")
                .and_then(rackwarden_protocols::miner::reply::num)
            else {
                return axum::Json(json!({"stats": "error", "code": "M001", "msg": "bad conf"}))
                    .into_response();
            };
            // The stock CGI answers a mode change after it has applied it (~20 s).
            m.pause(m.scaled(20.0)).await;
            if mode >= 1.0 {
                m.control("miner-mode 1", Some(MinerMode::Sleeping), None);
            } else {
                m.control("miner-mode 0", Some(MinerMode::Mining), None);
            }
            axum::Json(json!({"stats": "success", "code": "M000", "msg": "OK!"})).into_response()
        }
        (Firmware::Vnish, "GET", "/api/v1/summary") => {
            axum::Json(web::vnish_summary(m)).into_response()
        }
        (Firmware::Vnish, "GET", "/api/v1/autotune/presets") => {
            let steps = 6;
            let span = m.spec.nominal_w - m.spec.min_w;
            let list: Vec<Value> = (0..=steps)
                .map(|i| {
                    let w = (m.spec.min_w + span * f64::from(i) / f64::from(steps)).round();
                    json!({"name": format!("{w:.0}"), "pretty": format!("{w:.0} watt ~ {:.0} TH", w / m.spec.efficiency_j_th), "status": "tuned", "modded_psu_required": false})
                })
                .collect();
            axum::Json(json!(list)).into_response()
        }
        (Firmware::Vnish, "POST", "/api/v1/unlock") => {
            if body.get("pw").and_then(Value::as_str) != Some(m.spec.password.as_str()) {
                return bad(StatusCode::FORBIDDEN);
            }
            let mut st = m.st();
            st.counter += 1;
            let t = format!("tok{:x}", st.counter.wrapping_mul(2_654_435_761));
            st.http_token = Some(t.clone());
            axum::Json(json!({"token": t})).into_response()
        }
        (Firmware::Vnish, "POST", p) if p.starts_with("/api/v1/") => {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let ok = m.st().http_token.as_deref().map(|t| format!("Bearer {t}"))
                == Some(auth.to_owned());
            if !ok {
                return bad(StatusCode::UNAUTHORIZED);
            }
            match p {
                "/api/v1/mining/pause" => m.control("pause", Some(MinerMode::Paused), None),
                "/api/v1/mining/resume" => m.control("resume", Some(MinerMode::Mining), None),
                // asic-rs's pause/resume and pyasic's stop_mining: the cgminer process
                // stops and starts (the same power and `stopped` state as a pause here).
                "/api/v1/mining/stop" => m.control("stop", Some(MinerMode::Sleeping), None),
                "/api/v1/mining/start" => m.control("start", Some(MinerMode::Mining), None),
                "/api/v1/settings" => {
                    let Some(w) = body
                        .pointer("/miner/overclock/preset")
                        .and_then(rackwarden_protocols::miner::reply::num)
                    else {
                        return bad(StatusCode::BAD_REQUEST);
                    };
                    m.control(&format!("preset {w:.0}"), None, Some(w));
                }
                _ => return bad(StatusCode::NOT_FOUND),
            }
            axum::Json(json!({})).into_response()
        }
        (Firmware::Braiins, "POST", "/api/v1/auth/login") => {
            if body.get("password").and_then(Value::as_str) != Some(m.spec.password.as_str()) {
                return bad(StatusCode::UNAUTHORIZED);
            }
            let mut st = m.st();
            st.counter += 1;
            let t = format!("bos{:x}", st.counter.wrapping_mul(2_654_435_761));
            st.http_token = Some(t.clone());
            axum::Json(json!({"token": t, "timeout_s": 3600})).into_response()
        }
        (Firmware::Braiins, "PUT", "/api/v1/performance/power-target") => {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
            if auth.is_none() || m.st().http_token.as_deref() != auth {
                return bad(StatusCode::UNAUTHORIZED);
            }
            let Some(w) = body
                .get("watt")
                .and_then(rackwarden_protocols::miner::reply::num)
            else {
                return bad(StatusCode::BAD_REQUEST);
            };
            m.control(&format!("power-target {w:.0}"), None, Some(w));
            axum::Json(json!({"watt": w})).into_response()
        }
        // Not JSON: pyasic takes any JSON answer to its Marathon probe
        // (`/kaonsu/v1/brief`) for a Marathon miner.
        _ => (StatusCode::NOT_FOUND, "404 Not Found").into_response(),
    }
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
