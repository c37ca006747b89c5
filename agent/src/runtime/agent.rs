//! The agent proper: collectors fill the snapshot, one loop ticks `decide` (fast every
//! `fast_loop_ms`, slow every `slow_loop_ms`), the actuator carries out the plan.
//!
//! Data flows one way: devices -> collectors -> [`Snapshot`] -> `decide` -> actuator,
//! alerts, journal, state file. Collectors never decide; the actuator never reads policy;
//! `decide` never touches a socket. In a dry run the actuator writes nothing to any
//! device: it logs and journals what it would have done.

use futures::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rackwarden_config::profile::Role;
use rackwarden_config::{GpuSource as GpuSourceKind, Site};
use rackwarden_protocols::gpu::node::GpuNodeClient;
use rackwarden_protocols::gpu::{self, GpuSource, GpuTarget};
use rackwarden_protocols::miner::{DriverFactory, DriverOptions, MinerDriver, MinerTelemetry};
use rackwarden_protocols::modbus::client::{DeviceReading, ModbusPool};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::clock::{Clock, Millis};
use super::persist::{ActionJournal, IntentStore};
use crate::alerts;
use crate::control::{
    self, Action, Alert, ControlState, Device, GpuLimits, GpuNodeReading, Lever, MeterReading,
    MinerMode, MinerReading, NodeView, OutletReading, Snapshot, Tick, Topology, UnitReading,
    UnitState, ZoneView,
};
use crate::energy::mining::MiningBook;
use crate::energy::recorder::{Recorder, Writer, COMMIT_EVERY_MS};
use crate::energy::EnergyBook;
use crate::ha::Ha;
use crate::store::journal::JournalRow;
// Issue 8: the status hub the HTTP layer reads, and poll metrics.
use crate::http::StatusHub;
use crate::metrics::PollClass;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Decide and log, write nothing to any device.
    pub dry_run: bool,
    /// Virtual time runs this many times faster than real time (1 in production).
    pub speed: f64,
    pub state_file: PathBuf,
    pub journal_file: PathBuf,
    /// The agent's SQLite database (energy accounting, docs/energy.md).
    pub database_file: PathBuf,
}

/// [`Persisted`] borrowed for writing (the state file, the HA intent): serialising a
/// 30,000-miner state clones nothing.
#[derive(Serialize)]
struct PersistedRef<'a> {
    last_now: Millis,
    control: &'a ControlState,
}

/// What the state file holds: the control state and the last instant of the timeline
/// that wrote it (the clock resumes after it).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Persisted {
    pub last_now: Millis,
    pub control: ControlState,
}

/// What the agent tells observers (the demo's printer, tests, the status page).
#[derive(Debug, Clone)]
pub enum AgentEvent {
    Decision {
        now: Millis,
        tick: Tick,
        nodes: Arc<Vec<NodeView>>,
        zones: Arc<Vec<ZoneView>>,
    },
    Action {
        now: Millis,
        action: Action,
        dry_run: bool,
    },
    ActionResult {
        now: Millis,
        device_id: String,
        lever: Lever,
        error: Option<String>,
    },
    Alert {
        now: Millis,
        alert: Alert,
    },
}

/// A GPU host as the agent reaches it.
enum GpuIo {
    Remote(GpuNodeClient),
    Local(Arc<dyn GpuSource>),
    Missing(String),
}

/// The device side: drivers, pools and clients, built once from the site.
pub struct Io {
    modbus: ModbusPool,
    miners: Vec<Option<Arc<dyn MinerDriver>>>,
    gpus: Vec<GpuIo>,
}

impl Io {
    /// Builds every driver. Problems (a missing credential, an unreadable token) are
    /// logged with the device's id; that device then reads as missing data (worst case),
    /// and a miner without a driver is marked for `decide` ([`Io::snapshot`]).
    pub fn new(site: &Site) -> Io {
        let modbus = ModbusPool::new(site);
        let factory = DriverFactory::new(DriverOptions::default());
        let miners = site
            .miners
            .iter()
            .map(|m| match &factory {
                Ok(f) => match f.build(m) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        warn!(device = %m.id, error = %e, "miner driver unavailable: no command is sent to it, it counts at nameplate, its outlet is its only lever");
                        None
                    }
                },
                Err(e) => {
                    warn!(device = %m.id, error = %e, "miner drivers unavailable");
                    None
                }
            })
            .collect();
        let gpus = site
            .gpu_nodes
            .iter()
            .map(|g| match g.source {
                GpuSourceKind::Nvml => {
                    GpuIo::Local(Arc::new(gpu::nvml::NvmlSource::load(g.id.clone())))
                }
                GpuSourceKind::Remote => {
                    let (Some(addr), Some(tf)) = (g.address, g.token_file.as_ref()) else {
                        return GpuIo::Missing("no address or token file".into());
                    };
                    let client = gpu::node::Token::from_file(&g.id, tf).and_then(|t| {
                        GpuNodeClient::new(g.id.clone(), addr, t, Duration::from_secs(2))
                    });
                    match client {
                        Ok(c) => GpuIo::Remote(c),
                        Err(e) => {
                            warn!(device = %g.id, error = %e, "gpu node unreachable by configuration");
                            GpuIo::Missing(e.to_string())
                        }
                    }
                }
            })
            .collect();
        Io {
            modbus,
            miners,
            gpus,
        }
    }

    /// Per miner: no driver could be built for it. Empty when every miner has one (the
    /// snapshot is cloned every tick; a site without the problem carries nothing).
    pub fn undriveable(&self) -> Vec<bool> {
        if self.miners.iter().all(Option::is_some) {
            return Vec::new();
        }
        self.miners.iter().map(Option::is_none).collect()
    }

    /// An empty snapshot for `site` that tells `decide` which miners have no driver: it
    /// sends them no command, counts them at nameplate and uses only their outlet.
    pub fn snapshot(&self, site: &Site) -> Snapshot {
        Snapshot {
            undriveable: self.undriveable(),
            ..Snapshot::empty(site)
        }
    }

    /// Whether `a` needs a miner driver that could not be built: anything but an outlet
    /// switch for a miner without one. Such an action is never sent.
    fn lacks_driver(&self, a: &Action) -> bool {
        match a.device {
            Device::Miner(i) => {
                !matches!(a.lever, Lever::OutletOff | Lever::OutletOn)
                    && self.miners.get(i).is_none_or(Option::is_none)
            }
            Device::GpuNode(_) => false,
        }
    }

    async fn read_gpu(&self, i: usize) -> Result<gpu::GpuNodeReading, String> {
        match &self.gpus[i] {
            GpuIo::Remote(c) => c.read().await.map_err(|e| e.to_string()),
            GpuIo::Local(s) => s.read().await.map_err(|e| e.to_string()),
            GpuIo::Missing(why) => Err(why.clone()),
        }
    }

    async fn cap_gpu(&self, i: usize, w: f64) -> Result<(), String> {
        let r = match &self.gpus[i] {
            GpuIo::Remote(c) => c.set_power_limit(GpuTarget::All, w).await,
            GpuIo::Local(s) => s.set_power_limit(GpuTarget::All, w).await,
            GpuIo::Missing(why) => return Err(why.clone()),
        };
        r.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Latest meter values per (node, meter) so a node with several meters sums them.
#[derive(Default)]
struct MeterCache {
    /// `values[node][k]`: kW and time of meter `k` of `node`.
    values: Vec<Vec<Option<(f64, Millis)>>>,
}

/// Which snapshot entries a Modbus device feeds.
#[derive(Default, Clone)]
struct DeviceUse {
    meters: Vec<(usize, usize, String)>,
    outlets: Vec<(usize, u32)>,
    units: Vec<(usize, usize)>,
}

/// State shared by the collectors and the loop.
struct Shared {
    site: Arc<Site>,
    clock: Clock,
    snapshot: Mutex<Snapshot>,
    meters: Mutex<MeterCache>,
    uses: Vec<DeviceUse>,
    io: Io,
    events: broadcast::Sender<AgentEvent>,
    /// Bounds the commands and read-back polls in flight: a mass shed on a 30,000-miner
    /// site would otherwise open a connection per miner at once (descriptors, memory).
    in_flight: tokio::sync::Semaphore,
    /// What the HTTP layer reads (status, readiness, metrics) and the overrides it sets.
    hub: Arc<StatusHub>,
    /// With `[ha]`: the election; the actuator asks it before every write (fencing).
    ha: Option<Arc<Ha>>,
    /// Energy per metered node from the Modbus readings (None: accounting is off).
    energy: Mutex<Option<crate::energy::EnergyBook>>,
    /// Raised by a meter reading that puts its node over its shed threshold, or a GPU
    /// node whose enforced limits rose: the loop decides at once instead of at its next
    /// tick (one stored permit: coalesced, at most one decision in flight).
    urgent: tokio::sync::Notify,
}

/// Commands and read-back polls in flight at once (as many as the poll loop's).
const COMMANDS_IN_FLIGHT: usize = 512;

/// Miner polls in flight at once: bounds sockets and descriptors on a 30,000-miner site.
const MINER_POLLS_IN_FLIGHT: usize = 512;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder cannot leave these half-written in a way that matters more than
    // stopping the agent would: keep going with the data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn apply_device(&self, dev: usize, r: &DeviceReading, now: Millis) {
        let uses = &self.uses[dev];
        let site = &self.site;
        if !uses.meters.is_empty() {
            if let Some(book) = lock(&self.energy).as_mut() {
                book.observe_device(dev, now, |p, i| r.get(p, i));
            }
        }
        let mut snap = lock(&self.snapshot);
        if !uses.meters.is_empty() {
            let mut cache = lock(&self.meters);
            for (node, k, point) in &uses.meters {
                let v = r.get(point, 1);
                cache.values[*node][*k] = v.map(|kw| (kw, now));
                let all: Option<Vec<(f64, Millis)>> = cache.values[*node].iter().copied().collect();
                if let Some(all) = all {
                    let kw: f64 = all.iter().map(|(v, _)| v).sum();
                    let taken_at = all.iter().map(|(_, t)| *t).min().unwrap_or(now);
                    // Over the shed threshold (`shed_fraction x B`, where a measured
                    // excursion sheds at once) from below it, or from no reading: the
                    // loop decides now, not at its next tick. Only the crossing wakes it
                    // (the periodic ticks carry on while the node stays over).
                    let n = &site.nodes[*node];
                    let threshold = site.policy.shed_fraction * n.budget_kw;
                    let was_under = snap.meters[*node].is_none_or(|m| m.kw < threshold);
                    if n.budget_kw > 0.0 && kw >= threshold && was_under {
                        self.urgent.notify_one();
                    }
                    let max_kw = snap.meters[*node].map_or(kw, |m| {
                        if m.max_kw.is_finite() {
                            m.max_kw.max(kw)
                        } else {
                            kw
                        }
                    });
                    snap.meters[*node] = Some(MeterReading {
                        kw,
                        max_kw,
                        taken_at,
                    });
                    // For the reaction benchmark (bench/): when a reading reached the
                    // snapshot. Disabled, a trace callsite costs one atomic load.
                    tracing::trace!(target: "rackwarden::reading", node = *node, kw, "meter reading");
                }
            }
        }
        for (miner, outlet) in &uses.outlets {
            if let Some(v) = r.get(Role::OutletState.name(), *outlet) {
                snap.outlets[*miner] = Some(OutletReading {
                    on: v >= 0.5,
                    taken_at: now,
                });
            }
        }
        for (z, u) in &uses.units {
            let flag = |role: Role| r.get(role.name(), 1).map(|v| v >= 0.5);
            let state = if flag(Role::UnitMaintenance) == Some(true) {
                UnitState::Maintenance
            } else if flag(Role::UnitAlarm) == Some(true) {
                UnitState::Alarmed
            } else if flag(Role::UnitRunning) == Some(true) {
                UnitState::Running
            } else {
                UnitState::Offline
            };
            let capacity_kw = r
                .get(Role::CapacityKw.name(), 1)
                .filter(|c| c.is_finite() && *c > 0.0)
                .map(|c| c.min(site.zones[*z].units[*u].capacity_kw));
            snap.units[*z][*u] = Some(UnitReading {
                state,
                capacity_kw,
                taken_at: now,
            });
        }
    }

    fn apply_miner(&self, i: usize, t: &MinerTelemetry, now: Millis) {
        let m = &self.site.miners[i];
        let mode = match t.mode {
            rackwarden_protocols::miner::telemetry::MinerMode::Mining => MinerMode::Mining,
            rackwarden_protocols::miner::telemetry::MinerMode::Sleeping => MinerMode::Sleeping,
            rackwarden_protocols::miner::telemetry::MinerMode::Paused => MinerMode::Paused,
            rackwarden_protocols::miner::telemetry::MinerMode::Unknown => MinerMode::Unknown,
        };
        // A miner that answers without a power figure is taken at nameplate.
        let power_w = t.power_w.filter(|p| p.is_finite()).unwrap_or(m.nominal_w);
        lock(&self.snapshot).miners[i] = Some(MinerReading {
            power_w,
            mode,
            power_target_w: t.power_target_w,
            taken_at: now,
        });
    }

    fn apply_gpu(&self, i: usize, r: &gpu::GpuNodeReading, now: Millis) {
        let gpus: Vec<GpuLimits> = r
            .gpus
            .iter()
            .filter_map(|g| {
                Some(GpuLimits {
                    enforced_w: g.enforced_limit_w?,
                    min_w: g.limit_min_w?,
                    max_w: g.limit_max_w?,
                    default_w: g.default_limit_w.or(g.limit_max_w)?,
                })
            })
            .collect();
        let complete = gpus.len() == r.gpus.len();
        tracing::trace!(
            target: "rackwarden::reading",
            gpu_node = i,
            enforced_w = gpus.iter().map(|g| g.enforced_w).sum::<f64>(),
            "gpu reading"
        );
        let enforced: f64 = gpus.iter().map(|g| g.enforced_w).sum();
        let power_w = r.power_w().unwrap_or(0.0);
        let mut snap = lock(&self.snapshot);
        // A tenant raised its GPUs' limits: the rack's worst case X rose, which may put a
        // node's worst case over its ceiling, so decide now, not at the next tick. (Power
        // alone does not wake the loop: a training job swings by most of its limits
        // several times a second; the meters' crossings catch what it does to a node.)
        let raised = snap.gpus[i]
            .as_ref()
            .is_some_and(|old| enforced > old.gpus.iter().map(|g| g.enforced_w).sum::<f64>() + 1.0);
        snap.gpus[i] = Some(GpuNodeReading {
            power_w,
            power_taken_at: now,
            nvml_available: r.nvml_available && complete,
            gpus,
            limits_taken_at: now,
        });
        drop(snap);
        if raised {
            self.urgent.notify_one();
        }
    }
}

/// Runs the agent until `cancel` fires. Returns the last control state (already on disk).
pub async fn run(
    site: Site,
    opts: RunOptions,
    events: broadcast::Sender<AgentEvent>,
    cancel: CancellationToken,
) -> anyhow::Result<ControlState> {
    run_with_hub(site, opts, events, cancel, StatusHub::new()).await
}

/// [`run`], publishing status, readiness and metrics to `hub` and taking the operator
/// overrides from it (the HTTP layer holds the other end).
pub async fn run_with_hub(
    site: Site,
    opts: RunOptions,
    events: broadcast::Sender<AgentEvent>,
    cancel: CancellationToken,
    hub: Arc<StatusHub>,
) -> anyhow::Result<ControlState> {
    run_with_ha(site, opts, events, cancel, hub, None).await
}

/// Who may act this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acting {
    /// No `[ha]`: this agent is the only one.
    Alone,
    /// HA leader of the term with this fence.
    Leader(i64),
    /// HA standby: polls and decides for its status views, never writes.
    Standby,
}

/// [`run_with_hub`] as one agent of an active/standby pair (`ha`), or alone (`None`).
pub async fn run_with_ha(
    site: Site,
    opts: RunOptions,
    events: broadcast::Sender<AgentEvent>,
    cancel: CancellationToken,
    hub: Arc<StatusHub>,
    ha: Option<Arc<Ha>>,
) -> anyhow::Result<ControlState> {
    let site = Arc::new(site);
    // The control intent a previous run committed (a corrupt database is set aside with
    // an alert and the agent starts on the safe side; a legacy state file is imported).
    let (mut intents, persisted) = IntentStore::open(
        &opts.database_file,
        &opts.state_file,
        site.agent.journal_retention_days,
    );
    let last_ms = persisted.as_ref().map(|s| s.0);
    let persisted = persisted.map(|p| p.1);
    let clock = Clock::resume(last_ms, opts.speed);
    let now = clock.now_ms();
    let mut state = match &persisted {
        Some(old) => {
            info!(
                event = "state.resumed",
                database = %opts.database_file.display(),
                curtailed = old
                    .miners
                    .iter()
                    .filter(|m| m.intent != control::Intent::Normal)
                    .count(),
                "resuming the persisted control intent"
            );
            let st = ControlState::for_site(&site, old, now);
            intents.resumed(old, &st);
            st
        }
        None => ControlState::new(&site, now),
    };
    // With `[ha]` only a leader sends, after taking over the pair's intent (`take_over`).
    // The resumed state as the database holds it: the resend's fresh deadlines are what
    // its commit writes.
    let resumed = state.clone();
    let resend = if persisted.is_some() && ha.is_none() {
        resend_after_restart(&site, &mut state, now)
    } else {
        Vec::new()
    };
    let topo = Topology::new(&site);
    let mut journal = ActionJournal::open(&opts.journal_file);

    let mut uses = vec![DeviceUse::default(); site.modbus_devices.len()];
    let mut cache = MeterCache {
        values: site
            .nodes
            .iter()
            .map(|n| vec![None; n.meters.len()])
            .collect(),
    };
    for (ni, n) in site.nodes.iter().enumerate() {
        for (k, m) in n.meters.iter().enumerate() {
            uses[m.device].meters.push((ni, k, m.point.clone()));
        }
    }
    for (mi, m) in site.miners.iter().enumerate() {
        if let Some(o) = &m.outlet {
            uses[o.device].outlets.push((mi, o.outlet));
        }
    }
    for (zi, z) in site.zones.iter().enumerate() {
        for (ui, u) in z.units.iter().enumerate() {
            if let Some(d) = u.device {
                uses[d].units.push((zi, ui));
            }
        }
    }
    cache.values.shrink_to_fit();
    let io = Io::new(&site);
    // Energy accounting (docs/energy.md): a database that cannot be had turns it off,
    // never the agent.
    let (writer, book) = match Recorder::open(&site, &opts.database_file, &hub.metrics, now) {
        Some((r, b)) => {
            hub.set_energy_db(opts.database_file.clone(), site.clone());
            (Some(Writer::spawn(r, hub.clone())), Some(b))
        }
        None => (None, None),
    };
    let mut last_energy = now;
    let shared = Arc::new(Shared {
        clock,
        snapshot: Mutex::new(io.snapshot(&site)),
        meters: Mutex::new(cache),
        uses,
        io,
        events: events.clone(),
        site: site.clone(),
        in_flight: tokio::sync::Semaphore::new(COMMANDS_IN_FLIGHT),
        hub: hub.clone(),
        ha: ha.clone(),
        energy: Mutex::new(book),
        urgent: tokio::sync::Notify::new(),
    });
    hub.set_site(
        site.clone(),
        opts.dry_run,
        shared.clock.real(site.policy.fast_loop_ms),
    );
    info!(
        event = "agent.started",
        now_ms = now,
        site = %site.id,
        dry_run = opts.dry_run,
        speed = opts.speed,
        devices = site.modbus_devices.len(),
        miners = site.miners.len(),
        gpu_nodes = site.gpu_nodes.len(),
        "agent started"
    );

    let mut tasks = tokio::task::JoinSet::new();
    spawn_collectors(&shared, &mut tasks, &cancel);
    if !resend.is_empty() {
        info!(
            event = "state.resent",
            now_ms = now,
            commands = resend.len(),
            "sending again {} shed command(s) the previous run left unconfirmed",
            resend.len()
        );
        // Saved first, with their journal rows, so a crash now finds the fresh deadlines.
        journal_actions(&shared, &mut journal, &resend, now, opts.dry_run);
        intents.commit(&resumed, &state, now, &mut journal, true);
        for a in resend {
            execute(&shared, &mut journal, a, now, opts.dry_run, None);
        }
    }

    let p = &site.policy;
    // The loop ticks half an interval after the collectors (they all start now): a
    // reading taken at a collector's tick reaches the next decision within half an
    // interval, where ticking in phase with the collectors made every decision use
    // readings almost one whole interval old (measured by bench/: reaction ~1,030 ms).
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + shared.clock.real(p.fast_loop_ms / 2),
        shared.clock.real(p.fast_loop_ms),
    );
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let slow_every = (p.slow_loop_ms / p.fast_loop_ms.max(1)).max(1);
    let mut n: u64 = 0;
    let mut last_persist = 0;
    // The first decision waits for the first answers: a snapshot of "never read" would
    // read as worst case everywhere and shed the whole site on every restart. The wait is
    // bounded by the longest staleness limit, after which silence is taken for what it is.
    let started = shared.clock.now_ms();
    let grace_ms = p
        .meter_stale_ms
        .max(p.cooling_stale_ms)
        .max(p.miner_stale_ms);
    let mut warm = false;
    let mut mining = MiningBook::new(site.miners.len());
    // Feeds for mining's trough energy, an A/B pair once (its racks count in both).
    let feed_idx: Vec<usize> = (0..site.nodes.len())
        .filter(|&i| site.nodes[i].kind == rackwarden_config::NodeKind::Feed)
        .filter(|&i| site.nodes[i].pair.is_none_or(|p| p > i))
        .collect();
    // Buffers kept across ticks: the snapshot `decide` reads, and the state before it.
    let mut snap = control::Snapshot::empty(&site);
    let mut prev = state.clone();
    // HA: the term whose intent this agent has taken over (None: standing by).
    let mut term: Option<i64> = None;
    // HA standby: when it last refreshed its view of the leader's intent.
    let mut last_sync: Millis = 0;
    // When the last decision started (real time): paces the urgent ones.
    let mut last_decision: Option<tokio::time::Instant> = None;
    // The site's load as the last decision saw it (grid "shed X kW" events start there).
    let mut last_site_kw: Option<f64> = None;
    loop {
        // A periodic tick, or a reading that may need a shed now: a meter just over its
        // node's shed threshold, or GPU limits raised (an urgent decision: a fast one,
        // between ticks; the tick schedule is unchanged).
        let urgent = tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticker.tick() => false,
            () = shared.urgent.notified() => true,
            // A grid event set, changed or withdrawn (API, OpenADR).
            () = hub.grid.changed.notified() => true,
        };
        // Urgent decisions come at most one per fiftieth of a fast tick (20 ms by
        // default): a fleet of GPU nodes whose limits rise together costs at most 50
        // decisions a second, not one per node.
        if urgent {
            let gap = shared.clock.real(p.fast_loop_ms / 50);
            if let Some(wait) =
                last_decision.map(|t: tokio::time::Instant| gap.saturating_sub(t.elapsed()))
            {
                if !wait.is_zero() {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        commit_energy(
            &shared,
            writer.as_ref(),
            &mut last_energy,
            &mut mining,
            false,
        );
        if !warm {
            let all_read = {
                let g = lock(&shared.snapshot);
                first_round_done(&site, &g)
            };
            if !all_read && shared.clock.now_ms().saturating_sub(started) < grace_ms {
                continue;
            }
            warm = true;
            info!(
                event = "control.started",
                all_inputs_read = all_read,
                "first decision: {}",
                if all_read {
                    "every input has answered"
                } else {
                    "some inputs are still silent and count as worst case"
                }
            );
        }
        last_decision = Some(tokio::time::Instant::now());
        let tick = if urgent {
            Tick::Fast
        } else if n % slow_every == 0 {
            Tick::Slow
        } else {
            Tick::Fast
        };
        if urgent {
            debug!(
                event = "control.urgent",
                "a meter crossed its shed threshold, GPU limits rose or a grid event changed: deciding now"
            );
        } else {
            n += 1;
        }
        let now = shared.clock.now_ms();
        {
            let mut g = lock(&shared.snapshot);
            // Into the buffers of the last tick's copy: nothing allocated per tick.
            snap.clone_from(&g);
            // The safety net's peak restarts with every tick.
            for m in g.meters.iter_mut().flatten() {
                m.max_kw = m.kw;
            }
        }
        snap.overrides = hub.overrides_for(&site);
        // The grid signals in force; a "shed X kW" event starts from the load the last
        // decision saw.
        let (grid_in, grid_view) = hub.grid.resolve(now, last_site_kw);
        snap.grid = grid_in;
        let acting = match &ha {
            None => Acting::Alone,
            Some(h) => match h.leadership() {
                Some(l) if term == Some(l.fence) => Acting::Leader(l.fence),
                Some(l) => {
                    // A new term: take over the intent the last leader stored before
                    // the first action, or stand by another tick if it cannot be read.
                    match take_over(h, &site, &mut state, now).await {
                        Ok(()) => {
                            term = Some(l.fence);
                            // The local database follows the intent taken over, whole.
                            intents.rewrite();
                            // Shed commands the last leader left in flight may never have
                            // reached their miners (it may have died between storing the
                            // intent and sending): sent again, as after a restart.
                            // A hot standby can see which of them did arrive (decide's
                            // own confirmation rule): those are not sent twice.
                            let arrived: Vec<bool> = state
                                .miners
                                .iter()
                                .enumerate()
                                .map(|(i, m)| {
                                    m.pending.is_some_and(|p| {
                                        control::decide::command_confirmed(&site, &snap, i, &p, now)
                                    })
                                })
                                .collect();
                            let mut again = resend_after_restart(&site, &mut state, now);
                            again.retain(|a| !matches!(a.device, Device::Miner(i) if arrived[i]));
                            if !again.is_empty() {
                                info!(
                                    event = "state.resent",
                                    now_ms = now,
                                    commands = again.len(),
                                    "sending again {} shed command(s) the last leader left unconfirmed",
                                    again.len()
                                );
                                if let Err(e) = store(h, l.fence, &state, now).await {
                                    warn!(error = %e, "resent intent not stored in etcd");
                                }
                                // Into the database with this tick's commit.
                                journal_actions(&shared, &mut journal, &again, now, opts.dry_run);
                                for a in again {
                                    execute(
                                        &shared,
                                        &mut journal,
                                        a,
                                        now,
                                        opts.dry_run,
                                        Some(l.fence),
                                    );
                                }
                            }
                            Acting::Leader(l.fence)
                        }
                        Err(e) => {
                            warn!(error = %e, "elected, but the stored intent cannot be read: not acting yet");
                            Acting::Standby
                        }
                    }
                }
                None => {
                    term = None;
                    // The standby's views follow the leader's intent (who is shed and
                    // why), refreshed every 30 s; a takeover reads it afresh anyway.
                    if now.saturating_sub(last_sync) >= 30_000 {
                        last_sync = now;
                        if let Ok(Some(p)) = h.read_intent().await.map(|b| {
                            b.and_then(|b| crate::ha::decode_intent(&b).ok())
                                .and_then(|j| serde_json::from_slice::<Persisted>(&j).ok())
                        }) {
                            state = ControlState::for_site(&site, &p.control, now);
                        }
                    }
                    Acting::Standby
                }
            },
        };
        // The state goes into `decide` by value; `prev` keeps its copy (in buffers
        // reused from tick to tick) for the database commit's diff and the journal.
        prev.clone_from(&state);
        let plan = control::decide_owned(&site, &topo, &snap, state, now, tick);
        // A standby shows the intent in force (the leader's), not what it would do.
        let shown = if acting == Acting::Standby {
            &prev
        } else {
            &plan.state
        };
        hub.record_decision(now, tick, &snap, shown, &plan.nodes, &plan.zones);
        last_site_kw = plan.nodes.first().map(|v| v.eff_kw);
        hub.record_grid(
            grid_view,
            last_site_kw,
            plan.grid_shortfall_kw,
            plan.price_curtailed,
        );
        let _ = events.send(AgentEvent::Decision {
            now,
            tick,
            nodes: Arc::new(plan.nodes.clone()),
            zones: Arc::new(plan.zones.clone()),
        });
        if acting == Acting::Standby {
            // The leader alerts, journals, stores the intent and acts; the standby keeps
            // its views fresh and its state as it was (it carries out nothing).
            state = std::mem::replace(&mut prev, plan.state);
            continue;
        }
        if !plan.actions.is_empty() {
            // The first trace of a curtail (then intent saved, action.sent, read-back):
            // what a crash between decision and command leaves undone is visible here.
            info!(
                event = "control.decided",
                now_ms = now,
                actions = plan.actions.len(),
                "decided {} action(s)",
                plan.actions.len()
            );
        }
        for a in &plan.alerts {
            alerts::log(a, now);
            hub.record_alert(now, a);
            let _ = events.send(AgentEvent::Alert {
                now,
                alert: a.clone(),
            });
        }
        if !opts.dry_run {
            // Nothing was sent in a dry run: there is nothing to confirm or escalate.
            journal_confirmations(&mut journal, &site, &prev, &plan.state, now, false);
        }
        if !opts.dry_run {
            // Mining's curtailed hours and trough energy (docs/energy.md); a dry run
            // curtails nothing.
            let feeds: Vec<&control::NodeView> = feed_idx
                .iter()
                .map(|&i| match site.nodes[i].pair {
                    // The pair's busier side: the trough both sides leave.
                    Some(p)
                        if plan.nodes[p].mining_kw - plan.nodes[p].guaranteed_kw
                            > plan.nodes[i].mining_kw - plan.nodes[i].guaranteed_kw =>
                    {
                        &plan.nodes[p]
                    }
                    _ => &plan.nodes[i],
                })
                .collect();
            mining.on_decision(now, &plan.state, &plan.actions, &feeds);
        }
        let changed = !plan.actions.is_empty() || plan.state.miners != prev.miners;
        // Intent first (what changed, with the journal rows, in one transaction), then
        // the commands: a crash between the two never leaves a command the intent does
        // not know about.
        journal_actions(&shared, &mut journal, &plan.actions, now, opts.dry_run);
        intents.commit(&prev, &plan.state, now, &mut journal, false);
        state = plan.state;
        if changed || now.saturating_sub(last_persist) >= 30_000 {
            last_persist = now;
            if let (Some(h), Acting::Leader(fence)) = (&ha, acting) {
                // Bounded at half a tick: a slow etcd must not hold back a shed. The
                // intent is on disk already; a takeover that missed this write still
                // finds the miners shed in its readings, holds restores at start-up,
                // and loses at most this tick's cycle history.
                let wait = shared.clock.real(p.fast_loop_ms / 2);
                match tokio::time::timeout(wait, store(h, fence, &state, now)).await {
                    Ok(Err(crate::ha::HaError::NotLeader { .. })) => {
                        // Another agent may lead: carry out nothing of this plan.
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => warn!(
                        wait_ms = wait.as_millis(),
                        "control intent not stored in etcd in time; acting on it anyway"
                    ),
                }
            }
        }
        let fence = match acting {
            Acting::Leader(f) => Some(f),
            Acting::Alone | Acting::Standby => None,
        };
        for a in plan.actions {
            execute(&shared, &mut journal, a, now, opts.dry_run, fence);
        }
    }
    intents.commit(&state, &state, shared.clock.now_ms(), &mut journal, true);
    if let Some((p50, p99)) = intents.latency_ms() {
        info!(
            event = "state.commits",
            commits = intents.commits,
            rows = intents.rows,
            p50_ms = p50,
            p99_ms = p99,
            "control intent commits this run: {} ({} rows), p50 {p50:.2} ms, p99 {p99:.2} ms",
            intents.commits,
            intents.rows
        );
    }
    commit_energy(
        &shared,
        writer.as_ref(),
        &mut last_energy,
        &mut mining,
        true,
    );
    if let Some(w) = writer {
        w.close().await;
    }
    if let (Some(h), Some(fence)) = (&ha, term) {
        if h.may_act(fence) {
            let _ = store(h, fence, &state, shared.clock.now_ms()).await;
        }
    }
    tasks.shutdown().await;
    info!(event = "agent.stopped", "agent stopped");
    Ok(state)
}

/// A new leader's first step: the intent the last leader stored in etcd replaces this
/// agent's own (a start-up hold follows, as after a restart: no wake until it is over).
async fn take_over(
    h: &Ha,
    site: &Site,
    state: &mut ControlState,
    now: Millis,
) -> Result<(), crate::ha::HaError> {
    match h.read_intent().await? {
        Some(bytes) => match crate::ha::decode_intent(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|json| serde_json::from_slice::<Persisted>(&json).map_err(|e| e.to_string()))
        {
            Ok(p) => {
                *state = ControlState::for_site(site, &p.control, now);
                info!(
                    event = "ha.intent.taken",
                    node = h.node(),
                    curtailed = state
                        .miners
                        .iter()
                        .filter(|m| m.intent != control::Intent::Normal)
                        .count(),
                    "taking over the control intent stored by the last leader"
                );
            }
            Err(e) => {
                // Not ours to throw away: keep this agent's own intent and say so.
                alerts::log(
                    &Alert::new(
                        alerts::STATE_CORRUPT,
                        control::Severity::Critical,
                        format!("intent stored in etcd unreadable ({e}); keeping this agent's own"),
                    ),
                    now,
                );
                *state = ControlState::for_site(site, state, now);
            }
        },
        None => {
            info!(
                event = "ha.intent.none",
                node = h.node(),
                "no intent stored in etcd yet: starting from this agent's own"
            );
            *state = ControlState::for_site(site, state, now);
        }
    }
    Ok(())
}

/// Stores the intent in etcd under the term's fence.
async fn store(
    h: &Ha,
    fence: i64,
    state: &ControlState,
    now: Millis,
) -> Result<(), crate::ha::HaError> {
    let json = serde_json::to_vec(&PersistedRef {
        last_now: now,
        control: state,
    })
    .unwrap_or_default();
    match crate::ha::encode_intent(&json) {
        Ok(bytes) => h.store_intent(fence, bytes).await,
        // Compressing into memory cannot fail short of allocation failure; say so.
        Err(e) => {
            warn!(error = %e, "control intent not compressed; not stored in etcd");
            Ok(())
        }
    }
}

/// The shed commands a previous run left in flight (`pending`), to send again on resume,
/// each with a fresh confirmation window of the same length.
///
/// The intent is saved before its commands go out, so a run killed in between leaves
/// commands that never reached a miner. Left alone they would expire unconfirmed and
/// escalate (power target -> sleep -> outlet off): a crash would cost harsher levers
/// than the decision chose, and a crash loop hard power cycles. Shed commands are
/// idempotent, so sending one that did arrive again is harmless; restores are never sent
/// again (nothing is woken on boot: they expire as usual).
pub fn resend_after_restart(site: &Site, state: &mut ControlState, now: Millis) -> Vec<Action> {
    let mut out = Vec::new();
    for (i, (ms, m)) in state.miners.iter_mut().zip(&site.miners).enumerate() {
        let Some(p) = ms.pending.as_mut() else {
            continue;
        };
        if !matches!(
            p.lever,
            Lever::PowerTarget | Lever::Sleep | Lever::OutletOff
        ) {
            continue;
        }
        let window = p.deadline.saturating_sub(p.issued_at);
        p.issued_at = now;
        p.deadline = now.saturating_add(window);
        out.push(Action {
            scope: control::Scope::Device,
            constraint: m.id.clone(),
            device: Device::Miner(i),
            device_id: m.id.clone(),
            lever: p.lever,
            from_w: p.from_w,
            to_w: p.to_w,
            reason: control::Reason::Resume,
            emergency: p.emergency,
        });
    }
    out
}

/// Whether every input the site names has been read at least once.
fn first_round_done(site: &Site, s: &Snapshot) -> bool {
    let metered = site
        .nodes
        .iter()
        .enumerate()
        .all(|(i, n)| n.meters.is_empty() || s.meters.get(i).is_some_and(Option::is_some));
    let units = site.zones.iter().enumerate().all(|(z, zone)| {
        zone.units.iter().enumerate().all(|(u, unit)| {
            unit.device.is_none()
                || s.units
                    .get(z)
                    .and_then(|v| v.get(u))
                    .is_some_and(Option::is_some)
        })
    });
    // A miner without a driver is never polled: it cannot hold the first decision back.
    let miners = s
        .miners
        .iter()
        .enumerate()
        .all(|(i, m)| m.is_some() || s.undriveable(i));
    metered && units && miners && s.gpus.iter().all(Option::is_some)
}

/// Hands the energy book's slots and mining's figures to the writer once a minute
/// (every time with `force`); the book's lock is held only to take them.
fn commit_energy(
    shared: &Shared,
    writer: Option<&Writer>,
    last: &mut Millis,
    mining: &mut MiningBook,
    force: bool,
) {
    let Some(w) = writer else { return };
    let now = shared.clock.now_ms();
    if !force && now.saturating_sub(*last) < COMMIT_EVERY_MS {
        return;
    }
    *last = now;
    let taken = lock(&shared.energy)
        .as_mut()
        .map(EnergyBook::take)
        .unwrap_or_default();
    w.send((taken, mining.take(), now));
}

fn spawn_collectors(
    shared: &Arc<Shared>,
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: &CancellationToken,
) {
    let site = &shared.site;
    let p = &site.policy;
    for (d, dev) in site.modbus_devices.iter().enumerate() {
        let use_ = &shared.uses[d];
        if use_.meters.is_empty() && use_.outlets.is_empty() && use_.units.is_empty() {
            continue;
        }
        let class_ms = if use_.meters.is_empty() && use_.outlets.is_empty() {
            p.cooling_poll_ms
        } else {
            p.meter_poll_ms
        };
        let every = shared.clock.real(dev.poll_interval_ms.unwrap_or(class_ms));
        let (sh, cancel) = (shared.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = iv.tick() => {}
                }
                let t0 = tokio::time::Instant::now();
                let r = sh.io.modbus.read_device(d).await;
                sh.hub.poll(PollClass::Modbus, t0.elapsed(), r.is_ok());
                match r {
                    Ok(r) => {
                        if std::mem::take(&mut failing) {
                            info!(device = %sh.site.modbus_devices[d].id, "modbus device answers again");
                        }
                        sh.apply_device(d, &r, sh.clock.now_ms());
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            warn!(device = %sh.site.modbus_devices[d].id, error = %e, "modbus read failed; its readings go stale");
                        }
                    }
                }
            }
        });
    }
    if !site.miners.is_empty() {
        let every = shared.clock.real(p.miner_poll_ms);
        let budget = miner_poll_budget(shared);
        let (sh, cancel) = (shared.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut failing = vec![false; sh.site.miners.len()];
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = iv.tick() => {}
                }
                // Each poll is bounded by `budget`, and each answer reaches the snapshot
                // as it comes: a miner that hangs (or a web interface that waits out its
                // 30 s HTTP timeout) must not hold back the readings of all the others.
                let mut results = futures::stream::iter(0..sh.site.miners.len())
                    .map(|i| {
                        let sh = &sh;
                        async move {
                            let r = match &sh.io.miners[i] {
                                Some(d) => {
                                    let t0 = tokio::time::Instant::now();
                                    let r = poll_bounded(d.as_ref(), budget).await;
                                    sh.hub.poll(PollClass::Miner, t0.elapsed(), r.is_ok());
                                    Some(r)
                                }
                                None => None,
                            };
                            (i, r)
                        }
                    })
                    .buffer_unordered(MINER_POLLS_IN_FLIGHT);
                while let Some((i, r)) = results.next().await {
                    match r {
                        Some(Ok(t)) => {
                            failing[i] = false;
                            sh.apply_miner(i, &t, sh.clock.now_ms());
                        }
                        Some(Err(e)) if !std::mem::replace(&mut failing[i], true) => {
                            warn!(device = %sh.site.miners[i].id, error = %e, "miner poll failed; its reading goes stale");
                        }
                        Some(Err(_)) | None => {}
                    }
                }
            }
        });
    }
    for g in 0..site.gpu_nodes.len() {
        let every = shared.clock.real(p.gpu_power_poll_ms);
        let (sh, cancel) = (shared.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = iv.tick() => {}
                }
                let t0 = tokio::time::Instant::now();
                let r = sh.io.read_gpu(g).await;
                sh.hub.poll(PollClass::Gpu, t0.elapsed(), r.is_ok());
                match r {
                    Ok(r) => {
                        failing = false;
                        sh.apply_gpu(g, &r, sh.clock.now_ms());
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            warn!(device = %sh.site.gpu_nodes[g].id, error = %e, "gpu node read failed; it goes stale");
                        }
                    }
                }
            }
        });
    }
}

/// How long one miner poll may take: half the miner staleness limit, so a healthy
/// miner polled in the same round as hung ones is read again well within that limit.
fn miner_poll_budget(sh: &Shared) -> Duration {
    sh.clock.real(sh.site.policy.miner_stale_ms / 2)
}

/// One miner poll, given up after `budget` (the driver's own timeouts may be longer).
async fn poll_bounded(d: &dyn MinerDriver, budget: Duration) -> Result<MinerTelemetry, String> {
    match tokio::time::timeout(budget, d.poll()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "miner {} at {}: poll gave no answer within {} ms",
            d.id(),
            d.addr(),
            budget.as_millis()
        )),
    }
}

/// Journals commands that a later reading confirmed (or that escalated unconfirmed).
fn journal_confirmations(
    journal: &mut ActionJournal,
    site: &Site,
    old: &ControlState,
    new: &ControlState,
    now: Millis,
    dry_run: bool,
) {
    for (i, (o, n)) in old.miners.iter().zip(&new.miners).enumerate() {
        let Some(p) = o.pending else { continue };
        if n.pending.is_some_and(|np| np.issued_at == p.issued_at) {
            continue;
        }
        let confirmed = n.failed != Some(p.lever);
        let event = if confirmed {
            "action.confirmed"
        } else {
            // Not `action.unconfirmed`: that is the alert the decision raises for it.
            "action.escalated"
        };
        info!(
            event,
            now_ms = now,
            device = %site.miners[i].id,
            lever = p.lever.name(),
            "{} {} {}",
            p.lever.name(),
            site.miners[i].id,
            if confirmed { "confirmed by read-back" } else { "not confirmed in time: escalated" }
        );
        journal.record(JournalRow {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            now_ms: now,
            node: String::new(),
            device: site.miners[i].id.clone(),
            lever: p.lever.name().to_owned(),
            from_w: p.from_w,
            to_w: p.to_w,
            reason: if confirmed {
                "confirmed by read-back".into()
            } else {
                "not confirmed in time: escalated".into()
            },
            confirmed,
            dry_run,
            result: None,
        });
    }
}

/// Journals the actions about to be carried out, before the intent commit that holds
/// them (their rows go into the database in the same transaction). An action the
/// actuator will refuse for want of a driver is not journaled.
fn journal_actions<'a>(
    shared: &Shared,
    journal: &mut ActionJournal,
    actions: impl IntoIterator<Item = &'a Action>,
    now: Millis,
    dry_run: bool,
) {
    for a in actions {
        if shared.io.lacks_driver(a) {
            continue;
        }
        journal.record(journal_row(
            a,
            now,
            dry_run,
            if dry_run { "would" } else { "sent" },
        ));
    }
}

fn journal_row(a: &Action, now: Millis, dry_run: bool, result: &str) -> JournalRow {
    JournalRow {
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        now_ms: now,
        node: a.constraint.clone(),
        device: a.device_id.clone(),
        lever: a.lever.name().to_owned(),
        from_w: a.from_w,
        to_w: a.to_w,
        // The serde name, as the API and the logs spell it (`meter_silent`).
        reason: serde_json::to_value(a.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        confirmed: false,
        dry_run,
        result: Some(result.to_owned()),
    }
}

/// Carries out one action (journaled already, [`journal_actions`]): (live) the command
/// through its driver.
fn execute(
    shared: &Arc<Shared>,
    journal: &mut ActionJournal,
    a: Action,
    now: Millis,
    dry_run: bool,
    fence: Option<i64>,
) {
    if let (Some(h), Some(f)) = (&shared.ha, fence) {
        if !h.may_act(f) {
            // The term ended between the decision and now: the journal says so.
            journal.record(journal_row(&a, now, dry_run, "fenced"));
            fenced(shared, &a, f);
            return;
        }
    }
    if shared.io.lacks_driver(&a) {
        // `decide` knows these miners (`Snapshot::undriveable`) and plans only their
        // outlet; anything else reaching here (a command a previous run left in flight,
        // resent after a restart or a takeover) is refused before the journal and the
        // wire. It stays unconfirmed, and its escalation is the outlet.
        warn!(
            event = "action.refused",
            now_ms = now,
            device = %a.device_id,
            lever = a.lever.name(),
            "{} {} not sent: the miner has no driver",
            a.lever.name(),
            a.device_id
        );
        let _ = shared.events.send(AgentEvent::ActionResult {
            now,
            device_id: a.device_id.clone(),
            lever: a.lever,
            error: Some(format!("miner {} has no driver", a.device_id)),
        });
        return;
    }
    if dry_run {
        info!(
            event = "action.would",
            now_ms = now,
            node = %a.constraint,
            device = %a.device_id,
            lever = a.lever.name(),
            from_w = a.from_w,
            to_w = a.to_w,
            reason = a.reason.name(),
            "dry run: would {} {}", a.lever.name(), a.device_id
        );
    } else {
        info!(
            event = "action.sent",
            now_ms = now,
            node = %a.constraint,
            device = %a.device_id,
            lever = a.lever.name(),
            from_w = a.from_w,
            to_w = a.to_w,
            reason = a.reason.name(),
            "{} {}", a.lever.name(), a.device_id
        );
    }
    shared.hub.record_action(now, &a, dry_run);
    let _ = shared.events.send(AgentEvent::Action {
        now,
        action: a.clone(),
        dry_run,
    });
    if dry_run {
        return;
    }
    let sh = shared.clone();
    tokio::spawn(async move {
        // The semaphore is never closed; a closed one would only lift the bound.
        let permit = sh.in_flight.acquire().await.ok();
        // Fencing: the last check before the wire. An action decided under a term
        // that has ended (or whose deadline passed while it waited) is refused.
        let r = match (&sh.ha, fence) {
            (Some(h), Some(f)) if !h.may_act(f) => {
                fenced(&sh, &a, f);
                Err("fenced: leadership ended before the command went out".to_owned())
            }
            _ => command(&sh, &a).await,
        };
        drop(permit);
        if let Err(e) = &r {
            warn!(device = %a.device_id, lever = a.lever.name(), error = %e, "command failed; it stays unconfirmed and escalates");
        } else if let Device::Miner(i) = a.device {
            // Confirmation comes from readings, and the next regular poll may be up to
            // a whole interval away: read the miner back a few times before the
            // confirmation deadline so a slow ramp is not taken for a refusal.
            if let Some(d) = sh.io.miners[i].clone() {
                let step = sh.site.policy.confirm_timeout_s * 1000 / 5;
                for _ in 0..4 {
                    tokio::time::sleep(sh.clock.real(step)).await;
                    let _permit = sh.in_flight.acquire().await.ok();
                    if let Ok(t) = poll_bounded(d.as_ref(), sh.clock.real(step)).await {
                        sh.apply_miner(i, &t, sh.clock.now_ms());
                    }
                }
            }
        }
        let _ = sh.events.send(AgentEvent::ActionResult {
            now: sh.clock.now_ms(),
            device_id: a.device_id.clone(),
            lever: a.lever,
            error: r.err(),
        });
    });
}

/// Says that `a`, decided in term `fence`, was refused: that term has ended.
fn fenced(sh: &Shared, a: &Action, fence: i64) {
    let mut alert = Alert::new(
        alerts::HA_ACTION_FENCED,
        control::Severity::Warning,
        format!(
            "{} {} refused: decided in term {fence}, which has ended",
            a.lever.name(),
            a.device_id
        ),
    );
    alert.device = Some(a.device_id.clone());
    let now = sh.clock.now_ms();
    alerts::log(&alert, now);
    sh.hub.record_alert(now, &alert);
}

async fn command(sh: &Shared, a: &Action) -> Result<(), String> {
    match a.device {
        Device::Miner(i) => {
            let m = &sh.site.miners[i];
            match a.lever {
                Lever::OutletOff | Lever::OutletOn => {
                    let o = m
                        .outlet
                        .as_ref()
                        .ok_or_else(|| format!("miner {} has no outlet configured", m.id))?;
                    let on = if a.lever == Lever::OutletOn { 1.0 } else { 0.0 };
                    sh.io
                        .modbus
                        .write_point(o.device, Role::OutletSwitch.name(), o.outlet, on)
                        .await
                        .map_err(|e| e.to_string())
                }
                lever => {
                    let d = sh.io.miners[i]
                        .as_ref()
                        .ok_or_else(|| format!("miner {} has no driver", m.id))?;
                    let r = match lever {
                        Lever::PowerTarget | Lever::PowerTargetRaise => {
                            d.set_power_target(a.to_w).await
                        }
                        Lever::Sleep => d.sleep().await,
                        Lever::Wake => d.wake().await,
                        other => {
                            return Err(format!("lever {} is not a miner lever", other.name()))
                        }
                    };
                    r.map(|_| ()).map_err(|e| e.to_string())
                }
            }
        }
        Device::GpuNode(g) => sh.io.cap_gpu(g, a.to_w).await,
    }
}

/// Id -> index maps the HTTP layer and tests use.
pub fn miner_index(site: &Site) -> HashMap<&str, usize> {
    site.miners
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.as_str(), i))
        .collect()
}

#[cfg(test)]
mod poll_bound_tests {
    use super::*;
    use rackwarden_config::Firmware;
    use rackwarden_protocols::miner::sim::{Fault, MinerSim, SimMinerSpec, SimOptions};

    /// A hung miner's poll ends at the budget with an error naming it, however long the
    /// driver's own timeouts are; a healthy one answers within the same budget.
    #[tokio::test]
    async fn a_hung_miner_poll_ends_at_the_budget_naming_the_miner() {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 97, 3, 1));
        let spec = SimMinerSpec::new(
            "hung-1",
            Firmware::Luxos,
            std::net::SocketAddr::new(ip, 0),
            None,
        );
        let sim = MinerSim::start(vec![spec], SimOptions { time_scale: 100.0 })
            .await
            .unwrap();
        let m = sim.miners()[0].clone();
        let opts = DriverOptions {
            reply_timeout: Duration::from_secs(30),
            ..DriverOptions::default()
        };
        let d = DriverFactory::new(opts)
            .unwrap()
            .build(&m.to_config())
            .unwrap();
        let budget = Duration::from_millis(300);
        assert!(poll_bounded(d.as_ref(), budget).await.is_ok());
        m.set_fault(Fault::NoAnswer);
        let t0 = tokio::time::Instant::now();
        let e = poll_bounded(d.as_ref(), budget).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert!(e.contains("hung-1") && e.contains("300 ms"), "{e}");
        sim.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Intent, Pending};

    fn site() -> Site {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        rackwarden_config::load(&repo.join("config/tests/data/valid/minimal.toml")).unwrap()
    }

    fn pending(lever: Lever, issued_at: Millis) -> Option<Pending> {
        Some(Pending {
            lever,
            issued_at,
            deadline: issued_at + 10_000,
            from_w: 3250.0,
            to_w: 2600.0,
            emergency: false,
        })
    }

    #[test]
    fn shed_commands_left_in_flight_are_sent_again_with_a_fresh_window() {
        let site = site();
        let mut st = ControlState::new(&site, 1_000);
        st.miners[0].intent = Intent::Target { w: 2600.0 };
        st.miners[0].pending = pending(Lever::PowerTarget, 5_000);
        let now = 60_000;
        let again = resend_after_restart(&site, &mut st, now);
        assert_eq!(again.len(), 1);
        let a = &again[0];
        assert_eq!(
            (a.device, a.lever, a.to_w, a.reason),
            (
                Device::Miner(0),
                Lever::PowerTarget,
                2600.0,
                control::Reason::Resume
            )
        );
        assert_eq!(a.device_id, site.miners[0].id);
        // Confirmed only by readings after the new send, within a window as long as the
        // first one: not expired on arrival, so no escalation for a lost command.
        let p = st.miners[0].pending.unwrap();
        assert_eq!((p.issued_at, p.deadline), (now, now + 10_000));
        assert_eq!(st.miners[0].intent, Intent::Target { w: 2600.0 });
    }

    /// A miner whose credentials cannot be read has no driver: the snapshot says so, and
    /// only its outlet levers may reach the actuator.
    #[tokio::test]
    async fn a_miner_without_a_driver_is_marked_and_only_its_outlet_is_driven() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let text =
            std::fs::read_to_string(repo.join("config/tests/data/valid/minimal.toml")).unwrap();
        let var = format!("RACKWARDEN_TEST_UNSET_{}", std::process::id());
        let text = text.replace(
            "min_w = 1800\n",
            &format!("min_w = 1800\ncredentials = {{ password_env = \"{var}\" }}\n"),
        );
        let site =
            rackwarden_config::load_str(&text, std::path::Path::new("m.toml"), &repo).unwrap();
        assert!(site.miners[0].credentials.is_some());
        let io = Io::new(&site);
        let snap = io.snapshot(&site);
        assert_eq!(snap.undriveable, vec![true]);
        assert!(snap.undriveable(0));
        let action = |lever| Action {
            scope: control::Scope::Device,
            constraint: "m-1".into(),
            device: Device::Miner(0),
            device_id: "m-1".into(),
            lever,
            from_w: 3250.0,
            to_w: 0.0,
            reason: control::Reason::Shed,
            emergency: false,
        };
        for lever in [
            Lever::Sleep,
            Lever::Wake,
            Lever::PowerTarget,
            Lever::PowerTargetRaise,
        ] {
            assert!(io.lacks_driver(&action(lever)), "{lever:?}");
        }
        for lever in [Lever::OutletOff, Lever::OutletOn] {
            assert!(!io.lacks_driver(&action(lever)), "{lever:?}");
        }
        // With its driver, nothing is marked and nothing refused.
        let site =
            rackwarden_config::load(&repo.join("config/tests/data/valid/minimal.toml")).unwrap();
        let io = Io::new(&site);
        assert!(io.snapshot(&site).undriveable.is_empty());
        assert!(!io.lacks_driver(&action(Lever::Sleep)));
    }

    #[test]
    fn restores_left_in_flight_are_not_sent_on_boot() {
        let site = site();
        let mut st = ControlState::new(&site, 1_000);
        for lever in [Lever::Wake, Lever::PowerTargetRaise, Lever::OutletOn] {
            st.miners[0].pending = pending(lever, 5_000);
            assert!(resend_after_restart(&site, &mut st, 60_000).is_empty());
            // Left to expire as before.
            assert_eq!(st.miners[0].pending.unwrap().issued_at, 5_000);
        }
        st.miners[0].pending = None;
        assert!(resend_after_restart(&site, &mut st, 60_000).is_empty());
    }
}
