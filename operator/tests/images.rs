//! The Dockerfiles (there is no Docker engine in CI): each must keep a
//! dependencies-only layer (cargo-chef's `cook` before the sources are
//! copied), BuildKit cache mounts for the cargo registry, and a final stage
//! that never runs the binary (cross-architecture builds fail when it does).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One instruction: keyword and the rest, continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// The regressions this test exists for, one line each; empty when none.
fn problems(text: &str, binary: &str) -> Vec<String> {
    let mut found = Vec::new();
    if !text.starts_with("# syntax=docker/dockerfile:1") {
        found.push("no `# syntax=docker/dockerfile:1…` line (cache mounts need it)".into());
    }
    let all = instructions(text);
    let stages: Vec<Vec<(String, String)>> = all
        .split(|(k, _)| k == "FROM")
        .skip(1)
        .map(<[_]>::to_vec)
        .collect();
    let Some(final_stage) = stages.last() else {
        return vec!["no stage".into()];
    };
    // The stage that builds the binary: cook, then the sources, then build.
    let build = stages.iter().find(|s| {
        s.iter()
            .any(|(k, r)| k == "RUN" && r.contains("cargo build") && r.contains("--release"))
    });
    match build {
        None => found.push("no stage runs `cargo build --release`".into()),
        Some(stage) => {
            let cook = stage
                .iter()
                .position(|(k, r)| k == "RUN" && r.contains("cargo chef cook"));
            let sources = stage
                .iter()
                .position(|(k, r)| k == "COPY" && r.split_whitespace().next() == Some("."));
            match (cook, sources) {
                (Some(c), Some(s)) if c < s => {}
                (None, _) => found.push(
                    "no dependencies-only layer: the build stage has no `cargo chef cook`".into(),
                ),
                _ => found.push(
                    "`COPY . .` comes before `cargo chef cook`: every edit rebuilds every crate"
                        .into(),
                ),
            }
        }
    }
    for (keyword, rest) in &all {
        if keyword != "RUN" {
            continue;
        }
        let compiles = ["cargo build", "cargo chef cook", "cargo install"]
            .iter()
            .any(|c| rest.contains(c));
        if compiles && !rest.contains("--mount=type=cache,target=/usr/local/cargo/registry") {
            found.push(format!("RUN without a cargo registry cache mount: {rest}"));
        }
        // Each command's first word (shell or exec form): is it the binary?
        let runs_binary = rest
            .split(['&', ';', '|'])
            .filter_map(|command| {
                command
                    .split(|c: char| c.is_whitespace() || c == '"' || c == '[' || c == ',')
                    .find(|w| !w.is_empty() && !w.starts_with("--mount"))
            })
            .any(|first| first == binary || first.ends_with(&format!("/{binary}")));
        if runs_binary {
            found.push(format!("the build runs the binary: {rest}"));
        }
    }
    if final_stage.iter().any(|(k, _)| k == "RUN") {
        found.push("the final stage has a RUN instruction".into());
    }
    found
}

#[test]
fn dockerfiles_cache_dependencies_and_never_run_the_binary() {
    for (file, binary) in [
        ("docker/worker.Dockerfile", "postgres-writer"),
        ("docker/operator.Dockerfile", "postgres-writer-operator"),
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        assert_eq!(problems(&text, binary), Vec::<String>::new(), "{file}");
        assert!(
            text.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "{file}"
        );
        assert!(text.contains("USER 65532:65532"), "{file}: non-root");
    }
}

#[test]
fn the_checker_refuses_the_old_dockerfile() {
    // The Dockerfile before issue 16: sources copied first, no cache mount,
    // the binary run in both stages.
    let old = r#"FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p worker --bin postgres-writer \
 && cp target/release/postgres-writer /postgres-writer \
 && /postgres-writer --version

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /postgres-writer /usr/local/bin/postgres-writer
RUN ["/usr/local/bin/postgres-writer", "--version"]
ENTRYPOINT ["/usr/local/bin/postgres-writer"]
"#;
    let found = problems(old, "postgres-writer");
    for needle in [
        "syntax",
        "dependencies-only",
        "cache mount",
        "runs the binary",
        "final stage",
    ] {
        assert!(
            found.iter().any(|p| p.contains(needle)),
            "{needle}: {found:#?}"
        );
    }
}

#[test]
fn dockerignore_keeps_build_outputs_out_of_the_context() {
    let text = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for entry in ["target/", ".git/", ".tools/"] {
        assert!(text.lines().any(|l| l.trim() == entry), "{entry}");
    }
}
