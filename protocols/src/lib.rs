//! Talking to things: Modbus TCP/RTU, miner APIs and GPU sources, each behind a small
//! trait with a fake. Nothing here decides; collectors and the actuator call into it.

pub mod body;
pub mod gpu;
pub mod miner;
pub mod modbus;
