//! `/api/v1/grid`: grid targets and prices set by hand or by the site's energy manager
//! (docs/grid.md). Writes need the operator token, like overrides; each accepted one is
//! journaled and logged, and the control loop obeys it from its next decision.
//!
//! - `PUT /api/v1/grid/target` `{"limit_kw": 800}` (site import at most 800 kW) or
//!   `{"shed_kw": 200}` (200 kW under the load when it starts), optional `"id"`
//!   (default `api`), `"duration_s"` (default: until withdrawn), `"start_in_s"`.
//! - `DELETE /api/v1/grid/target[?id=...]`: withdraws it (every API target without id).
//! - `PUT /api/v1/grid/price` `{"usd_per_mwh": 180}`, same options; `DELETE` likewise.
//! - `GET /api/v1/grid`: the signals in force and every event known.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tracing::{info, warn};

use super::{refused, HttpState};
use crate::grid::{GridEvent, GridSignal, GridSource};

/// Longest window one request may set: a week.
const MAX_DURATION_S: u64 = 7 * 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    limit_kw: Option<f64>,
    #[serde(default)]
    shed_kw: Option<f64>,
    #[serde(default)]
    duration_s: Option<u64>,
    #[serde(default)]
    start_in_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PriceBody {
    #[serde(default)]
    id: Option<String>,
    usd_per_mwh: f64,
    #[serde(default)]
    duration_s: Option<u64>,
    #[serde(default)]
    start_in_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct IdQuery {
    #[serde(default)]
    id: Option<String>,
}

fn bad(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", msg.into())).into_response()
}

/// `id` as given (letters, digits, `.`, `_`, `-`; at most 64), or `api`.
fn event_id(id: Option<&str>) -> Result<String, String> {
    let id = id.unwrap_or("api");
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "id `{id}`: 1 to 64 letters, digits, `.`, `_` or `-`"
        ));
    }
    Ok(id.to_owned())
}

/// The window of an event starting `start_in_s` from now, lasting `duration_s`.
fn window(
    s: &HttpState,
    start_in_s: Option<u64>,
    duration_s: Option<u64>,
) -> Result<(u64, Option<u64>), String> {
    for (name, v) in [("start_in_s", start_in_s), ("duration_s", duration_s)] {
        if v.is_some_and(|v| v > MAX_DURATION_S) {
            return Err(format!("{name} above {MAX_DURATION_S} s (a week)"));
        }
    }
    if duration_s == Some(0) {
        return Err("duration_s must be at least 1 s".to_owned());
    }
    let start = s
        .hub
        .last_now()
        .saturating_add(start_in_s.unwrap_or(0) * 1000);
    Ok((start, duration_s.map(|d| start.saturating_add(d * 1000))))
}

pub(super) async fn show(State(s): State<HttpState>) -> Response {
    match s.hub.status(None) {
        Some(st) => Json(st.grid).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "agent not started\n").into_response(),
    }
}

/// The operator's token checked and the body parsed, or the response that says why not.
// The error is the response itself, built once per refused request: boxing it would buy
// nothing on this path.
#[allow(clippy::result_large_err)]
fn authorized_body<T>(
    s: &HttpState,
    headers: &HeaderMap,
    what: &str,
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Response> {
    if let Some(r) = refused(s, headers, what) {
        return Err(r);
    }
    body.map(|Json(b)| b).map_err(|e| bad(format!("body: {e}")))
}

/// The API event a request asks for: its signal, id (or `default_id`) and window
/// checked.
fn api_event(
    s: &HttpState,
    signal: Result<GridSignal, String>,
    id: Option<&str>,
    default_id: &str,
    start_in_s: Option<u64>,
    duration_s: Option<u64>,
) -> Result<GridEvent, String> {
    let signal = signal?;
    let id = event_id(Some(id.unwrap_or(default_id)))?;
    let (start_ms, end_ms) = window(s, start_in_s, duration_s)?;
    Ok(GridEvent {
        source: GridSource::Api,
        id,
        signal,
        start_ms,
        end_ms,
    })
}

pub(super) async fn set_target(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<TargetBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let b = match authorized_body(&s, &headers, "grid targets", body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let signal = match (b.limit_kw, b.shed_kw) {
        (Some(l), None) if l.is_finite() && l > 0.0 => Ok(GridSignal::LimitKw(l)),
        (None, Some(x)) if x.is_finite() && x > 0.0 => Ok(GridSignal::ShedKw(x)),
        (Some(_), Some(_)) | (None, None) => {
            Err("give one of limit_kw (site import at most) or shed_kw (shed this much)".to_owned())
        }
        _ => Err("limit_kw / shed_kw must be a positive number of kW".to_owned()),
    };
    match api_event(
        &s,
        signal,
        b.id.as_deref(),
        "api",
        b.start_in_s,
        b.duration_s,
    ) {
        Ok(e) => accept(&s, e),
        Err(e) => bad(e),
    }
}

pub(super) async fn set_price(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<PriceBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let b = match authorized_body(&s, &headers, "grid prices", body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Negative prices exist (a surplus of wind): mining is then worth it all the more.
    let signal = if b.usd_per_mwh.is_finite() && b.usd_per_mwh.abs() <= 1e6 {
        Ok(GridSignal::PriceUsdPerMwh(b.usd_per_mwh))
    } else {
        Err("usd_per_mwh must be a number within +-1,000,000".to_owned())
    };
    match api_event(
        &s,
        signal,
        b.id.as_deref(),
        "api-price",
        b.start_in_s,
        b.duration_s,
    ) {
        Ok(e) => accept(&s, e),
        Err(e) => bad(e),
    }
}

fn accept(s: &HttpState, e: GridEvent) -> Response {
    info!(
        event = "grid.event.set",
        source = e.source.name(),
        id = %e.id,
        signal = ?e.signal,
        start_ms = e.start_ms,
        end_ms = ?e.end_ms,
        "grid event set through the API"
    );
    journal(s, "grid.event.set", &e);
    s.hub.grid.put(e.clone());
    Json(serde_json::json!({ "event": e })).into_response()
}

pub(super) async fn clear_target(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Query(q): Query<IdQuery>,
) -> Response {
    clear(&s, &headers, q.id.as_deref(), false)
}

pub(super) async fn clear_price(
    State(s): State<HttpState>,
    headers: HeaderMap,
    Query(q): Query<IdQuery>,
) -> Response {
    clear(&s, &headers, q.id.as_deref(), true)
}

/// Withdraws the API's targets (or prices): the one named, or all of them.
fn clear(s: &HttpState, headers: &HeaderMap, id: Option<&str>, price: bool) -> Response {
    if let Some(r) = refused(s, headers, "grid targets") {
        return r;
    }
    let gone: Vec<GridEvent> = s
        .hub
        .grid
        .events(GridSource::Api)
        .into_iter()
        .filter(|e| matches!(e.signal, GridSignal::PriceUsdPerMwh(_)) == price)
        .filter(|e| id.is_none_or(|i| i == e.id))
        .collect();
    for e in &gone {
        s.hub.grid.remove(GridSource::Api, &e.id);
        info!(event = "grid.event.cleared", source = "api", id = %e.id, "grid event withdrawn through the API");
        journal(s, "grid.event.cleared", e);
    }
    Json(serde_json::json!({ "cleared": gone.len() })).into_response()
}

/// One journal line per accepted change.
fn journal(s: &HttpState, event: &'static str, e: &GridEvent) {
    let Some(j) = &s.journal else {
        return;
    };
    let entry = serde_json::json!({
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "now_ms": s.hub.last_now(),
        "event": event,
        "grid_event": e,
        "by": "http",
    });
    let r = j
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .append(&entry);
    if let Err(err) = r {
        warn!(error = %err, "grid journal write failed");
    }
}
