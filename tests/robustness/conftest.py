"""The robustness counts (fuzz inputs per layer, faults injected, runs killed
and resumed, the BLAS thread-count difference): a summary at the end of the
test session's output whenever these tests ran (so CI's log holds them), and
the full report as JSON in ``$NT_ROBUSTNESS_REPORT`` when that is set."""

import collections
import json
import os


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("NT_ROBUSTNESS_REPORT")
    if not target:
        return
    from .fuzz import COUNTS
    from .tally import FAULTS, NOTES, RUNS

    report = {"fuzz": {k: dict(v) for k, v in sorted(COUNTS.items())},
              "fuzz_total_calls": sum(v["calls"] for v in COUNTS.values()),
              "faults": {k: dict(v) for k, v in sorted(FAULTS.items())},
              "faults_total": sum(sum(v.values()) for v in FAULTS.values()),
              "runs": dict(RUNS), "notes": NOTES}
    with open(target, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from .fuzz import COUNTS
    from .tally import FAULTS, NOTES, RUNS

    if not (COUNTS or FAULTS or RUNS or NOTES):
        return
    write = terminalreporter.write_line
    terminalreporter.section("robustness counts")
    calls = {k: v["calls"] for k, v in COUNTS.items()}
    if calls:
        outcome = collections.Counter()
        for v in COUNTS.values():
            outcome.update({k: n for k, n in v.items() if k != "calls"})
        write(f"fuzz: {sum(calls.values())} hostile or random inputs over {len(calls)} "
              f"entry points ({min(calls.values())} to {max(calls.values())} each); "
              + ", ".join(f"{k} {n}" for k, n in sorted(outcome.items())))
    if FAULTS:
        write(f"file faults: {sum(sum(v.values()) for v in FAULTS.values())} injected: "
              + "; ".join(f"{kind}: " + ", ".join(f"{k} {n}" for k, n in sorted(v.items()))
                          for kind, v in sorted(FAULTS.items())))
    for k, n in sorted(RUNS.items()):
        write(f"runs: {k}: {n}")
    for k, v in sorted(NOTES.items()):
        write(f"{k}: {json.dumps(v, sort_keys=True)}")
