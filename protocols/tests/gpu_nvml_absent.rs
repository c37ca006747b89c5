//! NVML missing (CI, the management host, any machine without the NVIDIA driver): the
//! source loads without panicking, reads as unavailable, refuses caps, and a caller
//! (here the gpu-node server and the agent's client) carries on.

// Helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use rackwarden_protocols::gpu::node::{serve_with_shutdown, GpuNodeClient, Token};
use rackwarden_protocols::gpu::nvml::NvmlSource;
use rackwarden_protocols::gpu::{GpuError, GpuNodeReading, GpuSource, GpuTarget};

#[tokio::test]
async fn absent_library_reads_unavailable_and_refuses_caps() {
    let s = NvmlSource::load_from("gpu-host-1", &["libnvidia-ml-rackwarden-absent.so"]);
    assert!(!s.available());
    let r = s.read().await.unwrap();
    assert_eq!(r, GpuNodeReading::unavailable());
    assert_eq!(r.reserve_w(), None, "the caller must reserve rated max");
    assert!(!r.cap_lever_available());
    let e = s.set_power_limit(GpuTarget::All, 400.0).await.unwrap_err();
    assert!(matches!(e, GpuError::NvmlUnavailable { .. }), "{e:?}");
    // Reading again still works: nothing was left half-initialised.
    assert!(!s.read().await.unwrap().nvml_available);
}

#[tokio::test]
async fn default_load_on_this_host_never_panics_and_agrees_with_itself() {
    // CI has no libnvidia-ml: this is the no-NVML path there; on a GPU host it is the
    // real one, and the reading must agree with what the loader said.
    let s = NvmlSource::load("local");
    let r = s.read().await;
    if s.available() {
        let r = r.unwrap();
        assert!(r.nvml_available);
    } else {
        let r = r.unwrap();
        assert!(!r.nvml_available);
        assert!(r.gpus.is_empty());
        assert!(matches!(
            s.set_power_limit(GpuTarget::Gpu(0), 300.0).await,
            Err(GpuError::NvmlUnavailable { .. })
        ));
    }
}

#[tokio::test]
async fn node_without_nvml_serves_unavailable_and_the_agent_carries_on() {
    let source: Arc<dyn GpuSource> = Arc::new(NvmlSource::load_from(
        "gpu-host-1",
        &["libnvidia-ml-rackwarden-absent.so"],
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_shutdown(
        listener,
        source,
        Token::new("tok"),
        async move {
            stopped.await.ok();
        },
    ));
    let client =
        GpuNodeClient::new("gpunode-1", addr, Token::new("tok"), Duration::from_secs(5)).unwrap();
    let r = client.read().await.unwrap();
    assert!(!r.nvml_available);
    let e = client
        .set_power_limit(GpuTarget::All, 400.0)
        .await
        .unwrap_err();
    assert!(matches!(e, GpuError::NvmlUnavailable { .. }), "{e:?}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
