"""What the CRC-32 check before every load costs: a checkpoint-like file of --gib GiB of float32 tensors is written to
a temporary folder, then read three times each way (the file in the page cache after the first write).

    OMP_NUM_THREADS=1 python docs/tools/crc_check_time.py --gib 1

Prints one JSON line: the file size and the best of three for torch.load alone, the CRC check alone (zipfile's
testzip) and common.load_tensors (both)."""
import argparse
import json
import os
import sys
import tempfile
import time
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import common  # noqa: E402


def best_of_three(fn):
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(min(times), 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the file in GiB")
    args = parser.parse_args()
    n_tensors = max(1, round(args.gib * 64))  # tensors of 16 MiB
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ckpt.pt")
        torch.save({"models": {"net": {f"w{i}": torch.randn(2**22) for i in range(n_tensors)}}}, path)

        def crc_only():
            with zipfile.ZipFile(path) as z:
                assert z.testzip() is None

        result = {"file_gib": round(os.path.getsize(path) / 2**30, 3),
                  "torch_load_s": best_of_three(lambda: torch.load(path, map_location="cpu", weights_only=True)),
                  "crc_check_s": best_of_three(crc_only),
                  "load_tensors_s": best_of_three(lambda: common.load_tensors(path, "not a checkpoint"))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
