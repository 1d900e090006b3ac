"""camconsistency.py: Grad-CAM against its closed form, the two CAM-consistency terms' gradients, the
StarGAN base, end to end on toy-attr and on a small CelebA-format folder, resume, bad input."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import camconsistency
import common
from conftest import count_params, run_main, run_two_processes, same_checkpoint_weights

TINY = ["--img_size", "32", "--conv_dim", "4", "--d_conv_dim", "4", "--n_res", "1", "--d_layers", "4", "--batch_size", "4",
        "--n_critic", "2", "--workers", "0", "--log_every", "2", "--sample_every", "2", "--save_every", "2"]


# ---------------------------------------------------------------------------------------------
# Networks, Grad-CAM and the losses
# ---------------------------------------------------------------------------------------------


def test_generator_parameter_count_equals_official_stargan():
    with torch.device("meta"):
        assert count_params(camconsistency.Generator(5, 64, 6)) == 8_430_528


@pytest.mark.parametrize("img_size, d_layers, expected", [(128, 6, 4), (64, 5, 3), (32, 4, 2), (256, 6, 5)])
def test_default_cam_layer_is_the_deepest_map_of_at_least_8x8(img_size, d_layers, expected):
    assert camconsistency.default_cam_layer(img_size, d_layers) == expected
    assert img_size // 2 ** expected >= 8 and (expected == d_layers or img_size // 2 ** (expected + 1) < 8)


def test_grad_cam_on_the_last_map_equals_its_closed_form():
    """On D's last map the classifier is one linear conv covering the map: cls_j = sum_{k,u,v} W_jkuv A_kuv.
    So ds/dA_kuv = sum_j w_j W_jkuv, alpha_k is its spatial mean, M = ReLU(sum_k alpha_k A_k) / max."""
    torch.manual_seed(0)
    disc = camconsistency.Discriminator(32, 4, 3, 3)  # last map 4x4, cls kernel 4
    x = torch.randn(2, 3, 32, 32)
    weights = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # image 0: attribute 0 gained, 1 lost; image 1: 2 lost
    _, cls, feature = disc(x, feature_layer=3)
    cam = camconsistency.grad_cam(cls, feature, weights, create_graph=False)
    w_cls = disc.out_cls.weight  # (c_dim, channels, 4, 4)
    alpha = torch.einsum("nj,jkuv->nk", weights, w_cls) / 16
    expected = F.relu(torch.einsum("nk,nkuv->nuv", alpha, feature))[:, None]
    peak = expected.amax(dim=(2, 3), keepdim=True)
    assert peak.min() > 0  # both maps have a positive part, so each is normalised to a maximum of 1
    assert cam.shape == (2, 1, 4, 4) and torch.allclose(cam, expected / peak, atol=1e-5)


def test_grad_cam_of_an_unchanged_image_is_zero_so_everything_is_preserved():
    disc = camconsistency.Discriminator(32, 4, 3, 3)
    _, cls, feature = disc(torch.randn(1, 3, 32, 32), feature_layer=2)
    cam = camconsistency.grad_cam(cls, feature, torch.zeros(1, 3), create_graph=False)
    assert torch.equal(cam, torch.zeros_like(cam))


def grads_of(module):
    return [p.grad for p in module.parameters()]


def test_d_term_gives_d_gradients_through_the_map_and_g_none():
    torch.manual_seed(0)
    gen, disc = camconsistency.Generator(3, 4, 1), camconsistency.Discriminator(32, 4, 3, 4)
    x, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.eye(3)[[0, 2]]
    fake = gen(x, c)
    _, cls, feature = disc(fake.detach(), feature_layer=2)
    cam = camconsistency.upsample(camconsistency.grad_cam(cls, feature, c - torch.eye(3)[[1, 1]], create_graph=True), 32)
    camconsistency.cam_consistency_d(cam, x, fake).backward()
    assert all(g is None for g in grads_of(gen))
    d_grads = [g for g in grads_of(disc) if g is not None]
    assert d_grads and sum(g.abs().sum() for g in d_grads) > 0
    # create_graph is what lets the D term reach D's classifier and the blocks after the CAM layer (through alpha)
    assert disc.out_cls.weight.grad.abs().sum() > 0 and disc.blocks[3][0].weight.grad.abs().sum() > 0
    disc.zero_grad(set_to_none=True)
    _, cls, feature = disc(fake.detach(), feature_layer=2)
    cam = camconsistency.upsample(camconsistency.grad_cam(cls, feature, c - torch.eye(3)[[1, 1]], create_graph=False), 32)
    camconsistency.cam_consistency_d(cam, x, fake).backward()
    assert disc.out_cls.weight.grad is None and disc.blocks[3][0].weight.grad is None


def test_g_term_gives_g_gradients_and_treats_the_map_as_a_constant():
    torch.manual_seed(0)
    gen = camconsistency.Generator(3, 4, 1)
    x, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.eye(3)[[0, 2]]
    fake = gen(x, c)
    cam = torch.rand(2, 1, 32, 32, requires_grad=True)
    loss = camconsistency.cam_consistency_g(cam, x, fake)
    loss.backward()
    assert cam.grad is None and sum(g.abs().sum() for g in grads_of(gen)) > 0
    # the value: mean over pixels of (1 - M) * channel-mean |x - y|
    expected = ((1 - cam.detach()) * (x - fake.detach()).abs().mean(1, keepdim=True)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # where M = 1 the G term ignores every change
    assert camconsistency.cam_consistency_g(torch.ones(2, 1, 32, 32), x, fake).item() == 0


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def test_train_test_eval_on_toy_attr(tmp_path, data_root):
    out = str(tmp_path / "run")
    camconsistency.main(["--iters", "4", "--out", out, "--data_root", data_root, *TINY])
    rows = open(os.path.join(out, "log.csv")).read().splitlines()
    assert rows[0].startswith("step,d_adv,d_gp,d_cls,d_cam,g_adv,g_cls,g_rec,g_cam,lr") and len(rows) == 3
    values = dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert float(values["d_cam"]) > 0 and float(values["g_cam"]) > 0 and float(values["g_rec"]) > 0
    grid = Image.open(os.path.join(out, "samples/step_0000004.png"))
    assert grid.size == ((1 + 2 * (5 + 3)) * 34 + 2, 8 * 34 + 2)  # input + (CAM, output) per value of color and sleeve
    camconsistency.main(["--phase", "test", "--out", out, "--data_root", data_root, "--workers", "0"])
    files = os.listdir(os.path.join(out, "test"))
    assert len(files) == 2 * 200 * 6 + 2  # 4 other colours + 2 other sleeves per test image, each with its map;
    assert {"index.html", "input"} <= set(files)  # and the page with the inputs
    assert "00003_sleeve=long.png" in files or "00003_sleeve=short.png" in files
    camconsistency.main(["--phase", "eval", "--out", out, "--data_root", data_root, "--workers", "0"])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["color"]["images"] == 4 * 200 and metrics["sleeve"]["images"] == 2 * 200
    for key in ("attribute_accuracy", "kept_accuracy", "preserve_psnr_db", "attention_iou", "retrieval_top30"):
        assert key in metrics["mean"] and 0 <= metrics["color"][key] <= (100 if "psnr" in key else 1)


def test_lambda_cam_zero_is_plain_stargan(tmp_path, data_root):
    out = str(tmp_path / "run")
    camconsistency.main(["--iters", "2", "--out", out, "--data_root", data_root, "--lambda_cam", "0", *TINY])
    values = dict(zip(*[r.split(",") for r in open(os.path.join(out, "log.csv")).read().splitlines()]))
    assert float(values["d_cam"]) == 0 and float(values["g_cam"]) == 0 and float(values["g_rec"]) > 0


def test_resume_gives_identical_weights(tmp_path, data_root):
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    argv = ["--iters", "6", "--data_root", data_root, *TINY]
    camconsistency.main(["--out", full, *argv])
    camconsistency.main(["--out", split, "--stop_at", "3", *argv])
    camconsistency.main(["--out", split, "--resume", "--data_root", data_root, "--workers", "0"])
    a, _ = same_checkpoint_weights(os.path.join(full, "ckpt.pt"), os.path.join(split, "ckpt.pt"))
    assert a["step"] == 6


def test_input_images_with_a_target(tmp_path, trained):
    out = str(tmp_path / "run")
    ckpt = os.path.join(trained("camconsistency"), "ckpt.pt")
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.new("RGBA", (50, 40), (200, 10, 10, 255)).save(folder / "shirt.png")
    camconsistency.main(["--phase", "test", "--ckpt", ckpt, "--out", out, "--input", str(folder), "--target",
                         "color=blue,sleeve=long"])
    written = sorted(os.listdir(os.path.join(out, "test")))
    assert written == ["index.html", "input", "shirt_color=blue_sleeve=long.png",
                       "shirt_color=blue_sleeve=long_attention.png"]
    written = written[2:]
    assert Image.open(os.path.join(out, "test", written[0])).size == (32, 32)


def test_trains_on_a_celeba_format_folder(tmp_path):
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    names = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
    lines = [str(2008), " ".join(names)] + [f"{i:06d}.jpg " + " ".join(["1", "-1", "-1", "1", "-1"][::1 if i % 2 else -1])
                                            for i in range(2008)]
    (root / common.CELEBA_ATTR_FILE).write_text("\n".join(lines) + "\n")
    for i in common._split_indices(2008, 2000)["train"]:  # only the training images need to exist
        Image.new("RGB", (178, 218), (i * 20, 100, 50)).save(root / "img_align_celeba" / f"{i:06d}.jpg")
    out = str(tmp_path / "run")
    camconsistency.main(["--data", str(root), "--iters", "2", "--out", out, *TINY])
    args = json.load(open(os.path.join(out, "args.json")))
    assert args["img_size"] == 32 and args["attrs"] is None and os.path.exists(os.path.join(out, "ckpt.pt"))
    r = run_main("camconsistency.py", "--phase", "eval", "--out", out, "--data", str(root))
    assert r.returncode == 2 and "pt_inception-2015-12-05-6726825d.pth" in r.stderr  # offline: says where the weights go


@pytest.mark.slow
def test_two_process_data_parallel(tmp_path, data_root):
    """gloo on CPU: WGAN-GP and the D term's second derivatives are all-reduced like any gradient."""
    run_two_processes("camconsistency.py", ["--iters", "4", "--data_root", data_root, *TINY], tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--data", "toy"], "attribute scripts take --data toy-attr"),
    (["--img_size", "40"], "multiple of 16"),
    (["--attrs", "color,collar"], "unknown attribute collar"),
    (["--cam_layer", "9"], "D has blocks 1 to 4"),
])
def test_bad_arguments_exit_2(tmp_path, argv, message):
    r = run_main("camconsistency.py", "--out", str(tmp_path / "x"), *TINY, *argv)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_bad_target_exits_2_and_keeps_the_checkpoint(trained):
    out = trained("camconsistency")
    before = open(os.path.join(out, "ckpt.pt"), "rb").read()
    r = run_main("camconsistency.py", "--phase", "test", "--out", out, "--target", "color=purple")
    assert r.returncode == 2 and "'color=purple' is not a value" in r.stderr
    r = run_main("camconsistency.py", "--out", out, *TINY)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert open(os.path.join(out, "ckpt.pt"), "rb").read() == before


def test_bench_prints_one_json_line(tmp_path, data_root, capsys):
    camconsistency.main(["--phase", "bench", "--out", str(tmp_path / "b"), "--data_root", data_root, *TINY])
    result = json.loads([l for l in capsys.readouterr().out.splitlines() if l.startswith("{")][-1])
    assert result["img_size"] == 32 and result["batch"] == 4 and result["it_s"] > 0
