//! The validated site: the only form of the config the runtime and `decide` accept.
//!
//! Ids are resolved to indices, budgets to kW, groups expanded. Constructing a [`Site`]
//! outside [`crate::validate`] is possible (tests and generators do it), but the runtime
//! only ever receives one from there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

pub use crate::policy::{AgentSettings, GpuReserve, LogFormat, Policy};
pub use crate::profile::Profile;
pub use crate::raw::{
    CoolingMedium, Credentials, Firmware, GpuSource, Levers, Parity, RackKind, Redundancy,
    Transport,
};

/// Index of a node in [`Site::nodes`]. The site itself is node 0.
pub type NodeIdx = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Site,
    Feed,
    Row,
    Rack(RackKind),
}

impl NodeKind {
    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Site => "site",
            NodeKind::Feed => "feed",
            NodeKind::Row => "row",
            NodeKind::Rack(_) => "rack",
        }
    }
}

/// A meter binding: device index and the point (name or role) that reads kW.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeterRef {
    pub device: usize,
    pub point: String,
}

/// One node of the power tree.
#[derive(Debug, Clone, Serialize)]
pub struct PowerNode {
    pub id: String,
    pub kind: NodeKind,
    /// Upstream nodes: none for the site, one normally, two for a dual-corded rack on an
    /// A/B pair.
    pub parents: Vec<NodeIdx>,
    pub children: Vec<NodeIdx>,
    /// Breaker rating in kW (the site may have none: then it is the sum of its feeds).
    pub rating_kw: f64,
    /// Sustained budget B in kW.
    pub budget_kw: f64,
    /// Never-trip ceiling H in kW (`ceiling_fraction x rating`, never below B): the worst
    /// case may not exceed it.
    pub ceiling_kw: f64,
    pub rated_100: bool,
    /// GPU and mixed racks: the most their GPU load may draw.
    pub rated_max_kw: Option<f64>,
    /// GPU and mixed racks: how the rack is reserved (its own `reserve`, else the policy's).
    pub reserve: GpuReserve,
    pub meters: Vec<MeterRef>,
    /// Feeds: the other feed of an A/B pair.
    pub pair: Option<NodeIdx>,
}

impl PowerNode {
    pub fn is_rack(&self) -> bool {
        matches!(self.kind, NodeKind::Rack(_))
    }

    pub fn rack_kind(&self) -> Option<RackKind> {
        match self.kind {
            NodeKind::Rack(k) => Some(k),
            _ => None,
        }
    }

    /// A rack whose cords hang from both feeds of an A/B pair.
    pub fn dual_corded(&self) -> bool {
        self.is_rack() && self.parents.len() == 2
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CoolingUnit {
    pub id: String,
    pub capacity_kw: f64,
    pub device: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoolingZone {
    pub id: String,
    pub medium: CoolingMedium,
    pub redundancy: Redundancy,
    pub margin: f64,
    pub racks: Vec<NodeIdx>,
    pub units: Vec<CoolingUnit>,
}

/// How a Modbus device is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ModbusLink {
    Tcp {
        addr: String,
        unit_id: u8,
    },
    Rtu {
        serial_path: String,
        baud: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
        unit_id: u8,
    },
    /// RTU framing carried over TCP by a serial gateway; many unit ids share the bus.
    RtuOverTcp {
        addr: String,
        unit_id: u8,
    },
}

impl ModbusLink {
    pub fn unit_id(&self) -> u8 {
        match self {
            ModbusLink::Tcp { unit_id, .. }
            | ModbusLink::Rtu { unit_id, .. }
            | ModbusLink::RtuOverTcp { unit_id, .. } => *unit_id,
        }
    }

    /// The connection this device shares with others (one actor per connection).
    pub fn connection_key(&self) -> String {
        match self {
            ModbusLink::Tcp { addr, unit_id } => format!("tcp://{addr}#{unit_id}"),
            ModbusLink::Rtu { serial_path, .. } => format!("rtu://{serial_path}"),
            ModbusLink::RtuOverTcp { addr, .. } => format!("rtu+tcp://{addr}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModbusDevice {
    pub id: String,
    pub link: ModbusLink,
    pub profile: Profile,
    pub timeout_ms: u64,
    pub pause_after_connect_ms: u64,
    pub max_read_registers: u32,
    pub poll_interval_ms: Option<u64>,
    pub control: bool,
    pub write_points: Vec<String>,
}

impl ModbusDevice {
    /// Whether the agent may write `point` (a name or role) on this device: only on
    /// `control = true` devices, only to allowlisted points the profile marks writable.
    pub fn may_write(&self, point: &str) -> bool {
        self.control
            && self.write_points.iter().any(|w| w == point)
            && self.profile.point(point).is_some_and(|p| p.writable)
    }
}

/// The PDU outlet feeding a miner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outlet {
    pub device: usize,
    pub outlet: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Miner {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub http_port: Option<u16>,
    pub firmware: Firmware,
    pub rack: NodeIdx,
    pub nominal_w: f64,
    /// Lowest power target the firmware accepts (None: no power-target lever).
    pub min_w: Option<f64>,
    /// Draw while asleep/paused.
    pub idle_w: f64,
    pub efficiency_j_th: Option<f64>,
    /// Where the password comes from; a relative `password_file` is already resolved
    /// against the site file's directory (the `base` of validation).
    pub credentials: Option<Credentials>,
    pub outlet: Option<Outlet>,
}

impl Miner {
    /// `host:port` of the 4028 API.
    pub fn api_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuNode {
    pub id: String,
    pub rack: NodeIdx,
    pub source: GpuSource,
    pub address: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
    pub gpus: u32,
    pub gpu_max_w: Option<f64>,
}

/// The validated site.
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub id: String,
    pub name: Option<String>,
    pub derate: f64,
    /// Node 0 is the site; feeds, rows and racks follow in file order.
    pub nodes: Vec<PowerNode>,
    pub zones: Vec<CoolingZone>,
    pub modbus_devices: Vec<ModbusDevice>,
    pub miners: Vec<Miner>,
    pub gpu_nodes: Vec<GpuNode>,
    pub policy: Policy,
    pub agent: AgentSettings,
    /// Active/standby through etcd (`[ha]`); None: the agent runs alone.
    pub ha: Option<Ha>,
    /// Energy accounts (`[[tenants]]`), in file order.
    pub tenants: Vec<Tenant>,
    /// Alert delivery (`[alerts]`); None: alerts go to the log only.
    pub alerts: Option<AlertDelivery>,
    /// Grid signals (`[grid]`); defaults when the file has none.
    pub grid: Grid,
    #[serde(skip)]
    index: HashMap<String, Ref>,
}

/// A validated `[[tenants]]` entry: the racks whose energy the tenant is billed for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// Rack nodes, each belonging to at most one tenant.
    pub racks: Vec<NodeIdx>,
}

/// The id of the site's own energy account: its mining racks (and mixed racks no tenant
/// holds).
pub const MINING_ACCOUNT: &str = "mining";

/// The validated `[ha]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ha {
    pub etcd_endpoints: Vec<String>,
    /// This agent's name (the host name unless set).
    pub node: String,
    /// Key prefix without a trailing slash.
    pub prefix: String,
    pub lease_ttl_s: u64,
    /// TLS to etcd: CA, and the client certificate and key (paths resolved against the
    /// site file's directory). None: plain HTTP.
    pub tls: Option<HaTls>,
    /// etcd authentication: user and password file (resolved). None: no auth.
    pub auth: Option<HaAuth>,
}

/// `[ha]` TLS files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaTls {
    pub ca_file: PathBuf,
    /// Client certificate and its key, both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// `[ha]` etcd user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaAuth {
    pub user: String,
    pub password_file: PathBuf,
}

/// An alert's severity as `[alerts] min_severity` names it (ordered: info < warning <
/// critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertLevel {
    Info,
    Warning,
    Critical,
}

impl AlertLevel {
    pub fn name(self) -> &'static str {
        match self {
            AlertLevel::Info => "info",
            AlertLevel::Warning => "warning",
            AlertLevel::Critical => "critical",
        }
    }
}

/// The validated `[alerts]` section: at least one receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertDelivery {
    /// Alertmanager's base URL, without a trailing slash.
    pub alertmanager_url: Option<String>,
    pub webhook_url: Option<String>,
    /// Resolved against the site file's directory; read when delivery starts.
    pub webhook_token_file: Option<PathBuf>,
    pub resend_interval_s: u64,
    pub min_severity: AlertLevel,
    pub queue_capacity: usize,
    pub timeout_s: u64,
}

/// The validated `[grid]` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Grid {
    pub allow_gpu_caps: bool,
    /// Fraction of a target kept free under it: sheds start at `(1 - m) x target`,
    /// aim at `(1 - 2m) x target`, and fills stop at `(1 - 3m) x target`.
    pub margin_fraction: f64,
    /// USD per TH/s per day; None: no price curtailment.
    pub hashprice_usd_per_th_day: Option<f64>,
    pub price_hysteresis_fraction: f64,
    pub openadr: Option<OpenAdr>,
}

impl Default for Grid {
    fn default() -> Grid {
        Grid {
            allow_gpu_caps: false,
            margin_fraction: 0.02,
            hashprice_usd_per_th_day: None,
            price_hysteresis_fraction: 0.05,
            openadr: None,
        }
    }
}

/// The validated `[grid.openadr]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenAdr {
    /// Without a trailing slash.
    pub vtn_url: String,
    pub client_id: String,
    /// Resolved against the site file's directory; read when the VEN starts.
    pub client_secret_file: PathBuf,
    pub ven_name: String,
    pub programs: Vec<String>,
    pub poll_interval_s: u64,
    pub report_interval_s: u64,
}

/// What an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    Node(NodeIdx),
    Zone(usize),
    Unit(usize, usize),
    Device(usize),
    Miner(usize),
    GpuNode(usize),
}

impl Site {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: String,
        name: Option<String>,
        derate: f64,
        nodes: Vec<PowerNode>,
        zones: Vec<CoolingZone>,
        modbus_devices: Vec<ModbusDevice>,
        miners: Vec<Miner>,
        gpu_nodes: Vec<GpuNode>,
        policy: Policy,
        agent: AgentSettings,
    ) -> Site {
        let mut index = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            index.insert(n.id.clone(), Ref::Node(i));
        }
        for (i, z) in zones.iter().enumerate() {
            index.insert(z.id.clone(), Ref::Zone(i));
            for (j, u) in z.units.iter().enumerate() {
                index.insert(u.id.clone(), Ref::Unit(i, j));
            }
        }
        for (i, d) in modbus_devices.iter().enumerate() {
            index.insert(d.id.clone(), Ref::Device(i));
        }
        for (i, m) in miners.iter().enumerate() {
            index.insert(m.id.clone(), Ref::Miner(i));
        }
        for (i, g) in gpu_nodes.iter().enumerate() {
            index.insert(g.id.clone(), Ref::GpuNode(i));
        }
        Site {
            id,
            name,
            derate,
            nodes,
            zones,
            modbus_devices,
            miners,
            gpu_nodes,
            policy,
            agent,
            ha: None,
            tenants: Vec::new(),
            alerts: None,
            grid: Grid::default(),
            index,
        }
    }

    /// Looks an id up.
    pub fn lookup(&self, id: &str) -> Option<Ref> {
        self.index.get(id).copied()
    }

    pub fn node_index(&self, id: &str) -> Option<NodeIdx> {
        match self.lookup(id) {
            Some(Ref::Node(i)) => Some(i),
            _ => None,
        }
    }

    pub fn miner_index(&self, id: &str) -> Option<usize> {
        match self.lookup(id) {
            Some(Ref::Miner(i)) => Some(i),
            _ => None,
        }
    }

    /// Every node on the path from `node` up to the site, `node` first, each once (a
    /// dual-corded rack reaches both feeds of its pair).
    pub fn ancestors(&self, node: NodeIdx) -> Vec<NodeIdx> {
        let mut out = vec![node];
        let mut i = 0;
        while i < out.len() {
            for &p in &self.nodes[out[i]].parents {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            i += 1;
        }
        out
    }

    /// The racks at or below `node`.
    pub fn racks_under(&self, node: NodeIdx) -> Vec<NodeIdx> {
        let mut out = Vec::new();
        let mut stack = vec![node];
        let mut seen = vec![false; self.nodes.len()];
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut seen[n], true) {
                continue;
            }
            if self.nodes[n].is_rack() {
                out.push(n);
            }
            stack.extend(self.nodes[n].children.iter().copied());
        }
        out.sort_unstable();
        out
    }

    /// Total continuous budget of the site in kW.
    pub fn site_budget_kw(&self) -> f64 {
        self.nodes[0].budget_kw
    }
}
