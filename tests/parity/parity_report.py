"""The parity scripts' shared tally: one line per check, a closing "N passed,
M failed", exit 1 when anything failed or nothing was checked."""

import sys

_passed = 0
_failed = 0


def report(ok, name, detail):
    global _passed, _failed
    if ok:
        _passed += 1
    else:
        _failed += 1
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def finish():
    print(f"{_passed} passed, {_failed} failed", flush=True)
    sys.exit(0 if _failed == 0 and _passed > 0 else 1)
