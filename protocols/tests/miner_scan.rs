//! Identification (`rackwarden scan`) on the real miner payloads in `tests/data/miners/`
//! (see its README for their sources): which firmware each reply names, and what the
//! replies of one miner give together (model, MAC, hashrate, power and where the power
//! figure comes from). Then `identify` against the simulator, one miner per firmware,
//! and against peers that are no miner.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rackwarden_config::Firmware;
use rackwarden_protocols::miner::scan::{
    assemble, btminer_version, fingerprint, identify, scan, Outcome, PowerSource, ScanOptions,
};
use rackwarden_protocols::miner::Reply;
use rackwarden_sim::miner::{MinerSim, SimMinerSpec, SimOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn reply(name: &str) -> Reply {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/miners")
        .join(name);
    let mut raw = std::fs::read(path).unwrap();
    // As on the wire: cgminer forks end with a NUL.
    raw.push(0);
    Reply::parse(&raw).unwrap()
}

fn close(a: Option<f64>, b: f64) {
    let a = a.unwrap_or_else(|| panic!("expected {b}, got none"));
    assert!((a - b).abs() < 1e-6, "{a} != {b}");
}

#[test]
fn fingerprints_of_the_fixtures() {
    let cases: &[(&str, Option<Firmware>)] = &[
        (
            "antminer-s19pro-stock_version.json",
            Some(Firmware::AntminerStock),
        ),
        (
            "antminer-s19pro-stock_stats.json",
            Some(Firmware::AntminerStock),
        ),
        ("luxos_version.json", Some(Firmware::Luxos)),
        ("luxos_stats.json", Some(Firmware::Luxos)),
        ("luxos_summary.json", Some(Firmware::Luxos)),
        (
            "braiins-os-bosminer_tunerstatus.json",
            Some(Firmware::Braiins),
        ),
        ("braiins-os-bosminer_temps.json", Some(Firmware::Braiins)),
        (
            "whatsminer-apiv2_get_version.json",
            Some(Firmware::Whatsminer),
        ),
        ("whatsminer-apiv2_status.json", Some(Firmware::Whatsminer)),
        // A summary alone names only "cgminer": not enough to tell the firmware.
        ("antminer-s19pro-stock_summary.json", None),
        ("whatsminer-apiv2_summary.json", None),
        ("avalon_ascset_help.json", None),
    ];
    for (name, want) in cases {
        assert_eq!(fingerprint(&reply(name)), *want, "{name}");
    }
    assert_eq!(
        btminer_version(&reply("whatsminer-apiv2_get_version.json")).as_deref(),
        Some("20230803.11.REL")
    );
    assert_eq!(btminer_version(&reply("luxos_version.json")), None);
}

#[test]
fn quirky_stats_without_a_firmware_name_stays_unknown() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/miners/quirk_cgminer-stats-missing-comma.raw.txt");
    let r = Reply::parse(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(fingerprint(&r), None);
}

#[test]
fn stock_antminer_from_version_and_stats() {
    let id = assemble(
        Firmware::AntminerStock,
        &[reply("antminer-s19pro-stock_version.json")],
        &[("stats", reply("antminer-s19pro-stock_stats.json"))],
    );
    assert_eq!(id.model.as_deref(), Some("Antminer S19 Pro"));
    assert_eq!(id.firmware_version.as_deref(), Some("49.0.1.3"));
    assert_eq!(id.mac, None, "stock bmminer's API gives no MAC");
    close(id.hashrate_ths, 110.56689);
    // No power in its API: the rated 110,000 GH/s at the default 30 J/TH.
    let (w, src) = id.nominal_w.unwrap();
    close(Some(w), 3300.0);
    assert_eq!(
        src,
        PowerSource::Estimated {
            ths: 110.0,
            j_th: 30.0
        }
    );
}

#[test]
fn luxos_from_version_summary_config_power_profiles() {
    let id = assemble(
        Firmware::Luxos,
        &[reply("luxos_version.json")],
        &[
            ("summary", reply("luxos_summary.json")),
            ("config", reply("luxos_config.json")),
            ("power", reply("luxos_power.json")),
            ("profiles", reply("luxos_profiles.json")),
        ],
    );
    assert_eq!(id.model.as_deref(), Some("Antminer S19k Pro"));
    assert_eq!(
        id.firmware_version.as_deref(),
        Some("2025.4.8.220305-57b389c7")
    );
    assert_eq!(id.mac.as_deref(), Some("62:f7:5e:b7:10:46"));
    close(id.hashrate_ths, 59.75606);
    // The active profile (config: 290MHz) is 1188 W in `profiles`.
    assert_eq!(id.nominal_w, Some((1188.0, PowerSource::Profile)));
    // Without `profiles`, the miner's own reading while hashing.
    let id = assemble(
        Firmware::Luxos,
        &[reply("luxos_version.json")],
        &[
            ("summary", reply("luxos_summary.json")),
            ("power", reply("luxos_power.json")),
        ],
    );
    let (_, src) = id.nominal_w.unwrap();
    assert_eq!(src, PowerSource::Measured);
}

#[test]
fn whatsminer_from_get_version_and_summary() {
    let id = assemble(
        Firmware::Whatsminer,
        &[reply("whatsminer-apiv2_get_version.json")],
        &[("summary", reply("whatsminer-apiv2_summary.json"))],
    );
    assert_eq!(id.mac.as_deref(), Some("d4:01:02:03:04:05"));
    assert_eq!(id.firmware_version.as_deref(), Some("20230803.11.REL"));
    close(id.hashrate_ths, 124.5);
    // Its power limit (3300 W), not its present draw (3200 W).
    assert_eq!(id.nominal_w, Some((3300.0, PowerSource::Limit)));
    // No devdetails fixture: the model stays unknown rather than guessed.
    assert_eq!(id.model, None);
}

#[test]
fn braiins_power_limit_from_tunerstatus() {
    let id = assemble(
        Firmware::Braiins,
        &[reply("braiins-os-bosminer_tunerstatus.json")],
        &[("tunerstatus", reply("braiins-os-bosminer_tunerstatus.json"))],
    );
    assert_eq!(id.nominal_w, Some((1420.0, PowerSource::Limit)));
}

// ------------------------------------------------------------------ over sockets

fn addr(n: u8) -> SocketAddr {
    // A loopback network of this test process, port 0 (the simulator binds a free one).
    let k = 2 + std::process::id() % 250;
    format!("127.{k}.77.{n}:0").parse().unwrap()
}

#[tokio::test]
async fn identify_each_simulated_firmware() {
    let specs: Vec<SimMinerSpec> = Firmware::ALL
        .iter()
        .enumerate()
        .map(|(i, fw)| {
            let n = u8::try_from(i + 1).unwrap();
            SimMinerSpec::new(format!("m-{}", fw.name()), *fw, addr(n), None)
        })
        .collect();
    let sim = MinerSim::start(specs, SimOptions::default()).await.unwrap();
    for m in sim.miners() {
        let out = identify(m.spec.api_addr, Duration::from_secs(2)).await;
        let Outcome::Miner(id) = out else {
            panic!("{}: {out:?}", m.spec.id);
        };
        assert_eq!(id.firmware, m.spec.firmware, "{}", m.spec.id);
        assert!(id.model.is_some(), "{}: {id:?}", m.spec.id);
        assert!(id.notes.is_empty(), "{}: {:?}", m.spec.id, id.notes);
        let h = id.hashrate_ths.unwrap();
        close(
            Some((h * 10.0).round()),
            (m.spec.nominal_w / m.spec.efficiency_j_th * 10.0).round(),
        );
        let (w, _) = id.nominal_w.unwrap();
        assert!(w > 1000.0, "{}: {w}", m.spec.id);
        match m.spec.firmware {
            Firmware::Whatsminer | Firmware::Luxos | Firmware::Avalon => {
                assert_eq!(id.mac.as_deref(), Some(m.mac_text(false).as_str()));
            }
            _ => assert_eq!(id.mac, None),
        }
        if m.spec.firmware == Firmware::Vnish {
            assert_eq!(id.model.as_deref(), Some("Antminer S19 Pro"));
            assert_eq!(id.firmware_version.as_deref(), Some("Vnish 1.2.5"));
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn odd_peers_are_reported_not_fatal() {
    // A peer that answers garbage, one that never answers, one that answers JSON
    // without a status, and an address where nothing listens.
    let garbage = TcpListener::bind(addr(10)).await.unwrap();
    let silent = TcpListener::bind(addr(11)).await.unwrap();
    let plain = TcpListener::bind(addr(12)).await.unwrap();
    let (ga, sa, pa) = (
        garbage.local_addr().unwrap(),
        silent.local_addr().unwrap(),
        plain.local_addr().unwrap(),
    );
    let serve = |l: TcpListener, body: &'static [u8]| {
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    let _answered = c.read(&mut buf).await;
                    if body.is_empty() {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    } else {
                        c.write_all(body).await.ok();
                    }
                });
            }
        })
    };
    let t1 = serve(garbage, b"\x16\x03\x01garbage{{{:}\xff\xfe\0");
    let t2 = serve(silent, b"");
    let t3 = serve(plain, b"{\"hello\":\"world\"}\0");
    // Nothing listens on the refused one: bind, note the port, close.
    let refused = {
        let l = std::net::TcpListener::bind(addr(13)).unwrap();
        l.local_addr().unwrap()
    };
    let t = Duration::from_millis(300);
    for (a, want) in [
        (ga, "no cgminer API reply"),
        (sa, "did not answer `version` within 300 ms"),
        (pa, "no cgminer STATUS"),
    ] {
        match identify(a, t).await {
            Outcome::Unidentified { reason } => assert!(reason.contains(want), "{a}: {reason}"),
            other => panic!("{a}: {other:?}"),
        }
    }
    assert_eq!(identify(refused, t).await, Outcome::Silent);
    // `scan` keeps going past them and returns one probe per address, in order.
    let ips = [ga.ip(), sa.ip(), pa.ip(), refused.ip()];
    let probes = scan(
        &ips,
        ScanOptions {
            port: ga.port(),
            concurrency: 2,
            timeout: t,
        },
    )
    .await;
    assert_eq!(probes.len(), 4);
    assert!(probes.windows(2).all(|w| w[0].addr < w[1].addr));
    assert!(matches!(probes[0].outcome, Outcome::Unidentified { .. }));
    for h in [t1, t2, t3] {
        h.abort();
    }
}
