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
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::actuate::{execute, resend_after_restart, COMMANDS_IN_FLIGHT};
use super::clock::{Clock, Millis};
use super::collect::{first_round_done, spawn_collectors, DeviceUse, MeterCache};
use super::io::Io;
use super::journal::{journal_actions, journal_confirmations};
use super::persist::{ActionJournal, IntentStore};
use super::takeover::{store, take_over};
use crate::alerts;
use crate::control::{
    self, Action, Alert, ControlState, Device, Lever, NodeView, Snapshot, Tick, Topology, ZoneView,
};
use crate::energy::mining::MiningBook;
use crate::energy::recorder::{Recorder, Writer, COMMIT_EVERY_MS};
use crate::energy::EnergyBook;
use crate::ha::Ha;
// Issue 8: the status hub the HTTP layer reads, and poll metrics.
use crate::http::StatusHub;

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

/// Id -> index maps the HTTP layer and tests use.
pub fn miner_index(site: &Site) -> HashMap<&str, usize> {
    site.miners
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.as_str(), i))
        .collect()
}
