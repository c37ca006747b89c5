//! Energy accounting's part of the agent's database (`crate::store`): energy slots per
//! node, and each meter's last reading so a counter bridges the agent's own downtime.
//!
//! A slot row holds what one node drew in one 15-minute slot; the book hands over what
//! it accumulated since its last commit and the row adds it, so a slot split by a restart
//! sums its parts. One transaction per commit: the slots and the last readings they
//! were counted up to go in together, so a crash between two commits neither loses nor
//! double counts a reading's energy.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};

use super::meter::{LastReading, Slot};
use crate::control::Millis;
use crate::store::{ms_i64, sql};
pub use crate::store::{open_or_set_aside, Store, StoreError};

/// One slot row: node id, slot start, figures.
pub type SlotRow = (String, Millis, Slot);

impl Store {
    /// Every meter's last reading, by (node id, meter index).
    pub fn last_readings(&self) -> Result<HashMap<(String, u32), LastReading>, StoreError> {
        let e = |err| sql(&self.path, err);
        let mut q = self
            .conn
            .prepare("SELECT node, meter, t_ms, kw, counter_kwh FROM energy_meters")
            .map_err(e)?;
        let rows = q
            .query_map([], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, u32>(1)?),
                    LastReading {
                        t: r.get::<_, i64>(2)?.max(0).unsigned_abs(),
                        kw: r.get(3)?,
                        counter_kwh: r.get(4)?,
                    },
                ))
            })
            .map_err(e)?;
        rows.collect::<Result<_, _>>().map_err(e)
    }

    /// Adds `slots` to their rows and records the meters' last readings, in one
    /// transaction.
    pub fn commit(
        &mut self,
        slots: &[SlotRow],
        last: &[(String, u32, LastReading)],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |err| sql(&path, err);
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut add = tx
                .prepare_cached(
                    "INSERT INTO energy_slots VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (start_ms, node) DO UPDATE SET
                        measured_kwh = measured_kwh + excluded.measured_kwh,
                        estimated_kwh = estimated_kwh + excluded.estimated_kwh,
                        missing_s = missing_s + excluded.missing_s,
                        resets = resets + excluded.resets,
                        wraps = wraps + excluded.wraps,
                        jumps = jumps + excluded.jumps,
                        gaps = gaps + excluded.gaps",
                )
                .map_err(e)?;
            for (node, start, s) in slots {
                add.execute(params![
                    node,
                    ms_i64(*start),
                    s.measured_kwh,
                    s.estimated_kwh,
                    s.missing_s,
                    s.resets,
                    s.wraps,
                    s.jumps,
                    s.gaps
                ])
                .map_err(e)?;
            }
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO energy_meters VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(e)?;
            for (node, k, l) in last {
                put.execute(params![node, k, ms_i64(l.t), l.kw, l.counter_kwh])
                    .map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    /// Adds mining's curtailed miner-seconds and trough energy to their slots, in one
    /// transaction.
    pub fn commit_mining(&mut self, m: &super::mining::MiningTake) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |err| sql(&path, err);
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut add = tx
                .prepare_cached(
                    "INSERT INTO mining_curtailed VALUES (?1, ?2, ?3)
                     ON CONFLICT (start_ms, cause) DO UPDATE SET miner_s = miner_s + excluded.miner_s",
                )
                .map_err(e)?;
            for ((start, cause), secs) in &m.curtailed_s {
                add.execute(params![ms_i64(*start), cause.name(), secs])
                    .map_err(e)?;
            }
            let mut add = tx
                .prepare_cached(
                    "INSERT INTO mining_trough VALUES (?1, ?2)
                     ON CONFLICT (start_ms) DO UPDATE SET kwh = kwh + excluded.kwh",
                )
                .map_err(e)?;
            for (start, kwh) in &m.trough_kwh {
                add.execute(params![ms_i64(*start), kwh]).map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    /// Mining's curtailed miner-seconds by (slot start, cause) and trough kWh by slot
    /// start, with `from <= start < to`.
    #[allow(clippy::type_complexity)]
    pub fn mining(
        &self,
        from: Millis,
        to: Millis,
    ) -> Result<(Vec<(Millis, String, f64)>, Vec<(Millis, f64)>), StoreError> {
        if self.version()? < 2 {
            // Written by an agent from before mining's figures: none recorded.
            return Ok((Vec::new(), Vec::new()));
        }
        let e = |err| sql(&self.path, err);
        let ms = |v: i64| v.max(0).unsigned_abs();
        let mut q = self
            .conn
            .prepare_cached(
                "SELECT start_ms, cause, miner_s FROM mining_curtailed
                 WHERE start_ms >= ?1 AND start_ms < ?2",
            )
            .map_err(e)?;
        let curtailed = q
            .query_map(params![ms_i64(from), ms_i64(to)], |r| {
                Ok((ms(r.get(0)?), r.get(1)?, r.get(2)?))
            })
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let mut q = self
            .conn
            .prepare_cached(
                "SELECT start_ms, kwh FROM mining_trough WHERE start_ms >= ?1 AND start_ms < ?2",
            )
            .map_err(e)?;
        let trough = q
            .query_map(params![ms_i64(from), ms_i64(to)], |r| {
                Ok((ms(r.get(0)?), r.get(1)?))
            })
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        Ok((curtailed, trough))
    }

    /// The slots of `nodes` (all nodes when empty) with `from <= start < to`, by start.
    pub fn slots(&self, from: Millis, to: Millis) -> Result<Vec<SlotRow>, StoreError> {
        let e = |err| sql(&self.path, err);
        let mut q = self
            .conn
            .prepare_cached(
                "SELECT node, start_ms, measured_kwh, estimated_kwh, missing_s, resets, wraps,
                        jumps, gaps
                 FROM energy_slots WHERE start_ms >= ?1 AND start_ms < ?2 ORDER BY start_ms",
            )
            .map_err(e)?;
        let rows = q
            .query_map(params![ms_i64(from), ms_i64(to)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?.max(0).unsigned_abs(),
                    Slot {
                        measured_kwh: r.get(2)?,
                        estimated_kwh: r.get(3)?,
                        missing_s: r.get(4)?,
                        resets: r.get(5)?,
                        wraps: r.get(6)?,
                        jumps: r.get(7)?,
                        gaps: r.get(8)?,
                    },
                ))
            })
            .map_err(e)?;
        rows.collect::<Result<_, _>>().map_err(e)
    }

    /// Each node's total energy (measured and estimated), kWh.
    pub fn totals(&self) -> Result<HashMap<String, f64>, StoreError> {
        let e = |err| sql(&self.path, err);
        let mut q = self
            .conn
            .prepare(
                "SELECT node, sum(measured_kwh + estimated_kwh) FROM energy_slots GROUP BY node",
            )
            .map_err(e)?;
        let rows = q
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))
            .map_err(e)?;
        rows.collect::<Result<_, _>>().map_err(e)
    }

    /// The first slot's start, if any.
    pub fn first_slot(&self) -> Result<Option<Millis>, StoreError> {
        self.conn
            .query_row("SELECT min(start_ms) FROM energy_slots", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()
            .map(|v| v.flatten().map(|x| x.max(0).unsigned_abs()))
            .map_err(|e| sql(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{is_corrupt, MIGRATIONS, SCHEMA_VERSION};
    use rusqlite::Connection;
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rw-store-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        d.join("rackwarden.db")
    }

    #[test]
    fn slots_add_up_across_commits_and_last_readings_round_trip() {
        let p = tmp("rt");
        let slot = |kwh: f64| Slot {
            measured_kwh: kwh,
            resets: 1,
            ..Slot::default()
        };
        {
            let mut s = Store::open(&p).unwrap();
            s.commit(
                &[("gpu-a1".into(), 900_000, slot(1.5))],
                &[(
                    "gpu-a1".into(),
                    0,
                    LastReading {
                        t: 1_000_000,
                        kw: Some(42.5),
                        counter_kwh: Some(1234.5),
                    },
                )],
            )
            .unwrap();
        }
        let mut s = Store::open(&p).unwrap();
        s.commit(&[("gpu-a1".into(), 900_000, slot(2.0))], &[])
            .unwrap();
        let rows = s.slots(0, u64::MAX / 4).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].2.measured_kwh, 3.5);
        assert_eq!(rows[0].2.resets, 2);
        let last = s.last_readings().unwrap();
        assert_eq!(last[&("gpu-a1".to_owned(), 0)].counter_kwh, Some(1234.5));
        assert_eq!(s.totals().unwrap()["gpu-a1"], 3.5);
        let ro = Store::open_read_only(&p).unwrap();
        assert_eq!(ro.first_slot().unwrap(), Some(900_000));
    }

    #[test]
    fn a_version_1_database_is_migrated_keeping_its_slots() {
        let p = tmp("v1");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute(
                "INSERT INTO energy_slots VALUES ('gpu-a1', 0, 2.5, 0, 0, 0, 0, 0, 0)",
                [],
            )
            .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
        }
        // Read by a newer `rackwarden energy` before the agent migrated it: no mining
        // figures, the slots as they are.
        let ro = Store::open_read_only(&p).unwrap();
        assert_eq!(ro.mining(0, 1 << 50).unwrap(), (Vec::new(), Vec::new()));
        drop(ro);
        let s = Store::open(&p).unwrap();
        assert_eq!(s.version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.totals().unwrap()["gpu-a1"], 2.5);
        assert!(s.mining(0, 1 << 50).unwrap().0.is_empty());
        // A busy or read-only database is not corrupt: never set aside.
        assert!(!is_corrupt(&StoreError::Newer {
            path: p.clone(),
            found: 9
        }));
    }

    #[test]
    fn a_corrupt_database_is_set_aside_naming_the_file() {
        let p = tmp("corrupt");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![0x5a; 8192]).unwrap();
        let err = Store::open_read_only(&p).unwrap_err().to_string();
        assert!(err.contains("rackwarden.db"), "{err}");
        let (s, aside) = open_or_set_aside(&p).unwrap();
        let (aside, why) = aside.unwrap();
        assert!(aside.exists() && why.contains("rackwarden.db"), "{why}");
        assert!(
            aside.to_string_lossy().contains("rackwarden.db.corrupt."),
            "{}",
            aside.display()
        );
        assert!(s.slots(0, 1 << 50).unwrap().is_empty());
    }
}
