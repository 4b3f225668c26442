//! Layer writer: tar stream → compressor → file in the blob store, hashing the uncompressed
//! bytes (diff_id) and the compressed bytes (digest) in the same pass. Nothing is held in memory
//! beyond the codec's buffers.
//!
//! Reproducible by construction: entries come in sorted order (callers walk sorted), uid/gid 0,
//! no user/group names, modes normalised to 0755/0644 (0777 for symlinks), one fixed mtime
//! (SOURCE_DATE_EPOCH), and a gzip header without name or time.
//!
//! Wheel layers ([`LayerWriter::for_wheels`]) are multi-member gzip (RFC 1952 allows any number
//! of members; container runtimes and Go's `compress/gzip` read them all): a file a wheel
//! stores DEFLATE-compressed has its DEFLATE stream copied verbatim into a gzip member of its
//! own, with the CRC-32 and length of the inflated bytes as the member's trailer, so the bulk of
//! a layer is never compressed again; tar headers, padding, rewritten files and stored members
//! go into fresh members. Every copied stream is still inflated once, for the diff_id and the
//! RECORD check. The bytes depend only on the wheels, never on the machine or core count.

use crate::error::{bad_input, usage};
use crate::oci::blobstore::BlobStore;
use crate::oci::estargz::{self, Payload, TocEntry, Tracking};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bumped whenever the bytes a layer is made of could change for the same input.
/// 2: wheel layers copy DEFLATE streams into gzip members of their own.
pub const LAYER_FORMAT_VERSION: u32 = 2;

/// What a layer cache key says of the compression: its variant and level, and for eStargz the
/// version of its byte layout ([`estargz::FORMAT_VERSION`]), so that a key never names two
/// different blobs.
pub fn compression_key(c: Compression) -> String {
    match c {
        Compression::Estargz(_) => format!("{c:?} v{}", estargz::FORMAT_VERSION),
        _ => format!("{c:?}"),
    }
}

pub const MEDIA_TYPE_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    Gzip(u32),
    Zstd(i32),
    /// eStargz ([`crate::oci::estargz`]): gzip a lazy node can mount before it has the layer.
    Estargz(u32),
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip(_) | Compression::Estargz(_) => MEDIA_TYPE_GZIP,
            Compression::Zstd(_) => MEDIA_TYPE_ZSTD,
        }
    }

    /// `gzip`, `estargz` or `zstd`, with an optional level (gzip and estargz 0–9, zstd 1–19).
    pub fn parse(name: &str, level: Option<i32>) -> Result<Self> {
        match name {
            "gzip" | "estargz" => {
                let l = level.unwrap_or(6);
                if !(0..=9).contains(&l) {
                    return Err(usage(format!("{name} level {l} is out of range 0-9")));
                }
                Ok(if name == "gzip" {
                    Compression::Gzip(l as u32)
                } else {
                    Compression::Estargz(l as u32)
                })
            }
            "zstd" => {
                let l = level.unwrap_or(3);
                if !(1..=19).contains(&l) {
                    return Err(usage(format!("zstd level {l} is out of range 1-19")));
                }
                Ok(Compression::Zstd(l))
            }
            other => Err(usage(format!(
                "unknown compression {other:?} (use gzip, estargz or zstd)"
            ))),
        }
    }
}

/// A finished layer blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
    /// Annotations its descriptor carries (eStargz: the TOC digest, the uncompressed size).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Layer {
    /// The layer's descriptor, with its own annotations.
    pub fn descriptor(&self) -> crate::oci::image::Descriptor {
        let mut d = crate::oci::image::Descriptor::new(&self.media_type, &self.digest, self.size);
        d.annotations.extend(self.annotations.clone());
        d
    }
}

/// Counts and hashes everything written through it.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }
    /// The writer, the OCI digest (`sha256:<hex>`) and the length in bytes.
    pub fn finish(self) -> (W, String, u64) {
        let (inner, sha256, len) = self.finish_raw();
        (inner, format!("sha256:{}", hex::encode(sha256)), len)
    }
    /// The writer, the SHA-256 as bytes and the length in bytes.
    pub fn finish_raw(self) -> (W, [u8; 32], u64) {
        (self.inner, self.hasher.finalize().into(), self.len)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Members(Box<Members<W>>),
}

/// A gzip member header as `GzBuilder::new()` writes it: no name, no time, OS unknown.
const MEMBER_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// What comes next in the tar stream, told to the member writer before its first byte.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// A copied DEFLATE stream of this many inflated bytes (a member of its own).
    Copied(u64),
    /// eStargz: a regular file's payload of this many bytes (members of its own, chunked).
    Payload(u64),
    /// eStargz: the TOC's tar header (a member of its own, to the end of the tar).
    Toc,
}

/// What readers tell the member writer ([`Members`]): the raw bytes of a copied DEFLATE stream
/// ([`Deflated`]) as they are read, and (once, at a payload's first read) what starts; and
/// what the member writer tells the layer writer: where eStargz payloads went.
#[derive(Default)]
struct Passing {
    raw: Vec<u8>,
    start: Option<Start>,
    payloads: Vec<Payload>,
}

type Channel = Arc<Mutex<Passing>>;

fn lock(c: &Channel) -> std::sync::MutexGuard<'_, Passing> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts the bytes written through it: the compressed offset of the next member.
struct Counted<W> {
    inner: W,
    at: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.at += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Multi-member gzip output: what the tar builder writes goes into fresh members, except the
/// data of a file whose DEFLATE stream is being copied (announced on the channel): that
/// member's body is the copied stream, and the inflated bytes only update its trailer.
/// In eStargz mode every announced payload (and the TOC) starts a member, a fresh payload a new
/// one every [`estargz::CHUNK_SIZE`] bytes, each payload's members are recorded on the
/// channel, and the footer closes the output.
struct Members<W: Write> {
    sink: Option<Counted<W>>,
    fresh: Option<flate2::write::GzEncoder<Counted<W>>>,
    level: u32,
    channel: Channel,
    /// Inflated bytes still to come, and their CRC so far, while copying.
    copying: Option<(u64, flate2::Crc)>,
    /// The eStargz payload being written.
    tracking: Option<Tracking>,
    toc_offset: Option<u64>,
    /// Set in eStargz mode (and only there): one deflate state for all its fresh members
    /// (instead of `fresh`).
    reused: Option<Reused>,
}

/// eStargz's fresh members (one per file payload: thousands per layer) written with one
/// deflate state, reset per member: an encoder per member churned ~300 kB allocations, which
/// glibc's malloc kept as 500+ MB of RSS on a small learner (its dynamic mmap threshold).
/// flate2's GzEncoder owns its state, so the member's header and trailer are written here.
struct Reused {
    deflate: flate2::Compress,
    crc: flate2::Crc,
    out: Vec<u8>,
    open: bool,
    header: [u8; 10],
}

impl Reused {
    fn new(level: u32) -> Self {
        let mut header = MEMBER_HEADER;
        // XFL as flate2's GzBuilder sets it.
        header[8] = match level {
            9.. => 2,
            0 | 1 => 4,
            _ => 0,
        };
        Reused {
            deflate: flate2::Compress::new(flate2::Compression::new(level), false),
            crc: flate2::Crc::new(),
            out: Vec::with_capacity(64 << 10),
            open: false,
            header,
        }
    }

    fn open(&mut self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.header)?;
        self.deflate.reset();
        self.crc.reset();
        self.open = true;
        Ok(())
    }

    fn write(&mut self, w: &mut impl Write, mut input: &[u8]) -> io::Result<()> {
        self.crc.update(input);
        while !input.is_empty() {
            let before = self.deflate.total_in();
            self.out.clear();
            self.deflate
                .compress_vec(input, &mut self.out, flate2::FlushCompress::None)
                .map_err(io::Error::other)?;
            w.write_all(&self.out)?;
            input = &input[(self.deflate.total_in() - before) as usize..];
        }
        Ok(())
    }

    fn close(&mut self, w: &mut impl Write) -> io::Result<()> {
        loop {
            self.out.clear();
            let status = self
                .deflate
                .compress_vec(&[], &mut self.out, flate2::FlushCompress::Finish)
                .map_err(io::Error::other)?;
            w.write_all(&self.out)?;
            if status == flate2::Status::StreamEnd {
                break;
            }
        }
        w.write_all(&self.crc.sum().to_le_bytes())?;
        w.write_all(&self.crc.amount().to_le_bytes())?;
        self.open = false;
        Ok(())
    }
}

impl<W: Write> Members<W> {
    fn new(sink: W, level: u32, channel: Channel, estargz: bool) -> Self {
        Members {
            sink: Some(Counted { inner: sink, at: 0 }),
            fresh: None,
            level,
            channel,
            copying: None,
            tracking: None,
            toc_offset: None,
            reused: estargz.then(|| Reused::new(level)),
        }
    }

    /// The compressed output, with any fresh member closed.
    fn sink(&mut self) -> io::Result<&mut Counted<W>> {
        if let Some(f) = self.fresh.take() {
            self.sink = Some(f.finish()?);
        }
        let sink = self
            .sink
            .as_mut()
            .expect("the sink is here when no member is open");
        if let Some(r) = self.reused.as_mut().filter(|r| r.open) {
            r.close(sink)?;
        }
        Ok(sink)
    }

    /// Closes the open member and opens a fresh one; returns its offset.
    fn fresh_member(&mut self) -> io::Result<u64> {
        let at = self.sink()?.at;
        if let Some(r) = self.reused.as_mut() {
            r.open(self.sink.as_mut().expect("closed just now"))?;
            return Ok(at);
        }
        let w = self.sink.take().expect("closed just now");
        self.fresh = Some(flate2::GzBuilder::new().write(w, flate2::Compression::new(self.level)));
        Ok(at)
    }

    fn fresh_is_open(&self) -> bool {
        self.fresh.is_some() || self.reused.as_ref().is_some_and(|r| r.open)
    }

    /// Writes into the open fresh member; returns how much it took.
    fn write_fresh(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(r) = self.reused.as_mut() {
            r.write(self.sink.as_mut().expect("the sink"), buf)?;
            return Ok(buf.len());
        }
        self.fresh.as_mut().expect("a member is open").write(buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.copying.is_none() && self.tracking.is_none() {
            let start = lock(&self.channel).start.take();
            match start {
                Some(Start::Copied(size)) => {
                    let w = self.sink()?;
                    let at = w.at;
                    w.write_all(&MEMBER_HEADER)?;
                    self.copying = Some((size, flate2::Crc::new()));
                    if self.reused.is_some() {
                        self.tracking = Some(Tracking::new(size, at, false));
                    }
                }
                Some(Start::Payload(size)) => {
                    let at = self.fresh_member()?;
                    self.tracking = Some(Tracking::new(size, at, true));
                }
                Some(Start::Toc) => self.toc_offset = Some(self.fresh_member()?),
                None => {}
            }
        }
        if self.copying.is_some() {
            return self.copy(buf);
        }
        let mut n = buf.len();
        if let Some(t) = self.tracking.as_mut() {
            n = n.min(t.remaining.min(t.chunk_left) as usize);
        }
        if !self.fresh_is_open() {
            self.fresh_member()?;
        }
        let n = self.write_fresh(&buf[..n])?;
        self.track(&buf[..n])?;
        Ok(n)
    }

    /// Copied DEFLATE bytes: the raw stream goes out as it is, `buf` (inflated) only counts.
    fn copy(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (remaining, crc) = self.copying.as_mut().expect("copying");
        let n = (buf.len() as u64).min(*remaining) as usize;
        crc.update(&buf[..n]);
        *remaining -= n as u64;
        let raw = std::mem::take(&mut lock(&self.channel).raw);
        let done = (*remaining == 0).then(|| (crc.sum(), crc.amount()));
        let w = self.sink()?;
        w.write_all(&raw)?;
        if let Some((sum, amount)) = done {
            w.write_all(&sum.to_le_bytes())?;
            w.write_all(&amount.to_le_bytes())?;
            self.copying = None;
        }
        self.track(&buf[..n])?;
        Ok(n)
    }

    /// Payload bytes written: digests, the next chunk's member, the payload's record.
    fn track(&mut self, buf: &[u8]) -> io::Result<()> {
        let Some(t) = self.tracking.as_mut() else {
            return Ok(());
        };
        t.feed(buf);
        if t.remaining == 0 {
            let done = self.tracking.take().expect("tracking").finish();
            lock(&self.channel).payloads.push(done);
        } else if t.chunk_left == 0 {
            let at = self.fresh_member()?;
            self.tracking.as_mut().expect("tracking").next_chunk(at);
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        if self.copying.is_some() || self.tracking.is_some() {
            return Err(io::Error::other("a gzip member was left unfinished"));
        }
        self.sink()?;
        let mut w = self.sink.take().expect("the sink");
        if self.reused.is_some() {
            let toc = self
                .toc_offset
                .ok_or_else(|| io::Error::other("an eStargz layer without its TOC"))?;
            w.write_all(&estargz::footer(toc))?;
        }
        Ok(w.inner)
    }
}

/// Reads the inflated bytes of a raw DEFLATE stream (a zip member's data). With a channel, it
/// also hands every raw byte it reads to the [`Members`] encoder, which copies them into the
/// file's own gzip member; before its last byte it has read the stream to its end.
pub struct Deflated<R> {
    raw: R,
    inflate: flate2::Decompress,
    input: Vec<u8>,
    at: usize,
    filled: usize,
    output: Vec<u8>,
    out_at: usize,
    out_filled: usize,
    channel: Option<Channel>,
    size: u64,
    delivered: u64,
    started: bool,
    ended: bool,
}

impl<R: Read> Deflated<R> {
    fn refill(&mut self) -> io::Result<usize> {
        let n = self.raw.read(&mut self.input)?;
        if let Some(c) = &self.channel {
            lock(c).raw.extend_from_slice(&self.input[..n]);
        }
        self.at = 0;
        self.filled = n;
        Ok(n)
    }

    /// Inflates into `output`; false when the raw stream ran out before the DEFLATE end.
    fn step(&mut self) -> io::Result<bool> {
        if self.at == self.filled && self.refill()? == 0 {
            return Ok(false);
        }
        let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
        let status = self
            .inflate
            .decompress(
                &self.input[self.at..self.filled],
                &mut self.output,
                flate2::FlushDecompress::None,
            )
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.at += (self.inflate.total_in() - in0) as usize;
        self.out_at = 0;
        self.out_filled = (self.inflate.total_out() - out0) as usize;
        self.ended = status == flate2::Status::StreamEnd;
        Ok(true)
    }

    /// After the last inflated byte: the stream must end there, and every raw byte is read.
    fn finish_stream(&mut self) -> io::Result<()> {
        while !self.ended {
            if !self.step()? {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated DEFLATE stream",
                ));
            }
            if self.out_filled > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "more data than its size",
                ));
            }
        }
        while self.refill()? > 0 {}
        Ok(())
    }
}

impl<R: Read> Read for Deflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.started {
            self.started = true;
            if let Some(c) = &self.channel {
                // Overrides an eStargz payload announcement: this member is the copied stream.
                lock(c).start = Some(Start::Copied(self.size));
            }
        }
        loop {
            if self.out_at < self.out_filled {
                let n = buf
                    .len()
                    .min(self.out_filled - self.out_at)
                    .min((self.size - self.delivered) as usize);
                buf[..n].copy_from_slice(&self.output[self.out_at..self.out_at + n]);
                self.out_at += n;
                self.delivered += n as u64;
                if self.delivered == self.size {
                    if self.out_at < self.out_filled {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "more data than its size",
                        ));
                    }
                    self.finish_stream()?;
                }
                return Ok(n);
            }
            if self.delivered == self.size || (self.ended && self.out_at == self.out_filled) {
                return Ok(0);
            }
            if !self.step()? {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated DEFLATE stream",
                ));
            }
        }
    }
}

impl<W: Write> Encoder<W> {
    fn new(w: W, c: Compression, zstd_workers: u32, channel: &Channel) -> io::Result<Self> {
        Ok(match c {
            Compression::Estargz(level) => {
                Encoder::Members(Box::new(Members::new(w, level, channel.clone(), true)))
            }
            // GzBuilder defaults: no file name, mtime 0, so the header is the same on every run.
            Compression::Gzip(level) => {
                Encoder::Gzip(flate2::GzBuilder::new().write(w, flate2::Compression::new(level)))
            }
            Compression::Zstd(level) => {
                let mut e = zstd::stream::write::Encoder::new(w, level)?;
                // zstd's multi-threaded output depends on the job size, not the worker count
                // (as long as it is at least 1), so this stays reproducible across machines.
                e.multithread(zstd_workers.max(1))?;
                Encoder::Zstd(e)
            }
        })
    }
    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Members(m) => m.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Members(m) => m.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            // Members are closed when a copied stream starts and at the end; nothing to push.
            Encoder::Members(_) => Ok(()),
        }
    }
}

type Sink = Hashing<Encoder<Hashing<BufWriter<tempfile::NamedTempFile>>>>;

/// Writes one layer. Callers add entries in sorted order, parents before children.
pub struct LayerWriter {
    tar: tar::Builder<Sink>,
    mtime: u64,
    compression: Compression,
    /// Set for multi-member gzip output: where copied DEFLATE streams are announced.
    channel: Option<Channel>,
    /// eStargz: every entry so far, for the TOC.
    toc: Option<Vec<TocEntry>>,
    /// An eStargz landmark was written ([`LayerWriter::prefetch_landmark`]).
    landmark: bool,
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

/// A file's data that tells the member writer, at its first read, that a payload starts.
struct Announced<R> {
    inner: R,
    channel: Option<Channel>,
    size: u64,
}

impl<R: Read> Read for Announced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(c) = self.channel.take() {
            lock(&c).start = Some(Start::Payload(self.size));
        }
        self.inner.read(buf)
    }
}

/// Fails instead of silently writing a short entry if a file shrank after it was measured.
struct Exact<R> {
    inner: io::Take<R>,
    path: String,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && self.inner.limit() > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} changed while it was being read", self.path),
            ));
        }
        Ok(n)
    }
}

impl LayerWriter {
    pub fn new(store: &BlobStore, compression: Compression, mtime: u64) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        Self::with_workers(store, compression, mtime, cores)
    }

    /// As [`LayerWriter::new`], with a zstd worker count: one when several layers are being
    /// written at once (each on its own core), which also bounds memory. Same bytes either way.
    pub fn with_workers(
        store: &BlobStore,
        compression: Compression,
        mtime: u64,
        zstd_workers: u32,
    ) -> Result<Self> {
        let file = BufWriter::with_capacity(1 << 20, store.temp_file()?);
        let channel = Channel::default();
        let enc = Encoder::new(Hashing::new(file), compression, zstd_workers, &channel)?;
        let estargz = matches!(compression, Compression::Estargz(_));
        Self::around(enc, compression, mtime, estargz.then_some(channel))
    }

    fn around(
        enc: Encoder<Hashing<BufWriter<tempfile::NamedTempFile>>>,
        compression: Compression,
        mtime: u64,
        channel: Option<Channel>,
    ) -> Result<Self> {
        let mut tar = tar::Builder::new(Hashing::new(enc));
        tar.mode(tar::HeaderMode::Deterministic);
        let estargz = matches!(compression, Compression::Estargz(_));
        let w = Self {
            tar,
            mtime,
            compression,
            channel,
            toc: estargz.then(Vec::new),
            landmark: false,
        };
        Ok(w)
    }

    /// Whether the layer is eStargz: what a lazy node reads first is worth ordering.
    pub fn lazy(&self) -> bool {
        self.toc.is_some()
    }

    /// On eStargz output, ends the layer's prioritized files (everything written so far): a lazy
    /// node prefetches the bytes before this landmark in one range request when it mounts the
    /// layer, rather than file by file as the container reads them (one round trip each). A
    /// layer that never calls it gets `.no.prefetch.landmark` (nothing prefetched). No-op on
    /// other output.
    pub fn prefetch_landmark(&mut self) -> Result<()> {
        if self.toc.is_some() && !self.landmark {
            let landmark = &estargz::LANDMARK_CONTENT;
            self.file(estargz::PREFETCH_LANDMARK, false, 1, &landmark[..])?;
            self.landmark = true;
        }
        Ok(())
    }

    /// A layer of installed wheels (mtime 0, one zstd worker): with gzip, multi-member output
    /// that copies the wheels' DEFLATE streams ([`LayerWriter::deflated`]) instead of
    /// compressing their files again.
    pub fn for_wheels(store: &BlobStore, compression: Compression) -> Result<Self> {
        let (level, estargz) = match compression {
            Compression::Gzip(level) => (level, false),
            Compression::Estargz(level) => (level, true),
            Compression::Zstd(_) => return Self::with_workers(store, compression, 0, 1),
        };
        let file = BufWriter::with_capacity(1 << 20, store.temp_file()?);
        let channel = Channel::default();
        let members = Members::new(Hashing::new(file), level, channel.clone(), estargz);
        let enc = Encoder::Members(Box::new(members));
        Self::around(enc, compression, 0, Some(channel))
    }

    /// The inflated bytes of `raw`, a DEFLATE stream (a zip member's data) of `size` bytes
    /// inflated, to pass to [`LayerWriter::file`] as the file's data: on multi-member output
    /// the stream itself becomes the file's gzip member. Files of size 0 are not streams; on
    /// eStargz output neither are files of more than one chunk (they are compressed again,
    /// chunk by chunk, so that a lazy node fetches and verifies them in pieces).
    pub fn deflated<R: Read>(&self, raw: R, size: u64) -> Deflated<R> {
        let copy = size > 0 && (self.toc.is_none() || size <= estargz::CHUNK_SIZE);
        Deflated {
            raw,
            inflate: flate2::Decompress::new(false),
            input: vec![0; 64 << 10],
            at: 0,
            filled: 0,
            output: vec![0; 256 << 10],
            out_at: 0,
            out_filled: 0,
            channel: self.channel.clone().filter(|_| copy),
            size,
            delivered: 0,
            started: false,
            ended: false,
        }
    }

    pub fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = header(tar::EntryType::Directory, 0o755, 0, self.mtime);
        let p = format!("{}/", path.trim_end_matches('/'));
        self.record(&p, "dir", 0o755, 0, "");
        self.tar
            .append_data(&mut h, &p, io::empty())
            .with_context(|| format!("writing {p} to the layer"))
    }

    pub fn file(&mut self, path: &str, executable: bool, size: u64, data: impl Read) -> Result<()> {
        let mode = if executable { 0o755 } else { 0o644 };
        let mut h = header(tar::EntryType::Regular, mode, size, self.mtime);
        self.record(path, "reg", mode, size, "");
        let reader = Exact {
            inner: self.announced(data, size).take(size),
            path: path.to_string(),
        };
        self.tar
            .append_data(&mut h, path, reader)
            .with_context(|| format!("writing {path} to the layer"))
    }

    /// Appends another tar's entry as it is (header fields, link, data), for converting a
    /// layer ([`crate::oci::convert::to_estargz`]); extension headers (long names) are written anew.
    pub fn append_raw<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        use tar::EntryType as T;
        let mut h = entry.header().clone();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let kind = match h.entry_type() {
            T::Directory => "dir",
            T::Regular | T::Continuous => "reg",
            T::Symlink => "symlink",
            T::Link => "hardlink",
            T::Char => "char",
            T::Block => "block",
            T::Fifo => "fifo",
            // Global PAX headers and the like carry no file.
            _ => return Ok(()),
        };
        let size = if kind == "reg" { h.size()? } else { 0 };
        // Only device entries have numbers; other headers may leave the fields blank.
        let dev = |n: io::Result<Option<u32>>| match kind {
            "char" | "block" => n.ok().flatten().unwrap_or(0) as u64,
            _ => 0,
        };
        let mtime = h.mtime()?;
        if let Some(toc) = self.toc.as_mut() {
            toc.push(TocEntry {
                name: path.clone(),
                kind,
                size,
                modtime: crate::oci::image::rfc3339(mtime),
                link_name: link.clone().unwrap_or_default(),
                mode: h.mode()?,
                uid: h.uid()? as u32,
                gid: h.gid()? as u32,
                dev_major: dev(h.device_major()),
                dev_minor: dev(h.device_minor()),
                ..Default::default()
            });
        }
        let what = || format!("writing {path} to the layer");
        if let Some(target) = link.filter(|_| kind == "symlink" || kind == "hardlink") {
            return self
                .tar
                .append_link(&mut h, &path, target)
                .with_context(what);
        }
        let reader = self.announced(&mut entry, size);
        self.tar
            .append_data(&mut h, &path, reader)
            .with_context(what)
    }

    /// A regular file's data; for eStargz it tells the member writer, at its first read (after
    /// the header is written), that a payload starts (a copied DEFLATE stream announces itself
    /// over this).
    fn announced<R: Read>(&self, inner: R, size: u64) -> Announced<R> {
        Announced {
            inner,
            channel: self
                .channel
                .clone()
                .filter(|_| self.toc.is_some() && size > 0),
            size,
        }
    }

    /// eStargz: the entry's metadata for the TOC (payload offsets come from the members).
    fn record(&mut self, name: &str, kind: &'static str, mode: u32, size: u64, link: &str) {
        let mtime = self.mtime;
        if let Some(toc) = self.toc.as_mut() {
            toc.push(TocEntry {
                name: name.to_string(),
                kind,
                size,
                modtime: crate::oci::image::rfc3339(mtime),
                link_name: link.to_string(),
                mode,
                ..Default::default()
            });
        }
    }

    pub fn symlink(&mut self, path: &str, target: &Path) -> Result<()> {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, self.mtime);
        self.record(path, "symlink", 0o777, 0, &target.to_string_lossy());
        self.tar
            .append_link(&mut h, path, target)
            .with_context(|| format!("writing symlink {path} to the layer"))
    }

    /// Closes the tar and the codec and moves the blob to its digest in the store.
    pub fn finish(mut self, store: &BlobStore) -> Result<Layer> {
        if self.toc.is_some() && !self.landmark {
            let landmark = &estargz::LANDMARK_CONTENT;
            self.file(estargz::NO_PREFETCH_LANDMARK, false, 1, &landmark[..])?;
        }
        let media_type = self.compression.media_type().to_string();
        let toc_digest = self.write_toc()?;
        let (enc, diff_id, uncompressed) = self.tar.into_inner()?.finish();
        let (file, digest, size) = enc.finish()?.finish();
        let tmp = file.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_data().ok();
        store.commit(tmp, &digest)?;
        let mut annotations = BTreeMap::new();
        if let Some(toc) = toc_digest {
            annotations.insert(estargz::TOC_DIGEST_ANNOTATION.to_string(), toc);
            annotations.insert(
                estargz::UNCOMPRESSED_SIZE_ANNOTATION.to_string(),
                // The tar's end-of-archive blocks, written by into_inner above, included.
                uncompressed.to_string(),
            );
        }
        Ok(Layer {
            digest,
            diff_id,
            size,
            media_type,
            annotations,
        })
    }

    /// eStargz: the TOC as the last tar entry, in a member of its own; its digest.
    fn write_toc(&mut self) -> Result<Option<String>> {
        let (Some(entries), Some(channel)) = (self.toc.take(), self.channel.clone()) else {
            return Ok(None);
        };
        let payloads = std::mem::take(&mut lock(&channel).payloads);
        let json = serde_json::to_vec(&estargz::toc(entries, payloads)?)?;
        let digest = crate::oci::sha256_digest(&json);
        lock(&channel).start = Some(Start::Toc);
        let mut h = header(
            tar::EntryType::Regular,
            0o644,
            json.len() as u64,
            self.mtime,
        );
        self.tar
            .append_data(&mut h, estargz::TOC_NAME, &json[..])
            .context("writing the eStargz TOC")?;
        Ok(Some(digest))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File { size: u64, executable: bool },
    Symlink(PathBuf),
}

/// One entry of a local tree, with its path in the image (no leading `/`).
#[derive(Debug, Clone)]
pub struct TreeEntry {
    pub rel: String,
    pub source: Option<PathBuf>,
    pub kind: EntryKind,
    /// (mtime ns, ctime ns, inode): only for the local build cache key, never written.
    stamp: (i64, i64, u64),
}

/// Normalises an image path to `a/b/c` (no leading or trailing slash, no `.`/`..`).
pub fn image_path(dest: &str) -> Result<String> {
    let mut parts = Vec::new();
    for p in dest.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                return Err(bad_input(format!(
                    "path in image {dest:?} must not contain '..'"
                )))
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// The directories above an image path, outermost first: `a/b/c` → `a`, `a/b`.
pub fn parent_dirs(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..parts.len()).map(|i| parts[..i].join("/")).collect()
}

/// Lists `local` (a directory or a single file) as entries under `dest`, sorted, parents first,
/// including `dest`'s ancestors. Symlinks are listed, never followed; special files are errors.
pub fn walk(local: &Path, dest: &str) -> Result<Vec<TreeEntry>> {
    walk_skipping(local, dest, &[])
}

/// [`walk`], leaving out the named entries at the top of `local` (e.g. `.git`).
pub fn walk_skipping(local: &Path, dest: &str, skip: &[&str]) -> Result<Vec<TreeEntry>> {
    let dest = image_path(dest)?;
    let meta = std::fs::symlink_metadata(local)
        .map_err(|e| bad_input(format!("{}: {e}", local.display())))?;
    // Ancestors only; `dest` itself is the walked directory (or the file).
    let mut out: Vec<TreeEntry> = parent_dirs(&dest)
        .into_iter()
        .map(|rel| TreeEntry {
            rel,
            source: None,
            kind: EntryKind::Dir,
            stamp: (0, 0, 0),
        })
        .collect();
    if meta.is_dir() {
        walk_dir(local, &dest, skip, &mut out)?;
    } else {
        if dest.is_empty() {
            return Err(bad_input(format!(
                "{}: a single file needs a file path in the image",
                local.display()
            )));
        }
        out.push(entry(local, dest, &meta)?);
    }
    Ok(out)
}

fn entry(path: &Path, rel: String, meta: &std::fs::Metadata) -> Result<TreeEntry> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File {
            size: meta.len(),
            executable: meta.mode() & 0o111 != 0,
        }
    } else if ft.is_symlink() {
        EntryKind::Symlink(
            std::fs::read_link(path)
                .with_context(|| format!("reading symlink {}", path.display()))?,
        )
    } else {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_fifo() {
            "a fifo"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device node"
        } else {
            "a special file"
        };
        return Err(bad_input(format!(
            "{} is {what}; only files, directories and symlinks can go into a layer",
            path.display()
        )));
    };
    let stamp = (
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        meta.ino(),
    );
    Ok(TreeEntry {
        rel,
        source: Some(path.to_path_buf()),
        kind,
        stamp,
    })
}

fn walk_dir(dir: &Path, rel: &str, skip: &[&str], out: &mut Vec<TreeEntry>) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !rel.is_empty() {
        out.push(entry(dir, rel.to_string(), &meta)?);
    }
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| bad_input(format!("cannot read directory {}: {e}", dir.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("reading directory {}", dir.display()))?;
    names.sort();
    names.retain(|n| !skip.iter().any(|s| n == *s));
    for name in names {
        let path = dir.join(&name);
        let Some(name) = name.to_str() else {
            return Err(bad_input(format!(
                "{}: file name is not UTF-8",
                path.display()
            )));
        };
        let child = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let m = std::fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if m.is_dir() {
            walk_dir(&path, &child, &[], out)?;
        } else {
            out.push(entry(&path, child, &m)?);
        }
    }
    Ok(())
}

/// Key of the local layer cache: everything that determines the layer bytes, plus file stamps
/// (mtime, ctime, inode) standing in for content, as make and git's index do.
pub fn tree_cache_key(entries: &[TreeEntry], compression: Compression, mtime: u64) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "v{LAYER_FORMAT_VERSION} {} {mtime}\n",
        compression_key(compression)
    ));
    for e in entries {
        h.update(format!("{:?}\0{:?}\0{:?}\n", e.rel, e.kind, e.stamp));
    }
    hex::encode(h.finalize())
}

/// Writes the entries of [`walk`] as one layer.
pub fn write_tree(
    store: &BlobStore,
    entries: &[TreeEntry],
    compression: Compression,
    mtime: u64,
) -> Result<Layer> {
    let mut w = LayerWriter::new(store, compression, mtime)?;
    for e in entries {
        match &e.kind {
            EntryKind::Dir => w.dir(&e.rel)?,
            EntryKind::Symlink(target) => w.symlink(&e.rel, target)?,
            EntryKind::File { size, executable } => {
                let src = e.source.as_ref().expect("files have a source");
                let f = std::fs::File::open(src)
                    .map_err(|err| bad_input(format!("cannot read {}: {err}", src.display())))?;
                w.file(&e.rel, *executable, *size, f)?;
            }
        }
    }
    // The repo's code: small, and what the learner reads first.
    w.prefetch_landmark()?;
    w.finish(store)
}

/// One layer from a local directory or file, reusing the cached blob when the tree is unchanged.
/// Returns the layer and whether it came from the cache.
pub fn tree_layer(
    store: &BlobStore,
    local: &Path,
    dest: &str,
    skip: &[&str],
    compression: Compression,
    mtime: u64,
) -> Result<(Layer, bool)> {
    let entries = walk_skipping(local, dest, skip)?;
    let key = tree_cache_key(&entries, compression, mtime);
    if let Some(layer) = cached_layer(store, &key) {
        return Ok((layer, true));
    }
    let layer = write_tree(store, &entries, compression, mtime)?;
    remember_layer(store, &key, &layer);
    Ok((layer, false))
}

/// A layer recorded under `name` in the local cache, if its blob is still there.
pub fn cached_layer(store: &BlobStore, name: &str) -> Option<Layer> {
    let bytes = std::fs::read(store.root().join("layers").join(format!("{name}.json"))).ok()?;
    let layer: Layer = serde_json::from_slice(&bytes).ok()?;
    store
        .has_verified_blocking(&layer.digest, layer.size)
        .then_some(layer)
}

/// Records a built layer under `name`. Best effort: a lost record only costs a rebuild.
pub fn remember_layer(store: &BlobStore, name: &str, layer: &Layer) {
    let record = store.root().join("layers").join(format!("{name}.json"));
    if let Ok(bytes) = serde_json::to_vec(layer) {
        crate::oci::blobstore::write_atomic(&record, &bytes).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip whose members are DEFLATE-compressed (big, repetitive) or stored (small).
    fn zip_of(files: &[(&str, Vec<u8>)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut z = zip::ZipWriter::new(f.reopen().unwrap());
        for (name, data) in files {
            let method = if data.len() > 100 {
                zip::CompressionMethod::Deflated
            } else {
                zip::CompressionMethod::Stored
            };
            let opts = zip::write::SimpleFileOptions::default().compression_method(method);
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
        f
    }

    /// Writes the zip's members as files of a wheel layer; returns the layer.
    fn wheel_layer(store: &BlobStore, zip_path: &Path) -> Result<Layer> {
        wheel_layer_as(store, zip_path, Compression::Gzip(6))
    }

    fn wheel_layer_as(store: &BlobStore, zip_path: &Path, c: Compression) -> Result<Layer> {
        let mut archive = zip::ZipArchive::new(std::fs::File::open(zip_path)?)?;
        let mut w = LayerWriter::for_wheels(store, c)?;
        for i in 0..archive.len() {
            let (name, size, deflated) = {
                let m = archive.by_index_raw(i)?;
                (
                    m.name().unwrap_or_default().to_string(),
                    m.size(),
                    m.compression() == zip::CompressionMethod::Deflated,
                )
            };
            if deflated && size > 0 {
                let raw = archive.by_index_raw(i)?;
                let data = w.deflated(raw, size);
                w.file(&name, false, size, data)?;
            } else {
                w.file(&name, false, size, archive.by_index(i)?)?;
            }
        }
        w.finish(store)
    }

    /// eStargz wheel layers: small files' DEFLATE streams copied into members of their own,
    /// a file over one chunk compressed again in chunks, the TOC and footer last; every chunk
    /// found and verified as a lazy node reads it, the whole still one gzip tar, reproducible.
    #[test]
    fn estargz_wheel_layers_have_a_verifiable_toc() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let big: Vec<u8> = (0..(9u32 << 20))
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        let zip = zip_of(&[
            ("pkg/__init__.py", b"x = 1\n".repeat(50)),
            ("pkg/big.so", big.clone()),
            ("pkg/tiny.txt", b"tiny".to_vec()),
            ("pkg/empty", Vec::new()),
        ]);
        let layer = wheel_layer_as(&store, zip.path(), Compression::Estargz(6)).unwrap();
        assert_eq!(layer.media_type, MEDIA_TYPE_GZIP);
        let blob = std::fs::read(store.path(&layer.digest)).unwrap();
        let toc_digest = &layer.annotations[estargz::TOC_DIGEST_ANNOTATION];
        let toc = estargz::verify(&blob, toc_digest);
        let names: Vec<(String, String)> = toc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["type"].as_str().unwrap().into(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("pkg/__init__.py", "reg"),
            ("pkg/big.so", "reg"),
            ("pkg/big.so", "chunk"),
            ("pkg/big.so", "chunk"),
            ("pkg/tiny.txt", "reg"),
            ("pkg/empty", "reg"),
            (estargz::NO_PREFETCH_LANDMARK, "reg"),
        ]
        .iter()
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect();
        assert_eq!(names, want);
        // The whole blob is still a gzip tar, whose diff_id and size the descriptor states.
        let mut tar_bytes = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(crate::oci::sha256_digest(&tar_bytes), layer.diff_id);
        assert_eq!(
            layer.annotations[estargz::UNCOMPRESSED_SIZE_ANNOTATION],
            tar_bytes.len().to_string()
        );
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut last = String::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            last = e.path().unwrap().display().to_string();
            if last == "pkg/big.so" {
                let mut got = Vec::new();
                e.read_to_end(&mut got).unwrap();
                assert!(got == big, "pkg/big.so differs");
            }
        }
        assert_eq!(last, estargz::TOC_NAME);
        let again = wheel_layer_as(&store, zip.path(), Compression::Estargz(6)).unwrap();
        assert_eq!(again, layer);
    }

    #[test]
    fn wheel_layers_copy_deflate_streams_into_gzip_members() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let big: Vec<u8> = (0..400_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let files = vec![
            ("a/big.bin", big.clone()),
            ("a/small.txt", b"stored as is".to_vec()),
            ("b/empty", Vec::new()),
            ("b/text.py", "print('hello')\n".repeat(500).into_bytes()),
        ];
        let z = zip_of(&files);
        let layer = wheel_layer(&store, z.path()).unwrap();
        // Any gzip reader that follows members sees exactly the tar of the files.
        let blob = std::fs::read(store.path(&layer.digest)).unwrap();
        let mut tar_bytes = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(crate::oci::sha256_digest(&tar_bytes), layer.diff_id);
        let mut got = Vec::new();
        for e in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            got.push((e.path().unwrap().display().to_string(), data));
        }
        let want: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(n, d)| (n.to_string(), d.clone()))
            .collect();
        assert_eq!(got, want);
        // Several members: the two deflated files have their own (headers, stored and empty
        // files go into fresh ones), and the big file's stream is the zip's, byte for byte.
        let mut members = 0;
        let mut rest = &blob[..];
        while !rest.is_empty() {
            let mut dec = flate2::bufread::GzDecoder::new(rest);
            std::io::copy(&mut dec, &mut std::io::sink()).unwrap();
            rest = dec.into_inner();
            members += 1;
        }
        assert!(members >= 5, "{members} gzip members");
        let raw_big = {
            let mut a = zip::ZipArchive::new(std::fs::File::open(z.path()).unwrap()).unwrap();
            let mut m = a.by_name_raw(b"a/big.bin").unwrap();
            let mut v = Vec::new();
            m.read_to_end(&mut v).unwrap();
            v
        };
        assert!(blob.windows(raw_big.len()).any(|w| w == raw_big.as_slice()));
        // Reproducible: the same zip gives the same blob.
        assert_eq!(wheel_layer(&store, z.path()).unwrap().digest, layer.digest);
    }

    #[test]
    fn a_stream_that_lies_about_its_size_fails() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let z = zip_of(&[("x.bin", vec![7u8; 10_000])]);
        let mut archive = zip::ZipArchive::new(std::fs::File::open(z.path()).unwrap()).unwrap();
        for claimed in [9_999u64, 10_001] {
            let mut w = LayerWriter::for_wheels(&store, Compression::Gzip(6)).unwrap();
            let raw = archive.by_index_raw(0).unwrap();
            let data = w.deflated(raw, claimed);
            assert!(w.file("x.bin", false, claimed, data).is_err(), "{claimed}");
        }
    }

    #[test]
    fn parent_dirs_are_the_prefixes() {
        assert_eq!(parent_dirs("a/b/c"), ["a", "a/b"]);
        assert_eq!(parent_dirs("app"), Vec::<String>::new());
        assert_eq!(parent_dirs(""), Vec::<String>::new());
    }
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/c")).unwrap();
        std::fs::write(d.path().join("b/c/x.py"), "print('x')\n").unwrap();
        std::fs::write(d.path().join("a.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            d.path().join("a.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        symlink("/etc/passwd", d.path().join("outside")).unwrap();
        d
    }

    #[test]
    fn walk_is_sorted_with_ancestors_and_keeps_symlinks() {
        let d = tree();
        let e = walk(d.path(), "/opt/app/").unwrap();
        let rels: Vec<_> = e.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(
            rels,
            [
                "opt",
                "opt/app",
                "opt/app/a.sh",
                "opt/app/b",
                "opt/app/b/c",
                "opt/app/b/c/x.py",
                "opt/app/outside"
            ]
        );
        assert_eq!(e[6].kind, EntryKind::Symlink("/etc/passwd".into()));
        assert_eq!(
            e[2].kind,
            EntryKind::File {
                size: 10,
                executable: true
            }
        );
    }

    #[test]
    fn same_tree_same_digest_and_normalised_headers() {
        let d = tree();
        let s1 = tempfile::tempdir().unwrap();
        let s2 = tempfile::tempdir().unwrap();
        let st1 = BlobStore::open(s1.path()).unwrap();
        let st2 = BlobStore::open(s2.path()).unwrap();
        let l1 = write_tree(
            &st1,
            &walk(d.path(), "app").unwrap(),
            Compression::Gzip(6),
            0,
        )
        .unwrap();
        // Touch a file: stamps change, bytes must not.
        std::fs::write(d.path().join("b/c/x.py"), "print('x')\n").unwrap();
        let l2 = write_tree(
            &st2,
            &walk(d.path(), "app").unwrap(),
            Compression::Gzip(6),
            0,
        )
        .unwrap();
        assert_eq!(l1, l2);
        let f = std::fs::File::open(st1.path(&l1.digest)).unwrap();
        let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (0, 0, 0)
            );
            assert!(h.username().unwrap().unwrap_or("").is_empty());
            let mode = h.mode().unwrap();
            assert!([0o755, 0o644, 0o777].contains(&mode), "mode {mode:o}");
        }
    }

    #[test]
    fn zstd_bytes_do_not_depend_on_the_worker_count() {
        let d = tempfile::tempdir().unwrap();
        // Several MB, partly compressible, so zstd really splits it into jobs.
        let mut data = Vec::new();
        let mut x: u64 = 7;
        for i in 0..6_000_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            data.push(if i % 3 == 0 {
                (x >> 33) as u8
            } else {
                b'a' + (i % 7) as u8
            });
        }
        std::fs::write(d.path().join("blob"), &data).unwrap();
        let entries = walk(d.path(), "data").unwrap();
        let digests: Vec<String> = [1u32, 2, 3]
            .iter()
            .map(|&w| {
                let s = tempfile::tempdir().unwrap();
                let store = BlobStore::open(s.path()).unwrap();
                let mut lw = LayerWriter::with_workers(&store, Compression::Zstd(3), 0, w).unwrap();
                for e in &entries {
                    match &e.kind {
                        EntryKind::Dir => lw.dir(&e.rel).unwrap(),
                        EntryKind::File { size, executable } => lw
                            .file(
                                &e.rel,
                                *executable,
                                *size,
                                std::fs::File::open(e.source.as_ref().unwrap()).unwrap(),
                            )
                            .unwrap(),
                        EntryKind::Symlink(t) => lw.symlink(&e.rel, t).unwrap(),
                    }
                }
                lw.finish(&store).unwrap().digest
            })
            .collect();
        assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    }

    #[test]
    fn special_files_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = walk(d.path(), "app").unwrap_err();
        assert!(err.to_string().contains("s.sock is a socket"), "{err}");
    }

    #[test]
    fn dotdot_in_image_path_is_rejected() {
        assert!(image_path("/a/../b").is_err());
        assert_eq!(image_path("//a/./b/").unwrap(), "a/b");
    }
}
