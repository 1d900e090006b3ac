"""Unsupervised Attention-guided Image-to-Image Translation. Youssef A. Mejjati, Christian Richardt,
James Tompkin, Darren Cosker, Kwang In Kim. NeurIPS 2018.
Paper: https://arxiv.org/abs/1806.02311
Official TensorFlow code: https://github.com/AlamiMejjati/Unsupervised-Attention-guided-Image-to-Image-Translation

A CycleGAN with one attention network per domain. A_S looks at an image s of domain S and says
where to translate it; the generator F_{S->T} translates the whole image, and only the attended
part is kept: s' = A_S(s) * F_{S->T}(s) + (1 - A_S(s)) * s (Eq. 1, `compose`). The way back goes
through the target domain's attention network. The discriminator switch (Sec. 3): from
--switch_epoch on, the discriminators see only the attended regions (image times the binary mask
A >= tau), the attention networks are frozen and the discriminators drop their InstanceNorm; before
it they see whole images. --no_attention is the CycleGAN baseline (A = 1) of the paper's
comparison. Phases: train, test (--input for your own images), eval, bench. Eq. 1 is the paper's
numbering; the other loss comments name the paper's terms.

The file reads top to bottom: networks, losses, the training step, the training loop (where the
switch happens), sampling and test, main().

Deviations from the official code:
 1. The attention network's last three convolutions are 3x3, 3x3 and 7x7 (reflect-padded), as the
    code's kernel arguments say. The official code passes them as the filter *height* and a (1, 1)
    tuple as the width, and its conv helper uses only the width, so they run as 1x1 kernels.
    --att_kernels official reproduces that.
 2. One joint Adam step for both generators (and both attention nets), then one for both Ds, as in
    the PyTorch CycleGAN; the official code alternates G_A, D_B, G_B, D_A in four session runs. The
    gradients of each network are the same: G_A's loss terms do not depend on G_B and vice versa.
 3. The discriminator is the PyTorch CycleGAN 70x70 PatchGAN (pad 1, no norm in the first layer);
    the official TF one pads by 2 and normalises the first layer too. Weights start from N(0, 0.02)
    (official: truncated normal) and InstanceNorm scales from 1 (official: N(1, 0.02)).
 4. Epochs: --iters defaults to --epochs passes over the larger domain; the switch and the start of
    the linear decay sit at the same fraction of the steps as --switch_epoch and --decay_epoch of
    --epochs, so a short run keeps the schedule's shape; the decay is per step instead of per epoch.
 5. Sampling and testing run under torch.no_grad() in eval mode; the frozen attention nets run
    under no_grad after the switch; D weights need no gradient in the G update.
 6. The stride-2 layers pad as PyTorch's CycleGAN does: one zero on each side of a stride-2 conv,
    and a transposed conv that drops its first output row and column. TF's 'SAME' padding puts the
    zero after the image and drops the last row and column, so every window sits one pixel off;
    --tf_release pads the TF way, for the authors' released models (tools/official.py).
"""
import argparse
import contextlib
import math
import os
import random
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = "uag"
ARCH_FLAGS = ("img_size", "ngf", "ndf", "n_res", "no_attention", "att_kernels", "tf_release")
TOY_PRESET = dict(img_size=64, ngf=16, ndf=32, n_res=6, lambda_cycle=1.0, iters=2500, sample_every=250,
                  save_every=500, log_every=50, workers=1)

# =============================================================================================
# Networks
# =============================================================================================


class ResidualBlock(nn.Module):
    """The TF CycleGAN residual block: ReLU(x + IN(conv3(pad(ReLU(IN(conv3(pad(x)))))))), affine IN."""

    def __init__(self, dim, pad_mode):
        super().__init__()
        pad = nn.ReflectionPad2d(1) if pad_mode == "reflect" else nn.ZeroPad2d(1)
        self.block = nn.Sequential(pad, nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim, affine=True), nn.ReLU(True),
                                   pad, nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim, affine=True))

    def forward(self, x):
        return F.relu(x + self.block(x))


def conv_in_relu(c_in, c_out, kernel, stride=1, pad=0, pad_mode="zeros", tf_same=False):
    """conv, affine IN, ReLU; `tf_same`: TF's 'SAME' zeros of a stride-2 conv, all after the image (deviation 6)."""
    before = [nn.ZeroPad2d((0, 1, 0, 1))] if tf_same else []
    return [*before, nn.Conv2d(c_in, c_out, kernel, stride, 0 if tf_same else pad, padding_mode=pad_mode),
            nn.InstanceNorm2d(c_out, affine=True), nn.ReLU(True)]


class AttentionNet(nn.Module):
    """A_S: conv7 s2, conv3 s2, one residual block, 2x [nearest upsample x2, conv, IN, ReLU], conv ->
    sigmoid: one channel in [0, 1] at the input size. kernels='official' makes the last three convs
    1x1, as the official code runs them (deviation 1)."""

    def __init__(self, ngf=32, kernels="intended", tf=False):
        super().__init__()
        k3, k7 = (3, 7) if kernels == "intended" else (1, 1)
        self.model = nn.Sequential(
            nn.ReflectionPad2d(3), *conv_in_relu(3, ngf, 7, 2),
            *conv_in_relu(ngf, ngf * 2, 3, 2, 1, tf_same=tf),
            ResidualBlock(ngf * 2, "reflect"),
            nn.Upsample(scale_factor=2, mode="nearest"), *conv_in_relu(ngf * 2, ngf * 2, k3, 1, k3 // 2, "reflect"),
            nn.Upsample(scale_factor=2, mode="nearest"), *conv_in_relu(ngf * 2, ngf, k3, 1, k3 // 2, "reflect"),
            nn.Conv2d(ngf, 1, k7, 1, k7 // 2, padding_mode="reflect"), nn.Sigmoid())

    def forward(self, x):
        return self.model(x)


class Generator(nn.Module):
    """F_{S->T}: the TF CycleGAN ResNet-9 (zero padding, affine IN): c7s1-ngf, d2ngf, d4ngf, n_res
    residual blocks, u2ngf, ungf, c7s1-3, tanh."""

    def __init__(self, ngf=32, n_res=9, tf=False):
        super().__init__()
        layers = [*conv_in_relu(3, ngf, 7, 1, 3), *conv_in_relu(ngf, ngf * 2, 3, 2, 1, tf_same=tf),
                  *conv_in_relu(ngf * 2, ngf * 4, 3, 2, 1, tf_same=tf)]
        layers += [ResidualBlock(ngf * 4, "zeros") for _ in range(n_res)]
        for mult in (4, 2):
            if tf:  # TF's 'SAME' transposed conv: the full output without its last row and column (deviation 6)
                layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2), nn.ZeroPad2d((0, -1, 0, -1))]
            else:
                layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1)]
            layers += [nn.InstanceNorm2d(ngf * mult // 2, affine=True), nn.ReLU(True)]
        layers += [nn.Conv2d(ngf, 3, 7, 1, 3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class PatchGAN(nn.Module):
    """The 70x70 PatchGAN of CycleGAN (n_layers 3): conv4 s2 stack, IN, LeakyReLU 0.2, one logit per patch."""

    def __init__(self, in_ch=3, ndf=64, n_layers=3):
        super().__init__()
        chans = [in_ch] + [ndf * min(2 ** i, 8) for i in range(n_layers + 1)]
        layers = [nn.Conv2d(chans[0], chans[1], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for i in range(1, n_layers + 1):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 4, 2 if i < n_layers else 1, 1),
                       nn.InstanceNorm2d(chans[i + 1]), nn.LeakyReLU(0.2, True)]
        self.model = nn.Sequential(*layers, nn.Conv2d(chans[-1], 1, 4, 1, 1))

    def forward(self, x):
        return self.model(x)


def compose(content, attention, x):
    """s' = A(s) * F(s) + (1 - A(s)) * s (Eq. 1): the attended part from F, the rest from the input."""
    return attention * content + (1 - attention) * x


class Translation(NamedTuple):
    output: torch.Tensor     # s' (Eq. 1)
    attention: torch.Tensor  # A_S(s), (N, 1, H, W) in [0, 1]
    generated: torch.Tensor  # F_{S->T}(s), the whole image translated


def translation(nets, x, direction, frozen_attention=False):
    """s -> s' for direction 'a2b' or 'b2a'. A = 1 without attention nets (--no_attention); after the
    switch the attention nets are frozen and run without a gradient."""
    att = nets.get(f"att_{direction[0]}")
    if att is None:
        attention = torch.ones_like(x[:, :1])
    else:
        with torch.no_grad() if frozen_attention else contextlib.nullcontext():
            attention = att(x)
    generated = nets[f"gen_{direction}"](x)
    return Translation(compose(generated, attention, x), attention, generated)


def check_args(args):
    if args.img_size % 4 or args.img_size < 32:
        raise common.UserError(f"--img_size {args.img_size} does not work: the networks halve the image twice and "
                               f"double it back (a multiple of 4), and the 70x70 PatchGAN needs at least 32 px.")


def build_networks(args):
    """Generators F, PatchGAN discriminators and (unless --no_attention) attention nets A per domain."""
    nets = {"gen_a2b": Generator(args.ngf, args.n_res, args.tf_release),
            "gen_b2a": Generator(args.ngf, args.n_res, args.tf_release),
            "disc_a": PatchGAN(3, args.ndf), "disc_b": PatchGAN(3, args.ndf)}
    if not args.no_attention:
        nets["att_a"] = AttentionNet(args.ngf, args.att_kernels, args.tf_release)
        nets["att_b"] = AttentionNet(args.ngf, args.att_kernels, args.tf_release)
    for net in nets.values():
        common.init_normal(net)
    return nets


def switch_discriminators(nets):
    """The switch (Sec. 3): the attention nets stop learning and the discriminators drop their
    InstanceNorm layers (which have no parameters); D sees attended regions from now on."""
    for k in ("att_a", "att_b"):
        nets[k].requires_grad_(False)
    for disc in (nets["disc_a"], nets["disc_b"]):
        disc.model = nn.Sequential(*[nn.Identity() if isinstance(m, nn.InstanceNorm2d) else m for m in disc.model])


# =============================================================================================
# Losses (LSGAN is common.lsgan: mean (x - target)^2, the official lsgan_loss_*)
# =============================================================================================


def foreground(image, attention, tau):
    """What the attention-guided D sees after the switch (Sec. 3): s_new = s * (A(s) >= tau)."""
    return image * (attention >= tau).to(image.dtype)


class ImagePool:
    """CycleGAN's history of generated images, which the discriminators see instead of the newest
    fakes half of the time once it is full (the new one is stored in place of the returned one).
    Items are (image, attention of its source image) pairs for the attention-guided discriminators."""

    def __init__(self, size, seed=0):
        self.size = size
        self.items = []
        self.rng = random.Random(seed)

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
        version, state, gauss = self.rng.getstate()
        return {"items": [list(item) for item in self.items], "rng": [version, list(state), gauss]}

    def load_state_dict(self, state, device="cpu"):
        self.items = [tuple(t.to(device) for t in item) for item in state["items"]]
        version, rng_state, gauss = state["rng"]
        self.rng.setstate((version, tuple(rng_state), gauss))


# =============================================================================================
# The training step: G (and attention) update, then D update on pooled fakes
# =============================================================================================


def train_step(args, nets, opt_g, opt_d, pools, real_a, real_b, dist_, switched):
    """One iteration on a batch of each domain; `switched`: after the discriminator switch."""
    gens = [nets[k] for k in nets if k.startswith(("gen", "att"))]
    discs = [nets["disc_a"], nets["disc_b"]]
    n = real_a.shape[0]

    def seen(image, attention):
        """What D sees of an image with attention A: the whole image before the switch, s * (A >= tau) after."""
        return foreground(image, attention, args.tau) if switched else image

    # ---------------- Generator (and attention) update ----------------
    for d in discs:
        d.requires_grad_(False)
    with common.autocast(args.amp, real_a.device):
        # s' = A_S(s) * F_{S->T}(s) + (1 - A_S(s)) * s (Eq. 1)
        fake_b, att_a, _ = translation(nets, real_a, "a2b", switched)
        fake_a, att_b, _ = translation(nets, real_b, "b2a", switched)
        # s'' = A_T(s') * F_{T->S}(s') + (1 - A_T(s')) * s': back through the target's attention (Sec. 3)
        rec_a = translation(nets, fake_b, "b2a", switched).output
        rec_b = translation(nets, fake_a, "a2b", switched).output
        # L_adv^G (LSGAN): E_s[(D_T(s') - 1)^2]; after the switch D_T sees s' * (A_S(s) >= tau)
        g_adv = (common.lsgan(nets["disc_b"](seen(fake_b, att_a.detach())), 1.0)
                 + common.lsgan(nets["disc_a"](seen(fake_a, att_b.detach())), 1.0))
        # L_cyc (cycle-consistency loss): E_s |s - s''|_1 + E_t |t - t''|_1
        g_cycle = F.l1_loss(rec_a, real_a) + F.l1_loss(rec_b, real_b)
        # L = L_adv + lambda_cyc L_cyc (full objective), no identity term
        g_loss = g_adv + args.lambda_cycle * g_cycle
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    dist_.average_gradients(gens)
    opt_g.step()

    # ---------------- Discriminator update (pooled (image, source attention) pairs) ----------------
    for d in discs:
        d.requires_grad_(True)
    with common.autocast(args.amp, real_a.device):
        d_loss = 0.0
        # real images are masked by their own domain's attention, fakes by their source image's
        for domain, real, real_att, fake, fake_att in (("a", real_a, att_a, fake_a, att_b),
                                                       ("b", real_b, att_b, fake_b, att_a)):
            old_fake, old_att = pools[domain].query(fake.detach(), fake_att.detach())
            logit = nets[f"disc_{domain}"](torch.cat([seen(real, real_att.detach()), seen(old_fake, old_att)]))
            # L_adv^D (LSGAN, halved as in the official code): 0.5 (E_t[(D(t) - 1)^2] + E_s[D(s')^2])
            d_loss = d_loss + 0.5 * (common.lsgan(logit[:n], 1.0) + common.lsgan(logit[n:], 0.0))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    dist_.average_gradients(discs)
    opt_d.step()
    losses = {"d_loss": d_loss, "g_adv": g_adv, "g_cycle": g_cycle, "g_loss": g_loss,
              "attention_mean": (att_a.mean() + att_b.mean()) / 2}
    return {k: v.detach() for k, v in losses.items()}


# =============================================================================================
# The training loop
# =============================================================================================


def train(args, dist_, device, nets, train_a, train_b):
    """--phase train (and bench): optimizers, image pools, the data streams, resume, then the loop."""
    gens = [nets[k] for k in nets if k.startswith(("gen", "att"))]
    opt_g = common.adam([p for g in gens for p in g.parameters()], args.lr, (0.5, 0.999), device)
    opt_d = common.adam([p for d in ("disc_a", "disc_b") for p in nets[d].parameters()], args.lr, (0.5, 0.999),
                        device)
    optimizers = {"opt_g": opt_g, "opt_d": opt_d}
    pools = {d: ImagePool(args.pool_size, seed=args.seed + i) for i, d in enumerate("ab")}
    if args.iters is None:  # CycleGAN's epoch: a pass over the larger domain, all processes together
        epochs, n_images = args.epochs, max(len(train_a), len(train_b))
        args.iters = max(1, math.ceil(epochs * n_images / (args.batch_size * dist_.world)))
    start_step, extra = 0, {}
    if args.phase == "train":  # refuses to overwrite a run; writes args.json
        common.prepare_out(args.out, args.ckpt, vars(args), args.resume, dist_.main)
    if args.resume:  # a resumed run continues with its saved pools
        ckpt = common.load_checkpoint(args.ckpt, SCRIPT, nets, optimizers)
        start_step, extra = ckpt["step"], ckpt["extra"]
        for d, pool in pools.items():
            if f"pool_{d}" in extra:
                pool.load_state_dict(extra[f"pool_{d}"], device)
    dist_.broadcast(nets.values())
    batches_a = common.train_batches(train_a, args.batch_size, args.workers, args.seed, device, dist_, start_step)
    batches_b = common.train_batches(train_b, args.batch_size, args.workers, args.seed + 1, device, dist_, start_step)
    if args.resume:  # after the data streams, which draw their seeds from the global RNG
        common.set_rng_state(ckpt["rng"])

    if args.phase == "bench":  # it/s, images/s and peak memory of the training step (before the switch)
        bench = common.Bench(device, args.img_size, args.batch_size, args.amp, args.compile)
        for _ in bench.steps():
            losses = train_step(args, nets, opt_g, opt_d, pools, next(batches_a), next(batches_b), dist_, False)
        bench.report(losses)
        return

    sample_a = torch.stack([train_a[i]["image"] for i in range(4)]).to(device)
    sample_b = torch.stack([train_b[i]["image"] for i in range(4)]).to(device)
    switch_step = args.iters * args.switch_epoch / args.epochs if not args.no_attention else float("inf")
    decay_start = args.iters * args.decay_epoch / args.epochs
    switched = False
    last_step = min(args.iters, args.stop_at or args.iters)
    with common.RunLog(args.out, args.ckpt, last_step, args.log_every, dist_, start_step,
                        extra.get("elapsed", 0.0)) as log:  # log.csv, progress bar, Ctrl-C and SIGTERM
        for step in range(start_step + 1, last_step + 1):
            if step > switch_step and not switched:  # the discriminator switch (Sec. 3), also after a resume
                switch_discriminators(nets)
                switched = True
            lr = common.linear_decay(step, args.lr, args.iters, decay_start)
            common.set_lr([opt_g, opt_d], lr)
            losses = train_step(args, nets, opt_g, opt_d, pools, next(batches_a), next(batches_b), dist_, switched)
            log.add(losses)
            save = step == last_step or (args.save_every and step % args.save_every == 0)
            if step % args.log_every == 0 or save:
                log.write(step, lr)  # a NaN/Inf loss raises Diverged here, before anything is saved
            if dist_.main and args.sample_every and step % args.sample_every == 0:
                sample_grid(args, nets, os.path.join(args.out, "samples", f"step_{step:07d}.png"), sample_a, sample_b)
            interrupted = log.interrupted(step)  # Ctrl-C or SIGTERM: save, then stop
            if save or interrupted:
                log.write(step, lr)
                if dist_.main:
                    extra = {"elapsed": log.seconds(), **{f"pool_{d}": pools[d].state_dict() for d in "ab"}}
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
# Sampling, test and eval
# =============================================================================================


@torch.no_grad()
def translate(nets, x, direction):
    """(output s', attention A(s)) for a batch in eval mode."""
    out, attention, _ = translation(nets, x, direction)
    return out.float(), attention.float()


@torch.no_grad()
def sample_grid(args, nets, path, real_a, real_b):
    """Per row: input, attention A(s) (black 0, white 1), A over the input, what the attention-guided D
    sees after the switch (s * (A >= tau)), F(s), the translation s', the cycle's attention A_T(s'),
    the cycle s''."""
    for net in nets.values():
        net.eval()
    rows = []
    for real, fwd, back in ((real_a, "a2b", "b2a"), (real_b, "b2a", "a2b")):
        fake, att, generated = translation(nets, real, fwd)
        rec, att_back, _ = translation(nets, fake, back)
        rows.append([real, common.grey(att), common.heat_overlay(att, real), foreground(real, att, args.tau),
                     generated, fake, common.grey(att_back), rec])
    common.save_grid(path, [torch.cat(col) for col in zip(*rows)])
    for net in nets.values():
        net.train()


@torch.no_grad()
def test(args, nets, device, step):
    """--phase test: <out>/test/<direction>/<name>.png and <name>_attention.png for the test split
    (or the --input images), the inputs as test/input/<domain>/<name>.png, and test/index.html showing
    input, attention and output side by side, a row per image and direction."""
    folder = os.path.join(args.out, "test")
    rows = []
    for direction, source, _ in common.directions(args.direction):
        if args.input:
            images = common.input_images(args.input, args.img_size)
        else:
            images = common.domain_images(args.data, args.data_root, args.img_size, "test", source)
        count = 0
        for batch in common.test_batches(images, args.workers):
            x = batch["image"].to(device)
            out, attention = translate(nets, x, direction)
            common.save_pictures(os.path.join(folder, "input", source), batch["name"], x)
            common.save_pictures(os.path.join(folder, direction), batch["name"], out, attention, under=x)
            rows += [(f"{direction} {name}", [f"input/{source}/{name}.png", f"{direction}/{name}_attention.png",
                                               f"{direction}/{name}.png"]) for name in batch["name"]]
            count += len(x)
        print(f"{direction}: {count} translations and attention maps in {os.path.join(folder, direction)}")
    common.write_index_html(folder, f"{SCRIPT}.py on {args.data}, step {step}", vars(args),
                            ["input", "attention", "output"], rows)
    print(f"open {os.path.join(folder, 'index.html')} to see them side by side")


@torch.no_grad()
def evaluate(args, nets, device):
    """--phase eval: the toy metrics (or KID/FID) on the test split -> <out>/metrics.json."""
    metrics = common.TranslationMetrics(args.data, args.img_size, args.data_root, args.ckpt, device,
                                        args.inception_weights)
    for direction, source, target in common.directions(args.direction):
        sources = common.domain_images(args.data, args.data_root, args.img_size, "test", source)
        for batch in common.test_batches(sources, args.workers):
            metrics.add(direction, batch, *translate(nets, batch["image"].to(device), direction))
        targets = common.domain_images(args.data, args.data_root, args.img_size, "test", target)
        for batch in common.test_batches(targets, args.workers):
            metrics.add_real(direction, batch)
    common.write_metrics(args.out, metrics.summary())


def parse_flags(argv=None):
    """The command line -> the run's flags: the toy preset or the checkpoint's flags filled in, then checked."""
    parser = argparse.ArgumentParser(
        description="UAG (Mejjati et al., NeurIPS 2018): unsupervised attention-guided image-to-image translation.",
        formatter_class=common.HelpFormatter)
    groups = common.add_common_flags(parser, SCRIPT)
    add = groups["paper"].add_argument
    add_phase = groups["phases"].add_argument
    add("--ngf", type=int, default=32, help="base channels of the generators and attention nets")
    add("--ndf", type=int, default=64, help="discriminator base channels")
    add("--n_res", type=int, default=9, help="residual blocks in the generator")
    add("--lambda_cycle", type=float, default=10.0, help="cycle-consistency weight, per direction")
    add("--pool_size", type=int, default=50, help="(image, attention) pairs kept for the D update (0: none)")
    add("--epochs", type=float, default=100, help="training epochs (sets --iters when it is not given)")
    add("--decay_epoch", type=float, default=50, help="the learning rate falls linearly to 0 from this epoch on")
    add("--switch_epoch", type=float, default=30,
        help="from this epoch on D sees only attended regions, the attention nets are frozen and D drops its norm")
    add("--tau", type=float, default=0.1, help="attention threshold of the attention-guided discriminator")
    add("--no_attention", action="store_true",
        help="baseline: no attention nets (A = 1), i.e. CycleGAN without identity loss")
    add("--att_kernels", default="intended", choices=["intended", "official"],
        help="attention net's last three convs: 3x3, 3x3, 7x7 as written, or 1x1 as the official code runs them")
    add("--tf_release", action="store_true",
        help="TF's 'SAME' padding in the stride-2 layers, for the authors' released models (tools/official.py)")
    add_phase("--direction", default="both", choices=["both", "a2b", "b2a"],
              help="test phase: which translations to write")
    parser.set_defaults(lr=1e-4)
    args = common.parse_args(parser, argv, SCRIPT, {"toy": TOY_PRESET, "real": {"iters": None}}, ARCH_FLAGS,
                             positive=("ngf", "ndf", "epochs"))
    check_args(args)
    return args


def main(argv=None):
    args = parse_flags(argv)
    dist_ = common.Dist(args.device)  # torchrun's process group (a single process without torchrun)
    device = common.pick_device(args.device, dist_.local_rank, args.amp)
    if args.phase in ("train", "bench"):  # the data first: a missing dataset is said before any network is built
        train_a = common.domain_images(args.data, args.data_root, args.img_size, "train", "A")
        train_b = common.domain_images(args.data, args.data_root, args.img_size, "train", "B")
    common.seed_everything(args.seed)
    nets = build_networks(args)
    for net in nets.values():
        common.to_device(net, device)
        if args.compile:
            net.compile()
    if args.phase in ("test", "eval"):
        nets, step = common.load_for_inference(args.ckpt, SCRIPT, nets)
        if args.phase == "test":
            test(args, nets, device, step)
        else:
            evaluate(args, nets, device)
    else:
        train(args, dist_, device, nets, train_a, train_b)
    dist_.close(nets.values())  # under torchrun: the replicas' weight sums


if __name__ == "__main__":
    common.cli(main)
