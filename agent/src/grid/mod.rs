//! Grid signals from outside the site (docs/grid.md): demand-response limits and the
//! power price, from the HTTP API (`PUT /api/v1/grid/target`, `/api/v1/grid/price`) and
//! an OpenADR 3 VTN (`openadr.rs`).
//!
//! Every source hands its events to the [`GridInbox`]; each decision asks it for the
//! signals in force ([`GridInbox::resolve`]): the strictest limit of every source, the
//! latest price. The control core (`control/decide/grid.rs`) acts on them with the
//! ordinary levers. Times are on the agent's timeline (Unix milliseconds at speed 1).

pub mod openadr;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::control::snapshot::GridInput;
use crate::control::Millis;

/// Who sent a grid event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GridSource {
    /// `PUT /api/v1/grid/...` with the operator token.
    Api,
    /// An event of an OpenADR 3 VTN.
    Openadr,
}

impl GridSource {
    pub fn name(self) -> &'static str {
        match self {
            GridSource::Api => "api",
            GridSource::Openadr => "openadr",
        }
    }
}

/// What a grid event asks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GridSignal {
    /// Site import at most this, kW.
    LimitKw(f64),
    /// Shed this much from the site's load as it was when the event started, kW.
    ShedKw(f64),
    /// The power price, USD per MWh.
    PriceUsdPerMwh(f64),
}

/// One event: a signal over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridEvent {
    pub source: GridSource,
    /// Unique per source (an OpenADR event id, or the API caller's).
    pub id: String,
    pub signal: GridSignal,
    pub start_ms: Millis,
    /// None: until withdrawn.
    pub end_ms: Option<Millis>,
}

impl GridEvent {
    fn live(&self, now: Millis) -> bool {
        self.start_ms <= now && self.end_ms.is_none_or(|e| now < e)
    }

    fn key(&self) -> (GridSource, String) {
        (self.source, self.id.clone())
    }
}

/// The grid signals in force, as the status document shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GridView {
    /// The strictest limit in force, kW.
    pub limit_kw: Option<f64>,
    /// The event it comes from.
    pub limit_event: Option<GridEvent>,
    pub price_usd_per_mwh: Option<f64>,
    pub price_event: Option<GridEvent>,
    /// Every event known, live or to come.
    pub events: Vec<GridEvent>,
}

#[derive(Debug, Default)]
struct Inner {
    events: Vec<GridEvent>,
    /// Per `ShedKw` event: the site load it started from, kW.
    baselines: HashMap<(GridSource, String), f64>,
    /// The site's load as the last decision saw it (`eff_kw` of the site node), kW.
    site_kw: Option<f64>,
}

/// Where grid events wait for the decisions (shared by the HTTP layer, the VEN and the
/// control loop).
#[derive(Debug, Default)]
pub struct GridInbox {
    inner: Mutex<Inner>,
    /// Raised by every change: the control loop decides at once (a new limit is obeyed
    /// within milliseconds, not at the next tick).
    pub changed: tokio::sync::Notify,
}

/// Events a source may hold at once (a VTN listing thousands is cut, with a warning).
pub const MAX_EVENTS_PER_SOURCE: usize = 256;

impl GridInbox {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The control loop leaves the site's load here after each decision (to 0.1 kW, as
    /// `/api/v1/status` shows it), for the VEN's reports.
    pub fn set_site_load(&self, kw: Option<f64>) {
        self.lock().site_kw = kw.map(|k| (k * 10.0).round() / 10.0);
    }

    /// The site's load as the last decision saw it, kW.
    pub fn site_load_kw(&self) -> Option<f64> {
        self.lock().site_kw
    }

    /// Adds or replaces (same source and id) one event.
    pub fn put(&self, event: GridEvent) {
        let mut g = self.lock();
        g.baselines.remove(&event.key());
        g.events.retain(|e| e.key() != event.key());
        g.events.push(event);
        drop(g);
        self.changed.notify_one();
    }

    /// Withdraws one event; returns whether it was there.
    pub fn remove(&self, source: GridSource, id: &str) -> bool {
        let mut g = self.lock();
        let before = g.events.len();
        g.events.retain(|e| !(e.source == source && e.id == id));
        g.baselines.remove(&(source, id.to_owned()));
        let gone = g.events.len() != before;
        drop(g);
        if gone {
            self.changed.notify_one();
        }
        gone
    }

    /// Replaces every event of `source` (a VTN poll lists them all); baselines of events
    /// kept are kept.
    pub fn replace(&self, source: GridSource, mut events: Vec<GridEvent>) {
        events.truncate(MAX_EVENTS_PER_SOURCE);
        let mut g = self.lock();
        let before_len = g.events.len();
        g.events.retain(|e| e.source != source);
        let keep: Vec<(GridSource, String)> = events.iter().map(GridEvent::key).collect();
        g.baselines.retain(|k, _| k.0 != source || keep.contains(k));
        let changed = g.events.len() != before_len || !events.is_empty();
        g.events.extend(events);
        drop(g);
        if changed {
            self.changed.notify_one();
        }
    }

    /// The events of one source.
    pub fn events(&self, source: GridSource) -> Vec<GridEvent> {
        self.lock()
            .events
            .iter()
            .filter(|e| e.source == source)
            .cloned()
            .collect()
    }

    /// The signals in force at `now` for a decision, with the site's load now (kW: the
    /// baseline of a `ShedKw` event that starts; None until it is known). Drops events
    /// that have ended.
    pub fn resolve(&self, now: Millis, site_kw: Option<f64>) -> (GridInput, GridView) {
        let mut g = self.lock();
        let Inner {
            events, baselines, ..
        } = &mut *g;
        events.retain(|e| e.end_ms.is_none_or(|end| now < end));
        baselines.retain(|k, _| events.iter().any(|e| &e.key() == k));
        let mut view = GridView {
            events: events.clone(),
            ..GridView::default()
        };
        for e in events.iter().filter(|e| e.live(now)) {
            match e.signal {
                GridSignal::LimitKw(kw) => take_limit(&mut view, kw, e),
                GridSignal::ShedKw(kw) => {
                    let base = match (baselines.get(&e.key()), site_kw) {
                        (Some(&b), _) => b,
                        (None, Some(s)) => {
                            baselines.insert(e.key(), s);
                            s
                        }
                        (None, None) => continue,
                    };
                    take_limit(&mut view, (base - kw).max(0.0), e);
                }
                GridSignal::PriceUsdPerMwh(p) => {
                    // The latest-starting price event in force wins.
                    if view
                        .price_event
                        .as_ref()
                        .is_none_or(|old| e.start_ms >= old.start_ms)
                    {
                        view.price_usd_per_mwh = Some(p);
                        view.price_event = Some(e.clone());
                    }
                }
            }
        }
        let input = GridInput {
            limit_kw: view.limit_kw,
            limit_from: view
                .limit_event
                .as_ref()
                .map(|e| format!("{}:{}", e.source.name(), e.id))
                .unwrap_or_default(),
            price_usd_per_mwh: view.price_usd_per_mwh,
        };
        (input, view)
    }
}

/// The strictest limit wins.
fn take_limit(view: &mut GridView, kw: f64, e: &GridEvent) {
    if view.limit_kw.is_none_or(|old| kw < old) {
        view.limit_kw = Some(kw);
        view.limit_event = Some(e.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        source: GridSource,
        id: &str,
        signal: GridSignal,
        start: u64,
        end: Option<u64>,
    ) -> GridEvent {
        GridEvent {
            source,
            id: id.to_owned(),
            signal,
            start_ms: start,
            end_ms: end,
        }
    }

    #[test]
    fn the_strictest_limit_in_force_wins_and_ended_events_go() {
        let inbox = GridInbox::default();
        inbox.put(ev(
            GridSource::Api,
            "a",
            GridSignal::LimitKw(900.0),
            0,
            Some(10_000),
        ));
        inbox.put(ev(
            GridSource::Openadr,
            "b",
            GridSignal::LimitKw(700.0),
            5_000,
            Some(20_000),
        ));
        let (i, _) = inbox.resolve(1_000, None);
        assert_eq!(i.limit_kw, Some(900.0));
        assert_eq!(i.limit_from, "api:a");
        let (i, _) = inbox.resolve(6_000, None);
        assert_eq!(i.limit_kw, Some(700.0));
        assert_eq!(i.limit_from, "openadr:b");
        let (i, v) = inbox.resolve(20_000, None);
        assert_eq!(i.limit_kw, None);
        assert!(v.events.is_empty(), "ended events are dropped");
    }

    #[test]
    fn a_shed_event_keeps_the_load_it_started_from() {
        let inbox = GridInbox::default();
        inbox.put(ev(
            GridSource::Api,
            "s",
            GridSignal::ShedKw(200.0),
            1_000,
            None,
        ));
        // The load is not known yet: nothing in force (never a guess).
        assert_eq!(inbox.resolve(1_000, None).0.limit_kw, None);
        assert_eq!(inbox.resolve(2_000, Some(1_000.0)).0.limit_kw, Some(800.0));
        // The load fell because of the shed: the limit stays where it started.
        assert_eq!(inbox.resolve(3_000, Some(790.0)).0.limit_kw, Some(800.0));
        // Replacing the event starts it afresh.
        inbox.put(ev(
            GridSource::Api,
            "s",
            GridSignal::ShedKw(100.0),
            1_000,
            None,
        ));
        assert_eq!(inbox.resolve(4_000, Some(790.0)).0.limit_kw, Some(690.0));
        assert!(inbox.remove(GridSource::Api, "s"));
        assert_eq!(inbox.resolve(5_000, Some(790.0)).0.limit_kw, None);
    }

    #[test]
    fn a_source_replaces_only_its_own_events_and_the_latest_price_wins() {
        let inbox = GridInbox::default();
        inbox.put(ev(
            GridSource::Api,
            "p",
            GridSignal::PriceUsdPerMwh(50.0),
            0,
            None,
        ));
        inbox.replace(
            GridSource::Openadr,
            vec![ev(
                GridSource::Openadr,
                "q",
                GridSignal::PriceUsdPerMwh(300.0),
                100,
                Some(900),
            )],
        );
        assert_eq!(inbox.resolve(200, None).0.price_usd_per_mwh, Some(300.0));
        inbox.replace(GridSource::Openadr, Vec::new());
        assert_eq!(inbox.resolve(300, None).0.price_usd_per_mwh, Some(50.0));
        assert_eq!(inbox.events(GridSource::Api).len(), 1);
    }
}
