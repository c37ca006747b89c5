//! Benchmark of `control::decide` on a large site (the 100 MW example).
//!
//! `cargo run --release -p rackwarden --example bench_decide -- examples/site-100mw.toml [ticks]`
//!
//! Every device reads fresh each tick (miners at nameplate, GPUs swinging between idle
//! and their 1200 W limits, meters at the sum below them). After the 60 s start-up hold,
//! the run alternates calm stretches with GPU surges (a feed's GPU limits raised to their
//! maximum, which makes the controller shed and later restore mining), so the timed ticks
//! include sheds, restores and their confirmations, not only idle ticks. Prints median,
//! p99 and maximum of the wall time per tick, fast and slow ticks apart, and of the
//! thread's CPU time per tick (`cpu`: unaffected by other processes on a busy machine).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use rackwarden::control::{
    decide_owned, ControlState, Device, GpuLimits, GpuNodeReading, Lever, MeterReading, MinerMode,
    MinerReading, OutletReading, Snapshot, Tick, Topology, UnitReading, UnitState,
};
use rackwarden_config::Site;

struct World {
    miner_w: Vec<f64>,
    miner_mode: Vec<MinerMode>,
    outlet_on: Vec<bool>,
    gpu_limit_w: Vec<f64>,
}

/// The `per_mille`-th per-mille of sorted samples (nearest rank).
fn percentile(sorted: &[f64], per_mille: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name:>5}: {:>6} ticks  median {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        v.len(),
        percentile(&v, 500),
        percentile(&v, 990),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

/// Fills the snapshot from the world at `now`.
fn observe(site: &Site, topo: &Topology, w: &World, snap: &mut Snapshot, now: u64) {
    let swing_high = (now / 500) % 2 == 0;
    let mut node_kw = vec![0.0; site.nodes.len()];
    for (g, gn) in site.gpu_nodes.iter().enumerate() {
        let count = usize::try_from(gn.gpus).unwrap_or(0);
        let max = gn.gpu_max_w.unwrap_or(700.0);
        let util = if swing_high { 1.0 } else { 0.15 };
        let power = w.gpu_limit_w[g] * count as f64 * util;
        snap.gpus[g] = Some(GpuNodeReading {
            power_w: power,
            power_taken_at: now,
            nvml_available: true,
            gpus: vec![
                GpuLimits {
                    enforced_w: w.gpu_limit_w[g],
                    min_w: 200.0,
                    max_w: max,
                    default_w: max,
                };
                count
            ],
            limits_taken_at: now,
        });
        node_kw[gn.rack] += power / 1000.0;
    }
    for (i, m) in site.miners.iter().enumerate() {
        if w.outlet_on[i] {
            snap.miners[i] = Some(MinerReading {
                power_w: w.miner_w[i],
                mode: w.miner_mode[i],
                power_target_w: None,
                taken_at: now,
            });
            node_kw[m.rack] += w.miner_w[i] / 1000.0;
        }
        if m.outlet.is_some() {
            snap.outlets[i] = Some(OutletReading {
                on: w.outlet_on[i],
                taken_at: now,
            });
        }
    }
    for &n in &topo.bottom_up {
        let parents = &site.nodes[n].parents;
        let share = node_kw[n] / parents.len().max(1) as f64;
        for &p in parents {
            node_kw[p] += share;
        }
    }
    for (n, node) in site.nodes.iter().enumerate() {
        if !node.meters.is_empty() {
            snap.meters[n] = Some(MeterReading::steady(node_kw[n], now));
        }
    }
    for (z, zone) in site.zones.iter().enumerate() {
        for u in 0..zone.units.len() {
            snap.units[z][u] = Some(UnitReading {
                state: UnitState::Running,
                capacity_kw: None,
                taken_at: now,
            });
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("usage: bench_decide SITE.toml [TICKS]");
        return ExitCode::from(64);
    };
    let ticks: u64 = args.next().and_then(|t| t.parse().ok()).unwrap_or(3_000);
    let site = match rackwarden_config::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(78);
        }
    };
    let t0 = Instant::now();
    let topo = Topology::new(&site);
    let topo_ms = t0.elapsed().as_secs_f64() * 1000.0;
    println!(
        "site {}: {} nodes, {} miners, {} GPU nodes, {} zones; topology built in {topo_ms:.1} ms",
        site.id,
        site.nodes.len(),
        site.miners.len(),
        site.gpu_nodes.len(),
        site.zones.len()
    );
    let mut world = World {
        miner_w: site.miners.iter().map(|m| m.nominal_w).collect(),
        miner_mode: vec![MinerMode::Mining; site.miners.len()],
        outlet_on: vec![true; site.miners.len()],
        gpu_limit_w: vec![600.0; site.gpu_nodes.len()],
    };
    let feeds: Vec<usize> = (0..site.nodes.len())
        .filter(|&n| site.nodes[n].kind == rackwarden_config::NodeKind::Feed)
        .collect();
    let mut snap = Snapshot::empty(&site);
    let mut state = ControlState::new(&site, 0);
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    // CPU time of this thread per tick: on a shared machine, wall time includes the
    // time other processes held the core.
    let mut cpu = Vec::new();
    let thread_cpu_ms = || {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map(|t| t.tv_sec() as f64 * 1e3 + t.tv_nsec() as f64 / 1e6)
            .unwrap_or(f64::NAN)
    };
    let (mut actions, mut sheds, mut restores) = (0usize, 0usize, 0usize);
    let warmup = 65;
    // Miner commands take effect 3 s later: (due, miner, lever, watts).
    let mut due: Vec<(u64, usize, Lever, f64)> = Vec::new();
    for k in 1..=(warmup + ticks) {
        let now = k * 1000;
        // Surges: every 300 s, one feed's GPUs go to their maximum limit for 120 s.
        let phase = k % 300;
        if phase == 100 || phase == 220 {
            let f = feeds
                .get(((k / 300) as usize) % feeds.len().max(1))
                .copied();
            for (g, gn) in site.gpu_nodes.iter().enumerate() {
                if f.is_some_and(|f| topo.ancestors[gn.rack].contains(&f)) {
                    world.gpu_limit_w[g] = if phase == 100 {
                        gn.gpu_max_w.unwrap_or(700.0)
                    } else {
                        600.0
                    };
                }
            }
        }
        due.retain(|&(t, i, lever, w)| {
            if t > now {
                return true;
            }
            match lever {
                Lever::Sleep => {
                    world.miner_mode[i] = MinerMode::Sleeping;
                    world.miner_w[i] = site.miners[i].idle_w;
                }
                _ => {
                    world.miner_mode[i] = MinerMode::Mining;
                    world.miner_w[i] = w;
                }
            }
            false
        });
        observe(&site, &topo, &world, &mut snap, now);
        let tick = if k % 5 == 0 { Tick::Slow } else { Tick::Fast };
        let c0 = thread_cpu_ms();
        let t = Instant::now();
        let plan = decide_owned(&site, &topo, &snap, state, now, tick);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let cpu_ms = thread_cpu_ms() - c0;
        if k > warmup {
            cpu.push(cpu_ms);
            match tick {
                Tick::Fast => fast.push(ms),
                Tick::Slow => slow.push(ms),
            }
            actions += plan.actions.len();
        }
        for a in &plan.actions {
            if a.lever.is_shed() {
                sheds += 1;
            } else {
                restores += 1;
            }
            match a.device {
                Device::Miner(i) => match a.lever {
                    Lever::OutletOff => world.outlet_on[i] = false,
                    Lever::OutletOn => world.outlet_on[i] = true,
                    l => due.push((now + 3_000, i, l, a.to_w)),
                },
                Device::GpuNode(g) => world.gpu_limit_w[g] = a.to_w,
            }
        }
        state = plan.state;
    }
    let all: Vec<f64> = fast.iter().chain(&slow).copied().collect();
    report("fast", fast);
    report("slow", slow);
    report("all", all);
    report("cpu", cpu);
    println!("{actions} actions in the timed ticks ({sheds} sheds, {restores} restores overall)");
    ExitCode::SUCCESS
}
