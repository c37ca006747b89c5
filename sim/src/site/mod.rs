//! The site simulator: every device a site file names, served on loopback, tied together
//! by a small physics model.
//!
//! - Modbus TCP PDUs, meters and cooling units (one server per address; RTU-over-TCP
//!   gateways serve all their unit ids), miners of every firmware family, GPU nodes.
//! - Physics, every 100 ms of real time on the simulator's virtual clock: a rack draws the
//!   sum of its miners (zero while their outlet is off) and its GPUs plus a fixed
//!   overhead for GPU racks; rows and feeds draw the sum of their racks (a dual-corded
//!   rack half on each cord); a zone's heat is its racks' power; cooling units trip and
//!   recover as the scenario says.
//! - GPU and mixed racks with no simulated GPU host (a colocation tenant's racks, which
//!   the operator sees through the rack PDU only) draw `rated_max_kw x`
//!   [`rack_demand_fraction`] of the scenario's GPU profile, each rack with its own seed,
//!   or the share a `rack_load` event pins: their PDU, row and feed meters move.
//! - Scenarios ([`scenario::Scenario`]) move GPU limits, trip units, silence meters,
//!   pin PDU-only GPU racks and make miners ignore commands at given virtual times; the
//!   fault matrix's events (wire faults, a taken connection, a gateway reboot,
//!   misbehaving miners, hung GPU nodes) are applied by `faults`.
//!
//! Serial RTU devices and local-NVML GPU hosts cannot be served over loopback: they are
//! left out, with a warning.

mod faults;
pub mod scenario;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::gpu::{rack_demand_fraction, LoadProfile, SimGpus, SimSpec};
use crate::miner::{self as msim, MinerSim, SimMiner};
use crate::modbus::{Fault as MbFault, Framing, SimWrite, Simulator};
use rackwarden_config::profile::Role;
use rackwarden_config::{GpuSource as GpuSourceKind, ModbusLink, NodeKind, RackKind, Site};
use rackwarden_protocols::gpu::node::Token;
use rackwarden_protocols::gpu::{GpuSource, GpuTarget};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use scenario::{EventKind, Scenario};

/// The password every simulated miner accepts; the demo and the hil-tests give the agent
/// the same through the environment variables the site file names.
pub const SIM_MINER_PASSWORD: &str = "rackwarden-sim";

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("modbus simulator for {addr}: {message}")]
    Modbus { addr: String, message: String },
    #[error("miner simulator: {0}")]
    Miners(String),
    #[error("scenario: {0}")]
    Scenario(String),
    #[error("gpu node simulator {id} on {addr}: {message}")]
    Gpu {
        id: String,
        addr: SocketAddr,
        message: String,
    },
}

/// Where one Modbus device lives in the simulator.
#[derive(Clone, Copy)]
struct DevAt {
    server: usize,
    unit: u8,
}

/// GPU load per GPU rack: its simulated hosts.
struct GpuRack {
    node: usize,
    hosts: Vec<Arc<SimGpus>>,
    overhead_kw: f64,
}

/// A GPU or mixed rack with no simulated GPU host: its GPU load, from its PDU's view.
#[derive(Debug, Clone, PartialEq)]
struct PduRack {
    node: usize,
    rated_max_kw: f64,
    seed: u64,
    /// A `rack_load` event's share of `rated_max_kw`, in place of the profile.
    pinned: Option<f64>,
}

/// The PDU-only GPU racks of a site, and the load profile they follow.
#[derive(Debug, Clone, PartialEq)]
struct PduRacks {
    profile: LoadProfile,
    day_s: f64,
    racks: Vec<PduRack>,
}

impl PduRacks {
    /// Every GPU and mixed rack of `site` for which `has_host` is false.
    fn new(
        site: &Site,
        has_host: impl Fn(usize) -> bool,
        profile: LoadProfile,
        day_s: f64,
    ) -> PduRacks {
        let racks = site
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| {
                matches!(n.kind, NodeKind::Rack(RackKind::Gpu | RackKind::Mixed)) && !has_host(*i)
            })
            .map(|(i, n)| PduRack {
                node: i,
                rated_max_kw: n.rated_max_kw.unwrap_or(0.0),
                // Each rack its own seed: its own drift, its own training jobs.
                seed: site.policy.seed
                    ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(u64::try_from(i).unwrap_or(0) + 1),
                pinned: None,
            })
            .collect();
        PduRacks {
            profile,
            day_s,
            racks,
        }
    }

    /// What each rack's GPU load draws at `t`, kW: (node, kW).
    fn kw(&self, t: f64) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.racks.iter().map(move |r| {
            let share = r
                .pinned
                .unwrap_or_else(|| rack_demand_fraction(self.profile, r.seed, t, self.day_s));
            (r.node, r.rated_max_kw * share)
        })
    }

    /// Pins (`Some`) or frees (`None`) the racks whose id starts with `prefix`; how many.
    fn pin(&mut self, site: &Site, prefix: &str, share: Option<f64>) -> usize {
        let mut n = 0;
        for r in &mut self.racks {
            if site.nodes[r.node].id.starts_with(prefix) {
                r.pinned = share;
                n += 1;
            }
        }
        n
    }
}

struct Model {
    site: Arc<Site>,
    servers: Vec<Simulator>,
    dev_at: Vec<Option<DevAt>>,
    /// Indexed like `site.miners`.
    miners: Vec<Option<Arc<SimMiner>>>,
    gpu_racks: Vec<GpuRack>,
    pdu_racks: PduRacks,
    /// Units tripped by the scenario.
    tripped: Vec<Vec<bool>>,
    outlet_was_off: Vec<bool>,
    /// Nodes below the site, deepest first.
    order: Vec<usize>,
    /// Last value published per miner outlet (power kW, state) and per node meter
    /// share: a register is written again only when its value changes, which keeps the
    /// step of a 30,000-miner site to a few milliseconds.
    outlet_pub: Vec<Option<(f64, f64)>>,
    node_pub: Vec<Option<f64>>,
    /// Per simulated GPU node id: while on, its requests hang (`gpu_node_hang`).
    gpu_hang: HashMap<String, Arc<std::sync::atomic::AtomicBool>>,
    /// Energy drawn per node since the start, kWh (each meter's counter shows its share),
    /// the power of the last step and its time (the energy of a step is the power held
    /// since the step before).
    energy_kwh: Vec<f64>,
    last_kw: Vec<f64>,
    last_t: Option<f64>,
    /// Last counter value published per node meter share.
    energy_pub: Vec<f64>,
}

/// A running simulated site.
pub struct SiteSim {
    model: Arc<std::sync::Mutex<Model>>,
    miner_sim: Option<MinerSim>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    start: tokio::time::Instant,
    speed: f64,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn tcp_addr(link: &ModbusLink) -> Option<(String, Framing)> {
    match link {
        ModbusLink::Tcp { addr, .. } => Some((addr.clone(), Framing::Tcp)),
        ModbusLink::RtuOverTcp { addr, .. } => Some((addr.clone(), Framing::RtuOverTcp)),
        ModbusLink::Rtu { .. } => None,
    }
}

impl std::fmt::Debug for SiteSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteSim").finish_non_exhaustive()
    }
}

impl SiteSim {
    /// Starts serving `site` on loopback, playing `scenario` at `speed` times real time.
    pub async fn start(site: &Site, scenario: Scenario, speed: f64) -> Result<SiteSim, SimError> {
        let site = Arc::new(site.clone());
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        let start = tokio::time::Instant::now();
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (servers, dev_at) = start_modbus(&site).await?;
        let (miner_sim, miners) = start_miners(&site, speed).await?;
        let profile = scenario.load_profile().map_err(SimError::Scenario)?;
        let clock = SimClock { start, speed };
        let (gpu_racks, gpu_hang) =
            start_gpus(&site, &scenario, profile, clock, &cancel, &mut tasks).await?;
        let pdu_racks = PduRacks::new(
            &site,
            |node| gpu_racks.iter().any(|r| r.node == node),
            profile,
            scenario.day_len_s(),
        );
        let model = Arc::new(std::sync::Mutex::new(Model {
            servers,
            dev_at,
            miners,
            gpu_racks,
            gpu_hang,
            ..Model::new(site.clone(), pdu_racks)
        }));
        // Outlets start on; cooling units start running.
        {
            let mut m = lock(&model);
            for mi in &site.miners {
                if let Some(o) = &mi.outlet {
                    m.set(o.device, Role::OutletSwitch.name(), o.outlet, 1.0);
                }
            }
            m.step(0.0);
        }
        spawn_physics(&model, &scenario, clock, &cancel, &mut tasks);
        let (modbus_servers, pdu_only_gpu_racks) = {
            let m = lock(&model);
            (m.servers.len(), m.pdu_racks.racks.len())
        };
        info!(
            event = "sim.started",
            site = %site.id,
            scenario = %scenario.name,
            speed,
            modbus_servers,
            miners = site.miners.len(),
            gpu_nodes = site.gpu_nodes.len(),
            pdu_only_gpu_racks,
            "simulator serving the site on loopback"
        );
        Ok(SiteSim {
            model,
            miner_sim,
            cancel,
            tasks,
            start,
            speed,
        })
    }

    /// Virtual seconds since the simulator started.
    pub fn now_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * self.speed
    }

    /// Every write any Modbus client made, with the device id.
    pub fn modbus_writes(&self) -> Vec<(String, SimWrite)> {
        let m = lock(&self.model);
        let mut out = Vec::new();
        for (d, at) in m.dev_at.iter().enumerate() {
            let Some(at) = at else { continue };
            for w in m.servers[at.server].writes() {
                if w.unit == at.unit {
                    out.push((m.site.modbus_devices[d].id.clone(), w));
                }
            }
        }
        out
    }

    /// Sets `fault` on every simulated miner whose id starts with `prefix` (`""`: all);
    /// returns how many (for tests that need a miner slower than any scenario makes it).
    pub fn set_miner_fault(&self, prefix: &str, fault: crate::miner::Fault) -> usize {
        let m = lock(&self.model);
        let mut n = 0;
        for mi in m
            .miners
            .iter()
            .flatten()
            .filter(|x| x.spec.id.starts_with(prefix))
        {
            mi.set_fault(fault);
            n += 1;
        }
        n
    }

    /// Commands each simulated miner received (firmware verbs), by miner id.
    pub fn miner_commands(&self) -> Vec<(String, Vec<String>)> {
        lock(&self.model)
            .miners
            .iter()
            .flatten()
            .map(|m| (m.spec.id.clone(), m.commands()))
            .filter(|(_, c)| !c.is_empty())
            .collect()
    }

    /// The first control command any simulated miner received at or after `since`:
    /// (arrival, miner id, command). Benchmarks time the agent's reaction with it.
    pub fn first_miner_command_since(
        &self,
        since: tokio::time::Instant,
    ) -> Option<(tokio::time::Instant, String, String)> {
        let m = lock(&self.model);
        m.miners
            .iter()
            .flatten()
            .filter_map(|sm| {
                sm.commands_at()
                    .into_iter()
                    .find(|(at, _)| *at >= since)
                    .map(|(at, c)| (at, sm.spec.id.clone(), c))
            })
            .min_by_key(|(at, _, _)| *at)
    }

    /// Current power of a node (kW) as the simulator's meters show it.
    pub fn node_kw(&self, id: &str) -> Option<f64> {
        let t = self.now_s();
        let m = lock(&self.model);
        let i = m.site.node_index(id)?;
        Some(m.power_kw(t)[i])
    }

    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Some(ms) = self.miner_sim.take() {
            ms.shutdown().await;
        }
        let servers = std::mem::take(&mut lock(&self.model).servers);
        for s in servers {
            s.shutdown().await;
        }
    }
}

async fn apply_event(model: &Arc<std::sync::Mutex<Model>>, kind: &EventKind) {
    match kind {
        EventKind::GpuLimits {
            racks,
            feed,
            limit_w,
        } => {
            let hosts: Vec<Arc<SimGpus>> = {
                let m = lock(model);
                let site = &m.site;
                let feed_idx = feed.as_deref().and_then(|f| site.node_index(f));
                m.gpu_racks
                    .iter()
                    .filter(|r| {
                        racks.iter().any(|id| site.nodes[r.node].id == *id)
                            || feed_idx.is_some_and(|f| site.ancestors(r.node).contains(&f))
                    })
                    .flat_map(|r| r.hosts.iter().cloned())
                    .collect()
            };
            for h in hosts {
                let spec = *h.spec();
                let l = limit_w.clamp(spec.min_limit_w, spec.max_limit_w);
                if let Err(e) = h.set_power_limit(GpuTarget::All, l).await {
                    warn!(error = %e, "scenario: gpu limit not applied");
                }
            }
        }
        EventKind::UnitTrip { unit } | EventKind::UnitRecover { unit } => {
            let trip = matches!(kind, EventKind::UnitTrip { .. });
            let mut m = lock(model);
            let found = m.site.zones.iter().enumerate().find_map(|(z, zone)| {
                zone.units
                    .iter()
                    .position(|u| u.id == *unit)
                    .map(|u| (z, u))
            });
            match found {
                Some((z, u)) => m.tripped[z][u] = trip,
                None => warn!(unit = %unit, "scenario: no such cooling unit"),
            }
        }
        EventKind::MeterSilent { device } | EventKind::MeterBack { device } => {
            let m = lock(model);
            let Some(d) = m.site.modbus_devices.iter().position(|d| d.id == *device) else {
                warn!(device = %device, "scenario: no such device");
                return;
            };
            if let Some(at) = m.dev_at[d] {
                if matches!(kind, EventKind::MeterSilent { .. }) {
                    m.servers[at.server].inject(at.unit, MbFault::NoAnswer, u32::MAX);
                } else {
                    m.servers[at.server].clear_fault(at.unit);
                }
            }
        }
        EventKind::MinerIgnores { prefix, ignore } => {
            let m = lock(model);
            for mi in m
                .miners
                .iter()
                .flatten()
                .filter(|x| x.spec.id.starts_with(prefix.as_str()))
            {
                mi.set_fault(if *ignore {
                    msim::Fault::IgnoreCommands
                } else {
                    msim::Fault::None
                });
            }
        }
        EventKind::RackLoad {
            prefix, fraction, ..
        } => {
            if !(fraction.is_finite() && *fraction >= 0.0) {
                warn!(prefix = %prefix, fraction, "scenario: rack_load needs a fraction >= 0");
                return;
            }
            let mut m = lock(model);
            let site = m.site.clone();
            if m.pdu_racks.pin(&site, prefix, Some(*fraction)) == 0 {
                warn!(prefix = %prefix, "scenario: no GPU rack without GPU nodes matches");
            }
        }
        EventKind::RackLoadClear { prefix } => {
            let mut m = lock(model);
            let site = m.site.clone();
            m.pdu_racks.pin(&site, prefix, None);
        }
        // Applied by `faults::apply` before this is called.
        _ => {}
    }
}

impl Model {
    /// The physics of `site` with nothing served (no Modbus server, miner or GPU host
    /// yet) and `pdu_racks` drawing their profile.
    fn new(site: Arc<Site>, pdu_racks: PduRacks) -> Model {
        let mut order: Vec<usize> = (1..site.nodes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(site.ancestors(i).len()));
        Model {
            servers: Vec::new(),
            dev_at: vec![None; site.modbus_devices.len()],
            miners: vec![None; site.miners.len()],
            gpu_racks: Vec::new(),
            pdu_racks,
            tripped: site
                .zones
                .iter()
                .map(|z| vec![false; z.units.len()])
                .collect(),
            outlet_was_off: vec![false; site.miners.len()],
            order,
            outlet_pub: vec![None; site.miners.len()],
            node_pub: vec![None; site.nodes.len()],
            gpu_hang: HashMap::new(),
            energy_kwh: vec![0.0; site.nodes.len()],
            last_kw: vec![0.0; site.nodes.len()],
            last_t: None,
            energy_pub: vec![f64::NAN; site.nodes.len()],
            site,
        }
    }

    fn set(&self, device: usize, point: &str, index: u32, value: f64) {
        if let Some(at) = self.dev_at[device] {
            self.servers[at.server]
                .set(at.unit, point, index, value)
                .ok();
        }
    }

    fn get(&self, device: usize, point: &str, index: u32) -> Option<f64> {
        let at = self.dev_at[device]?;
        self.servers[at.server].get(at.unit, point, index).ok()
    }

    /// Power of every node now, kW.
    fn power_kw(&self, t: f64) -> Vec<f64> {
        let site = &self.site;
        let mut p = vec![0.0; site.nodes.len()];
        for (i, m) in site.miners.iter().enumerate() {
            // `outlet_was_off` follows the outlet registers every step (see `step`).
            if m.outlet.is_some() && self.outlet_was_off[i] {
                continue;
            }
            if let Some(sm) = &self.miners[i] {
                p[m.rack] += sm.power_w() / 1000.0;
            }
        }
        for r in &self.gpu_racks {
            let gpu_w: f64 = r
                .hosts
                .iter()
                .map(|h| h.reading_at(t).power_w().unwrap_or(0.0))
                .sum();
            p[r.node] += gpu_w / 1000.0 + r.overhead_kw;
        }
        for (node, kw) in self.pdu_racks.kw(t) {
            p[node] += kw;
        }
        // Racks to rows to feeds: deepest first, so a row of rows adds up.
        for &i in &self.order {
            let parents = &site.nodes[i].parents;
            #[allow(clippy::cast_precision_loss)]
            let share = p[i] / parents.len().max(1) as f64;
            for &q in parents {
                p[q] += share;
            }
        }
        p
    }

    /// Integrates each node's power up to `t` (seconds) and publishes each meter's share
    /// on its energy counter (PDUs and meters whose profile has one), in the counter's
    /// own resolution: written when it moved by 0.05 kWh or more.
    fn count_energy(&mut self, t: f64, p: &[f64]) {
        if let Some(t0) = self.last_t {
            let h = (t - t0).max(0.0) / 3600.0;
            for (e, kw) in self.energy_kwh.iter_mut().zip(&self.last_kw) {
                *e += kw * h;
            }
        }
        self.last_t = Some(t);
        self.last_kw.clear();
        self.last_kw.extend_from_slice(p);
        let site = self.site.clone();
        for (i, n) in site.nodes.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let share = self.energy_kwh[i] / n.meters.len().max(1) as f64;
            if (share - self.energy_pub[i]).abs() < 0.05 {
                continue;
            }
            self.energy_pub[i] = share;
            for mr in &n.meters {
                if site.modbus_devices[mr.device]
                    .profile
                    .role(Role::EnergyKwh)
                    .is_some()
                {
                    self.set(mr.device, Role::EnergyKwh.name(), 1, share);
                }
            }
        }
    }

    /// Advances the physics to virtual time `t` (seconds) and publishes every reading.
    fn step(&mut self, t: f64) {
        let site = self.site.clone();
        // An outlet switched off powers its miner down; back on, it boots and mines.
        for (i, m) in site.miners.iter().enumerate() {
            let Some(o) = &m.outlet else { continue };
            let off = self
                .get(o.device, Role::OutletSwitch.name(), o.outlet)
                .is_some_and(|v| v < 0.5);
            if off != self.outlet_was_off[i] {
                self.outlet_was_off[i] = off;
                if let Some(sm) = &self.miners[i] {
                    sm.set_fault(if off {
                        msim::Fault::NoAnswer
                    } else {
                        msim::Fault::None
                    });
                }
            }
            let w = if off {
                0.0
            } else {
                self.miners[i].as_ref().map_or(0.0, |x| x.power_w())
            };
            let now = (w / 1000.0, if off { 0.0 } else { 1.0 });
            if self.outlet_pub[i] != Some(now) {
                self.outlet_pub[i] = Some(now);
                self.set(o.device, Role::OutletPowerKw.name(), o.outlet, now.0);
                self.set(o.device, Role::OutletState.name(), o.outlet, now.1);
            }
        }
        let p = self.power_kw(t);
        self.count_energy(t, &p);
        for (i, n) in site.nodes.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let share = p[i] / n.meters.len().max(1) as f64;
            if self.node_pub[i] == Some(share) {
                continue;
            }
            self.node_pub[i] = Some(share);
            for mr in &n.meters {
                self.set(mr.device, &mr.point, 1, share);
            }
            if matches!(n.kind, NodeKind::Rack(_)) {
                for mr in &n.meters {
                    // Per-phase current at 415 V three-phase, for realism in probes.
                    let amps = share * 1000.0 / (415.0 * 3f64.sqrt());
                    for ph in 1..=3 {
                        self.set(mr.device, Role::PhaseCurrentA.name(), ph, amps);
                        self.set(mr.device, Role::PhaseVoltageV.name(), ph, 240.0);
                    }
                }
            }
        }
        for (z, zone) in site.zones.iter().enumerate() {
            let heat: f64 = zone.racks.iter().map(|&r| p[r]).sum();
            let running: Vec<bool> = (0..zone.units.len()).map(|u| !self.tripped[z][u]).collect();
            let n_run = running.iter().filter(|r| **r).count().max(1);
            for (u, unit) in zone.units.iter().enumerate() {
                let Some(d) = unit.device else { continue };
                let on = running[u];
                self.set(d, Role::UnitRunning.name(), 1, if on { 1.0 } else { 0.0 });
                self.set(d, Role::UnitAlarm.name(), 1, if on { 0.0 } else { 1.0 });
                self.set(d, Role::UnitMaintenance.name(), 1, 0.0);
                self.set(d, Role::CapacityKw.name(), 1, unit.capacity_kw);
                #[allow(clippy::cast_precision_loss)]
                let out = if on { heat / n_run as f64 } else { 0.0 };
                self.set(d, Role::OutputKw.name(), 1, out);
                self.set(
                    d,
                    Role::SupplyTempC.name(),
                    1,
                    18.0 + out / unit.capacity_kw * 4.0,
                );
                self.set(
                    d,
                    Role::ReturnTempC.name(),
                    1,
                    28.0 + out / unit.capacity_kw * 8.0,
                );
            }
        }
    }
}

/// The simulator's timeline: virtual seconds run `speed` times real time from `start`.
#[derive(Debug, Clone, Copy)]
struct SimClock {
    start: tokio::time::Instant,
    speed: f64,
}

impl SimClock {
    fn now_s(self) -> f64 {
        self.start.elapsed().as_secs_f64() * self.speed
    }
}

/// Modbus: one server per address, each unit id its device's profile; where each device
/// is served.
async fn start_modbus(site: &Site) -> Result<(Vec<Simulator>, Vec<Option<DevAt>>), SimError> {
    // (address, framing, [(unit id, device index)])
    type Group = (String, Framing, Vec<(u8, usize)>);
    let mut groups: Vec<Group> = Vec::new();
    for (i, d) in site.modbus_devices.iter().enumerate() {
        let Some((addr, framing)) = tcp_addr(&d.link) else {
            warn!(device = %d.id, "serial RTU device: not simulated");
            continue;
        };
        match groups.iter_mut().find(|g| g.0 == addr) {
            Some(g) => g.2.push((d.link.unit_id(), i)),
            None => groups.push((addr, framing, vec![(d.link.unit_id(), i)])),
        }
    }
    let mut servers = Vec::new();
    let mut dev_at = vec![None; site.modbus_devices.len()];
    for (addr, framing, units) in groups {
        let sa: SocketAddr = addr.parse().map_err(|_| SimError::Modbus {
            addr: addr.clone(),
            message: "the simulator serves ip:port addresses only".into(),
        })?;
        let profiles = units
            .iter()
            .map(|(u, d)| (*u, site.modbus_devices[*d].profile.clone()))
            .collect();
        let s = Simulator::start(sa, framing, profiles)
            .await
            .map_err(|e| SimError::Modbus {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
        for (u, d) in units {
            dev_at[d] = Some(DevAt {
                server: servers.len(),
                unit: u,
            });
        }
        servers.push(s);
    }

    Ok((servers, dev_at))
}

/// The miners of the site file, each on its own address; by site index.
async fn start_miners(
    site: &Site,
    speed: f64,
) -> Result<(Option<MinerSim>, Vec<Option<Arc<SimMiner>>>), SimError> {
    let specs = msim::specs_from_site(site, SIM_MINER_PASSWORD)
        .map_err(|e| SimError::Miners(e.to_string()))?;
    let miner_sim = if specs.is_empty() {
        None
    } else {
        Some(
            MinerSim::start(specs, msim::SimOptions { time_scale: speed })
                .await
                .map_err(|e| SimError::Miners(e.to_string()))?,
        )
    };
    // The simulator starts its miners in site order; match by id all the same.
    let miners: Vec<Option<Arc<SimMiner>>> = match &miner_sim {
        Some(ms) => {
            let by_id: HashMap<&str, &Arc<SimMiner>> = ms
                .miners()
                .iter()
                .map(|m| (m.spec.id.as_str(), m))
                .collect();
            site.miners
                .iter()
                .map(|m| by_id.get(m.id.as_str()).map(|x| Arc::clone(x)))
                .collect()
        }
        None => vec![None; site.miners.len()],
    };

    Ok((miner_sim, miners))
}

/// The remote GPU hosts, each serving its simulated GPUs (which a fault can hang), grouped
/// by rack.
async fn start_gpus(
    site: &Site,
    scenario: &Scenario,
    profile: LoadProfile,
    clock: SimClock,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<
    (
        Vec<GpuRack>,
        HashMap<String, Arc<std::sync::atomic::AtomicBool>>,
    ),
    SimError,
> {
    let day_s = scenario.day_len_s();
    // GPU nodes.
    let mut gpu_racks: Vec<GpuRack> = Vec::new();
    let mut gpu_hang = HashMap::new();
    for (gi, g) in site.gpu_nodes.iter().enumerate() {
        if g.source != GpuSourceKind::Remote {
            warn!(device = %g.id, "local NVML host: not simulated");
            continue;
        }
        let (Some(addr), Some(tf)) = (g.address, g.token_file.as_ref()) else {
            continue;
        };
        let max_w = g.gpu_max_w.unwrap_or(700.0);
        let spec = SimSpec {
            gpus: g.gpus,
            idle_w: max_w * 0.12,
            min_limit_w: max_w / 3.0,
            max_limit_w: max_w,
            default_limit_w: max_w,
            day_s,
            seed: site.policy.seed ^ u64::try_from(gi).unwrap_or(0),
        };
        let gpus = Arc::new(SimGpus::with_clock(
            g.id.clone(),
            profile,
            spec,
            move || clock.now_s(),
        ));
        if let Some(l) = scenario.tenant_limit_w {
            let l = l.clamp(spec.min_limit_w, spec.max_limit_w);
            gpus.set_power_limit(GpuTarget::All, l).await.ok();
        }
        let token = Token::from_file(&g.id, tf).map_err(|e| SimError::Gpu {
            id: g.id.clone(),
            addr,
            message: e.to_string(),
        })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| SimError::Gpu {
                id: g.id.clone(),
                addr,
                message: e.to_string(),
            })?;
        let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
        gpu_hang.insert(g.id.clone(), hang.clone());
        let source: Arc<dyn GpuSource> = Arc::new(faults::Hangable {
            inner: gpus.clone(),
            hang,
            cancel: cancel.clone(),
        });
        let c = cancel.clone();
        tasks.spawn(async move {
            rackwarden_protocols::gpu::node::serve_with_shutdown(
                listener,
                source,
                token,
                async move { c.cancelled().await },
            )
            .await
            .ok();
        });
        match gpu_racks.iter_mut().find(|r| r.node == g.rack) {
            Some(r) => r.hosts.push(gpus),
            None => {
                let rated = site.nodes[g.rack].rated_max_kw.unwrap_or(0.0);
                // CPUs, switches, pumps: what a GPU rack draws besides its GPUs.
                let gpu_max_kw: f64 = site
                    .gpu_nodes
                    .iter()
                    .filter(|o| o.rack == g.rack)
                    .map(|o| f64::from(o.gpus) * o.gpu_max_w.unwrap_or(700.0) / 1000.0)
                    .sum();
                gpu_racks.push(GpuRack {
                    node: g.rack,
                    hosts: vec![gpus],
                    overhead_kw: (rated - gpu_max_kw).max(0.0) * 0.5,
                });
            }
        }
    }

    Ok((gpu_racks, gpu_hang))
}

/// The physics: every 100 ms the scenario's events that are due, one step of the model,
/// and every 5 virtual seconds the feeds' meters in the log.
fn spawn_physics(
    model: &Arc<std::sync::Mutex<Model>>,
    scenario: &Scenario,
    clock: SimClock,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let m2 = model.clone();
    let c = cancel.clone();
    let events = scenario.events.clone();
    tasks.spawn(async move {
        let mut next = 0;
        let mut next_report = 0.0;
        let mut iv = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = c.cancelled() => return,
                _ = iv.tick() => {}
            }
            let t = clock.now_s();
            while next < events.len() && events[next].at_s <= t {
                let ev = events[next].clone();
                next += 1;
                info!(event = "sim.scenario", at_s = ev.at_s, kind = ?ev.kind, "scenario event");
                if !faults::apply(&m2, &ev.kind, clock.speed) {
                    apply_event(&m2, &ev.kind).await;
                }
            }
            lock(&m2).step(t);
            if t >= next_report {
                next_report = t + 5.0;
                // What the site's own meters show, for operators and the hil-tests.
                let m = lock(&m2);
                let p = m.power_kw(t);
                for (i, n) in m.site.nodes.iter().enumerate() {
                    if n.kind == NodeKind::Feed {
                        // `kwh`: the feed's energy since the simulator started (its
                        // meters' counters add up to it).
                        info!(event = "sim.meter", t_s = t, node = %n.id, kw = p[i], budget_kw = n.budget_kw, kwh = m.energy_kwh[i], "feed power");
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::INFERENCE_DAY_TROUGH;

    fn example(name: &str) -> Arc<Site> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        Arc::new(rackwarden_config::load(&path).unwrap())
    }

    fn colo_model(scenario: &str) -> (Arc<Site>, Arc<std::sync::Mutex<Model>>) {
        let site = example("site-colo.toml");
        let s = Scenario::load(scenario).unwrap();
        let pdu = PduRacks::new(
            &site,
            |node| site.gpu_nodes.iter().any(|g| g.rack == node),
            s.load_profile().unwrap(),
            s.day_len_s(),
        );
        let model = Arc::new(std::sync::Mutex::new(Model::new(site.clone(), pdu)));
        (site, model)
    }

    fn kw(site: &Site, model: &Arc<std::sync::Mutex<Model>>, id: &str, t: f64) -> f64 {
        lock(model).power_kw(t)[site.node_index(id).unwrap()]
    }

    #[test]
    fn colo_gpu_racks_draw_their_rated_maximum_times_the_profile() {
        let (site, model) = colo_model("colo");
        let day = Scenario::load("colo").unwrap().day_len_s();
        assert_eq!(
            lock(&model).pdu_racks.racks.len(),
            4,
            "every GPU rack is PDU-only"
        );
        let at = |id: &str, hour: f64| kw(&site, &model, id, day * hour / 24.0);
        for id in ["gpu-a1", "gpu-a2", "gpu-b1", "gpu-b2"] {
            let night = at(id, 4.0);
            let peak = at(id, 16.0);
            // rated_max 40 kW: about 25% at 04:00, about 87.5% at 16:00.
            assert!((8.0..=12.0).contains(&night), "{id} at 04:00: {night} kW");
            assert!((34.0..=36.0).contains(&peak), "{id} at 16:00: {peak} kW");
        }
        // Each rack its own drift: the racks do not read the same.
        assert_ne!(at("gpu-a1", 10.0), at("gpu-a2", 10.0));
        // The racks add up to their row and feed (no miner is served here).
        let t = day * 0.3;
        let racks = kw(&site, &model, "gpu-a1", t) + kw(&site, &model, "gpu-a2", t);
        assert!((kw(&site, &model, "rpp-a", t) - racks).abs() < 1e-9);
        assert!((kw(&site, &model, "feed-a", t) - racks).abs() < 1e-9);
        assert!(kw(&site, &model, "mine-a1", t).abs() < 1e-9);
        // And the trough is what the profile says, on every rack.
        let lows = ["gpu-a1", "gpu-b2"].map(|id| at(id, 4.0) / 40.0);
        assert!(
            lows.iter()
                .all(|f| (f - INFERENCE_DAY_TROUGH).abs() <= 0.021),
            "{lows:?}"
        );
    }

    #[tokio::test]
    async fn rack_load_pins_the_matching_pdu_only_racks_until_cleared() {
        let (site, model) = colo_model("colo-surge");
        let t = 130.0;
        let before_b = kw(&site, &model, "gpu-b1", t);
        apply_event(
            &model,
            &EventKind::RackLoad {
                prefix: "gpu-a".into(),
                fraction: 1.0,
                until_s: None,
            },
        )
        .await;
        assert_eq!(kw(&site, &model, "gpu-a1", t), 40.0);
        assert_eq!(kw(&site, &model, "gpu-a2", t), 40.0);
        assert_eq!(kw(&site, &model, "feed-a", t), 80.0);
        assert_eq!(
            kw(&site, &model, "gpu-b1", t),
            before_b,
            "feed B is not surged"
        );
        // A bad fraction changes nothing.
        apply_event(
            &model,
            &EventKind::RackLoad {
                prefix: "gpu-a1".into(),
                fraction: f64::NAN,
                until_s: None,
            },
        )
        .await;
        assert_eq!(kw(&site, &model, "gpu-a1", t), 40.0);
        apply_event(
            &model,
            &EventKind::RackLoadClear {
                prefix: "gpu-a".into(),
            },
        )
        .await;
        let back = kw(&site, &model, "gpu-a1", t);
        assert!(back < 30.0, "back on the profile: {back} kW");
        // The built-in surge is scheduled on feed A's racks and ends by itself.
        let s = Scenario::load("colo-surge").unwrap();
        assert!(s.events.iter().any(|e| e.at_s == 420.0
            && e.kind
                == EventKind::RackLoadClear {
                    prefix: "gpu-a".into()
                }));
    }

    #[test]
    fn racks_with_simulated_gpu_hosts_are_not_pdu_only() {
        let site = example("site.toml");
        let pdu = PduRacks::new(
            &site,
            |node| site.gpu_nodes.iter().any(|g| g.rack == node),
            LoadProfile::InferenceDay,
            600.0,
        );
        assert!(pdu.racks.is_empty(), "{pdu:?}");
        // Without the hosts (say, local NVML hosts the simulator cannot serve), the same
        // racks follow the profile at their rated maximum.
        let pdu = PduRacks::new(&site, |_| false, LoadProfile::TrainingSwings, 600.0);
        assert_eq!(pdu.racks.len(), 4);
        assert!(pdu
            .kw(1000.0)
            .all(|(_, kw)| (0.15 * 132.0 - 1e-9..=132.0).contains(&kw)));
    }
}
