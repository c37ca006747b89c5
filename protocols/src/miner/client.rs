//! The cgminer-compatible API client (TCP, usually port 4028).
//!
//! One request per connection, as cgminer expects: connect, write the JSON command, read
//! until the NUL terminator, a newline after the JSON, or EOF (some firmwares leave the
//! socket open after replying), each step under a timeout. Owns the multi-command
//! (`summary+stats`) call with its fallback to one command per connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::reply::{Reply, ReplyError};

/// Largest reply accepted; real replies are a few KiB (LuxOS `profiles` ~7 KiB).
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

/// Why a call to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("connect to {addr} failed")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not accept a connection within {ms} ms")]
    ConnectTimeout { addr: String, ms: u128 },
    #[error("i/o with {addr} failed")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer {command} within {ms} ms")]
    Timeout {
        addr: String,
        command: String,
        ms: u128,
    },
    #[error("{addr} sent more than {MAX_REPLY_BYTES} bytes for {command}")]
    TooLong { addr: String, command: String },
    #[error("{addr} closed the connection without answering {command}")]
    NoReply { addr: String, command: String },
    #[error("bad reply from {addr} to {command}")]
    Reply {
        addr: String,
        command: String,
        #[source]
        source: ReplyError,
    },
}

impl ApiError {
    /// The miner answered with a W/E/F status (as opposed to a transport failure).
    pub fn status_code(&self) -> Option<i64> {
        match self {
            ApiError::Reply {
                source: ReplyError::Status { code, .. },
                ..
            } => Some(*code),
            _ => None,
        }
    }
}

/// Client for one miner's API endpoint.
#[derive(Debug)]
pub struct ApiClient {
    addr: String,
    connect_timeout: Duration,
    reply_timeout: Duration,
    /// Set once the firmware refused a `a+b` multi-command (stock Bitmain: E 14).
    no_multi: AtomicBool,
}

impl ApiClient {
    pub fn new(
        addr: impl Into<String>,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Self {
        Self {
            addr: addr.into(),
            connect_timeout,
            reply_timeout,
            no_multi: AtomicBool::new(false),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send raw bytes, return the raw reply bytes (NUL and anything after it removed).
    pub async fn raw(&self, request: &[u8], command: &str) -> Result<Vec<u8>, ApiError> {
        let mut stream = match timeout(self.connect_timeout, TcpStream::connect(&self.addr)).await {
            Err(_) => {
                return Err(ApiError::ConnectTimeout {
                    addr: self.addr.clone(),
                    ms: self.connect_timeout.as_millis(),
                })
            }
            Ok(Err(source)) => {
                return Err(ApiError::Connect {
                    addr: self.addr.clone(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        let io = |source| ApiError::Io {
            addr: self.addr.clone(),
            source,
        };
        let work = async {
            stream.write_all(request).await.map_err(io)?;
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 8192];
            loop {
                let n = stream.read(&mut chunk).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                let got = &chunk[..n];
                if let Some(p) = got.iter().position(|&b| b == 0) {
                    buf.extend_from_slice(&got[..p]);
                    break;
                }
                buf.extend_from_slice(got);
                if buf.len() > MAX_REPLY_BYTES {
                    return Err(ApiError::TooLong {
                        addr: self.addr.clone(),
                        command: command.to_owned(),
                    });
                }
                // A newline after a complete object ends the reply too (firmwares that
                // keep the socket open); validated so pretty-printed JSON is not cut.
                if (buf.ends_with(b"}\n") || buf.ends_with(b"}\r\n"))
                    && serde_json::from_slice::<serde::de::IgnoredAny>(&buf).is_ok()
                {
                    break;
                }
            }
            Ok(buf)
        };
        let buf = match timeout(self.reply_timeout, work).await {
            Err(_) => {
                return Err(ApiError::Timeout {
                    addr: self.addr.clone(),
                    command: command.to_owned(),
                    ms: self.reply_timeout.as_millis(),
                })
            }
            Ok(r) => r?,
        };
        if buf.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::NoReply {
                addr: self.addr.clone(),
                command: command.to_owned(),
            });
        }
        Ok(buf)
    }

    /// Send a JSON request object and parse the reply into JSON (no envelope needed).
    pub async fn request_json(&self, req: &Value, command: &str) -> Result<Value, ApiError> {
        let bytes = serde_json::to_vec(req).map_err(|e| ApiError::Reply {
            addr: self.addr.clone(),
            command: command.to_owned(),
            source: ReplyError::Json(e.to_string()),
        })?;
        let raw = self.raw(&bytes, command).await?;
        super::reply::parse_json(&raw).map_err(|source| ApiError::Reply {
            addr: self.addr.clone(),
            command: command.to_owned(),
            source,
        })
    }

    /// Send a JSON request object and parse the reply (status not checked).
    pub async fn request(&self, req: &Value, command: &str) -> Result<Reply, ApiError> {
        let bytes = serde_json::to_vec(req).map_err(|e| ApiError::Reply {
            addr: self.addr.clone(),
            command: command.to_owned(),
            source: ReplyError::Json(e.to_string()),
        })?;
        let raw = self.raw(&bytes, command).await?;
        Reply::parse(&raw).map_err(|source| ApiError::Reply {
            addr: self.addr.clone(),
            command: command.to_owned(),
            source,
        })
    }

    /// `{"command":..,"parameter":..}`, status checked (S/I ok).
    pub async fn command(&self, command: &str, parameter: Option<&str>) -> Result<Reply, ApiError> {
        let req = match parameter {
            Some(p) => json!({ "command": command, "parameter": p }),
            None => json!({ "command": command }),
        };
        self.request(&req, command)
            .await?
            .ok()
            .map_err(|source| ApiError::Reply {
                addr: self.addr.clone(),
                command: command.to_owned(),
                source,
            })
    }

    /// Several read commands: one `a+b+c` request where the firmware takes it, else one
    /// connection per command. A refusal of the joined form is remembered.
    pub async fn multi(&self, commands: &[&str]) -> Result<Vec<Reply>, ApiError> {
        if commands.len() > 1 && !self.no_multi.load(Ordering::Relaxed) {
            let joined = commands.join("+");
            match self
                .request_json(&json!({ "command": joined }), &joined)
                .await
            {
                Ok(body) => match Reply::split_multi(body, commands) {
                    Ok(parts) => {
                        return parts
                            .into_iter()
                            .zip(commands)
                            .map(|(r, c)| {
                                r.ok().map_err(|source| ApiError::Reply {
                                    addr: self.addr.clone(),
                                    command: (*c).to_owned(),
                                    source,
                                })
                            })
                            .collect();
                    }
                    Err(ReplyError::Status { .. }) => {
                        self.no_multi.store(true, Ordering::Relaxed);
                    }
                    Err(source) => {
                        return Err(ApiError::Reply {
                            addr: self.addr.clone(),
                            command: joined,
                            source,
                        })
                    }
                },
                Err(e) => return Err(e),
            }
        }
        let mut out = Vec::with_capacity(commands.len());
        for c in commands {
            out.push(self.command(c, None).await?);
        }
        Ok(out)
    }
}
