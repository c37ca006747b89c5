//! The site file as written: serde types with `deny_unknown_fields`, no cross-checks.
//!
//! Everything here is what an operator typed. [`crate::validate`] turns it into the
//! [`crate::Site`] the runtime accepts; nothing else reads these types.

use serde::Deserialize;

use crate::policy::{AgentSettings, HaSettings, Policy};

/// The whole site file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub site: RawSite,
    #[serde(default)]
    pub agent: AgentSettings,
    #[serde(default)]
    pub policy: Policy,
    /// Active/standby through etcd; absent: the agent runs alone.
    #[serde(default)]
    pub ha: Option<HaSettings>,
    /// Alert delivery (`[alerts]`, issue 18): Alertmanager and/or a webhook; absent:
    /// alerts go to the log only.
    #[serde(default)]
    pub alerts: Option<RawAlerts>,
    /// Grid signals (`[grid]`, issue 19): demand-response targets and price
    /// curtailment; absent: defaults (targets through the API only, no price lever).
    #[serde(default)]
    pub grid: Option<RawGrid>,
    #[serde(default)]
    pub feeds: Vec<RawNode>,
    #[serde(default)]
    pub rows: Vec<RawNode>,
    #[serde(default)]
    pub racks: Vec<RawRack>,
    #[serde(default)]
    pub cooling_zones: Vec<RawZone>,
    #[serde(default)]
    pub modbus_devices: Vec<RawModbusDevice>,
    #[serde(default)]
    pub miners: Vec<RawMiner>,
    #[serde(default)]
    pub miner_groups: Vec<RawMinerGroup>,
    #[serde(default)]
    pub gpu_nodes: Vec<RawGpuNode>,
    /// Energy accounting (`[[tenants]]`): who is billed for which racks.
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
}

/// `[alerts]`: where alerts are delivered beyond the log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Alertmanager's base URL (`http://host:9093`); the agent posts to
    /// `<url>/api/v2/alerts`.
    #[serde(default)]
    pub alertmanager_url: Option<String>,
    /// A URL that receives each alert as a JSON object (docs/alerts.md).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// A file holding the webhook's bearer token (sent as `Authorization: Bearer`).
    #[serde(default)]
    pub webhook_token_file: Option<String>,
    /// Active alerts are sent again this often, seconds (default 60).
    #[serde(default)]
    pub resend_interval_s: Option<u64>,
    /// `info`, `warning` (default) or `critical`: alerts below it stay in the log.
    #[serde(default)]
    pub min_severity: Option<String>,
    /// Alerts waiting for delivery at most (default 1024); past it new ones are dropped
    /// (and counted).
    #[serde(default)]
    pub queue_capacity: Option<usize>,
    /// Time limit of one request, seconds (default 5).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// `[grid]`: how outside signals (a utility's demand response, the power price) act.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrid {
    /// Whether a grid target may cap GPUs once no mining is left (default false: the
    /// shortfall is reported instead).
    #[serde(default)]
    pub allow_gpu_caps: Option<bool>,
    /// Margin kept under a target, as a fraction of it (default 0.02).
    #[serde(default)]
    pub margin_fraction: Option<f64>,
    /// Mining revenue, USD per TH/s per day; with it a price above a miner's breakeven
    /// sleeps it.
    #[serde(default)]
    pub hashprice_usd_per_th_day: Option<f64>,
    /// A price must fall this fraction below a miner's breakeven before it wakes
    /// (default 0.05).
    #[serde(default)]
    pub price_hysteresis_fraction: Option<f64>,
    /// An OpenADR 3 VTN to enrol with (`[grid.openadr]`).
    #[serde(default)]
    pub openadr: Option<RawOpenAdr>,
}

/// `[grid.openadr]`: the VEN's connection to a utility's VTN.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenAdr {
    /// The VTN's base URL (`https://vtn.example/openadr3/3.1.0`).
    pub vtn_url: String,
    /// OAuth client id the utility issued.
    pub client_id: String,
    /// File holding the OAuth client secret.
    pub client_secret_file: String,
    /// The VEN's name at the VTN (default: the site id).
    #[serde(default)]
    pub ven_name: Option<String>,
    /// Only events of these programs (by name) act; empty: every program the VEN sees.
    #[serde(default)]
    pub programs: Vec<String>,
    /// How often events are polled, seconds (default 10).
    #[serde(default)]
    pub poll_interval_s: Option<u64>,
    /// How often the site's metered load is reported during an event, seconds (default 60).
    #[serde(default)]
    pub report_interval_s: Option<u64>,
}

/// A tenant (`[[tenants]]`): an AI customer billed for the energy of its racks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub racks: Vec<String>,
}

/// A breaker rating: either `rating_kw`, or `rating_a` at `voltage_v` with `phases`.
///
/// Repeated in each node type because serde's `flatten` cannot be combined with
/// `deny_unknown_fields`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawRating {
    pub rating_kw: Option<f64>,
    pub rating_a: Option<f64>,
    pub voltage_v: Option<f64>,
    pub phases: Option<u32>,
    pub power_factor: Option<f64>,
}

/// The root of the power tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub rating_kw: Option<f64>,
    #[serde(default)]
    pub rating_a: Option<f64>,
    #[serde(default)]
    pub voltage_v: Option<f64>,
    #[serde(default)]
    pub phases: Option<u32>,
    #[serde(default)]
    pub power_factor: Option<f64>,
    #[serde(default)]
    pub budget_kw: Option<f64>,
    #[serde(default)]
    pub rated_100: bool,
    /// Site derate applied to every default budget (1.0 = none).
    #[serde(default)]
    pub derate: Option<f64>,
    #[serde(default)]
    pub meters: Vec<RawMeterRef>,
}

/// A feed (`[[feeds]]`) or a row / RPP (`[[rows]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: String,
    /// Rows: the feed or row this one hangs from. Feeds hang from the site.
    #[serde(default)]
    pub parent: Option<String>,
    /// Feeds: the other feed of an A/B pair.
    #[serde(default)]
    pub pair: Option<String>,
    #[serde(default)]
    pub rating_kw: Option<f64>,
    #[serde(default)]
    pub rating_a: Option<f64>,
    #[serde(default)]
    pub voltage_v: Option<f64>,
    #[serde(default)]
    pub phases: Option<u32>,
    #[serde(default)]
    pub power_factor: Option<f64>,
    #[serde(default)]
    pub budget_kw: Option<f64>,
    #[serde(default)]
    pub rated_100: bool,
    #[serde(default)]
    pub meters: Vec<RawMeterRef>,
}

/// A rack (`[[racks]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRack {
    pub id: String,
    pub kind: RackKind,
    /// The rows (or feeds) its cords hang from: one, or two on an A/B feed pair.
    #[serde(default)]
    pub parents: Vec<String>,
    #[serde(default)]
    pub rating_kw: Option<f64>,
    #[serde(default)]
    pub rating_a: Option<f64>,
    #[serde(default)]
    pub voltage_v: Option<f64>,
    #[serde(default)]
    pub phases: Option<u32>,
    #[serde(default)]
    pub power_factor: Option<f64>,
    #[serde(default)]
    pub budget_kw: Option<f64>,
    #[serde(default)]
    pub rated_100: bool,
    /// GPU and mixed racks: the most the rack's GPU load can draw (reserved when NVML is absent).
    #[serde(default)]
    pub rated_max_kw: Option<f64>,
    /// GPU and mixed racks: overrides `policy.gpu_reserve` for this rack.
    #[serde(default)]
    pub reserve: Option<crate::policy::GpuReserve>,
    #[serde(default)]
    pub meters: Vec<RawMeterRef>,
}

impl RawSite {
    pub fn rating(&self) -> RawRating {
        RawRating {
            rating_kw: self.rating_kw,
            rating_a: self.rating_a,
            voltage_v: self.voltage_v,
            phases: self.phases,
            power_factor: self.power_factor,
        }
    }
}

impl RawNode {
    pub fn rating(&self) -> RawRating {
        RawRating {
            rating_kw: self.rating_kw,
            rating_a: self.rating_a,
            voltage_v: self.voltage_v,
            phases: self.phases,
            power_factor: self.power_factor,
        }
    }
}

impl RawRack {
    pub fn rating(&self) -> RawRating {
        RawRating {
            rating_kw: self.rating_kw,
            rating_a: self.rating_a,
            voltage_v: self.voltage_v,
            phases: self.phases,
            power_factor: self.power_factor,
        }
    }
}

/// What a rack holds, which decides which levers exist under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RackKind {
    Gpu,
    Mining,
    Mixed,
}

/// Which Modbus device and which point (role or point name of its profile) gives a
/// node's measured power in kW.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeterRef {
    pub device: String,
    #[serde(default = "default_meter_point")]
    pub point: String,
}

fn default_meter_point() -> String {
    "inlet_power_kw".to_owned()
}

/// A cooling zone (`[[cooling_zones]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZone {
    pub id: String,
    #[serde(default)]
    pub medium: CoolingMedium,
    #[serde(default)]
    pub redundancy: Redundancy,
    /// Heat-load margin for N+1; the policy's `cooling_margin` when absent.
    #[serde(default)]
    pub margin: Option<f64>,
    #[serde(default)]
    pub racks: Vec<String>,
    #[serde(default)]
    pub units: Vec<RawCoolingUnit>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CoolingMedium {
    #[default]
    Air,
    Liquid,
}

/// The redundancy a zone must keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Redundancy {
    #[default]
    #[serde(rename = "n+1")]
    NPlusOne,
    #[serde(rename = "none")]
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoolingUnit {
    pub id: String,
    pub capacity_kw: f64,
    /// The Modbus device that reports this unit's state.
    #[serde(default)]
    pub device: Option<String>,
}

/// How a Modbus device is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Rtu,
    RtuOverTcp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// A Modbus device (`[[modbus_devices]]`): a PDU, a meter or a cooling unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModbusDevice {
    pub id: String,
    pub transport: Transport,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub unit_id: Option<u32>,
    #[serde(default)]
    pub serial_path: Option<String>,
    #[serde(default)]
    pub baud: Option<u32>,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default)]
    pub data_bits: Option<u32>,
    #[serde(default)]
    pub stop_bits: Option<u32>,
    /// A built-in profile name.
    #[serde(default)]
    pub profile: Option<String>,
    /// A profile file, relative to the site file.
    #[serde(default)]
    pub profile_file: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub pause_after_connect_ms: Option<u64>,
    #[serde(default)]
    pub max_read_registers: Option<u32>,
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    /// The only switch that permits writes to this device.
    #[serde(default)]
    pub control: bool,
    /// Points (by name or role) the agent may write; empty = none.
    #[serde(default)]
    pub write_points: Vec<String>,
}

/// Miner firmware families the agent can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// Braiins OS / OS+ (bosminer): `pause`/`resume`, power target via tuner.
    Braiins,
    /// LuxOS: `curtail` sleep/wakeup, `profileset` power profiles.
    Luxos,
    /// Whatsminer btminer API v2: encrypted `power_off`/`power_on`, power limit.
    Whatsminer,
    /// Vnish: REST pause/resume.
    Vnish,
    /// Stock Bitmain Antminer: telemetry over 4028, sleep over the web CGI.
    AntminerStock,
    /// Canaan Avalon: `ascset` softoff/softon.
    Avalon,
}

impl Firmware {
    pub const ALL: [Firmware; 6] = [
        Firmware::Braiins,
        Firmware::Luxos,
        Firmware::Whatsminer,
        Firmware::Vnish,
        Firmware::AntminerStock,
        Firmware::Avalon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Firmware::Braiins => "braiins",
            Firmware::Luxos => "luxos",
            Firmware::Whatsminer => "whatsminer",
            Firmware::Vnish => "vnish",
            Firmware::AntminerStock => "antminer_stock",
            Firmware::Avalon => "avalon",
        }
    }

    /// The levers this firmware offers the controller: the single source of truth that
    /// both the drivers and `decide` use.
    pub fn levers(self) -> Levers {
        match self {
            Firmware::Braiins | Firmware::Luxos | Firmware::Whatsminer | Firmware::Vnish => {
                Levers {
                    power_target: true,
                    sleep: true,
                }
            }
            // Stock Bitmain has no API power target; its sleep goes through the slow web
            // CGI. Avalon's `workmode` only picks coarse presets, so it is not a target.
            Firmware::AntminerStock | Firmware::Avalon => Levers {
                power_target: false,
                sleep: true,
            },
        }
    }

    /// Shed time (command to the read-back that shows the lower power) assumed until the
    /// agent has measured the miner's own, ms (docs/control.md, "Trough filling").
    pub fn default_shed_ms(self) -> u32 {
        match self {
            Firmware::Luxos => 5_000,
            Firmware::Braiins | Firmware::Vnish => 8_000,
            Firmware::Whatsminer | Firmware::Avalon => 10_000,
            Firmware::AntminerStock => 25_000,
        }
    }

    /// Restore time (command to the read-back that shows it mining) assumed until
    /// measured, ms.
    pub fn default_restore_ms(self) -> u32 {
        match self {
            Firmware::Luxos | Firmware::Braiins => 10_000,
            Firmware::Vnish | Firmware::Whatsminer | Firmware::Avalon => 15_000,
            Firmware::AntminerStock => 30_000,
        }
    }

    /// Whether the firmware needs an HTTP port besides the 4028 API for its control verbs.
    pub fn needs_http(self) -> bool {
        // Braiins OS sets power targets through its REST API.
        matches!(
            self,
            Firmware::Vnish | Firmware::AntminerStock | Firmware::Braiins
        )
    }
}

/// The miner-side levers a firmware offers (the PDU outlet is the rack's, not the
/// firmware's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Levers {
    /// A settable power target (watts).
    pub power_target: bool,
    /// Sleep / pause / power off of the hashboards through the API.
    pub sleep: bool,
}

/// Where a secret comes from. Never inline: the config file is not a secret store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub username: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Path of a file holding the password (first line).
    #[serde(default)]
    pub password_file: Option<String>,
}

/// A PDU outlet feeding a miner (the hard lever).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutletRef {
    pub device: String,
    pub outlet: u32,
}

/// One miner (`[[miners]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMiner {
    pub id: String,
    /// `host` or `host:port` (port 4028 when absent).
    pub address: String,
    #[serde(default)]
    pub http_port: Option<u32>,
    pub firmware: Firmware,
    pub rack: String,
    pub nominal_w: f64,
    #[serde(default)]
    pub min_w: Option<f64>,
    #[serde(default)]
    pub idle_w: Option<f64>,
    #[serde(default)]
    pub efficiency_j_th: Option<f64>,
    #[serde(default)]
    pub credentials: Option<Credentials>,
    #[serde(default)]
    pub outlet: Option<OutletRef>,
}

/// `count` identical miners at consecutive IPv4 addresses (`[[miner_groups]]`), named
/// `{id_prefix}{n:03}` from 1. Their outlets, when `outlet_device` is set, are numbered
/// from `first_outlet`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMinerGroup {
    pub id_prefix: String,
    pub count: u32,
    /// First miner's address, `a.b.c.d` or `a.b.c.d:port`.
    pub first_address: String,
    #[serde(default)]
    pub http_port: Option<u32>,
    pub firmware: Firmware,
    pub rack: String,
    pub nominal_w: f64,
    #[serde(default)]
    pub min_w: Option<f64>,
    #[serde(default)]
    pub idle_w: Option<f64>,
    #[serde(default)]
    pub efficiency_j_th: Option<f64>,
    #[serde(default)]
    pub credentials: Option<Credentials>,
    #[serde(default)]
    pub outlet_device: Option<String>,
    #[serde(default)]
    pub first_outlet: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuSource {
    /// NVML on this host.
    Nvml,
    /// A `rackwarden gpu-node` on a GPU host.
    Remote,
}

/// A GPU host (`[[gpu_nodes]]`): its GPUs sit in one rack.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpuNode {
    pub id: String,
    pub rack: String,
    pub source: GpuSource,
    /// Remote nodes: `host:port` of its `rackwarden gpu-node`.
    #[serde(default)]
    pub address: Option<String>,
    /// Remote nodes: file holding the shared token.
    #[serde(default)]
    pub token_file: Option<String>,
    /// GPUs expected on the host.
    #[serde(default)]
    pub gpus: Option<u32>,
    /// Most one GPU can draw (its maximum power limit), for reserves before NVML answers.
    #[serde(default)]
    pub gpu_max_w: Option<f64>,
}
