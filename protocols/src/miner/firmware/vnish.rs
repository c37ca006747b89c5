//! Vnish driver.

use futures::future::BoxFuture;
use rackwarden_config::Firmware;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::{Base, SessionCache};
use crate::miner::bodies;
use crate::miner::http::{self, HttpError};
use crate::miner::telemetry::{self as tm, MinerMode, MinerTelemetry};
use crate::miner::{Capabilities, Commanded, MinerDriver, MinerError};

/// Vnish: telemetry from `GET /api/v1/summary`;
/// `POST /api/v1/unlock` for a token, then `/api/v1/mining/pause|resume` and presets.
pub(super) struct Vnish {
    base: Base,
    state: Mutex<SessionCache<String>>,
}

impl Vnish {
    pub(super) fn new(base: Base) -> Self {
        let state = Mutex::new(SessionCache::new(base.token_lifetime));
        Self { base, state }
    }

    async fn authed(&self, path: &str, body: Value, op: &'static str) -> Result<Value, MinerError> {
        let b = &self.base;
        let mut st = self.state.lock().await;
        for attempt in 0..2 {
            let token = match st.fresh() {
                Some(t) => t,
                None => {
                    let (_, v) = http::send_json(
                        &b.http,
                        Method::POST,
                        &b.url("/api/v1/unlock"),
                        &[],
                        Some(json!({"pw": b.spec.login.password.expose()}).to_string()),
                    )
                    .await
                    .map_err(b.http_err("unlock"))?;
                    let t = bodies::rest_token(&v)
                        .ok_or_else(|| b.protocol("unlock", "no token in answer"))?;
                    st.store(t.clone());
                    t
                }
            };
            match http::send_json(
                &b.http,
                Method::POST,
                &b.url(path),
                &[("authorization", format!("Bearer {token}"))],
                Some(body.to_string()),
            )
            .await
            {
                Ok((_, v)) => return Ok(v),
                Err(HttpError::Status { status: 401, .. }) if attempt == 0 => st.clear(),
                Err(e) => return Err(b.http_err(op)(e)),
            }
        }
        Err(b.protocol(op, "token refused twice"))
    }
}

impl MinerDriver for Vnish {
    identity!();

    fn poll(&self) -> BoxFuture<'_, Result<MinerTelemetry, MinerError>> {
        Box::pin(async move {
            let b = &self.base;
            let _g = self.state.lock().await;
            // The REST summary carries hashrate, power, state, temperatures and fans; the
            // power target is the active preset of the settings (Vnish 1.2.6's API
            // document has no target in the summary). Both at once, no 4028 connection.
            let (summary_url, settings_url) = (b.url("/api/v1/summary"), b.url("/api/v1/settings"));
            let (summary, settings) = tokio::join!(
                http::send_json(&b.http, Method::GET, &summary_url, &[], None),
                http::send_json(&b.http, Method::GET, &settings_url, &[], None)
            );
            let (_, v) = summary.map_err(b.http_err("poll"))?;
            let mut t = b.telemetry();
            if !tm::apply_vnish_summary(&mut t, &v) {
                return Err(b.protocol("poll", "summary has no miner section"));
            }
            // A target unknown for a poll is no failed poll.
            if let Ok((_, c)) = settings {
                t.power_target_w = tm::vnish_preset_w(&c).or(t.power_target_w);
            }
            Ok(b.finish(t, MinerMode::Paused))
        })
    }

    fn set_power_target(&self, watts: f64) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            let b = &self.base;
            b.check_range(watts)?;
            let (_, v) = http::send_json(
                &b.http,
                Method::GET,
                &b.url("/api/v1/autotune/presets"),
                &[],
                None,
            )
            .await
            .map_err(b.http_err("presets"))?;
            // Presets are named by their watts ("3000"); take the largest within target.
            let pick = bodies::pick_within(&bodies::vnish_presets(&v), watts)
                .ok_or_else(|| b.protocol("presets", "miner lists no presets"))?;
            self.authed(
                "/api/v1/settings",
                json!({"miner": {"overclock": {"preset": pick.0}}}),
                "set preset",
            )
            .await?;
            Ok(Commanded::PowerTarget { watts: pick.1 })
        })
    }

    fn sleep(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.authed("/api/v1/mining/pause", json!({}), "pause")
                .await?;
            Ok(Commanded::Sleep)
        })
    }

    fn wake(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.authed("/api/v1/mining/resume", json!({}), "resume")
                .await?;
            Ok(Commanded::Wake)
        })
    }
}
