//! Files the agent keeps: the control intent (state file, replaced atomically) and the
//! action journal (append-only JSON lines).
//!
//! The state file is what stops a restart from waking miners or lifting GPU caps by
//! accident, so it is written the way a crash cannot tear: a temporary file in the same
//! directory, fsync, rename over the old one, fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot append to journal {path}: {source}")]
    Journal {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes `value` as JSON to `path` atomically.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), PersistError> {
    let err = |source| PersistError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| err(io::Error::other(e)))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    // The rename is durable only once the directory entry is.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a JSON state file. `Ok(None)` when it does not exist (a first start).
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, PersistError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| PersistError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
}

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
        let err = |source| PersistError::Journal {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(entry).map_err(|e| err(io::Error::other(e)))?;
        line.push(b'\n');
        // One write call per line: appends of whole lines never interleave.
        self.file.write_all(&line).map_err(err)?;
        self.file.sync_data().map_err(err)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
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
        let _ = fs::remove_dir_all(&d);
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
}
