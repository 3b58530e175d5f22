"""The README's Python examples run as written (so they cannot rot).

Blocks fenced ```python run here, each on its own in a fresh namespace (a
reader copies one block, not the page); a block fenced ```py is an
illustration that needs something the tests do not have.
"""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python examples"
    losses = []
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
        if "loss" in namespace:
            losses.append(float(namespace["loss"]))
    assert losses and min(losses) < 0.05  # the hand-written training loop learned
