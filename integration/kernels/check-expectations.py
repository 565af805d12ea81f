#!/usr/bin/python3
"""Checks a `routeguard selftest --json` report against expectations.toml.

    check-expectations.py EXPECTATIONS.toml SERIES REPORT.json [--override F/P=VERDICT]...

SERIES is the kernel series the report must come from ("5.10", "6.1"): the
report's `kernel` must start with "SERIES.". Every `[[kernel."SERIES".ecmp]]`
entry must match exactly one probe of the report (by family, policy and, when
the entry gives it, fields) and its `expect` must hold:

  affected    measured, broken > 0 and affected = true
  unaffected  measured, broken = 0 and affected = false
  skipped     not measurable on this kernel (`skipped` set)
  measured    measured, either verdict (for boot-dependent settings)

Whatever the entry, a probe's `affected` must agree with `broken > 0`.
An optional `[kernel."SERIES".sit]` table with `expect = "drops" | "delivers"
| "skipped"` is checked against the report's sit probe (IPv6 over a sit
tunnel to a local remote).
Probes no entry names are listed as "not asserted".
--override FAMILY/POLICY=VERDICT replaces the expectation of that setting
(the matrix's negative control uses it). Prints one line per check; exits 0
when all hold, 1 when one does not, 2 on a usage or format error.
"""
import json
import sys
import tomllib

VERDICTS = ("affected", "unaffected", "skipped", "measured")
SIT_VERDICTS = ("drops", "delivers", "skipped")


def die(msg):
    print(f"check-expectations: {msg}", file=sys.stderr)
    sys.exit(2)


def describe(p):
    if p.get("skipped"):
        return f"skipped ({p['skipped']})"
    verdict = "affected" if p.get("affected") else "unaffected"
    return f"{verdict}, {p.get('broken')}/{p.get('connections')} broken over {p.get('destinations')} destinations"


def setting_name(e):
    name = f"ipv{e['family']} policy {e['policy']}"
    if e.get("fields") is not None:
        name += f" fields {e['fields']:#06x}"
    return name


def main(argv):
    args, overrides = [], {}
    it = iter(argv)
    for a in it:
        if a == "--override":
            spec = next(it, None) or die("--override needs FAMILY/POLICY=VERDICT")
            try:
                key, verdict = spec.split("=", 1)
                fam, pol = key.split("/", 1)
                overrides[(int(fam), int(pol))] = verdict
            except ValueError:
                die(f"bad --override {spec!r}: want FAMILY/POLICY=VERDICT, e.g. 6/1=unaffected")
            if verdict not in VERDICTS:
                die(f"bad --override {spec!r}: verdict must be one of {', '.join(VERDICTS)}")
        else:
            args.append(a)
    if len(args) != 3:
        die("usage: check-expectations.py EXPECTATIONS.toml SERIES REPORT.json [--override F/P=VERDICT]...")
    exp_path, series, report_path = args
    try:
        with open(exp_path, "rb") as f:
            exp = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        die(f"{exp_path}: {e}")
    entries = exp.get("kernel", {}).get(series, {}).get("ecmp")
    if not entries:
        die(f"{exp_path} has no [[kernel.\"{series}\".ecmp]] entries")
    for e in entries:
        if not isinstance(e.get("family"), int) or not isinstance(e.get("policy"), int):
            die(f"{exp_path}: kernel {series}: entry without integer family/policy: {e}")
        if e.get("expect") not in VERDICTS:
            die(f"{exp_path}: kernel {series} {setting_name(e)}: expect must be one of {', '.join(VERDICTS)}")
    for fam, pol in overrides:
        if not any(e["family"] == fam and e["policy"] == pol for e in entries):
            die(f"--override {fam}/{pol}: no such entry for kernel {series}")

    ok = True

    def check(cond, line):
        nonlocal ok
        ok &= bool(cond)
        print(f"{'ok  ' if cond else 'FAIL'} {series} {line}")

    try:
        text = open(report_path, encoding="utf-8", errors="replace").read()
        # The report is the last line that parses as a JSON object.
        report = None
        for line in reversed(text.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    report = json.loads(line)
                    break
                except ValueError:
                    pass
        if report is None:
            raise ValueError("no JSON object in the self-test's output")
        kernel, probes = report["kernel"], report["ecmp"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        check(False, f"self-test report unreadable: {e}")
        return 1

    check(kernel.startswith(series + "."), f"report is from kernel {kernel}")
    used = set()
    for e in entries:
        name = setting_name(e)
        want = overrides.get((e["family"], e["policy"]), e["expect"])
        forced = " (overridden by --override)" if (e["family"], e["policy"]) in overrides else ""
        match = [
            i
            for i, p in enumerate(probes)
            if p.get("family") == e["family"]
            and p.get("policy") == e["policy"]
            and ("fields" not in e or p.get("fields") == e["fields"])
        ]
        if len(match) != 1:
            check(False, f"{name}: expected {want}{forced}, but the report has {len(match)} such probes")
            continue
        used.add(match[0])
        p = probes[match[0]]
        measured = not p.get("skipped")
        broken = p.get("broken", 0)
        consistent = not measured or bool(p.get("affected")) == (broken > 0)
        holds = {
            "affected": measured and p.get("affected") is True and broken > 0,
            "unaffected": measured and p.get("affected") is False and broken == 0,
            "skipped": not measured,
            "measured": measured,
        }[want]
        check(holds and consistent, f"{p.get('setting', name)}: expected {want}{forced}, got {describe(p)}"
              + ("" if consistent else " (inconsistent: affected disagrees with broken)"))
    sit_exp = exp["kernel"][series].get("sit")
    if sit_exp is not None:
        want = sit_exp.get("expect")
        if want not in SIT_VERDICTS:
            die(f"{exp_path}: kernel {series} sit: expect must be one of {', '.join(SIT_VERDICTS)}")
        sit = report.get("sit") or {}
        got = ("skipped" if sit.get("skipped") else "drops" if sit.get("drops") else "delivers") if sit else "absent"
        check(got == want, f"sit to a local remote: expected {want}, got {got} ({sit.get('sent')} of "
              f"{sit.get('datagrams')} sent, {sit.get('tx_carrier_errors')} tx_carrier_errors"
              + (f"; {sit['skipped']}" if sit.get("skipped") else "") + ")")
    for i, p in enumerate(probes):
        if i not in used:
            print(f"note {series} {p.get('setting')}: not asserted, got {describe(p)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
