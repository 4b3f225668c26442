//! Reading one member of a remote zip (a wheel's METADATA) without downloading the file: a
//! `Read + Seek` over HTTP range requests (RFC 9110 §14), fetched in 64 KiB blocks, which the
//! `zip` crate parses as it would a local file (end of central directory, central directory,
//! then the member) — uv's "lazy wheel" idea, for indexes without PEP 658 metadata files.
//! A few requests per wheel instead of the whole file (torch: ~3 of 64 KiB instead of 800 MB).

use anyhow::{anyhow, Result};
use reqwest::header::{CONTENT_RANGE, RANGE};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

const BLOCK: u64 = 64 * 1024;

/// A remote file of known size read by range requests; call only from a blocking thread (it
/// blocks on the runtime `handle`).
pub struct RemoteFile {
    http: reqwest::Client,
    url: String,
    handle: tokio::runtime::Handle,
    size: u64,
    pos: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl RemoteFile {
    /// Opens `url`; `size` from the lock when known, else from the server (`Content-Range`).
    pub fn open(http: reqwest::Client, url: &str, size: Option<u64>) -> Result<Self> {
        let handle = tokio::runtime::Handle::current();
        let size = match size {
            Some(s) => s,
            None => handle.block_on(total_size(&http, url))?,
        };
        Ok(Self {
            http,
            url: url.to_string(),
            handle,
            size,
            pos: 0,
            blocks: BTreeMap::new(),
        })
    }

    fn block(&mut self, n: u64) -> std::io::Result<&[u8]> {
        if !self.blocks.contains_key(&n) {
            let start = n * BLOCK;
            let end = (start + BLOCK).min(self.size) - 1;
            let (http, url) = (&self.http, &self.url);
            let bytes = self
                .handle
                .block_on(async {
                    let r = http
                        .get(url)
                        .header(RANGE, format!("bytes={start}-{end}"))
                        .send()
                        .await?;
                    if r.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                        return Err(anyhow!("{url}: range request answered {}", r.status()));
                    }
                    Ok(r.bytes().await?.to_vec())
                })
                .map_err(std::io::Error::other)?;
            if bytes.len() as u64 != end - start + 1 {
                return Err(std::io::Error::other(format!(
                    "{url}: range {start}-{end} returned {} bytes",
                    bytes.len()
                )));
            }
            self.blocks.insert(n, bytes);
        }
        Ok(&self.blocks[&n])
    }
}

async fn total_size(http: &reqwest::Client, url: &str) -> Result<u64> {
    let r = http.get(url).header(RANGE, "bytes=0-0").send().await?;
    r.headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('/').next()?.parse().ok())
        .ok_or_else(|| anyhow!("{url}: no Content-Range in the answer to a range request"))
}

impl Read for RemoteFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let (n, off) = (self.pos / BLOCK, (self.pos % BLOCK) as usize);
        let block = self.block(n)?;
        let k = (block.len() - off).min(buf.len());
        buf[..k].copy_from_slice(&block[off..off + k]);
        self.pos += k as u64;
        Ok(k)
    }
}

impl Seek for RemoteFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.size as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(std::io::Error::other("seek before the start"));
        }
        self.pos = target as u64;
        Ok(self.pos)
    }
}
