//! The control policy (every threshold and interval of the control policy, with its
//! default) and the agent's own settings.
//!
//! Defaults are the starting values of docs/control.md; each may be set in `[policy]`.

use serde::{Deserialize, Serialize};

/// Thresholds are fractions of a node's budget B; intervals are milliseconds or seconds as
/// their names say.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// `P_eff >= emergency_fraction x B`: sleep miners in the same tick.
    pub emergency_fraction: f64,
    /// `P_eff >= shed_fraction x B`: lower miner targets.
    pub shed_fraction: f64,
    /// Sheds aim for `P_proj <= shed_target_fraction x B`.
    pub shed_target_fraction: f64,
    /// Restores only while `P_proj + step <= restore_fraction x B`.
    pub restore_fraction: f64,
    /// How long the restore condition must hold first.
    pub restore_hold_s: u64,
    /// Restore ramp: at most this fraction of B per node per `restore_step_interval_s`.
    pub restore_step_fraction: f64,
    pub restore_step_interval_s: u64,
    /// Shed no more than needed plus this fraction of B.
    pub shed_margin_fraction: f64,
    /// Multiplicative decrease applied to a miner's power target per shed step.
    pub target_decrease_factor: f64,
    /// Fast loop (shed only) and slow loop (restore, rebalance, cooling).
    pub fast_loop_ms: u64,
    pub slow_loop_ms: u64,
    /// A command not confirmed by read-back within this escalates to the next lever.
    pub confirm_timeout_s: u64,
    /// In an emergency, outlets go off when measured power has not dropped within this.
    pub emergency_outlet_after_s: u64,
    /// Sampling intervals and staleness limits per input class.
    pub meter_poll_ms: u64,
    pub meter_stale_ms: u64,
    pub gpu_power_poll_ms: u64,
    pub gpu_power_stale_ms: u64,
    pub gpu_limit_poll_ms: u64,
    pub gpu_limit_stale_ms: u64,
    pub miner_poll_ms: u64,
    pub miner_stale_ms: u64,
    pub cooling_poll_ms: u64,
    pub cooling_stale_ms: u64,
    /// A node meter stale this long with no device-level bound sheds to `0.8 x B - GPU_reserve`.
    pub meter_silent_shed_after_s: u64,
    /// After a (re)start, no restores until every input has been fresh this long.
    pub startup_fresh_s: u64,
    /// Anti-cycling per miner (emergencies excepted).
    pub min_off_s: u64,
    pub min_on_s: u64,
    pub max_sleep_cycles_per_hour: u32,
    pub max_power_cycles_per_day: u32,
    /// N+1 holds when `available - largest >= load x (1 + cooling_margin)`.
    pub cooling_margin: f64,
    /// Seed of every randomized order (restore order, shed tie-breaks).
    pub seed: u64,
    /// Whether the PDU-outlet lever may be used at all (outlets also need a `control` device).
    pub allow_outlet_off: bool,
    /// Whether the GPU-cap lever may be used at all.
    pub allow_gpu_caps: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            emergency_fraction: 1.0,
            shed_fraction: 0.90,
            shed_target_fraction: 0.85,
            restore_fraction: 0.80,
            restore_hold_s: 60,
            restore_step_fraction: 0.05,
            restore_step_interval_s: 30,
            shed_margin_fraction: 0.02,
            target_decrease_factor: 0.8,
            fast_loop_ms: 1_000,
            slow_loop_ms: 5_000,
            confirm_timeout_s: 10,
            emergency_outlet_after_s: 10,
            meter_poll_ms: 1_000,
            meter_stale_ms: 3_000,
            gpu_power_poll_ms: 1_000,
            gpu_power_stale_ms: 3_000,
            gpu_limit_poll_ms: 10_000,
            gpu_limit_stale_ms: 30_000,
            miner_poll_ms: 5_000,
            miner_stale_ms: 15_000,
            cooling_poll_ms: 5_000,
            cooling_stale_ms: 15_000,
            meter_silent_shed_after_s: 10,
            startup_fresh_s: 60,
            min_off_s: 300,
            min_on_s: 600,
            max_sleep_cycles_per_hour: 6,
            max_power_cycles_per_day: 2,
            cooling_margin: 0.10,
            seed: 0x5eed,
            allow_outlet_off: true,
            allow_gpu_caps: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The agent's own settings (`[agent]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// HTTP (metrics, health, status, page). Loopback unless an operator says otherwise.
    pub http_listen: String,
    pub log_format: LogFormat,
    /// Control intent, written atomically; relative paths are relative to the site file.
    pub state_file: String,
    /// Append-only action journal (JSON lines).
    pub journal_file: String,
    /// Bearer token for operator overrides; overrides are off without it.
    pub http_token_file: Option<String>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            http_listen: "127.0.0.1:9180".to_owned(),
            log_format: LogFormat::Text,
            state_file: "/var/lib/rackwarden/state.json".to_owned(),
            journal_file: "/var/lib/rackwarden/journal.jsonl".to_owned(),
            http_token_file: None,
        }
    }
}

/// High availability (`[ha]`, issue 11): an active/standby pair of agents that elect
/// their leader through etcd. Without the section the agent runs alone.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HaSettings {
    /// etcd client URLs (`http://host:2379`) of the site's cluster (three members).
    pub etcd_endpoints: Vec<String>,
    /// This agent's name in the pair; unique per host. Default: the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// Key prefix of the election and the shared intent. Default: `/rackwarden/<site id>`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Lease TTL, seconds: a dead leader is replaced within it. The leader stops acting
    /// a third of it before the lease can expire.
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: u64,
}

fn default_lease_ttl_s() -> u64 {
    10
}
