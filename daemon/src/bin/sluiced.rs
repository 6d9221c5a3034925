//! `sluiced --config <file>`: the Sluice node daemon.

use clap::Parser;
use sluice_daemon::config::{Config, DEFAULT_CONFIG};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Sluice node daemon: loads, attaches and pins the BPF datapath and serves the endpoint API"
)]
struct Args {
    /// TOML config; every key is optional (see conf/sluiced.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the effective config and exit.
    #[arg(long)]
    print_config: bool,
}

/// The API thread's nice value.
const API_NICE: libc::c_int = -5;

/// The Kubernetes client's own crates log every request at debug: at a
/// debug or trace level they stay at info unless SLUICE_LOG names them.
fn quiet_clients(f: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    let named = std::env::var("SLUICE_LOG").unwrap_or_default();
    if !(named.contains("debug") || named.contains("trace")) {
        return f;
    }
    [
        "kube_client",
        "kube_runtime",
        "hyper_util",
        "tower",
        "rustls",
        "h2",
    ]
    .into_iter()
    .filter(|c| !named.contains(c))
    .fold(f, |f, c| match format!("{c}=info").parse() {
        Ok(d) => f.add_directive(d),
        Err(_) => f,
    })
}

fn main() -> anyhow::Result<()> {
    // Before any thread: the allocator's arenas are bounded from the start.
    sluice_daemon::memory::bound_arenas();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(quiet_clients(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        ))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::load_or_default(std::path::Path::new(DEFAULT_CONFIG))?,
    };
    if args.print_config {
        println!("{cfg:#?}");
        return Ok(());
    }
    // The API thread answers pods' registers: it runs ahead of the
    // daemon's housekeeping (see housekeeping_priority) and of ordinary
    // work on a busy node. Where the daemon may not raise its priority, it
    // runs at the default.
    // SAFETY: setpriority on this thread; no memory passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, API_NICE);
    }
    // Every thread the daemon starts copies the main thread's capabilities:
    // drop what it does not need now, before the first one.
    let low_ports =
        cfg.metrics_address.is_some_and(|a| a.port() < 1024) || cfg.nodeport_range.0 < 1024;
    match sluice_daemon::caps::drop_unneeded(low_ports) {
        Ok(d) => tracing::info!(kept = ?d.kept, dropped = d.dropped, "capabilities"),
        Err(e) => {
            tracing::error!("cannot drop the capabilities the daemon does not need: {e}");
            std::process::exit(1);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .thread_name("sluiced")
        .build()?;
    if let Err(e) = rt.block_on(sluice_daemon::server::run(cfg)) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
    Ok(())
}
