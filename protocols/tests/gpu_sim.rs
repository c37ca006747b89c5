//! Simulated GPUs: the load profiles have the shapes the controller must cope with, are
//! pure functions of time and seed, honour caps, and behave as a GPU source (caps inside
//! constraints, refusal outside, read-back mismatch, reboot drift).

// Helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rackwarden_protocols::gpu::sim::{
    demand_w, power_w, LoadProfile, SimGpus, SimSpec, TrainingShape, JOB_RAMP_S,
};
use rackwarden_protocols::gpu::{cap_drift, GpuError, GpuSource, GpuTarget};

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
        LoadProfile::JobStart { start_s: 1.0 },
    ] {
        let mut bound = false;
        for t in times(0.0, 20.0).chain(times(spec.day_s / 2.0, 5.0)) {
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
        which in 0usize..4,
    ) {
        let profile = [
            LoadProfile::Idle,
            LoadProfile::Training,
            LoadProfile::Inference,
            LoadProfile::JobStart { start_s: 50.0 },
        ][which];
        let spec = SimSpec::h100(128, seed);
        let p = power_w(profile, &spec, gpu, t, cap);
        proptest::prop_assert!((0.0..=cap).contains(&p), "{profile:?} t={t} cap={cap}: {p}");
        proptest::prop_assert_eq!(p, power_w(profile, &spec, gpu, t, cap));
        let avg = rackwarden_protocols::gpu::sim::average_power_w(profile, &spec, gpu, t, cap);
        proptest::prop_assert!((0.0..=cap + 1e-9).contains(&avg));
    }
}
