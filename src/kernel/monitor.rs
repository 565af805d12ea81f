//! The rtnetlink notification monitor.
//!
//! A dedicated OS thread owns the multicast socket and does nothing but
//! receive, decode and forward, so the kernel's socket buffer drains at the
//! rate the decoder allows rather than the rate the model is updated.
//!
//! Overruns: when the socket buffer overflows, the kernel reports ENOBUFS
//! *once* and marks the socket congested; until its queue is completely
//! empty, further notifications are dropped without another error. So on
//! ENOBUFS the thread first drains and discards everything queued (all of
//! it predates the re-dump that follows, which covers it), which ends the
//! congestion, and only then reports [`MonitorMsg::Overrun`]. Any later
//! drop starts a new episode and a new ENOBUFS. The consumer must keep
//! reading (the core buffers notifications during a re-dump) so this
//! thread never blocks while the kernel queues.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use netlink_sys::Socket;
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::convert::convert;
use super::decode::split_messages;
use super::nl;
use crate::model::Change;

/// Datagrams already queued that one channel message may carry: batching
/// them saves a channel send and a wake-up per datagram under bursts.
const MAX_DATAGRAMS_PER_MESSAGE: usize = 64;

/// What the monitor thread sends to the core.
#[derive(Debug)]
pub enum MonitorMsg {
    /// Changes decoded from one or more datagrams, and when the first of
    /// them was received.
    Changes(Vec<Change>, Instant),
    /// The kernel dropped notifications: the model is stale until re-dumped.
    /// Sent only after the socket queue was drained, so a dump started now
    /// misses nothing.
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
    /// Datagrams discarded while recovering from overruns.
    pub discarded: AtomicU64,
}

/// Opens the subscribed socket *now* (so the caller may dump right after
/// this returns without missing anything), then starts the thread that
/// forwards what it receives to `tx`. The thread ends when `tx` closes.
pub fn spawn(rcvbuf: usize, tx: mpsc::Sender<MonitorMsg>, stats: Arc<MonitorStats>) -> io::Result<()> {
    let (sock, refused) = nl::open_route_socket(&nl::MONITOR_GROUPS, rcvbuf)?;
    if !refused.is_empty() {
        warn!(groups = ?refused, "kernel has no such rtnetlink groups; those kinds are kept current by re-dumps only");
    }
    std::thread::Builder::new().name("rg-netlink-mon".into()).spawn(move || run(sock, tx, stats))?;
    Ok(())
}

fn run(sock: Socket, tx: mpsc::Sender<MonitorMsg>, stats: Arc<MonitorStats>) {
    let mut buf = Vec::with_capacity(1 << 20);
    loop {
        let msg = match nl::recv(&sock, &mut buf) {
            Ok(_) => {
                let received = Instant::now();
                let mut changes = Vec::new();
                decode_into(&buf, &mut changes, &stats);
                // Whatever else is already queued goes in the same message.
                let mut overrun = false;
                for _ in 1..MAX_DATAGRAMS_PER_MESSAGE {
                    buf.clear();
                    match sock.recv(&mut buf, libc::MSG_DONTWAIT) {
                        Ok(_) => decode_into(&buf, &mut changes, &stats),
                        Err(e) if nl::is_overrun(&e) => {
                            overrun = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if !changes.is_empty() && tx.blocking_send(MonitorMsg::Changes(changes, received)).is_err() {
                    return;
                }
                if !overrun {
                    continue;
                }
                recover(&sock, &mut buf, &stats)
            }
            Err(e) if nl::is_overrun(&e) => recover(&sock, &mut buf, &stats),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!(error = %e, "netlink monitor receive failed; treating as overrun");
                std::thread::sleep(std::time::Duration::from_millis(100));
                recover(&sock, &mut buf, &stats)
            }
        };
        if tx.blocking_send(msg).is_err() {
            // The core is gone: the daemon is shutting down.
            return;
        }
    }
}

/// Drains and discards the socket queue (ending the congestion episode),
/// then returns the overrun message.
fn recover(sock: &Socket, buf: &mut Vec<u8>, stats: &MonitorStats) -> MonitorMsg {
    stats.overruns.fetch_add(1, Ordering::Relaxed);
    loop {
        buf.clear();
        match sock.recv(buf, libc::MSG_DONTWAIT) {
            Ok(_) => {
                stats.discarded.fetch_add(1, Ordering::Relaxed);
            }
            // Another ENOBUFS while draining belongs to the same episode.
            Err(e) if nl::is_overrun(&e) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    MonitorMsg::Overrun
}

fn decode_into(buf: &[u8], changes: &mut Vec<Change>, stats: &MonitorStats) {
    for m in split_messages(buf) {
        let (hdr, payload) = match m {
            Ok(m) => m,
            Err(e) => {
                stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "malformed netlink datagram; rest of it skipped");
                break;
            }
        };
        if hdr.msg_type == nl::NLMSG_OVERRUN {
            continue;
        }
        stats.messages.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = convert(hdr.msg_type, payload, changes) {
            stats.decode_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "skipping undecodable notification");
        }
    }
}
