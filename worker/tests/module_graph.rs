//! The worker's modules depend downward only (issue 23): an import circle
//! between them fails this test. The analysis is `scripts/module-graph.py`
//! (run with `--check`), so there is one definition of what an import is.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/module-graph.py")
}

fn check(src: &Path) -> Output {
    Command::new("python3")
        .arg(script())
        .arg(src)
        .arg("--check")
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script().display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn worker_modules_have_no_import_circle() {
    let output = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let report = text(&output);
    assert!(
        output.status.success(),
        "import circle in worker/src:\n{report}"
    );
    assert!(report.contains("import circles: none"), "{report}");
}

/// The check itself: two modules that import each other are reported by
/// name and fail it.
#[test]
fn the_check_names_a_circle_and_fails() {
    let src = std::env::temp_dir().join(format!("pgw-module-graph-{}", std::process::id()));
    std::fs::create_dir_all(src.join("nested")).unwrap();
    std::fs::write(
        src.join("lib.rs"),
        "pub mod first;\npub mod nested;\npub mod below;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("first.rs"),
        "use crate::nested::Second;\nuse crate::below;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("nested/mod.rs"),
        "mod inner;\npub struct Second;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("nested/inner.rs"),
        "use crate::{below, first::First};\n",
    )
    .unwrap();
    std::fs::write(
        src.join("below.rs"),
        "// use crate::first; (a comment, not an import)\n",
    )
    .unwrap();
    let output = check(&src);
    let report = text(&output);
    std::fs::remove_dir_all(&src).unwrap();
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("import circle of 2: first, nested"),
        "{report}"
    );
    assert!(
        report.contains("edges (module -> module it names via crate::): 4"),
        "{report}"
    );
}
