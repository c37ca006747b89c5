//! The rackwarden agent: the control core, the runtime, alerts, HTTP and the command
//! line (its `demo`, `sim` and `gpu-node --sim` run the `rackwarden-sim` crate's
//! simulators). The binary (`src/main.rs`) only parses arguments and calls in here.

pub mod alerts;
pub mod catalogue;
pub mod cli;
pub mod control;
pub mod energy;
pub mod grid;
pub mod ha;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod runtime;
pub mod status;
pub mod store;
