//! Reading HTTP response bodies from devices with a byte cap.
//!
//! A device (a miner's web API, a GPU node) chooses how much it sends; a request timeout
//! bounds the time, not the bytes, and a broken or hostile device can stream hundreds of
//! MiB within it. Every body the agent reads from a device goes through [`read_capped`],
//! which refuses a declared length over the cap before reading anything and stops reading
//! as soon as the received bytes pass it.

/// Why a capped body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body is larger than the {limit_bytes} byte cap")]
    TooLarge { limit_bytes: usize },
    #[error("reading the body failed")]
    Read {
        #[source]
        source: reqwest::Error,
    },
}

/// The whole body of `resp`, or [`BodyError::TooLarge`] once it passes `limit_bytes`
/// (at most `limit_bytes` plus one network chunk is ever held).
pub async fn read_capped(
    mut resp: reqwest::Response,
    limit_bytes: usize,
) -> Result<Vec<u8>, BodyError> {
    let too_large = BodyError::TooLarge { limit_bytes };
    if let Some(len) = resp.content_length() {
        if usize::try_from(len).map_or(true, |len| len > limit_bytes) {
            return Err(too_large);
        }
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|source| BodyError::Read { source })?
    {
        if buf.len().saturating_add(chunk.len()) > limit_bytes {
            return Err(too_large);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}
