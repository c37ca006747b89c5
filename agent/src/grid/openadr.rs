//! The OpenADR 3 VEN (`[grid.openadr]`, docs/grid.md "OpenADR 3"), built on the
//! `openleadr-client` crate.
//!
//! Every `poll_interval_s` it authenticates at the VTN (OAuth 2 client credentials, at the
//! token URL the VTN names in `GET /auth/server`, else `<vtn_url>/auth/token`), finds or
//! creates its VEN object by `ven_name`, lists the events it may see (of the programs
//! named in `programs`, or all), translates their intervals into [`GridEvent`]s and hands
//! them to the inbox with [`GridInbox::replace`](super::GridInbox::replace): an event the
//! VTN withdrew or ended disappears at the next good poll. While an event is in force it
//! reports the site's effective load to the VTN (kW) every `report_interval_s`.
//!
//! Failures (VTN down, 401, garbage, timeouts) are logged (`grid.openadr.error`, with the
//! VTN URL) and retried with a backoff; the events of the last good poll stay until their
//! own end, never extended. Times: the VTN speaks wall time, the inbox the agent's
//! timeline; the VEN takes them as the same (speed 1, as in production).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use openleadr_client::{Client, ClientCredentials, EventClient, Filter, VirtualEndNode};
use openleadr_wire::event::{EventPayloadDescriptor, EventRequest, EventType};
use openleadr_wire::interval::{Interval, IntervalPeriod};
use openleadr_wire::report::{ReportPayloadDescriptor, ReportResource, ReportType, ResourceName};
use openleadr_wire::values_map::{Value, ValueType, ValuesMap};
use openleadr_wire::ven::VenVenRequest;
use openleadr_wire::Unit;
use rackwarden_config::OpenAdr;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{GridEvent, GridInbox, GridSignal, GridSource};
use crate::control::Millis;

/// A `SIMPLE` event of level L sheds `L x 25 %` of the site's load at the interval's
/// start (level 1: 25 %, 2: 50 %, 3: 75 %, 4 and up: all of it); level 0 or below asks
/// nothing. What mining cannot give is reported as a shortfall, never taken from GPUs.
pub const SIMPLE_SHED_FRACTION_PER_LEVEL: f64 = 0.25;

/// One HTTP request to the VTN or its OAuth server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// One whole poll (paging included: a VTN that pages forever is cut here).
const CYCLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest wait between two tries while the VTN fails.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A duration longer than this is "until withdrawn" (OpenADR writes infinity `P9999Y`).
const INFINITE_MS: i64 = 100 * 365 * 86_400_000;

/// Starts the VEN; it runs until `cancel`.
pub fn start(cfg: OpenAdr, inbox: Arc<GridInbox>, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(run(cfg, inbox, cancel))
}

async fn run(cfg: OpenAdr, inbox: Arc<GridInbox>, cancel: CancellationToken) {
    info!(
        event = "grid.openadr.started",
        vtn_url = %cfg.vtn_url,
        ven_name = %cfg.ven_name,
        poll_interval_s = cfg.poll_interval_s,
        "OpenADR VEN polling {} every {} s",
        cfg.vtn_url,
        cfg.poll_interval_s
    );
    let mut ven = Ven::new(cfg, inbox);
    let mut failures: u32 = 0;
    loop {
        let result = tokio::select! {
            () = cancel.cancelled() => break,
            r = tokio::time::timeout(CYCLE_TIMEOUT, ven.cycle()) => r,
        };
        let poll = Duration::from_secs(ven.cfg.poll_interval_s);
        let wait = match result.unwrap_or_else(|_| {
            Err(format!(
                "VTN {}: no complete poll within {} s",
                ven.cfg.vtn_url,
                CYCLE_TIMEOUT.as_secs()
            ))
        }) {
            Ok(()) => {
                if failures > 0 {
                    info!(
                        event = "grid.openadr.recovered",
                        vtn_url = %ven.cfg.vtn_url,
                        failures,
                        "VTN {} answers again",
                        ven.cfg.vtn_url
                    );
                }
                failures = 0;
                poll
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                // A new session next time: a fresh token, the VEN object looked up again.
                ven.session = None;
                let wait = backoff(poll, failures);
                error!(
                    event = "grid.openadr.error",
                    vtn_url = %ven.cfg.vtn_url,
                    failures,
                    retry_in_s = wait.as_secs(),
                    "{e}; the events of the last good poll stay until their end"
                );
                wait
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    debug!(event = "grid.openadr.stopped", "OpenADR VEN stopped");
}

/// The wait after `failures` failed tries in a row: the poll interval, doubled with
/// each failure up to [`MAX_BACKOFF`] (never under the poll interval).
fn backoff(poll: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    poll.saturating_mul(1u32 << exp).min(MAX_BACKOFF).max(poll)
}

/// An authenticated session with the VTN.
struct Session {
    client: Client<VirtualEndNode>,
}

struct Ven {
    cfg: OpenAdr,
    inbox: Arc<GridInbox>,
    session: Option<Session>,
    /// `SIMPLE` sheds by grid event id: the kW fixed when first seen (the load falls as
    /// the site sheds; the amount must not follow it).
    simple_kw: HashMap<String, f64>,
    /// Per OpenADR event id: when its load was last reported (agent ms).
    reported: HashMap<String, Millis>,
}

fn wall_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Ven {
    fn new(cfg: OpenAdr, inbox: Arc<GridInbox>) -> Ven {
        Ven {
            cfg,
            inbox,
            session: None,
            simple_kw: HashMap::new(),
            reported: HashMap::new(),
        }
    }

    fn site_kw(&self) -> Option<f64> {
        self.inbox.site_load_kw()
    }

    /// Connects if needed, polls, hands the events over, reports. Errors name the VTN.
    async fn cycle(&mut self) -> Result<(), String> {
        let url = self.cfg.vtn_url.clone();
        if self.session.is_none() {
            self.session = Some(self.connect().await?);
        }
        let Some(session) = &self.session else {
            return Err(format!("VTN {url}: no session"));
        };
        let client = session.client.clone();
        let events = self.list_events(&client).await?;
        let now = wall_ms();
        let site_kw = self.site_kw();
        let mut grid = Vec::new();
        let mut active = Vec::new();
        let mut seen = HashSet::new();
        for ev in &events {
            let id = ev.id().to_string();
            let (mut got, warnings) = translate(
                &id,
                ev.created_date_time(),
                ev.content(),
                site_kw,
                &mut self.simple_kw,
            );
            for w in warnings {
                warn!(event = "grid.openadr.ignored", vtn_url = %url, openadr_event = %id, "{w}");
            }
            got.retain(|g| g.end_ms.is_none_or(|e| now < e));
            if got.iter().any(|g| g.live(now)) {
                active.push(ev.clone());
            }
            seen.extend(got.iter().map(|g| g.id.clone()));
            grid.extend(got);
        }
        self.simple_kw.retain(|k, _| seen.contains(k));
        debug!(
            event = "grid.openadr.polled",
            vtn_url = %url,
            events = events.len(),
            grid_events = grid.len(),
            "polled"
        );
        self.inbox.replace(GridSource::Openadr, grid);
        self.report(&active, now, site_kw).await;
        Ok(())
    }

    /// Reads the secret, finds the token URL, authenticates, finds or creates the VEN.
    async fn connect(&self) -> Result<Session, String> {
        let url = &self.cfg.vtn_url;
        let secret =
            read_secret(&self.cfg.client_secret_file).map_err(|e| format!("VTN {url}: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| format!("VTN {url}: cannot build an HTTP client: {e}"))?;
        let base: reqwest::Url = format!("{url}/")
            .parse()
            .map_err(|e| format!("VTN {url}: not a URL: {e}"))?;
        let token_url = token_url(&http, url).await?;
        let client = Client::<VirtualEndNode>::with_details(
            base,
            token_url.clone(),
            http,
            Some(ClientCredentials::new(self.cfg.client_id.clone(), secret)),
        );
        let ven = match client.get_ven_by_name(&self.cfg.ven_name).await {
            Ok(v) => v,
            Err(openleadr_client::Error::ObjectNotFound) => client
                .create_ven(VenVenRequest {
                    ven_name: self.cfg.ven_name.clone(),
                    attributes: None,
                })
                .await
                .map_err(|e| {
                    format!(
                        "VTN {url}: cannot create the VEN `{}`: {}",
                        self.cfg.ven_name,
                        describe(&e)
                    )
                })?,
            Err(e) => {
                return Err(format!(
                    "VTN {url}: cannot look up the VEN `{}` (token from {token_url}): {}",
                    self.cfg.ven_name,
                    describe(&e)
                ))
            }
        };
        info!(
            event = "grid.openadr.connected",
            vtn_url = %url,
            ven_name = %self.cfg.ven_name,
            ven_id = %ven.id(),
            "enrolled at VTN {url} as VEN `{}` ({})",
            self.cfg.ven_name,
            ven.id()
        );
        Ok(Session { client })
    }

    /// The events of the configured programs (all the VEN sees when none is named).
    async fn list_events(
        &self,
        client: &Client<VirtualEndNode>,
    ) -> Result<Vec<EventClient<VirtualEndNode>>, String> {
        let url = &self.cfg.vtn_url;
        let err = |what: &str, e: openleadr_client::Error| {
            format!("VTN {url}: cannot list {what}: {}", describe(&e))
        };
        if self.cfg.programs.is_empty() {
            return client
                .get_event_list(None, Filter::none())
                .await
                .map_err(|e| err("events", e));
        }
        let programs = client
            .get_program_list(Filter::none())
            .await
            .map_err(|e| err("programs", e))?;
        let mut out = Vec::new();
        for name in &self.cfg.programs {
            let Some(p) = programs.iter().find(|p| &p.content().program_name == name) else {
                debug!(event = "grid.openadr.no_program", vtn_url = %url, program = %name, "program not listed");
                continue;
            };
            out.extend(
                client
                    .get_event_list(Some(p.id()), Filter::none())
                    .await
                    .map_err(|e| err("events", e))?,
            );
        }
        Ok(out)
    }

    /// The site's load to each event in force, every `report_interval_s` (the first at
    /// once). A failed report is logged and tried again at the next poll; the events
    /// stand.
    async fn report(
        &mut self,
        active: &[EventClient<VirtualEndNode>],
        now: Millis,
        site_kw: Option<f64>,
    ) {
        let ids: HashSet<String> = active.iter().map(|e| e.id().to_string()).collect();
        self.reported.retain(|k, _| ids.contains(k));
        let Some(kw) = site_kw else {
            return;
        };
        let every = self.cfg.report_interval_s.saturating_mul(1000);
        for ev in active {
            let id = ev.id().to_string();
            if self
                .reported
                .get(&id)
                .is_some_and(|&t| now < t.saturating_add(every))
            {
                continue;
            }
            let req = load_report(ev, &self.cfg.ven_name, kw, self.cfg.report_interval_s);
            match ev.create_report(req).await {
                Ok(r) => {
                    self.reported.insert(id.clone(), now);
                    info!(
                        event = "grid.openadr.reported",
                        vtn_url = %self.cfg.vtn_url,
                        openadr_event = %id,
                        report = %r.id(),
                        load_kw = kw,
                        "reported the site's load to VTN {}",
                        self.cfg.vtn_url
                    );
                }
                Err(e) => error!(
                    event = "grid.openadr.error",
                    vtn_url = %self.cfg.vtn_url,
                    openadr_event = %id,
                    "VTN {}: cannot report the load for event {id}: {}; tried again at the next poll",
                    self.cfg.vtn_url,
                    describe(&e)
                ),
            }
        }
    }
}

/// The client's errors, with the VTN's own words for problems it answered.
fn describe(e: &openleadr_client::Error) -> String {
    match e {
        openleadr_client::Error::Problem(p) => format!(
            "HTTP {} {}{}",
            p.status.as_u16(),
            p.title.as_deref().unwrap_or(""),
            p.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

fn read_secret(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Ok(_) => Err(format!(
            "the client secret file {} is empty",
            path.display()
        )),
        Err(e) => Err(format!(
            "cannot read the client secret file {}: {e}",
            path.display()
        )),
    }
}

/// The OAuth token URL: what the VTN names at `GET <vtn_url>/auth/server` (OpenADR 3),
/// else `<vtn_url>/auth/token` when it has no such endpoint (404).
async fn token_url(http: &reqwest::Client, vtn_url: &str) -> Result<reqwest::Url, String> {
    let at = format!("{vtn_url}/auth/server");
    let res = http
        .get(&at)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("VTN {vtn_url}: GET {at}: {}", error_chain(&e)))?;
    let status = res.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return format!("{vtn_url}/auth/token")
            .parse()
            .map_err(|e| format!("VTN {vtn_url}: {e}"));
    }
    if !status.is_success() {
        return Err(format!("VTN {vtn_url}: GET {at}: HTTP {status}"));
    }
    let info: openleadr_wire::oauth::AuthServerInfo = res
        .json()
        .await
        .map_err(|e| format!("VTN {vtn_url}: GET {at}: not an auth server document: {e}"))?;
    Ok(info.token_url)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A report of the site's load for `ev`: the payload type it asks for (USAGE, READING or
/// DEMAND in its report descriptors), else USAGE; kW, one interval starting now.
fn load_report(
    ev: &EventClient<VirtualEndNode>,
    ven_name: &str,
    kw: f64,
    interval_s: u64,
) -> openleadr_wire::report::ReportRequest {
    let asked = ev.content().report_descriptors.as_ref().and_then(|ds| {
        ds.iter().find_map(|d| match d.payload_type {
            ReportType::Usage | ReportType::Reading | ReportType::Demand => {
                Some(d.payload_type.clone())
            }
            _ => None,
        })
    });
    let kind = asked.unwrap_or(ReportType::Usage);
    let name = match &kind {
        ReportType::Reading => "READING",
        ReportType::Demand => "DEMAND",
        _ => "USAGE",
    };
    let mut desc = ReportPayloadDescriptor::new(kind);
    desc.units = Some(Unit::KW);
    let start = Utc::now();
    let period = IntervalPeriod {
        start,
        duration: serde_json::from_value(serde_json::Value::String(format!("PT{interval_s}S")))
            .ok(),
        randomize_start: None,
    };
    // Named by its start: some VTNs (openleadr-vtn before 0.2.8) want report names unique.
    let report_name = format!(
        "{ven_name} site load {}",
        start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    ev.new_report(ven_name.to_owned())
        .with_name(&report_name)
        .with_payload_descriptors(vec![desc])
        .with_resources(vec![ReportResource {
            resource_name: ResourceName::AggregatedReport,
            interval_period: Some(period),
            intervals: vec![Interval::new(
                0,
                vec![ValuesMap {
                    value_type: ValueType(name.to_owned()),
                    values: vec![Value::Number((kw * 1000.0).round() / 1000.0)],
                }],
            )],
        }])
}

fn to_ms(t: DateTime<Utc>) -> Millis {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

/// The window of each interval of an event, agent ms: its own period, else the event's
/// (intervals then follow one another, each of the event's duration). `None` end: until
/// withdrawn. Starts at or before year 1 ("now" in OpenADR) take the event's creation.
fn windows(
    created: DateTime<Utc>,
    content: &EventRequest,
    warnings: &mut Vec<String>,
) -> Vec<Option<(Millis, Option<Millis>)>> {
    let Some(intervals) = &content.intervals else {
        return Vec::new();
    };
    let span = |p: &IntervalPeriod, k: i64| -> Option<(Millis, Option<Millis>)> {
        let start = if p.start.timestamp() <= 0 {
            created
        } else {
            p.start
        };
        let dur = p
            .duration
            .as_ref()
            .map(|d| d.to_chrono_at_datetime(start).num_milliseconds());
        match dur {
            Some(d) if d <= 0 => None,
            Some(d) if d >= INFINITE_MS => (k == 0).then(|| (to_ms(start), None)),
            Some(d) => {
                let s = to_ms(start).saturating_add(u64::try_from(d.saturating_mul(k)).ok()?);
                Some((s, Some(s.saturating_add(u64::try_from(d).ok()?))))
            }
            None => Some((to_ms(start), None)),
        }
    };
    intervals
        .iter()
        .enumerate()
        .map(|(k, iv)| {
            let w = match (&iv.interval_period, &content.interval_period) {
                (Some(p), _) => span(p, 0),
                (None, Some(p)) => span(p, i64::try_from(k).unwrap_or(i64::MAX)),
                (None, None) => None,
            };
            if w.is_none() {
                warnings.push(format!(
                    "interval {} has no usable period (start and positive duration)",
                    iv.id
                ));
            }
            w
        })
        .collect()
}

/// The descriptor of `kind` in the event, if any.
fn descriptor<'a>(
    content: &'a EventRequest,
    kind: &EventType,
) -> Option<&'a EventPayloadDescriptor> {
    content
        .payload_descriptors
        .as_ref()?
        .iter()
        .find(|d| &d.payload_type == kind)
}

/// kW per unit of an IMPORT_CAPACITY_LIMIT value: kW unless the descriptor says W or MW.
fn power_factor(units: Option<&Unit>) -> Result<f64, String> {
    match units {
        None | Some(Unit::KW) => Ok(1.0),
        Some(Unit::Private(u)) => match u.to_ascii_uppercase().as_str() {
            "W" | "WATTS" => Ok(0.001),
            "KW" | "KILOWATTS" => Ok(1.0),
            "MW" | "MEGAWATTS" => Ok(1000.0),
            _ => Err(format!("units `{u}` are not power (W, KW, MW)")),
        },
        Some(other) => Err(format!("units {other:?} are not power (W, KW, MW)")),
    }
}

/// USD/MWh per unit of a PRICE value: per kWh unless the descriptor says per MWh or Wh;
/// a currency other than USD is refused (no exchange rates here).
fn price_factor(d: Option<&EventPayloadDescriptor>) -> Result<f64, String> {
    if let Some(c) = d.and_then(|d| d.currency.as_ref()) {
        if c.code() != "USD" {
            return Err(format!("price in {}: only USD is handled", c.code()));
        }
    }
    match d.and_then(|d| d.units.as_ref()) {
        None | Some(Unit::KWH) => Ok(1000.0),
        Some(Unit::Private(u)) => match u.to_ascii_uppercase().as_str() {
            "MWH" => Ok(1.0),
            "WH" => Ok(1_000_000.0),
            "KWH" => Ok(1000.0),
            _ => Err(format!("price units `{u}` are not energy (WH, KWH, MWH)")),
        },
        Some(other) => Err(format!(
            "price units {other:?} are not energy (WH, KWH, MWH)"
        )),
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) if n.is_finite() => Some(*n),
        // Levels, kW and prices as integers: exact in f64 far past any real value.
        Value::Integer(i) => i32::try_from(*i).ok().map(f64::from),
        _ => None,
    }
}

/// One OpenADR event as grid events, with what was ignored and why. `site_kw` sizes the
/// `SIMPLE` sheds not seen before (`simple_kw` keeps those already sized).
pub(crate) fn translate(
    id: &str,
    created: DateTime<Utc>,
    content: &EventRequest,
    site_kw: Option<f64>,
    simple_kw: &mut HashMap<String, f64>,
) -> (Vec<GridEvent>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut out = Vec::new();
    let windows = windows(created, content, &mut warnings);
    let Some(intervals) = &content.intervals else {
        return (out, warnings);
    };
    let limit_units = power_factor(
        descriptor(content, &EventType::ImportCapacityLimit).and_then(|d| d.units.as_ref()),
    );
    let price_units = price_factor(descriptor(content, &EventType::Price));
    for (iv, w) in intervals.iter().zip(windows) {
        let Some((start_ms, end_ms)) = w else {
            continue;
        };
        let mut push = |kind: &str, signal: GridSignal| {
            out.push(GridEvent {
                source: GridSource::Openadr,
                id: format!("{id}/{}/{kind}", iv.id),
                signal,
                start_ms,
                end_ms,
            });
        };
        for p in &iv.payloads {
            let v = number(p.values.first());
            match (&p.value_type, v) {
                (EventType::ImportCapacityLimit, Some(x)) => match &limit_units {
                    Ok(f) if x * f >= 0.0 => push("limit", GridSignal::LimitKw(x * f)),
                    Ok(_) => warnings.push(format!("interval {}: negative limit {x}", iv.id)),
                    Err(e) => {
                        warnings.push(format!("interval {}: IMPORT_CAPACITY_LIMIT {e}", iv.id))
                    }
                },
                (EventType::Price, Some(x)) => match &price_units {
                    Ok(f) => push("price", GridSignal::PriceUsdPerMwh(x * f)),
                    Err(e) => warnings.push(format!("interval {}: PRICE {e}", iv.id)),
                },
                (EventType::Simple, Some(level)) => {
                    if level <= 0.0 {
                        continue;
                    }
                    let key = format!("{id}/{}/simple", iv.id);
                    let kw = match (simple_kw.get(&key), site_kw) {
                        (Some(&kw), _) => kw,
                        (None, Some(site)) => {
                            let f = (level.floor() * SIMPLE_SHED_FRACTION_PER_LEVEL).min(1.0);
                            let kw = site.max(0.0) * f;
                            simple_kw.insert(key, kw);
                            kw
                        }
                        (None, None) => {
                            warnings.push(format!(
                                "interval {}: SIMPLE level {level} waits for the site's load to be known",
                                iv.id
                            ));
                            continue;
                        }
                    };
                    push("simple", GridSignal::ShedKw(kw));
                }
                (EventType::ImportCapacityLimit | EventType::Price | EventType::Simple, None) => {
                    warnings.push(format!(
                        "interval {}: {:?} without a numeric value",
                        iv.id, p.value_type
                    ));
                }
                (other, _) => debug!(
                    event = "grid.openadr.unhandled",
                    openadr_event = %id,
                    "payload type {other:?} is not acted on"
                ),
            }
        }
    }
    (out, warnings)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An event as the VTN (openleadr-vtn 0.2.8) lists it.
    fn event(json: &str) -> openleadr_wire::Event {
        serde_json::from_str(json).unwrap()
    }

    fn tr(
        ev: &openleadr_wire::Event,
        site_kw: Option<f64>,
        memo: &mut HashMap<String, f64>,
    ) -> (Vec<GridEvent>, Vec<String>) {
        translate(
            ev.id.as_str(),
            ev.created_date_time,
            &ev.content,
            site_kw,
            memo,
        )
    }

    const LIMIT_MW: &str = r#"{
        "id": "ev-1", "createdDateTime": "2026-12-05T04:00:00Z",
        "modificationDateTime": "2026-12-05T04:00:00Z", "objectType": "EVENT",
        "programID": "prog-1", "eventName": "peak", "priority": null, "targets": null,
        "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR",
            "payloadType": "IMPORT_CAPACITY_LIMIT", "units": "MW"}],
        "intervalPeriod": {"start": "2026-12-05T05:00:00Z", "duration": "PT15M"},
        "intervals": [
            {"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [1.5]}]},
            {"id": 1, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [2]}]}
        ]
    }"#;

    fn ms(s: &str) -> Millis {
        to_ms(s.parse::<DateTime<Utc>>().unwrap())
    }

    #[test]
    fn an_import_limit_in_mw_becomes_consecutive_kw_limits() {
        let (got, warnings) = tr(&event(LIMIT_MW), None, &mut HashMap::new());
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].signal, GridSignal::LimitKw(1500.0));
        assert_eq!(got[0].source, GridSource::Openadr);
        assert_eq!(got[0].id, "ev-1/0/limit");
        assert_eq!(got[0].start_ms, ms("2026-12-05T05:00:00Z"));
        assert_eq!(got[0].end_ms, Some(ms("2026-12-05T05:15:00Z")));
        assert_eq!(got[1].signal, GridSignal::LimitKw(2000.0));
        assert_eq!(got[1].start_ms, ms("2026-12-05T05:15:00Z"));
        assert_eq!(got[1].end_ms, Some(ms("2026-12-05T05:30:00Z")));
    }

    #[test]
    fn limits_in_w_and_without_units_and_own_periods() {
        let json = LIMIT_MW
            .replace(r#""units": "MW""#, r#""units": "W""#)
            .replace(
                r#"{"id": 1, "payloads""#,
                r#"{"id": 1, "intervalPeriod": {"start": "2026-12-05T07:00:00Z", "duration": "PT1H"}, "payloads""#,
            );
        let (got, _) = tr(&event(&json), None, &mut HashMap::new());
        let kw = |g: &GridEvent| match g.signal {
            GridSignal::LimitKw(kw) => kw,
            other => panic!("{other:?}"),
        };
        assert!((kw(&got[0]) - 0.0015).abs() < 1e-12, "{got:?}");
        assert!((kw(&got[1]) - 0.002).abs() < 1e-12, "{got:?}");
        assert_eq!(got[1].start_ms, ms("2026-12-05T07:00:00Z"));
        assert_eq!(got[1].end_ms, Some(ms("2026-12-05T08:00:00Z")));
        // No descriptor: kW.
        let mut v: serde_json::Value = serde_json::from_str(LIMIT_MW).unwrap();
        v.as_object_mut().unwrap().remove("payloadDescriptors");
        let (got, _) = tr(
            &serde_json::from_value(v).unwrap(),
            None,
            &mut HashMap::new(),
        );
        assert_eq!(got[0].signal, GridSignal::LimitKw(1.5));
        // Units that are no power: nothing, with a reason.
        let (got, warnings) = tr(
            &event(&LIMIT_MW.replace(r#""units": "MW""#, r#""units": "KWH""#)),
            None,
            &mut HashMap::new(),
        );
        assert!(got.is_empty());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("not power"), "{warnings:?}");
    }

    #[test]
    fn prices_per_kwh_become_usd_per_mwh_and_other_currencies_are_refused() {
        let json = r#"{
            "id": "ev-p", "createdDateTime": "2026-12-05T04:00:00Z",
            "modificationDateTime": "2026-12-05T04:00:00Z", "objectType": "EVENT",
            "programID": "prog-1", "priority": 3,
            "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                "payloadType": "PRICE", "units": "KWH", "currency": "USD"}],
            "intervalPeriod": {"start": "2026-12-05T05:00:00Z", "duration": "PT1H"},
            "intervals": [{"id": 7, "payloads": [{"type": "PRICE", "values": [0.35]}]}]
        }"#;
        let (got, w) = tr(&event(json), None, &mut HashMap::new());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(got.len(), 1);
        let GridSignal::PriceUsdPerMwh(p) = got[0].signal else {
            panic!("{got:?}");
        };
        assert!((p - 350.0).abs() < 1e-9, "{p}");
        assert_eq!(got[0].id, "ev-p/7/price");
        let (got, w) = tr(
            &event(&json.replace("USD", "EUR")),
            None,
            &mut HashMap::new(),
        );
        assert!(got.is_empty());
        assert!(w[0].contains("EUR"), "{w:?}");
    }

    #[test]
    fn simple_levels_shed_a_fixed_share_of_the_load_first_seen() {
        let json = r#"{
            "id": "ev-s", "createdDateTime": "2026-12-05T04:00:00Z",
            "modificationDateTime": "2026-12-05T04:00:00Z", "objectType": "EVENT",
            "programID": "prog-1",
            "intervalPeriod": {"start": "0001-01-01T00:00:00Z", "duration": "P9999Y"},
            "intervals": [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [2]}]}]
        }"#;
        let mut memo = HashMap::new();
        // The load is not known yet: nothing, said.
        let (got, w) = tr(&event(json), None, &mut memo);
        assert!(got.is_empty());
        assert_eq!(w.len(), 1);
        let (got, _) = tr(&event(json), Some(1000.0), &mut memo);
        assert_eq!(got[0].signal, GridSignal::ShedKw(500.0));
        // "now": the event's creation; P9999Y: until withdrawn.
        assert_eq!(got[0].start_ms, ms("2026-12-05T04:00:00Z"));
        assert_eq!(got[0].end_ms, None);
        // The load fell because of the shed: the amount stays.
        let (got, _) = tr(&event(json), Some(500.0), &mut memo);
        assert_eq!(got[0].signal, GridSignal::ShedKw(500.0));
        // Level 0: nothing asked; level 9: all of it.
        let (got, _) = tr(
            &event(&json.replace("[2]", "[0]")),
            Some(800.0),
            &mut HashMap::new(),
        );
        assert!(got.is_empty());
        let (got, _) = tr(
            &event(&json.replace("[2]", "[9]")),
            Some(800.0),
            &mut HashMap::new(),
        );
        assert_eq!(got[0].signal, GridSignal::ShedKw(800.0));
    }

    #[test]
    fn garbage_from_a_vtn_is_refused_by_the_wire_types() {
        for bad in [
            "[]",
            "{}",
            r#"{"id": "x"}"#,
            &LIMIT_MW.replace(r#""PT15M""#, r#""fifteen minutes""#),
        ] {
            assert!(
                serde_json::from_str::<openleadr_wire::Event>(bad).is_err(),
                "{bad}"
            );
        }
        // Intervals without any period: ignored, with a reason.
        let mut v: serde_json::Value = serde_json::from_str(LIMIT_MW).unwrap();
        v.as_object_mut().unwrap().remove("intervalPeriod");
        let (got, w) = tr(
            &serde_json::from_value(v).unwrap(),
            None,
            &mut HashMap::new(),
        );
        assert!(got.is_empty());
        assert_eq!(w.len(), 2, "{w:?}");
    }

    /// A fake VTN on loopback answering with `router`; its base URL.
    async fn fake_vtn(router: axum::Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(l, router).await.ok();
        });
        format!("http://{addr}")
    }

    fn ven_for(url: &str, dir: &std::path::Path) -> Ven {
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        Ven::new(
            OpenAdr {
                vtn_url: url.to_owned(),
                client_id: "site".to_owned(),
                client_secret_file: secret,
                ven_name: "site".to_owned(),
                programs: Vec::new(),
                poll_interval_s: 1,
                report_interval_s: 60,
            },
            Arc::default(),
        )
    }

    fn held(id: &str) -> GridEvent {
        GridEvent {
            source: GridSource::Openadr,
            id: id.to_owned(),
            signal: GridSignal::LimitKw(700.0),
            start_ms: 0,
            end_ms: Some(u64::MAX),
        }
    }

    #[tokio::test]
    async fn a_refused_token_and_garbage_are_errors_naming_the_vtn_and_keep_the_events() {
        use axum::http::StatusCode;
        use axum::routing::{get, post};
        let dir = std::env::temp_dir().join(format!("rw-openadr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        // 401 at the token endpoint (no /auth/server: the default token URL).
        let url = fake_vtn(axum::Router::new().route(
            "/auth/token",
            post(|| async {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({"error": "invalid_client"})),
                )
            }),
        ))
        .await;
        let mut ven = ven_for(&url, &dir);
        ven.inbox.replace(GridSource::Openadr, vec![held("kept")]);
        let e = ven.cycle().await.unwrap_err();
        assert!(e.contains(&url), "{e}");
        assert!(
            e.contains("invalid_client") || e.contains("uthentication"),
            "{e}"
        );
        assert_eq!(ven.inbox.events(GridSource::Openadr), vec![held("kept")]);

        // A token, then garbage where the VEN list should be.
        let url = fake_vtn(
            axum::Router::new()
                .route(
                    "/auth/server",
                    get(|| async { "<html>not an auth server</html>" }),
                )
                .route("/vens", get(|| async { "<html>oops</html>" })),
        )
        .await;
        let mut ven = ven_for(&url, &dir);
        let e = ven.cycle().await.unwrap_err();
        assert!(e.contains(&url) && e.contains("auth server"), "{e}");
        let url2 = fake_vtn(
            axum::Router::new()
                .route(
                    "/auth/token",
                    post(|| async {
                        axum::Json(serde_json::json!({
                            "access_token": "t", "token_type": "Bearer", "expires_in": 3600
                        }))
                    }),
                )
                .route("/vens", get(|| async { "<html>oops</html>" })),
        )
        .await;
        let mut ven = ven_for(&url2, &dir);
        ven.inbox.replace(GridSource::Openadr, vec![held("kept")]);
        let e = ven.cycle().await.unwrap_err();
        assert!(e.contains(&url2) && e.contains("VEN `site`"), "{e}");
        assert_eq!(ven.inbox.events(GridSource::Openadr).len(), 1);

        // Nothing listens: the connection error names the URL.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url3 = format!("http://127.0.0.1:{port}");
        let e = ven_for(&url3, &dir).cycle().await.unwrap_err();
        assert!(e.contains(&url3), "{e}");

        // A secret file that is gone: named.
        let mut ven = ven_for(&url3, &dir);
        std::fs::remove_file(dir.join("secret")).unwrap();
        let e = ven.cycle().await.unwrap_err();
        assert!(e.contains("secret"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn backoff_doubles_from_the_poll_interval_up_to_five_minutes() {
        let p = Duration::from_secs(10);
        assert_eq!(backoff(p, 1), p);
        assert_eq!(backoff(p, 2), Duration::from_secs(20));
        assert_eq!(backoff(p, 4), Duration::from_secs(80));
        assert_eq!(backoff(p, 30), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_secs(600), 3),
            Duration::from_secs(600)
        );
    }
}
