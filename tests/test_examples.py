"""The README's Python examples and the quickstart run and do what they say."""

import pathlib
import re

import numpy as np

from fusedrnn.examples import quickstart

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})


def test_quickstart_learns():
    losses = quickstart.train(steps=200, log_every=0)
    assert len(losses) == 200 and np.all(np.isfinite(losses))
    # the running-mean task: the loss must fall well below its starting value
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])
