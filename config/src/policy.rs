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
    /// Emergency: a measured load at or above `emergency_fraction x H` (the never-trip
    /// ceiling), or any reading above a breaker rating: sleep miners in the same tick,
    /// anti-cycling waived. A fraction of H, not of B.
    pub emergency_fraction: f64,
    /// Over budget: `P_eff >= shed_fraction x B` (a measured excursion above B, or the
    /// sustained projection over it) sheds in the same decision, gentlest lever first.
    pub shed_fraction: f64,
    /// Sheds aim for `P_eff <= shed_target_fraction x B`.
    pub shed_target_fraction: f64,
    /// The fill line: restores and trough filling keep `P_eff <= restore_fraction x B`
    /// (the 3% of B kept free in `M_n`).
    pub restore_fraction: f64,
    /// The never-trip ceiling `H = ceiling_fraction x rating`: no decision leaves the
    /// worst case (every GPU at its cap, every shed command failed) above it.
    pub ceiling_fraction: f64,
    /// Only miners whose learned p99 shed time is at most this may hold trough headroom
    /// (the part of the mining allowance above `B - sum(X) - other`).
    pub fast_shed_s: u64,
    /// No excursion above B may last longer than this while fast mining remains under
    /// the node: past it the next lever is used.
    pub excursion_max_s: u64,
    /// How GPU racks are reserved: `measured` (sustained reserve S from the rolling
    /// peak, worst case X under the ceiling) or `limits` (S = X: no excursion above B).
    pub gpu_reserve: GpuReserve,
    /// Window of the rolling peak the sustained reserve S is taken from.
    pub reserve_window_s: u64,
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
            shed_fraction: 1.0,
            shed_target_fraction: 0.97,
            restore_fraction: 0.97,
            ceiling_fraction: 0.95,
            fast_shed_s: 30,
            excursion_max_s: 60,
            gpu_reserve: GpuReserve::Measured,
            reserve_window_s: 1_800,
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

/// How a GPU rack is reserved in the projection (`policy.gpu_reserve`, or a rack's own
/// `reserve`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuReserve {
    /// Sustained reserve S from the rack's measured rolling peak plus an uplift; the
    /// worst case X (its limits) is held under the ceiling H.
    #[default]
    Measured,
    /// S = X: the rack is reserved at its limits (or rated maximum); mining never
    /// takes its troughs, and no GPU jump can push the feed above B.
    Limits,
}

impl GpuReserve {
    pub fn name(self) -> &'static str {
        match self {
            GpuReserve::Measured => "measured",
            GpuReserve::Limits => "limits",
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
    /// The state file of an agent from before the database (issue 17): imported once
    /// into the database and renamed aside. The default database sits beside it.
    pub state_file: String,
    /// The JSON-lines export of the action journal (log shippers follow it); the
    /// journal itself is in the database.
    pub journal_file: String,
    /// Days of journal kept in the database (at least 1).
    pub journal_retention_days: u32,
    /// Bearer token for operator overrides; overrides are off without it.
    pub http_token_file: Option<String>,
    /// The agent's SQLite database (control intent, journal, energy accounting). Default: `rackwarden.db` beside
    /// `state_file`; relative paths are relative to the site file.
    pub database_file: Option<String>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            http_listen: "127.0.0.1:9180".to_owned(),
            log_format: LogFormat::Text,
            state_file: "/var/lib/rackwarden/state.json".to_owned(),
            journal_file: "/var/lib/rackwarden/journal.jsonl".to_owned(),
            journal_retention_days: 90,
            http_token_file: None,
            database_file: None,
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
    /// TLS to etcd (`https://` endpoints): the CA that signed the etcd members'
    /// certificates (PEM).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// This agent's client certificate (PEM), for etcd's `--client-cert-auth`.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<String>,
    /// etcd user (etcd's authentication); its role should be the only one allowed to
    /// read and write `<prefix>/`.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the etcd user's password (first line).
    #[serde(default)]
    pub password_file: Option<String>,
}

fn default_lease_ttl_s() -> u64 {
    10
}
