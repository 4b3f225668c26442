//! OCI images: layer writing, image assembly, the registry client (its retry policy, the
//! credentials it reads, mirrors), push, OCI 1.1 referrers, oci-layout export, and `append`.

pub mod append;
pub mod assemble;
pub mod blobstore;
pub mod convert;
pub mod credentials;
pub mod estargz;
pub mod image;
pub mod layer;
pub mod layout;
pub mod mirrors;
pub mod push;
pub mod reference;
pub mod referrers;
pub mod registry;
pub mod retry;

use sha2::{Digest as _, Sha256};

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `12.3 MB` for logs.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}
