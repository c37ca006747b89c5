//! Simulators, kept out of the production libraries: the devices a site holds, each on
//! loopback with scripted faults, and the site they make up.
//!
//! - [`miner`]: miners of every firmware (cgminer-compatible API on TCP, web APIs), one
//!   module per firmware beside its driver in `rackwarden_protocols::miner::firmware`.
//! - [`gpu`]: scripted GPU load ([`gpu::SimGpus`]).
//! - [`modbus`]: a tokio-modbus server serving any profile with live values and faults.
//! - [`site`]: the site simulator ([`site::SiteSim`]): physics, scenarios, fault injection.
//!
//! Depends on `rackwarden-protocols` (the shared types: firmware replies, crypto, GPU
//! readings) and `rackwarden-config`; the protocols crate never depends on this one (it
//! uses it only as a dev-dependency, in its integration tests).

pub mod gpu;
pub mod miner;
pub mod modbus;
pub mod site;
