"""The authors' released weights -> a run folder of this project, which the paper script then tests, evaluates,
exports and continues training like any of its own runs.

    python tools/official.py SCRIPT.py WEIGHTS --out RUN [the script's flags, e.g. --data selfie2anime]

    python tools/official.py ugatit.py selfie2anime_params_1000000.pt --out results/s2a --data selfie2anime
    python tools/official.py attentiongan.py checkpoints/horse2zebra_pretrained --out results/h2z --data horse2zebra
    python tools/official.py camconsistency.py stargan_celeba_128/models/200000-G.ckpt --out results/sg --data celeba

What it reads:
- ugatit.py: a checkpoint of the official PyTorch code (znxlwm/UGATIT-pytorch), <dataset>_params_<step>.pt, written
  by UGATIT.save: the state dicts genA2B, genB2A, disGA, disGB (the global Ds), disLA, disLB (the local ones). The run
  starts at the step of the file name.
- attentiongan.py: a released model of Ha0Tang/AttentionGAN, the folder checkpoints/<name>_pretrained holding
  latest_net_G_A.pth and latest_net_G_B.pth (or one of those files); D_A and D_B are read when they are there
  (a training run of the official code writes them), else the discriminators start from random weights.
- camconsistency.py: StarGAN's (yunjey/stargan) <iter>-G.ckpt, and the <iter>-D.ckpt beside it when it is there;
  without D the run holds G alone: it tests with --target on the test split, but --input (whose labels D reads),
  Grad-CAM maps, eval and training need D.

The architecture is read off the file's shapes and recorded in the run, so no network flag is needed, now or later
(a network flag that contradicts the file is an error). Keys are renamed by name; a file that does not fit is an
error quoting the keys that differ. RUN/ckpt.pt holds no optimizer state, so `--resume` continues with fresh Adam
moments. Then, for example:

    python ugatit.py --out results/s2a --phase test --input my_photos     # no dataset needed
    python ugatit.py --out results/s2a --phase eval
    python ugatit.py --out results/s2a --resume --iters 1100000
"""
import argparse
import functools
import importlib
import os
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402

SCRIPTS = ("ugatit", "attentiongan", "camconsistency")


def read_weights(path):
    """A file of tensors (a state dict, or a dict of them) read with weights_only=True, 'module.' prefixes dropped."""
    if not os.path.isfile(path):
        raise common.UserError(f"{path}: there is no such file.")
    state = common.load_tensors(path, f"{path} is not a PyTorch weights file")
    if isinstance(state, dict) and "script" in state:
        raise common.UserError(f"{path} is a checkpoint of this project ({state['script']}.py), not of the official "
                               f"code: it needs no conversion; use it with --ckpt {path}.")
    if not isinstance(state, dict) or not all(isinstance(v, (dict, torch.Tensor)) for v in state.values()):
        raise common.UserError(f"{path} is not a state dict (a dict of tensors), the format the official code saves "
                               f"its networks in.")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def rename_keys(state, rules):
    """Each key of a state dict through the (pattern, replacement) rules of re.sub, in order."""
    def rename(key):
        return functools.reduce(lambda k, rule: re.sub(rule[0], rule[1], k), rules, key)
    return {rename(key): value for key, value in state.items()}


# ---------------- U-GAT-IT: UGATIT.save's <dataset>_params_<step>.pt ----------------

# official network -> ours; disGA judges domain A, as our disc_global_a
UGATIT_NETS = {"genA2B": "gen_a2b", "genB2A": "gen_b2a", "disGA": "disc_global_a", "disGB": "disc_global_b",
               "disLA": "disc_local_a", "disLB": "disc_local_b"}
# official key -> ours: (pattern, replacement) applied in order to every key of a network
UGATIT_GEN_KEYS = ((r"^DownBlock\.(\d+)\.conv_block\.", r"encoder.\1.block."),
                   (r"^DownBlock\.", "encoder."),
                   (r"^FC\.", "mlp."),
                   (r"^UpBlock1_(\d+)\.", lambda m: f"res_blocks.{int(m[1]) - 1}."),
                   (r"^UpBlock2\.", "upsample."))
UGATIT_DISC_KEYS = ((r"^model\.", "trunk."),
                    (r"^conv\.", "classifier."),
                    # the legacy torch.nn.utils.spectral_norm's tensors -> the parametrization's
                    (r"\.weight_orig$", ".parametrizations.weight.original"),
                    (r"\.weight_u$", ".parametrizations.weight.0._u"),
                    (r"\.weight_v$", ".parametrizations.weight.0._v"))


def ugatit_release(path):
    """-> (the architecture flags read off the shapes, {our network: its renamed state dict}, the file's step).
    The legacy spectral norm's weight_orig/u/v become the parametrization's original/_u/_v (the same power-iteration
    vectors, so eval outputs equal the official ones). The step comes from the file name (0 when it has none)."""
    params = read_weights(path)
    absent = [k for k in UGATIT_NETS if not isinstance(params.get(k), dict)]
    if absent:
        raise common.UserError(f"{path} is not a checkpoint of the official U-GAT-IT PyTorch code: it lacks the state "
                               f"dicts {', '.join(absent)} (UGATIT.save writes genA2B, genB2A, disGA, disGB, disLA, "
                               f"disLB into <dataset>_params_<step>.pt).")
    gen = params["genA2B"]
    disc = params["disGA"]
    ch = gen["DownBlock.1.weight"].shape[0]
    mlp_in = gen["FC.0.weight"].shape[1]  # the light MLP reads 4ch pooled features, the full one (img/4)^2 x 4ch
    flags = {"ch": ch,
             "n_res": len({k.split(".")[0] for k in gen if k.startswith("UpBlock1_")}),
             "light": mlp_in == 4 * ch,
             "n_dis": sum(k.endswith(".weight_orig") for k in disc if k.startswith("model.")),
             "no_cam": False, "no_gcam": False, "no_dcam": False, "norm": "adalin"}
    if not flags["light"]:
        flags["img_size"] = 4 * round((mlp_in / (4 * ch)) ** 0.5)
    states = {}
    for theirs, ours in UGATIT_NETS.items():
        rules = UGATIT_GEN_KEYS if ours.startswith("gen") else UGATIT_DISC_KEYS
        states[ours] = rename_keys(params[theirs], rules)
    found = re.search(r"_params_(\d+)\.pt$", os.path.basename(path))
    return flags, states, int(found[1]) if found else 0


# ---------------- AttentionGAN: checkpoints/<name>_pretrained/latest_net_G_A.pth, ... ----------------

# official file name (<epoch>_net_<X>.pth) -> our network; D_A judges domain B (real_B and G_A's fakes)
ATTENTIONGAN_NETS = {"G_A": "gen_a2b", "G_B": "gen_b2a", "D_A": "disc_b", "D_B": "disc_a"}
# ResnetGenerator_our key -> ours; the PatchGAN's keys (model.<i>.weight/bias) are ours already
ATTENTIONGAN_GEN_KEYS = ((r"^conv1\.", "encoder.1."),
                         (r"^conv2\.", "encoder.4."),
                         (r"^conv3\.", "encoder.7."),
                         (r"^resnet_blocks\.(\d+)\.conv1\.", lambda m: f"encoder.{10 + int(m[1])}.block.1."),
                         (r"^resnet_blocks\.(\d+)\.conv2\.", lambda m: f"encoder.{10 + int(m[1])}.block.5."),
                         (r"^deconv1_content\.", "content_decoder.0."),
                         (r"^deconv2_content\.", "content_decoder.3."),
                         (r"^deconv3_content\.", "content_decoder.7."),
                         (r"^deconv1_attention\.", "attention_decoder.0."),
                         (r"^deconv2_attention\.", "attention_decoder.3."),
                         (r"^deconv3_attention\.", "attention_decoder.6."))
NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # InstanceNorm buffers nobody uses


def attentiongan_release(path):
    """-> (flags, states, step 0) of a released model: `path` is its folder (latest_net_*) or one of its G files,
    plain state dicts of networks.ResnetGenerator_our (Scheme II) and of the PatchGANs. InstanceNorm keeps no
    statistics there or here (running_* keys of older files are dropped, as the official loader does)."""
    if os.path.isdir(path):
        prefix = os.path.join(path, "latest_net_")
    elif re.match(r".*net_G_[AB]\.pth$", path):
        prefix = path[:-len("G_A.pth")]
    else:
        raise common.UserError(f"{path}: expected the folder of a released AttentionGAN model "
                               f"(checkpoints/<name>_pretrained, holding latest_net_G_A.pth and latest_net_G_B.pth) "
                               f"or one of those G files.")
    files = {}
    for name in ATTENTIONGAN_NETS:
        file = f"{prefix}{name}.pth"
        if os.path.isfile(file):
            files[name] = {k: v for k, v in read_weights(file).items() if not k.endswith(NORM_STATISTICS)}
        elif name.startswith("G"):
            raise common.UserError(f"{file} does not exist; a released AttentionGAN model has latest_net_G_A.pth and "
                                   f"latest_net_G_B.pth (scripts/download_attentiongan_model.sh).")
    gen = files["G_A"]
    flags = {"scheme": "II",
             "ngf": gen["conv1.weight"].shape[0],
             "n_res": len({k.split(".")[1] for k in gen if k.startswith("resnet_blocks.")}),
             "n_masks": gen["deconv3_attention.weight"].shape[0]}
    if "D_A" in files:
        flags["ndf"] = files["D_A"]["model.0.weight"].shape[0]
    states = {}
    for name, state in files.items():
        states[ATTENTIONGAN_NETS[name]] = rename_keys(state, ATTENTIONGAN_GEN_KEYS if name.startswith("G") else ())
    return flags, states, 0


# ---------------- StarGAN (camconsistency.py): <iter>-G.ckpt and <iter>-D.ckpt ----------------

# StarGAN D key -> ours
STARGAN_DISC_KEYS = ((r"^main\.(\d+)\.", lambda m: f"blocks.{int(m[1]) // 2}.0."),
                     (r"^conv1\.", "out_src."),
                     (r"^conv2\.", "out_cls."))


def stargan_gen_keys(state):
    """StarGAN G key -> ours. G is one Sequential `main`; its last conv (the highest main.<i>.weight) is our
    to_image, the residual blocks' inner `main` our `block`, everything else `body`."""
    last = max(int(k.split(".")[1]) for k in state if re.fullmatch(r"main\.\d+\.weight", k))
    return ((rf"^main\.{last}\.", "to_image.0."), (r"^main\.(\d+)\.main\.", r"body.\1.block."), (r"^main\.", "body."))


def stargan_release(path):
    """-> (flags, states, step 0) of solver.py's <iter>-G.ckpt and the <iter>-D.ckpt beside it (plain state dicts of
    model.py's Generator and Discriminator; the CelebA releases are c_dim 5 at 128 or 256 px). StarGAN's InstanceNorm
    has track_running_stats=True, so G's file also holds running statistics; they are dropped: StarGAN's test never
    calls .eval(), so it normalises with each image's own statistics, as our InstanceNorm always does. flags has
    c_dim, the attribute labels G takes, which the chosen --attrs must give."""
    if not re.search(r"-G\.ckpt$", path):
        raise common.UserError(f"{path}: expected StarGAN's generator file <iter>-G.ckpt (e.g. "
                               f"stargan_celeba_128/models/200000-G.ckpt, from download.sh pretrained-celeba-128x128).")
    gen = {k: v for k, v in read_weights(path).items() if not k.endswith(NORM_STATISTICS)}
    flags = {"c_dim": gen["main.0.weight"].shape[1] - 3,
             "conv_dim": gen["main.0.weight"].shape[0],
             "n_res": len({k.split(".")[1] for k in gen if re.match(r"main\.\d+\.main\.", k)})}
    states = {"gen": rename_keys(gen, stargan_gen_keys(gen))}
    disc_path = re.sub(r"-G\.ckpt$", "-D.ckpt", path)
    if os.path.isfile(disc_path):
        disc = read_weights(disc_path)
        flags["d_conv_dim"] = disc["main.0.weight"].shape[0]
        flags["d_layers"] = sum(1 for k in disc if re.fullmatch(r"main\.\d+\.weight", k))
        flags["img_size"] = disc["conv2.weight"].shape[-1] * 2 ** flags["d_layers"]  # out_cls covers the last map
        states["disc"] = rename_keys(disc, STARGAN_DISC_KEYS)
    return flags, states, 0


def stargan_attributes(args, c_dim):
    """The attribute set of a StarGAN release: --data's when the dataset is here (toy-attr, CelebA, labels.csv),
    else CelebA's binary attributes named by --attrs (default StarGAN's five), which needs no images."""
    root = args.data if os.path.exists(args.data) else os.path.join(args.data_root, args.data)
    if args.data in common.TOY_NAMES or os.path.isdir(root):
        attrs = common.attribute_data(args.data, args.data_root, args.img_size, args.attrs, "train")[0]
    else:
        names = args.attrs.split(",") if args.attrs else list(common.CELEBA_DEFAULT_ATTRS)
        hair = [[k for k, name in enumerate(names) if name in common.CELEBA_HAIR]]
        attrs = common.AttributeSet(names, [["0", "1"]] * len(names), [True] * len(names), range(len(names)), hair)
    if attrs.c_dim != c_dim:
        raise common.UserError(f"the file's G takes {c_dim} attribute labels and --data {args.data} with --attrs "
                               f"{args.attrs or '(default)'} gives {attrs.c_dim}: choose {c_dim} with --attrs (the "
                               f"CelebA release: --data celeba --attrs Black_Hair,Blond_Hair,Brown_Hair,Male,Young).")
    return attrs


RELEASES = {"ugatit": ugatit_release, "attentiongan": attentiongan_release, "camconsistency": stargan_release}


def flag_tokens(flags):
    """{'ch': 64, 'light': True, 'no_cam': False} -> ['--ch', '64', '--light'] (a False store_true is left out)."""
    tokens = []
    for k, v in flags.items():
        if v is True:
            tokens.append(f"--{k}")
        elif v is False:
            tokens += [f"--no-{k}"] if k == "light" else []
        else:
            tokens += [f"--{k}", str(v)]
    return tokens


def convert(script, path, argv):
    """Read the release at `path`, build the script's networks with the flags its shapes give (and `argv`'s), load
    them, and save the run: <out>/ckpt.pt and args.json -> the checkpoint's path."""
    if script not in RELEASES:
        raise common.UserError(f"tools/official.py converts the releases of {', '.join(s + '.py' for s in RELEASES)}; "
                               f"{script}.py has none.")
    for flag in ("--phase", "--resume"):
        if any(t.split("=")[0] == flag for t in argv):
            raise common.UserError(f"tools/official.py writes a new run: drop {flag}, then test, evaluate or continue "
                                   f"the run with {script}.py.")
    if not any(t.split("=")[0] == "--out" for t in argv):
        raise common.UserError("give the new run's folder: --out RUN.")
    module = importlib.import_module(script)
    try:
        flags, states, step = RELEASES[script](path)
    except (KeyError, IndexError, ValueError) as e:  # not even the layers the shapes are read from
        raise common.UserError(f"{path} does not have the official layout of {script}.py's release (no {e}).") \
            from None
    c_dim = flags.pop("c_dim", None)
    args = module.parse_flags(flag_tokens(flags) + list(argv))  # the flags given last win
    contradicted = [k for k, v in flags.items() if getattr(args, k) != v]
    if contradicted:
        wanted = [" ".join(flag_tokens({k: flags[k]})) or f"no --{k}" for k in contradicted]
        raise common.UserError(f"{path} holds networks made with {', '.join(wanted)}, and the command line says "
                               f"otherwise: drop {', '.join('--' + k for k in contradicted)} (the architecture comes "
                               f"from the file).")
    common.seed_everything(args.seed)
    extra = {"converted_from": os.path.abspath(path)}
    if c_dim is None:
        nets = module.build_networks(args)
    else:
        attrs = stargan_attributes(args, c_dim)
        extra["attributes"] = attrs.state
        nets = module.build_networks(args, attrs)
    try:
        for name, state in states.items():
            nets[name].load_state_dict(state)
    except RuntimeError as e:
        keys = " ".join(str(e).split())  # torch names the missing, unexpected and misshapen keys
        raise common.UserError(f"{path} does not fit {script}.py's networks ({keys[:300]}"
                               f"{' ...' if len(keys) > 300 else ''}): its layout is not the official one.") from None
    fresh = [name for name in nets if name not in states]
    if script == "camconsistency":  # without D the run holds G alone: an untrained D would make meaningless maps
        nets = {name: net for name, net in nets.items() if name in states}
    elif fresh:
        print(f"{', '.join(fresh)}: no file for them, they start from random weights (only training uses them)")
    common.prepare_out(args.out, args.ckpt, vars(args), resume=False)
    common.save_checkpoint(args.ckpt, script, vars(args), step, nets, {}, extra)
    print(f"{path} -> {args.ckpt} ({', '.join(nets)} at step {step}). Next: python {script}.py --out {args.out} "
          f"--phase test --input YOUR_IMAGES (or --phase eval, or --resume to train on)")
    return args.ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", help="the paper script: ugatit.py, attentiongan.py or camconsistency.py")
    parser.add_argument("weights", help="the released file (or AttentionGAN's folder)")
    known, rest = parser.parse_known_args(argv)
    script = os.path.splitext(os.path.basename(known.script))[0]
    convert(script, known.weights, rest)


if __name__ == "__main__":
    common.cli(main)
