"""attentiongan.py: parameter counts, the composition, Scheme I's parts, end to end on toy, resume, bad input."""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import attentiongan
import common
from conftest import count_params, run_main, run_two_processes, same_checkpoint_weights

TINY = ["--img_size", "32", "--ngf", "4", "--ndf", "4", "--n_res", "1", "--n_masks", "3", "--workers", "0",
        "--log_every", "2", "--sample_every", "2", "--save_every", "2"]


# ---------------------------------------------------------------------------------------------
# Networks and the composition
# ---------------------------------------------------------------------------------------------


def test_parameter_counts_equal_official():
    with torch.device("meta"):
        assert count_params(attentiongan.GeneratorII(64, 9, 10)) == 11_822_949
        assert count_params(attentiongan.PatchGAN(3, 64, 3)) == 2_764_737


def test_scheme_two_masks_are_a_softmax_and_contents_are_tanh():
    torch.manual_seed(0)
    gen = attentiongan.GeneratorII(8, 1, 10)
    out, attention, content = gen(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32) and attention.shape == (2, 10, 32, 32) and content.shape == (2, 9, 3, 32, 32)
    assert torch.allclose(attention.sum(1), torch.ones(2, 32, 32), atol=1e-6) and attention.min() >= 0
    assert content.abs().max() <= 1


def force_mask(gen, index):
    """Make the attention decoder put all attention on mask `index` (weights 0, that bias large)."""
    last = gen.attention_decoder[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-50.0)
        last.bias[index] = 50.0


def test_output_is_the_input_where_background_attention_is_one_and_the_content_where_a_mask_is():
    torch.manual_seed(0)
    gen = attentiongan.GeneratorII(8, 1, 4)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    force_mask(gen, 3)  # the last mask is the background
    out, attention, _ = gen(x)
    assert torch.allclose(attention[:, 3], torch.ones(2, 32, 32)) and torch.allclose(out, x, atol=1e-6)
    force_mask(gen, 1)
    out, _, content = gen(x)
    assert torch.allclose(out, content[:, 1], atol=1e-6)
    # a mixture: G(x) = sum_i C_i A_i + x A_n, pixel by pixel
    attention = torch.softmax(torch.randn(2, 4, 32, 32), 1)
    content = torch.rand(2, 3, 3, 32, 32)
    expected = sum(content[:, i] * attention[:, i:i + 1] for i in range(3)) + x * attention[:, 3:]
    assert torch.allclose(attentiongan.compose(content, attention, x), expected, atol=1e-6)


def test_scheme_one_is_one_sigmoid_mask_and_its_complement():
    torch.manual_seed(0)
    gen = attentiongan.GeneratorI(8, 1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out, attention, content = gen(x)
    assert attention.shape == (2, 2, 32, 32) and content.shape == (2, 1, 3, 32, 32)
    a = attention[:, :1]
    assert torch.allclose(attention[:, 1:], 1 - a)
    assert torch.allclose(out, content[:, 0] * a + x * (1 - a), atol=1e-6)  # G(x) = C A + x (1 - A)
    with torch.no_grad():  # attention 0 everywhere: the input passes through
        gen.model[-1].bias[3] = -100.0
        gen.model[-1].weight[3].zero_()
    out, _, _ = gen(x)
    assert torch.allclose(out, x, atol=1e-6)


def test_total_variation_by_hand():
    mask = torch.tensor([[[[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]]])  # 2x3
    # vertical |diffs|: 0, 1, 0; horizontal: 1, 0, 0, 1 -> 3
    assert attentiongan.total_variation(mask).item() == pytest.approx(3.0)
    assert attentiongan.total_variation(torch.cat([mask, torch.zeros_like(mask)])).item() == pytest.approx(1.5)


def test_scheme_one_has_attention_guided_discriminators_on_four_channels():
    args = argparse.Namespace(scheme="I", ngf=4, n_res=1, n_masks=10, ndf=4, bg_init=0.0)
    nets = attentiongan.build_networks(args)
    assert set(nets) == {"gen_a2b", "gen_b2a", "disc_a", "disc_b", "disc_att_a", "disc_att_b"}
    assert nets["disc_att_a"].model[0].in_channels == 4 and nets["disc_a"].model[0].in_channels == 3


# ---------------------------------------------------------------------------------------------
# End to end on toy data
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["II", "I"])
def test_train_test_eval_on_toy(tmp_path, data_root, scheme):
    out = str(tmp_path / "run")
    attentiongan.main(["--iters", "4", "--out", out, "--data_root", data_root, "--scheme", scheme, *TINY])
    rows = open(os.path.join(out, "log.csv")).read().splitlines()
    assert rows[0].startswith("step,d_loss,g_adv,g_cycle,g_identity,g_tv,g_loss,lr") and len(rows) == 3
    tv = float(rows[-1].split(",")[5])
    assert (tv > 0) == (scheme == "I")
    n_masks = 3 if scheme == "II" else 2
    columns = 3 + n_masks + (n_masks - 1)  # input, output, overlay, masks, contents
    grid = Image.open(os.path.join(out, "samples/step_0000004.png"))
    assert grid.size == (columns * 34 + 2, 8 * 34 + 2)
    attentiongan.main(["--phase", "test", "--out", out, "--data_root", data_root, "--workers", "0"])
    files = os.listdir(os.path.join(out, "test", "b2a"))
    assert len(files) == 2 * common.TOY_SPLIT_SIZES["test"] and "00007_attention.png" in files
    attentiongan.main(["--phase", "eval", "--out", out, "--data_root", data_root, "--workers", "0"])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    for d in ("a2b", "b2a"):
        m = metrics[d]
        assert m["images"] == common.TOY_SPLIT_SIZES["test"] and 0 <= m["attention_iou"] <= 1
        assert 0 <= m["translation_success"] <= 1 and m["background_psnr_db"] > 0


def test_resume_gives_identical_weights_and_pools(tmp_path, data_root):
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    argv = ["--iters", "6", "--data_root", data_root, "--pool_size", "3", *TINY]
    attentiongan.main(["--out", full, *argv])
    attentiongan.main(["--out", split, "--stop_at", "3", *argv])
    assert len(torch.load(os.path.join(split, "ckpt.pt"), weights_only=True)["extra"]["pool_a"]["items"]) == 3
    attentiongan.main(["--out", split, "--resume", "--data_root", data_root, "--workers", "0"])
    a, b = same_checkpoint_weights(os.path.join(full, "ckpt.pt"), os.path.join(split, "ckpt.pt"))
    assert a["step"] == 6
    for x, y in zip(a["extra"]["pool_b"]["items"], b["extra"]["pool_b"]["items"]):
        assert torch.equal(x[0], y[0])


def test_epochs_set_iters_and_the_released_preset(tmp_path):
    root = tmp_path / "data" / "pairs"
    for split, n in (("trainA", 6), ("trainB", 10), ("testA", 2), ("testB", 2)):
        os.makedirs(root / split)
        for i in range(n):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    out = str(tmp_path / "run")
    flags = TINY[:-4]  # without the sample/save intervals
    attentiongan.main(["--data", str(root), "--out", out, "--n_epochs", "1", "--n_epochs_decay", "1", "--batch_size", "2",
                       "--sample_every", "0", *flags])
    args = json.load(open(os.path.join(out, "args.json")))
    assert args["iters"] == 10  # 2 epochs x max(6, 10) images / batch 2
    lrs = [float(r.split(",")[7]) for r in open(os.path.join(out, "log.csv")).read().splitlines()[1:]]
    assert lrs[1] == 2e-4 and lrs[-1] == 0.0  # constant for the first epoch, then down to 0
    out2 = str(tmp_path / "released")
    attentiongan.main(["--data", str(root), "--out", out2, "--preset", "released", "--iters", "2", "--sample_every", "0",
                       *flags])
    args = json.load(open(os.path.join(out2, "args.json")))
    assert args["batch_size"] == 4 and args["n_epochs"] == 60 and args["n_epochs_decay"] == 0


# ---------------------------------------------------------------------------------------------
# Bad input and bench
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [(["--img_size", "30"], "multiple of 4"), (["--n_masks", "1"], "at least one")])
def test_bad_arguments_exit_2(tmp_path, argv, message):
    r = run_main("attentiongan.py", "--out", str(tmp_path / "x"), *argv)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_checkpoint_of_another_script_is_refused(tmp_path, trained):
    out = trained("attentiongan")
    r = run_main("uag.py", "--phase", "eval", "--ckpt", os.path.join(out, "ckpt.pt"))
    assert r.returncode == 2 and "not of uag.py" in r.stderr
    r = run_main("attentiongan.py", "--phase", "eval", "--out", out, "--scheme", "I")
    assert r.returncode == 2 and "--scheme II" in r.stderr


def test_bench_prints_one_json_line(tmp_path, data_root, capsys):
    attentiongan.main(["--phase", "bench", "--out", str(tmp_path / "b"), "--data_root", data_root, *TINY])
    result = json.loads([l for l in capsys.readouterr().out.splitlines() if l.startswith("{")][-1])
    assert result["img_size"] == 32 and result["it_s"] > 0 and result["peak_mem_mb"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["II", "I"])
def test_two_process_data_parallel(tmp_path, data_root, scheme):
    """gloo on CPU, image pools on: each rank's D sees its own pool history, the averaged gradients
    keep the replicas identical, and only rank 0 writes."""
    run_two_processes("attentiongan.py", ["--iters", "4", "--pool_size", "3", "--scheme", scheme,
                                          "--data_root", data_root, *TINY], tmp_path)


@pytest.mark.parametrize("scheme", ["II", "I"])
def test_bg_init_starts_the_background_attention_there(scheme):
    args = argparse.Namespace(scheme=scheme, ngf=4, n_res=1, n_masks=10, ndf=4, bg_init=0.8)
    torch.manual_seed(0)
    gen = attentiongan.build_networks(args)["gen_a2b"]
    _, attention, _ = gen(torch.randn(2, 3, 32, 32))
    assert attention[:, -1].mean().item() == pytest.approx(0.8, abs=0.05)
    args.bg_init = 0.0  # the official init: uniform over the masks
    _, attention, _ = attentiongan.build_networks(args)["gen_a2b"](torch.randn(2, 3, 32, 32))
    assert attention[:, -1].mean().item() == pytest.approx(1 / attention.shape[1], abs=0.05)


def test_image_pool_history_and_state():
    pool = attentiongan.ImagePool(3, seed=1)
    first = [pool.query(torch.full((1, 1), float(i)))[0].item() for i in range(3)]
    assert first == [0, 1, 2]  # filling: the new image comes back
    outs = [pool.query(torch.full((1, 1), float(i)))[0].item() for i in range(3, 40)]
    assert any(o < 3 for o in outs) and any(o >= 3 for o in outs)  # old and new fakes both come back
    pairs = attentiongan.ImagePool(3, seed=2)
    outs = [pairs.query(torch.full((2, 1), float(i)), torch.full((2, 1), -float(i))) for i in range(20)]
    assert all(torch.equal(image, -mask) for image, mask in outs)  # (image, mask) pairs stay together
    state = pool.state_dict()
    a = [pool.query(torch.full((1, 1), 100.0 + i))[0].item() for i in range(10)]
    pool.load_state_dict(state)
    b = [pool.query(torch.full((1, 1), 100.0 + i))[0].item() for i in range(10)]
    assert a == b
