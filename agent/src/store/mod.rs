//! The agent's SQLite database (WAL, bundled SQLite): one file under the state
//! directory holding
//! - the control intent ([`intent`]): a row per miner, GPU node, node and zone, each
//!   decision committing only what changed, before its commands go out;
//! - the action journal ([`journal`]), indexed by time (rows are appended in time
//!   order: a commit writes only the pages at the end), with retention;
//! - energy accounting (`crate::energy::store`): slots per node, meters' last readings,
//!   mining's curtailed hours and trough energy.
//!
//! The schema is versioned (`PRAGMA user_version`) with migrations applied in order at
//! open; a file SQLite cannot read is set aside ([`open_or_set_aside`]).

pub mod file;
pub mod intent;
pub mod journal;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::control::Millis;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 3;

/// The migrations, in order: `MIGRATIONS[v]` takes a database from version `v` to `v+1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE energy_slots (
        node TEXT NOT NULL,
        start_ms INTEGER NOT NULL,
        measured_kwh REAL NOT NULL,
        estimated_kwh REAL NOT NULL,
        missing_s REAL NOT NULL,
        resets INTEGER NOT NULL,
        wraps INTEGER NOT NULL,
        jumps INTEGER NOT NULL,
        gaps INTEGER NOT NULL,
        PRIMARY KEY (start_ms, node)
    ) WITHOUT ROWID;
    CREATE INDEX energy_slots_node ON energy_slots (node, start_ms);
    CREATE TABLE energy_meters (
        node TEXT NOT NULL,
        meter INTEGER NOT NULL,
        t_ms INTEGER NOT NULL,
        kw REAL,
        counter_kwh REAL,
        PRIMARY KEY (node, meter)
    ) WITHOUT ROWID;
",
    "
    CREATE TABLE mining_curtailed (
        start_ms INTEGER NOT NULL,
        cause TEXT NOT NULL,
        miner_s REAL NOT NULL,
        PRIMARY KEY (start_ms, cause)
    ) WITHOUT ROWID;
    CREATE TABLE mining_trough (
        start_ms INTEGER PRIMARY KEY,
        kwh REAL NOT NULL
    );
",
    // v3: the control intent and the action journal (issue 17). The intent tables carry
    // their main figures as columns (for `sqlite3` and `rackwarden state`) and the whole
    // persisted row as JSON (`state`), which is what a restart reads back.
    "
    CREATE TABLE intent_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE intent_miners (
        id TEXT PRIMARY KEY,
        intent TEXT NOT NULL,
        target_w REAL,
        since_ms INTEGER NOT NULL,
        pending_lever TEXT,
        state TEXT NOT NULL
    ) WITHOUT ROWID;
    -- Changed miner rows are appended here (a commit writes only new pages at the end)
    -- and folded into intent_miners when the site is quiet; intent_miners_now is the
    -- intent in force, for sqlite3.
    CREATE TABLE intent_miner_log (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        intent TEXT NOT NULL,
        target_w REAL,
        since_ms INTEGER NOT NULL,
        pending_lever TEXT,
        state TEXT NOT NULL
    );
    CREATE VIEW intent_miners_now AS
        SELECT id, intent, target_w, since_ms, pending_lever, state FROM intent_miners
        WHERE id NOT IN (SELECT id FROM intent_miner_log)
        UNION ALL
        SELECT id, intent, target_w, since_ms, pending_lever, state FROM (
            SELECT *, row_number() OVER (PARTITION BY id ORDER BY seq DESC) AS rn
            FROM intent_miner_log)
        WHERE rn = 1;
    CREATE TABLE intent_gpus (
        id TEXT PRIMARY KEY,
        cap_w REAL,
        state TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE intent_nodes (
        id TEXT PRIMARY KEY,
        band TEXT NOT NULL,
        last_restore_ms INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE intent_zones (
        id TEXT PRIMARY KEY,
        n_plus_1 INTEGER NOT NULL,
        n INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE journal (
        seq INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        time TEXT NOT NULL,
        node TEXT NOT NULL,
        device TEXT NOT NULL,
        lever TEXT NOT NULL,
        from_w REAL NOT NULL,
        to_w REAL NOT NULL,
        reason TEXT NOT NULL,
        confirmed INTEGER NOT NULL,
        dry_run INTEGER NOT NULL,
        result TEXT
    );
    CREATE INDEX journal_at ON journal (at_ms);
",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sql {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this agent's {SCHEMA_VERSION}: upgrade the agent or move the file aside")]
    Newer { path: PathBuf, found: i64 },
    #[error("database {path}: {row} cannot be read back: {why}")]
    Row {
        path: PathBuf,
        row: String,
        why: String,
    },
    #[error("cannot create the directory of database {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Store {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    /// The intent's miner log, as far as this connection knows (None: count it).
    pub(crate) log: Option<intent::Log>,
}

impl Store {
    /// Opens (creating it and its directory if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|e| sql(path, e))?;
        let mut s = Store {
            conn,
            path: path.to_path_buf(),
            log: None,
        };
        s.migrate()?;
        Ok(s)
    }

    /// Opens an existing database for reading (the `energy` command, the API).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql(path, e))?;
        let s = Store {
            conn,
            path: path.to_path_buf(),
            log: None,
        };
        let v = s.version()?;
        if v > SCHEMA_VERSION {
            return Err(StoreError::Newer {
                path: s.path,
                found: v,
            });
        }
        // Reading forces SQLite to look at the file: a corrupt one fails here.
        s.conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(|e| sql(path, e))?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| sql(&self.path, e))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |err| sql(&path, err);
        self.conn
            .busy_timeout(std::time::Duration::from_secs(2))
            .map_err(e)?;
        // WAL: readers (the energy command, the API) never block the agent's commits;
        // NORMAL is durable against a process crash, which is what a commit guards.
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(e)?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(e)?;
        // Checkpoint every ~16 MiB of WAL rather than SQLite's 4 MiB: a page rewritten by
        // many commits of a mass shed is copied into the database once.
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 4096)
            .map_err(e)?;
        let v = self.version()?;
        let from = usize::try_from(v)
            .ok()
            .filter(|&f| f <= MIGRATIONS.len())
            .ok_or_else(|| StoreError::Newer {
                path: self.path.clone(),
                found: v,
            })?;
        if from == MIGRATIONS.len() {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(e)?;
        for m in &MIGRATIONS[from..] {
            tx.execute_batch(m).map_err(e)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(e)?;
        tx.commit().map_err(e)
    }
}

pub(crate) fn sql(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sql {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn ms_i64(t: Millis) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// Whether `e` says the file is not a readable database (corrupt, or not SQLite at all),
/// as opposed to a busy, full or read-only one, which is left where it is.
pub fn is_corrupt(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Sql {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// Opens the agent's database; a file SQLite cannot read (corrupt, or not a database) is
/// moved aside with its WAL (`<name>.corrupt.<unix seconds>`, kept for the
/// post-mortem) and a new one started. Any other failure (busy, disk full, permissions,
/// a newer schema) is returned and the file left alone. Returns the store and, when one
/// was set aside, where it went and why.
pub fn open_or_set_aside(path: &Path) -> Result<(Store, Option<(PathBuf, String)>), StoreError> {
    match Store::open(path) {
        Ok(s) => Ok((s, None)),
        Err(e) if is_corrupt(&e) => {
            let aside = set_aside(path)?;
            Ok((Store::open(path)?, Some((aside, e.to_string()))))
        }
        Err(e) => Err(e),
    }
}

/// Moves a database and its WAL aside (`<name>.corrupt.<unix seconds>`); where to.
pub fn set_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let aside = with(&format!(".corrupt.{stamp}"));
    std::fs::rename(path, &aside).map_err(|source| StoreError::Dir {
        path: path.to_path_buf(),
        source,
    })?;
    for ext in ["-wal", "-shm"] {
        std::fs::rename(with(ext), with(&format!(".corrupt.{stamp}{ext}"))).ok();
    }
    Ok(aside)
}
