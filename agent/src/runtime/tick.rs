//! The control loop: wait for a tick (or a reading that needs a decision now), then
//! collect -> decide -> report -> store -> act. One [`Loop`] holds what lives from one
//! tick to the next; each stage is a method of a screen or less.
//!
//! ```text
//! wait()      ticker | urgent reading | grid event, paced, cancellable
//! tick()      warm-up gate -> snapshot() -> acting() (HA) -> decide() -> report()
//!             -> commit() (journal rows + intent in one transaction, then etcd)
//!             -> act() (the actuator, actuate.rs)
//! finish()    last commit, energy, etcd, collectors stopped
//! ```

use std::sync::Arc;

use rackwarden_config::Site;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::actuate::{execute, resend_after_restart, wait_for_commands};
use super::agent::{lock, Agent, AgentEvent, Shared};
use super::clock::{Clock, Millis};
use super::collect::{first_round_done, spawn_collectors};
use super::io::Io;
use super::journal::{journal_actions, journal_confirmations};
use super::persist::{ActionJournal, IntentStore};
use super::takeover::store;
use crate::control::{self, ControlState, NodeView, Plan, Snapshot, Tick, Topology};
use crate::energy::mining::MiningBook;
use crate::energy::recorder::{Recorder, Writer, COMMIT_EVERY_MS};
use crate::energy::EnergyBook;

/// Who may act this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acting {
    /// No `[ha]`: this agent is the only one.
    Alone,
    /// HA leader of the term with this fence.
    Leader(i64),
    /// HA standby: polls and decides for its status views, never writes.
    Standby,
}

/// What the control loop carries from one tick to the next.
pub(super) struct Loop {
    pub(super) agent: Agent,
    pub(super) site: Arc<Site>,
    pub(super) shared: Arc<Shared>,
    topo: Topology,
    pub(super) intents: IntentStore,
    pub(super) journal: ActionJournal,
    /// The control intent in force (what `decide` carries), and its copy from before the
    /// last decision (the commit's diff; buffers reused from tick to tick).
    pub(super) state: ControlState,
    prev: ControlState,
    /// The snapshot `decide` reads (buffers reused from tick to tick).
    pub(super) snap: Snapshot,
    ticker: Interval,
    slow_every: u64,
    /// Periodic ticks so far (the slow tick is every `slow_every`-th).
    n: u64,
    last_persist: Millis,
    /// The first decision waits for every input, at most `grace_ms` from `started`.
    started: Millis,
    grace_ms: u64,
    warm: bool,
    /// When the last decision started (real time): paces the urgent ones.
    last_decision: Option<Instant>,
    /// The site's load as the last decision saw it (grid "shed X kW" events start there).
    last_site_kw: Option<f64>,
    /// HA: the term whose intent this agent has taken over (None: standing by), and when
    /// a standby last refreshed its view of the leader's intent.
    pub(super) term: Option<i64>,
    pub(super) last_sync: Millis,
    mining: MiningBook,
    /// Feeds for mining's trough energy, an A/B pair once (its racks count in both).
    feed_idx: Vec<usize>,
    writer: Option<Writer>,
    last_energy: Millis,
    tasks: tokio::task::JoinSet<()>,
}

impl Loop {
    /// Opens the store, resumes the intent, builds the device side, starts the
    /// collectors, and resends what a previous run left in flight.
    pub(super) fn start(agent: Agent) -> Loop {
        let site = Arc::new(agent.site.clone());
        let opts = &agent.opts;
        // The control intent a previous run committed (a corrupt database is set aside
        // with an alert and the agent starts on the safe side; a legacy state file is
        // imported).
        let (mut intents, persisted) = IntentStore::open(
            &opts.database_file,
            &opts.state_file,
            site.agent.journal_retention_days,
        );
        let clock = Clock::resume(persisted.as_ref().map(|s| s.0), opts.speed);
        let now = clock.now_ms();
        let persisted = persisted.map(|p| p.1);
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
        // With `[ha]` only a leader sends, after taking over the pair's intent
        // (`take_over`). The resumed state as the database holds it: the resend's fresh
        // deadlines are what its commit writes.
        let resumed = state.clone();
        let resend = if persisted.is_some() && agent.wiring.ha.is_none() {
            resend_after_restart(&site, &mut state, now)
        } else {
            Vec::new()
        };
        let mut journal = ActionJournal::open(&opts.journal_file);
        let hub = &agent.wiring.hub;
        // Energy accounting (docs/energy.md): a database that cannot be had turns it
        // off, never the agent.
        let (writer, book) = match Recorder::open(&site, &opts.database_file, &hub.metrics, now) {
            Some((r, b)) => {
                hub.set_energy_db(opts.database_file.clone(), site.clone());
                (Some(Writer::spawn(r, hub.clone())), Some(b))
            }
            None => (None, None),
        };
        let shared = Shared::new(&agent, site.clone(), clock, Io::new(&site), book);
        // What opening the database found (a corrupt file set aside, an intent that
        // cannot be saved).
        for a in intents.take_alerts() {
            shared.raise(now, &a);
        }
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
        spawn_collectors(&shared, &mut tasks, &agent.wiring.cancel);
        if !resend.is_empty() {
            info!(
                event = "state.resent",
                now_ms = now,
                commands = resend.len(),
                "sending again {} shed command(s) the previous run left unconfirmed",
                resend.len()
            );
            // Saved first, with their journal rows, so a crash now finds the fresh
            // deadlines.
            journal_actions(&shared, &mut journal, &resend, now, opts.dry_run);
            intents.commit(&resumed, &state, now, &mut journal, true);
            for a in intents.take_alerts() {
                shared.raise(now, &a);
            }
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
            Instant::now() + shared.clock.real(p.fast_loop_ms / 2),
            shared.clock.real(p.fast_loop_ms),
        );
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Loop {
            topo: Topology::new(&site),
            snap: Snapshot::empty(&site),
            prev: state.clone(),
            state,
            slow_every: (p.slow_loop_ms / p.fast_loop_ms.max(1)).max(1),
            n: 0,
            last_persist: 0,
            // The first decision waits for the first answers: a snapshot of "never read"
            // would read as worst case everywhere and shed the whole site on every
            // restart. The wait is bounded by the longest staleness limit, after which
            // silence is taken for what it is.
            started: shared.clock.now_ms(),
            grace_ms: p
                .meter_stale_ms
                .max(p.cooling_stale_ms)
                .max(p.miner_stale_ms),
            warm: false,
            last_decision: None,
            last_site_kw: None,
            term: None,
            last_sync: 0,
            mining: MiningBook::new(site.miners.len()),
            feed_idx: (0..site.nodes.len())
                .filter(|&i| site.nodes[i].kind == rackwarden_config::NodeKind::Feed)
                .filter(|&i| site.nodes[i].pair.is_none_or(|p| p > i))
                .collect(),
            writer,
            last_energy: now,
            tasks,
            ticker,
            intents,
            journal,
            shared,
            site,
            agent,
        }
    }

    /// The next decision: `Some(urgent)` at a periodic tick (`false`) or when a reading
    /// or a grid event needs one now (`true`); `None` once the agent is cancelled.
    pub(super) async fn wait(&mut self) -> Option<bool> {
        let (shared, wiring) = (&self.shared, &self.agent.wiring);
        let urgent = tokio::select! {
            () = wiring.cancel.cancelled() => return None,
            _ = self.ticker.tick() => false,
            // A meter just over its node's shed threshold, or GPU limits raised.
            () = shared.urgent.notified() => true,
            // A grid event set, changed or withdrawn (API, OpenADR).
            () = wiring.hub.grid.changed.notified() => true,
        };
        // Urgent decisions come at most one per fiftieth of a fast tick (20 ms by
        // default): a fleet of GPU nodes whose limits rise together costs at most 50
        // decisions a second, not one per node.
        if urgent {
            let gap = shared.clock.real(self.site.policy.fast_loop_ms / 50);
            if let Some(wait) = self.last_decision.map(|t| gap.saturating_sub(t.elapsed())) {
                if !wait.is_zero() {
                    tokio::select! {
                        () = wiring.cancel.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        Some(urgent)
    }

    /// One decision and what follows from it.
    pub(super) async fn tick(&mut self, urgent: bool) {
        self.commit_energy(false);
        if !self.warmed_up() {
            return;
        }
        self.last_decision = Some(Instant::now());
        let tick = if urgent {
            debug!(
                event = "control.urgent",
                "a meter crossed its shed threshold, GPU limits rose or a grid event changed: deciding now"
            );
            Tick::Fast
        } else {
            self.n += 1;
            if (self.n - 1) % self.slow_every == 0 {
                Tick::Slow
            } else {
                Tick::Fast
            }
        };
        let now = self.shared.clock.now_ms();
        let grid_view = self.snapshot(now);
        let acting = self.acting(now).await;
        let plan = self.decide(now, tick, acting, grid_view);
        if acting == Acting::Standby {
            // The leader alerts, journals, stores the intent and acts; the standby keeps
            // its views fresh and its state as it was (it carries out nothing).
            self.state = std::mem::replace(&mut self.prev, plan.state);
            return;
        }
        self.report(now, &plan);
        let Plan { actions, state, .. } = plan;
        if !self.commit(now, acting, &actions, state).await {
            return;
        }
        let fence = match acting {
            Acting::Leader(f) => Some(f),
            Acting::Alone | Acting::Standby => None,
        };
        for a in actions {
            execute(
                &self.shared,
                &mut self.journal,
                a,
                now,
                self.agent.opts.dry_run,
                fence,
            );
        }
    }

    /// The first decision waits for every input to answer, at most `grace_ms`.
    fn warmed_up(&mut self) -> bool {
        if self.warm {
            return true;
        }
        let all_read = first_round_done(&self.site, &lock(&self.shared.snapshot));
        if !all_read && self.shared.clock.now_ms().saturating_sub(self.started) < self.grace_ms {
            return false;
        }
        self.warm = true;
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
        true
    }

    /// Copies the collectors' snapshot, the overrides and the grid signals in force into
    /// the loop's snapshot; returns the grid's view for the status.
    fn snapshot(&mut self, now: Millis) -> crate::grid::GridView {
        {
            let mut g = lock(&self.shared.snapshot);
            // Into the buffers of the last tick's copy: nothing allocated per tick.
            self.snap.clone_from(&g);
            // The safety net's peak restarts with every tick.
            for m in g.meters.iter_mut().flatten() {
                m.max_kw = m.kw;
            }
        }
        let hub = &self.agent.wiring.hub;
        self.snap.overrides = hub.overrides_for(&self.site);
        // The grid signals in force; a "shed X kW" event starts from the load the last
        // decision saw.
        let (grid_in, grid_view) = hub.grid.resolve(now, self.last_site_kw);
        self.snap.grid = grid_in;
        grid_view
    }

    /// `decide`, and the views it computed published to the status hub and observers.
    fn decide(
        &mut self,
        now: Millis,
        tick: Tick,
        acting: Acting,
        grid_view: crate::grid::GridView,
    ) -> Plan {
        // The state goes into `decide` by value; `prev` keeps its copy (in buffers
        // reused from tick to tick) for the database commit's diff and the journal.
        self.prev.clone_from(&self.state);
        let state = std::mem::take(&mut self.state);
        let plan = control::decide_owned(&self.site, &self.topo, &self.snap, state, now, tick);
        // A standby shows the intent in force (the leader's), not what it would do.
        let shown = if acting == Acting::Standby {
            &self.prev
        } else {
            &plan.state
        };
        let hub = &self.agent.wiring.hub;
        hub.record_decision(now, tick, &self.snap, shown, &plan.nodes, &plan.zones);
        self.last_site_kw = plan.nodes.first().map(|v| v.eff_kw);
        hub.record_grid(
            grid_view,
            self.last_site_kw,
            plan.grid_shortfall_kw,
            plan.price_curtailed,
        );
        hub.grid.set_site_load(self.last_site_kw);
        // Observers may come and go: nobody listening is not an error.
        self.agent
            .wiring
            .events
            .send(AgentEvent::Decision {
                now,
                tick,
                nodes: Arc::new(plan.nodes.clone()),
                zones: Arc::new(plan.zones.clone()),
            })
            .ok();
        plan
    }

    /// Alerts to the log, the hub and observers; confirmations to the journal; mining's
    /// curtailed hours and trough energy.
    fn report(&mut self, now: Millis, plan: &Plan) {
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
            self.shared.raise(now, a);
        }
        if self.agent.opts.dry_run {
            // Nothing was sent in a dry run: there is nothing to confirm or escalate, and
            // mining's curtailed hours stay as they were.
            return;
        }
        journal_confirmations(
            &mut self.journal,
            &self.site,
            &self.prev,
            &plan.state,
            now,
            false,
        );
        let feeds: Vec<&NodeView> = self
            .feed_idx
            .iter()
            .map(|&i| match self.site.nodes[i].pair {
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
        self.mining
            .on_decision(now, &plan.state, &plan.actions, &feeds);
    }

    /// Intent first (what changed, with the journal rows, in one transaction), then etcd
    /// for a leader, then the commands: a crash between the two never leaves a command
    /// the intent does not know about. Returns false when the plan must not be carried
    /// out (etcd says another agent leads).
    async fn commit(
        &mut self,
        now: Millis,
        acting: Acting,
        actions: &[control::Action],
        state: ControlState,
    ) -> bool {
        let changed = !actions.is_empty() || state.miners != self.prev.miners;
        let dry_run = self.agent.opts.dry_run;
        journal_actions(&self.shared, &mut self.journal, actions, now, dry_run);
        self.intents
            .commit(&self.prev, &state, now, &mut self.journal, false);
        for a in self.intents.take_alerts() {
            self.shared.raise(now, &a);
        }
        self.state = state;
        if !(changed || now.saturating_sub(self.last_persist) >= 30_000) {
            return true;
        }
        self.last_persist = now;
        let (Some(h), Acting::Leader(fence)) = (&self.agent.wiring.ha, acting) else {
            return true;
        };
        // Bounded at half a tick: a slow etcd must not hold back a shed. The intent is
        // on disk already; a takeover that missed this write still finds the miners shed
        // in its readings, holds restores at start-up, and loses at most this tick's
        // cycle history.
        let wait = self.shared.clock.real(self.site.policy.fast_loop_ms / 2);
        match tokio::time::timeout(wait, store(h, fence, &self.state, now)).await {
            // Another agent may lead: carry out nothing of this plan.
            Ok(Err(crate::ha::HaError::NotLeader { .. })) => false,
            Ok(_) => true,
            Err(_) => {
                warn!(
                    wait_ms = wait.as_millis(),
                    "control intent not stored in etcd in time; acting on it anyway"
                );
                true
            }
        }
    }

    /// Hands the energy book's slots and mining's figures to the writer once a minute
    /// (every time with `force`); the book's lock is held only to take them.
    fn commit_energy(&mut self, force: bool) {
        let Some(w) = &self.writer else { return };
        let now = self.shared.clock.now_ms();
        if !force && now.saturating_sub(self.last_energy) < COMMIT_EVERY_MS {
            return;
        }
        self.last_energy = now;
        let taken = lock(&self.shared.energy)
            .as_mut()
            .map(EnergyBook::take)
            .unwrap_or_default();
        w.send((taken, self.mining.take(), now));
    }

    /// The last commit, energy and etcd write; the collectors stopped.
    pub(super) async fn finish(mut self) -> ControlState {
        // The commands already on their way are let through (bounded) before the last
        // commit.
        wait_for_commands(&self.shared).await;
        let now = self.shared.clock.now_ms();
        self.intents
            .commit(&self.state, &self.state, now, &mut self.journal, true);
        for a in self.intents.take_alerts() {
            self.shared.raise(now, &a);
        }
        if let Some((p50, p99)) = self.intents.latency_ms() {
            info!(
                event = "state.commits",
                commits = self.intents.commits,
                rows = self.intents.rows,
                p50_ms = p50,
                p99_ms = p99,
                "control intent commits this run: {} ({} rows), p50 {p50:.2} ms, p99 {p99:.2} ms",
                self.intents.commits,
                self.intents.rows
            );
        }
        self.commit_energy(true);
        if let Some(w) = self.writer.take() {
            w.close().await;
        }
        if let (Some(h), Some(fence)) = (&self.agent.wiring.ha, self.term) {
            if h.may_act(fence) {
                // At exit, best effort: the intent is on disk whatever etcd says.
                store(h, fence, &self.state, self.shared.clock.now_ms())
                    .await
                    .ok();
            }
        }
        self.tasks.shutdown().await;
        info!(event = "agent.stopped", "agent stopped");
        self.state
    }
}
