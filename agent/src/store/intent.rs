//! The control intent in the agent's database: a row per miner, GPU node, node and zone.
//!
//! Each decision commits only the rows that changed since the last commit, with the
//! journal rows of that decision, in one transaction, before its commands go out. A
//! changed miner row is appended to `intent_miner_log` rather than rewritten in place:
//! a mass shed's thousands of changed miners lie all over the miners table, and
//! rewriting them in place rewrote most of its pages at every commit; appended, they
//! fill new pages only. The log is folded into `intent_miners` when the site is quiet
//! (or when it grows past [`LOG_FOLD_ROWS`]). A
//! crash between the commit and the commands leaves an intent that knows about every
//! command (it is sent again on resume), never a command the intent does not know about.
//! The connection writes with `synchronous = FULL`: a commit survives a power cut, as the
//! fsynced state file did.
//!
//! A row keeps what a restart carries over ([`ControlState::for_site`]): the whole
//! [`MinerState`] (intent, pending command, cycle history, learned times) as JSON, GPU
//! caps and their pending command, each node's power band and last restore, each zone's
//! redundancy. JSON floats round-trip exactly (`serde_json`'s `float_roundtrip`), so a
//! restart reads back the very state it wrote.

use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;

use super::journal::JournalRow;
use super::{ms_i64, sql, Store, StoreError};
use crate::control::state::{
    Band, ControlState, GpuState, Ids, Intent, MinerState, NodeState, ZoneState,
};
use crate::control::Millis;

/// What one commit wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub miners: usize,
    pub gpus: usize,
    pub nodes: usize,
    pub zones: usize,
    pub journal: usize,
    /// Miner rows the log held when this commit folded it into the table (0: not folded).
    pub folded: u64,
}

impl Committed {
    pub fn rows(&self) -> usize {
        self.miners + self.gpus + self.nodes + self.zones + self.journal
    }
}

fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// The log is folded into the miners table at the first quiet commit once it holds this
/// many rows or is [`LOG_FOLD_MS`] old, and at any commit past [`LOG_MAX_ROWS`].
pub const LOG_FOLD_ROWS: u64 = 5_000;
pub const LOG_FOLD_MS: Millis = 600_000;
pub const LOG_MAX_ROWS: u64 = 200_000;

fn intent_columns(i: Intent) -> (&'static str, Option<f64>) {
    match i {
        Intent::Normal => ("normal", None),
        Intent::Target { w } => ("target", Some(w)),
        Intent::Sleep => ("sleep", None),
        Intent::OutletOff => ("outlet_off", None),
    }
}

/// Whether two miner states are the same row: everything but the alert flags a restart
/// resets (`stale_alerted`, `no_driver_alerted`; a loaded simulator flips thousands of
/// stale flags a minute, none of which a restart would read).
fn miner_same(a: &MinerState, b: &MinerState) -> bool {
    a.intent == b.intent
        && a.since == b.since
        && a.pending == b.pending
        && a.failed == b.failed
        && a.slept_at == b.slept_at
        && a.woke_at == b.woke_at
        && a.sleep_cycles == b.sleep_cycles
        && a.power_cycles == b.power_cycles
        && a.times == b.times
        && a.slow_alerted == b.slow_alerted
}

/// The parts of a GPU node's state a restart carries over.
fn gpu_same(a: &GpuState, b: &GpuState) -> bool {
    a.cap_w == b.cap_w && a.capped_by == b.capped_by && a.pending == b.pending
}

fn node_same(a: &NodeState, b: &NodeState) -> bool {
    a.band == b.band && a.last_restore_at == b.last_restore_at
}

fn zone_same(a: &ZoneState, b: &ZoneState) -> bool {
    a.n_plus_1 == b.n_plus_1 && a.n == b.n
}

impl Store {
    /// A value of `intent_meta` (`last_now_ms`, `site_id`).
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM intent_meta WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| sql(&self.path, e))
    }

    /// Makes this connection's commits durable against a power cut (the intent's
    /// guarantee); the energy writer's connection keeps `NORMAL`.
    pub fn durable(&self) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| sql(&self.path, e))
    }

    /// The intent a previous run committed, with the last instant of its timeline;
    /// `None` when no intent was ever committed (a new database).
    pub fn load_intent(&self) -> Result<Option<(Millis, ControlState)>, StoreError> {
        let e = |err| sql(&self.path, err);
        let meta = |key: &str| self.meta(key);
        let Some(last_now) = meta("last_now_ms")? else {
            return Ok(None);
        };
        let last_now: Millis = last_now.parse().unwrap_or(0);
        let site_id = meta("site_id")?.unwrap_or_default();
        let bad = |what: &str, id: &str, err: serde_json::Error| StoreError::Row {
            path: self.path.clone(),
            row: format!("{what} {id}"),
            why: err.to_string(),
        };

        // The table, then the log's rows over it in the order they were written.
        let mut q = self
            .conn
            .prepare(
                "SELECT id, state FROM intent_miners
                 UNION ALL SELECT id, state FROM (SELECT id, state FROM intent_miner_log ORDER BY seq)",
            )
            .map_err(e)?;
        let mut latest: std::collections::BTreeMap<String, String> = Default::default();
        for row in q
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(e)?
        {
            let (id, json) = row.map_err(e)?;
            latest.insert(id, json);
        }
        let mut miner_ids = Vec::with_capacity(latest.len());
        let mut miners = Vec::with_capacity(latest.len());
        for (id, json) in latest {
            let m: MinerState = serde_json::from_str(&json).map_err(|x| bad("miner", &id, x))?;
            miner_ids.push(id);
            miners.push(m);
        }

        let mut q = self
            .conn
            .prepare("SELECT id, state FROM intent_gpus ORDER BY id")
            .map_err(e)?;
        let rows = q
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let mut gpu_ids = Vec::with_capacity(rows.len());
        let mut gpus = Vec::with_capacity(rows.len());
        for (id, json) in rows {
            let g: GpuState = serde_json::from_str(&json).map_err(|x| bad("GPU node", &id, x))?;
            gpu_ids.push(id);
            gpus.push(g);
        }

        let mut q = self
            .conn
            .prepare("SELECT id, band, last_restore_ms FROM intent_nodes ORDER BY id")
            .map_err(e)?;
        let rows = q
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            })
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let mut node_ids = Vec::with_capacity(rows.len());
        let mut nodes = Vec::with_capacity(rows.len());
        for (id, band, last) in rows {
            let band: Band = serde_json::from_value(serde_json::Value::String(band))
                .map_err(|x| bad("node", &id, x))?;
            node_ids.push(id);
            nodes.push(NodeState {
                band,
                last_restore_at: last.map(|v| v.max(0).unsigned_abs()),
                ..NodeState::default()
            });
        }

        let mut q = self
            .conn
            .prepare("SELECT id, n_plus_1, n FROM intent_zones ORDER BY id")
            .map_err(e)?;
        let rows = q
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, bool>(2)?,
                ))
            })
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let mut zone_ids = Vec::with_capacity(rows.len());
        let mut zones = Vec::with_capacity(rows.len());
        for (id, n_plus_1, n) in rows {
            zone_ids.push(id);
            zones.push(ZoneState {
                n_plus_1,
                n,
                unit_stale_alerted: Vec::new(),
            });
        }

        Ok(Some((
            last_now,
            ControlState {
                site_id,
                started_at: last_now,
                fresh_since: None,
                startup_done: false,
                startup_alerted: false,
                node_ids: Ids(Arc::new(node_ids)),
                miner_ids: Ids(Arc::new(miner_ids)),
                gpu_ids: Ids(Arc::new(gpu_ids)),
                zone_ids: Ids(Arc::new(zone_ids)),
                nodes,
                miners,
                gpus,
                zones,
            },
        )))
    }

    /// Commits `new` in one transaction: every row that differs from `old` (every row,
    /// and rows of ids no longer in the site removed, when `old` is `None`), the journal
    /// rows, and the timeline's `now`. Nothing is written (`None`) when no row differs,
    /// no journal row waits and `touch` is false.
    pub fn commit_intent(
        &mut self,
        old: Option<&ControlState>,
        new: &ControlState,
        now: Millis,
        journal: &[JournalRow],
        touch: bool,
    ) -> Result<Option<Committed>, StoreError> {
        let path = self.path.clone();
        let e = |err| sql(&path, err);
        let old = old.filter(|o| {
            o.miners.len() == new.miners.len()
                && o.gpus.len() == new.gpus.len()
                && o.nodes.len() == new.nodes.len()
                && o.zones.len() == new.zones.len()
        });
        if let Some(o) = old {
            if !touch && journal.is_empty() && !differs(o, new) {
                return Ok(None);
            }
        }
        let tx = self.conn.transaction().map_err(e)?;
        let mut done = Committed::default();
        if old.is_none() {
            for t in [
                "intent_miners",
                "intent_miner_log",
                "intent_gpus",
                "intent_nodes",
                "intent_zones",
            ] {
                tx.execute(&format!("DELETE FROM {t}"), []).map_err(e)?;
            }
            self.log = Some(Log {
                rows: 0,
                since: now,
            });
        }
        let log = match self.log {
            Some(l) => l,
            None => {
                let rows: i64 = tx
                    .query_row("SELECT count(*) FROM intent_miner_log", [], |r| r.get(0))
                    .map_err(e)?;
                Log {
                    rows: rows.max(0).unsigned_abs(),
                    since: now,
                }
            }
        };
        write_miners(&tx, old, new, &mut done).map_err(e)?;
        // A full write went to the table; changes went to the log.
        let appended = if old.is_some() { done.miners as u64 } else { 0 };
        let mut log = Log {
            rows: log.rows + appended,
            since: if log.rows == 0 { now } else { log.since },
        };
        if old.is_some()
            && log.rows > 0
            && (log.rows >= LOG_MAX_ROWS
                || (done.miners == 0
                    && (log.rows >= LOG_FOLD_ROWS || now.saturating_sub(log.since) >= LOG_FOLD_MS)))
        {
            fold_log(&tx).map_err(e)?;
            done.folded = log.rows;
            log = Log {
                rows: 0,
                since: now,
            };
        }
        write_others(&tx, old, new, &mut done).map_err(e)?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO intent_meta VALUES (?1, ?2)")
                .map_err(e)?;
            put.execute(params!["last_now_ms", now.to_string()])
                .map_err(e)?;
            put.execute(params!["site_id", new.site_id]).map_err(e)?;
        }
        done.journal = super::journal::insert(&tx, journal).map_err(e)?;
        // Known only once it is on disk: a failed commit counts the log again.
        self.log = None;
        tx.commit().map_err(e)?;
        self.log = Some(log);
        Ok(Some(done))
    }
}

/// Whether any row `commit_intent` writes differs between `a` and `b` (same shape).
pub fn differs(a: &ControlState, b: &ControlState) -> bool {
    a.site_id != b.site_id
        || a.miners
            .iter()
            .zip(&b.miners)
            .any(|(x, y)| !miner_same(x, y))
        || a.gpus.iter().zip(&b.gpus).any(|(x, y)| !gpu_same(x, y))
        || a.nodes.iter().zip(&b.nodes).any(|(x, y)| !node_same(x, y))
        || a.zones.iter().zip(&b.zones).any(|(x, y)| !zone_same(x, y))
}

/// How many rows the miner log holds, and since when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Log {
    rows: u64,
    since: Millis,
}

/// Folds the miner log into the miners table (each miner's latest row) and empties it.
fn fold_log(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "INSERT OR REPLACE INTO intent_miners
            SELECT id, intent, target_w, since_ms, pending_lever, state FROM (
                SELECT *, row_number() OVER (PARTITION BY id ORDER BY seq DESC) AS rn
                FROM intent_miner_log)
            WHERE rn = 1;
         DELETE FROM intent_miner_log;",
    )
}

fn write_miners(
    tx: &Transaction<'_>,
    old: Option<&ControlState>,
    new: &ControlState,
    done: &mut Committed,
) -> rusqlite::Result<()> {
    // A full write goes to the table; changes are appended to the log.
    let mut put = if old.is_none() {
        tx.prepare_cached("INSERT INTO intent_miners VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
    } else {
        tx.prepare_cached(
            "INSERT INTO intent_miner_log (id, intent, target_w, since_ms, pending_lever, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
    };
    for (i, m) in new.miners.iter().enumerate() {
        if old.is_some_and(|o| miner_same(&o.miners[i], m)) {
            continue;
        }
        let (intent, target) = intent_columns(m.intent);
        let row = MinerState {
            stale_alerted: false,
            no_driver_alerted: false,
            ..m.clone()
        };
        let json = serde_json::to_string(&row)
            .map_err(|x| rusqlite::Error::ToSqlConversionFailure(Box::new(x)))?;
        put.execute(params![
            new.miner_ids.0[i],
            intent,
            target,
            ms_i64(m.since),
            m.pending.map(|p| p.lever.name()),
            json
        ])?;
        done.miners += 1;
    }
    Ok(())
}

fn write_others(
    tx: &Transaction<'_>,
    old: Option<&ControlState>,
    new: &ControlState,
    done: &mut Committed,
) -> rusqlite::Result<()> {
    let mut put = tx.prepare_cached("INSERT OR REPLACE INTO intent_gpus VALUES (?1, ?2, ?3)")?;
    for (i, g) in new.gpus.iter().enumerate() {
        if old.is_some_and(|o| gpu_same(&o.gpus[i], g)) {
            continue;
        }
        let json = serde_json::to_string(&GpuState {
            cap_w: g.cap_w,
            capped_by: g.capped_by.clone(),
            pending: g.pending,
            ..GpuState::default()
        })
        .map_err(|x| rusqlite::Error::ToSqlConversionFailure(Box::new(x)))?;
        put.execute(params![new.gpu_ids.0[i], g.cap_w, json])?;
        done.gpus += 1;
    }
    let mut put = tx.prepare_cached("INSERT OR REPLACE INTO intent_nodes VALUES (?1, ?2, ?3)")?;
    for (i, n) in new.nodes.iter().enumerate() {
        if old.is_some_and(|o| node_same(&o.nodes[i], n)) {
            continue;
        }
        put.execute(params![
            new.node_ids.0[i],
            name(&n.band),
            n.last_restore_at.map(ms_i64)
        ])?;
        done.nodes += 1;
    }
    let mut put = tx.prepare_cached("INSERT OR REPLACE INTO intent_zones VALUES (?1, ?2, ?3)")?;
    for (i, z) in new.zones.iter().enumerate() {
        if old.is_some_and(|o| zone_same(&o.zones[i], z)) {
            continue;
        }
        put.execute(params![new.zone_ids.0[i], z.n_plus_1, z.n])?;
        done.zones += 1;
    }
    Ok(())
}

/// One curtailed miner as `rackwarden state` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinerIntentRow {
    pub id: String,
    /// `normal`, `target`, `sleep` or `outlet_off`.
    pub intent: String,
    pub target_w: Option<f64>,
    pub since_ms: Millis,
    /// The lever of a command awaiting its read-back.
    pub pending: Option<String>,
    /// The last command journaled for this miner: its lever, node and reason.
    pub last_lever: Option<String>,
    pub last_node: Option<String>,
    pub reason: Option<String>,
}

/// A capped GPU node as `rackwarden state` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuIntentRow {
    pub id: String,
    pub cap_w: Option<f64>,
    pub pending: bool,
}

/// The intent in force, read from the database (`rackwarden state`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntentView {
    pub site_id: String,
    pub last_now_ms: Millis,
    pub miners: Vec<MinerIntentRow>,
    pub gpus: Vec<GpuIntentRow>,
    /// Nodes whose power band is not `normal`: (id, band).
    pub nodes: Vec<(String, String)>,
    /// Zones without N+1: (id, capacity still covers the load).
    pub zones: Vec<(String, bool)>,
}

impl Store {
    /// The intent in force: miners not at their normal intent or with a command in
    /// flight (every miner with `all`), capped GPU nodes, nodes out of their normal band,
    /// zones without N+1. `None` when no intent was ever committed.
    pub fn intent_view(&self, all: bool) -> Result<Option<IntentView>, StoreError> {
        let e = |err| sql(&self.path, err);
        let meta = |key: &str| self.meta(key);
        let Some(last_now) = meta("last_now_ms")? else {
            return Ok(None);
        };
        let ms = |v: i64| v.max(0).unsigned_abs();
        // The reason is the latest journaled command for the miner: one pass over the
        // journal (it has no device index, see `journal`).
        let mut q = self
            .conn
            .prepare(
                "WITH last AS (
                    SELECT device, lever, node, reason, max(seq) FROM journal
                    WHERE result IS NOT NULL GROUP BY device)
                 SELECT m.id, m.intent, m.target_w, m.since_ms, m.pending_lever,
                        last.lever, last.node, last.reason
                 FROM intent_miners_now m LEFT JOIN last ON last.device = m.id
                 WHERE ?1 OR m.intent != 'normal' OR m.pending_lever IS NOT NULL
                 ORDER BY m.id",
            )
            .map_err(e)?;
        let miners = q
            .query_map([all], |r| {
                Ok(MinerIntentRow {
                    id: r.get(0)?,
                    intent: r.get(1)?,
                    target_w: r.get(2)?,
                    since_ms: ms(r.get(3)?),
                    pending: r.get(4)?,
                    last_lever: r.get(5)?,
                    last_node: r.get(6)?,
                    reason: r.get(7)?,
                })
            })
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let mut q = self
            .conn
            .prepare("SELECT id, cap_w, state FROM intent_gpus WHERE ?1 OR cap_w IS NOT NULL OR state LIKE '%\"pending\":{%' ORDER BY id")
            .map_err(e)?;
        let gpus = q
            .query_map([all], |r| {
                Ok(GpuIntentRow {
                    id: r.get(0)?,
                    cap_w: r.get(1)?,
                    pending: r.get::<_, String>(2)?.contains("\"pending\":{"),
                })
            })
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let mut q = self
            .conn
            .prepare("SELECT id, band FROM intent_nodes WHERE ?1 OR band != 'normal' ORDER BY id")
            .map_err(e)?;
        let nodes = q
            .query_map([all], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let mut q = self
            .conn
            .prepare("SELECT id, n FROM intent_zones WHERE ?1 OR n_plus_1 = 0 ORDER BY id")
            .map_err(e)?;
        let zones = q
            .query_map([all], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        Ok(Some(IntentView {
            site_id: meta("site_id")?.unwrap_or_default(),
            last_now_ms: last_now.parse().unwrap_or(0),
            miners,
            gpus,
            nodes,
            zones,
        }))
    }
}

/// A state of `n` miners, 2 nodes, 1 GPU node and 1 zone (tests).
#[cfg(test)]
pub(crate) fn test_state(n: usize) -> ControlState {
    let ids = |p: &str, k: usize| Ids(Arc::new((0..k).map(|i| format!("{p}-{i}")).collect()));
    ControlState {
        site_id: "s".into(),
        started_at: 0,
        fresh_since: None,
        startup_done: true,
        startup_alerted: false,
        node_ids: ids("node", 2),
        miner_ids: ids("m", n),
        gpu_ids: ids("g", 1),
        zone_ids: ids("z", 1),
        nodes: vec![NodeState::default(); 2],
        miners: vec![MinerState::default(); n],
        gpus: vec![GpuState::default(); 1],
        zones: vec![ZoneState::default(); 1],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::control::plan::Lever;
    use crate::control::state::Pending;
    use crate::store::journal::JournalQuery;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rw-intent-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        d.join("rackwarden.db")
    }

    use super::test_state as state;

    fn row(device: &str, node: &str, lever: &str, at: Millis, reason: &str) -> JournalRow {
        JournalRow {
            time: String::new(),
            now_ms: at,
            node: node.into(),
            device: device.into(),
            lever: lever.into(),
            from_w: 3000.0,
            to_w: 0.1 + 2.0 / 3.0,
            reason: reason.into(),
            confirmed: false,
            dry_run: false,
            result: Some("sent".into()),
        }
    }

    #[test]
    fn only_changed_rows_are_written_and_a_restart_reads_back_exactly() {
        let p = tmp("rt");
        let mut s = Store::open(&p).unwrap();
        let a = state(100);
        let c = s
            .commit_intent(None, &a, 1_000, &[], false)
            .unwrap()
            .unwrap();
        assert_eq!((c.miners, c.gpus, c.nodes, c.zones), (100, 1, 2, 1));
        // Nothing changed, nothing journaled, no touch: no transaction at all.
        assert_eq!(
            s.commit_intent(Some(&a), &a, 1_500, &[], false).unwrap(),
            None
        );
        // Nor when only an alert flag a restart resets flipped.
        let mut flipped = a.clone();
        flipped.miners[3].stale_alerted = true;
        flipped.miners[4].no_driver_alerted = true;
        assert_eq!(
            s.commit_intent(Some(&a), &flipped, 1_600, &[], false)
                .unwrap(),
            None
        );
        let mut b = a.clone();
        // Floats that do not print short: the read-back must be bit-exact.
        b.miners[7].intent = Intent::Target {
            w: 2_345.678_901_234_567,
        };
        b.miners[7].since = 2_000;
        b.miners[7].pending = Some(Pending {
            lever: Lever::PowerTarget,
            issued_at: 2_000,
            deadline: 32_000,
            from_w: 1.0 / 3.0,
            to_w: 2_345.678_901_234_567,
            emergency: false,
        });
        b.miners[7].times.record_shed(4_321);
        b.miners[9].intent = Intent::Sleep;
        b.gpus[0].cap_w = Some(0.1 + 0.2);
        b.nodes[1].band = crate::control::state::Band::Shed;
        b.nodes[0].other_kw = 12.5; // not carried over a restart: no row written for it
        let c = s
            .commit_intent(
                Some(&a),
                &b,
                2_000,
                &[row("m-7", "node-1", "power_target", 2_000, "shed")],
                false,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.miners, c.gpus, c.nodes, c.zones, c.journal),
            (2, 1, 1, 0, 1)
        );
        drop(s);
        let s = Store::open(&p).unwrap();
        let (last, back) = s.load_intent().unwrap().unwrap();
        assert_eq!(last, 2_000);
        // Rows come back by id (the order of `for_site`'s matching, not the site's).
        let by_id: std::collections::HashMap<&String, &MinerState> =
            back.miner_ids.0.iter().zip(&back.miners).collect();
        assert_eq!(by_id.len(), 100);
        for (id, m) in b.miner_ids.0.iter().zip(&b.miners) {
            assert!(by_id[id] == m, "miner {id} read back differs");
        }
        assert_eq!(
            back.gpus[0].cap_w.unwrap().to_bits(),
            (0.1f64 + 0.2).to_bits()
        );
        assert_eq!(back.node_ids.0[1], "node-1");
        assert_eq!(back.nodes[1].band, crate::control::state::Band::Shed);
        assert_eq!(back.nodes[0].other_kw, 0.0);
        // The view joins each curtailed miner to the command that curtailed it.
        let v = s.intent_view(false).unwrap().unwrap();
        assert_eq!(v.miners.len(), 2, "{v:?}");
        let m7 = v.miners.iter().find(|m| m.id == "m-7").unwrap();
        assert_eq!(m7.intent, "target");
        assert_eq!(m7.pending.as_deref(), Some("power_target"));
        assert_eq!(m7.reason.as_deref(), Some("shed"));
        assert_eq!(m7.last_node.as_deref(), Some("node-1"));
        let m9 = v.miners.iter().find(|m| m.id == "m-9").unwrap();
        assert_eq!((m9.intent.as_str(), m9.reason.as_deref()), ("sleep", None));
        assert_eq!(v.gpus.len(), 1);
        assert_eq!(v.nodes, vec![("node-1".to_owned(), "shed".to_owned())]);
        assert_eq!(s.intent_view(true).unwrap().unwrap().miners.len(), 100);
    }

    #[test]
    fn changed_miners_go_to_the_log_and_are_folded_into_the_table_when_quiet() {
        let p = tmp("fold");
        let mut s = Store::open(&p).unwrap();
        let a = state(50);
        s.commit_intent(None, &a, 1_000, &[], false).unwrap();
        let mut b = a.clone();
        let mut prev = a.clone();
        // Three decisions change miner 5 three times and miner 6 once.
        for (k, t) in [(1.0, 2_000), (2.0, 3_000), (3.0, 4_000)] {
            b.miners[5].intent = Intent::Target { w: 1_000.0 * k };
            if k > 2.5 {
                b.miners[6].intent = Intent::Sleep;
            }
            let c = s
                .commit_intent(Some(&prev), &b, t, &[], false)
                .unwrap()
                .unwrap();
            assert_eq!(c.folded, 0);
            prev = b.clone();
        }
        let count = |s: &Store, t: &str| -> i64 {
            s.conn
                .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&s, "intent_miner_log"), 4);
        // The view for sqlite3 is the intent in force.
        let (w, n): (f64, i64) = s
            .conn
            .query_row(
                "SELECT (SELECT target_w FROM intent_miners_now WHERE id = 'm-5'), count(*) FROM intent_miners_now",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((w, n), (3_000.0, 50));
        let v = s.intent_view(false).unwrap().unwrap();
        assert_eq!(v.miners.len(), 2);
        // A quiet commit soon after: kept in the log. Ten minutes on: folded.
        let c = s
            .commit_intent(Some(&b), &b, 5_000, &[], true)
            .unwrap()
            .unwrap();
        assert_eq!(c.folded, 0);
        let c = s
            .commit_intent(Some(&b), &b, 2_000 + LOG_FOLD_MS, &[], true)
            .unwrap()
            .unwrap();
        assert_eq!(c.folded, 4);
        assert_eq!(count(&s, "intent_miner_log"), 0);
        assert_eq!(count(&s, "intent_miners"), 50);
        drop(s);
        let s = Store::open(&p).unwrap();
        let (_, back) = s.load_intent().unwrap().unwrap();
        let i = back.miner_ids.0.iter().position(|m| m == "m-5").unwrap();
        assert_eq!(back.miners[i].intent, Intent::Target { w: 3_000.0 });
        let i = back.miner_ids.0.iter().position(|m| m == "m-6").unwrap();
        assert_eq!(back.miners[i].intent, Intent::Sleep);
    }

    #[test]
    fn a_full_commit_drops_rows_of_ids_gone_from_the_site() {
        let p = tmp("gone");
        let mut s = Store::open(&p).unwrap();
        s.commit_intent(None, &state(10), 1, &[], false).unwrap();
        s.commit_intent(None, &state(4), 2, &[], false).unwrap();
        let (_, back) = s.load_intent().unwrap().unwrap();
        assert_eq!(back.miners.len(), 4);
    }

    #[test]
    fn the_journal_filters_by_device_node_lever_and_time_and_keeps_its_retention() {
        let p = tmp("journal");
        let mut s = Store::open(&p).unwrap();
        let a = state(3);
        let rows: Vec<JournalRow> = (0..50u64)
            .map(|i| {
                row(
                    &format!("m-{}", i % 3),
                    if i % 2 == 0 { "feed-a" } else { "zone-1" },
                    if i % 5 == 0 { "sleep" } else { "power_target" },
                    i * 1_000,
                    "meter_silent",
                )
            })
            .collect();
        s.commit_intent(None, &a, 50_000, &rows, false).unwrap();
        let q = |device: Option<&str>,
                 node: Option<&str>,
                 lever: Option<&str>,
                 since: Option<Millis>| JournalQuery {
            device: device.map(Into::into),
            node: node.map(Into::into),
            lever: lever.map(Into::into),
            since_ms: since,
            limit: None,
        };
        assert_eq!(s.journal(&q(None, None, None, None)).unwrap().len(), 50);
        let m1 = s.journal(&q(Some("m-1"), None, None, None)).unwrap();
        assert_eq!(m1.len(), 17);
        assert!(m1.iter().all(|r| r.device == "m-1"));
        assert!(
            m1.windows(2).all(|w| w[0].now_ms < w[1].now_ms),
            "oldest first"
        );
        assert_eq!(
            s.journal(&q(None, Some("feed-a"), Some("sleep"), None))
                .unwrap()
                .len(),
            5
        );
        let late = s.journal(&q(None, None, None, Some(40_000))).unwrap();
        assert_eq!(late.len(), 10);
        assert_eq!(late[0].to_w, 0.1 + 2.0 / 3.0, "floats read back exactly");
        assert_eq!(late[0].reason, "meter_silent");
        let last3 = s
            .journal(&JournalQuery {
                limit: Some(3),
                ..JournalQuery::default()
            })
            .unwrap();
        assert_eq!(
            last3.iter().map(|r| r.now_ms).collect::<Vec<_>>(),
            vec![47_000, 48_000, 49_000]
        );
        assert_eq!(s.journal_last_ms().unwrap(), Some(49_000));
        assert_eq!(s.prune_journal(20_000).unwrap(), 20);
        assert_eq!(s.journal(&q(None, None, None, None)).unwrap().len(), 30);
    }
}
