"""Profile a script's training step (docs/speed.md; the scripts do not use this file).

  python docs/tools/profile_step.py ugatit.py [that script's flags]

runs `<script> --phase bench [flags]` with instruments around its bench loop and prints one JSON line:
the bench's own numbers (it_s, img_s, peak_mem_mb), ops_per_step (the aten operators one training
step dispatches, views included: one kernel launch each on a GPU), loader_img_s (the data streams
alone, images per second, `workers` DataLoader workers) next to step_img_s (the images per second
the step consumes from all streams together), and on stderr the profiler's table of the operators
that took the most time in 10 more steps (after the timing, which the profiler would slow down).
"""
import json
import os
import runpy
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import common  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while active."""

    count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class ProfiledBench(common.Bench):
    """common.Bench whose steps() also counts the operators of the last warm-up step and runs 10
    profiled steps after the timed ones; report() adds the data streams' own speed."""

    streams = []  # every stream the script creates with common.train_batches
    workers = 0  # their DataLoader workers

    def steps(self):
        yield from range(1, self.warmup)
        with OpCounter() as counter:  # the loop body runs while the generator waits here
            yield self.warmup
        self.ops_per_step = counter.count
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        yield from range(self.warmup + 1, self.warmup + self.timed + 1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - t0
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as self.profiler:
            yield from range(self.warmup + self.timed + 1, self.warmup + 2 * self.timed + 1)
            if self.device.type == "cuda":
                torch.cuda.synchronize()

    def report(self, losses, loader_batches=30):
        device = self.device
        batch_size = self.settings["batch"]
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(self.profiler.key_averages().table(sort_by=sort, row_limit=25), file=sys.stderr)
        t0 = time.perf_counter()
        for _ in range(loader_batches):
            for stream in self.streams:
                batch = next(stream)
        (batch[0] if isinstance(batch, tuple) else batch).sum().item()  # wait for the last copy
        loader_seconds = time.perf_counter() - t0
        n_streams = len(self.streams)
        result = {**self.settings,
                  "it_s": round(self.timed / self.seconds, 3),
                  "img_s": round(self.timed * batch_size / self.seconds, 3),
                  "peak_mem_mb": round(common.peak_memory_mb(device), 1), "ops_per_step": self.ops_per_step,
                  "workers": self.workers,
                  "loader_img_s": round(loader_batches * n_streams * batch_size / loader_seconds, 1),
                  "step_img_s": round(self.timed * n_streams * batch_size / self.seconds, 1)}
        print(json.dumps(result))
        return result


def recording_train_batches(dataset, batch_size, workers, *args, **kwargs):
    stream = original_train_batches(dataset, batch_size, workers, *args, **kwargs)
    ProfiledBench.streams.append(stream)
    ProfiledBench.workers = workers
    return stream


if __name__ == "__main__":
    if len(sys.argv) < 2 or not sys.argv[1].endswith(".py"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    script = os.path.join(ROOT, os.path.basename(sys.argv[1]))
    original_train_batches = common.train_batches
    common.train_batches, common.Bench = recording_train_batches, ProfiledBench
    sys.argv = [script, "--phase", "bench", *sys.argv[2:]]
    runpy.run_path(script, run_name="__main__")
