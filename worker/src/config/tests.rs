//! Tests of the command line, its checks and the settings table.

use super::*;

fn run_args(extra: &[&str]) -> Result<RunArgs, String> {
    let mut argv = vec![
        "postgres-writer",
        "run",
        "--database-url",
        "postgres://u:secret@localhost/db",
        "--redis-streams",
        "a,b",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .command
    {
        Command::Run(args) => Ok(*args),
        _ => unreachable!(),
    }
}

#[test]
fn defaults_are_valid() {
    let args = run_args(&[]).unwrap();
    args.validate().unwrap();
    assert_eq!(args.streams.redis_streams, vec!["a", "b"]);
    assert_eq!(args.streams.batch_size, 300);
    assert_eq!(args.streams.consumer_concurrency, 2);
    assert_eq!(args.analytics.analytics_coalesce_ms, 250);
    assert_eq!(args.streams.consumer_reap_idle_ms, 3_600_000);
}

#[test]
fn consumer_reap_idle_is_off_or_in_its_range() {
    for ok in ["0", "1000", "604800000"] {
        run_args(&["--consumer-reap-idle-ms", ok])
            .unwrap()
            .validate()
            .unwrap();
    }
    for bad in ["1", "999", "604800001"] {
        let err = run_args(&["--consumer-reap-idle-ms", bad])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CONSUMER_REAP_IDLE_MS") && err.contains("0 (never) or 1000..=604800000"),
            "{err}"
        );
    }
}

#[test]
fn out_of_range_settings_name_variable_value_and_range() {
    let cases: [(&[&str], &str, &str); 5] = [
        (&["--batch-size", "0"], "BATCH_SIZE", "1..=10000"),
        (&["--http-port", "70000"], "HTTP_PORT", "1..=65535"),
        (
            &["--db-pool-max-connections", "0"],
            "DB_POOL_MAX_CONNECTIONS",
            "1..=1000",
        ),
        (
            &["--db-pool-min-connections", "20"],
            "DB_POOL_MIN_CONNECTIONS",
            "0..=10",
        ),
        (
            &["--analytics-concurrency", "100"],
            "ANALYTICS_CONCURRENCY",
            "1..=64",
        ),
    ];
    for (flags, variable, range) in cases {
        let err = run_args(flags).unwrap().validate().unwrap_err().to_string();
        assert!(
            err.contains(variable) && err.contains(range) && err.contains(flags[1]),
            "{err}"
        );
    }
}

#[test]
fn bad_urls_and_streams_are_refused_without_leaking_passwords() {
    let mut args = run_args(&[]).unwrap();
    args.database.database_url = "mysql://u:secret@host/db".into();
    let err = args.validate().unwrap_err().to_string();
    assert!(
        err.contains("DATABASE_URL") && !err.contains("secret"),
        "{err}"
    );
    let args = run_args(&["--redis-streams", "a,,b"]);
    let err = args.unwrap().validate().unwrap_err().to_string();
    assert!(err.contains("REDIS_STREAMS"), "{err}");
    let err = run_args(&["--redis-streams", "a,a"])
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("distinct"), "{err}");
}

#[test]
fn ca_files_are_checked_at_start_up() {
    let missing = "/nonexistent/pgw/ca.crt";
    let mut args = run_args(&["--database-ca-file", missing]).unwrap();
    args.database.database_url = "postgres://u@db/x?sslmode=verify-full".into();
    let err = args.validate().unwrap_err().to_string();
    assert!(
        err.contains("DATABASE_CA_FILE") && err.contains(missing) && err.contains("No such file"),
        "{err}"
    );
    // A CA with a mode that never checks it is a silent downgrade.
    args.database.database_url = "postgres://u@db/x?sslmode=require".into();
    let err = args.validate().unwrap_err().to_string();
    assert!(
        err.contains("DATABASE_CA_FILE") && err.contains("verify-full") && err.contains("require"),
        "{err}"
    );
    let err = run_args(&["--redis-ca-file", missing])
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("REDIS_CA_FILE") && err.contains("rediss://"),
        "{err}"
    );
    let err = run_args(&["--redis-url", "rediss://r:6380", "--redis-ca-file", missing])
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("REDIS_CA_FILE") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn settings_table_lists_every_spec_variable() {
    let table = settings_table();
    for variable in [
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_STREAMS",
        "CONSUMER_GROUP",
        "CONSUMER_NAME",
        "BATCH_SIZE",
        "BATCH_TIMEOUT_MS",
        "HTTP_PORT",
    ] {
        assert!(
            table.contains(&format!("| `{variable}` |")),
            "{variable} missing"
        );
    }
}

/// Every argument read from the environment is a catalog setting, with
/// the catalog's flag, default and meaning; every catalog setting with a
/// flag is read by some command.
#[test]
fn the_command_line_reads_the_catalog() {
    let command = Cli::command();
    let mut read = std::collections::BTreeSet::new();
    for sub in command.get_subcommands() {
        let nested = sub.get_subcommands().flat_map(|s| s.get_arguments());
        for arg in sub.get_arguments().chain(nested) {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_string_lossy().into_owned();
            let setting = settings::by_env(&env)
                .unwrap_or_else(|| panic!("{env} is not in the settings catalog"));
            assert_eq!(arg.get_long(), setting.flag(), "{env}: flag");
            let help = arg.get_help().map(|h| h.to_string());
            assert_eq!(help.as_deref(), Some(setting.doc()), "{env}: help");
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            match setting.default_value() {
                Some(default) => assert_eq!(defaults, [default], "{env}: default"),
                // CONSUMER_NAME's default is the host name, computed at start-up.
                None if env == settings::CONSUMER_NAME.env => {}
                None => assert!(defaults.is_empty(), "{env}: default {defaults:?}"),
            }
            assert_eq!(
                arg.is_required_set(),
                setting.default_shown() == "required",
                "{env}: required"
            );
            read.insert(env);
        }
    }
    for setting in settings::ALL {
        if setting.flag().is_some() {
            assert!(
                read.contains(setting.env()),
                "no command reads {}",
                setting.env()
            );
        }
    }
}

#[test]
fn readme_settings_table_is_current() {
    let readme = include_str!("../../../README.md");
    let begin = "<!-- settings:begin -->\n";
    let end = "<!-- settings:end -->";
    let start = readme
        .find(begin)
        .expect("README has a settings:begin marker")
        + begin.len();
    let stop = readme.find(end).expect("README has a settings:end marker");
    assert_eq!(
        &readme[start..stop],
        settings_table(),
        "README settings table is stale: regenerate it with `postgres-writer settings`"
    );
}
