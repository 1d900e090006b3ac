"""tools/official.py on the authors' TensorFlow releases, checked against the official TF code itself. Each fixture in
tests/fixtures/tf_releases/ was written by the official model code (taki0112/UGATIT's UGATIT.generator for the two
U-GAT-IT generators, light and full; model.py's build_generator_resnet_9blocks and autoenc_upsample for UAG), run
under tf.compat.v1 with small shims for the tf.contrib layers and random weights at small sizes, and saved with its
own tf.train.Saver: model.ckpt.* in the V2 format, variables.json (every variable's dtype and shape), outputs.npz
(a fixed input x, NHWC, and the TF outputs). TensorFlow itself is not needed here."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import common
import uag
import ugatit
from conftest import ROOT, run_main

sys.path.insert(0, os.path.join(ROOT, "tools"))
import export as export_tool  # noqa: E402
import official  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tf_releases")


def fixture(name):
    """(the checkpoint prefix, the TF outputs) of a fixture."""
    return os.path.join(FIXTURES, name, "model.ckpt"), np.load(os.path.join(FIXTURES, name, "outputs.npz"))


def nchw(array):
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def close(ours, theirs, what):
    theirs = torch.as_tensor(theirs).reshape(ours.shape)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4), (what, float((ours - theirs).abs().max()))


@pytest.mark.parametrize("name", ["ugatit_light", "ugatit_full", "uag"])
def test_the_reader_gives_every_variable_with_its_dtype_and_shape(name):
    prefix, _ = fixture(name)
    tensors = official.read_tf_checkpoint(prefix)
    expected = json.load(open(os.path.join(FIXTURES, name, "variables.json")))
    assert set(tensors) == set(expected)
    for variable, described in expected.items():
        assert tensors[variable].dtype == np.dtype(described["dtype"]), variable
        assert list(tensors[variable].shape) == described["shape"], variable


@pytest.mark.parametrize("name, light", [("ugatit_light", True), ("ugatit_full", False)])
def test_ugatit_tf_release_computes_the_official_generators(name, light):
    """Image, CAM logits and heat map of both generators equal TF's: the --tf_release variant and the mapping (AdaLIN's
    smoothed rho, the full MLP's NHWC rows, the CAM's shared weight and bias) are the TF function."""
    prefix, tf = fixture(name)
    flags, states, step = official.ugatit_tf_release(prefix)
    assert (flags["ch"], flags["n_res"], flags["light"], flags["tf_release"]) == (4, 4, light, True) and step == 0
    assert flags.get("img_size") == (None if light else 32)
    for scope, ours in (("generator_B", "gen_a2b"), ("generator_A", "gen_b2a")):
        gen = ugatit.Generator(4, 4, 32, light, tf=True).eval()
        gen.load_state_dict(states[ours])
        with torch.no_grad():
            image, cam_logit, heatmap = gen(nchw(tf["x"]))
        close(image, nchw(tf[f"{scope}_out"]), (ours, "image"))
        close(cam_logit, tf[f"{scope}_cam_logit"], (ours, "cam_logit"))
        close(heatmap, tf[f"{scope}_heatmap"], (ours, "heatmap"))
    paper_variant = ugatit.Generator(4, 4, 32, light).eval()  # the PyTorch code's generator is another function
    assert set(paper_variant.state_dict()) != set(states["gen_a2b"])


def test_uag_tf_release_computes_the_official_generators_and_attention():
    """Both generators and both attention nets equal TF's, with --tf_release's 'SAME' padding and the 1x1 kernels
    the official code runs (--att_kernels official)."""
    prefix, tf = fixture("uag")
    flags, states, _ = official.uag_tf_release(prefix)
    assert flags == {"ngf": 4, "n_res": 9, "no_attention": False, "att_kernels": "official", "tf_release": True}
    for theirs, ours in (("g_A", "gen_a2b"), ("g_B", "gen_b2a")):
        gen = uag.Generator(4, 9, tf=True).eval()
        gen.load_state_dict(states[ours])
        with torch.no_grad():
            close(gen(nchw(tf["x"])), nchw(tf[f"{theirs}_out"]), ours)
    for theirs, ours in (("g_A_ae", "att_a"), ("g_B_ae", "att_b")):
        net = uag.AttentionNet(4, "official", tf=True).eval()
        net.load_state_dict(states[ours])
        with torch.no_grad():
            close(net(nchw(tf["x"])), nchw(tf[f"{theirs}_att"]), ours)
    # the same weights with PyTorch's CycleGAN padding (every stride-2 window one pixel off): another picture
    moved = {0: 0, 1: 1, 4: 3, 5: 4, 8: 6, 9: 7, 20: 18, 22: 19, 24: 21, 26: 22, 28: 24}
    moved.update({11 + k: 9 + k for k in range(9)})
    pytorch_padding = uag.Generator(4, 9).eval()
    pytorch_padding.load_state_dict({f"model.{moved[int(k.split('.')[1])]}.{k.split('.', 2)[2]}": v
                                     for k, v in states["gen_a2b"].items()})
    with torch.no_grad():
        assert (pytorch_padding(nchw(tf["x"])) - nchw(tf["g_A_out"])).abs().max() > 0.05


def test_a_converted_tf_release_tests_your_images_with_no_dataset_evaluates_and_exports(tmp_path, monkeypatch,
                                                                                        data_root):
    photo = tmp_path / "me.png"
    Image.new("RGB", (50, 40), (200, 120, 90)).save(photo)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for script, name, module in (("ugatit.py", "ugatit_full", ugatit), ("uag.py", "uag", uag)):
        out = str(tmp_path / name)
        folder = os.path.join(FIXTURES, name)  # a folder: its checkpoint is found
        small = ["--img_size", "32"] + (["--n_dis", "4"] if script == "ugatit.py" else [])  # the release: 256 px
        official.main([script, folder, "--out", out, "--data", "selfie2anime", "--data_root", str(tmp_path / "none"),
                       *small])
        state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
        assert state["args"]["tf_release"] and state["optimizers"] == {}
        assert not any(k.startswith("disc") for k in state["models"])  # the TF Ds are another architecture
        monkeypatch.chdir(elsewhere)
        module.main(["--phase", "test", "--out", out, "--input", str(photo), "--workers", "0"])
        assert sorted(os.listdir(os.path.join(out, "test", "a2b"))) == ["me.png", "me_attention.png"]
        assert Image.open(os.path.join(out, "test", "a2b", "me.png")).size == (32, 32)
        module.main(["--phase", "eval", "--out", out, "--data", "toy", "--data_root", data_root, "--workers", "0"])
        assert json.load(open(os.path.join(out, "metrics.json")))["a2b"]["images"] == 200  # the toy test split
        export = export_tool.export(script[:-3], out)
        assert os.path.isfile(os.path.join(export, "gen_a2b.pt2"))
        result = run_main(script, "--resume", "--out", out, "--iters", "5", "--data", "toy")  # toy: data at hand
        assert result.returncode == 2 and "and not disc" in result.stderr


def test_damaged_or_foreign_tf_files_exit_2_naming_the_file(tmp_path):
    def convert(script, path):
        result = run_main("tools/official.py", script, str(path), "--out", str(tmp_path / "run"))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert not os.path.exists(tmp_path / "run" / "ckpt.pt")
        return result.stderr

    def copy(name):
        folder = tmp_path / name
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(os.path.join(FIXTURES, name), folder)
        return folder / "model.ckpt"

    prefix = copy("ugatit_light")
    data = open(f"{prefix}.data-00000-of-00001", "rb").read()
    with open(f"{prefix}.data-00000-of-00001", "wb") as f:  # one byte of a weight flipped
        f.write(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    assert "fails its CRC32C" in convert("ugatit.py", prefix) and str(prefix) in convert("ugatit.py", prefix)
    os.remove(f"{prefix}.data-00000-of-00001")
    assert "does not exist" in convert("ugatit.py", prefix)
    prefix = copy("ugatit_light")
    index = open(f"{prefix}.index", "rb").read()
    with open(f"{prefix}.index", "wb") as f:
        f.write(index[:len(index) // 2])  # truncated
    assert "is not an SSTable" in convert("ugatit.py", f"{prefix}.index")
    (tmp_path / "random.index").write_bytes(os.urandom(300))
    assert "random.index is not an SSTable" in convert("ugatit.py", tmp_path / "random.index")
    assert "holds no generator_A/" in convert("ugatit.py", copy("uag"))  # another paper's release
    assert "holds no Model/g_A/" in convert("uag.py", copy("ugatit_light"))
    assert "is no TensorFlow checkpoint" in convert("uag.py", tmp_path / "missing")
    with pytest.raises(common.UserError, match="contradicts|drop --ch"):
        official.main(["ugatit.py", str(copy("ugatit_light")), "--out", str(tmp_path / "run"), "--ch", "8"])
