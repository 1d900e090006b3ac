"""amgan.py: Eq. 1, the manipulation code, the crop box, the CAM, the reference bank, region-specific
manipulation, end to end on toy-attr, resume, the ablation flags, bad input."""
import csv
import json
import os
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import amgan
import common
from conftest import run_main, run_two_processes, same_checkpoint_weights

TINY = ["--img_size", "32", "--conv_dim", "4", "--d_conv_dim", "4", "--n_res", "1", "--d_layers", "4",
        "--batch_size", "4", "--workers", "0", "--cls_iters", "5", "--cls_batch_size", "8", "--ref_per_label_set", "1",
        "--log_every", "5", "--sample_every", "5", "--save_every", "5"]


def toy_attrs():
    return common.AttributeSet(list(common.TOY_ATTRS), list(common.TOY_ATTRS.values()), [False] * 4, [0, 1])


# ---------------------------------------------------------------------------------------------
# Networks, Eq. 1 and the manipulation code
# ---------------------------------------------------------------------------------------------


def test_output_is_the_input_where_attention_is_zero_and_z_where_it_is_one():
    x, z = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    a = torch.zeros(2, 1, 8, 8)
    a[..., :3] = 1
    out = amgan.compose(z, a, x)
    assert torch.equal(out[..., 3:], x[..., 3:]) and torch.equal(out[..., :3], z[..., :3])
    assert torch.allclose(amgan.compose(z, torch.full_like(a, 0.3), x), 0.3 * z + 0.7 * x)


def test_generator_heads_and_the_composed_output():
    torch.manual_seed(0)
    attrs = toy_attrs()
    gen = amgan.Generator(attrs.c_dim + 2, conv_dim=4, n_res=1)
    assert gen.body[0].in_channels == 3 + 8 + 2  # image, N = 5 colours + 3 sleeves, M = 2
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    labels = torch.tensor([[0, 1, 0, 0], [3, 2, 1, 1]])
    target = attrs.set_value(labels, 0, 2)
    out, mask, content, attention = amgan.Manipulator(attrs, gen)(x, labels, target, 0)
    assert content.abs().max() <= 1 and 0 <= attention.min() and attention.max() <= 1 and mask is attention
    assert torch.allclose(out, attention * content + (1 - attention) * x)
    gen.attention_head[0] = nn.Conv2d(4, 1, 7, 1, 3)  # saturate a to 0: the input passes through
    nn.init.zeros_(gen.attention_head[0].weight)
    nn.init.constant_(gen.attention_head[0].bias, -100.0)
    out, _, _, _ = amgan.Manipulator(attrs, gen)(x, labels, target, 0)
    assert torch.equal(out, x)


def test_manipulation_code_is_the_target_block_of_r_and_a_one_hot_of_r():
    attrs = toy_attrs()
    labels = torch.tensor([[0, 1, 0, 0], [3, 2, 1, 1]])
    code = amgan.manipulation_code(attrs, attrs.set_value(labels, 1, 0), 1)  # sleeve -> sleeveless
    assert code.tolist() == [[0, 0, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1, 0, 0, 0, 1]]
    code = amgan.manipulation_code(attrs, attrs.set_value(labels, 0, 4), 0)  # colour -> white
    assert code.tolist() == [[0, 0, 0, 0, 1, 0, 0, 0, 1, 0]] * 2


def test_random_targets_change_the_group_to_every_other_value():
    attrs = toy_attrs()
    labels = torch.tensor([[2, 1, 0, 1]]).repeat(400, 1)
    target = amgan.random_targets(attrs, labels, 0, torch.Generator().manual_seed(0))
    assert torch.equal(target[:, 1:], labels[:, 1:])
    assert set(target[:, 0].tolist()) == {0, 1, 3, 4}


# ---------------------------------------------------------------------------------------------
# The crop box of the largest connected region
# ---------------------------------------------------------------------------------------------


def flood_fill_boxes(mask):
    """Reference: BFS over 8-neighbours on one (H, W) bool array -> (box of the largest region, its
    area, the second largest area)."""
    h, w = mask.shape
    seen, regions = np.zeros_like(mask), []
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                queue, pixels = deque([(i, j)]), []
                seen[i, j] = True
                while queue:
                    y, x = queue.popleft()
                    pixels.append((y, x))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            v, u = y + dy, x + dx
                            if 0 <= v < h and 0 <= u < w and mask[v, u] and not seen[v, u]:
                                seen[v, u] = True
                                queue.append((v, u))
                regions.append(pixels)
    regions.sort(key=len, reverse=True)
    ys, xs = zip(*regions[0])
    return [min(xs), min(ys), max(xs) + 1, max(ys) + 1], len(regions[0]), len(regions[1]) if len(regions) > 1 else 0


def test_the_box_is_the_larger_blob_not_the_brighter_one_and_ignores_weak_attention():
    a = torch.zeros(1, 1, 32, 32)
    a[..., 2:5, 25:28] = 1.0  # small, brightest blob
    a[..., 10:22, 4:14] = 0.6  # large blob above half the maximum
    a[..., 0:32, 18:20] = 0.4  # a long stripe below half the maximum
    assert amgan.largest_region_boxes(a).tolist() == [[4.0, 10.0, 14.0, 22.0]]
    a[..., 21, 14:25] = 0.6  # a thin bridge joins the small blob (diagonally) to the large one: one region
    a[..., 5, 24] = 0.6
    a[..., 6:21, 24] = 0.6
    assert amgan.largest_region_boxes(a).tolist() == [[4.0, 2.0, 28.0, 22.0]]
    # at 128 px the region is found on the 4 x 4 average-pooled map: the same mask scaled by 4, the box too
    big = torch.nn.functional.interpolate(a, scale_factor=4, mode="nearest")
    assert amgan.largest_region_boxes(big).tolist() == [[16.0, 8.0, 112.0, 88.0]]


def test_the_box_matches_a_flood_fill_on_random_and_winding_masks():
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(24, 1, 6, 6), size=48, mode="bicubic", align_corners=False)
    serpentine = torch.zeros(1, 1, 48, 48)  # one path of ~1200 pixels winding through the image
    serpentine[..., ::2, :] = 1
    serpentine[..., 1::4, -1] = 1
    serpentine[..., 3::4, 0] = 1
    serpentine[..., 40:, 20:30] = 0  # cut it: two long windings
    attention = torch.cat([smooth, serpentine, serpentine.flip(2)])
    boxes = amgan.largest_region_boxes(attention).tolist()
    checked = 0
    for a, box in zip(attention, boxes):
        mask = (a[0] >= 0.5 * a.max()).numpy()
        expected, largest, second = flood_fill_boxes(mask)
        if largest > second:  # a unique largest region
            assert box == expected
            checked += 1
    assert checked >= 20


def test_crop_takes_the_box_and_resizes_it():
    image = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    boxes = torch.tensor([[8.0, 4.0, 24.0, 20.0], [0.0, 0.0, 32.0, 32.0]])
    out = amgan.crop(image, boxes, 16)
    assert torch.allclose(out[0], image[0, :, 4:20, 8:24])  # same size: the pixels themselves
    assert torch.allclose(out[1], torch.nn.functional.avg_pool2d(image[1:], 2)[0])  # halved: 2x2 averages
    image.requires_grad_(True)
    amgan.crop(image, boxes, 16).sum().backward()
    assert image.grad[0, :, 4:20, 8:24].abs().min() > 0 and image.grad[0, :, :4].abs().max() == 0


# ---------------------------------------------------------------------------------------------
# The attribute CNN's CAM and the reference bank
# ---------------------------------------------------------------------------------------------


def test_cam_equals_the_head_weights_on_the_conv5_maps():
    torch.manual_seed(0)
    cnn = amgan.AttributeCNN("toy", [5, 3, 2, 2]).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        conv5, pooled, logits = cnn(x)
    assert conv5.shape == (2, 64, 4, 4)  # conv5 at 1/8 of the image
    values = torch.tensor([3, 1])
    w = cnn.heads[0].weight
    for i, v in enumerate(values.tolist()):
        raw = sum(w[v, k] * conv5[i, k] for k in range(64))  # M_v(i, j) = sum_k w_{v,k} f_k(i, j)
        # the CAM's spatial mean plus the bias is the class logit (global average pooling)
        assert torch.allclose(raw.mean() + cnn.heads[0].bias[v], logits[0][i, v], atol=1e-5)
        normalised = (raw - raw.min()) / (raw.max() - raw.min())
        expected = torch.nn.functional.interpolate(normalised[None, None], size=32, mode="bilinear", align_corners=False)
        cam = amgan.class_activation_map(conv5, w, values, 32)
        assert torch.allclose(cam[i], expected[0], atol=1e-5) and cam.min() >= 0 and cam.max() <= 1
    # the Manipulator's a* is the CAM of the input's own (original) value of attribute r
    attrs = toy_attrs()
    labels = torch.tensor([[0, 2, 0, 0], [4, 0, 1, 1]])
    got = amgan.Manipulator(attrs, None, cnn).cam(x, labels, 1)
    assert torch.allclose(got, amgan.class_activation_map(conv5, cnn.heads[1].weight, labels[:, 1], 32))


class TinyLabelled(torch.utils.data.Dataset):
    """Images whose pixels hold their index, with given labels."""

    def __init__(self, labels):
        self.labels = torch.tensor(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": torch.full((3, 4, 4), i / 100 - 1), "labels": self.labels[i]}


def test_reference_has_all_target_labels_or_the_most_with_the_manipulated_group():
    toy = common.attribute_data("toy-attr", "unused", 16, None, "train")[1]
    bank = amgan.ReferenceBank(toy, 2, seed=0, device="cpu")
    assert len(bank.labels) == 2 * len(torch.unique(toy.labels, dim=0))
    target = toy.labels[torch.randperm(len(toy.labels))[:64]]
    index = bank.choose(target, 0, torch.Generator().manual_seed(0))
    assert torch.equal(bank.labels[index], target)  # every group: colour, sleeve, size and bg
    image = bank[index[:1]]
    assert image.shape == (1, 3, 16, 16) and image.min() >= -1 and image.max() <= 1

    data = TinyLabelled([[0, 0, 0, 0], [1, 1, 1, 1], [2, 0, 1, 1], [2, 2, 2, 1]])
    bank = amgan.ReferenceBank(data, 4, seed=0, device="cpu")
    # no image has (2, 1, 1, 1): (1, 1, 1, 1) matches 3 groups but not the manipulated colour; (2, 0, 1, 1) does
    index = bank.choose(torch.tensor([[2, 1, 1, 1]]), 0, torch.Generator())
    assert bank.labels[index].tolist() == [[2, 0, 1, 1]]
    assert bank[index].flatten()[0].item() == pytest.approx(2 / 100 - 1, abs=1 / 255)


# ---------------------------------------------------------------------------------------------
# Region-specific manipulation (Sec. 4)
# ---------------------------------------------------------------------------------------------


def test_confined_manipulation_leaves_everything_outside_its_mask_unchanged():
    torch.manual_seed(0)
    x, z = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    region = torch.zeros(2, 1, 16, 16)
    region[..., 2:6, :] = 1.0  # a1*: the "sleeves"
    attention = torch.rand(2, 1, 16, 16) + 0.01  # the colour change's own attention, 0 from row 12 on
    attention[..., 12:, :] = 0
    for where in ("sleeves", "torso"):
        out, mask = amgan.confine(region, z, attention, x, where)
        unchanged = (mask == 0).expand_as(x)
        assert torch.equal(out[unchanged], x[unchanged]) and (out[~unchanged] != x[~unchanged]).all()
        # sleeves: only rows 2-5 change; torso = a (1 - a1*): everything the colour change touches but the sleeves
        assert bool(unchanged[..., 2:6, :].all()) == (where == "torso")
        assert bool(unchanged[..., 6:12, :].any()) == (where == "sleeves")


def test_region_is_the_sleeveless_attention_cut_at_the_threshold():
    attrs = toy_attrs()
    a1 = torch.tensor([0.2, 0.89, 0.9, 0.97]).view(1, 1, 2, 2)
    calls = []

    def fake_manipulator(x, labels, target, group):
        calls.append((target.tolist(), group))
        return amgan.Manipulation(x, a1, x, a1)

    regions = amgan.RegionManipulator(attrs, fake_manipulator, "sleeve=sleeveless", 0.9)
    region = regions.region(torch.zeros(1, 3, 2, 2), torch.tensor([[1, 2, 0, 1]]))
    assert region.flatten().tolist() == pytest.approx([0, 0, 0.9, 0.97])
    assert calls == [([[1, 0, 0, 1]], 1)]  # the sleeve -> sleeveless manipulation


# ---------------------------------------------------------------------------------------------
# End to end on toy-attr
# ---------------------------------------------------------------------------------------------


def read_log(out):
    with open(os.path.join(out, "log.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, data_root):
    """One tiny attribute CNN for the module (--phase classifier)."""
    out = str(tmp_path_factory.mktemp("amgan_cls"))
    amgan.main(["--phase", "classifier", "--out", out, "--data_root", data_root, *TINY])
    return os.path.join(out, "classifier.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root, classifier):
    out = str(tmp_path_factory.mktemp("amgan_run"))
    amgan.main(["--iters", "10", "--out", out, "--data_root", data_root, "--classifier", classifier, *TINY])
    return out


def test_classifier_phase_saves_a_cnn_with_a_head_per_group(classifier):
    state = torch.load(classifier, weights_only=True)
    assert state["arch"] == "toy" and state["head_sizes"] == [5, 3, 2, 2] and set(state["accuracy"]) == set(common.TOY_ATTRS)


def test_train_logs_every_term_and_draws_the_grid(trained):
    rows = read_log(trained)
    assert [r["step"] for r in rows] == ["5", "10"]
    for key in ("d_adv_image", "d_adv_crop", "d_cls", "d_gp", "g_adv", "g_cls", "g_cycle", "g_attention", "g_perceptual"):
        assert np.isfinite(float(rows[-1][key])), key
    assert float(rows[-1]["g_attention"]) > 0 and float(rows[-1]["g_perceptual"]) > 0
    grid = Image.open(os.path.join(trained, "samples", "step_0000010.png"))
    assert grid.size == ((1 + 2 * 8) * 34 + 2, 4 * 34 + 2)  # input + (attention, output) x 8 manipulations


def test_test_phase_writes_targets_regions_and_input_images(trained, data_root, tmp_path):
    amgan.main(["--phase", "test", "--out", trained, "--data_root", data_root, "--target", "color=red", "--workers", "0"])
    files = os.listdir(os.path.join(trained, "test"))
    assert "00003_color=red.png" in files and "00003_color=red_attention.png" in files
    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(2):
        image = common.toy_render("toy-attr", "test", i, 48)["image"]
        Image.fromarray(((image.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)).save(folder / f"shirt{i}.png")
    amgan.main(["--phase", "test", "--out", trained, "--data_root", data_root, "--input", str(folder), "--target",
                "color=blue", "--region", "sleeves", "--workers", "0"])
    assert "shirt1_color=blue.png" in os.listdir(os.path.join(trained, "test"))


def test_eval_phase_writes_the_attribute_and_region_metrics(trained, data_root, monkeypatch):
    # an untrained judge: the keys are under test here, not the numbers
    monkeypatch.setattr(common, "load_toy_judge", lambda *a, **k: (common.ToyJudge("toy-attr").eval(), 1.0))
    amgan.main(["--phase", "eval", "--out", trained, "--data_root", data_root, "--workers", "0"])
    metrics = json.load(open(os.path.join(trained, "metrics.json")))
    for group in ("color", "sleeve", "mean"):
        for key in ("attribute_accuracy", "kept_accuracy", "preserve_psnr_db", "attention_iou", "retrieval_top30"):
            assert 0 <= metrics[group][key] <= (100 if key == "preserve_psnr_db" else 1), (group, key)
    region = metrics["region"]
    assert set(region) == {"sleeve_colour_change_in_sleeves", "plain_colour_change_in_sleeves",
                           "torso_colour_change_in_torso", "plain_colour_change_in_torso"}
    assert all(0 <= v <= 1 for v in region.values())


def test_resume_gives_identical_weights(tmp_path, data_root, classifier):
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    argv = ["--iters", "10", "--data_root", data_root, "--classifier", classifier, *TINY]
    amgan.main(["--out", full, *argv])
    amgan.main(["--out", split, "--stop_at", "5", *argv])
    amgan.main(["--out", split, "--resume", "--data_root", data_root, "--workers", "0"])
    a, _ = same_checkpoint_weights(os.path.join(full, "ckpt.pt"), os.path.join(split, "ckpt.pt"))
    assert a["step"] == 10


# ---------------------------------------------------------------------------------------------
# Ablation flags
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, absent", [(["--no_dc"], "d_adv_crop"), (["--no_perceptual"], "g_perceptual"),
                                           (["--no_attention_loss"], "g_attention"), (["--cam_as_mask"], "g_attention"),
                                           (["--perceptual", "conv5+avgpool"], None)])
def test_each_ablation_flag_removes_its_part(tmp_path, data_root, classifier, flags, absent):
    out = str(tmp_path / "run")
    amgan.main(["--iters", "5", "--out", out, "--data_root", data_root, "--classifier", classifier, *TINY, *flags])
    row = read_log(out)[-1]
    assert absent not in row
    # L_G = L_adv + lambda_cls L_cls + lambda_cyc L_cyc + lambda_a L_a + lambda_p L_p over the terms that are left
    # the toy preset uses the avg-pool layer only, with the paper's weight for it; conv5 + avg-pool: 20
    lambda_p = 20 if "conv5+avgpool" in flags else 10
    assert json.load(open(os.path.join(out, "args.json")))["lambda_p"] == lambda_p
    weights = {"g_adv": 1, "g_cls": 1, "g_cycle": 10, "g_attention": 10, "g_perceptual": lambda_p}
    total = sum(w * float(row[k]) for k, w in weights.items() if k in row)
    assert float(row["g_loss"]) == pytest.approx(total, rel=1e-3)
    models = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["models"]
    assert ("disc_crop" in models) == ("--no_dc" not in flags)


def test_cam_as_mask_uses_the_cnn_map_instead_of_the_attention_head():
    torch.manual_seed(0)
    attrs = toy_attrs()
    gen, cnn = amgan.Generator(10, 4, 1), amgan.AttributeCNN("toy", [5, 3, 2, 2]).eval()
    x, labels = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([[0, 2, 0, 0], [4, 0, 1, 1]])
    target = attrs.set_value(labels, 0, 1)
    manipulator = amgan.Manipulator(attrs, gen, cnn, cam_as_mask=True)
    out, mask, content, _ = manipulator(x, labels, target, 0)
    cam = manipulator.cam(x, labels, 0)
    assert torch.equal(mask, cam) and torch.allclose(out, cam * content + (1 - cam) * x)
    with torch.no_grad():
        gen.attention_head[0].weight.normal_()  # G's own attention does not matter any more
    assert torch.allclose(manipulator(x, labels, target, 0)[0], out)


def test_without_attention_and_perceptual_losses_no_cnn_is_trained(tmp_path, data_root):
    out = str(tmp_path / "run")
    amgan.main(["--iters", "5", "--out", out, "--data_root", data_root, "--no_attention_loss", "--no_perceptual", *TINY])
    assert not os.path.exists(os.path.join(out, "classifier.pt")) and os.path.exists(os.path.join(out, "ckpt.pt"))


# ---------------------------------------------------------------------------------------------
# Bad input and bench
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--phase", "test", "--target", "color=purple"], "'color=purple' is not a value"),
    (["--phase", "test", "--target", "collar=round"], "'collar=round' is not a value"),
    (["--phase", "test", "--region", "sleeves"], "with --target"),
    (["--phase", "test", "--target", "sleeve=long", "--region", "torso"], "changes sleeve itself"),
])
def test_bad_test_arguments_exit_2(trained, argv, message):
    r = run_main("amgan.py", "--out", trained, "--workers", "0", *argv)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_bad_sizes_exit_2(tmp_path):
    r = run_main("amgan.py", "--out", str(tmp_path / "x"), "--img_size", "40")
    assert r.returncode == 2 and "multiple of 2^d_layers" in r.stderr and "Traceback" not in r.stderr


def test_bench_prints_one_json_line(tmp_path, data_root, capsys):
    amgan.main(["--phase", "bench", "--out", str(tmp_path / "b"), "--data_root", data_root, *TINY])
    result = json.loads([l for l in capsys.readouterr().out.splitlines() if l.startswith("{")][-1])
    assert result["img_size"] == 32 and result["it_s"] > 0


@pytest.mark.slow
def test_two_process_data_parallel(tmp_path, data_root):
    """gloo on CPU, both discriminators and their penalties all-reduced; the attribute CNN is trained
    first (ranks do not train it themselves)."""
    classifier = str(tmp_path / "classifier.pt")
    amgan.main(["--phase", "classifier", "--out", str(tmp_path / "cnn"), "--classifier", classifier,
                "--data_root", data_root, *TINY])
    run_two_processes("amgan.py", ["--iters", "5", "--classifier", classifier, "--data_root", data_root, *TINY], tmp_path)
