//! The six firmware drivers behind [`MinerDriver`]: what each polls and how each pulls
//! its levers. Each driver holds one `tokio::sync::Mutex` over its per-miner state
//! (session, token, cached profiles) and keeps it for the whole operation, so one
//! request at a time goes to a miner.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rackwarden_config::Firmware;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::bodies::{self, BodyError};
use super::client::{ApiClient, ApiError};
use super::http::{self, HttpError};
use super::reply::{text, Reply};
use super::secret::Login;
use super::telemetry::{self as tm, MinerMode, MinerTelemetry};
use super::wmcrypto::TokenKeys;
use super::{Capabilities, Commanded, DriverOptions, MinerDriver, MinerError};

/// What a driver needs to know about its miner.
pub(super) struct Spec {
    pub id: String,
    pub firmware: Firmware,
    pub api_addr: String,
    pub http_base: String,
    pub login: Login,
    pub efficiency_j_th: f64,
    pub idle_w: f64,
    pub min_w: Option<f64>,
    pub nominal_w: f64,
}

pub(super) fn build(
    spec: Spec,
    opts: &DriverOptions,
    http: reqwest::Client,
) -> Arc<dyn MinerDriver> {
    let base = Base {
        api: ApiClient::new(
            spec.api_addr.clone(),
            opts.connect_timeout,
            opts.reply_timeout,
        ),
        token_lifetime: opts.token_lifetime,
        http,
        spec,
    };
    match base.spec.firmware {
        Firmware::Braiins => Arc::new(Braiins {
            base,
            state: Mutex::new(None),
        }),
        Firmware::Luxos => Arc::new(Luxos {
            base,
            state: Mutex::new(LuxState::default()),
        }),
        Firmware::Whatsminer => Arc::new(Whatsminer {
            base,
            state: Mutex::new(WmState::default()),
        }),
        Firmware::Vnish => Arc::new(Vnish {
            base,
            state: Mutex::new(None),
        }),
        Firmware::AntminerStock => Arc::new(Antminer {
            base,
            lock: Mutex::new(()),
        }),
        Firmware::Avalon => Arc::new(Avalon {
            base,
            lock: Mutex::new(()),
        }),
    }
}

struct Base {
    spec: Spec,
    api: ApiClient,
    http: reqwest::Client,
    token_lifetime: Duration,
}

impl Base {
    fn api_err(&self, op: &'static str) -> impl Fn(ApiError) -> MinerError + '_ {
        move |source| MinerError::Api {
            id: self.spec.id.clone(),
            addr: self.spec.api_addr.clone(),
            op,
            source: Box::new(source),
        }
    }

    fn http_err(&self, op: &'static str) -> impl Fn(HttpError) -> MinerError + '_ {
        move |source| MinerError::Http {
            id: self.spec.id.clone(),
            addr: self.spec.http_base.clone(),
            op,
            source: Box::new(source),
        }
    }

    fn protocol(&self, op: &'static str, detail: impl Into<String>) -> MinerError {
        MinerError::Protocol {
            id: self.spec.id.clone(),
            addr: self.spec.api_addr.clone(),
            op,
            detail: detail.into(),
        }
    }

    fn telemetry(&self) -> MinerTelemetry {
        MinerTelemetry::empty(&self.spec.id, self.spec.firmware)
    }

    fn finish(&self, mut t: MinerTelemetry, idle: MinerMode) -> MinerTelemetry {
        t.mode_from_hashrate(idle);
        t.estimate_power(self.spec.efficiency_j_th, self.spec.idle_w);
        t.taken_at = Instant::now();
        t
    }

    fn capabilities(&self) -> Capabilities {
        let levers = self.spec.firmware.levers();
        Capabilities {
            levers,
            power_target_range_w: levers.power_target.then(|| {
                (
                    self.spec.min_w.unwrap_or(self.spec.idle_w),
                    self.spec.nominal_w,
                )
            }),
            restore: levers.sleep,
        }
    }

    fn check_range(&self, watts: f64) -> Result<(), MinerError> {
        match self.capabilities().power_target_range_w {
            None => Err(MinerError::Unsupported {
                id: self.spec.id.clone(),
                firmware: self.spec.firmware.name(),
                lever: "power target",
            }),
            Some((min_w, max_w)) if !(min_w..=max_w).contains(&watts) => {
                Err(MinerError::OutOfRange {
                    id: self.spec.id.clone(),
                    watts,
                    min_w,
                    max_w,
                })
            }
            Some(_) => Ok(()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.spec.http_base)
    }
}

/// Implements the identity methods of [`MinerDriver`] from `self.base`.
macro_rules! identity {
    () => {
        fn id(&self) -> &str {
            &self.base.spec.id
        }
        fn firmware(&self) -> Firmware {
            self.base.spec.firmware
        }
        fn addr(&self) -> &str {
            &self.base.spec.api_addr
        }
        fn capabilities(&self) -> Capabilities {
            self.base.capabilities()
        }
    };
}

// ---------------------------------------------------------------- Braiins OS

/// Braiins OS / OS+: telemetry and pause/resume over 4028; power target over its REST
/// API (`/api/v1/auth/login`, `PUT /api/v1/performance/power-target`).
struct Braiins {
    base: Base,
    /// REST token and when it was issued.
    state: Mutex<Option<(String, Instant)>>,
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
            let token = match st.as_ref() {
                Some((t, at)) if at.elapsed() < b.token_lifetime => t.clone(),
                _ => {
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
                    *st = Some((t.clone(), Instant::now()));
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
                *st = None;
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

// ---------------------------------------------------------------- LuxOS

#[derive(Default)]
struct LuxState {
    session: Option<(String, Instant)>,
    profiles: Option<Vec<(String, f64)>>,
}

/// LuxOS: `logon` (or `session` to reuse the active one), `curtail` sleep/wakeup,
/// `profileset` to the largest profile within the target, `power` for watts.
struct Luxos {
    base: Base,
    state: Mutex<LuxState>,
}

impl Luxos {
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
        if let Some((s, at)) = &st.session {
            if at.elapsed() < b.token_lifetime {
                return Ok(s.clone());
            }
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
        st.session = Some((sid.clone(), Instant::now()));
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
                st.session = None;
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

// ---------------------------------------------------------------- Whatsminer

#[derive(Default)]
struct WmState {
    keys: Option<(TokenKeys, Instant)>,
    version: Option<String>,
}

/// Whatsminer btminer API v2: `summary` and flat `status` to read; `get_token` then
/// AES-256-ECB encrypted `power_off`/`power_on`/`adjust_power_limit`.
struct Whatsminer {
    base: Base,
    state: Mutex<WmState>,
}

/// Whatsminer error codes for a stale or invalid token.
const WM_TOKEN_CODES: [i64; 3] = [132, 135, 136];

impl Whatsminer {
    async fn keys(&self, st: &mut WmState) -> Result<TokenKeys, MinerError> {
        let b = &self.base;
        if let Some((k, at)) = &st.keys {
            if at.elapsed() < b.token_lifetime {
                return Ok(k.clone());
            }
        }
        let r = b
            .api
            .request(&json!({"cmd": "get_token"}), "get_token")
            .await
            .and_then(|r| {
                r.ok().map_err(|source| ApiError::Reply {
                    addr: b.spec.api_addr.clone(),
                    command: "get_token".into(),
                    source,
                })
            })
            .map_err(b.api_err("get_token"))?;
        let msg = r.body.get("Msg").cloned().unwrap_or(Value::Null);
        let keys =
            bodies::whatsminer_token(&msg, b.spec.login.password.expose()).map_err(
                |e| match e {
                    BodyError::Crypto(source) => MinerError::Crypto {
                        id: b.spec.id.clone(),
                        addr: b.spec.api_addr.clone(),
                        op: "get_token",
                        source,
                    },
                    e => b.protocol("get_token", e.to_string()),
                },
            )?;
        st.keys = Some((keys.clone(), Instant::now()));
        Ok(keys)
    }

    async fn write_once(
        &self,
        keys: &TokenKeys,
        cmd: &'static str,
        extra: &Value,
    ) -> Result<Reply, MinerError> {
        let b = &self.base;
        let mut plain = json!({ "cmd": cmd, "token": keys.sign });
        if let (Some(p), Some(e)) = (plain.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                p.insert(k.clone(), v.clone());
            }
        }
        let req = json!({ "enc": 1, "data": keys.seal(plain.to_string().as_bytes()) });
        // One send only: a write must never be repeated behind the caller's back.
        let v = b
            .api
            .request_json(&req, cmd)
            .await
            .map_err(b.api_err(cmd))?;
        // An accepted write answers `{"enc":...}`; a refusal may come in the clear.
        bodies::whatsminer_answer(keys, &v).map_err(|e| match e {
            BodyError::Crypto(source) => MinerError::Crypto {
                id: b.spec.id.clone(),
                addr: b.spec.api_addr.clone(),
                op: cmd,
                source,
            },
            e => b.protocol(cmd, e.to_string()),
        })
    }

    /// An encrypted write, renewing the token once when the miner says it is stale.
    async fn write(&self, cmd: &'static str, extra: Value) -> Result<(), MinerError> {
        let b = &self.base;
        let mut st = self.state.lock().await;
        for attempt in 0..2 {
            let keys = self.keys(&mut st).await?;
            let r = self.write_once(&keys, cmd, &extra).await?;
            if r.status.kind.is_ok() {
                return Ok(());
            }
            let code = r.status.code.unwrap_or(-1);
            if attempt == 0 && WM_TOKEN_CODES.contains(&code) {
                st.keys = None;
                continue;
            }
            return Err(MinerError::Api {
                id: b.spec.id.clone(),
                addr: b.spec.api_addr.clone(),
                op: cmd,
                source: Box::new(ApiError::Reply {
                    addr: b.spec.api_addr.clone(),
                    command: cmd.into(),
                    source: super::reply::ReplyError::Status {
                        letter: r.status.kind.letter(),
                        code,
                        msg: r.status.msg,
                    },
                }),
            });
        }
        Err(b.protocol(cmd, "token refused twice"))
    }
}

impl MinerDriver for Whatsminer {
    identity!();

    fn poll(&self) -> BoxFuture<'_, Result<MinerTelemetry, MinerError>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let b = &self.base;
            let mut t = b.telemetry();
            let summary = b
                .api
                .request(&json!({"cmd": "summary"}), "summary")
                .await
                .and_then(|r| {
                    r.ok().map_err(|source| ApiError::Reply {
                        addr: b.spec.api_addr.clone(),
                        command: "summary".into(),
                        source,
                    })
                });
            // `status` (mineroff) is asked only when `summary` shows no hashing or fails
            // (btminer stops answering `summary` while powered off): a mining miner
            // costs one connection per poll.
            let hashing = match &summary {
                Ok(s) => {
                    tm::apply_summary(&mut t, s);
                    t.hashrate_ths.is_some_and(|h| h > 0.0)
                }
                Err(_) => false,
            };
            if hashing {
                t.mode = MinerMode::Mining;
            } else {
                let status = b
                    .api
                    .request(&json!({"cmd": "status"}), "status")
                    .await
                    .map_err(b.api_err("poll"))?;
                tm::apply_whatsminer_status(&mut t, &status);
                match summary {
                    Err(e) if t.mode != MinerMode::Sleeping => return Err(b.api_err("poll")(e)),
                    _ => {}
                }
            }
            if st.version.is_none() {
                if let Ok(v) = b
                    .api
                    .request(&json!({"cmd": "get_version"}), "get_version")
                    .await
                {
                    let mut tv = b.telemetry();
                    tm::apply_whatsminer_version(&mut tv, &v);
                    st.version = tv.firmware_version;
                }
            }
            if st.version.is_some() {
                t.firmware_version.clone_from(&st.version);
            }
            Ok(b.finish(t, MinerMode::Sleeping))
        })
    }

    fn set_power_target(&self, watts: f64) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.base.check_range(watts)?;
            let w = format!("{:.0}", watts.round());
            self.write("adjust_power_limit", json!({ "power_limit": w }))
                .await?;
            Ok(Commanded::PowerTarget {
                watts: watts.round(),
            })
        })
    }

    fn sleep(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.write("power_off", json!({ "respbefore": "true" }))
                .await?;
            Ok(Commanded::Sleep)
        })
    }

    fn wake(&self) -> BoxFuture<'_, Result<Commanded, MinerError>> {
        Box::pin(async move {
            self.write("power_on", json!({})).await?;
            Ok(Commanded::Wake)
        })
    }
}

// ---------------------------------------------------------------- Vnish

/// Vnish: telemetry from `GET /api/v1/summary`;
/// `POST /api/v1/unlock` for a token, then `/api/v1/mining/pause|resume` and presets.
struct Vnish {
    base: Base,
    state: Mutex<Option<(String, Instant)>>,
}

impl Vnish {
    async fn authed(&self, path: &str, body: Value, op: &'static str) -> Result<Value, MinerError> {
        let b = &self.base;
        let mut st = self.state.lock().await;
        for attempt in 0..2 {
            let token = match st.as_ref() {
                Some((t, at)) if at.elapsed() < b.token_lifetime => t.clone(),
                _ => {
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
                    *st = Some((t.clone(), Instant::now()));
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
                Err(HttpError::Status { status: 401, .. }) if attempt == 0 => *st = None,
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

// ---------------------------------------------------------------- stock Antminer

/// Stock Bitmain: telemetry over 4028 (`summary+stats` is refused, so one command per
/// connection), sleep/normal through the web CGI's `miner-mode` with digest auth.
struct Antminer {
    base: Base,
    lock: Mutex<()>,
}

impl Antminer {
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

// ---------------------------------------------------------------- Avalon

/// Canaan Avalon: `summary+estats+version` to read; `ascset 0,softoff|softon`. Its API is
/// single-threaded: the lock keeps one request at a time.
struct Avalon {
    base: Base,
    lock: Mutex<()>,
}

impl Avalon {
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
