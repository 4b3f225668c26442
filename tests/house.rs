//! The house: the library's modules are rooms stacked in the data flow's order, each using
//! only rooms below it, and no module reaches a module that reaches it back (no import
//! circles). Read from the sources (`crate::…` and `super::…` paths outside comments and
//! `mod tests`), so a new arrow upwards fails here with its file named.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rooms from the bottom up: a room may use the rooms before it.
const ROOMS: &[&str] = &[
    "error", "progress", "paths", "oci", "notify", "spec", "wheels", "pool", "resolve", "repo",
    "model", "sbom", "pipeline",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `oci::layer` for `src/oci/layer.rs`, `spec` for `src/spec/mod.rs`.
fn module_of(src: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(src).unwrap().with_extension("");
    let s = rel.to_str().unwrap().replace('/', "::");
    s.strip_suffix("::mod").unwrap_or(&s).to_string()
}

/// The code of a file without its test module and comment lines.
fn code(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap();
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path segment run after `prefix` (`crate::oci::layer::Layer` → `oci::layer::Layer`).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    code.match_indices(prefix)
        .map(|(i, _)| {
            code[i + prefix.len()..]
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or("")
                .split("::")
                .filter(|s| !s.is_empty())
                .collect()
        })
        .collect()
}

/// Module → the modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .map(|p| (module_of(&src, p), p.clone()))
        .filter(|(m, _)| m != "lib" && m != "main" && !m.starts_with("cli"))
        .collect();
    let longest = |parts: &[&str]| {
        (1..=parts.len())
            .rev()
            .map(|k| parts[..k].join("::"))
            .find(|c| modules.contains_key(c))
    };
    let mut edges = BTreeMap::new();
    for (m, p) in &modules {
        let text = code(p);
        let mut used = BTreeSet::new();
        for parts in paths_after(&text, "crate::") {
            used.extend(longest(&parts));
        }
        // `super::x` in module `a::b` (src/a/b.rs or src/a/b/mod.rs) names `a::x`.
        let segs: Vec<&str> = m.split("::").collect();
        let parent: Vec<&str> = segs[..segs.len() - 1].to_vec();
        for parts in paths_after(&text, "super::") {
            let full: Vec<&str> = parent.iter().copied().chain(parts).collect();
            used.extend(longest(&full));
        }
        used.remove(m);
        edges.insert(m.clone(), used);
    }
    edges
}

#[test]
fn every_room_uses_only_the_rooms_below_it() {
    let room = |m: &str| {
        let r = m.split("::").next().unwrap();
        ROOMS
            .iter()
            .position(|x| *x == r)
            .unwrap_or_else(|| panic!("module {m} is in no room: add its folder to ROOMS"))
    };
    let mut upwards = Vec::new();
    for (m, used) in graph() {
        for u in used {
            if room(&u) > room(&m) {
                upwards.push(format!("{m} → {u}"));
            }
        }
    }
    assert!(
        upwards.is_empty(),
        "arrows from a lower room to a higher one: {upwards:?}"
    );
}

#[test]
fn no_module_reaches_itself_through_others() {
    let g = graph();
    let mut circles = Vec::new();
    for start in g.keys() {
        // Depth-first over what `start` uses; a path back to `start` is a circle.
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((m, path)) = stack.pop() {
            for u in g.get(&m).into_iter().flatten() {
                if u == start {
                    circles.push(path.join(" → ") + " → " + start);
                } else if seen.insert(u.clone()) {
                    let mut p = path.clone();
                    p.push(u.clone());
                    stack.push((u.clone(), p));
                }
            }
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}
