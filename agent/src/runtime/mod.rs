//! The runtime: collectors, the snapshot, the fast and slow loops calling `decide`, the
//! actuator, alerts, the journal and the persisted control intent.

mod actuate;
pub mod agent;
pub mod clock;
mod collect;
pub mod io;
mod journal;
pub mod persist;
mod takeover;
mod tick;
