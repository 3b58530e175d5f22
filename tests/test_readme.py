"""The README's Python examples run as written (so they cannot rot).

Blocks fenced ```python run here, in order, in one namespace; a block fenced
```py is an illustration that needs something the tests do not have.
"""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert float(namespace["loss"]) < 0.05  # the hand-written training loop learned
