//! Modbus: PDUs, meters and cooling units over Modbus TCP, Modbus RTU on a serial line,
//! and RTU-over-TCP gateways.
//!
//! - [`decode`]: register words to engineering values and back (every type and byte order).
//! - [`plan`]: which requests read a register map (coalesced, split at the device's limit).
//! - [`client`]: [`ModbusPool`], one actor per connection, timeouts, reconnects, the write
//!   guard; what the runtime's collectors and actuator call.
//! - The simulator (a tokio-modbus server serving any profile with live values and
//!   faults) lives in the `rackwarden-sim` crate (`rackwarden_sim::modbus`).
//! - [`probe`]: read every device once and print a table (`rackwarden probe`).

pub mod client;
pub mod decode;
pub mod plan;
pub mod probe;

pub use client::{DeviceReading, ModbusError, ModbusPool, PoolOptions};
pub use plan::PointValue;
