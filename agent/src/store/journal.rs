//! The action journal in the agent's database: every command the agent sent (or, dry,
//! would have sent), confirmed or escalated, kept `journal_retention_days`
//! (`rackwarden journal` reads it).
//!
//! One index, on time: rows arrive in time order, so a commit of thousands of rows (a
//! mass shed) writes only the pages at the end of the table and of the index. Indexes
//! on device or node would take each row to a page of its own key and multiply the
//! bytes a mass shed writes; a query by device or node scans the span asked for
//! instead (90 days of a busy site in about a tenth of a second, bench/).
//!
//! A row is also the line of the JSON-lines export (`agent.journal_file`) that log
//! shippers follow: the field names are the same.

use rusqlite::{params, Transaction};
use serde::{Deserialize, Serialize};

use super::{ms_i64, sql, Store, StoreError};
use crate::control::Millis;

/// One journaled command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRow {
    /// Wall-clock time, RFC 3339.
    pub time: String,
    /// The agent's timeline (simulated time in the demo and the simulator tests).
    pub now_ms: Millis,
    /// The constraint (node or zone) the command served; empty for a read-back.
    pub node: String,
    pub device: String,
    pub lever: String,
    #[serde(rename = "from")]
    pub from_w: f64,
    #[serde(rename = "to")]
    pub to_w: f64,
    /// Why: a decision reason by its serde name (`shed`, `meter_silent`, ...), or what
    /// the read-back showed.
    pub reason: String,
    pub confirmed: bool,
    pub dry_run: bool,
    /// `sent` or `would` (dry run) for a command; absent for a read-back's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// Inserts `rows` inside `tx`; how many.
pub(super) fn insert(tx: &Transaction<'_>, rows: &[JournalRow]) -> rusqlite::Result<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut put = tx.prepare_cached(
        "INSERT INTO journal (at_ms, time, node, device, lever, from_w, to_w, reason,
                              confirmed, dry_run, result)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for r in rows {
        put.execute(params![
            ms_i64(r.now_ms),
            r.time,
            r.node,
            r.device,
            r.lever,
            r.from_w,
            r.to_w,
            r.reason,
            r.confirmed,
            r.dry_run,
            r.result
        ])?;
    }
    Ok(rows.len())
}

/// What `rackwarden journal` asks for; every filter optional.
#[derive(Debug, Clone, Default)]
pub struct JournalQuery {
    pub device: Option<String>,
    pub node: Option<String>,
    pub lever: Option<String>,
    /// Rows at or after this instant of the agent's timeline.
    pub since_ms: Option<Millis>,
    /// At most this many rows, the latest.
    pub limit: Option<usize>,
}

impl Store {
    /// The journal rows matching `q`, oldest first.
    pub fn journal(&self, q: &JournalQuery) -> Result<Vec<JournalRow>, StoreError> {
        let e = |err| sql(&self.path, err);
        let limit = q
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        // The newest `limit` rows matching, read back in time order. Each filter either
        // matches or is NULL; the time index serves `since`.
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT time, at_ms, node, device, lever, from_w, to_w, reason, confirmed,
                        dry_run, result
                 FROM (SELECT * FROM journal
                       WHERE (?1 IS NULL OR device = ?1)
                         AND (?2 IS NULL OR node = ?2)
                         AND (?3 IS NULL OR lever = ?3)
                         AND at_ms >= ?4
                       ORDER BY at_ms DESC, seq DESC LIMIT ?5)
                 ORDER BY at_ms, seq",
            )
            .map_err(e)?;
        let rows = stmt
            .query_map(
                params![
                    q.device,
                    q.node,
                    q.lever,
                    q.since_ms.map_or(i64::MIN, ms_i64),
                    limit
                ],
                |r| {
                    Ok(JournalRow {
                        time: r.get(0)?,
                        now_ms: r.get::<_, i64>(1)?.max(0).unsigned_abs(),
                        node: r.get(2)?,
                        device: r.get(3)?,
                        lever: r.get(4)?,
                        from_w: r.get(5)?,
                        to_w: r.get(6)?,
                        reason: r.get(7)?,
                        confirmed: r.get(8)?,
                        dry_run: r.get(9)?,
                        result: r.get(10)?,
                    })
                },
            )
            .map_err(e)?;
        rows.collect::<Result<_, _>>().map_err(e)
    }

    /// The latest instant journaled (`--since` counts back from it when the agent's
    /// timeline is not the wall clock, as in the demo).
    pub fn journal_last_ms(&self) -> Result<Option<Millis>, StoreError> {
        self.conn
            .query_row("SELECT max(at_ms) FROM journal", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map(|v| v.map(|x| x.max(0).unsigned_abs()))
            .map_err(|e| sql(&self.path, e))
    }

    /// Deletes the rows older than `before`; how many.
    pub fn prune_journal(&mut self, before: Millis) -> Result<usize, StoreError> {
        self.conn
            .execute("DELETE FROM journal WHERE at_ms < ?1", [ms_i64(before)])
            .map_err(|e| sql(&self.path, e))
    }
}
