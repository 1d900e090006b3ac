"""Shared by the tests: the two tiers, one thread, the session's data root and its tiny trained runs, and running a
script's main() in this process the way `python script.py` would (exit code, stdout, stderr).

Tiers: `pytest` runs the fast tier (at most 3 minutes on a 2-core CPU); `pytest --slow` runs the tests marked
`slow` instead: real processes and signals, two-process data-parallel runs, the tools that time things, and the
judges' full quality checks. Whatever needs minutes belongs to the slow tier."""
import contextlib
import importlib
import io
import os
import shutil
import sys
from typing import NamedTuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# tests never reach the network: a missing FID Inception download goes to a closed port (scripts run in
# subprocesses inherit it)
os.environ["FID_WEIGHTS_URL"] = "http://127.0.0.1:9/pt_inception-2015-12-05-6726825d.pth"
# one thread here and in every subprocess: on a busy machine the suite slows in proportion, not a hundredfold
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

import common  # noqa: E402

torch.set_num_threads(1)

# The tiny networks of the tests, per script, and the quiet training flags
TINY = {
    "ugatit": ["--img_size", "32", "--ch", "4", "--n_res", "1", "--n_dis", "4", "--light"],
    "attentiongan": ["--img_size", "32", "--ngf", "4", "--ndf", "4", "--n_res", "1", "--n_masks", "3"],
    "uag": ["--img_size", "32", "--ngf", "4", "--ndf", "4", "--n_res", "1"],
    "camconsistency": ["--img_size", "32", "--conv_dim", "4", "--d_conv_dim", "4", "--n_res", "1", "--d_layers",
                       "4", "--batch_size", "4", "--n_critic", "2"],
    "amgan": ["--img_size", "32", "--conv_dim", "4", "--d_conv_dim", "4", "--n_res", "1", "--d_layers", "4",
              "--batch_size", "4", "--n_critic", "2", "--no_attention_loss", "--no_perceptual"],
}
QUIET = ["--workers", "0", "--log_every", "1", "--sample_every", "0"]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="run the slow tier (tests marked slow) instead of the fast one")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the slow tier, run by `pytest --slow` (real processes and signals, "
                                       "two-process runs, timing tools, the judges' full quality)")
    if not config.getoption("--slow"):
        # the fast tier's toy judges train a tenth of the steps (seconds, not a minute): enough to run every
        # evaluation; the full judges' accuracy is the slow tier's test_toy_judge_accuracy
        common.TOY_JUDGE_STEPS.update({"toy": 30, "toy-shape": 40, "toy-attr": 60})


def pytest_collection_modifyitems(config, items):
    """Keep the tier asked for: the slow tests with --slow, the others without."""
    slow = config.getoption("--slow")
    keep = [item for item in items if (item.get_closest_marker("slow") is not None) == slow]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One --data_root for the whole session, so each toy judge is trained once per image size."""
    return str(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_root):
    """trained(script) -> the folder of one tiny toy run of the script (2 steps, checkpoint at step 2), trained once
    per session. Tests read it, test and evaluate from it with their own --out; one that changes it copies it first
    (copy_run)."""
    runs = {}

    def run_of(script):
        if script not in runs:
            out = str(tmp_path_factory.mktemp(f"trained_{script}") / "run")
            module = importlib.import_module(script)
            if script == "amgan":
                module.main(["--phase", "classifier", "--out", out, "--data_root", data_root, "--img_size", "32",
                             "--cls_iters", "30", "--cls_batch_size", "16", "--workers", "0"])
            module.main(["--iters", "2", "--out", out, "--data_root", data_root, *TINY[script], *QUIET])
            runs[script] = out
        return runs[script]
    return run_of


def copy_run(run, folder):
    """A copy of a run folder at `folder` (a test may change it)."""
    shutil.copytree(run, folder)
    return str(folder)


def count_params(module):
    return sum(p.numel() for p in module.parameters())


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_main(script, *argv):
    """`python <script> argv...` run in this process: the exit code and the text it writes, as common.cli gives them
    (an unexpected exception propagates, failing the test, where a process would print a traceback)."""
    folder = os.path.join(ROOT, os.path.dirname(script))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.import_module(os.path.splitext(os.path.basename(script))[0])
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            common.cli(lambda: module.main(list(argv)))
        except SystemExit as e:
            code = e.code
    return Result(code, out.getvalue(), err.getvalue())


def run_script(script, *argv, cwd=ROOT, env=None):
    """Run `python <script> argv...` in a real subprocess (signals, a fresh interpreter)."""
    import subprocess
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def same_checkpoint_weights(path_a, path_b):
    """Assert two checkpoints hold the same step, weights and first optimizer moments."""
    a, b = torch.load(path_a, weights_only=True), torch.load(path_b, weights_only=True)
    assert a["step"] == b["step"]
    for net in a["models"]:
        for k in a["models"][net]:
            assert torch.equal(a["models"][net][k], b["models"][net][k]), (net, k)
    for opt in a["optimizers"]:
        for i, s in a["optimizers"][opt]["state"].items():
            assert torch.equal(s["exp_avg"], b["optimizers"][opt]["state"][i]["exp_avg"]), (opt, i)
    return a, b


def run_two_processes(script, argv, tmp_path):
    """Run `python <script> --out run argv...` as ranks 0 and 1 of a gloo group (torchrun's environment),
    each rank in its own folder: a write by rank 1 would land in rank1/. Asserts both ranks finish,
    the replicas end identical, rank 0 wrote run/ckpt.pt and rank 1 wrote nothing."""
    import socket
    import subprocess
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank in range(2):
        cwd = tmp_path / f"rank{rank}"
        os.makedirs(cwd)
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, script), "--out", "run", *argv], cwd=cwd,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    sums = [[line for line in out.splitlines() if "weights sum" in line][-1].split()[-1] for out, _ in outputs]
    assert sums[0] == sums[1], sums  # the replicas end identical
    assert os.path.exists(tmp_path / "rank0" / "run" / "ckpt.pt") and os.listdir(tmp_path / "rank1") == []
    return outputs[0][0]
