//! Drivers against the simulator over loopback sockets: for every firmware, poll, shed
//! (power target where the firmware has one, then sleep), restore, and see each change
//! in later polls; and a miner that accepts commands but ignores them, where the missing
//! confirmation is visible. Plus transport faults (no answer, garbage, slow answer).
//! Firmware delays run 100x faster (`time_scale`).

// Test code: helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rackwarden_config::{Credentials, Firmware};
use rackwarden_protocols::miner::{
    Commanded, DriverFactory, DriverOptions, MinerDriver, MinerError, MinerMode, MinerTelemetry,
};
use rackwarden_sim::miner::{Fault, MinerSim, SimMiner, SimMinerSpec, SimOptions};

const SCALE: f64 = 100.0;

/// Each test gets its own loopback address (127.98.<n>.1), port chosen by the OS.
async fn start(fw: Firmware, n: u8) -> (MinerSim, Arc<SimMiner>, Arc<dyn MinerDriver>) {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 98, n, 1));
    let http = matches!(
        fw,
        Firmware::Vnish | Firmware::AntminerStock | Firmware::Braiins
    )
    .then_some(SocketAddr::new(ip, 0));
    let spec = SimMinerSpec::new(
        format!("m-{}-{n}", fw.name()),
        fw,
        SocketAddr::new(ip, 0),
        http,
    );
    let sim = MinerSim::start(vec![spec], SimOptions { time_scale: SCALE })
        .await
        .unwrap();
    let m = sim.miners()[0].clone();
    let opts = DriverOptions {
        reply_timeout: Duration::from_millis(800),
        ..DriverOptions::default()
    };
    let driver = DriverFactory::new(opts)
        .unwrap()
        .build(&m.to_config())
        .unwrap();
    (sim, m, driver)
}

/// Poll until `pred` holds or `within` passes; the last reading either way.
async fn poll_until(
    d: &Arc<dyn MinerDriver>,
    within: Duration,
    pred: impl Fn(&MinerTelemetry) -> bool,
) -> (bool, MinerTelemetry) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let t = d.poll().await.unwrap();
        if pred(&t) {
            return (true, t);
        }
        if tokio::time::Instant::now() >= deadline {
            return (false, t);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn near(a: Option<f64>, b: f64, tol: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() <= tol)
}

fn asleep(t: &MinerTelemetry) -> bool {
    matches!(t.mode, MinerMode::Sleeping | MinerMode::Paused)
        && t.power_w.is_some_and(|p| p < 100.0)
}

/// Enough for the slowest firmware (stock Antminer wake: 30 s / 100).
const SETTLE: Duration = Duration::from_secs(2);

async fn shed_and_restore(fw: Firmware, n: u8) {
    let (sim, m, d) = start(fw, n).await;
    let t0 = d.poll().await.unwrap();
    assert_eq!(t0.miner_id, m.spec.id);
    assert_eq!(t0.mode, MinerMode::Mining, "{t0:?}");
    assert!(near(t0.power_w, m.spec.nominal_w, 1.0), "{t0:?}");
    assert!(t0.hashrate_ths.is_some_and(|h| h > 50.0), "{t0:?}");
    let caps = d.capabilities();
    assert_eq!(caps.levers, fw.levers());

    if caps.levers.power_target {
        let (lo, hi) = caps.power_target_range_w.unwrap();
        assert!(lo < hi);
        let want = 2400.0;
        let c = d.set_power_target(want).await.unwrap();
        let Commanded::PowerTarget { watts } = c else {
            panic!("{c:?}")
        };
        assert!(watts <= want && watts >= lo, "{watts}");
        let (ok, t) = poll_until(&d, SETTLE, |t| near(t.power_w, watts, 5.0)).await;
        assert!(ok, "power target not reached: {t:?}");
        assert_eq!(t.mode, MinerMode::Mining);
        if fw != Firmware::Braiins || t.power_target_w.is_some() {
            assert!(near(t.power_target_w, watts, 1.0), "{t:?}");
        }
        assert!(matches!(
            d.set_power_target(hi + 1.0).await,
            Err(MinerError::OutOfRange { .. })
        ));
    } else {
        assert!(matches!(
            d.set_power_target(2000.0).await,
            Err(MinerError::Unsupported { .. })
        ));
    }
    let before_sleep = d.poll().await.unwrap().power_w.unwrap();

    assert_eq!(d.sleep().await.unwrap(), Commanded::Sleep);
    let (ok, t) = poll_until(&d, SETTLE, asleep).await;
    assert!(ok, "sleep not confirmed by polls: {t:?}");
    assert!(near(Some(m.power_w()), m.spec.idle_w, 1.0));

    assert_eq!(d.wake().await.unwrap(), Commanded::Wake);
    let (ok, t) = poll_until(&d, SETTLE, |t| {
        t.mode == MinerMode::Mining && near(t.power_w, before_sleep, 5.0)
    })
    .await;
    assert!(ok, "restore not confirmed by polls: {t:?}");
    assert!(m.commands().len() >= 2, "{:?}", m.commands());
    sim.shutdown().await;
}

async fn ignored_sleep_is_visible(fw: Firmware, n: u8) {
    let (sim, m, d) = start(fw, n).await;
    m.set_fault(Fault::IgnoreCommands);
    // The firmware says yes...
    assert_eq!(d.sleep().await.unwrap(), Commanded::Sleep);
    assert_eq!(m.commands().len(), 1, "{:?}", m.commands());
    // ...but later polls never show it asleep.
    let (ok, t) = poll_until(&d, Duration::from_millis(600), asleep).await;
    assert!(!ok, "an ignored sleep must not look confirmed: {t:?}");
    assert_eq!(t.mode, MinerMode::Mining);
    assert!(near(t.power_w, m.spec.nominal_w, 1.0), "{t:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn braiins_shed_restore() {
    shed_and_restore(Firmware::Braiins, 1).await;
}
#[tokio::test]
async fn braiins_ignored() {
    ignored_sleep_is_visible(Firmware::Braiins, 2).await;
}
#[tokio::test]
async fn luxos_shed_restore() {
    shed_and_restore(Firmware::Luxos, 3).await;
}
#[tokio::test]
async fn luxos_ignored() {
    ignored_sleep_is_visible(Firmware::Luxos, 4).await;
}
#[tokio::test]
async fn whatsminer_shed_restore() {
    shed_and_restore(Firmware::Whatsminer, 5).await;
}
#[tokio::test]
async fn whatsminer_ignored() {
    ignored_sleep_is_visible(Firmware::Whatsminer, 6).await;
}
#[tokio::test]
async fn vnish_shed_restore() {
    shed_and_restore(Firmware::Vnish, 7).await;
}
#[tokio::test]
async fn vnish_ignored() {
    ignored_sleep_is_visible(Firmware::Vnish, 8).await;
}
#[tokio::test]
async fn antminer_stock_shed_restore() {
    shed_and_restore(Firmware::AntminerStock, 9).await;
}
#[tokio::test]
async fn antminer_stock_ignored() {
    ignored_sleep_is_visible(Firmware::AntminerStock, 10).await;
}
#[tokio::test]
async fn avalon_shed_restore() {
    shed_and_restore(Firmware::Avalon, 11).await;
}
#[tokio::test]
async fn avalon_ignored() {
    ignored_sleep_is_visible(Firmware::Avalon, 12).await;
}

#[tokio::test]
async fn no_answer_is_a_timeout_naming_the_miner() {
    let (sim, m, d) = start(Firmware::AntminerStock, 20).await;
    m.set_fault(Fault::NoAnswer);
    let e = d.poll().await.unwrap_err();
    let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(text.contains(&m.spec.id), "{text}");
    assert!(text.contains(&m.spec.api_addr.to_string()), "{text}");
    assert!(text.contains("did not answer"), "{text}");
    sim.shutdown().await;
}

#[tokio::test]
async fn garbage_is_an_error_and_recovery_works() {
    let (sim, m, d) = start(Firmware::Luxos, 21).await;
    m.set_fault(Fault::Garbage);
    let e = d.poll().await.unwrap_err();
    assert!(matches!(e, MinerError::Api { .. }), "{e:?}");
    assert!(e.to_string().contains(&m.spec.id));
    m.set_fault(Fault::None);
    assert_eq!(d.poll().await.unwrap().mode, MinerMode::Mining);
    sim.shutdown().await;
}

#[tokio::test]
async fn slow_answer_within_timeout_is_fine_beyond_is_an_error() {
    let (sim, m, d) = start(Firmware::Avalon, 22).await;
    m.set_fault(Fault::SlowAnswer(Duration::from_millis(200)));
    assert!(d.poll().await.is_ok());
    m.set_fault(Fault::SlowAnswer(Duration::from_millis(1500)));
    assert!(d.poll().await.is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn refused_port_is_an_error_naming_the_miner() {
    let (sim, m, d) = start(Firmware::Braiins, 23).await;
    sim.shutdown().await;
    let e = d.poll().await.unwrap_err();
    assert!(e.to_string().contains(&m.spec.id), "{e}");
}

#[tokio::test]
async fn luxos_session_is_reused_after_agent_restart() {
    let (sim, m, d) = start(Firmware::Luxos, 24).await;
    d.sleep().await.unwrap();
    // A second driver (a restarted agent) finds the session taken and reuses it.
    let d2 = DriverFactory::new(DriverOptions::default())
        .unwrap()
        .build(&m.to_config())
        .unwrap();
    d2.wake().await.unwrap();
    assert_eq!(m.commands(), vec!["curtail sleep", "curtail wakeup"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn whatsminer_wrong_password_fails_and_changes_nothing() {
    let (sim, m, _) = start(Firmware::Whatsminer, 25).await;
    let dir = std::env::temp_dir().join(format!("rw-wm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("pw");
    std::fs::write(&f, "not-the-password\n").unwrap();
    let mut cfg = m.to_config();
    cfg.credentials = Some(Credentials {
        username: Some("admin".into()),
        password_env: None,
        password_file: Some(f.display().to_string()),
    });
    let d = DriverFactory::new(DriverOptions::default())
        .unwrap()
        .build(&cfg)
        .unwrap();
    let e = d.sleep().await.unwrap_err();
    assert!(e.to_string().contains(&m.spec.id), "{e}");
    assert!(!format!("{e:?}").contains("not-the-password"));
    assert!(m.commands().is_empty());
    assert_eq!(m.mode(), MinerMode::Mining);
    std::fs::remove_dir_all(&dir).unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn antminer_digest_auth_rejects_wrong_password() {
    let (sim, m, _) = start(Firmware::AntminerStock, 26).await;
    let dir = std::env::temp_dir().join(format!("rw-am-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("pw");
    std::fs::write(&f, "wrong\n").unwrap();
    let mut cfg = m.to_config();
    cfg.credentials = Some(Credentials {
        username: Some("root".into()),
        password_env: None,
        password_file: Some(f.display().to_string()),
    });
    let d = DriverFactory::new(DriverOptions::default())
        .unwrap()
        .build(&cfg)
        .unwrap();
    let e = d.sleep().await.unwrap_err();
    assert!(matches!(e, MinerError::Http { .. }), "{e:?}");
    assert!(m.commands().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
    sim.shutdown().await;
}

/// The example site's whole fleet: specs from the site file, served (on free ports, to
/// stay clear of other tests), and every miner polled once through its driver.
#[tokio::test]
async fn example_site_fleet_polls() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site.toml");
    let site = rackwarden_config::load(&path).unwrap();
    let mut specs = rackwarden_sim::miner::specs_from_site(&site, "pw").unwrap();
    assert_eq!(specs.len(), site.miners.len());
    let ips: std::collections::BTreeSet<_> = specs.iter().map(|s| s.api_addr.ip()).collect();
    assert_eq!(ips.len(), specs.len(), "one loopback address per miner");
    for s in &mut specs {
        s.api_addr.set_port(0);
        if let Some(h) = &mut s.http_addr {
            h.set_port(0);
        }
        // Factory logins, so drivers without configured credentials get in.
        let l = rackwarden_protocols::miner::Login::factory_default(s.firmware);
        s.password = l.password.expose().to_owned();
    }
    let sim = MinerSim::start(specs, SimOptions::default()).await.unwrap();
    let f = DriverFactory::new(DriverOptions::default()).unwrap();
    let drivers: Vec<_> = sim
        .miners()
        .iter()
        .map(|m| f.build(&m.to_config()).unwrap())
        .collect();
    let polls = futures::future::join_all(drivers.iter().map(|d| d.poll())).await;
    for (p, m) in polls.iter().zip(sim.miners()) {
        let t = p.as_ref().unwrap();
        assert_eq!(t.firmware, m.spec.firmware);
        assert!(near(t.power_w, m.spec.nominal_w, 1.0), "{t:?}");
    }
    let fws: std::collections::BTreeSet<_> =
        site.miners.iter().map(|m| m.firmware.name()).collect();
    assert_eq!(fws.len(), 6, "{fws:?}");
    sim.shutdown().await;
}

/// `summary+stats` on stock Antminer is refused (E 14): the client falls back to one
/// command per connection and remembers it; LuxOS takes the joined form.
#[tokio::test]
async fn multi_command_falls_back_when_refused() {
    use rackwarden_protocols::miner::ApiClient;
    for (fw, n) in [(Firmware::AntminerStock, 30), (Firmware::Luxos, 31)] {
        let (sim, m, _) = start(fw, n).await;
        let c = ApiClient::new(
            m.spec.api_addr.to_string(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        for _ in 0..2 {
            let parts = c.multi(&["summary", "stats"]).await.unwrap();
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[0].status.code, Some(11));
            assert_eq!(parts[1].status.code, Some(70));
            assert_eq!(parts[1].all("STATS").count(), 2, "{fw:?}");
        }
        sim.shutdown().await;
    }
}

/// A web interface that hangs times out with the miner named, and the simulator still
/// shuts down promptly (its scripted hang ends on cancellation).
#[tokio::test]
async fn hung_http_times_out_and_shutdown_is_prompt() {
    let (sim, m, _) = start(Firmware::Vnish, 32).await;
    m.set_fault(Fault::NoAnswer);
    let opts = DriverOptions {
        http_timeout: Duration::from_millis(300),
        ..DriverOptions::default()
    };
    let d = DriverFactory::new(opts)
        .unwrap()
        .build(&m.to_config())
        .unwrap();
    let e = d.poll().await.unwrap_err();
    assert!(matches!(e, MinerError::Http { .. }), "{e:?}");
    assert!(e.to_string().contains(&m.spec.id), "{e}");
    // Leave a request hanging in the simulator, then shut down.
    let hanging = tokio::spawn(async move { d.sleep().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::time::timeout(Duration::from_secs(3), sim.shutdown())
        .await
        .expect("shutdown must not wait for the scripted hang");
    assert!(hanging.await.unwrap().is_err());
}

/// A miner that closes the connection half-way through its reply: an error naming the
/// miner for the cgminer API and for a web interface, never a reading made of half a
/// reply; and the next poll after the fault works.
#[tokio::test]
async fn reply_cut_off_mid_way_is_an_error_naming_the_miner() {
    for (fw, n) in [(Firmware::Luxos, 40), (Firmware::Vnish, 41)] {
        let (sim, m, d) = start(fw, n).await;
        m.set_fault(Fault::CloseEarly);
        for _ in 0..3 {
            let e = d.poll().await.unwrap_err();
            assert!(e.to_string().contains(&m.spec.id), "{fw:?}: {e}");
        }
        // A command's reply cut short is no confirmation either.
        assert!(d.sleep().await.is_err(), "{fw:?}: sleep with a cut reply");
        m.set_fault(Fault::None);
        assert!(d.poll().await.is_ok(), "{fw:?}: no recovery");
        sim.shutdown().await;
    }
}

/// A flapping miner answers, then is silent, in turn, with the period it was given.
#[tokio::test]
async fn flapping_miner_answers_and_goes_silent_in_turn() {
    let (sim, m, d) = start(Firmware::Braiins, 42).await;
    let period = Duration::from_millis(900);
    m.set_fault(Fault::Flap(period));
    assert_eq!(m.fault_now(), Fault::None, "a flap starts answering");
    assert!(d.poll().await.is_ok());
    tokio::time::sleep(period).await;
    assert_eq!(m.fault_now(), Fault::NoAnswer);
    let e = d.poll().await.unwrap_err();
    assert!(e.to_string().contains(&m.spec.id), "{e}");
    // The failed poll took one reply timeout (800 ms): the next phase answers again.
    while m.fault_now() == Fault::NoAnswer {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(d.poll().await.is_ok(), "answering phase after the silence");
    m.set_fault(Fault::None);
    assert_eq!(m.fault_now(), Fault::None);
    sim.shutdown().await;
}
