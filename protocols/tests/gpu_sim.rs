//! Simulated GPUs: the load profiles have the shapes the controller must cope with, are
//! pure functions of time and seed, honour caps, and behave as a GPU source (caps inside
//! constraints, refusal outside, read-back mismatch, reboot drift).

// Helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rackwarden_protocols::gpu::{cap_drift, GpuError, GpuSource, GpuTarget};
use rackwarden_sim::gpu::{
    demand_w, inference_day_fraction, power_w, rack_demand_fraction, LoadProfile, SimGpus, SimSpec,
    SwingSchedule, TrainingShape, CHECKPOINT_EVERY_S, JOB_RAMP_S, RACK_IDLE_FRACTION, REAL_DAY_S,
};

fn spec() -> SimSpec {
    SimSpec::h100(8, 7)
}

/// Times 0..secs at 100 Hz.
fn times(from: f64, secs: f64) -> impl Iterator<Item = f64> {
    (0u32..)
        .map(move |k| from + f64::from(k) / 100.0)
        .take_while(move |t| *t < from + secs)
}

#[test]
fn training_swings_synchronously_between_idle_and_full_at_its_frequency() {
    for seed in [1, 7, 99, 12345] {
        let spec = SimSpec::h100(8, seed);
        let shape = TrainingShape::from_seed(seed);
        assert!((0.2..=3.0).contains(&shape.freq_hz), "{shape:?}");
        // Outside checkpoints: count rising edges of GPU 0 over 20 s.
        let mut rises = 0;
        let mut high_prev = false;
        for t in times(0.0, 20.0) {
            let p: Vec<f64> = (0..8)
                .map(|g| demand_w(LoadProfile::Training, &spec, g, t))
                .collect();
            let high: Vec<bool> = p.iter().map(|w| *w > 0.9 * spec.max_limit_w).collect();
            let low: Vec<bool> = p.iter().map(|w| *w < 1.1 * spec.idle_w).collect();
            // Every GPU is at one of the two levels, and all at the same one.
            assert!(high.iter().zip(&low).all(|(h, l)| h ^ l), "t={t} {p:?}");
            assert!(
                high.iter().all(|h| *h == high[0]),
                "not synchronized at t={t}: {p:?}"
            );
            if high[0] && !high_prev {
                rises += 1;
            }
            high_prev = high[0];
        }
        let expected = 20.0 * shape.freq_hz;
        assert!(
            (f64::from(rises) - expected).abs() <= 1.5,
            "seed {seed}: {rises} swings in 20 s, expected about {expected}"
        );
    }
}

#[test]
fn training_has_checkpoint_dips() {
    let spec = spec();
    let shape = TrainingShape::from_seed(spec.seed);
    let dip_start = shape.checkpoint_every_s - shape.checkpoint_len_s;
    for t in times(dip_start + 0.05, shape.checkpoint_len_s - 0.1) {
        assert!(
            demand_w(LoadProfile::Training, &spec, 3, t) < 1.1 * spec.idle_w,
            "t={t}"
        );
    }
    // And right after it, full power comes back.
    let after: f64 = times(shape.checkpoint_every_s, 2.0)
        .map(|t| demand_w(LoadProfile::Training, &spec, 3, t))
        .fold(0.0, f64::max);
    assert!(after > 0.9 * spec.max_limit_w);
}

#[test]
fn inference_follows_a_day_curve_with_seeded_noise() {
    let spec = spec();
    let mean = |from: f64| {
        let v: Vec<f64> = times(from, 30.0)
            .map(|t| demand_w(LoadProfile::Inference, &spec, 0, t))
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let night = mean(0.0);
    let noon = mean(spec.day_s / 2.0 - 15.0);
    assert!(
        noon > night + 0.5 * (spec.max_limit_w - spec.idle_w),
        "night {night} noon {noon}"
    );
    // Seeded: same seed, same curve; another seed, another noise.
    let a: Vec<f64> = times(100.0, 5.0)
        .map(|t| demand_w(LoadProfile::Inference, &spec, 2, t))
        .collect();
    let b: Vec<f64> = times(100.0, 5.0)
        .map(|t| demand_w(LoadProfile::Inference, &spec, 2, t))
        .collect();
    let other = SimSpec { seed: 8, ..spec };
    let c: Vec<f64> = times(100.0, 5.0)
        .map(|t| demand_w(LoadProfile::Inference, &other, 2, t))
        .collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // GPUs serve different requests: not in lockstep.
    let g3: Vec<f64> = times(100.0, 5.0)
        .map(|t| demand_w(LoadProfile::Inference, &spec, 3, t))
        .collect();
    assert_ne!(a, g3);
}

#[test]
fn job_start_goes_from_idle_to_full_within_one_second() {
    let spec = spec();
    let job = LoadProfile::JobStart { start_s: 30.0 };
    const { assert!(JOB_RAMP_S <= 1.0) };
    for g in 0..8 {
        assert!(demand_w(job, &spec, g, 29.9) < 1.1 * spec.idle_w);
        assert!(demand_w(job, &spec, g, 31.0) > 0.95 * spec.max_limit_w);
    }
    // Monotone ramp in between.
    let ramp: Vec<f64> = times(30.0, 1.0)
        .map(|t| demand_w(job, &spec, 0, t))
        .collect();
    assert!(ramp.windows(2).all(|w| w[1] + 20.0 >= w[0]));
}

#[test]
fn caps_are_honoured_by_every_profile() {
    let spec = spec();
    for profile in [
        LoadProfile::Training,
        LoadProfile::Inference,
        LoadProfile::InferenceDay,
        LoadProfile::TrainingSwings,
        LoadProfile::JobStart { start_s: 1.0 },
    ] {
        let mut bound = false;
        for t in times(0.0, 20.0)
            .chain(times(spec.day_s / 2.0, 5.0))
            .chain(times(5000.0, 5.0))
        {
            let d = demand_w(profile, &spec, 1, t);
            let p = power_w(profile, &spec, 1, t, 300.0);
            assert!(p <= 300.0, "{profile:?} t={t}: {p} W over a 300 W cap");
            bound |= d > 300.0;
        }
        assert!(
            bound,
            "{profile:?} never wanted more than the cap: test proves nothing"
        );
    }
}

#[tokio::test]
async fn sim_source_caps_refuses_and_detects_mismatch() {
    let now = Arc::new(Mutex::new(0.0f64));
    let clock = now.clone();
    let sim = SimGpus::with_clock(
        "sim-1",
        LoadProfile::JobStart { start_s: 0.0 },
        spec(),
        move || *clock.lock().unwrap(),
    );
    *now.lock().unwrap() = 5.0;
    let r = sim.read().await.unwrap();
    assert!(r.nvml_available && r.cap_lever_available());
    assert_eq!(r.gpus.len(), 8);
    assert!(r.gpus.iter().all(|g| g.power_w.unwrap() > 650.0));

    let applied = sim.set_power_limit(GpuTarget::All, 350.0).await.unwrap();
    assert!(applied.iter().all(|a| a.enforced_w == 350.0));
    let r = sim.read().await.unwrap();
    assert!(r.gpus.iter().all(|g| g.power_instant_w.unwrap() <= 350.0));
    assert_eq!(r.reserve_w(), Some(8.0 * 350.0));

    for bad in [150.0, 750.0, f64::NAN] {
        assert!(matches!(
            sim.set_power_limit(GpuTarget::Gpu(0), bad).await,
            Err(GpuError::LimitOutOfRange { gpu: 0, .. })
        ));
    }
    assert!(sim.caps_w().iter().all(|c| *c == 350.0));

    sim.set_ignore_caps(true);
    assert!(matches!(
        sim.set_power_limit(GpuTarget::Gpu(1), 500.0).await,
        Err(GpuError::LimitMismatch { gpu: 1, enforced_w, .. }) if enforced_w == 350.0
    ));
    sim.set_ignore_caps(false);

    sim.reboot();
    let commanded = [(0, 350.0), (5, 350.0)];
    let drift = cap_drift(&commanded, &sim.read().await.unwrap());
    assert_eq!(drift.len(), 2);
    assert!(drift
        .iter()
        .all(|d| d.enforced_w == 700.0 && d.commanded_w == 350.0));
}

#[tokio::test(start_paused = true)]
async fn sim_source_runs_on_tokio_time_and_counts_energy() {
    let sim = SimGpus::new(
        "sim-2",
        LoadProfile::JobStart { start_s: 0.0 },
        SimSpec::h100(2, 3),
    );
    let e0 = sim.read().await.unwrap().gpus[0].energy_j.unwrap();
    let mut last = e0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let e = sim.read().await.unwrap().gpus[0].energy_j.unwrap();
        assert!(e >= last);
        last = e;
    }
    // About a minute at ~700 W.
    let j = last - e0;
    assert!((60.0 * 600.0..60.0 * 720.0).contains(&j), "{j} J in 60 s");
}

proptest::proptest! {
    /// Whatever the profile, seed, GPU, time and cap, a simulated GPU never draws more
    /// than its enforced limit, never less than nothing, and the same inputs give the
    /// same power.
    #[test]
    fn power_never_exceeds_the_cap(
        seed in proptest::prelude::any::<u64>(),
        gpu in 0u32..128,
        t in -10.0f64..100_000.0,
        cap in 200.0f64..700.0,
        which in 0usize..6,
    ) {
        let profile = [
            LoadProfile::Idle,
            LoadProfile::Training,
            LoadProfile::Inference,
            LoadProfile::InferenceDay,
            LoadProfile::TrainingSwings,
            LoadProfile::JobStart { start_s: 50.0 },
        ][which];
        let spec = SimSpec::h100(128, seed);
        let p = power_w(profile, &spec, gpu, t, cap);
        proptest::prop_assert!((0.0..=cap).contains(&p), "{profile:?} t={t} cap={cap}: {p}");
        proptest::prop_assert_eq!(p, power_w(profile, &spec, gpu, t, cap));
        let avg = rackwarden_sim::gpu::average_power_w(profile, &spec, gpu, t, cap);
        proptest::prop_assert!((0.0..=cap + 1e-9).contains(&avg));
    }

    /// A rack's share of its maximum is a fraction between the idle floor and 1, for
    /// any profile, seed, time and day length, and a pure function of them.
    #[test]
    fn rack_fraction_is_a_bounded_pure_function(
        seed in proptest::prelude::any::<u64>(),
        t in -10.0f64..1_000_000.0,
        day_s in -1.0f64..200_000.0,
        which in 0usize..6,
    ) {
        let profile = [
            LoadProfile::Idle,
            LoadProfile::Training,
            LoadProfile::Inference,
            LoadProfile::InferenceDay,
            LoadProfile::TrainingSwings,
            LoadProfile::JobStart { start_s: 50.0 },
        ][which];
        let f = rack_demand_fraction(profile, seed, t, day_s);
        proptest::prop_assert!((RACK_IDLE_FRACTION..=1.0).contains(&f), "{profile:?} t={t}: {f}");
        proptest::prop_assert_eq!(f, rack_demand_fraction(profile, seed, t, day_s));
    }
}

/// Mean of `f` over `secs` from `from`, sampled at 1 Hz.
fn mean_over(from: f64, secs: f64, f: impl Fn(f64) -> f64) -> f64 {
    let v: Vec<f64> = (0u32..)
        .map(|k| from + f64::from(k))
        .take_while(|t| *t < from + secs)
        .map(f)
        .collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn inference_day_troughs_at_night_and_peaks_in_the_afternoon() {
    for seed in [1, 7, 99, 12345] {
        let spec = SimSpec {
            day_s: REAL_DAY_S,
            ..SimSpec::h100(16, seed)
        };
        let full = spec.max_limit_w;
        // All GPUs of the host, as a fraction of full power, over 10 minutes.
        let host = |from: f64| {
            mean_over(from, 600.0, |t| {
                (0..spec.gpus)
                    .map(|g| demand_w(LoadProfile::InferenceDay, &spec, g, t))
                    .sum::<f64>()
                    / (f64::from(spec.gpus) * full)
            })
        };
        let night = host(4.0 * 3600.0 - 300.0);
        let peak = host(16.0 * 3600.0 - 300.0);
        assert!(
            (0.20..=0.30).contains(&night),
            "seed {seed}: 04:00 at {night}"
        );
        assert!(
            (0.85..=0.90).contains(&peak),
            "seed {seed}: 16:00 at {peak}"
        );
        // The rack curve over the whole day: its lowest and highest, and smooth (no
        // step of more than 2% from one minute to the next).
        let day: Vec<f64> = (0..1440)
            .map(|m| {
                rack_demand_fraction(
                    LoadProfile::InferenceDay,
                    seed,
                    f64::from(m) * 60.0,
                    REAL_DAY_S,
                )
            })
            .collect();
        let lo = day.iter().copied().fold(1.0, f64::min);
        let hi = day.iter().copied().fold(0.0, f64::max);
        assert!((0.20..=0.30).contains(&lo), "seed {seed}: trough {lo}");
        assert!((0.85..=0.90).contains(&hi), "seed {seed}: peak {hi}");
        let step = day
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f64::max);
        assert!(step < 0.02, "seed {seed}: a {step} step in one minute");
        // The day repeats: the next day's trough is where this one's was.
        let tomorrow = inference_day_fraction(seed, REAL_DAY_S + 4.0 * 3600.0, REAL_DAY_S);
        assert!((0.20..=0.30).contains(&tomorrow), "{tomorrow}");
        // Per-GPU noise: a little, and GPUs not in lockstep.
        let t = 10.0 * 3600.0;
        let rack = rack_demand_fraction(LoadProfile::InferenceDay, seed, t, REAL_DAY_S);
        let gpus: Vec<f64> = (0..spec.gpus)
            .map(|g| demand_w(LoadProfile::InferenceDay, &spec, g, t) / full)
            .collect();
        assert!(
            gpus.iter().all(|g| (g - rack).abs() <= 0.031),
            "{rack} {gpus:?}"
        );
        assert!(gpus.iter().any(|g| (g - gpus[0]).abs() > 1e-6), "{gpus:?}");
    }
}

#[test]
fn inference_day_follows_the_spec_day_length() {
    // The simulator's compressed day: the trough at 4/24 and the peak at 16/24 of day_s.
    let spec = spec();
    let at = |h: f64| {
        rack_demand_fraction(
            LoadProfile::InferenceDay,
            spec.seed,
            spec.day_s * h / 24.0,
            spec.day_s,
        )
    };
    assert!(at(4.0) < 0.3 && at(16.0) > 0.85, "{} {}", at(4.0), at(16.0));
    let g = demand_w(
        LoadProfile::InferenceDay,
        &spec,
        0,
        spec.day_s * 16.0 / 24.0,
    );
    assert!(g > 0.8 * spec.max_limit_w, "{g}");
}

#[test]
fn training_swings_stay_between_thirty_percent_of_the_cap_and_the_cap() {
    for seed in [1, 7, 99, 12345] {
        let sched = SwingSchedule::from_seed(seed);
        assert!(
            sched.job_at(0.0).start_s < 0.0,
            "t = 0 falls inside a running job: {sched:?}"
        );
        let job = sched.job(1);
        assert!((0.2..=3.0).contains(&job.freq_hz), "{job:?}");
        // A minute of the job, clear of its checkpoints.
        let from = job.start_s + 30.0;
        let spec = SimSpec::h100(8, seed);
        let cap = 500.0;
        let (mut highs, mut lows, mut rises, mut prev_high) = (0, 0, 0, false);
        for t in times(from, 60.0) {
            let f = rack_demand_fraction(LoadProfile::TrainingSwings, seed, t, REAL_DAY_S);
            let high = f == 1.0;
            assert!(high || (0.28..=0.34).contains(&f), "seed {seed} t={t}: {f}");
            highs += usize::from(high);
            lows += usize::from(!high);
            rises += usize::from(high && !prev_high);
            prev_high = high;
            // The GPUs: together, at the cap or at about 30% of full power, never idle.
            let p: Vec<f64> = (0..8)
                .map(|g| power_w(LoadProfile::TrainingSwings, &spec, g, t, cap))
                .collect();
            for w in &p {
                if high {
                    assert_eq!(*w, cap, "seed {seed} t={t}: {p:?}");
                } else {
                    assert!(
                        (0.27 * spec.max_limit_w..=0.35 * spec.max_limit_w).contains(w),
                        "seed {seed} t={t}: {p:?}"
                    );
                }
            }
        }
        assert!(
            highs > 0 && lows > 0,
            "seed {seed}: {highs} high, {lows} low"
        );
        let expected = 60.0 * job.freq_hz;
        assert!(
            (rises as f64 - expected).abs() <= 1.5,
            "seed {seed}: {rises} swings in 60 s, expected about {expected}"
        );
    }
}

/// Runs of idle (rack at its floor) longer than 10 s in `[from, from + secs)` at 10 Hz.
fn idle_runs(seed: u64, from: f64, secs: f64) -> Vec<(f64, f64)> {
    let mut runs = Vec::new();
    let mut start: Option<f64> = None;
    let mut t = from;
    while t < from + secs {
        let idle = rack_demand_fraction(LoadProfile::TrainingSwings, seed, t, REAL_DAY_S)
            == RACK_IDLE_FRACTION;
        match (idle, start) {
            (true, None) => start = Some(t),
            (false, Some(s)) => {
                if t - s > 10.0 {
                    runs.push((s, t));
                }
                start = None;
            }
            _ => {}
        }
        t += 0.1;
    }
    runs
}

#[test]
fn training_swings_dip_to_idle_for_two_to_three_minutes_every_twenty() {
    for seed in [1, 7, 99] {
        let sched = SwingSchedule::from_seed(seed);
        let job = sched.job(1);
        // Found by looking, not by asking the schedule: 65 min of the job from its start.
        let runs = idle_runs(seed, job.start_s + 1.0, 3900.0);
        assert_eq!(runs.len(), 3, "seed {seed}: {runs:?}");
        for (n, (a, b)) in runs.iter().enumerate() {
            assert!(
                (119.9..=180.1).contains(&(b - a)),
                "seed {seed}: dip {a}..{b}"
            );
            // Each ends 20, 40, 60 min into the job.
            let end = job.start_s + CHECKPOINT_EVERY_S * (n as f64 + 1.0);
            assert!(
                (b - end).abs() <= 0.11,
                "seed {seed}: dip ends {b}, expected {end}"
            );
            assert_eq!(sched.checkpoint(&job, n as u64 + 1).1, end);
        }
        // The GPUs idle too, and are back at full swings right after.
        let spec = SimSpec::h100(4, seed);
        let (a, b) = runs[0];
        for t in times(a + 1.0, 10.0) {
            assert!(demand_w(LoadProfile::TrainingSwings, &spec, 2, t) < 1.1 * spec.idle_w);
        }
        let after = times(b, 5.0)
            .map(|t| demand_w(LoadProfile::TrainingSwings, &spec, 2, t))
            .fold(0.0, f64::max);
        assert!(after > 0.95 * spec.max_limit_w, "{after}");
    }
}

#[test]
fn training_swings_jobs_end_idle_a_few_minutes_and_restart_within_a_second() {
    for seed in [1, 7, 99] {
        let sched = SwingSchedule::from_seed(seed);
        assert!(
            (3.0 * 3600.0..=5.0 * 3600.0).contains(&sched.job_every_s),
            "{sched:?}"
        );
        for k in 1..4 {
            let job = sched.job(k);
            assert_eq!(sched.job_at(job.start_s + 10.0), job);
            let gap = job.start_s - job.idle_from_s;
            assert!(
                (180.0..=480.0).contains(&gap),
                "seed {seed} job {k}: gap {gap}"
            );
            // The previous job's slot ends where this one's begins.
            assert_eq!(sched.job(k - 1).end_s, job.idle_from_s);
            // Idle through the gap (no swing, no checkpoint pattern)...
            let runs = idle_runs(seed, job.idle_from_s - 1.0, gap + 5.0);
            assert_eq!(runs.len(), 1, "seed {seed} job {k}: {runs:?}");
            assert!((runs[0].0 - job.idle_from_s).abs() <= 0.11 || runs[0].0 < job.idle_from_s);
            assert!((runs[0].1 - job.start_s).abs() <= 0.11, "{runs:?} {job:?}");
            // ...then up within a second: from the end of the ramp every sample is a swing
            // level, and full power comes in the first swing past it (at most 1.4 s).
            let spec = SimSpec::h100(2, seed);
            let up = times(job.start_s, 1.4)
                .map(|t| demand_w(LoadProfile::TrainingSwings, &spec, 0, t))
                .fold(0.0, f64::max);
            assert!(up > 0.95 * spec.max_limit_w, "seed {seed} job {k}: {up}");
            for t in times(job.start_s + JOB_RAMP_S, 20.0) {
                let f = rack_demand_fraction(LoadProfile::TrainingSwings, seed, t, REAL_DAY_S);
                assert!(f >= 0.28, "seed {seed} t={t}: {f}");
            }
        }
    }
}

#[test]
fn new_profiles_are_deterministic_and_random_access() {
    let ts: Vec<f64> = (0..200).map(|k| f64::from(k) * 137.31).collect();
    for profile in [LoadProfile::InferenceDay, LoadProfile::TrainingSwings] {
        let spec = SimSpec::h100(8, 42);
        let forward: Vec<f64> = ts.iter().map(|t| demand_w(profile, &spec, 3, *t)).collect();
        let mut backward: Vec<f64> = ts
            .iter()
            .rev()
            .map(|t| demand_w(profile, &spec, 3, *t))
            .collect();
        backward.reverse();
        assert_eq!(forward, backward, "{profile:?}");
        let racks: Vec<f64> = ts
            .iter()
            .map(|t| rack_demand_fraction(profile, 42, *t, REAL_DAY_S))
            .collect();
        let again: Vec<f64> = ts
            .iter()
            .map(|t| rack_demand_fraction(profile, 42, *t, REAL_DAY_S))
            .collect();
        assert_eq!(racks, again);
        let other: Vec<f64> = ts
            .iter()
            .map(|t| rack_demand_fraction(profile, 43, *t, REAL_DAY_S))
            .collect();
        assert_ne!(racks, other, "{profile:?}: the seed changes nothing");
    }
    // Two seeds, two job schedules.
    assert_ne!(SwingSchedule::from_seed(1), SwingSchedule::from_seed(2));
}

#[test]
fn rack_fraction_matches_the_gpus_it_stands_for() {
    let seed = 5;
    let spec = SimSpec {
        day_s: REAL_DAY_S,
        ..SimSpec::h100(64, seed)
    };
    let full = spec.max_limit_w;
    for t in [3600.0, 30_000.0, 60_000.0] {
        let rack = rack_demand_fraction(LoadProfile::InferenceDay, seed, t, REAL_DAY_S);
        let gpus = (0..spec.gpus)
            .map(|g| demand_w(LoadProfile::InferenceDay, &spec, g, t))
            .sum::<f64>()
            / (f64::from(spec.gpus) * full);
        assert!(
            (gpus - rack).abs() < 0.01,
            "t={t}: rack {rack}, GPUs {gpus}"
        );
    }
    let job = SwingSchedule::from_seed(seed).job(2);
    for t in times(job.start_s + 100.0, 5.0) {
        let rack = rack_demand_fraction(LoadProfile::TrainingSwings, seed, t, REAL_DAY_S);
        let gpu = demand_w(LoadProfile::TrainingSwings, &spec, 9, t) / full;
        assert!((gpu - rack).abs() <= 0.021, "t={t}: rack {rack}, GPU {gpu}");
    }
}
