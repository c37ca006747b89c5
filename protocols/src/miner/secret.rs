//! Miner credentials: where the password comes from (environment variable or file, as
//! `rackwarden_config::Credentials` says) and a wrapper that never prints it.

use std::fmt;

use rackwarden_config::{Credentials, Firmware};

/// Why a credential could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {var} is not set or not unicode")]
    Env {
        var: String,
        #[source]
        source: std::env::VarError,
    },
    #[error("cannot read password file {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A secret string: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// User name and password for a miner's control interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: Secret,
}

impl Login {
    /// The firmware's factory login, used when the config names no credentials.
    pub fn factory_default(firmware: Firmware) -> Self {
        let (u, p) = match firmware {
            Firmware::Braiins => ("root", ""),
            Firmware::Luxos => ("root", "root"),
            Firmware::Whatsminer => ("admin", "admin"),
            Firmware::Vnish => ("admin", "admin"),
            Firmware::AntminerStock => ("root", "root"),
            Firmware::Avalon => ("root", "root"),
        };
        Self {
            username: u.to_owned(),
            password: Secret::new(p),
        }
    }

    /// Resolve configured credentials (env var or the first line of a file); the
    /// factory default when none are configured.
    pub fn resolve(creds: Option<&Credentials>, firmware: Firmware) -> Result<Self, SecretError> {
        let default = Self::factory_default(firmware);
        let Some(c) = creds else {
            return Ok(default);
        };
        let username = c.username.clone().unwrap_or(default.username);
        let password = if let Some(var) = &c.password_env {
            std::env::var(var).map_err(|source| SecretError::Env {
                var: var.clone(),
                source,
            })?
        } else if let Some(path) = &c.password_file {
            let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
                path: path.clone(),
                source,
            })?;
            text.lines().next().unwrap_or_default().to_owned()
        } else {
            default.password.expose().to_owned()
        };
        Ok(Self {
            username,
            password: Secret::new(password),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let l = Login {
            username: "admin".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{l:?}").contains("hunter2"));
        assert!(!format!("{}", l.password).contains("hunter2"));
        assert_eq!(l.password.expose(), "hunter2");
    }

    #[test]
    fn resolves_file_and_missing_env() {
        let dir = std::env::temp_dir().join(format!("rw-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret\nignored\n").unwrap();
        let c = Credentials {
            username: None,
            password_env: None,
            password_file: Some(f.display().to_string()),
        };
        let l = Login::resolve(Some(&c), Firmware::Whatsminer).unwrap();
        assert_eq!(l.username, "admin");
        assert_eq!(l.password.expose(), "s3cret");
        let c = Credentials {
            username: Some("root".into()),
            password_env: Some("RACKWARDEN_TEST_SURELY_UNSET_VAR".into()),
            password_file: None,
        };
        let e = Login::resolve(Some(&c), Firmware::Vnish).unwrap_err();
        assert!(e.to_string().contains("RACKWARDEN_TEST_SURELY_UNSET_VAR"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
