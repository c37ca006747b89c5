//! Simulated GPUs for the site simulator and tests: scripted load profiles that honour
//! power caps.
//!
//! Power is a pure function of (profile, spec, seed, GPU index, time, cap): see
//! [`demand_w`] and [`power_w`]. Time is an argument (seconds from any origin), so the
//! site simulator, `start_paused` tests and `rackwarden gpu-node --simulate` can each
//! drive it with their own clock. [`SimGpus`] wraps it as a [`GpuSource`] with caps,
//! their constraints, an energy counter and two faults (a device that ignores caps, a
//! reboot that drops them).
//!
//! Profiles (what the controller must cope with, BRIEF.md):
//! - training: every GPU of the host swings together between idle and full power at
//!   0.2-3 Hz (compute and communication phases), with a dip to idle for each checkpoint;
//! - inference: a compressed day curve (night trough, day peak) with per-GPU noise;
//! - inference-day: demand that follows a day of `day_s` within fixed limits, as an
//!   inference fleet's does: a night trough at about 25% of full power (04:00), a day
//!   peak at about 87.5% (16:00), a slow seeded drift per rack and a little per-GPU noise;
//! - training-swings: a long training job within fixed limits, in real time: swings at a
//!   seeded 0.2-3 Hz between about 30% of the cap and the cap, a 2-3 min checkpoint dip
//!   to idle every 20 min, and every few hours the job ends, the GPUs idle a few
//!   minutes, and the next job starts (full swings within a second);
//! - job start: idle, then up to full power within one second;
//! - idle.
//!
//! [`rack_demand_fraction`] gives the same shapes for a whole rack as a fraction of its
//! maximum, for harnesses and the site simulator's racks that have a PDU meter and no
//! simulated GPU hosts.

use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use rackwarden_protocols::gpu::{
    check_target, AppliedCap, GpuError, GpuFuture, GpuNodeReading, GpuReading, GpuSource, GpuTarget,
};

/// A scripted load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadProfile {
    Idle,
    Training,
    Inference,
    /// Diurnal demand over `day_s` within fixed limits (trough ~25%, peak ~87.5% of full
    /// power): see [`inference_day_fraction`].
    InferenceDay,
    /// A training job's swings, checkpoint dips and restarts within fixed limits: see
    /// [`TrainingSwings`].
    TrainingSwings,
    /// Idle until `start_s`, then full power within one second.
    JobStart {
        start_s: f64,
    },
}

/// When `--simulate job-start` starts its job.
pub const DEFAULT_JOB_START_S: f64 = 10.0;

impl FromStr for LoadProfile {
    type Err = String;

    /// `idle`, `training`, `inference`, `inference-day`, `training-swings`, `job-start`
    /// (at 10 s) or `job-start@SECONDS`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "idle" => Ok(LoadProfile::Idle),
            "training" => Ok(LoadProfile::Training),
            "inference" => Ok(LoadProfile::Inference),
            "inference-day" => Ok(LoadProfile::InferenceDay),
            "training-swings" => Ok(LoadProfile::TrainingSwings),
            "job-start" => Ok(LoadProfile::JobStart {
                start_s: DEFAULT_JOB_START_S,
            }),
            other => other
                .strip_prefix("job-start@")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|start_s| LoadProfile::JobStart { start_s })
                .ok_or_else(|| {
                    format!(
                        "unknown load profile {other:?}: expected idle, training, inference, inference-day, training-swings, job-start or job-start@SECONDS"
                    )
                }),
        }
    }
}

/// The simulated GPUs of one host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimSpec {
    pub gpus: u32,
    /// Draw with nothing running.
    pub idle_w: f64,
    pub min_limit_w: f64,
    /// Highest settable limit, and the most an uncapped GPU draws.
    pub max_limit_w: f64,
    pub default_limit_w: f64,
    /// Length of one simulated inference day.
    pub day_s: f64,
    pub seed: u64,
}

impl SimSpec {
    /// H100 SXM-like GPUs: idle 90 W, limits 200..=700 W, default 700 W; a day lasts
    /// ten minutes.
    pub fn h100(gpus: u32, seed: u64) -> SimSpec {
        SimSpec {
            gpus,
            idle_w: 90.0,
            min_limit_w: 200.0,
            max_limit_w: 700.0,
            default_limit_w: 700.0,
            day_s: 600.0,
            seed,
        }
    }
}

/// The training rhythm a seed gives: all GPUs of the host share it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingShape {
    /// Compute/communication swing frequency, 0.2 to 3 Hz.
    pub freq_hz: f64,
    /// Fraction of each swing spent computing at full power.
    pub duty: f64,
    pub checkpoint_every_s: f64,
    pub checkpoint_len_s: f64,
}

impl TrainingShape {
    pub fn from_seed(seed: u64) -> TrainingShape {
        TrainingShape {
            freq_hz: 0.2 + 2.8 * unit_noise(seed, STREAM_SHAPE, 0),
            duty: 0.6 + 0.2 * unit_noise(seed, STREAM_SHAPE, 1),
            checkpoint_every_s: 120.0 + 180.0 * unit_noise(seed, STREAM_SHAPE, 2),
            checkpoint_len_s: 10.0 + 20.0 * unit_noise(seed, STREAM_SHAPE, 3),
        }
    }
}

/// How long a job start takes from idle to full power.
pub const JOB_RAMP_S: f64 = 0.8;

const STREAM_SHAPE: u64 = 0;
/// Streams above this one are per GPU.
const STREAM_GPU_BASE: u64 = 16;

/// A uniform value in [0, 1) fixed by `(seed, stream, pos)`: random access into a
/// ChaCha stream, so any time can be sampled in any order with the same result.
fn unit_noise(seed: u64, stream: u64, pos: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    // Each f64 draw consumes two 32-bit words.
    rng.set_word_pos(u128::from(pos) * 2);
    rng.random::<f64>()
}

/// Whole steps of `step_s` in `t_s` (negative time counts as 0).
fn bucket(t_s: f64, step_s: f64) -> (u64, f64) {
    let x = (t_s.max(0.0) / step_s).min(1e15);
    // x is finite, non-negative and below 2^53, so its floor fits a u64 exactly.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = x.floor() as u64;
    (whole, x - x.floor())
}

/// Smooth noise in [-1, 1): linear interpolation between seeded values every `step_s`.
fn smooth_noise(seed: u64, stream: u64, t_s: f64, step_s: f64) -> f64 {
    let (k, frac) = bucket(t_s, step_s);
    let a = unit_noise(seed, stream, k);
    let b = unit_noise(seed, stream, k.saturating_add(1));
    2.0 * (a + (b - a) * frac) - 1.0
}

/// [`LoadProfile::InferenceDay`]'s night trough and day peak, fractions of full power.
pub const INFERENCE_DAY_TROUGH: f64 = 0.25;
pub const INFERENCE_DAY_PEAK: f64 = 0.875;
/// Where in the day the trough falls (04:00; the peak is twelve hours later).
const INFERENCE_DAY_TROUGH_AT: f64 = 4.0 / 24.0;
/// A real day, the length [`inference_day_fraction`] falls back to.
pub const REAL_DAY_S: f64 = 86_400.0;

/// What a whole rack draws with its GPUs idle, a fraction of its maximum (idle GPUs plus
/// CPUs, fans and switches): the floor of [`rack_demand_fraction`].
pub const RACK_IDLE_FRACTION: f64 = 0.15;

/// [`LoadProfile::TrainingSwings`]: the job's checkpoint period (a dip ends every 20 min
/// of the job), the dip lengths, the low level of a swing (a fraction of full power)
/// and the idle gap between two jobs.
pub const CHECKPOINT_EVERY_S: f64 = 1200.0;
pub const CHECKPOINT_LEN_S: std::ops::RangeInclusive<f64> = 120.0..=180.0;
pub const SWING_LOW_FRACTION: std::ops::RangeInclusive<f64> = 0.28..=0.34;
pub const JOB_GAP_S: std::ops::RangeInclusive<f64> = 180.0..=480.0;
/// How often a job ends and the next starts: a seeded constant in this range.
pub const JOB_EVERY_S: std::ops::RangeInclusive<f64> = 10_800.0..=18_000.0;

const STREAM_SWING_SCHEDULE: u64 = 1;
const STREAM_SWING_JOB: u64 = 2;
const STREAM_CHECKPOINT: u64 = 3;
const STREAM_DAY_DRIFT: u64 = 4;

fn in_range(r: &std::ops::RangeInclusive<f64>, u: f64) -> f64 {
    r.start() + (r.end() - r.start()) * u
}

/// The diurnal demand of [`LoadProfile::InferenceDay`] for a whole rack, a fraction of
/// full power: a raised cosine from [`INFERENCE_DAY_TROUGH`] at 04:00 to
/// [`INFERENCE_DAY_PEAK`] at 16:00 of a day of `day_s` (t = 0 is midnight), plus a
/// seeded drift of at most +-2% (a new point every quarter hour of that day). A `day_s`
/// that is not positive means a real day.
pub fn inference_day_fraction(seed: u64, t_s: f64, day_s: f64) -> f64 {
    let day_s = if day_s.is_finite() && day_s > 0.0 {
        day_s
    } else {
        REAL_DAY_S
    };
    let x = t_s / day_s - INFERENCE_DAY_TROUGH_AT;
    let shape = 0.5 - 0.5 * (std::f64::consts::TAU * x).cos();
    let drift = 0.02 * smooth_noise(seed, STREAM_DAY_DRIFT, t_s, day_s / 96.0);
    (INFERENCE_DAY_TROUGH + (INFERENCE_DAY_PEAK - INFERENCE_DAY_TROUGH) * shape + drift)
        .clamp(0.0, 1.0)
}

/// The job schedule of [`LoadProfile::TrainingSwings`] for one seed, in real seconds:
/// job `k` owns the slot `[k x job_every_s - offset_s, (k + 1) x job_every_s - offset_s)`,
/// idles for its first [`JOB_GAP_S`] (the previous job has ended), then starts. The
/// offset puts t = 0 inside job 0, past its start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwingSchedule {
    pub seed: u64,
    pub job_every_s: f64,
    pub offset_s: f64,
}

/// One job of a [`SwingSchedule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwingJob {
    pub index: u64,
    /// The previous job ended here: the GPUs idle until `start_s`.
    pub idle_from_s: f64,
    /// The job starts: full swings within [`JOB_RAMP_S`].
    pub start_s: f64,
    /// The job ends (the next one's idle gap begins).
    pub end_s: f64,
    /// Compute/communication swings, 0.2 to 3 Hz.
    pub freq_hz: f64,
    /// Fraction of each swing at full power (0.6 to 0.8).
    pub duty: f64,
    /// The rest of each swing, a fraction of full power ([`SWING_LOW_FRACTION`]).
    pub low_fraction: f64,
}

impl SwingSchedule {
    pub fn from_seed(seed: u64) -> SwingSchedule {
        let job_every_s = in_range(&JOB_EVERY_S, unit_noise(seed, STREAM_SWING_SCHEDULE, 0));
        SwingSchedule {
            seed,
            job_every_s,
            // Past the longest gap, before the first half of the job.
            offset_s: JOB_GAP_S.end()
                + 60.0
                + (0.5 * job_every_s - JOB_GAP_S.end() - 60.0)
                    * unit_noise(seed, STREAM_SWING_SCHEDULE, 1),
        }
    }

    /// Job `index`.
    pub fn job(&self, index: u64) -> SwingJob {
        let u = |k: u64| unit_noise(self.seed, STREAM_SWING_JOB, index.saturating_mul(4) + k);
        #[allow(clippy::cast_precision_loss)]
        let slot_start = |k: u64| k as f64 * self.job_every_s - self.offset_s;
        let idle_from_s = slot_start(index);
        SwingJob {
            index,
            idle_from_s,
            start_s: idle_from_s + in_range(&JOB_GAP_S, u(0)),
            end_s: slot_start(index.saturating_add(1)),
            freq_hz: 0.2 + 2.8 * u(1),
            duty: 0.6 + 0.2 * u(2),
            low_fraction: in_range(&SWING_LOW_FRACTION, u(3)),
        }
    }

    /// The job whose slot holds `t_s` (negative time counts as 0).
    pub fn job_at(&self, t_s: f64) -> SwingJob {
        let (k, _) = bucket(t_s.max(0.0) + self.offset_s, self.job_every_s);
        self.job(k)
    }

    /// Checkpoint `n` (from 1) of `job`: the GPUs idle over `[start, end)`, which ends
    /// `n x CHECKPOINT_EVERY_S` after the job started.
    pub fn checkpoint(&self, job: &SwingJob, n: u64) -> (f64, f64) {
        let len = in_range(
            &CHECKPOINT_LEN_S,
            unit_noise(
                self.seed,
                STREAM_CHECKPOINT,
                job.index.saturating_mul(1 << 20).saturating_add(n),
            ),
        );
        #[allow(clippy::cast_precision_loss)]
        let end = job.start_s + n as f64 * CHECKPOINT_EVERY_S;
        (end - len, end)
    }

    /// The load at `t_s`, a fraction of full power, with `idle` the fraction idle GPUs
    /// draw: `idle` between jobs and in checkpoints, else `1` or the job's low fraction
    /// as the swing goes (ramped up from `idle` over [`JOB_RAMP_S`] after the start).
    pub fn fraction(&self, t_s: f64, idle: f64) -> f64 {
        let t = t_s.max(0.0);
        let job = self.job_at(t);
        if t < job.start_s {
            return idle;
        }
        let tau = t - job.start_s;
        let (n, _) = bucket(tau, CHECKPOINT_EVERY_S);
        let (dip_from, _) = self.checkpoint(&job, n + 1);
        if t >= dip_from {
            return idle;
        }
        let level = if (tau * job.freq_hz).fract() < job.duty {
            1.0
        } else {
            job.low_fraction.max(idle)
        };
        idle + (level - idle) * (tau / JOB_RAMP_S).min(1.0)
    }
}

/// The fraction (0..=1) of a whole GPU rack's maximum (its `rated_max_kw`) that its GPU
/// load draws at `t_s` under `profile`, with no caps: for harnesses that model a GPU rack
/// by its PDU reading alone (as the site simulator does for GPU racks without GPU
/// nodes, a colocation tenant's), with no simulated GPU hosts.
///
/// Pure and random access: the same `(profile, seed, t_s, day_s)` give the same value,
/// in any order. `seed` fixes the drift of `inference-day` and the job schedule of
/// `training-swings` (give each rack its own: jobs differ between racks). `day_s` is the
/// length of one day for `inference` and `inference-day` (86 400 for real time; the
/// training profiles run in real seconds). Per-GPU noise averages out over a rack and is
/// left out; the floor is [`RACK_IDLE_FRACTION`]. GPUs of one host swing together, so
/// `training` and `training-swings` move the whole rack.
pub fn rack_demand_fraction(profile: LoadProfile, seed: u64, t_s: f64, day_s: f64) -> f64 {
    let idle = RACK_IDLE_FRACTION;
    let f = match profile {
        LoadProfile::Idle => idle,
        LoadProfile::Training => {
            let shape = TrainingShape::from_seed(seed);
            let in_checkpoint = t_s.max(0.0) % shape.checkpoint_every_s
                >= shape.checkpoint_every_s - shape.checkpoint_len_s;
            let phase = (t_s.max(0.0) * shape.freq_hz).fract();
            if in_checkpoint || phase >= shape.duty {
                idle
            } else {
                1.0
            }
        }
        LoadProfile::Inference => {
            let day_s = if day_s.is_finite() && day_s > 0.0 {
                day_s
            } else {
                REAL_DAY_S
            };
            let day = 0.5 - 0.5 * (std::f64::consts::TAU * t_s / day_s).cos();
            idle + (1.0 - idle) * (0.15 + 0.75 * day)
        }
        LoadProfile::InferenceDay => inference_day_fraction(seed, t_s, day_s),
        LoadProfile::TrainingSwings => SwingSchedule::from_seed(seed).fraction(t_s, idle),
        LoadProfile::JobStart { start_s } => {
            idle + (1.0 - idle) * ((t_s - start_s) / JOB_RAMP_S).clamp(0.0, 1.0)
        }
    };
    if f.is_finite() {
        f.clamp(idle, 1.0)
    } else {
        idle
    }
}

/// What GPU `gpu` would draw at `t_s` with no cap, in W.
pub fn demand_w(profile: LoadProfile, spec: &SimSpec, gpu: u32, t_s: f64) -> f64 {
    let stream = STREAM_GPU_BASE + u64::from(gpu);
    // Small per-GPU jitter: identical GPUs never draw identical power.
    let jitter = 1.0 + 0.02 * smooth_noise(spec.seed, stream, t_s, 0.5);
    let full = spec.max_limit_w;
    let idle = spec.idle_w;
    let w = match profile {
        LoadProfile::Idle => idle * jitter,
        LoadProfile::Training => {
            let shape = TrainingShape::from_seed(spec.seed);
            let in_checkpoint = t_s.max(0.0) % shape.checkpoint_every_s
                >= shape.checkpoint_every_s - shape.checkpoint_len_s;
            let phase = (t_s.max(0.0) * shape.freq_hz).fract();
            if in_checkpoint || phase >= shape.duty {
                idle * jitter
            } else {
                full * jitter
            }
        }
        LoadProfile::Inference => {
            let day = 0.5 - 0.5 * (std::f64::consts::TAU * t_s / spec.day_s).cos();
            let noise = 0.08 * smooth_noise(spec.seed, stream + 1024, t_s, 1.0);
            let load = (0.15 + 0.75 * day + noise).clamp(0.0, 1.0);
            idle + (full - idle) * load
        }
        LoadProfile::InferenceDay => {
            let noise = 0.03 * smooth_noise(spec.seed, stream + 1024, t_s, 2.0);
            let load = inference_day_fraction(spec.seed, t_s, spec.day_s) + noise;
            (full * load).max(idle)
        }
        LoadProfile::TrainingSwings => {
            let idle_fraction = if full > 0.0 { idle / full } else { 0.0 };
            full * SwingSchedule::from_seed(spec.seed).fraction(t_s, idle_fraction) * jitter
        }
        LoadProfile::JobStart { start_s } => {
            let ramp = ((t_s - start_s) / JOB_RAMP_S).clamp(0.0, 1.0);
            idle * jitter + (full * jitter - idle * jitter) * ramp
        }
    };
    w.clamp(0.0, full * 1.02)
}

/// What GPU `gpu` draws at `t_s` under the enforced limit `cap_w` (the power-capping
/// firmware keeps it at or below the limit).
pub fn power_w(profile: LoadProfile, spec: &SimSpec, gpu: u32, t_s: f64, cap_w: f64) -> f64 {
    demand_w(profile, spec, gpu, t_s).min(cap_w)
}

/// The 1 s average NVML's `power_usage` gives, from 20 samples of the last second.
pub fn average_power_w(
    profile: LoadProfile,
    spec: &SimSpec,
    gpu: u32,
    t_s: f64,
    cap_w: f64,
) -> f64 {
    let n = 20u32;
    (0..n)
        .map(|k| power_w(profile, spec, gpu, t_s - f64::from(k) / f64::from(n), cap_w))
        .sum::<f64>()
        / f64::from(n)
}

type Clock = Arc<dyn Fn() -> f64 + Send + Sync>;

struct SimState {
    caps_w: Vec<f64>,
    energy_j: Vec<f64>,
    last_t: Option<f64>,
    ignore_caps: bool,
}

/// Simulated GPUs as a [`GpuSource`].
pub struct SimGpus {
    id: String,
    profile: LoadProfile,
    spec: SimSpec,
    clock: Clock,
    state: Mutex<SimState>,
}

impl std::fmt::Debug for SimGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimGpus").finish_non_exhaustive()
    }
}

impl SimGpus {
    /// Simulated GPUs whose time is `tokio::time` since this call.
    pub fn new(id: impl Into<String>, profile: LoadProfile, spec: SimSpec) -> SimGpus {
        let start = tokio::time::Instant::now();
        SimGpus::with_clock(id, profile, spec, move || start.elapsed().as_secs_f64())
    }

    /// Simulated GPUs read at the time `clock` gives (seconds), e.g. the site
    /// simulator's own clock.
    pub fn with_clock(
        id: impl Into<String>,
        profile: LoadProfile,
        spec: SimSpec,
        clock: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> SimGpus {
        let n = usize::try_from(spec.gpus).unwrap_or(0);
        SimGpus {
            id: id.into(),
            profile,
            spec,
            clock: Arc::new(clock),
            state: Mutex::new(SimState {
                caps_w: vec![spec.default_limit_w; n],
                energy_j: vec![0.0; n],
                last_t: None,
                ignore_caps: false,
            }),
        }
    }

    pub fn spec(&self) -> &SimSpec {
        &self.spec
    }

    /// The enforced limits now.
    pub fn caps_w(&self) -> Vec<f64> {
        self.lock().caps_w.clone()
    }

    /// Fault: the GPUs accept cap commands but keep their old limit.
    pub fn set_ignore_caps(&self, ignore: bool) {
        self.lock().ignore_caps = ignore;
    }

    /// Fault: the host rebooted; every cap is back to the default limit.
    pub fn reboot(&self) {
        let default = self.spec.default_limit_w;
        self.lock().caps_w.iter_mut().for_each(|c| *c = default);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The reading at `t_s`. Power, temperature and utilization are pure functions of
    /// time and caps; the energy counter integrates the power seen between calls (it
    /// never goes backwards, also when `t_s` does).
    pub fn reading_at(&self, t_s: f64) -> GpuNodeReading {
        let mut st = self.lock();
        let dt = st.last_t.map_or(0.0, |last| (t_s - last).max(0.0));
        if st.last_t.is_none_or(|last| t_s > last) {
            st.last_t = Some(t_s);
        }
        let spec = &self.spec;
        let gpus = (0..spec.gpus)
            .zip(0..st.caps_w.len())
            .map(|(gpu, slot)| {
                let cap = st.caps_w[slot];
                let avg = average_power_w(self.profile, spec, gpu, t_s, cap);
                st.energy_j[slot] += avg * dt;
                let demand = demand_w(self.profile, spec, gpu, t_s);
                GpuReading {
                    index: gpu,
                    uuid: Some(format!("GPU-sim-{:x}-{gpu:04}", spec.seed)),
                    power_w: Some(avg),
                    power_instant_w: Some(power_w(self.profile, spec, gpu, t_s, cap)),
                    energy_j: Some(st.energy_j[slot]),
                    temperature_c: Some(30.0 + 0.06 * avg),
                    utilization_pct: Some(
                        (100.0 * (demand - spec.idle_w) / (spec.max_limit_w - spec.idle_w))
                            .clamp(0.0, 100.0),
                    ),
                    enforced_limit_w: Some(cap),
                    limit_min_w: Some(spec.min_limit_w),
                    limit_max_w: Some(spec.max_limit_w),
                    default_limit_w: Some(spec.default_limit_w),
                }
            })
            .collect();
        GpuNodeReading {
            nvml_available: true,
            gpus,
        }
    }

    /// Sets a cap as NVML would: refused outside the constraints, read back after.
    pub fn set_power_limit_now(
        &self,
        target: GpuTarget,
        limit_w: f64,
    ) -> Result<Vec<AppliedCap>, GpuError> {
        let reading = self.reading_at((self.clock)());
        let indexes = check_target(&self.id, &reading.gpus, target, limit_w)?;
        let mut st = self.lock();
        let mut applied = Vec::with_capacity(indexes.len());
        for i in indexes {
            let Some(slot) = usize::try_from(i).ok().filter(|s| *s < st.caps_w.len()) else {
                continue;
            };
            if !st.ignore_caps {
                st.caps_w[slot] = limit_w;
            }
            let enforced_w = st.caps_w[slot];
            if !rackwarden_protocols::gpu::limit_matches(limit_w, enforced_w) {
                return Err(GpuError::LimitMismatch {
                    source_id: self.id.clone(),
                    gpu: i,
                    requested_w: limit_w,
                    enforced_w,
                });
            }
            applied.push(AppliedCap {
                index: i,
                enforced_w,
            });
        }
        Ok(applied)
    }
}

impl GpuSource for SimGpus {
    fn read(&self) -> GpuFuture<'_, GpuNodeReading> {
        let r = self.reading_at((self.clock)());
        Box::pin(async move { Ok(r) })
    }

    fn set_power_limit(&self, target: GpuTarget, limit_w: f64) -> GpuFuture<'_, Vec<AppliedCap>> {
        let r = self.set_power_limit_now(target, limit_w);
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_a_pure_function_of_its_inputs() {
        assert_eq!(unit_noise(7, 3, 11), unit_noise(7, 3, 11));
        assert_ne!(unit_noise(7, 3, 11), unit_noise(7, 3, 12));
        assert_ne!(unit_noise(7, 3, 11), unit_noise(8, 3, 11));
        let v = smooth_noise(1, 2, 3.25, 1.0);
        assert!((-1.0..1.0).contains(&v));
    }

    #[test]
    fn profiles_parse() {
        assert_eq!("training".parse::<LoadProfile>(), Ok(LoadProfile::Training));
        assert_eq!(
            "inference-day".parse::<LoadProfile>(),
            Ok(LoadProfile::InferenceDay)
        );
        assert_eq!(
            "training-swings".parse::<LoadProfile>(),
            Ok(LoadProfile::TrainingSwings)
        );
        assert_eq!(
            "job-start@2.5".parse::<LoadProfile>(),
            Ok(LoadProfile::JobStart { start_s: 2.5 })
        );
        assert!("job-start@-1".parse::<LoadProfile>().is_err());
        assert!("mining".parse::<LoadProfile>().is_err());
    }
}
