//! eStargz layers (stargz-snapshotter's `docs/estargz.md`): a gzip tar whose every non-empty
//! regular file's payload starts a gzip member of its own (large files one member per
//! [`CHUNK_SIZE`] chunk), with a TOC (`stargz.index.json`, every entry's metadata, the
//! compressed offset of each payload member and the SHA-256 of each chunk) as the last tar
//! entry in a member of its own, and a 51-byte footer member pointing at the TOC. A lazy node
//! (the stargz snapshotter) mounts the layer from the TOC and fetches each file's members with
//! HTTP range requests, verifying every chunk; any other runtime unpacks it as the gzip layer
//! it still is.
//!
//! The layer writer ([`crate::oci::layer`]) drives this: it records each entry's metadata
//! ([`TocEntry`]) and tells the gzip member writer where payloads start; the member writer
//! records where each payload's members landed ([`Payload`]). The stargz-snapshotter Go
//! package (`estargz`) was no fit: this writer streams wheels' DEFLATE streams into members
//! without recompressing them, which a converter of finished tarballs cannot.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The TOC's tar entry name.
pub const TOC_NAME: &str = "stargz.index.json";
/// Layer descriptor annotation: the TOC's digest (`sha256:<hex>` of the TOC JSON), which the
/// snapshotter checks the TOC it fetched against.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Layer descriptor annotation: the uncompressed tar's size in bytes (decimal).
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
/// The landmark of a layer without prioritized files (last before the TOC).
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// The landmark after a layer's prioritized files: the snapshotter prefetches what is before.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// A landmark's content: one byte 0x0f.
pub const LANDMARK_CONTENT: [u8; 1] = [0x0f];
/// Uncompressed bytes per chunk of a large file: ctr-remote's default, 4 MiB.
pub const CHUNK_SIZE: u64 = 4 << 20;
/// Bumped whenever the bytes of an eStargz layer could change for the same input (part of the
/// layer cache keys). 2: one deflate state reused for every fresh member; 3: prioritized files
/// and `.prefetch.landmark`.
pub const FORMAT_VERSION: u32 = 3;
/// The footer's length in bytes.
pub const FOOTER_LEN: usize = 51;

/// The TOC: `{"version": 1, "entries": [...]}`.
#[derive(Debug, Serialize)]
pub struct Toc {
    pub version: u32,
    pub entries: Vec<TocEntry>,
}

/// One TOC entry: a tar entry's metadata, or a chunk of a regular file (`type` `chunk`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TocEntry {
    pub name: String,
    /// `dir`, `reg`, `symlink` or `chunk`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "is_zero")]
    pub size: u64,
    /// RFC 3339, UTC.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub modtime: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// Permission bits, as in the tar header.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Compressed offset of the gzip member the payload (chunk) starts.
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    /// Uncompressed size of the chunk; 0 for the last (or only) one.
    #[serde(skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub dev_major: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub dev_minor: u64,
    /// The whole file's digest (`reg` only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where one regular file's payload went: its digest and its chunks' members.
#[derive(Debug, Clone)]
pub struct Payload {
    pub digest: String,
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone)]
pub struct Chunk {
    /// Compressed offset of the chunk's gzip member.
    pub offset: u64,
    /// Offset in the file's uncompressed bytes.
    pub chunk_offset: u64,
    pub size: u64,
    pub digest: String,
}

/// Digests of the payload being written, chunk by chunk.
pub struct Tracking {
    /// Payload bytes still to come.
    pub remaining: u64,
    /// Bytes left in the current chunk (`u64::MAX` for one member of any size).
    pub chunk_left: u64,
    chunk_limit: u64,
    file: Sha256,
    chunk: Sha256,
    written: u64,
    chunks: Vec<Chunk>,
}

impl Tracking {
    /// A payload of `size` bytes whose first member starts at `offset`; `chunked`: split
    /// every [`CHUNK_SIZE`] bytes (a copied DEFLATE stream is one member, whatever its size).
    pub fn new(size: u64, offset: u64, chunked: bool) -> Self {
        let chunk_limit = if chunked { CHUNK_SIZE } else { u64::MAX };
        Self {
            remaining: size,
            chunk_left: chunk_limit,
            chunk_limit,
            file: Sha256::new(),
            chunk: Sha256::new(),
            written: 0,
            chunks: vec![Chunk {
                offset,
                chunk_offset: 0,
                size: 0,
                digest: String::new(),
            }],
        }
    }

    /// Payload bytes written (at most `remaining` and `chunk_left`).
    pub fn feed(&mut self, buf: &[u8]) {
        self.file.update(buf);
        self.chunk.update(buf);
        let n = buf.len() as u64;
        self.remaining -= n;
        self.chunk_left = self.chunk_left.saturating_sub(n);
        self.written += n;
    }

    /// The current chunk is full and more payload follows: closes it; the next starts at
    /// `offset`.
    pub fn next_chunk(&mut self, offset: u64) {
        self.close_chunk();
        self.chunks.push(Chunk {
            offset,
            chunk_offset: self.written,
            size: 0,
            digest: String::new(),
        });
        self.chunk_left = self.chunk_limit;
    }

    fn close_chunk(&mut self) {
        let last = self.chunks.last_mut().expect("a chunk is open");
        last.size = self.written - last.chunk_offset;
        last.digest = sha256(std::mem::take(&mut self.chunk));
    }

    /// The finished payload (after its last byte).
    pub fn finish(mut self) -> Payload {
        self.close_chunk();
        Payload {
            digest: sha256(self.file),
            chunks: self.chunks,
        }
    }
}

fn sha256(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The TOC entries of `entries` (tar order) with each non-empty regular file's payload
/// (`payloads`, in the same order) filled in; its chunks after the first become `chunk`
/// entries.
pub fn toc(entries: Vec<TocEntry>, payloads: Vec<Payload>) -> anyhow::Result<Toc> {
    let mut payloads = payloads.into_iter();
    let mut out = Vec::with_capacity(entries.len());
    for mut e in entries {
        if e.kind != "reg" || e.size == 0 {
            out.push(e);
            continue;
        }
        let p = payloads
            .next()
            .ok_or_else(|| anyhow::anyhow!("eStargz: no payload recorded for {}", e.name))?;
        let last = p.chunks.len() - 1;
        for (i, c) in p.chunks.into_iter().enumerate() {
            let chunk_size = if i == last { 0 } else { c.size };
            if i == 0 {
                e.offset = c.offset;
                e.chunk_size = chunk_size;
                e.chunk_digest = c.digest;
                e.digest = p.digest.clone();
                out.push(e.clone());
            } else {
                out.push(TocEntry {
                    name: e.name.clone(),
                    kind: "chunk",
                    offset: c.offset,
                    chunk_offset: c.chunk_offset,
                    chunk_size,
                    chunk_digest: c.digest,
                    ..Default::default()
                });
            }
        }
    }
    if payloads.next().is_some() {
        anyhow::bail!("eStargz: more payloads than regular files");
    }
    Ok(Toc {
        version: 1,
        entries: out,
    })
}

/// The footer: an empty gzip member whose extra field (`SG`, 22 bytes) holds
/// `%016xSTARGZ` of the TOC's offset.
pub fn footer(toc_offset: u64) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    // Header: magic, deflate, FEXTRA, mtime 0, XFL 0, OS unknown.
    f[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12..14].copy_from_slice(b"SG");
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    // An empty stored final block, then CRC-32 and size of nothing (both 0).
    f[38..43].copy_from_slice(&[1, 0, 0, 0xff, 0xff]);
    f
}

/// Reads an eStargz blob the way a lazy node does (footer → TOC → each chunk's member) and
/// checks every digest; returns the TOC. For tests: the snapshotter itself is the real check.
#[cfg(test)]
pub fn verify(blob: &[u8], toc_digest: &str) -> serde_json::Value {
    use std::io::Read;
    let member_at = |offset: usize, len: usize| {
        let mut out = vec![0u8; len];
        flate2::read::GzDecoder::new(&blob[offset..])
            .read_exact(&mut out)
            .unwrap();
        out
    };
    let footer = &blob[blob.len() - FOOTER_LEN..];
    let at = u64::from_str_radix(std::str::from_utf8(&footer[16..32]).unwrap(), 16).unwrap();
    assert_eq!(&footer[32..38], b"STARGZ");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&blob[at as usize..]));
    let mut first = tar.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(first.path().unwrap().to_str().unwrap(), TOC_NAME);
    let mut json = Vec::new();
    first.read_to_end(&mut json).unwrap();
    assert_eq!(crate::oci::sha256_digest(&json), toc_digest, "TOC digest");
    let toc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let entries = toc["entries"].as_array().unwrap();
    for (i, e) in entries.iter().enumerate() {
        let Some(offset) = e["offset"].as_u64() else {
            continue;
        };
        // A chunk's size: its own, or (the last) what is left of the file.
        let size = match e["chunkSize"].as_u64() {
            Some(n) => n,
            None => {
                let file = entries[..=i]
                    .iter()
                    .rev()
                    .find(|f| f["type"] == "reg")
                    .unwrap();
                file["size"].as_u64().unwrap() - e["chunkOffset"].as_u64().unwrap_or(0)
            }
        };
        let data = member_at(offset as usize, size as usize);
        assert_eq!(
            crate::oci::sha256_digest(&data),
            e["chunkDigest"].as_str().unwrap(),
            "chunk of {} at {offset}",
            e["name"]
        );
    }
    toc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_footer_is_an_empty_gzip_member_naming_the_toc_offset() {
        let f = footer(0x1234);
        let mut out = Vec::new();
        let mut d = flate2::read::GzDecoder::new(&f[..]);
        d.read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
        let extra = d.header().unwrap().extra().unwrap().to_vec();
        assert_eq!(&extra[..4], b"SG\x16\x00");
        assert_eq!(&extra[4..], b"0000000000001234STARGZ");
    }

    #[test]
    fn chunks_become_entries_with_the_last_chunk_size_zero() {
        let mut t = Tracking::new(CHUNK_SIZE + 3, 100, true);
        t.feed(&vec![1u8; CHUNK_SIZE as usize]);
        assert_eq!(t.chunk_left, 0);
        t.next_chunk(200);
        t.feed(&[2, 2, 2]);
        assert_eq!(t.remaining, 0);
        let reg = TocEntry {
            name: "big".into(),
            kind: "reg",
            size: CHUNK_SIZE + 3,
            mode: 0o644,
            ..Default::default()
        };
        let toc = toc(vec![reg], vec![t.finish()]).unwrap();
        let json = serde_json::to_value(&toc).unwrap();
        let e = json["entries"].as_array().unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0]["type"], "reg");
        assert_eq!(e[0]["offset"], 100);
        assert_eq!(e[0]["chunkSize"], CHUNK_SIZE);
        assert!(e[0]["digest"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(e[1]["type"], "chunk");
        assert_eq!(e[1]["offset"], 200);
        assert_eq!(e[1]["chunkOffset"], CHUNK_SIZE);
        assert!(
            e[1].get("chunkSize").is_none(),
            "the last chunk's size is 0"
        );
        assert_ne!(e[0]["chunkDigest"], e[1]["chunkDigest"]);
    }
}
