//! GPUs on this host through NVML.
//!
//! [`NvmlSource`] is the async [`GpuSource`]; it runs every NVML call on the blocking
//! pool (NVML calls block, some for tens of milliseconds) through a small synchronous
//! seam, [`NvmlBackend`]. [`RealNvml`] implements the seam with `nvml-wrapper`;
//! [`FakeNvml`] implements it in memory for tests (readings, constraints, caps, calls
//! that are unsupported or fail, a device that enforces something other than what was
//! set).
//!
//! NVML missing (no `libnvidia-ml`, driver not loaded) is a normal state, not an error:
//! the source says so once in the log and reads as `nvml_available = false`, so the
//! agent starts, meters GPUs at the PDU and reserves their rack's rated maximum
//! (CONTROL.md, invariant 9).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, PoisonError};

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::NVML_FI_DEV_POWER_INSTANT;
use nvml_wrapper::Nvml;

use super::{
    check_target, limit_matches, AppliedCap, GpuError, GpuFuture, GpuNodeReading, GpuReading,
    GpuSource, GpuTarget, ALERT_NVML_UNAVAILABLE, ALERT_NVML_UNSUPPORTED,
};

/// The library names tried in order: the unversioned name first (what `nvml-wrapper`
/// loads by default), then the versioned one, which is all that most driver packages
/// install without the development package.
pub const NVML_LIBRARIES: [&str; 2] = ["libnvidia-ml.so", "libnvidia-ml.so.1"];

/// Why one NVML call gave no value.
#[derive(Debug, thiserror::Error)]
pub enum NvmlCallError {
    /// The device or driver does not support the call: a permanent state, logged once.
    #[error("not supported by this device or driver")]
    Unsupported,
    /// The call failed (GPU lost, no permission, driver error...).
    #[error("nvml error")]
    Failed(#[source] NvmlError),
}

impl From<NvmlError> for NvmlCallError {
    fn from(e: NvmlError) -> Self {
        match e {
            NvmlError::NotSupported | NvmlError::FunctionNotFound => NvmlCallError::Unsupported,
            other => NvmlCallError::Failed(other),
        }
    }
}

type CallResult<T> = Result<T, NvmlCallError>;

/// The NVML calls the agent uses, in NVML's own units (milliwatts, millijoules).
/// Blocking: [`NvmlSource`] calls it on the blocking pool.
pub trait NvmlBackend: Send + Sync + 'static {
    fn device_count(&self) -> CallResult<u32>;
    fn uuid(&self, gpu: u32) -> CallResult<String>;
    /// `nvmlDeviceGetPowerUsage`: a 1 s average on Ampere and later.
    fn power_usage_mw(&self, gpu: u32) -> CallResult<u32>;
    /// Field value `NVML_FI_DEV_POWER_INSTANT`.
    fn power_instant_mw(&self, gpu: u32) -> CallResult<f64>;
    fn total_energy_mj(&self, gpu: u32) -> CallResult<u64>;
    fn temperature_c(&self, gpu: u32) -> CallResult<u32>;
    fn utilization_pct(&self, gpu: u32) -> CallResult<u32>;
    fn enforced_limit_mw(&self, gpu: u32) -> CallResult<u32>;
    /// `(min, max)` settable limits.
    fn limit_constraints_mw(&self, gpu: u32) -> CallResult<(u32, u32)>;
    fn default_limit_mw(&self, gpu: u32) -> CallResult<u32>;
    /// Needs root; lost on reboot.
    fn set_limit_mw(&self, gpu: u32, limit_mw: u32) -> CallResult<()>;
}

/// NVML through `nvml-wrapper`.
#[derive(Debug)]
pub struct RealNvml {
    nvml: Nvml,
}

impl RealNvml {
    /// Loads and initialises NVML, trying each name of `libraries` in turn. Returns the
    /// last error when none loads.
    pub fn load(libraries: &[&str]) -> Result<RealNvml, NvmlError> {
        let mut last = NvmlError::LibraryNotFound;
        for lib in libraries {
            match Nvml::builder().lib_path(OsStr::new(lib)).init() {
                Ok(nvml) => return Ok(RealNvml { nvml }),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn device(&self, gpu: u32) -> CallResult<nvml_wrapper::Device<'_>> {
        Ok(self.nvml.device_by_index(gpu)?)
    }
}

impl NvmlBackend for RealNvml {
    fn device_count(&self) -> CallResult<u32> {
        Ok(self.nvml.device_count()?)
    }

    fn uuid(&self, gpu: u32) -> CallResult<String> {
        Ok(self.device(gpu)?.uuid()?)
    }

    fn power_usage_mw(&self, gpu: u32) -> CallResult<u32> {
        Ok(self.device(gpu)?.power_usage()?)
    }

    fn power_instant_mw(&self, gpu: u32) -> CallResult<f64> {
        let samples = self
            .device(gpu)?
            .field_values_for(&[FieldId(NVML_FI_DEV_POWER_INSTANT)])?;
        let sample = samples
            .into_iter()
            .next()
            .ok_or(NvmlCallError::Unsupported)??;
        // The field's value type is the driver's choice; every variant holds milliwatts.
        // f64 holds any realistic power in mW exactly.
        #[allow(clippy::cast_precision_loss)]
        let mw = match sample.value? {
            SampleValue::F64(v) => v,
            SampleValue::U32(v) => f64::from(v),
            SampleValue::U64(v) => v as f64,
            SampleValue::I64(v) => v as f64,
        };
        Ok(mw)
    }

    fn total_energy_mj(&self, gpu: u32) -> CallResult<u64> {
        Ok(self.device(gpu)?.total_energy_consumption()?)
    }

    fn temperature_c(&self, gpu: u32) -> CallResult<u32> {
        Ok(self.device(gpu)?.temperature(TemperatureSensor::Gpu)?)
    }

    fn utilization_pct(&self, gpu: u32) -> CallResult<u32> {
        Ok(self.device(gpu)?.utilization_rates()?.gpu)
    }

    fn enforced_limit_mw(&self, gpu: u32) -> CallResult<u32> {
        Ok(self.device(gpu)?.enforced_power_limit()?)
    }

    fn limit_constraints_mw(&self, gpu: u32) -> CallResult<(u32, u32)> {
        let c = self.device(gpu)?.power_management_limit_constraints()?;
        Ok((c.min_limit, c.max_limit))
    }

    fn default_limit_mw(&self, gpu: u32) -> CallResult<u32> {
        Ok(self.device(gpu)?.power_management_limit_default()?)
    }

    fn set_limit_mw(&self, gpu: u32, limit_mw: u32) -> CallResult<()> {
        let mut d = self.device(gpu)?;
        Ok(d.set_power_management_limit(limit_mw)?)
    }
}

/// One fake GPU, in NVML units.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeGpu {
    pub uuid: String,
    pub power_mw: u32,
    /// `None`: the field value is unsupported (pre-Hopper devices).
    pub power_instant_mw: Option<u32>,
    pub energy_mj: u64,
    pub temperature_c: u32,
    pub utilization_pct: u32,
    pub limit_mw: u32,
    pub min_limit_mw: u32,
    pub max_limit_mw: u32,
    pub default_limit_mw: u32,
    /// Forces the enforced limit read back after a set to this value (a device or
    /// another tool overriding the cap).
    pub enforce_instead_mw: Option<u32>,
    /// Fails every call on this GPU as if it fell off the bus.
    pub lost: bool,
}

impl FakeGpu {
    /// An H100 SXM-like GPU: limits 200..=700 W, default 700 W, drawing `power_w`.
    pub fn h100(index: u32, power_w: u32) -> FakeGpu {
        FakeGpu {
            uuid: format!("GPU-fake-{index:04}"),
            power_mw: power_w.saturating_mul(1000),
            power_instant_mw: Some(power_w.saturating_mul(1000)),
            energy_mj: 1_000_000,
            temperature_c: 55,
            utilization_pct: 80,
            limit_mw: 700_000,
            min_limit_mw: 200_000,
            max_limit_mw: 700_000,
            default_limit_mw: 700_000,
            enforce_instead_mw: None,
            lost: false,
        }
    }
}

/// An in-memory NVML for tests.
#[derive(Debug, Default)]
pub struct FakeNvml {
    gpus: Mutex<Vec<FakeGpu>>,
    /// Calls the device does not support, by [`NvmlSource`]'s call names.
    unsupported: Mutex<HashSet<&'static str>>,
    /// Number of successful `set_limit_mw` calls, to prove refusals touch nothing.
    sets: Mutex<u32>,
}

impl FakeNvml {
    pub fn new(gpus: Vec<FakeGpu>) -> FakeNvml {
        FakeNvml {
            gpus: Mutex::new(gpus),
            ..FakeNvml::default()
        }
    }

    /// Changes one GPU in place (power, a forced mismatch, losing it...).
    pub fn update(&self, gpu: u32, f: impl FnOnce(&mut FakeGpu)) {
        let mut gpus = self.gpus.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = usize::try_from(gpu).ok().and_then(|i| gpus.get_mut(i)) {
            f(g);
        }
    }

    /// Marks a call (e.g. `"total_energy"`) as unsupported on every GPU.
    pub fn set_unsupported(&self, call: &'static str) {
        self.unsupported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(call);
    }

    /// The GPUs as they are now.
    pub fn gpus(&self) -> Vec<FakeGpu> {
        self.gpus
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many limits were actually set on the device.
    pub fn set_count(&self) -> u32 {
        *self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with<T>(
        &self,
        call: &'static str,
        gpu: u32,
        f: impl FnOnce(&mut FakeGpu) -> CallResult<T>,
    ) -> CallResult<T> {
        if self
            .unsupported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(call)
        {
            return Err(NvmlCallError::Unsupported);
        }
        let mut gpus = self.gpus.lock().unwrap_or_else(PoisonError::into_inner);
        let g = usize::try_from(gpu)
            .ok()
            .and_then(|i| gpus.get_mut(i))
            .ok_or(NvmlCallError::Failed(NvmlError::InvalidArg))?;
        if g.lost {
            return Err(NvmlCallError::Failed(NvmlError::GpuLost));
        }
        f(g)
    }
}

impl NvmlBackend for FakeNvml {
    fn device_count(&self) -> CallResult<u32> {
        let n = self
            .gpus
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        u32::try_from(n).map_err(|_| NvmlCallError::Failed(NvmlError::Unknown))
    }
    fn uuid(&self, gpu: u32) -> CallResult<String> {
        self.with("uuid", gpu, |g| Ok(g.uuid.clone()))
    }
    fn power_usage_mw(&self, gpu: u32) -> CallResult<u32> {
        self.with("power_usage", gpu, |g| Ok(g.power_mw))
    }
    fn power_instant_mw(&self, gpu: u32) -> CallResult<f64> {
        self.with("power_instant", gpu, |g| {
            g.power_instant_mw
                .map(f64::from)
                .ok_or(NvmlCallError::Unsupported)
        })
    }
    fn total_energy_mj(&self, gpu: u32) -> CallResult<u64> {
        self.with("total_energy", gpu, |g| Ok(g.energy_mj))
    }
    fn temperature_c(&self, gpu: u32) -> CallResult<u32> {
        self.with("temperature", gpu, |g| Ok(g.temperature_c))
    }
    fn utilization_pct(&self, gpu: u32) -> CallResult<u32> {
        self.with("utilization", gpu, |g| Ok(g.utilization_pct))
    }
    fn enforced_limit_mw(&self, gpu: u32) -> CallResult<u32> {
        self.with("enforced_limit", gpu, |g| Ok(g.limit_mw))
    }
    fn limit_constraints_mw(&self, gpu: u32) -> CallResult<(u32, u32)> {
        self.with("limit_constraints", gpu, |g| {
            Ok((g.min_limit_mw, g.max_limit_mw))
        })
    }
    fn default_limit_mw(&self, gpu: u32) -> CallResult<u32> {
        self.with("default_limit", gpu, |g| Ok(g.default_limit_mw))
    }
    fn set_limit_mw(&self, gpu: u32, limit_mw: u32) -> CallResult<()> {
        self.with("set_limit", gpu, |g| {
            // Real NVML refuses out-of-range limits with InvalidArg; keep that so a
            // source that forgot to check would be caught by the fake too.
            if limit_mw < g.min_limit_mw || limit_mw > g.max_limit_mw {
                return Err(NvmlCallError::Failed(NvmlError::InvalidArg));
            }
            g.limit_mw = g.enforce_instead_mw.unwrap_or(limit_mw);
            Ok(())
        })?;
        *self.sets.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Ok(())
    }
}

/// GPUs on this host through NVML (or a fake backend).
#[derive(Debug)]
pub struct NvmlSource<B: NvmlBackend> {
    id: String,
    backend: Option<Arc<B>>,
    /// Calls already logged as unsupported, so each is said once.
    warned: Arc<Mutex<HashSet<&'static str>>>,
}

impl NvmlSource<RealNvml> {
    /// Loads NVML (`libnvidia-ml.so`, then `libnvidia-ml.so.1`). Never fails: without
    /// NVML the source logs `telemetry.nvml.unavailable` once and reads as unavailable.
    pub fn load(id: impl Into<String>) -> NvmlSource<RealNvml> {
        NvmlSource::load_from(id, &NVML_LIBRARIES)
    }

    /// [`NvmlSource::load`] with other library names (tests use a name that does not
    /// exist to get the no-NVML path on any host).
    pub fn load_from(id: impl Into<String>, libraries: &[&str]) -> NvmlSource<RealNvml> {
        let id = id.into();
        match RealNvml::load(libraries) {
            Ok(nvml) => NvmlSource::with_backend(id, nvml),
            Err(e) => {
                tracing::warn!(
                    target: "rackwarden::alert",
                    alert = ALERT_NVML_UNAVAILABLE,
                    severity = "warning",
                    device = %id,
                    libraries = %libraries.join(","),
                    error = %e,
                    "nvml unavailable: gpus are metered at the pdu and reserved at their rack's rated maximum, gpu cap lever disabled"
                );
                NvmlSource {
                    id,
                    backend: None,
                    warned: Arc::default(),
                }
            }
        }
    }
}

impl<B: NvmlBackend> NvmlSource<B> {
    pub fn with_backend(id: impl Into<String>, backend: B) -> NvmlSource<B> {
        NvmlSource {
            id: id.into(),
            backend: Some(Arc::new(backend)),
            warned: Arc::default(),
        }
    }

    /// Whether NVML was loaded.
    pub fn available(&self) -> bool {
        self.backend.is_some()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The backend, when NVML was loaded (tests reach the fake through it).
    pub fn backend_ref(&self) -> Option<&B> {
        self.backend.as_deref()
    }

    fn backend(&self) -> Result<Arc<B>, GpuError> {
        self.backend
            .clone()
            .ok_or_else(|| GpuError::NvmlUnavailable {
                source_id: self.id.clone(),
            })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Ctx<B>) -> Result<T, GpuError> + Send + 'static,
    ) -> Result<T, GpuError> {
        let ctx = Ctx {
            id: self.id.clone(),
            backend: self.backend()?,
            warned: Arc::clone(&self.warned),
        };
        tokio::task::spawn_blocking(move || f(&ctx))
            .await
            .map_err(|source| GpuError::Task {
                source_id: self.id.clone(),
                source,
            })?
    }

    async fn read_impl(&self) -> Result<GpuNodeReading, GpuError> {
        if self.backend.is_none() {
            return Ok(GpuNodeReading::unavailable());
        }
        self.blocking(|ctx| {
            let count = ctx.required("device_count", None, ctx.backend.device_count())?;
            (0..count)
                .map(|i| ctx.read_gpu(i))
                .collect::<Result<Vec<_>, _>>()
                .map(|gpus| GpuNodeReading {
                    nvml_available: true,
                    gpus,
                })
        })
        .await
    }

    async fn set_impl(&self, target: GpuTarget, limit_w: f64) -> Result<Vec<AppliedCap>, GpuError> {
        // Check every addressed GPU against fresh constraints before setting any.
        let reading = self.read_impl().await?;
        if !reading.nvml_available {
            return Err(GpuError::NvmlUnavailable {
                source_id: self.id.clone(),
            });
        }
        let indexes = check_target(&self.id, &reading.gpus, target, limit_w)?;
        self.blocking(move |ctx| {
            let limit_mw = watts_to_mw(limit_w);
            indexes
                .into_iter()
                .map(|i| {
                    ctx.required("set_limit", Some(i), ctx.backend.set_limit_mw(i, limit_mw))?;
                    let enforced_mw =
                        ctx.required("enforced_limit", Some(i), ctx.backend.enforced_limit_mw(i))?;
                    let enforced_w = mw_to_watts(enforced_mw);
                    if !limit_matches(limit_w, enforced_w) {
                        return Err(GpuError::LimitMismatch {
                            source_id: ctx.id.clone(),
                            gpu: i,
                            requested_w: limit_w,
                            enforced_w,
                        });
                    }
                    Ok(AppliedCap {
                        index: i,
                        enforced_w,
                    })
                })
                .collect()
        })
        .await
    }
}

impl<B: NvmlBackend> GpuSource for NvmlSource<B> {
    fn read(&self) -> GpuFuture<'_, GpuNodeReading> {
        Box::pin(self.read_impl())
    }

    fn set_power_limit(&self, target: GpuTarget, limit_w: f64) -> GpuFuture<'_, Vec<AppliedCap>> {
        Box::pin(self.set_impl(target, limit_w))
    }
}

/// What a blocking NVML job needs.
struct Ctx<B> {
    id: String,
    backend: Arc<B>,
    warned: Arc<Mutex<HashSet<&'static str>>>,
}

impl<B: NvmlBackend> Ctx<B> {
    /// A call whose value the agent can do without: unsupported gives `None` (said once).
    fn optional<T>(
        &self,
        call: &'static str,
        gpu: u32,
        r: CallResult<T>,
    ) -> Result<Option<T>, GpuError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(NvmlCallError::Unsupported) => {
                let first = self
                    .warned
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(call);
                if first {
                    tracing::warn!(
                        target: "rackwarden::alert",
                        alert = ALERT_NVML_UNSUPPORTED,
                        severity = "warning",
                        device = %self.id,
                        gpu,
                        call,
                        "nvml call not supported on this gpu; the value is reported as missing"
                    );
                }
                Ok(None)
            }
            Err(source) => Err(GpuError::Nvml {
                source_id: self.id.clone(),
                call,
                gpu: Some(gpu),
                source,
            }),
        }
    }

    fn required<T>(
        &self,
        call: &'static str,
        gpu: Option<u32>,
        r: CallResult<T>,
    ) -> Result<T, GpuError> {
        r.map_err(|source| GpuError::Nvml {
            source_id: self.id.clone(),
            call,
            gpu,
            source,
        })
    }

    fn read_gpu(&self, i: u32) -> Result<GpuReading, GpuError> {
        let b = &self.backend;
        let constraints = self.optional("limit_constraints", i, b.limit_constraints_mw(i))?;
        #[allow(clippy::cast_precision_loss)] // mJ in f64: exact below 2^53 mJ (285 years at 1 kW)
        let energy_j = self
            .optional("total_energy", i, b.total_energy_mj(i))?
            .map(|mj| mj as f64 / 1000.0);
        Ok(GpuReading {
            index: i,
            uuid: self.optional("uuid", i, b.uuid(i))?,
            power_w: self
                .optional("power_usage", i, b.power_usage_mw(i))?
                .map(mw_to_watts),
            power_instant_w: self
                .optional("power_instant", i, b.power_instant_mw(i))?
                .map(|mw| mw / 1000.0),
            energy_j,
            temperature_c: self
                .optional("temperature", i, b.temperature_c(i))?
                .map(f64::from),
            utilization_pct: self
                .optional("utilization", i, b.utilization_pct(i))?
                .map(f64::from),
            enforced_limit_w: self
                .optional("enforced_limit", i, b.enforced_limit_mw(i))?
                .map(mw_to_watts),
            limit_min_w: constraints.map(|(min, _)| mw_to_watts(min)),
            limit_max_w: constraints.map(|(_, max)| mw_to_watts(max)),
            default_limit_w: self
                .optional("default_limit", i, b.default_limit_mw(i))?
                .map(mw_to_watts),
        })
    }
}

fn mw_to_watts(mw: u32) -> f64 {
    f64::from(mw) / 1000.0
}

/// Watts to NVML milliwatts. Only called after [`check_target`] put `w` inside the
/// device's constraints, which are themselves `u32` milliwatts, so the rounded value is
/// finite, non-negative and fits a `u32`; the clamp only guards that reasoning.
fn watts_to_mw(w: f64) -> u32 {
    let mw = (w * 1000.0).round().clamp(0.0, f64::from(u32::MAX));
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let mw = mw as u32;
    mw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watts_convert_to_rounded_milliwatts() {
        assert_eq!(watts_to_mw(412.3456), 412_346);
        assert_eq!(watts_to_mw(200.0), 200_000);
        assert_eq!(watts_to_mw(-5.0), 0);
        assert_eq!(mw_to_watts(700_000), 700.0);
    }

    #[test]
    fn unsupported_nvml_errors_map_to_unsupported() {
        assert!(matches!(
            NvmlCallError::from(NvmlError::NotSupported),
            NvmlCallError::Unsupported
        ));
        assert!(matches!(
            NvmlCallError::from(NvmlError::FunctionNotFound),
            NvmlCallError::Unsupported
        ));
        assert!(matches!(
            NvmlCallError::from(NvmlError::GpuLost),
            NvmlCallError::Failed(NvmlError::GpuLost)
        ));
    }
}
