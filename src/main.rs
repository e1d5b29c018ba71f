//! The `flinger` binary: parse the configuration, set up logging, bind, run the server
//! until SIGINT/SIGTERM. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use flinger::config::{read_config_file, Cli, Command, Config, HugePages, WalAction};
use flinger::error::Error;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: the request path makes many small short-lived
/// allocations, and glibc's malloc/free were a quarter of the server's instructions in a
/// callgrind profile of durable submits (see `flinger::alloc` for how it is called).
#[global_allocator]
static GLOBAL: flinger::alloc::MiMalloc = flinger::alloc::MiMalloc;

fn main() -> ExitCode {
    // Everything flinger writes (journal, snapshots, uploaded files, the signing key,
    // token files) holds jobs, results and credentials: readable by its user alone,
    // whatever umask it was started with.
    // SAFETY: umask only sets the process's file-creation mask; no threads exist yet.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse_env();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written is dropped: by default tracing-subscriber
        // reports the failure with `eprintln!`, which panics when stderr is a closed pipe
        // (a log collector that died), and that would take the server down with its log.
        .log_internal_errors(false)
        .init();
    if let Some(Command::Wal {
        action: WalAction::Dump {
            data_dir,
            past_damage,
        },
    }) = &cli.command
    {
        use flinger::journal::Dumped;
        let stdout = std::io::stdout();
        // The exit statuses are documented in `flinger wal dump --help` (config/cli.rs).
        return match flinger::journal::dump(data_dir, *past_damage, &mut stdout.lock()) {
            Ok(Dumped::Intact | Dumped::ReaderGone) => ExitCode::SUCCESS,
            Ok(Dumped::TornTail) => ExitCode::from(3),
            Ok(Dumped::Corrupt) => ExitCode::from(4),
            Err(e) => {
                eprintln!("flinger wal dump: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let env_path = flinger::config::env_var("TESTFLINGER_CONFIG").map(std::path::PathBuf::from);
    let resolved =
        read_config_file(env_path.as_deref()).and_then(|file| Config::resolve(&cli.opts, file));
    let (config, warnings) = match resolved {
        Ok(resolved) => resolved,
        Err(e) => return configuration_error(&e),
    };
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    // The seed's server shared a Redis named by these; flinger does not use one.
    for key in ["REDIS_HOST", "REDIS_PORT"] {
        if flinger::config::env_var(key).is_some() {
            tracing::warn!("environment variable {key} is ignored: flinger keeps its journal in its data directory, or in PostgreSQL with --journal postgres://... (FLINGER_JOURNAL)");
        }
    }
    let client_action = match cli.command {
        Some(Command::Client { action }) => Some(action),
        _ => None,
    };
    let mut config = config;
    if client_action.is_none() {
        if let Err(e) = config.check_exposure() {
            eprintln!("flinger: {e}");
            return ExitCode::from(2);
        }
        match flinger::server::fit_descriptor_limit(&mut config) {
            Ok((limit, note)) => {
                // Only a default was fitted (a chosen value that cannot be met is an error).
                if let Some(note) = note {
                    tracing::info!("{note}");
                }
                tracing::debug!(limit, "descriptor limit");
            }
            Err(e) => return configuration_error(&e),
        }
    }
    if config.thp == HugePages::Off {
        match flinger::server::disable_transparent_huge_pages() {
            Ok(()) => tracing::debug!("transparent huge pages off for this process"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot turn transparent huge pages off (--thp off): the system's setting applies")
            }
        }
    }
    // One worker is a current-thread runtime: the same single thread runs every task,
    // without the multi-thread scheduler's work-stealing queues and wake-ups of parked
    // workers (soak A/B on 2 cores: p99 2.5-2.8 ms against 3.1-3.7 ms, same or higher throughput).
    let mut builder = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.workers);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flinger: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(action) = client_action {
        return runtime.block_on(async move {
            let stdout = std::io::stdout();
            match flinger::access::admin::run(&config, &action, &mut stdout.lock()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(Error::Misconfigured(e)) => configuration_error(&e),
                Err(e) => {
                    eprintln!("flinger client: {e}");
                    ExitCode::FAILURE
                }
            }
        });
    }
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.bind).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %config.bind, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match flinger::server::run(listener, config, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            // Found while starting (a kept signing key too short, a data directory that
            // cannot be one): the operator's to fix, like every bad setting.
            Err(Error::Misconfigured(e)) => configuration_error(&e),
            Err(e) => {
                if flinger::server::SERVING.load(std::sync::atomic::Ordering::Acquire) {
                    tracing::error!(error = %e, "server stopped with an error");
                } else {
                    tracing::error!(error = %e, "server could not start");
                }
                ExitCode::FAILURE
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: the accept loop may not poll it before the first
/// connections are served, and a SIGTERM in that window would otherwise kill the process
/// with the default action instead of draining (seen as a non-zero exit under load).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate()).ok();
    let interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(terminate) => {}
            _ = wait(interrupt) => {}
        }
        tracing::info!("shutdown signal received");
    }
}

/// A configuration error, wherever it was found (the settings, what start-up found kept
/// for them): said on stderr, exit status 2, so a supervisor or script can tell "fix the
/// configuration" from a failure worth retrying.
fn configuration_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("flinger: configuration error: {e}");
    ExitCode::from(2)
}
