//! The control state: what `decide` remembers between ticks and what survives a restart.
//!
//! It is persisted (serde) atomically by the runtime after every plan, so a restart keeps
//! every miner's commanded intent and every GPU cap: nothing is woken or lifted by a
//! reboot. Vectors are indexed like the site; the ids kept alongside let
//! [`ControlState::for_site`] carry a persisted state over to a changed site file by id.

use std::collections::HashMap;
use std::sync::Arc;

use rackwarden_config::Site;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::plan::{Lever, Scope};
use super::Millis;

/// What the agent last commanded a miner to do.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "intent")]
pub enum Intent {
    /// Mining at the firmware's own settings (committed at nameplate).
    Normal,
    /// Mining at a power target, watts.
    Target { w: f64 },
    /// Asleep / paused through the API (committed at idle).
    Sleep,
    /// Its PDU outlet switched off (committed at zero).
    OutletOff,
}

/// A command sent but not yet confirmed by a later reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub lever: Lever,
    pub issued_at: Millis,
    /// Unconfirmed by then, it escalates.
    pub deadline: Millis,
    /// Power the device drew before the first command still in flight (what the meters
    /// still show until it takes effect), watts.
    pub from_w: f64,
    /// Commanded power (what the projection now counts), watts.
    pub to_w: f64,
    /// Anti-cycling waived for it (and for its escalation).
    pub emergency: bool,
}

/// A miner's control state. Written compactly (what is unset or empty is left out, and
/// read back as its default): the database holds a row of it per miner, and a mass shed
/// rewrites tens of thousands of them.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct MinerState {
    pub intent: Intent,
    /// When the current intent was commanded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub since: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// The last lever that failed to confirm (escalation reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Lever>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slept_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woke_at: Option<Millis>,
    /// Times of the sleeps of the last hour (a sleep starts a sleep/wake cycle).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sleep_cycles: Vec<Millis>,
    /// Times of the outlet switch-offs of the last day (hard power cycles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub power_cycles: Vec<Millis>,
    /// A `telemetry.stale` alert is out for this miner.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stale_alerted: bool,
    /// Learned shed and restore times (command to the confirming read-back).
    #[serde(default, skip_serializing_if = "LearnedTimes::is_empty")]
    pub times: LearnedTimes,
    /// A `miner.slow` alert is out: its p99 shed time passed `fast_shed_s`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub slow_alerted: bool,
    /// A `miner.no_driver` alert is out.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_driver_alerted: bool,
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(v: &Millis) -> bool {
    *v == 0
}

/// How many of a miner's latest shed (and restore) times are kept.
pub const TIMES_KEPT: usize = 16;
/// Below this many samples, the firmware's default still bounds the learned figure.
pub const TIMES_TRUSTED: usize = 3;

/// A miner's learned shed and restore times, ms: the latest [`TIMES_KEPT`] samples of
/// each, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnedTimes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shed_ms: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore_ms: Vec<u32>,
}

/// Percentiles of a set of times, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub p50_ms: u32,
    pub p99_ms: u32,
    /// How many samples they come from (0: the firmware's default).
    pub samples: usize,
}

impl LearnedTimes {
    pub fn is_empty(&self) -> bool {
        self.shed_ms.is_empty() && self.restore_ms.is_empty()
    }

    pub fn record_shed(&mut self, ms: u32) {
        push_bounded(&mut self.shed_ms, ms);
    }

    pub fn record_restore(&mut self, ms: u32) {
        push_bounded(&mut self.restore_ms, ms);
    }

    /// Shed time percentiles, the firmware's `default_ms` standing in (and bounding
    /// them from below) until [`TIMES_TRUSTED`] samples exist.
    pub fn shed(&self, default_ms: u32) -> Percentiles {
        percentiles(&self.shed_ms, default_ms)
    }

    pub fn restore(&self, default_ms: u32) -> Percentiles {
        percentiles(&self.restore_ms, default_ms)
    }
}

fn push_bounded(v: &mut Vec<u32>, ms: u32) {
    if v.len() >= TIMES_KEPT {
        v.remove(0);
    }
    v.push(ms);
}

/// Nearest-rank percentiles; with few samples the default is a floor (a miner that
/// answered once quickly has not shown it is fast).
fn percentiles(samples: &[u32], default_ms: u32) -> Percentiles {
    if samples.is_empty() {
        return Percentiles {
            p50_ms: default_ms,
            p99_ms: default_ms,
            samples: 0,
        };
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = |q: f64| -> u32 {
        let n = v.len();
        // Nearest rank: ceil(q x n), 1-based; n <= TIMES_KEPT, so the casts are exact.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let k = ((q * n as f64).ceil() as usize).clamp(1, n);
        v[k - 1]
    };
    let (mut p50, mut p99) = (rank(0.5), rank(0.99));
    if v.len() < TIMES_TRUSTED {
        p50 = p50.max(default_ms);
        p99 = p99.max(default_ms);
    }
    Percentiles {
        p50_ms: p50,
        p99_ms: p99,
        samples: v.len(),
    }
}

impl Clone for MinerState {
    fn clone(&self) -> Self {
        let mut m = MinerState::default();
        m.clone_from(self);
        m
    }

    /// Field by field: the cycle histories and learned times keep their buffers when a
    /// state is copied into one kept across ticks.
    fn clone_from(&mut self, src: &Self) {
        self.intent = src.intent;
        self.since = src.since;
        self.pending = src.pending;
        self.failed = src.failed;
        self.slept_at = src.slept_at;
        self.woke_at = src.woke_at;
        self.sleep_cycles.clone_from(&src.sleep_cycles);
        self.power_cycles.clone_from(&src.power_cycles);
        self.stale_alerted = src.stale_alerted;
        self.times.shed_ms.clone_from(&src.times.shed_ms);
        self.times.restore_ms.clone_from(&src.times.restore_ms);
        self.slow_alerted = src.slow_alerted;
        self.no_driver_alerted = src.no_driver_alerted;
    }
}

impl Default for MinerState {
    fn default() -> Self {
        MinerState {
            intent: Intent::Normal,
            since: 0,
            pending: None,
            failed: None,
            slept_at: None,
            woke_at: None,
            sleep_cycles: Vec::new(),
            power_cycles: Vec::new(),
            stale_alerted: false,
            times: LearnedTimes::default(),
            slow_alerted: false,
            no_driver_alerted: false,
        }
    }
}

/// A GPU cap command not yet read back.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpuPending {
    /// Per-GPU limit commanded, watts (`None`: back to each GPU's default).
    pub cap_w: Option<f64>,
    pub issued_at: Millis,
    pub deadline: Millis,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuState {
    /// The per-GPU limit the agent holds the node at, watts; `None`: defaults.
    pub cap_w: Option<f64>,
    /// The constraints that capped it: no miner under them is restored while the cap
    /// holds (empty with a cap, from an older state: the whole site).
    #[serde(default)]
    pub capped_by: Vec<Scope>,
    pub pending: Option<GpuPending>,
    pub nvml_alerted: bool,
    pub stale_alerted: bool,
}

/// The power band a node was last reported in (alerts fire on changes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// At or below the restore threshold.
    #[default]
    Normal,
    /// Between the restore and the shed thresholds.
    Hold,
    Shed,
    Emergency,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// Since when `P_eff + step <= restore_fraction x B` has held (None: not now).
    pub below_since: Option<Millis>,
    /// Last tick that restored anything under (or through) this node.
    pub last_restore_at: Option<Millis>,
    /// The band last alerted; `power.budget.*` alerts fire when it changes.
    pub band: Band,
    /// Racks: the peak "other" load (meter above what the projection explains), kW,
    /// held for `restore_hold_s` so GPU swings cannot make it flicker.
    pub other_kw: f64,
    pub other_at: Millis,
    /// The rack's GPU reserve when `other_kw` was last computed: when the reserve rises
    /// (limits raised after the meter already showed the load), the held peak is lowered
    /// by as much, so the same kilowatts are not counted twice.
    #[serde(default)]
    pub other_reserve_kw: f64,
    pub meter_stale_alerted: bool,
    pub silent_alerted: bool,
    pub unmet_alerted: bool,
    /// GPU and mixed racks: the rolling peak of the rack's AI load (meter less its
    /// miners), the sustained reserve S is taken from. Not carried over a restart.
    #[serde(default)]
    pub peak: Option<PeakTrack>,
    /// Running mean of the node's measured load over ~10 minutes (the thermal guard).
    #[serde(default)]
    pub mean: Option<RunningMean>,
    /// An excursion above B in progress.
    #[serde(default)]
    pub excursion: Option<Excursion>,
    /// A `power.ceiling.shed` alert is out (the worst case went above H).
    #[serde(default)]
    pub ceiling_alerted: bool,
    /// The site node: the grid limit last alerted (`grid.target.active` /
    /// `grid.target.ended` fire when it changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid_limit_kw: Option<f64>,
    /// The site node: a `grid.target.unmet` alert is out.
    #[serde(default, skip_serializing_if = "is_false")]
    pub grid_unmet_alerted: bool,
}

/// The rolling peak of a GPU rack's measured load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeakTrack {
    /// First sample: the window is full once `now - since >= reserve_window_s`.
    pub since: Millis,
    /// Last update.
    pub at: Millis,
    /// The peak S is taken from, kW: rises at once, falls at most 2% of X a minute.
    pub peak_kw: f64,
    /// The last reading, kW (X is never below it).
    #[serde(default)]
    pub last_kw: f64,
    /// Per-minute maxima inside the window: (minute number, kW), oldest first.
    pub minutes: Vec<(u64, f64)>,
    /// Racks with GPU telemetry: the non-GPU load (rack meter less GPU power), held at
    /// its peak the same way; part of X.
    pub non_gpu_kw: f64,
}

/// An exponential running mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningMean {
    pub kw: f64,
    pub at: Millis,
}

/// A node measured above its budget B.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Excursion {
    pub since: Millis,
    pub peak_kw: f64,
    /// Escalated past `excursion_max_s` already.
    #[serde(default)]
    pub escalated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneState {
    /// N+1 held at the last slow tick.
    pub n_plus_1: bool,
    /// Capacity covered the load at the last slow tick.
    pub n: bool,
    /// Per unit: a `telemetry.stale` alert is out.
    pub unit_stale_alerted: Vec<bool>,
}

impl Default for ZoneState {
    fn default() -> Self {
        ZoneState {
            n_plus_1: true,
            n: true,
            unit_stale_alerted: Vec::new(),
        }
    }
}

/// Ids shared between clones (a state is cloned every tick; 30,000 strings are not).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ids(pub Arc<Vec<String>>);

impl Serialize for Ids {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.as_slice().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Ids {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(d).map(|v| Ids(Arc::new(v)))
    }
}

/// Everything `decide` carries from one tick to the next.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    pub site_id: String,
    /// When this agent process started (or restarted with a persisted state).
    pub started_at: Millis,
    /// Since when every input has been fresh (None: some input is stale now).
    pub fresh_since: Option<Millis>,
    /// The start-up hold is over: restores are allowed.
    pub startup_done: bool,
    pub startup_alerted: bool,
    pub node_ids: Ids,
    pub miner_ids: Ids,
    pub gpu_ids: Ids,
    pub zone_ids: Ids,
    pub nodes: Vec<NodeState>,
    pub miners: Vec<MinerState>,
    pub gpus: Vec<GpuState>,
    pub zones: Vec<ZoneState>,
}

/// An empty state (no site, nothing allocated): a placeholder while the real one is in
/// `decide`'s hands.
impl Default for ControlState {
    fn default() -> Self {
        ControlState {
            site_id: String::new(),
            started_at: 0,
            fresh_since: None,
            startup_done: false,
            startup_alerted: false,
            node_ids: Ids::default(),
            miner_ids: Ids::default(),
            gpu_ids: Ids::default(),
            zone_ids: Ids::default(),
            nodes: Vec::new(),
            miners: Vec::new(),
            gpus: Vec::new(),
            zones: Vec::new(),
        }
    }
}

impl Clone for ControlState {
    fn clone(&self) -> Self {
        let mut c = ControlState::default();
        c.clone_from(self);
        c
    }

    /// Field by field, so a copy kept across ticks (the runtime's previous state, which
    /// the database commit is diffed against) reuses its buffers: 30,000 miners at
    /// 100 MW are not allocated anew every tick.
    fn clone_from(&mut self, src: &Self) {
        self.site_id.clone_from(&src.site_id);
        self.started_at = src.started_at;
        self.fresh_since = src.fresh_since;
        self.startup_done = src.startup_done;
        self.startup_alerted = src.startup_alerted;
        self.node_ids.clone_from(&src.node_ids);
        self.miner_ids.clone_from(&src.miner_ids);
        self.gpu_ids.clone_from(&src.gpu_ids);
        self.zone_ids.clone_from(&src.zone_ids);
        self.nodes.clone_from(&src.nodes);
        self.miners.clone_from(&src.miners);
        self.gpus.clone_from(&src.gpus);
        self.zones.clone_from(&src.zones);
    }
}

fn ids<'a>(it: impl Iterator<Item = &'a String>) -> Ids {
    Ids(Arc::new(it.cloned().collect()))
}

impl ControlState {
    /// A fresh state for `site`: every miner at its normal intent, no caps, start-up hold on.
    pub fn new(site: &Site, now: Millis) -> ControlState {
        ControlState {
            site_id: site.id.clone(),
            started_at: now,
            fresh_since: None,
            startup_done: false,
            startup_alerted: false,
            node_ids: ids(site.nodes.iter().map(|n| &n.id)),
            miner_ids: ids(site.miners.iter().map(|m| &m.id)),
            gpu_ids: ids(site.gpu_nodes.iter().map(|g| &g.id)),
            zone_ids: ids(site.zones.iter().map(|z| &z.id)),
            nodes: vec![NodeState::default(); site.nodes.len()],
            miners: vec![MinerState::default(); site.miners.len()],
            gpus: vec![GpuState::default(); site.gpu_nodes.len()],
            zones: site
                .zones
                .iter()
                .map(|z| ZoneState {
                    unit_stale_alerted: vec![false; z.units.len()],
                    ..ZoneState::default()
                })
                .collect(),
        }
    }

    /// Carries a persisted state over to a (re)started agent on `site`: miner intents,
    /// pending commands and cycle history and GPU caps are kept by id; timers that need
    /// fresh evidence (restore holds, freshness, start-up) start over at `now`.
    pub fn for_site(site: &Site, old: &ControlState, now: Millis) -> ControlState {
        let mut st = ControlState::new(site, now);
        let index = |ids: &Ids| -> HashMap<String, usize> {
            ids.0
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i))
                .collect()
        };
        let (old_miners, old_gpus, old_nodes) = (
            index(&old.miner_ids),
            index(&old.gpu_ids),
            index(&old.node_ids),
        );
        for (i, m) in site.miners.iter().enumerate() {
            if let Some(&j) = old_miners.get(&m.id) {
                if let Some(ms) = old.miners.get(j) {
                    st.miners[i] = MinerState {
                        stale_alerted: false,
                        no_driver_alerted: false,
                        ..ms.clone()
                    };
                }
            }
        }
        for (i, g) in site.gpu_nodes.iter().enumerate() {
            if let Some(&j) = old_gpus.get(&g.id) {
                if let Some(gs) = old.gpus.get(j) {
                    st.gpus[i].cap_w = gs.cap_w;
                    st.gpus[i].capped_by.clone_from(&gs.capped_by);
                    st.gpus[i].pending = gs.pending;
                }
            }
        }
        for (i, n) in site.nodes.iter().enumerate() {
            if let Some(&j) = old_nodes.get(&n.id) {
                if let Some(ns) = old.nodes.get(j) {
                    st.nodes[i].band = ns.band;
                    st.nodes[i].last_restore_at = ns.last_restore_at;
                }
            }
        }
        st
    }

    /// Whether the vectors match `site`'s sizes (a state from another site file does not).
    pub fn fits(&self, site: &Site) -> bool {
        self.nodes.len() == site.nodes.len()
            && self.miners.len() == site.miners.len()
            && self.gpus.len() == site.gpu_nodes.len()
            && self.zones.len() == site.zones.len()
            && self
                .zones
                .iter()
                .zip(&site.zones)
                .all(|(a, b)| a.unit_stale_alerted.len() == b.units.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_times_start_at_the_default_then_follow_the_samples() {
        let mut t = LearnedTimes::default();
        let p = t.shed(25_000);
        assert_eq!((p.p50_ms, p.p99_ms, p.samples), (25_000, 25_000, 0));
        // Two quick answers do not yet show a slow firmware is fast.
        t.record_shed(4_000);
        t.record_shed(5_000);
        assert_eq!(t.shed(25_000).p99_ms, 25_000);
        t.record_shed(6_000);
        let p = t.shed(25_000);
        assert_eq!((p.p50_ms, p.p99_ms, p.samples), (5_000, 6_000, 3));
        // Bounded: the oldest samples go first.
        for _ in 0..TIMES_KEPT {
            t.record_shed(40_000);
        }
        assert_eq!(t.shed_ms.len(), TIMES_KEPT);
        assert_eq!(t.shed(5_000).p50_ms, 40_000);
        // A restore sample is not a shed sample.
        t.record_restore(9_000);
        assert_eq!(t.restore_ms, vec![9_000]);
    }

    #[test]
    fn empty_learned_times_are_not_written_and_read_back_equal() {
        let ms = MinerState::default();
        let json = serde_json::to_string(&ms).unwrap();
        assert!(!json.contains("shed_ms"), "{json}");
        // A miner at rest is one short row in the database.
        assert_eq!(json, r#"{"intent":{"intent":"normal"}}"#);
        let back: MinerState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ms);
    }
}
