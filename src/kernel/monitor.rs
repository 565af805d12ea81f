//! The rtnetlink notification monitor.
//!
//! A dedicated OS thread owns the multicast socket and does nothing but
//! receive, decode and forward, so the kernel's socket buffer drains at the
//! rate the decoder allows rather than the rate the model is updated.
//! `ENOBUFS` (the kernel dropped notifications because the buffer was full)
//! is forwarded as [`MonitorMsg::Overrun`]: the core must then re-dump.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{error, warn};

use super::convert::convert;
use super::decode::split_messages;
use super::nl;
use crate::model::Change;

/// What the monitor thread sends to the core.
#[derive(Debug)]
pub enum MonitorMsg {
    /// Changes decoded from one datagram, and when it was received.
    Changes(Vec<Change>, std::time::Instant),
    /// The kernel dropped notifications: the model is stale until re-dumped.
    Overrun,
}

/// Counters the monitor keeps, readable from any thread.
#[derive(Debug, Default)]
pub struct MonitorStats {
    /// Notification messages received.
    pub messages: AtomicU64,
    /// Messages skipped because they did not decode.
    pub decode_errors: AtomicU64,
    /// ENOBUFS overruns.
    pub overruns: AtomicU64,
}

/// Opens the subscribed socket *now* (so the caller may dump right after
/// this returns without missing anything), then starts the thread that
/// forwards what it receives to `tx`. The thread ends when `tx` closes.
pub fn spawn(rcvbuf: usize, tx: mpsc::Sender<MonitorMsg>, stats: Arc<MonitorStats>) -> io::Result<()> {
    let (sock, refused) = nl::open_route_socket(&nl::MONITOR_GROUPS, rcvbuf)?;
    if !refused.is_empty() {
        warn!(groups = ?refused, "kernel has no such rtnetlink groups; those kinds are kept current by re-dumps only");
    }
    std::thread::Builder::new().name("rg-netlink-mon".into()).spawn(move || {
        let mut buf = Vec::with_capacity(1 << 20);
        loop {
            let msg = match nl::recv(&sock, &mut buf) {
                Ok(_) => {
                    let received = std::time::Instant::now();
                    let mut changes = Vec::new();
                    for m in split_messages(&buf) {
                        let (hdr, payload) = match m {
                            Ok(m) => m,
                            Err(e) => {
                                stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                                warn!(error = %e, "malformed netlink datagram; rest of it skipped");
                                break;
                            }
                        };
                        if hdr.msg_type == nl::NLMSG_OVERRUN {
                            stats.overruns.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        stats.messages.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = convert(hdr.msg_type, payload, &mut changes) {
                            stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                            warn!(error = %e, "skipping undecodable notification");
                        }
                    }
                    if changes.is_empty() {
                        continue;
                    }
                    MonitorMsg::Changes(changes, received)
                }
                Err(e) if nl::is_overrun(&e) => {
                    stats.overruns.fetch_add(1, Ordering::Relaxed);
                    MonitorMsg::Overrun
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!(error = %e, "netlink monitor receive failed; treating as overrun");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    MonitorMsg::Overrun
                }
            };
            if tx.blocking_send(msg).is_err() {
                // The core is gone: the daemon is shutting down.
                return;
            }
        }
    })?;
    Ok(())
}
