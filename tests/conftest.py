import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One --data_root for the whole session, so the toy judge is trained once per image size."""
    return str(tmp_path_factory.mktemp("dataset"))


def run_script(script, *argv, cwd=ROOT, env=None):
    """Run `python <script> argv...` in a subprocess (to see exit codes and stderr)."""
    import subprocess
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def same_checkpoint_weights(path_a, path_b):
    """Assert two checkpoints hold the same step, weights and first optimizer moments."""
    import torch
    a, b = torch.load(path_a, weights_only=True), torch.load(path_b, weights_only=True)
    assert a["step"] == b["step"]
    for net in a["models"]:
        for k in a["models"][net]:
            assert torch.equal(a["models"][net][k], b["models"][net][k]), (net, k)
    for opt in a["optimizers"]:
        for i, s in a["optimizers"][opt]["state"].items():
            assert torch.equal(s["exp_avg"], b["optimizers"][opt]["state"][i]["exp_avg"]), (opt, i)
    return a, b
