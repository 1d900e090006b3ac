"""A timing harness (docs/speed.md), and no official code: it imports a local checkout you give it.
Time the official U-GAT-IT training iteration (znxlwm/UGATIT-pytorch UGATIT.train, unchanged) on
random tensors, the way `--phase bench` times ours: 3 warm-up iterations, then 10 timed ones.
Shims for API rot only: the official loop calls iterator.next() (gone from DataLoader iterators).
It also counts the aten operators the second (warm-up) iteration dispatches, as docs/tools/profile_step.py
does for ours (ops_per_step).
Usage: python bench_official_ugatit.py PATH_TO_UGATIT_CHECKOUT IMG_SIZE light|full [ch] [n_res]"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_step import OpCounter  # noqa: E402  (ours: counts dispatched operators)

repo, size, variant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ch = int(sys.argv[4]) if len(sys.argv) > 4 else 64
n_res = int(sys.argv[5]) if len(sys.argv) > 5 else 4
sys.path.insert(0, repo)
import types  # noqa: E402
for name in ("scipy", "scipy.misc", "cv2"):  # imported by its utils.py for saving samples only (never reached here)
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["scipy"].misc = sys.modules["scipy.misc"]
from UGATIT import UGATIT  # noqa: E402  (the official code, not ours)

WARMUP, STEPS = 3, 10
stamps = []
counter = OpCounter()


class RandomLoader:
    """Random (image, label) batches of one domain; its iterator keeps the old .next() method."""

    def __init__(self, seed, stamp):
        self.seed, self.stamp = seed, stamp

    def __iter__(self):
        return RandomIterator(self.seed, self.stamp)


class RandomIterator:
    def __init__(self, seed, stamp):
        self.g, self.stamp = torch.Generator().manual_seed(seed), stamp

    def __next__(self):
        if self.stamp:
            stamps.append(time.perf_counter())
            if len(stamps) == 2:  # iteration 2 begins
                counter.__enter__()
            elif len(stamps) == 3:
                counter.__exit__(None, None, None)
        return torch.rand(1, 3, size, size, generator=self.g) * 2 - 1, torch.zeros(1)

    next = __next__


work = tempfile.mkdtemp()
os.chdir(work)
for split in ("trainA", "trainB", "testA", "testB"):  # build_model() opens the official ImageFolder on these
    os.makedirs(os.path.join("dataset", "bench", split))
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(os.path.join("dataset", "bench", split, "0.png"))
args = argparse.Namespace(
    light=variant == "light", result_dir="results", dataset="bench", iteration=WARMUP + STEPS + 1, decay_flag=False,
    batch_size=1, print_freq=10**9, save_freq=10**9, lr=1e-4, weight_decay=1e-4, ch=ch, adv_weight=1, cycle_weight=10,
    identity_weight=10, cam_weight=1000, n_res=n_res, n_dis=6, img_size=size, img_ch=3, device="cpu",
    benchmark_flag=False, resume=False)
gan = UGATIT(args)
gan.build_model()
gan.trainA_loader, gan.trainB_loader = RandomLoader(0, True), RandomLoader(1, False)
gan.train()
# stamps[i] is the start of step i + 1
seconds = stamps[WARMUP + STEPS] - stamps[WARMUP]
print(json.dumps({"official": f"znxlwm/UGATIT-pytorch UGATIT.train ({variant})", "device": f"cpu ({torch.get_num_threads()} threads)",
                  "img_size": size, "batch": 1, "it_s": round(STEPS / seconds, 4), "ops_per_step": counter.count,
                  "peak_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
