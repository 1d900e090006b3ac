"""uag.py: parameter counts, Eq. 1, the attention-guided D switch, the baseline, end to end, resume."""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import common
import uag
from conftest import count_params, run_main, run_two_processes, same_checkpoint_weights

TINY = ["--img_size", "32", "--ngf", "4", "--ndf", "4", "--n_res", "1", "--workers", "0",
        "--log_every", "2", "--sample_every", "2", "--save_every", "2"]


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


def test_parameter_counts_equal_the_official_tf_layers():
    """Counted by hand from the official TF graph (conv weights + biases, IN scale + offset), ngf 32:
    G: c7 4,736+64, d 18,496+128, d 73,856+256, 9 x 2 x (147,456+128+256), u 73,792+128, u 18,464+64,
    c7 4,707 = 2,855,811. A: c7s2 4,736+64, c3s2 18,496+128, res 2 x (36,864+64+128), then 3x3
    36,928+128, 3x3 18,464+64, 7x7 1,569 = 154,689; with the official 1x1 kernels 104,001."""
    assert count_params(uag.Generator(32, 9)) == 2_855_811
    assert count_params(uag.AttentionNet(32, "intended")) == 154_689
    assert count_params(uag.AttentionNet(32, "official")) == 104_001
    assert count_params(uag.PatchGAN(3, 64)) == 2_764_737


def test_attention_net_is_one_channel_in_zero_one_at_the_input_size():
    for kernels in ("intended", "official"):
        att = uag.AttentionNet(8, kernels)(torch.randn(2, 3, 48, 48))
        assert att.shape == (2, 1, 48, 48) and att.min() >= 0 and att.max() <= 1
    convs = [m for m in uag.AttentionNet(8, "official").modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [7, 3, 3, 3, 1, 1, 1]  # the official code's 1x1 quirk


def test_output_is_input_where_attention_is_zero_and_generator_where_one():
    x, generated = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    attention = torch.zeros(2, 1, 8, 8)
    attention[..., :4] = 1
    out = uag.compose(generated, attention, x)
    assert torch.equal(out[..., 4:], x[..., 4:]) and torch.equal(out[..., :4], generated[..., :4])
    half = uag.compose(generated, torch.full_like(attention, 0.25), x)
    assert torch.allclose(half, 0.25 * generated + 0.75 * x)


def test_foreground_is_the_image_times_the_binary_mask():
    image = torch.ones(1, 3, 2, 2)
    attention = torch.tensor([[[[0.05, 0.1], [0.5, 0.0]]]])
    assert uag.foreground(image, attention, 0.1)[0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert torch.equal(uag.foreground(image, attention, 0.0), image)


def make_step(tmp_path, data_root, no_attention=False):
    """uag.train_step on fixed toy batches: step(switched) runs the next one."""
    args = argparse.Namespace(img_size=32, ngf=4, ndf=4, n_res=1, no_attention=no_attention, att_kernels="intended",
                              tf_release=False, tau=0.1, lr=1e-3, lambda_cycle=10.0, amp=False)
    torch.manual_seed(0)
    nets = uag.build_networks(args)
    gens = [nets[k] for k in nets if k.startswith(("gen", "att"))]
    opt_g = common.adam([p for g in gens for p in g.parameters()], args.lr, (0.5, 0.999), torch.device("cpu"))
    opt_d = common.adam([p for k in ("disc_a", "disc_b") for p in nets[k].parameters()], args.lr, (0.5, 0.999),
                        torch.device("cpu"))
    pools = {d: uag.ImagePool(0) for d in "ab"}
    toy = {d: common.ToyDataset("toy", "train", 32, d) for d in "AB"}
    batches = {d: iter([torch.stack([toy[d][i]["image"] for i in range(j, j + 2)]) for j in range(0, 20, 2)])
               for d in "AB"}
    dist_ = common.Dist("cpu")
    return nets, lambda switched: uag.train_step(args, nets, opt_g, opt_d, pools, next(batches["A"]),
                                                 next(batches["B"]), dist_, switched)


def record_inputs(module, store):
    return module.register_forward_hook(lambda m, inp, out: store.append(inp[0].detach().clone()))


def test_discriminator_sees_masked_images_after_the_switch_and_attention_is_frozen(tmp_path, data_root):
    nets, step = make_step(tmp_path, data_root)
    seen = []
    hook = record_inputs(nets["disc_b"], seen)
    step(False)
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in nets["disc_b"].modules())
    whole = seen[-1]  # D update input [real B, fake B]: whole images, nothing zeroed out
    assert (whole == 0).float().mean() < 0.01
    step(False)
    att_before = {k: v.clone() for k, v in nets["att_a"].state_dict().items()}
    uag.switch_discriminators(nets)
    seen.clear()
    step(True)
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in nets["disc_b"].modules())  # D drops its norm
    assert not any(p.requires_grad for p in nets["att_a"].parameters())
    for k, v in nets["att_a"].state_dict().items():
        assert torch.equal(v, att_before[k]), k  # frozen from the switch on
    hook.remove()
    # recompute what D_B should have seen in the D update of step 3: real B times (A_B(real B) >= 0.1)
    toy = common.ToyDataset("toy", "train", 32, "B")
    real_b = torch.stack([toy[i]["image"] for i in range(4, 6)])
    with torch.no_grad():
        expected = real_b * (nets["att_b"](real_b) >= 0.1).float()
    assert torch.allclose(seen[-1][:2], expected, atol=1e-6)


def test_no_attention_is_the_cyclegan_baseline(tmp_path, data_root):
    nets, step = make_step(tmp_path, data_root, no_attention=True)
    assert "att_a" not in nets
    seen = []
    record_inputs(nets["disc_a"], seen)
    losses = step(False)
    step(False)
    assert losses["attention_mean"].item() == 1.0
    assert (seen[-1] == 0).float().mean() < 0.01
    out, att, generated = uag.translation(nets, torch.rand(1, 3, 32, 32), "a2b")
    assert torch.equal(out, generated) and torch.equal(att, torch.ones_like(att))


# ---------------------------------------------------------------------------------------------
# End to end on toy data
# ---------------------------------------------------------------------------------------------


def test_train_test_eval_on_toy_and_the_baseline(tmp_path, data_root):
    out = str(tmp_path / "run")
    uag.main(["--iters", "4", "--out", out, "--data_root", data_root, *TINY])
    rows = open(os.path.join(out, "log.csv")).read().splitlines()
    assert rows[0].startswith("step,d_loss,g_adv,g_cycle,g_loss,attention_mean,lr") and len(rows) == 3
    assert os.path.exists(os.path.join(out, "samples", "step_0000004.png"))
    uag.main(["--phase", "test", "--out", out, "--data_root", data_root, "--workers", "0", "--direction", "a2b"])
    assert len(os.listdir(os.path.join(out, "test", "a2b"))) == 2 * common.TOY_SPLIT_SIZES["test"]
    photo = tmp_path / "me.png"
    Image.fromarray(np.full((40, 50, 4), 200, np.uint8)).save(photo)  # RGBA, not square
    uag.main(["--phase", "test", "--out", out, "--input", str(photo), "--direction", "b2a", "--workers", "0"])
    assert sorted(os.listdir(os.path.join(out, "test", "b2a"))) == ["me.png", "me_attention.png"]
    uag.main(["--phase", "eval", "--out", out, "--data_root", data_root, "--workers", "0"])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert 0 <= metrics["a2b"]["attention_iou"] <= 1 and metrics["b2a"]["background_psnr_db"] > 0
    base = str(tmp_path / "base")
    uag.main(["--iters", "2", "--out", base, "--data_root", data_root, "--no_attention", *TINY])
    uag.main(["--phase", "eval", "--out", base, "--data_root", data_root, "--workers", "0", "--direction", "a2b"])
    metrics = json.load(open(os.path.join(base, "metrics.json")))
    # A = 1 selects the whole image: IoU = ellipse area / image area, small
    masks = torch.stack([common.ToyDataset("toy", "test", 32, "A")[i]["mask"] for i in range(200)])
    assert metrics["a2b"]["attention_iou"] == pytest.approx(masks.mean().item(), abs=1e-6)


def test_resume_across_the_switch_gives_identical_weights(tmp_path, data_root):
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    argv = ["--iters", "6", "--switch_epoch", "50", "--data_root", data_root, "--pool_size", "3", *TINY]
    uag.main(["--out", full, *argv])
    uag.main(["--out", split, "--stop_at", "2", *argv])  # stops before the switch (after step 3)
    uag.main(["--out", split, "--resume", "--stop_at", "4", "--data_root", data_root, "--workers", "0"])
    attention_at_4 = torch.load(os.path.join(split, "ckpt.pt"), weights_only=True)["models"]["att_a"]
    uag.main(["--out", split, "--resume", "--data_root", data_root, "--workers", "0"])
    a, _ = same_checkpoint_weights(os.path.join(full, "ckpt.pt"), os.path.join(split, "ckpt.pt"))
    assert a["step"] == 6
    for k, v in a["models"]["att_a"].items():  # the loop switched after step 3: attention frozen from step 4 on
        assert torch.equal(v, attention_at_4[k]), k


def test_bad_image_size_exits_2(tmp_path):
    r = run_main("uag.py", "--out", str(tmp_path / "x"), "--img_size", "30")
    assert r.returncode == 2 and "multiple of 4" in r.stderr and "Traceback" not in r.stderr


def test_bench_prints_one_json_line(tmp_path, data_root, capsys):
    uag.main(["--phase", "bench", "--out", str(tmp_path / "b"), "--data_root", data_root, *TINY])
    result = json.loads([l for l in capsys.readouterr().out.splitlines() if l.startswith("{")][-1])
    assert result["img_size"] == 32 and result["it_s"] > 0


@pytest.mark.slow
def test_two_process_data_parallel_across_the_switch(tmp_path, data_root):
    """gloo on CPU: after the switch the attention nets have no gradients to average and D has no
    norm; the replicas must still agree and only rank 0 writes."""
    run_two_processes("uag.py", ["--iters", "4", "--switch_epoch", "50", "--data_root", data_root, *TINY], tmp_path)
