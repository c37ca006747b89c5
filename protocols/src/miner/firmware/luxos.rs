//! LuxOS driver.

use futures::future::BoxFuture;
use rackwarden_config::Firmware;
use tokio::sync::Mutex;

use super::{Base, SessionCache};
use crate::miner::bodies;
use crate::miner::reply::{text, Reply};
use crate::miner::telemetry::{self as tm, MinerMode, MinerTelemetry};
use crate::miner::{Capabilities, Commanded, MinerDriver, MinerError};

struct LuxState {
    session: SessionCache<String>,
    profiles: Option<Vec<(String, f64)>>,
}

/// LuxOS: `logon` (or `session` to reuse the active one), `curtail` sleep/wakeup,
/// `profileset` to the largest profile within the target, `power` for watts.
pub(super) struct Luxos {
    base: Base,
    state: Mutex<LuxState>,
}

impl Luxos {
    pub(super) fn new(base: Base) -> Self {
        let state = Mutex::new(LuxState {
            session: SessionCache::new(base.token_lifetime),
            profiles: None,
        });
        Self { base, state }
    }

    async fn profiles(&self, st: &mut LuxState) -> Result<Vec<(String, f64)>, MinerError> {
        if let Some(p) = &st.profiles {
            return Ok(p.clone());
        }
        let b = &self.base;
        let r = b
            .api
            .command("profiles", None)
            .await
            .map_err(b.api_err("profiles"))?;
        let p = tm::luxos_profiles(&r);
        st.profiles = Some(p.clone());
        Ok(p)
    }

    async fn session(&self, st: &mut LuxState) -> Result<String, MinerError> {
        let b = &self.base;
        if let Some(s) = st.session.fresh() {
            return Ok(s);
        }
        // LuxOS allows one session: when one is active, `logon` fails and `session`
        // returns the active one.
        let r = match b.api.command("logon", None).await {
            Ok(r) => r,
            Err(e) if e.status_code().is_some() => b
                .api
                .command("session", None)
                .await
                .map_err(b.api_err("session"))?,
            Err(e) => return Err(b.api_err("logon")(e)),
        };
        let sid = r
            .first("SESSION")
            .ok()
            .and_then(|s| text(s, &["SessionID"]))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| b.protocol("logon", "no SessionID in answer"))?;
        st.session.store(sid.clone());
        Ok(sid)
    }

    /// Run a session command, renewing the session once if the miner rejects it.
    async fn with_session(&self, command: &'static str, arg: &str) -> Result<Reply, MinerError> {
        let b = &self.base;
        let mut st = self.state.lock().await;
        let sid = self.session(&mut st).await?;
        match b.api.command(command, Some(&format!("{sid},{arg}"))).await {
            Ok(r) => Ok(r),
            Err(e) if e.status_code().is_some() => {
                st.session.clear();
                let sid = self.session(&mut st).await?;
                b.api
                    .command(command, Some(&format!("{sid},{arg}")))
                    .await
                    .map_err(b.api_err(command))
            }
            Err(e) => Err(b.api_err(command)(e)),
        }
    }
}

impl MinerDriver for Luxos {
    identity!();

    fn poll(&self) -> BoxFuture<'_, Result<MinerTelemetry, MinerError>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let b = &self.base;
            let parts = b
                .api
                .multi(&["summary", "stats", "power", "config"])
                .await
                .map_err(b.api_err("poll"))?;
            let mut t = b.telemetry();
            tm::apply_summary(&mut t, &parts[0]);
            tm::apply_stats(&mut t, &parts[1]);
            tm::apply_luxos_power(&mut t, &parts[2]);
            let profile = tm::apply_luxos_config(&mut t, &parts[3]);
            if let Some(name) = profile {
                let profiles = self.profiles(&mut st).await?;
                t.power_target_w = profiles.iter().find(|(n, _)| *n == name).map(|(_, w)| *w);
            }
            Ok(b.finish(t, MinerMode::Sleeping))
        })
    }

    fn set_power_target(&self, watts: f64) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            let b = &self.base;
            b.check_range(watts)?;
            let profiles = {
                let mut st = self.state.lock().await;
                self.profiles(&mut st).await?
            };
            // The largest preset within the target; the smallest when none fits.
            let pick = bodies::pick_within(&profiles, watts)
                .ok_or_else(|| b.protocol("profileset", "miner lists no profiles"))?;
            self.with_session("profileset", &pick.0).await?;
            Ok(Commanded::PowerTarget { watts: pick.1 })
        })
    }

    fn sleep(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.with_session("curtail", "sleep").await?;
            Ok(Commanded::Sleep)
        })
    }

    fn wake(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.with_session("curtail", "wakeup").await?;
            Ok(Commanded::Wake)
        })
    }
}
