"""Run clipkit on untrusted files in a child process, with a memory limit, and report each outcome.

A crafted file may crash the interpreter (a segfault, a stack overflow) or
allocate without bound; the test process must survive it and see it. The
parent calls ``run_cases(cases)``; a child (``python tests/sandbox.py``) reads
the cases as JSON on stdin, caps its address space (``RLIMIT_AS``), and for
each case resets the peak-RSS counter (``/proc/self/clear_refs``), makes the
call, and prints one JSON line: the outcome (``"ok"``, the name of a
``ClipkitError`` subclass, or ``"other:<type>"``), the message, and the growth
of peak RSS in KiB. A case that kills the child is reported as
``"crash:<signal or status>"``.

Case fields: ``name``; ``call``: ``"read"`` (``read_state_dict(path)``),
``"load"`` (``clipkit.load(source, device="cpu", **kwargs)``), ``"inspect"``, or
``"segfault"`` (crashes the child on purpose, to test the harness);
``source``; ``kwargs`` (optional).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ADDRESS_SPACE_HEADROOM = 3 << 30  # bytes of address space beyond what the child has after importing torch
CASE_SECONDS = 120


def run_cases(cases: list[dict[str, Any]], *, timeout: float = 600.0,
              headroom: int = ADDRESS_SPACE_HEADROOM) -> dict[str, dict[str, Any]]:
    """Run ``cases`` in one child process; return ``{name: {"outcome", "message", "rss_growth_kb", "status"}}``.

    When the child dies mid-way, the case it was running is reported as
    ``crash:<how>`` and the rest run in a fresh child.
    """
    results: dict[str, dict[str, Any]] = {}
    pending = list(cases)
    while pending:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), str(headroom)],
            input=json.dumps(pending), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        )
        started = None
        for line in proc.stdout.splitlines():
            if line.startswith("START "):
                started = line[6:]
            elif line.startswith("{"):
                record = json.loads(line)
                record["status"] = 0
                results[record["name"]] = record
                started = None
        done = [case for case in pending if case["name"] in results]
        if started is None and proc.returncode == 0:
            break
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        crashed = started or next((c["name"] for c in pending if c["name"] not in results), None)
        if crashed is None:
            break
        results[crashed] = {"name": crashed, "outcome": f"crash:{how}", "message": proc.stderr[-2000:],
                            "rss_growth_kb": -1, "status": proc.returncode}
        pending = [case for case in pending if case["name"] not in results and case not in done]
    return results


# -- the child ------------------------------------------------------------------------------------------


def _peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _run_one(case: dict[str, Any]) -> tuple[str, str]:
    import clipkit
    from clipkit.checkpoint import read_state_dict
    from clipkit.errors import ClipkitError

    call = case["call"]
    kwargs = case.get("kwargs", {})
    try:
        if call == "read":
            state = read_state_dict(case["source"])
            for value in state.values():  # touch every tensor, as loading would
                value.sum()
        elif call == "load":
            clipkit.load(case["source"], **{"device": "cpu", **kwargs})
        elif call == "inspect":
            clipkit.inspect(case["source"], **kwargs)
        elif call == "segfault":  # the harness's own check: a crash must be seen, and the rest still run
            import ctypes

            ctypes.string_at(0)
        else:
            raise ValueError(f"unknown call {call!r}")
    except ClipkitError as exc:
        return type(exc).__name__, str(exc)
    except BaseException as exc:  # noqa: BLE001 - the point is to see every other kind
        return f"other:{type(exc).__name__}", str(exc)[:2000]
    return "ok", ""


def _child(headroom: int) -> None:
    import warnings

    import clipkit  # noqa: F401 - import torch before measuring the address space
    import clipkit.checkpoint  # noqa: F401

    warnings.simplefilter("ignore")
    limit = _vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("case took too long")))
    for case in json.load(sys.stdin):
        print(f"START {case['name']}", flush=True)
        _reset_peak()
        before = _peak_kb()
        signal.alarm(CASE_SECONDS)
        outcome, message = _run_one(case)
        signal.alarm(0)
        growth = _peak_kb() - before
        print(json.dumps({"name": case["name"], "outcome": outcome, "message": message, "rss_growth_kb": growth}),
              flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("CLIPKIT_OFFLINE", "1")
    _child(int(sys.argv[1]) if len(sys.argv) > 1 else ADDRESS_SPACE_HEADROOM)
