//! `validate()`: from what the operator wrote to the [`Site`] the runtime accepts.
//!
//! Every rule runs; every error found is returned at once with the field path it is
//! about (`racks[5].budget_kw`), so an operator fixes a file in one pass.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::model::{
    CoolingUnit, CoolingZone, GpuNode, MeterRef, Miner, ModbusDevice, ModbusLink, NodeIdx,
    NodeKind, Outlet, PowerNode, Site,
};
use crate::policy::{AgentSettings, GpuReserve, Policy};
use crate::profile::{self, Profile, Role};
use crate::raw::{
    GpuSource, RackKind, RawConfig, RawMeterRef, RawMiner, RawRating, Redundancy, Transport,
};

/// One problem: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

#[derive(Default)]
struct Errors(Vec<Issue>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn positive(errs: &mut Errors, path: &str, v: f64) -> bool {
    if v.is_finite() && v > 0.0 {
        true
    } else {
        errs.push(path, format!("must be a positive number, got {v}"));
        false
    }
}

/// Resolves a rating to kW. `None` when absent or invalid (the error is recorded).
fn rating_kw(errs: &mut Errors, path: &str, r: &RawRating, required: bool) -> Option<f64> {
    match (r.rating_kw, r.rating_a) {
        (Some(_), Some(_)) => {
            errs.push(
                format!("{path}.rating_a"),
                "give either rating_kw or rating_a with voltage_v, not both",
            );
            None
        }
        (Some(kw), None) => positive(errs, &format!("{path}.rating_kw"), kw).then_some(kw),
        (None, Some(a)) => {
            let ok_a = positive(errs, &format!("{path}.rating_a"), a);
            let Some(v) = r.voltage_v else {
                errs.push(
                    format!("{path}.voltage_v"),
                    "rating_a needs voltage_v (line-to-line for three phases)",
                );
                return None;
            };
            let ok_v = positive(errs, &format!("{path}.voltage_v"), v);
            let phases = r.phases.unwrap_or(3);
            let phase_factor = match phases {
                1 => 1.0,
                3 => 3f64.sqrt(),
                other => {
                    errs.push(
                        format!("{path}.phases"),
                        format!("phases must be 1 or 3, got {other}"),
                    );
                    return None;
                }
            };
            let pf = r.power_factor.unwrap_or(1.0);
            if !(pf > 0.0 && pf <= 1.0) {
                errs.push(
                    format!("{path}.power_factor"),
                    format!("power_factor must be in (0, 1], got {pf}"),
                );
                return None;
            }
            (ok_a && ok_v).then(|| a * v * phase_factor * pf / 1000.0)
        }
        (None, None) => {
            if required {
                errs.push(
                    format!("{path}.rating_kw"),
                    "a breaker rating is required: rating_kw, or rating_a with voltage_v",
                );
            }
            None
        }
    }
}

/// Parses `host` or `host:port`, `[v6]:port` included.
fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok((s.to_owned(), default_port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p
                .parse()
                .map_err(|_| format!("`{s}`: port `{p}` is not a number in 1..65535"))?;
            if port == 0 || h.is_empty() {
                return Err(format!("`{s}`: expected host:port with port in 1..65535"));
            }
            Ok((h.to_owned(), port))
        }
        None if !s.is_empty() && !s.contains(char::is_whitespace) => {
            Ok((s.to_owned(), default_port))
        }
        None => Err(format!("`{s}` is not a host or host:port")),
    }
}

fn port16(errs: &mut Errors, path: &str, p: u32) -> Option<u16> {
    match u16::try_from(p) {
        Ok(v) if v > 0 => Some(v),
        _ => {
            errs.push(path, format!("port must be in 1..65535, got {p}"));
            None
        }
    }
}

struct IdTable {
    first: HashMap<String, String>,
}

impl IdTable {
    fn add(&mut self, errs: &mut Errors, id: &str, path: String) {
        if id.is_empty() || id.contains(char::is_whitespace) {
            errs.push(path, format!("id `{id}` must be non-empty without spaces"));
            return;
        }
        if let Some(first) = self.first.get(id) {
            errs.push(
                path,
                format!("duplicate id `{id}` (first defined at {first})"),
            );
        } else {
            self.first.insert(id.to_owned(), path);
        }
    }
}

/// A node's never-trip ceiling H: `fraction x rating` (the fraction already derated),
/// never below its budget B (a 100%-rated assembly's B is its rating: H = B, no trough
/// headroom above it).
fn ceiling_of(rating_kw: f64, budget_kw: f64, fraction: f64) -> f64 {
    (rating_kw * fraction).max(budget_kw)
}

/// Checks the policy's own consistency.
fn check_policy(errs: &mut Errors, p: &Policy) {
    let fr = [
        ("restore_fraction", p.restore_fraction),
        ("shed_target_fraction", p.shed_target_fraction),
        ("shed_fraction", p.shed_fraction),
    ];
    for (name, v) in fr {
        if !(v.is_finite() && v > 0.0 && v <= 1.5) {
            errs.push(
                format!("policy.{name}"),
                format!("must be a fraction of the budget in (0, 1.5], got {v}"),
            );
        }
    }
    if !(p.emergency_fraction.is_finite()
        && p.emergency_fraction >= 0.5
        && p.emergency_fraction <= 1.0)
    {
        errs.push(
            "policy.emergency_fraction",
            format!(
                "must be a fraction of the ceiling H in [0.5, 1], got {}",
                p.emergency_fraction
            ),
        );
    }
    if !(p.ceiling_fraction.is_finite() && p.ceiling_fraction >= 0.8 && p.ceiling_fraction <= 1.0) {
        errs.push(
            "policy.ceiling_fraction",
            format!(
                "must be a fraction of the breaker rating in [0.8, 1], got {}",
                p.ceiling_fraction
            ),
        );
    }
    if !(p.restore_fraction <= p.shed_target_fraction && p.shed_target_fraction < p.shed_fraction) {
        errs.push(
            "policy.shed_target_fraction",
            format!(
                "thresholds out of order: need restore_fraction ({}) <= shed_target_fraction ({}) < shed_fraction ({})",
                p.restore_fraction, p.shed_target_fraction, p.shed_fraction
            ),
        );
    }
    if !(1..=600).contains(&p.fast_shed_s) {
        errs.push(
            "policy.fast_shed_s",
            format!("must be in [1, 600] s, got {}", p.fast_shed_s),
        );
    }
    if !(5..=3_600).contains(&p.excursion_max_s) {
        errs.push(
            "policy.excursion_max_s",
            format!("must be in [5, 3600] s, got {}", p.excursion_max_s),
        );
    }
    if !(60..=86_400).contains(&p.reserve_window_s) {
        errs.push(
            "policy.reserve_window_s",
            format!("must be in [60, 86400] s, got {}", p.reserve_window_s),
        );
    }
    if !(p.restore_step_fraction > 0.0 && p.restore_step_fraction <= 0.5) {
        errs.push(
            "policy.restore_step_fraction",
            format!("must be in (0, 0.5], got {}", p.restore_step_fraction),
        );
    }
    if !(p.shed_margin_fraction >= 0.0 && p.shed_margin_fraction <= 0.2) {
        errs.push(
            "policy.shed_margin_fraction",
            format!("must be in [0, 0.2], got {}", p.shed_margin_fraction),
        );
    }
    if !(p.target_decrease_factor > 0.0 && p.target_decrease_factor < 1.0) {
        errs.push(
            "policy.target_decrease_factor",
            format!("must be in (0, 1), got {}", p.target_decrease_factor),
        );
    }
    if !(p.cooling_margin >= 0.0 && p.cooling_margin <= 1.0) {
        errs.push(
            "policy.cooling_margin",
            format!("must be in [0, 1], got {}", p.cooling_margin),
        );
    }
    let nonzero = [
        ("fast_loop_ms", p.fast_loop_ms),
        ("slow_loop_ms", p.slow_loop_ms),
        ("restore_step_interval_s", p.restore_step_interval_s),
        ("confirm_timeout_s", p.confirm_timeout_s),
        ("meter_poll_ms", p.meter_poll_ms),
        ("gpu_power_poll_ms", p.gpu_power_poll_ms),
        ("gpu_limit_poll_ms", p.gpu_limit_poll_ms),
        ("miner_poll_ms", p.miner_poll_ms),
        ("cooling_poll_ms", p.cooling_poll_ms),
    ];
    for (name, v) in nonzero {
        if v == 0 {
            errs.push(format!("policy.{name}"), "must be greater than zero");
        }
    }
    if p.slow_loop_ms < p.fast_loop_ms {
        errs.push(
            "policy.slow_loop_ms",
            format!(
                "slow loop ({} ms) must not run faster than the fast loop ({} ms)",
                p.slow_loop_ms, p.fast_loop_ms
            ),
        );
    }
    let stale = [
        ("meter_stale_ms", p.meter_stale_ms, p.meter_poll_ms),
        (
            "gpu_power_stale_ms",
            p.gpu_power_stale_ms,
            p.gpu_power_poll_ms,
        ),
        (
            "gpu_limit_stale_ms",
            p.gpu_limit_stale_ms,
            p.gpu_limit_poll_ms,
        ),
        ("miner_stale_ms", p.miner_stale_ms, p.miner_poll_ms),
        ("cooling_stale_ms", p.cooling_stale_ms, p.cooling_poll_ms),
    ];
    for (name, st, poll) in stale {
        if st <= poll {
            errs.push(
                format!("policy.{name}"),
                format!("stale limit ({st} ms) must exceed its poll interval ({poll} ms)"),
            );
        }
    }
}

fn load_profile(
    cache: &mut HashMap<String, Option<Profile>>,
    errs: &mut Errors,
    path: &str,
    builtin: Option<&str>,
    file: Option<&str>,
    base: &Path,
) -> Option<Profile> {
    match (builtin, file) {
        (Some(_), Some(_)) => {
            errs.push(
                format!("{path}.profile_file"),
                "give either profile (built-in name) or profile_file, not both",
            );
            None
        }
        (None, None) => {
            errs.push(
                format!("{path}.profile"),
                format!(
                    "a register map is required: profile = one of {}, or profile_file",
                    profile::builtin_names().collect::<Vec<_>>().join(", ")
                ),
            );
            None
        }
        (Some(name), None) => {
            // Thousands of devices share a few built-in maps: parse each once.
            let p = cache
                .entry(name.to_owned())
                .or_insert_with(|| profile::builtin(name))
                .clone();
            if p.is_none() {
                errs.push(
                    format!("{path}.profile"),
                    format!(
                        "unknown profile `{name}` (built-in: {})",
                        profile::builtin_names().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
            p
        }
        (None, Some(f)) => {
            let full = base.join(f);
            let text = match std::fs::read_to_string(&full) {
                Ok(t) => t,
                Err(e) => {
                    errs.push(
                        format!("{path}.profile_file"),
                        format!("cannot read profile `{f}`: {e}"),
                    );
                    return None;
                }
            };
            let p = match Profile::from_toml(&text) {
                Ok(p) => p,
                Err(e) => {
                    errs.push(
                        format!("{path}.profile_file"),
                        format!("profile `{f}`: {}", e.message()),
                    );
                    return None;
                }
            };
            let problems = p.check();
            for (ppath, msg) in &problems {
                errs.push(
                    format!("{path}.profile_file"),
                    format!("profile `{f}`: {ppath}: {msg}"),
                );
            }
            problems.is_empty().then_some(p)
        }
    }
}

fn unit_id(errs: &mut Errors, path: &str, t: Transport, v: Option<u32>) -> u8 {
    let v = v.unwrap_or(1);
    let (lo, hi) = match t {
        // Modbus TCP addresses the device by IP; the unit id passes through (0..=255).
        Transport::Tcp => (0, 255),
        // On a serial bus 0 is broadcast and 248..=255 are reserved.
        Transport::Rtu | Transport::RtuOverTcp => (1, 247),
    };
    if v < lo || v > hi {
        errs.push(
            format!("{path}.unit_id"),
            format!("unit id {v} out of range {lo}..={hi} for {t:?}"),
        );
        return 1;
    }
    u8::try_from(v).unwrap_or(1)
}

/// Validates a raw config. `base` is the directory relative paths resolve against.
pub fn validate(raw: &RawConfig, base: &Path) -> Result<Site, Vec<Issue>> {
    let mut errs = Errors::default();
    check_policy(&mut errs, &raw.policy);
    check_agent(&mut errs, &raw.agent);

    // Expand miner groups first so their ids join the table.
    let miners_raw = expand_groups(&mut errs, raw);
    register_ids(&mut errs, raw, &miners_raw);

    // Devices first: meters refer to them.
    let mut broken = HashSet::new();
    let devices = build_devices(&mut errs, raw, base, &mut broken);
    let device_idx: HashMap<&str, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    let known = KnownDevices {
        all: &devices,
        idx: &device_idx,
        broken: &broken,
    };

    let derate = site_derate(&mut errs, raw);
    let (nodes, node_idx) = build_power_tree(&mut errs, raw, &known, derate);

    let zones = build_zones(&mut errs, raw, &node_idx, &device_idx, &devices, &broken);
    let mut miners = build_miners(&mut errs, &miners_raw, &nodes, &node_idx, &known);
    resolve_password_files(&mut errs, &mut miners, base);
    let gpu_nodes = build_gpu_nodes(&mut errs, raw, &nodes, &node_idx, base);

    let ha = raw
        .ha
        .as_ref()
        .and_then(|h| check_ha(&mut errs, h, &raw.site.id, base));
    let tenants = build_tenants(&mut errs, raw, &nodes, &node_idx);
    let alerts = raw
        .alerts
        .as_ref()
        .and_then(|a| check_alerts(&mut errs, a, base));
    let grid = raw
        .grid
        .as_ref()
        .map(|g| check_grid(&mut errs, g, &raw.site.id, base))
        .unwrap_or_default();

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    let mut site = Site::new(
        raw.site.id.clone(),
        raw.site.name.clone(),
        derate,
        nodes,
        zones,
        devices,
        miners,
        gpu_nodes,
        raw.policy.clone(),
        raw.agent.clone(),
    );
    site.ha = ha;
    site.tenants = tenants;
    site.alerts = alerts;
    site.grid = grid;
    Ok(site)
}

/// `[agent]`: the HTTP listen address and the journal retention.
fn check_agent(errs: &mut Errors, agent: &AgentSettings) {
    if agent.http_listen.parse::<SocketAddr>().is_err() {
        errs.push(
            "agent.http_listen",
            format!("`{}` is not an ip:port socket address", agent.http_listen),
        );
    }

    if agent.journal_retention_days == 0 {
        errs.push(
            "agent.journal_retention_days",
            "must be at least 1 (days of journal kept in the database)".to_owned(),
        );
    }
}

/// Registers every id (site, feeds, rows, racks, cooling zones and units, Modbus devices,
/// miners, GPU nodes) in one table: ids are unique across the whole file.
fn register_ids(errs: &mut Errors, raw: &RawConfig, miners_raw: &[(RawMiner, String)]) {
    let mut ids = IdTable {
        first: HashMap::new(),
    };
    ids.add(errs, &raw.site.id, "site.id".into());
    for (i, f) in raw.feeds.iter().enumerate() {
        ids.add(errs, &f.id, format!("feeds[{i}].id"));
    }
    for (i, r) in raw.rows.iter().enumerate() {
        ids.add(errs, &r.id, format!("rows[{i}].id"));
    }
    for (i, r) in raw.racks.iter().enumerate() {
        ids.add(errs, &r.id, format!("racks[{i}].id"));
    }
    for (i, z) in raw.cooling_zones.iter().enumerate() {
        ids.add(errs, &z.id, format!("cooling_zones[{i}].id"));
        for (j, u) in z.units.iter().enumerate() {
            ids.add(errs, &u.id, format!("cooling_zones[{i}].units[{j}].id"));
        }
    }
    for (i, d) in raw.modbus_devices.iter().enumerate() {
        ids.add(errs, &d.id, format!("modbus_devices[{i}].id"));
    }
    for (m, path) in miners_raw {
        ids.add(errs, &m.id, format!("{path}.id"));
    }
    for (i, g) in raw.gpu_nodes.iter().enumerate() {
        ids.add(errs, &g.id, format!("gpu_nodes[{i}].id"));
    }
}

/// `site.derate`: in (0, 1], 1.0 when absent or invalid (the error is recorded).
fn site_derate(errs: &mut Errors, raw: &RawConfig) -> f64 {
    let derate = raw.site.derate.unwrap_or(1.0);
    if !(derate > 0.0 && derate <= 1.0) {
        errs.push("site.derate", format!("must be in (0, 1], got {derate}"));
    }
    if derate > 0.0 && derate <= 1.0 {
        derate
    } else {
        1.0
    }
}

/// The Modbus devices built so far, by index and id, and the ids of those that failed
/// to build (references to them are not reported again).
struct KnownDevices<'a> {
    all: &'a [ModbusDevice],
    idx: &'a HashMap<&'a str, usize>,
    broken: &'a HashSet<String>,
}

impl KnownDevices<'_> {
    /// Resolves a node's `meters`: each names a known device and one of its points.
    fn meter_refs(&self, errs: &mut Errors, path: &str, ms: &[RawMeterRef]) -> Vec<MeterRef> {
        let mut out = Vec::new();
        for (k, m) in ms.iter().enumerate() {
            let mpath = format!("{path}.meters[{k}]");
            let Some(&d) = self.idx.get(m.device.as_str()) else {
                if self.broken.contains(&m.device) {
                    continue;
                }
                errs.push(
                    format!("{mpath}.device"),
                    format!("unknown Modbus device `{}`", m.device),
                );
                continue;
            };
            if self.all[d].profile.point(&m.point).is_none() {
                errs.push(
                    format!("{mpath}.point"),
                    format!(
                        "device `{}` (profile `{}`) has no point or role `{}`",
                        m.device, self.all[d].profile.name, m.point
                    ),
                );
                continue;
            }
            out.push(MeterRef {
                device: d,
                point: m.point.clone(),
            });
        }
        out
    }
}

/// A feed, row or rack as written, before it becomes a [`PowerNode`].
struct NodeSpec<'a> {
    path: String,
    id: &'a str,
    kind: NodeKind,
    rating: RawRating,
    budget: Option<f64>,
    rated_100: bool,
    rated_max_kw: Option<f64>,
    reserve: Option<GpuReserve>,
    meters: Vec<MeterRef>,
}

/// The power-node tree under construction: site, feeds, rows, racks in that order.
struct PowerTree {
    nodes: Vec<PowerNode>,
    /// Each node's field path (`racks[5]`).
    node_paths: Vec<String>,
    /// Whether each node's budget was written (`budget_kw`) rather than derived.
    explicit_budget: Vec<bool>,
    feed_range: Range<NodeIdx>,
    row_range: Range<NodeIdx>,
    derate: f64,
}

/// Builds the power-node tree (site, feeds, rows, racks) and checks it: parents, A/B
/// pairs, cycles, budgets against ratings. Returns the nodes and their index by id.
fn build_power_tree(
    errs: &mut Errors,
    raw: &RawConfig,
    known: &KnownDevices,
    derate: f64,
) -> (Vec<PowerNode>, HashMap<String, NodeIdx>) {
    let feed_range = 1..1 + raw.feeds.len();
    let row_range = feed_range.end..feed_range.end + raw.rows.len();
    let mut tree = PowerTree {
        nodes: Vec::new(),
        node_paths: Vec::new(),
        explicit_budget: Vec::new(),
        feed_range,
        row_range,
        derate,
    };
    let site_rating = tree.push_site(errs, raw, known);
    tree.push_feeds_rows_racks(errs, raw, known);
    let node_idx: HashMap<String, NodeIdx> = tree
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), i))
        .collect();

    tree.link_feeds(errs, raw, &node_idx);
    tree.link_rows(errs, raw, &node_idx);
    let in_cycle = tree.row_cycles(errs, raw);
    tree.link_racks(errs, raw, &node_idx);
    tree.check_rack_pairs(errs, raw);
    tree.link_children(&in_cycle);
    tree.check_budgets_fit_parents(errs);
    tree.site_from_feeds(errs, raw, site_rating);
    if raw.feeds.is_empty() {
        errs.push("feeds", "the site needs at least one feed");
    }
    (tree.nodes, node_idx)
}

impl PowerTree {
    /// Pushes the site node; returns its own rating (`None` when absent or invalid).
    fn push_site(
        &mut self,
        errs: &mut Errors,
        raw: &RawConfig,
        known: &KnownDevices,
    ) -> Option<f64> {
        let site_rating = rating_kw(errs, "site", &raw.site.rating(), false);
        self.nodes.push(PowerNode {
            id: raw.site.id.clone(),
            kind: NodeKind::Site,
            parents: vec![],
            children: vec![],
            rating_kw: site_rating.unwrap_or(0.0),
            budget_kw: 0.0,
            ceiling_kw: 0.0,
            rated_100: raw.site.rated_100,
            rated_max_kw: None,
            reserve: raw.policy.gpu_reserve,
            meters: known.meter_refs(errs, "site", &raw.site.meters),
            pair: None,
        });
        self.node_paths.push("site".into());
        self.explicit_budget.push(raw.site.budget_kw.is_some());
        site_rating
    }

    /// Pushes a feed, row or rack node: its rating, its budget (written, or derived from
    /// the rating) and its ceiling.
    fn push_node(&mut self, errs: &mut Errors, policy: &Policy, n: NodeSpec) {
        let path = n.path;
        let r = rating_kw(errs, &path, &n.rating, true);
        let mut b = None;
        if let Some(bk) = n.budget {
            if positive(errs, &format!("{path}.budget_kw"), bk) {
                if let Some(r) = r {
                    if bk > r {
                        errs.push(
                            format!("{path}.budget_kw"),
                            format!("budget {bk} kW exceeds the node's own rating {r:.1} kW"),
                        );
                    }
                }
                b = Some(bk);
            }
        }
        let rating = r.unwrap_or(0.0);
        let derate = self.derate;
        let budget_kw = b.unwrap_or(rating * if n.rated_100 { 1.0 } else { 0.8 } * derate);
        self.nodes.push(PowerNode {
            id: n.id.to_owned(),
            kind: n.kind,
            parents: vec![],
            children: vec![],
            rating_kw: rating,
            budget_kw,
            ceiling_kw: ceiling_of(rating, budget_kw, policy.ceiling_fraction * derate),
            rated_100: n.rated_100,
            rated_max_kw: n.rated_max_kw,
            reserve: n.reserve.unwrap_or(policy.gpu_reserve),
            meters: n.meters,
            pair: None,
        });
        self.node_paths.push(path);
        self.explicit_budget.push(n.budget.is_some());
    }

    /// Pushes the feeds, rows and racks in that order, with each rack's own checks
    /// (`rated_max_kw`, `reserve`).
    fn push_feeds_rows_racks(&mut self, errs: &mut Errors, raw: &RawConfig, known: &KnownDevices) {
        for (i, f) in raw.feeds.iter().enumerate() {
            let path = format!("feeds[{i}]");
            let meters = known.meter_refs(errs, &path, &f.meters);
            let spec = NodeSpec {
                path,
                id: &f.id,
                kind: NodeKind::Feed,
                rating: f.rating(),
                budget: f.budget_kw,
                rated_100: f.rated_100,
                rated_max_kw: None,
                reserve: None,
                meters,
            };
            self.push_node(errs, &raw.policy, spec);
        }
        for (i, r) in raw.rows.iter().enumerate() {
            let path = format!("rows[{i}]");
            let meters = known.meter_refs(errs, &path, &r.meters);
            let spec = NodeSpec {
                path,
                id: &r.id,
                kind: NodeKind::Row,
                rating: r.rating(),
                budget: r.budget_kw,
                rated_100: r.rated_100,
                rated_max_kw: None,
                reserve: None,
                meters,
            };
            self.push_node(errs, &raw.policy, spec);
        }
        for (i, r) in raw.racks.iter().enumerate() {
            let path = format!("racks[{i}]");
            let meters = known.meter_refs(errs, &path, &r.meters);
            let rated_max = match (r.kind, r.rated_max_kw) {
                (RackKind::Gpu | RackKind::Mixed, None) => {
                    errs.push(
                        format!("{path}.rated_max_kw"),
                        "GPU and mixed racks need rated_max_kw (reserved while NVML is absent)",
                    );
                    None
                }
                (_, Some(v)) => positive(errs, &format!("{path}.rated_max_kw"), v).then_some(v),
                (RackKind::Mining, None) => None,
            };
            if r.kind == RackKind::Mining && r.reserve.is_some() {
                errs.push(
                    format!("{path}.reserve"),
                    "only GPU and mixed racks have a GPU reserve to set",
                );
            }
            let spec = NodeSpec {
                path,
                id: &r.id,
                kind: NodeKind::Rack(r.kind),
                rating: r.rating(),
                budget: r.budget_kw,
                rated_100: r.rated_100,
                rated_max_kw: rated_max,
                reserve: r.reserve,
                meters,
            };
            self.push_node(errs, &raw.policy, spec);
        }
    }

    /// Feeds hang from the site; pairs.
    fn link_feeds(
        &mut self,
        errs: &mut Errors,
        raw: &RawConfig,
        node_idx: &HashMap<String, NodeIdx>,
    ) {
        let nodes = &mut self.nodes;
        for (i, f) in raw.feeds.iter().enumerate() {
            let me = 1 + i;
            nodes[me].parents = vec![0];
            if f.parent.is_some() {
                errs.push(
                    format!("feeds[{i}].parent"),
                    "feeds hang from the site; parent is for rows",
                );
            }
            if let Some(p) = &f.pair {
                match node_idx.get(p) {
                    Some(&j) if self.feed_range.contains(&j) && j != me => {
                        if let Some(prev) = nodes[j].pair.filter(|&x| x != me) {
                            errs.push(
                                format!("feeds[{i}].pair"),
                                format!("feed `{p}` is already paired with `{}`", nodes[prev].id),
                            );
                        } else {
                            nodes[me].pair = Some(j);
                            nodes[j].pair = Some(me);
                        }
                    }
                    Some(_) => errs.push(
                        format!("feeds[{i}].pair"),
                        format!("`{p}` is not another feed"),
                    ),
                    None => errs.push(format!("feeds[{i}].pair"), format!("unknown feed `{p}`")),
                }
            }
        }
    }

    /// Rows hang from a feed or another row.
    fn link_rows(
        &mut self,
        errs: &mut Errors,
        raw: &RawConfig,
        node_idx: &HashMap<String, NodeIdx>,
    ) {
        let (feed_range, row_range) = (&self.feed_range, &self.row_range);
        for (i, r) in raw.rows.iter().enumerate() {
            let me = row_range.start + i;
            if r.pair.is_some() {
                errs.push(format!("rows[{i}].pair"), "only feeds form A/B pairs");
            }
            match &r.parent {
                None => errs.push(
                    format!("rows[{i}].parent"),
                    "a row needs a parent feed or row",
                ),
                Some(p) => match node_idx.get(p) {
                    Some(&j) if feed_range.contains(&j) || row_range.contains(&j) => {
                        self.nodes[me].parents = vec![j];
                    }
                    Some(_) => errs.push(
                        format!("rows[{i}].parent"),
                        format!("`{p}` is not a feed or row"),
                    ),
                    None => errs.push(format!("rows[{i}].parent"), format!("unknown id `{p}`")),
                },
            }
        }
    }

    /// Cycles among rows: follow parents; a chain that never reaches a feed is a loop.
    /// Returns, per node, whether it is a row on a cycle.
    fn row_cycles(&self, errs: &mut Errors, raw: &RawConfig) -> Vec<bool> {
        let (nodes, row_range) = (&self.nodes, &self.row_range);
        let mut in_cycle = vec![false; nodes.len()];
        for i in 0..raw.rows.len() {
            let start = row_range.start + i;
            let mut seen = HashSet::new();
            let mut cur = start;
            while row_range.contains(&cur) {
                if !seen.insert(cur) {
                    if cur == start {
                        errs.push(
                            format!("rows[{i}].parent"),
                            format!("cycle in the power tree through `{}`", nodes[start].id),
                        );
                        in_cycle[start] = true;
                    }
                    break;
                }
                match nodes[cur].parents.first() {
                    Some(&p) => cur = p,
                    None => break,
                }
            }
        }
        in_cycle
    }

    /// Racks hang from one row or feed, or two on an A/B feed pair.
    fn link_racks(
        &mut self,
        errs: &mut Errors,
        raw: &RawConfig,
        node_idx: &HashMap<String, NodeIdx>,
    ) {
        let (feed_range, row_range) = (&self.feed_range, &self.row_range);
        for (i, r) in raw.racks.iter().enumerate() {
            let me = row_range.end + i;
            let path = format!("racks[{i}].parents");
            if r.parents.is_empty() {
                errs.push(
                    path.clone(),
                    "the rack is in no feed: parents names no row or feed",
                );
            }
            if r.parents.len() > 2 {
                errs.push(
                    path.clone(),
                    "a rack hangs from one row, or two on an A/B feed pair",
                );
            }
            let mut ps = Vec::new();
            for p in &r.parents {
                match node_idx.get(p) {
                    Some(&j) if feed_range.contains(&j) || row_range.contains(&j) => {
                        if ps.contains(&j) {
                            errs.push(path.clone(), format!("`{p}` listed twice"));
                        } else {
                            ps.push(j);
                        }
                    }
                    Some(_) => errs.push(path.clone(), format!("`{p}` is not a feed or row")),
                    None => errs.push(path.clone(), format!("unknown id `{p}`")),
                }
            }
            self.nodes[me].parents = ps;
        }
    }

    /// The feed a node hangs from, following first parents; `None` when the chain ends or
    /// loops before reaching a feed.
    fn feed_of(&self, mut n: NodeIdx) -> Option<NodeIdx> {
        for _ in 0..self.nodes.len() {
            if self.feed_range.contains(&n) {
                return Some(n);
            }
            n = *self.nodes[n].parents.first()?;
        }
        None
    }

    /// A rack with two parents hangs from both feeds of one A/B pair.
    fn check_rack_pairs(&self, errs: &mut Errors, raw: &RawConfig) {
        let nodes = &self.nodes;
        for (i, _) in raw.racks.iter().enumerate() {
            let me = self.row_range.end + i;
            if nodes[me].parents.len() == 2 {
                let a = self.feed_of(nodes[me].parents[0]);
                let b = self.feed_of(nodes[me].parents[1]);
                if let (Some(a), Some(b)) = (a, b) {
                    if a == b || nodes[a].pair != Some(b) {
                        errs.push(
                            format!("racks[{i}].parents"),
                            format!(
                                "the rack hangs from two trees: feeds `{}` and `{}` are not an A/B pair",
                                nodes[a].id, nodes[b].id
                            ),
                        );
                    }
                }
            }
        }
    }

    /// Children lists.
    fn link_children(&mut self, in_cycle: &[bool]) {
        let nodes = &mut self.nodes;
        for i in 1..nodes.len() {
            if in_cycle[i] {
                continue;
            }
            for p in nodes[i].parents.clone() {
                nodes[p].children.push(i);
            }
        }
    }

    /// A child's budget must fit its parent's rating.
    fn check_budgets_fit_parents(&self, errs: &mut Errors) {
        let nodes = &self.nodes;
        for i in 1..nodes.len() {
            for &p in &nodes[i].parents {
                let (pb, cb) = (nodes[p].rating_kw, nodes[i].budget_kw);
                if p != 0 && pb > 0.0 && cb > pb + 1e-9 {
                    let field = if self.explicit_budget[i] {
                        "budget_kw"
                    } else {
                        "rating_kw"
                    };
                    errs.push(
                        format!("{}.{field}", self.node_paths[i]),
                        format!(
                            "budget {cb:.1} kW exceeds the rating {pb:.1} kW of parent `{}`",
                            nodes[p].id
                        ),
                    );
                }
            }
        }
    }

    /// The site's rating, budget and ceiling: its own, or from its feeds.
    fn site_from_feeds(&mut self, errs: &mut Errors, raw: &RawConfig, site_rating: Option<f64>) {
        let (nodes, feed_range, derate) = (&mut self.nodes, &self.feed_range, self.derate);
        let ceiling_fraction = raw.policy.ceiling_fraction;
        // The site: its rating, or the sum of its feeds with each A/B pair counted once.
        if site_rating.is_none() {
            let mut total = 0.0;
            for f in feed_range.clone() {
                match nodes[f].pair {
                    Some(o) if o < f => {}
                    Some(o) => total += nodes[f].rating_kw.min(nodes[o].rating_kw),
                    None => total += nodes[f].rating_kw,
                }
            }
            nodes[0].rating_kw = total;
        }
        nodes[0].budget_kw = match raw.site.budget_kw {
            Some(b) => {
                if positive(errs, "site.budget_kw", b) && site_rating.is_some_and(|r| b > r) {
                    errs.push("site.budget_kw", "budget exceeds the site's rating");
                }
                b
            }
            None if site_rating.is_some() => {
                nodes[0].rating_kw * if raw.site.rated_100 { 1.0 } else { 0.8 } * derate
            }
            None => {
                let mut total = 0.0;
                for f in feed_range.clone() {
                    match nodes[f].pair {
                        Some(o) if o < f => {}
                        Some(o) => total += nodes[f].budget_kw.min(nodes[o].budget_kw),
                        None => total += nodes[f].budget_kw,
                    }
                }
                total
            }
        };
        nodes[0].ceiling_kw = if site_rating.is_some() {
            ceiling_of(
                nodes[0].rating_kw,
                nodes[0].budget_kw,
                ceiling_fraction * derate,
            )
        } else {
            // The sum of its feeds' ceilings, each A/B pair counted once.
            let mut total = 0.0;
            for f in feed_range.clone() {
                match nodes[f].pair {
                    Some(o) if o < f => {}
                    Some(o) => total += nodes[f].ceiling_kw.min(nodes[o].ceiling_kw),
                    None => total += nodes[f].ceiling_kw,
                }
            }
            total.max(nodes[0].budget_kw)
        };
    }
}

/// `[[tenants]]`: unique ids (not the site's own `mining` account), racks that exist and
/// are GPU or mixed racks, each rack held by at most one tenant.
fn build_tenants(
    errs: &mut Errors,
    raw: &RawConfig,
    nodes: &[PowerNode],
    node_idx: &HashMap<String, NodeIdx>,
) -> Vec<crate::Tenant> {
    let mut out = Vec::new();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut holder: HashMap<NodeIdx, &str> = HashMap::new();
    for (i, t) in raw.tenants.iter().enumerate() {
        let path = format!("tenants[{i}]");
        if t.id.trim().is_empty() {
            errs.push(format!("{path}.id"), "must not be empty");
        } else if [crate::MINING_ACCOUNT, "site", "unassigned"].contains(&t.id.as_str()) {
            errs.push(
                format!("{path}.id"),
                format!("`{}` is one of the site's own accounts (`mining`, `site`, `unassigned`); give the tenant another id", t.id),
            );
        } else if let Some(j) = ids.insert(&t.id, i) {
            errs.push(
                format!("{path}.id"),
                format!("duplicate tenant id `{}` (also tenants[{j}])", t.id),
            );
        }
        if t.racks.is_empty() {
            errs.push(format!("{path}.racks"), "a tenant needs at least one rack");
        }
        let mut racks = Vec::new();
        for (k, r) in t.racks.iter().enumerate() {
            let rpath = format!("{path}.racks[{k}]");
            let Some(&n) = node_idx.get(r.as_str()) else {
                errs.push(rpath, format!("no rack `{r}`"));
                continue;
            };
            match nodes[n].rack_kind() {
                None => errs.push(
                    rpath,
                    format!("`{r}` is a {}, not a rack", nodes[n].kind.name()),
                ),
                Some(RackKind::Mining) => errs.push(
                    rpath,
                    format!(
                        "`{r}` is a mining rack: mining racks are the site's own `mining` account"
                    ),
                ),
                Some(_) => {
                    if let Some(other) = holder.insert(n, &t.id) {
                        errs.push(
                            rpath,
                            format!("rack `{r}` already belongs to tenant `{other}`: a rack belongs to at most one tenant"),
                        );
                    } else {
                        racks.push(n);
                    }
                }
            }
        }
        out.push(crate::Tenant {
            id: t.id.clone(),
            name: t.name.clone().unwrap_or_else(|| t.id.clone()),
            racks,
        });
    }
    out
}

/// An `http://` URL with a host (and no whitespace): the URL with any trailing slash
/// removed, or why not. The agent's HTTP client is built without TLS: `https://` is
/// refused here rather than failing at every send.
fn http_url(url: &str) -> Result<String, String> {
    if url.starts_with("https://") {
        return Err(format!(
            "`{url}`: https is not supported (the agent is built without TLS): use http:// on the management network, or a local TLS-terminating proxy"
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || url.chars().any(char::is_whitespace) {
        return Err(format!("`{url}` has no host (http://host:port)"));
    }
    if host.contains('@') {
        // Shown in check-config and in every failure log line.
        return Err(
            "credentials in the URL would be logged with it: give the webhook a token file (webhook_token_file)"
                .to_owned(),
        );
    }
    // `host:port` or `[v6]:port`: a port, where given, is a number 1..=65535.
    let port = match host.rsplit_once(']') {
        Some((_, after)) => after.strip_prefix(':'),
        None => host.rsplit_once(':').map(|(_, p)| p),
    };
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("`{url}`: `{port}` is not a port"));
        }
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `[grid]`: fractions and prices in range; `[grid.openadr]` with a URL, a client id and
/// a secret file that can be read.
fn check_grid(
    errs: &mut Errors,
    g: &crate::raw::RawGrid,
    site_id: &str,
    base: &Path,
) -> crate::Grid {
    let d = crate::Grid::default();
    let margin_fraction = g.margin_fraction.unwrap_or(d.margin_fraction);
    if !(margin_fraction > 0.0 && margin_fraction <= 0.1) {
        errs.push(
            "grid.margin_fraction",
            format!("{margin_fraction} is outside (0, 0.1]: the fill line sits 3 margins under a target"),
        );
    }
    let hysteresis = g
        .price_hysteresis_fraction
        .unwrap_or(d.price_hysteresis_fraction);
    if !(0.0..0.5).contains(&hysteresis) {
        errs.push(
            "grid.price_hysteresis_fraction",
            format!("{hysteresis} is outside [0, 0.5)"),
        );
    }
    if let Some(h) = g.hashprice_usd_per_th_day {
        positive(errs, "grid.hashprice_usd_per_th_day", h);
    }
    let openadr = g.openadr.as_ref().and_then(|o| {
        let before = errs.0.len();
        let vtn_url = if let Some(rest) = o.vtn_url.strip_prefix("https://") {
            if rest
                .split(['/', '?', '#'])
                .next()
                .unwrap_or_default()
                .is_empty()
            {
                errs.push(
                    "grid.openadr.vtn_url",
                    format!("`{}` has no host", o.vtn_url),
                );
            }
            o.vtn_url.trim_end_matches('/').to_owned()
        } else {
            http_url(&o.vtn_url).unwrap_or_else(|e| {
                let e = if o.vtn_url.contains("://") {
                    e
                } else {
                    format!("`{}` is not an http:// or https:// URL", o.vtn_url)
                };
                errs.push("grid.openadr.vtn_url", e);
                String::new()
            })
        };
        if o.client_id.trim().is_empty() {
            errs.push("grid.openadr.client_id", "must not be empty");
        }
        let secret = resolve(base, &o.client_secret_file);
        match std::fs::read_to_string(&secret) {
            Ok(t) if t.trim().is_empty() => errs.push(
                "grid.openadr.client_secret_file",
                format!("{} is empty", secret.display()),
            ),
            Ok(_) => {}
            Err(e) => errs.push(
                "grid.openadr.client_secret_file",
                format!("cannot read {}: {e}", secret.display()),
            ),
        }
        let poll_interval_s = o.poll_interval_s.unwrap_or(10);
        if !(1..=3600).contains(&poll_interval_s) {
            errs.push(
                "grid.openadr.poll_interval_s",
                format!("{poll_interval_s} s is outside 1..=3600"),
            );
        }
        let report_interval_s = o.report_interval_s.unwrap_or(60);
        if !(1..=86_400).contains(&report_interval_s) {
            errs.push(
                "grid.openadr.report_interval_s",
                format!("{report_interval_s} s is outside 1..=86400"),
            );
        }
        (errs.0.len() == before).then(|| crate::OpenAdr {
            vtn_url,
            client_id: o.client_id.trim().to_owned(),
            client_secret_file: secret,
            ven_name: o.ven_name.clone().unwrap_or_else(|| site_id.to_owned()),
            programs: o.programs.clone(),
            poll_interval_s,
            report_interval_s,
        })
    });
    crate::Grid {
        allow_gpu_caps: g.allow_gpu_caps.unwrap_or(d.allow_gpu_caps),
        margin_fraction,
        hashprice_usd_per_th_day: g.hashprice_usd_per_th_day,
        price_hysteresis_fraction: hysteresis,
        openadr,
    }
}

/// `[alerts]`: at least one receiver, URLs that parse, a token file that can be read
/// (for the webhook only), figures within their ranges.
fn check_alerts(
    errs: &mut Errors,
    a: &crate::raw::RawAlerts,
    base: &Path,
) -> Option<crate::AlertDelivery> {
    let before = errs.0.len();
    if a.alertmanager_url.is_none() && a.webhook_url.is_none() {
        errs.push(
            "alerts",
            "no receiver: give alertmanager_url, webhook_url or both",
        );
    }
    let mut url = |key: &str, v: &Option<String>| -> Option<String> {
        let v = v.as_ref()?;
        match http_url(v) {
            Ok(u) if key == "alertmanager_url" && u.contains(['?', '#']) => {
                errs.push(
                    format!("alerts.{key}"),
                    format!("`{v}`: give Alertmanager's base URL (the agent adds /api/v2/alerts), without a query"),
                );
                None
            }
            Ok(u) => Some(u),
            Err(e) => {
                errs.push(format!("alerts.{key}"), e);
                None
            }
        }
    };
    let alertmanager_url = url("alertmanager_url", &a.alertmanager_url);
    let webhook_url = url("webhook_url", &a.webhook_url);
    let webhook_token_file = a.webhook_token_file.as_ref().and_then(|f| {
        if a.webhook_url.is_none() {
            errs.push(
                "alerts.webhook_token_file",
                "a webhook token without webhook_url: Alertmanager's API takes no token here",
            );
            return None;
        }
        let path = resolve(base, f);
        match std::fs::read_to_string(&path) {
            Ok(t) if t.trim().is_empty() => {
                errs.push(
                    "alerts.webhook_token_file",
                    format!("{} is empty", path.display()),
                );
                None
            }
            Ok(_) => Some(path),
            Err(e) => {
                errs.push(
                    "alerts.webhook_token_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    });
    let resend_interval_s = a.resend_interval_s.unwrap_or(60);
    if !(1..=3600).contains(&resend_interval_s) {
        errs.push(
            "alerts.resend_interval_s",
            format!("{resend_interval_s} s is outside 1..=3600"),
        );
    }
    let min_severity = match a.min_severity.as_deref().unwrap_or("warning") {
        "info" => crate::AlertLevel::Info,
        "warning" => crate::AlertLevel::Warning,
        "critical" => crate::AlertLevel::Critical,
        other => {
            errs.push(
                "alerts.min_severity",
                format!("`{other}` is not a severity (info, warning, critical)"),
            );
            crate::AlertLevel::Warning
        }
    };
    let queue_capacity = a.queue_capacity.unwrap_or(1024);
    if !(1..=1_000_000).contains(&queue_capacity) {
        errs.push(
            "alerts.queue_capacity",
            format!("{queue_capacity} is outside 1..=1000000"),
        );
    }
    let timeout_s = a.timeout_s.unwrap_or(5);
    if !(1..=60).contains(&timeout_s) {
        errs.push(
            "alerts.timeout_s",
            format!("{timeout_s} s is outside 1..=60"),
        );
    }
    (errs.0.len() == before).then_some(crate::AlertDelivery {
        alertmanager_url,
        webhook_url,
        webhook_token_file,
        resend_interval_s,
        min_severity,
        queue_capacity,
        timeout_s,
    })
}

/// `[ha]`: endpoints that parse as `http(s)://host:port` (or `host:port`), a lease TTL
/// long enough for the leader's own deadline to sit a second or more inside it.
fn check_ha(
    errs: &mut Errors,
    h: &crate::policy::HaSettings,
    site_id: &str,
    base: &Path,
) -> Option<crate::Ha> {
    let before = errs.0.len();
    if h.etcd_endpoints.is_empty() {
        errs.push(
            "ha.etcd_endpoints",
            "no etcd endpoint: give the client URLs of the site's etcd members".to_owned(),
        );
    }
    for (i, e) in h.etcd_endpoints.iter().enumerate() {
        let hostport = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e);
        let ok = hostport.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            errs.push(
                format!("ha.etcd_endpoints[{i}]"),
                format!("`{e}` is not an etcd client URL (http://host:port)"),
            );
        }
    }
    if !(3..=120).contains(&h.lease_ttl_s) {
        errs.push(
            "ha.lease_ttl_s",
            format!(
                "{} s is outside 3..=120 (the leader stops acting a third of it before the lease expires)",
                h.lease_ttl_s
            ),
        );
    }
    let node = match &h.node {
        Some(n) if n.trim().is_empty() || n.contains('/') => {
            errs.push(
                "ha.node",
                format!("`{n}` is not a node name (non-empty, no `/`)"),
            );
            String::new()
        }
        Some(n) => n.clone(),
        None => sysinfo::System::host_name().unwrap_or_default(),
    };
    if h.node.is_none() && node.is_empty() {
        errs.push(
            "ha.node",
            "the host name cannot be read: name this agent with `node`".to_owned(),
        );
    }
    let prefix = match &h.prefix {
        Some(p) if !p.starts_with('/') || p.len() < 2 => {
            errs.push("ha.prefix", format!("`{p}` must start with `/`"));
            String::new()
        }
        Some(p) => p.trim_end_matches('/').to_owned(),
        None => format!("/rackwarden/{site_id}"),
    };
    let (tls, auth) = check_ha_security(errs, h, base);
    (errs.0.len() == before).then(|| crate::Ha {
        etcd_endpoints: h.etcd_endpoints.clone(),
        node,
        prefix,
        lease_ttl_s: h.lease_ttl_s,
        tls,
        auth,
    })
}

/// `[ha]` TLS and etcd authentication: a CA for `https://` endpoints (and none for
/// `http://`), a client certificate with its key or neither, a user with a password
/// file or neither. Paths resolve against the site file's directory; the files are read
/// when the agent connects (an unreadable one is an error naming it).
fn check_ha_security(
    errs: &mut Errors,
    h: &crate::policy::HaSettings,
    base: &Path,
) -> (Option<crate::HaTls>, Option<crate::HaAuth>) {
    let https = h
        .etcd_endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https > 0 && https < h.etcd_endpoints.len() {
        errs.push(
            "ha.etcd_endpoints",
            "mixes http:// and https:// endpoints: one cluster speaks one of them".to_owned(),
        );
    }
    let tls_wanted = h.ca_file.is_some() || h.cert_file.is_some() || h.key_file.is_some();
    if https > 0 && h.ca_file.is_none() {
        errs.push(
            "ha.etcd_endpoints",
            "https:// endpoints need `ca_file`, the CA that signed etcd's certificates".to_owned(),
        );
    }
    if tls_wanted && https == 0 {
        let at = if h.ca_file.is_some() {
            "ha.ca_file"
        } else if h.cert_file.is_some() {
            "ha.cert_file"
        } else {
            "ha.key_file"
        };
        errs.push(
            at,
            "a TLS file is set but the endpoints are http://: write them as https://".to_owned(),
        );
    }
    let client = match (&h.cert_file, &h.key_file) {
        (Some(c), Some(k)) => Some((resolve(base, c), resolve(base, k))),
        (None, None) => None,
        (Some(_), None) => {
            errs.push(
                "ha.cert_file",
                "cert_file is set without its key_file".to_owned(),
            );
            None
        }
        (None, Some(_)) => {
            errs.push(
                "ha.key_file",
                "key_file is set without its cert_file".to_owned(),
            );
            None
        }
    };
    let tls = h.ca_file.as_ref().map(|ca| crate::HaTls {
        ca_file: resolve(base, ca),
        client,
    });
    let auth = match (&h.user, &h.password_file) {
        (Some(u), Some(p)) if !u.trim().is_empty() => Some(crate::HaAuth {
            user: u.clone(),
            password_file: resolve(base, p),
        }),
        (Some(u), Some(_)) => {
            errs.push("ha.user", format!("`{u}` is not an etcd user name"));
            None
        }
        (None, None) => None,
        (Some(_), None) => {
            errs.push(
                "ha.user",
                "user is set without its password_file".to_owned(),
            );
            None
        }
        (None, Some(_)) => {
            errs.push(
                "ha.password_file",
                "password_file is set without a user".to_owned(),
            );
            None
        }
    };
    (tls, auth)
}

fn build_devices(
    errs: &mut Errors,
    raw: &RawConfig,
    base: &Path,
    broken: &mut HashSet<String>,
) -> Vec<ModbusDevice> {
    let mut out = Vec::new();
    let mut cache = HashMap::new();
    for (i, d) in raw.modbus_devices.iter().enumerate() {
        let path = format!("modbus_devices[{i}]");
        let unit = unit_id(errs, &path, d.transport, d.unit_id);
        let tcp_addr = |errs: &mut Errors| -> String {
            let port = d
                .port
                .map_or(Some(502), |p| port16(errs, &format!("{path}.port"), p))
                .unwrap_or(502);
            match &d.host {
                Some(h) if !h.is_empty() => {
                    if h.contains(':') && h.parse::<std::net::Ipv6Addr>().is_ok() {
                        format!("[{h}]:{port}")
                    } else {
                        format!("{h}:{port}")
                    }
                }
                _ => {
                    errs.push(
                        format!("{path}.host"),
                        format!("{:?} transport needs host", d.transport),
                    );
                    String::new()
                }
            }
        };
        let link = match d.transport {
            Transport::Tcp => ModbusLink::Tcp {
                addr: tcp_addr(errs),
                unit_id: unit,
            },
            Transport::RtuOverTcp => ModbusLink::RtuOverTcp {
                addr: tcp_addr(errs),
                unit_id: unit,
            },
            Transport::Rtu => {
                if d.host.is_some() {
                    errs.push(
                        format!("{path}.host"),
                        "rtu is a serial line: use serial_path, or transport = \"rtu_over_tcp\" for a gateway",
                    );
                }
                let serial_path = d.serial_path.clone().unwrap_or_default();
                if serial_path.is_empty() {
                    errs.push(format!("{path}.serial_path"), "rtu needs serial_path");
                }
                let baud = d.baud.unwrap_or(9600);
                if !(300..=921_600).contains(&baud) {
                    errs.push(
                        format!("{path}.baud"),
                        format!("baud {baud} out of range 300..=921600"),
                    );
                }
                let data_bits = d.data_bits.unwrap_or(8);
                if !(7..=8).contains(&data_bits) {
                    errs.push(format!("{path}.data_bits"), "data_bits must be 7 or 8");
                }
                let stop_bits = d.stop_bits.unwrap_or(1);
                if !(1..=2).contains(&stop_bits) {
                    errs.push(format!("{path}.stop_bits"), "stop_bits must be 1 or 2");
                }
                ModbusLink::Rtu {
                    serial_path,
                    baud,
                    parity: d.parity,
                    data_bits: u8::try_from(data_bits).unwrap_or(8),
                    stop_bits: u8::try_from(stop_bits).unwrap_or(1),
                    unit_id: unit,
                }
            }
        };
        if d.transport != Transport::Rtu && d.serial_path.is_some() {
            errs.push(
                format!("{path}.serial_path"),
                "serial_path is only for transport = \"rtu\"",
            );
        }
        let profile = load_profile(
            &mut cache,
            errs,
            &path,
            d.profile.as_deref(),
            d.profile_file.as_deref(),
            base,
        );
        let max_read = d.max_read_registers.unwrap_or(125);
        if !(1..=125).contains(&max_read) {
            errs.push(
                format!("{path}.max_read_registers"),
                format!("must be in 1..=125 (the protocol's limit), got {max_read}"),
            );
        }
        if d.timeout_ms == Some(0) {
            errs.push(format!("{path}.timeout_ms"), "must be greater than zero");
        }
        if !d.write_points.is_empty() && !d.control {
            errs.push(
                format!("{path}.write_points"),
                format!(
                    "writes configured on device `{}` without control = true",
                    d.id
                ),
            );
        }
        if let Some(p) = &profile {
            for (k, w) in d.write_points.iter().enumerate() {
                match p.point(w) {
                    Some(pt) if pt.writable => {}
                    Some(_) => errs.push(
                        format!("{path}.write_points[{k}]"),
                        format!("point `{w}` is not writable in profile `{}`", p.name),
                    ),
                    None => errs.push(
                        format!("{path}.write_points[{k}]"),
                        format!("profile `{}` has no point or role `{w}`", p.name),
                    ),
                }
            }
        }
        let Some(profile) = profile else {
            // Already reported; references to it must not cascade into more errors.
            broken.insert(d.id.clone());
            continue;
        };
        let max_read_registers = max_read.min(profile.max_read()).max(1);
        out.push(ModbusDevice {
            id: d.id.clone(),
            link,
            profile,
            timeout_ms: d.timeout_ms.unwrap_or(1000).max(1),
            pause_after_connect_ms: d.pause_after_connect_ms.unwrap_or(0),
            max_read_registers,
            poll_interval_ms: d.poll_interval_ms,
            control: d.control,
            write_points: d.write_points.clone(),
        });
    }
    out
}

fn build_zones(
    errs: &mut Errors,
    raw: &RawConfig,
    node_idx: &HashMap<String, NodeIdx>,
    device_idx: &HashMap<&str, usize>,
    devices: &[ModbusDevice],
    broken: &HashSet<String>,
) -> Vec<CoolingZone> {
    let mut out = Vec::new();
    let mut rack_zone: HashMap<NodeIdx, String> = HashMap::new();
    let rack_base = 1 + raw.feeds.len() + raw.rows.len();
    for (i, z) in raw.cooling_zones.iter().enumerate() {
        let path = format!("cooling_zones[{i}]");
        let margin = z.margin.unwrap_or(raw.policy.cooling_margin);
        if !(0.0..=1.0).contains(&margin) {
            errs.push(format!("{path}.margin"), "must be in [0, 1]");
        }
        if z.redundancy == Redundancy::NPlusOne && z.units.len() < 2 {
            errs.push(
                format!("{path}.units"),
                format!(
                    "N+1 needs at least two cooling units, zone `{}` has {}; set redundancy = \"none\" to accept a zone without redundancy",
                    z.id,
                    z.units.len()
                ),
            );
        }
        if z.units.is_empty() && z.redundancy == Redundancy::None {
            errs.push(format!("{path}.units"), "a zone needs at least one unit");
        }
        let mut racks = Vec::new();
        for (k, r) in z.racks.iter().enumerate() {
            match node_idx.get(r) {
                Some(&n) if n >= rack_base => {
                    if let Some(other) = rack_zone.insert(n, z.id.clone()) {
                        errs.push(
                            format!("{path}.racks[{k}]"),
                            format!("rack `{r}` is already cooled by zone `{other}`"),
                        );
                    }
                    racks.push(n);
                }
                Some(_) => errs.push(format!("{path}.racks[{k}]"), format!("`{r}` is not a rack")),
                None => errs.push(format!("{path}.racks[{k}]"), format!("unknown rack `{r}`")),
            }
        }
        let mut units = Vec::new();
        for (k, u) in z.units.iter().enumerate() {
            let upath = format!("{path}.units[{k}]");
            positive(errs, &format!("{upath}.capacity_kw"), u.capacity_kw);
            let device = match &u.device {
                None => None,
                Some(d) => match device_idx.get(d.as_str()) {
                    Some(&di) => {
                        if devices[di].profile.role(Role::UnitRunning).is_none() {
                            errs.push(
                                format!("{upath}.device"),
                                format!(
                                    "device `{d}` (profile `{}`) reports no unit_running point",
                                    devices[di].profile.name
                                ),
                            );
                        }
                        Some(di)
                    }
                    None => {
                        if !broken.contains(d) {
                            errs.push(
                                format!("{upath}.device"),
                                format!("unknown Modbus device `{d}`"),
                            );
                        }
                        None
                    }
                },
            };
            units.push(CoolingUnit {
                id: u.id.clone(),
                capacity_kw: u.capacity_kw,
                device,
            });
        }
        out.push(CoolingZone {
            id: z.id.clone(),
            medium: z.medium,
            redundancy: z.redundancy,
            margin,
            racks,
            units,
        });
    }
    out
}

fn expand_groups(errs: &mut Errors, raw: &RawConfig) -> Vec<(RawMiner, String)> {
    let mut out: Vec<(RawMiner, String)> = raw
        .miners
        .iter()
        .enumerate()
        .map(|(i, m)| (m.clone(), format!("miners[{i}]")))
        .collect();
    for (i, g) in raw.miner_groups.iter().enumerate() {
        let path = format!("miner_groups[{i}]");
        if g.count == 0 || g.count > 10_000 {
            errs.push(
                format!("{path}.count"),
                format!("count must be in 1..=10000, got {}", g.count),
            );
            continue;
        }
        let (host, port) = match split_host_port(&g.first_address, 4028) {
            Ok(hp) => hp,
            Err(e) => {
                errs.push(format!("{path}.first_address"), e);
                continue;
            }
        };
        let Ok(first) = host.parse::<Ipv4Addr>() else {
            errs.push(
                format!("{path}.first_address"),
                format!("`{host}` must be an IPv4 address to count from"),
            );
            continue;
        };
        let first_u = u32::from(first);
        if first_u.checked_add(g.count - 1).is_none() {
            errs.push(
                format!("{path}.count"),
                "the group runs past 255.255.255.255",
            );
            continue;
        }
        if g.first_outlet.is_some() && g.outlet_device.is_none() {
            errs.push(
                format!("{path}.first_outlet"),
                "first_outlet needs outlet_device",
            );
        }
        for n in 0..g.count {
            let ip = Ipv4Addr::from(first_u + n);
            out.push((
                RawMiner {
                    id: format!("{}{:03}", g.id_prefix, n + 1),
                    address: format!("{ip}:{port}"),
                    http_port: g.http_port,
                    firmware: g.firmware,
                    rack: g.rack.clone(),
                    nominal_w: g.nominal_w,
                    min_w: g.min_w,
                    idle_w: g.idle_w,
                    efficiency_j_th: g.efficiency_j_th,
                    credentials: g.credentials.clone(),
                    outlet: g.outlet_device.as_ref().map(|d| crate::raw::OutletRef {
                        device: d.clone(),
                        outlet: g.first_outlet.unwrap_or(1) + n,
                    }),
                },
                path.clone(),
            ));
        }
    }
    out
}

fn build_miners(
    errs: &mut Errors,
    raw: &[(RawMiner, String)],
    nodes: &[PowerNode],
    node_idx: &HashMap<String, NodeIdx>,
    known: &KnownDevices,
) -> Vec<Miner> {
    let mut out = Vec::with_capacity(raw.len());
    let mut outlets_used: HashMap<(usize, u32), String> = HashMap::new();
    // Errors of a group are reported once, not once per expanded miner.
    let mut reported: HashSet<String> = HashSet::new();
    for (m, path) in raw {
        let grouped = path.starts_with("miner_groups");
        let mut local = Errors::default();
        let (host, port) = match split_host_port(&m.address, 4028) {
            Ok(hp) => hp,
            Err(e) => {
                local.push(format!("{path}.address"), e);
                (String::new(), 4028)
            }
        };
        let rack = miner_rack(&mut local, m, path, nodes, node_idx);
        let idle = check_miner_power(&mut local, m, path);
        check_miner_credentials(&mut local, m, path);
        let http_port = match m.http_port {
            Some(p) => port16(&mut local, &format!("{path}.http_port"), p),
            None => m.firmware.needs_http().then_some(80),
        };
        let outlet = m
            .outlet
            .as_ref()
            .and_then(|o| miner_outlet(&mut local, known, &mut outlets_used, m, o, path, grouped));
        for issue in local.0 {
            let key = format!("{}: {}", issue.path, issue.message);
            if !grouped || reported.insert(key) {
                errs.0.push(issue);
            }
        }
        if let Some(rack) = rack {
            out.push(Miner {
                id: m.id.clone(),
                host,
                port,
                http_port,
                firmware: m.firmware,
                rack,
                nominal_w: m.nominal_w,
                min_w: m.min_w,
                idle_w: idle,
                efficiency_j_th: m.efficiency_j_th,
                credentials: m.credentials.clone(),
                outlet,
            });
        }
    }
    out
}

/// A miner's rack: one that exists and is a mining or mixed rack.
fn miner_rack(
    local: &mut Errors,
    m: &RawMiner,
    path: &str,
    nodes: &[PowerNode],
    node_idx: &HashMap<String, NodeIdx>,
) -> Option<NodeIdx> {
    match node_idx.get(&m.rack) {
        Some(&n) => match nodes[n].rack_kind() {
            Some(RackKind::Mining | RackKind::Mixed) => Some(n),
            Some(RackKind::Gpu) => {
                local.push(
                    format!("{path}.rack"),
                    format!(
                        "`{}` is a GPU rack; miners go in mining or mixed racks",
                        m.rack
                    ),
                );
                None
            }
            None => {
                local.push(
                    format!("{path}.rack"),
                    format!("`{}` is not a rack", m.rack),
                );
                None
            }
        },
        None => {
            local.push(format!("{path}.rack"), format!("unknown rack `{}`", m.rack));
            None
        }
    }
}

/// A miner's `nominal_w`, `min_w`, `idle_w` and `efficiency_j_th`; returns its idle
/// draw (25 W when not given).
fn check_miner_power(local: &mut Errors, m: &RawMiner, path: &str) -> f64 {
    positive(local, &format!("{path}.nominal_w"), m.nominal_w);
    if let Some(min) = m.min_w {
        if !(min > 0.0 && min <= m.nominal_w) {
            local.push(
                format!("{path}.min_w"),
                format!("min_w {min} must be in (0, nominal_w = {}]", m.nominal_w),
            );
        }
    }
    let idle = m.idle_w.unwrap_or(25.0);
    if !(idle >= 0.0 && idle < m.nominal_w) {
        local.push(
            format!("{path}.idle_w"),
            format!("idle_w {idle} must be in [0, nominal_w)"),
        );
    }
    if let Some(e) = m.efficiency_j_th {
        positive(local, &format!("{path}.efficiency_j_th"), e);
    }
    idle
}

/// A miner's credentials name exactly one of `password_env` and `password_file`.
fn check_miner_credentials(local: &mut Errors, m: &RawMiner, path: &str) {
    if let Some(c) = &m.credentials {
        match (&c.password_env, &c.password_file) {
            (Some(_), Some(_)) => local.push(
                format!("{path}.credentials"),
                "give password_env or password_file, not both",
            ),
            (None, None) => local.push(
                format!("{path}.credentials"),
                "credentials need password_env or password_file (never inline)",
            ),
            _ => {}
        }
    }
}

/// A miner's outlet: a known device with control and a writable `outlet_switch`, an
/// outlet in range that feeds no other miner. `None` when the device is unknown or broken.
fn miner_outlet(
    local: &mut Errors,
    known: &KnownDevices,
    outlets_used: &mut HashMap<(usize, u32), String>,
    m: &RawMiner,
    o: &crate::raw::OutletRef,
    path: &str,
    grouped: bool,
) -> Option<Outlet> {
    let opath = if grouped {
        format!("{path}.outlet_device")
    } else {
        format!("{path}.outlet.device")
    };
    let Some(&d) = known.idx.get(o.device.as_str()) else {
        if !known.broken.contains(&o.device) {
            local.push(opath, format!("unknown Modbus device `{}`", o.device));
        }
        return None;
    };
    let dev = &known.all[d];
    let sw = dev.profile.role(Role::OutletSwitch);
    if !dev.control {
        local.push(
            opath.clone(),
            format!(
                "outlet switching configured on device `{}` without control = true",
                o.device
            ),
        );
    } else if !dev.may_write(Role::OutletSwitch.name())
        && !sw.is_some_and(|p| dev.may_write(&p.name))
    {
        local.push(
            opath.clone(),
            format!(
                "device `{}` does not allow writes to outlet_switch: add it to write_points",
                o.device
            ),
        );
    }
    match sw {
        Some(p) if o.outlet >= 1 && o.outlet <= p.count => {
            if let Some(other) = outlets_used.insert((d, o.outlet), m.id.clone()) {
                local.push(
                    format!("{path}.outlet"),
                    format!(
                        "outlet {} of `{}` already feeds miner `{other}`",
                        o.outlet, o.device
                    ),
                );
            }
        }
        Some(p) => local.push(
            format!("{path}.outlet"),
            format!(
                "outlet {} out of range 1..={} for `{}`",
                o.outlet, p.count, o.device
            ),
        ),
        None => local.push(
            opath,
            format!(
                "device `{}` (profile `{}`) has no outlet_switch point",
                o.device, dev.profile.name
            ),
        ),
    }
    Some(Outlet {
        device: d,
        outlet: o.outlet,
    })
}

/// A relative `password_file` is relative to the site file (`base`), not to wherever the
/// agent happens to be started from (systemd, a shell in another directory).
fn resolve_password_files(errs: &mut Errors, miners: &mut [Miner], base: &Path) {
    let mut refused = false;
    for m in miners {
        let Some(f) = m
            .credentials
            .as_mut()
            .and_then(|c| c.password_file.as_mut())
        else {
            continue;
        };
        match resolve(base, f).into_os_string().into_string() {
            Ok(full) => *f = full,
            Err(_) if !refused => {
                refused = true;
                errs.push(
                    format!("miners.{}.credentials.password_file", m.id),
                    "the site file's directory is not valid UTF-8: give an absolute password_file",
                );
            }
            Err(_) => {}
        }
    }
}

fn build_gpu_nodes(
    errs: &mut Errors,
    raw: &RawConfig,
    nodes: &[PowerNode],
    node_idx: &HashMap<String, NodeIdx>,
    base: &Path,
) -> Vec<GpuNode> {
    let mut out = Vec::new();
    for (i, g) in raw.gpu_nodes.iter().enumerate() {
        let path = format!("gpu_nodes[{i}]");
        let rack = match node_idx.get(&g.rack) {
            Some(&n) => match nodes[n].rack_kind() {
                Some(RackKind::Gpu | RackKind::Mixed) => Some(n),
                _ => {
                    errs.push(
                        format!("{path}.rack"),
                        format!("`{}` is not a GPU or mixed rack", g.rack),
                    );
                    None
                }
            },
            None => {
                errs.push(format!("{path}.rack"), format!("unknown rack `{}`", g.rack));
                None
            }
        };
        let mut address = None;
        let mut token_file = None;
        match g.source {
            GpuSource::Remote => {
                match g.address.as_deref().map(str::parse::<SocketAddr>) {
                    Some(Ok(a)) => address = Some(a),
                    Some(Err(_)) => errs.push(
                        format!("{path}.address"),
                        format!(
                            "`{}` is not an ip:port address",
                            g.address.as_deref().unwrap_or_default()
                        ),
                    ),
                    None => errs.push(
                        format!("{path}.address"),
                        "remote GPU nodes need address = \"ip:port\"",
                    ),
                }
                match &g.token_file {
                    Some(t) => token_file = Some(resolve(base, t)),
                    None => errs.push(
                        format!("{path}.token_file"),
                        "remote GPU nodes need token_file (the shared token)",
                    ),
                }
            }
            GpuSource::Nvml => {
                if g.address.is_some() {
                    errs.push(
                        format!("{path}.address"),
                        "address is only for source = \"remote\"",
                    );
                }
            }
        }
        let gpus = g.gpus.unwrap_or(4);
        if gpus == 0 || gpus > 128 {
            errs.push(
                format!("{path}.gpus"),
                format!("gpus must be in 1..=128, got {gpus}"),
            );
        }
        if let Some(w) = g.gpu_max_w {
            positive(errs, &format!("{path}.gpu_max_w"), w);
        }
        if let Some(rack) = rack {
            out.push(GpuNode {
                id: g.id.clone(),
                rack,
                source: g.source,
                address,
                token_file,
                gpus,
                gpu_max_w: g.gpu_max_w,
            });
        }
    }
    out
}

/// Resolves a path from the config against the config's directory.
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let pb = PathBuf::from(p);
    if pb.is_absolute() {
        pb
    } else {
        base.join(pb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("10.0.0.1", 4028).unwrap(),
            ("10.0.0.1".into(), 4028)
        );
        assert_eq!(
            split_host_port("10.0.0.1:4029", 4028).unwrap(),
            ("10.0.0.1".into(), 4029)
        );
        assert_eq!(
            split_host_port("miner-7.site:4028", 1).unwrap(),
            ("miner-7.site".into(), 4028)
        );
        assert_eq!(split_host_port("[::1]:9", 1).unwrap(), ("::1".into(), 9));
        assert!(split_host_port("host:99999", 1).is_err());
        assert!(split_host_port("host:0", 1).is_err());
    }

    #[test]
    fn amps_rating_three_phase() {
        let mut e = Errors::default();
        let r = RawRating {
            rating_a: Some(400.0),
            voltage_v: Some(415.0),
            phases: Some(3),
            ..RawRating::default()
        };
        let kw = rating_kw(&mut e, "x", &r, true).unwrap();
        assert!((kw - 287.5).abs() < 0.1, "{kw}");
        assert!(e.0.is_empty());
    }
}
