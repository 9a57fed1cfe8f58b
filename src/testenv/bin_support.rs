//! Small helpers shared by the `feip-bench` and `feip-demo` binaries.

use std::time::Duration;

/// A minimal HTTP/1.1 GET (`Connection: close`) returning (status, body); the status is 0 when
/// the response has no readable status line. Connecting may take 2 s, reading `read_timeout`.
pub async fn http_get(
    addr: &str,
    path: &str,
    read_timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    tokio::time::timeout(read_timeout, s.read_to_string(&mut buf)).await??;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        code,
        buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
    ))
}
