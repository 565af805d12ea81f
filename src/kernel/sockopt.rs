//! The system calls the libraries don't wrap: SO_RCVBUFFORCE and a
//! thread's real-time scheduling.
//!
//! This module holds the crate's `unsafe` blocks outside the SYN observer:
//! a plain setsockopt(2) on a descriptor the caller owns, with a pointer to
//! a local `c_int`, and sched_setscheduler(2) on the calling thread.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

/// Sets SO_RCVBUFFORCE (needs CAP_NET_ADMIN), which, unlike SO_RCVBUF, may
/// exceed `net.core.rmem_max`.
pub fn set_rcvbuf_force(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value: libc::c_int = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    // SAFETY: fd is a valid socket owned by the caller for the duration of
    // the call; the option value points at a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs the calling thread `SCHED_FIFO` at `priority` (1-99).
pub fn set_thread_fifo(priority: u8) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: i32::from(priority) };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
