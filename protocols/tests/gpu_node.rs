//! Node mode over loopback, through the client the site agent uses: the token is
//! required (missing or wrong: 401, nothing touched), readings are served, a cap is
//! applied and read back, refusals and mismatches come back as the same errors a local
//! source gives, and a silent or garbled node is an error the caller turns into
//! staleness.

// Helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rackwarden_protocols::gpu::node::{
    serve_with_shutdown, GpuNodeClient, Token, MAX_BODY_BYTES, POWER_LIMIT_PATH, READINGS_PATH,
};
use rackwarden_protocols::gpu::nvml::{FakeGpu, FakeNvml, NvmlSource};
use rackwarden_protocols::gpu::{cap_drift, GpuError, GpuSource, GpuTarget};
use rackwarden_sim::gpu::{LoadProfile, SimGpus, SimSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const TOKEN: &str = "a-long-shared-node-token";
const LIMIT: Duration = Duration::from_secs(10);

struct Node {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    async fn start(source: Arc<dyn GpuSource>) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with_shutdown(
            listener,
            source,
            Token::new(TOKEN),
            async move {
                stopped.await.ok();
            },
        ));
        Node {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn client(&self, token: &str) -> GpuNodeClient {
        GpuNodeClient::new(
            "gpunode-a1",
            self.addr,
            Token::new(token),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            s.send(()).unwrap();
        }
        tokio::time::timeout(LIMIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn fake_source() -> Arc<NvmlSource<FakeNvml>> {
    let gpus = (0..4).map(|i| FakeGpu::h100(i, 500)).collect();
    Arc::new(NvmlSource::with_backend("gpu-host-a1", FakeNvml::new(gpus)))
}

#[tokio::test]
async fn token_is_required() {
    tokio::time::timeout(LIMIT, async {
        let src = fake_source();
        let node = Node::start(src.clone()).await;

        // Wrong token, through the agent's client: read and cap both refused.
        let wrong = node.client("not-the-token");
        assert!(matches!(
            wrong.read().await,
            Err(GpuError::Unauthorized { .. })
        ));
        assert!(matches!(
            wrong.set_power_limit(GpuTarget::All, 300.0).await,
            Err(GpuError::Unauthorized { .. })
        ));
        // A prefix of the right token is not the token.
        let prefix = node.client(&TOKEN[..10]);
        assert!(matches!(
            prefix.read().await,
            Err(GpuError::Unauthorized { .. })
        ));

        // No token at all, and a malformed body without one: 401 before any parsing.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let base = format!("http://{}", node.addr);
        let r = http
            .get(format!("{base}{READINGS_PATH}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .unwrap()
                .to_str()
                .unwrap(),
            "Bearer"
        );
        let r = http
            .post(format!("{base}{POWER_LIMIT_PATH}"))
            .body("{garbage")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let r = http
            .get(format!("{base}{READINGS_PATH}"))
            .header("authorization", format!("Basic {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);

        // Nothing was set on the device by any of it.
        assert_eq!(src.backend_ref().unwrap().set_count(), 0);
        node.stop().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn readings_served_and_cap_applied_and_read_back() {
    tokio::time::timeout(LIMIT, async {
        let src = fake_source();
        let node = Node::start(src.clone()).await;
        let client = node.client(TOKEN);

        let r = client.read().await.unwrap();
        assert!(r.nvml_available);
        assert_eq!(r.gpus.len(), 4);
        assert_eq!(r.gpus[2].power_w, Some(500.0));
        assert_eq!(r.reserve_w(), Some(2800.0));

        let applied = client
            .set_power_limit(GpuTarget::Gpu(2), 350.0)
            .await
            .unwrap();
        assert_eq!(applied.len(), 1);
        assert_eq!((applied[0].index, applied[0].enforced_w), (2, 350.0));
        // The device has it, and the next reading shows it.
        assert_eq!(src.backend_ref().unwrap().gpus()[2].limit_mw, 350_000);
        let r = client.read().await.unwrap();
        assert_eq!(r.gpus[2].enforced_limit_w, Some(350.0));
        assert_eq!(r.reserve_w(), Some(2450.0));

        let applied = client.set_power_limit(GpuTarget::All, 600.0).await.unwrap();
        assert_eq!(applied.len(), 4);
        node.stop().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn refusal_and_mismatch_come_back_as_the_local_errors() {
    tokio::time::timeout(LIMIT, async {
        let src = fake_source();
        let node = Node::start(src.clone()).await;
        let client = node.client(TOKEN);

        let e = client
            .set_power_limit(GpuTarget::All, 150.0)
            .await
            .unwrap_err();
        assert!(
            matches!(e, GpuError::LimitOutOfRange { gpu: 0, requested_w, min_w, max_w, .. }
                if requested_w == 150.0 && min_w == 200.0 && max_w == 700.0),
            "{e:?}"
        );
        // The error names the node the agent talked to.
        assert!(e.to_string().starts_with("gpunode-a1:"), "{e}");
        assert!(matches!(
            client.set_power_limit(GpuTarget::Gpu(7), 300.0).await,
            Err(GpuError::Remote { status: 404, .. })
        ));
        assert_eq!(src.backend_ref().unwrap().set_count(), 0);

        src.backend_ref()
            .unwrap()
            .update(3, |g| g.enforce_instead_mw = Some(700_000));
        let e = client
            .set_power_limit(GpuTarget::Gpu(3), 300.0)
            .await
            .unwrap_err();
        assert!(
            matches!(e, GpuError::LimitMismatch { gpu: 3, enforced_w, .. } if enforced_w == 700.0),
            "{e:?}"
        );
        node.stop().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn rebooted_node_drift_is_found_and_cap_reapplied() {
    tokio::time::timeout(LIMIT, async {
        let sim = Arc::new(SimGpus::new(
            "gpu-host-b1",
            LoadProfile::Training,
            SimSpec::h100(8, 42),
        ));
        let node = Node::start(sim.clone()).await;
        let client = node.client(TOKEN);
        client.set_power_limit(GpuTarget::All, 400.0).await.unwrap();
        let commanded: Vec<(u32, f64)> = (0..8).map(|i| (i, 400.0)).collect();
        assert!(cap_drift(&commanded, &client.read().await.unwrap()).is_empty());

        sim.reboot();
        let drift = cap_drift(&commanded, &client.read().await.unwrap());
        assert_eq!(drift.len(), 8);
        assert!(drift.iter().all(|d| d.enforced_w == 700.0));
        for d in drift {
            client
                .set_power_limit(GpuTarget::Gpu(d.index), d.commanded_w)
                .await
                .unwrap();
        }
        assert!(cap_drift(&commanded, &client.read().await.unwrap()).is_empty());
        node.stop().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn silent_node_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let client = GpuNodeClient::new(
        "gpunode-silent",
        addr,
        Token::new(TOKEN),
        Duration::from_millis(300),
    )
    .unwrap();
    let started = tokio::time::Instant::now();
    let e = tokio::time::timeout(LIMIT, client.read())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            e,
            GpuError::Timeout {
                timeout_ms: 300,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(e.to_string().contains("gpunode-silent"));
    hold.abort();
}

#[tokio::test]
async fn closed_port_and_garbage_are_errors() {
    // A port with nobody listening.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = probe.local_addr().unwrap();
    drop(probe);
    let client = GpuNodeClient::new(
        "gpunode-gone",
        closed,
        Token::new(TOKEN),
        Duration::from_secs(2),
    )
    .unwrap();
    let e = tokio::time::timeout(LIMIT, client.read())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e, GpuError::Http { .. } | GpuError::Timeout { .. }),
        "{e:?}"
    );

    // A server answering 200 with something that is not a reading.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let garbage = tokio::spawn(async move {
        if let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 2048];
            let _answered = s.read(&mut buf).await;
            let body = "{\"nvml_available\": \"maybe\"";
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.ok();
        }
    });
    let client = GpuNodeClient::new(
        "gpunode-garbled",
        addr,
        Token::new(TOKEN),
        Duration::from_secs(2),
    )
    .unwrap();
    let e = tokio::time::timeout(LIMIT, client.read())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, GpuError::BadBody { .. }), "{e:?}");
    assert!(e.to_string().contains("gpunode-garbled"));
    garbage.await.unwrap();
}

#[tokio::test]
async fn endless_or_oversized_bodies_are_cut_at_the_cap() {
    for declared in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(support::flood(listener, declared));
        let client = GpuNodeClient::new(
            "gpunode-flood",
            addr,
            Token::new(TOKEN),
            Duration::from_secs(8),
        )
        .unwrap();
        let started = tokio::time::Instant::now();
        let e = tokio::time::timeout(LIMIT, client.read())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(e, GpuError::BodyTooLarge { limit_bytes, .. } if limit_bytes == MAX_BODY_BYTES),
            "declared {declared}: {e:?}"
        );
        assert!(e.to_string().contains("gpunode-flood"), "{e}");
        // Cut at the cap, not ended by the request timeout.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        drop(client);
        let sent = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
        // The client hung up long before the server's 64 MiB (socket buffers aside).
        assert!(
            sent < 32 * 1024 * 1024,
            "declared {declared}: {sent} bytes went out"
        );
    }
}
