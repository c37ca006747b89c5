//! A miner's web API that answers with an endless or oversized body: the driver stops
//! reading at `miner::http::MAX_BODY_BYTES` and fails with an error naming the miner,
//! long before the HTTP timeout (which bounds the time, not the bytes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::Duration;

use rackwarden_config::{Firmware, Miner};
use rackwarden_protocols::miner::http::{HttpError, MAX_BODY_BYTES};
use rackwarden_protocols::miner::{DriverFactory, DriverOptions, MinerError};

const LIMIT: Duration = Duration::from_secs(10);

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
        let server = tokio::spawn(support::flood(listener, declared));
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
