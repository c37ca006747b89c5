//! GPU sources: what the agent reads from NVIDIA GPUs (power, energy, temperature,
//! utilization, power limits) and the one thing it commands (a power cap).
//!
//! Three sources sit behind [`GpuSource`]:
//! - [`nvml::NvmlSource`]: NVML on this host, through a small blocking backend trait
//!   ([`nvml::NvmlBackend`]) with a real implementation and a fake;
//! - [`node::GpuNodeClient`]: a `rackwarden gpu-node` on a GPU host, over HTTP+JSON
//!   (the server side is [`node::serve`]);
//! - `rackwarden_sim::gpu::SimGpus` (the `rackwarden-sim` crate): scripted GPU load for
//!   the site simulator and tests.
//!
//! The controller's needs drive the shape: [`GpuNodeReading::nvml_available`] false means
//! "meter these GPUs at the PDU, reserve the rack's rated maximum and do not use the GPU
//! cap lever" (CONTROL.md, invariant 9); every cap is checked against the device's
//! constraints before anything is touched and confirmed by reading the enforced limit
//! back (invariant 7, "every action is confirmed by reading the device back").

pub mod node;
pub mod nvml;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// The alert name logged once when NVML cannot be loaded or initialised.
pub const ALERT_NVML_UNAVAILABLE: &str = "telemetry.nvml.unavailable";
/// The alert name logged once per source and NVML call that the device does not support.
pub const ALERT_NVML_UNSUPPORTED: &str = "telemetry.nvml.unsupported";

/// How far (W) an enforced limit may sit from the commanded one and still count as the
/// same: drivers store milliwatts but some round to whole watts.
pub const LIMIT_TOLERANCE_W: f64 = 1.0;

/// One GPU's reading. A field is `None` when the device does not support that call (it
/// was logged once); the controller then falls back as CONTROL.md says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuReading {
    /// NVML device index on its host.
    pub index: u32,
    /// Stable device identity (NVML UUID), when known.
    pub uuid: Option<String>,
    /// Power, averaged over the last second (NVML `power_usage` on Ampere and later).
    pub power_w: Option<f64>,
    /// Instant power (field value `NVML_FI_DEV_POWER_INSTANT`), where supported.
    pub power_instant_w: Option<f64>,
    /// Energy since the driver was loaded.
    pub energy_j: Option<f64>,
    pub temperature_c: Option<f64>,
    /// GPU utilization over the driver's last sample period, 0 to 100.
    pub utilization_pct: Option<f64>,
    /// The power limit the device enforces now.
    pub enforced_limit_w: Option<f64>,
    /// Lowest settable power limit.
    pub limit_min_w: Option<f64>,
    /// Highest settable power limit.
    pub limit_max_w: Option<f64>,
    /// The limit the device comes up with (after a reboot every cap is back to this).
    pub default_limit_w: Option<f64>,
}

impl GpuReading {
    /// The limit constraints `(min, max)` when both are known.
    pub fn constraints_w(&self) -> Option<(f64, f64)> {
        Some((self.limit_min_w?, self.limit_max_w?))
    }
}

/// Everything one GPU host reports in one read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuNodeReading {
    /// NVML loaded and initialised (simulated GPUs report true). False: reserve the
    /// rack's rated maximum and disable the GPU-cap lever.
    pub nvml_available: bool,
    pub gpus: Vec<GpuReading>,
}

impl GpuNodeReading {
    /// The reading of a host where NVML is missing.
    pub fn unavailable() -> GpuNodeReading {
        GpuNodeReading {
            nvml_available: false,
            gpus: Vec::new(),
        }
    }

    /// The GPU reserve (W) the controller may use for this host: the sum of enforced
    /// limits. `None` when NVML is unavailable or any GPU's limit is unknown: the caller
    /// then reserves the rack's rated maximum.
    pub fn reserve_w(&self) -> Option<f64> {
        if !self.nvml_available || self.gpus.is_empty() {
            return None;
        }
        self.gpus.iter().map(|g| g.enforced_limit_w).sum()
    }

    /// Whether the GPU-cap lever may be used on this host: NVML is there and every GPU
    /// reports its enforced limit and its constraints (a cap must be checked against
    /// them and read back).
    pub fn cap_lever_available(&self) -> bool {
        self.nvml_available
            && !self.gpus.is_empty()
            && self
                .gpus
                .iter()
                .all(|g| g.enforced_limit_w.is_some() && g.constraints_w().is_some())
    }

    /// Measured power of all GPUs (1 s averages), `None` if any is missing.
    pub fn power_w(&self) -> Option<f64> {
        if !self.nvml_available || self.gpus.is_empty() {
            return None;
        }
        self.gpus.iter().map(|g| g.power_w).sum()
    }
}

/// Which GPUs a power-cap command addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuTarget {
    /// Every GPU of the host.
    All,
    /// One GPU by its NVML index.
    Gpu(u32),
}

/// A cap applied to one GPU and confirmed by reading its enforced limit back.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AppliedCap {
    pub index: u32,
    /// The enforced limit read back after the set.
    pub enforced_w: f64,
}

/// The errors of GPU sources.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{source_id}: nvml is unavailable on this host, the gpu cap lever is disabled")]
    NvmlUnavailable { source_id: String },
    #[error("{source_id}: nvml call {call} failed on gpu {gpu:?}")]
    Nvml {
        source_id: String,
        call: &'static str,
        gpu: Option<u32>,
        #[source]
        source: nvml::NvmlCallError,
    },
    #[error("{source_id}: gpu {gpu} does not exist (host has {count})")]
    UnknownGpu {
        source_id: String,
        gpu: u32,
        count: usize,
    },
    #[error(
        "{source_id}: gpu {gpu}: power limit {requested_w} W is outside the constraints {min_w}..={max_w} W, refused"
    )]
    LimitOutOfRange {
        source_id: String,
        gpu: u32,
        requested_w: f64,
        min_w: f64,
        max_w: f64,
    },
    #[error("{source_id}: gpu {gpu}: power limit constraints are unknown, cap refused")]
    ConstraintsUnknown { source_id: String, gpu: u32 },
    #[error(
        "{source_id}: gpu {gpu}: commanded power limit {requested_w} W but the device enforces {enforced_w} W"
    )]
    LimitMismatch {
        source_id: String,
        gpu: u32,
        requested_w: f64,
        enforced_w: f64,
    },
    #[error("{source_id}: blocking nvml task failed")]
    Task {
        source_id: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{source_id}: no answer within {timeout_ms} ms")]
    Timeout { source_id: String, timeout_ms: u128 },
    #[error("{source_id}: http request failed")]
    Http {
        source_id: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{source_id}: gpu node answer is larger than {limit_bytes} bytes, refused")]
    BodyTooLarge {
        source_id: String,
        limit_bytes: usize,
    },
    #[error("{source_id}: gpu node answer is not the expected json: {detail}")]
    BadBody { source_id: String, detail: String },
    #[error("{source_id}: token refused by the gpu node (http 401)")]
    Unauthorized { source_id: String },
    #[error("{source_id}: gpu node answered http {status}: {kind:?}: {message}")]
    Remote {
        source_id: String,
        status: u16,
        kind: node::RemoteErrorKind,
        message: String,
    },
    #[error("{source_id}: cannot read token file {path}")]
    TokenFile {
        source_id: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_id}: token file {path} is empty")]
    TokenEmpty {
        source_id: String,
        path: std::path::PathBuf,
    },
}

/// The future a [`GpuSource`] method returns (boxed so the trait stays object safe and
/// `Arc<dyn GpuSource>` can be shared by collectors and the node server).
pub type GpuFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, GpuError>> + Send + 'a>>;

/// A source of GPU readings that can also cap GPU power.
pub trait GpuSource: Send + Sync {
    /// Reads every GPU of the host. NVML missing is not an error: the reading says
    /// `nvml_available = false`.
    fn read(&self) -> GpuFuture<'_, GpuNodeReading>;

    /// Sets the power limit of one or all GPUs. Refuses (before touching any device) a
    /// limit outside any addressed GPU's constraints, then reads each enforced limit back
    /// and reports a difference as [`GpuError::LimitMismatch`].
    fn set_power_limit(&self, target: GpuTarget, limit_w: f64) -> GpuFuture<'_, Vec<AppliedCap>>;
}

/// A GPU whose enforced limit differs from the limit the agent commanded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapDrift {
    pub index: u32,
    pub commanded_w: f64,
    pub enforced_w: f64,
}

/// Whether an enforced limit still matches the commanded one.
pub fn limit_matches(commanded_w: f64, enforced_w: f64) -> bool {
    (commanded_w - enforced_w).abs() <= LIMIT_TOLERANCE_W
}

/// The GPUs whose enforced limit no longer matches what the agent commanded: NVML limits
/// do not survive a reboot or a driver reload, so the agent re-applies these caps
/// (lowering back to the commanded cap is always safe; a drift below the commanded cap
/// is reported the same way and the controller decides). GPUs without a commanded cap,
/// or whose enforced limit is unknown, are skipped.
pub fn cap_drift(commanded: &[(u32, f64)], reading: &GpuNodeReading) -> Vec<CapDrift> {
    if !reading.nvml_available {
        return Vec::new();
    }
    commanded
        .iter()
        .filter_map(|&(index, commanded_w)| {
            let gpu = reading.gpus.iter().find(|g| g.index == index)?;
            let enforced_w = gpu.enforced_limit_w?;
            (!limit_matches(commanded_w, enforced_w)).then_some(CapDrift {
                index,
                commanded_w,
                enforced_w,
            })
        })
        .collect()
}

/// Checks `limit_w` against every addressed GPU's constraints; returns the indexes to
/// set. Shared by every source so that they refuse alike.
pub fn check_target(
    source_id: &str,
    gpus: &[GpuReading],
    target: GpuTarget,
    limit_w: f64,
) -> Result<Vec<u32>, GpuError> {
    let chosen: Vec<&GpuReading> = match target {
        GpuTarget::All => gpus.iter().collect(),
        GpuTarget::Gpu(i) => match gpus.iter().find(|g| g.index == i) {
            Some(g) => vec![g],
            None => {
                return Err(GpuError::UnknownGpu {
                    source_id: source_id.to_owned(),
                    gpu: i,
                    count: gpus.len(),
                })
            }
        },
    };
    for g in &chosen {
        let Some((min_w, max_w)) = g.constraints_w() else {
            return Err(GpuError::ConstraintsUnknown {
                source_id: source_id.to_owned(),
                gpu: g.index,
            });
        };
        // NaN fails both comparisons, so it is refused too.
        if !(limit_w >= min_w && limit_w <= max_w) {
            return Err(GpuError::LimitOutOfRange {
                source_id: source_id.to_owned(),
                gpu: g.index,
                requested_w: limit_w,
                min_w,
                max_w,
            });
        }
    }
    Ok(chosen.iter().map(|g| g.index).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, enforced: Option<f64>) -> GpuReading {
        GpuReading {
            index,
            uuid: None,
            power_w: Some(300.0),
            power_instant_w: None,
            energy_j: None,
            temperature_c: None,
            utilization_pct: None,
            enforced_limit_w: enforced,
            limit_min_w: Some(200.0),
            limit_max_w: Some(700.0),
            default_limit_w: Some(700.0),
        }
    }

    #[test]
    fn drift_reports_only_gpus_whose_enforced_limit_differs() {
        let reading = GpuNodeReading {
            nvml_available: true,
            gpus: vec![gpu(0, Some(700.0)), gpu(1, Some(400.5)), gpu(2, None)],
        };
        // GPU 0 came back from a reboot at its default; GPU 1 is within tolerance; GPU 2
        // has no known limit; GPU 3 does not exist.
        let drift = cap_drift(&[(0, 400.0), (1, 400.0), (2, 400.0), (3, 400.0)], &reading);
        assert_eq!(
            drift,
            vec![CapDrift {
                index: 0,
                commanded_w: 400.0,
                enforced_w: 700.0
            }]
        );
        assert!(cap_drift(&[(0, 700.0)], &reading).is_empty());
        assert!(cap_drift(&[(0, 400.0)], &GpuNodeReading::unavailable()).is_empty());
    }

    #[test]
    fn reserve_and_lever_need_every_limit() {
        let mut r = GpuNodeReading {
            nvml_available: true,
            gpus: vec![gpu(0, Some(700.0)), gpu(1, Some(400.0))],
        };
        assert_eq!(r.reserve_w(), Some(1100.0));
        assert!(r.cap_lever_available());
        r.gpus[1].limit_max_w = None;
        assert!(!r.cap_lever_available());
        r.gpus[1].enforced_limit_w = None;
        assert_eq!(r.reserve_w(), None);
        assert_eq!(GpuNodeReading::unavailable().reserve_w(), None);
        assert!(!GpuNodeReading::unavailable().cap_lever_available());
    }

    #[test]
    fn check_target_refuses_out_of_range_nan_and_unknown() {
        let gpus = vec![gpu(0, Some(700.0)), gpu(1, Some(700.0))];
        assert_eq!(
            check_target("n", &gpus, GpuTarget::All, 500.0).unwrap(),
            vec![0, 1]
        );
        assert_eq!(
            check_target("n", &gpus, GpuTarget::Gpu(1), 200.0).unwrap(),
            vec![1]
        );
        assert!(matches!(
            check_target("n", &gpus, GpuTarget::All, 199.9),
            Err(GpuError::LimitOutOfRange { gpu: 0, .. })
        ));
        assert!(matches!(
            check_target("n", &gpus, GpuTarget::Gpu(0), f64::NAN),
            Err(GpuError::LimitOutOfRange { .. })
        ));
        assert!(matches!(
            check_target("n", &gpus, GpuTarget::Gpu(5), 500.0),
            Err(GpuError::UnknownGpu {
                gpu: 5,
                count: 2,
                ..
            })
        ));
    }
}
