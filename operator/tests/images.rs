//! The Dockerfiles (there is no Docker engine in CI): each must keep a
//! dependencies-only layer (cargo-chef's `cook` before the sources are
//! copied), BuildKit cache mounts for the cargo registry, and a final stage
//! that never runs the binary (cross-architecture builds fail when it does).
//! `scripts/image.sh`, which builds the images without Docker, must run what
//! the Dockerfiles' final stages run, and write reproducible OCI archives.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// What the final stage of a Dockerfile runs, as an image config says it.
fn final_stage_config(text: &str) -> (Value, String) {
    let all = instructions(text);
    let from = all.iter().rposition(|(k, _)| k == "FROM").expect("a stage");
    let stage = &all[from + 1..];
    let one = |keyword: &str| -> &str {
        let found: Vec<&str> = stage
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, r)| r.as_str())
            .collect();
        assert_eq!(found.len(), 1, "one {keyword} in the final stage");
        found[0]
    };
    let exec_form = |keyword: &str| -> Value {
        serde_json::from_str(one(keyword)).unwrap_or_else(|e| panic!("{keyword} in exec form: {e}"))
    };
    let ports: serde_json::Map<String, Value> = one("EXPOSE")
        .split_whitespace()
        .map(|p| {
            let port = if p.contains('/') {
                p.to_string()
            } else {
                format!("{p}/tcp")
            };
            (port, json!({}))
        })
        .collect();
    let config = json!({
        "User": one("USER"),
        "ExposedPorts": ports,
        "Entrypoint": exec_form("ENTRYPOINT"),
        "Cmd": exec_form("CMD"),
    });
    // COPY --from=build /binary /usr/local/bin/binary: where the binary goes.
    let copied = one("COPY").split_whitespace().last().unwrap().to_string();
    (config, copied)
}

fn image_sh(args: &[&str]) -> std::process::Output {
    let output = Command::new("bash")
        .arg(root().join("scripts/image.sh"))
        .args(args)
        .output()
        .expect("bash runs scripts/image.sh");
    assert!(
        output.status.success(),
        "image.sh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

const IMAGES: [(&str, &str); 2] = [
    ("docker/worker.Dockerfile", "postgres-writer"),
    ("docker/operator.Dockerfile", "postgres-writer-operator"),
];

#[test]
fn image_sh_runs_what_the_dockerfiles_run() {
    for (file, image) in IMAGES {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let (expected, copied) = final_stage_config(&text);
        let printed = image_sh(&["config", image]).stdout;
        let config: Value = serde_json::from_slice(&printed).unwrap();
        for key in ["User", "ExposedPorts", "Entrypoint", "Cmd"] {
            assert_eq!(config[key], expected[key], "{file}: {key}");
        }
        assert_eq!(
            config["Entrypoint"][0],
            copied.as_str(),
            "{file}: binary path"
        );
        // distroless/cc's nonroot variant: its home is the working directory.
        assert_eq!(config["WorkingDir"], "/home/nonroot", "{file}");
    }
}

#[test]
fn the_config_check_notices_a_changed_port() {
    let text = std::fs::read_to_string(root().join("docker/worker.Dockerfile")).unwrap();
    let (config, _) = final_stage_config(&text.replace("EXPOSE 8080", "EXPOSE 9090"));
    assert_eq!(config["ExposedPorts"], json!({"9090/tcp": {}}));
    let (config, copied) = final_stage_config(&text);
    assert_eq!(config["ExposedPorts"], json!({"8080/tcp": {}}));
    assert_eq!(config["Cmd"], json!(["run"]));
    assert_eq!(copied, "/usr/local/bin/postgres-writer");
}

/// A scratch directory under the target directory, empty.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn image_sh_writes_reproducible_oci_archives_that_name_the_image() {
    // Any dynamically linked executable stands in for the release binaries:
    // the script copies it with the libraries it links.
    let dir = scratch("image-sh");
    let binaries = dir.join("bin");
    std::fs::create_dir_all(&binaries).unwrap();
    let stand_in = Path::new("/bin/true");
    for (_, image) in IMAGES {
        std::fs::copy(stand_in, binaries.join(image)).unwrap();
    }
    let mut archives = Vec::new();
    for out in ["a", "b"] {
        let out = dir.join(out);
        let out_s = out.to_str().unwrap();
        let bin_s = binaries.to_str().unwrap();
        image_sh(&["build", "--tag", "t1", "--out", out_s, "--binaries", bin_s]);
        archives.push(out);
    }
    let loader = run(Command::new("ldd").arg(stand_in))
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|l| l.starts_with('/'))
        .expect("the dynamic loader")
        .to_string();
    for (_, image) in IMAGES {
        let name = format!("{image}-t1.oci.tar");
        let first = std::fs::read(archives[0].join(&name)).unwrap();
        assert!(
            first == std::fs::read(archives[1].join(&name)).unwrap(),
            "{name}: two builds differ"
        );
        let layout = dir.join(format!("{image}-layout"));
        std::fs::create_dir_all(&layout).unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(archives[0].join(&name))
            .arg("-C")
            .arg(&layout));
        let blob = |digest: &Value| {
            let digest = digest.as_str().unwrap();
            let hex = digest.strip_prefix("sha256:").unwrap();
            let path = layout.join("blobs/sha256").join(hex);
            let sum = run(Command::new("sha256sum").arg(&path));
            assert!(
                sum.starts_with(hex),
                "{name}: blob {digest} has another digest"
            );
            path
        };
        let index = json_file(&layout.join("index.json"));
        let entry = &index["manifests"][0];
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            format!("localhost/{image}:t1")
        );
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "t1"
        );
        let manifest = json_file(&blob(&entry["digest"]));
        let config = json_file(&blob(&manifest["config"]["digest"]));
        let printed: Value = serde_json::from_slice(&image_sh(&["config", image]).stdout).unwrap();
        assert_eq!(
            config["config"], printed,
            "{name}: the config that `config` prints"
        );
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(
            layers[0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let layer = blob(&layers[0]["digest"]);
        // diff_id: the digest of the uncompressed layer.
        let diff_id = run(Command::new("bash")
            .arg("-c")
            .arg("gzip -dc \"$1\" | sha256sum")
            .arg("diff_id")
            .arg(&layer));
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!([format!("sha256:{}", &diff_id[..64])]),
            "{name}"
        );
        let listing = run(Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvzf"])
            .arg(&layer));
        let entries: Vec<(&str, &str, &str, &str)> = listing
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // mode, uid/gid, size, date, time, name
                (f[0], f[1], f[3], f[5])
            })
            .collect();
        let find = |path: &str| {
            entries
                .iter()
                .find(|e| e.3.trim_end_matches('/') == format!(".{path}"))
                .unwrap_or_else(|| panic!("{name}: no {path} in {listing}"))
        };
        let binary = config["config"]["Entrypoint"][0].as_str().unwrap();
        assert_eq!(find(binary).0, "-rwxr-xr-x");
        assert!(
            find(&loader).0.starts_with("-r"),
            "{name}: the loader {loader}"
        );
        assert_eq!(find("/tmp").0, "drwxrwxrwt");
        assert_eq!(find("/home/nonroot").1, "65532/65532");
        for (mode, owner, date, entry) in &entries {
            assert_eq!(*date, "1970-01-01", "{name}: {entry}");
            if *entry != "./home/nonroot/" {
                assert_eq!(*owner, "0/0", "{name}: {entry} ({mode})");
            }
        }
        let passwd = run(Command::new("tar")
            .args(["-xzOf"])
            .arg(&layer)
            .arg("./etc/passwd"));
        assert!(
            passwd.contains("nonroot:x:65532:65532:nonroot:/home/nonroot:"),
            "{passwd}"
        );
    }
}

#[test]
fn image_sh_refuses_a_bad_tag_and_missing_binaries() {
    let dir = scratch("image-sh-refusals");
    let out = dir.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "build",
                "--tag",
                "no/slash",
                "--out",
                out,
                "--binaries",
                out,
            ],
            "invalid tag",
        ),
        (
            vec!["build", "--tag", "ok", "--out", out, "--binaries", out],
            "no executable",
        ),
        (vec!["import", "x.tar"], "--address"),
        (vec!["config", "other"], "unknown image"),
    ] {
        let output = Command::new("bash")
            .arg(root().join("scripts/image.sh"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
