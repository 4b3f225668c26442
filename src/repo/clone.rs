//! Cloning with git2 into a temporary directory that is removed when the [`Checkout`] drops
//! (also on every error path). Credentials come from the URL or `GIT_TOKEN` and never reach a
//! message: every message uses the URL with its credentials stripped.

use crate::error::{bad_input, registry};
use crate::repo::naming::split_credentials;
use anyhow::Result;
use git2::{build::RepoBuilder, Cred, CredentialType, FetchOptions, RemoteCallbacks, Repository};
use std::cell::Cell;
use std::path::{Path, PathBuf};

pub const DEFAULT_MAX_BYTES: u64 = 500 * 1000 * 1000;

#[derive(Debug)]
pub struct Checkout {
    dir: tempfile::TempDir,
    /// The source as given, without credentials.
    pub source: String,
    pub sha: String,
    /// Commit time (Unix seconds): the image's created time and layer mtimes.
    pub commit_time: i64,
    pub shallow: bool,
}

impl Checkout {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

#[derive(Debug, Clone)]
pub struct CloneOptions {
    pub git_ref: Option<String>,
    pub max_bytes: u64,
}

impl Default for CloneOptions {
    fn default() -> Self {
        Self {
            git_ref: None,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// A local path (absolute or relative, existing) becomes an absolute path git2 can clone.
fn clone_url(source: &str) -> String {
    let p = Path::new(source);
    if !source.contains("://") && p.exists() {
        return std::fs::canonicalize(p)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| source.to_string());
    }
    source.to_string()
}

struct Limits<'a> {
    creds: Option<(String, String)>,
    max_bytes: u64,
    too_big: &'a Cell<bool>,
    auth_tries: &'a Cell<u32>,
}

fn fetch_options<'a>(l: &'a Limits<'a>, depth: Option<i32>) -> FetchOptions<'a> {
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |_url, user_from_url, allowed| {
        // libgit2 asks again after a rejected credential; stop after one try per kind.
        l.auth_tries.set(l.auth_tries.get() + 1);
        if l.auth_tries.get() > 2 || !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            return Err(git2::Error::from_str("authentication required"));
        }
        if let Some((u, p)) = &l.creds {
            return Cred::userpass_plaintext(u, p);
        }
        match std::env::var("GIT_TOKEN") {
            Ok(tok) if !tok.is_empty() => {
                let user = std::env::var("GIT_USERNAME")
                    .ok()
                    .or(user_from_url.map(str::to_string))
                    .unwrap_or_else(|| "x-access-token".into());
                Cred::userpass_plaintext(&user, &tok)
            }
            _ => Err(git2::Error::from_str("authentication required")),
        }
    });
    let max = l.max_bytes;
    let too_big = l.too_big;
    cb.transfer_progress(move |stats| {
        if stats.received_bytes() as u64 > max {
            too_big.set(true);
            return false;
        }
        true
    });
    let mut fo = FetchOptions::new();
    fo.remote_callbacks(cb);
    if let Some(d) = depth {
        fo.depth(d);
    }
    fo
}

/// Clones `source` (https/http/file URL or local path) at its default branch or `opts.git_ref`.
pub fn clone(source: &str, opts: &CloneOptions) -> Result<Checkout> {
    let (clean, creds) = split_credentials(source);
    if crate::repo::naming::is_local_path(&clean) && !Path::new(&clean).exists() {
        return Err(bad_input(format!(
            "cannot clone {clean}: no such directory (a repository is a local path or a URL)"
        )));
    }
    let url = clone_url(&clean);
    let too_big = Cell::new(false);
    let auth_tries = Cell::new(0);
    let limits = Limits {
        creds,
        max_bytes: opts.max_bytes,
        too_big: &too_big,
        auth_tries: &auth_tries,
    };
    let fail = |e: git2::Error| -> anyhow::Error {
        if too_big.get() {
            return bad_input(format!(
                "repository {clean} is larger than the limit of {} MB (raise --max-repo-size)",
                opts.max_bytes / 1_000_000
            ));
        }
        let msg = e.message().replace(&url, &clean);
        if auth_tries.get() > 0 && msg.contains("authentication") {
            return bad_input(format!("cannot clone {clean}: authentication failed (set GIT_TOKEN, or put credentials in the URL)"));
        }
        // Unreachable (refused, no DNS answer, TLS) is the network's (exit 4, may pass on a
        // retry); a repository or ref that is not there is the input's (exit 3).
        // (libgit2 files a refused connection under its OS class, DNS under NET.)
        if matches!(e.class(), git2::ErrorClass::Net | git2::ErrorClass::Ssl)
            || msg.starts_with("failed to connect to")
        {
            return registry(format!("cannot clone {clean}: {msg}"));
        }
        if msg.contains("not owned by current user") {
            return bad_input(format!("cannot clone {clean}: {msg} (git's safe.directory check: build as the directory's owner, or trust it with `git config --global --add safe.directory {}`)", url));
        }
        bad_input(format!("cannot clone {clean}: {msg}"))
    };

    let dir = tempfile::Builder::new().prefix("flops-clone-").tempdir()?;
    // Shallow first (the branch or the default branch); servers or transports that refuse
    // shallow fetches, and tags or commits, get a full clone.
    let shallow_try = || -> std::result::Result<Repository, git2::Error> {
        let mut b = RepoBuilder::new();
        b.fetch_options(fetch_options(&limits, Some(1)));
        if let Some(r) = &opts.git_ref {
            b.branch(r);
        }
        b.clone(&url, dir.path())
    };
    let (repo, shallow) = match shallow_try() {
        Ok(r) => (r, true),
        Err(e) if too_big.get() || auth_tries.get() > 2 => return Err(fail(e)),
        Err(e)
            if e.class() == git2::ErrorClass::Net
                && !e.message().contains("shallow")
                && opts.git_ref.is_none() =>
        {
            return Err(fail(e))
        }
        Err(_) => {
            clean_dir(dir.path())?;
            auth_tries.set(0);
            let mut b = RepoBuilder::new();
            b.fetch_options(fetch_options(&limits, None));
            let repo = b.clone(&url, dir.path()).map_err(fail)?;
            if let Some(r) = &opts.git_ref {
                checkout_ref(&repo, r).map_err(|_| {
                    bad_input(format!(
                        "unknown ref {r:?} in {clean} (not a branch, tag or commit)"
                    ))
                })?;
            }
            (repo, false)
        }
    };
    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| bad_input(format!("{clean} has no commit to build ({})", e.message())))?;
    let checkout = Checkout {
        // A local path as the filesystem names it, not as it was typed: the source goes into
        // the image's labels and SBOM, and `./repo` and `/home/u/repo` are one commit's image.
        source: if crate::repo::naming::is_local_path(&clean) {
            url.clone()
        } else {
            clean.clone()
        },
        sha: head.id().to_string(),
        commit_time: head.time().seconds(),
        shallow,
        dir,
    };
    drop(head);
    drop(repo);
    let size = worktree_size(checkout.root())?;
    if size > opts.max_bytes {
        return Err(bad_input(format!("repository {clean} is larger than the limit of {} MB ({} MB checked out; raise --max-repo-size)", opts.max_bytes / 1_000_000, size / 1_000_000)));
    }
    Ok(checkout)
}

fn clean_dir(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Branch (remote), tag or commit → detached HEAD at that commit.
fn checkout_ref(repo: &Repository, r: &str) -> std::result::Result<(), git2::Error> {
    let obj = repo
        .revparse_single(&format!("refs/remotes/origin/{r}"))
        .or_else(|_| repo.revparse_single(&format!("refs/tags/{r}")))
        .or_else(|_| repo.revparse_single(r))?;
    let commit = obj.peel_to_commit()?;
    repo.checkout_tree(
        commit.as_object(),
        Some(git2::build::CheckoutBuilder::new().force()),
    )?;
    repo.set_head_detached(commit.id())
}

/// Bytes of the checked-out files (not `.git`), without following symlinks.
fn worktree_size(root: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_name() == ".git" && d == root {
                continue;
            }
            let m = e.path().symlink_metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    Ok(total)
}
