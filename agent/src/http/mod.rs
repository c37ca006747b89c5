//! The operator surface over HTTP (axum): `/metrics`, `/healthz`, `/readyz`,
//! `/api/v1/status`, the live site page at `/`, and operator overrides.
//!
//! - `status.rs`: [`StatusHub`], what the control loop publishes for this layer.
//! - `history.rs`: the bounded past of the site, feeds and rows behind the page's charts
//!   and `/api/v1/history`.
//! - `page/`: the site page (plain HTML/CSS/JS compiled into the binary, no build step).
//!
//! Overrides (`PUT`/`DELETE /api/v1/overrides/{miner|rack|unit}/{id}`) need
//! `Authorization: Bearer <token>` with the token of `agent.http_token_file`; without a
//! token file they are off (403). Tokens are compared in constant time (over their
//! SHA-256, so the length leaks nothing either). Accepted overrides are journaled,
//! raised as alerts and written (atomically) to `overrides.json` next to the state file,
//! so a restart keeps them; the loop applies them from its next tick.

mod grid;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalogue::AlertKind;
use crate::control::{Alert, Severity};
use crate::runtime::persist::{self, Journal};
use crate::status::{self, history, OverrideKind, OverrideSet, StatusHub};

/// Errors of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the override token file {path}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("override token file {path} is empty")]
    TokenEmpty { path: PathBuf },
    #[error("cannot open the journal for overrides")]
    Journal(#[source] crate::runtime::persist::PersistError),
    #[error("http server failed")]
    Serve(#[source] std::io::Error),
}

/// The override token, kept as its digest only.
#[derive(Clone)]
pub struct Token([u8; 32]);

/// Never printed: only that it is set.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn new(secret: &str) -> Token {
        Token(Sha256::digest(secret.trim().as_bytes()).into())
    }

    /// Reads the token from a file (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Token, HttpError> {
        let s = std::fs::read_to_string(path).map_err(|source| HttpError::TokenFile {
            path: path.to_path_buf(),
            source,
        })?;
        if s.trim().is_empty() {
            return Err(HttpError::TokenEmpty {
                path: path.to_path_buf(),
            });
        }
        Ok(Token::new(&s))
    }

    fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        d.ct_eq(&self.0).into()
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub hub: Arc<StatusHub>,
    /// `None`: overrides are off.
    pub token: Option<Token>,
    /// Accepted overrides are journaled here.
    pub journal: Option<Arc<Mutex<Journal>>>,
    /// The overrides in force are kept here across restarts.
    pub overrides_file: Option<PathBuf>,
}

impl HttpState {
    /// State for a site: token from `agent.http_token_file` (resolved against `base`),
    /// overrides journaled to `journal_file`.
    /// Overrides left by a previous run are read from `overrides_file` into the hub.
    pub fn new(
        hub: Arc<StatusHub>,
        token_file: Option<&Path>,
        journal_file: &Path,
        overrides_file: &Path,
    ) -> Result<HttpState, HttpError> {
        let token = token_file.map(Token::from_file).transpose()?;
        match persist::read::<OverrideSet>(overrides_file) {
            Ok(Some(set)) => {
                info!(
                    event = "override.resumed",
                    file = %overrides_file.display(),
                    miners = set.miners.len(),
                    racks = set.racks.len(),
                    units = set.units.len(),
                    "operator overrides resumed"
                );
                hub.load_overrides(set);
            }
            Ok(None) => {}
            // Unreadable overrides must not stop the agent guarding the site; they are
            // named in the log and the file is left for the operator.
            Err(e) => warn!(error = %e, "operator overrides not resumed"),
        }
        let journal = if token.is_some() {
            Some(Arc::new(Mutex::new(
                Journal::open(journal_file).map_err(HttpError::Journal)?,
            )))
        } else {
            None
        };
        Ok(HttpState {
            hub,
            token,
            journal,
            overrides_file: Some(overrides_file.to_path_buf()),
        })
    }
}

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_CSS: &str = include_str!("page/page.css");
const PAGE_JS: &str = include_str!("page/page.js");
/// uPlot 1.6.32 (MIT, vendor/uplot/LICENSE), as published on the npm registry.
const UPLOT_JS: &str = include_str!("page/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("page/vendor/uplot/uPlot.min.css");

/// Every route.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/page.css", get(page_css))
        .route("/page.js", get(page_js))
        .route("/vendor/uplot/uPlot.iife.min.js", get(uplot_js))
        .route("/vendor/uplot/uPlot.min.css", get(uplot_css))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status_doc))
        .route("/api/v1/overrides", get(list_overrides))
        .route("/api/v1/energy", get(energy_doc))
        .route("/api/v1/history", get(history_doc))
        .route(
            "/api/v1/overrides/{kind}/{id}",
            put(set_override).delete(clear_override),
        )
        .route("/api/v1/grid", get(grid::show))
        .route(
            "/api/v1/grid/target",
            put(grid::set_target).delete(grid::clear_target),
        )
        .route(
            "/api/v1/grid/price",
            put(grid::set_price).delete(grid::clear_price),
        )
        .with_state(state)
}

/// Binds `addr` (before anything else starts, so a taken port fails the start).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    cancel: CancellationToken,
) -> Result<(), HttpError> {
    if let Ok(addr) = listener.local_addr() {
        info!(event = "http.listening", addr = %addr, overrides = state.token.is_some(), "http listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(HttpError::Serve)
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn page_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        PAGE_CSS,
    )
}

async fn uplot_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        UPLOT_JS,
    )
}

async fn uplot_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        UPLOT_CSS,
    )
}

async fn page_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        PAGE_JS,
    )
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let hub = s.hub.clone();
    // sysinfo reads /proc: keep it off the async workers.
    let text = tokio::task::spawn_blocking(move || {
        hub.metrics.refresh_host();
        hub.metrics.encode()
    })
    .await
    .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn healthz() -> impl IntoResponse {
    "ok\n"
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let r = s.hub.readiness();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

#[derive(serde::Deserialize)]
struct StatusQuery {
    at_ms: Option<u64>,
    /// Every miner's learned shed and restore times (off by default: tens of thousands
    /// of rows on a large site, and the page does not need them).
    #[serde(default)]
    miners: bool,
}

async fn status_doc(State(s): State<HttpState>, Query(q): Query<StatusQuery>) -> Response {
    match s.hub.status_with(q.at_ms, q.miners) {
        Some(st) => Json(st).into_response(),
        None if q.at_ms.is_some() => {
            (StatusCode::NOT_FOUND, "no such frame (too old)\n").into_response()
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "agent not started\n").into_response(),
    }
}

/// `/api/v1/energy?tenant=ID&from=DATE&to=DATE&by=hour|day|month`: what `rackwarden
/// energy --json` prints (docs/energy.md). Default: every account, by day, the last 31
/// days.
#[derive(Debug, serde::Deserialize)]
struct EnergyQuery {
    tenant: Option<String>,
    from: Option<String>,
    to: Option<String>,
    by: Option<crate::energy::report::By>,
}

#[derive(Debug, serde::Deserialize)]
struct HistoryQuery {
    /// Minutes back from the last sample (default 60, at most the span kept).
    minutes: Option<u64>,
    /// Last sample's site time to include (ms since the epoch); default the latest.
    to_ms: Option<u64>,
}

/// `/api/v1/history?minutes=60[&to_ms=T]`: the charts' columns.
async fn history_doc(State(s): State<HttpState>, Query(q): Query<HistoryQuery>) -> Response {
    let minutes = q.minutes.unwrap_or(60);
    let span_ms = minutes.saturating_mul(60_000);
    if minutes == 0 || span_ms > history::SPAN_MS {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "minutes must be 1 to {} (the history kept)\n",
                history::SPAN_MS / 60_000
            ),
        )
            .into_response();
    }
    Json(s.hub.history(span_ms, q.to_ms)).into_response()
}

async fn energy_doc(State(s): State<HttpState>, Query(q): Query<EnergyQuery>) -> Response {
    use crate::energy::report;
    let Some((path, site)) = s.hub.energy_db() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "energy accounting is off (no database: see the agent's log)\n",
        )
            .into_response();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let time = |v: &Option<String>, default: u64| -> Result<u64, String> {
        v.as_deref().map_or(Ok(default), report::parse_time)
    };
    let span = match (
        time(&q.from, now.saturating_sub(31 * 86_400_000)),
        time(&q.to, now + crate::energy::meter::SLOT_MS),
    ) {
        (Ok(f), Ok(t)) if f < t => (f, t),
        (Err(e), _) | (_, Err(e)) => {
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        _ => return (StatusCode::BAD_REQUEST, "`to` is not after `from`\n").into_response(),
    };
    let query = report::Query {
        account: q.tenant,
        from: span.0,
        to: span.1,
        by: q.by.unwrap_or(report::By::Day),
    };
    let rows = tokio::task::spawn_blocking(move || {
        let store = crate::energy::store::Store::open_read_only(&path)
            .map_err(report::ReportError::from)?;
        report::report(&store, &site, &query)
    })
    .await;
    match rows {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(e @ report::ReportError::NoAccount(..))) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn list_overrides(State(s): State<HttpState>) -> Response {
    Json(s.hub.override_set()).into_response()
}

async fn set_override(
    State(s): State<HttpState>,
    headers: HeaderMap,
    UrlPath((kind, id)): UrlPath<(String, String)>,
) -> Response {
    change_override(&s, &headers, &kind, &id, true)
}

async fn clear_override(
    State(s): State<HttpState>,
    headers: HeaderMap,
    UrlPath((kind, id)): UrlPath<(String, String)>,
) -> Response {
    change_override(&s, &headers, &kind, &id, false)
}

/// One line of the journal for an override.
#[derive(serde::Serialize)]
struct OverrideEntry<'a> {
    time: String,
    now_ms: u64,
    event: &'static str,
    kind: &'static str,
    device: &'a str,
    on: bool,
    by: &'static str,
}

/// The operator token check of every write: None when the request may go on, else the
/// refusal (`what` names the writes in the log and the 403).
fn refused(s: &HttpState, headers: &HeaderMap, what: &str) -> Option<Response> {
    let Some(token) = &s.token else {
        return Some(
            (
                StatusCode::FORBIDDEN,
                format!("{what} are off: set agent.http_token_file\n"),
            )
                .into_response(),
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let why = match presented {
        None => "no bearer token",
        Some(p) if !token.matches(p.trim()) => "wrong token",
        Some(_) => return None,
    };
    warn!(
        event = "override.refused",
        why, what, "{what}: request refused"
    );
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            if why == "wrong token" {
                "wrong token\n"
            } else {
                "bearer token required\n"
            },
        )
            .into_response(),
    )
}

fn change_override(s: &HttpState, headers: &HeaderMap, kind: &str, id: &str, on: bool) -> Response {
    if let Some(r) = refused(s, headers, "overrides") {
        return r;
    }
    let Some(kind) = OverrideKind::parse(kind) else {
        return (StatusCode::NOT_FOUND, "kind is one of miner, rack, unit\n").into_response();
    };
    let Some(site) = s.hub.site() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "agent not started\n").into_response();
    };
    if on && !status::override_target_exists(&site, kind, id) {
        return (
            StatusCode::NOT_FOUND,
            format!("no {} named {id} on this site\n", kind.name()),
        )
            .into_response();
    }
    let changed = s.hub.set_override(kind, id, on);
    if changed {
        if let Some(f) = &s.overrides_file {
            if let Err(e) = persist::write_atomic(f, &s.hub.override_set()) {
                warn!(error = %e, "operator overrides not persisted: they end with the process");
            }
        }
        let now = s.hub.last_now();
        let what = match (kind, on) {
            (OverrideKind::Unit, true) => "put in maintenance (unavailable for N+1)",
            (OverrideKind::Unit, false) => "back from maintenance",
            (_, true) => "held curtailed",
            (_, false) => "released to the controller",
        };
        let mut alert = Alert::new(
            if on {
                AlertKind::OperatorOverrideSet
            } else {
                AlertKind::OperatorOverrideCleared
            },
            if on {
                Severity::Warning
            } else {
                Severity::Info
            },
            format!("operator: {} {id} {what}", kind.name()),
        );
        match kind {
            OverrideKind::Unit => alert.device = Some(id.to_owned()),
            OverrideKind::Rack => alert.node = Some(id.to_owned()),
            OverrideKind::Miner => alert.device = Some(id.to_owned()),
        }
        s.hub.raise(now, &alert);
        if let Some(j) = &s.journal {
            let entry = OverrideEntry {
                time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                now_ms: now,
                event: if on {
                    "override.set"
                } else {
                    "override.cleared"
                },
                kind: kind.name(),
                device: id,
                on,
                by: "http",
            };
            let r = j
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .append(&entry);
            if let Err(e) = r {
                warn!(error = %e, "override journal write failed");
            }
        }
    }
    Json(serde_json::json!({
        "changed": changed,
        "overrides": s.hub.override_set(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests;
