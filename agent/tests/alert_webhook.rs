//! Alert delivery to a webhook (issue 18), through the agent's own path: `alerts::log`
//! with `[alerts]` delivery started, a real HTTP receiver on loopback (axum), and the
//! counters of `/metrics`. Every wait is bounded.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use rackwarden::alerts::{self, deliver};
use rackwarden::control::{Alert, AlertKind, Severity};
use rackwarden::metrics::Metrics;
use rackwarden_config::{AlertDelivery, AlertLevel};
use serde_json::Value;

/// Delivery is process-wide (one sink): one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// (Authorization header, body) of every request received.
type Requests = Arc<Mutex<Vec<(Option<String>, Value)>>>;

#[derive(Clone, Default)]
struct Hook {
    /// (Authorization header, body) of every request.
    got: Requests,
    /// Answer 503 to this many requests first.
    fail_first: Arc<Mutex<u32>>,
    /// Hold each answer this long (a slow receiver).
    delay: Duration,
}

async fn receive(State(h): State<Hook>, headers: HeaderMap, Json(body): Json<Value>) -> StatusCode {
    tokio::time::sleep(h.delay).await;
    {
        let mut f = h.fail_first.lock().unwrap();
        if *f > 0 {
            *f -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    h.got.lock().unwrap().push((auth, body));
    StatusCode::OK
}

async fn receiver(h: Hook) -> String {
    let app = Router::new().route("/hook", post(receive)).with_state(h);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(l, app).await.ok();
    });
    format!("http://{addr}/hook")
}

fn config(url: &str, token: Option<std::path::PathBuf>, queue: usize) -> AlertDelivery {
    AlertDelivery {
        alertmanager_url: None,
        webhook_url: Some(url.to_owned()),
        webhook_token_file: token,
        resend_interval_s: 1,
        min_severity: AlertLevel::Warning,
        queue_capacity: queue,
        timeout_s: 2,
    }
}

fn alert(kind: AlertKind, severity: Severity, zone: &str, message: &str) -> Alert {
    Alert {
        kind,
        severity,
        node: None,
        zone: Some(zone.to_owned()),
        device: None,
        kw: Some(120.0),
        budget_kw: Some(100.0),
        fraction: Some(1.2),
        message: message.to_owned(),
    }
}

/// Every alert object received so far, in order.
fn received(h: &Hook) -> Vec<Value> {
    h.got
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, b)| b["alerts"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Waits (at most `secs`) until `pred` holds for the alerts received.
async fn wait_until(h: &Hook, secs: u64, what: &str, pred: impl Fn(&[Value]) -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if pred(&received(h)) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: not within {secs} s; received {:#?}",
            received(h)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sample of `/metrics` (`name{labels}` as written), 0 when absent.
fn sample(m: &Metrics, series: &str) -> f64 {
    m.encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_firing_resent_and_resolved_alerts_with_the_token() {
    let _g = SERIAL.lock().await;
    let hook = Hook::default();
    let url = receiver(hook.clone()).await;
    let dir = std::env::temp_dir().join(format!("rw-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("webhook.token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let metrics = Metrics::new();
    let d = deliver::start(&config(&url, Some(token), 64), "test-site", &metrics).unwrap();

    let lost = alert(
        AlertKind::CoolingRedundancyLost,
        Severity::Critical,
        "air-mining",
        "zone `air-mining` lost N+1",
    );
    alerts::log(&lost, 0);
    // Below the minimum severity and resolving nothing: never sent.
    alerts::log(
        &Alert {
            zone: None,
            ..alert(AlertKind::ConfigReloaded, Severity::Info, "", "reloaded")
        },
        0,
    );
    // A one-shot: sent once, with nothing that resolves it.
    alerts::log(
        &Alert {
            zone: None,
            ..alert(
                AlertKind::ConfigReloadFailed,
                Severity::Warning,
                "",
                "bad file",
            )
        },
        0,
    );
    let is = |v: &Value, name: &str, status: &str| v["alert"] == name && v["status"] == status;
    wait_until(&hook, 10, "first firing notice", |a| {
        a.iter().any(|v| is(v, "cooling.redundancy.lost", "firing"))
    })
    .await;
    // Re-sent while active (resend_interval_s = 1), endsAt moving ahead.
    wait_until(&hook, 10, "a re-send", |a| {
        a.iter()
            .filter(|v| is(v, "cooling.redundancy.lost", "firing"))
            .count()
            >= 3
    })
    .await;
    let firing: Vec<Value> = received(&hook)
        .into_iter()
        .filter(|v| is(v, "cooling.redundancy.lost", "firing"))
        .collect();
    let f = &firing[0];
    assert_eq!(f["severity"], "critical");
    assert_eq!(f["zone"], "air-mining");
    assert_eq!(f["node"], Value::Null);
    assert_eq!(f["message"], "zone `air-mining` lost N+1");
    assert_eq!(f["kw"], 120.0);
    assert_eq!(f["fraction"], 1.2);
    assert_eq!(f["resolved_by"], "cooling.redundancy.restored");
    assert_eq!(firing[0]["starts_at"], firing[2]["starts_at"]);
    let ends = |v: &Value| humantime::parse_rfc3339(v["ends_at"].as_str().unwrap()).unwrap();
    let starts = humantime::parse_rfc3339(f["starts_at"].as_str().unwrap()).unwrap();
    assert!(
        ends(&firing[2]) > ends(&firing[0]),
        "endsAt moves ahead on re-sends"
    );
    let ahead = ends(f).duration_since(starts).unwrap();
    assert!(
        (Duration::from_secs(3)..=Duration::from_secs(5)).contains(&ahead),
        "endsAt {ahead:?} after startsAt (4 intervals)"
    );

    // The counterpart resolves it: same labels, status resolved, no more re-sends.
    alerts::log(
        &alert(
            AlertKind::CoolingRedundancyRestored,
            Severity::Info,
            "air-mining",
            "zone `air-mining` N+1 holds again",
        ),
        0,
    );
    wait_until(&hook, 10, "the resolved notice", |a| {
        a.iter()
            .any(|v| is(v, "cooling.redundancy.lost", "resolved"))
    })
    .await;
    let all = received(&hook);
    let r = all
        .iter()
        .find(|v| is(v, "cooling.redundancy.lost", "resolved"))
        .unwrap();
    assert_eq!(r["severity"], "critical");
    assert_eq!(r["zone"], "air-mining");
    assert_eq!(r["starts_at"], f["starts_at"]);
    assert_eq!(r["message"], "zone `air-mining` N+1 holds again");
    let n_after = all.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late: Vec<Value> = received(&hook).split_off(n_after);
    assert!(late.is_empty(), "sent after it resolved: {late:#?}");

    let all = received(&hook);
    assert_eq!(
        all.iter()
            .filter(|v| v["alert"] == "config.reload.failed")
            .count(),
        1,
        "the one-shot once"
    );
    let one = all
        .iter()
        .find(|v| v["alert"] == "config.reload.failed")
        .unwrap();
    assert_eq!(one["resolved_by"], Value::Null);
    assert!(!all.iter().any(|v| v["alert"] == "config.reloaded"));
    assert!(!all
        .iter()
        .any(|v| v["alert"] == "cooling.redundancy.restored"));
    // The bearer token from the file, on every request.
    for (auth, body) in hook.got.lock().unwrap().iter() {
        assert_eq!(auth.as_deref(), Some("Bearer s3cret-token"));
        assert_eq!(body["version"], 1);
        assert_eq!(body["site"], "test-site");
    }
    #[allow(clippy::cast_precision_loss)]
    let n = all.len() as f64;
    assert_eq!(
        sample(
            &metrics,
            "rackwarden_alert_notifications_sent_total{receiver=\"webhook\"}"
        ),
        n
    );
    assert_eq!(
        sample(
            &metrics,
            "rackwarden_alert_send_failures_total{receiver=\"webhook\"}"
        ),
        0.0
    );
    assert_eq!(
        sample(&metrics, "rackwarden_alerts_active{receiver=\"webhook\"}"),
        0.0
    );
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_and_counted() {
    let _g = SERIAL.lock().await;
    let hook = Hook {
        fail_first: Arc::new(Mutex::new(3)),
        ..Hook::default()
    };
    let url = receiver(hook.clone()).await;
    let metrics = Metrics::new();
    let d = deliver::start(&config(&url, None, 64), "test-site", &metrics).unwrap();
    let t0 = Instant::now();
    alerts::log(
        &alert(
            AlertKind::CoolingCapacityExceeded,
            Severity::Critical,
            "z",
            "over capacity",
        ),
        0,
    );
    // 503 three times (retries after 1 s, then at most the 1 s resend interval), then
    // taken.
    wait_until(&hook, 15, "delivery after the failures", |a| {
        a.iter().any(|v| v["alert"] == "cooling.capacity.exceeded")
    })
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        sample(
            &metrics,
            "rackwarden_alert_send_failures_total{receiver=\"webhook\"}"
        ),
        3.0
    );
    assert!(
        hook.got.lock().unwrap()[0].0.is_none(),
        "no token configured"
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_never_blocks_the_caller_and_a_full_queue_drops() {
    let _g = SERIAL.lock().await;
    let hook = Hook {
        delay: Duration::from_secs(1),
        ..Hook::default()
    };
    let url = receiver(hook.clone()).await;
    let metrics = Metrics::new();
    let d = deliver::start(&config(&url, None, 4), "test-site", &metrics).unwrap();
    let t0 = Instant::now();
    for i in 0..200 {
        let zone = format!("z{i}");
        alerts::log(
            &alert(
                AlertKind::CoolingCapacityExceeded,
                Severity::Critical,
                &zone,
                "over capacity",
            ),
            0,
        );
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "200 alerts took {took:?}"
    );
    let dropped = sample(
        &metrics,
        "rackwarden_alert_notifications_dropped_total{receiver=\"webhook\",reason=\"queue_full\"}",
    );
    assert!(
        dropped >= 150.0,
        "a queue of 4 behind a 1 s receiver dropped only {dropped}"
    );
    // What was queued still arrives.
    wait_until(&hook, 10, "the queued alerts", |a| !a.is_empty()).await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_exit_what_waits_gets_one_last_bounded_send() {
    let _g = SERIAL.lock().await;
    let hook = Hook::default();
    let url = receiver(hook.clone()).await;
    let metrics = Metrics::new();
    let d = deliver::start(&config(&url, None, 64), "test-site", &metrics).unwrap();
    let lost = Alert {
        zone: None,
        device: Some("mgmt-a".to_owned()),
        ..alert(
            AlertKind::HaLeaderLost,
            Severity::Critical,
            "",
            "mgmt-a stops acting",
        )
    };
    alerts::log(&lost, 0);
    d.finish(Duration::from_secs(3)).await;
    let got = received(&hook);
    assert!(
        got.iter()
            .any(|v| v["alert"] == "ha.leader.lost" && v["device"] == "mgmt-a"),
        "{got:#?}"
    );
    // Stopped: nothing more is offered or sent.
    alerts::log(&lost, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(received(&hook).len(), got.len());

    // A receiver that holds every answer 5 s: the exit waits 1 s, no more.
    let slow = Hook {
        delay: Duration::from_secs(5),
        ..Hook::default()
    };
    let url = receiver(slow.clone()).await;
    let d = deliver::start(&config(&url, None, 64), "test-site", &metrics).unwrap();
    alerts::log(&lost, 0);
    let t0 = Instant::now();
    d.finish(Duration::from_secs(1)).await;
    let took = t0.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(1500)).contains(&took),
        "finish took {took:?}"
    );
}
