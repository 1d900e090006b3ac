"""--from_official: the official codes' weight files load into our networks. Each test writes a state dict in
the official layout (the official key names and shapes listed here layer by layer, random values), loads it
with the script's loader, and compares with the same tensors put under our names by this file's own table:
the networks must give the same outputs. Files that do not fit exit 2 naming the flag that would fit them."""
import os
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import attentiongan
import camconsistency
import common
import ugatit
from conftest import run_script


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
                                     no_dcam=False, norm="adalin", init="normal"), **changes})


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
    official, ours = {}, {}
    for i, (theirs, mine) in enumerate({"genA2B": "gen_a2b", "genB2A": "gen_b2a", "disGA": "disc_global_a",
                                        "disGB": "disc_global_b", "disLA": "disc_local_a",
                                        "disLB": "disc_local_b"}.items()):
        layouts = TwoLayouts(seed + i)
        if theirs.startswith("gen"):
            ugatit_official_generator(layouts, args.ch, args.n_res, args.img_size, args.light)
        else:
            ugatit_official_discriminator(layouts, args.ch, args.n_dis + 1 if "G" in theirs else args.n_dis - 1)
        official[theirs], ours[mine] = layouts.official, layouts.ours
    torch.save(official, path)
    return ours


@pytest.mark.parametrize("light", [True, False])
def test_ugatit_official_checkpoint_gives_the_outputs_of_the_same_weights_in_our_layout(tmp_path, light):
    args = ugatit_args(light=light)
    path = str(tmp_path / "toy_params_0001000.pt")
    ours = ugatit_official_file(path, args)
    loaded, reference = ugatit.build_networks(args), ugatit.build_networks(args)
    assert ugatit.load_official(path, loaded, args) == 1000  # the step of the file name
    for name, net in reference.items():
        net.load_state_dict(ours[name])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for name in reference:
            loaded[name].eval(), reference[name].eval()
            assert same_outputs(loaded[name](x), reference[name](x)), name


def test_ugatit_from_official_tests_and_continues_training_at_the_file_step(tmp_path, data_root, capsys):
    tiny = ["--img_size", "32", "--ch", "8", "--n_res", "2", "--n_dis", "4", "--light", "--workers", "0",
            "--log_every", "1", "--data_root", data_root]
    path = str(tmp_path / "toy_params_0000003.pt")
    ugatit_official_file(path, ugatit_args())
    out = str(tmp_path / "run")
    ugatit.main(["--phase", "test", "--from_official", path, "--out", out, "--input", image_file(tmp_path), *tiny])
    assert sorted(os.listdir(os.path.join(out, "test", "a2b"))) == ["mine.png", "mine_attention.png"]
    ugatit.main(["--from_official", path, "--iters", "5", "--out", out, "--sample_every", "0", *tiny])
    printed = capsys.readouterr().out
    assert "starting at step 3" in printed and "fresh Adam moments" in printed
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ckpt["step"] == 5
    assert [int(r.split(",")[0]) for r in open(os.path.join(out, "log.csv")).read().splitlines()[1:]] == [4, 5]
    with pytest.raises(common.UserError, match="already exists"):  # a new run never overwrites one
        ugatit.main(["--from_official", path, "--iters", "5", "--out", out, *tiny])
    with pytest.raises(common.UserError, match="give one of them"):
        ugatit.main(["--from_official", path, "--resume", "--out", out, *tiny])


@pytest.mark.parametrize("changes, flag", [({"n_res": 3}, "--n_res 3"), ({"light": False}, "--no-light"),
                                           ({"ch": 16}, "--ch 16"), ({"n_dis": 5}, "--n_dis 5")])
def test_ugatit_file_of_other_flags_exits_2_naming_the_flag(tmp_path, changes, flag):
    path = str(tmp_path / "toy_params_0001000.pt")
    ugatit_official_file(path, ugatit_args(**changes))
    args = ugatit_args()
    with pytest.raises(common.UserError, match=flag) as error:
        ugatit.load_official(path, ugatit.build_networks(args), args)
    assert "does not fit" in str(error.value) and "\n" not in str(error.value)


def test_ugatit_full_generator_of_another_image_size_names_it(tmp_path):
    path = str(tmp_path / "toy_params_0001000.pt")
    ugatit_official_file(path, ugatit_args(light=False, img_size=64))
    args = ugatit_args(light=False)
    with pytest.raises(common.UserError, match="--img_size 64"):
        ugatit.load_official(path, ugatit.build_networks(args), args)


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
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for path in (folder, os.path.join(folder, "latest_net_G_B.pth")):
        loaded, reference = attentiongan.build_networks(args), attentiongan.build_networks(args)
        assert sorted(attentiongan.load_official(path, loaded, args)) == ["disc_a", "disc_b", "gen_a2b", "gen_b2a"]
        for name, net in reference.items():
            net.load_state_dict(ours[name])
        with torch.no_grad():
            for name in reference:
                loaded[name].eval(), reference[name].eval()
                assert same_outputs(loaded[name](x), reference[name](x)), name


def test_attentiongan_from_official_tests_and_trains_without_discriminator_files(tmp_path, data_root, capsys):
    tiny = ["--img_size", "32", "--ngf", "4", "--ndf", "4", "--n_res", "2", "--workers", "0", "--data_root", data_root]
    folder = str(tmp_path / "horse2zebra_pretrained")
    attentiongan_official_folder(folder, attentiongan_args(), with_discriminators=False)
    out = str(tmp_path / "run")
    attentiongan.main(["--phase", "test", "--from_official", folder, "--out", out, "--input", image_file(tmp_path),
                       *tiny])
    assert sorted(os.listdir(os.path.join(out, "test", "b2a"))) == ["mine.png", "mine_attention.png"]
    attentiongan.main(["--from_official", folder, "--iters", "2", "--out", out, "--sample_every", "0", *tiny])
    assert "disc_a, disc_b start from random weights" in capsys.readouterr().out
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"] == 2


@pytest.mark.parametrize("changes, flag", [({"n_res": 3}, "--n_res 3"), ({"ngf": 8}, "--ngf 8"),
                                           ({"ndf": 8}, "--ndf 8")])
def test_attentiongan_files_of_other_flags_exit_2_naming_the_flag(tmp_path, changes, flag):
    folder = str(tmp_path / "released")
    attentiongan_official_folder(folder, attentiongan_args(**changes))
    args = attentiongan_args()
    with pytest.raises(common.UserError, match=flag):
        attentiongan.load_official(folder, attentiongan.build_networks(args), args)
    with pytest.raises(common.UserError, match="latest_net_G_A.pth"):  # a folder without the files
        attentiongan.load_official(str(tmp_path), attentiongan.build_networks(args), args)


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
    loaded, reference = camconsistency.build_networks(args, attrs), camconsistency.build_networks(args, attrs)
    assert camconsistency.load_official(path, loaded, args) == ["gen", "disc"]
    for name, net in reference.items():
        net.load_state_dict(ours[name])
        loaded[name].eval(), net.eval()
    x, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 1]])
    with torch.no_grad():
        assert same_outputs(loaded["gen"](x, c), reference["gen"](x, c))
        assert same_outputs(loaded["disc"](x), reference["disc"](x))


def test_stargan_from_official_tests_with_g_alone_and_trains_only_with_d(tmp_path, data_root, capsys):
    tiny = ["--img_size", "32", "--conv_dim", "4", "--n_res", "2", "--d_conv_dim", "4", "--d_layers", "4",
            "--batch_size", "2", "--workers", "0", "--data_root", data_root]
    folder = str(tmp_path / "models")
    path, _ = stargan_official_files(folder, stargan_args(), TOY_C_DIM, with_discriminator=False)
    out = str(tmp_path / "run")
    camconsistency.main(["--phase", "test", "--from_official", path, "--out", out, "--input", image_file(tmp_path),
                         "--target", "color=blue", *tiny])
    assert "D is untrained" in capsys.readouterr().out
    written = set(os.listdir(os.path.join(out, "test")))
    assert {"mine_color=blue.png", "mine_color=blue_attention.png", "index.html"} <= written
    with pytest.raises(common.UserError, match="200000-D.ckpt"):
        camconsistency.main(["--from_official", path, "--iters", "2", "--out", out, *tiny])
    stargan_official_files(folder, stargan_args(), TOY_C_DIM)
    camconsistency.main(["--from_official", path, "--iters", "2", "--out", out, "--sample_every", "0", *tiny])
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"] == 2


@pytest.mark.parametrize("changes, c_dim, flag", [({}, 5, "--attrs"), ({"n_res": 3}, 8, "--n_res 3"),
                                                  ({"img_size": 64}, 8, "--img_size 64"),
                                                  ({"conv_dim": 8}, 8, "--conv_dim 8")])
def test_stargan_files_of_other_flags_exit_2_naming_the_flag(tmp_path, changes, c_dim, flag):
    path, _ = stargan_official_files(str(tmp_path / "models"), stargan_args(**changes), c_dim)
    args = stargan_args()
    with pytest.raises(common.UserError, match=flag):
        camconsistency.load_official(path, camconsistency.build_networks(args, SimpleNamespace(c_dim=8)), args)


# ---------------------------------------------------------------------------------------------
# Files that are no weights at all
# ---------------------------------------------------------------------------------------------


def test_garbage_files_exit_2_without_a_traceback(tmp_path):
    garbage = tmp_path / "toy_params_0001000.pt"
    garbage.write_bytes(b"not a torch file at all")
    result = run_script("ugatit.py", "--phase", "test", "--from_official", str(garbage), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "is not a PyTorch weights file" in result.stderr
    assert "Traceback" not in result.stderr and "weights_only=False" not in result.stderr
    folder = tmp_path / "released"
    folder.mkdir()
    (folder / "latest_net_G_A.pth").write_bytes(b"garbage")
    (folder / "latest_net_G_B.pth").write_bytes(b"garbage")
    args = attentiongan_args()
    with pytest.raises(common.UserError, match="not a PyTorch weights file"):
        attentiongan.load_official(str(folder), attentiongan.build_networks(args), args)
    torch.save({"main.0.weight": [1, 2, 3]}, tmp_path / "1-G.ckpt")  # readable, but no tensors
    args = stargan_args()
    with pytest.raises(common.UserError, match="not a state dict"):
        camconsistency.load_official(str(tmp_path / "1-G.ckpt"), camconsistency.build_networks(
            args, SimpleNamespace(c_dim=5)), args)
    torch.save({"genA2B": {}}, garbage)
    args = ugatit_args()
    with pytest.raises(common.UserError, match="lacks the state dicts genB2A"):
        ugatit.load_official(str(garbage), ugatit.build_networks(args), args)
