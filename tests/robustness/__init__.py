"""Hostile inputs and faults (issue 10).

    test_numerics.py     extremes: logits +-1e4, -inf, fully masked rows, LayerNorm on
                         constant / 1e6 rows, cross-entropy at 1e4 and all ignored,
                         GELU / sigmoid at +-1e3, recurrences over 500 steps
    test_fuzz.py         every public layer and model (specs.py), swept and
                         hypothesis-drawn, judged by fuzz.run_case
    test_files.py        truncated, bit-flipped, forged checkpoints, vocabularies
                         and safetensors
    test_runs.py         SIGKILL during training and saving, two runs on one
                         directory, determinism across runs, resumes and BLAS threads
                         (worker.py forks the runs)
    test_regressions.py  one test per library defect the above found

Counts for the summary (inputs per layer, faults, kills, resumes) are written
as JSON when NT_ROBUSTNESS_REPORT names a file; NT_KILLS sets the number of
kills (20 by default); HYPOTHESIS_PROFILE=dev draws 100 fuzz examples per
layer instead of 15.
"""
