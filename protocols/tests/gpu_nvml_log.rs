//! NVML missing or a call unsupported is said once in the log, as an alert with a
//! stable name, however often the source is read.

// Helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use rackwarden_protocols::gpu::nvml::{FakeGpu, FakeNvml, NvmlSource};
use rackwarden_protocols::gpu::{GpuSource, ALERT_NVML_UNAVAILABLE, ALERT_NVML_UNSUPPORTED};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A global JSON subscriber (NVML calls log from blocking-pool threads, where a
/// thread-local default would not see them).
fn log() -> &'static Buf {
    static BUF: OnceLock<Buf> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Buf::default();
        let w = buf.clone();
        tracing_subscriber::fmt()
            .json()
            .with_writer(move || w.clone())
            .init();
        buf
    })
}

/// Log lines that mention both `alert` and `device`.
fn lines_with(alert: &str, device: &str) -> Vec<String> {
    let text = String::from_utf8(log().0.lock().unwrap().clone()).unwrap();
    text.lines()
        .filter(|l| l.contains(&format!("\"alert\":\"{alert}\"")) && l.contains(device))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn nvml_unavailable_is_said_once() {
    log();
    let s = NvmlSource::load_from("host-log-absent", &["libnvidia-ml-rackwarden-absent.so"]);
    for _ in 0..5 {
        assert!(!s.read().await.unwrap().nvml_available);
    }
    let lines = lines_with(ALERT_NVML_UNAVAILABLE, "host-log-absent");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"level\":\"WARN\""));
    assert!(lines[0].contains("rackwarden::alert"));
}

#[tokio::test]
async fn unsupported_call_is_said_once_per_call() {
    log();
    let fake = FakeNvml::new((0..4).map(|i| FakeGpu::h100(i, 300)).collect());
    fake.set_unsupported("power_instant");
    fake.set_unsupported("total_energy");
    let s = NvmlSource::with_backend("host-log-unsupported", fake);
    for _ in 0..5 {
        let r = s.read().await.unwrap();
        assert!(r.gpus.iter().all(|g| g.power_instant_w.is_none()));
    }
    let lines = lines_with(ALERT_NVML_UNSUPPORTED, "host-log-unsupported");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines
        .iter()
        .any(|l| l.contains("\"call\":\"power_instant\"")));
    assert!(lines
        .iter()
        .any(|l| l.contains("\"call\":\"total_energy\"")));
}
