//! ECMP scenario (hazard 1): the self-test's ECMP lab (router namespace R,
//! three nodes N1..N3 holding the same anycast address `fd00:ecec:f::1`, a
//! 3-way IPv6 multipath route to it in R under hash policy 1) with
//! [`FLOWS`] TCP sessions opened from R by unbound sockets.
//!
//! Without the guard: an identical `ip route replace` of the multipath
//! route, then one more echo on every session; those whose echo fails were
//! reset by the node that now receives them. With the guard (the daemon in
//! R, `ecmp_rehash` enforcing with `action = "veto"`, started before the
//! sessions so it sees their SYNs): the same replace is proposed with
//! `routeguard propose --route-replace`, the guard vetoes it, and every
//! session still echoes.

use std::time::{Duration, Instant};

use super::guard::Guard;
use super::{check_cancel, poll, setup_err, LabError, Measured, Phase};
use crate::selftest::ecmp::{echo_round, EcmpSetting, Failure, Fault, Lab, Plan};
use crate::selftest::netns::ip;

/// Sessions opened in each run.
pub const FLOWS: u32 = 60;

/// The lab, in one line.
pub const SETUP: &str = "router R, 3 nodes with one anycast address behind a 3-way IPv6 multipath route \
                         (hash policy 1), 60 TCP sessions from R";

/// Connect and echo timeout.
const TIMEOUT: Duration = Duration::from_secs(3);

/// How long the guard may take to know every session's member now and
/// after the next invalidation.
const FLOWS_KNOWN_WITHIN: Duration = Duration::from_secs(30);

fn lab_err(f: Failure) -> LabError {
    match f {
        Failure::Unsupported(why) => LabError::Missing(format!("this kernel cannot run the ECMP lab: {why}")),
        Failure::Error(e) => e.into(),
    }
}

fn count_broken(streams: &mut [std::net::TcpStream], round: u32) -> u32 {
    echo_round(streams, round, TIMEOUT).iter().filter(|r| r.is_err()).count() as u32
}

/// Builds the lab, measures both runs, removes the lab.
pub(crate) fn run(progress: &dyn Fn(&str)) -> Result<Measured, LabError> {
    let setting = EcmpSetting::new(6, 1);
    let plan = Plan { family: 6, destinations: 1 };
    let lab = Lab::build(&setting, plan, Fault::None).map_err(lab_err)?;
    let router = lab.router();
    let spec = plan.route_spec(0);

    // Without the guard.
    progress("ecmp: without the guard: opening the sessions, then an identical ip route replace");
    let t0 = Instant::now();
    let mut streams = lab.connect(FLOWS, TIMEOUT).map_err(lab_err)?;
    lab.check_echo(&mut streams, TIMEOUT).map_err(lab_err)?;
    check_cancel()?;
    let mut args = vec!["-n", router.as_str(), "route", "replace"];
    args.extend(spec.split_whitespace());
    ip(&args, None).map_err(setup_err(format!("ip route replace {spec} in {router}")))?;
    let broken = count_broken(&mut streams, 2);
    drop(streams);
    let before = Phase {
        guard: false,
        total: FLOWS,
        broken,
        summary: "reset by an identical `ip route replace` of the multipath route".into(),
        verdict: None,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    };
    progress(&format!("ecmp: without the guard: {broken}/{FLOWS} sessions broken"));
    check_cancel()?;

    // With the guard.
    progress("ecmp: with the guard: starting it, opening the sessions, proposing the same replace");
    let t0 = Instant::now();
    let guard = Guard::start(
        &router,
        &[
            ("ROUTEGUARD_HAZARDS__ECMP_REHASH__MODE", "enforce"),
            ("ROUTEGUARD_HAZARDS__ECMP_REHASH__ACTION", "veto"),
            ("ROUTEGUARD_KERNEL__SOCK_POLL_INTERVAL", "200ms"),
        ],
    )?;
    let mut streams = lab.connect(FLOWS, TIMEOUT).map_err(lab_err)?;
    lab.check_echo(&mut streams, TIMEOUT).map_err(lab_err)?;
    let known = poll(FLOWS_KNOWN_WITHIN, Duration::from_millis(200), || {
        let v = guard.json(&["flows"])?;
        let flows = v["flows"].as_array().cloned().unwrap_or_default();
        let known = flows.iter().filter(|f| !f["current"].is_null() && !f["after"].is_null()).count();
        Ok((known == FLOWS as usize).then_some(()))
    })?;
    if known.is_none() {
        let v = guard.json(&["flows"])?;
        return Err(LabError::Guard(format!(
            "the guard did not know all {FLOWS} sessions within {FLOWS_KNOWN_WITHIN:?} (it lists {})",
            v["flows"].as_array().map_or(0, Vec::len)
        )));
    }
    let armed = guard.json(&["flows", "--at-risk"])?["flows"].as_array().map_or(0, Vec::len);
    let (code, v) = guard.cli(&["propose", "--route-replace", &spec])?;
    let broken = count_broken(&mut streams, 3);
    let verdict = v["verdict"].as_str().unwrap_or("none").to_string();
    let mut problems = Vec::new();
    if verdict != "veto" || code != Some(1) {
        problems.push(format!(
            "the guard answered the replace with {verdict} ({}, exit {code:?}), not a veto",
            v["outcome"].as_str().unwrap_or("no outcome")
        ));
    }
    let after = Phase {
        guard: true,
        total: FLOWS,
        broken,
        summary: format!(
            "`routeguard propose --route-replace` {verdict}: {armed} of {FLOWS} sessions predicted to move"
        ),
        verdict: Some(verdict),
        elapsed_ms: t0.elapsed().as_millis() as u64,
    };
    progress(&format!("ecmp: with the guard: {broken}/{FLOWS} sessions broken"));
    Ok(Measured { before, after, problems })
}
