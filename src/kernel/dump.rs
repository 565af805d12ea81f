//! Full dumps of the kernel state the model tracks.
//!
//! Callers open the monitor (and so join the multicast groups) *before*
//! dumping: a change that lands during the dump is then either in the dump,
//! in the queued notifications, or both, and replaying the queue on top of
//! the dump converges on the kernel's state.

use std::io;
use std::time::{Duration, Instant};

use netlink_sys::Socket;
use tracing::{debug, warn};

use super::convert::{convert, rtm};
use super::decode::split_messages;
use super::nl;
use crate::model::Change;

/// How many changes go to the sink at once.
const BATCH: usize = 4096;
/// How often one kind is re-dumped after NLM_F_DUMP_INTR before giving up.
const MAX_INTR_RETRIES: u32 = 5;

/// What one dump request asks for.
#[derive(Clone, Copy, Debug)]
struct Request {
    what: &'static str,
    msg_type: u16,
    family: u8,
    hdr_len: usize,
}

/// Everything the model holds, in an order that lets routes resolve their
/// nexthop objects and link names as soon as they arrive.
const REQUESTS: &[Request] = &[
    Request { what: "links", msg_type: rtm::GETLINK, family: 0, hdr_len: 16 },
    Request { what: "bridge ports", msg_type: rtm::GETLINK, family: 7, hdr_len: 16 },
    Request { what: "addresses", msg_type: rtm::GETADDR, family: 0, hdr_len: 8 },
    Request { what: "ipv6 anycast", msg_type: rtm::GETANYCAST, family: 10, hdr_len: 8 },
    Request { what: "nexthop objects", msg_type: rtm::GETNEXTHOP, family: 0, hdr_len: 8 },
    Request { what: "ipv4 routes", msg_type: rtm::GETROUTE, family: 2, hdr_len: 12 },
    Request { what: "ipv6 routes", msg_type: rtm::GETROUTE, family: 10, hdr_len: 12 },
    Request { what: "ipv4 rules", msg_type: rtm::GETRULE, family: 2, hdr_len: 12 },
    Request { what: "ipv6 rules", msg_type: rtm::GETRULE, family: 10, hdr_len: 12 },
    Request { what: "ipv4 netconf", msg_type: rtm::GETNETCONF, family: 2, hdr_len: 1 },
    Request { what: "ipv6 netconf", msg_type: rtm::GETNETCONF, family: 10, hdr_len: 1 },
];

/// Outcome of a full dump.
#[derive(Debug, Default, Clone)]
pub struct DumpReport {
    /// Messages received.
    pub messages: u64,
    /// Messages that could not be decoded (skipped).
    pub decode_errors: u64,
    /// Kinds the kernel refused to dump (e.g. nexthop objects before 5.3),
    /// with the errno text.
    pub unsupported: Vec<String>,
    /// Kinds re-dumped because the kernel flagged the dump as interrupted.
    pub interrupted: u32,
    /// Wall time of the whole dump.
    pub elapsed: Duration,
}

/// Dumps everything, handing changes to `sink` in batches.
pub fn dump_all(rcvbuf: usize, mut sink: impl FnMut(Vec<Change>)) -> io::Result<DumpReport> {
    let start = Instant::now();
    let (sock, _) = nl::open_route_socket(&[], rcvbuf)?;
    let mut report = DumpReport::default();
    let mut buf = Vec::with_capacity(1 << 20);
    let mut seq = 1u32;
    for req in REQUESTS {
        let mut tries = 0;
        loop {
            seq += 1;
            match dump_one(&sock, req, seq, &mut buf, &mut report, &mut sink)? {
                Outcome::Done => break,
                Outcome::Unsupported(errno) => {
                    let e = io::Error::from_raw_os_error(errno);
                    debug!(what = req.what, error = %e, "kernel does not dump this kind");
                    report.unsupported.push(format!("{}: {e}", req.what));
                    break;
                }
                Outcome::Interrupted => {
                    report.interrupted += 1;
                    tries += 1;
                    if tries >= MAX_INTR_RETRIES {
                        warn!(what = req.what, "dump interrupted {tries} times; continuing with notifications");
                        break;
                    }
                }
            }
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

enum Outcome {
    Done,
    Unsupported(i32),
    Interrupted,
}

fn dump_one(
    sock: &Socket,
    req: &Request,
    seq: u32,
    buf: &mut Vec<u8>,
    report: &mut DumpReport,
    sink: &mut impl FnMut(Vec<Change>),
) -> io::Result<Outcome> {
    nl::send(sock, &nl::dump_request(req.msg_type, req.family, req.hdr_len, seq))?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut interrupted = false;
    loop {
        nl::recv(sock, buf)?;
        for msg in split_messages(buf) {
            let (hdr, payload) = match msg {
                Ok(m) => m,
                Err(e) => {
                    report.decode_errors += 1;
                    warn!(what = req.what, error = %e, "malformed netlink datagram in dump; rest skipped");
                    break;
                }
            };
            if hdr.seq != seq {
                continue;
            }
            if hdr.flags & nl::NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            match hdr.msg_type {
                nl::NLMSG_DONE => {
                    if !batch.is_empty() {
                        sink(std::mem::take(&mut batch));
                    }
                    return Ok(if interrupted { Outcome::Interrupted } else { Outcome::Done });
                }
                nl::NLMSG_ERROR => {
                    let code = nl::error_code(payload).unwrap_or(0);
                    if code == 0 {
                        continue;
                    }
                    return Ok(Outcome::Unsupported(-code));
                }
                nl::NLMSG_NOOP => {}
                t => {
                    report.messages += 1;
                    if let Err(e) = convert(t, payload, &mut batch) {
                        report.decode_errors += 1;
                        warn!(what = req.what, error = %e, "skipping undecodable message");
                    }
                    if batch.len() >= BATCH {
                        sink(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                    }
                }
            }
        }
    }
}
