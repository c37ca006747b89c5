//! Shared harness of the control tests: a generator of small random sites (TOML text,
//! loaded the operator's way through `rackwarden_config::load_str`), a small physics
//! model standing in for the devices, and a runner that feeds `decide` tick by tick.
// Test harness: panics are the failure report, and the physics converts freely between
// time and floats.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    clippy::type_complexity
)]

use std::fmt::Write as _;
use std::path::Path;

use rackwarden::control::{
    decide, Action, ControlState, GpuLimits, GpuNodeReading, Lever, MeterReading, MinerMode,
    MinerReading, OutletReading, Plan, Snapshot, Tick, Topology, UnitReading, UnitState,
};
use rackwarden_config::{NodeIdx, Site};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) type Millis = u64;

pub(crate) fn load(text: &str) -> Site {
    match rackwarden_config::load_str(text, Path::new("generated.toml"), Path::new(".")) {
        Ok(s) => s,
        Err(e) => panic!("generated site does not validate:\n{e}\n---\n{text}"),
    }
}

/// Knobs of a generated site.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GenOpts {
    /// GPU nodes report NVML as unavailable.
    pub no_nvml: bool,
}

const FIRMWARES: [&str; 6] = [
    "braiins",
    "luxos",
    "whatsminer",
    "vnish",
    "antminer_stock",
    "avalon",
];

/// A random small site: 1-2 feeds (an A/B pair with dual-corded racks sometimes), 1-2
/// rows per feed, 1-3 racks per row, miners of every firmware, GPU nodes, 1-2 zones.
// Long on purpose: the generated site file, one section after another.
#[allow(clippy::too_many_lines)]
pub(crate) fn gen_site(seed: u64) -> String {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut t = String::new();
    let mut dev = String::new();
    let mut port = 20_000u32;
    let mut next_port = || {
        port += 1;
        port
    };
    let pair = r.random_bool(0.4);
    let n_feeds = if pair { 2 } else { r.random_range(1..=2) };
    writeln!(t, "[site]\nid = \"gen-{seed}\"\n").ok();
    writeln!(
        t,
        "[policy]\nseed = {}\nshed_margin_fraction = {:.3}\nallow_outlet_off = {}\nrestore_hold_s = {}\nrestore_step_interval_s = {}\nmin_off_s = {}\nmin_on_s = {}\nmax_sleep_cycles_per_hour = {}\nrestore_step_fraction = {:.3}\nreserve_window_s = {}\ngpu_reserve = \"{}\"\n",
        r.random_range(0..1000u32),
        r.random_range(0.01..0.05),
        r.random_bool(0.8),
        r.random_range(10..=60u32),
        r.random_range(10..=30u32),
        r.random_range(30..=300u32),
        r.random_range(60..=600u32),
        r.random_range(2..=6u32),
        // Small racks need a larger step for one miner to fit in it.
        r.random_range(0.05..0.4f64),
        // Short peak windows, so the traces reach trough filling.
        r.random_range(60..=240u32),
        if r.random_bool(0.8) { "measured" } else { "limits" },
    ).ok();
    // Racks first (their budgets size the rows and feeds).
    struct Rack {
        id: String,
        kind: &'static str,
        parents: Vec<String>,
        rating: f64,
        rated_max: f64,
        miners: Vec<(String, &'static str, f64, Option<f64>, f64, bool)>,
        gpus: Option<(u32, f64)>,
    }
    let mut racks: Vec<Rack> = Vec::new();
    let mut rows: Vec<(String, String)> = Vec::new(); // (row, feed)
    for f in 0..n_feeds {
        for w in 0..r.random_range(1..=2) {
            rows.push((format!("row-{f}-{w}"), format!("feed-{f}")));
        }
    }
    let mut miner_ip = 1u32;
    for (ri, (row, feed)) in rows.iter().enumerate() {
        for k in 0..r.random_range(1..=3) {
            let kind = ["gpu", "mining", "mixed"][r.random_range(0..3)];
            let mut parents = vec![row.clone()];
            if pair && feed == "feed-0" && r.random_bool(0.5) {
                if let Some((other, _)) = rows.iter().find(|(_, f)| f == "feed-1") {
                    parents.push(other.clone());
                }
            }
            let id = format!("rack-{ri}-{k}");
            let mut miners = Vec::new();
            if kind != "gpu" {
                for m in 0..r.random_range(1..=6) {
                    let fw = FIRMWARES[r.random_range(0..FIRMWARES.len())];
                    let nominal = r.random_range(2000.0..3500.0f64).round();
                    let min = (r.random_bool(0.8))
                        .then(|| (nominal * r.random_range(0.45..0.7f64)).round());
                    let eff = r.random_range(18.0..40.0f64).round();
                    let outlet = r.random_bool(0.7);
                    miners.push((format!("{id}-m{m}"), fw, nominal, min, eff, outlet));
                }
            }
            let gpus = (kind != "mining").then(|| {
                (
                    r.random_range(1..=8u32),
                    r.random_range(500.0..1200.0f64).round(),
                )
            });
            let miner_kw: f64 = miners.iter().map(|m| m.2).sum::<f64>() / 1000.0;
            let gpu_kw = gpus.map_or(0.0, |(n, w)| f64::from(n) * w / 1000.0);
            // Ratings from tight (sheds needed) to roomy.
            let rating = ((miner_kw + gpu_kw) / 0.8 * r.random_range(0.7..1.3))
                .max(1.0)
                .round()
                + 1.0;
            racks.push(Rack {
                id,
                kind,
                parents,
                rating,
                rated_max: gpu_kw,
                miners,
                gpus,
            });
        }
    }
    // Rows: between the largest child budget and the sum of them, scaled.
    let mut row_rating = Vec::new();
    for (row, _) in &rows {
        let kids: Vec<f64> = racks
            .iter()
            .filter(|k| k.parents.contains(row))
            .map(|k| k.rating * 0.8)
            .collect();
        let max = kids.iter().copied().fold(1.0, f64::max);
        let sum: f64 = kids.iter().sum();
        row_rating.push((sum * r.random_range(0.6..1.2)).max(max).round() + 1.0);
    }
    for f in 0..n_feeds {
        let kids: Vec<f64> = rows
            .iter()
            .zip(&row_rating)
            .filter(|((_, fd), _)| *fd == format!("feed-{f}"))
            .map(|(_, &rt)| rt * 0.8)
            .collect();
        let max = kids.iter().copied().fold(1.0, f64::max);
        let sum: f64 = kids.iter().sum();
        let rating = (sum * r.random_range(0.6..1.2)).max(max).round() + 1.0;
        let d = format!("meter-feed-{f}");
        writeln!(
            dev,
            "[[modbus_devices]]\nid = \"{d}\"\ntransport = \"tcp\"\nhost = \"127.0.0.1\"\nport = {}\nunit_id = 1\nprofile = \"generic-meter\"\n",
            next_port()
        ).ok();
        writeln!(t, "[[feeds]]\nid = \"feed-{f}\"\nrating_kw = {rating}").ok();
        if pair && f == 0 {
            writeln!(t, "pair = \"feed-1\"").ok();
        }
        writeln!(t, "meters = [{{ device = \"{d}\" }}]\n").ok();
    }
    for ((row, feed), rating) in rows.iter().zip(&row_rating) {
        let d = format!("meter-{row}");
        writeln!(
            dev,
            "[[modbus_devices]]\nid = \"{d}\"\ntransport = \"tcp\"\nhost = \"127.0.0.1\"\nport = {}\nunit_id = 1\nprofile = \"generic-meter\"\n",
            next_port()
        ).ok();
        writeln!(
            t,
            "[[rows]]\nid = \"{row}\"\nparent = \"{feed}\"\nrating_kw = {rating}\nmeters = [{{ device = \"{d}\" }}]\n"
        ).ok();
    }
    let mut miners_toml = String::new();
    let mut gpus_toml = String::new();
    for k in &racks {
        let d = format!("pdu-{}", k.id);
        writeln!(
            dev,
            "[[modbus_devices]]\nid = \"{d}\"\ntransport = \"tcp\"\nhost = \"127.0.0.1\"\nport = {}\nunit_id = 1\nprofile = \"generic-pdu\"\ncontrol = true\nwrite_points = [\"outlet_switch\"]\n",
            next_port()
        ).ok();
        let parents: Vec<String> = k.parents.iter().map(|p| format!("\"{p}\"")).collect();
        writeln!(
            t,
            "[[racks]]\nid = \"{}\"\nkind = \"{}\"\nparents = [{}]\nrating_kw = {}\nmeters = [{{ device = \"{d}\" }}]",
            k.id,
            k.kind,
            parents.join(", "),
            k.rating
        ).ok();
        if k.kind != "mining" {
            writeln!(t, "rated_max_kw = {:.3}", k.rated_max.max(0.1)).ok();
        }
        writeln!(t).ok();
        for (o, (id, fw, nominal, min, eff, outlet)) in k.miners.iter().enumerate() {
            writeln!(
                miners_toml,
                "[[miners]]\nid = \"{id}\"\naddress = \"127.0.{}.{}:4028\"\nfirmware = \"{fw}\"\nrack = \"{}\"\nnominal_w = {nominal}\nefficiency_j_th = {eff}",
                miner_ip / 200 + 1,
                miner_ip % 200 + 1,
                k.id
            ).ok();
            miner_ip += 1;
            if let Some(min) = min {
                writeln!(miners_toml, "min_w = {min}").ok();
            }
            if matches!(*fw, "vnish" | "antminer_stock") {
                writeln!(miners_toml, "http_port = 8080").ok();
            }
            if matches!(*fw, "vnish" | "antminer_stock" | "whatsminer") {
                writeln!(
                    miners_toml,
                    "credentials = {{ username = \"admin\", password_env = \"PW\" }}"
                )
                .ok();
            }
            if *outlet {
                writeln!(
                    miners_toml,
                    "outlet = {{ device = \"{d}\", outlet = {} }}",
                    o + 1
                )
                .ok();
            }
            writeln!(miners_toml).ok();
        }
        if let Some((n, w)) = k.gpus {
            writeln!(
                gpus_toml,
                "[[gpu_nodes]]\nid = \"gn-{}\"\nrack = \"{}\"\nsource = \"nvml\"\ngpus = {n}\ngpu_max_w = {w}\n",
                k.id, k.id
            ).ok();
        }
    }
    t.push_str(&miners_toml);
    t.push_str(&gpus_toml);
    // Zones: racks split in one or two zones; units sized around the zone's load.
    let n_zones = if racks.len() > 1 {
        r.random_range(1..=2)
    } else {
        1
    };
    for z in 0..n_zones {
        let members: Vec<&Rack> = racks
            .iter()
            .enumerate()
            .filter(|(i, _)| i % n_zones == z)
            .map(|(_, k)| k)
            .collect();
        let load: f64 = members
            .iter()
            .map(|k| k.rated_max + k.miners.iter().map(|m| m.2).sum::<f64>() / 1000.0)
            .sum();
        let n_units = r.random_range(2..=4);
        let cap = (load * r.random_range(0.5..1.3) / f64::from(n_units - 1))
            .max(1.0)
            .round()
            + 1.0;
        let redundancy = if r.random_bool(0.8) { "n+1" } else { "none" };
        let names: Vec<String> = members.iter().map(|k| format!("\"{}\"", k.id)).collect();
        let mut units = Vec::new();
        for u in 0..n_units {
            let d = format!("cu-{z}-{u}");
            writeln!(
                dev,
                "[[modbus_devices]]\nid = \"{d}\"\ntransport = \"tcp\"\nhost = \"127.0.0.1\"\nport = {}\nunit_id = 1\nprofile = \"generic-cooling\"\n",
                next_port()
            ).ok();
            units.push(format!(
                "{{ id = \"unit-{z}-{u}\", capacity_kw = {cap}, device = \"{d}\" }}"
            ));
        }
        writeln!(
            t,
            "[[cooling_zones]]\nid = \"zone-{z}\"\nredundancy = \"{redundancy}\"\nracks = [{}]\nunits = [{}]\n",
            names.join(", "),
            units.join(", ")
        ).ok();
    }
    t.push_str(&dev);
    t
}

/// One miner's physics.
#[derive(Debug, Clone)]
pub(crate) struct PMiner {
    pub power_w: f64,
    pub mode: MinerMode,
    pub target_w: Option<f64>,
    pub outlet_on: bool,
    /// Ignores API commands (sleep, target, wake); outlets still work.
    pub ignores: bool,
    /// A command taking effect at a time.
    pub change: Option<(Millis, Lever, f64)>,
}

#[derive(Debug, Clone)]
pub(crate) struct PGpu {
    pub count: usize,
    pub limits: GpuLimits,
    pub nvml: bool,
    /// Swing frequency idle <-> cap, Hz (0: steady at `util`).
    pub swing_hz: f64,
    pub util: f64,
    /// With `swing_hz` 0: the highest `util` within the last second (the meter's peak),
    /// when it differs from `util`.
    pub peak_util: Option<f64>,
}

/// Which inputs read stale (their readings stop advancing).
#[derive(Debug, Clone, Default)]
pub(crate) struct Stale {
    pub meters: Vec<bool>,
    pub miners: Vec<bool>,
    pub gpus: Vec<bool>,
    pub units: Vec<Vec<bool>>,
}

/// One decision and what it saw.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub now: Millis,
    pub tick: Tick,
    pub snap: Snapshot,
    pub pre: ControlState,
    pub plan: Plan,
}

pub(crate) struct Sim {
    pub site: Site,
    pub topo: Topology,
    pub state: ControlState,
    pub now: Millis,
    pub miners: Vec<PMiner>,
    pub gpus: Vec<PGpu>,
    pub units: Vec<Vec<UnitState>>,
    pub stale: Stale,
    /// Extra load per node (racks), kW.
    pub other_kw: Vec<f64>,
    pub snap: Snapshot,
    /// Miner command latency, ms.
    pub latency_ms: u64,
    /// Per miner: its own command latency, ms (a slow firmware), instead of `latency_ms`.
    pub miner_latency_ms: Vec<Option<u64>>,
    pub steps: Vec<Step>,
    pub keep_steps: bool,
}

impl Sim {
    pub(crate) fn new(site: Site, no_nvml: bool) -> Sim {
        let topo = Topology::new(&site);
        let state = ControlState::new(&site, 0);
        let miners = site
            .miners
            .iter()
            .map(|m| PMiner {
                power_w: m.nominal_w,
                mode: MinerMode::Mining,
                target_w: None,
                outlet_on: true,
                ignores: false,
                change: None,
            })
            .collect();
        let gpus = site
            .gpu_nodes
            .iter()
            .map(|g| {
                let max = g.gpu_max_w.unwrap_or(700.0);
                PGpu {
                    count: usize::try_from(g.gpus).unwrap(),
                    limits: GpuLimits {
                        enforced_w: max,
                        min_w: (max * 0.3).round(),
                        max_w: max,
                        default_w: max,
                    },
                    nvml: !no_nvml,
                    swing_hz: 0.0,
                    util: 0.3,
                    peak_util: None,
                }
            })
            .collect();
        let units = site
            .zones
            .iter()
            .map(|z| vec![UnitState::Running; z.units.len()])
            .collect();
        let stale = Stale {
            meters: vec![false; site.nodes.len()],
            miners: vec![false; site.miners.len()],
            gpus: vec![false; site.gpu_nodes.len()],
            units: site
                .zones
                .iter()
                .map(|z| vec![false; z.units.len()])
                .collect(),
        };
        let snap = Snapshot::empty(&site);
        let other_kw = vec![0.0; site.nodes.len()];
        let n_miners = site.miners.len();
        Sim {
            site,
            topo,
            state,
            now: 0,
            miners,
            gpus,
            units,
            stale,
            other_kw,
            snap,
            latency_ms: 3_000,
            miner_latency_ms: vec![None; n_miners],
            steps: Vec::new(),
            keep_steps: true,
        }
    }

    pub(crate) fn miner(&self, id: &str) -> usize {
        self.site.miner_index(id).unwrap()
    }

    pub(crate) fn node(&self, id: &str) -> NodeIdx {
        self.site.node_index(id).unwrap()
    }

    pub(crate) fn gpu(&self, id: &str) -> usize {
        self.site.gpu_nodes.iter().position(|g| g.id == id).unwrap()
    }

    fn gpu_power_w(&self, g: usize, peak: bool) -> f64 {
        let p = &self.gpus[g];
        let cap = p.limits.enforced_w * p.count as f64;
        if p.swing_hz <= 0.0 {
            return cap
                * if peak {
                    p.peak_util.unwrap_or(p.util).max(p.util)
                } else {
                    p.util
                };
        }
        if peak {
            return cap;
        }
        // Square wave between idle (15%) and the cap.
        let phase = (self.now as f64 / 1000.0 * p.swing_hz * 2.0).floor() as u64;
        if phase % 2 == 0 {
            cap
        } else {
            cap * 0.15
        }
    }

    /// Rack power (W) now and its peak over the last second.
    fn rack_w(&self, rack: NodeIdx) -> (f64, f64) {
        let mut now = self.other_kw[rack] * 1000.0;
        let mut peak = now;
        for &m in &self.topo.rack_miners[rack] {
            let w = if self.miners[m].outlet_on {
                self.miners[m].power_w
            } else {
                0.0
            };
            now += w;
            peak += w;
        }
        for &g in &self.topo.rack_gpus[rack] {
            now += self.gpu_power_w(g, false);
            peak += self.gpu_power_w(g, true);
        }
        (now, peak)
    }

    fn advance_physics(&mut self) {
        let now = self.now;
        for (i, pm) in self.miners.iter_mut().enumerate() {
            let Some((at, lever, w)) = pm.change else {
                continue;
            };
            if at > now {
                continue;
            }
            pm.change = None;
            match lever {
                Lever::PowerTarget | Lever::PowerTargetRaise => {
                    pm.target_w = (w < self.site.miners[i].nominal_w - 1.0).then_some(w);
                    pm.power_w = w;
                    pm.mode = MinerMode::Mining;
                }
                Lever::Sleep => {
                    pm.mode = MinerMode::Sleeping;
                    pm.power_w = self.site.miners[i].idle_w;
                }
                Lever::Wake => {
                    pm.mode = MinerMode::Mining;
                    pm.power_w = pm.target_w.unwrap_or(self.site.miners[i].nominal_w);
                }
                Lever::OutletOn => {
                    pm.mode = MinerMode::Mining;
                    pm.target_w = None;
                    pm.power_w = self.site.miners[i].nominal_w;
                }
                _ => {}
            }
        }
    }

    fn build_snapshot(&mut self) {
        let now = self.now;
        let n = self.site.nodes.len();
        // Node power: racks, then up the tree (a dual-corded rack splits across its cords).
        let mut w_now = vec![0.0; n];
        let mut w_peak = vec![0.0; n];
        for r in 0..n {
            if !self.site.nodes[r].is_rack() {
                continue;
            }
            let (a, b) = self.rack_w(r);
            w_now[r] = a;
            w_peak[r] = b;
        }
        for &r in &self.topo.bottom_up {
            let parents = self.site.nodes[r].parents.clone();
            let k = parents.len().max(1) as f64;
            for p in parents {
                w_now[p] += w_now[r] / k;
                w_peak[p] += w_peak[r] / k;
            }
        }
        for i in 0..n {
            if !self.stale.meters[i] && !self.site.nodes[i].meters.is_empty() {
                self.snap.meters[i] = Some(MeterReading {
                    kw: w_now[i] / 1000.0,
                    max_kw: w_peak[i] / 1000.0,
                    taken_at: now,
                });
            }
        }
        for (i, pm) in self.miners.iter().enumerate() {
            if self.site.miners[i].outlet.is_some() {
                self.snap.outlets[i] = Some(OutletReading {
                    on: pm.outlet_on,
                    taken_at: now,
                });
            }
            if !self.stale.miners[i] && pm.outlet_on {
                self.snap.miners[i] = Some(MinerReading {
                    power_w: pm.power_w,
                    mode: pm.mode,
                    power_target_w: pm.target_w,
                    taken_at: now,
                });
            }
        }
        for g in 0..self.gpus.len() {
            if self.stale.gpus[g] {
                continue;
            }
            let p = &self.gpus[g];
            self.snap.gpus[g] = Some(GpuNodeReading {
                power_w: self.gpu_power_w(g, false),
                power_taken_at: now,
                nvml_available: p.nvml,
                gpus: vec![p.limits; p.count],
                limits_taken_at: now,
            });
        }
        for (z, us) in self.units.iter().enumerate() {
            for (u, s) in us.iter().enumerate() {
                if !self.stale.units[z][u] {
                    self.snap.units[z][u] = Some(UnitReading {
                        state: *s,
                        capacity_kw: None,
                        taken_at: now,
                    });
                }
            }
        }
    }

    fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            match a.device {
                rackwarden::control::Device::Miner(i) => {
                    let latency = self.miner_latency_ms[i].unwrap_or(self.latency_ms);
                    let pm = &mut self.miners[i];
                    match a.lever {
                        Lever::OutletOff => {
                            pm.outlet_on = false;
                            pm.change = None;
                        }
                        Lever::OutletOn => {
                            pm.outlet_on = true;
                            pm.mode = MinerMode::Unknown;
                            pm.power_w = 0.0;
                            pm.change = Some((self.now + latency, Lever::OutletOn, 0.0));
                        }
                        l if !pm.ignores => {
                            pm.change = Some((self.now + latency, l, a.to_w));
                        }
                        _ => {}
                    }
                }
                rackwarden::control::Device::GpuNode(g) => {
                    self.gpus[g].limits.enforced_w = a.to_w;
                }
            }
        }
    }

    /// Runs one tick of `dt` ms and returns its step.
    pub(crate) fn tick(&mut self) -> &Step {
        self.now += 1_000;
        self.advance_physics();
        self.build_snapshot();
        let tick = if self.now % 5_000 == 0 {
            Tick::Slow
        } else {
            Tick::Fast
        };
        let plan = decide(
            &self.site,
            &self.topo,
            &self.snap,
            &self.state,
            self.now,
            tick,
        );
        self.apply(&plan.actions);
        let step = Step {
            now: self.now,
            tick,
            snap: self.snap.clone(),
            pre: std::mem::replace(&mut self.state, plan.state.clone()),
            plan,
        };
        if !self.keep_steps {
            self.steps.clear();
        }
        self.steps.push(step);
        self.steps.last().unwrap()
    }

    /// Runs until `t_s` seconds.
    pub(crate) fn run_until(&mut self, t_s: u64) {
        while self.now < t_s * 1000 {
            self.tick();
        }
    }

    /// Actions in the window (from, to] in seconds.
    pub(crate) fn actions(&self, from_s: u64, to_s: u64) -> Vec<&Action> {
        self.steps
            .iter()
            .filter(|s| s.now > from_s * 1000 && s.now <= to_s * 1000)
            .flat_map(|s| s.plan.actions.iter())
            .collect()
    }

    pub(crate) fn alerts(&self, from_s: u64, to_s: u64) -> Vec<&'static str> {
        self.steps
            .iter()
            .filter(|s| s.now > from_s * 1000 && s.now <= to_s * 1000)
            .flat_map(|s| s.plan.alerts.iter().map(|a| a.name()))
            .collect()
    }
}

pub(crate) mod invariants;

/// Helpers the invariant checks share (control_invariants.rs and soak_month.rs).
pub(crate) mod checks {
    use rackwarden::control::{Action, ControlState, Device, Intent, Lever, Scope};

    use super::{Sim, Step};

    pub(crate) fn scope_miners(sim: &Sim, scope: Scope) -> &[usize] {
        match scope {
            Scope::Node(n) => &sim.topo.miners_under[n],
            Scope::Zone(z) => &sim.topo.zone_miners[z],
            Scope::Device => &[],
        }
    }

    /// A miner that draws above idle with a lever left.
    pub(crate) fn controllable(sim: &Sim, st: &ControlState, m: usize) -> bool {
        let miner = &sim.site.miners[m];
        matches!(st.miners[m].intent, Intent::Normal | Intent::Target { .. })
            && (miner.firmware.levers().sleep || sim.topo.outlet_ok[m])
    }

    pub(crate) fn is_miner_restore(a: &Action) -> bool {
        matches!(
            a.lever,
            Lever::Wake | Lever::OutletOn | Lever::PowerTargetRaise
        )
    }

    pub(crate) fn rack_of(sim: &Sim, a: &Action) -> usize {
        match a.device {
            Device::Miner(i) => sim.site.miners[i].rack,
            Device::GpuNode(g) => sim.site.gpu_nodes[g].rack,
        }
    }

    pub(crate) fn restore_kw(step: &Step, a: &Action) -> f64 {
        match a.device {
            Device::Miner(_) => (a.to_w - a.from_w) / 1000.0,
            Device::GpuNode(g) => {
                let count = step.snap.gpu(g).map_or(0, |r| r.gpus.len()) as f64;
                (a.to_w - a.from_w) * count / 1000.0
            }
        }
    }

    pub(crate) fn window_count(times: &[u64], now: u64, window: u64) -> usize {
        times.iter().filter(|&&t| now - t < window).count()
    }
}
