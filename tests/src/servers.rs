use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn as_postgres_user(program: &str, args: &[&str]) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if is_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", program]).args(args);
        cmd
    } else {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    }
}

fn pg_bin(tool: &str) -> String {
    let dir = std::env::var("PGW_PG_BIN")
        .expect("PGW_PG_BIN is not set: run the tests with scripts/test.sh");
    format!("{dir}/{tool}")
}

/// A PostgreSQL of its own, on a free port.
pub struct OwnPostgres {
    dir: PathBuf,
    pub port: u16,
    /// Extra `-c` settings (TLS).
    options: String,
}

impl OwnPostgres {
    pub fn start() -> OwnPostgres {
        Self::start_with(&[], String::new())
    }

    /// With `ssl=on`, serving `cert_pem` with `key_pem` (plain connections stay allowed).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> OwnPostgres {
        Self::start_with(
            &[("server.crt", cert_pem), ("server.key", key_pem)],
            "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".to_string(),
        )
    }

    fn start_with(files: &[(&str, &str)], options: String) -> OwnPostgres {
        let dir = std::env::temp_dir().join(super::unique("pgw-own-pg"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, contents) in files {
            // PostgreSQL refuses a key file that others may read.
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(name))
                .and_then(|mut f| f.write_all(contents.as_bytes()))
                .unwrap();
        }
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir)
            .status();
        let data = dir.join("data");
        let status = as_postgres_user(
            &pg_bin("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
        assert!(status.success(), "initdb failed");
        // Relative file settings are read from the data directory.
        for (name, _) in files {
            std::fs::rename(dir.join(name), data.join(name)).unwrap();
        }
        let pg = OwnPostgres {
            dir,
            port: super::free_port(),
            options,
        };
        pg.up();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100 {}",
            self.port,
            self.dir.display(),
            self.options
        );
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let status = as_postgres_user(
            &pg_bin("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
        assert!(status.success(), "pg_ctl start failed");
    }

    pub fn down(&self) {
        let data = self.dir.join("data");
        let status = as_postgres_user(
            &pg_bin("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
        assert!(status.success(), "pg_ctl stop failed");
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres_user(
            &pg_bin("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis of its own with persistence on (AOF, fsync always).
pub struct OwnRedis {
    dir: PathBuf,
    pub port: u16,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let dir = std::env::temp_dir().join(super::unique("pgw-own-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let redis = OwnRedis {
            dir,
            port: super::free_port(),
        };
        redis.up();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn up(&self) {
        let status = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "yes",
            ])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        while !self.ping() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .map(|o| o.stdout.starts_with(b"PONG"))
            .unwrap_or(false)
    }

    /// SHUTDOWN (the AOF keeps every acknowledged write).
    pub fn down(&self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .output();
        let started = Instant::now();
        while self.ping() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
