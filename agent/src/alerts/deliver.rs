//! Alert delivery beyond the log (`[alerts]`, issue 18): Alertmanager (API v2, `POST
//! <url>/api/v2/alerts`) and/or a generic JSON webhook (docs/alerts.md, "Delivery").
//!
//! [`super::log`] offers every alert to [`offer`], which never blocks: each receiver has
//! a bounded queue, and an alert that finds it full is dropped and counted
//! (`rackwarden_alert_notifications_dropped_total{reason="queue_full"}`). One task per
//! receiver keeps its [`ActiveSet`]: an alert with a resolving counterpart ([`PAIRS`])
//! stays active, is sent again every `resend_interval_s` with `endsAt` a few intervals
//! ahead, and is sent resolved (`endsAt` = now) when its counterpart arrives for the same
//! node / zone / device; an alert without one is sent once, with an `endsAt`
//! [`ENDS_AFTER_INTERVALS`] intervals ahead. Notices wait in an [`Outbox`] (the latest per
//! alert, bounded) until the receiver takes them, retried with exponential backoff; a
//! receiver that is down or slow delays only its own task, never the control loop.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rackwarden_config::{AlertDelivery, AlertLevel};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalogue::{AlertKind, PAIRS};
use crate::control::{Alert, Severity};
use crate::metrics::{Labels, Metrics};

/// A firing alert is sent with `endsAt` this many resend intervals ahead (Alertmanager
/// resolves it by itself if the agent stops re-sending); a one-shot alert too.
pub const ENDS_AFTER_INTERVALS: u64 = 4;

/// At most this many notices in one request.
const MAX_BATCH: usize = 256;

/// The alerts `name` resolves when raised at `severity`.
pub fn resolved_by(name: AlertKind, severity: Severity) -> impl Iterator<Item = AlertKind> {
    PAIRS
        .iter()
        .filter(move |(f, r)| *r == name && (*f != *r || severity == Severity::Info))
        .map(|(f, _)| *f)
}

/// The counterpart that resolves `name` raised at `severity`, if it has one.
pub fn counterpart(name: AlertKind, severity: Severity) -> Option<AlertKind> {
    PAIRS
        .iter()
        .find(|(f, r)| *f == name && !(*f == *r && severity == Severity::Info))
        .map(|(_, r)| *r)
}

fn severity_of(l: AlertLevel) -> Severity {
    match l {
        AlertLevel::Info => Severity::Info,
        AlertLevel::Warning => Severity::Warning,
        AlertLevel::Critical => Severity::Critical,
    }
}

/// Milliseconds since the Unix epoch, on the wall clock (what receivers read).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// What identifies one alert at a receiver: its name and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub name: AlertKind,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub device: Option<String>,
}

impl Key {
    fn of(name: AlertKind, a: &Alert) -> Key {
        Key {
            name,
            node: a.node.clone(),
            zone: a.zone.clone(),
            device: a.device.clone(),
        }
    }
}

/// One state of one alert, as sent to a receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub key: Key,
    /// The firing alert's severity (a label: it stays the same when resolved).
    pub severity: Severity,
    /// The latest message (the resolving alert's, once resolved).
    pub message: String,
    pub kw: Option<f64>,
    pub budget_kw: Option<f64>,
    pub fraction: Option<f64>,
    /// Unix ms.
    pub starts_at: u64,
    pub ends_at: u64,
    pub resolved: bool,
    /// The alert that resolves this one (None: a one-shot).
    pub resolved_by: Option<AlertKind>,
}

#[derive(Debug)]
struct Entry {
    notice: Notice,
    last_sent: u64,
}

/// The alerts a receiver holds as firing, keyed by name and node / zone / device.
#[derive(Debug)]
pub struct ActiveSet {
    resend_ms: u64,
    min: Severity,
    active: BTreeMap<Key, Entry>,
}

impl ActiveSet {
    pub fn new(resend_ms: u64, min: Severity) -> ActiveSet {
        ActiveSet {
            resend_ms: resend_ms.max(1),
            min,
            active: BTreeMap::new(),
        }
    }

    fn ends(&self, now: u64) -> u64 {
        now.saturating_add(ENDS_AFTER_INTERVALS.saturating_mul(self.resend_ms))
    }

    /// Whether `a` concerns this set at all: at or above the minimum severity, or a
    /// counterpart that may resolve an alert.
    pub fn wants(min: Severity, a: &Alert) -> bool {
        a.severity >= min || resolved_by(a.kind, a.severity).next().is_some()
    }

    /// Takes one alert at `now` (Unix ms); returns what to send.
    pub fn offer(&mut self, a: &Alert, now: u64) -> Vec<Notice> {
        let mut out = Vec::new();
        let mut resolver = false;
        for fired in resolved_by(a.kind, a.severity) {
            resolver = true;
            if let Some(e) = self.active.remove(&Key::of(fired, a)) {
                out.push(Notice {
                    message: a.message.clone(),
                    ends_at: now,
                    resolved: true,
                    ..e.notice
                });
            }
        }
        // `miner.slow` at info only resolves; it is no alert of its own.
        let self_paired = resolver && PAIRS.iter().any(|(f, r)| f == r && *r == a.kind);
        if a.severity < self.min || self_paired {
            return out;
        }
        let key = Key::of(a.kind, a);
        let resolved_by = counterpart(a.kind, a.severity);
        let starts_at = self
            .active
            .get(&key)
            .map_or(now, |e| e.notice.starts_at.min(now));
        let n = Notice {
            key: key.clone(),
            severity: a.severity,
            message: a.message.clone(),
            kw: a.kw,
            budget_kw: a.budget_kw,
            fraction: a.fraction,
            starts_at,
            ends_at: self.ends(now),
            resolved: false,
            resolved_by,
        };
        if resolved_by.is_some() {
            self.active.insert(
                key,
                Entry {
                    notice: n.clone(),
                    last_sent: now,
                },
            );
        }
        out.push(n);
        out
    }

    /// The active alerts whose last send is a resend interval old (at most `max`, the
    /// longest waiting first; the others stay due), with `endsAt` moved ahead.
    pub fn due(&mut self, now: u64, max: usize) -> Vec<Notice> {
        let ends = self.ends(now);
        let resend = self.resend_ms;
        let mut due: Vec<&mut Entry> = self
            .active
            .values_mut()
            .filter(|e| now.saturating_sub(e.last_sent) >= resend)
            .collect();
        due.sort_by_key(|e| e.last_sent);
        due.into_iter()
            .take(max)
            .map(|e| {
                e.last_sent = now;
                e.notice.ends_at = ends;
                e.notice.clone()
            })
            .collect()
    }

    /// When the next resend falls due (Unix ms), if anything is active.
    pub fn next_due(&self) -> Option<u64> {
        self.active
            .values()
            .map(|e| e.last_sent.saturating_add(self.resend_ms))
            .min()
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

/// Notices not yet taken by the receiver: the latest per alert, at most `cap`, with the
/// retry schedule.
#[derive(Debug)]
pub struct Outbox {
    pending: Vec<Notice>,
    cap: usize,
    min_backoff_ms: u64,
    max_backoff_ms: u64,
    backoff_ms: u64,
    next_attempt: u64,
    /// Failed attempts since the last success.
    pub failures: u32,
}

impl Outbox {
    /// Retries start `min_backoff_ms` after a failure and double up to `max_backoff_ms`.
    pub fn new(cap: usize, min_backoff_ms: u64, max_backoff_ms: u64) -> Outbox {
        let min_backoff_ms = min_backoff_ms.max(1);
        Outbox {
            pending: Vec::new(),
            cap: cap.max(1),
            min_backoff_ms,
            max_backoff_ms: max_backoff_ms.max(min_backoff_ms),
            backoff_ms: min_backoff_ms,
            next_attempt: 0,
            failures: 0,
        }
    }

    /// Queues `n`, replacing an older notice of the same alert; false when it was
    /// dropped (the outbox full of other alerts).
    pub fn push(&mut self, n: Notice) -> bool {
        if let Some(old) = self.pending.iter_mut().find(|p| p.key == n.key) {
            *old = n;
            return true;
        }
        if self.pending.len() >= self.cap {
            return false;
        }
        self.pending.push(n);
        true
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// How many more alerts it takes.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.pending.len())
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Something to send and its retry time reached.
    pub fn ready(&self, now: u64) -> bool {
        !self.pending.is_empty() && now >= self.next_attempt
    }

    /// When to try again (Unix ms), if anything waits.
    pub fn next_attempt(&self) -> Option<u64> {
        (!self.pending.is_empty()).then_some(self.next_attempt)
    }

    /// The oldest notices, up to `max`.
    pub fn batch(&self, max: usize) -> Vec<Notice> {
        self.pending.iter().take(max).cloned().collect()
    }

    /// The first `n` pending notices were taken.
    pub fn delivered(&mut self, n: usize) {
        self.pending.drain(..n.min(self.pending.len()));
        self.failures = 0;
        self.backoff_ms = self.min_backoff_ms;
        self.next_attempt = 0;
    }

    /// A send failed at `now`: returns the wait before the next attempt, ms.
    pub fn failed(&mut self, now: u64) -> u64 {
        let wait = self.backoff_ms;
        self.failures = self.failures.saturating_add(1);
        self.next_attempt = now.saturating_add(wait);
        self.backoff_ms = self.backoff_ms.saturating_mul(2).min(self.max_backoff_ms);
        wait
    }
}

/// The Alertmanager API v2 body (`postableAlerts`): labels `alertname`, `severity`,
/// `site` and `node` / `zone` / `device` where set; annotations `summary` (the message)
/// and the figures.
pub fn alertmanager_body(site: &str, batch: &[Notice]) -> Value {
    Value::Array(
        batch
            .iter()
            .map(|n| {
                let mut labels = Map::new();
                labels.insert("alertname".into(), n.key.name.name().into());
                labels.insert("severity".into(), n.severity.name().into());
                labels.insert("site".into(), site.into());
                for (k, v) in [
                    ("node", &n.key.node),
                    ("zone", &n.key.zone),
                    ("device", &n.key.device),
                ] {
                    if let Some(v) = v {
                        labels.insert(k.into(), v.as_str().into());
                    }
                }
                let mut ann = Map::new();
                ann.insert("summary".into(), n.message.as_str().into());
                for (k, v) in [
                    ("kw", n.kw),
                    ("budget_kw", n.budget_kw),
                    ("fraction", n.fraction),
                ] {
                    if let Some(v) = v {
                        ann.insert(k.into(), format!("{v:.3}").into());
                    }
                }
                json!({
                    "labels": labels,
                    "annotations": ann,
                    "startsAt": rfc3339(n.starts_at),
                    "endsAt": rfc3339(n.ends_at),
                })
            })
            .collect(),
    )
}

/// The webhook body (docs/alerts.md, "Webhook"): `version`, `site` and one object per
/// alert.
pub fn webhook_body(site: &str, batch: &[Notice]) -> Value {
    json!({
        "version": 1,
        "site": site,
        "alerts": batch.iter().map(|n| json!({
            "status": if n.resolved { "resolved" } else { "firing" },
            "alert": n.key.name.name(),
            "severity": n.severity.name(),
            "node": n.key.node,
            "zone": n.key.zone,
            "device": n.key.device,
            "message": n.message,
            "kw": n.kw,
            "budget_kw": n.budget_kw,
            "fraction": n.fraction,
            "starts_at": rfc3339(n.starts_at),
            "ends_at": rfc3339(n.ends_at),
            "resolved_by": n.resolved_by,
        })).collect::<Vec<_>>(),
    })
}

/// The kind of receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Alertmanager,
    Webhook,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Alertmanager => "alertmanager",
            Kind::Webhook => "webhook",
        }
    }
}

/// Why delivery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("alerts.webhook_token_file {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("alerts: cannot build the HTTP client for {url}: {source}")]
    Client { url: String, source: reqwest::Error },
}

/// The counters of one receiver (clones of the `/metrics` families' series).
#[derive(Clone)]
struct Stats {
    sent: Counter,
    failed: Counter,
    queue_full: Counter,
    backlog_full: Counter,
    active: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Stats {
    fn new(m: &Metrics, kind: Kind) -> Stats {
        let r = |f: &Family<Labels, Counter>, extra: Option<&str>| {
            let mut l: Labels = vec![("receiver", kind.name().to_owned())];
            if let Some(reason) = extra {
                l.push(("reason", reason.to_owned()));
            }
            f.get_or_create(&l).clone()
        };
        Stats {
            sent: r(&m.alert_notifications_sent, None),
            failed: r(&m.alert_send_failures, None),
            queue_full: r(&m.alert_notifications_dropped, Some("queue_full")),
            backlog_full: r(&m.alert_notifications_dropped, Some("backlog_full")),
            active: m
                .alerts_active
                .get_or_create(&vec![("receiver", kind.name().to_owned())])
                .clone(),
        }
    }
}

/// One receiver's queue, as [`offer`] sees it.
#[derive(Debug)]
pub struct Queue {
    tx: mpsc::Sender<Alert>,
    min: Severity,
    dropped: Counter,
}

impl Queue {
    /// Hands `a` over without waiting; false (and counted) when the queue is full.
    pub fn offer(&self, a: &Alert) -> bool {
        if !ActiveSet::wants(self.min, a) {
            return true;
        }
        match self.tx.try_send(a.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.inc();
                false
            }
            // The task ended (shutdown): nothing to deliver to.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }
}

static SINK: RwLock<Option<Arc<Vec<Queue>>>> = RwLock::new(None);

/// Offers `a` to every receiver's queue (a no-op without `[alerts]`). Never blocks on
/// a receiver; the lock is only written when delivery starts or stops.
pub fn offer(a: &Alert) {
    let sink = match SINK.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    if let Some(queues) = sink {
        for q in queues.iter() {
            q.offer(a);
        }
    }
}

/// Delivery running: the tasks stop and [`offer`] goes quiet when it drops.
#[derive(Debug)]
pub struct Delivery {
    cancel: CancellationToken,
    /// Asks the tasks for a last send of what waits ([`Delivery::finish`]).
    drain: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    queues: Arc<Vec<Queue>>,
}

impl Delivery {
    /// At exit: each receiver gets one last attempt at what waits (alerts raised while
    /// stopping, such as `ha.leader.lost`, resolved notices not sent yet), for at most
    /// `within`; then everything stops.
    pub async fn finish(mut self, within: Duration) {
        self.drain.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        tokio::time::timeout(within, futures::future::join_all(tasks))
            .await
            .ok();
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.cancel.cancel();
        let mut g = SINK
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.as_ref().is_some_and(|q| Arc::ptr_eq(q, &self.queues)) {
            *g = None;
        }
    }
}

/// A receiver task's fixed parts.
struct Target {
    kind: Kind,
    /// Where it posts.
    url: String,
    token: Option<String>,
    site: String,
    client: reqwest::Client,
}

impl Target {
    async fn post(&self, batch: &[Notice]) -> Result<(), String> {
        let body = match self.kind {
            Kind::Alertmanager => alertmanager_body(&self.site, batch),
            Kind::Webhook => webhook_body(&self.site, batch),
        };
        let mut req = self.client.post(&self.url).json(&body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            // reqwest's Display stops at "error sending request": the cause says why.
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s.push_str(": ");
                s.push_str(&c.to_string());
                src = c.source();
            }
            s
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        Err(format!("HTTP {status}: {}", text.trim()))
    }
}

/// Starts one task per receiver of `cfg` on the current Tokio runtime and routes
/// [`offer`] to them. `site`: the site id (a label on every alert).
pub fn start(
    cfg: &AlertDelivery,
    site: &str,
    metrics: &Metrics,
) -> Result<Delivery, DeliveryError> {
    let token = match &cfg.webhook_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|source| DeliveryError::Token {
                    path: p.display().to_string(),
                    source,
                })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let mut targets = Vec::new();
    if let Some(u) = &cfg.alertmanager_url {
        targets.push((Kind::Alertmanager, format!("{u}/api/v2/alerts"), None));
    }
    if let Some(u) = &cfg.webhook_url {
        targets.push((Kind::Webhook, u.clone(), token));
    }
    let cancel = CancellationToken::new();
    let drain = CancellationToken::new();
    let mut tasks = Vec::new();
    let min = severity_of(cfg.min_severity);
    let resend_ms = cfg.resend_interval_s.saturating_mul(1000);
    let mut queues = Vec::new();
    for (kind, url, token) in targets {
        let client = reqwest::Client::builder()
            // The receiver is named in the site file; a proxy from the environment must
            // not reroute alerts.
            .no_proxy()
            .timeout(Duration::from_secs(cfg.timeout_s))
            .connect_timeout(Duration::from_secs(cfg.timeout_s))
            .build()
            .map_err(|source| DeliveryError::Client {
                url: url.clone(),
                source,
            })?;
        let stats = Stats::new(metrics, kind);
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        queues.push(Queue {
            tx,
            min,
            dropped: stats.queue_full.clone(),
        });
        let target = Target {
            kind,
            url,
            token,
            site: site.to_owned(),
            client,
        };
        info!(
            event = "alert.delivery.started",
            receiver = kind.name(),
            url = %target.url,
            resend_interval_s = cfg.resend_interval_s,
            min_severity = cfg.min_severity.name(),
            "alerts go to {} at {}",
            kind.name(),
            target.url
        );
        let set = ActiveSet::new(resend_ms, min);
        // Retries: 1 s, doubling, at most a resend interval (and 30 s).
        let outbox = Outbox::new(cfg.queue_capacity, 1000, resend_ms.clamp(1000, 30_000));
        tasks.push(tokio::spawn(run_receiver(
            rx,
            set,
            outbox,
            target,
            stats,
            cancel.clone(),
            drain.clone(),
        )));
    }
    let queues = Arc::new(queues);
    *SINK
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(queues.clone());
    Ok(Delivery {
        cancel,
        drain,
        tasks,
        queues,
    })
}

async fn run_receiver(
    mut rx: mpsc::Receiver<Alert>,
    mut set: ActiveSet,
    mut out: Outbox,
    target: Target,
    stats: Stats,
    cancel: CancellationToken,
    drain: CancellationToken,
) {
    let push = |out: &mut Outbox, notices: Vec<Notice>| {
        for n in notices {
            if !out.push(n) {
                stats.backlog_full.inc();
            }
        }
    };
    loop {
        let now = unix_ms();
        // Re-sends take only the outbox's free room: with more active alerts than it
        // holds they go out over several requests instead of being dropped.
        let room = out.room();
        push(&mut out, set.due(now, room));
        #[allow(clippy::cast_precision_loss)] // a count of alerts
        stats.active.set(set.len() as f64);
        if out.ready(now) {
            let batch = out.batch(MAX_BATCH);
            let r = tokio::select! {
                () = cancel.cancelled() => return,
                r = target.post(&batch) => r,
            };
            match r {
                Ok(()) => {
                    if out.failures > 0 {
                        info!(
                            event = "alert.delivery.recovered",
                            receiver = target.kind.name(),
                            url = %target.url,
                            failures = out.failures,
                            "alert delivery to {} works again after {} failed attempts",
                            target.url,
                            out.failures
                        );
                    }
                    out.delivered(batch.len());
                    stats
                        .sent
                        .inc_by(u64::try_from(batch.len()).unwrap_or(u64::MAX));
                }
                Err(e) => {
                    stats.failed.inc();
                    let wait = out.failed(unix_ms());
                    warn!(
                        event = "alert.delivery.failed",
                        receiver = target.kind.name(),
                        url = %target.url,
                        error = %e,
                        pending = out.len(),
                        retry_in_ms = wait,
                        "alert delivery to {} failed: {e}",
                        target.url
                    );
                }
            }
            continue;
        }
        // A full outbox waits for its next attempt, not for re-sends it has no room for.
        let resend = (out.room() > 0).then(|| set.next_due()).flatten();
        let wake = [resend, out.next_attempt()]
            .into_iter()
            .flatten()
            .min()
            .map_or(Duration::from_secs(3600), |t| {
                Duration::from_millis(t.saturating_sub(now))
            });
        tokio::select! {
            () = cancel.cancelled() => return,
            m = rx.recv() => {
                let Some(a) = m else { return };
                let now = unix_ms();
                push(&mut out, set.offer(&a, now));
                while let Ok(a) = rx.try_recv() {
                    push(&mut out, set.offer(&a, now));
                }
            }
            () = tokio::time::sleep(wake) => {}
            () = drain.cancelled() => {
                let now = unix_ms();
                while let Ok(a) = rx.try_recv() {
                    push(&mut out, set.offer(&a, now));
                }
                if !out.is_empty() {
                    let batch = out.batch(MAX_BATCH);
                    let r = tokio::select! {
                        () = cancel.cancelled() => return,
                        r = target.post(&batch) => r,
                    };
                    match r {
                        Ok(()) => {
                            stats.sent.inc_by(u64::try_from(batch.len()).unwrap_or(u64::MAX));
                        }
                        Err(e) => {
                            stats.failed.inc();
                            warn!(
                                event = "alert.delivery.failed",
                                receiver = target.kind.name(),
                                url = %target.url,
                                error = %e,
                                pending = out.len(),
                                "alert delivery to {} failed at exit: {e}",
                                target.url
                            );
                        }
                    }
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIN: u64 = 60_000;

    fn alert(name: AlertKind, sev: Severity, node: Option<&str>) -> Alert {
        let mut a = Alert::new(name, sev, format!("{name} on {node:?}"));
        a.node = node.map(str::to_owned);
        a
    }

    #[test]
    fn every_paired_name_is_in_the_catalogue() {
        let cat = super::super::catalogue();
        for (f, r) in PAIRS {
            assert!(cat.contains(&f.name()), "{f} is not in the catalogue");
            assert!(cat.contains(&r.name()), "{r} is not in the catalogue");
        }
        // A resolving alert never also fires under another pair (it would resolve
        // itself).
        for (f, r) in PAIRS {
            if f != r {
                assert!(
                    !PAIRS.iter().any(|(f2, _)| f2 == r),
                    "{r} resolves {f} and fires too"
                );
            }
        }
    }

    #[test]
    fn a_paired_alert_fires_is_resent_and_resolves() {
        let mut s = ActiveSet::new(MIN, Severity::Warning);
        let t0 = 1_000_000;
        let a = alert(
            AlertKind::PowerBudgetShed,
            Severity::Warning,
            Some("feed-a"),
        );
        let out = s.offer(&a, t0);
        assert_eq!(out.len(), 1);
        assert!(!out[0].resolved);
        assert_eq!(out[0].starts_at, t0);
        assert_eq!(out[0].ends_at, t0 + 4 * MIN);
        assert_eq!(out[0].resolved_by, Some(AlertKind::PowerBudgetRestored));
        assert_eq!(s.len(), 1);
        // Not due before an interval has passed, due once it has.
        assert!(s.due(t0 + MIN - 1, usize::MAX).is_empty());
        assert_eq!(s.next_due(), Some(t0 + MIN));
        let again = s.due(t0 + MIN, usize::MAX);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].starts_at, t0);
        assert_eq!(again[0].ends_at, t0 + 5 * MIN);
        assert!(s.due(t0 + MIN + 10, usize::MAX).is_empty());
        // The counterpart for another node resolves nothing.
        let other = alert(
            AlertKind::PowerBudgetRestored,
            Severity::Info,
            Some("feed-b"),
        );
        assert!(s.offer(&other, t0 + MIN + 20).is_empty());
        assert_eq!(s.len(), 1);
        // The counterpart for the node resolves it: same labels, endsAt now.
        let back = alert(
            AlertKind::PowerBudgetRestored,
            Severity::Info,
            Some("feed-a"),
        );
        let out = s.offer(&back, t0 + 2 * MIN + 5);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert!(r.resolved);
        assert_eq!(r.key.name, AlertKind::PowerBudgetShed);
        assert_eq!(r.severity, Severity::Warning);
        assert_eq!(r.starts_at, t0);
        assert_eq!(r.ends_at, t0 + 2 * MIN + 5);
        assert_eq!(r.message, back.message);
        assert!(s.is_empty());
        assert_eq!(s.next_due(), None);
        assert!(s.due(t0 + 10 * MIN, usize::MAX).is_empty());
    }

    #[test]
    fn resends_take_only_the_room_given_longest_waiting_first() {
        let mut s = ActiveSet::new(MIN, Severity::Warning);
        for (t, node) in [(3, "c"), (1, "a"), (2, "b")] {
            s.offer(
                &alert(AlertKind::PowerBudgetShed, Severity::Warning, Some(node)),
                t,
            );
        }
        let now = 10 + MIN;
        assert!(s.due(now, 0).is_empty());
        let first: Vec<_> = s
            .due(now, 2)
            .into_iter()
            .map(|n| n.key.node.unwrap())
            .collect();
        assert_eq!(first, ["a", "b"]);
        // The third is still due (and the first two are not).
        assert_eq!(s.next_due(), Some(3 + MIN));
        let rest = s.due(now, 5);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].key.node.as_deref(), Some("c"));
        assert_eq!(rest[0].ends_at, now + 4 * MIN);
        assert!(s.due(now, 5).is_empty());
        let mut o = Outbox::new(3, 1000, 1000);
        assert_eq!(o.room(), 3);
        o.push(rest[0].clone());
        assert_eq!(o.room(), 2);
    }

    #[test]
    fn one_counterpart_resolves_every_alert_it_pairs_with() {
        let mut s = ActiveSet::new(MIN, Severity::Warning);
        s.offer(
            &alert(AlertKind::PowerBudgetShed, Severity::Warning, Some("f")),
            1,
        );
        s.offer(
            &alert(
                AlertKind::PowerBudgetEmergency,
                Severity::Critical,
                Some("f"),
            ),
            2,
        );
        assert_eq!(s.len(), 2);
        let out = s.offer(
            &alert(AlertKind::PowerBudgetRestored, Severity::Info, Some("f")),
            3,
        );
        let names: Vec<_> = out.iter().map(|n| (n.key.name, n.resolved)).collect();
        assert_eq!(
            names,
            [
                (AlertKind::PowerBudgetShed, true),
                (AlertKind::PowerBudgetEmergency, true)
            ]
        );
        assert!(s.is_empty());
    }

    #[test]
    fn one_shots_are_sent_once_with_a_bounded_end() {
        let mut s = ActiveSet::new(MIN, Severity::Warning);
        let a = alert(AlertKind::ConfigReloadFailed, Severity::Warning, None);
        let out = s.offer(&a, 10);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].resolved_by, None);
        assert_eq!(out[0].ends_at, 10 + 4 * MIN);
        assert!(s.is_empty());
        assert!(s.due(10 + 100 * MIN, usize::MAX).is_empty());
    }

    #[test]
    fn below_the_minimum_severity_nothing_is_sent() {
        let mut s = ActiveSet::new(MIN, Severity::Critical);
        let a = alert(AlertKind::PowerBudgetShed, Severity::Warning, Some("f"));
        assert!(!ActiveSet::wants(Severity::Critical, &a));
        assert!(s.offer(&a, 1).is_empty());
        let back = alert(AlertKind::PowerBudgetRestored, Severity::Info, Some("f"));
        // Counterparts pass the queue (they may resolve), but resolve nothing here.
        assert!(ActiveSet::wants(Severity::Critical, &back));
        assert!(s.offer(&back, 2).is_empty());
        // At info, the counterpart is also an alert of its own (a one-shot).
        let mut s = ActiveSet::new(MIN, Severity::Info);
        let out = s.offer(&back, 3);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key.name, AlertKind::PowerBudgetRestored);
        assert!(!out[0].resolved);
    }

    #[test]
    fn a_self_paired_alert_resolves_at_info() {
        let mut s = ActiveSet::new(MIN, Severity::Info);
        let mut slow = alert(AlertKind::MinerSlow, Severity::Warning, Some("mine-a1"));
        slow.device = Some("m-1".into());
        assert_eq!(s.offer(&slow, 1).len(), 1);
        assert_eq!(s.len(), 1);
        let mut back = slow.clone();
        back.severity = Severity::Info;
        let out = s.offer(&back, 2);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].resolved);
        assert_eq!(out[0].severity, Severity::Warning);
        assert!(s.is_empty());
    }

    fn notice(name: AlertKind, node: &str) -> Notice {
        let mut s = ActiveSet::new(MIN, Severity::Info);
        s.offer(&alert(name, Severity::Warning, Some(node)), 1)
            .pop()
            .unwrap()
    }

    #[test]
    fn the_outbox_keeps_the_latest_per_alert_bounded_and_backs_off() {
        let mut o = Outbox::new(2, 1000, 8000);
        assert!(o.push(notice(AlertKind::PowerBudgetShed, "a")));
        let mut resolved = notice(AlertKind::PowerBudgetShed, "a");
        resolved.resolved = true;
        assert!(o.push(resolved));
        assert_eq!(o.len(), 1);
        assert!(
            o.batch(10)[0].resolved,
            "the latest state replaces the older"
        );
        assert!(o.push(notice(AlertKind::PowerBudgetShed, "b")));
        assert!(
            !o.push(notice(AlertKind::PowerBudgetShed, "c")),
            "full: dropped"
        );
        assert_eq!(o.len(), 2);
        assert!(o.ready(0));
        let waits: Vec<u64> = (0..6).map(|_| o.failed(100)).collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(o.failures, 6);
        assert!(!o.ready(100 + 7999));
        assert!(o.ready(100 + 8000));
        o.delivered(1);
        assert_eq!(o.len(), 1);
        assert_eq!(o.batch(10)[0].key.node.as_deref(), Some("b"));
        assert_eq!(o.failures, 0);
        assert!(o.ready(0));
        assert_eq!(o.failed(0), 1000, "backoff starts over after a success");
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (tx, mut rx) = mpsc::channel(2);
        let q = Queue {
            tx,
            min: Severity::Warning,
            dropped: Counter::default(),
        };
        let a = alert(AlertKind::PowerBudgetShed, Severity::Warning, Some("f"));
        assert!(q.offer(&a));
        assert!(q.offer(&a));
        assert!(!q.offer(&a));
        assert!(!q.offer(&a));
        assert_eq!(q.dropped.get(), 2);
        // Below the minimum and no counterpart: not even queued.
        let info = alert(AlertKind::ConfigReloaded, Severity::Info, None);
        assert!(q.offer(&info));
        assert_eq!(q.dropped.get(), 2);
        assert!(rx.try_recv().is_ok());
        assert!(q.offer(&a), "room again");
    }

    #[test]
    fn the_alertmanager_body_carries_labels_annotations_and_times() {
        let mut a = alert(AlertKind::CoolingRedundancyLost, Severity::Critical, None);
        a.zone = Some("air-mining".into());
        a = a.figures(120.0, 100.0);
        let mut s = ActiveSet::new(MIN, Severity::Warning);
        let n = s.offer(&a, 1_700_000_000_000);
        let v = alertmanager_body("site-1", &n);
        let x = &v[0];
        assert_eq!(x["labels"]["alertname"], "cooling.redundancy.lost");
        assert_eq!(x["labels"]["severity"], "critical");
        assert_eq!(x["labels"]["site"], "site-1");
        assert_eq!(x["labels"]["zone"], "air-mining");
        assert!(x["labels"].get("node").is_none());
        assert_eq!(x["annotations"]["summary"], a.message.as_str());
        assert_eq!(x["annotations"]["fraction"], "1.200");
        assert_eq!(x["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(x["endsAt"], "2023-11-14T22:17:20.000Z");
        let w = webhook_body("site-1", &n);
        assert_eq!(w["alerts"][0]["status"], "firing");
        assert_eq!(w["alerts"][0]["resolved_by"], "cooling.redundancy.restored");
        assert_eq!(w["alerts"][0]["node"], Value::Null);
    }
}
