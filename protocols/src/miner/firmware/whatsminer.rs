//! Whatsminer (btminer API v2) driver.

use futures::future::BoxFuture;
use rackwarden_config::Firmware;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::{Base, SessionCache};
use crate::miner::bodies::{self, BodyError};
use crate::miner::client::ApiError;
use crate::miner::reply::Reply;
use crate::miner::telemetry::{self as tm, MinerMode, MinerTelemetry};
use crate::miner::wmcrypto::TokenKeys;
use crate::miner::{Capabilities, Commanded, MinerDriver, MinerError};

struct WmState {
    keys: SessionCache<TokenKeys>,
    version: Option<String>,
}

/// Whatsminer btminer API v2: `summary` and flat `status` to read; `get_token` then
/// AES-256-ECB encrypted `power_off`/`power_on`/`adjust_power_limit`.
pub(super) struct Whatsminer {
    base: Base,
    state: Mutex<WmState>,
}

/// Whatsminer error codes for a stale or invalid token.
const WM_TOKEN_CODES: [i64; 3] = [132, 135, 136];

impl Whatsminer {
    pub(super) fn new(base: Base) -> Self {
        let state = Mutex::new(WmState {
            keys: SessionCache::new(base.token_lifetime),
            version: None,
        });
        Self { base, state }
    }

    async fn keys(&self, st: &mut WmState) -> Result<TokenKeys, MinerError> {
        let b = &self.base;
        if let Some(k) = st.keys.fresh() {
            return Ok(k);
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
        st.keys.store(keys.clone());
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
                st.keys.clear();
                continue;
            }
            return Err(MinerError::Api {
                id: b.spec.id.clone(),
                addr: b.spec.api_addr.clone(),
                op: cmd,
                source: Box::new(ApiError::Reply {
                    addr: b.spec.api_addr.clone(),
                    command: cmd.into(),
                    source: crate::miner::reply::ReplyError::Status {
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
