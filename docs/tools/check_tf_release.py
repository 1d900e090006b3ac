"""Compare tools/official.py's conversion of a TensorFlow release with the outputs of the official TF code itself.

    python docs/tools/check_tf_release.py ugatit|uag FOLDER

FOLDER holds a checkpoint written by the official model code (model.ckpt.index and .data-*) and outputs.npz, the
outputs that code gave on a fixed input `x` (NHWC): for U-GAT-IT generator_{B,A}_{out,cam_logit,heatmap}, for UAG
g_{A,B}_out and g_{A,B}_ae_att (the layout of tests/fixtures/tf_releases, which tests/test_tf_releases.py checks
at small sizes). Made this way at the release configurations (U-GAT-IT full at 256 px, ch 64; UAG at 256 px, ngf
32) with random weights, the files are gigabytes, so they are not in the repository; docs/weights.md gives the
numbers. Prints the largest absolute difference of each output and the time the conversion took.
"""
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import official  # noqa: E402
import uag  # noqa: E402
import ugatit  # noqa: E402


def largest_difference(ours, theirs):
    return float((ours - torch.from_numpy(theirs).reshape(ours.shape)).abs().max())


def main(kind, folder):
    start = time.time()
    release = official.ugatit_tf_release if kind == "ugatit" else official.uag_tf_release
    flags, states, _ = release(os.path.join(folder, "model.ckpt"))
    print(f"{kind}: {flags}, read and converted in {time.time() - start:.1f} s")
    tf = np.load(os.path.join(folder, "outputs.npz"))
    x = torch.from_numpy(tf["x"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        if kind == "ugatit":
            for scope, ours in (("generator_B", "gen_a2b"), ("generator_A", "gen_b2a")):
                gen = ugatit.Generator(flags["ch"], flags["n_res"], flags.get("img_size", x.shape[-1]), flags["light"],
                                       tf=True).eval()
                gen.load_state_dict(states.pop(ours))
                image, cam_logit, heatmap = gen(x)
                print(f"{ours}: image {largest_difference(image.permute(0, 2, 3, 1), tf[f'{scope}_out']):.2e}, "
                      f"CAM logits {largest_difference(cam_logit, tf[f'{scope}_cam_logit']):.2e}, heat map "
                      f"{largest_difference(heatmap, tf[f'{scope}_heatmap']):.2e} (largest {heatmap.abs().max():.1f})")
        else:
            for theirs, ours in (("g_A", "gen_a2b"), ("g_B", "gen_b2a"), ("g_A_ae", "att_a"), ("g_B_ae", "att_b")):
                if ours.startswith("gen"):
                    net = uag.Generator(flags["ngf"], flags["n_res"], tf=True)
                else:
                    net = uag.AttentionNet(flags["ngf"], flags["att_kernels"], tf=True)
                net.eval().load_state_dict(states[ours])
                name = f"{theirs}_att" if ours.startswith("att") else f"{theirs}_out"
                print(f"{ours}: {largest_difference(net(x).permute(0, 2, 3, 1), tf[name]):.2e}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("ugatit", "uag"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
