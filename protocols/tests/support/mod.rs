//! Helpers shared by the protocol tests (a module of each test crate that names it).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A peer that answers one request with 200 and a body of `[`: chunked without end, or
/// declared (`content-length`) at 64 MiB, far over any cap. Writes until the client hangs
/// up or 64 MiB went out; returns the bytes of body written.
pub(crate) async fn flood(listener: tokio::net::TcpListener, declared: bool) -> usize {
    let Ok((mut s, _)) = listener.accept().await else {
        return 0;
    };
    let mut buf = [0u8; 2048];
    let _answered = s.read(&mut buf).await;
    let head = if declared {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            64 * 1024 * 1024
        )
    } else {
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_owned()
    };
    if s.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let block = vec![b'['; 64 * 1024];
    let mut sent = 0;
    while sent < 64 * 1024 * 1024 {
        let r = if declared {
            s.write_all(&block).await
        } else {
            let mut chunk = format!("{:x}\r\n", block.len()).into_bytes();
            chunk.extend_from_slice(&block);
            chunk.extend_from_slice(b"\r\n");
            s.write_all(&chunk).await
        };
        if r.is_err() {
            break;
        }
        sent += block.len();
    }
    sent
}
