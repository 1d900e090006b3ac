"""AMGAN: Attribute Manipulation Generative Adversarial Networks for Fashion Images. Kenan E. Ak, Joo Hwee
Lim, Jo Yew Tham, Ashraf A. Kassim. ICCV 2019. Paper: https://arxiv.org/abs/1909.09523 (no official code).

A StarGAN whose generator changes one attribute r at a time (the manipulation m: the target value of r
as a one-hot block, plus a one-hot of r, StarGAN's mask vector) and paints only where its attention a
says: x* = a * z + (1 - a) * x (Eq. 1, `compose`). Two WGAN-GP discriminators with attribute
classifiers: D_I on the whole image and D_C on a crop around the attended region (the bounding box of
the largest connected region of a >= 50% of its maximum). A frozen attribute CNN, trained first
(--phase classifier), guides the generator twice: its class activation map for the input's value of r
is the target of the attention loss, and its conv5 / avg-pool features pull x* towards a reference
training image that has all the target attributes (perceptual loss). Region-specific manipulation
(Sec. 4, --region): the attention of the "sleeveless" manipulation, cut at 0.9, confines e.g. a
colour change to the sleeves or the torso. Phases: classifier, train, test (--input, --target,
--region), eval, bench. In the code the manipulated attribute r is `group`, an index into all the
dataset's attribute groups.

Equation numbers: Eq. 1 and Eq. 12 as the paper numbers them; Eqs. 2-11 are the paper's displayed
equations counted in order (D: adversarial, classification, total; G: adversarial, classification,
cycle, CAM, attention, perceptual, total).

The file reads top to bottom: networks, the attended region and its crop, reference images, the
attribute CNN, the forward pass and the D terms, the training step, the training loop,
region-specific manipulation, sampling and test, main().

Deviations from the paper (there is no official code):
 1. The reference image comes from a bank kept on the device: up to --ref_per_label_set training images
    for every combination of labels (all groups) present in the training set. The search over the bank
    finds the same best match as a search over the whole set (every combination is in it), ties are
    broken at random, and no image is loaded and no host sync happens in the training step.
 2. Iterations count D updates, as in StarGAN (G is updated every --n_critic steps); the paper's
    "80k iterations" is taken as --iters 80000. The learning rate falls linearly to 0 over the second
    half per step (StarGAN: every 1000 steps). One Adam holds both discriminators.
 3. The largest connected region (8-connectivity) is found on the attention average-pooled to about
    32 x 32 (4 px cells at 128 px), for the whole batch on the device, by hooking and pointer jumping
    for a fixed log2(h*w) rounds. Crops are taken with roi_align (bilinear, adaptive sampling), which
    keeps x* differentiable.
 4. The CAM a* is min-max normalised per image and then upsampled bilinearly (the paper: "normalised
    to [0, 1]"). Under --cam_as_mask the CAM of the current image (the fake's for the cycle) replaces
    G's attention, detached, and the attention loss is off (there is nothing to compare).
 5. The attribute CNN has one linear head per attribute group (every group of the data, nuisance ones
    too, so that it can read the labels of --input images). On toy-attr it is a small CNN from scratch
    (conv5 at 1/8 of the image); on real data ResNet-50, ImageNet weights when they are in the torch
    hub cache (nothing is downloaded), else random init with a warning. It is trained with plain
    per-group cross-entropy, Adam, --cls_iters steps; the paper gives no fine-tuning schedule.
 6. Region-specific manipulation (Sec. 4): sleeves x' = a1* z + (1 - a1*) x with a1* = a1 [a1 >= 0.9];
    torso: the colour change's own attention outside the sleeves, a_t = a (1 - a1*). The toy eval adds
    the share of the change that lands inside the GT sleeves (and torso) for confined and plain changes.
 7. --compile compiles G only: the gradient penalties differentiate through the discriminators twice
    (double backward), which torch.compile does not support.
"""
import argparse
import glob
import math
import os
import warnings
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.ops import roi_align
from tqdm import tqdm

import common

SCRIPT = "amgan"
ARCH_FLAGS = ("img_size", "conv_dim", "d_conv_dim", "n_res", "d_layers", "no_dc", "attrs")
# toy shirts lie anywhere in the image, so a reference's conv5 map does not line up with x*: the toy preset uses
# the avg-pool features only (the paper's choice for Shopping100k)
TOY_PRESET = dict(img_size=64, conv_dim=16, d_conv_dim=16, n_res=6, d_layers=5, perceptual="avgpool", lr=2e-4,
                  iters=2500, cls_iters=400, cls_lr=1e-3, sample_every=250, save_every=500, log_every=50, workers=1)

# =============================================================================================
# Networks
# =============================================================================================


class ResidualBlock(nn.Module):
    """x + [conv3, IN, ReLU, conv3, IN](x): zero padding, no conv bias, InstanceNorm with affine parameters."""

    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.InstanceNorm2d(dim, affine=True),
                                   nn.ReLU(True), nn.Conv2d(dim, dim, 3, padding=1, bias=False),
                                   nn.InstanceNorm2d(dim, affine=True))

    def forward(self, x):
        return x + self.block(x)


class Generator(nn.Module):
    """StarGAN's generator on [image, manipulation code tiled over the image] (conv7 -> conv_dim, two
    conv4 stride-2 downsamplings, n_res residual blocks, two ConvT4 stride-2 upsamplings; no conv
    bias, InstanceNorm with affine parameters, ReLU) with two heads: the image head z (conv7 -> 3,
    tanh) and the attention head a (conv7 -> 1, sigmoid). Returns (z, a)."""

    def __init__(self, code_dim, conv_dim=64, n_res=6):
        super().__init__()
        norm = lambda ch: nn.InstanceNorm2d(ch, affine=True)  # noqa: E731
        layers, ch = [nn.Conv2d(3 + code_dim, conv_dim, 7, 1, 3, bias=False), norm(conv_dim), nn.ReLU(True)], conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), norm(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(n_res)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        self.body = nn.Sequential(*layers)
        self.image_head = nn.Sequential(nn.Conv2d(conv_dim, 3, 7, 1, 3, bias=False), nn.Tanh())
        self.attention_head = nn.Sequential(nn.Conv2d(conv_dim, 1, 7, 1, 3, bias=False), nn.Sigmoid())

    def forward(self, x, code):
        code = code.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
        features = self.body(torch.cat([x, code], dim=1))
        return self.image_head(features), self.attention_head(features)


class Discriminator(nn.Module):
    """StarGAN's D: n_layers x [conv4 stride 2, LeakyReLU 0.01], channels doubling from conv_dim, no
    normalisation; out_src conv3 -> a patch of real/fake scores, out_cls a conv over the whole last
    map -> c_dim attribute logits. Returns (src, cls)."""

    def __init__(self, img_size=128, conv_dim=64, c_dim=5, n_layers=6):
        super().__init__()
        chans = [3] + [conv_dim * 2 ** i for i in range(n_layers)]
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.01))
                                    for a, b in zip(chans[:-1], chans[1:]))
        self.out_src = nn.Conv2d(chans[-1], 1, 3, 1, 1, bias=False)
        self.out_cls = nn.Conv2d(chans[-1], c_dim, img_size // 2 ** n_layers, bias=False)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.out_src(x), self.out_cls(x).flatten(1)


def compose(content, attention, x):
    """x* = a * z + (1 - a) * x (Eq. 1): the attended part from z, the rest from the input."""
    return attention * content + (1 - attention) * x


def manipulation_code(attrs, target, group):
    """m = [the N-vector that is zero except in the block of attribute `group`, which holds the target
    value; the M-dim one-hot of which manipulated attribute it is] (StarGAN's mask vector)."""
    code = torch.zeros(len(target), attrs.c_dim + len(attrs.manipulated), device=target.device)
    block = attrs.slices[group]
    code[:, block] = attrs.vector(target)[:, block]
    code[:, attrs.c_dim + attrs.manipulated.index(group)] = 1
    return code


class AttributeCNN(nn.Module):
    """The attribute CNN of the attention and perceptual losses: a trunk whose last map plays conv5,
    global average pooling, one linear head per attribute group. forward(x in [-1, 1]) ->
    (conv5 (N, C, h, w), avg-pool (N, C), [logits per group])."""

    def __init__(self, arch, head_sizes, imagenet_weights=None):
        super().__init__()
        self.arch = arch
        if arch == "resnet50":
            net = torchvision.models.resnet50(weights=None)
            if imagenet_weights:
                net.load_state_dict(torch.load(imagenet_weights, map_location="cpu", weights_only=True))
            self.trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                       net.layer4)
            width = 2048
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        else:  # toy: three [conv3, BN, ReLU, max-pool 2] blocks, then a conv1x1 map at 1/8 of the image as conv5
            # (a 3x3 there widens the receptive field and moves the colour CAM's peak off the shirt)
            layers, chans = [], [3, 16, 32, 64]
            for c_in, c_out in zip(chans[:-1], chans[1:]):
                layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
                           nn.MaxPool2d(2)]
            layers += [nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True)]
            self.trunk, width = nn.Sequential(*layers), 64
        self.heads = nn.ModuleList(nn.Linear(width, k) for k in head_sizes)

    def forward(self, x):
        if self.arch == "resnet50":
            x = ((x + 1) / 2 - self.mean) / self.std
        conv5 = self.trunk(x)
        pooled = conv5.mean(dim=(2, 3))
        return conv5, pooled, [head(pooled) for head in self.heads]


def imagenet_resnet50_weights():
    """The torchvision ResNet-50 ImageNet weights in the torch hub cache, or None (never downloads)."""
    found = sorted(glob.glob(os.path.join(torch.hub.get_dir(), "checkpoints", "resnet50-*.pth")))
    return found[-1] if found else None


def class_activation_map(conv5, head_weight, values, size):
    """a* (Eq. 8): M_v(i, j) = sum_k w_{v,k} f_k(i, j), the CAM of value v of one attribute from the
    conv5 maps f_k and that head's weights w_v, min-max normalised per image to [0, 1], then upsampled
    bilinearly to size x size. conv5 (N, C, h, w), head_weight (K, C), values (N,) -> (N, 1, S, S)."""
    cam = torch.einsum("nc,nchw->nhw", head_weight[values].float(), conv5.float())[:, None]
    lo, hi = cam.amin(dim=(2, 3), keepdim=True), cam.amax(dim=(2, 3), keepdim=True)
    cam = (cam - lo) / (hi - lo).clamp_min(1e-8)
    return F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)


def build_networks(args, attrs):
    """G; D_I = StarGAN's D on the image; D_C = the same with half the input size and two fewer conv
    layers, on crops (absent under --no_dc). Both Ds classify the N attribute values."""
    n, m = attrs.c_dim, len(attrs.manipulated)
    nets = {"gen": Generator(n + m, args.conv_dim, args.n_res),
            "disc_image": Discriminator(args.img_size, args.d_conv_dim, n, args.d_layers)}
    if not args.no_dc:
        nets["disc_crop"] = Discriminator(args.img_size // 2, args.d_conv_dim, n, args.d_layers - 2)
    return nets


def check_args(args):
    """Exit 2 on sizes the networks cannot take and on contradictory flags."""
    if args.img_size % 2 ** args.d_layers or args.d_layers < 3:
        raise common.UserError(f"--img_size {args.img_size} with --d_layers {args.d_layers} does not work: D_I halves "
                               f"the image d_layers times (the size must be a multiple of 2^d_layers = "
                               f"{2 ** args.d_layers}) and D_C, on half-size crops, has d_layers - 2 >= 1 layers.")
    if args.region and not args.target:
        raise common.UserError("--region confines a manipulation: give it with --target, e.g. --target color=red "
                               "--region sleeves.")


# =============================================================================================
# The attended region: largest connected component, its bounding box, the crops
# =============================================================================================


def largest_region_boxes(attention, threshold=0.5, grid=32):
    """Bounding boxes (N, 4) = (x0, y0, x1, y1), in pixel edges, of the largest 8-connected region of
    attention >= threshold * its per-image maximum (Sec. 3.1), found on the attention average-pooled
    by an integer factor to about grid x grid (deviation 3). Connected components by hooking and
    pointer jumping (Shiloach-Vishkin style), batched: every mask pixel starts as its own tree; each
    round the node a pixel's parent names adopts the largest parent among the pixel's neighbours, then
    every pixel jumps to its parent's parent; a region ends with one label, its largest pixel index,
    in O(log size) rounds. attention (N, 1, H, W)."""
    factor = max(1, attention.shape[-1] // grid)
    a = F.avg_pool2d(attention.detach().float(), factor)
    n, _, h, w = a.shape
    inside = (a >= threshold * a.amax(dim=(2, 3), keepdim=True)).flatten(1)
    index = torch.arange(h * w, device=a.device, dtype=torch.float32).expand(n, -1)
    parent = torch.where(inside, index, -1.0)
    for _ in range(math.ceil(math.log2(h * w))):
        neighbour = torch.where(inside, F.max_pool2d(parent.view(n, 1, h, w), 3, 1, 1).flatten(1), -1.0)
        parent = torch.where(inside, parent.scatter_reduce(1, parent.clamp_min(0).long(), neighbour, "amax"), -1.0)
        for _ in range(2):
            parent = torch.where(inside, parent.gather(1, parent.clamp_min(0).long()), -1.0)
    area = torch.zeros_like(parent).scatter_add_(1, parent.clamp_min(0).long(), inside.float())
    region = (parent == area.argmax(1, keepdim=True).float()).view(n, h, w)
    rows, cols = region.any(2), region.any(1)
    y0, y1 = rows.float().argmax(1), h - rows.flip(1).float().argmax(1)
    x0, x1 = cols.float().argmax(1), w - cols.flip(1).float().argmax(1)
    return torch.stack([x0, y0, x1, y1], dim=1).float() * factor


def crop(images, boxes, size):
    """The box of each image resized to size x size (roi_align: bilinear, differentiable)."""
    index = torch.arange(len(boxes), device=boxes.device, dtype=torch.float32)[:, None]
    rois = torch.cat([index, boxes.float()], dim=1)
    out = roi_align(images.float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return out.to(images.dtype)


# =============================================================================================
# Reference images for the perceptual loss
# =============================================================================================


class ReferenceBank:
    """Up to `per_label_set` training images for every combination of labels in the training set, on
    the device (uint8). choose(target, group) picks for each target the bank image that has all its
    labels, else the most matching ones among those with the manipulated group matching; ties at
    random (deviation 1)."""

    def __init__(self, dataset, per_label_set, seed, device, workers=0):
        labels = dataset.labels
        _, label_set = torch.unique(labels, dim=0, return_inverse=True)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        order = order[torch.argsort(label_set[order], stable=True)]  # grouped by label set, shuffled within
        counts = torch.bincount(label_set)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order)) - first[label_set[order]]
        chosen = order[rank < per_label_set]
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, chosen.tolist()), batch_size=64,
                                             num_workers=workers, generator=torch.Generator())
        images = torch.cat([((b["image"] + 1) * 127.5).round().to(torch.uint8) for b in loader])
        self.images, self.labels = images.to(device), labels[chosen].to(device)

    def choose(self, target, group, generator):
        """Indices into the bank, one per row of target (B, G)."""
        matches = (target[:, None, :] == self.labels[None]).sum(-1).float()
        same_group = (target[:, None, group] == self.labels[None, :, group]).float()
        noise = torch.rand(matches.shape, device=matches.device, generator=generator)
        return (matches + (target.shape[1] + 1) * same_group + 0.5 * noise).argmax(1)

    def __getitem__(self, index):
        return self.images[index].float() / 127.5 - 1


# =============================================================================================
# The attribute CNN: --phase classifier
# =============================================================================================


def train_classifier(args, attrs, train_set, device):
    """Train the attribute CNN on the training split (cross-entropy per group, Adam), report its
    test accuracy per group and save it atomically to --classifier. Uses its own RNG streams, so
    the GAN that follows sees the same randomness whether or not the CNN was trained first. Ctrl-C
    or SIGTERM saves the unfinished CNN to <classifier>.partial, from which the next run continues."""
    arch = "toy" if args.data in common.TOY_NAMES else "resnet50"
    head_sizes = [len(v) for v in attrs.values]
    weights = imagenet_resnet50_weights() if arch == "resnet50" else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(args.seed)
        cnn = AttributeCNN(arch, head_sizes, weights)
    if weights:
        print(f"attribute CNN: ResNet-50 from the ImageNet weights {weights}")
    elif arch == "resnet50":
        warnings.warn(f"no ImageNet ResNet-50 weights (resnet50-*.pth) in {torch.hub.get_dir()}/checkpoints: the "
                      "attribute CNN starts from random weights, so its CAMs and features are weaker than the paper's. "
                      "Put the torchvision file there to fine-tune from ImageNet.")
    cnn.to(device).train()
    opt = torch.optim.Adam(cnn.parameters(), lr=args.cls_lr, betas=(0.9, 0.999))
    partial, start = f"{args.classifier}.partial", 0
    if os.path.isfile(partial):  # an interrupted run: continue where it stopped
        state = common.load_tensors(partial, f"{partial}, the unfinished attribute CNN of an interrupted run, is "
                                             f"damaged; delete it to train the CNN from the start")
        cnn.load_state_dict(state["cnn"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"attribute CNN: continuing {partial} from step {start}")
    sampler = common.shuffled_positions(len(train_set), args.seed + 101, start * args.cls_batch_size)
    loader = iter(torch.utils.data.DataLoader(train_set, batch_size=args.cls_batch_size, sampler=sampler,
                                              num_workers=args.workers, generator=torch.Generator(),
                                              worker_init_fn=common.ignore_stop_signals))
    stop = []
    old_handlers = common.catch_stop_signals(stop)  # Ctrl-C or SIGTERM: finish the step, save, stop
    try:
        for step in tqdm(range(start + 1, args.cls_iters + 1), desc="attribute CNN", mininterval=2):
            batch = next(loader)
            x, labels = batch["image"].to(device), batch["labels"].to(device)
            loss = sum(F.cross_entropy(logits, labels[:, g]) for g, logits in enumerate(cnn(x)[2]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if stop:  # after the step: save it, then stop
                os.makedirs(os.path.dirname(partial) or ".", exist_ok=True)
                torch.save({"step": step, "cnn": cnn.state_dict(), "opt": opt.state_dict()}, partial + ".tmp")
                os.replace(partial + ".tmp", partial)
                raise common.Interrupted(f"the attribute CNN at step {step} is saved to {partial}; the same command "
                                         f"continues it", stop[0])
    finally:
        common.restore_signals(old_handlers)
    cnn.eval()
    accuracy = classifier_accuracy(cnn, attrs, args, device)
    print("attribute CNN test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    os.makedirs(os.path.dirname(args.classifier) or ".", exist_ok=True)
    state = {"script": f"{SCRIPT}-classifier", "arch": arch, "head_sizes": head_sizes, "names": attrs.names,
             "values": attrs.values, "img_size": args.img_size, "accuracy": accuracy,
             "state_dict": {k: v.cpu() for k, v in cnn.state_dict().items()}}
    tmp = f"{args.classifier}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, args.classifier)
    if os.path.exists(partial):
        os.remove(partial)
    print(f"attribute CNN saved to {args.classifier}")
    return cnn


@torch.no_grad()
def classifier_accuracy(cnn, attrs, args, device):
    _, test_set = common.attribute_data(args.data, args.data_root, args.img_size, args.attrs, "test")
    correct = torch.zeros(len(attrs.names))
    n = 0
    for batch in torch.utils.data.DataLoader(test_set, batch_size=64, num_workers=args.workers,
                                             generator=torch.Generator()):
        logits = cnn(batch["image"].to(device))[2]
        predicted = torch.stack([l.argmax(1) for l in logits], dim=1).cpu()
        correct += (predicted == batch["labels"]).sum(0)
        n += len(predicted)
    return {name: (c / n).item() for name, c in zip(attrs.names, correct)}


def load_classifier(args, attrs, device):
    """The frozen attribute CNN from --classifier (eval mode, no gradients for its weights)."""
    state = common.load_tensors(args.classifier, f"{args.classifier} is not a readable attribute CNN")
    if not isinstance(state, dict) or state.get("script") != f"{SCRIPT}-classifier":
        raise common.UserError(f"{args.classifier} is not an attribute CNN of amgan.py; run --phase classifier.")
    if state["names"] != attrs.names or state["values"] != attrs.values or state["img_size"] != args.img_size:
        raise common.UserError(f"{args.classifier} was trained on other attributes or another --img_size "
                               f"({state['img_size']} px, {state['names']}); run --phase classifier for this data.")
    cnn = AttributeCNN(state["arch"], state["head_sizes"])
    try:
        cnn.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise common.UserError(f"{args.classifier} does not fit this attribute CNN ({str(e).splitlines()[1].strip()}); "
                               f"run --phase classifier again.") from None
    return cnn.to(device).eval().requires_grad_(False)


def needs_cnn(args):
    """The CNN serves the attention loss, the perceptual loss and --cam_as_mask."""
    return args.cam_as_mask or not args.no_attention_loss or not args.no_perceptual


# =============================================================================================
# The forward pass and the discriminators' terms
# =============================================================================================


class Manipulation(NamedTuple):
    output: torch.Tensor     # x* (Eq. 1)
    mask: torch.Tensor       # the mask used: G's attention a, or the CNN's CAM a* under --cam_as_mask
    content: torch.Tensor    # z, G's image head
    attention: torch.Tensor  # a, G's attention head


class Manipulator:
    """AMGAN's forward pass: (x, labels of x, target labels, manipulated group) -> Manipulation."""

    def __init__(self, attrs, gen, cnn=None, cam_as_mask=False):
        self.attrs = attrs
        self.gen = gen
        self.cnn = cnn
        self.cam_as_mask = cam_as_mask

    def cam(self, x, labels, group):
        """a*: the frozen CNN's CAM of x for x's own value of `group` (Eq. 8)."""
        with torch.no_grad():
            conv5 = self.cnn(x)[0]
            return class_activation_map(conv5, self.cnn.heads[group].weight, labels[:, group], x.shape[-1])

    def __call__(self, x, labels, target, group, cam=None):
        content, attention = self.gen(x, manipulation_code(self.attrs, target, group))
        mask = (self.cam(x, labels, group) if cam is None else cam).to(x.dtype) if self.cam_as_mask else attention
        return Manipulation(compose(content, mask, x), mask, content, attention)


def random_targets(attrs, labels, group, generator):
    """Target labels: the original with `group` set to a value drawn uniformly among the others."""
    k = len(attrs.values[group])
    shift = torch.randint(1, k, (len(labels),), device=labels.device, generator=generator)
    return attrs.set_value(labels, group, (labels[:, group] + shift) % k)


def gradient_penalty(disc, real, fake):
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad_x~ D_src(x~)||_2 - 1)^2] at x~ = a real + (1 - a) fake,
    a ~ U(0, 1) per image; differentiable with respect to D (create_graph)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    grad, = torch.autograd.grad(disc(x_hat)[0].float().sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def classification_loss(attrs, logits, labels):
    """The cross-entropy of each attribute block of logits against its value, summed over the
    manipulated attributes (binary attributes: BCE-with-logits summed, averaged over the images)."""
    loss = logits.new_zeros(()).float()
    for g, columns in attrs.slices.items():
        block = logits[:, columns].float()
        if attrs.binary[g]:
            loss = loss + F.binary_cross_entropy_with_logits(block, labels[:, g:g + 1].float(), reduction="sum") \
                / len(block)
        else:
            loss = loss + F.cross_entropy(block, labels[:, g])
    return loss


def critic_losses(disc, real, fake, labels, attrs):
    """One discriminator's terms on a (real, fake) pair: (adversarial, gradient penalty, classification
    of the real images)."""
    src, cls = disc(torch.cat([real, fake]))
    n = len(real)
    # L_adv^D = -E[D_src(x_d)] + E[D_src(x*_d)] (+ lambda_gp E[(||grad D_src(x~_d)||_2 - 1)^2] below) (Eq. 2)
    adv = -src[:n].mean() + src[n:].mean()
    gp = gradient_penalty(disc, real, fake)
    # L_cls^D = E[-log D_cls(m'|x_d)]: the real image's original values, CE per attribute block (Eq. 3)
    cls_real = classification_loss(attrs, cls[:n], labels)
    return adv, gp, cls_real


# =============================================================================================
# The training step: one D update, a G update every n_critic steps
# =============================================================================================


def train_step(args, attrs, nets, manipulator, bank, opt_g, opt_d, batch, step, draws, dist_):
    """One iteration: a D update, and every n_critic steps a G update; returns the detached losses.
    `manipulator` holds G and the frozen CNN, `bank` the reference images, `draws` the generator of
    the target values and reference ties."""
    x, labels = batch
    discs = [nets[k] for k in ("disc_image", "disc_crop") if k in nets]
    half = args.img_size // 2
    use_attention_loss = not (args.no_attention_loss or args.cam_as_mask)
    # alternating attributes, one per batch; the target: another value of it, drawn uniformly
    group = attrs.manipulated[((step - 1) // args.n_critic) % len(attrs.manipulated)]
    target = random_targets(attrs, labels, group, draws)
    cam = manipulator.cam(x, labels, group) if args.cam_as_mask else None  # a* of the input, for its value

    # ---------------- Discriminator update (detached fakes) ----------------
    for d in discs:
        d.requires_grad_(True)
    with common.autocast(args.amp, x.device):
        with torch.no_grad():
            fake, mask, _, _ = manipulator(x, labels, target, group, cam)
        adv_i, gp_i, cls_i = critic_losses(nets["disc_image"], x, fake, labels, attrs)
        losses = {"d_adv_image": adv_i, "d_cls": cls_i, "d_gp": gp_i}
        if "disc_crop" in nets:
            boxes = largest_region_boxes(mask)
            adv_c, gp_c, cls_c = critic_losses(nets["disc_crop"], crop(x, boxes, half), crop(fake, boxes, half),
                                               labels, attrs)
            losses.update(d_adv_crop=adv_c, d_cls=cls_i + cls_c, d_gp=gp_i + gp_c)
        # L_D = sum_{d in I, C} L_adv^D_d (with lambda_gp GP_d) + lambda_cls L_cls^D_d (Eq. 4)
        d_loss = (sum(v for k, v in losses.items() if k.startswith("d_adv")) + args.lambda_cls * losses["d_cls"]
                  + args.lambda_gp * losses["d_gp"])
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    dist_.average_gradients(discs)
    opt_d.step()
    losses["d_loss"] = d_loss
    if step % args.n_critic:
        return {k: v.detach() for k, v in losses.items()}

    # ---------------- Generator update, every n_critic steps ----------------
    if cam is None and use_attention_loss:
        cam = manipulator.cam(x, labels, group)
    for d in discs:
        d.requires_grad_(False)
    with common.autocast(args.amp, x.device):
        fake, mask, _, attention = manipulator(x, labels, target, group, cam)
        # inverse manipulation m*: back to the original value of the attribute
        rec = manipulator(fake, target, labels, group).output
        src, cls = nets["disc_image"](fake)
        # L_adv^G = -E[D_src(x*_d)] (Eq. 5)
        g_adv = -src.mean()
        # L_cls^G = E[-log D_cls(m|x*_d)]: the target values (Eq. 6)
        g_cls = classification_loss(attrs, cls, target)
        if "disc_crop" in nets:
            src_c, cls_c = nets["disc_crop"](crop(fake, largest_region_boxes(mask), half))
            g_adv = g_adv - src_c.mean()
            g_cls = g_cls + classification_loss(attrs, cls_c, target)
        # L_cyc = E[|x_I - G(G(x_I, m), m*)|_1] (Eq. 7)
        g_cycle = F.l1_loss(rec, x)
        losses.update(g_adv=g_adv, g_cls=g_cls, g_cycle=g_cycle)
        g_loss = g_adv + args.lambda_cls * g_cls + args.lambda_cyc * g_cycle
        if use_attention_loss:
            # L_a = E[|a - a*|_1], a* the CAM of the input's value of the attribute (Eqs. 8, 9)
            losses["g_attention"] = F.l1_loss(attention, cam.to(attention.dtype))
            g_loss = g_loss + args.lambda_a * losses["g_attention"]
        if not args.no_perceptual:
            reference = bank[bank.choose(target, group, draws)]
            with torch.no_grad():
                ref_conv5, ref_pool, _ = manipulator.cnn(reference)
            fake_conv5, fake_pool, _ = manipulator.cnn(fake)
            # L_p = sum_j |phi_j(x*) - phi_j(x_ref)|_1, j in {conv5, avg-pool} (or avg-pool only) (Eq. 10)
            losses["g_perceptual"] = F.l1_loss(fake_pool, ref_pool) + (
                F.l1_loss(fake_conv5, ref_conv5) if args.perceptual == "conv5+avgpool" else 0.0)
            g_loss = g_loss + args.lambda_p * losses["g_perceptual"]
        # L_G = L_adv^G + lambda_cls L_cls^G + lambda_cyc L_cyc + lambda_a L_a + lambda_p L_p (Eq. 11)
        losses["g_loss"] = g_loss
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    dist_.average_gradients([nets["gen"]])
    opt_g.step()
    losses["attention_mean"] = mask.mean()
    return {k: v.detach() for k, v in losses.items()}


# =============================================================================================
# The training loop
# =============================================================================================


def train(args, attrs, train_set, dist_, device, nets, cnn):
    """--phase train (and bench): optimizers, data, resume, the attribute CNN (trained first when
    there is none yet), the reference bank, then the loop."""
    opt_g = common.adam(nets["gen"].parameters(), args.lr, (0.5, 0.999), device)
    opt_d = common.adam([p for k in ("disc_image", "disc_crop") if k in nets for p in nets[k].parameters()], args.lr,
                        (0.5, 0.999), device)
    optimizers = {"opt_g": opt_g, "opt_d": opt_d}
    start_step = 0
    extra = {}
    if args.phase == "train":  # refuses to overwrite a run; writes args.json
        common.prepare_out(args.out, args.ckpt, vars(args), args.resume, dist_.main)
    if args.resume:
        ckpt = common.load_checkpoint(args.ckpt, SCRIPT, nets, optimizers)
        start_step, extra = ckpt["step"], ckpt["extra"]
    dist_.broadcast(nets.values())
    batches = common.train_batches(train_set, args.batch_size, args.workers, args.seed, device, dist_, start_step,
                                   labels=True)
    if args.resume:  # after the data stream, which draws its seed from the global RNG
        common.set_rng_state(ckpt["rng"])
    if cnn is None and needs_cnn(args):
        if args.phase == "bench":
            print("bench: no attribute CNN yet, timing with an untrained one")
            cnn = AttributeCNN("toy" if args.data in common.TOY_NAMES else "resnet50", [len(v) for v in attrs.values])
            cnn = cnn.to(device).eval().requires_grad_(False)
        elif dist_.world > 1:
            raise common.UserError(f"no attribute CNN at {args.classifier}: train it first with --phase classifier.")
        else:  # its own RNG streams: the GAN's randomness does not depend on whether the CNN was trained first
            cnn = train_classifier(args, attrs, train_set, device).requires_grad_(False)
    manipulator = Manipulator(attrs, nets["gen"], cnn, args.cam_as_mask)
    bank = None if args.no_perceptual else ReferenceBank(train_set, args.ref_per_label_set, args.seed, device,
                                                         args.workers)
    draws = torch.Generator(device=device).manual_seed(args.seed + dist_.rank)  # targets, reference ties
    if "draws" in extra:
        draws.set_state(extra["draws"])

    if args.phase == "bench":  # it/s, images/s and peak memory of the training step, as one JSON line
        bench = common.Bench(device, args.img_size, args.batch_size, args.amp, args.compile)
        for step in bench.steps():
            losses = train_step(args, attrs, nets, manipulator, bank, opt_g, opt_d, next(batches), step, draws, dist_)
        bench.report(losses)
        return

    samples = [train_set[i] for i in range(4)]
    sample_x = torch.stack([s["image"] for s in samples]).to(device)
    sample_labels = torch.stack([s["labels"] for s in samples]).to(device)
    last_step = min(args.iters, args.stop_at or args.iters)
    with common.RunLog(args.out, args.ckpt, last_step, args.log_every, dist_, start_step,
                        extra.get("elapsed", 0.0)) as log:  # log.csv, progress bar, Ctrl-C and SIGTERM
        for step in range(start_step + 1, last_step + 1):
            lr = common.linear_decay(step, args.lr, args.iters, args.iters / 2)
            common.set_lr([opt_g, opt_d], lr)
            losses = train_step(args, attrs, nets, manipulator, bank, opt_g, opt_d, next(batches), step, draws, dist_)
            log.add(losses)
            save = step == last_step or (args.save_every and step % args.save_every == 0)
            if step % args.log_every == 0 or save:
                log.write(step, lr)  # a NaN/Inf loss raises Diverged here, before anything is saved
            if dist_.main and args.sample_every and step % args.sample_every == 0:
                path = os.path.join(args.out, "samples", f"step_{step:07d}.png")
                sample_grid(nets, attrs, manipulator, path, sample_x, sample_labels)
            interrupted = log.interrupted(step)  # Ctrl-C or SIGTERM: save, then stop
            if save or interrupted:
                log.write(step, lr)
                if dist_.main:
                    extra = {"elapsed": log.seconds(), "draws": draws.get_state(), "attributes": attrs.state}
                    common.save_checkpoint(args.ckpt, SCRIPT, vars(args), step, nets, optimizers, extra)
                log.last_saved = step
            if interrupted:
                raise common.Interrupted(f"checkpoint at step {step} saved to {args.ckpt}; continue with --resume",
                                         interrupted)
    if dist_.main:
        print(f"trained to step {max(start_step, last_step)}; checkpoint {args.ckpt}; sample grids in "
              f"{os.path.join(args.out, 'samples')}. Next: python {SCRIPT}.py --out {args.out} --phase test "
              f"(the test pictures, shown in {os.path.join(args.out, 'test', 'index.html')}), then --phase eval")


# =============================================================================================
# Region-specific manipulation (Sec. 4)
# =============================================================================================


def confine(region, content, attention, x, where):
    """Eq. 12: sleeves x' = a1* z + (1 - a1*) x; torso: a_t = a (1 - a1*), x' = a_t z + (1 - a_t) x,
    with a1* the thresholded sleeveless attention and (z, a) the confined manipulation's. -> (x', mask)."""
    mask = region if where == "sleeves" else attention * (1 - region)
    return compose(content, mask, x), mask


class RegionManipulator:
    """A manipulation confined to the sleeves or the torso by the attention of the --region_from
    manipulation (e.g. sleeve=sleeveless), values below --region_threshold set to 0 (Sec. 4)."""

    def __init__(self, attrs, manipulator, region_from, threshold):
        self.attrs = attrs
        self.manipulator = manipulator
        self.threshold = threshold
        (self.region_group, self.region_value), = attrs.parse_target(region_from)

    def region(self, x, labels):
        """a1* = a1 [a1 >= threshold], a1 the attention of the region manipulation (Sec. 4)."""
        target = self.attrs.set_value(labels, self.region_group, self.region_value)
        a1 = self.manipulator(x, labels, target, self.region_group).mask
        return a1 * (a1 >= self.threshold).to(a1.dtype)

    def __call__(self, x, labels, target, group, where):
        _, mask, content, _ = self.manipulator(x, labels, target, group)
        return confine(self.region(x, labels), content, mask, x, where)


@torch.no_grad()
def region_metrics(args, attrs, manipulator, regions, device):
    """toy-attr: for colour changes of test shirts that have sleeves, the share of the change
    sum |x' - x| that falls inside the GT sleeves (torso) when the change is confined to the sleeves
    (torso), next to the same share for the plain, unconfined change."""
    colour, sleeve = attrs.names.index("color"), attrs.names.index("sleeve")
    inside = {k: torch.zeros(2, dtype=torch.float64) for k in ("sleeves_confined", "sleeves_plain", "torso_confined",
                                                                "torso_plain")}
    _, test_set = common.attribute_data(args.data, args.data_root, args.img_size, args.attrs, "test")
    for batch in torch.utils.data.DataLoader(test_set, batch_size=16, num_workers=args.workers):
        keep = batch["labels"][:, sleeve] != attrs.values[sleeve].index("sleeveless")
        x, labels = batch["image"][keep].to(device), batch["labels"][keep].to(device)
        masks = {"sleeves": batch["mask_sleeves"][keep].to(device), "torso": batch["mask_torso"][keep].to(device)}
        for v in range(len(attrs.values[colour])):
            other = labels[:, colour] != v
            if not other.any():
                continue
            xs, ls = x[other], labels[other]
            target = attrs.set_value(ls, colour, v)
            plain = manipulator(xs, ls, target, colour).output
            for where, mask in masks.items():
                confined = regions(xs, ls, target, colour, where)[0]
                for kind, out in (("confined", confined), ("plain", plain)):
                    change = (out - xs).abs().sum(1, keepdim=True).double()
                    inside[f"{where}_{kind}"] += torch.stack([(change * mask[other]).sum(), change.sum()]).cpu()
    share = {k: (t[0] / t[1].clamp_min(1e-12)).item() for k, t in inside.items()}
    return {"sleeve_colour_change_in_sleeves": share["sleeves_confined"],
            "plain_colour_change_in_sleeves": share["sleeves_plain"],
            "torso_colour_change_in_torso": share["torso_confined"],
            "plain_colour_change_in_torso": share["torso_plain"]}


# =============================================================================================
# Sampling, test and eval
# =============================================================================================


@torch.no_grad()
def sample_grid(nets, attrs, manipulator, path, x, labels):
    """Per row: the input, then per manipulation (every value of every manipulated attribute) the mask
    over the input and the output."""
    for net in nets.values():
        net.eval()
    columns = [x]
    for group, _, target, _ in attrs.changes(labels):
        out, mask, _, _ = manipulator(x, labels, target, group)
        columns += [common.heat_overlay(mask, x), out]
    common.save_grid(path, columns)
    for net in nets.values():
        net.train()


def has_regions(args, attrs):
    """Whether the attribute of --region_from (e.g. sleeve) is among the manipulated ones."""
    name = args.region_from.partition("=")[0]
    return name in attrs.names and attrs.names.index(name) in attrs.manipulated


@torch.no_grad()
def test(args, attrs, manipulator, device, step):
    """--phase test: <out>/test/<name>_<attribute>=<value>.png and its mask for every single change of
    the test images, or the --target manipulations applied one after the other (confined to
    --region); --input images get their labels from the attribute CNN. The inputs go to
    test/input/<name>.png, and test/index.html shows a row per image: input, then mask and output per change."""
    regions = None
    if args.region:
        if not has_regions(args, attrs):
            raise common.UserError(f"--region needs the attribute of --region_from {args.region_from} among the "
                                   f"manipulated ones (--attrs).")
        regions = RegionManipulator(attrs, manipulator, args.region_from, args.region_threshold)
        if regions.region_group in [g for g, _ in attrs.parse_target(args.target)]:
            name = attrs.names[regions.region_group]
            raise common.UserError(f"--region confines a manipulation of another attribute than {name}; "
                                   f"--target {args.target} changes {name} itself.")

    def manipulate(x, labels, target, group):
        if regions is not None:
            out, mask = regions(x, labels, target, group, args.region)
        else:
            out, mask = manipulator(x, labels, target, group)[:2]
        return out.float(), mask.float()

    folder = os.path.join(args.out, "test")
    targets = attrs.parse_target(args.target) if args.target else None
    if args.input:
        images = common.input_images(args.input, args.img_size)
    else:
        images = common.attribute_data(args.data, args.data_root, args.img_size, args.attrs, "test")[1]
    count = 0
    inputs = []
    written = set()  # the <name>_<change> pictures of this run
    for batch in common.test_batches(images, args.workers):
        x = batch["image"].to(device)
        if args.input:  # your own images: their labels come from the attribute CNN
            labels = torch.stack([logits.argmax(1) for logits in manipulator.cnn(x)[2]], 1)
        else:
            labels = batch["labels"].to(device)
        common.save_pictures(os.path.join(folder, "input"), batch["name"], x)
        inputs += batch["name"]
        if targets:  # --target: the manipulations one after the other
            out, current = x, labels
            for group, value in targets:
                target = attrs.set_value(current, group, value)
                out, mask = manipulate(out, current, target, group)
                current = target
            tag = "_".join(attrs.describe(g, v) for g, v in targets)
            names = [f"{name}_{tag}" for name in batch["name"]]
            common.save_pictures(folder, names, out, mask)
            written.update(names)
            count += len(x)
            continue
        for group, value, target, valid in attrs.changes(labels):  # every single change of the image's values
            if valid.any():
                out, mask = manipulate(x[valid], labels[valid], target[valid], group)
                names = [f"{name}_{attrs.describe(group, value)}"
                         for name, keep in zip(batch["name"], valid.tolist()) if keep]
                common.save_pictures(folder, names, out, mask)
                written.update(names)
                count += len(names)
    tags = (["_".join(attrs.describe(g, v) for g, v in targets)] if targets else
            [attrs.describe(g, v) for g in attrs.manipulated for v in range(len(attrs.values[g]))])
    rows = [(name, [f"input/{name}.png"] + [f"{name}_{tag}{kind}.png" if f"{name}_{tag}" in written else None
                                            for tag in tags for kind in ("_attention", "")]) for name in inputs]
    common.write_index_html(folder, f"{SCRIPT}.py on {args.data}, step {step}", vars(args),
                            ["input"] + [f"{tag} {kind}" for tag in tags for kind in ("mask", "output")], rows)
    print(f"{count} manipulated images{' and attention maps' if count else ''} in {folder}")
    print(f"open {os.path.join(folder, 'index.html')} to see them side by side")


@torch.no_grad()
def evaluate(args, attrs, manipulator, device):
    """--phase eval: the attribute metrics (accuracy, preservation, attention, retrieval; on real data KID/FID)
    for every single change of the test split, and on toy-attr the region-specific manipulation's ->
    <out>/metrics.json."""
    _, test_set = common.attribute_data(args.data, args.data_root, args.img_size, args.attrs, "test")
    metrics = common.AttributeMetrics(attrs, test_set, args.data, args.img_size, args.data_root, args.ckpt, device,
                                      args.workers, args.inception_weights)
    for batch in common.test_batches(test_set, args.workers):
        x, labels = batch["image"].to(device), batch["labels"].to(device)
        for group, value, target, valid in attrs.changes(labels):
            if valid.any():
                keep = valid.to(device)
                out, mask, _, _ = manipulator(x[keep], labels[keep], target[keep], group)
                metrics.add(batch, keep, group, value, target, out.float(), mask.float())
    results = metrics.summary()
    if args.data == "toy-attr" and has_regions(args, attrs) and attrs.names.index("color") in attrs.manipulated:
        regions = RegionManipulator(attrs, manipulator, args.region_from, args.region_threshold)
        results["region"] = region_metrics(args, attrs, manipulator, regions, device)
    common.write_metrics(args.out, results)


def parse_flags(argv=None):
    """The command line -> the run's flags: the toy preset or the checkpoint's flags filled in, then checked."""
    parser = argparse.ArgumentParser(
        description="AMGAN (Ak et al., ICCV 2019): attribute manipulation with attention, CAM guidance and a crop D.",
        formatter_class=common.HelpFormatter)
    groups = common.add_common_flags(parser, SCRIPT, extra_phases=("classifier",), data="toy-attr")
    add = groups["paper"].add_argument
    add_phase = groups["phases"].add_argument
    groups["data"].add_argument("--attrs", default=None, help="comma-separated attributes to manipulate (default: "
                                f"toy-attr color,sleeve; CelebA {','.join(common.CELEBA_DEFAULT_ATTRS)}; labels.csv "
                                f"every column)")
    add_phase("--target", default=None, help="test phase: the manipulation(s) to apply, e.g. color=red,sleeve=long "
              "(default: every value of every manipulated attribute)")
    parser.set_defaults(img_size=128, batch_size=16, iters=80_000, lr=1e-4, save_every=5000)
    add("--conv_dim", type=int, default=64, help="generator base channels")
    add("--d_conv_dim", type=int, default=64, help="discriminator base channels")
    add("--n_res", type=int, default=6, help="residual blocks in the generator")
    add("--d_layers", type=int, default=6, help="conv layers of D_I (D_C has two fewer)")
    add("--n_critic", type=int, default=5, help="D updates per G update")
    add("--lambda_cls", type=float, default=1.0, help="classification weight")
    add("--lambda_cyc", type=float, default=10.0, help="cycle-consistency weight")
    add("--lambda_a", type=float, default=10.0, help="attention loss weight")
    add("--lambda_p", type=float, default=None,
        help="perceptual loss weight (default 20, or 10 with --perceptual avgpool)")
    add("--lambda_gp", type=float, default=10.0, help="gradient penalty weight")
    add("--perceptual", default="conv5+avgpool", choices=["conv5+avgpool", "avgpool"],
        help="CNN features of the perceptual loss (the paper uses avg-pool only on Shopping100k)")
    add("--no_dc", action="store_true", help="ablation: no crop discriminator D_C")
    add("--no_perceptual", action="store_true", help="ablation: no perceptual loss")
    add("--no_attention_loss", action="store_true", help="ablation: no attention loss")
    add("--cam_as_mask", action="store_true", help="ablation: the CNN's CAM is the mask instead of G's attention")
    add("--ref_per_label_set", type=int, default=4,
        help="reference images kept on the device per combination of labels in the training set")
    add("--classifier", default=None, help="the attribute CNN's file (default <out>/classifier.pt)")
    add("--cls_iters", type=int, default=10_000, help="attribute CNN training steps")
    add("--cls_batch_size", type=int, default=64, help="attribute CNN batch size")
    add("--cls_lr", type=float, default=1e-4, help="attribute CNN learning rate (Adam)")
    add_phase("--region", default=None, choices=["sleeves", "torso"],
              help="test: confine the --target manipulation to the sleeves or the torso (Sec. 4)")
    add_phase("--region_from", default="sleeve=sleeveless", help="the manipulation whose attention marks the sleeves")
    add_phase("--region_threshold", type=float, default=0.9,
              help="the region's attention values below this are set to 0")
    args = common.parse_args(parser, argv, SCRIPT, {"toy": TOY_PRESET, "real": {}}, ARCH_FLAGS,
                             positive=("conv_dim", "d_conv_dim", "d_layers", "n_critic", "cls_iters",
                                       "cls_batch_size", "cls_lr", "ref_per_label_set"))
    if args.lambda_p is None:
        args.lambda_p = 20.0 if args.perceptual == "conv5+avgpool" else 10.0
    args.classifier = args.classifier or os.path.join(args.out, "classifier.pt")
    check_args(args)
    return args


def main(argv=None):
    args = parse_flags(argv)
    if args.phase in ("test", "eval"):  # the checkpoint holds the attribute set: --input needs no dataset
        state = common.read_checkpoint(args.ckpt, SCRIPT)
        attrs = common.AttributeSet(**state["extra"]["attributes"])
    else:
        attrs, train_set = common.attribute_data(args.data, args.data_root, args.img_size, args.attrs, "train")
    if args.phase == "classifier":
        common.lock_run_folder(common.make_folder(args.out))  # one training at a time in --out
        train_classifier(args, attrs, train_set, common.pick_device(args.device))
        return
    dist_ = common.Dist(args.device)  # torchrun's process group (a single process without torchrun)
    device = common.pick_device(args.device, dist_.local_rank, args.amp)
    common.seed_everything(args.seed)
    nets = build_networks(args, attrs)
    for net in nets.values():
        common.to_device(net, device)
    if args.compile:  # G only: the gradient penalties differentiate through the Ds twice (deviation 7)
        nets["gen"].compile()
    cnn = load_classifier(args, attrs, device) if os.path.isfile(args.classifier) else None
    if args.phase in ("test", "eval"):
        if cnn is None and (args.cam_as_mask or (args.phase == "test" and args.input)):
            raise common.UserError(f"no attribute CNN at {args.classifier}: "
                                   f"{'--cam_as_mask' if args.cam_as_mask else '--input'} needs it; train it with "
                                   f"--phase classifier (or point --classifier at it).")
        nets, step = common.load_for_inference(args.ckpt, SCRIPT, {"gen": nets["gen"]}, state)  # translation: G only
        manipulator = Manipulator(attrs, nets["gen"], cnn, args.cam_as_mask)
        if args.phase == "test":
            test(args, attrs, manipulator, device, step)
        else:
            evaluate(args, attrs, manipulator, device)
    else:
        train(args, attrs, train_set, dist_, device, nets, cnn)
    dist_.close(nets.values())  # under torchrun: the replicas' weight sums


if __name__ == "__main__":
    common.cli(main)
