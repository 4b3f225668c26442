//! Image naming (DESIGN.md contract): `<registry host:port>/<owner>/<repo>/learner:<full sha>`.

use crate::error::bad_input;
use crate::oci::reference::valid_repository;
use anyhow::Result;

/// Owner and name of a repository, as written in its URL or path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    pub owner: String,
    pub name: String,
}

/// The URL without user:password (for logs, labels and messages), and the credentials if any.
pub fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    if let Ok(mut u) = url::Url::parse(url) {
        if u.has_host() && (!u.username().is_empty() || u.password().is_some()) {
            let user = percent_decode(u.username());
            let pass = u.password().map(percent_decode).unwrap_or_default();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            return (u.to_string(), Some((user, pass)));
        }
    }
    (url.to_string(), None)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Owner/name from a GitHub URL (`https://github.com/Owner/Repo[.git][/]`), any other git URL
/// (the last two path segments), an scp-like `git@host:owner/repo.git`, or a local path.
pub fn repo_id(source: &str) -> Result<RepoId> {
    let (clean, _) = split_credentials(source);
    // `.`, `repo/` and `/tmp/repo` name the same repository the same way.
    let clean = match is_local_path(&clean).then(|| std::fs::canonicalize(&clean)) {
        Some(Ok(p)) => p.display().to_string(),
        _ => clean,
    };
    let path = match url::Url::parse(&clean) {
        Ok(u) if u.scheme().len() > 1 => u.path().to_string(),
        _ => match clean.split_once(':') {
            // scp-like syntax: user@host:path
            Some((host, p)) if host.contains('@') && !host.contains('/') => p.to_string(),
            _ => clean.clone(),
        },
    };
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let strip = |s: &str| s.strip_suffix(".git").unwrap_or(s).to_string();
    match segments.as_slice() {
        [.., owner, name] => Ok(RepoId {
            owner: strip(owner),
            name: strip(name),
        }),
        [name] => Ok(RepoId {
            owner: "local".into(),
            name: strip(name),
        }),
        [] => Err(bad_input(format!(
            "cannot derive an image name from {clean:?}: it has no path"
        ))),
    }
}

/// Whether a repository source is a local path: no URL scheme and not scp-like `user@host:path`.
pub fn is_local_path(source: &str) -> bool {
    let scp = source
        .split_once(':')
        .is_some_and(|(host, _)| host.contains('@') && !host.contains('/'));
    !source.contains("://") && !scp
}

/// `host:port` of a registry URL (`http://h:5000/`, `https://h`, `h:5000`).
pub fn registry_host(registry: &str) -> String {
    let r = registry
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    r.split('/').next().unwrap_or(r).to_string()
}

/// One path component made valid for the distribution spec: lowercase, separator runs the
/// grammar does not allow become `-`, leading/trailing separators dropped (`.tmpAB` → `tmpab`).
fn component(s: &str) -> String {
    let lower = s.to_lowercase();
    let mut out = String::new();
    let mut sep = String::new();
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if !sep.is_empty() && !out.is_empty() {
                let ok = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|c| c == '-');
                out.push_str(if ok { &sep } else { "-" });
            }
            sep.clear();
            out.push(c);
        } else {
            sep.push(c);
        }
    }
    out
}

/// An FL image reference, `<registry>/<owner>/<repo>/<kind>:<tag>` (`kind` is `learner` or
/// `aggregator`), with owner and name made valid for the distribution spec's name grammar (see
/// [`component`]); fails when nothing valid is left.
pub fn image_name(registry: &str, id: &RepoId, kind: &str, tag: &str) -> Result<String> {
    let repo = format!("{}/{}/{kind}", component(&id.owner), component(&id.name));
    if !valid_repository(&repo) {
        return Err(bad_input(format!(
            "repository {}/{} cannot be turned into a valid image name ({repo:?} breaks the distribution spec's name grammar: lowercase letters and digits separated by '.', '_', '__' or '-')",
            id.owner, id.name
        )));
    }
    Ok(format!("{}/{repo}:{tag}", registry_host(registry)))
}

/// The learner image of a commit (see [`image_name`]).
pub fn learner_image(registry: &str, id: &RepoId, sha: &str) -> Result<String> {
    image_name(registry, id, "learner", sha)
}

/// The trained-model image, `<registry>/<customer id, lowercased>/trained_model:<run id>`.
pub fn trained_model_image(registry: &str, customer_id: &str, run_id: &str) -> Result<String> {
    let repo = format!("{}/trained_model", component(customer_id));
    if !valid_repository(&repo) || !crate::oci::reference::valid_tag(run_id) {
        return Err(bad_input(format!(
            "customer id {customer_id:?} and run id {run_id:?} do not make a valid image name ({repo}:{run_id})"
        )));
    }
    Ok(format!("{}/{repo}:{run_id}", registry_host(registry)))
}

#[cfg(test)]
mod tests {
    use super::*;
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn name(url: &str) -> String {
        learner_image("http://192.168.1.10:5073/", &repo_id(url).unwrap(), SHA).unwrap()
    }

    #[test]
    fn github_urls_in_every_spelling() {
        let want = format!("192.168.1.10:5073/malyuk-a/flops-ml-repo/learner:{SHA}");
        for u in [
            "https://github.com/Malyuk-A/flops-ml-repo",
            "https://github.com/Malyuk-A/flops-ml-repo.git",
            "https://github.com/Malyuk-A/flops-ml-repo/",
            "https://user:tok@github.com/Malyuk-A/flops-ml-repo.git",
            "git@github.com:Malyuk-A/flops-ml-repo.git",
        ] {
            assert_eq!(name(u), want, "{u}");
        }
    }

    #[test]
    fn other_hosts_and_local_paths_use_the_last_two_segments() {
        assert!(name("http://127.0.0.1:8080/git/team/Cifar.git")
            .ends_with("/team/cifar/learner:0123456789abcdef0123456789abcdef01234567"));
        assert!(name("file:///tmp/repos/sklearn-demo").contains("/repos/sklearn-demo/learner:"));
        assert!(name("/srv/x/My_Repo/").contains("/x/my_repo/learner:"));
    }

    #[test]
    fn a_local_path_is_named_the_same_however_it_is_spelled() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("team").join("Demo");
        std::fs::create_dir_all(&repo).unwrap();
        let abs = repo_id(repo.to_str().unwrap()).unwrap();
        assert_eq!((abs.owner.as_str(), abs.name.as_str()), ("team", "Demo"));
        let trailing = repo_id(&format!("{}/./", repo.display())).unwrap();
        assert_eq!((trailing.owner, trailing.name), (abs.owner, abs.name));
        // The working directory itself (`check .`) has a name too.
        assert!(repo_id(".").is_ok());
        assert!(!is_local_path("git@github.com:o/r.git") && !is_local_path("https://h/o/r"));
    }

    #[test]
    fn invalid_names_fail_clearly() {
        let ok = learner_image(
            "r:5000",
            &RepoId {
                owner: ".tmpAB".into(),
                name: "Bad Name!".into(),
            },
            SHA,
        )
        .unwrap();
        assert_eq!(ok, format!("r:5000/tmpab/bad-name/learner:{SHA}"));
        let e = learner_image(
            "r:5000",
            &RepoId {
                owner: "o".into(),
                name: "!!!".into(),
            },
            SHA,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot be turned into a valid image name"),
            "{e}"
        );
    }

    #[test]
    fn trained_model_images() {
        assert_eq!(
            trained_model_image("http://r:5000", "Customer-A", "0a1b2c3d4e").unwrap(),
            "r:5000/customer-a/trained_model:0a1b2c3d4e"
        );
        assert!(trained_model_image("r", "c", "bad tag!").is_err());
    }

    #[test]
    fn credentials_are_split_off() {
        let (u, c) = split_credentials("https://me:s%40cret@git.example/o/r.git");
        assert_eq!(u, "https://git.example/o/r.git");
        assert_eq!(c, Some(("me".into(), "s@cret".into())));
    }
}
