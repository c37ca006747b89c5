//! The collectors: one task per Modbus device, one for the miner fleet, one per GPU
//! host, each on its own interval, each reading through [`super::io::Io`] and applying
//! what it read to the shared snapshot (`Shared::apply_*`). A reading that may need a shed
//! now wakes the loop (`Shared::urgent`). Collectors never decide.

use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

use rackwarden_config::profile::Role;
use rackwarden_config::Site;
use rackwarden_protocols::gpu;
use rackwarden_protocols::miner::{MinerDriver, MinerTelemetry};
use rackwarden_protocols::modbus::client::DeviceReading;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::agent::{lock, Shared};
use super::clock::Millis;
use crate::control::{
    GpuLimits, GpuNodeReading, MeterReading, MinerMode, MinerReading, OutletReading, Snapshot,
    UnitReading, UnitState,
};
use crate::metrics::PollClass;

/// Latest meter values per (node, meter) so a node with several meters sums them.
#[derive(Default)]
pub(super) struct MeterCache {
    /// `values[node][k]`: kW and time of meter `k` of `node`.
    pub(super) values: Vec<Vec<Option<(f64, Millis)>>>,
}

/// Which snapshot entries a Modbus device feeds.
#[derive(Default, Clone)]
pub(super) struct DeviceUse {
    pub(super) meters: Vec<(usize, usize, String)>,
    pub(super) outlets: Vec<(usize, u32)>,
    pub(super) units: Vec<(usize, usize)>,
}

/// Miner polls in flight at once: bounds sockets and descriptors on a 30,000-miner site.
/// Which snapshot entries each Modbus device feeds, and an empty cache of the meters'
/// latest values.
pub(super) fn site_uses(site: &Site) -> (Vec<DeviceUse>, MeterCache) {
    let mut uses = vec![DeviceUse::default(); site.modbus_devices.len()];
    let mut cache = MeterCache {
        values: site
            .nodes
            .iter()
            .map(|n| vec![None; n.meters.len()])
            .collect(),
    };
    for (ni, n) in site.nodes.iter().enumerate() {
        for (k, m) in n.meters.iter().enumerate() {
            uses[m.device].meters.push((ni, k, m.point.clone()));
        }
    }
    for (mi, m) in site.miners.iter().enumerate() {
        if let Some(o) = &m.outlet {
            uses[o.device].outlets.push((mi, o.outlet));
        }
    }
    for (zi, z) in site.zones.iter().enumerate() {
        for (ui, u) in z.units.iter().enumerate() {
            if let Some(d) = u.device {
                uses[d].units.push((zi, ui));
            }
        }
    }
    cache.values.shrink_to_fit();
    (uses, cache)
}

pub(super) const MINER_POLLS_IN_FLIGHT: usize = 512;

impl Shared {
    pub(super) fn apply_device(&self, dev: usize, r: &DeviceReading, now: Millis) {
        let uses = &self.uses[dev];
        let site = &self.site;
        if !uses.meters.is_empty() {
            if let Some(book) = lock(&self.energy).as_mut() {
                book.observe_device(dev, now, |p, i| r.get(p, i));
            }
        }
        let mut snap = lock(&self.snapshot);
        if !uses.meters.is_empty() {
            let mut cache = lock(&self.meters);
            for (node, k, point) in &uses.meters {
                let v = r.get(point, 1);
                cache.values[*node][*k] = v.map(|kw| (kw, now));
                let all: Option<Vec<(f64, Millis)>> = cache.values[*node].iter().copied().collect();
                if let Some(all) = all {
                    let kw: f64 = all.iter().map(|(v, _)| v).sum();
                    let taken_at = all.iter().map(|(_, t)| *t).min().unwrap_or(now);
                    // Over the shed threshold (`shed_fraction x B`, where a measured
                    // excursion sheds at once) from below it, or from no reading: the
                    // loop decides now, not at its next tick. Only the crossing wakes it
                    // (the periodic ticks carry on while the node stays over).
                    let n = &site.nodes[*node];
                    let threshold = site.policy.shed_fraction * n.budget_kw;
                    let was_under = snap.meters[*node].is_none_or(|m| m.kw < threshold);
                    if n.budget_kw > 0.0 && kw >= threshold && was_under {
                        self.urgent.notify_one();
                    }
                    let max_kw = snap.meters[*node].map_or(kw, |m| {
                        if m.max_kw.is_finite() {
                            m.max_kw.max(kw)
                        } else {
                            kw
                        }
                    });
                    snap.meters[*node] = Some(MeterReading {
                        kw,
                        max_kw,
                        taken_at,
                    });
                    // For the reaction benchmark (bench/): when a reading reached the
                    // snapshot. Disabled, a trace callsite costs one atomic load.
                    tracing::trace!(target: "rackwarden::reading", node = *node, kw, "meter reading");
                }
            }
        }
        for (miner, outlet) in &uses.outlets {
            if let Some(v) = r.get(Role::OutletState.name(), *outlet) {
                snap.outlets[*miner] = Some(OutletReading {
                    on: v >= 0.5,
                    taken_at: now,
                });
            }
        }
        for (z, u) in &uses.units {
            let flag = |role: Role| r.get(role.name(), 1).map(|v| v >= 0.5);
            let state = if flag(Role::UnitMaintenance) == Some(true) {
                UnitState::Maintenance
            } else if flag(Role::UnitAlarm) == Some(true) {
                UnitState::Alarmed
            } else if flag(Role::UnitRunning) == Some(true) {
                UnitState::Running
            } else {
                UnitState::Offline
            };
            let capacity_kw = r
                .get(Role::CapacityKw.name(), 1)
                .filter(|c| c.is_finite() && *c > 0.0)
                .map(|c| c.min(site.zones[*z].units[*u].capacity_kw));
            snap.units[*z][*u] = Some(UnitReading {
                state,
                capacity_kw,
                taken_at: now,
            });
        }
    }

    pub(super) fn apply_miner(&self, i: usize, t: &MinerTelemetry, now: Millis) {
        let m = &self.site.miners[i];
        let mode = match t.mode {
            rackwarden_protocols::miner::telemetry::MinerMode::Mining => MinerMode::Mining,
            rackwarden_protocols::miner::telemetry::MinerMode::Sleeping => MinerMode::Sleeping,
            rackwarden_protocols::miner::telemetry::MinerMode::Paused => MinerMode::Paused,
            rackwarden_protocols::miner::telemetry::MinerMode::Unknown => MinerMode::Unknown,
        };
        // A miner that answers without a power figure is taken at nameplate.
        let power_w = t.power_w.filter(|p| p.is_finite()).unwrap_or(m.nominal_w);
        lock(&self.snapshot).miners[i] = Some(MinerReading {
            power_w,
            mode,
            power_target_w: t.power_target_w,
            taken_at: now,
        });
    }

    pub(super) fn apply_gpu(&self, i: usize, r: &gpu::GpuNodeReading, now: Millis) {
        let gpus: Vec<GpuLimits> = r
            .gpus
            .iter()
            .filter_map(|g| {
                Some(GpuLimits {
                    enforced_w: g.enforced_limit_w?,
                    min_w: g.limit_min_w?,
                    max_w: g.limit_max_w?,
                    default_w: g.default_limit_w.or(g.limit_max_w)?,
                })
            })
            .collect();
        let complete = gpus.len() == r.gpus.len();
        tracing::trace!(
            target: "rackwarden::reading",
            gpu_node = i,
            enforced_w = gpus.iter().map(|g| g.enforced_w).sum::<f64>(),
            "gpu reading"
        );
        let enforced: f64 = gpus.iter().map(|g| g.enforced_w).sum();
        let power_w = r.power_w().unwrap_or(0.0);
        let mut snap = lock(&self.snapshot);
        // A tenant raised its GPUs' limits: the rack's worst case X rose, which may put a
        // node's worst case over its ceiling, so decide now, not at the next tick. (Power
        // alone does not wake the loop: a training job swings by most of its limits
        // several times a second; the meters' crossings catch what it does to a node.)
        let raised = snap.gpus[i]
            .as_ref()
            .is_some_and(|old| enforced > old.gpus.iter().map(|g| g.enforced_w).sum::<f64>() + 1.0);
        snap.gpus[i] = Some(GpuNodeReading {
            power_w,
            power_taken_at: now,
            nvml_available: r.nvml_available && complete,
            gpus,
            limits_taken_at: now,
        });
        drop(snap);
        if raised {
            self.urgent.notify_one();
        }
    }
}

/// Whether every input the site names has been read at least once.
pub(super) fn first_round_done(site: &Site, s: &Snapshot) -> bool {
    let metered = site
        .nodes
        .iter()
        .enumerate()
        .all(|(i, n)| n.meters.is_empty() || s.meters.get(i).is_some_and(Option::is_some));
    let units = site.zones.iter().enumerate().all(|(z, zone)| {
        zone.units.iter().enumerate().all(|(u, unit)| {
            unit.device.is_none()
                || s.units
                    .get(z)
                    .and_then(|v| v.get(u))
                    .is_some_and(Option::is_some)
        })
    });
    // A miner without a driver is never polled: it cannot hold the first decision back.
    let miners = s
        .miners
        .iter()
        .enumerate()
        .all(|(i, m)| m.is_some() || s.undriveable(i));
    metered && units && miners && s.gpus.iter().all(Option::is_some)
}

pub(super) fn spawn_collectors(
    shared: &Arc<Shared>,
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: &CancellationToken,
) {
    let site = &shared.site;
    let p = &site.policy;
    for (d, dev) in site.modbus_devices.iter().enumerate() {
        let use_ = &shared.uses[d];
        if use_.meters.is_empty() && use_.outlets.is_empty() && use_.units.is_empty() {
            continue;
        }
        let class_ms = if use_.meters.is_empty() && use_.outlets.is_empty() {
            p.cooling_poll_ms
        } else {
            p.meter_poll_ms
        };
        let every = shared.clock.real(dev.poll_interval_ms.unwrap_or(class_ms));
        let (sh, cancel) = (shared.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = iv.tick() => {}
                }
                let t0 = tokio::time::Instant::now();
                let r = sh.io.modbus.read_device(d).await;
                sh.hub.poll(PollClass::Modbus, t0.elapsed(), r.is_ok());
                match r {
                    Ok(r) => {
                        if std::mem::take(&mut failing) {
                            info!(device = %sh.site.modbus_devices[d].id, "modbus device answers again");
                        }
                        sh.apply_device(d, &r, sh.clock.now_ms());
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            warn!(device = %sh.site.modbus_devices[d].id, error = %e, "modbus read failed; its readings go stale");
                        }
                    }
                }
            }
        });
    }
    if !site.miners.is_empty() {
        let every = shared.clock.real(p.miner_poll_ms);
        let budget = miner_poll_budget(shared);
        let (sh, cancel) = (shared.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut failing = vec![false; sh.site.miners.len()];
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = iv.tick() => {}
                }
                // Each poll is bounded by `budget`, and each answer reaches the snapshot
                // as it comes: a miner that hangs (or a web interface that waits out its
                // 30 s HTTP timeout) must not hold back the readings of all the others.
                let mut results = futures::stream::iter(0..sh.site.miners.len())
                    .map(|i| {
                        let sh = &sh;
                        async move {
                            let r = match &sh.io.miners[i] {
                                Some(d) => {
                                    let t0 = tokio::time::Instant::now();
                                    let r = poll_bounded(d.as_ref(), budget).await;
                                    sh.hub.poll(PollClass::Miner, t0.elapsed(), r.is_ok());
                                    Some(r)
                                }
                                None => None,
                            };
                            (i, r)
                        }
                    })
                    .buffer_unordered(MINER_POLLS_IN_FLIGHT);
                while let Some((i, r)) = results.next().await {
                    match r {
                        Some(Ok(t)) => {
                            failing[i] = false;
                            sh.apply_miner(i, &t, sh.clock.now_ms());
                        }
                        Some(Err(e)) if !std::mem::replace(&mut failing[i], true) => {
                            warn!(device = %sh.site.miners[i].id, error = %e, "miner poll failed; its reading goes stale");
                        }
                        Some(Err(_)) | None => {}
                    }
                }
            }
        });
    }
    for g in 0..site.gpu_nodes.len() {
        let every = shared.clock.real(p.gpu_power_poll_ms);
        let (sh, cancel) = (shared.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = iv.tick() => {}
                }
                let t0 = tokio::time::Instant::now();
                let r = sh.io.read_gpu(g).await;
                sh.hub.poll(PollClass::Gpu, t0.elapsed(), r.is_ok());
                match r {
                    Ok(r) => {
                        failing = false;
                        sh.apply_gpu(g, &r, sh.clock.now_ms());
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            warn!(device = %sh.site.gpu_nodes[g].id, error = %e, "gpu node read failed; it goes stale");
                        }
                    }
                }
            }
        });
    }
}

/// How long one miner poll may take: half the miner staleness limit, so a healthy
/// miner polled in the same round as hung ones is read again well within that limit.
pub(super) fn miner_poll_budget(sh: &Shared) -> Duration {
    sh.clock.real(sh.site.policy.miner_stale_ms / 2)
}

/// One miner poll, given up after `budget` (the driver's own timeouts may be longer).
pub(super) async fn poll_bounded(
    d: &dyn MinerDriver,
    budget: Duration,
) -> Result<MinerTelemetry, String> {
    match tokio::time::timeout(budget, d.poll()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "miner {} at {}: poll gave no answer within {} ms",
            d.id(),
            d.addr(),
            budget.as_millis()
        )),
    }
}

#[cfg(test)]
mod poll_bound_tests {
    use super::*;
    use rackwarden_config::Firmware;
    use rackwarden_protocols::miner::{DriverFactory, DriverOptions};
    use rackwarden_sim::miner::{Fault, MinerSim, SimMinerSpec, SimOptions};

    /// A hung miner's poll ends at the budget with an error naming it, however long the
    /// driver's own timeouts are; a healthy one answers within the same budget.
    #[tokio::test]
    async fn a_hung_miner_poll_ends_at_the_budget_naming_the_miner() {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 97, 3, 1));
        let spec = SimMinerSpec::new(
            "hung-1",
            Firmware::Luxos,
            std::net::SocketAddr::new(ip, 0),
            None,
        );
        let sim = MinerSim::start(vec![spec], SimOptions { time_scale: 100.0 })
            .await
            .unwrap();
        let m = sim.miners()[0].clone();
        let opts = DriverOptions {
            reply_timeout: Duration::from_secs(30),
            ..DriverOptions::default()
        };
        let d = DriverFactory::new(opts)
            .unwrap()
            .build(&m.to_config())
            .unwrap();
        let budget = Duration::from_millis(300);
        assert!(poll_bounded(d.as_ref(), budget).await.is_ok());
        m.set_fault(Fault::NoAnswer);
        let t0 = tokio::time::Instant::now();
        let e = poll_bounded(d.as_ref(), budget).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert!(e.contains("hung-1") && e.contains("300 ms"), "{e}");
        sim.shutdown().await;
    }
}
