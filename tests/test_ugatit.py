"""ugatit.py: parameter counts, AdaLIN, CAM shapes, end to end on toy, resume, bad input, DDP."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import common
import ugatit
from conftest import ROOT, copy_run, count_params, run_main, run_two_processes

TINY = ["--img_size", "32", "--ch", "4", "--n_res", "1", "--n_dis", "4", "--light", "--workers", "0",
        "--log_every", "2", "--sample_every", "2", "--save_every", "2"]


def run_ugatit(*argv):
    return run_main("ugatit.py", *argv)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, expected", [
    (lambda: ugatit.Generator(64, 4, 256, light=False), 278_959_808),
    (lambda: ugatit.Generator(64, 4, 256, light=True), 10_589_888),
    (lambda: ugatit.Generator(64, 4, 128, light=False), 77_633_216),
    (lambda: ugatit.Discriminator(64, n_layers=7), 53_130_176),
    (lambda: ugatit.Discriminator(64, n_layers=5), 3_290_560),
])
def test_parameter_counts_equal_official(make, expected):
    with torch.device("meta"):
        assert count_params(make()) == expected


def test_adailn_rho_one_is_instance_norm_and_zero_is_layer_norm():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    norm = ugatit.AdaILN(6)
    ones, zeros = torch.ones(2, 6), torch.zeros(2, 6)
    eps = norm.eps
    n_in, n_ln = 5 * 7, 6 * 5 * 7
    # the official AdaLIN uses unbiased variances: (x - m) / sqrt(var_unbiased + eps)
    #   = sqrt((n-1)/n) * (x - m) / sqrt(var_biased + eps (n-1)/n)
    with torch.no_grad():
        norm.rho.fill_(1.0)
        expected_in = ((n_in - 1) / n_in) ** 0.5 * F.instance_norm(x, eps=eps * (n_in - 1) / n_in)
        assert torch.allclose(norm(x, ones, zeros), expected_in, atol=1e-5)
        norm.rho.fill_(0.0)
        expected_ln = ((n_ln - 1) / n_ln) ** 0.5 * F.layer_norm(x, x.shape[1:], eps=eps * (n_ln - 1) / n_ln)
        assert torch.allclose(norm(x, ones, zeros), expected_ln, atol=1e-5)
        gamma, beta = torch.rand(2, 6), torch.rand(2, 6)
        assert torch.allclose(norm(x, gamma, beta), expected_ln * gamma[..., None, None] + beta[..., None, None], atol=1e-5)


def test_cam_logits_and_heatmap_shapes():
    gen = ugatit.Generator(8, 2, 64, light=False)
    out, cam_logit, heatmap = gen(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 3, 64, 64) and cam_logit.shape == (3, 2) and heatmap.shape == (3, 1, 16, 16)
    assert out.abs().max() <= 1 and heatmap.min() >= 0  # tanh output; heatmap sums ReLU maps
    for n_layers, side in ((7, 6), (5, 30)):
        logit, cam_logit, heatmap = ugatit.Discriminator(8, n_layers)(torch.randn(2, 3, 256, 256))
        assert logit.shape == (2, 1, side, side) and cam_logit.shape == (2, 2) and heatmap.shape == (2, 1, side + 1, side + 1)
    out, cam_logit, _ = ugatit.Generator(8, 2, 64, light=True, cam=False)(torch.randn(1, 3, 64, 64))
    assert cam_logit is None and out.shape == (1, 3, 64, 64)
    logit, cam_logit, _ = ugatit.Discriminator(8, 5, cam=False)(torch.randn(1, 3, 64, 64))
    assert cam_logit is None and logit.shape == (1, 1, 6, 6)


def test_cam_uses_the_classifier_weights():
    """a_s(x) = w_s * E_s(x): scaling the gap classifier weights changes the decoder input."""
    torch.manual_seed(0)
    gen = ugatit.Generator(4, 1, 32, light=True).eval()
    x = torch.randn(1, 3, 32, 32)
    _, logit1, heat1 = gen(x)
    with torch.no_grad():
        gen.gap_fc.weight.mul_(3)
    _, logit2, heat2 = gen(x)
    assert torch.allclose(logit2[:, 0], 3 * logit1[:, 0], atol=1e-5) and torch.allclose(logit2[:, 1], logit1[:, 1])
    assert not torch.allclose(heat1, heat2)


@pytest.mark.parametrize("norm", ["adalin", "adain", "in", "ln", "gn"])
def test_norm_ablations_run(norm):
    gen = ugatit.Generator(4, 1, 32, light=True, norm=norm)
    assert gen(torch.randn(2, 3, 32, 32))[0].shape == (2, 3, 32, 32)
    assert hasattr(gen, "mlp") == (norm in ("adalin", "adain"))


def test_batched_forward_equals_separate_forwards():
    """Deviation 3: every layer normalises per image, so a concatenated batch changes nothing."""
    torch.manual_seed(0)
    gen = ugatit.Generator(4, 1, 32, light=False)
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    both = gen(torch.cat([a, b]))
    for i, x in enumerate((a, b)):
        single = gen(x)
        for s, t in zip(single, both):
            assert torch.allclose(s, t[i:i + 1], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# End to end on toy data
# ---------------------------------------------------------------------------------------------


def test_train_test_eval_on_toy(tmp_path, data_root, capsys):
    """Also: the learning rate decays to 0, flags on the command line beat the toy preset, and each phase says
    what to do next and where to look."""
    out = str(tmp_path / "run")
    ugatit.main(["--iters", "4", "--out", out, "--data_root", data_root, "--lr", "1e-4", *TINY])
    printed = capsys.readouterr().out
    assert f"sample grids in {out}/samples" in printed and f"Next: python ugatit.py --out {out} --phase test" in printed
    assert f"{out}/test/index.html" in printed and "then --phase eval" in printed
    for f in ("ckpt.pt", "args.json", "log.csv", "samples/step_0000002.png", "samples/step_0000004.png"):
        assert os.path.exists(os.path.join(out, f)), f
    rows = open(os.path.join(out, "log.csv")).read().splitlines()
    assert rows[0].startswith("step,d_loss,g_adv,g_cycle,g_identity,g_cam,g_loss,lr,seconds") and len(rows) == 3
    assert [float(r.split(",")[7]) for r in rows[1:]] == [1e-4, 0.0]  # the toy preset's 2e-4 gave way
    args = json.load(open(os.path.join(out, "args.json")))
    assert args["img_size"] == 32 and args["sample_every"] == 2 and args["n_dis"] == 4
    assert args["light"] and args["iters"] == 4 and args["log_every"] == 2
    grid = Image.open(os.path.join(out, "samples/step_0000004.png"))
    assert grid.size[0] > 7 * 32 and grid.size[1] > 8 * 32  # 7 columns, 4 + 4 rows
    # test and eval take the architecture from the checkpoint: no network flags needed
    ugatit.main(["--phase", "test", "--out", out, "--data_root", data_root, "--workers", "0"])
    assert f"open {out}/test/index.html" in capsys.readouterr().out
    files = os.listdir(os.path.join(out, "test", "a2b"))
    assert len(files) == 2 * common.TOY_SPLIT_SIZES["test"] and "00000_attention.png" in files
    assert len(os.listdir(os.path.join(out, "test", "b2a"))) == len(files)
    ugatit.main(["--phase", "eval", "--out", out, "--data_root", data_root, "--workers", "0"])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["judge_accuracy_real"] > 0.95
    for d in ("a2b", "b2a"):
        m = metrics[d]
        assert m["images"] == common.TOY_SPLIT_SIZES["test"]
        assert 0 <= m["translation_success"] <= 1 and 0 <= m["attention_iou"] <= 1 and m["background_psnr_db"] > 0
        assert len(m["toy_kid_subsets_x100"]) == 2 and len(m["toy_kid_blocks_x100"]) == 2


def test_test_phase_with_own_images(tmp_path, trained, monkeypatch):
    out = str(tmp_path / "run")
    ckpt = os.path.join(trained("ugatit"), "ckpt.pt")
    photos = tmp_path / "photos"
    os.makedirs(photos / "sub")
    Image.fromarray(np.full((50, 70, 3), 128, np.uint8)).save(photos / "me.jpg")
    for i in range(17):
        Image.fromarray(np.full((20, 20), 10 * i, np.uint8)).save(photos / "sub" / f"grey{i:02d}.png")
    sizes, translate = [], ugatit.translate
    monkeypatch.setattr(ugatit, "translate", lambda nets, x, d: sizes.append(len(x)) or translate(nets, x, d))
    ugatit.main(["--phase", "test", "--ckpt", ckpt, "--out", out, "--input", str(photos), "--direction", "a2b",
                 "--workers", "0"])
    assert sizes == [16, 2]  # a folder of your own images goes through in test batches, not all at once
    assert sorted(os.listdir(os.path.join(out, "test", "a2b"))) == ["me.png", "me_attention.png", "sub"]
    assert len(os.listdir(os.path.join(out, "test", "a2b", "sub"))) == 2 * 17
    assert Image.open(os.path.join(out, "test", "a2b", "me.png")).size == (32, 32)
    assert not os.path.exists(os.path.join(out, "test", "b2a"))


def test_resume_gives_identical_weights(tmp_path, data_root):
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    common_args = ["--iters", "6", "--data_root", data_root, *TINY]
    ugatit.main(["--out", full, *common_args])
    ugatit.main(["--out", split, "--stop_at", "3", *common_args])
    assert torch.load(os.path.join(split, "ckpt.pt"), weights_only=True)["step"] == 3
    ugatit.main(["--out", split, "--resume", "--data_root", data_root, "--workers", "0"])
    a = torch.load(os.path.join(full, "ckpt.pt"), weights_only=True)
    b = torch.load(os.path.join(split, "ckpt.pt"), weights_only=True)
    assert a["step"] == b["step"] == 6
    for net in a["models"]:
        for k in a["models"][net]:
            assert torch.equal(a["models"][net][k], b["models"][net][k]), (net, k)
    assert a["optimizers"]["opt_g"]["state"][0]["exp_avg"].equal(b["optimizers"]["opt_g"]["state"][0]["exp_avg"])
    rows = open(os.path.join(split, "log.csv")).read().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "3", "4", "6"]


# ---------------------------------------------------------------------------------------------
# Bad input: exit code 2, one paragraph, nothing lost
# ---------------------------------------------------------------------------------------------


def test_missing_dataset_exits_2_with_layout(tmp_path):
    r = run_ugatit("--data", "horse2zebra", "--data_root", str(tmp_path), "--iters", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "trainA,trainB,testA,testB" in r.stderr and "--download" in r.stderr


def test_existing_checkpoint_is_not_overwritten(trained, data_root):
    out = trained("ugatit")
    ckpt = os.path.join(out, "ckpt.pt")
    before = open(ckpt, "rb").read()
    r = run_ugatit("--iters", "2", "--out", out, "--data_root", data_root, *TINY)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--resume" in r.stderr
    assert open(ckpt, "rb").read() == before


def test_corrupt_training_image_is_skipped_and_counted(tmp_path):
    root = tmp_path / "data" / "tiny"
    for split in ("trainA", "trainB", "testA", "testB"):
        os.makedirs(root / split)
        for i in range(2):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    (root / "trainA" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = str(tmp_path / "run")
    r = run_ugatit("--data", "tiny", "--data_root", str(tmp_path / "data"), "--out", out, "--iters", "6", *TINY)
    assert r.returncode == 0, r.stderr
    assert "skipping unreadable image" in r.stderr and "corrupt.jpg" in r.stderr
    assert "unreadable images were skipped" in r.stderr
    rows = open(os.path.join(out, "log.csv")).read().splitlines()
    assert int(rows[-1].split(",")[-1]) >= 1  # skipped_images column


@pytest.mark.parametrize("argv, message", [
    (["--img_size", "64", "--n_dis", "6"], "at least 96 px"),
    (["--img_size", "30"], "multiple of 4"),
    (["--n_dis", "3"], "too shallow"),
])
def test_image_size_the_networks_cannot_take(tmp_path, argv, message):
    r = run_ugatit("--out", str(tmp_path / "x"), *argv)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_checkpoint_from_another_script_or_architecture(tmp_path, trained):
    fake = tmp_path / "other" / "ckpt.pt"
    os.makedirs(fake.parent)
    torch.save({"script": "attentiongan", "args": {}}, fake)
    r = run_ugatit("--phase", "eval", "--ckpt", str(fake))
    assert r.returncode == 2 and "not of ugatit.py" in r.stderr and "Traceback" not in r.stderr
    r = run_ugatit("--phase", "eval", "--out", trained("ugatit"), "--ch", "8")
    assert r.returncode == 2 and "--ch 4" in r.stderr
    r = run_ugatit("--phase", "eval", "--out", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "Train first" in r.stderr


# ---------------------------------------------------------------------------------------------
# Two processes (gloo on CPU): replicas stay identical, only rank 0 writes
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_data_parallel(tmp_path, data_root):
    run_two_processes("ugatit.py", ["--iters", "4", "--data_root", data_root, *TINY], tmp_path)


def test_ctrl_c_in_this_process_saves_a_checkpoint_that_resumes(tmp_path, data_root, monkeypatch):
    """SIGINT during step 3 (raised in this process, as a terminal's Ctrl-C would): the step finishes, the
    checkpoint of step 3 is saved, exit 130; --resume goes on from there."""
    out = str(tmp_path / "run")
    train_step = ugatit.train_step
    steps = []

    def interrupted_at_step_3(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            signal.raise_signal(signal.SIGINT)
        return train_step(*args, **kwargs)

    monkeypatch.setattr(ugatit, "train_step", interrupted_at_step_3)
    handler = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN in a background job
    r = run_ugatit("--iters", "100", "--out", out, "--data_root", data_root, *TINY, "--save_every", "100")
    assert r.returncode == 130 and "checkpoint at step 3" in r.stderr and "continue with --resume" in r.stderr
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGINT) == handler  # the run gave Ctrl-C back
    monkeypatch.setattr(ugatit, "train_step", train_step)
    ugatit.main(["--out", out, "--resume", "--iters", "5", "--data_root", data_root, "--workers", "0"])
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"] == 5


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path, data_root):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "ugatit.py"), "--iters", "100000", "--out", str(out),
                          "--data_root", data_root, *TINY, "--save_every", "100000"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "log.csv").exists() and time.time() < deadline:  # first log row: training is under way
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "continue with --resume" in err, err
    step = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert 2 <= step < 100000
    ugatit.main(["--out", str(out), "--resume", "--iters", str(step + 2), "--data_root", data_root, "--workers", "0"])
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == step + 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, trained, data_root):
    out = copy_run(trained("ugatit"), tmp_path / "run")
    before = open(os.path.join(out, "ckpt.pt"), "rb").read()
    r = run_ugatit("--out", out, "--resume", "--iters", "40", "--lr", "1e30", "--data_root", data_root)
    assert r.returncode == 1 and "NaN/Inf" in r.stderr and "last good checkpoint (step 2)" in r.stderr, r.stderr
    assert open(os.path.join(out, "ckpt.pt"), "rb").read() == before


def test_bench_prints_one_json_line(tmp_path, data_root, capsys):
    ugatit.main(["--phase", "bench", "--out", str(tmp_path / "b"), "--data_root", data_root, *TINY])
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("{")][-1]
    result = json.loads(line)
    assert result["img_size"] == 32 and result["it_s"] > 0 and result["img_s"] == pytest.approx(result["it_s"])
    assert result["peak_mem_mb"] > 0 and result["device"].startswith("cpu")
    assert not os.path.exists(tmp_path / "b" / "ckpt.pt")


def test_eval_on_a_folder_dataset_computes_kid_and_fid(tmp_path, monkeypatch):
    root = tmp_path / "data" / "pairs"
    for split in ("trainA", "trainB", "testA", "testB"):
        os.makedirs(root / split)
        for i in range(12):
            arr = np.random.default_rng(i + 100 * len(split)).integers(0, 255, (36, 36, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / split / f"{split}_{i}.jpg")
    out = str(tmp_path / "run")
    ugatit.main(["--data", str(root), "--out", out, "--iters", "2", *TINY])
    # no Inception weights on this machine: inject a small random feature extractor
    torch.manual_seed(0)
    extractor = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                    torch.nn.Flatten()).eval()
    monkeypatch.setattr(common, "fid_inception", lambda weights=None: (extractor, "test-extractor"))
    ugatit.main(["--phase", "eval", "--out", out, "--workers", "0"])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["inception"] == "test-extractor" and "judge_accuracy_real" not in metrics
    for d in ("a2b", "b2a"):
        assert metrics[d]["images"] == 12 and metrics[d]["fid"] >= 0 and len(metrics[d]["kid_blocks_x100"]) == 2
        assert "translation_success" not in metrics[d]


def test_eval_on_real_data_without_inception_weights_exits_2(tmp_path, monkeypatch):
    root = tmp_path / "data" / "pairs"
    for split in ("trainA", "trainB", "testA", "testB"):
        os.makedirs(root / split)
        Image.new("RGB", (36, 36)).save(root / split / "x.png")
    out = str(tmp_path / "run")
    ugatit.main(["--data", str(root), "--out", out, "--iters", "1", *TINY])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    r = run_ugatit("--phase", "eval", "--out", out)
    assert r.returncode == 2 and "pt_inception-2015-12-05-6726825d.pth" in r.stderr and "Traceback" not in r.stderr


def test_one_pass_layer_instance_norm_equals_the_two_pass_formula():
    torch.manual_seed(1)
    x = torch.randn(3, 5, 6, 4) * 2 + 0.5
    rho, gamma, beta = torch.rand(1, 5, 1, 1), torch.randn(3, 5, 1, 1), torch.randn(3, 5, 1, 1)
    a_in = (x - x.mean((2, 3), keepdim=True)) / torch.sqrt(x.var((2, 3), keepdim=True) + 1e-5)
    a_ln = (x - x.mean((1, 2, 3), keepdim=True)) / torch.sqrt(x.var((1, 2, 3), keepdim=True) + 1e-5)
    expected = gamma * (rho * a_in + (1 - rho) * a_ln) + beta  # the official code, line by line
    assert torch.allclose(ugatit.layer_instance_norm(x, rho, gamma, beta, 1e-5), expected, atol=1e-5)


def test_ugatit_and_common_alone_in_an_empty_folder_train_test_and_eval(tmp_path, data_root):
    """The design's promise: copy ugatit.py and common.py anywhere and they run on their own (one fresh
    interpreter that imports them from that folder alone runs train, test and eval)."""
    import shutil
    for name in ("ugatit.py", "common.py"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    env = dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="1")
    phases = [["--iters", "2", *TINY], ["--phase", "test", "--direction", "a2b", "--workers", "0"],
              ["--phase", "eval", "--direction", "a2b", "--workers", "0"]]
    program = ("import sys, common, ugatit\n"
               "assert common.__file__.startswith(sys.argv[1]) and ugatit.__file__.startswith(sys.argv[1])\n"
               f"for argv in {phases!r}:\n"
               "    common.cli(lambda: ugatit.main(argv + ['--data_root', sys.argv[2]]))\n")
    r = subprocess.run([sys.executable, "-c", program, str(tmp_path), data_root], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert set(os.listdir(tmp_path)) - {"__pycache__"} == {"common.py", "results", "ugatit.py"}
    assert len(os.listdir(tmp_path / "results" / "ugatit_toy" / "test" / "a2b")) == 400
    assert json.load(open(tmp_path / "results" / "ugatit_toy" / "metrics.json"))["a2b"]["images"] == 200
