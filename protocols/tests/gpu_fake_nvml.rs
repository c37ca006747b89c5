//! The NVML source against the fake NVML backend: readings and unit conversion, caps
//! inside the constraints, refusal outside them (nothing touched), read-back mismatch,
//! unsupported calls and a lost GPU.

// Helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rackwarden_protocols::gpu::nvml::{FakeGpu, FakeNvml, NvmlSource};
use rackwarden_protocols::gpu::{GpuError, GpuSource, GpuTarget};

fn source(n: u32) -> NvmlSource<FakeNvml> {
    let gpus = (0..n).map(|i| FakeGpu::h100(i, 350 + 10 * i)).collect();
    NvmlSource::with_backend("gpu-host-1", FakeNvml::new(gpus))
}

fn fake(s: &NvmlSource<FakeNvml>) -> &FakeNvml {
    // The source owns the backend; tests reach it through the shared handle below.
    s.backend_ref().unwrap()
}

#[tokio::test]
async fn readings_are_converted_from_nvml_units() {
    let s = source(2);
    fake(&s).update(1, |g| {
        g.energy_mj = 3_600_000_500;
        g.power_instant_mw = Some(412_500);
        g.temperature_c = 71;
        g.utilization_pct = 93;
        g.limit_mw = 650_000;
    });
    let r = s.read().await.unwrap();
    assert!(r.nvml_available);
    assert_eq!(r.gpus.len(), 2);
    let g = &r.gpus[1];
    assert_eq!(g.index, 1);
    assert_eq!(g.uuid.as_deref(), Some("GPU-fake-0001"));
    assert_eq!(g.power_w, Some(360.0));
    assert_eq!(g.power_instant_w, Some(412.5));
    assert_eq!(g.energy_j, Some(3_600_000.5));
    assert_eq!(g.temperature_c, Some(71.0));
    assert_eq!(g.utilization_pct, Some(93.0));
    assert_eq!(g.enforced_limit_w, Some(650.0));
    assert_eq!(g.constraints_w(), Some((200.0, 700.0)));
    assert_eq!(g.default_limit_w, Some(700.0));
    assert_eq!(r.reserve_w(), Some(1350.0));
    assert_eq!(r.power_w(), Some(710.0));
    assert!(r.cap_lever_available());
}

#[tokio::test]
async fn cap_inside_constraints_is_set_and_read_back() {
    let s = source(3);
    let applied = s.set_power_limit(GpuTarget::All, 412.5).await.unwrap();
    assert_eq!(applied.len(), 3);
    assert!(applied.iter().all(|a| a.enforced_w == 412.5));
    assert!(fake(&s).gpus().iter().all(|g| g.limit_mw == 412_500));

    let applied = s.set_power_limit(GpuTarget::Gpu(2), 200.0).await.unwrap();
    assert_eq!(applied.len(), 1);
    assert_eq!((applied[0].index, applied[0].enforced_w), (2, 200.0));
    let limits: Vec<u32> = fake(&s).gpus().iter().map(|g| g.limit_mw).collect();
    assert_eq!(limits, vec![412_500, 412_500, 200_000]);
    assert_eq!(fake(&s).set_count(), 4);
}

#[tokio::test]
async fn cap_outside_constraints_is_refused_before_touching_any_gpu() {
    let s = source(2);
    // GPU 1 has a narrower range: an "all" command must be refused as a whole.
    fake(&s).update(1, |g| g.min_limit_mw = 300_000);
    let e = s.set_power_limit(GpuTarget::All, 250.0).await.unwrap_err();
    assert!(
        matches!(e, GpuError::LimitOutOfRange { gpu: 1, requested_w, min_w, max_w, .. }
            if requested_w == 250.0 && min_w == 300.0 && max_w == 700.0),
        "{e:?}"
    );
    for bad in [199.0, 700.5, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            s.set_power_limit(GpuTarget::Gpu(0), bad).await,
            Err(GpuError::LimitOutOfRange { gpu: 0, .. })
        ));
    }
    assert!(matches!(
        s.set_power_limit(GpuTarget::Gpu(9), 400.0).await,
        Err(GpuError::UnknownGpu {
            gpu: 9,
            count: 2,
            ..
        })
    ));
    assert_eq!(fake(&s).set_count(), 0);
    assert!(fake(&s).gpus().iter().all(|g| g.limit_mw == 700_000));
    assert!(e.to_string().contains("gpu-host-1"));
}

#[tokio::test]
async fn read_back_mismatch_is_an_error() {
    let s = source(2);
    // Something else on the host (another tool, the driver) holds GPU 1 at 450 W.
    fake(&s).update(1, |g| g.enforce_instead_mw = Some(450_000));
    let e = s
        .set_power_limit(GpuTarget::Gpu(1), 400.0)
        .await
        .unwrap_err();
    assert!(
        matches!(e, GpuError::LimitMismatch { gpu: 1, requested_w, enforced_w, .. }
            if requested_w == 400.0 && enforced_w == 450.0),
        "{e:?}"
    );
    // Within a watt is the same limit (drivers that round to whole watts).
    fake(&s).update(0, |g| g.enforce_instead_mw = Some(400_000));
    let ok = s.set_power_limit(GpuTarget::Gpu(0), 400.4).await.unwrap();
    assert_eq!(ok[0].enforced_w, 400.0);
}

#[tokio::test]
async fn unsupported_calls_leave_fields_empty_and_disable_the_lever() {
    let s = source(2);
    fake(&s).update(0, |g| g.power_instant_mw = None);
    fake(&s).set_unsupported("total_energy");
    let r = s.read().await.unwrap();
    assert_eq!(r.gpus[0].power_instant_w, None);
    assert_eq!(r.gpus[1].power_instant_w, Some(360.0));
    assert!(r.gpus.iter().all(|g| g.energy_j.is_none()));
    assert!(r.cap_lever_available(), "energy is not needed to cap");

    fake(&s).set_unsupported("limit_constraints");
    let r = s.read().await.unwrap();
    assert!(r.gpus.iter().all(|g| g.limit_min_w.is_none()));
    assert!(!r.cap_lever_available());
    assert!(matches!(
        s.set_power_limit(GpuTarget::All, 400.0).await,
        Err(GpuError::ConstraintsUnknown { gpu: 0, .. })
    ));
    assert_eq!(fake(&s).set_count(), 0);
}

#[tokio::test]
async fn lost_gpu_fails_the_read_naming_the_gpu() {
    let s = source(2);
    fake(&s).update(1, |g| g.lost = true);
    let e = s.read().await.unwrap_err();
    assert!(matches!(e, GpuError::Nvml { gpu: Some(1), .. }), "{e:?}");
    assert!(e.to_string().contains("gpu-host-1"));
}
