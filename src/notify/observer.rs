//! The project observer: plain TCP, one UTF-8 message per connection (upstream's contract).

use super::Endpoint;
use anyhow::{anyhow, Result};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub async fn send(ep: &Endpoint, message: &str, timeout: Duration, attempts: u32) -> Result<()> {
    super::retry(attempts, || async {
        let connect = tokio::net::TcpStream::connect((ep.host.as_str(), ep.port));
        let mut s = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| anyhow!("connect timed out after {timeout:?}"))??;
        tokio::time::timeout(timeout, async {
            s.write_all(message.as_bytes()).await?;
            s.shutdown().await
        })
        .await
        .map_err(|_| anyhow!("write timed out after {timeout:?}"))??;
        Ok(())
    })
    .await
}
