"""Tests of the embedded toy datasets and the toy judge (common.py)."""
import math
import pathlib
import sys
import time

import pytest
import torch

import common
from common import TOY_ATTRS, TOY_NAMES, TOY_SPLIT_SIZES, ToyDataset, ToyJudge, load_toy_judge, toy_render

TWO_DOMAIN = [("toy", "A"), ("toy", "B"), ("toy-shape", "A"), ("toy-shape", "B")]
ALL = TWO_DOMAIN + [("toy-attr", None)]


def drawn(sample):
    """Pixels where the image differs from the background: (S, S) bool."""
    return (sample["image"] != sample["background"]).any(0)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("domain", ["A", "B"])
def test_toy_ellipse_masks_match_drawing(size, domain):
    for index in range(6):
        s = toy_render("toy", "train", index, size, domain)
        mask = s["mask"][0].bool()
        assert torch.equal(s["image"][:, ~mask], s["background"][:, ~mask])
        inside = s["image"][:, mask]  # (3, n)
        if domain == "B":
            # Black-and-white stripes: every pixel is (-1,-1,-1) or (1,1,1), and both appear.
            white = (inside == 1).all(0)
            black = (inside == -1).all(0)
            assert (white | black).all()
            assert white.any() and black.any()
        else:
            assert (drawn(s) & mask).float().sum() >= 0.9 * mask.sum()
            # One hue: all inside colours (in [0, 1]) point in the same RGB direction.
            rgb = (inside + 1) / 2
            unit = rgb / rgb.norm(dim=0, keepdim=True)
            cosine = (unit * unit.mean(1, keepdim=True)).sum(0) / unit.mean(1).norm()
            assert cosine.min() > 0.999
            assert not ((inside == 1).all(0) | (inside == -1).all(0)).any()  # no stripe colours


@pytest.mark.parametrize("size", [32, 64])
def test_toy_shape_objects_inside_mask(size):
    for index in range(6):
        for domain in "AB":
            s = toy_render("toy-shape", "test", index, size, domain)
            mask, obj = s["mask"][0].bool(), drawn(s)
            assert not (obj & ~mask).any()
            # The mask is a filled axis-aligned square of side 2r (up to a pixel of rounding).
            rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
            assert mask.sum() == len(rows) * len(cols) and abs(len(rows) - len(cols)) <= 1
            r = (len(rows) + len(cols)) / 4
            cy, cx = rows.float().mean() + 0.5, cols.float().mean() + 0.5
            # Area pi r^2 in both domains, up to rasterisation (a 1-px ring is ~15% at r = 5 px).
            assert abs(obj.sum() / (math.pi * r**2) - 1) < 0.15
            yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
            if domain == "A":  # a disc: contains the disc of radius r-1, nothing beyond r+1
                dist = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
                assert obj[dist <= r - 1].all()
                assert not obj[dist > r + 1].any()
            else:  # an axis-aligned square of side r*sqrt(pi), centred
                o_rows, o_cols = obj.any(1).nonzero()[:, 0], obj.any(0).nonzero()[:, 0]
                assert obj.sum() == len(o_rows) * len(o_cols)  # fills its bounding box
                assert abs(len(o_rows) - r * math.sqrt(math.pi)) <= 1.5
                assert abs(len(o_cols) - len(o_rows)) <= 1
                assert abs(o_rows.float().mean() + 0.5 - cy) <= 1


def test_toy_attr_masks_colours_and_labels():
    size = 64
    seen = set()
    for index in range(60):
        s = toy_render("toy-attr", "train", index, size)
        colour, sleeve, shirt_size, bg = s["labels"].tolist()
        seen.update({(0, colour), (1, sleeve), (2, shirt_size), (3, bg)})
        shirt, torso, sleeves = (s[k][0].bool() for k in ("mask", "mask_torso", "mask_sleeves"))
        assert torch.equal(drawn(s), shirt)  # drawn exactly where the mask says
        assert not (torso & ~shirt).any()
        sleeve_pixels = shirt & ~torso
        assert not (sleeve_pixels & ~sleeves).any()  # drawn sleeves lie in the long-sleeve extent
        covered = (sleeve_pixels & sleeves).sum() / sleeves.sum()
        if TOY_ATTRS["sleeve"][sleeve] == "sleeveless":
            assert sleeve_pixels.sum() == 0
        elif TOY_ATTRS["sleeve"][sleeve] == "short":
            assert 0.15 < covered < 0.6
        else:
            assert covered > 0.9
        # Torso area: ~0.59 h^2 with h = 0.38-0.42 S (small) or 0.56-0.62 S (large).
        assert (torso.float().mean() > 0.14) == (TOY_ATTRS["size"][shirt_size] == "large")
        # The background is one uniform colour exactly when bg is plain.
        flat = s["background"].flatten(1)
        is_plain = bool((flat == flat[:, :1]).all())
        assert is_plain == (TOY_ATTRS["bg"][bg] == "plain")
        # The shirt has the labelled colour.
        r, g, b = ((s["image"][:, shirt] + 1) / 2).mean(1).tolist()
        name = TOY_ATTRS["color"][colour]
        if name == "red":
            assert r > g + 0.4 and r > b + 0.4
        elif name == "green":
            assert g > r + 0.3 and g > b + 0.3
        elif name == "blue":
            assert b > r + 0.4 and b > g + 0.3
        elif name == "yellow":
            assert min(r, g) > b + 0.4
        else:
            assert min(r, g, b) > 0.8 and max(r, g, b) - min(r, g, b) < 0.1
    assert len(seen) == sum(len(v) for v in TOY_ATTRS.values())  # every value occurs


@pytest.mark.parametrize("name,domain", ALL)
def test_toy_masks_are_nontrivial(name, domain):
    for index in range(50):
        s = toy_render(name, "train", index, 48, domain)
        assert s["image"].shape == s["background"].shape == (3, 48, 48)
        assert s["mask"].shape == (1, 48, 48) and s["mask"].dtype == torch.float32
        assert set(s["mask"].unique().tolist()) == {0.0, 1.0}
        assert 0.03 <= s["mask"].mean() <= 0.5
        assert s["image"].min() >= -1 and s["image"].max() <= 1


@pytest.mark.parametrize("name,domain", ALL)
def test_toy_render_is_deterministic_and_varies(name, domain):
    a = toy_render(name, "train", 3, 32, domain, seed=0)
    b = toy_render(name, "train", 3, 32, domain, seed=0)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    others = [toy_render(name, "train", 4, 32, domain, seed=0),
              toy_render(name, "test", 3, 32, domain, seed=0),
              toy_render(name, "train", 3, 32, domain, seed=1)]
    if domain is not None:
        others.append(toy_render(name, "train", 3, 32, "B" if domain == "A" else "A", seed=0))
    for other in others:
        assert not torch.equal(a["image"], other["image"])


def test_toy_dataset():
    ds = ToyDataset("toy-attr", "test", 32)
    assert len(ds) == TOY_SPLIT_SIZES["test"]
    item = ds[5]
    assert set(item) == {"image", "mask", "mask_torso", "mask_sleeves", "labels", "name", "skipped"}
    assert item["labels"].dtype == torch.long and item["labels"].shape == (4,)
    assert torch.equal(item["image"], toy_render("toy-attr", "test", 5, 32)["image"])
    with pytest.raises(IndexError):
        ds[len(ds)]
    ds_b = ToyDataset("toy", "train", 32, domain="B")
    assert len(ds_b) == TOY_SPLIT_SIZES["train"] and set(ds_b[0]) == {"image", "mask", "name", "skipped"}


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_render_speed(name):
    domain = None if name == "toy-attr" else "B"
    toy_render(name, "train", 0, 64, domain)  # warm-up
    start = time.perf_counter()
    for index in range(200):
        toy_render(name, "train", index, 64, domain)
    assert time.perf_counter() - start < 1.0


def test_toy_judge_shapes():
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    logits = ToyJudge("toy-attr").eval()(x)
    assert [tuple(l.shape) for l in logits] == [(5, 5), (5, 3), (5, 2), (5, 2)]
    judge = ToyJudge("toy").eval()
    assert [tuple(l.shape) for l in judge(x)] == [(5, 2)]
    assert judge.features(torch.zeros(3, 3, 40, 40)).shape == (3, 64)


@pytest.fixture(scope="module")
def judges(data_root):
    """Each judge at 32 px through the real cache of the session's data root: the full judges in the slow tier, the
    fast tier's short-trained ones otherwise."""
    return pathlib.Path(data_root), {name: load_toy_judge(name, 32, data_root) for name in TOY_NAMES}


@pytest.mark.slow
@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_judge_accuracy(judges, name):
    """The full judge (200-500 steps) reads real toy test images right at least 95% of the time, per direction or
    attribute."""
    root, trained = judges
    judge, accuracy = trained[name]
    assert accuracy >= 0.95
    assert not judge.training
    domains = [None] if name == "toy-attr" else ["A", "B"]
    for k, domain in enumerate(domains):  # each domain, or each attribute group, on its own
        items = [toy_render(name, "test", i, 32, domain) for i in range(TOY_SPLIT_SIZES["test"])]
        with torch.no_grad():
            logits = judge(torch.stack([item["image"] for item in items]))
        if name == "toy-attr":
            labels = torch.stack([item["labels"] for item in items])
            per_group = [(l.argmax(1) == labels[:, g]).float().mean().item() for g, l in enumerate(logits)]
            assert min(per_group) >= 0.95, per_group
        else:
            assert (logits[0].argmax(1) == k).float().mean().item() >= 0.95, domain
    assert (root / ".toy_judge" / f"{name}_32px_v{common.TOY_VERSION}.pt").is_file()


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_judge_is_cached(judges, name, monkeypatch, capsys):
    root, trained = judges
    judge, accuracy = trained[name]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached judge was retrained")

    # load_toy_judge looks train_toy_judge up in the module that defines it.
    monkeypatch.setattr(sys.modules[load_toy_judge.__module__], "train_toy_judge", no_training)
    again, accuracy_again = load_toy_judge(name, 32, str(root))
    assert accuracy_again == accuracy
    assert "training" not in capsys.readouterr().out
    x = torch.stack([toy_render(name, "test", i, 32, None if name == "toy-attr" else "A")["image"]
                     for i in range(4)])
    with torch.no_grad():
        for a, b in zip(judge(x), again(x)):
            assert torch.equal(a, b)
        assert torch.equal(judge.features(x), again.features(x))
        assert again.features(x).shape == (4, 64)
