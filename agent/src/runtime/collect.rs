//! The collectors: one task per Modbus device and one per GPU host (the generic
//! [`collect`]: interval, timeout, backoff, apply), one for the miner fleet, each on its
//! own interval, each reading through [`super::io::Io`] and applying
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
use super::io::IoError;
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

/// One source read on an interval by [`collect`]: what it is, how often, how long a read
/// may take.
struct Source {
    /// The device's id, in every log line about it.
    id: String,
    class: PollClass,
    every: Duration,
    /// A read past this is abandoned and counts as failed (the device's staleness
    /// limit: an answer later than that would be stale anyway).
    timeout: Duration,
}

/// After consecutive failures a source is read every 2nd, then every 4th tick (a dead
/// gateway is not hammered; a recovery is seen within 4 intervals).
const MAX_BACKOFF_TICKS: u32 = 4;

/// The generic collector: reads `src` on its interval until `cancel`, each read bounded
/// by its timeout and counted (`rackwarden_polls_total`), each answer applied at once;
/// the first failure and the recovery said once each, naming the device; backoff while
/// it fails ([`MAX_BACKOFF_TICKS`]).
async fn collect<T, R, Fut, A>(
    sh: Arc<Shared>,
    cancel: CancellationToken,
    src: Source,
    read: R,
    apply: A,
) where
    R: Fn(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = Result<T, IoError>>,
    A: Fn(&Shared, &T, Millis),
{
    let mut iv = tokio::time::interval(src.every);
    iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut failures, mut skip) = (0u32, 0u32);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = iv.tick() => {}
        }
        if skip > 0 {
            skip -= 1;
            continue;
        }
        let t0 = tokio::time::Instant::now();
        let r = match tokio::time::timeout(src.timeout, read(sh.clone())).await {
            Ok(r) => r,
            Err(_) => Err(IoError::ReadTimeout {
                device: src.id.clone(),
                ms: src.timeout.as_millis(),
            }),
        };
        sh.hub.poll(src.class, t0.elapsed(), r.is_ok());
        match r {
            Ok(v) => {
                if std::mem::take(&mut failures) > 0 {
                    info!(device = %src.id, "{} answers again", src.class.noun());
                }
                apply(&sh, &v, sh.clock.now_ms());
            }
            Err(e) => {
                if failures == 0 {
                    warn!(device = %src.id, error = %e, "{} read failed; its readings go stale", src.class.noun());
                }
                failures = failures.saturating_add(1);
                skip = backoff_skip(failures);
            }
        }
    }
}

/// Ticks to skip after `failures` consecutive failures: 0, then 1, then 3.
fn backoff_skip(failures: u32) -> u32 {
    match failures {
        0 | 1 => 0,
        2 => 1,
        _ => MAX_BACKOFF_TICKS - 1,
    }
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
        let (class_ms, stale_ms) = if use_.meters.is_empty() && use_.outlets.is_empty() {
            (p.cooling_poll_ms, p.cooling_stale_ms)
        } else {
            (p.meter_poll_ms, p.meter_stale_ms)
        };
        let src = Source {
            id: dev.id.clone(),
            class: PollClass::Modbus,
            every: shared.clock.real(dev.poll_interval_ms.unwrap_or(class_ms)),
            timeout: shared.clock.real(stale_ms),
        };
        tasks.spawn(collect(
            shared.clone(),
            cancel.clone(),
            src,
            move |sh| async move { Ok(sh.io.modbus.read_device(d).await?) },
            move |sh, r, now| sh.apply_device(d, r, now),
        ));
    }
    if !site.miners.is_empty() {
        tasks.spawn(collect_miners(shared.clone(), cancel.clone()));
    }
    for (g, node) in site.gpu_nodes.iter().enumerate() {
        let src = Source {
            id: node.id.clone(),
            class: PollClass::Gpu,
            every: shared.clock.real(p.gpu_power_poll_ms),
            timeout: shared.clock.real(p.gpu_power_stale_ms),
        };
        tasks.spawn(collect(
            shared.clone(),
            cancel.clone(),
            src,
            move |sh| async move { sh.io.read_gpu(&sh.site, g).await },
            move |sh, r, now| sh.apply_gpu(g, r, now),
        ));
    }
}

/// The miner fleet's collector: every miner once per interval, at most
/// [`MINER_POLLS_IN_FLIGHT`] at a time, each poll bounded ([`poll_bounded`]) and applied
/// as it comes: a miner that hangs (or a web interface that waits out its 30 s HTTP
/// timeout) must not hold back the readings of all the others.
async fn collect_miners(sh: Arc<Shared>, cancel: CancellationToken) {
    let mut iv = tokio::time::interval(sh.clock.real(sh.site.policy.miner_poll_ms));
    iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let budget = miner_poll_budget(&sh);
    let mut failing = vec![false; sh.site.miners.len()];
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = iv.tick() => {}
        }
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
) -> Result<MinerTelemetry, IoError> {
    match tokio::time::timeout(budget, d.poll()).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(IoError::PollTimeout {
            device: d.id().to_owned(),
            addr: d.addr().to_string(),
            ms: budget.as_millis(),
        }),
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
        // The bound's own error, typed, and its text names the miner and the bound.
        assert!(
            matches!(&e, IoError::PollTimeout { device, ms: 300, .. } if device == "hung-1"),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(text.contains("hung-1") && text.contains("300 ms"), "{text}");
        sim.shutdown().await;
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    /// A failing source is read on 1 tick in 1, then 1 in 2, then 1 in 4: never less
    /// often (a recovery is seen within 4 intervals).
    #[test]
    fn a_failing_source_backs_off_to_one_read_in_four_ticks() {
        let reads: Vec<u32> = (1..=6).map(|f| backoff_skip(f) + 1).collect();
        assert_eq!(reads, [1, 2, 4, 4, 4, 4]);
        assert_eq!(backoff_skip(u32::MAX) + 1, MAX_BACKOFF_TICKS);
    }
}
