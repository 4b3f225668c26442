//! Software bills of materials: an SPDX 2.3 JSON document per platform image, written from
//! what the builder put into it — the lock's wheels (name, version, file, sha256, declared
//! license), the base image by digest, the repo at its commit (or the served model), the FL
//! runtime's files — without scanning anything. Same inputs, same bytes: the creation time is
//! the commit's (or the model run's), keys are sorted, packages ordered by name.
//!
//! Spec: SPDX 2.3 (<https://spdx.github.io/spdx-spec/v2.3/>); package URLs per the purl spec
//! (`pkg:pypi`, `pkg:oci`). The document is attached to the image as an OCI 1.1 referrer by
//! [`crate::oci::referrers`].

pub mod license;
pub mod remote_zip;

use crate::wheels::pylock::Selected;
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

/// The media type (and OCI artifact type) of an SPDX JSON document.
pub const MEDIA_TYPE: &str = "application/spdx+json";

/// The base image of a platform image.
pub struct BasePackage {
    /// `registry/repository` it was read from, and its tag (or digest) as asked.
    pub repository_url: String,
    pub tag: String,
    /// The platform manifest's digest.
    pub digest: String,
}

/// Files the builder placed, as one package: its name and (path in the image, bytes).
pub type PlacedFiles<'a> = (String, Vec<(String, &'a [u8])>);

/// What one platform image holds.
pub struct Contents<'a> {
    /// `repository:tag` of the image, without the registry host (the document stays the same
    /// when the image is copied to another registry).
    pub image: String,
    /// `linux/amd64`.
    pub platform: String,
    /// RFC 3339, the commit's or the model run's time.
    pub created: String,
    pub base: BasePackage,
    /// The ML repo (URL without credentials) and its commit.
    pub source: Option<(String, String)>,
    /// The served model: name and version (run id or tag), and where it came from.
    pub model: Option<(String, String, String)>,
    /// Files the builder placed (the FL runtime, the site hook), as a package of that name:
    /// path in the image and bytes.
    pub files: Option<PlacedFiles<'a>>,
    /// Installed Python packages and their declared license expression.
    pub packages: Vec<(&'a Selected, String)>,
}

/// An SPDX identifier's idstring: letters, digits, `.` and `-` only.
fn spdx_id(kind: &str, parts: &[&str]) -> String {
    let raw = parts.join("-");
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{kind}-{clean}")
}

/// `u` without credentials, query or fragment, when SPDX accepts it as a download location;
/// None otherwise. SPDX 2.3's download-location grammar (§7.7, as spdx-tools 0.8 checks it)
/// wants a host name with a 2–5 letter top-level domain: IP addresses (edge deployments clone
/// from them), `localhost`, `file://` and local paths are not locations it can express.
fn spdx_url(u: &str) -> Option<String> {
    const SCHEMES: &[&str] = &["http", "https", "ssh", "git", "svn", "sftp", "ftp"];
    let url = url::Url::parse(u).ok()?;
    let Some(url::Host::Domain(host)) = url.host() else {
        return None;
    };
    let labels: Vec<&str> = host.split('.').collect();
    let tld = labels.last().copied().unwrap_or("");
    let named = labels.len() > 1
        && (2..=5).contains(&tld.len())
        && tld.chars().all(|c| c.is_ascii_alphabetic())
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    (named && SCHEMES.contains(&url.scheme())).then(|| plain_url(u))
}

/// `u` without user, password, query or fragment (URLs may carry credentials or tokens), for
/// `downloadLocation` and the document's free-text fields (`sourceInfo`: the exact place when
/// `downloadLocation` cannot say it).
fn plain_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        // A local path or scp-like `user@host:path`: no credentials to take out but a user name.
        Err(_) => u.rsplit_once('@').map_or(u, |(_, rest)| rest).to_string(),
    }
}

fn purl_pypi(name: &str, version: &str) -> String {
    let name = crate::spec::imports::normalize(name);
    format!("pkg:pypi/{name}@{}", version.replace('+', "%2B"))
}

fn purl_oci(b: &BasePackage, arch: &str) -> String {
    let name = b.repository_url.rsplit('/').next().unwrap_or("image");
    format!(
        "pkg:oci/{name}@{}?arch={arch}&repository_url={}&tag={}",
        b.digest.replace(':', "%3A"),
        b.repository_url,
        b.tag
    )
}

fn purl_ref(purl: String) -> Value {
    json!([{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}])
}

/// A package entry with the fields every package here shares.
fn package(id: &str, name: &str, version: &str, purpose: &str) -> serde_json::Map<String, Value> {
    let v = json!({
        "SPDXID": id,
        "name": name,
        "versionInfo": version,
        "downloadLocation": license::NOASSERTION,
        "filesAnalyzed": false,
        "licenseConcluded": license::NOASSERTION,
        "licenseDeclared": license::NOASSERTION,
        "copyrightText": license::NOASSERTION,
        "primaryPackagePurpose": purpose,
    });
    v.as_object().expect("object").clone()
}

/// A Python package as locked: its wheel, or — for a wheel the builder built — the sdist the
/// lock names (file, sha256, URL), so the document says what was locked on every node.
fn wheel_package(installed: &Selected, license: &str) -> Value {
    let w = installed.built_from.as_deref().unwrap_or(installed);
    let mut p = package(
        &spdx_id("pypi", &[&w.name, &w.version]),
        &w.name,
        &w.version,
        "LIBRARY",
    );
    p.insert("packageFileName".into(), json!(w.file));
    p.insert("licenseDeclared".into(), json!(license));
    p.insert(
        "checksums".into(),
        json!([{"algorithm": "SHA256", "checksumValue": w.sha256}]),
    );
    p.insert(
        "externalRefs".into(),
        purl_ref(purl_pypi(&w.name, &w.version)),
    );
    if let Some(u) = &w.wheel.url {
        match spdx_url(u) {
            Some(loc) => p.insert("downloadLocation".into(), json!(loc)),
            None => p.insert(
                "sourceInfo".into(),
                json!(format!("downloaded from {}", plain_url(u))),
            ),
        };
    }
    if installed.built_from.is_some() || installed.sdist {
        p.insert(
            "comment".into(),
            json!("only an sdist was locked: the builder built a pure wheel from it"),
        );
    }
    Value::Object(p)
}

fn file_entry(path: &str, bytes: &[u8]) -> Value {
    json!({
        "SPDXID": spdx_id("File", &[path.trim_start_matches('/')]),
        "fileName": format!(".{path}"),
        "checksums": [
            {"algorithm": "SHA1", "checksumValue": hex::encode(Sha1::digest(bytes))},
            {"algorithm": "SHA256", "checksumValue": hex::encode(Sha256::digest(bytes))},
        ],
        "licenseConcluded": license::NOASSERTION,
        "licenseInfoInFiles": [license::NOASSERTION],
        "copyrightText": license::NOASSERTION,
    })
}

/// The package of the files the builder placed: every file listed (filesAnalyzed, with the
/// SPDX package verification code: SHA-1 over the sorted SHA-1s of its files), its files and
/// their CONTAINS relationships.
fn files_package(name: &str, placed: &[(String, &[u8])]) -> (Value, Vec<Value>, Vec<Value>) {
    let id = "SPDXRef-Files";
    let mut sha1s: Vec<String> = placed
        .iter()
        .map(|(_, b)| hex::encode(Sha1::digest(b)))
        .collect();
    sha1s.sort();
    let mut p = package(id, name, env!("CARGO_PKG_VERSION"), "APPLICATION");
    p.insert("filesAnalyzed".into(), json!(true));
    p.insert(
        "packageVerificationCode".into(),
        json!({"packageVerificationCodeValue": hex::encode(Sha1::digest(sha1s.concat()))}),
    );
    p.insert("licenseInfoFromFiles".into(), json!([license::NOASSERTION]));
    let files: Vec<Value> = placed.iter().map(|(path, b)| file_entry(path, b)).collect();
    let rels = files
        .iter()
        .map(|f| relationship(id, "CONTAINS", f["SPDXID"].as_str().expect("id")))
        .collect();
    (Value::Object(p), files, rels)
}

fn relationship(a: &str, kind: &str, b: &str) -> Value {
    json!({"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b})
}

/// The SPDX 2.3 JSON document of one platform image (pretty-printed, sorted keys).
pub fn document(c: &Contents<'_>) -> Vec<u8> {
    let image_id = "SPDXRef-Image";
    let (repo, tag) = c.image.rsplit_once(':').unwrap_or((&c.image, ""));
    let arch = c.platform.split('/').nth(1).unwrap_or("amd64");
    let mut packages = vec![Value::Object(package(image_id, repo, tag, "CONTAINER"))];
    let mut rels = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", image_id)];

    let mut base = package(
        "SPDXRef-Base",
        &c.base.repository_url,
        &c.base.tag,
        "CONTAINER",
    );
    base.insert("checksums".into(), json!([{"algorithm": "SHA256", "checksumValue": c.base.digest.trim_start_matches("sha256:")}]));
    base.insert("externalRefs".into(), purl_ref(purl_oci(&c.base, arch)));
    packages.push(Value::Object(base));
    rels.push(relationship(image_id, "DESCENDANT_OF", "SPDXRef-Base"));

    if let Some((url, commit)) = &c.source {
        let mut p = package("SPDXRef-Source", url, commit, "SOURCE");
        match spdx_url(url) {
            Some(loc) => p.insert(
                "downloadLocation".into(),
                json!(format!("git+{loc}@{commit}")),
            ),
            None => p.insert(
                "sourceInfo".into(),
                json!(format!("cloned from {} at commit {commit}", plain_url(url))),
            ),
        };
        packages.push(Value::Object(p));
        rels.push(relationship(image_id, "CONTAINS", "SPDXRef-Source"));
    }
    if let Some((name, version, origin)) = &c.model {
        let mut p = package("SPDXRef-Model", name, version, "OTHER");
        p.insert("comment".into(), json!(origin));
        packages.push(Value::Object(p));
        rels.push(relationship(image_id, "CONTAINS", "SPDXRef-Model"));
    }
    let mut files = Vec::new();
    if let Some((name, placed)) = &c.files {
        let (p, f, r) = files_package(name, placed);
        rels.push(relationship(image_id, "CONTAINS", "SPDXRef-Files"));
        packages.push(p);
        files = f;
        rels.extend(r);
    }
    let mut wheels: Vec<&(&Selected, String)> = c.packages.iter().collect();
    wheels.sort_by(|a, b| (&a.0.name, &a.0.version).cmp(&(&b.0.name, &b.0.version)));
    for (w, lic) in wheels {
        let p = wheel_package(w, lic);
        rels.push(relationship(
            image_id,
            "CONTAINS",
            p["SPDXID"].as_str().expect("id"),
        ));
        packages.push(p);
    }
    let name = format!("{} {}", c.image, c.platform);
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "creationInfo": {
            "created": c.created,
            "creators": [concat!("Tool: flops-image-builder-", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "files": files,
        "relationships": rels,
    });
    // A unique namespace that is still reproducible: named by the content it identifies.
    let content = serde_json::to_vec(&doc).expect("JSON");
    let hash = hex::encode(Sha256::digest(&content));
    doc["documentNamespace"] = json!(format!(
        "https://oakestra.io/flops-image-builder/spdx/{}/{}-{}",
        c.image.replace([':', '/'], "-"),
        c.platform.replace('/', "-"),
        &hash[..16]
    ));
    let mut out = serde_json::to_vec_pretty(&doc).expect("JSON");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wheels::pylock::Wheel;

    fn wheel(name: &str, version: &str, built: bool) -> Selected {
        let locked = Selected {
            name: name.into(),
            version: version.into(),
            file: format!("{name}-{version}-py3-none-any.whl"),
            wheel: Wheel {
                url: Some(format!(
                    "https://user:secret@files.example/{name}.whl?token=x"
                )),
                ..Default::default()
            },
            sha256: "ab".repeat(32),
            sdist: built,
            built_from: None,
        };
        if !built {
            return locked;
        }
        // What sdist::materialize makes of it: a local wheel that remembers the locked sdist.
        Selected {
            file: format!("{name}-{version}-py3-none-any.whl"),
            wheel: Wheel::default(),
            sha256: "ef".repeat(32),
            sdist: false,
            built_from: Some(Box::new(Selected {
                file: format!("{name}-{version}.tar.gz"),
                ..locked.clone()
            })),
            ..locked
        }
    }

    #[test]
    fn a_document_names_every_package_without_credentials_and_is_reproducible() {
        let (a, b) = (
            wheel("Zeta_Pkg", "1.0+local", false),
            wheel("alpha", "2", true),
        );
        let contents = Contents {
            image: "flops/x/learner:abc".into(),
            platform: "linux/arm64".into(),
            created: "2026-01-01T00:00:00Z".into(),
            base: BasePackage {
                repository_url: "127.0.0.1:5000/library/python".into(),
                tag: "3.11-slim".into(),
                digest: format!("sha256:{}", "cd".repeat(32)),
            },
            source: Some(("https://git.example.com/u/r.git".into(), "abc".into())),
            model: None,
            files: Some((
                "flops-fl-learner".into(),
                vec![("/app/main.py".into(), b"print(1)\n")],
            )),
            packages: vec![(&a, "MIT".into()), (&b, license::NOASSERTION.into())],
        };
        let bytes = document(&contents);
        assert_eq!(bytes, document(&contents));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            !text.contains("secret") && !text.contains("token"),
            "{text}"
        );
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        let names: Vec<&str> = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "flops/x/learner",
                "127.0.0.1:5000/library/python",
                "https://git.example.com/u/r.git",
                "flops-fl-learner",
                "Zeta_Pkg",
                "alpha"
            ]
        );
        let zeta = &doc["packages"][4];
        assert_eq!(
            zeta["externalRefs"][0]["referenceLocator"],
            "pkg:pypi/zeta-pkg@1.0%2Blocal"
        );
        assert_eq!(zeta["SPDXID"], "SPDXRef-pypi-Zeta-Pkg-1.0-local");
        assert_eq!(
            doc["packages"][1]["externalRefs"][0]["referenceLocator"]
                .as_str()
                .unwrap()
                .split('?')
                .next()
                .unwrap(),
            format!("pkg:oci/python@sha256%3A{}", "cd".repeat(32))
        );
        assert_eq!(doc["files"][0]["fileName"], "./app/main.py");
        // The built wheel is reported as the sdist the lock names.
        let alpha = &doc["packages"][5];
        assert_eq!(alpha["packageFileName"], "alpha-2.tar.gz");
        assert_eq!(alpha["checksums"][0]["checksumValue"], "ab".repeat(32));
        assert!(alpha["comment"].as_str().unwrap().contains("sdist"));
        assert_eq!(
            doc["relationships"].as_array().unwrap().len(),
            1 + 1 + 1 + 1 + 1 + 2
        );
    }

    /// Every source URL form the builder accepts gets an SPDX-valid download location or
    /// NOASSERTION, and the exact place (without credentials) stays in `sourceInfo`.
    #[test]
    fn download_locations_spdx_can_express_and_the_rest_in_source_info() {
        for (url, want) in [
            (
                "https://github.com/u/r.git",
                Some("https://github.com/u/r.git"),
            ),
            (
                "https://tok:secret@git.example.com:8443/u/r?x=1#f",
                Some("https://git.example.com:8443/u/r"),
            ),
            (
                "ssh://git@gitlab.example.org/u/r.git",
                Some("ssh://gitlab.example.org/u/r.git"),
            ),
            (
                "git://code.example.io:9418/r",
                Some("git://code.example.io:9418/r"),
            ),
            ("git://127.0.0.1:9418/u/r", None),
            ("http://[::1]:3000/r", None),
            ("http://localhost:3000/r", None),
            ("http://my_host.example.com/r", None),
            ("file:///srv/git/r", None),
            ("/home/u/r", None),
            ("git@github.com:u/r.git", None),
        ] {
            assert_eq!(spdx_url(url).as_deref(), want, "{url}");
        }
        assert_eq!(
            plain_url("http://u:pw@10.0.0.2:3000/r?t=1"),
            "http://10.0.0.2:3000/r"
        );
        assert_eq!(plain_url("git@10.0.0.2:u/r.git"), "10.0.0.2:u/r.git");
        let contents = |url: &str| Contents {
            image: "flops/x/learner:abc".into(),
            platform: "linux/amd64".into(),
            created: "2026-01-01T00:00:00Z".into(),
            base: BasePackage {
                repository_url: "127.0.0.1:5000/library/python".into(),
                tag: "3.11-slim".into(),
                digest: format!("sha256:{}", "cd".repeat(32)),
            },
            source: Some((url.into(), "abc".into())),
            model: None,
            files: None,
            packages: vec![],
        };
        let doc: Value =
            serde_json::from_slice(&document(&contents("git://127.0.0.1:9418/u/r"))).unwrap();
        let source = &doc["packages"][2];
        assert_eq!(source["downloadLocation"], license::NOASSERTION);
        assert_eq!(
            source["sourceInfo"],
            "cloned from git://127.0.0.1:9418/u/r at commit abc"
        );
        let doc: Value =
            serde_json::from_slice(&document(&contents("https://github.com/u/r"))).unwrap();
        assert_eq!(
            doc["packages"][2]["downloadLocation"],
            "git+https://github.com/u/r@abc"
        );
    }
}
