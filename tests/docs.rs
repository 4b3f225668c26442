//! The README documents every flag of every subcommand (taken from the binary's own help).
mod common;
use common::*;

#[test]
fn readme_documents_every_flag() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut missing = Vec::new();
    for sub in ["build", "model", "check", "append"] {
        let help = run(&[sub, "--help"]).ok().stdout;
        for word in help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
            let is_flag = word.starts_with("--") && word.len() > 2 && word != "--help";
            if is_flag && !readme.contains(word) {
                missing.push(format!("{sub} {word}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from README.md: {missing:?}"
    );
}
