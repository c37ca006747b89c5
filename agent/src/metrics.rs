//! Every Prometheus metric the agent exposes, in one place (`GET /metrics`).
//!
//! Counters end in `_total`, units are in the names (`_watts`, `_seconds`, `_bytes`,
//! `_ratio`), labels are low-cardinality: node, zone and GPU-node ids (tens to hundreds
//! on a site), device class, lever, alert name, firmware. Miners are never a label (a site
//! has tens of thousands): they are counted by state, and their learned shed and restore
//! times are summed up per firmware. docs/operator-guide.md lists every series
//! and a test keeps it in step with [`Metrics::new`].
//!
//! Gauges describing the site are set by the control loop once per decision
//! ([`crate::status::StatusHub::record_decision`]); host figures are read from `sysinfo`
//! when `/metrics` is scraped, so an idle agent costs nothing.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label set: a few `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;
type GaugeF = Gauge<f64, AtomicU64>;
type HistFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The device classes the collectors poll (the `class` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollClass {
    /// Modbus PDUs, meters and cooling units.
    Modbus,
    /// ASIC miners (cgminer-compatible APIs).
    Miner,
    /// GPU hosts (NVML, local or through `gpu-node`).
    Gpu,
}

impl PollClass {
    pub fn name(self) -> &'static str {
        match self {
            PollClass::Modbus => "modbus",
            PollClass::Miner => "miner",
            PollClass::Gpu => "gpu",
        }
    }

    /// What one source of the class is called in the logs.
    pub fn noun(self) -> &'static str {
        match self {
            PollClass::Modbus => "modbus device",
            PollClass::Miner => "miner",
            PollClass::Gpu => "gpu node",
        }
    }
}

fn poll_histogram() -> Histogram {
    // 1 ms .. ~16 s: a Modbus read over a serial gateway sits near the top.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The registry and every metric in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub node_measured_watts: Family<Labels, GaugeF>,
    pub node_projected_watts: Family<Labels, GaugeF>,
    pub node_budget_watts: Family<Labels, GaugeF>,
    pub node_utilization_ratio: Family<Labels, GaugeF>,
    pub node_gpu_watts: Family<Labels, GaugeF>,
    pub node_mining_watts: Family<Labels, GaugeF>,
    pub node_ceiling_watts: Family<Labels, GaugeF>,
    pub node_worst_case_watts: Family<Labels, GaugeF>,
    pub node_gpu_reserve_watts: Family<Labels, GaugeF>,
    pub node_gpu_sustained_watts: Family<Labels, GaugeF>,
    pub node_mining_allowance_watts: Family<Labels, GaugeF>,
    pub node_mining_guaranteed_watts: Family<Labels, GaugeF>,
    pub zone_capacity_watts: Family<Labels, GaugeF>,
    pub zone_heat_load_watts: Family<Labels, GaugeF>,
    pub zone_largest_unit_watts: Family<Labels, GaugeF>,
    pub zone_redundant: Family<Labels, GaugeF>,
    pub zone_covered: Family<Labels, GaugeF>,
    pub cooling_units_unavailable: Family<Labels, GaugeF>,
    pub miners: Family<Labels, GaugeF>,
    pub miner_shed_p99_max_seconds: Family<Labels, GaugeF>,
    pub miner_restore_p99_max_seconds: Family<Labels, GaugeF>,
    pub miners_slow: Family<Labels, GaugeF>,
    pub miners_no_driver: Family<Labels, GaugeF>,
    pub gpu_node_power_watts: Family<Labels, GaugeF>,
    pub gpu_power_limit_watts: Family<Labels, GaugeF>,
    pub gpu_node_capped: Family<Labels, GaugeF>,
    pub inputs: Family<Labels, GaugeF>,
    pub ready: GaugeF,
    /// Issue 19, grid signals: the limit in force (NaN: none), the site's load against
    /// it, what mining cannot shed under it, the price, miners asleep for the price.
    pub grid_limit_watts: GaugeF,
    pub grid_load_watts: GaugeF,
    pub grid_shortfall_watts: GaugeF,
    pub grid_price_usd_per_mwh: GaugeF,
    pub miners_price_curtailed: GaugeF,
    /// Issue 11: 1 while this agent leads its HA pair, 0 while it stands by (absent alone).
    pub ha_leader: Family<Labels, GaugeF>,
    pub overrides: Family<Labels, GaugeF>,
    pub poll_duration_seconds: HistFamily,
    pub poll_errors: Family<Labels, Counter>,
    pub decisions: Family<Labels, Counter>,
    pub actions: Family<Labels, Counter>,
    pub alerts: Family<Labels, Counter>,
    /// Issue 18, `[alerts]`: notices a receiver took, failed sends, dropped notices and
    /// the alerts held active, by receiver.
    pub alert_notifications_sent: Family<Labels, Counter>,
    pub alert_send_failures: Family<Labels, Counter>,
    pub alert_notifications_dropped: Family<Labels, Counter>,
    pub alerts_active: Family<Labels, GaugeF>,
    /// Energy per account (tenant, `mining`, `site`), kWh, from the PDUs' counters.
    pub energy_kwh: Family<Labels, Counter<f64, AtomicU64>>,
    pub host_cpu_usage_ratio: GaugeF,
    pub host_memory_used_bytes: GaugeF,
    pub host_memory_total_bytes: GaugeF,
    pub host_disk_available_bytes: Family<Labels, GaugeF>,
    pub host_disk_total_bytes: Family<Labels, GaugeF>,
    host: Mutex<sysinfo::System>,
    /// Every series name registered (counters with their `_total`).
    names: Vec<&'static str>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Builds and registers every metric (prefix `rackwarden_`).
    // Long on purpose: a declarative table: one registration per metric.
    #[allow(clippy::too_many_lines)]
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("rackwarden");
        let mut names = Vec::new();
        macro_rules! reg {
            ($name:literal, $help:literal, $m:expr) => {{
                let m = $m;
                r.register($name, $help, m.clone());
                names.push(concat!("rackwarden_", $name));
                m
            }};
        }
        // Counters: the exposition adds `_total` to the sample names.
        macro_rules! reg_counter {
            ($name:literal, $help:literal) => {{
                let m: Family<Labels, Counter> = Family::default();
                r.register($name, $help, m.clone());
                names.push(concat!("rackwarden_", $name, "_total"));
                m
            }};
        }
        let m = Metrics {
            node_measured_watts: reg!(
                "node_measured_watts",
                "Fresh measured power of a power-tree node (NaN: no fresh meter), by node and kind",
                Family::default()
            ),
            node_projected_watts: reg!(
                "node_projected_watts",
                "Projected (feed-forward) power of a node from device readings and commitments",
                Family::default()
            ),
            node_budget_watts: reg!(
                "node_budget_watts",
                "Continuous power budget of a node",
                Family::default()
            ),
            node_utilization_ratio: reg!(
                "node_utilization_ratio",
                "Effective power over budget of a node (what the shed thresholds compare)",
                Family::default()
            ),
            node_gpu_watts: reg!(
                "node_gpu_watts",
                "GPU power under a node, from the latest GPU readings",
                Family::default()
            ),
            node_mining_watts: reg!(
                "node_mining_watts",
                "Mining power under a node, from the latest miner readings",
                Family::default()
            ),
            node_ceiling_watts: reg!(
                "node_ceiling_watts",
                "Never-trip ceiling H of a node (ceiling_fraction x rating): the worst case stays under it",
                Family::default()
            ),
            node_worst_case_watts: reg!(
                "node_worst_case_watts",
                "Worst case of a node: every GPU rack at its reserve X, miners as committed, other load at its peak",
                Family::default()
            ),
            node_gpu_reserve_watts: reg!(
                "node_gpu_reserve_watts",
                "Worst-case GPU reserve under a node: the sum of its GPU racks' X (limits plus non-GPU peak, or rated maximum)",
                Family::default()
            ),
            node_gpu_sustained_watts: reg!(
                "node_gpu_sustained_watts",
                "Sustained GPU reserve under a node: the sum of its GPU racks' S (rolling peak plus uplift, at most X)",
                Family::default()
            ),
            node_mining_allowance_watts: reg!(
                "node_mining_allowance_watts",
                "Mining a node allows (M_n, its ancestors' limits included)",
                Family::default()
            ),
            node_mining_guaranteed_watts: reg!(
                "node_mining_guaranteed_watts",
                "Guaranteed mining allocation of a node (B - sum of X - other load, ancestors included); above it only fast miners",
                Family::default()
            ),
            zone_capacity_watts: reg!(
                "zone_capacity_watts",
                "Cooling capacity available in a zone (running units)",
                Family::default()
            ),
            zone_heat_load_watts: reg!(
                "zone_heat_load_watts",
                "Heat load of a zone (power of its racks)",
                Family::default()
            ),
            zone_largest_unit_watts: reg!(
                "zone_largest_unit_watts",
                "Capacity of the largest available unit of a zone (what N+1 must survive losing)",
                Family::default()
            ),
            zone_redundant: reg!(
                "zone_redundant",
                "1 when a cooling zone holds N+1, else 0",
                Family::default()
            ),
            zone_covered: reg!(
                "zone_covered",
                "1 when a cooling zone's capacity covers its heat load (N), else 0",
                Family::default()
            ),
            cooling_units_unavailable: reg!(
                "cooling_units_unavailable",
                "Cooling units of a zone not counted as available (alarm, offline, maintenance, stale)",
                Family::default()
            ),
            miners: reg!(
                "miners",
                "Miners by commanded state (normal, power_target, sleep, outlet_off) and whether an operator holds them",
                Family::default()
            ),
            miner_shed_p99_max_seconds: reg!(
                "miner_shed_p99_max_seconds",
                "Highest learned p99 shed time (command to confirming read-back) among a firmware's miners; the firmware default until measured",
                Family::default()
            ),
            miner_restore_p99_max_seconds: reg!(
                "miner_restore_p99_max_seconds",
                "Highest learned p99 restore time among a firmware's miners; the firmware default until measured",
                Family::default()
            ),
            miners_slow: reg!(
                "miners_slow",
                "Miners of a firmware kept out of the trough headroom (p99 shed time over fast_shed_s, no sleep lever, or no driver)",
                Family::default()
            ),
            miners_no_driver: reg!(
                "miners_no_driver",
                "Miners of a firmware without a driver (credentials missing): no command is sent to them, only their outlet",
                Family::default()
            ),
            gpu_node_power_watts: reg!(
                "gpu_node_power_watts",
                "Power drawn by the GPUs of a GPU host",
                Family::default()
            ),
            gpu_power_limit_watts: reg!(
                "gpu_power_limit_watts",
                "Highest enforced per-GPU power limit on a GPU host, as NVML reports it",
                Family::default()
            ),
            gpu_node_capped: reg!(
                "gpu_node_capped",
                "1 while the agent holds a GPU host below its default power limits",
                Family::default()
            ),
            inputs: reg!(
                "inputs",
                "Inputs of the last decision by class (meter, cooling_unit, miner, gpu) and freshness (fresh, stale, missing)",
                Family::default()
            ),
            grid_limit_watts: reg!(
                "grid_limit_watts",
                "Site import limit of the grid event in force (NaN: none)",
                GaugeF::default()
            ),
            grid_load_watts: reg!(
                "grid_load_watts",
                "The site's effective load the grid limit is compared with",
                GaugeF::default()
            ),
            grid_shortfall_watts: reg!(
                "grid_shortfall_watts",
                "How far the site's load stays above the grid limit in force after every mining lever (0: met)",
                GaugeF::default()
            ),
            grid_price_usd_per_mwh: reg!(
                "grid_price_usd_per_mwh",
                "Power price in force (NaN: none)",
                GaugeF::default()
            ),
            miners_price_curtailed: reg!(
                "miners_price_curtailed",
                "Miners asleep because the power price is above their breakeven",
                GaugeF::default()
            ),
            ready: reg!(
                "ready",
                "1 when /readyz answers ready (config loaded, loop deciding, every collector fresh)",
                GaugeF::default()
            ),
            ha_leader: reg!(
                "ha_leader",
                "With [ha]: 1 while this agent leads its active/standby pair, 0 while it stands by",
                Family::default()
            ),
            overrides: reg!(
                "overrides",
                "Operator overrides in force by kind (miner, rack, unit)",
                Family::default()
            ),
            poll_duration_seconds: reg!(
                "poll_duration_seconds",
                "Duration of one device poll by device class",
                HistFamily::new_with_constructor(poll_histogram)
            ),
            poll_errors: reg_counter!(
                "poll_errors",
                "Failed device polls by device class"
            ),
            decisions: reg_counter!(
                "decisions",
                "Control decisions taken, by loop (fast, slow)"
            ),
            actions: reg_counter!(
                "actions",
                "Actions planned by lever, reason and whether it was a dry run"
            ),
            alerts: reg_counter!(
                "alerts",
                "Alerts raised by name and severity"
            ),
            alert_notifications_sent: reg_counter!(
                "alert_notifications_sent",
                "With [alerts]: alert notices (firing, re-sent, resolved) a receiver accepted, by receiver"
            ),
            alert_send_failures: reg_counter!(
                "alert_send_failures",
                "With [alerts]: requests to a receiver that failed (refused, timed out, non-2xx); retried with backoff"
            ),
            alert_notifications_dropped: reg_counter!(
                "alert_notifications_dropped",
                "With [alerts]: alert notices dropped by receiver and reason (queue_full, backlog_full)"
            ),
            alerts_active: reg!(
                "alerts_active",
                "With [alerts]: alerts held firing for a receiver (re-sent until their counterpart arrives)",
                Family::default()
            ),
            energy_kwh: {
                let m: Family<Labels, Counter<f64, AtomicU64>> = Family::default();
                r.register(
                    "energy_kwh",
                    "Energy per account (tenant, mining, site) since the database began, measured and estimated, by account and kind",
                    m.clone(),
                );
                names.push("rackwarden_energy_kwh_total");
                m
            },
            host_cpu_usage_ratio: reg!(
                "host_cpu_usage_ratio",
                "CPU usage of the management host, 0..1, between two scrapes",
                GaugeF::default()
            ),
            host_memory_used_bytes: reg!(
                "host_memory_used_bytes",
                "Memory in use on the management host",
                GaugeF::default()
            ),
            host_memory_total_bytes: reg!(
                "host_memory_total_bytes",
                "Memory of the management host",
                GaugeF::default()
            ),
            host_disk_available_bytes: reg!(
                "host_disk_available_bytes",
                "Free space per mounted disk of the management host",
                Family::default()
            ),
            host_disk_total_bytes: reg!(
                "host_disk_total_bytes",
                "Size of each mounted disk of the management host",
                Family::default()
            ),
            host: Mutex::new(sysinfo::System::new()),
            registry: Registry::default(),
            names: Vec::new(),
        };
        Metrics {
            registry: r,
            names,
            ..m
        }
    }

    /// Records one device poll.
    pub fn poll(&self, class: PollClass, took: Duration, ok: bool) {
        let l = vec![("class", class.name().to_owned())];
        self.poll_duration_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        if !ok {
            self.poll_errors.get_or_create(&l).inc();
        }
    }

    /// Reads the host's CPU, memory and disks.
    pub fn refresh_host(&self) {
        let mut sys = self
            .host
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        self.host_cpu_usage_ratio
            .set(f64::from(sys.global_cpu_usage()) / 100.0);
        // u64 -> f64: byte counts below 2^53 (8 PiB) are exact.
        #[allow(clippy::cast_precision_loss)]
        {
            self.host_memory_used_bytes.set(sys.used_memory() as f64);
            self.host_memory_total_bytes.set(sys.total_memory() as f64);
            let disks = sysinfo::Disks::new_with_refreshed_list();
            self.host_disk_available_bytes.clear();
            self.host_disk_total_bytes.clear();
            for d in disks.list() {
                let l = vec![("mount", d.mount_point().display().to_string())];
                self.host_disk_available_bytes
                    .get_or_create(&l)
                    .set(d.available_space() as f64);
                self.host_disk_total_bytes
                    .get_or_create(&l)
                    .set(d.total_space() as f64);
            }
        }
    }

    /// The name of every registered metric family (counters as their `_total` series).
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The exposition in Prometheus text format (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).ok();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Family names and types from `# TYPE` lines; counters as their `_total` series.
    fn families(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let mut it = l.split_whitespace();
                let name = it.next().unwrap_or_default().to_owned();
                if it.next() == Some("counter") {
                    format!("{name}_total")
                } else {
                    name
                }
            })
            .collect()
    }

    #[test]
    fn every_metric_is_documented() {
        let m = Metrics::new();
        let fams: Vec<String> = m.names().iter().map(|s| (*s).to_owned()).collect();
        assert!(fams.len() >= 29, "only {} families: {fams:?}", fams.len());
        // What the exposition shows (families with samples) is all registered.
        for f in families(&m.encode()) {
            assert!(fams.contains(&f), "{f} is exposed but not in names()");
        }
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/operator-guide.md"
        ))
        .unwrap();
        let missing: Vec<_> = fams
            .iter()
            .filter(|f| !doc.contains(&format!("`{f}`")))
            .collect();
        assert!(missing.is_empty(), "undocumented metrics: {missing:?}");
        // And the guide names no series that does not exist.
        let documented: Vec<&str> = doc
            .split('`')
            .filter(|w| w.starts_with("rackwarden_") && !w.contains(' '))
            .collect();
        for d in documented {
            let base = d.split('{').next().unwrap_or(d);
            assert!(
                fams.iter().any(|f| f == base),
                "the guide documents `{base}`, which is not registered"
            );
        }
    }

    #[test]
    fn counters_and_histograms_show_their_samples() {
        let m = Metrics::new();
        m.poll(PollClass::Miner, Duration::from_millis(3), false);
        m.poll(PollClass::Miner, Duration::from_millis(5), true);
        m.actions
            .get_or_create(&vec![("lever", "sleep".to_owned())])
            .inc();
        m.refresh_host();
        let text = m.encode();
        assert!(text.contains("rackwarden_poll_errors_total{class=\"miner\"} 1"));
        assert!(text.contains("rackwarden_poll_duration_seconds_count{class=\"miner\"} 2"));
        assert!(text.contains("rackwarden_actions_total{lever=\"sleep\"} 1"));
        let mem = text
            .lines()
            .find_map(|l| l.strip_prefix("rackwarden_host_memory_total_bytes "))
            .unwrap();
        assert!(mem.trim().parse::<f64>().unwrap() > 0.0);
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
