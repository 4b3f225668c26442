//! The docs (README.md and docs/*.md) document every flag of every subcommand (taken from the
//! binary's own help); README.md links every docs page; every relative link in them points to
//! an existing file, and a link's `#anchor` to a heading of its page.
mod common;
use common::*;
use std::path::{Path, PathBuf};

/// README.md, then every docs/*.md in name order, each with its text.
fn pages() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    let mut paths = vec![root.join("README.md")];
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// The lines of a page outside fenced code blocks.
fn outside_code(text: &str) -> Vec<&str> {
    let mut in_code = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code {
            lines.push(line);
        }
    }
    lines
}

/// The targets of a page's links and images (`[text](target)`), outside code blocks.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in outside_code(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// The anchors of a page's headings, as GitHub makes them: lowercased, punctuation dropped,
/// spaces to hyphens.
fn anchors(text: &str) -> Vec<String> {
    outside_code(text)
        .into_iter()
        .filter(|line| line.starts_with('#'))
        .map(|line| {
            line.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect::<String>()
        })
        .collect()
}

#[test]
fn readme_documents_every_flag() {
    let docs: Vec<String> = pages().into_iter().map(|(_, text)| text).collect();
    let docs = docs.join("\n");
    let mut missing = Vec::new();
    for sub in ["build", "model", "check", "append"] {
        let help = run(&[sub, "--help"]).ok().stdout;
        for word in help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
            let is_flag = word.starts_with("--") && word.len() > 2 && word != "--help";
            if is_flag && !docs.contains(word) {
                missing.push(format!("{sub} {word}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from README.md and docs/*.md: {missing:?}"
    );
}

#[test]
fn readme_links_every_docs_page() {
    let pages = pages();
    let readme = link_targets(&pages[0].1);
    let mut unlinked = Vec::new();
    for (path, _) in &pages[1..] {
        let page = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
        let anchored = format!("{page}#");
        if !readme
            .iter()
            .any(|t| *t == page || t.starts_with(&anchored))
        {
            unlinked.push(page);
        }
    }
    assert!(
        unlinked.is_empty(),
        "docs pages README.md does not link: {unlinked:?}"
    );
}

#[test]
fn relative_links_point_to_existing_files() {
    let mut broken = Vec::new();
    for (path, text) in pages() {
        for target in link_targets(&text) {
            let external = ["http://", "https://", "mailto:"]
                .iter()
                .any(|scheme| target.starts_with(*scheme));
            if external {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let file = if file.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap().join(file)
            };
            let name = path.file_name().unwrap().to_string_lossy();
            if !file.exists() {
                broken.push(format!("{name}: {target} (no such file)"));
            } else if !anchor.is_empty() {
                let page = std::fs::read_to_string(file).unwrap();
                if !anchors(&page).iter().any(|a| a == anchor) {
                    broken.push(format!("{name}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:?}");
}
