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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinerState {
    pub intent: Intent,
    /// When the current intent was commanded.
    pub since: Millis,
    pub pending: Option<Pending>,
    /// The last lever that failed to confirm (escalation reads it).
    pub failed: Option<Lever>,
    pub slept_at: Option<Millis>,
    pub woke_at: Option<Millis>,
    /// Times of the sleeps of the last hour (a sleep starts a sleep/wake cycle).
    pub sleep_cycles: Vec<Millis>,
    /// Times of the outlet switch-offs of the last day (hard power cycles).
    pub power_cycles: Vec<Millis>,
    /// A `telemetry.stale` alert is out for this miner.
    pub stale_alerted: bool,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
