//! Layers written again in another form: a base image's gzip layers as eStargz, so that a
//! lazy node can mount the whole image ([`crate::pipeline::lazy_base`] decides when).

use crate::oci::blobstore::BlobStore;
use crate::oci::layer::{Compression, Layer, LayerWriter};
use anyhow::{Context, Result};
use std::io::{BufReader, Read};
use std::path::Path;

/// An existing gzip (or uncompressed) tar layer (a base image's, in the store as `blob`)
/// written again as eStargz, entry by entry as it is (types, modes, owners, times, links,
/// device numbers; PAX extended attributes are not carried): a lazy node mounts an image only
/// when its bottom layers are eStargz too (containerd fetches every layer above the first one
/// it must fetch). The same blob gives the same bytes.
pub fn to_estargz(store: &BlobStore, blob: &Path, level: u32) -> Result<Layer> {
    let open = || std::fs::File::open(blob).with_context(|| format!("opening {}", blob.display()));
    let mut magic = [0u8; 2];
    open()?.read_exact(&mut magic).ok();
    let input: Box<dyn Read> = if magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(open()?)))
    } else {
        Box::new(BufReader::new(open()?))
    };
    let mut archive = tar::Archive::new(input);
    let mut w = LayerWriter::new(store, Compression::Estargz(level), 0)?;
    for entry in archive.entries().context("reading the base layer")? {
        w.append_raw(entry.context("reading the base layer")?)?;
    }
    // A Python base is the interpreter, its standard library and the C libraries it loads: a
    // start reads a large part of it, file by file; one range request fetches it faster.
    w.prefetch_landmark()?;
    w.finish(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::estargz;

    /// Path, mode, mtime, link target, content.
    type Entry = (String, u32, u64, Option<String>, Vec<u8>);

    /// A base-like gzip tar (owners, modes, times, a hardlink, a symlink, a big file) comes out
    /// as an eStargz layer with the same entries, every chunk verifiable.
    #[test]
    fn a_base_layer_keeps_its_entries_as_estargz() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut add = |kind: tar::EntryType, path: &str, mode: u32, data: &[u8], link: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(1000);
            h.set_gid(50);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            if link.is_empty() {
                b.append_data(&mut h, path, data).unwrap();
            } else {
                b.append_link(&mut h, path, link).unwrap();
            }
        };
        let big = vec![7u8; (estargz::CHUNK_SIZE + 10) as usize];
        add(tar::EntryType::Directory, "usr/", 0o755, b"", "");
        add(
            tar::EntryType::Regular,
            "usr/bin/tool",
            0o4755,
            b"#!/bin/sh\n",
            "",
        );
        add(
            tar::EntryType::Link,
            "usr/bin/tool2",
            0o4755,
            b"",
            "usr/bin/tool",
        );
        add(tar::EntryType::Symlink, "usr/bin/t", 0o777, b"", "tool");
        add(tar::EntryType::Regular, "usr/lib/big.so", 0o644, &big, "");
        let blob = b.into_inner().unwrap().finish().unwrap();
        let path = dir.path().join("base.tar.gz");
        std::fs::write(&path, &blob).unwrap();

        let layer = to_estargz(&store, &path, 6).unwrap();
        let bytes = std::fs::read(store.path(&layer.digest)).unwrap();
        let toc = estargz::verify(&bytes, &layer.annotations[estargz::TOC_DIGEST_ANNOTATION]);
        let tool = toc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "usr/bin/tool")
            .unwrap()
            .clone();
        assert_eq!(
            (tool["mode"].as_u64(), tool["uid"].as_u64()),
            (Some(0o4755), Some(1000))
        );
        let entries = |data: &[u8]| -> Vec<Entry> {
            let mut a = tar::Archive::new(flate2::read::MultiGzDecoder::new(data));
            a.entries()
                .unwrap()
                .map(|e| {
                    let mut e = e.unwrap();
                    let mut content = Vec::new();
                    e.read_to_end(&mut content).unwrap();
                    let h = e.header();
                    (
                        e.path().unwrap().display().to_string(),
                        h.mode().unwrap(),
                        h.mtime().unwrap(),
                        e.link_name().unwrap().map(|l| l.display().to_string()),
                        content,
                    )
                })
                .filter(|e| e.0 != estargz::TOC_NAME && e.0 != estargz::PREFETCH_LANDMARK)
                .collect()
        };
        assert!(entries(&bytes) == entries(&blob), "the entries differ");
        assert_eq!(to_estargz(&store, &path, 6).unwrap(), layer);
    }
}
