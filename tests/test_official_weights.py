"""tools/official.py: the official codes' weight files become runs of our scripts. Each test writes a state dict in
the official layout (the official key names and shapes listed here layer by layer, random values), converts it,
and compares with the same tensors put under our names by this file's own table: the networks must give the same
outputs. The architecture is read off the shapes; a flag that contradicts the file, or a file of another layout,
exits 2 naming it."""
import argparse
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import attentiongan
import camconsistency
import common
import ugatit
from conftest import ROOT, run_main

sys.path.insert(0, os.path.join(ROOT, "tools"))
import official  # noqa: E402

class TwoLayouts:
    """One random tensor per layer, under its official name (`official`) and under our name (`ours`)."""

    def __init__(self, seed):
        self.official, self.ours = {}, {}
        self.gen = torch.Generator().manual_seed(seed)

    def put(self, official_name, our_name, shape, low=-0.2, high=0.2):
        value = torch.rand(shape, generator=self.gen) * (high - low) + low
        self.official[official_name] = value
        if our_name is not None:
            self.ours[our_name] = value


def same_outputs(a, b):
    if isinstance(a, torch.Tensor):
        return torch.allclose(a, b, atol=1e-6)
    return all(same_outputs(x, y) for x, y in zip(a, b) if x is not None)


def image_file(tmp_path, size=32):
    path = tmp_path / "mine.png"
    Image.new("RGB", (size, size), (200, 30, 60)).save(path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# U-GAT-IT: UGATIT.save's <dataset>_params_<step>.pt
# ---------------------------------------------------------------------------------------------


def ugatit_args(**changes):
    return SimpleNamespace(**{**dict(ch=8, n_res=2, img_size=32, light=True, n_dis=4, no_cam=False, no_gcam=False,
                                     no_dcam=False, norm="adalin", init="normal", tf_release=False), **changes})


def ugatit_official_generator(layouts, ch, n_res, img_size, light):
    """networks.ResnetGenerator: DownBlock (a Sequential), gap_fc, gmp_fc, conv1x1, FC, gamma, beta, UpBlock1_<i>,
    UpBlock2 (a Sequential)."""
    dim, put = 4 * ch, layouts.put
    put("DownBlock.1.weight", "encoder.1.weight", (ch, 3, 7, 7))
    put("DownBlock.5.weight", "encoder.5.weight", (2 * ch, ch, 3, 3))
    put("DownBlock.9.weight", "encoder.9.weight", (dim, 2 * ch, 3, 3))
    for i in range(n_res):
        put(f"DownBlock.{12 + i}.conv_block.1.weight", f"encoder.{12 + i}.block.1.weight", (dim, dim, 3, 3))
        put(f"DownBlock.{12 + i}.conv_block.5.weight", f"encoder.{12 + i}.block.5.weight", (dim, dim, 3, 3))
    put("gap_fc.weight", "gap_fc.weight", (1, dim))
    put("gmp_fc.weight", "gmp_fc.weight", (1, dim))
    put("conv1x1.weight", "conv1x1.weight", (dim, 2 * dim, 1, 1))
    put("conv1x1.bias", "conv1x1.bias", (dim,))
    put("FC.0.weight", "mlp.0.weight", (dim, dim if light else (img_size // 4) ** 2 * dim), -0.05, 0.05)
    put("FC.2.weight", "mlp.2.weight", (dim, dim))
    put("gamma.weight", "gamma.weight", (dim, dim))
    put("beta.weight", "beta.weight", (dim, dim))
    for i in range(n_res):
        for j in (1, 2):
            put(f"UpBlock1_{i + 1}.conv{j}.weight", f"res_blocks.{i}.conv{j}.weight", (dim, dim, 3, 3))
            put(f"UpBlock1_{i + 1}.norm{j}.rho", f"res_blocks.{i}.norm{j}.rho", (1, dim, 1, 1), 0, 1)
    for conv, norm, c_in in ((2, 3, dim), (7, 8, 2 * ch)):  # two [Upsample, pad, conv, ILN, ReLU]
        put(f"UpBlock2.{conv}.weight", f"upsample.{conv}.weight", (c_in // 2, c_in, 3, 3))
        put(f"UpBlock2.{norm}.rho", f"upsample.{norm}.rho", (1, c_in // 2, 1, 1), 0, 1)
        put(f"UpBlock2.{norm}.gamma", f"upsample.{norm}.gamma", (1, c_in // 2, 1, 1), 0.5, 1.5)
        put(f"UpBlock2.{norm}.beta", f"upsample.{norm}.beta", (1, c_in // 2, 1, 1))
    put("UpBlock2.11.weight", "upsample.11.weight", (3, ch, 7, 7))  # after [ReflectionPad]


def ugatit_official_discriminator(layouts, ch, n_layers):
    """networks.Discriminator with the legacy torch.nn.utils.spectral_norm: weight_orig, weight_u, weight_v."""
    def spectral(official, ours, shape):
        layouts.put(f"{official}.weight_orig", f"{ours}.parametrizations.weight.original", shape)
        layouts.put(f"{official}.weight_u", f"{ours}.parametrizations.weight.0._u", (shape[0],))
        n_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
        layouts.put(f"{official}.weight_v", f"{ours}.parametrizations.weight.0._v", (n_in,))

    chans = [3] + [ch * 2 ** i for i in range(n_layers - 1)]
    for k in range(n_layers - 1):  # model = [ReflectionPad, SN conv, LeakyReLU] per conv
        spectral(f"model.{3 * k + 1}", f"trunk.{3 * k + 1}", (chans[k + 1], chans[k], 4, 4))
        layouts.put(f"model.{3 * k + 1}.bias", f"trunk.{3 * k + 1}.bias", (chans[k + 1],))
    dim = chans[-1]
    spectral("gap_fc", "gap_fc", (1, dim))
    spectral("gmp_fc", "gmp_fc", (1, dim))
    layouts.put("conv1x1.weight", "conv1x1.weight", (dim, 2 * dim, 1, 1))
    layouts.put("conv1x1.bias", "conv1x1.bias", (dim,))
    spectral("conv", "classifier", (1, dim, 4, 4))


def ugatit_official_file(path, args, seed=0):
    """UGATIT.save: {genA2B, genB2A, disGA, disGB, disLA, disLB} -> our state dicts by network."""
    saved, ours = {}, {}
    for i, (theirs, mine) in enumerate({"genA2B": "gen_a2b", "genB2A": "gen_b2a", "disGA": "disc_global_a",
                                        "disGB": "disc_global_b", "disLA": "disc_local_a",
                                        "disLB": "disc_local_b"}.items()):
        layouts = TwoLayouts(seed + i)
        if theirs.startswith("gen"):
            ugatit_official_generator(layouts, args.ch, args.n_res, args.img_size, args.light)
        else:
            ugatit_official_discriminator(layouts, args.ch, args.n_dis + 1 if "G" in theirs else args.n_dis - 1)
        saved[theirs], ours[mine] = layouts.official, layouts.ours
    torch.save(saved, path)
    return ours


def networks_of(module, flags, states, base, *extra):
    """The script's networks built with `base` (a dict of flags) updated by the flags read off the file, loaded
    with the converted state dicts."""
    nets = module.build_networks(argparse.Namespace(**{**base, **flags}), *extra)
    for name, state in states.items():
        nets[name].load_state_dict(state)
    return nets


def assert_same_outputs(loaded, reference, ours, *inputs):
    for name, net in reference.items():
        net.load_state_dict(ours[name])
    with torch.no_grad():
        for name in reference:
            loaded[name].eval()
            reference[name].eval()
            assert same_outputs(loaded[name](*inputs), reference[name](*inputs)), name


@pytest.mark.parametrize("light", [True, False])
def test_ugatit_official_checkpoint_gives_the_outputs_of_the_same_weights_in_our_layout(tmp_path, light):
    args = ugatit_args(light=light)
    path = str(tmp_path / "toy_params_0001000.pt")
    ours = ugatit_official_file(path, args)
    flags, states, step = official.ugatit_release(path)
    assert step == 1000  # the step of the file name
    assert (flags["ch"], flags["n_res"], flags["light"], flags["n_dis"]) == (8, 2, light, 4)
    assert flags.get("img_size") == (None if light else 32)  # the full MLP's input gives the image size
    loaded = networks_of(ugatit, flags, states, vars(ugatit_args()))
    assert_same_outputs(loaded, ugatit.build_networks(args), ours, torch.rand(2, 3, 32, 32) * 2 - 1)


def test_ugatit_conversion_tests_own_images_with_no_flags_and_continues_at_the_file_step(tmp_path, data_root,
                                                                                          capsys, monkeypatch):
    path = str(tmp_path / "toy_params_0000003.pt")
    ugatit_official_file(path, ugatit_args())
    out = str(tmp_path / "run")
    official.main(["ugatit.py", path, "--out", out, "--data_root", data_root, "--img_size", "32"])
    state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert state["step"] == 3 and state["optimizers"] == {} and len(state["models"]) == 6
    assert (state["args"]["ch"], state["args"]["n_res"], state["args"]["light"]) == (8, 2, True)  # from the file
    elsewhere = tmp_path / "elsewhere"  # no dataset in sight, no network flag
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ugatit.main(["--phase", "test", "--out", out, "--input", image_file(tmp_path), "--workers", "0"])
    assert sorted(os.listdir(os.path.join(out, "test", "a2b"))) == ["mine.png", "mine_attention.png"]
    capsys.readouterr()
    ugatit.main(["--resume", "--iters", "5", "--out", out, "--sample_every", "0", "--log_every", "1", "--workers", "0",
                 "--data_root", data_root])
    assert "fresh Adam moments" in capsys.readouterr().out
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"] == 5
    assert [int(r.split(",")[0]) for r in open(os.path.join(out, "log.csv")).read().splitlines()[1:]] == [4, 5]
    with pytest.raises(common.UserError, match="already exists"):  # a conversion never overwrites a run
        official.main(["ugatit.py", path, "--out", out])
    with pytest.raises(common.UserError, match="drop --resume"):
        official.main(["ugatit.py", path, "--out", out, "--resume"])
    with pytest.raises(common.UserError, match="--out RUN"):
        official.main(["ugatit.py", path])


@pytest.mark.parametrize("changes, given, expected", [
    ({"n_res": 3}, ["--n_res", "2"], "--n_res 3"), ({"light": False}, ["--light"], "--no-light"),
    ({"ch": 16}, ["--ch", "8"], "--ch 16"), ({"n_dis": 5}, ["--n_dis", "4"], "--n_dis 5"),
    ({"light": False, "img_size": 64}, ["--img_size", "32"], "--img_size 64"), ({}, ["--no_cam"], "no --no_cam")])
def test_ugatit_flag_that_contradicts_the_file_exits_2_naming_it(tmp_path, changes, given, expected):
    path = str(tmp_path / "toy_params_0001000.pt")
    ugatit_official_file(path, ugatit_args(**changes))
    with pytest.raises(common.UserError, match=expected) as error:
        official.main(["ugatit.py", path, "--out", str(tmp_path / "run"), "--img_size", "64", *given])
    assert "drop --" in str(error.value) and "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "run" / "ckpt.pt")


def test_ugatit_file_of_another_layout_exits_2_quoting_the_keys(tmp_path):
    path = str(tmp_path / "toy_params_0001000.pt")
    ugatit_official_file(path, ugatit_args())
    params = torch.load(path, weights_only=True)
    del params["genA2B"]["gamma.weight"]
    torch.save(params, path)
    with pytest.raises(common.UserError, match="does not fit ugatit.py's networks .*gamma.weight"):
        official.main(["ugatit.py", path, "--out", str(tmp_path / "run")])
    del params["genA2B"]["FC.0.weight"]  # a layer the shapes are read from
    torch.save(params, path)
    with pytest.raises(common.UserError, match="not have the official layout"):
        official.main(["ugatit.py", path, "--out", str(tmp_path / "run")])

# ---------------------------------------------------------------------------------------------
# AttentionGAN: checkpoints/<name>_pretrained/latest_net_G_A.pth, latest_net_G_B.pth (+ D_A, D_B)
# ---------------------------------------------------------------------------------------------


def attentiongan_args(**changes):
    return SimpleNamespace(**{**dict(scheme="II", ngf=4, ndf=4, n_res=2, n_masks=10, bg_init=0.0), **changes})


def attentiongan_official_generator(layouts, ngf, n_res):
    """networks.ResnetGenerator_our: 27 content and 10 attention channels, as the official code fixes them."""
    put, dim = layouts.put, 4 * ngf
    put("conv1.weight", "encoder.1.weight", (ngf, 3, 7, 7))
    put("conv1.bias", "encoder.1.bias", (ngf,))
    put("conv2.weight", "encoder.4.weight", (2 * ngf, ngf, 3, 3))
    put("conv2.bias", "encoder.4.bias", (2 * ngf,))
    put("conv3.weight", "encoder.7.weight", (dim, 2 * ngf, 3, 3))
    put("conv3.bias", "encoder.7.bias", (dim,))
    for i in range(n_res):
        for conv, ours in (("conv1", "block.1"), ("conv2", "block.5")):
            put(f"resnet_blocks.{i}.{conv}.weight", f"encoder.{10 + i}.{ours}.weight", (dim, dim, 3, 3))
            put(f"resnet_blocks.{i}.{conv}.bias", f"encoder.{10 + i}.{ours}.bias", (dim,))
    for head, decoder, last, (c_out, k) in (("content", "content_decoder", 7, (27, 7)),
                                            ("attention", "attention_decoder", 6, (10, 1))):
        put(f"deconv1_{head}.weight", f"{decoder}.0.weight", (dim, 2 * ngf, 3, 3))  # ConvTranspose2d: (in, out)
        put(f"deconv1_{head}.bias", f"{decoder}.0.bias", (2 * ngf,))
        put(f"deconv2_{head}.weight", f"{decoder}.3.weight", (2 * ngf, ngf, 3, 3))
        put(f"deconv2_{head}.bias", f"{decoder}.3.bias", (ngf,))
        put(f"deconv3_{head}.weight", f"{decoder}.{last}.weight", (c_out, ngf, k, k))
        put(f"deconv3_{head}.bias", f"{decoder}.{last}.bias", (c_out,))


def attentiongan_official_discriminator(layouts, ndf):
    """networks.NLayerDiscriminator (n_layers 3, InstanceNorm: conv biases on); the keys are ours too."""
    chans = [3, ndf, 2 * ndf, 4 * ndf, 8 * ndf, 1]
    for index, c_in, c_out in zip((0, 2, 5, 8, 11), chans[:-1], chans[1:]):
        layouts.put(f"model.{index}.weight", f"model.{index}.weight", (c_out, c_in, 4, 4))
        layouts.put(f"model.{index}.bias", f"model.{index}.bias", (c_out,))


def attentiongan_official_folder(folder, args, with_discriminators=True, prefix=""):
    """The files the official code saves (save_networks: the bare network's state dict), -> ours by network."""
    os.makedirs(folder, exist_ok=True)
    ours = {}
    names = {"G_A": "gen_a2b", "G_B": "gen_b2a", **({"D_A": "disc_b", "D_B": "disc_a"} if with_discriminators else {})}
    for i, (theirs, mine) in enumerate(names.items()):
        layouts = TwoLayouts(10 + i)
        if theirs.startswith("G"):
            attentiongan_official_generator(layouts, args.ngf, args.n_res)
        else:
            attentiongan_official_discriminator(layouts, args.ndf)
        torch.save({prefix + k: v for k, v in layouts.official.items()},
                   os.path.join(folder, f"latest_net_{theirs}.pth"))
        ours[mine] = layouts.ours
    return ours



@pytest.mark.parametrize("prefix", ["", "module."])
def test_attentiongan_released_model_gives_the_outputs_of_the_same_weights_in_our_layout(tmp_path, prefix):
    args = attentiongan_args()
    folder = str(tmp_path / "horse2zebra_pretrained")
    ours = attentiongan_official_folder(folder, args, prefix=prefix)
    for path in (folder, os.path.join(folder, "latest_net_G_B.pth")):
        flags, states, step = official.attentiongan_release(path)
        assert flags == {"scheme": "II", "ngf": 4, "n_res": 2, "n_masks": 10, "ndf": 4} and step == 0
        assert sorted(states) == ["disc_a", "disc_b", "gen_a2b", "gen_b2a"]
        loaded = networks_of(attentiongan, flags, states, vars(attentiongan_args()))
        assert_same_outputs(loaded, attentiongan.build_networks(args), ours, torch.rand(2, 3, 32, 32) * 2 - 1)


def test_attentiongan_conversion_without_discriminator_files_tests_and_trains(tmp_path, data_root, capsys):
    folder = str(tmp_path / "horse2zebra_pretrained")
    attentiongan_official_folder(folder, attentiongan_args(), with_discriminators=False)
    out = str(tmp_path / "run")
    official.main(["attentiongan.py", folder, "--out", out, "--data_root", data_root, "--img_size", "32",
                   "--ndf", "4"])
    assert "disc_a, disc_b: no file for them, they start from random weights" in capsys.readouterr().out
    attentiongan.main(["--phase", "test", "--out", out, "--input", image_file(tmp_path), "--workers", "0"])
    assert sorted(os.listdir(os.path.join(out, "test", "b2a"))) == ["mine.png", "mine_attention.png"]
    attentiongan.main(["--resume", "--iters", "2", "--out", out, "--sample_every", "0", "--workers", "0"])
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"] == 2


@pytest.mark.parametrize("changes, given, expected", [({"n_res": 3}, ["--n_res", "2"], "--n_res 3"),
                                                      ({"ngf": 8}, ["--ngf", "4"], "--ngf 8"),
                                                      ({"ndf": 8}, ["--ndf", "4"], "--ndf 8"),
                                                      ({}, ["--scheme", "I"], "--scheme II")])
def test_attentiongan_flag_that_contradicts_the_files_exits_2_naming_it(tmp_path, changes, given, expected):
    folder = str(tmp_path / "released")
    attentiongan_official_folder(folder, attentiongan_args(**changes))
    with pytest.raises(common.UserError, match=expected):
        official.main(["attentiongan.py", folder, "--out", str(tmp_path / "run"), *given])
    with pytest.raises(common.UserError, match="latest_net_G_A.pth"):  # a folder without the files
        official.main(["attentiongan.py", str(tmp_path), "--out", str(tmp_path / "run")])

# ---------------------------------------------------------------------------------------------
# StarGAN (camconsistency.py): <iter>-G.ckpt and <iter>-D.ckpt
# ---------------------------------------------------------------------------------------------

TOY_C_DIM = len(common.TOY_ATTRS["color"]) + len(common.TOY_ATTRS["sleeve"])  # the toy-attr labels, one-hot


def stargan_args(**changes):
    return SimpleNamespace(**{**dict(img_size=32, conv_dim=4, n_res=2, d_conv_dim=4, d_layers=4, phase="test"),
                              **changes})


def stargan_official_generator(layouts, c_dim, conv_dim, n_res):
    """model.Generator: one Sequential `main`; InstanceNorm(affine, track_running_stats) saves its statistics."""
    def norm(official, ours, ch):
        layouts.put(f"{official}.weight", f"{ours}.weight", (ch,), 0.5, 1.5)
        layouts.put(f"{official}.bias", f"{ours}.bias", (ch,))
        layouts.put(f"{official}.running_mean", None, (ch,))  # unused by StarGAN's test (no .eval()) or by us
        layouts.put(f"{official}.running_var", None, (ch,), 0.5, 1.5)
        layouts.official[f"{official}.num_batches_tracked"] = torch.tensor(200000)

    put, dim = layouts.put, 4 * conv_dim
    put("main.0.weight", "body.0.weight", (conv_dim, 3 + c_dim, 7, 7))
    norm("main.1", "body.1", conv_dim)
    put("main.3.weight", "body.3.weight", (2 * conv_dim, conv_dim, 4, 4))
    norm("main.4", "body.4", 2 * conv_dim)
    put("main.6.weight", "body.6.weight", (dim, 2 * conv_dim, 4, 4))
    norm("main.7", "body.7", dim)
    for i in range(9, 9 + n_res):
        put(f"main.{i}.main.0.weight", f"body.{i}.block.0.weight", (dim, dim, 3, 3))
        norm(f"main.{i}.main.1", f"body.{i}.block.1", dim)
        put(f"main.{i}.main.3.weight", f"body.{i}.block.3.weight", (dim, dim, 3, 3))
        norm(f"main.{i}.main.4", f"body.{i}.block.4", dim)
    up = 9 + n_res
    put(f"main.{up}.weight", f"body.{up}.weight", (dim, 2 * conv_dim, 4, 4))  # ConvTranspose2d: (in, out)
    norm(f"main.{up + 1}", f"body.{up + 1}", 2 * conv_dim)
    put(f"main.{up + 3}.weight", f"body.{up + 3}.weight", (2 * conv_dim, conv_dim, 4, 4))
    norm(f"main.{up + 4}", f"body.{up + 4}", conv_dim)
    put(f"main.{up + 6}.weight", "to_image.0.weight", (3, conv_dim, 7, 7))


def stargan_official_discriminator(layouts, c_dim, img_size, conv_dim, layers):
    """model.Discriminator: `main` = [conv, LeakyReLU] per block, conv1 (patch scores), conv2 (labels)."""
    chans = [3] + [conv_dim * 2 ** i for i in range(layers)]
    for k in range(layers):
        layouts.put(f"main.{2 * k}.weight", f"blocks.{k}.0.weight", (chans[k + 1], chans[k], 4, 4))
        layouts.put(f"main.{2 * k}.bias", f"blocks.{k}.0.bias", (chans[k + 1],))
    layouts.put("conv1.weight", "out_src.weight", (1, chans[-1], 3, 3))
    kernel = img_size // 2 ** layers
    layouts.put("conv2.weight", "out_cls.weight", (c_dim, chans[-1], kernel, kernel))


def stargan_official_files(folder, args, c_dim, with_discriminator=True):
    """solver.py's <iter>-G.ckpt and <iter>-D.ckpt -> (G path, our state dicts by network)."""
    os.makedirs(folder, exist_ok=True)
    gen, disc = TwoLayouts(20), TwoLayouts(21)
    stargan_official_generator(gen, c_dim, args.conv_dim, args.n_res)
    torch.save(gen.official, os.path.join(folder, "200000-G.ckpt"))
    if with_discriminator:
        stargan_official_discriminator(disc, c_dim, args.img_size, args.d_conv_dim, args.d_layers)
        torch.save(disc.official, os.path.join(folder, "200000-D.ckpt"))
    return os.path.join(folder, "200000-G.ckpt"), {"gen": gen.ours, "disc": disc.ours}



def test_stargan_release_gives_the_outputs_of_the_same_weights_in_our_layout(tmp_path):
    args, attrs = stargan_args(), SimpleNamespace(c_dim=5)
    path, ours = stargan_official_files(str(tmp_path / "models"), args, 5)
    flags, states, step = official.stargan_release(path)
    assert flags == {"c_dim": 5, "conv_dim": 4, "n_res": 2, "d_conv_dim": 4, "d_layers": 4, "img_size": 32}
    assert sorted(states) == ["disc", "gen"] and step == 0
    flags.pop("c_dim")
    loaded = networks_of(camconsistency, flags, states, vars(stargan_args()), attrs)
    x, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 1]])
    reference = camconsistency.build_networks(args, attrs)
    assert_same_outputs({"gen": loaded["gen"]}, {"gen": reference["gen"]}, ours, x, c)
    assert_same_outputs({"disc": loaded["disc"]}, {"disc": reference["disc"]}, ours, x)


def test_stargan_celeba_release_tests_your_images_with_no_dataset(tmp_path):
    """The CelebA release (c_dim 5, G and D) converted with --data celeba where no CelebA is: StarGAN's five
    binary attributes; --phase test --input then reads the labels with D and writes every change."""
    path, _ = stargan_official_files(str(tmp_path / "models"), stargan_args(), 5)
    out = str(tmp_path / "run")
    official.main(["camconsistency.py", path, "--out", out, "--data", "celeba", "--data_root", str(tmp_path / "none")])
    state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert state["extra"]["attributes"]["names"] == list(common.CELEBA_DEFAULT_ATTRS)
    assert state["args"]["img_size"] == 32 and sorted(state["models"]) == ["disc", "gen"]
    camconsistency.main(["--phase", "test", "--out", out, "--input", image_file(tmp_path), "--workers", "0"])
    written = set(os.listdir(os.path.join(out, "test")))
    assert {"mine_Male=1.png", "mine_Male=1_attention.png", "index.html"} <= written or \
        {"mine_Male=0.png", "mine_Male=0_attention.png", "index.html"} <= written


def test_stargan_g_alone_tests_on_the_split_and_training_needs_d(tmp_path, data_root):
    tiny = ["--img_size", "32", "--d_layers", "4", "--d_conv_dim", "4", "--batch_size", "2", "--workers", "0",
            "--data_root", data_root]
    folder = str(tmp_path / "models")
    path, _ = stargan_official_files(folder, stargan_args(), TOY_C_DIM, with_discriminator=False)
    out = str(tmp_path / "run")
    official.main(["camconsistency.py", path, "--out", out, *tiny])
    assert sorted(torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["models"]) == ["gen"]
    camconsistency.main(["--phase", "test", "--out", out, "--target", "color=blue", "--workers", "0"])
    written = os.listdir(os.path.join(out, "test"))
    assert "00000_color=blue.png" in written and not any(f.endswith("_attention.png") for f in written)
    with pytest.raises(common.UserError, match="needs D"):
        camconsistency.main(["--phase", "test", "--out", out, "--input", image_file(tmp_path), "--workers", "0"])
    with pytest.raises(common.UserError, match="holds gen and not disc"):
        camconsistency.main(["--resume", "--iters", "2", "--out", out, "--workers", "0"])
    stargan_official_files(folder, stargan_args(), TOY_C_DIM)
    official.main(["camconsistency.py", path, "--out", str(tmp_path / "run2"), *tiny])
    camconsistency.main(["--resume", "--iters", "2", "--out", str(tmp_path / "run2"), "--sample_every", "0",
                         "--workers", "0"])
    assert torch.load(tmp_path / "run2" / "ckpt.pt", weights_only=True)["step"] == 2


@pytest.mark.parametrize("changes, c_dim, given, expected", [
    ({}, 5, [], "--attrs"), ({"n_res": 3}, 8, ["--n_res", "2"], "--n_res 3"),
    ({"img_size": 64}, 8, ["--img_size", "32"], "--img_size 64"),
    ({"conv_dim": 8}, 8, ["--conv_dim", "4"], "--conv_dim 8")])
def test_stargan_flag_that_contradicts_the_files_exits_2_naming_it(tmp_path, data_root, changes, c_dim, given,
                                                                    expected):
    path, _ = stargan_official_files(str(tmp_path / "models"), stargan_args(**changes), c_dim)
    with pytest.raises(common.UserError, match=expected):
        official.main(["camconsistency.py", path, "--out", str(tmp_path / "run"), "--data_root", data_root, *given])


# ---------------------------------------------------------------------------------------------
# Files that are no weights at all
# ---------------------------------------------------------------------------------------------


def test_garbage_files_exit_2_without_a_traceback(tmp_path):
    garbage = tmp_path / "toy_params_0001000.pt"
    garbage.write_bytes(b"not a torch file at all")
    result = run_main("tools/official.py", "ugatit.py", str(garbage), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "is not a PyTorch weights file" in result.stderr
    assert "Traceback" not in result.stderr and "weights_only=False" not in result.stderr
    folder = tmp_path / "released"
    folder.mkdir()
    (folder / "latest_net_G_A.pth").write_bytes(b"garbage")
    (folder / "latest_net_G_B.pth").write_bytes(b"garbage")
    with pytest.raises(common.UserError, match="not a PyTorch weights file"):
        official.attentiongan_release(str(folder))
    torch.save({"main.0.weight": [1, 2, 3]}, tmp_path / "1-G.ckpt")  # readable, but no tensors
    with pytest.raises(common.UserError, match="not a state dict"):
        official.stargan_release(str(tmp_path / "1-G.ckpt"))
    torch.save({"genA2B": {}}, garbage)
    with pytest.raises(common.UserError, match="lacks the state dicts genB2A"):
        official.ugatit_release(str(garbage))
    with pytest.raises(common.UserError, match="has none"):
        official.main(["amgan.py", str(garbage), "--out", str(tmp_path / "r")])
    with pytest.raises(common.UserError, match="no such file"):
        official.main(["ugatit.py", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r")])
