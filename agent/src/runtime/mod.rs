//! The runtime: collectors, the snapshot, the fast and slow loops calling `decide`, the
//! actuator, alerts, the journal and the persisted control intent.

pub mod agent;
pub mod clock;
pub mod persist;
