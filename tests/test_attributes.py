"""common.py's attribute data (CelebA and labels.csv readers, toy-attr, AttributeSet), and the StarGAN
networks and losses that amgan.py and camconsistency.py each hold."""
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import amgan
import camconsistency
import common
from conftest import count_params

NAMES = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]


def write_celeba(root, rows, names=NAMES, count=None):
    """list_attr_celeba.txt in CelebA's format (irregular spaces, values 1/-1)."""
    lines = [str(len(rows) if count is None else count), " ".join(names)]
    lines += [f"{f}  " + " ".join(f"{v:2d}" for v in values) for f, values in rows]
    (root / common.CELEBA_ATTR_FILE).write_text("\n".join(lines) + "\n")


def read_split(root, split, attrs=None):
    """common.attribute_data on the dataset folder `root` at 32 px."""
    return common.attribute_data(str(root), "unused", 32, attrs, split)


# ---------------------------------------------------------------------------------------------
# CelebA
# ---------------------------------------------------------------------------------------------


def test_celeba_reader_parses_irregular_spaces_into_zero_one_labels(tmp_path):
    write_celeba(tmp_path, [("000001.jpg", [1, -1, -1, 1, 1]), ("000002.jpg", [-1, 1, -1, -1, 1])])
    names, files, labels = common.read_celeba_attributes(tmp_path / common.CELEBA_ATTR_FILE)
    assert names == NAMES and files == ["000001.jpg", "000002.jpg"]
    assert labels.tolist() == [[1, 0, 0, 1, 1], [0, 1, 0, 0, 1]]


@pytest.mark.parametrize("mutate, where", [
    (lambda t: t.replace("000002.jpg   1", "000002.jpg   2", 1), "line 4: value '2' of Black_Hair"),
    (lambda t: t.replace(" -1\n000002", "\n000002", 1), "line 3: expected a file name and 5 values, got 4"),
    (lambda t: "3" + t[1:], "line 1: says 3 images, but the file lists 2"),
    (lambda t: "x" + t[1:], "line 1: expected the number of images"),
])
def test_celeba_reader_names_file_and_line_of_a_malformed_file(tmp_path, mutate, where):
    write_celeba(tmp_path, [("000001.jpg", [1, -1, -1, 1, -1]), ("000002.jpg", [1, 1, -1, -1, 1])])
    path = tmp_path / common.CELEBA_ATTR_FILE
    path.write_text(mutate(path.read_text()))
    with pytest.raises(common.UserError) as e:
        common.read_celeba_attributes(path)
    assert str(path) in str(e.value) and where in str(e.value)


def test_celeba_split_is_stargans_seeded_shuffle_with_2000_test_images(tmp_path):
    n = 2006
    rows = [(f"{i:06d}.jpg", [1 if (i >> k) & 1 else -1 for k in range(5)]) for i in range(n)]
    write_celeba(tmp_path, rows)
    (tmp_path / "img_align_celeba").mkdir()
    lines = list(range(n))
    random.seed(1234)
    random.shuffle(lines)  # StarGAN: random.seed(1234); random.shuffle(lines); the first ones are the test split
    attrs, test = read_split(tmp_path, "test")
    _, train = read_split(tmp_path, "train")
    assert len(test) == 2000 and len(train) == 6
    assert [f.split("/")[-1] for f in train.files] == [rows[i][0] for i in lines[2000:]]
    expected = torch.tensor([[1 if (i >> k) & 1 else 0 for k in range(5)] for i in lines[2000:]])
    assert torch.equal(train.labels, expected)
    assert attrs.binary == [True] * 5 and attrs.c_dim == 5 and [attrs.names[g] for g in attrs.manipulated] == NAMES


def test_celeba_images_get_stargans_preprocessing(tmp_path):
    write_celeba(tmp_path, [(f"{i}.png", [1, -1, -1, 1, 1]) for i in range(2004)])
    (tmp_path / "img_align_celeba").mkdir()
    _, train = read_split(tmp_path, "train")
    # a CelebA-sized image (178 x 218): red top 20 rows, which CenterCrop(178) removes, then grey
    im = Image.new("RGB", (178, 218), (128, 128, 128))
    im.paste((255, 0, 0), (0, 0, 178, 20))
    for f in train.files:
        im.convert("P").save(f) if f.endswith("0.png") else im.save(f)  # palette images are converted to RGB
    item = train[(0, 1)]
    assert item["image"].shape == (3, 32, 32) and torch.equal(item["labels"], torch.tensor([1, 0, 0, 1, 1]))
    assert item["image"][0].max() < 0.1  # no red left


def test_unknown_attribute_and_missing_files_are_clear_errors(tmp_path):
    write_celeba(tmp_path, [("1.jpg", [1, -1, -1, 1, 1])] * 3)
    with pytest.raises(common.UserError, match="img_align_celeba"):
        read_split(tmp_path, "train")
    (tmp_path / "img_align_celeba").mkdir()
    with pytest.raises(common.UserError, match="unknown attribute Bald_ish; this dataset has Black_Hair"):
        read_split(tmp_path, "train", "Male,Bald_ish")
    with pytest.raises(common.UserError, match="neither list_attr_celeba.txt nor labels.csv"):
        read_split(tmp_path / "img_align_celeba", "train")


# ---------------------------------------------------------------------------------------------
# labels.csv
# ---------------------------------------------------------------------------------------------


def test_labels_csv_reader_makes_sorted_categorical_groups(tmp_path):
    (tmp_path / "labels.csv").write_text("filename,color,sleeve\na.jpg,red,long\nb.jpg, blue ,short\n\nc.jpg,red,short\n")
    names, values, files, labels = common.read_labels_csv(tmp_path / "labels.csv")
    assert names == ["color", "sleeve"] and values == [["blue", "red"], ["long", "short"]]
    assert files == ["a.jpg", "b.jpg", "c.jpg"] and labels.tolist() == [[1, 0], [0, 1], [1, 1]]


@pytest.mark.parametrize("text, where", [
    ("file,color\na.jpg,red\n", "line 1: expected the header"),
    ("filename,color,sleeve\na.jpg,red,long\nb.jpg,red\n", "line 3: expected 3 cells"),
    ("filename,color,sleeve\na.jpg,red,long\nb.jpg,,long\n", "line 3: empty cell (color)"),
    ("filename,color,color\na.jpg,red,long\n", "line 1: attribute names must be unique"),
    ("filename,color\n", "lists no images"),
])
def test_labels_csv_reader_names_file_and_line_of_a_malformed_file(tmp_path, text, where):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(common.UserError) as e:
        common.read_labels_csv(tmp_path / "labels.csv")
    assert str(tmp_path / "labels.csv") in str(e.value) and where in str(e.value)


def test_labels_csv_dataset_splits_a_tenth_for_testing_and_selects_attrs(tmp_path):
    rows = [f"{i}.png,{['red', 'blue', 'green'][i % 3]},{['long', 'short'][i % 2]},{['tee', 'shirt'][i % 2]}" for i in range(30)]
    (tmp_path / "labels.csv").write_text("filename,color,sleeve,category\n" + "\n".join(rows) + "\n")
    (tmp_path / "images").mkdir()
    attrs, test = read_split(tmp_path, "test", "sleeve,color")
    _, train = read_split(tmp_path, "train", "sleeve,color")
    assert len(test) == 3 and len(train) == 27 and not set(test.files) & set(train.files)
    assert attrs.names == ["color", "sleeve", "category"] and attrs.manipulated == [1, 0]
    assert attrs.c_dim == 2 + 3 and attrs.slices == {1: slice(0, 2), 0: slice(2, 5)}


# ---------------------------------------------------------------------------------------------
# toy-attr and AttributeSet
# ---------------------------------------------------------------------------------------------


def test_toy_attr_labels_match_the_rendered_samples():
    labels = common.ToyDataset("toy-attr", "test", 32).labels
    assert labels.shape == (200, 4)
    for i in (0, 7, 199):
        assert torch.equal(labels[i], common.toy_render("toy-attr", "test", i, 32)["labels"])
    ds = common.ToyDataset("toy-attr", "train", 32)
    item = ds[(5, 123)]
    assert torch.equal(item["labels"], ds.labels[5]) and item["mask_sleeves"].shape == (1, 32, 32)


def test_attribute_set_vectors_changes_and_targets():
    attrs = common.select_attributes(["color", "sleeve", "size"], [["r", "g", "b"], ["none", "long"], ["s", "l"]],
                                     [False] * 3, "color,sleeve", None)
    labels = torch.tensor([[2, 1, 0], [0, 0, 1]])
    assert attrs.vector(labels).tolist() == [[0, 0, 1, 0, 1], [1, 0, 0, 1, 0]]
    changes = list(attrs.changes(labels))
    assert [(g, v) for g, v, _, _ in changes] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    g, v, target, valid = changes[2]
    assert target.tolist() == [[2, 1, 0], [2, 0, 1]] and valid.tolist() == [False, True]
    assert attrs.parse_target("sleeve=long,color=g") == [(1, 1), (0, 1)]
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0, -1.0]])
    assert camconsistency.labels_from_logits(attrs, logits).tolist() == [[1, 0, 0]]
    for bad, message in (("size=l", "'size=l' is not a value"), ("color=purple", "'color=purple' is not"), (",", "nothing")):
        with pytest.raises(common.UserError, match=message):
            attrs.parse_target(bad)


def test_celeba_hair_colours_stay_exclusive_and_binary_changes_set_each_value():
    attrs = common.select_attributes(NAMES, [["0", "1"]] * 5, [True] * 5, None, NAMES, exclusive_names=common.CELEBA_HAIR)
    labels = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 1]])
    assert attrs.set_value(labels, 1, 1).tolist() == [[0, 1, 0, 1, 0], [0, 1, 0, 0, 1]]
    assert attrs.set_value(labels, 3, 0).tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
    changes = list(attrs.changes(labels))  # both values of each binary attribute
    assert len(changes) == 10 and changes[1][2].tolist() == [[1, 0, 0, 1, 0], [1, 0, 0, 0, 1]]
    assert changes[1][3].tolist() == [False, True]


# ---------------------------------------------------------------------------------------------
# StarGAN building blocks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [camconsistency, amgan])
def test_stargan_parameter_counts_equal_official(script):
    with torch.device("meta"):
        gen = camconsistency.Generator(5, 64, 6) if script is camconsistency else amgan.Generator(5, 64, 6)
        head = 7 * 7 * 64 if script is amgan else 0  # AMGAN's attention head, conv7 64 -> 1
        assert count_params(gen) - head == 8_430_528
        assert count_params(script.Discriminator(128, 64, 5, 6)) == 44_762_048


def test_star_discriminator_shapes_and_feature_layer():
    disc = camconsistency.Discriminator(64, 4, 7, 5)
    src, cls, feature = disc(torch.randn(2, 3, 64, 64), feature_layer=3)
    assert src.shape == (2, 1, 2, 2) and cls.shape == (2, 7) and feature.shape == (2, 16, 8, 8)
    assert torch.equal(disc(torch.zeros(1, 3, 64, 64))[1], disc(torch.zeros(1, 3, 64, 64), feature_layer=1)[1])


class LinearCritic(nn.Module):
    """D_src(x) = sum(w * x): its input gradient is w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return ((x * self.w).sum(dim=(1, 2, 3)),)


@pytest.mark.parametrize("script", [camconsistency, amgan])
def test_gradient_penalty_of_a_linear_critic_is_its_closed_form(script):
    w = torch.full((3, 4, 4), 0.5)  # ||w|| = 0.5 * sqrt(48)
    penalty = script.gradient_penalty(LinearCritic(w), torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4))
    assert penalty.item() == pytest.approx((0.5 * 48 ** 0.5 - 1) ** 2, rel=1e-5)
    critic = LinearCritic(w)
    script.gradient_penalty(critic, torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)).backward()
    assert critic.w.grad is not None and critic.w.grad.abs().sum() > 0  # differentiable in D (create_graph)


@pytest.mark.parametrize("script", [camconsistency, amgan])
def test_classification_loss_is_bce_summed_over_binary_attributes_and_ce_per_group(script):
    binary = common.select_attributes(NAMES[:3], [["0", "1"]] * 3, [True] * 3, None, NAMES[:3])
    logits, labels = torch.randn(4, 3), torch.randint(0, 2, (4, 3))
    expected = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum") / 4  # StarGAN's CelebA loss
    assert script.classification_loss(binary, logits, labels).item() == pytest.approx(expected.item())
    groups = common.select_attributes(["a", "b"], [["x", "y", "z"], ["u", "v"]], [False, False], None, ["a", "b"])
    logits, labels = torch.randn(4, 5), torch.tensor([[0, 1], [2, 0], [1, 1], [0, 0]])
    expected = F.cross_entropy(logits[:, :3], labels[:, 0]) + F.cross_entropy(logits[:, 3:], labels[:, 1])
    assert script.classification_loss(groups, logits, labels).item() == pytest.approx(expected.item())
