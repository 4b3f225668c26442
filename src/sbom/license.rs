//! A package's declared license as an SPDX license expression, from its core metadata
//! (`METADATA`, the email-header format of the Python packaging "Core metadata" spec):
//! `License-Expression` (PEP 639), else a `License` field that is an SPDX expression, else
//! the one `License ::` trove classifier that names a single license — else `NOASSERTION`.
//! Free text (a whole license pasted into `License`) and ambiguous classifiers ("BSD License")
//! are never guessed into an identifier.
//!
//! The metadata comes from the index without downloading the wheel (PEP 658: `<file
//! URL>.metadata`), else from the wheel in the local cache, else out of the remote wheel by
//! range requests ([`super::remote_zip`]); the same bytes whichever way. Answers are cached
//! per wheel sha256.

use super::remote_zip;
use crate::wheels::pylock::Selected;
use anyhow::Result;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

pub const NOASSERTION: &str = "NOASSERTION";

/// Trove classifiers that name exactly one license, and its SPDX identifier. Classifiers that
/// leave the version or variant open ("BSD License", "GNU General Public License (GPL)") are
/// absent on purpose.
const CLASSIFIERS: &[(&str, &str)] = &[
    ("License :: OSI Approved :: MIT License", "MIT"),
    (
        "License :: OSI Approved :: MIT No Attribution License (MIT-0)",
        "MIT-0",
    ),
    (
        "License :: OSI Approved :: Apache Software License",
        "Apache-2.0",
    ),
    ("License :: OSI Approved :: ISC License (ISCL)", "ISC"),
    (
        "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)",
        "MPL-2.0",
    ),
    (
        "License :: OSI Approved :: Python Software Foundation License",
        "PSF-2.0",
    ),
    (
        "License :: OSI Approved :: The Unlicense (Unlicense)",
        "Unlicense",
    ),
    ("License :: OSI Approved :: zlib/libpng License", "Zlib"),
    (
        "License :: OSI Approved :: Boost Software License 1.0 (BSL-1.0)",
        "BSL-1.0",
    ),
    (
        "License :: OSI Approved :: Eclipse Public License 2.0 (EPL-2.0)",
        "EPL-2.0",
    ),
    (
        "License :: OSI Approved :: Historical Permission Notice and Disclaimer (HPND)",
        "HPND",
    ),
    (
        "License :: OSI Approved :: GNU General Public License v2 (GPLv2)",
        "GPL-2.0-only",
    ),
    (
        "License :: OSI Approved :: GNU General Public License v3 (GPLv3)",
        "GPL-3.0-only",
    ),
    (
        "License :: OSI Approved :: GNU General Public License v2 or later (GPLv2+)",
        "GPL-2.0-or-later",
    ),
    (
        "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)",
        "GPL-3.0-or-later",
    ),
    (
        "License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)",
        "LGPL-3.0-only",
    ),
    (
        "License :: OSI Approved :: GNU Lesser General Public License v3 or later (LGPLv3+)",
        "LGPL-3.0-or-later",
    ),
    (
        "License :: OSI Approved :: GNU Affero General Public License v3",
        "AGPL-3.0-only",
    ),
    (
        "License :: OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)",
        "AGPL-3.0-or-later",
    ),
    (
        "License :: CC0 1.0 Universal (CC0 1.0) Public Domain Dedication",
        "CC0-1.0",
    ),
];

/// The header fields of a METADATA text: name (lowercased) → values, in order. Continuation
/// lines (leading whitespace) belong to the field before; the body after the first blank
/// line is not read. Hand-written: the format is a few lines of RFC 822, and a mail-parsing
/// crate would bring MIME decoding this never needs.
fn fields(metadata: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in metadata.lines() {
        if line.trim().is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| out.get_mut(k)?.last_mut()) {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            out.entry(k.clone()).or_default().push(v.trim().to_string());
            last = Some(k);
        }
    }
    out
}

/// `text` as a canonical SPDX expression of listed identifiers only (a `LicenseRef-` would
/// need its text in the document), or `None`.
fn spdx_expression(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() || text.contains('\n') || text.len() > 200 {
        return None;
    }
    let canonical = spdx::Expression::canonicalize(text)
        .ok()?
        .unwrap_or_else(|| text.to_string());
    let expr = spdx::Expression::parse(&canonical).ok()?;
    let listed = expr
        .requirements()
        .all(|r| matches!(r.req.license, spdx::LicenseItem::Spdx { .. }));
    listed.then_some(canonical)
}

/// The declared license of a METADATA text (see the module comment), or `NOASSERTION`.
pub fn declared(metadata: &str) -> String {
    let f = fields(metadata);
    let first = |k: &str| f.get(k).and_then(|v| v.first()).map(String::as_str);
    if let Some(e) = first("license-expression").and_then(spdx_expression) {
        return e;
    }
    if let Some(e) = first("license").and_then(spdx_expression) {
        return e;
    }
    let license_classifiers: Vec<&String> = f
        .get("classifier")
        .into_iter()
        .flatten()
        .filter(|c| c.starts_with("License ::"))
        .collect();
    if let [only] = license_classifiers.as_slice() {
        if let Some((_, id)) = CLASSIFIERS.iter().find(|(c, _)| c == only) {
            return id.to_string();
        }
    }
    NOASSERTION.to_string()
}

/// The METADATA member of a wheel (a local file or a [`RemoteFile`]).
fn wheel_metadata(file: impl Read + std::io::Seek) -> Result<String> {
    let mut zip = zip::ZipArchive::new(file)?;
    let name = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.to_string()))
        .find(|n| n.ends_with(".dist-info/METADATA") && n.matches('/').count() == 1)
        .ok_or_else(|| anyhow::anyhow!("no .dist-info/METADATA"))?;
    let mut text = String::new();
    zip.by_name(&name)?.read_to_string(&mut text)?;
    Ok(text)
}

/// The METADATA of `w`: from the index (PEP 658), else the cached wheel, else read out of the
/// remote wheel by range requests; `None` when none of them has it. All three are the same
/// bytes (PEP 658), so the answer does not depend on which one a node could use.
async fn metadata_of(http: &reqwest::Client, cache: &Path, w: &Selected) -> Option<String> {
    let url = w
        .wheel
        .url
        .as_deref()
        .filter(|u| u.starts_with("http"))
        .map(|u| u.split('#').next().unwrap_or(u).to_string());
    if let Some(u) = &url {
        match http.get(format!("{u}.metadata")).send().await {
            Ok(r) if r.status().is_success() => {
                if let Ok(t) = r.text().await {
                    return Some(t);
                }
            }
            Ok(r) => tracing::debug!("{}: no PEP 658 metadata (HTTP {})", w.file, r.status()),
            Err(e) => tracing::debug!("{}: PEP 658 metadata: {e}", w.file),
        }
    }
    let path = crate::wheels::fetch::cache_path(cache, w);
    let (http, size, file) = (http.clone(), w.wheel.size, w.file.clone());
    tokio::task::spawn_blocking(move || {
        if let Ok(f) = std::fs::File::open(&path) {
            if let Ok(t) = wheel_metadata(f) {
                return Some(t);
            }
        }
        let remote = remote_zip::RemoteFile::open(http, url.as_deref()?, size);
        match remote.and_then(wheel_metadata) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!("{file}: METADATA by range requests: {e:#}");
                None
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// The declared license of every wheel (by sha256), fetched at most 8 at once and cached in
/// `<cache>/licenses/<sha256>`. A package whose metadata cannot be had is `NOASSERTION` (and
/// not cached: a later build may know more).
pub async fn licenses(cache: &Path, wheels: &[&Selected]) -> Result<BTreeMap<String, String>> {
    use futures_util::StreamExt;
    let http = crate::wheels::fetch::http_client()?;
    let dir = cache.join("licenses");
    std::fs::create_dir_all(&dir)?;
    let mut unique: BTreeMap<&str, &Selected> = BTreeMap::new();
    for w in wheels {
        unique.entry(w.sha256.as_str()).or_insert(w);
    }
    let found: Vec<(String, String)> = futures_util::stream::iter(unique.into_values())
        .map(|w| {
            let (http, dir) = (&http, &dir);
            async move {
                let entry = dir.join(&w.sha256);
                if let Ok(v) = std::fs::read_to_string(&entry) {
                    return (w.sha256.clone(), v);
                }
                match metadata_of(http, cache, w).await {
                    Some(text) => {
                        let v = declared(&text);
                        if let Err(e) = crate::oci::blobstore::write_atomic(&entry, v.as_bytes()) {
                            tracing::debug!("license cache {}: {e:#}", entry.display());
                        }
                        (w.sha256.clone(), v)
                    }
                    None => {
                        tracing::warn!(
                            "{} {}: no core metadata found, license NOASSERTION",
                            w.name,
                            w.version
                        );
                        (w.sha256.clone(), NOASSERTION.to_string())
                    }
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    Ok(found.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expression_then_license_then_one_classifier() {
        let pep639 = "Metadata-Version: 2.4\nName: a\nLicense-Expression: MIT OR Apache-2.0\nLicense: whatever\n";
        assert_eq!(declared(pep639), "MIT OR Apache-2.0");
        assert_eq!(declared("Name: b\nLicense: BSD-3-Clause\n"), "BSD-3-Clause");
        // Imprecise but unambiguous spellings are canonicalised.
        assert_eq!(declared("Name: b\nLicense: Apache 2.0\n"), "Apache-2.0");
        // A whole license text is not an identifier; one classifier decides.
        let text = "Name: c\nLicense: Copyright (c) 2005, NumPy Developers.\n        All rights reserved.\nClassifier: License :: OSI Approved :: MIT License\nClassifier: Programming Language :: Python\n\nbody: License: GPL\n";
        assert_eq!(declared(text), "MIT");
        // Two license classifiers, or an ambiguous one: not guessed.
        let two = "Name: d\nClassifier: License :: OSI Approved :: MIT License\nClassifier: License :: OSI Approved :: Apache Software License\n";
        assert_eq!(declared(two), NOASSERTION);
        assert_eq!(
            declared("Name: e\nClassifier: License :: OSI Approved :: BSD License\n"),
            NOASSERTION
        );
        assert_eq!(
            declared("Name: f\nLicense: LicenseRef-Proprietary\n"),
            NOASSERTION
        );
        assert_eq!(declared("Name: g\n"), NOASSERTION);
    }
}
