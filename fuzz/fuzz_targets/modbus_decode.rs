//! Fuzz target: Modbus bytes from the network and the register decoding behind them.
//!
//! 1. Frame decoding: the fuzz input is a device's reply, fed to tokio-modbus's TCP and
//!    RTU client codecs (the ones `ModbusPool` uses) over an in-memory stream; any
//!    outcome but a panic is fine.
//! 2. Register decoding: the input picks a type, byte order, scale and `true_when`, and
//!    the rest are register words; `decode_point` must not panic, and an integer that
//!    decodes must encode back to the same words.
//! 3. Read planning: a small profile built from the input is planned and its blocks
//!    extracted from (possibly short) answers; blocks stay within the limits.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rackwarden_config::profile::{ByteOrder, DataType, Point, Profile, RegisterKind};
use rackwarden_protocols::modbus::decode;
use rackwarden_protocols::modbus::plan::{self, BlockData};
use tokio::io::AsyncWriteExt;
use tokio_modbus::client::Reader;
use tokio_modbus::Slave;

const TYPES: [DataType; 8] = [
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::F32,
    DataType::F64,
    DataType::Bool,
];
const ORDERS: [ByteOrder; 4] = [ByteOrder::Abcd, ByteOrder::Cdab, ByteOrder::Badc, ByteOrder::Dcba];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn frames(data: &[u8]) {
    let rtu = data.first().is_some_and(|b| b & 1 == 1);
    let reply = data.get(1..).unwrap_or_default().to_vec();
    runtime().block_on(async move {
        let (client_end, mut device_end) = tokio::io::duplex(8192);
        let mut ctx = if rtu {
            tokio_modbus::client::rtu::attach_slave(client_end, Slave(1))
        } else {
            tokio_modbus::client::tcp::attach_slave(client_end, Slave(1))
        };
        // The device answers with the fuzz bytes and hangs up, so the read ends.
        let _ = device_end.write_all(&reply).await;
        drop(device_end);
        let _ = ctx.read_holding_registers(0, 4).await;
        let _ = ctx.read_coils(0, 10).await;
    });
}

fn words_of(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

fn point(data_type: DataType, byte_order: ByteOrder) -> Point {
    Point {
        name: "p".into(),
        role: None,
        register: if data_type == DataType::Bool {
            RegisterKind::Coil
        } else {
            RegisterKind::Holding
        },
        address: 0,
        data_type,
        byte_order,
        scale: 1.0,
        offset: 0.0,
        unit: None,
        writable: false,
        count: 1,
        stride: None,
        true_when: vec![],
    }
}

fn registers(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let t = TYPES[usize::from(data[0]) % TYPES.len()];
    let o = ORDERS[usize::from(data[1]) % ORDERS.len()];
    let mut p = point(t, o);
    p.scale = [1.0, 0.1, 0.001, -10.0][usize::from(data[2] & 3)];
    if data[2] & 4 != 0 {
        p.true_when = vec![i64::from(data[2] >> 3)];
    }
    let words = words_of(&data[3..]);
    let r = decode::decode_point(&words, &p);
    let width = usize::try_from(t.words()).unwrap();
    if words.len() != width {
        assert!(r.is_err());
        return;
    }
    // Integers (scale 1, no flag) must encode back to the same words.
    if p.scale == 1.0 && p.true_when.is_empty() {
        if let (Ok(v), DataType::U16 | DataType::I16 | DataType::U32 | DataType::I32) = (&r, t) {
            assert_eq!(decode::encode_point(*v, &p).unwrap(), words);
        }
    }
}

fn planning(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let max_read = u32::from(data[0]);
    let mut points = Vec::new();
    for (i, c) in data[1..].chunks_exact(6).take(8).enumerate() {
        let t = TYPES[usize::from(c[0]) % TYPES.len()];
        let register = if t == DataType::Bool {
            [RegisterKind::Coil, RegisterKind::Discrete][usize::from(c[0] >> 7)]
        } else {
            [RegisterKind::Holding, RegisterKind::Input][usize::from(c[0] >> 7)]
        };
        let mut p = point(t, ORDERS[usize::from(c[1]) % 4]);
        p.name = format!("p{i}");
        p.register = register;
        p.address = u32::from(u16::from_be_bytes([c[2], c[3]]));
        p.count = u32::from(c[4] % 50) + 1;
        p.stride = (c[5] != 0).then_some(u32::from(c[5] % 9));
        points.push(p);
    }
    let profile = Profile {
        name: "fuzz".into(),
        kind: rackwarden_config::profile::DeviceKind::Pdu,
        source: None,
        verified: false,
        max_read_registers: None,
        points,
    };
    let blocks = plan::plan_reads(&profile, max_read);
    for b in &blocks {
        let limit = if b.register.is_bit() { 2000 } else { max_read.clamp(1, 125).max(4) };
        assert!(u32::from(b.count) <= limit, "{b:?}");
        for it in &b.items {
            assert!(it.address >= b.start);
            assert!(u32::from(it.address) + u32::from(it.width) <= u32::from(b.start) + u32::from(b.count));
        }
        // Short, exact and long answers.
        let n = usize::from(b.count);
        for len in [0, n / 2, n, n + 3] {
            let data = if b.register.is_bit() {
                BlockData::Bits(vec![true; len])
            } else {
                BlockData::Words(vec![0x7FC0; len])
            };
            let vals = plan::extract(&profile, b, &data);
            assert_eq!(vals.len(), b.items.len());
        }
        let _ = plan::describe(&profile, b);
    }
}

fuzz_target!(|data: &[u8]| {
    match data.first() {
        Some(0..=85) => frames(&data[1..]),
        Some(86..=170) => registers(&data[1..]),
        Some(_) => planning(&data[1..]),
        None => {}
    }
});
