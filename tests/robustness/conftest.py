"""Writes the robustness counts (fuzz inputs per layer, faults injected, runs
killed and resumed) to ``$NT_ROBUSTNESS_REPORT`` (JSON) when that is set."""

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
