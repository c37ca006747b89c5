//! Remote GPU nodes: `rackwarden gpu-node` serves its host's GPU source over HTTP+JSON
//! ([`serve`]), and the site agent polls it and sends power caps ([`GpuNodeClient`]).
//!
//! API (every request needs `Authorization: Bearer <token>`, else 401):
//! - `GET /v1/readings` -> [`GpuNodeReading`];
//! - `POST /v1/power-limit` with [`PowerLimitRequest`] -> [`PowerLimitResponse`] (each
//!   enforced limit read back), or an [`ErrorBody`] with a [`RemoteErrorKind`].
//!
//! The token comes from a file on both sides and is compared in constant time. Plain
//! HTTP: the nodes sit on the site's management network, as the Modbus devices do; the
//! token keeps other hosts on that network from capping GPUs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::body::BodyError;

use super::{AppliedCap, GpuError, GpuFuture, GpuNodeReading, GpuSource, GpuTarget};

/// Path of the readings endpoint.
pub const READINGS_PATH: &str = "/v1/readings";
/// Path of the power-limit endpoint.
pub const POWER_LIMIT_PATH: &str = "/v1/power-limit";

/// The most bytes the agent reads of one node answer. A reading of an 8-GPU node is
/// about 2 KiB, so 1 MiB leaves room for hundreds of GPUs and long error messages, while
/// a broken node, or a hostile one holding the token, cannot make the agent hold more
/// than this per request (the request timeout bounds the time, not the bytes).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A shared secret. Never printed: `Debug` hides it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    pub fn new(secret: &str) -> Token {
        Token(Arc::from(secret))
    }

    /// Reads a token file: the whole file, surrounding whitespace trimmed, must not be
    /// empty. A file readable by group or others is accepted but logged.
    pub fn from_file(source_id: &str, path: &Path) -> Result<Token, GpuError> {
        let text = std::fs::read_to_string(path).map_err(|source| GpuError::TokenFile {
            source_id: source_id.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(GpuError::TokenEmpty {
                source_id: source_id.to_owned(),
                path: path.to_owned(),
            });
        }
        warn_if_shared(source_id, path);
        Ok(Token::new(secret))
    }

    /// Constant-time comparison (the length of the secret is not hidden).
    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(unix)]
fn warn_if_shared(source_id: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                device = source_id,
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "token file is readable by group or others; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_: &str, _: &Path) {}

/// Body of `POST /v1/power-limit`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerLimitRequest {
    pub target: GpuTarget,
    pub limit_w: f64,
}

/// Answer to a power-limit command: each addressed GPU's enforced limit, read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerLimitResponse {
    pub applied: Vec<AppliedCap>,
}

/// What went wrong on the node, so the agent can tell a refusal from a device fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteErrorKind {
    Unauthorized,
    NvmlUnavailable,
    UnknownGpu,
    LimitOutOfRange,
    ConstraintsUnknown,
    LimitMismatch,
    Device,
}

/// An error answer of the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: RemoteErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_w: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_w: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_w: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_w: Option<f64>,
}

impl ErrorBody {
    fn new(error: RemoteErrorKind, message: String) -> ErrorBody {
        ErrorBody {
            error,
            message,
            gpu: None,
            requested_w: None,
            enforced_w: None,
            min_w: None,
            max_w: None,
        }
    }

    fn from_gpu_error(e: &GpuError) -> (StatusCode, ErrorBody) {
        let message = error_chain(e);
        let mut body = ErrorBody::new(RemoteErrorKind::Device, message);
        let status = match *e {
            GpuError::NvmlUnavailable { .. } => {
                body.error = RemoteErrorKind::NvmlUnavailable;
                StatusCode::SERVICE_UNAVAILABLE
            }
            GpuError::UnknownGpu { gpu, .. } => {
                body.error = RemoteErrorKind::UnknownGpu;
                body.gpu = Some(gpu);
                StatusCode::NOT_FOUND
            }
            GpuError::LimitOutOfRange {
                gpu,
                requested_w,
                min_w,
                max_w,
                ..
            } => {
                body.error = RemoteErrorKind::LimitOutOfRange;
                body.gpu = Some(gpu);
                body.requested_w = Some(requested_w);
                body.min_w = Some(min_w);
                body.max_w = Some(max_w);
                StatusCode::UNPROCESSABLE_ENTITY
            }
            GpuError::ConstraintsUnknown { gpu, .. } => {
                body.error = RemoteErrorKind::ConstraintsUnknown;
                body.gpu = Some(gpu);
                StatusCode::UNPROCESSABLE_ENTITY
            }
            GpuError::LimitMismatch {
                gpu,
                requested_w,
                enforced_w,
                ..
            } => {
                body.error = RemoteErrorKind::LimitMismatch;
                body.gpu = Some(gpu);
                body.requested_w = Some(requested_w);
                body.enforced_w = Some(enforced_w);
                StatusCode::CONFLICT
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        (status, body)
    }

    /// Turns a node's error answer back into the [`GpuError`] a local source would have
    /// given, so the agent handles local and remote GPUs alike.
    fn into_gpu_error(self, source_id: &str, status: u16) -> GpuError {
        let id = source_id.to_owned();
        match (self.error, self.gpu) {
            (RemoteErrorKind::Unauthorized, _) => GpuError::Unauthorized { source_id: id },
            (RemoteErrorKind::NvmlUnavailable, _) => GpuError::NvmlUnavailable { source_id: id },
            (RemoteErrorKind::LimitOutOfRange, Some(gpu)) => {
                match (self.requested_w, self.min_w, self.max_w) {
                    (Some(requested_w), Some(min_w), Some(max_w)) => GpuError::LimitOutOfRange {
                        source_id: id,
                        gpu,
                        requested_w,
                        min_w,
                        max_w,
                    },
                    _ => remote(id, status, self.error, self.message),
                }
            }
            (RemoteErrorKind::ConstraintsUnknown, Some(gpu)) => {
                GpuError::ConstraintsUnknown { source_id: id, gpu }
            }
            (RemoteErrorKind::LimitMismatch, Some(gpu)) => {
                match (self.requested_w, self.enforced_w) {
                    (Some(requested_w), Some(enforced_w)) => GpuError::LimitMismatch {
                        source_id: id,
                        gpu,
                        requested_w,
                        enforced_w,
                    },
                    _ => remote(id, status, self.error, self.message),
                }
            }
            (kind, _) => remote(id, status, kind, self.message),
        }
    }
}

fn remote(source_id: String, status: u16, kind: RemoteErrorKind, message: String) -> GpuError {
    GpuError::Remote {
        source_id,
        status,
        kind,
        message,
    }
}

/// The error and its sources, for an answer body (the node's log has the same).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[derive(Clone)]
struct NodeState {
    source: Arc<dyn GpuSource>,
    token: Token,
}

/// The node's HTTP routes, authenticated.
pub fn router(source: Arc<dyn GpuSource>, token: Token) -> Router {
    let state = NodeState { source, token };
    Router::new()
        .route(READINGS_PATH, get(readings))
        .route(POWER_LIMIT_PATH, post(power_limit))
        // The layer runs before any extractor, so an unauthenticated request is refused
        // with 401 before its body is even parsed.
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Serves `source` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<dyn GpuSource>,
    token: Token,
) -> std::io::Result<()> {
    serve_with_shutdown(listener, source, token, std::future::pending()).await
}

/// Serves `source` on `listener` until `shutdown` completes, then finishes the requests
/// in flight.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    source: Arc<dyn GpuSource>,
    token: Token,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(source, token))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn require_token(State(state): State<NodeState>, req: Request, next: Next) -> Response {
    if bearer_ok(req.headers(), &state.token) {
        return next.run(req).await;
    }
    tracing::warn!(
        path = req.uri().path(),
        "gpu node request refused: missing or wrong bearer token"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(ErrorBody::new(
            RemoteErrorKind::Unauthorized,
            "missing or wrong bearer token".to_owned(),
        )),
    )
        .into_response()
}

fn bearer_ok(headers: &HeaderMap, token: &Token) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|presented| token.matches(presented))
}

async fn readings(State(state): State<NodeState>) -> Response {
    match state.source.read().await {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "gpu read failed");
            let (status, body) = ErrorBody::from_gpu_error(&e);
            (status, Json(body)).into_response()
        }
    }
}

async fn power_limit(
    State(state): State<NodeState>,
    Json(req): Json<PowerLimitRequest>,
) -> Response {
    match state.source.set_power_limit(req.target, req.limit_w).await {
        Ok(applied) => {
            tracing::info!(gpu_target = ?req.target, limit_w = req.limit_w, gpus = applied.len(), "gpu power limit set and read back");
            Json(PowerLimitResponse { applied }).into_response()
        }
        Err(e) => {
            tracing::warn!(gpu_target = ?req.target, limit_w = req.limit_w, error = %error_chain(&e), "gpu power limit not applied");
            let (status, body) = ErrorBody::from_gpu_error(&e);
            (status, Json(body)).into_response()
        }
    }
}

/// The site agent's client of one GPU node. Every call is bounded by the timeout given
/// at construction; a node that does not answer in time gives [`GpuError::Timeout`],
/// which the collector turns into staleness.
#[derive(Debug, Clone)]
pub struct GpuNodeClient {
    id: String,
    base: String,
    token: Token,
    timeout: Duration,
    http: reqwest::Client,
}

impl GpuNodeClient {
    /// A client for the node `id` at `addr`.
    pub fn new(
        id: impl Into<String>,
        addr: SocketAddr,
        token: Token,
        timeout: Duration,
    ) -> Result<GpuNodeClient, GpuError> {
        let id = id.into();
        let http = reqwest::Client::builder()
            // Nodes are reached directly; a proxy from the environment must not
            // intercept power-cap commands.
            .no_proxy()
            .connect_timeout(timeout)
            .build()
            .map_err(|source| GpuError::Http {
                source_id: id.clone(),
                source,
            })?;
        Ok(GpuNodeClient {
            base: format!("http://{addr}"),
            id,
            token,
            timeout,
            http,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `GET /v1/readings`.
    pub async fn read(&self) -> Result<GpuNodeReading, GpuError> {
        let req = self.http.get(format!("{}{READINGS_PATH}", self.base));
        self.call(req).await
    }

    /// `POST /v1/power-limit`: the node checks constraints, sets and reads back.
    pub async fn set_power_limit(
        &self,
        target: GpuTarget,
        limit_w: f64,
    ) -> Result<Vec<AppliedCap>, GpuError> {
        let req = self
            .http
            .post(format!("{}{POWER_LIMIT_PATH}", self.base))
            .json(&PowerLimitRequest { target, limit_w });
        let r: PowerLimitResponse = self.call(req).await?;
        Ok(r.applied)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, GpuError> {
        let req = req.bearer_auth(&*self.token.0);
        let http = |source| GpuError::Http {
            source_id: self.id.clone(),
            source,
        };
        let exchange = async {
            let resp = req.send().await.map_err(http)?;
            let status = resp.status();
            let bytes = match crate::body::read_capped(resp, MAX_BODY_BYTES).await {
                Ok(b) => b,
                Err(BodyError::Read { source }) => return Err(http(source)),
                Err(BodyError::TooLarge { limit_bytes }) => {
                    return Err(GpuError::BodyTooLarge {
                        source_id: self.id.clone(),
                        limit_bytes,
                    })
                }
            };
            if status.is_success() {
                return serde_json::from_slice::<T>(&bytes).map_err(|e| GpuError::BadBody {
                    source_id: self.id.clone(),
                    detail: e.to_string(),
                });
            }
            // An error answer: its body says why when it is ours; a foreign server's
            // body is not (then only the status is kept).
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| {
                ErrorBody::new(
                    if status == StatusCode::UNAUTHORIZED {
                        RemoteErrorKind::Unauthorized
                    } else {
                        RemoteErrorKind::Device
                    },
                    String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                )
            });
            Err(body.into_gpu_error(&self.id, status.as_u16()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(GpuError::Timeout {
                source_id: self.id.clone(),
                timeout_ms: self.timeout.as_millis(),
            }),
            Ok(r) => r,
        }
    }
}

impl GpuSource for GpuNodeClient {
    fn read(&self) -> GpuFuture<'_, GpuNodeReading> {
        Box::pin(GpuNodeClient::read(self))
    }

    fn set_power_limit(&self, target: GpuTarget, limit_w: f64) -> GpuFuture<'_, Vec<AppliedCap>> {
        Box::pin(GpuNodeClient::set_power_limit(self, target, limit_w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check_needs_exact_token() {
        let token = Token::new("s3cret");
        let mut h = HeaderMap::new();
        assert!(!bearer_ok(&h, &token));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(bearer_ok(&h, &token));
        h.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(!bearer_ok(&h, &token));
        h.insert(header::AUTHORIZATION, "Bearer s3cretx".parse().unwrap());
        assert!(!bearer_ok(&h, &token));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!bearer_ok(&h, &token));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn error_bodies_round_trip_to_the_same_error() {
        let e = GpuError::LimitMismatch {
            source_id: "node".into(),
            gpu: 3,
            requested_w: 400.0,
            enforced_w: 450.0,
        };
        let (status, body) = ErrorBody::from_gpu_error(&e);
        assert_eq!(status, StatusCode::CONFLICT);
        let json = serde_json::to_string(&body).unwrap();
        let back: ErrorBody = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            back.into_gpu_error("node", 409),
            GpuError::LimitMismatch { gpu: 3, requested_w, enforced_w, .. }
                if requested_w == 400.0 && enforced_w == 450.0
        ));
    }

    #[test]
    fn token_file_is_trimmed_and_empty_refused() {
        let dir = std::env::temp_dir().join(format!("rw-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, "  abc\n").unwrap();
        assert!(Token::from_file("n", &p).unwrap().matches(b"abc"));
        std::fs::write(&p, " \n").unwrap();
        assert!(matches!(
            Token::from_file("n", &p),
            Err(GpuError::TokenEmpty { .. })
        ));
        assert!(matches!(
            Token::from_file("n", &dir.join("missing")),
            Err(GpuError::TokenFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
