//! The soak: submit + pop at one concurrency (64) for a minute on one
//! server, reported per second, so a stall (a snapshot, a segment rotation,
//! a slow fsync) shows in the second it happened instead of vanishing into
//! the run's average. The spawned server is given a small `--snapshot-bytes`
//! and `--segment-bytes` so that the minute crosses several snapshots and
//! rotations, and info logging for its own module, so the bench can count
//! its "snapshot taken" lines (with their durations); the bench also watches
//! the log directory for new segment and snapshot files.

use std::time::{Duration, Instant};

use super::Bench;
use crate::client::Target;
use crate::report::{fmt_us, SoakReport};
use crate::server::{wal_dir, Watch};
use crate::{Abort, Cli, MAX_CONCURRENCY};

/// The queue the soak submits to and pops from.
const SOAK_QUEUE: &str = "bench-soak";
/// RUST_LOG for the soak's server: warnings, plus flinger's own info lines
/// (start-up, snapshots: a few per second at most, never per request).
const SOAK_LOG: &str = "warn,flinger=info";

pub fn check_args(args: &Cli) -> Result<(), String> {
    if args.soak_concurrency == 0 || args.soak_concurrency > MAX_CONCURRENCY {
        return Err(format!("--soak-concurrency must be 1..={MAX_CONCURRENCY}"));
    }
    if args.soak_seconds == 0 || args.soak_seconds > 86_400 {
        return Err("--soak-seconds must be 1..=86400".into());
    }
    Ok(())
}

/// Whether `args` already set `flag` (as `--flag V` or `--flag=V`).
fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter()
        .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
}

/// The soak server's extra arguments: --server-arg's, then the soak's
/// snapshot and segment sizes unless those already set them.
fn soak_args(args: &Cli) -> Vec<String> {
    let mut v = args.server_args.clone();
    for (flag, bytes) in [
        ("--snapshot-bytes", args.soak_snapshot_bytes),
        ("--segment-bytes", args.soak_segment_bytes),
    ] {
        if bytes > 0 && !has_flag(&args.server_args, flag) {
            v.push(flag.into());
            v.push(bytes.to_string());
        }
    }
    v
}

pub async fn run(bench: &mut Bench, url: Option<Target>) -> Result<(), Abort> {
    let c = bench.args.soak_concurrency;
    let secs = bench.args.soak_seconds as f64;
    let mut notes = Vec::new();
    let (server, target) = match url {
        Some(t) => {
            notes.push(
                "--url: the server's snapshot and segment sizes are its own, and its \
                 snapshots are not counted"
                    .into(),
            );
            (None, t)
        }
        None => {
            let mut spec = bench.flinger_spec()?;
            if !bench.args.against_baseline {
                spec.extra_args = soak_args(&bench.args);
                spec.rust_log = SOAK_LOG;
            }
            spec.label = format!("{} for the soak", spec.label);
            let sp = bench.start_server(spec, "soak").await?;
            let t = sp.target();
            (Some(sp), t)
        }
    };
    let server_args = server
        .as_ref()
        .map(|s| s.spec.extra_args.clone())
        .unwrap_or_default();
    eprintln!("soak: submit + pop at c={c} for {secs:.0} s");
    // The windows count from the end of the warm-up; so do the events.
    let origin = Instant::now() + Duration::from_secs_f64(bench.warmup);
    let watch = server
        .as_ref()
        .map(|sp| Watch::start(sp.log.clone(), wal_dir(&sp.data_dir), origin));
    let mut phase = bench
        .mix_phase("soak", &target, SOAK_QUEUE, c, secs, None)
        .await;
    let seen = watch.map(Watch::finish);
    if let Some(seen) = &seen {
        let last = phase.windows.len().saturating_sub(1);
        let mut during_warmup = 0;
        let mut mark = |at: f64, what: String| {
            if at < 0.0 {
                during_warmup += 1;
            } else if let Some(w) = phase.windows.get_mut((at as usize).min(last)) {
                w.events.push(what);
            }
        };
        for s in &seen.snapshots {
            let took = s.total_ms.map_or(String::new(), |ms| format!(" ({ms} ms)"));
            mark(s.at_s, format!("snapshot taken{took}"));
        }
        for &at in &seen.rotations {
            mark(at, "segment rotated".into());
        }
        if during_warmup > 0 {
            notes.push(format!(
                "{during_warmup} server event(s) fell in the warm-up and are not in the table"
            ));
        }
        if !bench.args.against_baseline {
            if seen.snapshots.len() < 2 {
                notes.push(format!(
                    "fewer than two snapshots were taken: lower --soak-snapshot-bytes or raise \
                     --soak-seconds{}",
                    if std::env::var_os("RUST_LOG").is_some() {
                        " (RUST_LOG is set: \"snapshot taken\" lines need info for flinger::server)"
                    } else {
                        ""
                    }
                ));
            }
            if seen.rotations.is_empty() {
                notes.push(
                    "no segment rotation happened: lower --soak-segment-bytes or raise \
                     --soak-seconds"
                        .into(),
                );
            }
        }
    }
    eprintln!(
        "soak                         c={c:<4} {:>10.0} req/s  p50 {:>9}  p99 {:>9}  p999 {:>9}  \
         errors {}{}",
        phase.rps,
        fmt_us(phase.all.p50),
        fmt_us(phase.all.p99),
        fmt_us(phase.all.p999),
        phase.errors,
        seen.as_ref().map_or(String::new(), |s| format!(
            "; {} snapshots, {} rotations",
            s.snapshots.len(),
            s.rotations.len()
        ))
    );
    bench.rep.soak = Some(SoakReport {
        server_args,
        phase,
        seen,
        notes,
    });
    if let Some(sp) = server {
        bench.stop_server(sp).await;
    }
    bench.check()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn soak_sizes_go_to_the_server_unless_given_there() {
        let args = Cli::parse_from(["flinger-bench", "--workloads", "soak"]);
        assert_eq!(
            soak_args(&args),
            [
                "--snapshot-bytes",
                "33554432",
                "--segment-bytes",
                "34603008"
            ]
        );
        let args = Cli::parse_from([
            "flinger-bench",
            "--server-arg=--segment-bytes=99999999",
            "--soak-snapshot-bytes",
            "0",
        ]);
        assert_eq!(soak_args(&args), ["--segment-bytes=99999999"]);
        assert!(has_flag(&["--snapshot-bytes".into()], "--snapshot-bytes"));
        assert!(!has_flag(
            &["--snapshot-bytes-x".into()],
            "--snapshot-bytes"
        ));
    }
}
