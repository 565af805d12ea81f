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
    /// Hazards present now, with evidence and mitigations.
    Findings {
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Locally-originated TCP flows over multipath routes.
    Flows {
        /// Only flows the next invalidation of their cached route would move.
        #[arg(long)]
        at_risk: bool,
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Measure in throw-away namespaces how this kernel treats established
    /// flows on a multipath replace (no daemon needed).
    Selftest {
        /// Connections per probe.
        #[arg(long, default_value_t = 30)]
        connections: u32,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Reproduce each hazard in throw-away namespaces, without the guard and
    /// then with it enforcing, and print what both runs measured. Exit
    /// status: 0 when every scenario behaved as expected (the hazard without
    /// the guard, none with it), 1 when one did not, 2 when one could not
    /// run (not root, missing tools), 130 when interrupted.
    Lab {
        /// ecmp, anycast, hairpin or all.
        #[arg(value_parser = ["ecmp", "anycast", "hairpin", "all"])]
        scenario: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Dry run: what a change would break and what the guard would do.
    /// Exits 1 on veto.
    Evaluate {
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object (top-level `verdict`).
        #[arg(long)]
        json: bool,
    },
    /// Judge a change and act: apply, hold (delay/stage) or refuse.
    /// Exits 1 when vetoed or when applying failed.
    Propose {
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object (top-level `verdict`).
        #[arg(long)]
        json: bool,
    },
    /// BGP peers (FRR and live sessions) and where the kernel reaches them.
    Peers {
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Changes held by a delay or a stage plan.
    Pending {
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Apply a held or vetoed change now, despite its findings
    /// (audit-logged with who and why).
    Approve {
        /// The change id (from propose, pending or history).
        id: u64,
        /// Why: required, recorded in the journal and the log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Drop a held change (audit-logged).
    Cancel {
        /// The change id.
        id: u64,
        /// Why (recorded).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// One change: its state and journal entries; --watch follows it until
    /// it ends (applied, failed, expired, cancelled).
    Change {
        /// The change id.
        id: u64,
        /// Print each new entry as it is written, until the change ends.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        socket: SocketArg,
        /// JSON: one object (or, with --watch, one object a line).
        #[arg(long)]
        json: bool,
    },
    /// The change journal: decisions, approvals, cancels and outcomes.
    History {
        /// Only this change.
        #[arg(long)]
        id: Option<u64>,
        /// The newest this many entries (at most 10000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// One-shot audit, no daemon needed: dump the kernel (and FRR if
    /// reachable), run the self-test and every detector, print the
    /// findings with evidence and fixes. Exit status: 0 when nothing is at
    /// or above --fail-on, 1 when something is, 2 when the audit could not
    /// run.
    Audit {
        /// Lowest severity that fails the audit.
        #[arg(long, default_value = "warning", value_parser = ["info", "warning", "critical"])]
        fail_on: String,
        /// TOML configuration file (FRR access, self-test settings).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Dump the kernel once, without a daemon, and print the model digest
    /// and counts (compare with `status --digest`).
    #[command(hide = true)]
    DebugDigest,
}

/// One change, as exactly one of these flags.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ChangeArgs {
    /// `PREFIX [table N] [metric N] nexthop via GW dev DEV [weight W] [nexthop ...]`
    #[arg(long, value_name = "ROUTE")]
    route_replace: Option<String>,
    /// `KEY=VALUE`, e.g. net.ipv6.fib_multipath_hash_policy=3
    #[arg(long, value_name = "KEY=VALUE")]
    sysctl: Option<String>,
    /// One FRR configuration line, e.g. 'ipv6 forwarding'
    #[arg(long, value_name = "LINE")]
    frr_cli: Option<String>,
    /// A bridge-port change: 'IF hairpin on|off'
    #[arg(long, value_name = "IF hairpin on|off")]
    link: Option<String>,
    /// An address to add: 'ADDR/LEN dev IF'
    #[arg(long, value_name = "ADDR/LEN dev IF")]
    address_add: Option<String>,
    /// Create an IP tunnel or change its ends:
    /// 'NAME type sit|ipip|gre|ip6tnl|ip6gre remote ADDR [local ADDR]'
    #[arg(long, value_name = "NAME type KIND remote ADDR [local ADDR]")]
    tunnel: Option<String>,
    /// A local route to add to table local: 'PREFIX dev IF'
    #[arg(long, value_name = "PREFIX dev IF")]
    local_route: Option<String>,
    /// A nexthop-group replacement: 'ID group A[,W]/B[,W]/...'
    #[arg(long, value_name = "ID group A[,W]/B...")]
    nexthop_group: Option<String>,
    /// A whole desired frr.conf: its difference from FRR's running
    /// configuration is judged, then applied (FRR's frr-reload.py)
    #[arg(long, value_name = "FILE")]
    frr_config: Option<PathBuf>,
    /// FRR northbound edits, judged and committed like one candidate through
    /// the proxy: 'update XPATH VALUE' or 'delete XPATH' (repeat the flag)
    #[arg(long, value_name = "update XPATH VALUE | delete XPATH")]
    northbound_edit: Vec<String>,
}

impl ChangeArgs {
    fn to_request(&self) -> anyhow::Result<pb::ChangeRequest> {
        use pb::change_request::Intent as I;
        // Parse locally first so typos fail fast with the same message the
        // daemon would give.
        let intent = if let Some(r) = &self.route_replace {
            routeguard::policy::intent::parse_route_replace(r)?;
            I::RouteReplace(r.clone())
        } else if let Some(s) = &self.sysctl {
            routeguard::policy::intent::parse_sysctl(s)?;
            I::Sysctl(s.clone())
        } else if let Some(l) = &self.frr_cli {
            routeguard::policy::intent::parse_frr_cli(l)?;
            I::FrrCli(l.clone())
        } else if let Some(l) = &self.link {
            routeguard::policy::intent::parse_link(l)?;
            I::Link(l.clone())
        } else if let Some(a) = &self.address_add {
            routeguard::policy::intent::parse_address_add(a)?;
            I::AddressAdd(a.clone())
        } else if let Some(t) = &self.tunnel {
            routeguard::policy::intent::parse_tunnel(t)?;
            I::Tunnel(t.clone())
        } else if let Some(r) = &self.local_route {
            routeguard::policy::intent::parse_local_route(r)?;
            I::LocalRoute(r.clone())
        } else if let Some(g) = &self.nexthop_group {
            routeguard::policy::intent::parse_nexthop_group(g)?;
            I::NexthopGroup(g.clone())
        } else if let Some(f) = &self.frr_config {
            let text = std::fs::read_to_string(f).with_context(|| format!("--frr-config {}", f.display()))?;
            if text.len() > routeguard::frr::reload::MAX_CONFIG {
                anyhow::bail!(
                    "--frr-config {}: larger than {} bytes",
                    f.display(),
                    routeguard::frr::reload::MAX_CONFIG
                );
            }
            I::FrrConfig(text)
        } else if !self.northbound_edit.is_empty() {
            let mut e = pb::NorthboundEdit::default();
            for s in &self.northbound_edit {
                let (update, path, value) =
                    routeguard::frr::xpath::parse_cli_edit(s).with_context(|| format!("--northbound-edit '{s}'"))?;
                if update {
                    e.update.push(pb::NorthboundPathValue { path, value });
                } else {
                    e.delete.push(path);
                }
            }
            I::Northbound(e)
        } else {
            anyhow::bail!(
                "give --route-replace, --sysctl, --frr-cli, --link, --address-add, --tunnel, --local-route, \
                 --nexthop-group, --frr-config or --northbound-edit"
            );
        };
        Ok(pb::ChangeRequest { intent: Some(intent), requester: requester() })
    }
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
        Command::Findings { socket, json } => findings(socket.socket, json).await,
        Command::Flows { at_risk, socket, json } => flows(socket.socket, at_risk, json).await,
        Command::Selftest { connections, json } => selftest(connections, json).await,
        Command::Lab { scenario, json } => lab(&scenario, json).await,
        Command::Evaluate { change, socket, json } => change_cmd(socket.socket, change, json, false).await,
        Command::Propose { change, socket, json } => change_cmd(socket.socket, change, json, true).await,
        Command::Pending { socket, json } => pending(socket.socket, json).await,
        Command::Approve { id, reason, socket, json } => approve(socket.socket, id, reason, json).await,
        Command::Cancel { id, reason, socket, json } => cancel(socket.socket, id, reason, json).await,
        Command::History { id, limit, socket, json } => history(socket.socket, id, limit, json).await,
        Command::Change { id, watch, socket, json } => change(socket.socket, id, watch, json).await,
        Command::Peers { socket, json } => peers(socket.socket, json).await,
        Command::Audit { fail_on, config, json } => audit(config, &fail_on, json).await,
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

fn core_settings(cfg: &Config, selftest_cache: PathBuf, journal_dir: Option<PathBuf>) -> CoreSettings {
    CoreSettings {
        journal_dir,
        netlink_rcvbuf: cfg.kernel.netlink_rcvbuf,
        sock_poll_interval: cfg.kernel.sock_poll_interval,
        sysctl_poll_interval: cfg.kernel.sysctl_poll_interval,
        proc_sys: PathBuf::from("/proc/sys"),
        hazards: cfg.hazards.clone(),
        selftest: cfg
            .selftest
            .on_start
            .then_some(core::SelftestSettings { connections: cfg.selftest.connections, cache: selftest_cache }),
        observe_syns: cfg.kernel.observe_syns,
        vtysh: routeguard::frr::vtysh::Vtysh {
            binary: cfg.frr.vtysh.clone(),
            socket_dir: (!cfg.frr.vty_socket_dir.as_os_str().is_empty()).then(|| cfg.frr.vty_socket_dir.clone()),
            timeout: cfg.frr.timeout,
        },
        frr_poll_interval: cfg.frr.poll_interval,
        metrics: routeguard::metrics::Metrics::new(),
        northbound: None,
    }
}

async fn run(config: Option<PathBuf>, socket: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // Configuration is complete and valid before anything is bound.
    let mut cfg = Config::load_from_process(config.as_deref())?;
    if let Some(s) = &socket {
        cfg.socket = s.clone();
    }
    init_logging(&cfg);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        kernel = %routeguard::kernel_release(),
        config = %config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
        "routeguard starting"
    );
    let listener = routeguard::api::server::bind_unix(&cfg.socket).await?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state_dir {}", cfg.state_dir.display()))?;
    // FRR's gRPC northbound client first: the core commits held proxy
    // changes it resumes from the journal through it.
    let nb = if cfg.frr.northbound.endpoints().is_empty() {
        None
    } else {
        Some(routeguard::frr::northbound::Northbound::new(&cfg.frr.northbound)?)
    };
    let mut settings = core_settings(&cfg, cfg.state_dir.join("selftest.json"), Some(cfg.state_dir.clone()));
    settings.northbound = nb.clone().map(routeguard::frr::proxy::Upstreams::new);
    let metrics = settings.metrics.clone();
    let core = core::start(settings).context("cannot start (netlink monitor or change journal)")?;

    // One shutdown signal for every server.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(addr) = cfg.metrics.listen {
        routeguard::metrics::serve(addr, metrics, stopped(stop_rx.clone()))
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    }
    // FRR's gRPC northbound: watched when configured; the proxy on top.
    let northbound = if let Some(nb) = nb {
        nb.spawn_pollers();
        // Configuration changes the pollers see go to WatchEvents too.
        let mut events = nb.events();
        let c = core.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        if c.query_tx.send(core::Query::Publish { applied: e.applied() }).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "FRR configuration events dropped before WatchEvents")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        // The Guard API judges northbound edits as the proxy would.
        let proxy = routeguard::frr::proxy::Proxy::new(nb.clone(), core.clone());
        if let Some(listen) = cfg.proxy.listen {
            routeguard::frr::proxy::serve(listen, proxy.clone(), stopped(stop_rx.clone()))
                .await
                .with_context(|| format!("cannot listen for the northbound proxy on {listen} (key `proxy.listen`)"))?;
        }
        Some(proxy)
    } else {
        None
    };
    tokio::spawn(notify_systemd(core.clone()));
    tokio::spawn(handle_signals(core.clone(), config.clone(), socket, stop_tx));
    routeguard::api::server::serve(&cfg, listener, core, routeguard::kernel_release(), northbound, stopped(stop_rx))
        .await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("routeguard stopped");
    Ok(ExitCode::SUCCESS)
}

/// Tells systemd (Type=notify) the daemon is ready once the first full
/// dump and the self-test are done, then keeps the watchdog fed while the
/// core answers queries. Without NOTIFY_SOCKET these are no-ops.
async fn notify_systemd(core: core::CoreHandle) {
    let mut ready = core.ready_rx.clone();
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    loop {
        match core.ask(|reply| core::Query::Status { digest: false, reply }).await {
            Ok(s) if s.selftest != "running" => break,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(_) => return,
        }
    }
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    tracing::info!("ready: first dump and self-test done");
    let Some(period) = sd_notify::watchdog_enabled() else { return };
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        // A core that no longer answers must not be kept alive.
        let alive = tokio::time::timeout(period / 4, core.ask(|reply| core::Query::Status { digest: false, reply }))
            .await
            .is_ok_and(|r| r.is_ok());
        if alive {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!("core did not answer; withholding the watchdog keep-alive");
        }
    }
}

/// SIGTERM/SIGINT: stop. SIGHUP: reload the config file; an invalid one is
/// logged and the running configuration kept. Hazard policies and FRR
/// access apply at once; other keys need a restart (logged).
async fn handle_signals(
    core: core::CoreHandle,
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    stop_tx: tokio::sync::watch::Sender<bool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut current = Config::load_from_process(config.as_deref()).ok();
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match Config::load_from_process(config.as_deref()) {
                    Err(e) => tracing::error!(error = %e, "SIGHUP: invalid configuration, keeping the running one"),
                    Ok(mut new) => {
                        if let Some(s) = &socket {
                            new.socket = s.clone();
                        }
                        if let Some(old) = &current {
                            let needs_restart = old.socket != new.socket
                                || old.state_dir != new.state_dir
                                || old.kernel != new.kernel
                                || old.api != new.api
                                || old.metrics != new.metrics
                                || old.frr.northbound != new.frr.northbound
                                || old.proxy != new.proxy
                                || old.log_format != new.log_format;
                            if needs_restart {
                                tracing::warn!("SIGHUP: socket, state_dir, [kernel], [api], [metrics], [frr.northbound], [proxy] and logging changes take effect after a restart");
                            }
                        }
                        let vtysh = core_settings(&new, PathBuf::new(), None).vtysh;
                        let applied = core.ask(|reply| core::Query::Reconfigure { hazards: new.hazards.clone(), vtysh, reply }).await;
                        if applied.is_ok() {
                            tracing::info!("SIGHUP: configuration reloaded");
                            current = Some(new);
                        }
                    }
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    let _ = stop_tx.send(true);
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
                        "selftest": s.selftest, "pending": s.pending, "armed_flows": s.armed_flows,
                        "remediations": s.remediations, "forwarding_reflex": s.forwarding_reflex,
            "findings": s.findings.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "verdicts": s.verdicts.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "frr_northbound": s.frr_northbound.iter().collect::<std::collections::BTreeMap<_, _>>(),
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
        println!("frr: {}; self-test: {}", s.frr_state, s.selftest);
        if !s.frr_northbound.is_empty() {
            let mut nb: Vec<_> = s.frr_northbound.iter().map(|(d, st)| format!("{d} {st}")).collect();
            nb.sort();
            println!("frr northbound: {}", nb.join(", "));
        }
        println!("armed flows: {}; pending changes: {}", s.armed_flows, s.pending);
        let mut f: Vec<_> = s.findings.iter().collect();
        f.sort();
        for (k, n) in f {
            println!("  finding {k}: {n}");
        }
        println!("forwarding reflex: {}", s.forwarding_reflex);
        for r in &s.remediations {
            println!("  remediated: {r}");
        }
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

fn finding_json(f: &pb::Finding) -> serde_json::Value {
    json!({
        "hazard": f.hazard, "severity": f.severity, "summary": f.summary, "breaks": f.breaks,
        "evidence": f.evidence,
        "mitigations": f.mitigations.iter().map(|m| json!({"name": m.name, "description": m.description, "side_effects": m.side_effects})).collect::<Vec<_>>(),
    })
}

fn print_finding(f: &pb::Finding) {
    println!("[{}] {}: {}", f.severity, f.hazard, f.summary);
    for e in &f.evidence {
        println!("    {e}");
    }
    for m in &f.mitigations {
        println!("  fix {}: {} (side effects: {})", m.name, m.description, m.side_effects);
    }
}

async fn findings(socket: PathBuf, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut c = routeguard::client::connect(&socket).await?;
    let r = c.list_findings(pb::ListFindingsRequest {}).await.map_err(status_err)?.into_inner();
    if as_json {
        let list: Vec<_> = r.findings.iter().map(finding_json).collect();
        println!("{}", json!({"stale": r.stale, "findings": list}));
    } else if r.findings.is_empty() {
        println!("no hazards found{}", if r.stale { " (model stale)" } else { "" });
    } else {
        r.findings.iter().for_each(print_finding);
    }
    Ok(ExitCode::SUCCESS)
}

fn member_str(m: &Option<pb::FlowMember>) -> String {
    match m {
        Some(m) if m.gateway.is_empty() => format!("dev {}", m.ifname),
        Some(m) => format!("{} dev {}", m.gateway, m.ifname),
        None => "unknown".into(),
    }
}

async fn flows(socket: PathBuf, at_risk: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut c = routeguard::client::connect(&socket).await?;
    let r = c.list_flows(pb::ListFlowsRequest { at_risk }).await.map_err(status_err)?.into_inner();
    if as_json {
        let m = |m: &Option<pb::FlowMember>| {
            m.as_ref().map(|m| json!({"gateway": m.gateway, "ifname": m.ifname, "ifindex": m.ifindex}))
        };
        let list: Vec<_> = r
            .flows
            .iter()
            .map(|f| {
                let (la, lp) = split_sockaddr(&f.local);
                let (ra, rp) = split_sockaddr(&f.remote);
                json!({
                    "local": f.local, "remote": f.remote,
                    "local_address": la, "local_port": lp, "remote_address": ra, "remote_port": rp,
                    "prefix": f.prefix, "table": f.table, "armed": f.armed,
                    "members": f.members.iter().map(|x| json!({"gateway": x.gateway, "ifname": x.ifname, "weight": x.weight})).collect::<Vec<_>>(),
                    "current": m(&f.current), "after": m(&f.after),
                })
            })
            .collect();
        println!("{}", json!({"kernel_v6": r.kernel_v6, "kernel_v4": r.kernel_v4, "flows": list}));
    } else {
        println!("kernel (self-test, current hash settings): ipv6 {}, ipv4 {}", r.kernel_v6, r.kernel_v4);
        for f in &r.flows {
            let mark = if f.armed { "ARMED" } else { "ok" };
            println!(
                "{mark:<5} {} -> {} via {}: now {}, after {}",
                f.local,
                f.remote,
                f.prefix,
                member_str(&f.current),
                member_str(&f.after)
            );
        }
        if r.flows.is_empty() {
            println!("no {}flows over multipath routes", if at_risk { "armed " } else { "" });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn split_sockaddr(s: &str) -> (String, u16) {
    match s.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => (s.to_string(), 0),
    }
}

async fn selftest(connections: u32, as_json: bool) -> anyhow::Result<ExitCode> {
    let report = tokio::task::spawn_blocking(move || routeguard::selftest::run(connections)).await??;
    if as_json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("kernel {} ({} ms)", report.kernel, report.elapsed_ms);
        for p in &report.ecmp {
            println!("  {}", p.describe());
        }
        if let Some(s) = &report.sit {
            println!("  sit to a local remote: {}", serde_json::to_string(s)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the lab on a blocking thread. The first Ctrl-C (or SIGTERM) asks
/// it to stop and waits while it removes what it built; a second one, or a
/// lab that does not stop within a minute, removes everything at once.
async fn lab(scenario: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    use routeguard::lab;
    use tokio::signal::unix::{signal, SignalKind};
    let scenarios = lab::Scenario::parse_list(scenario)?;
    // Handlers first: a signal that arrives once the lab has built anything
    // must reach them.
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    let mut task = tokio::task::spawn_blocking(move || {
        let progress = |line: &str| {
            if !as_json {
                eprintln!("  .. {line}");
            }
        };
        lab::run(&scenarios, &progress)
    });
    let result = tokio::select! {
        r = &mut task => Some(r),
        _ = int.recv() => None,
        _ = term.recv() => None,
    };
    let result = match result {
        Some(r) => r,
        None => {
            lab::cancel();
            eprintln!("routeguard lab: interrupted, removing the lab (Ctrl-C again to force)");
            let grace = tokio::time::sleep(std::time::Duration::from_secs(60));
            tokio::select! {
                _ = &mut task => {}
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = grace => {}
            }
            lab::emergency_cleanup();
            return Ok(ExitCode::from(130));
        }
    };
    let report = match result {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            eprintln!("routeguard lab: {e}");
            return Ok(ExitCode::from(2));
        }
        Err(join) => {
            // A panic in a lab: its guards have run while unwinding.
            lab::emergency_cleanup();
            eprintln!("routeguard lab: the lab failed: {join}");
            return Ok(ExitCode::from(2));
        }
    };
    if as_json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(ExitCode::from(report.exit_code()))
}

async fn change_cmd(socket: PathBuf, change: ChangeArgs, as_json: bool, propose: bool) -> anyhow::Result<ExitCode> {
    let req = change.to_request()?;
    let mut c = routeguard::client::connect(&socket).await?;
    let d = if propose { c.propose(req).await } else { c.evaluate(req).await }.map_err(status_err)?.into_inner();
    Ok(print_decision(&d, as_json))
}

fn requester() -> String {
    std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_default()
}

async fn approve(socket: PathBuf, id: u64, reason: String, as_json: bool) -> anyhow::Result<ExitCode> {
    if reason.trim().is_empty() {
        anyhow::bail!("--reason must not be empty: approvals are audit-logged");
    }
    let mut c = routeguard::client::connect(&socket).await?;
    let req = pb::ApproveRequest { change_id: id, reason, requester: requester() };
    let d = c.approve(req).await.map_err(status_err)?.into_inner();
    Ok(print_decision(&d, as_json))
}

async fn cancel(socket: PathBuf, id: u64, reason: String, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut c = routeguard::client::connect(&socket).await?;
    let req = pb::CancelRequest { change_id: id, reason, requester: requester() };
    let r = c.cancel(req).await.map_err(status_err)?.into_inner();
    if as_json {
        println!("{}", json!({"change_id": id, "message": r.message}));
    } else {
        println!("{}", r.message);
    }
    Ok(ExitCode::SUCCESS)
}

async fn change(socket: PathBuf, id: u64, watch: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut c = routeguard::client::connect(&socket).await?;
    let req = pb::GetChangeRequest { change_id: id };
    if !watch {
        let r = c.get_change(req).await.map_err(status_err)?.into_inner();
        if as_json {
            let list: Vec<serde_json::Value> =
                r.entries.iter().map(|e| serde_json::from_str(&e.json).unwrap_or(json!(e.json))).collect();
            println!("{}", json!({"change_id": r.change_id, "state": r.state, "entries": list}));
        } else {
            println!("change {}: {}", r.change_id, r.state);
            r.entries.iter().for_each(print_history_entry);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut stream = c.watch_change(req).await.map_err(status_err)?.into_inner();
    while let Some(e) = stream.message().await.map_err(status_err)? {
        if as_json {
            println!("{}", e.json);
        } else {
            print_history_entry(&e);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_history_entry(e: &pb::HistoryEntry) {
    let v: serde_json::Value = serde_json::from_str(&e.json).unwrap_or_default();
    let detail = match e.r#type.as_str() {
        "decision" => format!("{} by {}: {}", v["verdict"], v["requester"], v["intent"]),
        "approve" | "cancel" => format!("by {}: {}", v["who"], v["reason"]),
        "done" => format!("{}: {}", v["outcome"], v["message"]),
        "held" => format!("{} until {} ms", v["plan"], v["deadline_ms"]),
        _ => v.to_string(),
    };
    println!("{} change {} {}: {}", e.at_ms, e.change_id, e.r#type, detail.replace('"', ""));
}

async fn history(socket: PathBuf, id: Option<u64>, limit: u32, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut c = routeguard::client::connect(&socket).await?;
    let req = pb::ListHistoryRequest { change_id: id.unwrap_or(0), limit };
    let r = c.list_history(req).await.map_err(status_err)?.into_inner();
    if as_json {
        let list: Vec<serde_json::Value> =
            r.entries.iter().map(|e| serde_json::from_str(&e.json).unwrap_or(json!(e.json))).collect();
        println!("{}", json!({"history": list}));
    } else if r.entries.is_empty() {
        println!("no history");
    } else {
        r.entries.iter().for_each(print_history_entry);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a decision (evaluate, propose, approve); the exit status is 1
/// for a veto or a failed apply.
fn print_decision(d: &pb::Decision, as_json: bool) -> ExitCode {
    let failed = d.verdict == "veto" || d.outcome == "failed";
    if as_json {
        println!(
            "{}",
            json!({
                "verdict": d.verdict, "outcome": d.outcome, "change_id": d.change_id, "message": d.message,
                "reasons": d.reasons, "fixes": d.fixes, "steps": d.steps, "side_effects": d.side_effects,
                "max_wait_seconds": d.max_wait_seconds, "would_be": d.would_be,
                "findings": d.findings.iter().map(finding_json).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("verdict: {} ({})", d.verdict, d.outcome);
        if !d.would_be.is_empty() {
            println!("observe mode: enforced, the verdict would be {}", d.would_be);
        }
        for r in &d.reasons {
            println!("  reason: {r}");
        }
        for (i, s) in d.steps.iter().enumerate() {
            println!("  step {}: {s}", i + 1);
        }
        for s in &d.side_effects {
            println!("  side effect: {s}");
        }
        for f in &d.fixes {
            println!("  fix: {f}");
        }
        if d.change_id != 0 {
            println!("change {}: {}", d.change_id, d.message);
        } else if !d.message.is_empty() {
            println!("{}", d.message);
        }
        d.findings.iter().for_each(print_finding);
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn pending(socket: PathBuf, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut c = routeguard::client::connect(&socket).await?;
    let r = c.list_pending(pb::ListPendingRequest {}).await.map_err(status_err)?.into_inner();
    if as_json {
        let list: Vec<_> = r
            .changes
            .iter()
            .map(|p| {
                let intent: serde_json::Value = serde_json::from_str(&p.intent).unwrap_or(json!(p.intent));
                json!({"id": p.id, "intent": intent, "verdict": p.verdict, "state": p.state,
                       "age_seconds": p.age_seconds, "deadline_seconds": p.deadline_seconds})
            })
            .collect();
        println!("{}", json!({"pending": list}));
    } else if r.changes.is_empty() {
        println!("no pending changes");
    } else {
        for p in &r.changes {
            println!(
                "{} [{}] {} ({}s old, {}s left): {}",
                p.id, p.verdict, p.state, p.age_seconds, p.deadline_seconds, p.intent
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn peers(socket: PathBuf, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut c = routeguard::client::connect(&socket).await?;
    let r = c.list_peers(pb::ListPeersRequest {}).await.map_err(status_err)?.into_inner();
    if as_json {
        let list: Vec<_> = r
            .peers
            .iter()
            .map(|p| {
                json!({"address": p.address, "vrf": p.vrf, "state": p.state, "source": p.source, "local": p.local,
                       "ifname": p.ifname, "prefix": p.prefix, "route_type": p.route_type})
            })
            .collect();
        println!("{}", json!({"frr_state": r.frr_state, "peers": list}));
    } else {
        println!("frr: {}", r.frr_state);
        for p in &r.peers {
            println!(
                "{} vrf {} {} ({}) via {} {} route {}",
                p.address, p.vrf, p.state, p.source, p.ifname, p.prefix, p.route_type
            );
        }
        if r.peers.is_empty() {
            println!("no BGP peers known");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the daemon's core in-process until it has a complete picture: the
/// first dump, the self-test, one FRR poll, a socket poll and the
/// predictions for the flows it found.
async fn audit(config: Option<PathBuf>, fail_on: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    use routeguard::core::Query;
    use routeguard::hazards::Severity;
    let mut cfg = Config::load_from_process(config.as_deref())?;
    // Poll sockets quickly: the audit waits for one poll and its predictions.
    cfg.kernel.sock_poll_interval = std::time::Duration::from_millis(200);
    // Flows opened before the audit cannot be observed: nothing to watch.
    cfg.kernel.observe_syns = false;
    // An audit only reports: it never changes the router it inspects, even
    // when the configuration would remediate a conflict it finds.
    cfg.hazards.subnet_anycast.remediate = false;
    cfg.hazards.hairpin_dad.remediate = false;
    let cache_dir = tempfile_dir()?;
    // No journal: the audit decides and changes nothing.
    let core =
        core::start(core_settings(&cfg, cache_dir.join("selftest.json"), None)).context("cannot open netlink")?;
    let mut ready = core.ready_rx.clone();
    tokio::time::timeout(std::time::Duration::from_secs(120), ready.wait_for(|r| *r))
        .await
        .context("the kernel dump did not complete within 120 s")??;

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let s = core.ask(|reply| Query::Status { digest: false, reply }).await?;
        // Two socket polls so the flows and their predictions are in.
        let settled = s.selftest != "running" && s.frr_state != "connecting";
        if settled || tokio::time::Instant::now() > deadline {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            break core.ask(|reply| Query::Status { digest: false, reply }).await?;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let (findings, stale) = core.ask(|reply| Query::Findings { reply }).await?;
    let threshold = Severity::parse(fail_on).unwrap_or(Severity::Warning);
    let failing = findings.iter().filter(|f| f.severity >= threshold).count();
    if as_json {
        println!(
            "{}",
            json!({
                "kernel": routeguard::kernel_release(), "selftest": status.selftest, "frr_state": status.frr_state,
                "stale": stale, "counts": status.counts, "fail_on": fail_on, "failing": failing,
                "findings": findings,
            })
        );
    } else {
        println!("routeguard audit on Linux {}", routeguard::kernel_release());
        println!("self-test: {}; frr: {}", status.selftest, status.frr_state);
        if findings.is_empty() {
            println!("no hazards found");
        }
        for f in &findings {
            println!("[{}] {}: {}", core::severity_name(f.severity), f.hazard, f.summary);
            for e in &f.evidence {
                println!("    {e}");
            }
            for m in &f.mitigations {
                println!("  fix {}: {} (side effects: {})", m.name, m.description, m.side_effects);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&cache_dir);
    Ok(if failing > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// A private scratch directory for the audit's self-test cache.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("routeguard-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
