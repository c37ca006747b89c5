//! The real NVML path, on a host with an NVIDIA GPU and its driver. Ignored by default
//! (CI has no GPU); docs/gpu.md gives the command. Setting a limit needs root and is
//! opt-in: `RACKWARDEN_NVML_SET_CAP=1` sets GPU 0 to the middle of its range, reads it
//! back and restores the limit it found.

// Helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rackwarden_protocols::gpu::nvml::NvmlSource;
use rackwarden_protocols::gpu::{GpuSource, GpuTarget};

#[tokio::test]
#[ignore = "needs an NVIDIA GPU and libnvidia-ml; see docs/gpu.md"]
async fn real_nvml_reads_and_caps() {
    let s = NvmlSource::load("local");
    assert!(s.available(), "libnvidia-ml did not load");
    let r = s.read().await.unwrap();
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.nvml_available);
    assert!(!r.gpus.is_empty());
    for g in &r.gpus {
        let p = g
            .power_w
            .expect("power_usage is supported on every datacenter GPU");
        assert!(p > 0.0 && p < 2000.0, "gpu {} power {p} W", g.index);
        let (min, max) = g.constraints_w().expect("limit constraints");
        let enforced = g.enforced_limit_w.expect("enforced limit");
        assert!(min <= max && enforced >= min - 1.0 && enforced <= max + 1.0);
        println!(
            "gpu {} power {p:.1} W instant {:?} W limit {enforced} W in {min}..={max} W",
            g.index, g.power_instant_w
        );
    }
    // Out of range is refused without touching the device, with or without root.
    let (min, _) = r.gpus[0].constraints_w().unwrap();
    assert!(s
        .set_power_limit(GpuTarget::Gpu(0), min - 50.0)
        .await
        .is_err());

    if std::env::var("RACKWARDEN_NVML_SET_CAP").as_deref() == Ok("1") {
        let g = &r.gpus[0];
        let (min, max) = g.constraints_w().unwrap();
        let before = g.enforced_limit_w.unwrap();
        let mid = ((min + max) / 2.0).round();
        let applied = s.set_power_limit(GpuTarget::Gpu(0), mid).await.unwrap();
        assert!((applied[0].enforced_w - mid).abs() <= 1.0);
        let back = s.read().await.unwrap();
        assert!((back.gpus[0].enforced_limit_w.unwrap() - mid).abs() <= 1.0);
        s.set_power_limit(GpuTarget::Gpu(0), before).await.unwrap();
        println!("gpu 0 capped to {mid} W, read back, restored to {before} W");
    }
}
