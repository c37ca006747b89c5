//! The agent proper: collectors fill the snapshot, one loop ticks `decide` (fast every
//! `fast_loop_ms`, slow every `slow_loop_ms`), the actuator carries out the plan.
//!
//! Data flows one way: devices -> collectors -> [`Snapshot`] -> `decide` -> actuator,
//! alerts, journal, state file. Collectors never decide; the actuator never reads policy;
//! `decide` never touches a socket. In a dry run the actuator writes nothing to any
//! device: it logs and journals what it would have done.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use rackwarden_config::Site;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::actuate::COMMANDS_IN_FLIGHT;
use super::clock::{Clock, Millis};
use super::collect::{site_uses, DeviceUse, MeterCache};
use super::io::Io;
use super::tick::Loop;
use crate::control::{Action, Alert, ControlState, Lever, NodeView, Snapshot, Tick, ZoneView};
use crate::energy::EnergyBook;
use crate::ha::Ha;
// Issue 8: the status hub the HTTP layer reads, and poll metrics.
use crate::status::StatusHub;

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

/// State shared by the collectors and the loop.
pub(super) struct Shared {
    pub(super) site: Arc<Site>,
    pub(super) clock: Clock,
    pub(super) snapshot: Mutex<Snapshot>,
    pub(super) meters: Mutex<MeterCache>,
    pub(super) uses: Vec<DeviceUse>,
    pub(super) io: Io,
    pub(super) events: broadcast::Sender<AgentEvent>,
    /// Bounds the commands and read-back polls in flight: a mass shed on a 30,000-miner
    /// site would otherwise open a connection per miner at once (descriptors, memory).
    pub(super) in_flight: tokio::sync::Semaphore,
    /// The commands being carried out (and their read-backs): a stop waits for the
    /// commands on the wire, bounded ([`super::actuate::wait_for_commands`]).
    pub(super) commands: tokio_util::task::TaskTracker,
    /// The agent's stop: read-backs end early on it (the commands themselves finish).
    pub(super) cancel: CancellationToken,
    /// What the HTTP layer reads (status, readiness, metrics) and the overrides it sets.
    pub(super) hub: Arc<StatusHub>,
    /// With `[ha]`: the election; the actuator asks it before every write (fencing).
    pub(super) ha: Option<Arc<Ha>>,
    /// Energy per metered node from the Modbus readings (None: accounting is off).
    pub(super) energy: Mutex<Option<crate::energy::EnergyBook>>,
    /// Raised by a meter reading that puts its node over its shed threshold, or a GPU
    /// node whose enforced limits rose: the loop decides at once instead of at its next
    /// tick (one stored permit: coalesced, at most one decision in flight).
    pub(super) urgent: tokio::sync::Notify,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder cannot leave these half-written in a way that matters more than
    // stopping the agent would: keep going with the data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What connects a running agent to the rest of the process: observers of its events,
/// the stop signal, the status hub the HTTP layer reads (and takes the operator
/// overrides and grid targets from), and the HA election when the site has `[ha]`.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub events: broadcast::Sender<AgentEvent>,
    pub cancel: CancellationToken,
    pub hub: Arc<StatusHub>,
    pub ha: Option<Arc<Ha>>,
}

impl Wiring {
    /// Events to `events`, stopped by `cancel`, a hub of its own, no HA.
    pub fn new(events: broadcast::Sender<AgentEvent>, cancel: CancellationToken) -> Wiring {
        Wiring {
            events,
            cancel,
            hub: StatusHub::new(),
            ha: None,
        }
    }
}

/// The agent: `Agent::new(site, options, wiring).run()` is the one entry point, used by
/// `rackwarden run`, the demo, the HA pair, the benchmarks and the tests.
#[derive(Debug)]
pub struct Agent {
    pub site: Site,
    pub opts: RunOptions,
    pub wiring: Wiring,
}

impl Agent {
    pub fn new(site: Site, opts: RunOptions, wiring: Wiring) -> Agent {
        Agent { site, opts, wiring }
    }

    /// Runs until `wiring.cancel` fires. Returns the last control state (already on
    /// disk). The loop is in `tick.rs`.
    pub async fn run(self) -> anyhow::Result<ControlState> {
        let mut l = Loop::start(self);
        while let Some(urgent) = l.wait().await {
            l.tick(urgent).await;
        }
        Ok(l.finish().await)
    }
}

impl Shared {
    pub(super) fn new(
        agent: &Agent,
        site: Arc<Site>,
        clock: Clock,
        io: Io,
        energy: Option<EnergyBook>,
    ) -> Arc<Shared> {
        let (uses, meters) = site_uses(&site);
        Arc::new(Shared {
            clock,
            snapshot: Mutex::new(io.snapshot(&site)),
            meters: Mutex::new(meters),
            uses,
            io,
            events: agent.wiring.events.clone(),
            site,
            in_flight: tokio::sync::Semaphore::new(COMMANDS_IN_FLIGHT),
            commands: tokio_util::task::TaskTracker::new(),
            cancel: agent.wiring.cancel.clone(),
            hub: agent.wiring.hub.clone(),
            ha: agent.wiring.ha.clone(),
            energy: Mutex::new(energy),
            urgent: tokio::sync::Notify::new(),
        })
    }

    /// Raises one alert: [`StatusHub::raise`] (log, delivery, counter, status), then the
    /// observers' event.
    pub(super) fn raise(&self, now: Millis, a: &Alert) {
        self.hub.raise(now, a);
        // Observers may come and go: nobody listening is not an error.
        self.events
            .send(AgentEvent::Alert {
                now,
                alert: a.clone(),
            })
            .ok();
    }

    /// Reports one action being carried out: [`StatusHub::report_action`] (log,
    /// counter, status), then the observers' event. Its journal row is already written.
    pub(super) fn report_action(&self, now: Millis, a: &Action, dry_run: bool) {
        self.hub.report_action(now, a, dry_run);
        self.events
            .send(AgentEvent::Action {
                now,
                action: a.clone(),
                dry_run,
            })
            .ok();
    }
}

/// Runs the agent until `cancel` fires ([`Agent::run`] with a hub of its own).
pub async fn run(
    site: Site,
    opts: RunOptions,
    events: broadcast::Sender<AgentEvent>,
    cancel: CancellationToken,
) -> anyhow::Result<ControlState> {
    Agent::new(site, opts, Wiring::new(events, cancel))
        .run()
        .await
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

/// [`run_with_hub`] as one agent of an active/standby pair (`ha`), or alone (`None`).
pub async fn run_with_ha(
    site: Site,
    opts: RunOptions,
    events: broadcast::Sender<AgentEvent>,
    cancel: CancellationToken,
    hub: Arc<StatusHub>,
    ha: Option<Arc<Ha>>,
) -> anyhow::Result<ControlState> {
    let wiring = Wiring {
        events,
        cancel,
        hub,
        ha,
    };
    Agent::new(site, opts, wiring).run().await
}

/// Id -> index maps the HTTP layer and tests use.
pub fn miner_index(site: &Site) -> HashMap<&str, usize> {
    site.miners
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.as_str(), i))
        .collect()
}
