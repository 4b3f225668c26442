//! Error classes: each maps to a documented exit code, so scripts can tell bad input from a
//! registry problem from a bug without parsing messages.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A bug or an environment problem (disk full, permissions) — exit 1.
    Internal,
    /// The user's input is wrong: a path, a reference, a repo, a spec — exit 3.
    BadInput,
    /// The registry or network refused or failed — exit 4.
    Registry,
    /// The command line is wrong (an unknown flavor, a missing argument) — exit 2.
    Usage,
    /// The registry already holds another image under a tag that must not move (a commit's
    /// `learner`/`aggregator` tag) — exit 5.
    Conflict,
}

impl Kind {
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Internal => 1,
            Kind::BadInput => 3,
            Kind::Registry => 4,
            Kind::Usage => 2,
            Kind::Conflict => 5,
        }
    }
}

/// An error that carries its class; found anywhere in an anyhow chain by [`kind_of`].
#[derive(Debug)]
pub struct Classified {
    pub kind: Kind,
    pub msg: String,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Classified {}

pub fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: Kind::BadInput,
        msg: msg.into(),
    }
    .into()
}

pub fn registry(msg: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: Kind::Registry,
        msg: msg.into(),
    }
    .into()
}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: Kind::Usage,
        msg: msg.into(),
    }
    .into()
}

pub fn conflict(msg: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: Kind::Conflict,
        msg: msg.into(),
    }
    .into()
}

/// `head: item` for one item; `head:` then one indented line per item for several (stderr
/// keeps the lines, [`one_line`] joins them).
pub fn listed(head: &str, items: &[String]) -> String {
    match items {
        [one] => format!("{head}: {one}"),
        _ => format!("{head}:\n  {}", items.join("\n  ")),
    }
}

/// The class of an error: the outermost [`Classified`] in its chain, else Internal.
pub fn kind_of(err: &anyhow::Error) -> Kind {
    err.chain()
        .find_map(|e| {
            e.downcast_ref::<Classified>().map(|c| c.kind).or_else(|| {
                // The resolver's explanation of a conflict is about the user's input.
                e.is::<Unsatisfiable>().then_some(Kind::BadInput)
            })
        })
        .unwrap_or(Kind::Internal)
}

/// One line for the user (MQTT payloads, observer messages): the whole context chain joined,
/// a list's lines joined by `; `, disk-full spelled out.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for line in full(err).lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// The message for stderr: the context chain joined, a list keeping one line per item.
pub fn full(err: &anyhow::Error) -> String {
    let mut line = format!("{err:#}");
    let disk_full = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
    });
    if disk_full && !line.contains("disk full") {
        line.push_str(
            " (disk full: free space in the cache directory or point --cache-dir elsewhere)",
        );
    }
    line
}

/// uv explained why the requirements cannot be satisfied (the text names both sides).
#[derive(Debug)]
pub struct Unsatisfiable {
    pub python: String,
    pub platform: String,
    pub explanation: String,
}

impl std::fmt::Display for Unsatisfiable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dependency resolution failed for Python {} on {}: {}",
            self.python, self.platform, self.explanation
        )
    }
}

impl std::error::Error for Unsatisfiable {}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn kind_survives_context() {
        let e = Err::<(), _>(registry("registry x: 401"))
            .context("pushing")
            .unwrap_err();
        assert_eq!(kind_of(&e), Kind::Registry);
        assert_eq!(one_line(&e), "pushing: registry x: 401");
        assert_eq!(kind_of(&anyhow::anyhow!("plain")), Kind::Internal);
        let list =
            bad_input("requirements.txt: 2 entries cannot be installed:\n  line 1: a\n  line 2: b");
        assert_eq!(
            one_line(&list),
            "requirements.txt: 2 entries cannot be installed: line 1: a; line 2: b"
        );
    }
}
