//! The six firmware drivers behind [`MinerDriver`]: what each polls and how each pulls
//! its levers, one module per firmware (its simulated twin has the same name in the
//! `rackwarden-sim` crate, `rackwarden_sim::miner::<firmware>`). Each driver holds one
//! `tokio::sync::Mutex` over its per-miner state (session, token, cached profiles) and
//! keeps it for the whole operation, so one request at a time goes to a miner.
//!
//! This module holds what they share: the miner's [`Spec`], the [`Base`] (API client,
//! HTTP client, error helpers), the identity methods and the [`SessionCache`] of the
//! firmwares' session tokens.

use std::sync::Arc;
use std::time::Duration;

use rackwarden_config::Firmware;
use tokio::time::Instant;

use super::client::{ApiClient, ApiError};
use super::http::HttpError;
use super::secret::Login;
use super::telemetry::{MinerMode, MinerTelemetry};
use super::{Capabilities, DriverOptions, MinerDriver, MinerError};

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
        Firmware::Braiins => Arc::new(braiins::Braiins::new(base)),
        Firmware::Luxos => Arc::new(luxos::Luxos::new(base)),
        Firmware::Whatsminer => Arc::new(whatsminer::Whatsminer::new(base)),
        Firmware::Vnish => Arc::new(vnish::Vnish::new(base)),
        Firmware::AntminerStock => Arc::new(antminer_stock::Antminer::new(base)),
        Firmware::Avalon => Arc::new(avalon::Avalon::new(base)),
    }
}

struct Base {
    spec: Spec,
    api: ApiClient,
    http: reqwest::Client,
    token_lifetime: Duration,
}

/// A session token (or key set) a firmware issued, and when: handed out again while it
/// is younger than the drivers' `token_lifetime`, renewed after. One type for them all:
/// the Braiins OS REST token, the LuxOS session, the Whatsminer token keys and the Vnish
/// token (stock Antminer answers a digest challenge per request and Avalon has no login:
/// nothing to cache). Kept inside each driver's mutex, like the rest of its state.
struct SessionCache<T> {
    lifetime: Duration,
    held: Option<(T, Instant)>,
}

impl<T: Clone> SessionCache<T> {
    fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            held: None,
        }
    }

    /// The held token, when there is one and it has not outlived the lifetime.
    fn fresh(&self) -> Option<T> {
        match &self.held {
            Some((t, at)) if at.elapsed() < self.lifetime => Some(t.clone()),
            _ => None,
        }
    }

    /// Keep a token the firmware just issued.
    fn store(&mut self, token: T) {
        self.held = Some((token, Instant::now()));
    }

    /// Forget the token (the miner rejected it): the next use logs in again.
    fn clear(&mut self) {
        self.held = None;
    }
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

// One module per firmware, after the `identity!` macro they use.
mod antminer_stock;
mod avalon;
mod braiins;
mod luxos;
mod vnish;
mod whatsminer;
