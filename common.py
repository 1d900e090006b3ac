"""Shared parts of the five paper scripts, and nothing paper-specific.

Sections, in order: errors and the command line; seeding, device and speed; distributed
(torchrun) helpers; data (unpaired folders, --download, the embedded toy datasets and their
judge); building blocks shared by several papers; checkpoint; pictures; the training loop;
metrics; the two-domain test and eval phases used by ugatit.py, attentiongan.py and uag.py.
"""
import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import random
import resource
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
import warnings
import zipfile

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from tqdm import tqdm

CKPT_VERSION = 1

# =============================================================================================
# Errors and the command line
# =============================================================================================


class UserError(Exception):
    """Bad input from the user: printed as one paragraph, exit code 2, no traceback."""


def cli(main):
    """Run `main()`; a UserError becomes a one-paragraph message on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def add_common_flags(parser, script):
    """The flags every script has (SPEC section 1). Paper flags are added by the script."""
    add = parser.add_argument
    add("--data", default="toy", help="toy dataset (toy, toy-shape, toy-attr), a dataset name under --data_root, or a path")
    add("--data_root", default="dataset", help="folder holding datasets (and the cached toy judge)")
    add("--phase", default="train", choices=["train", "test", "eval", "bench"], help="what to do")
    add("--img_size", type=int, default=256, help="image side in pixels")
    add("--batch_size", type=int, default=1, help="images per domain per step (per process under torchrun)")
    add("--iters", type=int, default=1_000_000, help="training iterations")
    add("--lr", type=float, default=1e-4, help="initial learning rate")
    add("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto picks cuda, then mps, then cpu")
    add("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    add("--compile", action="store_true", help="torch.compile the networks")
    add("--seed", type=int, default=0, help="random seed (data order, init, toy data)")
    add("--out", default=None, help=f"output folder (default results/{script}_<data>)")
    add("--resume", action="store_true", help="continue training from <out>/ckpt.pt (or --ckpt)")
    add("--ckpt", default=None, help="checkpoint path (default <out>/ckpt.pt)")
    add("--workers", type=int, default=2, help="DataLoader worker processes")
    add("--sample_every", type=int, default=1000, help="write a sample grid every N steps (0: never)")
    add("--save_every", type=int, default=10_000, help="write the checkpoint every N steps (and at the end)")
    add("--log_every", type=int, default=100, help="average the losses into log.csv every N steps")
    add("--stop_at", type=int, default=None, help="end this invocation at step N with a checkpoint (for time-limited jobs); "
        "--resume continues to --iters")
    add("--download", nargs="?", const="", default=None, metavar="NAME",
        help="download a CycleGAN dataset (default: --data) into --data_root first")
    add("--input", default=None, help="test phase: translate this image file or folder instead of the test split")
    add("--inception_weights", default=None, help="eval: path of pt_inception-2015-12-05-6726825d.pth (FID Inception)")


# Flags that belong to one invocation and are never taken from a checkpoint's saved arguments.
PER_INVOCATION = {"phase", "resume", "ckpt", "out", "device", "workers", "stop_at", "download", "input",
                  "amp", "compile", "inception_weights"}


def _given_flags(parser, argv):
    """Names of the flags that appear on the command line (a preset never overrides them)."""
    saved = [(a, a.default) for a in parser._actions]
    for a, _ in saved:
        a.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv)))
    finally:
        for a, d in saved:
            a.default = d


def parse_args(parser, argv, script, presets, arch_flags):
    """Parse the command line, then fill the flags it did not give.

    Training a new run: from `presets["toy"]` on a toy dataset, else `presets["real"]` (the
    paper's settings are the parser defaults; the real preset may be empty). Test, eval and
    --resume: from the checkpoint's saved arguments, so `--phase eval` needs no architecture
    flags; an architecture flag that contradicts the checkpoint is an error.
    """
    args = parser.parse_args(argv)
    given = _given_flags(parser, argv)
    if args.download is not None:
        if args.download:
            if "data" in given and args.data != args.download:
                raise UserError(f"--download {args.download} and --data {args.data} name different datasets; give one.")
            args.data = args.download
        download_dataset(args.data, args.data_root)
    data_name = args.data if args.data in TOY_NAMES else os.path.basename(os.path.normpath(args.data))
    args.out = args.out or os.path.join("results", f"{script}_{data_name}")
    ckpt_path = args.ckpt or os.path.join(args.out, "ckpt.pt")
    if args.phase in ("test", "eval") or args.resume:
        if not os.path.exists(ckpt_path):
            what = "--resume" if args.resume else f"--phase {args.phase}"
            raise UserError(f"{what} needs a checkpoint, and there is none at {ckpt_path}. Train first "
                            f"(python {script}.py --data {args.data}) or point --ckpt / --out at a run.")
        saved = read_checkpoint_args(ckpt_path, script)
        for k, v in saved.items():
            if k in arch_flags and k in given and getattr(args, k) != v:
                raise UserError(f"{ckpt_path} was trained with --{k} {v}, not {getattr(args, k)}: the architecture "
                                f"comes from the checkpoint; drop --{k} or use another --out/--ckpt.")
            if k not in given and k not in PER_INVOCATION and hasattr(args, k):
                setattr(args, k, v)
    else:
        for k, v in presets["toy" if args.data in TOY_NAMES else "real"].items():
            if k not in given:
                setattr(args, k, v)
    args.ckpt = ckpt_path
    return args


# =============================================================================================
# Seeding, device, speed
# =============================================================================================


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(args, local_rank=0):
    """auto -> cuda, mps, cpu. Sets the CUDA speed switches; --amp is CUDA only."""
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but this PyTorch build sees no CUDA GPU. Use --device cpu or auto.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but MPS is not available here. Use --device cpu or auto.")
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif args.amp:
        warnings.warn("--amp (bf16 autocast) is only used on CUDA; running in fp32")
        args.amp = False
    return device


def autocast(args, device):
    """bf16 autocast under --amp on CUDA, a no-op context otherwise."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(args.amp) and device.type == "cuda")


def to_device(module, device):
    """Move a network to the device; channels_last on CUDA."""
    module.to(device)
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    return module


def adam(params, lr, betas, device, weight_decay=0.0):
    """Adam, fused on CUDA."""
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=device.type == "cuda")


def maybe_compile(module, args):
    """torch.compile under --compile; the original module is kept for checkpoints."""
    return torch.compile(module) if args.compile else module


def set_lr(optimizers, lr):
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def linear_decay(step, base_lr, total, decay_start):
    """Constant `base_lr` up to `decay_start`, then linearly to 0 at `total` (U-GAT-IT, CycleGAN)."""
    if step <= decay_start or total <= decay_start:
        return base_lr
    return base_lr * max(0.0, (total - step) / (total - decay_start))


def peak_memory_mb(device):
    """CUDA max allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# =============================================================================================
# Distributed (torchrun): data-parallel by gradient all-reduce, rank 0 writes
# =============================================================================================


class Dist:
    """rank / world size of this process; world 1 without torchrun."""

    def __init__(self, device_type):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")

    @property
    def main(self):
        return self.rank == 0

    def broadcast(self, modules):
        """Start every replica from rank 0's weights and buffers."""
        if self.world > 1:
            for m in modules:
                for t in list(m.parameters()) + list(m.buffers()):
                    dist.broadcast(t.data, 0)

    def average_gradients(self, modules):
        """All-reduce the gradients (mean over ranks) in one flat buffer: what DDP does, without
        DDP's restrictions on calling a network several times per step."""
        if self.world == 1:
            return
        grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def any(self, flag):
        """True on every rank when `flag` is true on any rank (for Ctrl-C under torchrun)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def check_replicas(self, modules):
        """Assert that all ranks hold the same weights; prints one line on rank 0."""
        if self.world == 1:
            return True
        fp = torch.tensor([sum(p.detach().double().sum().item() for m in modules for p in m.parameters())],
                          dtype=torch.float64)
        gathered = [torch.zeros_like(fp) for _ in range(self.world)]
        dist.all_gather(gathered, fp)
        same = all(torch.equal(g, gathered[0]) for g in gathered)
        if self.main:
            print(f"replicas identical: {same} ({self.world} processes)")
        return same

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# =============================================================================================
# Data: unpaired image folders (CycleGAN / U-GAT-IT layout)
# =============================================================================================

IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CYCLEGAN_DATASETS = ("horse2zebra", "apple2orange", "summer2winter_yosemite", "monet2photo", "cezanne2photo",
                     "ukiyoe2photo", "vangogh2photo", "maps", "facades", "iphone2dslr_flower")
CYCLEGAN_URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"
SELFIE2ANIME_URL = "https://drive.google.com/file/d/1xOWj1UVgp6NKMT3HbPhBbtq2A4EDkghF/view"
_stats = {"skipped": 0}  # unreadable images skipped so far (counted in the main process)


def list_images(folder):
    """All image files under `folder`, recursively, sorted."""
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files if f.lower().endswith(IMG_EXTS)]
    return sorted(found)


def load_rgb(path):
    """Open an image as RGB (grey, RGBA and palette images are converted)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def pil_to_tensor(im):
    """PIL RGB -> float tensor (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1


def ugatit_transform(im, size, rng):
    """U-GAT-IT training transform: flip, resize to size+30 (square), random crop to size.
    `rng` is a random.Random seeded per sample, so data is reproducible whatever the workers."""
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = im.resize((size + 30, size + 30), Image.BILINEAR)
    x, y = rng.randint(0, 30), rng.randint(0, 30)
    return im.crop((x, y, x + size, y + size))


class ImageFiles(torch.utils.data.Dataset):
    """Images of one domain and split. Items are indices, or (index, augmentation seed) pairs from
    InfiniteSampler. An unreadable file is skipped (the next one is used) and counted."""

    def __init__(self, files, size, train, root=None):
        self.files, self.size, self.train, self.root = files, size, train, root

    def __len__(self):
        return len(self.files)

    def __getitem__(self, item):
        index, aug_seed = item if isinstance(item, tuple) else (item, item)
        for tries in range(len(self.files)):
            path = self.files[(index + tries) % len(self.files)]
            try:
                im = load_rgb(path)
            except Exception as e:  # PIL raises many kinds for broken files
                print(f"warning: skipping unreadable image {path}: {e}", file=sys.stderr)
                continue
            if self.train:
                im = ugatit_transform(im, self.size, random.Random(aug_seed))
            else:
                im = im.resize((self.size, self.size), Image.BILINEAR)
            name = os.path.relpath(path, self.root) if self.root else os.path.basename(path)
            return {"image": pil_to_tensor(im), "name": os.path.splitext(name)[0], "skipped": tries}
        raise RuntimeError(f"none of the {len(self.files)} images under {self.root} can be read")


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless shuffled (index, augmentation seed) stream, a function of (seed, position) only,
    so a run resumed at step s sees exactly the data an uninterrupted run sees. Under torchrun,
    rank r takes positions r, r+K, r+2K, ... of one shared permutation per epoch."""

    def __init__(self, n, seed, start=0, rank=0, world=1):
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def __iter__(self):
        pos, perm, perm_epoch = self.start, None, -1
        while True:
            p = pos * self.world + self.rank
            epoch, offset = divmod(p, self.n)
            if epoch != perm_epoch:
                perm, perm_epoch = np.random.default_rng([self.seed, epoch]).permutation(self.n), epoch
            yield int(perm[offset]), self.seed * 1_000_003 + p
            pos += 1


class Batches:
    """Iterator over device batches of one domain (the image tensor only)."""

    def __init__(self, loader, device):
        self.it, self.device = iter(loader), device

    def __next__(self):
        batch = next(self.it)
        _stats["skipped"] += int(batch["skipped"].sum())
        x = batch["image"].to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x


def train_batches(dataset, args, device, dist_, start_step, seed_offset=0):
    """Endless training batches from `start_step` on; workers, pin_memory, persistent workers."""
    sampler = InfiniteSampler(len(dataset), args.seed + seed_offset, start_step * args.batch_size,
                              dist_.rank, dist_.world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0, drop_last=True)
    return Batches(loader, device)


def _layout_help(root):
    return (f"Expected the unpaired layout {root}/{{trainA,trainB,testA,testB}}/ (or {root}/train/A etc.) "
            f"with image files (any names, {', '.join(IMG_EXTS)}) under each folder. CycleGAN datasets: "
            f"--download NAME ({', '.join(CYCLEGAN_DATASETS)}). selfie2anime: download it from "
            f"{SELFIE2ANIME_URL} and unzip so that {root}/trainA exists. Or run on an embedded toy dataset: "
            f"--data toy, toy-shape or toy-attr.")


def dataset_dir(args):
    """The folder of a real dataset: --data as a path if it is one, else --data_root/--data."""
    root = args.data if os.path.isdir(args.data) else os.path.join(args.data_root, args.data)
    if not os.path.isdir(root):
        raise UserError(f"dataset folder {root} does not exist. {_layout_help(root)}")
    return root


def unpaired_split(args, split, domain, train):
    """ImageFiles for e.g. split 'train', domain 'A': <root>/trainA or <root>/train/A."""
    root = dataset_dir(args)
    for folder in (os.path.join(root, split + domain), os.path.join(root, split, domain)):
        if os.path.isdir(folder):
            files = list_images(folder)
            if not files:
                raise UserError(f"{folder} holds no images ({', '.join(IMG_EXTS)}), so the {split} split of "
                                f"domain {domain} is empty. {_layout_help(root)}")
            return ImageFiles(files, args.img_size, train, root=folder)
    raise UserError(f"{root} has no {split}{domain}/ folder. {_layout_help(root)}")


class ToyTrain(torch.utils.data.Dataset):
    """A toy split served in the same {'image', 'name', 'skipped'} form as ImageFiles."""

    def __init__(self, toy):
        self.toy = toy

    def __len__(self):
        return len(self.toy)

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        return {"image": self.toy[index]["image"], "name": f"{index:05d}", "skipped": 0}


def two_domain_train_sets(args):
    """(train A, train B) datasets for the two-domain scripts. The toy data is the same for every
    --seed (seed 0), so that runs with different seeds are evaluated on the same test images."""
    if args.data in TOY_NAMES:
        if args.data == "toy-attr":
            raise UserError("toy-attr is a multi-attribute dataset (amgan.py, camconsistency.py); "
                            "two-domain scripts take --data toy or toy-shape.")
        return tuple(ToyTrain(ToyDataset(args.data, "train", args.img_size, d)) for d in "AB")
    return unpaired_split(args, "train", "A", True), unpaired_split(args, "train", "B", True)


def download_dataset(name, data_root, url=None):
    """Fetch a CycleGAN dataset zip with a progress bar and unpack it to <data_root>/<name>.
    `url` overrides the Berkeley address (tests use a file:// URL)."""
    target = os.path.join(data_root, name)
    if name == "selfie2anime":
        raise UserError(f"selfie2anime is on Google Drive and cannot be fetched by script: download it from "
                        f"{SELFIE2ANIME_URL} and unzip it so that {target}/trainA, trainB, testA, testB exist.")
    if url is None:
        if name not in CYCLEGAN_DATASETS:
            raise UserError(f"--download knows the CycleGAN datasets {', '.join(CYCLEGAN_DATASETS)} and "
                            f"selfie2anime, not '{name}'.")
        url = CYCLEGAN_URL.format(name=name)
    if os.path.isdir(target) and list_images(target):
        print(f"{target} already holds images; not downloading again")
        return target
    os.makedirs(data_root, exist_ok=True)
    part = os.path.join(data_root, f".{name}.zip.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        if not zipfile.is_zipfile(part):
            raise UserError(f"{url} did not give a zip file; download it by hand and unzip it into {data_root}.")
        with zipfile.ZipFile(part) as z:
            members = [m for m in z.namelist() if not m.startswith("__MACOSX")]
            top = {m.split("/")[0] for m in members}
            dest = data_root if top == {name} else target
            for m in members:
                if os.path.isabs(m) or ".." in m.split("/"):
                    raise UserError(f"{url} holds an unsafe path {m!r}; not unpacking it.")
            z.extractall(dest, members)
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"could not download {name} from {url} ({e}). Download it on a machine with internet "
                        f"access and unzip it into {data_root} so that {target}/trainA exists.") from None
    finally:
        if os.path.exists(part):
            os.remove(part)
    print(f"{name} is in {target}")
    return target


# ---- toy datasets (inserted) ----

# =============================================================================================
# Building blocks shared by several papers
# =============================================================================================


class ResnetBlock(nn.Module):
    """x + [reflect-pad, conv3, IN, ReLU, reflect-pad, conv3, IN](x) (CycleGAN, U-GAT-IT, AttentionGAN)."""

    def __init__(self, dim, bias):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.block(x)


class PatchGAN(nn.Module):
    """The 70x70 PatchGAN of CycleGAN (n_layers 3): conv4 s2 stack, IN, LeakyReLU 0.2, one logit per patch."""

    def __init__(self, in_ch=3, ndf=64, n_layers=3):
        super().__init__()
        chans = [in_ch] + [ndf * min(2 ** i, 8) for i in range(n_layers + 1)]
        layers = [nn.Conv2d(chans[0], chans[1], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(chans[i], chans[i + 1], 4, stride, 1), nn.InstanceNorm2d(chans[i + 1]),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def drop_norm(self):
        """Replace the InstanceNorm layers by identities (they have no parameters)."""
        for i, m in enumerate(self.model):
            if isinstance(m, nn.InstanceNorm2d):
                self.model[i] = nn.Identity()

    def forward(self, x):
        return self.model(x)


def init_normal(module, std=0.02):
    """N(0, std) weights and zero biases for every conv and linear layer (before any spectral norm)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_params(module):
    return sum(p.numel() for p in module.parameters())


class ImagePool:
    """CycleGAN's history of generated images: once full, half of the time a query returns an older
    fake (and stores the new one). Items are tuples of tensors, e.g. (image,) or (image, mask)."""

    def __init__(self, size, seed=0):
        self.size, self.items, self.rng = size, [], random.Random(seed)

    def query(self, *tensors):
        if self.size == 0:
            return tensors
        out = [[] for _ in tensors]
        for i in range(tensors[0].shape[0]):
            item = tuple(t[i:i + 1].detach() for t in tensors)
            if len(self.items) < self.size:
                self.items.append(item)
            elif self.rng.random() > 0.5:
                j = self.rng.randrange(self.size)
                self.items[j], item = item, self.items[j]
            for k, t in enumerate(item):
                out[k].append(t)
        return tuple(torch.cat(o) for o in out)

    def state_dict(self):
        return {"items": [list(item) for item in self.items], "rng": _py_state(self.rng.getstate())}

    def load_state_dict(self, state):
        self.items = [tuple(item) for item in state["items"]]
        self.rng.setstate(_py_state_back(state["rng"]))


# =============================================================================================
# Checkpoint: one resumable file, written atomically, loaded with weights_only=True
# =============================================================================================


def _py_state(state):
    return [state[0], list(state[1]), state[2]]


def _py_state_back(state):
    return (state[0], tuple(state[1]), state[2])


def rng_state():
    np_state = np.random.get_state()
    state = {"python": _py_state(random.getstate()), "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()),
                                                               *np_state[2:]], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(_py_state_back(state["python"]))
    np.random.set_state((state["numpy"][0], state["numpy"][1].numpy(), *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, script, args, step, models, optimizers, extra=None):
    """Networks, optimizers, step, arguments (plain data), RNG states; temp file + os.replace."""
    state = {"script": script, "version": CKPT_VERSION, "step": step, "args": vars(args),
             "models": {k: m.state_dict() for k, m in models.items()},
             "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
             "rng": rng_state(), "extra": extra or {}}
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint of this project ({type(e).__name__}: {e}).") from None


def read_checkpoint_args(path, script):
    state = _load(path)
    if not isinstance(state, dict) or state.get("script") != script:
        other = state.get("script") if isinstance(state, dict) else None
        raise UserError(f"{path} is a checkpoint of {other or 'something else'}, not of {script}.py; "
                        f"point --ckpt or --out at a {script}.py run.")
    return state["args"]


def load_checkpoint(path, script, models, optimizers=None):
    """Load networks (and optimizers, RNG) in place; returns the saved dict (step, extra, args)."""
    state = _load(path)
    read_checkpoint_args(path, script)
    try:
        for k, m in models.items():
            m.load_state_dict(state["models"][k])
        for k, o in (optimizers or {}).items():
            o.load_state_dict(state["optimizers"][k])
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{path} does not match this architecture ({str(e).splitlines()[0]}); it was written "
                        f"with other network flags. Use its own flags or another --out.") from None
    if optimizers:
        set_rng_state(state["rng"])
    return state


# =============================================================================================
# Pictures: heat colour map, sample grids, image files
# =============================================================================================


def jet(x):
    """The 'jet' colour map: (N,1,H,W) in [0,1] -> (N,3,H,W) in [0,1] (blue - cyan - yellow - red)."""
    return torch.cat([(1.5 - (4 * x - c).abs()).clamp(0, 1) for c in (3, 2, 1)], dim=1)


def normalise_map(attention, size):
    """Upsample a (N,1,h,w) map to size x size and min-max normalise each image to [0,1]."""
    a = F.interpolate(attention.float(), size=(size, size), mode="bilinear", align_corners=False)
    lo = a.amin(dim=(1, 2, 3), keepdim=True)
    hi = a.amax(dim=(1, 2, 3), keepdim=True)
    return (a - lo) / (hi - lo).clamp_min(1e-8)


def heat_overlay(attention, image, alpha=0.5):
    """Attention as a jet heat map laid over the image; image and result in [-1, 1]."""
    heat = jet(normalise_map(attention, image.shape[-1]))
    return (alpha * heat + (1 - alpha) * (image.float() + 1) / 2) * 2 - 1


def grey(mask):
    """A (N,1,H,W) mask in [0,1] as a black-to-white picture in [-1, 1]."""
    return mask.float().expand(-1, 3, -1, -1) * 2 - 1


def save_grid(path, columns):
    """One row per sample, one column per picture; `columns` are (N,3,H,W) tensors in [-1, 1]."""
    cells = torch.stack([c.detach().float().cpu() for c in columns], dim=1).flatten(0, 1)
    torchvision.utils.save_image((cells + 1) / 2, path, nrow=len(columns), padding=2, pad_value=1.0)


def save_image(tensor, path):
    """One (3,H,W) tensor in [-1, 1] as an 8-bit PNG."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torchvision.utils.save_image((tensor.detach().float().cpu() + 1) / 2, path)


# =============================================================================================
# The training loop: progress bar, log.csv, samples, checkpoints, Ctrl-C, NaN guard
# =============================================================================================


def prepare_out(args, dist_):
    """Create --out, refuse to overwrite an existing run, write args.json (rank 0)."""
    if args.phase == "train" and os.path.exists(args.ckpt) and not args.resume:
        raise UserError(f"{args.ckpt} already exists and a new run would overwrite it. Continue it with --resume, "
                        f"pick another --out, or delete the folder if you mean to start over.")
    if dist_.main:
        os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
        with open(os.path.join(args.out, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)


class CsvLog:
    """log.csv: step, every loss term, lr, seconds. On resume, rows after the resumed step are dropped."""

    def __init__(self, path, start_step):
        self.path, self.fields = path, None
        if start_step > 0 and os.path.exists(path):
            with open(path) as f:
                rows = list(csv.DictReader(f))
            if rows:
                self.fields = list(rows[0])
                with open(path, "w", newline="") as f:
                    w = csv.DictWriter(f, self.fields)
                    w.writeheader()
                    w.writerows(r for r in rows if int(r["step"]) <= start_step)
        elif os.path.exists(path):
            os.remove(path)

    def write(self, row):
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.fields})


def train_loop(args, dist_, step_fn, save_fn, sample_fn, start_step, elapsed=0.0):
    """Run steps start_step+1 .. min(iters, stop_at).

    step_fn(step) -> {name: 0-dim loss tensor, ..., "lr": float}; the tensors are summed on the
    device and read back only every --log_every steps (no per-step host sync). save_fn(step,
    elapsed) writes the checkpoint; it only ever runs after the losses were checked finite.
    Ctrl-C finishes the current step, saves and exits.
    """
    stop = min(args.iters, args.stop_at or args.iters)
    interrupted = []
    old_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
    log = CsvLog(os.path.join(args.out, "log.csv"), start_step) if dist_.main else None
    bar = tqdm(total=stop, initial=start_step, disable=not dist_.main, dynamic_ncols=True, mininterval=2,
               desc=os.path.basename(args.out))
    sums, count, lr, t0, last_saved = {}, 0, None, time.time(), start_step
    step = start_step

    def flush():
        nonlocal sums, count
        if not count:
            return
        values = torch.stack(list(sums.values())).float().cpu() / count
        if not torch.isfinite(values).all():
            bad = [k for k, v in zip(sums, values) if not math.isfinite(v)]
            raise FloatingPointError(f"loss {', '.join(bad)} became NaN/Inf between steps {step - count + 1} and "
                                     f"{step}; training stopped and the last good checkpoint (step {last_saved}) "
                                     f"is kept at {args.ckpt}. Try a lower --lr, or run without --amp.")
        row = {"step": step, **{k: f"{v:.5g}" for k, v in zip(sums, values.tolist())}, "lr": f"{lr:.4g}",
               "seconds": f"{elapsed + time.time() - t0:.1f}", "skipped_images": _stats["skipped"]}
        if log:
            log.write(row)
            bar.set_postfix({k: row[k] for k in list(sums)[:4]}, refresh=False)
        sums, count = {}, 0

    try:
        while step < stop:
            step += 1
            losses = step_fn(step)
            lr = losses.pop("lr")
            for k, v in losses.items():
                sums[k] = sums[k] + v.detach() if k in sums else v.detach().clone()
            count += 1
            bar.update(1)
            save_now = step == stop or (args.save_every and step % args.save_every == 0)
            if step % args.log_every == 0 or save_now:
                flush()
            if dist_.main and args.sample_every and step % args.sample_every == 0:
                sample_fn(step)
            stop_now = dist_.any(bool(interrupted)) if (dist_.world == 1 or step % args.log_every == 0) else False
            if stop_now and not save_now:
                flush()
                save_now = True
            if save_now:
                if dist_.main:
                    save_fn(step, elapsed + time.time() - t0)
                last_saved = step
            if stop_now:
                bar.close()
                print(f"\ninterrupted: checkpoint at step {step} saved to {args.ckpt}; continue with --resume",
                      file=sys.stderr)
                sys.exit(130)
    except FloatingPointError as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGINT, old_handler)
    bar.close()
    if _stats["skipped"]:
        print(f"warning: {_stats['skipped']} unreadable images were skipped during training", file=sys.stderr)
    return step


def bench(args, device, step_fn, warmup=3, steps=10):
    """--phase bench: time `steps` training steps after `warmup`; one JSON line."""
    for s in range(warmup):
        step_fn(s + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for s in range(steps):
        losses = step_fn(warmup + s + 1)
    float(sum(v for k, v in losses.items() if k != "lr"))  # wait for the device
    seconds = time.perf_counter() - t0
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
              "img_size": args.img_size, "batch": args.batch_size, "amp": bool(args.amp), "compile": bool(args.compile),
              "it_s": round(steps / seconds, 3), "img_s": round(steps * args.batch_size / seconds, 3),
              "peak_mem_mb": round(peak_memory_mb(device), 1)}
    print(json.dumps(result))
    return result


# ---- metrics (inserted) ----


# =============================================================================================
# Test and eval phases of the two-domain scripts (ugatit.py, attentiongan.py, uag.py)
# =============================================================================================


def _directions(args):
    d = getattr(args, "direction", "both")
    return [("a2b", "A", "B"), ("b2a", "B", "A")] if d == "both" else [(d, d[0].upper(), d[-1].upper())]


def _test_split(args, domain):
    """The test split of one domain: a toy split (with GT masks) or <data>/test<domain>."""
    if args.data in TOY_NAMES:
        return ToyDataset(args.data, "test", args.img_size, domain)
    return unpaired_split(args, "test", domain, train=False)


def _batches(dataset, args, batch_size=16):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=args.workers)


def _input_images(args):
    """--input: one image file or a folder of them, as (name, tensor) at --img_size."""
    files = [args.input] if os.path.isfile(args.input) else list_images(args.input) if os.path.isdir(args.input) else None
    if not files:
        raise UserError(f"--input {args.input} is neither an image file nor a folder holding images ({', '.join(IMG_EXTS)}).")
    root = args.input if os.path.isdir(args.input) else os.path.dirname(args.input)
    ds = ImageFiles(files, args.img_size, train=False, root=root)
    return [ds[i] for i in range(len(files))]


def two_domain_test(args, translate, device):
    """Write translations and attention maps to <out>/test/<direction>/<source name>.png.
    translate(x, direction) -> (output, attention) in eval mode under no_grad."""
    for direction, src, _ in _directions(args):
        folder = os.path.join(args.out, "test", direction)
        if args.input:
            items = _input_images(args)
            loader = [{"image": torch.stack([i["image"] for i in items]), "name": [i["name"] for i in items]}]
        else:
            loader = _batches(_test_split(args, src), args)
        count = 0
        for batch in loader:
            x = batch["image"].to(device)
            names = batch.get("name") or [f"{count + i:05d}" for i in range(len(x))]
            out, attention = translate(x, direction)
            for i, name in enumerate(names):
                save_image(out[i], os.path.join(folder, f"{name}.png"))
                if attention is not None:
                    save_image(heat_overlay(attention[i:i + 1], x[i:i + 1])[0], os.path.join(folder, f"{name}_attention.png"))
            count += len(x)
        print(f"{direction}: {count} translations and attention maps in {folder}")


def _inception_or_none(args, required):
    try:
        return fid_inception(args.inception_weights)
    except (FileNotFoundError, ValueError) as e:
        if required:
            raise UserError(str(e)) from None
        return None, None


def two_domain_eval(args, translate, device):
    """Metrics of SPEC section 3 on the test split -> <out>/metrics.json and a printed table.
    Toy data: translation success (judge), background PSNR/L1 outside the GT mask, attention IoU
    and pointing, toy-KID on judge features (and KID/FID when Inception weights are present).
    Real data: KID (both estimators) and FID on Inception pool3 features."""
    toy = args.data in TOY_NAMES
    inception, inception_label = _inception_or_none(args, required=not toy)
    if inception is not None:
        inception = inception.to(device)
    results = {"data": args.data, "img_size": args.img_size, "ckpt": args.ckpt, "inception": inception_label}
    if toy:
        judge, judge_acc = load_toy_judge(args.data, args.img_size, args.data_root, device)
        results["judge_accuracy_real"] = judge_acc
    for direction, src, tgt in _directions(args):
        m, feats, inc = {}, {"fake": [], "real": []}, {"fake": [], "real": []}
        sums, n = {}, 0
        for batch in _batches(_test_split(args, src), args):
            x = batch["image"].to(device)
            out, attention = translate(x, direction)
            if toy:
                mask = batch["mask"].to(device)
                psnr, l1 = masked_psnr_l1(x, out, mask)
                part = {"background_psnr_db": psnr, "background_l1": l1,
                        "translation_success": (judge(out)[0].argmax(1) == "AB".index(tgt)).float().mean().item()}
                if attention is not None:
                    part["attention_iou"], part["attention_pointing"] = attention_iou_pointing(attention, mask)
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v * len(x)
                with torch.no_grad():
                    feats["fake"].append(judge.features(out).double().cpu())
            if inception is not None:
                inc["fake"].append(extract_features(inception, [out], device))
            n += len(x)
        for batch in _batches(_test_split(args, tgt), args):
            y = batch["image"].to(device)
            if toy:
                with torch.no_grad():
                    feats["real"].append(judge.features(y).double().cpu())
            if inception is not None:
                inc["real"].append(extract_features(inception, [y], device))
        m = {k: v / n for k, v in sums.items()}
        m["images"] = n
        if toy:
            real, fake = torch.cat(feats["real"]), torch.cat(feats["fake"])
            m["toy_kid_subsets_x100"] = [100 * v for v in kid_subsets(real, fake)]
            m["toy_kid_blocks_x100"] = [100 * v for v in kid_blocks(real, fake)]
        if inception is not None:
            real, fake = torch.cat(inc["real"]), torch.cat(inc["fake"])
            m["kid_subsets_x100"] = [100 * v for v in kid_subsets(real, fake)]
            m["kid_blocks_x100"] = [100 * v for v in kid_blocks(real, fake)]
            m["fid"] = fid_from_features(real, fake)
        results[direction] = m
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)
    print_metrics(results)
    return results


def print_metrics(results):
    """A small table: one row per direction, one column per metric."""
    rows = {k: v for k, v in results.items() if isinstance(v, dict)}
    for k, v in results.items():
        if not isinstance(v, dict):
            print(f"{k}: {v}")
    cols = sorted({c for r in rows.values() for c in r})
    fmt = lambda v: (f"{v[0]:.3f}±{v[1]:.3f}" if isinstance(v, list) else f"{v:.4g}" if isinstance(v, float) else str(v))
    print(" | ".join(["direction"] + cols))
    for name, r in rows.items():
        print(" | ".join([name] + [fmt(r[c]) if c in r else "-" for c in cols]))
