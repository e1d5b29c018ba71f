//! The configuration's resolution: files, flags over files over defaults, and the bounds
//! `Config::validate` holds.

use super::*;

#[test]
fn testflinger_style_file_parses() {
    let keys = parse_config_file(
        "# comment\nDATA_PATH = '/srv/tf'\nREDIS_PORT = 6379\nFSYNC=\"interval:5\"\n",
    )
    .unwrap();
    assert_eq!(keys["DATA_PATH"], "/srv/tf");
    assert_eq!(keys["REDIS_PORT"], "6379");
    assert_eq!(keys["FSYNC"], "interval:5");
}

#[test]
fn malformed_lines_are_errors_with_line_numbers() {
    for (text, line) in [
        ("DATA_PATH '/x'", 1),
        ("\nDATA_PATH = '/x", 2),
        ("= 3", 1),
        ("A = 'x'y'", 1),
        ("A =", 1),
    ] {
        assert_eq!(parse_config_file(text).unwrap_err().line, line, "{text:?}");
    }
}

#[test]
fn job_data_bound_below_one_post_is_refused_naming_both() {
    let opts = ServeOpts {
        max_job_data_bytes: Some(1 << 20),
        ..ServeOpts::default()
    };
    let reason = Config::resolve(&opts, None).unwrap_err().reason;
    assert!(
        reason.contains("--max-job-data-bytes") && reason.contains("16777216"),
        "{reason}"
    );
    let file = parse_config_file("MAX_JOB_DATA_BYTES = 33554432\n").unwrap();
    let (config, _) =
        Config::resolve(&ServeOpts::default(), Some(("tf.conf".into(), file))).unwrap();
    assert_eq!(config.max_job_data_bytes, 32 << 20);
}

#[test]
fn results_bound_comes_from_file_and_flag_and_below_one_job_is_refused() {
    let (config, _) = Config::resolve(&ServeOpts::default(), None).unwrap();
    assert_eq!(config.max_results_bytes, 4 << 30);
    let file = parse_config_file("MAX_RESULTS_BYTES = '3 GiB'\n").unwrap();
    let (config, warnings) =
        Config::resolve(&ServeOpts::default(), Some(("tf.conf".into(), file))).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.max_results_bytes, 3 << 30);
    let opts = ServeOpts {
        max_results_bytes: Some(512 << 20),
        ..ServeOpts::default()
    };
    let reason = Config::resolve(&opts, None).unwrap_err().reason;
    assert!(
        reason.contains("--max-results-bytes") && reason.contains("--max-job-data-bytes"),
        "{reason}"
    );
    let opts = ServeOpts {
        max_results_bytes: Some(512 << 20),
        max_job_data_bytes: Some(256 << 20),
        ..ServeOpts::default()
    };
    assert_eq!(
        Config::resolve(&opts, None).unwrap().0.max_results_bytes,
        512 << 20
    );
}

#[test]
fn workers_default_to_cores_less_one_and_are_bounded() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (config, _) = Config::resolve(&ServeOpts::default(), None).unwrap();
    assert_eq!(config.workers, (cores - 1).max(1));
    let file = parse_config_file("WORKERS = 3\n").unwrap();
    let (config, _) =
        Config::resolve(&ServeOpts::default(), Some(("tf.conf".into(), file))).unwrap();
    assert_eq!(config.workers, 3);
    for (workers, ok) in [
        (0, false),
        (1, true),
        (MAX_WORKERS, true),
        (MAX_WORKERS + 1, false),
    ] {
        let opts = ServeOpts {
            workers: Some(workers),
            ..Default::default()
        };
        match Config::resolve(&opts, None) {
            Ok((config, _)) => assert!(ok && config.workers == workers, "{workers}"),
            Err(e) => assert!(!ok && e.to_string().contains("workers"), "{workers}: {e}"),
        }
    }
}

#[test]
fn load_limits_come_from_the_file_and_flags() {
    let file = parse_config_file(
        "MAX_PENDING = 7\nORPHAN_QUOTA_BYTES = 1000\nQUEUE_IDLE_SECS = 9\nMAX_SEARCHES = 3\nAGENT_EXPIRY_SECS = 60\n",
    )
    .unwrap();
    let opts = ServeOpts {
        max_searches: Some(2),
        ..Default::default()
    };
    let (config, warnings) = Config::resolve(&opts, Some(("tf.conf".into(), file))).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.max_pending, 7);
    assert_eq!(config.orphan_quota_bytes, 1000);
    assert_eq!(config.queue_idle, Duration::from_secs(9));
    assert_eq!(config.max_searches, 2);
    assert_eq!(config.agent_expiry, Duration::from_secs(60));
    let zero = ServeOpts {
        max_pending: Some(0),
        ..Default::default()
    };
    assert!(Config::resolve(&zero, None).is_err());
}

#[test]
fn flags_beat_file_beats_defaults_and_unknown_keys_warn() {
    let file =
        parse_config_file("DATA_PATH = '/srv/tf'\nBIND = '0.0.0.0:9000'\nWHAT = 1\n").unwrap();
    let opts = ServeOpts {
        bind: Some("127.0.0.1:1".parse().unwrap()),
        ..Default::default()
    };
    let (config, warnings) = Config::resolve(&opts, Some(("tf.conf".into(), file))).unwrap();
    assert_eq!(config.bind.port(), 1);
    assert_eq!(config.data_dir, PathBuf::from("/srv/tf"));
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("WHAT"));
}

#[test]
fn connection_limits_come_from_the_file_and_are_checked() {
    let file = parse_config_file(
        "HEADER_TIMEOUT_SECS = 5\nMAX_HEADER_BYTES = 9000\nMIN_TRANSFER_BYTES = 10\nTRANSFER_WINDOW_SECS = 2\nDRAIN_SECS = 3\nMAX_PART_HEADER_BYTES = 300\nMAX_UPLOAD_PARTS = 4\nMAX_FIELD_BYTES = 300\nMAX_CONNECTIONS = 7\n",
    )
    .unwrap();
    let (config, warnings) =
        Config::resolve(&ServeOpts::default(), Some(("tf.conf".into(), file))).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.header_timeout, Duration::from_secs(5));
    assert_eq!(config.max_header_bytes, 9000);
    assert_eq!(config.min_transfer_bytes, 10);
    assert_eq!(config.transfer_window, Duration::from_secs(2));
    assert_eq!(config.drain, Duration::from_secs(3));
    assert_eq!(config.max_part_header_bytes, 300);
    assert_eq!(config.max_upload_parts, 4);
    assert_eq!(config.max_field_bytes, 300);
    assert!(config.max_connections_chosen);
    let small = ServeOpts {
        max_header_bytes: Some(4096),
        ..Default::default()
    };
    assert!(Config::resolve(&small, None).is_err());
}

/// Each size and count whose smallest or largest values make the server useless (every
/// form field refused, a snapshot every few records, a segment the disk cannot hold) or
/// let one connection pin memory is held to its bounds: the bound itself is taken, one
/// past it refused naming the setting and the bound.
#[test]
fn sizes_and_counts_past_their_useful_range_are_refused_naming_the_setting() {
    for (key, edge, past, wanted) in [
        ("MAX_FIELD_BYTES", 256u64, 255u64, "at least 256"),
        ("SNAPSHOT_BYTES", 1 << 20, (1 << 20) - 1, "at least 1048576"),
        (
            "SEGMENT_BYTES",
            4 << 30,
            (4 << 30) + 1,
            "at most 4294967296",
        ),
        (
            "MAX_HEADER_BYTES",
            1 << 20,
            (1 << 20) + 1,
            "at most 1048576",
        ),
        (
            "MAX_PART_HEADER_BYTES",
            1 << 20,
            (1 << 20) + 1,
            "at most 1048576",
        ),
        ("MAX_CONNECTIONS", 1_000_000, 1_000_001, "at most 1000000"),
        ("MAX_AGENTS_PER_CLIENT", 1, 0, "at least 1"),
        ("MAX_AGENTS_PER_CLIENT", 10_000, 10_001, "at most 10000"),
    ] {
        let flag = format!("--{}", key.to_lowercase().replace('_', "-"));
        resolve_env(&format!("{key} = {edge}\n"), &[])
            .unwrap_or_else(|e| panic!("{key} = {edge}: {e}"));
        let reason = resolve_env(&format!("{key} = {past}\n"), &[])
            .expect_err(key)
            .reason;
        assert!(
            reason.contains(&flag) && reason.contains(wanted) && reason.contains(&past.to_string()),
            "{key} = {past}: {reason}"
        );
    }
}

#[test]
fn snapshot_growth_percent_comes_from_the_file_and_flags_and_is_bounded() {
    let file = parse_config_file("SNAPSHOT_GROWTH_PERCENT = 250\n").unwrap();
    let (config, _) =
        Config::resolve(&ServeOpts::default(), Some(("tf.conf".into(), file))).unwrap();
    assert_eq!(config.snapshot_growth_percent, 250);
    assert_eq!(Config::default().snapshot_growth_percent, 100);
    let flag = ServeOpts {
        snapshot_growth_percent: Some(0),
        ..Default::default()
    };
    assert_eq!(
        Config::resolve(&flag, None)
            .unwrap()
            .0
            .snapshot_growth_percent,
        0
    );
    let huge = ServeOpts {
        snapshot_growth_percent: Some(10_001),
        ..Default::default()
    };
    let refused = Config::resolve(&huge, None).unwrap_err();
    assert!(refused.reason.contains("at most 10000"), "{refused}");
}

#[test]
fn open_access_is_refused_off_loopback_unless_opted_out_or_on() {
    let mut config = Config::default();
    assert!(config.check_exposure().is_ok());
    config.bind = "[::1]:8000".parse().unwrap();
    assert!(config.check_exposure().is_ok());
    config.bind = "0.0.0.0:8000".parse().unwrap();
    let refused = config.check_exposure().unwrap_err();
    assert!(refused.reason.contains("--access-control on"), "{refused}");
    assert!(refused.reason.contains("--allow-open-access"), "{refused}");
    config.allow_open_access = true;
    assert!(config.check_exposure().is_ok());
    config.allow_open_access = false;
    config.access = AccessMode::On;
    assert!(config.check_exposure().is_ok());
}

#[test]
fn comments_may_follow_a_quoted_value_and_hashes_inside_quotes_are_kept() {
    let keys = parse_config_file(
        "DATA_PATH = '/tmp/x' # comment\nFSYNC = \"always\"\t# why\nWEBHOOK_AUTH = 'a#b' #c\n\
         JOURNAL = \"file\"#tight\nWEBHOOK_URL = \"it's # here\"\nMAX_JOB_BYTES = 1048576 # 1 MiB\n",
    )
    .unwrap();
    assert_eq!(keys["DATA_PATH"], "/tmp/x");
    assert_eq!(keys["FSYNC"], "always");
    assert_eq!(keys["WEBHOOK_AUTH"], "a#b");
    assert_eq!(keys["JOURNAL"], "file");
    assert_eq!(keys["WEBHOOK_URL"], "it's # here");
    assert_eq!(keys["MAX_JOB_BYTES"], "1048576");
}

#[test]
fn text_after_a_closing_quote_is_an_error_saying_so() {
    for text in [
        "DATA_PATH = '/tmp/x' junk",
        "FSYNC = \"always\" x # c",
        "A = 'x'y'",
    ] {
        let reason = parse_config_file(text).unwrap_err().reason;
        assert!(
            reason.contains("unexpected text after the closing quote"),
            "{text:?}: {reason}"
        );
    }
    // No escapes: the error says so rather than leaving the reader to guess.
    let reason = parse_config_file(r"A = 'it\'s'").unwrap_err().reason;
    assert!(
        reason.contains("backslash escapes are not supported"),
        "{reason}"
    );
    let reason = parse_config_file("A = '/tmp/x # comment")
        .unwrap_err()
        .reason;
    assert!(reason.contains("unterminated string"), "{reason}");
    // A comment alone is no value (it used to become the value "# comment").
    let reason = parse_config_file("DATA_PATH = # comment")
        .unwrap_err()
        .reason;
    assert_eq!(reason, "missing value");
}

fn resolve_env(file: &str, env: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
    let file = parse_config_file(file).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::resolve_with_env(
        &ServeOpts::default(),
        Some(("tf.conf".into(), file)),
        &|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
    )
}

#[test]
fn jwt_leeway_comes_from_environment_or_file_and_a_bad_one_is_refused() {
    let (config, warnings) = resolve_env("JWT_LEEWAY = 30\n", &[]).unwrap();
    assert_eq!(
        (config.jwt_leeway, warnings),
        (Duration::from_secs(30), vec![])
    );
    let (config, _) = resolve_env("JWT_LEEWAY = 30\n", &[("JWT_LEEWAY", " 7 ")]).unwrap();
    assert_eq!(config.jwt_leeway, Duration::from_secs(7));
    let (config, _) = resolve_env("", &[("JWT_LEEWAY", "")]).unwrap();
    assert_eq!(config.jwt_leeway, Duration::from_secs(5));

    let reason = resolve_env("", &[("JWT_LEEWAY", "abc")])
        .unwrap_err()
        .reason;
    assert!(
        reason.contains("JWT_LEEWAY") && reason.contains("\"abc\""),
        "{reason}"
    );
    let reason = resolve_env("", &[("JWT_LEEWAY", "-1")]).unwrap_err().reason;
    assert!(
        reason.contains("JWT_LEEWAY") && reason.contains("\"-1\""),
        "{reason}"
    );
    let reason = resolve_env("JWT_LEEWAY = abc\n", &[]).unwrap_err().reason;
    assert!(
        reason.contains("JWT_LEEWAY = \"abc\" is not seconds"),
        "{reason}"
    );
    let reason = resolve_env("JWT_LEEWAY = 1000\n", &[]).unwrap_err().reason;
    assert!(
        reason.contains("at most 300") && reason.contains("1000"),
        "{reason}"
    );
}

#[test]
fn file_values_beyond_their_settings_range_are_refused_not_truncated() {
    // 2^32 + 10 once became 10 failures a minute.
    let reason = resolve_env("TOKEN_FAILURES_PER_MINUTE = 4294967306\n", &[])
        .unwrap_err()
        .reason;
    assert!(
        reason.contains("TOKEN_FAILURES_PER_MINUTE = \"4294967306\" is not a count"),
        "{reason}"
    );
    let (config, _) = resolve_env("TOKEN_FAILURES_PER_MINUTE = 4294967295\n", &[]).unwrap();
    assert_eq!(config.token_failures_per_minute, u32::MAX);
}

#[test]
fn redact_hides_the_password_wherever_tokio_postgres_would_read_one() {
    for (url, shown) in [
        (
            "postgres://u:hun?ter2@db:5432/f?sslmode=require",
            "postgres://u:***@db:5432/f?sslmode=require",
        ),
        ("postgres://u:a/b#c@db/f", "postgres://u:***@db/f"),
        ("postgres://u@[::1]:5432/f", "postgres://u@[::1]:5432/f"),
        (
            "postgres://db/f?password=x@y&user=u",
            "postgres://db/f?password=***&user=u",
        ),
        (
            "host=db password=hunter2 dbname=f",
            "host=db password=*** dbname=f",
        ),
        (
            r"host=db PASSWORD = 'hun ter\'2' dbname=f",
            "host=db password=*** dbname=f",
        ),
        ("fiel", "fiel"),
    ] {
        assert_eq!(redact(url), shown, "{url}");
    }
}

#[test]
fn yes_no_settings_read_the_same_words_from_every_source() {
    for (text, value) in [
        ("true", true),
        ("YES", true),
        ("1", true),
        (" no ", false),
        ("False", false),
        ("0", false),
    ] {
        assert_eq!(parse_bool(text), Ok(value), "{text}");
    }
    for text in ["", "maybe", "2", "on"] {
        assert!(parse_bool(text).is_err(), "{text}");
    }
}

#[test]
fn allowed_hosts_come_from_flag_or_file_and_a_bad_entry_is_refused_naming_the_option() {
    use crate::access::origin::{check_host, Hosts};
    let admits = |config: &Config, host: &str| {
        check_host(Hosts::of(config), Some(&host.parse().unwrap())).is_ok()
    };
    let (config, _) = Config::resolve(&ServeOpts::default(), None).unwrap();
    assert_eq!(config.allowed_hosts, None);
    let file = parse_config_file("ALLOWED_HOSTS = 'file.example'\n").unwrap();
    let (config, _) = Config::resolve(
        &ServeOpts::default(),
        Some(("tf.conf".into(), file.clone())),
    )
    .unwrap();
    assert!(admits(&config, "file.example:8000"));
    assert!(!admits(&config, "flag.example"));
    // The flag (or its variable) over the file; the advertised host joins the list.
    let opts = ServeOpts {
        allowed_hosts: Some("*.flag.example".into()),
        advertise_url: Some("http://node-a.internal:8000".into()),
        ..ServeOpts::default()
    };
    let (config, _) = Config::resolve(&opts, Some(("tf.conf".into(), file))).unwrap();
    assert!(admits(&config, "a.flag.example"));
    assert!(admits(&config, "node-a.internal:8000"));
    assert!(!admits(&config, "file.example"));
    assert!(!admits(&config, "rebind.attacker.example"));
    for bad in [
        "lab.example:8000",
        "http://lab.example",
        "*",
        "a,,b",
        "lab.*.example",
    ] {
        let opts = ServeOpts {
            allowed_hosts: Some(bad.into()),
            ..ServeOpts::default()
        };
        let reason = Config::resolve(&opts, None).unwrap_err().reason;
        assert!(
            reason.starts_with(
                "--allowed-hosts (FLINGER_ALLOWED_HOSTS, config key ALLOWED_HOSTS): entry"
            ),
            "{bad}: {reason}"
        );
        let file = parse_config_file(&format!("ALLOWED_HOSTS = '{bad}'\n")).unwrap();
        let reason = Config::resolve(&ServeOpts::default(), Some(("tf.conf".into(), file)))
            .unwrap_err()
            .reason;
        assert!(
            reason.starts_with("tf.conf: ALLOWED_HOSTS: --allowed-hosts"),
            "{bad}: {reason}"
        );
    }
}

#[test]
fn a_non_loopback_bind_without_allowed_hosts_warns_of_dns_rebinding_once() {
    let rebinding = |warnings: &[String]| {
        warnings
            .iter()
            .filter(|w| w.contains("DNS rebinding"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let (_, warnings) = Config::resolve(&ServeOpts::default(), None).unwrap();
    assert_eq!(rebinding(&warnings), Vec::<String>::new(), "loopback");
    let public = ServeOpts {
        bind: Some("0.0.0.0:8000".parse().unwrap()),
        access_control: Some(AccessMode::On),
        ..ServeOpts::default()
    };
    let (_, warnings) = Config::resolve(&public, None).unwrap();
    let said = rebinding(&warnings);
    assert_eq!(said.len(), 1, "{warnings:?}");
    assert!(!said[0].contains("  "), "runs of spaces: {}", said[0]);
    assert!(
        said[0].contains("--allowed-hosts (FLINGER_ALLOWED_HOSTS, config key ALLOWED_HOSTS)")
            && said[0].contains("0.0.0.0:8000"),
        "{}",
        said[0]
    );
    let listed = ServeOpts {
        allowed_hosts: Some("lab.example".into()),
        ..public
    };
    let (_, warnings) = Config::resolve(&listed, None).unwrap();
    assert_eq!(rebinding(&warnings), Vec::<String>::new(), "listed");
}

#[test]
fn forward_idle_follows_the_lease_unless_set_and_a_short_one_warns_on_postgres() {
    let postgres = "postgres://flinger@127.0.0.1:5432/flinger";
    let with = |lease_ms: Option<u64>, idle: Option<u64>, journal: Option<&str>| {
        let opts = ServeOpts {
            lease_ms,
            forward_idle_secs: idle,
            journal: journal.map(str::to_owned),
            ..ServeOpts::default()
        };
        let (config, warnings) = Config::resolve(&opts, None).unwrap();
        let idle_warnings: Vec<String> = warnings
            .into_iter()
            .filter(|w| w.contains("--forward-idle-secs"))
            .collect();
        (config.forward_idle.as_secs(), idle_warnings)
    };
    // Unset: a long poll's 60 s or four leases, whichever is longer, plus 30 s.
    assert_eq!(with(None, None, Some(postgres)), (90, vec![]));
    assert_eq!(with(Some(30_000), None, Some(postgres)), (150, vec![]));
    assert_eq!(with(Some(60_000), None, None), (270, vec![]));
    // Set: kept as set; at or below what a leader may rightly be silent for, a warning
    // naming both (on the PostgreSQL journal only: the file log forwards nothing).
    let (idle, warned) = with(Some(30_000), Some(90), Some(postgres));
    assert_eq!((idle, warned.len()), (90, 1), "{warned:?}");
    assert!(
        warned[0].contains("is 90 s, not above the 120 s")
            && warned[0].contains("--lease-ms 30000"),
        "{}",
        warned[0]
    );
    assert_eq!(with(Some(30_000), Some(90), None), (90, vec![]));
    assert_eq!(with(Some(30_000), Some(121), Some(postgres)), (121, vec![]));
    let file = parse_config_file("FORWARD_IDLE_SECS = 2\nLEASE_MS = 1000\n").unwrap();
    let opts = ServeOpts {
        journal: Some(postgres.into()),
        ..ServeOpts::default()
    };
    let (config, warnings) = Config::resolve(&opts, Some(("tf.conf".into(), file))).unwrap();
    assert_eq!(config.forward_idle.as_secs(), 2);
    assert!(
        warnings.iter().any(|w| w.contains("not above the 60 s")),
        "{warnings:?}"
    );
}

#[test]
fn max_jobs_share_percent_is_1_to_100() {
    for (percent, ok) in [(0, false), (1, true), (100, true), (101, false)] {
        let opts = ServeOpts {
            max_jobs_share_percent: Some(percent),
            ..ServeOpts::default()
        };
        match Config::resolve(&opts, None) {
            Ok((config, _)) => {
                assert!(ok, "{percent} accepted");
                assert_eq!(config.max_jobs_share_percent, percent);
            }
            Err(e) => {
                assert!(!ok, "{percent} refused: {}", e.reason);
                assert!(
                    e.reason.contains("--max-jobs-share-percent") && e.reason.contains("1 to 100"),
                    "{}",
                    e.reason
                );
            }
        }
    }
    assert_eq!(Config::default().max_jobs_share_percent, 25);
}

#[test]
fn attachments_room_comes_from_the_file_and_flags_and_holds_one_largest_upload() {
    let (config, _) = Config::resolve(&ServeOpts::default(), None).unwrap();
    assert_eq!(config.max_attachments_bytes, 16 << 30);
    assert_eq!(
        config.share_of(config.max_attachments_bytes),
        None,
        "access control off"
    );
    let file = parse_config_file("MAX_ATTACHMENTS_BYTES = '3 GiB'\n").unwrap();
    let (config, warnings) =
        Config::resolve(&ServeOpts::default(), Some(("tf.conf".into(), file))).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.max_attachments_bytes, 3 << 30);
    let small = ServeOpts {
        max_attachments_bytes: Some(1000),
        max_artifact_bytes: Some(1001),
        ..Default::default()
    };
    let e = Config::resolve(&small, None).unwrap_err().to_string();
    assert!(
        e.contains("--max-attachments-bytes") && e.contains("--max-artifact-bytes 1001"),
        "{e}"
    );
    let on = ServeOpts {
        max_attachments_bytes: Some(1000),
        max_artifact_bytes: Some(1000),
        access_control: Some(AccessMode::On),
        ..Default::default()
    };
    let (config, _) = Config::resolve(&on, None).unwrap();
    assert_eq!(config.share_of(config.max_attachments_bytes), Some(250));
}
