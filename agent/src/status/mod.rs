//! The status hub: what the control loop last saw and did, kept for the HTTP layer, and
//! the one reporting layer: every alert is raised through [`StatusHub::raise`] and every
//! action carried out is reported through [`StatusHub::report_action`] (log, counter,
//! status; the runtime adds the observers' event).
//!
//! The loop calls [`StatusHub::record_decision`]; collectors call [`StatusHub::poll`]. The hub turns them
//! into the `/api/v1/status` document (a ring of the last frames, so a page and the API
//! can be compared tick for tick), the `/readyz` verdict and the metrics' gauges. It also
//! holds the operator overrides by id; the loop resolves them against the site it runs
//! on at every tick ([`StatusHub::overrides_for`]), so a reload keeps them by name.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rackwarden_config::{Firmware, NodeKind, Site};
use serde::Serialize;

use crate::control::load::miner_fast;
use crate::control::state::{MinerState, Percentiles};
use crate::control::{
    Action, Alert, ControlState, Device, Intent, Millis, NodeView, Overrides, Reason, Snapshot,
    Tick, UnitState, ZoneView,
};
use crate::metrics::{Labels, Metrics, PollClass};

pub mod history;

use history::{History, HistoryDoc, Point};

/// Frames kept for `?at_ms=` (a few seconds of fast ticks even at high speed).
const FRAMES: usize = 256;
/// Recent alerts and actions kept for the status document and the page.
const RECENT: usize = 50;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The hub only mirrors state: a panicked writer leaves nothing worth refusing reads for.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// One node of the power tree as a frame shows it (kW, one decimal).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeRow {
    pub id: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rack_kind: Option<String>,
    pub parents: Vec<String>,
    pub depth: usize,
    pub budget_kw: f64,
    pub rating_kw: f64,
    /// Fresh measured peak (None: no fresh meter).
    pub measured_kw: Option<f64>,
    pub projected_kw: f64,
    /// What the thresholds compare: `max(projected, measured less sheds in flight)`.
    pub effective_kw: f64,
    pub gpu_kw: f64,
    pub mining_kw: f64,
    /// `effective_kw / budget_kw`.
    pub utilization: f64,
    pub band: crate::control::Band,
    pub frozen: bool,
    /// The never-trip ceiling H (`ceiling_fraction x rating`).
    pub ceiling_kw: f64,
    /// The worst case `P_worst = sum(X) + miners + other`: what the node would carry if
    /// every GPU under it jumped to its cap and every shed failed. Kept under H.
    pub worst_kw: f64,
    /// Worst-case GPU reserve `sum(X)` of the racks under the node.
    pub gpu_reserve_kw: f64,
    /// Sustained GPU reserve `sum(S)` (rolling peak plus uplift, at most X).
    pub gpu_sustained_kw: f64,
    /// The mining allowance `M_n` (its ancestors' limits included).
    pub mining_allowance_kw: f64,
    /// The guaranteed mining allocation `B - sum(X) - other` (ancestors included): what
    /// any miner may hold whatever the AI load does.
    pub guaranteed_kw: f64,
    /// Trough headroom, `max(0, M_n - guaranteed)`: the part of the allowance only
    /// fast miners may hold.
    pub trough_kw: f64,
    /// Miners' committed power under the node as the decision counted it (commanded,
    /// at least measured; nameplate when stale or without a driver).
    pub mining_committed_kw: f64,
}

/// A miner's learned shed and restore times (command to the confirming read-back), ms;
/// the firmware's default until measured (`samples` 0).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MinerTimesRow {
    pub id: String,
    pub firmware: &'static str,
    /// May hold trough headroom: it has a driver, can sleep, and its p99 shed time is
    /// within `policy.fast_shed_s`.
    pub fast: bool,
    /// False when its driver could not be built (credentials missing): no command is
    /// sent to it, only its outlet is switched.
    pub driver: bool,
    pub shed: Percentiles,
    pub restore: Percentiles,
}

/// The learned times of one firmware's miners.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FirmwareTimesRow {
    pub firmware: &'static str,
    pub miners: u32,
    /// Miners that may hold trough headroom.
    pub fast: u32,
    /// Miners kept out of the trough: p99 shed time over `fast_shed_s`, no sleep lever,
    /// or no driver.
    pub slow: u32,
    pub no_driver: u32,
    /// Miners with at least one measured shed time.
    pub learned: u32,
    /// The firmware's defaults, used until a miner is measured.
    pub default_shed_ms: u32,
    pub default_restore_ms: u32,
    /// Highest p99 among its miners (learned, or the default).
    pub shed_p99_max_ms: u32,
    pub restore_p99_max_ms: u32,
}

/// One miner's times as the hub keeps them (ids are looked up when a document asks).
#[derive(Debug, Clone, Copy, PartialEq)]
struct MinerTimes {
    fast: bool,
    driver: bool,
    shed: Percentiles,
    restore: Percentiles,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnitRow {
    pub id: String,
    pub capacity_kw: f64,
    /// running, alarmed, maintenance, offline, stale, unread, unmonitored.
    pub state: &'static str,
    /// Put in maintenance by an operator override.
    pub maintenance_override: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ZoneRow {
    pub id: String,
    pub medium: String,
    pub redundancy: String,
    pub heat_kw: f64,
    pub available_kw: f64,
    pub largest_kw: f64,
    pub n_plus_1: bool,
    pub n: bool,
    pub units: Vec<UnitRow>,
}

/// One decision as the status document shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    pub now_ms: Millis,
    pub tick: Tick,
    pub nodes: Vec<NodeRow>,
    /// Zones of the last slow tick (cooling is checked on slow ticks).
    pub zones: Vec<ZoneRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CurtailedRow {
    pub id: String,
    pub rack: String,
    /// power_target, sleep, outlet_off.
    pub intent: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_w: Option<f64>,
    pub since_ms: Millis,
    /// Why it was shed (the reason of its last shed action), if this agent shed it.
    pub reason: Option<Reason>,
    /// The node or zone whose limit it was shed for.
    pub constraint: Option<String>,
    /// Held curtailed by an operator override.
    pub operator: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertRow {
    pub now_ms: Millis,
    pub name: &'static str,
    pub severity: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionRow {
    pub now_ms: Millis,
    pub device: String,
    pub lever: &'static str,
    pub from_w: f64,
    pub to_w: f64,
    pub reason: Reason,
    pub constraint: String,
    pub dry_run: bool,
}

/// Operator overrides by id (they survive a reload that renumbers the site, and a
/// restart through the overrides file).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct OverrideSet {
    pub miners: BTreeSet<String>,
    pub racks: BTreeSet<String>,
    pub units: BTreeSet<String>,
}

/// Readiness and its reasons.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// With `[ha]`: `leader` (acts) or `standby` (polls, never writes). Absent alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Why not (empty when ready); at most 20 lines.
    pub reasons: Vec<String>,
}

/// The `/api/v1/status` document.
#[derive(Debug, Serialize)]
pub struct Status {
    pub site: String,
    pub site_name: Option<String>,
    pub dry_run: bool,
    pub ready: bool,
    /// With `[ha]`: `leader` or `standby`. Absent when the agent runs alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    pub frame: Option<Frame>,
    pub curtailed: Vec<CurtailedRow>,
    pub alerts: Vec<AlertRow>,
    pub actions: Vec<ActionRow>,
    pub overrides: OverrideSet,
    /// Learned shed and restore times per firmware (the miners of a site present).
    pub miner_times: Vec<FirmwareTimesRow>,
    /// Grid signals in force (`[grid]`, docs/grid.md).
    pub grid: GridStatus,
    /// Per miner, with `?miners=true` only (a site has tens of thousands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miners: Option<Vec<MinerTimesRow>>,
}

/// Per-site indices built once per site.
struct Layout {
    site: Arc<Site>,
    depth: Vec<usize>,
    /// Racks under (or equal to) each node.
    racks_under: Vec<Vec<usize>>,
    /// Modbus devices that feed something: (device id, its inputs).
    collectors: Vec<(String, Vec<Input>)>,
}

#[derive(Clone, Copy)]
enum Input {
    Meter(usize),
    Outlet(usize),
    Unit(usize, usize),
}

impl Layout {
    fn new(site: Arc<Site>) -> Layout {
        // Depth along the first parent (a dual-corded rack is drawn under its first
        // feed); the tree is validated acyclic, the bound is only a guard.
        let depth = (0..site.nodes.len())
            .map(|i| {
                let mut d = 0;
                let mut at = i;
                while let Some(&p) = site.nodes[at].parents.first() {
                    d += 1;
                    at = p;
                    if d >= 16 {
                        break;
                    }
                }
                d
            })
            .collect();
        let racks_under = (0..site.nodes.len()).map(|i| site.racks_under(i)).collect();
        let mut collectors: Vec<(String, Vec<Input>)> = site
            .modbus_devices
            .iter()
            .map(|d| (d.id.clone(), Vec::new()))
            .collect();
        for (i, n) in site.nodes.iter().enumerate() {
            for m in &n.meters {
                collectors[m.device].1.push(Input::Meter(i));
            }
        }
        for (i, m) in site.miners.iter().enumerate() {
            if let Some(o) = &m.outlet {
                collectors[o.device].1.push(Input::Outlet(i));
            }
        }
        for (z, zone) in site.zones.iter().enumerate() {
            for (u, unit) in zone.units.iter().enumerate() {
                if let Some(d) = unit.device {
                    collectors[d].1.push(Input::Unit(z, u));
                }
            }
        }
        collectors.retain(|c| !c.1.is_empty());
        Layout {
            site,
            depth,
            racks_under,
            collectors,
        }
    }
}

#[derive(Default)]
struct Inner {
    layout: Option<Arc<Layout>>,
    /// The agent's database and its site, for `/api/v1/energy` (None: accounting off).
    energy: Option<(std::path::PathBuf, Arc<Site>)>,
    dry_run: bool,
    frames: VecDeque<Arc<Frame>>,
    last_decision: Option<tokio::time::Instant>,
    /// Real time after which a silent loop counts as stuck.
    loop_deadline: Duration,
    readiness_reasons: Vec<String>,
    curtailed: Vec<CurtailedRow>,
    why: HashMap<usize, (Reason, String)>,
    alerts: VecDeque<AlertRow>,
    actions: VecDeque<ActionRow>,
    role: Option<&'static str>,
    /// The charts' past (`/api/v1/history`).
    history: History,
    /// Per miner, refreshed on slow ticks (times change only with a confirmation).
    miner_times: Arc<Vec<MinerTimes>>,
    firmware_times: Vec<FirmwareTimesRow>,
    /// The grid signals the last decision obeyed.
    grid: GridStatus,
}

/// The grid section of the status document.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GridStatus {
    /// The limit in force, its event and source.
    pub limit_kw: Option<f64>,
    pub source: Option<&'static str>,
    pub event: Option<String>,
    /// The site's effective load the limit is compared with, kW.
    pub load_kw: Option<f64>,
    /// How far the load stays above the limit after the decision's sheds, kW.
    pub shortfall_kw: f64,
    pub price_usd_per_mwh: Option<f64>,
    /// Miners asleep for the price.
    pub miners_price_curtailed: usize,
    /// Every event known, live or to come.
    pub events: Vec<crate::grid::GridEvent>,
}

/// Shared between the control loop, the collectors and the HTTP handlers.
pub struct StatusHub {
    pub metrics: Metrics,
    /// Grid events from the API and the VEN, resolved at each decision.
    pub grid: Arc<crate::grid::GridInbox>,
    inner: Mutex<Inner>,
    overrides: Mutex<OverrideSet>,
}

impl Default for StatusHub {
    fn default() -> Self {
        StatusHub {
            metrics: Metrics::new(),
            grid: Arc::default(),
            inner: Mutex::new(Inner::default()),
            overrides: Mutex::new(OverrideSet::default()),
        }
    }
}

fn name_of<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

impl std::fmt::Debug for StatusHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusHub")
            .field("last_now", &self.last_now())
            .finish_non_exhaustive()
    }
}

impl StatusHub {
    pub fn new() -> Arc<StatusHub> {
        Arc::new(StatusHub::default())
    }

    /// A (re)started agent announces its site. `real_tick` is the real duration of one
    /// fast tick (a loop silent for 5 of them, or 5 s, is not ready).
    /// Where the energy accounting commits (`/api/v1/energy` reads it).
    pub fn set_energy_db(&self, path: std::path::PathBuf, site: Arc<Site>) {
        lock(&self.inner).energy = Some((path, site));
    }

    /// The energy database and its site, if accounting is on.
    pub fn energy_db(&self) -> Option<(std::path::PathBuf, Arc<Site>)> {
        lock(&self.inner).energy.clone()
    }

    pub fn set_site(&self, site: Arc<Site>, dry_run: bool, real_tick: Duration) {
        let layout = Arc::new(Layout::new(site));
        let mut g = lock(&self.inner);
        g.history.set_site(&layout.site);
        g.layout = Some(layout);
        g.dry_run = dry_run;
        g.frames.clear();
        g.last_decision = None;
        g.loop_deadline = (real_tick * 5).max(Duration::from_secs(5));
        g.readiness_reasons = vec!["no decision yet: waiting for the first readings".into()];
        g.why.clear();
        g.curtailed.clear();
        g.miner_times = Arc::new(Vec::new());
        g.firmware_times.clear();
        for f in [
            &self.metrics.node_measured_watts,
            &self.metrics.node_projected_watts,
            &self.metrics.node_budget_watts,
            &self.metrics.node_ceiling_watts,
            &self.metrics.node_worst_case_watts,
            &self.metrics.node_gpu_reserve_watts,
            &self.metrics.node_gpu_sustained_watts,
            &self.metrics.node_mining_allowance_watts,
            &self.metrics.node_mining_guaranteed_watts,
            &self.metrics.miner_shed_p99_max_seconds,
            &self.metrics.miner_restore_p99_max_seconds,
            &self.metrics.miners_slow,
            &self.metrics.miners_no_driver,
            &self.metrics.node_utilization_ratio,
            &self.metrics.node_gpu_watts,
            &self.metrics.node_mining_watts,
            &self.metrics.zone_capacity_watts,
            &self.metrics.zone_heat_load_watts,
            &self.metrics.zone_largest_unit_watts,
            &self.metrics.zone_redundant,
            &self.metrics.zone_covered,
            &self.metrics.cooling_units_unavailable,
            &self.metrics.gpu_node_power_watts,
            &self.metrics.gpu_power_limit_watts,
            &self.metrics.gpu_node_capped,
            &self.metrics.miners,
        ] {
            f.clear();
        }
        self.metrics.ready.set(0.0);
    }

    /// Records one device poll (latency and outcome) for the metrics.
    pub fn poll(&self, class: PollClass, took: Duration, ok: bool) {
        self.metrics.poll(class, took, ok);
    }

    /// The overrides in force, resolved against `site` (unknown ids are skipped).
    pub fn overrides_for(&self, site: &Site) -> Overrides {
        let o = lock(&self.overrides);
        let mut out = Overrides::default();
        for id in &o.miners {
            if let Some(i) = site.miner_index(id) {
                out.curtailed_miners.insert(i);
            }
        }
        for id in &o.racks {
            if let Some(i) = site.node_index(id).filter(|&i| site.nodes[i].is_rack()) {
                out.curtailed_racks.insert(i);
            }
        }
        for id in &o.units {
            if let Some(rackwarden_config::Ref::Unit(z, u)) = site.lookup(id) {
                out.units_in_maintenance.insert((z, u));
            }
        }
        out
    }

    pub fn override_set(&self) -> OverrideSet {
        lock(&self.overrides).clone()
    }

    /// Replaces every override (at start, from the overrides file).
    pub fn load_overrides(&self, set: OverrideSet) {
        for (kind, n) in [
            (OverrideKind::Miner, set.miners.len()),
            (OverrideKind::Rack, set.racks.len()),
            (OverrideKind::Unit, set.units.len()),
        ] {
            self.metrics
                .overrides
                .get_or_create(&vec![("kind", kind.name().to_owned())])
                .set(f64::from(u32::try_from(n).unwrap_or(u32::MAX)));
        }
        *lock(&self.overrides) = set;
    }

    /// Adds (`on`) or removes an override; returns whether anything changed.
    pub fn set_override(&self, kind: OverrideKind, id: &str, on: bool) -> bool {
        let mut o = lock(&self.overrides);
        let set = match kind {
            OverrideKind::Miner => &mut o.miners,
            OverrideKind::Rack => &mut o.racks,
            OverrideKind::Unit => &mut o.units,
        };
        let changed = if on {
            set.insert(id.to_owned())
        } else {
            set.remove(id)
        };
        self.metrics
            .overrides
            .get_or_create(&vec![("kind", kind.name().to_owned())])
            .set(f64::from(u32::try_from(set.len()).unwrap_or(u32::MAX)));
        changed
    }

    /// The site the hub describes, if an agent has started.
    /// The grid signals a decision obeyed (`view`) and what it left: the site's load it
    /// saw, the shortfall after its sheds, `price_curtailed` miners asleep for the price.
    pub fn record_grid(
        &self,
        view: crate::grid::GridView,
        load_kw: Option<f64>,
        shortfall: f64,
        price_curtailed: usize,
    ) {
        let m = &self.metrics;
        m.grid_limit_watts
            .set(view.limit_kw.map_or(f64::NAN, |l| l * 1000.0));
        m.grid_load_watts
            .set(load_kw.map_or(f64::NAN, |l| l * 1000.0));
        m.grid_shortfall_watts.set(shortfall * 1000.0);
        m.grid_price_usd_per_mwh
            .set(view.price_usd_per_mwh.unwrap_or(f64::NAN));
        m.miners_price_curtailed.set(f64::from(
            u32::try_from(price_curtailed).unwrap_or(u32::MAX),
        ));
        let status = GridStatus {
            limit_kw: view.limit_kw.map(round1),
            source: view.limit_event.as_ref().map(|e| e.source.name()),
            event: view.limit_event.as_ref().map(|e| e.id.clone()),
            load_kw: load_kw.map(round1),
            shortfall_kw: round1(shortfall),
            price_usd_per_mwh: view.price_usd_per_mwh,
            miners_price_curtailed: price_curtailed,
            events: view.events,
        };
        lock(&self.inner).grid = status;
    }

    pub fn site(&self) -> Option<Arc<Site>> {
        lock(&self.inner).layout.as_ref().map(|l| l.site.clone())
    }

    /// Records one decision: the snapshot it saw (overrides included), the state it
    /// left and the views it computed.
    pub fn record_decision(
        &self,
        now: Millis,
        tick: Tick,
        snap: &Snapshot,
        state: &ControlState,
        nodes: &[NodeView],
        zones: &[ZoneView],
    ) {
        let Some(layout) = lock(&self.inner).layout.clone() else {
            return;
        };
        let site = &layout.site;
        let node_rows = node_rows(&layout, snap, nodes);
        let zone_rows = (!zones.is_empty()).then(|| zone_rows(site, snap, zones, now));
        let fresh = Freshness::of(&layout, snap, now);
        let (curtailed, counts) = curtailed_rows(site, snap, state);
        // Learned times: refreshed on slow ticks, and at the first decision of a site.
        let times = if tick == Tick::Slow || lock(&self.inner).miner_times.is_empty() {
            let per_miner = miner_times(site, snap, state);
            let per_fw = firmware_times(site, &per_miner);
            self.metrics_times(&per_fw);
            Some((Arc::new(per_miner), per_fw))
        } else {
            None
        };

        self.node_metrics(site, &node_rows, nodes);
        if let Some(rows) = &zone_rows {
            self.zone_metrics(rows);
        }
        self.device_metrics(site, snap, state, &counts);
        self.input_metrics(site, snap, now, &fresh);
        let mx = &self.metrics;
        let reasons = fresh.reasons;
        mx.decisions
            .get_or_create(&vec![("tick", name_of(&tick))])
            .inc();
        mx.ready.set(if reasons.is_empty() { 1.0 } else { 0.0 });

        let mut g = lock(&self.inner);
        if g.history.due(now) {
            let n_curtailed = curtailed.len();
            g.history.sample(now, n_curtailed, |i| {
                let r = &node_rows[i];
                Point {
                    measured_kw: r.measured_kw,
                    projected_kw: r.projected_kw,
                    budget_kw: r.budget_kw,
                    ceiling_kw: r.ceiling_kw,
                    gpu_kw: r.gpu_kw,
                    mining_kw: r.mining_kw,
                }
            });
        }
        let zones = zone_rows
            .unwrap_or_else(|| g.frames.back().map(|f| f.zones.clone()).unwrap_or_default());
        if g.frames.len() == FRAMES {
            g.frames.pop_front();
        }
        g.frames.push_back(Arc::new(Frame {
            now_ms: now,
            tick,
            nodes: node_rows,
            zones,
        }));
        g.last_decision = Some(tokio::time::Instant::now());
        g.readiness_reasons = reasons;
        if let Some((per_miner, per_fw)) = times {
            g.miner_times = per_miner;
            g.firmware_times = per_fw;
        }
        // Why each was shed: looked up only for the curtailed ones, under the lock.
        let curtailed = curtailed
            .into_iter()
            .map(|(i, mut row)| {
                if let Some((reason, constraint)) = g.why.get(&i) {
                    row.reason = Some(*reason);
                    row.constraint = Some(constraint.clone());
                }
                row
            })
            .collect();
        g.curtailed = curtailed;
    }

    /// The one way an alert is raised: its structured log event (and its delivery,
    /// `[alerts]`), the `rackwarden_alerts_total` counter and the status document's
    /// recent alerts. The runtime adds the observers' event ([`crate::runtime`]'s
    /// `Shared::raise`).
    pub fn raise(&self, now: Millis, a: &Alert) {
        crate::alerts::log(a, now);
        self.record_alert(now, a);
    }

    /// The one way an action being carried out is reported: its log event
    /// (`action.sent`, or `action.would` in a dry run), the `rackwarden_actions_total`
    /// counter and the status document. Its journal row is written before, with the
    /// intent that holds it (`runtime/journal.rs`): a crash between the two leaves the
    /// row, never a command the journal lacks.
    pub fn report_action(&self, now: Millis, a: &Action, dry_run: bool) {
        let event = if dry_run {
            "action.would"
        } else {
            "action.sent"
        };
        tracing::info!(
            event,
            now_ms = now,
            node = %a.constraint,
            device = %a.device_id,
            lever = a.lever.name(),
            from_w = a.from_w,
            to_w = a.to_w,
            reason = a.reason.name(),
            "{}{} {}",
            if dry_run { "dry run: would " } else { "" },
            a.lever.name(),
            a.device_id
        );
        self.record_action(now, a, dry_run);
    }

    /// Records one action the loop planned.
    fn record_action(&self, now: Millis, a: &Action, dry_run: bool) {
        self.metrics
            .actions
            .get_or_create(&vec![
                ("lever", a.lever.name().to_owned()),
                ("reason", name_of(&a.reason)),
                ("dry_run", dry_run.to_string()),
            ])
            .inc();
        let mut g = lock(&self.inner);
        g.history.action(a.lever.is_shed());
        if let Device::Miner(i) = a.device {
            if a.lever.is_shed() {
                g.why.insert(i, (a.reason, a.constraint.clone()));
            } else {
                g.why.remove(&i);
            }
        }
        if g.actions.len() == RECENT {
            g.actions.pop_front();
        }
        g.actions.push_back(ActionRow {
            now_ms: now,
            device: a.device_id.clone(),
            lever: a.lever.name(),
            from_w: a.from_w,
            to_w: a.to_w,
            reason: a.reason,
            constraint: a.constraint.clone(),
            dry_run,
        });
    }

    /// Records one alert (any source: `decide`, runtime, operator overrides).
    fn record_alert(&self, now: Millis, a: &Alert) {
        self.metrics
            .alerts
            .get_or_create(&vec![
                ("alert", a.kind.name().to_owned()),
                ("severity", a.severity.name().to_owned()),
            ])
            .inc();
        let mut g = lock(&self.inner);
        if g.alerts.len() == RECENT {
            g.alerts.pop_front();
        }
        g.alerts.push_back(AlertRow {
            now_ms: now,
            name: a.kind.name(),
            severity: a.severity.name(),
            message: a.message.clone(),
            node: a.node.clone(),
            zone: a.zone.clone(),
            device: a.device.clone(),
        });
    }

    /// The samples of the last `span_ms` up to `to_ms` (None: the latest) for the charts.
    pub fn history(&self, span_ms: Millis, to_ms: Option<Millis>) -> HistoryDoc {
        lock(&self.inner).history.doc(span_ms, to_ms)
    }

    /// The latest decision's clock (for alerts raised outside the loop).
    pub fn last_now(&self) -> Millis {
        lock(&self.inner).frames.back().map_or(0, |f| f.now_ms)
    }

    /// `/readyz`: config loaded, the loop deciding, every collector fresh.
    pub fn readiness(&self) -> Readiness {
        let g = lock(&self.inner);
        let mut reasons = Vec::new();
        if g.layout.is_none() {
            reasons.push("no site loaded".into());
        } else {
            match g.last_decision {
                None => reasons.push("no decision yet: waiting for the first readings".into()),
                Some(t) if t.elapsed() > g.loop_deadline => reasons.push(format!(
                    "control loop silent for {:.1} s",
                    t.elapsed().as_secs_f64()
                )),
                Some(_) => reasons.extend(g.readiness_reasons.iter().cloned()),
            }
        }
        let ready = reasons.is_empty();
        if !ready {
            self.metrics.ready.set(0.0);
        }
        Readiness {
            ready,
            role: g.role,
            reasons,
        }
    }

    /// HA role (`leader` / `standby`), or None when the agent runs alone.
    pub fn set_role(&self, role: Option<&'static str>) {
        lock(&self.inner).role = role;
        // Labelled by nothing but present only with `[ha]`: a pair's dashboard sums it
        // over both agents and alerts when the sum is not 1.
        if let Some(r) = role {
            self.metrics
                .ha_leader
                .get_or_create(&Vec::new())
                .set(if r == "leader" { 1.0 } else { 0.0 });
        }
    }

    pub fn role(&self) -> Option<&'static str> {
        lock(&self.inner).role
    }

    /// Whether the control loop decided recently (the systemd watchdog's condition).
    pub fn loop_alive(&self) -> bool {
        let g = lock(&self.inner);
        match g.last_decision {
            Some(t) => t.elapsed() <= g.loop_deadline,
            // Before the first decision the loop waits for readings on purpose.
            None => g.layout.is_some(),
        }
    }

    /// The per-firmware gauges of the learned times.
    fn metrics_times(&self, per_fw: &[FirmwareTimesRow]) {
        let mx = &self.metrics;
        for f in per_fw {
            let l: Labels = vec![("firmware", f.firmware.to_owned())];
            mx.miner_shed_p99_max_seconds
                .get_or_create(&l)
                .set(f64::from(f.shed_p99_max_ms) / 1000.0);
            mx.miner_restore_p99_max_seconds
                .get_or_create(&l)
                .set(f64::from(f.restore_p99_max_ms) / 1000.0);
            mx.miners_slow.get_or_create(&l).set(f64::from(f.slow));
            mx.miners_no_driver
                .get_or_create(&l)
                .set(f64::from(f.no_driver));
        }
    }

    /// Every miner's learned times, by id (`/api/v1/status?miners=true`).
    pub fn miner_rows(&self) -> Vec<MinerTimesRow> {
        let (site, times) = {
            let g = lock(&self.inner);
            let Some(layout) = g.layout.as_ref() else {
                return Vec::new();
            };
            (layout.site.clone(), g.miner_times.clone())
        };
        site.miners
            .iter()
            .zip(times.iter())
            .map(|(m, t)| MinerTimesRow {
                id: m.id.clone(),
                firmware: m.firmware.name(),
                fast: t.fast,
                driver: t.driver,
                shed: t.shed,
                restore: t.restore,
            })
            .collect()
    }

    /// The status document; `at_ms` picks a recent frame by its decision time.
    pub fn status(&self, at_ms: Option<Millis>) -> Option<Status> {
        self.status_with(at_ms, false)
    }

    /// [`StatusHub::status`], with every miner's learned times when `miners`.
    pub fn status_with(&self, at_ms: Option<Millis>, miners: bool) -> Option<Status> {
        let rows = miners.then(|| self.miner_rows());
        let ready = self.readiness().ready;
        let overrides = self.override_set();
        let g = lock(&self.inner);
        let site = &g.layout.as_ref()?.site;
        let frame = match at_ms {
            Some(t) => Some(Frame::clone(g.frames.iter().find(|f| f.now_ms == t)?)),
            None => g.frames.back().map(|f| Frame::clone(f)),
        };
        Some(Status {
            site: site.id.clone(),
            site_name: site.name.clone(),
            dry_run: g.dry_run,
            ready,
            role: g.role,
            frame,
            curtailed: g.curtailed.clone(),
            alerts: g.alerts.iter().rev().cloned().collect(),
            actions: g.actions.iter().rev().cloned().collect(),
            overrides,
            miner_times: g.firmware_times.clone(),
            grid: g.grid.clone(),
            miners: rows,
        })
    }
}

/// Every node's row of a frame, from the decision's views and the latest readings.
fn node_rows(layout: &Layout, snap: &Snapshot, nodes: &[NodeView]) -> Vec<NodeRow> {
    let site = &layout.site;
    // Per-rack GPU and mining power from the latest readings (stale ones included:
    // the page shows what was last read, the band shows what the policy made of it).
    let mut rack_gpu = vec![0.0; site.nodes.len()];
    let mut rack_mining = vec![0.0; site.nodes.len()];
    for (i, g) in site.gpu_nodes.iter().enumerate() {
        if let Some(r) = snap.gpu(i) {
            rack_gpu[g.rack] += r.power_w / 1000.0;
        }
    }
    for (i, m) in site.miners.iter().enumerate() {
        if let Some(r) = snap.miner(i) {
            rack_mining[m.rack] += r.power_w / 1000.0;
        }
    }
    site.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = nodes.get(i);
            let (gpu, mining) = layout.racks_under[i].iter().fold((0.0, 0.0), |(g, m), &r| {
                (g + rack_gpu[r], m + rack_mining[r])
            });
            let eff = v.map_or(f64::NAN, |v| v.eff_kw);
            NodeRow {
                id: n.id.clone(),
                kind: n.kind.name(),
                rack_kind: n.rack_kind().map(|k| name_of(&k)),
                parents: n
                    .parents
                    .iter()
                    .map(|&p| site.nodes[p].id.clone())
                    .collect(),
                depth: layout.depth[i],
                budget_kw: round1(n.budget_kw),
                rating_kw: round1(n.rating_kw),
                measured_kw: v.and_then(|v| v.measured_kw).map(round1),
                projected_kw: round1(v.map_or(f64::NAN, |v| v.proj_kw)),
                effective_kw: round1(eff),
                gpu_kw: round1(gpu),
                mining_kw: round1(mining),
                utilization: if n.budget_kw > 0.0 {
                    (eff / n.budget_kw * 1000.0).round() / 1000.0
                } else {
                    0.0
                },
                band: v.map_or(crate::control::Band::Normal, |v| v.band),
                frozen: v.is_some_and(|v| v.frozen),
                ceiling_kw: round1(n.ceiling_kw),
                worst_kw: round1(v.map_or(f64::NAN, |v| v.worst_kw)),
                gpu_reserve_kw: round1(v.map_or(f64::NAN, |v| v.gpu_reserve_kw)),
                gpu_sustained_kw: round1(v.map_or(f64::NAN, |v| v.gpu_sustained_kw)),
                mining_allowance_kw: round1(v.map_or(f64::NAN, |v| v.mining_allowance_kw)),
                guaranteed_kw: round1(v.map_or(f64::NAN, |v| v.guaranteed_kw)),
                trough_kw: round1(v.map_or(f64::NAN, |v| {
                    (v.mining_allowance_kw - v.guaranteed_kw).max(0.0)
                })),
                mining_committed_kw: round1(v.map_or(f64::NAN, |v| v.mining_kw)),
            }
        })
        .collect()
}

/// Every zone's row of a frame (slow ticks: cooling is checked then).
fn zone_rows(site: &Site, snap: &Snapshot, zones: &[ZoneView], now: Millis) -> Vec<ZoneRow> {
    let p = &site.policy;
    let fresh = |taken: Millis, stale_ms: u64| now.saturating_sub(taken) <= stale_ms;
    site.zones
        .iter()
        .enumerate()
        .map(|(z, zone)| {
            let v = zones.get(z);
            let units = zone
                .units
                .iter()
                .enumerate()
                .map(|(u, unit)| {
                    let state = match (unit.device, snap.unit(z, u)) {
                        (None, _) => "unmonitored",
                        (Some(_), None) => "unread",
                        (Some(_), Some(r)) if !fresh(r.taken_at, p.cooling_stale_ms) => "stale",
                        (Some(_), Some(r)) => match r.state {
                            UnitState::Running => "running",
                            UnitState::Alarmed => "alarmed",
                            UnitState::Maintenance => "maintenance",
                            UnitState::Offline => "offline",
                        },
                    };
                    UnitRow {
                        id: unit.id.clone(),
                        capacity_kw: round1(unit.capacity_kw),
                        state,
                        maintenance_override: snap.overrides.units_in_maintenance.contains(&(z, u)),
                    }
                })
                .collect();
            ZoneRow {
                id: zone.id.clone(),
                medium: name_of(&zone.medium),
                redundancy: name_of(&zone.redundancy),
                heat_kw: round1(v.map_or(f64::NAN, |v| v.heat_kw)),
                available_kw: round1(v.map_or(f64::NAN, |v| v.available_kw)),
                largest_kw: round1(v.map_or(f64::NAN, |v| v.largest_kw)),
                n_plus_1: v.is_some_and(|v| v.n_plus_1),
                n: v.is_some_and(|v| v.n),
                units,
            }
        })
        .collect()
}

/// Whether input `i` was read within its staleness limit at `now`.
fn input_fresh(snap: &Snapshot, p: &rackwarden_config::Policy, now: Millis, i: Input) -> bool {
    let fresh = |taken: Millis, stale_ms: u64| now.saturating_sub(taken) <= stale_ms;
    match i {
        Input::Meter(n) => snap
            .meter(n)
            .is_some_and(|r| fresh(r.taken_at, p.meter_stale_ms)),
        Input::Outlet(m) => snap
            .outlet(m)
            .is_some_and(|r| fresh(r.taken_at, p.meter_stale_ms.max(p.miner_stale_ms))),
        Input::Unit(z, u) => snap
            .unit(z, u)
            .is_some_and(|r| fresh(r.taken_at, p.cooling_stale_ms)),
    }
}

/// Readiness at a decision: why not (every collector needs fresh data), and how many
/// miners and GPU nodes were fresh.
struct Freshness {
    reasons: Vec<String>,
    miners_fresh: usize,
    gpus_fresh: usize,
}

impl Freshness {
    fn of(layout: &Layout, snap: &Snapshot, now: Millis) -> Freshness {
        let site = &layout.site;
        let p = &site.policy;
        let fresh = |taken: Millis, stale_ms: u64| now.saturating_sub(taken) <= stale_ms;
        let mut reasons = Vec::new();
        let mut modbus_reasons = Vec::new();
        for (id, inputs) in &layout.collectors {
            if !inputs.iter().any(|&i| input_fresh(snap, p, now, i)) {
                modbus_reasons.push(format!("modbus device {id}: no fresh reading"));
            }
        }
        let miners_fresh = (0..site.miners.len())
            .filter(|&i| {
                snap.miner(i)
                    .is_some_and(|r| fresh(r.taken_at, p.miner_stale_ms))
            })
            .count();
        if !site.miners.is_empty() && miners_fresh == 0 {
            reasons.push("miners: no fresh reading from any miner".into());
        }
        let mut gpus_fresh = 0;
        for (i, g) in site.gpu_nodes.iter().enumerate() {
            if snap
                .gpu(i)
                .is_some_and(|r| fresh(r.power_taken_at, p.gpu_power_stale_ms))
            {
                gpus_fresh += 1;
            } else {
                reasons.push(format!("gpu node {}: no fresh reading", g.id));
            }
        }
        reasons.extend(modbus_reasons);
        if reasons.len() > 20 {
            let more = reasons.len() - 19;
            reasons.truncate(19);
            reasons.push(format!("and {more} more"));
        }
        Freshness {
            reasons,
            miners_fresh,
            gpus_fresh,
        }
    }
}

/// Miners by state and override, for `rackwarden_miners`.
type StateCounts = HashMap<(&'static str, bool), u32>;

/// The curtailed miners (by index, their reason filled in later) and the counts by state.
fn curtailed_rows(
    site: &Site,
    snap: &Snapshot,
    state: &ControlState,
) -> (Vec<(usize, CurtailedRow)>, StateCounts) {
    let ov = &snap.overrides;
    let mut counts: StateCounts = HashMap::new();
    let mut curtailed = Vec::new();
    for (i, (m, s)) in site.miners.iter().zip(&state.miners).enumerate() {
        let operator = ov.curtailed_miners.contains(&i) || ov.curtailed_racks.contains(&m.rack);
        let (intent, target_w) = match s.intent {
            Intent::Normal => ("normal", None),
            Intent::Target { w } => ("power_target", Some(w)),
            Intent::Sleep => ("sleep", None),
            Intent::OutletOff => ("outlet_off", None),
        };
        *counts.entry((intent, operator)).or_default() += 1;
        if s.intent != Intent::Normal {
            curtailed.push((
                i,
                CurtailedRow {
                    id: m.id.clone(),
                    rack: site.nodes[m.rack].id.clone(),
                    intent,
                    target_w,
                    since_ms: s.since,
                    reason: None,
                    constraint: None,
                    operator,
                },
            ));
        }
    }
    (curtailed, counts)
}

impl StatusHub {
    fn node_metrics(&self, site: &Site, node_rows: &[NodeRow], nodes: &[NodeView]) {
        let mx = &self.metrics;
        for (i, (n, row)) in site.nodes.iter().zip(node_rows).enumerate() {
            let l: Labels = vec![("node", n.id.clone()), ("kind", row.kind.to_owned())];
            let w = |kw: f64| kw * 1000.0;
            mx.node_ceiling_watts.get_or_create(&l).set(w(n.ceiling_kw));
            let view = |f: fn(&NodeView) -> f64| nodes.get(i).map_or(f64::NAN, |v| w(f(v)));
            mx.node_worst_case_watts
                .get_or_create(&l)
                .set(view(|v| v.worst_kw));
            mx.node_gpu_reserve_watts
                .get_or_create(&l)
                .set(view(|v| v.gpu_reserve_kw));
            mx.node_gpu_sustained_watts
                .get_or_create(&l)
                .set(view(|v| v.gpu_sustained_kw));
            mx.node_mining_allowance_watts
                .get_or_create(&l)
                .set(view(|v| v.mining_allowance_kw));
            mx.node_mining_guaranteed_watts
                .get_or_create(&l)
                .set(view(|v| v.guaranteed_kw));
            mx.node_measured_watts
                .get_or_create(&l)
                .set(row.measured_kw.map_or(f64::NAN, w));
            mx.node_projected_watts
                .get_or_create(&l)
                .set(w(row.projected_kw));
            mx.node_budget_watts.get_or_create(&l).set(w(n.budget_kw));
            mx.node_utilization_ratio
                .get_or_create(&l)
                .set(row.utilization);
            mx.node_gpu_watts.get_or_create(&l).set(w(row.gpu_kw));
            mx.node_mining_watts.get_or_create(&l).set(w(row.mining_kw));
        }
    }

    fn zone_metrics(&self, rows: &[ZoneRow]) {
        let mx = &self.metrics;
        for z in rows {
            let l: Labels = vec![("zone", z.id.clone())];
            mx.zone_capacity_watts
                .get_or_create(&l)
                .set(z.available_kw * 1000.0);
            mx.zone_heat_load_watts
                .get_or_create(&l)
                .set(z.heat_kw * 1000.0);
            mx.zone_largest_unit_watts
                .get_or_create(&l)
                .set(z.largest_kw * 1000.0);
            mx.zone_redundant
                .get_or_create(&l)
                .set(if z.n_plus_1 { 1.0 } else { 0.0 });
            mx.zone_covered
                .get_or_create(&l)
                .set(if z.n { 1.0 } else { 0.0 });
            let down = z
                .units
                .iter()
                .filter(|u| u.state != "running" || u.maintenance_override)
                .count();
            mx.cooling_units_unavailable
                .get_or_create(&l)
                .set(f64::from(u32::try_from(down).unwrap_or(u32::MAX)));
        }
    }

    /// Miners by state, GPU nodes' power, limits and caps.
    fn device_metrics(
        &self,
        site: &Site,
        snap: &Snapshot,
        state: &ControlState,
        counts: &StateCounts,
    ) {
        let mx = &self.metrics;
        for state_name in ["normal", "power_target", "sleep", "outlet_off"] {
            for operator in [false, true] {
                let c = counts.get(&(state_name, operator)).copied().unwrap_or(0);
                mx.miners
                    .get_or_create(&vec![
                        ("state", state_name.to_owned()),
                        ("operator", operator.to_string()),
                    ])
                    .set(f64::from(c));
            }
        }
        for (i, g) in site.gpu_nodes.iter().enumerate() {
            let l: Labels = vec![("gpu_node", g.id.clone())];
            let r = snap.gpu(i);
            mx.gpu_node_power_watts
                .get_or_create(&l)
                .set(r.map_or(f64::NAN, |r| r.power_w));
            mx.gpu_power_limit_watts.get_or_create(&l).set(
                r.and_then(|r| r.gpus.iter().map(|g| g.enforced_w).reduce(f64::max))
                    .unwrap_or(f64::NAN),
            );
            mx.gpu_node_capped.get_or_create(&l).set(
                if state.gpus.get(i).is_some_and(|s| s.cap_w.is_some()) {
                    1.0
                } else {
                    0.0
                },
            );
        }
    }

    /// Inputs by class and freshness.
    fn input_metrics(&self, site: &Site, snap: &Snapshot, now: Millis, fresh: &Freshness) {
        let mx = &self.metrics;
        let p = &site.policy;
        let input_fresh = |i: Input| input_fresh(snap, p, now, i);
        let (miners_fresh, gpus_fresh) = (fresh.miners_fresh, fresh.gpus_fresh);
        let set_inputs = |class: &str, fresh_n: usize, total: usize, read: usize| {
            for (k, v) in [
                ("fresh", fresh_n),
                ("stale", read.saturating_sub(fresh_n)),
                ("missing", total.saturating_sub(read)),
            ] {
                mx.inputs
                    .get_or_create(&vec![
                        ("class", class.to_owned()),
                        ("freshness", k.to_owned()),
                    ])
                    .set(f64::from(u32::try_from(v).unwrap_or(u32::MAX)));
            }
        };
        let metered: Vec<usize> = (0..site.nodes.len())
            .filter(|&i| !site.nodes[i].meters.is_empty())
            .collect();
        set_inputs(
            "meter",
            metered
                .iter()
                .filter(|&&i| input_fresh(Input::Meter(i)))
                .count(),
            metered.len(),
            metered.iter().filter(|&&i| snap.meter(i).is_some()).count(),
        );
        let units: Vec<(usize, usize)> = site
            .zones
            .iter()
            .enumerate()
            .flat_map(|(z, zone)| {
                zone.units
                    .iter()
                    .enumerate()
                    .filter(|(_, u)| u.device.is_some())
                    .map(move |(u, _)| (z, u))
            })
            .collect();
        set_inputs(
            "cooling_unit",
            units
                .iter()
                .filter(|&&(z, u)| input_fresh(Input::Unit(z, u)))
                .count(),
            units.len(),
            units
                .iter()
                .filter(|&&(z, u)| snap.unit(z, u).is_some())
                .count(),
        );
        set_inputs(
            "miner",
            miners_fresh,
            site.miners.len(),
            snap.miners.iter().flatten().count(),
        );
        set_inputs(
            "gpu",
            gpus_fresh,
            site.gpu_nodes.len(),
            snap.gpus.iter().flatten().count(),
        );
    }
}

/// Every miner's learned times and whether it may hold trough headroom.
fn miner_times(site: &Site, snap: &Snapshot, state: &ControlState) -> Vec<MinerTimes> {
    let none = MinerState::default();
    site.miners
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ms = state.miners.get(i).unwrap_or(&none);
            MinerTimes {
                fast: miner_fast(site, snap, ms, i),
                driver: !snap.undriveable(i),
                shed: ms.times.shed(m.firmware.default_shed_ms()),
                restore: ms.times.restore(m.firmware.default_restore_ms()),
            }
        })
        .collect()
}

/// The per-firmware summary of `per_miner` (firmwares the site has, in a fixed order).
fn firmware_times(site: &Site, per_miner: &[MinerTimes]) -> Vec<FirmwareTimesRow> {
    let mut rows: Vec<FirmwareTimesRow> = Firmware::ALL
        .iter()
        .map(|&fw| FirmwareTimesRow {
            firmware: fw.name(),
            miners: 0,
            fast: 0,
            slow: 0,
            no_driver: 0,
            learned: 0,
            default_shed_ms: fw.default_shed_ms(),
            default_restore_ms: fw.default_restore_ms(),
            shed_p99_max_ms: 0,
            restore_p99_max_ms: 0,
        })
        .collect();
    for (m, t) in site.miners.iter().zip(per_miner) {
        let Some(r) = Firmware::ALL
            .iter()
            .position(|&f| f == m.firmware)
            .and_then(|k| rows.get_mut(k))
        else {
            continue;
        };
        r.miners += 1;
        if t.fast {
            r.fast += 1;
        } else {
            r.slow += 1;
        }
        r.no_driver += u32::from(!t.driver);
        r.learned += u32::from(t.shed.samples > 0);
        r.shed_p99_max_ms = r.shed_p99_max_ms.max(t.shed.p99_ms);
        r.restore_p99_max_ms = r.restore_p99_max_ms.max(t.restore.p99_ms);
    }
    rows.retain(|r| r.miners > 0);
    rows
}

/// What an override names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideKind {
    /// Hold one miner curtailed.
    Miner,
    /// Hold every miner of a rack curtailed.
    Rack,
    /// Count a cooling unit as in maintenance (unavailable for N+1).
    Unit,
}

impl OverrideKind {
    pub fn name(self) -> &'static str {
        match self {
            OverrideKind::Miner => "miner",
            OverrideKind::Rack => "rack",
            OverrideKind::Unit => "unit",
        }
    }

    pub fn parse(s: &str) -> Option<OverrideKind> {
        match s {
            "miner" => Some(OverrideKind::Miner),
            "rack" => Some(OverrideKind::Rack),
            "unit" => Some(OverrideKind::Unit),
            _ => None,
        }
    }
}

/// Whether `kind`/`id` names something on `site`.
pub fn override_target_exists(site: &Site, kind: OverrideKind, id: &str) -> bool {
    match kind {
        OverrideKind::Miner => site.miner_index(id).is_some(),
        OverrideKind::Rack => site
            .node_index(id)
            .is_some_and(|i| matches!(site.nodes[i].kind, NodeKind::Rack(_))),
        OverrideKind::Unit => matches!(site.lookup(id), Some(rackwarden_config::Ref::Unit(..))),
    }
}
