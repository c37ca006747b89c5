//! The Modbus device simulator: a tokio-modbus server (Modbus TCP, or RTU framing over
//! TCP as a serial gateway does) that serves one or more unit ids, each with a profile.
//!
//! Values are live: [`Simulator::set`] writes a point (by name or role) in engineering
//! units, and the client sees it on its next read. Writes from clients land in the same
//! store and in a log ([`Simulator::writes`]) the site simulator reads. Only addresses a
//! profile defines exist: a read that touches an undefined register gets exception 2, as
//! on real devices. Faults are injected per unit id ([`Simulator::inject`]): no answer,
//! late answer, an exception code, a connection reset (TCP RST), a garbage frame; and the
//! whole server can accept one connection at a time. Whole-server faults: another client
//! takes a single-connection device's only slot ([`Simulator::take`]: every other
//! connection is reset and new ones are closed at once until [`Simulator::release`]), and
//! a gateway reboots ([`Simulator::reboot`]: every connection reset, every unit behind it
//! silent, connections refused until it is back). [`Simulator::shutdown`] (or dropping
//! the handle) stops the listener and every connection task.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use rackwarden_config::profile::{Point, Profile, RegisterKind};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use rackwarden_protocols::modbus::decode::{self, DecodeError};

/// Simulator errors (setting values from outside).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator has no unit {unit}")]
    NoSuchUnit { unit: u8 },
    #[error("unit {unit} (profile `{profile}`) has no point or role `{point}`")]
    NoSuchPoint {
        unit: u8,
        profile: String,
        point: String,
    },
    #[error("unit {unit} point `{point}`: no instance {index}")]
    NoSuchInstance { unit: u8, point: String, index: u32 },
    #[error("unit {unit} point `{point}`: cannot encode value")]
    Encode {
        unit: u8,
        point: String,
        #[source]
        source: DecodeError,
    },
    #[error("cannot bind the simulator to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Framing the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Modbus TCP (MBAP header).
    Tcp,
    /// RTU frames (CRC) over a TCP socket, like a serial-to-Ethernet gateway.
    RtuOverTcp,
}

/// A fault to inject into a unit's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Read the request, never answer.
    NoAnswer,
    /// Answer after this delay.
    Late(Duration),
    /// Answer with this exception code (e.g. 2 illegal address, 6 busy).
    Exception(u8),
    /// Reset the TCP connection (RST) instead of answering.
    Reset,
    /// Send bytes that are no Modbus frame.
    Garbage,
}

/// A client write the simulator accepted, per point instance touched.
#[derive(Debug, Clone, PartialEq)]
pub struct SimWrite {
    pub unit: u8,
    pub point: String,
    pub index: u32,
    pub value: f64,
}

type Key = (u8, u16); // (table, address)

fn table(k: RegisterKind) -> u8 {
    match k {
        RegisterKind::Holding => 0,
        RegisterKind::Input => 1,
        RegisterKind::Coil => 2,
        RegisterKind::Discrete => 3,
    }
}

struct Unit {
    profile: Profile,
    regs: HashMap<Key, u16>,
    writable: HashSet<Key>,
    fault: Option<(Fault, u32)>,
}

impl Unit {
    fn new(profile: Profile) -> Unit {
        let mut regs = HashMap::new();
        let mut writable = HashSet::new();
        for p in &profile.points {
            let width = if p.register.is_bit() {
                1
            } else {
                p.data_type.words()
            };
            for i in 1..=p.count {
                let Some(a) = p.address_of(i) else { continue };
                for w in 0..width {
                    if let Ok(addr) = u16::try_from(a + w) {
                        regs.insert((table(p.register), addr), 0);
                        if p.writable {
                            writable.insert((table(p.register), addr));
                        }
                    }
                }
            }
        }
        Unit {
            profile,
            regs,
            writable,
            fault: None,
        }
    }

    fn take_fault(&mut self) -> Option<Fault> {
        let (f, n) = self.fault?;
        if n <= 1 {
            self.fault = None;
        } else if n != u32::MAX {
            self.fault = Some((f, n - 1));
        }
        Some(f)
    }

    fn read(&self, k: RegisterKind, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        let limit = if k.is_bit() { 2000 } else { 125 };
        if count == 0 || count > limit {
            return Err(ExceptionCode::IllegalDataValue);
        }
        (0..count)
            .map(|i| {
                start
                    .checked_add(i)
                    .and_then(|a| self.regs.get(&(table(k), a)).copied())
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }

    /// Stores client-written words; every address must be defined and writable.
    fn write(&mut self, k: RegisterKind, start: u16, words: &[u16]) -> Result<(), ExceptionCode> {
        for i in 0..words.len() {
            let a = u16::try_from(i)
                .ok()
                .and_then(|i| start.checked_add(i))
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            if !self.writable.contains(&(table(k), a)) {
                return Err(ExceptionCode::IllegalDataAddress);
            }
        }
        for (a, w) in (start..).zip(words) {
            self.regs.insert((table(k), a), *w);
        }
        Ok(())
    }

    fn instance_words(&self, p: &Point, index: u32) -> Option<Vec<u16>> {
        let a = p.address_of(index)?;
        let width = if p.register.is_bit() {
            1
        } else {
            p.data_type.words()
        };
        (0..width)
            .map(|w| {
                let addr = u16::try_from(a + w).ok()?;
                self.regs.get(&(table(p.register), addr)).copied()
            })
            .collect()
    }

    fn value(&self, p: &Point, index: u32) -> Option<f64> {
        let words = self.instance_words(p, index)?;
        if p.register.is_bit() {
            Some(decode::decode_bit_point(
                words.first().copied().unwrap_or(0) != 0,
                p,
            ))
        } else {
            decode::decode_point(&words, p).ok()
        }
    }

    /// Point instances of writable points overlapping `start..start+len` in table `k`.
    fn touched(&self, k: RegisterKind, start: u16, len: u16) -> Vec<(String, u32)> {
        let end = u32::from(start) + u32::from(len);
        let mut out = Vec::new();
        for p in &self.profile.points {
            if p.register != k || !p.writable {
                continue;
            }
            let width = if k.is_bit() { 1 } else { p.data_type.words() };
            for i in 1..=p.count {
                let Some(a) = p.address_of(i) else { continue };
                if a < end && a + width > u32::from(start) {
                    out.push((p.name.clone(), i));
                }
            }
        }
        out
    }
}

/// Who may hold a connection now (whole-server faults).
#[derive(Default)]
struct Gate {
    /// Another client holds the device's only connection: its peer address.
    taken_by: Option<SocketAddr>,
    /// The squatter's socket, kept open while the slot is taken.
    squatter: Option<std::net::TcpStream>,
    /// Rebooting until then: connections are refused (reset) at once.
    down_until: Option<tokio::time::Instant>,
}

impl Gate {
    /// Whether a connection from `peer` may be served now.
    fn admits(&self, peer: SocketAddr) -> bool {
        if self
            .down_until
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            return false;
        }
        self.taken_by.is_none_or(|s| s == peer)
    }
}

struct State {
    units: Mutex<HashMap<u8, Unit>>,
    gate: Mutex<Gate>,
    /// Bumped to reset every open connection (at its next read or write) that the gate
    /// no longer admits.
    epoch: AtomicU64,
    writes: Mutex<Vec<SimWrite>>,
    one_connection_only: AtomicBool,
    active: AtomicUsize,
    requests: AtomicU64,
    connections_total: AtomicU64,
    framing: Framing,
}

impl State {
    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn units(&self) -> MutexGuard<'_, HashMap<u8, Unit>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters to a simulator; keep serving.
        self.units
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running simulator; dropping it stops the server.
pub struct Simulator {
    state: Arc<State>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds `addr` (use port 0 for a free port) and serves `units` (unit id, profile).
    /// All values start at 0.
    pub async fn start(
        addr: SocketAddr,
        framing: Framing,
        units: Vec<(u8, Profile)>,
    ) -> Result<Simulator, SimError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let state = Arc::new(State {
            units: Mutex::new(
                units
                    .into_iter()
                    .map(|(id, p)| (id, Unit::new(p)))
                    .collect(),
            ),
            writes: Mutex::new(Vec::new()),
            gate: Mutex::new(Gate::default()),
            epoch: AtomicU64::new(0),
            one_connection_only: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            framing,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let on_connected = |stream: TcpStream, peer: SocketAddr| {
                let st = st.clone();
                async move { Ok(accept(&st, stream, peer)) }
            };
            let on_error = |e: io::Error| tracing::trace!(error = %e, "sim connection ended");
            let abort = async move {
                stopped.await.ok();
            };
            let r = match framing {
                Framing::Tcp => {
                    tokio_modbus::server::tcp::Server::new(listener)
                        .serve_until(&on_connected, on_error, abort)
                        .await
                }
                Framing::RtuOverTcp => {
                    tokio_modbus::server::rtu_over_tcp::Server::new(listener)
                        .serve_until(&on_connected, on_error, abort)
                        .await
                }
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "modbus simulator stopped");
            }
        });
        Ok(Simulator {
            state,
            addr: local,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Serves one unit (id 1) with `profile` on Modbus TCP.
    pub async fn tcp(addr: SocketAddr, profile: Profile) -> Result<Simulator, SimError> {
        Simulator::start(addr, Framing::Tcp, vec![(1, profile)]).await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn framing(&self) -> Framing {
        self.state.framing
    }

    fn with_point<T>(
        &self,
        unit: u8,
        point: &str,
        f: impl FnOnce(&mut Unit, &Point) -> Result<T, SimError>,
    ) -> Result<T, SimError> {
        let mut units = self.state.units();
        let u = units.get_mut(&unit).ok_or(SimError::NoSuchUnit { unit })?;
        let p = u
            .profile
            .point(point)
            .cloned()
            .ok_or_else(|| SimError::NoSuchPoint {
                unit,
                profile: u.profile.name.clone(),
                point: point.to_owned(),
            })?;
        f(u, &p)
    }

    /// Sets instance `index` (1-based) of `point` (name or role) to `value` in
    /// engineering units (0/1 for bits).
    pub fn set(&self, unit: u8, point: &str, index: u32, value: f64) -> Result<(), SimError> {
        self.with_point(unit, point, |u, p| {
            let addr = p
                .address_of(index)
                .ok_or_else(|| SimError::NoSuchInstance {
                    unit,
                    point: p.name.clone(),
                    index,
                })?;
            let enc = |source| SimError::Encode {
                unit,
                point: p.name.clone(),
                source,
            };
            let words = if p.register.is_bit() {
                vec![u16::from(decode::encode_bit_point(value, p).map_err(enc)?)]
            } else {
                decode::encode_point(value, p).map_err(enc)?
            };
            for (a, w) in (addr..).zip(words) {
                if let Ok(a) = u16::try_from(a) {
                    u.regs.insert((table(p.register), a), w);
                }
            }
            Ok(())
        })
    }

    /// Sets raw register words (for values no encoding produces, e.g. a NaN).
    pub fn set_words(
        &self,
        unit: u8,
        point: &str,
        index: u32,
        words: &[u16],
    ) -> Result<(), SimError> {
        self.with_point(unit, point, |u, p| {
            let addr = p
                .address_of(index)
                .ok_or_else(|| SimError::NoSuchInstance {
                    unit,
                    point: p.name.clone(),
                    index,
                })?;
            for (a, w) in (addr..).zip(words) {
                if let Ok(a) = u16::try_from(a) {
                    u.regs.insert((table(p.register), a), *w);
                }
            }
            Ok(())
        })
    }

    /// The current value of a point instance, as a client would decode it.
    pub fn get(&self, unit: u8, point: &str, index: u32) -> Result<f64, SimError> {
        self.with_point(unit, point, |u, p| {
            u.value(p, index).ok_or_else(|| SimError::NoSuchInstance {
                unit,
                point: p.name.clone(),
                index,
            })
        })
    }

    /// Applies `fault` to the next `times` requests for `unit` (`u32::MAX`: until
    /// cleared). Replaces any earlier fault of the unit.
    pub fn inject(&self, unit: u8, fault: Fault, times: u32) {
        if let Some(u) = self.state.units().get_mut(&unit) {
            u.fault = (times > 0).then_some((fault, times));
        }
    }

    pub fn clear_fault(&self, unit: u8) {
        if let Some(u) = self.state.units().get_mut(&unit) {
            u.fault = None;
        }
    }

    /// Refuse (close at once) a connection while another one is open.
    pub fn set_one_connection_only(&self, on: bool) {
        self.state.one_connection_only.store(on, Ordering::SeqCst);
    }

    /// Another client takes the device's only connection and holds it until
    /// [`Simulator::release`]: the simulator opens that connection itself, every other
    /// open connection is reset at its next request, and new ones are closed at once
    /// (what a single-connection device does while someone else holds its slot).
    pub fn take(&self) -> io::Result<()> {
        // A loopback connect completes in the kernel's backlog: no need to await the
        // server task (which lets a caller holding a lock take the slot).
        let squatter = std::net::TcpStream::connect(self.addr)?;
        let me = squatter.local_addr()?;
        {
            let mut g = self.state.gate();
            g.taken_by = Some(me);
            g.squatter = Some(squatter);
        }
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The other client lets go of the connection: the device accepts clients again.
    pub fn release(&self) {
        let mut g = self.state.gate();
        g.taken_by = None;
        g.squatter = None;
    }

    /// The device (an RTU-over-TCP gateway, typically) reboots: every open connection is
    /// reset at its next request, and connections are refused for `down`, so every unit
    /// behind it is silent; then it serves again with the same values.
    pub fn reboot(&self, down: Duration) {
        self.state.gate().down_until = Some(tokio::time::Instant::now() + down);
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the device is down now (rebooting, or its slot taken by another client).
    pub fn is_unavailable(&self) -> bool {
        let g = self.state.gate();
        g.taken_by.is_some()
            || g.down_until
                .is_some_and(|t| tokio::time::Instant::now() < t)
    }

    /// Writes accepted so far.
    pub fn writes(&self) -> Vec<SimWrite> {
        self.state
            .writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Requests received (all units).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn active_connections(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Connections accepted since start (refused ones excluded).
    pub fn connections_total(&self) -> u64 {
        self.state.connections_total.load(Ordering::SeqCst)
    }

    /// Stops the listener and every connection, and waits for them.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            s.send(()).ok();
        }
        if let Some(t) = self.task.take() {
            t.await.ok();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.send(()).ok();
        }
    }
}

/// What the transport should do to the answer being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireFault {
    Reset,
    Garbage,
}

type WireSlot = Arc<Mutex<Option<WireFault>>>;

fn accept(
    st: &Arc<State>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(SimService, FaultStream)> {
    let epoch = st.epoch.load(Ordering::SeqCst);
    let (admitted, rebooting) = {
        let g = st.gate();
        (g.admits(peer), g.taken_by.is_none())
    };
    if !admitted {
        if rebooting {
            // Nothing listens while a gateway reboots: reset, not a clean close.
            stream.set_zero_linger().ok();
        }
        return None;
    }
    if st.one_connection_only.load(Ordering::SeqCst) && st.active.load(Ordering::SeqCst) >= 1 {
        // Dropping the stream closes it: what a device with one connection slot does.
        return None;
    }
    stream.set_nodelay(true).ok();
    st.active.fetch_add(1, Ordering::SeqCst);
    st.connections_total.fetch_add(1, Ordering::SeqCst);
    let slot: WireSlot = Arc::new(Mutex::new(None));
    Some((
        SimService {
            state: st.clone(),
            slot: slot.clone(),
        },
        FaultStream {
            inner: stream,
            slot,
            state: st.clone(),
            peer,
            epoch,
        },
    ))
}

/// The TCP stream with the fault hooks that only the transport can do.
struct FaultStream {
    inner: TcpStream,
    slot: WireSlot,
    state: Arc<State>,
    peer: SocketAddr,
    /// The state's epoch when accepted: a later one may mean "reset me".
    epoch: u64,
}

impl FaultStream {
    /// Whether a whole-server fault since this connection opened ends it.
    fn cut_off(&mut self) -> bool {
        let now = self.state.epoch.load(Ordering::SeqCst);
        if now == self.epoch {
            return false;
        }
        if self.state.gate().admits(self.peer) {
            // The fault is over (or spares this peer): keep serving.
            self.epoch = now;
            return false;
        }
        self.inner.set_zero_linger().ok();
        true
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "simulated connection reset")
}

impl Drop for FaultStream {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for FaultStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cut_off() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut_off() {
            return Poll::Ready(Err(reset_error()));
        }
        let fault = self
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match fault {
            Some(WireFault::Reset) => {
                // Zero linger turns the close into an RST.
                self.inner.set_zero_linger().ok();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "simulated connection reset",
                )))
            }
            Some(WireFault::Garbage) => {
                // Same length, nothing a Modbus codec accepts: 0xFF fills the MBAP
                // protocol id (must be 0) and breaks the RTU CRC.
                let junk = vec![0xFFu8; buf.len().max(8)];
                match Pin::new(&mut self.inner).poll_write(cx, &junk) {
                    Poll::Ready(Ok(_)) => Poll::Ready(Ok(buf.len())),
                    other => other,
                }
            }
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct SimService {
    state: Arc<State>,
    slot: WireSlot,
}

fn exception_of(code: u8) -> ExceptionCode {
    match code {
        1 => ExceptionCode::IllegalFunction,
        2 => ExceptionCode::IllegalDataAddress,
        3 => ExceptionCode::IllegalDataValue,
        4 => ExceptionCode::ServerDeviceFailure,
        5 => ExceptionCode::Acknowledge,
        6 => ExceptionCode::ServerDeviceBusy,
        8 => ExceptionCode::MemoryParityError,
        0x0A => ExceptionCode::GatewayPathUnavailable,
        0x0B => ExceptionCode::GatewayTargetDevice,
        c => ExceptionCode::Custom(c),
    }
}

type SimFuture = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = SimFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        let unit = req.slave;
        let (fault, answer) = {
            let mut units = self.state.units();
            match units.get_mut(&unit) {
                None => {
                    // A TCP device answers "target device failed to respond"; on a
                    // serial bus nobody answers an absent unit id.
                    let a = match self.state.framing {
                        Framing::Tcp => Err(ExceptionCode::GatewayTargetDevice),
                        Framing::RtuOverTcp => Ok(None),
                    };
                    (None, a)
                }
                Some(u) => {
                    let fault = u.take_fault();
                    let answer = if fault
                        .is_some_and(|f| matches!(f, Fault::Exception(_) | Fault::NoAnswer))
                    {
                        Ok(None)
                    } else {
                        self.handle(unit, u, req.request).map(Some)
                    };
                    (fault, answer)
                }
            }
        };
        let slot = self.slot.clone();
        Box::pin(async move {
            match fault {
                None => answer,
                Some(Fault::NoAnswer) => Ok(None),
                Some(Fault::Exception(c)) => Err(exception_of(c)),
                Some(Fault::Late(d)) => {
                    tokio::time::sleep(d).await;
                    answer
                }
                Some(Fault::Reset) => {
                    *slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(WireFault::Reset);
                    answer
                }
                Some(Fault::Garbage) => {
                    *slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(WireFault::Garbage);
                    answer
                }
            }
        })
    }
}

impl SimService {
    fn handle(
        &self,
        unit: u8,
        u: &mut Unit,
        req: Request<'static>,
    ) -> Result<Response, ExceptionCode> {
        let words_to_bits = |w: Vec<u16>| w.into_iter().map(|x| x != 0).collect::<Vec<bool>>();
        match req {
            Request::ReadHoldingRegisters(a, n) => u
                .read(RegisterKind::Holding, a, n)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(a, n) => u
                .read(RegisterKind::Input, a, n)
                .map(Response::ReadInputRegisters),
            Request::ReadCoils(a, n) => u
                .read(RegisterKind::Coil, a, n)
                .map(words_to_bits)
                .map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => u
                .read(RegisterKind::Discrete, a, n)
                .map(words_to_bits)
                .map(Response::ReadDiscreteInputs),
            Request::WriteSingleCoil(a, on) => {
                u.write(RegisterKind::Coil, a, &[u16::from(on)])?;
                self.log(unit, u, RegisterKind::Coil, a, 1);
                Ok(Response::WriteSingleCoil(a, on))
            }
            Request::WriteMultipleCoils(a, bits) => {
                let words: Vec<u16> = bits.iter().map(|b| u16::from(*b)).collect();
                let n = u16::try_from(words.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
                u.write(RegisterKind::Coil, a, &words)?;
                self.log(unit, u, RegisterKind::Coil, a, n);
                Ok(Response::WriteMultipleCoils(a, n))
            }
            Request::WriteSingleRegister(a, w) => {
                u.write(RegisterKind::Holding, a, &[w])?;
                self.log(unit, u, RegisterKind::Holding, a, 1);
                Ok(Response::WriteSingleRegister(a, w))
            }
            Request::WriteMultipleRegisters(a, words) => {
                let n = u16::try_from(words.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
                u.write(RegisterKind::Holding, a, &words)?;
                self.log(unit, u, RegisterKind::Holding, a, n);
                Ok(Response::WriteMultipleRegisters(a, n))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn log(&self, unit: u8, u: &Unit, k: RegisterKind, start: u16, len: u16) {
        let mut log = self
            .state
            .writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, index) in u.touched(k, start, len) {
            let value = u
                .profile
                .point(&name)
                .and_then(|p| u.value(p, index))
                .unwrap_or(f64::NAN);
            log.push(SimWrite {
                unit,
                point: name,
                index,
                value,
            });
        }
    }
}
