//! `docs/SAFETY.md` covers every file of `src/` that uses `unsafe`, and every `unsafe` block and
//! `unsafe impl` has a `// SAFETY:` comment. (`unsafe fn` declarations state their contract in a
//! `# Safety` doc section instead; clippy's `undocumented_unsafe_blocks`, enabled in `lib.rs`,
//! checks the same comments at compile time.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether a line of code (not a comment) is an `unsafe` block or `unsafe impl`, the forms that
/// need a `// SAFETY:` comment.
fn needs_safety_comment(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    let mut rest = code;
    while let Some(i) = rest.find("unsafe") {
        let before = rest[..i].chars().next_back();
        let after = rest[i + "unsafe".len()..].trim_start();
        let word_start = !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"');
        if word_start && (after.starts_with('{') || after.starts_with("impl")) {
            return true;
        }
        rest = &rest[i + 6..];
    }
    false
}

/// Whether a line of code (not a comment) uses the `unsafe` keyword: a block, fn, impl or trait.
fn is_unsafe_use(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    let mut rest = code;
    while let Some(i) = rest.find("unsafe") {
        let before = rest[..i].chars().next_back();
        let after = rest[i + "unsafe".len()..].trim_start();
        let word_start = !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"');
        if word_start
            && (after.starts_with('{')
                || after.starts_with("fn")
                || after.starts_with("impl")
                || after.starts_with("trait")
                || after.starts_with("extern"))
        {
            return true;
        }
        rest = &rest[i + 6..];
    }
    false
}

#[test]
fn every_unsafe_in_src_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();

    // Files that use unsafe, and blocks/impls without a SAFETY comment on their line or the 8 above.
    let mut in_code: BTreeSet<String> = BTreeSet::new();
    let mut undocumented = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        let rel = f
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .replace('\\', "/");
        for (i, line) in lines.iter().enumerate() {
            if is_unsafe_use(line) {
                in_code.insert(rel.clone());
            }
            if needs_safety_comment(line) {
                let from = i.saturating_sub(8);
                if !lines[from..=i].iter().any(|l| l.contains("SAFETY:")) {
                    undocumented.push(format!("{rel}:{}", i + 1));
                }
            }
        }
    }

    // Entries per file in docs/SAFETY.md: lines "- **Where:** `src/...`".
    let doc = std::fs::read_to_string(root.join("docs/SAFETY.md")).expect("docs/SAFETY.md");
    let mut in_doc: BTreeSet<String> = BTreeSet::new();
    for line in doc.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("- **Where:** `") {
            let path = rest.split('`').next().unwrap_or("");
            if path.starts_with("src/") {
                in_doc.insert(path.to_owned());
            }
        }
    }

    assert!(
        undocumented.is_empty(),
        "unsafe without a `// SAFETY:` comment just above: {undocumented:?}"
    );
    assert_eq!(
        in_code, in_doc,
        "files using unsafe (left: in src/, right: with entries in docs/SAFETY.md); add or \
         update the entries in docs/SAFETY.md"
    );
    assert!(
        !in_code.is_empty(),
        "found no unsafe at all: is the scan broken?"
    );
}

#[test]
fn the_scan_recognises_unsafe_forms() {
    assert!(needs_safety_comment("    let m = unsafe { f() };"));
    assert!(needs_safety_comment("unsafe impl Send for X {}"));
    assert!(!needs_safety_comment("    unsafe fn zero() -> Self;"));
    assert!(is_unsafe_use("    let m = unsafe { f() };"));
    assert!(is_unsafe_use("unsafe fn f() {}"));
    assert!(is_unsafe_use("unsafe impl Send for X {}"));
    assert!(is_unsafe_use("pub unsafe extern \"C\" fn f() {}"));
    assert!(!is_unsafe_use("// unsafe { in a comment }"));
    assert!(!is_unsafe_use("let not_unsafe = 1;"));
    assert!(!is_unsafe_use("#![forbid(unsafe_code)]"));
}
