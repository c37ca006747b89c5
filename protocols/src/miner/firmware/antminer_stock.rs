//! Stock Bitmain Antminer driver.

use futures::future::BoxFuture;
use rackwarden_config::Firmware;
use reqwest::Method;
use tokio::sync::Mutex;

use super::Base;
use crate::miner::bodies;
use crate::miner::http;
use crate::miner::telemetry::{self as tm, MinerMode, MinerTelemetry};
use crate::miner::{Capabilities, Commanded, MinerDriver, MinerError};

/// Stock Bitmain: telemetry over 4028 (`summary+stats` is refused, so one command per
/// connection), sleep/normal through the web CGI's `miner-mode` with digest auth.
pub(super) struct Antminer {
    base: Base,
    lock: Mutex<()>,
}

impl Antminer {
    pub(super) fn new(base: Base) -> Self {
        Self {
            base,
            lock: Mutex::new(()),
        }
    }

    async fn set_mode(&self, mode: u8) -> Result<(), MinerError> {
        let b = &self.base;
        let _g = self.lock.lock().await;
        let get = "/cgi-bin/get_miner_conf.cgi";
        let mut conf =
            http::digest_json(&b.http, Method::GET, &b.url(get), get, &b.spec.login, None)
                .await
                .map_err(b.http_err("get_miner_conf"))?;
        conf = bodies::antminer_conf_with_mode(conf, mode)
            .map_err(|e| b.protocol("get_miner_conf", e.to_string()))?;
        let set = "/cgi-bin/set_miner_conf.cgi";
        let v = http::digest_json(
            &b.http,
            Method::POST,
            &b.url(set),
            set,
            &b.spec.login,
            Some(conf.to_string()),
        )
        .await
        .map_err(b.http_err("set_miner_conf"))?;
        if bodies::antminer_set_accepted(&v) {
            Ok(())
        } else {
            Err(b.protocol("set_miner_conf", format!("miner refused: {v}")))
        }
    }
}

impl MinerDriver for Antminer {
    identity!();

    fn poll(&self) -> BoxFuture<'_, Result<MinerTelemetry, MinerError>> {
        Box::pin(async move {
            let _g = self.lock.lock().await;
            let b = &self.base;
            // `stats` alone carries hashrate, uptime, temperatures, fans and model, and
            // the firmware refuses joined commands: one connection per poll.
            let stats = b
                .api
                .command("stats", None)
                .await
                .map_err(b.api_err("poll"))?;
            let mut t = b.telemetry();
            tm::apply_stats(&mut t, &stats);
            Ok(b.finish(t, MinerMode::Sleeping))
        })
    }

    fn set_power_target(&self, _watts: f64) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.base.check_range(_watts)?;
            Err(self
                .base
                .protocol("set power target", "unreachable: no lever"))
        })
    }

    fn sleep(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.set_mode(1).await?;
            Ok(Commanded::Sleep)
        })
    }

    fn wake(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.set_mode(0).await?;
            Ok(Commanded::Wake)
        })
    }
}
