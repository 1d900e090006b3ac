"""A timing harness (docs/speed.md), and no official code: it imports a local checkout you give it.
Time the official StarGAN training iteration (yunjey/stargan Solver.train, unchanged) on random
tensors, the way `--phase bench` times ours: 3 warm-up iterations, then 10 timed ones (2 G updates).
Usage: python bench_official_stargan.py PATH_TO_STARGAN_CHECKOUT [img_size] [batch]"""
import argparse
import json
import resource
import sys
import tempfile
import time

import torch

repo, size, batch = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 128, int(sys.argv[3]) if len(sys.argv) > 3 else 16
sys.path.insert(0, repo)
from solver import Solver  # noqa: E402  (the official code, not ours)

WARMUP, STEPS = 3, 10
stamps = []


class RandomBatches:
    """An endless 'data loader' of random CelebA-like batches that stamps the time of every fetch."""

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            stamps.append(time.perf_counter())
            yield torch.rand(batch, 3, size, size, generator=g) * 2 - 1, torch.randint(0, 2, (batch, 5), generator=g).float()


tmp = tempfile.mkdtemp()
config = argparse.Namespace(
    c_dim=5, c2_dim=8, image_size=size, g_conv_dim=64, d_conv_dim=64, g_repeat_num=6, d_repeat_num=6, lambda_cls=1,
    lambda_rec=10, lambda_gp=10, dataset="CelebA", batch_size=batch, num_iters=WARMUP + STEPS + 1, num_iters_decay=100000,
    g_lr=1e-4, d_lr=1e-4, n_critic=5, beta1=0.5, beta2=0.999, resume_iters=None,
    selected_attrs=["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"], test_iters=0, use_tensorboard=False,
    log_dir=tmp, sample_dir=tmp, model_save_dir=tmp, result_dir=tmp, log_step=10**9, sample_step=10**9,
    model_save_step=10**9, lr_update_step=1000)
solver = Solver(RandomBatches(), None, config)
solver.train()
# stamps[0] is the fixed batch; stamps[1 + i] the start of iteration i
seconds = stamps[1 + WARMUP + STEPS] - stamps[1 + WARMUP]
print(json.dumps({"official": "yunjey/stargan Solver.train", "device": f"cpu ({torch.get_num_threads()} threads)",
                  "img_size": size, "batch": batch, "it_s": round(STEPS / seconds, 4),
                  "img_s": round(STEPS * batch / seconds, 3),
                  "peak_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
