//! Canaan Avalon driver.

use futures::future::BoxFuture;
use rackwarden_config::Firmware;
use tokio::sync::Mutex;

use super::Base;
use crate::miner::telemetry::{self as tm, MinerMode, MinerTelemetry};
use crate::miner::{Capabilities, Commanded, MinerDriver, MinerError};

/// Canaan Avalon: `summary+estats+version` to read; `ascset 0,softoff|softon`. Its API is
/// single-threaded: the lock keeps one request at a time.
pub(super) struct Avalon {
    base: Base,
    lock: Mutex<()>,
}

impl Avalon {
    pub(super) fn new(base: Base) -> Self {
        Self {
            base,
            lock: Mutex::new(()),
        }
    }

    async fn ascset(&self, verb: &'static str) -> Result<(), MinerError> {
        let b = &self.base;
        let _g = self.lock.lock().await;
        let r = b
            .api
            .command("ascset", Some(&format!("0,{verb}")))
            .await
            .map_err(b.api_err(verb))?;
        if r.status.msg.contains("success") || r.status.msg.contains("OK") {
            Ok(())
        } else {
            Err(b.protocol(verb, format!("miner answered: {}", r.status.msg)))
        }
    }
}

impl MinerDriver for Avalon {
    identity!();

    fn poll(&self) -> BoxFuture<'_, Result<MinerTelemetry, MinerError>> {
        Box::pin(async move {
            let _g = self.lock.lock().await;
            let b = &self.base;
            let parts = b
                .api
                .multi(&["summary", "estats", "version"])
                .await
                .map_err(b.api_err("poll"))?;
            let mut t = b.telemetry();
            tm::apply_summary(&mut t, &parts[0]);
            tm::apply_avalon_estats(&mut t, &parts[1]);
            tm::apply_version(&mut t, &parts[2]);
            Ok(b.finish(t, MinerMode::Sleeping))
        })
    }

    fn set_power_target(&self, watts: f64) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.base.check_range(watts)?;
            Err(self
                .base
                .protocol("set power target", "unreachable: no lever"))
        })
    }

    fn sleep(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.ascset("softoff").await?;
            Ok(Commanded::Sleep)
        })
    }

    fn wake(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.ascset("softon").await?;
            Ok(Commanded::Wake)
        })
    }
}
