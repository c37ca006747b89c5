//! Braiins OS / OS+ driver.

use futures::future::BoxFuture;
use rackwarden_config::Firmware;
use reqwest::Method;
use serde_json::json;
use tokio::sync::Mutex;

use super::{Base, SessionCache};
use crate::miner::bodies;
use crate::miner::http;
use crate::miner::telemetry::{self as tm, MinerMode, MinerTelemetry};
use crate::miner::{Capabilities, Commanded, MinerDriver, MinerError};

/// Braiins OS / OS+: telemetry and pause/resume over 4028; power target over its REST
/// API (`/api/v1/auth/login`, `PUT /api/v1/performance/power-target`).
pub(super) struct Braiins {
    base: Base,
    /// REST token and when it was issued.
    state: Mutex<SessionCache<String>>,
}

impl Braiins {
    pub(super) fn new(base: Base) -> Self {
        let state = Mutex::new(SessionCache::new(base.token_lifetime));
        Self { base, state }
    }
}

impl MinerDriver for Braiins {
    identity!();

    fn poll(&self) -> BoxFuture<'_, Result<MinerTelemetry, MinerError>> {
        Box::pin(async move {
            let _g = self.state.lock().await;
            let b = &self.base;
            let parts = b
                .api
                .multi(&["summary", "tunerstatus", "temps", "fans"])
                .await
                .map_err(b.api_err("poll"))?;
            let mut t = b.telemetry();
            tm::apply_summary(&mut t, &parts[0]);
            tm::apply_tunerstatus(&mut t, &parts[1]);
            tm::apply_temps(&mut t, &parts[2]);
            tm::apply_fans(&mut t, &parts[3]);
            Ok(b.finish(t, MinerMode::Paused))
        })
    }

    fn set_power_target(&self, watts: f64) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            let b = &self.base;
            b.check_range(watts)?;
            let mut st = self.state.lock().await;
            let token = match st.fresh() {
                Some(t) => t,
                None => {
                    let body = json!({"username": b.spec.login.username, "password": b.spec.login.password.expose()});
                    let (_, v) = http::send_json(
                        &b.http,
                        Method::POST,
                        &b.url("/api/v1/auth/login"),
                        &[],
                        Some(body.to_string()),
                    )
                    .await
                    .map_err(b.http_err("login"))?;
                    let t = bodies::rest_token(&v)
                        .ok_or_else(|| b.protocol("login", "no token in login answer"))?;
                    st.store(t.clone());
                    t
                }
            };
            let body = json!({ "watt": watts.round() });
            let res = http::send_json(
                &b.http,
                Method::PUT,
                &b.url("/api/v1/performance/power-target"),
                &[("authorization", token)],
                Some(body.to_string()),
            )
            .await;
            if res.is_err() {
                // A rejected token must not be reused.
                st.clear();
            }
            res.map_err(b.http_err("set power target"))?;
            Ok(Commanded::PowerTarget { watts })
        })
    }

    fn sleep(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            let _g = self.state.lock().await;
            let b = &self.base;
            b.api
                .command("pause", None)
                .await
                .map_err(b.api_err("pause"))?;
            Ok(Commanded::Sleep)
        })
    }

    fn wake(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            let _g = self.state.lock().await;
            let b = &self.base;
            b.api
                .command("resume", None)
                .await
                .map_err(b.api_err("resume"))?;
            Ok(Commanded::Wake)
        })
    }
}
