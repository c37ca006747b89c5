//! The runtime's side of the energy accounting: the book's slots committed to the
//! database once a minute (and at a stop), the per-account counters of `/metrics`
//! kept in step. A database that fails never stops the agent: slots wait in memory
//! (bounded) and the commit is retried; a corrupt one is set aside with an alert.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use rackwarden_config::Site;
use tracing::{info, warn};

use super::meter::LastReading;
use super::report::accounts;
use super::store::{self, SlotRow, Store};
use super::EnergyBook;
use crate::catalogue::AlertKind;
use crate::control::{Alert, Millis, Severity};
use crate::metrics::{Labels, Metrics};

/// How often the book is committed, virtual ms.
pub const COMMIT_EVERY_MS: Millis = 60_000;

/// Slots kept in memory while the database fails (one per node and 15-minute slot,
/// merged): a day of them for 400 metered nodes.
const PENDING_MAX: usize = 96 * 400;

#[derive(Debug)]
pub struct Recorder {
    store: Store,
    /// Node id -> the accounts (labels) it counts towards.
    labels: HashMap<String, Vec<Labels>>,
    /// Slots not yet committed (a failing database), merged by (node, slot start).
    pending: BTreeMap<(Millis, String), super::meter::Slot>,
    last_commit: Millis,
    failing: bool,
    /// Alerts raised since the writer last took them ([`Recorder::take_alerts`]).
    alerts: Vec<Alert>,
}

impl Recorder {
    /// The alerts raised since the last call (the database set aside, commits failing):
    /// the writer raises them through the status hub.
    pub fn take_alerts(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.alerts)
    }

    /// Opens the database at `path` (a corrupt one is set aside with an alert) and a book
    /// for `site` that resumes from its last readings. `None` when no database can be
    /// had at all (named in the log): the agent runs on without energy accounting.
    pub fn open(
        site: &Site,
        path: &Path,
        metrics: &Metrics,
        now: Millis,
    ) -> Option<(Recorder, EnergyBook)> {
        let mut alerts = Vec::new();
        let store = match store::open_or_set_aside(path) {
            Ok((s, aside)) => {
                if let Some((aside, why)) = aside {
                    alerts.push(Alert::new(
                        AlertKind::EnergyStoreCorrupt,
                        Severity::Critical,
                        format!("{why}; moved aside to {}", aside.display()),
                    ));
                }
                s
            }
            Err(e) => {
                warn!(error = %e, "energy accounting off: no database");
                return None;
            }
        };
        let last = store.last_readings().unwrap_or_else(|e| {
            warn!(error = %e, "energy: last meter readings not read; counters start over");
            HashMap::new()
        });
        let mut labels: HashMap<String, Vec<Labels>> = HashMap::new();
        for a in accounts(site) {
            for n in &a.nodes {
                labels
                    .entry(n.clone())
                    .or_default()
                    .push(vec![("account", a.id.clone()), ("kind", a.kind.to_owned())]);
            }
        }
        let r = Recorder {
            store,
            labels,
            pending: BTreeMap::new(),
            last_commit: now,
            failing: false,
            alerts,
        };
        match r.store.totals() {
            Ok(t) => r.count(t.iter().map(|(n, kwh)| (n.as_str(), *kwh)), metrics),
            Err(e) => warn!(error = %e, "energy: totals not read"),
        }
        info!(
            event = "energy.opened",
            path = %r.store.path().display(),
            meters_resumed = last.len(),
            "energy accounting to the agent's database"
        );
        let book = EnergyBook::new(site, &last);
        Some((r, book))
    }

    fn count<'a>(&self, it: impl Iterator<Item = (&'a str, f64)>, metrics: &Metrics) {
        for (node, kwh) in it {
            for l in self.labels.get(node).into_iter().flatten() {
                metrics.energy_kwh.get_or_create(l).inc_by(kwh);
            }
        }
    }

    /// Commits mining's curtailed hours and trough energy; a failure is logged (the
    /// slots' own commit raises the alert for a failing database).
    pub fn commit_mining(&mut self, m: &super::mining::MiningTake) {
        if *m == super::mining::MiningTake::default() {
            return;
        }
        if let Err(e) = self.store.commit_mining(m) {
            warn!(error = %e, "energy: mining figures not committed");
        }
    }

    /// Whether a minute has passed since the last commit.
    pub fn due(&self, now: Millis) -> bool {
        now.saturating_sub(self.last_commit) >= COMMIT_EVERY_MS
    }

    /// Commits what [`EnergyBook::take`] handed over (with whatever an earlier failed
    /// commit left pending).
    pub fn commit(
        &mut self,
        (slots, last): (Vec<SlotRow>, Vec<(String, u32, LastReading)>),
        metrics: &Metrics,
        now: Millis,
    ) {
        self.last_commit = now;
        for (node, start, slot) in slots {
            self.pending.entry((start, node)).or_default().add(&slot);
        }
        let rows: Vec<SlotRow> = self
            .pending
            .iter()
            .map(|((start, node), s)| (node.clone(), *start, *s))
            .collect();
        match self.store.commit(&rows, &last) {
            Ok(()) => {
                self.pending.clear();
                self.count(rows.iter().map(|(n, _, s)| (n.as_str(), s.kwh())), metrics);
                self.failing = false;
            }
            Err(e) => {
                // The oldest slots go first; what is dropped is named in the log.
                while self.pending.len() > PENDING_MAX {
                    if let Some(((start, node), s)) = self.pending.pop_first() {
                        warn!(node = %node, start_ms = start, kwh = s.kwh(), "energy: slot dropped, the database failed for too long");
                    }
                }
                if !self.failing {
                    self.alerts.push(Alert::new(
                        AlertKind::EnergyStoreFailed,
                        Severity::Warning,
                        format!(
                            "{e}; {} slots kept in memory, retried every minute",
                            self.pending.len()
                        ),
                    ));
                }
                self.failing = true;
            }
        }
    }
}

/// What the control loop hands the energy writer: the book's slots and last readings,
/// mining's figures, and when.
type Batch = (
    (Vec<SlotRow>, Vec<(String, u32, LastReading)>),
    super::mining::MiningTake,
    Millis,
);

/// The recorder on a thread of its own: the control loop hands it batches and never
/// waits for SQLite (a slow disk or a checkpoint cannot delay a decision).
#[derive(Debug)]
pub struct Writer {
    tx: Option<std::sync::mpsc::Sender<Batch>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn spawn(mut rec: Recorder, hub: Arc<crate::status::StatusHub>) -> Writer {
        let (tx, rx) = std::sync::mpsc::channel::<Batch>();
        let handle = std::thread::Builder::new()
            .name("energy-writer".into())
            .spawn(move || {
                // What opening the database found (a corrupt file set aside).
                for a in rec.take_alerts() {
                    hub.raise(hub.last_now(), &a);
                }
                for (taken, mining, now) in rx {
                    rec.commit(taken, &hub.metrics, now);
                    rec.commit_mining(&mining);
                    for a in rec.take_alerts() {
                        hub.raise(now, &a);
                    }
                }
            })
            .map_err(|e| warn!(error = %e, "energy accounting off: no writer thread"))
            .ok();
        Writer {
            tx: handle.as_ref().map(|_| tx),
            handle,
        }
    }

    /// Hands a batch to the writer (dropped, and said, if the writer is gone).
    pub fn send(&self, batch: Batch) {
        if let Some(tx) = &self.tx {
            if tx.send(batch).is_err() {
                warn!("energy: the writer thread is gone; batch dropped");
            }
        }
    }

    /// Lets the writer commit what it was handed, then ends it.
    pub async fn close(mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            tokio::task::spawn_blocking(move || h.join()).await.ok();
        }
    }
}
