"""The worst parity error of every numtransformer/PyTorch pair checked through
``tests/parity/test_transformer_torch.check_pair`` (and its float32 forward
check), printed at the end of the test session so that CI's log holds the
measured figures."""

import sys


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    module = sys.modules.get("tests.parity.test_transformer_torch")
    worst = getattr(module, "WORST", None)
    if not worst:
        return
    terminalreporter.section("PyTorch parity: worst relative error per pair")
    for name, err in sorted(worst.items()):
        terminalreporter.write_line(f"{name:44s} {err:.2e}")
