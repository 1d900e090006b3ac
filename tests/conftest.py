import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# tests never reach the network: a missing FID Inception download goes to a closed port (scripts run in
# subprocesses inherit it)
os.environ["FID_WEIGHTS_URL"] = "http://127.0.0.1:9/pt_inception-2015-12-05-6726825d.pth"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One --data_root for the whole session, so the toy judge is trained once per image size."""
    return str(tmp_path_factory.mktemp("dataset"))


def count_params(module):
    return sum(p.numel() for p in module.parameters())


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
