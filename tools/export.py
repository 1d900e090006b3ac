"""A run's generators alone, for inference -> RUN/export/: generators.pt and one torch.export program per network.

    python tools/export.py SCRIPT.py --out RUN [--ckpt PATH] [--export_dtype fp32|bf16|fp16]

- generators.pt: the networks translation needs (the two generators, and UAG's attention nets; G of the attribute
  scripts) in the checkpoint layout and in --export_dtype (bf16 halves the file). The paper script tests from it:
  python SCRIPT.py --phase test --ckpt RUN/export/generators.pt --out RUN_FROM_EXPORT
- <name>.pt2: the torch.export program of each of those networks (fp32, CPU) for a batch of any size at the run's
  --img_size. It runs without this project's code:

    import torch
    gen_a2b = torch.export.load("results/ugatit_toy/export/gen_a2b.pt2").module()
    x = torch.rand(4, 3, 64, 64) * 2 - 1                     # four images in [-1, 1]
    with torch.no_grad():
        image, cam_logit, heatmap = gen_a2b(x)                # AttentionGAN: (image, attention, content)

  The attribute scripts' G takes (x, code): camconsistency.py's code is the target labels (c_dim columns),
  amgan.py's the manipulation code (attribute values + which attribute is manipulated).
"""
import argparse
import importlib
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402

SCRIPTS = ("ugatit", "attentiongan", "uag", "amgan", "camconsistency")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def translators(script, state):
    """The networks translation needs, built with the run's flags and loaded from the checkpoint `state`, in eval
    mode on the CPU, and an example input batch for each (a batch of 2: a batch of 1 would be baked in)."""
    module = importlib.import_module(script)
    args = argparse.Namespace(**state["args"])
    x = torch.zeros(2, 3, args.img_size, args.img_size)
    if script in ("amgan", "camconsistency"):
        attrs = common.AttributeSet(**state["extra"]["attributes"])
        gen = module.build_networks(args, attrs)["gen"]
        code = torch.zeros(2, gen.body[0].in_channels - 3)  # the labels or manipulation code tiled over x
        return {"gen": gen}, {"gen": (x, code)}
    nets = {k: net for k, net in module.build_networks(args).items() if not k.startswith("disc")}
    return nets, {k: (x,) for k in nets}


def export(script, out, ckpt=None, dtype="fp32"):
    """Write <out>/export/ from the checkpoint `ckpt` (default <out>/ckpt.pt) -> the folder."""
    if script not in SCRIPTS:
        raise common.UserError(f"tools/export.py exports a run of {', '.join(s + '.py' for s in SCRIPTS)}, "
                               f"not of {script}.py.")
    ckpt = ckpt or os.path.join(out, "ckpt.pt")
    if not os.path.isfile(ckpt):
        raise common.UserError(f"there is no checkpoint at {ckpt}: train first (python {script}.py --out {out}) or "
                               f"point --out / --ckpt at a run.")
    state = common.read_checkpoint(ckpt, script)
    nets, examples = translators(script, state)
    nets, step = common.load_for_inference(ckpt, script, nets, state)
    folder = common.make_folder(os.path.join(out, "export"))
    batch = torch.export.Dim("batch", min=1)
    for name, net in nets.items():
        program = torch.export.export(net, examples[name], dynamic_shapes=[{0: batch}] * len(examples[name]))
        path = os.path.join(folder, f"{name}.pt2")
        try:  # a whole new file, or the earlier one kept
            torch.export.save(program, f"{path}.tmp")
            os.replace(f"{path}.tmp", path)
        except OSError as e:
            if os.path.exists(f"{path}.tmp"):
                os.remove(f"{path}.tmp")
            raise common.UserError(f"cannot write {path} ({e.strerror}); choose another --out or free the "
                                   f"folder.") from None
    path = os.path.join(folder, "generators.pt")
    extra = {**state["extra"], "exported_from": os.path.abspath(ckpt), "export_dtype": dtype}
    common.save_checkpoint(path, script, state["args"], step, {k: m.to(DTYPES[dtype]) for k, m in nets.items()},
                           {}, extra)
    size = os.path.getsize(path) / 2**20
    print(f"{path}: {size:.2f} MB (from {ckpt}: {os.path.getsize(ckpt) / 2**20:.2f} MB), and "
          f"{', '.join(f'{k}.pt2' for k in nets)}")
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", help="the paper script whose run this is, e.g. ugatit.py")
    parser.add_argument("--out", required=True, help="the run folder (its export goes to <out>/export)")
    parser.add_argument("--ckpt", default=None, help="the checkpoint to export (default <out>/ckpt.pt)")
    parser.add_argument("--export_dtype", default="fp32", choices=list(DTYPES), help="generators.pt's dtype")
    args = parser.parse_args(argv)
    export(os.path.splitext(os.path.basename(args.script))[0], args.out, args.ckpt, args.export_dtype)


if __name__ == "__main__":
    common.cli(main)
