"""common.py: data loading, download, sampler, checkpoint, image pool, schedule, pictures."""
import argparse
import json
import os
import random
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import common


def write_images(folder, n, size=40, mode="RGB", start=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(n):
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
        im = im.convert(mode) if mode != "RGB" else im
        im.save(os.path.join(folder, f"img_{start + i}.png"))


def test_list_images_recursive_any_names(tmp_path):
    write_images(tmp_path / "a" / "deep", 2)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "Z.JPEG")
    found = common.list_images(str(tmp_path / "a"))
    assert len(found) == 3 and all(f.lower().endswith((".png", ".jpeg")) for f in found)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grey_rgba_palette_become_rgb(tmp_path, mode):
    write_images(tmp_path, 1, mode=mode)
    ds = common.ImageFiles(common.list_images(str(tmp_path)), 32, train=True, root=str(tmp_path))
    x = ds[(0, 123)]["image"]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_train_transform_is_reproducible_per_seed(tmp_path):
    write_images(tmp_path, 1, size=64)
    ds = common.ImageFiles(common.list_images(str(tmp_path)), 32, train=True)
    same = [torch.equal(ds[(0, s)]["image"], ds[(0, s)]["image"]) for s in range(5)]
    different = {ds[(0, s)]["image"].sum().item() for s in range(20)}
    assert all(same) and len(different) > 5  # random flip + crop vary with the seed


def test_corrupt_image_is_skipped_and_counted(tmp_path, capsys):
    write_images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    files = common.list_images(str(tmp_path))
    broken = files.index(str(tmp_path / "broken.png"))
    item = common.ImageFiles(files, 16, train=True)[broken]
    assert item["skipped"] == 1 and item["image"].shape == (3, 16, 16)
    assert "skipping unreadable image" in capsys.readouterr().err
    with pytest.raises(common.UserError, match="cannot read the image .*broken.png"):  # test time: never a neighbour
        common.ImageFiles(files, 16, train=False)[broken]


def test_unpaired_layout_both_styles_and_errors(tmp_path):
    root = str(tmp_path)
    write_images(tmp_path / "d" / "trainA", 2)
    write_images(tmp_path / "d" / "train" / "B", 3)
    assert len(common.domain_images("d", root, 16, "train", "A")) == 2
    assert len(common.domain_images("d", root, 16, "train", "B")) == 3
    os.makedirs(tmp_path / "d" / "testA")
    with pytest.raises(common.UserError, match="empty"):
        common.domain_images("d", root, 16, "test", "A")
    with pytest.raises(common.UserError, match="testB"):
        common.domain_images("d", root, 16, "test", "B")
    with pytest.raises(common.UserError, match="trainA,trainB,testA,testB"):
        common.domain_images("missing", root, 16, "train", "A")


def test_infinite_sampler_resumes_and_shards():
    full = common.shuffled_positions(7, seed=3)
    it = iter(full)
    stream = [next(it) for _ in range(30)]
    it2 = iter(common.shuffled_positions(7, seed=3, start=12))
    assert [next(it2) for _ in range(18)] == stream[12:]
    # each epoch is a permutation
    assert sorted(i for i, _ in stream[:7]) == list(range(7))
    # two ranks split one permutation per epoch between them
    r0, r1 = iter(common.shuffled_positions(8, 3, rank=0, world=2)), iter(common.shuffled_positions(8, 3, rank=1, world=2))
    a, b = [next(r0)[0] for _ in range(4)], [next(r1)[0] for _ in range(4)]
    assert sorted(a + b) == list(range(8))


def make_zip(path, name, top_folder):
    with zipfile.ZipFile(path, "w") as z:
        for split in ("trainA", "trainB", "testA", "testB"):
            im = Image.new("RGB", (8, 8), (10, 20, 30))
            tmp = str(path) + ".png"
            im.save(tmp)
            z.write(tmp, f"{name}/{split}/x.png" if top_folder else f"{split}/x.png")


@pytest.mark.parametrize("top_folder", [True, False])
def test_download_from_local_zip(tmp_path, top_folder):
    zip_path = tmp_path / "h2z.zip"
    make_zip(zip_path, "horse2zebra", top_folder)
    root = tmp_path / "dataset"
    target = common.download_dataset("horse2zebra", str(root), url=zip_path.as_uri())
    assert target == str(root / "horse2zebra")
    for split in ("trainA", "trainB", "testA", "testB"):
        assert os.path.exists(root / "horse2zebra" / split / "x.png")
    assert not [f for f in os.listdir(root) if f.endswith(".part")]
    # a second call finds the images and does not fetch again (the URL is now broken)
    assert common.download_dataset("horse2zebra", str(root), url=(tmp_path / "gone.zip").as_uri()) == target


def test_download_errors(tmp_path):
    with pytest.raises(common.UserError, match="1xOWj1UVgp6NKMT3HbPhBbtq2A4EDkghF"):
        common.download_dataset("selfie2anime", str(tmp_path))
    with pytest.raises(common.UserError, match="horse2zebra"):
        common.download_dataset("nope2nothing", str(tmp_path))
    with pytest.raises(common.UserError, match="could not download"):
        common.download_dataset("maps", str(tmp_path), url=(tmp_path / "missing.zip").as_uri())
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(common.UserError, match="did not give a zip"):
        common.download_dataset("facades", str(tmp_path), url=(tmp_path / "bad.zip").as_uri())


def test_linear_decay_matches_official_schedule():
    base, total = 1e-4, 10
    lr, official = [], base
    for step in range(1, total + 1):
        if step > total // 2:
            official -= base / (total // 2)  # UGATIT.py: lr -= lr0 / (iteration // 2) each step
        lr.append((common.linear_decay(step, base, total, total // 2), official))
    assert all(abs(a - b) < 1e-12 for a, b in lr) and lr[-1][0] == 0


def test_checkpoint_round_trip_and_rng(tmp_path):
    flags = {"lr": 0.1, "name": "x"}
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    common.seed_everything(5)
    path = str(tmp_path / "ckpt.pt")
    common.save_checkpoint(path, "ugatit", flags, 7, {"net": net}, {"opt": opt}, {"elapsed": 1.5})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(net2.parameters())
    common.seed_everything(99)
    state = common.load_checkpoint(path, "ugatit", {"net": net2}, {"opt": opt2})
    common.set_rng_state(state["rng"])  # a resumed run does this once its data streams exist
    assert state["step"] == 7 and state["extra"]["elapsed"] == 1.5 and state["args"]["lr"] == 0.1
    assert torch.equal(net.weight, net2.weight)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    with pytest.raises(common.UserError, match="not of attentiongan.py"):
        common.load_checkpoint(path, "attentiongan", {"net": net2})
    with pytest.raises(common.UserError, match="does not match this architecture"):
        common.load_checkpoint(path, "ugatit", {"net": torch.nn.Linear(3, 5)})
    other_version = torch.load(path, weights_only=True)
    other_version["version"] = common.CKPT_VERSION + 1
    torch.save(other_version, tmp_path / "v2.pt")
    with pytest.raises(common.UserError, match="another version of this project"):
        common.load_checkpoint(str(tmp_path / "v2.pt"), "ugatit", {"net": net2})
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(common.UserError, match="not a checkpoint of this project"):
        common.load_checkpoint(str(tmp_path / "junk.pt"), "ugatit", {"net": net2})


def test_jet_and_heat_overlay():
    x = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1)
    colours = common.jet(x).view(3, 3)
    assert colours[0].argmax() == 2 and colours[2].argmax() == 0  # low = blue, high = red
    assert colours[1][1] == 1.0  # middle = green-ish
    att = torch.zeros(1, 1, 4, 4)
    att[..., 0, 0] = 1
    img = torch.zeros(1, 3, 16, 16)
    over = common.heat_overlay(att, img)
    assert over.shape == (1, 3, 16, 16) and over.min() >= -1 and over.max() <= 1
    assert over[0, 0, 0, 0] > over[0, 0, 15, 15]  # hot corner is red-er


def test_presets_fill_flags_not_given_even_when_the_parser_sets_defaults(tmp_path):
    """A value from parser.set_defaults() is a default, not a flag given on the command line."""
    parser = argparse.ArgumentParser()
    common.add_common_flags(parser, "x")
    parser.set_defaults(lr=1e-4, img_size=128)
    presets = {"toy": {"lr": 2e-4, "img_size": 64}, "real": {}}
    args = common.parse_args(parser, ["--out", str(tmp_path / "a")], "x", presets, ())
    assert args.lr == 2e-4 and args.img_size == 64
    args = common.parse_args(parser, ["--out", str(tmp_path / "b"), "--lr", "1e-4"], "x", presets, ())
    assert args.lr == 1e-4 and args.img_size == 64


@pytest.mark.parametrize("script", ["ugatit", "attentiongan", "uag", "amgan", "camconsistency"])
def test_help_is_in_groups_shows_each_default_once_and_the_toy_values(script, capsys):
    import importlib
    with pytest.raises(SystemExit) as e:
        importlib.import_module(script).main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    groups = ["data:", "training:", "the paper's hyper-parameters and ablations:", "output and phases:"]
    assert [text.index(g) for g in groups] == sorted(text.index(g) for g in groups)
    flat = " ".join(text.split())  # argparse wraps lines
    assert "(default: None)" not in flat and "True" not in flat.split("output and phases:")[1]
    assert "--img_size IMG_SIZE image side in pixels (default: " in flat and "; on toy data: 64)" in flat
    assert flat.count("(default: results/") == 1 and flat.count("(default: <out>/ckpt.pt)") == 1
    for line in flat.split(" --")[1:]:  # one default per flag
        assert line.count("default:") <= 1, line


@pytest.mark.parametrize("name, expected", [
    ("horse2zebra", "--download horse2zebra fetches exactly this dataset"),
    ("selfie2anime", "selfie2anime is on Google Drive: download it from https://drive.google.com"),
    ("my_photos", "CycleGAN datasets: --download NAME (horse2zebra, apple2orange")])
def test_a_missing_dataset_says_how_to_get_that_one(tmp_path, name, expected):
    with pytest.raises(common.UserError) as e:
        common.domain_images(name, str(tmp_path), 32, "train", "A")
    assert expected in str(e.value) and f"{tmp_path}/{name}/{{trainA,trainB,testA,testB}}" in str(e.value)
    if name != "selfie2anime":
        assert "Google Drive" not in str(e.value)


def test_the_eval_table_uses_the_results_page_names_and_shows_a_spread_only_where_there_is_one(tmp_path, capsys):
    part = {"images": 200, "toy_kid_subsets_x100": [1.2345, 0.0], "toy_kid_blocks_x100": [1.5, 0.25],
            "attention_pointing": 0.9, "background_l1": 0.1, "translation_success": 1.0, "background_psnr_db": 20.5,
            "attention_iou": 0.4}
    common.write_metrics(str(tmp_path), {"data": "toy", "a2b": part, "b2a": {**part, "translation_success": 0.5}})
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(" | success | bg PSNR dB | attention IoU | pointing | toy-KID×100")
    assert lines[header + 1] == "a2b | 100% | 20.50 | 0.40 | 0.90 | 1.50 ± 0.25"
    assert lines[header + 2].startswith("b2a | 50% |")
    assert json.load(open(tmp_path / "metrics.json"))["a2b"] == part  # the file keeps every value
