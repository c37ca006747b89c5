#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

//! The Modbus client against the project's simulator over loopback: whole-device reads,
//! an RTU-over-TCP gateway with several unit ids, every injectable fault (clear error,
//! reconnect, next reading correct), backoff, the write guard, and the probe.

use std::net::SocketAddr;
use std::time::Duration;

use rackwarden_config::profile::{builtin, Role};
use rackwarden_config::{ModbusDevice, ModbusLink};
use rackwarden_protocols::modbus::probe::{format_table, probe_site};
use rackwarden_protocols::modbus::{ModbusError, ModbusPool, PoolOptions};
use rackwarden_sim::modbus::{Fault, Framing, SimWrite, Simulator};

const TIMEOUT_MS: u64 = 300;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn device(id: &str, link: ModbusLink, profile: &str) -> ModbusDevice {
    ModbusDevice {
        id: id.into(),
        link,
        profile: builtin(profile).unwrap(),
        timeout_ms: TIMEOUT_MS,
        pause_after_connect_ms: 0,
        max_read_registers: 125,
        poll_interval_ms: None,
        control: false,
        write_points: vec![],
    }
}

fn tcp(sim: &Simulator, unit_id: u8) -> ModbusLink {
    ModbusLink::Tcp {
        addr: sim.local_addr().to_string(),
        unit_id,
    }
}

fn options() -> PoolOptions {
    PoolOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        busy_retries: 3,
        busy_delay: Duration::from_millis(10),
        queue_depth: 16,
    }
}

/// Every test stops by itself.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test ran past 30 s")
}

fn set_pdu(sim: &Simulator, unit: u8, inlet_kw: f64) {
    sim.set(unit, "inlet_power_kw", 1, inlet_kw).unwrap();
    sim.set(unit, "energy_kwh", 1, 123_456.7).unwrap();
    for i in 1..=3 {
        sim.set(unit, "phase_current", i, 10.0 * f64::from(i) + 0.25)
            .unwrap();
        sim.set(unit, "phase_voltage", i, 230.5).unwrap();
    }
    for i in 1..=48 {
        sim.set(unit, "outlet_power", i, 0.001 * f64::from(i) * 10.0)
            .unwrap();
        sim.set(unit, "outlet_state", i, f64::from(u8::from(i % 2 == 1)))
            .unwrap();
    }
}

fn assert_pdu(r: &rackwarden_protocols::modbus::DeviceReading, inlet_kw: f64) {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    assert!(
        close(r.get("inlet_power_kw", 1).unwrap(), inlet_kw),
        "{r:?}"
    );
    assert!(close(r.get("inlet_energy", 1).unwrap(), 123_456.7));
    assert!(close(r.get("phase_current", 2).unwrap(), 20.25));
    assert!(close(r.get("phase_voltage_v", 3).unwrap(), 230.5));
    assert!(close(r.get("outlet_power", 48).unwrap(), 0.48));
    let states = r.role(Role::OutletState);
    assert_eq!(states.len(), 48);
    assert_eq!(states[0], (1, Some(1.0)));
    assert_eq!(states[1], (2, Some(0.0)));
}

#[tokio::test]
async fn reads_a_whole_pdu_over_tcp() {
    bounded(async {
        let sim = Simulator::tcp(any_port(), builtin("generic-pdu").unwrap())
            .await
            .unwrap();
        set_pdu(&sim, 1, 12.345);
        let pool = ModbusPool::from_devices(
            vec![device("pdu-1", tcp(&sim, 1), "generic-pdu")],
            options(),
        );
        let r = pool.read_device(0).await.unwrap();
        assert_eq!(r.device_id, "pdu-1");
        assert_pdu(&r, 12.345);
        // Three coalesced requests per reading (holding 0..10, holding 100..148, coils).
        assert_eq!(sim.requests(), 3);
        sim.set(1, "inlet_power_kw", 1, 7.5).unwrap();
        assert_pdu(&pool.read_device(0).await.unwrap(), 7.5);
        assert_eq!(sim.connections_total(), 1, "one long-lived connection");
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn rtu_over_tcp_gateway_serves_several_units_on_one_connection() {
    bounded(async {
        let sim = Simulator::start(
            any_port(),
            Framing::RtuOverTcp,
            vec![
                (1, builtin("generic-pdu").unwrap()),
                (2, builtin("generic-cooling").unwrap()),
                (3, builtin("generic-meter").unwrap()),
            ],
        )
        .await
        .unwrap();
        set_pdu(&sim, 1, 3.0);
        sim.set(2, "supply_temp_c", 1, -4.5).unwrap();
        sim.set(2, "unit_running", 1, 1.0).unwrap();
        sim.set(2, "capacity_kw", 1, 250.0).unwrap();
        sim.set(3, "inlet_power_kw", 1, 512.25).unwrap();
        sim.set(3, "energy_kwh", 1, 9_876_543.5).unwrap();
        let addr = sim.local_addr().to_string();
        let link = |unit_id| ModbusLink::RtuOverTcp {
            addr: addr.clone(),
            unit_id,
        };
        let pool = std::sync::Arc::new(ModbusPool::from_devices(
            vec![
                device("pdu-1", link(1), "generic-pdu"),
                device("crah-1", link(2), "generic-cooling"),
                device("meter-1", link(3), "generic-meter"),
                device("ghost", link(9), "generic-meter"),
            ],
            options(),
        ));
        assert_eq!(pool.connection_count(), 1);
        // Many concurrent reads: the actor serializes them on the one bus.
        let mut set = tokio::task::JoinSet::new();
        for k in 0..30usize {
            let pool = pool.clone();
            set.spawn(async move { (k % 3, pool.read_device(k % 3).await) });
        }
        while let Some(r) = set.join_next().await {
            let (dev, r) = r.unwrap();
            let r = r.unwrap();
            match dev {
                0 => assert_pdu(&r, 3.0),
                1 => {
                    assert_eq!(r.get("supply_temp_c", 1), Some(-4.5));
                    assert_eq!(r.get("unit_running", 1), Some(1.0));
                    assert_eq!(r.get("capacity_kw", 1), Some(250.0));
                }
                _ => {
                    assert_eq!(r.get("inlet_power_kw", 1), Some(512.25));
                    assert_eq!(r.get("energy_kwh", 1), Some(9_876_543.5));
                }
            }
        }
        assert_eq!(sim.connections_total(), 1);
        // An absent unit id on a serial bus: nobody answers.
        let e = pool.read_device(3).await.unwrap_err();
        assert!(matches!(e, ModbusError::Timeout { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("`ghost`") && msg.contains("unit 9") && msg.contains("power"),
            "{msg}"
        );
        // The bus recovers for the others (new connection after the timeout).
        assert_eq!(
            pool.read_device(2).await.unwrap().get("inlet_power_kw", 1),
            Some(512.25)
        );
        sim.shutdown().await;
    })
    .await;
}

/// Injects `fault` once and checks: the read fails with an error that names the device,
/// the unit and a point; the next read is correct (with the new value, never a stale
/// late answer); returns the error and the connections opened.
async fn fault_once(fault: Fault) -> (ModbusError, u64) {
    let sim = Simulator::tcp(any_port(), builtin("generic-pdu").unwrap())
        .await
        .unwrap();
    set_pdu(&sim, 1, 1.0);
    let pool = ModbusPool::from_devices(
        vec![device("pdu-7", tcp(&sim, 1), "generic-pdu")],
        options(),
    );
    assert_pdu(&pool.read_device(0).await.unwrap(), 1.0);
    sim.inject(1, fault, 1);
    let err = pool.read_device(0).await.unwrap_err();
    let msg = err.to_string();
    eprintln!("{fault:?}: {msg}");
    assert!(
        msg.contains("`pdu-7`") && msg.contains("unit 1") && msg.contains("inlet_power"),
        "{fault:?}: {msg}"
    );
    sim.set(1, "inlet_power_kw", 1, 2.0).unwrap();
    let r = pool.read_device(0).await;
    assert_pdu(
        &r.unwrap_or_else(|e| panic!("{fault:?}: next read failed: {e}")),
        2.0,
    );
    let conns = sim.connections_total();
    sim.shutdown().await;
    (err, conns)
}

#[tokio::test]
async fn fault_no_answer_times_out_and_reconnects() {
    bounded(async {
        let (e, conns) = fault_once(Fault::NoAnswer).await;
        assert!(
            matches!(
                e,
                ModbusError::Timeout {
                    timeout_ms: TIMEOUT_MS,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(conns, 2, "dropped and reconnected");
    })
    .await;
}

#[tokio::test]
async fn fault_late_answer_is_never_read_as_the_next_answer() {
    bounded(async {
        let (e, conns) = fault_once(Fault::Late(Duration::from_millis(3 * TIMEOUT_MS))).await;
        assert!(matches!(e, ModbusError::Timeout { .. }), "{e}");
        assert_eq!(conns, 2);
    })
    .await;
}

#[tokio::test]
async fn fault_exception_is_reported_with_its_code_and_keeps_the_connection() {
    bounded(async {
        let (e, conns) = fault_once(Fault::Exception(2)).await;
        match &e {
            ModbusError::Exception { code, attempts, .. } => {
                assert_eq!(*code, 2);
                assert_eq!(*attempts, 1);
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("exception 2"));
        assert_eq!(conns, 1, "an exception is an in-sync answer");
        let (e, _) = fault_once(Fault::Exception(4)).await;
        assert!(matches!(e, ModbusError::Exception { code: 4, .. }), "{e}");
    })
    .await;
}

#[tokio::test]
async fn fault_busy_is_retried_then_reported() {
    bounded(async {
        let sim = Simulator::tcp(any_port(), builtin("generic-pdu").unwrap())
            .await
            .unwrap();
        set_pdu(&sim, 1, 4.0);
        let pool = ModbusPool::from_devices(
            vec![device("pdu-b", tcp(&sim, 1), "generic-pdu")],
            options(),
        );
        // Two busy answers, then the real one: the read succeeds.
        sim.inject(1, Fault::Exception(6), 2);
        assert_pdu(&pool.read_device(0).await.unwrap(), 4.0);
        assert_eq!(sim.requests(), 5, "3 blocks + 2 retries");
        // Acknowledge (5) is retried the same way.
        sim.inject(1, Fault::Exception(5), 1);
        assert_pdu(&pool.read_device(0).await.unwrap(), 4.0);
        // Busy for good: reported after 1 + busy_retries attempts.
        sim.inject(1, Fault::Exception(6), u32::MAX);
        let e = pool.read_device(0).await.unwrap_err();
        assert!(
            matches!(
                e,
                ModbusError::Exception {
                    code: 6,
                    attempts: 4,
                    ..
                }
            ),
            "{e}"
        );
        sim.clear_fault(1);
        assert_pdu(&pool.read_device(0).await.unwrap(), 4.0);
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn fault_connection_reset() {
    bounded(async {
        let (e, conns) = fault_once(Fault::Reset).await;
        assert!(matches!(e, ModbusError::Transport { .. }), "{e}");
        assert_eq!(conns, 2);
    })
    .await;
}

#[tokio::test]
async fn fault_garbage_frame() {
    bounded(async {
        let (e, conns) = fault_once(Fault::Garbage).await;
        assert!(
            matches!(
                e,
                ModbusError::Transport { .. } | ModbusError::Timeout { .. }
            ),
            "{e}"
        );
        assert_eq!(conns, 2);
    })
    .await;
}

#[tokio::test]
async fn fault_garbage_frame_over_rtu_gateway() {
    bounded(async {
        let sim = Simulator::start(
            any_port(),
            Framing::RtuOverTcp,
            vec![(5, builtin("generic-cooling").unwrap())],
        )
        .await
        .unwrap();
        sim.set(5, "return_temp_c", 1, 31.5).unwrap();
        let link = ModbusLink::RtuOverTcp {
            addr: sim.local_addr().to_string(),
            unit_id: 5,
        };
        let pool =
            ModbusPool::from_devices(vec![device("crah-5", link, "generic-cooling")], options());
        sim.inject(5, Fault::Garbage, 1);
        let e = pool.read_device(0).await.unwrap_err();
        assert!(
            e.to_string().contains("`crah-5`") && e.to_string().contains("unit 5"),
            "{e}"
        );
        assert_eq!(
            pool.read_device(0).await.unwrap().get("return_temp_c", 1),
            Some(31.5)
        );
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn fault_device_that_accepts_one_connection_only() {
    bounded(async {
        let sim = Simulator::tcp(any_port(), builtin("generic-pdu").unwrap())
            .await
            .unwrap();
        set_pdu(&sim, 1, 6.0);
        sim.set_one_connection_only(true);
        // Someone else holds the only slot: the device closes our connection at once.
        let intruder = tokio::net::TcpStream::connect(sim.local_addr())
            .await
            .unwrap();
        while sim.active_connections() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pool = ModbusPool::from_devices(
            vec![device("pdu-1c", tcp(&sim, 1), "generic-pdu")],
            options(),
        );
        let e = pool.read_device(0).await.unwrap_err();
        assert!(matches!(e, ModbusError::Transport { .. }), "{e}");
        assert!(e.to_string().contains("`pdu-1c`") && e.to_string().contains("unit 1"));
        drop(intruder);
        while sim.active_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_pdu(&pool.read_device(0).await.unwrap(), 6.0);
        // A timeout must close our own connection before the next one opens, or the
        // device would lock us out.
        sim.inject(1, Fault::NoAnswer, 1);
        assert!(pool.read_device(0).await.is_err());
        let mut ok = None;
        for _ in 0..20 {
            match pool.read_device(0).await {
                Ok(r) => {
                    ok = Some(r);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert_pdu(
            &ok.expect("never reconnected to a one-connection device"),
            6.0,
        );
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn unreachable_device_backs_off() {
    bounded(async {
        // A port that was just free: bind, learn it, close.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let link = ModbusLink::Tcp { addr, unit_id: 3 };
        let pool =
            ModbusPool::from_devices(vec![device("pdu-off", link, "generic-pdu")], options());
        let e1 = pool.read_device(0).await.unwrap_err();
        assert!(matches!(e1, ModbusError::Connect { .. }), "{e1}");
        assert!(e1.to_string().contains("`pdu-off`") && e1.to_string().contains("unit 3"));
        // The first failure retries at once; the second starts the backoff.
        assert!(matches!(
            pool.read_device(0).await.unwrap_err(),
            ModbusError::Connect { .. }
        ));
        let e3 = pool.read_device(0).await.unwrap_err();
        assert!(
            matches!(e3, ModbusError::Backoff { failures: 2, .. }),
            "{e3}"
        );
        assert!(
            e3.is_device_failure() && e3.to_string().contains("backing off"),
            "{e3}"
        );
    })
    .await;
}

#[tokio::test]
async fn pause_after_connect_is_applied() {
    bounded(async {
        let sim = Simulator::tcp(any_port(), builtin("generic-meter").unwrap())
            .await
            .unwrap();
        let mut d = device("meter-p", tcp(&sim, 1), "generic-meter");
        d.pause_after_connect_ms = 200;
        let pool = ModbusPool::from_devices(vec![d], options());
        let t0 = tokio::time::Instant::now();
        pool.read_device(0).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(200));
        let t1 = tokio::time::Instant::now();
        pool.read_device(0).await.unwrap();
        assert!(
            t1.elapsed() < Duration::from_millis(200),
            "pause only after connecting"
        );
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn nan_from_the_device_is_a_missing_value_not_zero() {
    bounded(async {
        let sim = Simulator::tcp(any_port(), builtin("generic-meter").unwrap())
            .await
            .unwrap();
        sim.set(1, "phase_current_a", 1, 12.0).unwrap();
        sim.set_words(1, "inlet_power_kw", 1, &[0x7FC0, 0x0000])
            .unwrap();
        let pool = ModbusPool::from_devices(
            vec![device("meter-n", tcp(&sim, 1), "generic-meter")],
            options(),
        );
        let r = pool.read_device(0).await.unwrap();
        assert_eq!(r.get("inlet_power_kw", 1), None);
        assert!(r
            .values
            .iter()
            .any(|v| &*v.point == "power" && v.value.is_err()));
        assert_eq!(r.get("phase_current_a", 1), Some(12.0));
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn writes_are_refused_before_the_wire_unless_allowed() {
    bounded(async {
        let sim = Simulator::tcp(any_port(), builtin("generic-pdu").unwrap())
            .await
            .unwrap();
        let mut read_only = device("pdu-ro", tcp(&sim, 1), "generic-pdu");
        read_only.control = false;
        let mut unlisted = device("pdu-ul", tcp(&sim, 1), "generic-pdu");
        unlisted.control = true;
        let mut ctl = device("pdu-ctl", tcp(&sim, 1), "generic-pdu");
        ctl.control = true;
        ctl.write_points = vec!["outlet_switch".into()];
        let pool = ModbusPool::from_devices(vec![read_only, unlisted, ctl], options());
        for (dev, point) in [
            (0, "outlet_switch"),
            (1, "outlet_switch"),
            (2, "inlet_power"),
        ] {
            let e = pool.write_point(dev, point, 1, 1.0).await.unwrap_err();
            assert!(matches!(e, ModbusError::WriteRefused { .. }), "{e}");
            assert!(e.to_string().contains("refused before the wire"), "{e}");
        }
        let e = pool
            .write_point(2, "outlet_switch", 49, 0.0)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ModbusError::NoSuchInstance { index: 49, .. }),
            "{e}"
        );
        let e = pool
            .write_point(2, "outlet_switch", 1, 0.5)
            .await
            .unwrap_err();
        assert!(matches!(e, ModbusError::Encode { .. }), "{e}");
        let e = pool.write_point(2, "nope", 1, 0.0).await.unwrap_err();
        assert!(matches!(e, ModbusError::NoSuchPoint { .. }), "{e}");
        assert_eq!(sim.requests(), 0, "nothing refused reached the wire");
        assert!(sim.writes().is_empty());
        // The allowed write, by name and by role.
        pool.write_point(2, "outlet_switch", 3, 1.0).await.unwrap();
        pool.write_point(2, "outlet_switch", 4, 0.0).await.unwrap();
        assert_eq!(
            sim.writes(),
            vec![
                SimWrite {
                    unit: 1,
                    point: "outlet_switch".into(),
                    index: 3,
                    value: 1.0
                },
                SimWrite {
                    unit: 1,
                    point: "outlet_switch".into(),
                    index: 4,
                    value: 0.0
                },
            ]
        );
        let r = pool.read_device(2).await.unwrap();
        assert_eq!(r.get("outlet_state", 3), Some(1.0));
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn holding_register_writes_encode_scale_and_type() {
    bounded(async {
        // A profile with a writable scaled i16 set point, written with FC06.
        let text = r#"
name = "setpoint-test"
kind = "cooling"
[[points]]
name = "supply_setpoint"
register = "holding"
address = 10
type = "i16"
scale = 0.1
unit = "degC"
writable = true
[[points]]
name = "limit"
register = "holding"
address = 11
type = "f32"
byte_order = "CDAB"
writable = true
"#;
        let profile = rackwarden_config::Profile::from_toml(text).unwrap();
        assert!(profile.check().is_empty());
        let sim = Simulator::tcp(any_port(), profile.clone()).await.unwrap();
        let mut d = device("cdu-1", tcp(&sim, 1), "generic-cooling");
        d.profile = profile;
        d.control = true;
        d.write_points = vec!["supply_setpoint".into(), "limit".into()];
        let pool = ModbusPool::from_devices(vec![d], options());
        pool.write_point(0, "supply_setpoint", 1, -2.5)
            .await
            .unwrap();
        pool.write_point(0, "limit", 1, 1234.5).await.unwrap();
        assert_eq!(sim.get(1, "supply_setpoint", 1).unwrap(), -2.5);
        assert_eq!(sim.get(1, "limit", 1).unwrap(), 1234.5);
        let e = pool
            .write_point(0, "supply_setpoint", 1, 5000.0)
            .await
            .unwrap_err();
        assert!(matches!(e, ModbusError::Encode { .. }), "{e}");
        let r = pool.read_device(0).await.unwrap();
        assert_eq!(r.get("limit", 1), Some(1234.5));
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn probe_reads_every_device_of_a_site_and_never_writes() {
    bounded(async {
        let pdu = Simulator::tcp(any_port(), builtin("generic-pdu").unwrap())
            .await
            .unwrap();
        set_pdu(&pdu, 1, 9.5);
        let gw = Simulator::start(
            any_port(),
            Framing::RtuOverTcp,
            vec![(7, builtin("generic-cooling").unwrap())],
        )
        .await
        .unwrap();
        gw.set(7, "supply_temp_c", 1, 18.5).unwrap();
        let text = include_str!("data/probe_site.toml")
            .replace("PORT_PDU", &pdu.local_addr().port().to_string())
            .replace("PORT_GW", &gw.local_addr().port().to_string());
        let site = rackwarden_config::load_str(
            &text,
            std::path::Path::new("probe_site.toml"),
            std::path::Path::new("."),
        )
        .unwrap();
        let rows = probe_site(&site).await;
        let find = |dev: &str, point: &str| {
            rows.iter()
                .find(|r| r.device == dev && r.point == point)
                .unwrap_or_else(|| panic!("no row {dev} {point}"))
        };
        assert_eq!(find("pdu-1", "inlet_power").value, Ok(9.5));
        assert_eq!(
            find("pdu-1", "outlet_power[48]").unit.as_deref(),
            Some("kW")
        );
        assert_eq!(find("crah-1", "supply_temp").value, Ok(18.5));
        assert_eq!(find("crah-1", "supply_temp").unit_id, 7);
        assert!(rows.iter().all(|r| r.latency.is_some()));
        let table = format_table(&rows);
        assert!(table.lines().next().unwrap().contains("LATENCY"));
        assert!(table.contains("crah-1 (unit 7)") && table.contains("18.5"));
        assert!(pdu.writes().is_empty() && gw.writes().is_empty());
        // A device that does not answer is one error row, not a hang.
        gw.inject(7, Fault::NoAnswer, u32::MAX);
        let rows = probe_site(&site).await;
        let crah = rows.iter().find(|r| r.device == "crah-1").unwrap();
        assert!(crah.value.as_ref().unwrap_err().contains("no answer"));
        pdu.shutdown().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn reads_are_split_at_the_device_maximum() {
    bounded(async {
        let sim = Simulator::tcp(any_port(), builtin("generic-pdu").unwrap())
            .await
            .unwrap();
        set_pdu(&sim, 1, 5.5);
        let mut d = device("pdu-small", tcp(&sim, 1), "generic-pdu");
        d.max_read_registers = 20;
        let pool = ModbusPool::from_devices(vec![d], options());
        assert_pdu(&pool.read_device(0).await.unwrap(), 5.5);
        // holding 0..10, then 100..148 in 20 + 20 + 8, then the coils: 5 requests.
        assert_eq!(sim.requests(), 5);
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn late_answer_on_an_rtu_gateway_never_answers_the_next_unit() {
    bounded(async {
        let sim = Simulator::start(
            any_port(),
            Framing::RtuOverTcp,
            vec![
                (1, builtin("generic-meter").unwrap()),
                (2, builtin("generic-meter").unwrap()),
            ],
        )
        .await
        .unwrap();
        sim.set(1, "inlet_power_kw", 1, 111.0).unwrap();
        sim.set(2, "inlet_power_kw", 1, 222.0).unwrap();
        let addr = sim.local_addr().to_string();
        let link = |unit_id| ModbusLink::RtuOverTcp {
            addr: addr.clone(),
            unit_id,
        };
        let pool = ModbusPool::from_devices(
            vec![
                device("meter-1", link(1), "generic-meter"),
                device("meter-2", link(2), "generic-meter"),
            ],
            options(),
        );
        // Unit 1 answers after the timeout; on the same bus unit 2 is read next. Its
        // answer must be its own (222), never unit 1's late frame (111).
        sim.inject(1, Fault::Late(Duration::from_millis(TIMEOUT_MS + 150)), 1);
        let e = pool.read_device(0).await.unwrap_err();
        assert!(matches!(e, ModbusError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("`meter-1`") && e.to_string().contains("unit 1"));
        let r = pool.read_device(1).await.unwrap();
        assert_eq!(r.get("inlet_power_kw", 1), Some(222.0));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            pool.read_device(1).await.unwrap().get("inlet_power_kw", 1),
            Some(222.0)
        );
        assert_eq!(
            pool.read_device(0).await.unwrap().get("inlet_power_kw", 1),
            Some(111.0)
        );
        sim.shutdown().await;
    })
    .await;
}

/// Reads until one succeeds (the pool backs off between failures), at most `tries`.
async fn read_until_ok(
    pool: &ModbusPool,
    tries: usize,
) -> Option<rackwarden_protocols::modbus::DeviceReading> {
    for _ in 0..tries {
        match pool.read_device(0).await {
            Ok(r) => return Some(r),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}

#[tokio::test]
async fn fault_single_connection_taken_by_another_client_then_released() {
    bounded(async {
        let sim = Simulator::tcp(any_port(), builtin("generic-pdu").unwrap())
            .await
            .unwrap();
        set_pdu(&sim, 1, 4.0);
        let pool = ModbusPool::from_devices(
            vec![device("pdu-taken", tcp(&sim, 1), "generic-pdu")],
            options(),
        );
        assert_pdu(&pool.read_device(0).await.unwrap(), 4.0);
        sim.take().unwrap();
        assert!(sim.is_unavailable());
        // Our open connection is reset at its next request, and every new one is closed:
        // each read fails with the device named, none hangs past its timeout.
        for _ in 0..4 {
            let e = pool.read_device(0).await.unwrap_err();
            assert!(
                e.to_string().contains("`pdu-taken`"),
                "error names the device: {e}"
            );
        }
        // The squatter still holds its connection.
        assert!(sim.active_connections() >= 1);
        sim.release();
        assert!(!sim.is_unavailable());
        sim.set(1, "inlet_power_kw", 1, 5.0).unwrap();
        let r = read_until_ok(&pool, 40).await;
        assert_pdu(&r.expect("never read again after the release"), 5.0);
        sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn fault_gateway_reboot_silences_every_unit_then_serves_again() {
    bounded(async {
        let sim = Simulator::start(
            any_port(),
            Framing::RtuOverTcp,
            vec![
                (1, builtin("generic-cooling").unwrap()),
                (2, builtin("generic-cooling").unwrap()),
            ],
        )
        .await
        .unwrap();
        for u in [1, 2] {
            sim.set(u, "capacity_kw", 1, 250.0).unwrap();
        }
        let addr = sim.local_addr().to_string();
        let link = |unit_id| ModbusLink::RtuOverTcp {
            addr: addr.clone(),
            unit_id,
        };
        let pool = ModbusPool::from_devices(
            vec![
                device("crah-1", link(1), "generic-cooling"),
                device("crah-2", link(2), "generic-cooling"),
            ],
            options(),
        );
        assert!(pool.read_device(0).await.is_ok());
        assert!(pool.read_device(1).await.is_ok());
        sim.reboot(Duration::from_millis(600));
        assert!(sim.is_unavailable());
        // Both units behind the gateway are silent while it reboots.
        for d in [0, 1] {
            let e = pool.read_device(d).await.unwrap_err();
            let id = if d == 0 { "`crah-1`" } else { "`crah-2`" };
            assert!(e.to_string().contains(id), "{e}");
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!sim.is_unavailable());
        let mut back = [false, false];
        for _ in 0..40 {
            for (d, ok) in back.iter_mut().enumerate() {
                if !*ok {
                    *ok = pool
                        .read_device(d)
                        .await
                        .is_ok_and(|r| r.get("capacity_kw", 1) == Some(250.0));
                }
            }
            if back == [true, true] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(back, [true, true], "units not back after the reboot");
        sim.shutdown().await;
    })
    .await;
}
