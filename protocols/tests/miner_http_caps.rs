//! A miner's web API that answers with an endless or oversized body: the driver stops
//! reading at `miner::http::MAX_BODY_BYTES` and fails with an error naming the miner,
//! long before the HTTP timeout (which bounds the time, not the bytes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use rackwarden_config::{Firmware, Miner};
use rackwarden_protocols::miner::http::{HttpError, MAX_BODY_BYTES};
use rackwarden_protocols::miner::{DriverFactory, DriverOptions, MinerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(10);

/// Answers one request with 200 and a body of `[`: chunked without end, or declared at
/// 64 MiB. Writes until the client hangs up or 64 MiB went out; returns the bytes sent.
async fn flood(listener: tokio::net::TcpListener, declared: bool) -> usize {
    let Ok((mut s, _)) = listener.accept().await else {
        return 0;
    };
    let mut buf = [0u8; 2048];
    let _ = s.read(&mut buf).await;
    let head = if declared {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            64 * 1024 * 1024
        )
    } else {
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_owned()
    };
    if s.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let block = vec![b'['; 64 * 1024];
    let mut sent = 0;
    while sent < 64 * 1024 * 1024 {
        let r = if declared {
            s.write_all(&block).await
        } else {
            let mut chunk = format!("{:x}\r\n", block.len()).into_bytes();
            chunk.extend_from_slice(&block);
            chunk.extend_from_slice(b"\r\n");
            s.write_all(&chunk).await
        };
        if r.is_err() {
            break;
        }
        sent += block.len();
    }
    sent
}

fn vnish(http_port: u16) -> Miner {
    Miner {
        id: "mine-flood-vnish-001".into(),
        host: "127.0.0.1".into(),
        // Nothing listens on the API port: Vnish polls over REST only.
        port: 9,
        http_port: Some(http_port),
        firmware: Firmware::Vnish,
        rack: 0,
        nominal_w: 3000.0,
        min_w: Some(1500.0),
        idle_w: 25.0,
        efficiency_j_th: Some(30.0),
        credentials: None,
        outlet: None,
    }
}

#[tokio::test]
async fn endless_or_oversized_web_answers_are_cut_at_the_cap() {
    for declared in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(flood(listener, declared));
        let d = DriverFactory::new(DriverOptions {
            http_timeout: Duration::from_secs(8),
            ..DriverOptions::default()
        })
        .unwrap()
        .build(&vnish(port))
        .unwrap();
        let started = tokio::time::Instant::now();
        let e = tokio::time::timeout(LIMIT, d.poll())
            .await
            .unwrap()
            .unwrap_err();
        let MinerError::Http { source, .. } = &e else {
            panic!("declared {declared}: {e:?}");
        };
        assert!(
            matches!(**source, HttpError::TooLarge { limit_bytes, .. } if limit_bytes == MAX_BODY_BYTES),
            "declared {declared}: {e:?}"
        );
        assert!(e.to_string().contains("mine-flood-vnish-001"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        drop(d);
        let sent = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
        assert!(
            sent < 32 * 1024 * 1024,
            "declared {declared}: {sent} bytes went out"
        );
    }
}
