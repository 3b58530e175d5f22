"""What the robustness suite did, for the summary the issue asks for.

``FAULTS[kind]``: file faults injected (truncations, bit flips, forged entries ...)
and how each ended; ``RUNS``: kills, resumes and their outcomes.  conftest.py
writes them, with the fuzz counts, to the JSON file named by the environment
variable ``NT_ROBUSTNESS_REPORT`` at the end of the session.
"""

from __future__ import annotations

import collections

FAULTS: dict = collections.defaultdict(collections.Counter)
RUNS: collections.Counter = collections.Counter()
NOTES: dict = {}
