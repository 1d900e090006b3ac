"""Behaviour fingerprint of the five scripts, for refactors: short seed-0 toy runs of each script and of its
ablation flags, then --phase test and --phase eval, reduced to hashes that must not change.

    OMP_NUM_THREADS=1 python docs/tools/fingerprint.py REPO OUT          # writes OUT/fingerprint.json
    python docs/tools/fingerprint.py --compare BEFORE.json AFTER.json    # lists what differs, exit 1 if anything

REPO is a checkout (e.g. `git worktree add /tmp/before <commit>`), OUT a fresh folder. Per case it hashes
the checkpoint's weights, Adam states and RNG states (tensor bytes, sorted keys), the step, metrics.json
without the checkpoint path, log.csv without its `seconds` column, and every PNG that --phase test wrote.
The toy judges are cached in OUT/data, or in --data_root (share it between the two sides: the judge is the same).
"""
import argparse
import csv
import glob
import hashlib
import json
import os
import subprocess
import sys

import torch

STEPS = ["--iters", "20", "--sample_every", "10", "--save_every", "10", "--log_every", "5", "--seed", "0"]
CASES = {
    "ugatit": ("ugatit.py", []),
    "ugatit_nocam_ln": ("ugatit.py", ["--no_cam", "--norm", "ln"]),
    "attentiongan": ("attentiongan.py", []),
    "attentiongan_scheme1": ("attentiongan.py", ["--scheme", "I"]),
    "uag": ("uag.py", []),
    "uag_noatt": ("uag.py", ["--no_attention"]),
    "camconsistency": ("camconsistency.py", []),
    "camconsistency_stargan": ("camconsistency.py", ["--lambda_cam", "0"]),
    "amgan": ("amgan.py", ["--cls_iters", "20"]),
    "amgan_cammask_nodc": ("amgan.py", ["--cls_iters", "20", "--cam_as_mask", "--no_dc"]),
}


def digest(obj, h):
    """Feed a nested checkpoint object into the hash `h` in a fixed order."""
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"K{k}".encode())
            digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            digest(v, h)
    else:
        h.update(repr(obj).encode())


def sha(obj):
    h = hashlib.sha256()
    digest(obj, h)
    return h.hexdigest()[:16]


def run(repo, script, flags, env):
    cmd = [sys.executable, os.path.join(repo, script), *flags]
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")


def fingerprint_case(repo, out, data_root, script, flags, env):
    common = ["--out", out, "--data_root", data_root]
    if script == "amgan.py":
        run(repo, script, [*common, "--phase", "classifier", *flags, "--seed", "0"], env)
    run(repo, script, [*common, *STEPS, *flags], env)
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=True)
    run(repo, script, [*common, "--phase", "test"], env)
    run(repo, script, [*common, "--phase", "eval"], env)
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    metrics.pop("ckpt", None)
    with open(os.path.join(out, "log.csv")) as f:
        rows = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
    pictures = {}
    for path in sorted(glob.glob(os.path.join(out, "test", "**", "*.png"), recursive=True)):
        with open(path, "rb") as f:
            pictures[os.path.relpath(path, out)] = hashlib.sha256(f.read()).hexdigest()[:16]
    return {"step": ckpt["step"], "models": sha(ckpt["models"]), "optimizers": sha(ckpt["optimizers"]),
            "rng": sha(ckpt["rng"]), "metrics": metrics, "log": sha(rows), "test_pictures": sha(pictures),
            "n_test_pictures": len(pictures)}


def compare(before_path, after_path):
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    differences = 0
    for case in sorted(set(before) | set(after)):
        b, a = before.get(case, {}), after.get(case, {})
        for key in sorted(set(b) | set(a)):
            if b.get(key) != a.get(key):
                differences += 1
                print(f"{case}.{key}: {b.get(key)!r} -> {a.get(key)!r}")
    print(f"{len(before)} cases, {differences} difference(s)")
    return 1 if differences else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", nargs="?")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of the cases")
    parser.add_argument("--data_root", default=None, help="where the toy judges are cached (default OUT/data)")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    out = os.path.abspath(args.out)
    data_root = os.path.abspath(args.data_root or os.path.join(out, "data"))
    results = {}
    for case in args.cases.split(","):
        script, flags = CASES[case]
        results[case] = fingerprint_case(os.path.abspath(args.repo), os.path.join(out, case), data_root, script,
                                         flags, env)
        print(case, json.dumps({k: v for k, v in results[case].items() if k != "metrics"}), flush=True)
    with open(os.path.join(out, "fingerprint.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
