//! What the agent keeps on disk:
//! - the control intent, in the agent's database ([`IntentStore`] over
//!   [`crate::store`]): what stops a restart from waking miners or lifting GPU caps by
//!   accident. A state file from an older agent (`agent.state_file`) is imported once and
//!   renamed aside;
//! - the action journal ([`ActionJournal`]): rows committed with the intent, and the
//!   JSON-lines export (`agent.journal_file`) log shippers follow;
//! - small JSON files written atomically (the operator overrides): re-exported from
//!   [`crate::store::file`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::catalogue::AlertKind;
use crate::control::{Alert, ControlState, Millis, Severity};
use crate::store::journal::JournalRow;
use crate::store::Store;

pub use crate::store::file::{read, write_atomic, PersistError};

/// Moves a corrupt state file aside (kept for the post-mortem) and says where.
pub fn quarantine(path: &Path) -> Option<PathBuf> {
    let aside = path.with_extension(format!(
        "corrupt.{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    fs::rename(path, &aside).ok().map(|()| aside)
}

/// The append-only action journal: one JSON object per line, flushed per entry.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, PersistError> {
        let err = |source| PersistError::Journal {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn append<T: Serialize>(&mut self, entry: &T) -> Result<(), PersistError> {
        self.append_unsynced(entry)?;
        self.file
            .sync_data()
            .map_err(|source| PersistError::Journal {
                path: self.path.clone(),
                source,
            })
    }

    /// Appends a line without waiting for the disk (the export of rows the database
    /// holds durably).
    pub fn append_unsynced<T: Serialize>(&mut self, entry: &T) -> Result<(), PersistError> {
        let err = |source| PersistError::Journal {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(entry).map_err(|e| err(io::Error::other(e)))?;
        line.push(b'\n');
        // One write call per line: appends of whole lines never interleave.
        self.file.write_all(&line).map_err(err)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The runtime's action journal: each row goes to the JSON-lines export at once and
/// into the database with the next intent commit (the same transaction as the intent it
/// goes with).
#[derive(Debug)]
pub struct ActionJournal {
    export: Option<Journal>,
    pending: Vec<JournalRow>,
}

impl ActionJournal {
    /// The export at `path`; one that cannot be opened is said once and left out (the
    /// database still journals).
    pub fn open(path: &Path) -> ActionJournal {
        let export = match Journal::open(path) {
            Ok(j) => Some(j),
            Err(e) => {
                warn!(error = %e, "journal export off");
                None
            }
        };
        ActionJournal {
            export,
            pending: Vec::new(),
        }
    }

    pub fn record(&mut self, row: JournalRow) {
        if let Some(j) = &mut self.export {
            if let Err(e) = j.append_unsynced(&row) {
                warn!(error = %e, "journal export write failed");
            }
        }
        // Bounded: a database that stays down for long keeps the latest rows (the
        // export has them all).
        if self.pending.len() >= PENDING_ROWS_MAX {
            self.pending.drain(..PENDING_ROWS_MAX / 2);
        }
        self.pending.push(row);
    }
}

/// Journal rows kept in memory while the database cannot take them.
const PENDING_ROWS_MAX: usize = 200_000;

/// The intent is committed at least this often (the timeline's last instant, which the
/// clock resumes after), even when nothing changed.
pub const TOUCH_EVERY_MS: Millis = 30_000;
/// A database that could not be opened is tried again this often.
const REOPEN_EVERY_MS: Millis = 30_000;
/// Commit latencies kept for their percentiles (the latest).
const LATENCIES_KEPT: usize = 8192;
/// Journal retention is applied this often.
const PRUNE_EVERY_MS: Millis = 3_600_000;

/// The control intent in the agent's database, committed by the control loop.
#[derive(Debug)]
pub struct IntentStore {
    path: PathBuf,
    db: Option<Store>,
    /// The next commit writes every row (first commit, takeover, after a failure).
    full: bool,
    last_commit: Millis,
    last_try: Millis,
    last_prune: Millis,
    retention_ms: Millis,
    /// A `control.state.unsaved` alert is out.
    alerted: bool,
    /// The intent came from a legacy state file (the database's rows are not it).
    imported: bool,
    /// Latest commit latencies, microseconds.
    latencies_us: Vec<u32>,
    next: usize,
    pub commits: u64,
    pub rows: u64,
    /// Alerts raised since the loop last took them ([`IntentStore::take_alerts`]).
    alerts: Vec<Alert>,
}

/// A previous run's intent: the last instant of its timeline, and its state.
pub type Loaded = (Millis, ControlState);

impl IntentStore {
    /// Opens the database at `db` and reads back the intent in force. A database SQLite
    /// cannot read is set aside with a `control.state.corrupt` alert and the agent starts
    /// on the safe side (no intent: nothing woken until the start-up hold and the policy
    /// allow it); one that cannot be opened at all (permissions, a newer schema) runs
    /// the agent with its intent in memory, a `control.state.unsaved` alert out, and is
    /// tried again. A legacy `state_file` is imported once (when newer than the
    /// database's intent) and renamed aside.
    pub fn open(
        db: &Path,
        state_file: &Path,
        retention_days: u32,
    ) -> (IntentStore, Option<Loaded>) {
        let mut st = IntentStore {
            path: db.to_path_buf(),
            db: None,
            full: true,
            last_commit: 0,
            last_try: 0,
            last_prune: 0,
            retention_ms: Millis::from(retention_days) * 86_400_000,
            alerted: false,
            imported: false,
            latencies_us: Vec::new(),
            next: 0,
            commits: 0,
            rows: 0,
            alerts: Vec::new(),
        };
        let mut loaded = None;
        match crate::store::open_or_set_aside(db) {
            Ok((s, aside)) => {
                if let Some((aside, why)) = aside {
                    st.corrupt(format!("{why}; moved aside to {}", aside.display()));
                }
                loaded = st.read_back(s);
            }
            Err(e) => st.unsaved(&e.to_string()),
        }
        let legacy = import_legacy(state_file, loaded.as_ref().map(|l| l.0), &mut st.alerts);
        if let Some(imported) = legacy {
            if let Some(s) = &mut st.db {
                let (t, state) = (&imported.0, &imported.1);
                match s.commit_intent(None, state, *t, &[], true) {
                    Ok(c) => {
                        let c = c.unwrap_or_default();
                        let aside = legacy_aside(state_file);
                        info!(
                            event = "state.imported",
                            file = %state_file.display(),
                            database = %db.display(),
                            miners = c.miners,
                            moved_to = %aside.map_or_else(|| "nowhere".into(), |p| p.display().to_string()),
                            "control intent imported from the state file into the database"
                        );
                    }
                    Err(e) => warn!(error = %e, "state file not imported (kept where it is)"),
                }
            }
            loaded = Some(imported);
            st.imported = true;
        }
        (st, loaded)
    }

    /// Reads the intent of a freshly opened database; a corrupt one found here (SQLite
    /// reads pages lazily) is set aside too.
    fn read_back(&mut self, s: Store) -> Option<Loaded> {
        match s.load_intent() {
            Ok(l) => {
                self.db = Some(s);
                self.ready();
                l
            }
            Err(e) if crate::store::is_corrupt(&e) => {
                drop(s);
                match crate::store::set_aside(&self.path) {
                    Ok(aside) => {
                        self.corrupt(format!("{e}; moved aside to {}", aside.display()));
                        match Store::open(&self.path) {
                            Ok(s) => {
                                self.db = Some(s);
                                self.ready();
                            }
                            Err(e) => self.unsaved(&e.to_string()),
                        }
                    }
                    Err(e2) => self.unsaved(&format!("{e}; cannot be moved aside: {e2}")),
                }
                None
            }
            Err(e) => {
                // Readable, but a row is not (hand-edited, written by a broken build):
                // the intent is not trusted, the file kept (energy lives in it too) and
                // rewritten whole by the first commit.
                self.corrupt(format!("{e}; starting without it"));
                self.db = Some(s);
                self.ready();
                None
            }
        }
    }

    fn ready(&mut self) {
        if let Some(s) = &self.db {
            if let Err(e) = s.durable() {
                warn!(error = %e, "intent commits not fsynced");
            }
        }
    }

    fn unsaved(&mut self, why: &str) {
        if !self.alerted {
            self.alerted = true;
            self.alerts.push(Alert::new(
                AlertKind::ControlStateUnsaved,
                Severity::Critical,
                format!("control intent not saved: {why}; kept in memory and tried again"),
            ));
        }
    }

    fn corrupt(&mut self, msg: String) {
        self.alerts.push(corrupt_alert(msg));
    }

    /// The alerts raised since the last call (a corrupt database set aside, an intent
    /// not saved): the loop raises them through the status hub.
    pub fn take_alerts(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.alerts)
    }

    /// The next commit writes every row (the state was replaced: a takeover).
    pub fn rewrite(&mut self) {
        self.full = true;
    }

    /// The runtime resumed `state` from `loaded`, the intent read from the database: when
    /// both name the same miners, GPU nodes, nodes and zones, the rows in the database
    /// are the state's already, and the next commits write only what changes (a restart
    /// of a 30,000-miner site does not rewrite every row). Otherwise (the site file
    /// changed) the first commit rewrites them all.
    pub fn resumed(&mut self, loaded: &ControlState, state: &ControlState) {
        let same = |a: &crate::control::state::Ids, b: &crate::control::state::Ids| {
            let mut x: Vec<&String> = a.0.iter().collect();
            let mut y: Vec<&String> = b.0.iter().collect();
            x.sort_unstable();
            y.sort_unstable();
            x == y
        };
        if self.db.is_some()
            && !self.imported
            && same(&loaded.miner_ids, &state.miner_ids)
            && same(&loaded.gpu_ids, &state.gpu_ids)
            && same(&loaded.node_ids, &state.node_ids)
            && same(&loaded.zone_ids, &state.zone_ids)
        {
            self.full = false;
        }
    }

    /// Commits what changed from `old` to `new` and the journal's rows, before the
    /// decision's commands go out. `touch` commits the timeline's instant even when
    /// nothing changed (shutdown). Returns whether the intent is on disk.
    pub fn commit(
        &mut self,
        old: &ControlState,
        new: &ControlState,
        now: Millis,
        journal: &mut ActionJournal,
        touch: bool,
    ) -> bool {
        if self.db.is_none() && now.saturating_sub(self.last_try) >= REOPEN_EVERY_MS {
            self.last_try = now;
            match Store::open(&self.path) {
                Ok(s) => {
                    info!(database = %self.path.display(), "database open again: intent saved from now on");
                    self.db = Some(s);
                    self.ready();
                    self.full = true;
                }
                Err(e) => warn!(error = %e, "database still cannot be opened"),
            }
        }
        let Some(db) = &mut self.db else {
            return false;
        };
        let touch = touch || now.saturating_sub(self.last_commit) >= TOUCH_EVERY_MS;
        let t0 = std::time::Instant::now();
        let old = (!self.full).then_some(old);
        match db.commit_intent(old, new, now, &journal.pending, touch) {
            Ok(None) => true,
            Ok(Some(c)) => {
                let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
                if self.latencies_us.len() < LATENCIES_KEPT {
                    self.latencies_us.push(us);
                } else {
                    self.latencies_us[self.next] = us;
                    self.next = (self.next + 1) % LATENCIES_KEPT;
                }
                self.commits += 1;
                self.rows += c.rows() as u64;
                tracing::debug!(
                    event = "state.committed",
                    now_ms = now,
                    miners = c.miners,
                    gpus = c.gpus,
                    nodes = c.nodes,
                    zones = c.zones,
                    journal = c.journal,
                    us,
                    "intent committed"
                );
                journal.pending.clear();
                self.full = false;
                self.last_commit = now;
                if self.alerted {
                    self.alerted = false;
                    info!(database = %self.path.display(), "control intent saved again");
                }
                if self.retention_ms > 0 && now.saturating_sub(self.last_prune) >= PRUNE_EVERY_MS {
                    self.last_prune = now;
                    match db.prune_journal(now.saturating_sub(self.retention_ms)) {
                        Ok(0) => {}
                        Ok(n) => info!(
                            event = "journal.pruned",
                            rows = n,
                            "journal rows past retention deleted"
                        ),
                        Err(e) => warn!(error = %e, "journal retention not applied"),
                    }
                }
                true
            }
            Err(e) => {
                self.full = true;
                self.unsaved(&e.to_string());
                false
            }
        }
    }

    /// p50 and p99 of the latest commits' latency, milliseconds.
    pub fn latency_ms(&self) -> Option<(f64, f64)> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let at = |q: f64| {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let k = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            f64::from(v[k - 1]) / 1000.0
        };
        Some((at(0.5), at(0.99)))
    }
}

fn corrupt_alert(msg: String) -> Alert {
    Alert::new(AlertKind::ControlStateCorrupt, Severity::Critical, msg)
}

/// What an older agent's state file held.
#[derive(Deserialize)]
struct LegacyState {
    last_now: Millis,
    control: ControlState,
}

/// The legacy state file's intent, when there is one newer than the database's
/// (`db_last`). A corrupt one is set aside with an alert.
fn import_legacy(path: &Path, db_last: Option<Millis>, alerts: &mut Vec<Alert>) -> Option<Loaded> {
    match read::<LegacyState>(path) {
        Ok(Some(l)) if db_last.is_none_or(|t| l.last_now > t) => Some((l.last_now, l.control)),
        Ok(Some(_)) => {
            // Older than what the database holds: imported before, or left by a
            // downgrade that ended. Set aside so it is never read again.
            legacy_aside(path);
            None
        }
        Ok(None) => None,
        Err(e) => {
            let aside = quarantine(path);
            alerts.push(corrupt_alert(format!(
                "{e}; moved aside to {}",
                aside.map_or_else(|| "nowhere".into(), |p| p.display().to_string())
            )));
            None
        }
    }
}

fn legacy_aside(path: &Path) -> Option<PathBuf> {
    let aside = path.with_extension(format!(
        "json.imported.{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    fs::rename(path, &aside).ok().map(|()| aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        a: u32,
        b: Vec<String>,
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rw-persist-{name}-{}", std::process::id()));
        fs::remove_dir_all(&d).ok();
        d
    }

    #[test]
    fn state_round_trips_and_replaces_atomically() {
        let d = tmpdir("rt");
        let p = d.join("sub/state.json");
        assert_eq!(read::<S>(&p).unwrap(), None);
        let v1 = S {
            a: 1,
            b: vec!["x".into()],
        };
        write_atomic(&p, &v1).unwrap();
        let v2 = S { a: 2, b: vec![] };
        write_atomic(&p, &v2).unwrap();
        assert_eq!(read::<S>(&p).unwrap(), Some(v2));
        // No temporary file is left behind.
        let left: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file_and_can_be_set_aside() {
        let d = tmpdir("corrupt");
        fs::create_dir_all(&d).unwrap();
        let p = d.join("state.json");
        fs::write(&p, b"{\"a\": 1, \"b\": [tru").unwrap();
        let e = read::<S>(&p).unwrap_err();
        assert!(matches!(e, PersistError::Corrupt { .. }));
        assert!(e.to_string().contains("state.json is corrupt"), "{e}");
        let aside = quarantine(&p).unwrap();
        assert!(aside.exists() && !p.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn journal_appends_whole_lines() {
        let d = tmpdir("journal");
        let p = d.join("journal.jsonl");
        {
            let mut j = Journal::open(&p).unwrap();
            j.append(&S { a: 1, b: vec![] }).unwrap();
        }
        let mut j = Journal::open(&p).unwrap();
        j.append(&S {
            a: 2,
            b: vec!["y".into()],
        })
        .unwrap();
        let text = fs::read_to_string(&p).unwrap();
        let rows: Vec<S> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].a, 2);
        fs::remove_dir_all(&d).unwrap();
    }

    fn legacy(path: &Path, last_now: Millis, n: usize, shed: usize) -> ControlState {
        let mut st = crate::store::intent::test_state(n);
        st.miners[shed].intent = crate::control::state::Intent::Sleep;
        st.miners[shed].since = last_now - 10;
        write_atomic(
            path,
            &serde_json::json!({ "last_now": last_now, "control": &st }),
        )
        .unwrap();
        st
    }

    #[test]
    fn a_legacy_state_file_is_imported_once_and_renamed_aside() {
        let d = tmpdir("import");
        let (db, sf) = (d.join("rackwarden.db"), d.join("state.json"));
        let st = legacy(&sf, 5_000, 20, 3);
        let (mut store, loaded) = IntentStore::open(&db, &sf, 90);
        let (t, back) = loaded.unwrap();
        assert_eq!(t, 5_000);
        assert_eq!(back.miners, st.miners);
        assert!(!sf.exists(), "the state file is renamed aside");
        let aside: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.json.imported."))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        // The database holds it now: a restart reads it from there.
        let mut j = ActionJournal::open(&d.join("journal.jsonl"));
        assert!(store.commit(&back, &back, 6_000, &mut j, true));
        drop(store);
        let (_, again) = IntentStore::open(&db, &sf, 90);
        let (t, again) = again.unwrap();
        assert_eq!(t, 6_000);
        let i = again.miner_ids.0.iter().position(|m| m == "m-3").unwrap();
        assert_eq!(again.miners[i].intent, crate::control::state::Intent::Sleep);
        // An older state file found later (a downgrade that ended) is not imported.
        legacy(&sf, 1_000, 20, 4);
        let (_, third) = IntentStore::open(&db, &sf, 90);
        let third = third.unwrap().1;
        let i = third.miner_ids.0.iter().position(|m| m == "m-4").unwrap();
        assert_eq!(
            third.miners[i].intent,
            crate::control::state::Intent::Normal
        );
        assert!(!sf.exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_database_starts_empty_and_a_corrupt_one_is_set_aside() {
        let d = tmpdir("db");
        let (db, sf) = (d.join("rackwarden.db"), d.join("state.json"));
        let (mut store, loaded) = IntentStore::open(&db, &sf, 90);
        assert!(loaded.is_none());
        assert!(store.take_alerts().is_empty(), "a first start is no alert");
        let st = crate::store::intent::test_state(5);
        let mut j = ActionJournal::open(&d.join("journal.jsonl"));
        assert!(store.commit(&st, &st, 1_000, &mut j, false));
        drop(store);
        {
            // Resumed with the same ids: nothing is rewritten until something changes.
            let (mut again, loaded) = IntentStore::open(&db, &sf, 90);
            let (_, l) = loaded.unwrap();
            again.resumed(&l, &l);
            assert!(again.commit(&l, &l, 1_500, &mut j, false));
            assert_eq!(again.commits, 0, "a resume rewrote the intent");
            let mut changed = l.clone();
            changed.miners[2].intent = crate::control::state::Intent::Sleep;
            assert!(again.commit(&l, &changed, 1_600, &mut j, false));
            assert_eq!((again.commits, again.rows), (1, 1));
        }
        // Scribbled over (a disk fault): set aside, the agent starts with no intent.
        for ext in ["-wal", "-shm"] {
            let mut p = db.as_os_str().to_owned();
            p.push(ext);
            fs::remove_file(PathBuf::from(p)).ok();
        }
        fs::write(&db, vec![0x42; 16_384]).unwrap();
        let (mut store, loaded) = IntentStore::open(&db, &sf, 90);
        assert!(loaded.is_none());
        let names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("rackwarden.db.corrupt.")),
            "{names:?}"
        );
        // Said once, for the loop to raise (the file it moved named).
        let alerts = store.take_alerts();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].kind, AlertKind::ControlStateCorrupt);
        assert!(
            alerts[0].message.contains("rackwarden.db.corrupt."),
            "{}",
            alerts[0].message
        );
        assert!(store.take_alerts().is_empty());
        // The new database takes commits.
        assert!(store.commit(&st, &st, 2_000, &mut j, false));
        fs::remove_dir_all(&d).unwrap();
    }
}
