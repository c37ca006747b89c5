//! HTTP calls to miners' web interfaces (Vnish REST, Braiins REST, stock Antminer CGI
//! with HTTP digest auth), on one shared `reqwest` client.

use reqwest::{Client, Method, StatusCode};

use super::bodies::BodyError as BodyParseError;
use super::secret::Login;
use crate::body::{read_capped, BodyError};

/// The most bytes read of one miner web answer. The largest body the drivers read (a
/// Vnish summary, a stock Antminer configuration) is a few KiB; 256 KiB, the cap on
/// cgminer API replies, leaves a wide margin while a broken or hostile miner cannot make
/// the agent hold more than this per request across thousands of miners.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Why an HTTP exchange with a miner failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request to {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered http {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent an unusable digest challenge: {detail}")]
    Digest { url: String, detail: String },
    #[error("{url} sent a body larger than {limit_bytes} bytes")]
    TooLarge { url: String, limit_bytes: usize },
    #[error("{url} sent a body that is not the expected json: {detail}")]
    Body { url: String, detail: String },
}

/// Send a request, return status and body text.
pub async fn send(
    client: &Client,
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<String>,
) -> Result<(StatusCode, String), HttpError> {
    let mut rb = client.request(method, url);
    for (k, v) in headers {
        rb = rb.header(*k, v.as_str());
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b);
    }
    let err = |source| HttpError::Request {
        url: url.to_owned(),
        source,
    };
    let resp = rb.send().await.map_err(err)?;
    let status = resp.status();
    let bytes = read_capped(resp, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::Read { source } => err(source),
            BodyError::TooLarge { limit_bytes } => HttpError::TooLarge {
                url: url.to_owned(),
                limit_bytes,
            },
        })?;
    // Decoded lossily, as `reqwest::Response::text` did; JSON is UTF-8 anyway.
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok((status, text))
}

/// Send, requiring a 2xx answer whose body is JSON.
pub async fn send_json(
    client: &Client,
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<String>,
) -> Result<(StatusCode, serde_json::Value), HttpError> {
    let (status, text) = send(client, method, url, headers, body).await?;
    if !status.is_success() {
        return Err(HttpError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let v = super::bodies::json_body(&text).map_err(|e| HttpError::Body {
        url: url.to_owned(),
        detail: match e {
            BodyParseError::Json { detail } => detail,
            e => e.to_string(),
        },
    })?;
    Ok((status, v))
}

/// A request behind HTTP digest auth: unauthenticated first, then answer the challenge.
pub async fn digest_json(
    client: &Client,
    method: Method,
    url: &str,
    path: &str,
    login: &Login,
    body: Option<String>,
) -> Result<serde_json::Value, HttpError> {
    let resp = client
        .request(method.clone(), url)
        .send()
        .await
        .map_err(|source| HttpError::Request {
            url: url.to_owned(),
            source,
        })?;
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Err(HttpError::Digest {
            url: url.to_owned(),
            detail: format!("expected a 401 challenge, got {}", resp.status().as_u16()),
        });
    }
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| HttpError::Digest {
            url: url.to_owned(),
            detail: "no www-authenticate header".into(),
        })?
        .to_owned();
    let answer = super::bodies::digest_authorization(
        &challenge,
        &login.username,
        login.password.expose(),
        method.as_str(),
        path,
        body.as_deref().map(str::as_bytes),
    )
    .map_err(|e| HttpError::Digest {
        url: url.to_owned(),
        detail: match e {
            BodyParseError::Digest { detail } => detail,
            e => e.to_string(),
        },
    })?;
    send_json(client, method, url, &[("authorization", answer)], body)
        .await
        .map(|(_, v)| v)
}
