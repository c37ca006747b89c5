//! Every built-in profile, served by the simulator and read through the client: each
//! point with a role reads back what the simulator holds (vendor byte orders, strides,
//! flags made with `true_when`), and vendor maps carry a source and `verified = false`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::time::Duration;

use rackwarden_config::profile::{builtin, builtin_names, DataType};
use rackwarden_config::{ModbusDevice, ModbusLink};
use rackwarden_protocols::modbus::{ModbusPool, PoolOptions};
use rackwarden_sim::modbus::Simulator;

#[test]
fn vendor_profiles_name_their_source_and_are_not_verified() {
    for name in builtin_names() {
        let p = builtin(name).unwrap();
        assert!(p.check().is_empty(), "{name}: {:?}", p.check());
        let src = p.source.as_deref().unwrap_or_default();
        assert!(!src.is_empty(), "{name} has no source");
        assert!(!p.verified, "{name} claims verified = true");
    }
    for name in [
        "raritan-xerus-pdu",
        "liebert-intellislot-ds",
        "liebert-intellislot-xdc",
        "apc-inrow-rc",
        "stulz-c7000",
        "vertiv-liebert-dcd",
    ] {
        assert!(builtin(name).is_some(), "{name} missing");
    }
}

#[tokio::test]
async fn every_builtin_profile_roundtrips_through_simulator_and_client() {
    tokio::time::timeout(Duration::from_secs(60), async {
        for name in builtin_names() {
            let profile = builtin(name).unwrap();
            let sim = Simulator::tcp("127.0.0.1:0".parse().unwrap(), profile.clone())
                .await
                .unwrap();
            for p in profile.points.iter().filter(|p| p.role.is_some()) {
                for i in 1..=p.count {
                    let v = if p.data_type == DataType::Bool || !p.true_when.is_empty() {
                        f64::from(u8::from(i % 2 == 1))
                    } else {
                        // Negative where the type allows it; within every type's range.
                        let signed = matches!(
                            p.data_type,
                            DataType::I16 | DataType::I32 | DataType::F32 | DataType::F64
                        );
                        let base = if signed { -2.5 } else { 2.5 };
                        base + f64::from(i) / 8.0
                    };
                    sim.set(1, &p.name, i, v)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
            let mut device = ModbusDevice {
                id: format!("dev-{name}"),
                link: ModbusLink::Tcp {
                    addr: sim.local_addr().to_string(),
                    unit_id: 1,
                },
                profile: profile.clone(),
                timeout_ms: 1000,
                pause_after_connect_ms: 0,
                max_read_registers: profile.max_read(),
                poll_interval_ms: None,
                control: false,
                write_points: vec![],
            };
            device.max_read_registers = profile.max_read();
            let pool = ModbusPool::from_devices(vec![device], PoolOptions::default());
            let r = pool
                .read_device(0)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for p in profile.points.iter().filter(|p| p.role.is_some()) {
                for i in 1..=p.count {
                    let want = sim.get(1, &p.name, i).unwrap();
                    let got = r
                        .get(&p.name, i)
                        .unwrap_or_else(|| panic!("{name}: {} missing", p.name));
                    assert!(
                        (got - want).abs() < 1e-9,
                        "{name} {}[{i}]: {got} != {want}",
                        p.name
                    );
                    if p.data_type != DataType::Bool && p.true_when.is_empty() {
                        assert!(want.abs() > 1.0, "{name} {}: value lost in the sim", p.name);
                    }
                }
            }
            sim.shutdown().await;
        }
    })
    .await
    .unwrap();
}
