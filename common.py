"""Plumbing shared by the five paper scripts, which a reader can skip: all that a paper is about (networks,
losses, the training step and loop, pictures) is in its script. Nouns, never a flow that calls back:
 1. Flags ............ UserError, cli (exit codes), HelpFormatter, add_common_flags, parse_args (presets)
 2. Device and seed .. seed_everything, pick_device, autocast, to_device, adam, linear_decay, Dist
 3. Data ............. image folders (ImageFiles, domain_images, train_batches, test_batches, input_images,
                       download_dataset), attribute data (AttributeSet, CelebA, labels.csv), the toy datasets
 4. Shared blocks .... lsgan, init_normal
 5. Checkpoint, log .. save_checkpoint, load_checkpoint (CRCs checked), prepare_out (lock), RunLog (SIGTERM), Bench
 6. Pictures ......... heat_overlay, grey, save_grid, save_pictures, write_index_html
 7. Evaluation ....... the toy judge, KID, FID and its Inception, TranslationMetrics, AttributeMetrics, write_metrics
"""
import argparse
import collections
import colorsys
import csv
import errno
import functools
import glob
import hashlib
import html
import itertools
import json
import math
import os
import random
import signal
import socket
import sys
import time
import urllib.request  # and urllib.error
import warnings
import zipfile

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageOps
from torchvision.models import inception as tv_inception
from tqdm import tqdm


# ==================== 1. Flags ======================================================================================

class UserError(Exception):
    """Bad input from the user: printed as one paragraph, exit code 2, no traceback."""


class Diverged(Exception):
    """A loss became NaN or Inf: training stops with exit code 1 and keeps its last checkpoint."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM (`signum`) during training, after the checkpoint was saved: exit code 128 + signum."""

    def __init__(self, message, signum=signal.SIGINT):
        super().__init__(message)
        self.code = 128 + int(signum)  # 130 for Ctrl-C, 143 for SIGTERM, as if the signal had ended the process


# Errors of the disk, not of the code: a full disk, a quota, a read-only folder, no permission.
DISK_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS, errno.EACCES, errno.EPERM)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what SLURM and Kubernetes send before a kill


def cli(main):  # runs `main()`; the three exceptions above and disk errors become a message on stderr and an exit code
    try:
        main()
    except (UserError, Diverged, Interrupted) as e:
        print("\ninterrupted:" if isinstance(e, Interrupted) else "error:", e, file=sys.stderr)
        sys.exit(e.code if isinstance(e, Interrupted) else {UserError: 2, Diverged: 1}[type(e)])
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        print(f"error: cannot write {e.filename or 'a file'} ({e.strerror}). Free space on that disk, or choose a "
              f"writable --out, and run the same command again: what was written before is kept.", file=sys.stderr)
        sys.exit(2)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help: a flag's default once (none where its help says what None means), and its toy value (`action.toy`)."""

    def _get_help_string(self, action):
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        shown = [] if hidden else ["default: %(default)s"]
        shown += [f"on toy data: {action.toy}"] if hasattr(action, "toy") else []
        return action.help + (f" ({'; '.join(shown)})" if shown else "")


def add_common_flags(parser, script, extra_phases=(), data="toy"):
    """The flags every script has -> their groups by name ("data", "training", "paper", "phases"), for its own."""
    parser.allow_abbrev = False  # a flag is given in full, so that presets and checkpoints see which ones were
    parser.epilog = "Defaults are the paper's; on toy data (the default --data) a flag not given takes its toy value."
    titles = {"data": "data", "training": "training", "paper": "the paper's hyper-parameters and ablations",
              "phases": "output and phases"}  # the order of --help
    groups = {name: parser.add_argument_group(title) for name, title in titles.items()}
    add = groups["data"].add_argument
    add("--data", default=data, help="toy dataset (toy, toy-shape, toy-attr), a dataset under --data_root, or a path")
    add("--data_root", default="dataset", help="folder holding datasets (and the cached toy judge)")
    add("--download", nargs="?", const="", metavar="NAME", help="first fetch a CycleGAN dataset (NAME: --data)")
    add("--img_size", type=int, default=256, help="image side in pixels")
    add("--workers", type=int, default=2, help="DataLoader worker processes")
    add = groups["training"].add_argument
    add("--batch_size", type=int, default=1, help="images per domain per step (per process under torchrun)")
    add("--iters", type=int, default=1_000_000, help="training iterations")
    add("--lr", type=float, default=1e-4, help="initial learning rate")
    add("--seed", type=int, default=0, help="random seed (data order, init, toy data)")
    add("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto: cuda, else mps, else cpu")
    add("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    add("--compile", action="store_true", help="torch.compile the networks")
    add("--resume", action="store_true", help="continue training from <out>/ckpt.pt (or --ckpt)")
    add("--stop_at", type=int, default=None,
        help="end this invocation at step N with a checkpoint (for time-limited jobs); --resume continues to --iters")
    add = groups["phases"].add_argument
    add("--phase", default="train", choices=["train", "test", "eval", "bench", *extra_phases], help="what to do")
    add("--out", default=None, help=f"output folder (default: results/{script}_<data>)")
    add("--ckpt", default=None, help="checkpoint path (default: <out>/ckpt.pt)")
    add("--sample_every", type=int, default=1000, help="write a sample grid every N steps (0: never)")
    add("--save_every", type=int, default=10_000, help="write the checkpoint every N steps (and at the end)")
    add("--log_every", type=int, default=100, help="average the losses into log.csv every N steps")
    add("--input", default=None, help="test phase: translate this image file or folder instead of the test split")
    add("--inception_weights", default=None, help="eval: path of pt_inception-2015-12-05-6726825d.pth (FID Inception)")
    return groups


PER_INVOCATION = {"phase", "resume", "ckpt", "out", "device", "workers", "stop_at", "download", "input", "amp",
                  "compile", "inception_weights"}  # flags never taken from a checkpoint's saved arguments


def parse_args(parser, argv, script, presets, arch_flags, positive=()):
    """Parse the command line, then fill the flags it did not give: a new run from `presets["toy"]` on toy data
    (else `presets["real"]`), test, eval and --resume from the checkpoint (contradicting its architecture: error)."""
    for action in parser._actions:  # --help shows the toy preset's values
        if action.dest in presets["toy"]:
            action.toy = presets["toy"][action.dest]
    args = parser.parse_args(argv)
    tokens = {t.split("=")[0] for t in (sys.argv[1:] if argv is None else argv) if t.startswith("--")}
    given = {a.dest for a in parser._actions if tokens & set(a.option_strings)}  # a preset never overrides these
    if args.download is not None:
        if args.download:
            if "data" in given and args.data != args.download:
                raise UserError(f"--download {args.download} and --data {args.data} name different datasets; give one.")
            args.data = args.download
        download_dataset(args.data, args.data_root)
    data_name = args.data if args.data in TOY_NAMES else os.path.basename(os.path.normpath(args.data))
    args.out = args.out or os.path.join("results", f"{script}_{data_name}")
    args.ckpt = args.ckpt or os.path.join(args.out, "ckpt.pt")
    data_folder = os.path.realpath(args.data if os.path.exists(args.data) else os.path.join(args.data_root, args.data))
    if args.data not in TOY_NAMES and (os.path.realpath(args.out) + os.sep).startswith(data_folder + os.sep):
        raise UserError(f"--out {args.out} is inside the dataset {data_folder}: its sample grids and test pictures "
                        f"would become images of the dataset. Choose an --out outside it.")
    if args.phase in ("test", "eval") or args.resume:
        if not os.path.exists(args.ckpt):
            what = "--resume" if args.resume else f"--phase {args.phase}"
            raise UserError(f"{what} needs a checkpoint, and there is none at {args.ckpt}. Train first "
                            f"(python {script}.py --data {args.data}) or point --ckpt / --out at a run.")
        for k, v in read_checkpoint(args.ckpt, script)["args"].items():
            if k in arch_flags and k in given and getattr(args, k) != v:
                raise UserError(f"{args.ckpt} was trained with --{k} {v}, not {getattr(args, k)}: the architecture "
                                f"comes from the checkpoint; drop --{k} or use another --out/--ckpt.")
            if k not in given and k not in PER_INVOCATION and hasattr(args, k):
                setattr(args, k, v)
    else:
        for k, v in presets["toy" if args.data in TOY_NAMES else "real"].items():
            if k not in given:
                setattr(args, k, v)
    positive = {"img_size", "batch_size", "iters", "lr", "log_every", "stop_at", *positive}
    for k, v in vars(args).items():  # every number finite and >= 0; sizes, counts and rates above 0
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        finite = abs(v) <= float(np.finfo(np.float32).max)  # finite in float32 too (NaN fails <=)
        if not finite or v < 0 or (k in positive and v == 0):
            bound = "above 0" if k in positive else "of at least 0"
            raise UserError(f"--{k} {v} is out of range: it must be a finite number {bound}.")
    return args


# ==================== 2. Device, seed, precision, schedule, torchrun ================================================

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name, local_rank=0, amp=False):
    """--device: auto -> cuda, mps, cpu. Sets the CUDA speed switches; warns that --amp is CUDA only."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(d for d in available if available[d])
    if not available[name]:
        raise UserError(f"--device {name} was asked for, but this PyTorch build cannot use it. Use cpu or auto.")
    if name == "cuda":
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        return device
    if amp:
        warnings.warn("--amp (bf16 autocast) is only used on CUDA; running in fp32")
    return torch.device(name)


def autocast(amp, device):  # bf16 under --amp on CUDA, else a context that does nothing
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(amp) and device.type == "cuda")


def to_device(module, device):  # channels_last on CUDA
    return module.to(device, memory_format=torch.channels_last) if device.type == "cuda" else module.to(device)


def adam(params, lr, betas, device, weight_decay=0.0):  # fused on CUDA, multi-tensor (foreach) elsewhere
    cuda = device.type == "cuda"
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=cuda or None,
                            foreach=None if cuda else True)


def set_lr(optimizers, lr):
    for group in (g for opt in optimizers for g in opt.param_groups):
        group["lr"] = lr


def linear_decay(step, base_lr, total, decay_start):
    """Constant `base_lr` up to `decay_start`, then linearly to 0 at `total` (U-GAT-IT, CycleGAN)."""
    if step <= decay_start or total <= decay_start:
        return base_lr
    return base_lr * max(0.0, (total - step) / (total - decay_start))


def peak_memory_mb(device):  # CUDA max allocated, or the process's peak resident memory on CPU (Unix; 0 elsewhere)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # Unix only
    except ImportError:
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Dist:
    """torchrun's data parallelism: this process's rank (world 1 without torchrun), gradient averaging."""

    def __init__(self, device_flag):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available())
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda else "cpu")  # NCCL reduces CUDA tensors only
        self.main = self.rank == 0
        if self.world > 1 and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if cuda else "gloo")

    def broadcast(self, modules):  # every replica starts from rank 0's weights and buffers
        if self.world > 1:
            for t in [t for m in modules for t in (*m.parameters(), *m.buffers())]:
                dist.broadcast(t.data, 0)

    def average_gradients(self, modules):
        """The mean gradient over the ranks, one all-reduce: DDP's work without DDP's one-call-per-step rule."""
        if self.world == 1:
            return
        grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def close(self, modules):
        """Under torchrun each rank prints its weights' float64 sum (equal sums: identical replicas); the group ends."""
        if self.world > 1 and dist.is_initialized():
            total = sum(p.double().sum().item() for m in modules for p in m.parameters())
            print(f"rank {self.rank}: weights sum {total!r}")
            dist.destroy_process_group()


# ==================== 3. Data: unpaired image folders (the CycleGAN / U-GAT-IT layout), download ====================
IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CYCLEGAN_DATASETS = ("horse2zebra", "apple2orange", "summer2winter_yosemite", "monet2photo", "cezanne2photo",
                     "ukiyoe2photo", "vangogh2photo", "maps", "facades", "iphone2dslr_flower")
SELFIE2ANIME_URL = "https://drive.google.com/file/d/1xOWj1UVgp6NKMT3HbPhBbtq2A4EDkghF/view"
_stats = {"skipped": 0}  # unreadable images skipped so far (counted in the main process)


def list_images(folder):  # all image files under `folder`, recursively, sorted
    return sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                  if f.lower().endswith(IMG_EXTS))


def ugatit_transform(im, size, rng):  # U-GAT-IT's: flip, resize to size+30, random crop; rng None (testing): a resize
    if rng is None:
        return im.resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = im.resize((size + 30, size + 30), Image.BILINEAR)
    left, top = rng.randint(0, 30), rng.randint(0, 30)
    return im.crop((left, top, left + size, top + size))


def load_image(path):  # as RGB, EXIF-rotated; 16-bit grey scaled (not clipped) to 8 bits, float [0, 1] grey to [0, 255]
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I") or im.mode == "F":
            grey = np.asarray(im, dtype=np.float64)
            if grey.max() > 255:
                grey = grey / 257
            elif im.mode == "F" and grey.max() <= 1:
                grey = grey * 255
            im = Image.fromarray(grey.round().clip(0, 255).astype(np.uint8))
        return im.convert("RGB")


class ImageFiles(torch.utils.data.Dataset):
    """One domain and split: {'image' (3, S, S) in [-1, 1], 'name', 'skipped'} per index or (index, augmentation seed);
    an unreadable file is skipped in training, an error in testing. `transform(im, size, rng)` replaces U-GAT-IT's."""

    def __init__(self, files, size, train, root=None, labels=None, transform=None):
        self.files, self.root = files, root
        self.size, self.train = size, train
        self.labels, self.transform = labels, transform
        names = [os.path.relpath(f, root) if root else os.path.basename(f) for f in files]
        stems = [os.path.splitext(name)[0] for name in names]
        counts = collections.Counter(stems)
        # an output is named after its input without the extension, unless that names two (x.jpg, x.png: x.jpg.png)
        self.names = [stem if counts[stem] == 1 else name for stem, name in zip(stems, names)]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, item):
        index, aug_seed = item if isinstance(item, tuple) else (item, item)
        for tries in range(len(self.files)):
            path = self.files[(index + tries) % len(self.files)]
            try:
                im = load_image(path)
            except Exception as e:  # PIL raises many kinds for broken files
                if not self.train:
                    raise UserError(f"cannot read the image {path} ({e}); repair or remove it.") from None
                print(f"warning: skipping unreadable image {path}: {e}", file=sys.stderr)
                continue
            rng = random.Random(aug_seed) if self.train else None  # seeded per sample: the same in any worker
            im = (self.transform or ugatit_transform)(im, self.size, rng)
            image = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1
            item = {"image": image, "name": self.names[(index + tries) % len(self.files)], "skipped": tries}
            if self.labels is not None:
                item["labels"] = self.labels[(index + tries) % len(self.files)]
            return item
        raise UserError(f"none of the {len(self.files)} images in {self.root or self.files[0]} can be read.")


def shuffled_positions(n, seed, start=0, rank=0, world=1):
    """Endless shuffled (index, augmentation seed) pairs, fixed by position from `start`; rank r of K: r, r+K, ..."""
    perm, perm_epoch = None, -1
    for pos in itertools.count(start):
        p = pos * world + rank
        epoch, offset = divmod(p, n)
        if epoch != perm_epoch:
            perm, perm_epoch = np.random.default_rng([seed, epoch]).permutation(n), epoch
        yield int(perm[offset]), seed * 1_000_003 + p


def train_batches(dataset, batch_size, workers, seed, device, dist_, start_step, labels=False):
    """Endless device batches of `dataset` (with `labels`: (images, labels)) from `start_step` on, in an order set
    by `seed`, this process's share under torchrun (`dist_`); draws the loader's base seed from the global RNG."""
    sampler = shuffled_positions(len(dataset), seed, start_step * batch_size, dist_.rank, dist_.world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                         drop_last=True, worker_init_fn=ignore_stop_signals)

    def on_device(batch):
        _stats["skipped"] += int(batch["skipped"].sum())
        x = batch["image"].to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if labels:
            return x, batch["labels"].to(device, non_blocking=True)
        return x
    return map(on_device, _batches(iter(loader)))  # iter() now: the base seed is drawn here


def ignore_stop_signals(worker_id=None):
    """`worker_init_fn`: workers ignore Ctrl-C and SIGTERM, so that the main process ends them after its step."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _batches(it):  # a DataLoader iterator's batches; a worker's UserError keeps its message, not the traceback
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except UserError as e:
            raise UserError(str(e).strip().splitlines()[-1].split("UserError: ")[-1]) from None


def _layout_help(root):
    name = os.path.basename(os.path.normpath(root))
    get = f"CycleGAN datasets: --download NAME ({', '.join(CYCLEGAN_DATASETS)}); selfie2anime: {SELFIE2ANIME_URL}."
    if name in CYCLEGAN_DATASETS:
        get = f"--download {name} fetches exactly this dataset."
    if name == "selfie2anime":
        get = f"selfie2anime is on Google Drive: download it from {SELFIE2ANIME_URL} and unzip it there."
    return (f"Expected the unpaired layout {root}/{{trainA,trainB,testA,testB}}/ (or {root}/train/A etc.) with image "
            f"files (any names, {', '.join(IMG_EXTS)}) under each folder. {get} Or run on an embedded toy dataset: "
            f"--data toy, toy-shape or toy-attr.")


def dataset_dir(data, data_root, layout_help=_layout_help):  # --data as a path if it is one, else --data_root/--data
    root = data if os.path.exists(data) else os.path.join(data_root, data)
    if not os.path.isdir(root):
        raise UserError(f"{root} is {'a file, not' if os.path.exists(root) else 'not'} a dataset folder. "
                        f"{layout_help(root)}")
    return root


def domain_images(data, data_root, img_size, split, domain):
    """One split ('train', 'test') of domain 'A' or 'B' of --data at img_size: a toy split (GT masks; seed 0's data for
    every --seed: runs share test images) or the images in <data>/<split><domain> or <data>/<split>/<domain>."""
    if data == "toy-attr":
        raise UserError("toy-attr is a multi-attribute dataset (amgan.py, camconsistency.py); "
                        "two-domain scripts take --data toy or toy-shape.")
    if data in TOY_NAMES:
        return ToyDataset(data, split, img_size, domain)
    root = dataset_dir(data, data_root)
    for folder in (os.path.join(root, split + domain), os.path.join(root, split, domain)):
        if os.path.isdir(folder):
            files = list_images(folder)
            if not files:
                raise UserError(f"{folder} holds no images ({', '.join(IMG_EXTS)}), so the {split} split of "
                                f"domain {domain} is empty. {_layout_help(root)}")
            return ImageFiles(files, img_size, split == "train", root=folder)
    raise UserError(f"{root} has no {split}{domain}/ folder. {_layout_help(root)}")


def directions(direction="both"):  # the translations --direction asks for: (name, source domain, target domain)
    if direction == "both":
        return [("a2b", "A", "B"), ("b2a", "B", "A")]
    return [(direction, direction[0].upper(), direction[-1].upper())]


def test_batches(dataset, workers, batch_size=16):  # a pass over `dataset` in order: batches of dicts (image, name...)
    return _batches(iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)))


def input_images(path, img_size):  # --input: an image file or a folder of them as test items {'image', 'name'}
    files = [path] if os.path.isfile(path) else list_images(path)
    if not files:
        raise UserError(f"--input {path} is neither an image file nor a folder holding images ({', '.join(IMG_EXTS)}).")
    return ImageFiles(files, img_size, False, root=path if os.path.isdir(path) else None)


def download_dataset(name, data_root, url=None):
    """Fetch a CycleGAN dataset zip (or `url`, e.g. a file:// one) and unpack it to <data_root>/<name>."""
    target = os.path.join(data_root, name)
    if name == "selfie2anime":
        raise UserError(f"selfie2anime is on Google Drive and cannot be fetched by script: download it from "
                        f"{SELFIE2ANIME_URL} and unzip it so that {target}/trainA, trainB, testA, testB exist.")
    if url is None and name not in CYCLEGAN_DATASETS:
        raise UserError(f"--download knows the CycleGAN datasets {', '.join(CYCLEGAN_DATASETS)} and "
                        f"selfie2anime, not '{name}'.")
    url = url or f"https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"
    if os.path.isdir(target) and list_images(target):
        print(f"{target} already holds images; not downloading again")
        return target
    part = os.path.join(make_folder(data_root), f".{name}.zip.part")
    try:
        torch.hub.download_url_to_file(url, part, progress=True)
        if not zipfile.is_zipfile(part):
            raise UserError(f"{url} did not give a zip file; download it by hand and unzip it into {data_root}.")
        with zipfile.ZipFile(part) as z:
            members = [m for m in z.namelist() if not m.startswith("__MACOSX")]  # extractall drops '..' and '/'
            z.extractall(data_root if {m.split("/")[0] for m in members} == {name} else target, members)
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"could not download {name} from {url} ({e}). Download it on a machine with internet "
                        f"access and unzip it into {data_root} so that {target}/trainA exists.") from None
    finally:
        if os.path.exists(part):
            os.remove(part)
    print(f"{name} is in {target}")
    return target


# -------------------- Attribute data (amgan.py, camconsistency.py): CelebA, labels.csv, toy-attr --------------------
CELEBA_ATTR_FILE = "list_attr_celeba.txt"
CELEBA_DEFAULT_ATTRS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
CELEBA_HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")  # StarGAN keeps one hair colour at a time
TOY_ATTR_REGIONS = {"color": "mask", "sleeve": "mask_sleeves"}  # GT region of a change of that group
ATTR_TEST_SIZE = 2000  # test images taken from CelebA and labels.csv datasets (StarGAN, AMGAN)


class AttributeSet:
    """A dataset's attribute groups and the manipulated ones (--attrs): categorical (one-hot, cross-entropy) or binary
    (CelebA: a 0/1 column, BCE). Labels: (N, G) value indices; vector(): --attrs' groups, `slices` their columns."""

    def __init__(self, names, values, binary, manipulated, exclusive=()):
        # the constructor's arguments as plain data (a checkpoint stores them): AttributeSet(**attrs.state)
        self.state = {"names": list(names), "values": [list(v) for v in values], "binary": list(binary),
                      "manipulated": list(manipulated), "exclusive": [sorted(e) for e in exclusive]}
        self.names, self.values = self.state["names"], self.state["values"]
        self.binary, self.manipulated = self.state["binary"], self.state["manipulated"]
        self.exclusive = [set(e) for e in exclusive]  # binary groups of which at most one is 1
        ends = np.cumsum([0] + [1 if self.binary[g] else len(self.values[g]) for g in self.manipulated])
        self.c_dim = int(ends[-1])
        self.slices = {g: slice(int(a), int(b)) for g, a, b in zip(self.manipulated, ends[:-1], ends[1:])}

    def vector(self, labels):  # (N, G) labels -> (N, c_dim) float: binary groups 0/1, categorical groups one-hot
        return torch.cat([labels[:, g:g + 1].float() if self.binary[g]
                          else F.one_hot(labels[:, g], len(self.values[g])).float() for g in self.manipulated], 1)

    def set_value(self, labels, group, value):
        """Labels with `group` set to `value`; a CelebA hair colour set to 1 clears the other hair colours."""
        out = labels.clone()
        out[:, group] = value
        for other in [o for e in self.exclusive if group in e for o in e - {group}] if self.binary[group] else []:
            out[:, other] = torch.where(out[:, group] == 1, torch.zeros_like(out[:, other]), out[:, other])
        return out

    def changes(self, labels):  # every single-group change: (group, value, target, valid: images not yet at value)
        for g in self.manipulated:
            for v in range(len(self.values[g])):
                target = self.set_value(labels, g, v)
                yield g, v, target, (target != labels).any(1)

    def describe(self, group, value):
        return f"{self.names[group]}={self.values[group][value]}"

    def parse_target(self, text):  # 'color=red,sleeve=long' -> [(group, value), ...] of the manipulated groups
        valid = {self.describe(g, v): (g, v) for g in self.manipulated for v in range(len(self.values[g]))}
        parts = [p.strip() for p in text.split(",") if p.strip()]
        bad = [p for p in parts if p not in valid]
        if not parts or bad:
            raise UserError(f"--target {text!r}: {repr(bad[0]) if bad else 'nothing'} is not a value of an attribute "
                            f"that --attrs manipulates; choose among {', '.join(valid)}.")
        return [valid[p] for p in parts]


def select_attributes(names, values, binary, attrs_arg, default, exclusive_names=()):
    """An AttributeSet manipulating the comma-separated --attrs (or `default`)."""
    chosen = [a.strip() for a in attrs_arg.split(",") if a.strip()] if attrs_arg else list(default)
    unknown = [a for a in chosen if a not in names]
    if unknown or not chosen:
        raise UserError(f"--attrs: unknown attribute {', '.join(unknown) or '(none given)'}; this dataset has "
                        f"{', '.join(names)}.")
    manipulated = [names.index(a) for a in chosen]
    single = [names[g] for g in manipulated if len(values[g]) < 2]
    if single:
        raise UserError(f"--attrs: {', '.join(single)} takes a single value in this dataset, so there is nothing to "
                        f"change it to; choose other attributes (this dataset has {', '.join(names)}).")
    return AttributeSet(names, values, binary, manipulated, [[g for g in manipulated if names[g] in exclusive_names]])


def _read_lines(path):  # a UTF-8 BOM is dropped, a byte that is not UTF-8 is an error naming its line
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = data[:e.start].count(10) + 1  # 10: a newline byte
        raise UserError(f"{path}, line {line}: byte {data[e.start]:#04x} is not UTF-8; save it as UTF-8.") from None


def _refuse_contradicting_rows(path, entries):
    """A file twice in the (file, labels, line) `entries` with different labels is an error naming both lines."""
    first = {}
    for file, labels, number in entries:
        seen = first.setdefault(file, (labels, number))
        if seen[0] != labels:
            raise UserError(f"{path} lists {file} twice with different labels, on lines {seen[1]} and {number}; "
                            f"keep the right one.")


def read_celeba_attributes(path):
    """CelebA's list_attr_celeba.txt (count, 40 names, rows: a file, 40 values 1/-1) -> (names, files, (N, 40) 0/1)."""
    lines = _read_lines(path)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise UserError(f"{path}, line 1: expected the number of images, got {(lines[0] if lines else '')!r}.")
    names = lines[1].split()
    entries = []  # (file, its 0/1 values, line number)
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise UserError(f"{path}, line {number}: expected a file name and {len(names)} values, got "
                            f"{len(parts) - 1} values.")
        for name, v in zip(names, parts[1:]):
            if v not in ("1", "-1"):
                raise UserError(f"{path}, line {number}: value {v!r} of {name} is not 1 or -1.")
        entries.append((parts[0], [v == "1" for v in parts[1:]], number))
    if int(lines[0]) != len(entries):
        raise UserError(f"{path}, line 1: says {int(lines[0])} images, but the file lists {len(entries)}.")
    _refuse_contradicting_rows(path, entries)
    labels = torch.tensor([e[1] for e in entries], dtype=torch.long).reshape(len(entries), len(names))
    return names, [e[0] for e in entries], labels


def read_labels_csv(path):  # 'filename,<attribute>,...' with a value name per cell -> (names, values, files, labels)
    reader = csv.reader(_read_lines(path))
    header = next(reader, None)
    if not header or header[0].strip() != "filename" or len(header) < 2:
        raise UserError(f"{path}, line 1: expected the header 'filename,<attribute>,<attribute>,...', got "
                        f"{','.join(header or [])!r}.")
    names = [h.strip() for h in header[1:]]
    if len(set(names)) != len(names) or not all(names):
        raise UserError(f"{path}, line 1: attribute names must be unique and non-empty, got {names}.")
    entries = []  # (file, its value names, line number)
    for row in reader:
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise UserError(f"{path}, line {reader.line_num}: expected {len(header)} cells "
                            f"(filename and {len(names)} attributes), got {len(row)}.")
        row = [c.strip() for c in row]
        if "" in row:
            raise UserError(f"{path}, line {reader.line_num}: empty cell ({(['filename'] + names)[row.index('')]}).")
        entries.append((row[0], row[1:], reader.line_num))
    if not entries:
        raise UserError(f"{path} lists no images.")
    _refuse_contradicting_rows(path, entries)
    cells = [e[1] for e in entries]
    values = [sorted({r[k] for r in cells}) for k in range(len(names))]
    labels = torch.tensor([[values[k].index(c) for k, c in enumerate(r)] for r in cells], dtype=torch.long)
    return names, values, [e[0] for e in entries], labels


def attribute_transform(im, size, rng, crop=None):
    """Flip (train), a centre crop of side `crop` (CelebA: StarGAN's CenterCrop(178)), resize to size x size."""
    if rng is not None and rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if crop:
        left, top = round((im.size[0] - crop) / 2), round((im.size[1] - crop) / 2)
        im = im.crop((left, top, left + crop, top + crop))
    return im.resize((size, size), Image.BILINEAR)


def _split_indices(n, test_size):  # StarGAN's: shuffled with random.seed(1234), the first `test_size` for testing
    order = list(range(n))
    random.Random(1234).shuffle(order)
    return {"test": order[:test_size], "train": order[test_size:]}


def _attribute_layout_help(root):
    return (f"Expected either CelebA ({root}/{CELEBA_ATTR_FILE} and the images in {root}/img_align_celeba/) or a "
            f"labels table ({root}/labels.csv with the header 'filename,<attribute>,...' and the images in "
            f"{root}/images/; docs/data.md says how to convert DeepFashion and Shopping100k). Or run on the embedded "
            f"toy dataset: --data toy-attr.")


def attribute_data(data, data_root, img_size, attr_names, split):
    """(AttributeSet manipulating --attrs `attr_names` (None: the default), one split at img_size) of toy-attr, a CelebA
    or a labels.csv folder. Items: image, labels (G,), name (toy-attr: and GT masks); the dataset's `labels` has all."""
    if data in TOY_NAMES:
        if data != "toy-attr":
            raise UserError(f"{data} is a two-domain toy dataset; the attribute scripts take --data toy-attr.")
        groups = list(TOY_ATTRS)
        chosen = select_attributes(groups, list(TOY_ATTRS.values()), [False] * len(groups), attr_names,
                                   ("color", "sleeve"))  # size and bg are nuisance groups (reference matching)
        return chosen, ToyDataset("toy-attr", split, img_size)
    root = dataset_dir(data, data_root, _attribute_layout_help)
    if os.path.isfile(os.path.join(root, CELEBA_ATTR_FILE)):
        names, files, labels = read_celeba_attributes(os.path.join(root, CELEBA_ATTR_FILE))
        chosen = select_attributes(names, [["0", "1"]] * len(names), [True] * len(names), attr_names,
                                   CELEBA_DEFAULT_ATTRS, exclusive_names=CELEBA_HAIR)
        folder = os.path.join(root, "img_align_celeba")
        test_size = ATTR_TEST_SIZE
        transform = functools.partial(attribute_transform, crop=178)
    elif os.path.isfile(os.path.join(root, "labels.csv")):
        names, values, files, labels = read_labels_csv(os.path.join(root, "labels.csv"))
        chosen = select_attributes(names, values, [False] * len(names), attr_names, names)
        folder = os.path.join(root, "images")
        test_size = min(ATTR_TEST_SIZE, max(1, len(files) // 10))  # small tables: a tenth
        transform = attribute_transform
    else:
        raise UserError(f"{root} holds neither {CELEBA_ATTR_FILE} nor labels.csv. {_attribute_layout_help(root)}")
    if not os.path.isdir(folder):
        raise UserError(f"{folder} does not exist: the images of {root} go there. {_attribute_layout_help(root)}")
    keep = _split_indices(len(files), test_size)[split]
    if not keep:
        raise UserError(f"{root}: the {split} split is empty ({len(files)} images, {test_size} of them for testing).")
    return chosen, ImageFiles([os.path.join(folder, files[i]) for i in keep], img_size, split == "train",
                              root=folder, labels=labels[keep], transform=transform)


# -------------------- The embedded toy datasets ----------------------------------------------------------------------
# Three procedural datasets (seeded, any size S >= 16, no files) with ground-truth masks, which make attention
# measurable. Pixel [i, j] is centred at (x, y) = (j + 0.5, i + 0.5); colours are built in [0, 1], returned in [-1, 1].
TOY_NAMES = ("toy", "toy-shape", "toy-attr")
TOY_ATTRS = {"color": ["red", "green", "blue", "yellow", "white"], "sleeve": ["sleeveless", "short", "long"],
             "size": ["small", "large"], "bg": ["plain", "textured"]}
TOY_SPLIT_SIZES = {"train": 2000, "test": 200}  # per domain for toy/toy-shape, total for toy-attr
TOY_VERSION = 2  # bump when the generators below change: cached judges carry it in their file name
TOY_JUDGE_STEPS = {"toy": 200, "toy-shape": 300, "toy-attr": 500}  # the judge's training steps per dataset
_TOY_SHIRT_RGB = {"red": (0.85, 0.15, 0.15), "green": (0.2, 0.7, 0.25), "blue": (0.15, 0.3, 0.85),
                  "yellow": (0.9, 0.8, 0.15), "white": (0.93, 0.93, 0.93)}  # far from the muted backgrounds


def _toy_noise_background(rng, size, mean, spread):
    """Low-frequency colour noise: a 4x4 grid of colours (mean +- spread per channel), bicubic, in [0, 1]."""
    grid = np.asarray(mean)[:, None, None] + rng.uniform(-spread, spread, (3, 4, 4))
    t = F.interpolate(torch.from_numpy(grid.astype(np.float32))[None], size=(size, size), mode="bicubic")
    return t[0].clamp_(0, 1).numpy()


def _toy_shaded_object(rng, xx, yy, cx, cy, radius):
    """(3, S, S): a clear colour (value <= 0.75: +30% never clips), its brightness +-30% along a random direction."""
    hue = rng.uniform(0.5, 1.05) % 1.0  # cyan, blue, purple, magenta, red: not the grass's greens and yellows
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 0.75)), dtype=np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    t = ((xx - cx) * np.cos(phi) + (yy - cy) * np.sin(phi)) / radius
    return colour[:, None, None] * (1 + 0.3 * np.clip(t, -1, 1))[None]


def _toy_ellipse(rng, domain, xx, yy, size):  # toy: a rotated ellipse, shaded colour (A) or black-white stripes (B)
    a, b = rng.uniform(0.12, 0.3, 2) * size  # semi-axes
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    ex, ey = np.hypot(a * c, b * s), np.hypot(a * s, b * c)  # half-extents of the rotated ellipse's bounding box
    cx, cy = rng.uniform(ex, size - ex), rng.uniform(ey, size - ey)  # the ellipse inside the image
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c  # along the ellipse's own axes
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1
    if domain == "A":
        return mask, mask, _toy_shaded_object(rng, xx, yy, cx, cy, max(a, b))
    angle = rng.uniform(0, np.pi)
    period = max(4.0, rng.uniform(0.1, 0.2) * size)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform()  # across the stripes, in periods
    return mask, mask, np.broadcast_to(((t % 1) < 0.5).astype(np.float32), (3, size, size))


def _toy_disc_or_square(rng, domain, xx, yy, size):
    """toy-shape: a disc of radius r (A) or a square of the same area (B); GT mask: the square of side 2r."""
    r = rng.uniform(0.15, 0.27) * size
    cx, cy = rng.uniform(r, size - r, 2)
    dx, dy = np.abs(xx - cx), np.abs(yy - cy)
    half_side = r * np.sqrt(np.pi) / 2
    shape = dx**2 + dy**2 <= r**2 if domain == "A" else (dx <= half_side) & (dy <= half_side)
    return (dx <= r) & (dy <= r), shape, _toy_shaded_object(rng, xx, yy, cx, cy, r)


def _toy_shirt(rng, labels, xx, yy, size):
    """toy-attr: a shirt (torso, neckline, sleeves) on a muted background -> background, image, and masks."""
    colour_id, sleeve_id, size_id, bg_id = labels
    mean = rng.uniform(0.3, 0.55) + rng.uniform(-0.05, 0.05, 3)
    if bg_id == 0:
        background = np.broadcast_to(mean[:, None, None], (3, size, size)).astype(np.float32)
    else:
        fine = rng.uniform(-0.12, 0.12, (3, max(4, size // 3), max(4, size // 3)))  # ~3 px cells
        fine = F.interpolate(torch.from_numpy(fine.astype(np.float32))[None], size=(size, size), mode="bilinear")
        background = np.clip(_toy_noise_background(rng, size, mean, 0.08) + fine[0].numpy(), 0, 1)
    # Torso: height h, shoulder width 0.62h, hem width 0.56h, top edge (shoulder line) at y0.
    h = (rng.uniform(0.56, 0.62) if size_id == 1 else rng.uniform(0.38, 0.42)) * size
    top_w, hem_w = 0.62 * h, 0.56 * h
    # Sleeves: width sw, from the shoulder corners, tilted out by alpha; long 0.8h, short 35% of that.
    alpha = rng.uniform(0.17, 0.3)
    sw, long_len = 0.2 * h, 0.8 * h
    # Place the shirt (with long sleeves: the largest extent) fully inside the image.
    half_w = top_w / 2 + long_len * np.sin(alpha) + sw * np.cos(alpha)
    cx = rng.uniform(half_w, size - half_w)
    y0 = rng.uniform(sw * np.sin(alpha), size - h)  # the sleeves' outer top corners rise that much above y0
    t = (yy - y0) / h  # 0 at the shoulders, 1 at the hem
    torso = (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= (top_w + (hem_w - top_w) * t) / 2)
    torso &= (xx - cx) ** 2 + (yy - y0) ** 2 > (0.12 * h) ** 2  # neckline
    sleeves_long, sleeves_drawn = np.zeros_like(torso), np.zeros_like(torso)
    drawn_len = (0.0, 0.35 * long_len, long_len)[sleeve_id]
    for side in (-1, 1):
        # the sleeve's frame: `along` it from the shoulder corner, `across` it away from the torso
        px, py = xx - (cx + side * top_w / 2), yy - y0
        along = px * side * np.sin(alpha) + py * np.cos(alpha)
        across = px * side * np.cos(alpha) - py * np.sin(alpha)
        band = (across >= 0) & (across <= sw) & (along >= 0)
        sleeves_long |= band & (along <= long_len)
        sleeves_drawn |= band & (along <= drawn_len)
    shirt = torso | sleeves_drawn
    colour = np.array(_TOY_SHIRT_RGB[TOY_ATTRS["color"][colour_id]]) + rng.uniform(-0.04, 0.04, 3)
    shade = 1.08 - 0.2 * np.clip(t, 0, 1) - 0.08 * sleeves_drawn  # lit from above, sleeves darker
    image = np.where(shirt[None], np.clip(colour[:, None, None] * shade[None], 0, 1), background)
    return background, image, shirt, torso, sleeves_long


def _toy_rng(name, split, index, domain, seed):  # from small integer ids: Python's hash() is salted per process
    ids = [seed, TOY_NAMES.index(name), list(TOY_SPLIT_SIZES).index(split), {"A": 0, "B": 1, None: 2}[domain], index]
    return np.random.default_rng(ids)


def toy_render(name, split, index, size, domain=None, seed=0):
    """Sample `index` of a toy dataset at `size` px (`domain` 'A'/'B', None for toy-attr): float32 image and
    background in [-1, 1], mask (1, S, S); toy-attr adds mask_torso, mask_sleeves and labels (TOY_ATTRS order)."""
    size = int(size)
    rng = _toy_rng(name, split, int(index), domain, int(seed))
    c = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    xx, yy = np.meshgrid(c, c)
    out = {}
    if name == "toy-attr":
        labels = [int(rng.integers(len(values))) for values in TOY_ATTRS.values()]  # the first draws
        background, image, mask, torso, sleeves = _toy_shirt(rng, labels, xx, yy, size)
        out["mask_torso"] = torch.from_numpy(torso[None].astype(np.float32))
        out["mask_sleeves"] = torch.from_numpy(sleeves[None].astype(np.float32))
        out["labels"] = torch.tensor(labels, dtype=torch.long)
    else:
        # Grass with a nearly fixed mean colour: generators built on instance norm cannot recover an image's mean colour
        grass = np.array([0.38, 0.55, 0.25]) + rng.uniform(-0.07, 0.07) + rng.uniform(-0.04, 0.04, 3)
        background = _toy_noise_background(rng, size, grass, spread=0.1)
        scene = _toy_ellipse if name == "toy" else _toy_disc_or_square
        mask, shape, obj = scene(rng, domain, xx, yy, size)  # the GT mask, the shape drawn, its colours
        image = np.where(shape[None], obj, background)
    out["image"] = torch.from_numpy(np.asarray(image, dtype=np.float32) * 2 - 1)
    out["background"] = torch.from_numpy(np.asarray(background, dtype=np.float32) * 2 - 1)
    out["mask"] = torch.from_numpy(mask[None].astype(np.float32))
    return out


class ToyDataset(torch.utils.data.Dataset):
    """A toy split (and domain), rendered on the fly: ImageFiles-like items with GT masks; toy-attr has `labels`."""

    def __init__(self, name, split, size, domain=None, seed=0):
        self.name, self.split = name, split
        self.size, self.domain = size, domain
        self.seed = seed
        if name == "toy-attr":  # a sample's labels are its generator's first draws: no rendering needed
            rngs = [_toy_rng(name, split, i, None, seed) for i in range(len(self))]
            self.labels = torch.tensor([[int(rng.integers(len(v))) for v in TOY_ATTRS.values()] for rng in rngs])

    def __len__(self):
        return TOY_SPLIT_SIZES[self.split]

    def __getitem__(self, item):
        i = item[0] if isinstance(item, tuple) else item
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        item = toy_render(self.name, self.split, i, self.size, self.domain, self.seed)
        del item["background"]
        return {**item, "name": f"{i:05d}", "skipped": 0}


# ==================== 4. Shared blocks: what several papers use (each script holds its own networks) =========

def lsgan(x, target):  # least-squares GAN term (Mao et al. 2017): mean (x - target)^2, target 1 (real) or 0 (fake)
    return F.mse_loss(x, torch.full_like(x, target))


def init_normal(module, std=0.02):  # N(0, std) weights, zero biases in every conv and linear (before spectral norm)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ==================== 5. Checkpoint and run log: one resumable file, log.csv, Ctrl-C, --phase bench =================
CKPT_VERSION = 2  # bump when the checkpoint layout changes (2: attribute scripts store their attribute set)


def rng_state():  # Python's, numpy's and torch's global RNG states as tensors and plain data (for weights_only)
    version, python_state, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {"python": [version, list(python_state), gauss], "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    np.random.set_state((state["numpy"][0], state["numpy"][1].numpy(), *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, script, flags, step, models, optimizers, extra=None):
    """Everything to resume, atomically (flags, step, networks, optimizers, RNG, `extra`). NaN/Inf weights raise
    Diverged, a failed write UserError; the old file is kept either way."""
    bad = [k for k, m in models.items() if not all(t.isfinite().all() for t in m.state_dict().values())]
    if bad:
        kept = f"{path} keeps the last checkpoint before it" if os.path.exists(path) else "no checkpoint was saved"
        raise Diverged(f"the weights of {', '.join(bad)} became NaN/Inf by step {step}; {kept}. Try a lower --lr, or "
                       f"run without --amp.")
    state = {"script": script, "version": CKPT_VERSION, "step": step, "args": dict(flags),
             "models": {k: m.state_dict() for k, m in models.items()},
             "optimizers": {k: o.state_dict() for k, o in optimizers.items()}, "rng": rng_state(), "extra": extra or {}}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk surfaces as either
        if os.path.exists(tmp):
            os.remove(tmp)
        mb = sum(t.numel() * t.element_size() for m in models.values() for t in m.state_dict().values()) * 3 / 2**20
        kept = "The previous checkpoint is kept: continue with --resume" if os.path.exists(path) else "Run again"
        raise UserError(f"could not write {path} ({str(e).splitlines()[0]}); it needs about {mb:.0f} MB free (the "
                        f"networks and their Adam moments). {kept} after freeing space.") from None


def load_tensors(path, not_ours):
    """torch.load, weights_only (plain data never runs code), after checking the CRC-32 of every record of the zip
    file torch.save writes (torch.load does not); else UserError `not_ours`, not torch's pickle advice."""
    damaged = None
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                damaged = z.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            damaged = f"({e})"
    if damaged:
        raise UserError(f"{path} is damaged: its record {damaged} fails the CRC-32 check (a flipped bit, a bad disk or "
                        f"an interrupted copy). Use a good copy of it, or another checkpoint.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{not_ours} (torch.load: {type(e).__name__}).") from None


def read_checkpoint(path, script):  # the checkpoint dict, checked: a whole one of `script` in this version's layout
    state = load_tensors(path, f"{path} is not a checkpoint of this project")
    if not isinstance(state, dict) or state.get("script") != script:
        other = state.get("script") if isinstance(state, dict) else None
        raise UserError(f"{path} is a checkpoint of {other or 'something else'}, not of {script}.py; "
                        f"point --ckpt or --out at a {script}.py run.")
    if state.get("version") != CKPT_VERSION:
        raise UserError(f"{path} has checkpoint layout version {state.get('version')}, and this code reads version "
                        f"{CKPT_VERSION}: it was written by another version of this project. Use that version, "
                        f"or train a new run.")
    missing = {"step", "args", "models", "optimizers", "rng", "extra"} - set(state)
    if missing:
        raise UserError(f"{path} lacks {', '.join(sorted(missing))}: it is damaged or not a whole checkpoint.")
    return state


def load_checkpoint(path, script, models, optimizers=None, state=None):
    """Load networks (and optimizers, if saved) in place -> the checkpoint dict (`state`: already read); not the RNG."""
    state = state or read_checkpoint(path, script)
    if optimizers and "exported_from" in state["extra"]:
        raise UserError(f"{path} is an export (the generators alone, for inference) of "
                        f"{state['extra']['exported_from']}: to continue training, give --ckpt that file.")
    absent = [k for k in models if k not in state["models"]]
    if absent:
        raise UserError(f"{path} holds {', '.join(state['models'])} and not {', '.join(absent)} (an export, or "
                        f"converted weights without them), and this needs them too. Use the run's own ckpt.pt.")
    if optimizers and not state["optimizers"]:
        print(f"{path} holds no optimizer state (converted weights): training goes on with fresh Adam moments")
        optimizers = None
    try:
        for k, m in models.items():
            m.load_state_dict(state["models"][k])
        for k, o in (optimizers or {}).items():
            o.load_state_dict(state["optimizers"][k])
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{path} does not match this architecture ({str(e).splitlines()[0]}); it was written "
                        f"with other network flags. Use its own flags or another --out.") from None
    return state


def make_folder(path):  # os.makedirs, or UserError when `path` cannot be a folder (a file there, no permission...)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder {path} ({e.strerror}); choose another --out.") from None
    return path


_locks = {}  # run folder -> the lock file this process holds open (the OS lets go of it when the process ends)


def lock_run_folder(out):
    """Lock <out>/.lock for the rest of this process: a second training in `out` is refused, naming the first's
    process (its line in the file); an OS lock goes with its process, so a killed run's lock is taken over. fcntl on
    Unix and msvcrt on Windows are imported here: neither exists on the other."""
    if os.path.realpath(out) in _locks:
        return
    f = open(os.path.join(out, ".lock"), "a+b")
    try:
        if os.name == "nt":
            import msvcrt
            f.seek(1 << 20)  # lock a byte far past the holder's line, which the refused run reads
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK):  # a disk without locks
            warnings.warn(f"cannot lock {f.name} ({e.strerror}): nothing keeps a second training out of {out}")
            return
        f.seek(0)
        holder = f.read().decode(errors="replace").strip() or "a process that has not written its name yet"
        f.close()
        raise UserError(f"{out} is in use by a training that is still running: {holder}. Wait for it to end, stop it "
                        f"(Ctrl-C or SIGTERM saves a checkpoint; then --resume), or choose another --out.") from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{' '.join(sys.argv)}\n".encode())
    f.flush()
    _locks[os.path.realpath(out)] = f


def prepare_out(out, ckpt, flags, resume, main=True):
    """The run folder `out`, locked, with args.json (main process); an earlier run's `ckpt` or log is an error unless
    `resume`; a killed save's temp files go."""
    if main:
        lock_run_folder(make_folder(out))
    if not resume:
        for earlier in (ckpt, os.path.join(out, "log.csv")):
            if os.path.exists(earlier):
                raise UserError(f"{earlier} already exists and a new run would overwrite it. Continue it with "
                                f"--resume, pick another --out, or delete the folder if you mean to start over.")
    if main:
        make_folder(os.path.join(out, "samples"))
        for stale in glob.glob(glob.escape(ckpt) + ".tmp*"):
            os.remove(stale)
        with open(os.path.join(out, "args.json"), "w") as f:
            json.dump(flags, f, indent=2)


def catch_stop_signals(received):
    """Ctrl-C and SIGTERM append their number to `received` (the loop ends its step, saves) -> the old handlers."""
    return {signum: signal.signal(signum, lambda number, _: received.append(number)) for signum in STOP_SIGNALS}


def restore_signals(handlers):
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


class RunLog:
    """`with RunLog(...) as log:` around the loop: <out>/log.csv and the progress bar. add(losses) sums on the device,
    write() averages (NaN/Inf: Diverged) and rewrites log.csv; interrupted(step): Ctrl-C or SIGTERM received."""

    def __init__(self, out, ckpt, last_step, log_every, dist_, start_step, elapsed=0.0):
        self.path = os.path.join(out, "log.csv")
        self.ckpt = ckpt  # named in the message when a loss diverges
        self.dist, self.every = dist_, log_every
        self.t0 = time.time() - elapsed
        self.sums, self.counts = {}, {}
        self.first, self.last_saved = start_step + 1, start_step  # first: of the current log interval
        self.rows = []  # those written so far
        if dist_.main and os.path.exists(self.path):  # a resumed run keeps the rows up to its step
            with open(self.path) as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
            self._save()
        _stats["skipped"] = int(self.rows[-1]["skipped_images"]) if self.rows else 0  # a resumed run counts on
        self.bar = tqdm(total=last_step, initial=start_step, disable=not dist_.main, dynamic_ncols=True,
                        mininterval=2, desc=os.path.basename(out))
        self.stop = []  # Ctrl-C or SIGTERM: the step finishes, then the loop saves and stops
        self.old_handlers = catch_stop_signals(self.stop)

    def _save(self):
        tail = ["lr", "seconds", "skipped_images"]
        terms = dict.fromkeys(k for row in self.rows for k in row if k not in ["step", *tail])  # in order of arrival
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, ["step", *terms, *tail], restval="")
            writer.writeheader()
            writer.writerows(self.rows)

    def seconds(self):  # training time so far, across resumes
        return time.time() - self.t0

    def add(self, losses):
        for k, v in losses.items():
            self.sums[k] = self.sums[k] + v.detach() if k in self.sums else v.detach().clone()
            self.counts[k] = self.counts.get(k, 0) + 1
        self.bar.update(1)

    def write(self, step, lr):
        if not self.sums:
            return
        counts = torch.tensor(list(self.counts.values()))
        means = torch.stack(list(self.sums.values())).float().cpu() / counts  # the one host sync of the interval
        values = dict(zip(self.sums, means.tolist()))
        first, self.first = self.first, step + 1
        self.sums, self.counts = {}, {}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            kept = (f"the last good checkpoint (step {self.last_saved}) is kept at {self.ckpt}"
                    if os.path.exists(self.ckpt) else "no checkpoint was saved")
            raise Diverged(f"loss {', '.join(bad)} became NaN/Inf between steps {first} and {step}; training stopped "
                           f"and {kept}. Try a lower --lr, or run without --amp.")
        row = {"step": step, **{k: f"{v:.5g}" for k, v in values.items()}, "lr": f"{lr:.4g}",
               "seconds": f"{self.seconds():.1f}", "skipped_images": _stats["skipped"]}
        if self.dist.main:
            self.bar.set_postfix({k: row[k] for k in list(values)[:4]}, refresh=False)
            self.rows.append(row)
            self._save()

    def interrupted(self, step):  # the stop signal (0: none); under torchrun the ranks agree every log_every steps
        if self.dist.world == 1 or step % self.every:
            return self.stop[0] if self.stop and self.dist.world == 1 else 0
        received = torch.tensor([float(self.stop[0] if self.stop else 0)], device=self.dist.device)
        dist.all_reduce(received, op=dist.ReduceOp.MAX)
        return int(received.item())

    def __enter__(self):
        return self

    def __exit__(self, *exception):  # however the loop ends
        self.bar.close()
        restore_signals(self.old_handlers)
        if _stats["skipped"]:
            print(f"warning: {_stats['skipped']} unreadable images were skipped during training", file=sys.stderr)


class Bench:
    """--phase bench: `for step in bench.steps(): losses = ...`, then report(losses): it/s, img/s, memory, settings."""

    def __init__(self, device, img_size, batch_size, amp, compiled, warmup=3, timed=10):
        self.device = device
        cpu = f"cpu ({torch.get_num_threads()} threads)"
        self.settings = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
                         "img_size": img_size, "batch": batch_size, "amp": bool(amp) and device.type == "cuda",
                         "compile": bool(compiled)}
        self.warmup, self.timed = warmup, timed

    def steps(self):
        yield from range(1, self.warmup + 1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        yield from range(self.warmup + 1, self.warmup + self.timed + 1)

    def report(self, losses):
        float(sum(losses.values()))  # wait for the device
        seconds = time.perf_counter() - self.t0
        result = {**self.settings, "it_s": round(self.timed / seconds, 3),
                  "img_s": round(self.timed * self.settings["batch"] / seconds, 3),
                  "peak_mem_mb": round(peak_memory_mb(self.device), 1)}
        print(json.dumps(result))
        return result


def load_for_inference(path, script, nets, state=None):
    """-> (those of `nets` that `path` holds (ckpt.pt or an export), in eval mode; the step); `state`: already read."""
    state = state or read_checkpoint(path, script)
    nets = {k: m.eval() for k, m in nets.items() if k in state["models"]}
    load_checkpoint(path, script, nets, state=state)
    return nets, state["step"]


# ==================== 6. Pictures: heat colour map, sample grids, image files =======================================

def jet(x):  # the 'jet' colour map: (N,1,H,W) in [0,1] -> (N,3,H,W) in [0,1] (blue - cyan - yellow - red)
    return torch.cat([(1.5 - (4 * x - c).abs()).clamp(0, 1) for c in (3, 2, 1)], dim=1)


def normalise_map(attention, size):  # a (N,1,h,w) map upsampled to size x size, each image min-max scaled to [0,1]
    a = F.interpolate(attention.float(), size=(size, size), mode="bilinear", align_corners=False)
    lo, hi = a.amin(dim=(1, 2, 3), keepdim=True), a.amax(dim=(1, 2, 3), keepdim=True)
    return (a - lo) / (hi - lo).clamp_min(1e-8)


def heat_overlay(attention, image, alpha=0.5):  # attention as a jet heat map over the image; both in [-1, 1]
    return (alpha * jet(normalise_map(attention, image.shape[-1])) + (1 - alpha) * (image.float() + 1) / 2) * 2 - 1


def grey(mask):  # a (N,1,H,W) mask in [0,1] as a black-to-white picture in [-1, 1]
    return mask.float().expand(-1, 3, -1, -1) * 2 - 1


def save_grid(path, columns):  # a row per sample, a column per picture; `columns`: (N,3,H,W) tensors in [-1, 1]
    cells = torch.stack([c.detach().float().cpu() for c in columns], dim=1).flatten(0, 1)
    torchvision.utils.save_image((cells + 1) / 2, path, nrow=len(columns), padding=2, pad_value=1.0)


def save_pictures(folder, names, images, attention=None, under=None):
    """<folder>/<name>.png per image and, with `attention`, <name>_attention.png over `under` (or it)."""
    under = images if under is None else under
    for i, name in enumerate(names):
        path = os.path.join(folder, name)
        make_folder(os.path.dirname(path))  # a name may hold a subfolder
        torchvision.utils.save_image((images[i].detach().float().cpu() + 1) / 2, f"{path}.png")
        if attention is not None:
            overlay = heat_overlay(attention[i:i + 1], under[i:i + 1])[0]
            torchvision.utils.save_image((overlay.detach().float().cpu() + 1) / 2, f"{path}_attention.png")


def write_index_html(folder, title, flags, columns, rows):
    """<folder>/index.html: a heading, the run's `flags` (a dict), then a table with a column per name in `columns`
    and a row per (caption, [a picture's path relative to `folder`, or None for an empty cell])."""
    def cell(path):
        if path is None:
            return "<td></td>"
        link = html.escape(urllib.request.pathname2url(path))
        return f'<td><a href="{link}"><img src="{link}" alt="{html.escape(path)}"></a></td>'
    header = "".join(f"<th>{html.escape(c)}</th>" for c in ["", *columns])
    table = "".join(f"<tr><th>{html.escape(caption)}</th>{''.join(map(cell, paths))}</tr>\n" for caption, paths in rows)
    with open(os.path.join(folder, "index.html"), "w", encoding="utf-8") as f:
        f.write(f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
                f"<style>th, td {{padding: 2px; font: small sans-serif}}</style></head>\n<body>\n"
                f"<h1>{html.escape(title)}</h1>\n<p><code>{html.escape(json.dumps(flags))}</code></p>\n"
                f"<table>\n<tr>{header}</tr>\n{table}</table>\n</body>\n</html>\n")


# ==================== 7. Evaluation: the toy judge, KID and FID, the FID Inception, toy metrics, metrics.json =======

class ToyJudge(nn.Module):
    """A small CNN reading a toy image's domain or attributes; its pooled features are toy-KID's space."""

    def __init__(self, name):
        super().__init__()
        self.head_sizes = tuple(len(v) for v in TOY_ATTRS.values()) if name == "toy-attr" else (2,)
        # stride-1 convolutions + max-pooling (S -> S/16) see thin sleeves and square corners better than strided ones
        layers, channels = [], [3, 16, 32, 64, 64]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(0.2), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(64, k) for k in self.head_sizes)

    def features(self, x):  # (N, 64) pooled, norm 8: KID's kernel (x.y/d + 1)^3 stays in [0, 8]
        return F.normalize(self.body(x).mean(dim=(2, 3)), dim=1) * 8.0

    def forward(self, x):  # a list of logits, one per head
        feats = self.body(x).mean(dim=(2, 3))
        return [head(feats) for head in self.heads]


def _toy_augment(x, name, gen):  # flips, light blur, brightness jitter, noise: the judge also reads imperfect fakes
    coin = lambda p: (torch.rand(len(x), 1, 1, 1, generator=gen) < p)  # noqa: E731
    x = torch.where(coin(0.5), x.flip(3), x)
    if name != "toy-attr":  # shirts hang downwards; ellipses, discs and squares have no up
        x = torch.where(coin(0.5), x.flip(2), x)
    k = torch.tensor([1.0, 2.0, 1.0])
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), (torch.outer(k, k) / 16).expand(3, 1, 3, 3),
                       groups=3)
    x = torch.where(coin(0.3), blurred, x)
    gain = 1 + 0.1 * (2 * torch.rand(len(x), 1, 1, 1, generator=gen) - 1)  # brightness +-10%
    return ((x + 1) * gain - 1 + 0.02 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


@torch.enable_grad()  # also when an eval phase runs under no_grad
def train_toy_judge(name, size, seed=0, device="cpu", batch_size=64):
    """-> (the judge in eval mode, its mean test accuracy over domains or groups: >= 98% at 64 px, >= 95% at 32)."""
    def split_data(split):  # the whole split: images (N, 3, S, S), targets (N, heads)
        n = TOY_SPLIT_SIZES[split]
        if name == "toy-attr":
            items = [toy_render(name, split, i, size, None, seed) for i in range(n)]
            return torch.stack([item["image"] for item in items]), torch.stack([item["labels"] for item in items])
        items = [toy_render(name, split, i, size, domain, seed) for domain in "AB" for i in range(n)]
        return torch.stack([item["image"] for item in items]), torch.arange(2).repeat_interleave(n)[:, None]
    x, y = split_data("train")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        judge = ToyJudge(name).to(device)
    opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
    judge.train()
    for _ in range(TOY_JUDGE_STEPS[name]):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        xb, yb = _toy_augment(x[idx], name, gen).to(device), y[idx].to(device)
        opt.zero_grad(set_to_none=True)
        sum(F.cross_entropy(logits, yb[:, k]) for k, logits in enumerate(judge(xb))).backward()
        opt.step()
    x, y = split_data("test")
    judge.eval()
    with torch.no_grad():
        preds = [torch.cat(p) for p in zip(*[[l.argmax(1).cpu() for l in judge(xb.to(device))]
                                             for xb in x.split(256)])]
    if name == "toy-attr":  # per attribute group
        accuracies = [(p == y[:, k]).float().mean().item() for k, p in enumerate(preds)]
    else:  # per domain
        accuracies = [(preds[0] == y[:, 0]).float()[y[:, 0] == k].mean().item() for k in range(2)]
    return judge, sum(accuracies) / len(accuracies)


def load_toy_judge(name, size, data_root, device="cpu"):
    """(judge in eval mode, its mean test accuracy), trained once and cached in <data_root>/.toy_judge/."""
    path = os.path.join(data_root, ".toy_judge", f"{name}_{size}px_v{TOY_VERSION}.pt")
    if os.path.isfile(path):
        saved, judge = load_tensors(path, f"{path} is a damaged toy judge cache: delete it to retrain"), ToyJudge(name)
        judge.load_state_dict(saved["state_dict"])
        accuracy = saved["accuracy"]
    else:
        print(f"training the toy judge for {name} at {size} px once; cached in {path}")
        judge, accuracy = train_toy_judge(name, size, device=device)
        make_folder(os.path.dirname(path))
        torch.save({"state_dict": judge.cpu().state_dict(), "accuracy": accuracy}, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
    return judge.to(device).eval(), accuracy


def _as_float64(features):  # (N, D) tensor or array-like -> float64 numpy array
    return torch.as_tensor(features).detach().cpu().double().numpy()


def polynomial_kernel(x, y):  # KID's k(x, y) = (x.y / d + 1)^3 for every pair of rows (Binkowski et al. 2018)
    x, y = _as_float64(x), _as_float64(y)
    base = x @ y.T / x.shape[1] + 1.0
    return base * base * base  # = base ** 3, which numpy computes ten times slower


def mmd2_unbiased(x, y):  # mean_{i!=j} k(x_i,x_j) + mean_{i!=j} k(y_i,y_j) - 2 mean_{i,j} k(x_i,y_j)
    x, y = _as_float64(x), _as_float64(y)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise UserError(f"KID's unbiased MMD needs at least 2 images on each side, got {m} and {n}.")
    k_xx, k_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * polynomial_kernel(x, y).mean())


def kid_subsets(real, fake, n_subsets=100, subset_size=1000, seed=2020):
    """KID as torch-fidelity: mean and std of the unbiased MMD^2 over 100 subsets of min(N_real, N_fake, 1000) rows
    (clean-fid's rule), without replacement, fake then real, from RandomState(2020) (torch-fidelity's order, seed)."""
    real, fake = _as_float64(real), _as_float64(fake)
    m = min(len(real), len(fake), subset_size)
    rng = np.random.RandomState(seed)
    estimates = []
    for _ in range(n_subsets):
        fake_rows = fake[rng.choice(len(fake), m, replace=False)]
        estimates.append(mmd2_unbiased(real[rng.choice(len(real), m, replace=False)], fake_rows))
    return float(np.mean(estimates)), float(np.std(estimates))


def _block_sizes(n, n_blocks):  # TF-GAN's contiguous blocks of n rows: the last n % n_blocks are one row longer
    small, n_plus_one = divmod(n, n_blocks)
    return [small] * (n_blocks - n_plus_one) + [small + 1] * n_plus_one


def kid_blocks(real, fake, max_block_size=10):
    """KID as U-GAT-IT reports it (TF-GAN): unbiased MMD^2 of ceil(max(N) / max_block_size) contiguous block pairs ->
    (mean, standard error), nan for one block; min(N) // 2 blocks where TF-GAN would give a block under 2 rows (nan)."""
    real, fake = _as_float64(real), _as_float64(fake)
    n_blocks = max(1, min(math.ceil(max(len(real), len(fake)) / max_block_size), min(len(real), len(fake)) // 2))
    blocks_real = np.split(real, np.cumsum(_block_sizes(len(real), n_blocks))[:-1])
    blocks_fake = np.split(fake, np.cumsum(_block_sizes(len(fake), n_blocks))[:-1])
    estimates = np.array([mmd2_unbiased(r, f) for r, f in zip(blocks_real, blocks_fake)])
    if n_blocks == 1:
        return float(estimates[0]), float("nan")
    return float(estimates.mean()), float(math.sqrt(estimates.var(ddof=1) / n_blocks))


def _trace_sqrtm_product(cov1, cov2):  # tr sqrtm(cov1 cov2) of PSD matrices, from eig(cov1^1/2 cov2 cov1^1/2)
    eigvals, eigvecs = np.linalg.eigh(cov1)
    root1 = (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T
    middle = root1 @ cov2 @ root1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())


def fid_from_features(real, fake, eps=1e-6):
    """Frechet distance ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), unbiased covariances, float64, nan for
    non-finite features. The eigh route copes with singular covariances; if it fails, (S1 + eps I)(S2 + eps I)."""
    real, fake = _as_float64(real), _as_float64(fake)
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        return float("nan")  # numpy's eigh would raise
    mu1, mu2 = real.mean(0), fake.mean(0)
    cov1, cov2 = np.cov(real, rowvar=False, ddof=1), np.cov(fake, rowvar=False, ddof=1)
    try:
        trace_sqrt = _trace_sqrtm_product(cov1, cov2)
    except np.linalg.LinAlgError:
        trace_sqrt = float("nan")
    if not math.isfinite(trace_sqrt):  # pytorch-fid's fallback
        trace_sqrt = _trace_sqrtm_product(cov1 + eps * np.eye(len(cov1)), cov2 + eps * np.eye(len(cov1)))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def _build_fid_inception():
    """pytorch-fid's FID Inception, no weights: torchvision's Inception-v3 (1008 classes) pooling the TF way (hooks)."""
    def tf_pool(branch, _):  # the pool branch's input: the block's input pooled the TF way
        if branch.max_pool:
            return (F.max_pool2d(branch.block_input, 3, stride=1, padding=1),)
        return (F.avg_pool2d(branch.block_input, 3, stride=1, padding=1, count_include_pad=False),)
    net = tv_inception.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    for name, block in net.named_children():
        if not isinstance(block, (tv_inception.InceptionA, tv_inception.InceptionC, tv_inception.InceptionE)):
            continue
        block.branch_pool.max_pool = name == "Mixed_7c"
        block.register_forward_pre_hook(lambda b, inputs: setattr(b.branch_pool, "block_input", inputs[0]))
        block.branch_pool.register_forward_pre_hook(tf_pool)
    return net


FID_WEIGHTS_URL = os.environ.get("FID_WEIGHTS_URL", "https://github.com/mseitzer/pytorch-fid/releases/download/"
                                 "fid_weights/pt_inception-2015-12-05-6726825d.pth")


def fid_weights_file(weights_path=None):
    """`weights_path`, else the FID Inception weights in the torch hub cache, downloaded there once (no partial file
    left) when missing; SHA-256 checked against the prefix in FID_WEIGHTS_URL's file name (torch hub's convention)."""
    name = os.path.basename(FID_WEIGHTS_URL)
    hub_path, prefix = os.path.join(torch.hub.get_dir(), "checkpoints", name), torch.hub.HASH_REGEX.search(name)
    if prefix is None:
        raise UserError(f"FID_WEIGHTS_URL {FID_WEIGHTS_URL} must name a file with its SHA-256 prefix: name-<hex>.pth.")
    path, prefix = weights_path or hub_path, prefix.group(1)
    missing = f"--inception_weights {weights_path} does not exist" if weights_path else "No Inception weights found"
    if not weights_path and not os.path.isfile(path):
        print(f"downloading the FID Inception weights once: {FID_WEIGHTS_URL} -> {path}")
        try:
            make_folder(os.path.dirname(path))
            torch.hub.download_url_to_file(FID_WEIGHTS_URL, path, hash_prefix=prefix, progress=True)
        except (OSError, RuntimeError) as e:  # offline (URLError, timeout), a full disk, a wrong hash (RuntimeError)
            missing = f"Downloading {FID_WEIGHTS_URL} failed ({e})"
    if not os.path.isfile(path):
        raise UserError(f"{missing}. KID/FID need the FID Inception weights {name}: download {FID_WEIGHTS_URL} (on "
                        f"a machine with internet access) and put the file at {hub_path} or pass "
                        f"--inception_weights PATH.")
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if not digest.startswith(prefix):
        raise UserError(f"{path} has SHA-256 {digest[:8]}..., but the FID Inception weights ({name}) start with "
                        f"{prefix}: the file is truncated, corrupt or another network. Download it again from "
                        f"{FID_WEIGHTS_URL}.")
    return path


def fid_inception(weights_path=None):
    """(model, label): the FID Inception in eval mode, [-1, 1] images of any size -> (N, 2048) pool3 features."""
    fid_path = fid_weights_file(weights_path)
    net = _build_fid_inception()
    net.load_state_dict(torch.load(fid_path, map_location="cpu", weights_only=True))
    net.fc = nn.Identity()  # the classifier head is not needed: the avgpool output is pool3
    resize = nn.Upsample(size=(299, 299), mode="bilinear", align_corners=False)
    return nn.Sequential(resize, net).eval(), "fid-inception (pt_inception-2015-12-05)"


@torch.no_grad()
def extract_features(model, images_iter, device):
    """`model`'s (N, D) float64 CPU features of batches of [-1, 1] images as the references compute them: TF32 off, each
    image first rounded to the 256 levels v of a saved PNG, as torchvision's save_image rounds:
    v = floor((x + 1) / 2 * 255 + 0.5), x = v / 255 * 2 - 1."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        levels = (torch.floor((images.to(device).float().clamp(-1, 1) + 1) / 2 * 255 + 0.5) for images in images_iter)
        features = [model(v / 255 * 2 - 1).flatten(1).double().cpu() for v in levels]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    if not features:
        raise ValueError("extract_features got no images")
    return torch.cat(features)


def masked_psnr_l1(src, out, mask):  # PSNR (dB, <= 100) and L1 of out - src outside the mask, [0, 1] scale, image mean
    outside = (mask < 0.5).double().expand_as(src)
    diff = (out.double() - src.double()) / 2  # ((out + 1) - (src + 1)) / 2: the [0, 1] scale
    n_pixels = outside.flatten(1).sum(1)
    keep = n_pixels > 0
    mse = ((diff ** 2) * outside).flatten(1).sum(1)[keep] / n_pixels[keep]
    l1 = (diff.abs() * outside).flatten(1).sum(1)[keep] / n_pixels[keep]
    psnr = 10 * torch.log10(1 / mse.clamp_min(1e-10))  # MSE 0 -> 100 dB
    return psnr.mean().item(), l1.mean().item()


def attention_iou_pointing(attention, mask, threshold=0.5):
    """(mean IoU, pointing accuracy) of (N, 1, h, w) maps against GT masks: upsampled, min-max normalised,
    thresholded (a constant map selects all; both empty: IoU 1); pointing: the map's maximum is inside the mask."""
    flat, target = normalise_map(attention.double(), mask.shape[-1]).flatten(1), mask.flatten(1) > 0.5
    raw = attention.flatten(1)
    constant = (raw.amax(1) - raw.amin(1)) <= 1e-8 * raw.abs().amax(1).clamp_min(1)
    predicted = (flat >= threshold) | constant[:, None]
    intersection, union = (predicted & target).sum(1).double(), (predicted | target).sum(1).double()
    iou = torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))
    return iou.mean().item(), target.gather(1, flat.argmax(1, keepdim=True)).double().mean().item()


def _kid_fid(real, fake, prefix=""):  # KID x 100 (both estimators, with their spread); FID for Inception features
    out = {f"{prefix}kid_subsets_x100": [100 * v for v in kid_subsets(real, fake)],
           f"{prefix}kid_blocks_x100": [100 * v for v in kid_blocks(real, fake)]}
    return out if prefix else {**out, "fid": fid_from_features(real, fake)}


class TranslationMetrics:
    """--phase eval of two domains: add() a direction's test batch and its translations, add_real() the target's;
    summary(). Toy: the judge's verdict, PSNR/L1 outside the mask, attention IoU/pointing, toy-KID; real: KID, FID."""

    def __init__(self, data, img_size, data_root, ckpt, device, inception_weights=None):
        self.device, self.toy = device, data in TOY_NAMES
        self.parts = {}
        self.results = {"data": data, "img_size": img_size, "ckpt": ckpt}
        if self.toy:
            self.judge, self.results["judge_accuracy_real"] = load_toy_judge(data, img_size, data_root, device)
            self.features = lambda images: self.judge.features(images).double().cpu()
        else:
            inception, self.results["inception"] = fid_inception(inception_weights)
            self.features = lambda images: extract_features(inception.to(device), [images], device)

    def add(self, direction, batch, out, attention):
        """A test batch of the source domain (image, toy GT mask), its translations and attention maps."""
        x = batch["image"].to(self.device)
        part = self.parts.setdefault(direction, {"sums": {}, "n": 0})
        metrics = {}
        if self.toy:
            mask = batch["mask"].to(self.device)
            metrics["background_psnr_db"], metrics["background_l1"] = masked_psnr_l1(x, out, mask)
            target = "AB".index(direction[-1].upper())
            metrics["translation_success"] = (self.judge(out)[0].argmax(1) == target).float().mean().item()
            if attention is not None:
                metrics["attention_iou"], metrics["attention_pointing"] = attention_iou_pointing(attention, mask)
        for k, v in metrics.items():  # batch means weighted by the batch's size
            part["sums"][k] = part["sums"].get(k, 0.0) + v * len(x)
        part["n"] += len(x)
        part.setdefault("fake", []).append(self.features(out))

    def add_real(self, direction, batch):  # a test batch of the target domain, which the translations are compared with
        self.parts.setdefault(direction, {"sums": {}, "n": 0}).setdefault("real", []).append(
            self.features(batch["image"].to(self.device)))

    def summary(self):  # the results dict: an entry per direction
        for direction, part in self.parts.items():
            means = {k: v / part["n"] for k, v in part["sums"].items()}
            kid_fid = _kid_fid(torch.cat(part["real"]), torch.cat(part["fake"]), "toy_" if self.toy else "")
            self.results[direction] = {**means, "images": part["n"], **kid_fid}
        return self.results


class AttributeMetrics:
    """--phase eval of attributes: add() each single-attribute change, summary(). toy-attr: the judge's attribute/kept
    accuracy, PSNR/L1 outside the changed region, attention IoU/pointing, retrieval_top30 (one of the 30 nearest train
    images in judge features has all target labels); else KID, FID."""

    def __init__(self, attrs, test_set, data, img_size, data_root, ckpt, device, workers=0, inception_weights=None):
        self.attrs = attrs
        self.device, self.toy = device, data in TOY_NAMES
        self.results = {"data": data, "img_size": img_size, "ckpt": ckpt,
                        "manipulated": [attrs.names[g] for g in attrs.manipulated]}
        self.sums, self.fake = {g: {} for g in attrs.manipulated}, {g: [] for g in attrs.manipulated}
        if self.toy:
            self.judge, self.results["judge_accuracy_real"] = load_toy_judge(data, img_size, data_root, device)
            gallery = ToyDataset("toy-attr", "train", img_size)
            with torch.no_grad():
                self.gallery_features = torch.cat([self.judge.features(b["image"].to(device)).float()
                                                   for b in test_batches(gallery, workers, batch_size=200)])
            self.gallery_labels = gallery.labels.to(device)
        else:
            self.inception, self.results["inception"] = fid_inception(inception_weights)
            self.inception = self.inception.to(device)
            self.real = extract_features(self.inception, (b["image"] for b in test_batches(test_set, workers)), device)

    def add(self, batch, keep, group, value, target, out, attention):
        """The images `keep` of a test batch changed to `value` of `group` (target: the batch's targets)."""
        x = batch["image"].to(self.device)[keep]
        target = target[keep]
        part = {}
        if self.toy:
            with torch.no_grad():
                predicted = torch.stack([logits.argmax(1) for logits in self.judge(out)], dim=1)
                features = self.judge.features(out).float()
            others = [k for k in range(len(self.attrs.names)) if k != group]
            part["attribute_accuracy"] = (predicted[:, group] == value).double().mean().item()
            part["kept_accuracy"] = (predicted[:, others] == target[:, others]).all(1).double().mean().item()
            region = batch[TOY_ATTR_REGIONS.get(self.attrs.names[group], "mask")].to(self.device)[keep]
            part["preserve_psnr_db"], part["preserve_l1"] = masked_psnr_l1(x, out, region)
            if attention is not None:
                part["attention_iou"], part["attention_pointing"] = attention_iou_pointing(attention, region)
            nearest = torch.cdist(features, self.gallery_features).topk(30, largest=False).indices
            hits = (self.gallery_labels[nearest] == target[:, None]).all(-1).any(-1)
            part["retrieval_top30"] = hits.double().mean().item()
        else:
            self.fake[group].append(extract_features(self.inception, [out], self.device))
        for k, v in {"images": 1.0, **part}.items():
            self.sums[group][k] = self.sums[group].get(k, 0.0) + v * len(x)

    def summary(self):  # the results dict: an entry per manipulated group, and their mean
        per_group = {}
        for g in self.attrs.manipulated:
            n = self.sums[g].pop("images", 0)
            m = {**({k: v / n for k, v in self.sums[g].items()} if n else {}), "images": int(n)}
            if not self.toy and n:
                m.update(_kid_fid(self.real, torch.cat(self.fake[g])))
            per_group[self.attrs.names[g]] = m
        scalars = [k for k, v in next(iter(per_group.values())).items() if isinstance(v, float)]
        self.results.update(per_group)
        self.results["mean"] = {k: sum(m[k] for m in per_group.values() if k in m) / len(per_group) for k in scalars}
        return self.results


# The metrics as docs/results.md names, orders and formats them (docs/tools/results.py makes its tables with them).
METRIC_COLUMNS = [("success", "translation_success", "{:.0%}"), ("bg PSNR dB", "background_psnr_db", "{:.2f}"),
                  ("accuracy", "attribute_accuracy", "{:.1%}"), ("preserved PSNR dB", "preserve_psnr_db", "{:.2f}"),
                  ("preserved L1", "preserve_l1", "{:.3f}"), ("others kept", "kept_accuracy", "{:.1%}"),
                  ("attention IoU", "attention_iou", "{:.2f}"), ("pointing", "attention_pointing", "{:.2f}"),
                  ("retrieval top-30", "retrieval_top30", "{:.2f}"), ("toy-KID×100", "toy_kid_blocks_x100", "{:.2f}"),
                  ("KID×100", "kid_blocks_x100", "{:.2f}"), ("FID", "fid", "{:.2f}")]


def write_metrics(out, results):
    """<out>/metrics.json; on the console, docs/results.md's columns, with spreads (KID: ± std or standard error)."""
    make_folder(out)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)
    rows = {k: v for k, v in results.items() if isinstance(v, dict)}
    print("\n".join(f"{k}: {v}" for k, v in results.items() if k not in rows))
    columns = [c for c in METRIC_COLUMNS if any(c[1] in r for r in rows.values())]

    def cell(value, fmt):
        mean, spread = value if isinstance(value, list) else (value, 0)
        return fmt.format(mean) + (f" ± {fmt.format(spread)}" if spread and math.isfinite(spread) else "")
    print(" | ".join([""] + [label for label, _, _ in columns]))
    for name, r in rows.items():
        print(" | ".join([name] + [cell(r[key], fmt) if key in r else "-" for _, key, fmt in columns]))
    return results
