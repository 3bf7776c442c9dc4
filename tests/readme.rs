//! The README's "Guarantees" table names the tests that prove each
//! guarantee; a renamed or deleted test must not leave it pointing at
//! nothing.

use std::path::Path;

/// Backquoted words of `text` that look like test names (snake case with at
/// least three words) or test files (`name.rs`).
fn quoted_names(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| {
            word.ends_with(".rs")
                || (word.matches('_').count() >= 2
                    && word.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '*'
                    }))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_test_the_guarantees_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Guarantees\n")
        .nth(1)
        .expect("README.md has a Guarantees section");
    let section = section.split("\n## ").next().unwrap_or(section);

    let mut sources = String::new();
    for entry in std::fs::read_dir(root.join("tests")).expect("tests/") {
        let path = entry.expect("an entry of tests/").path();
        if path.extension().is_some_and(|e| e == "rs") {
            sources.push_str(&std::fs::read_to_string(&path).expect("a test file"));
        }
    }

    let names = quoted_names(section);
    assert!(names.len() >= 20, "too few tests named: {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| match name.strip_suffix(".rs") {
            Some(file) => !root.join("tests").join(format!("{file}.rs")).is_file(),
            None => match name.strip_suffix('*') {
                Some(prefix) => !sources.contains(&format!("fn {prefix}")),
                None => !sources.contains(&format!("fn {name}(")),
            },
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the Guarantees name missing tests: {missing:?}"
    );
}
