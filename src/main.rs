//! The `routeguard` binary: CLI parsing and process wiring only.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;

use routeguard::config::{Config, LogFormat, DEFAULT_SOCKET};
use routeguard::core::{self, CoreSettings};
use routeguard::proto::guard as pb;

#[derive(Parser)]
#[command(name = "routeguard", version, about = "Stops routing changes from silently breaking traffic")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct SocketArg {
    /// API socket of the daemon.
    #[arg(long, env = "ROUTEGUARD_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (built-in defaults when no --config is given).
    Run {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// API socket (overrides `socket` in the config).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Daemon status: model sizes, staleness, overruns, sysctls.
    Status {
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Include the model digest (walks the whole model).
        #[arg(long)]
        digest: bool,
    },
    /// Longest-prefix match of an address: route, table, members.
    Lookup {
        /// IPv4 or IPv6 address.
        address: String,
        /// Routing table id (default main, 254).
        #[arg(long, default_value_t = 254)]
        table: u32,
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Objects of one kind from the daemon's model.
    Show {
        /// links, addresses, anycast, routes, nexthops, rules, sockets or sysctls.
        kind: String,
        /// At most this many objects (0: the server's default, 10000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[command(flatten)]
        socket: SocketArg,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Dump the kernel once, without a daemon, and print the model digest
    /// and counts (compare with `status --digest`).
    #[command(hide = true)]
    DebugDigest,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("routeguard: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("routeguard: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run { config, socket } => run(config, socket).await,
        Command::Status { socket, json, digest } => status(socket.socket, json, digest).await,
        Command::Lookup { address, table, socket, json } => lookup(socket.socket, address, table, json).await,
        Command::Show { kind, limit, socket, json } => show(socket.socket, kind, limit, json).await,
        Command::DebugDigest => debug_digest().await,
    }
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(tty).init()
        }
    }
}

async fn run(config: Option<PathBuf>, socket: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // Configuration is complete and valid before anything is bound.
    let mut cfg = Config::load_from_process(config.as_deref())?;
    if let Some(s) = socket {
        cfg.socket = s;
    }
    init_logging(&cfg);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        kernel = %routeguard::kernel_release(),
        config = %config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
        "routeguard starting (kernel-only mode: no FRR configured)"
    );
    let listener = routeguard::api::server::bind_unix(&cfg.socket).await?;
    let core = core::start(CoreSettings {
        netlink_rcvbuf: cfg.kernel.netlink_rcvbuf,
        sock_poll_interval: cfg.kernel.sock_poll_interval,
        sysctl_poll_interval: cfg.kernel.sysctl_poll_interval,
        proc_sys: PathBuf::from("/proc/sys"),
    })
    .context("cannot open the netlink monitor")?;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
    };
    routeguard::api::server::serve(&cfg, listener, core, routeguard::kernel_release(), shutdown).await?;
    tracing::info!("routeguard stopped");
    Ok(ExitCode::SUCCESS)
}

async fn status(socket: PathBuf, as_json: bool, digest: bool) -> anyhow::Result<ExitCode> {
    let mut c = routeguard::client::connect(&socket).await?;
    let s = c.get_status(pb::GetStatusRequest { digest }).await.map_err(status_err)?.into_inner();
    if as_json {
        let counts: std::collections::BTreeMap<_, _> = s.counts.iter().collect();
        let sysctls: std::collections::BTreeMap<_, _> = s.sysctls.iter().collect();
        let mut v = json!({
            "version": s.version, "kernel": s.kernel, "uptime_seconds": s.uptime_seconds,
            "ready": s.ready, "stale": s.stale, "overruns": s.overruns, "resyncs": s.resyncs,
            "events_applied": s.events_applied, "frr_state": s.frr_state,
            "last_dump_ms": s.last_dump_ms, "counts": counts, "sysctls": sysctls,
        });
        if digest {
            v["model_digest"] = json!(s.model_digest);
        }
        println!("{v}");
    } else {
        println!("routeguard {} on Linux {}, up {}s", s.version, s.kernel, s.uptime_seconds);
        let state = if !s.ready {
            "initial dump in progress"
        } else if s.stale {
            "STALE (re-dumping after overrun)"
        } else {
            "current"
        };
        println!("model: {state}; overruns {}, resyncs {}, events {}", s.overruns, s.resyncs, s.events_applied);
        println!("frr: {}", s.frr_state);
        let mut counts: Vec<_> = s.counts.iter().collect();
        counts.sort();
        for (k, v) in counts {
            println!("  {k:<14} {v}");
        }
        if digest {
            println!("digest: {}", s.model_digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

async fn lookup(socket: PathBuf, address: String, table: u32, as_json: bool) -> anyhow::Result<ExitCode> {
    // Validate locally too, so a typo fails without a daemon round-trip.
    address.parse::<IpAddr>().map_err(|_| anyhow::anyhow!("`{address}` is not an IPv4 or IPv6 address"))?;
    let mut c = routeguard::client::connect(&socket).await?;
    let r = c.lookup(pb::LookupRequest { address: address.clone(), table }).await.map_err(status_err)?.into_inner();
    if as_json {
        let members: Vec<_> = r
            .members
            .iter()
            .map(|m| json!({"gateway": m.gateway, "ifindex": m.ifindex, "ifname": m.ifname, "weight": m.weight, "nhid": m.nhid}))
            .collect();
        println!(
            "{}",
            json!({"address": address, "found": r.found, "prefix": r.prefix, "table": r.table,
                   "route_type": r.route_type, "protocol": r.protocol, "metric": r.metric,
                   "nhid": r.nhid, "multipath": r.multipath, "members": members})
        );
    } else if !r.found {
        println!("no route to {address} in table {}", r.table);
    } else {
        let nhid = if r.nhid != 0 { format!(" nhid {}", r.nhid) } else { String::new() };
        println!("{} {} table {} proto {} metric {}{nhid}", r.route_type, r.prefix, r.table, r.protocol, r.metric);
        for m in &r.members {
            let via = if m.gateway.is_empty() { String::new() } else { format!("via {} ", m.gateway) };
            println!("  {via}dev {} weight {}", m.ifname, m.weight);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(socket: PathBuf, kind: String, limit: u32, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut c = routeguard::client::connect(&socket).await?;
    let r = c.show(pb::ShowRequest { kind, limit }).await.map_err(status_err)?.into_inner();
    if as_json {
        println!("[{}]", r.objects_json.join(","));
    } else {
        for o in r.objects_json {
            println!("{o}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn debug_digest() -> anyhow::Result<ExitCode> {
    let model = tokio::task::spawn_blocking(|| {
        let mut m = routeguard::model::Model::default();
        let mut sink = Vec::new();
        routeguard::kernel::dump::dump_all(8 << 20, |batch| {
            for c in batch {
                m.apply(c, &mut sink);
            }
            sink.clear();
        })
        .map(|_| m)
    })
    .await??;
    println!("{}", json!({"model_digest": model.digest(), "counts": model.counts()}));
    Ok(ExitCode::SUCCESS)
}
