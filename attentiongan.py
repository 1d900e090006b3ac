"""AttentionGAN: Unpaired Image-to-Image Translation using Attention-Guided Generative Adversarial
Networks. Hao Tang, Hong Liu, Dan Xu, Philip H.S. Torr, Nicu Sebe. IEEE TNNLS 2021.
Paper: https://arxiv.org/abs/1911.11897   Official PyTorch code: https://github.com/Ha0Tang/AttentionGAN

A CycleGAN whose generators do not paint the whole output: they produce content masks C_i and
attention masks A_i, and the output is a per-pixel mixture of the contents and the input,
G(x) = sum_i C_i * A_i + x * A_background (`compose`). Where the background attention is 1 the
input passes through untouched, so the attention shows where the generator changed the image.

Scheme II (default, the official code): a shared encoder, a content decoder (n-1 tanh content
masks) and an attention decoder (n softmax attention masks, the last one for the background).
Scheme I (--scheme I): one decoder gives one content image and one sigmoid attention mask,
G(x) = C * A + x * (1 - A), with the paper's attention-guided discriminators and TV loss.
LSGAN + cycle + identity losses, a pool of 50 generated images. Phases: train, test (--input for
your own images), eval (toy metrics or KID/FID), bench. The loss comments name the paper's terms.

The file reads top to bottom: networks, losses, the training step, the training loop, sampling
and test, main().

Deviations from the paper / official code:
 1. Scheme I's attention-guided discriminators D_XA, D_YA (they see the pair [attention, image]) and
    its total-variation loss on the attention mask are implemented from the paper; the official
    code has no Scheme I for unpaired two-domain data (AttentionGAN-v1 in the same repository
    uses a different network). D_YA sees the fake pair [A_y, G(x)] and the real pair [A_y, y]
    with the same mask A_y that G produced for x (detached); it is trained next to the vanilla
    PatchGAN D_Y. TV is summed over pixels, averaged over images, lambda_tv 1e-6 (paper).
 2. Each generator runs once on [real source, real target]: its translation and its identity
    mapping in one call (InstanceNorm is per image, so the outputs are the same). The fakes are
    reused, detached, for the D update; each D sees [real, fake] in one call.
 3. Epochs: --iters defaults to (n_epochs + n_epochs_decay) passes over the larger domain; the
    learning rate is constant for the first n_epochs / (n_epochs + n_epochs_decay) of the steps and
    then falls linearly to 0 at the last step (the official schedule steps once per epoch and ends
    at lr / (n_epochs_decay + 1)).
 4. Sampling and testing run under torch.no_grad() in eval mode; D weights need no gradient in the
    G update (as in the official code).
 5. --bg_init P starts the background attention at P instead of 1/n by setting the attention head's
    biases (off by default; the toy preset uses 0.5): the output then starts close to the input,
    so the input itself can carry the background from the first step. With 1/n the content masks
    have to learn to repaint the background first.
"""
import argparse
import math
import os
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = "attentiongan"
ARCH_FLAGS = ("img_size", "scheme", "ngf", "ndf", "n_res", "n_masks")
TOY_PRESET = dict(img_size=64, ngf=16, ndf=32, n_res=6, lambda_cycle=1.0, bg_init=0.5, iters=2500, sample_every=250,
                  save_every=500, log_every=50, workers=1)
# the released models (official README): 60 epochs, batch 4, no decay
RELEASED_PRESET = dict(n_epochs=60, n_epochs_decay=0, batch_size=4)

# =============================================================================================
# Networks
# =============================================================================================


class ResidualBlock(nn.Module):
    """CycleGAN's residual block: x + [reflect-pad, conv3, IN, ReLU, reflect-pad, conv3, IN](x)."""

    def __init__(self, dim):
        super().__init__()
        conv = lambda: nn.Conv2d(dim, dim, 3, bias=True)  # noqa: E731
        self.block = nn.Sequential(nn.ReflectionPad2d(1), conv(), nn.InstanceNorm2d(dim), nn.ReLU(True),
                                   nn.ReflectionPad2d(1), conv(), nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.block(x)


def encoder(ngf, n_res):
    """c7s1-64, d128, d256, 9 residual blocks (CycleGAN's generator trunk; conv biases on, IN without affine)."""
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
    for mult in (1, 2):
        layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1), nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True)]
    layers += [ResidualBlock(ngf * 4) for _ in range(n_res)]
    return nn.Sequential(*layers)


def up_path(ngf):
    """u128, u64: two 3x3 stride-1/2 transposed convolutions with IN and ReLU."""
    layers = []
    for mult in (4, 2):
        layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1),
                   nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
    return layers


def compose(content, attention, x):
    """G(x) = sum_{i<n} C_i * A_i + x * A_n (Scheme II; Scheme I is the case n = 2 with
    A_2 = 1 - A_1). content (N, n-1, 3, H, W), attention (N, n, H, W), x (N, 3, H, W)."""
    return (content * attention[:, :-1, None]).sum(1) + x * attention[:, -1:]


class GeneratorII(nn.Module):
    """Scheme II: shared encoder; content decoder -> n-1 tanh content masks; attention decoder ->
    n attention masks (softmax over the n masks, the last is the background's).
    Returns (output, attention (N, n, H, W), content (N, n-1, 3, H, W))."""

    def __init__(self, ngf=64, n_res=9, n_masks=10):
        super().__init__()
        self.n_masks = n_masks
        self.encoder = encoder(ngf, n_res)
        self.content_decoder = nn.Sequential(*up_path(ngf), nn.ReflectionPad2d(3),
                                             nn.Conv2d(ngf, 3 * (n_masks - 1), 7), nn.Tanh())
        self.attention_decoder = nn.Sequential(*up_path(ngf), nn.Conv2d(ngf, n_masks, 1))

    def forward(self, x):
        features = self.encoder(x)
        content = self.content_decoder(features).unflatten(1, (self.n_masks - 1, 3))
        attention = torch.softmax(self.attention_decoder(features), dim=1)
        return compose(content, attention, x), attention, content


class GeneratorI(nn.Module):
    """Scheme I: one network, last conv7 -> 4 channels: content C = tanh(3 channels), attention
    A = sigmoid(1 channel); G(x) = C * A + x * (1 - A). Returns (output, [A, 1 - A], C) in the
    shapes of Scheme II (n = 2)."""

    def __init__(self, ngf=64, n_res=9):
        super().__init__()
        self.model = nn.Sequential(encoder(ngf, n_res), *up_path(ngf), nn.ReflectionPad2d(3), nn.Conv2d(ngf, 4, 7))

    def forward(self, x):
        out = self.model(x)
        content = torch.tanh(out[:, :3]).unsqueeze(1)
        foreground = torch.sigmoid(out[:, 3:])
        attention = torch.cat([foreground, 1 - foreground], dim=1)
        return compose(content, attention, x), attention, content


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


def check_args(args):
    """Exit 2 on an image size the networks cannot take."""
    if args.img_size % 4 or args.img_size < 32:
        raise common.UserError(f"--img_size {args.img_size} does not work: the generator halves the image twice and "
                               f"doubles it back (a multiple of 4), and the 70x70 PatchGAN needs at least 32 px.")
    if args.scheme == "II" and args.n_masks < 2:
        raise common.UserError(f"--n_masks {args.n_masks}: Scheme II needs at least one foreground and the "
                               f"background mask.")


def build_networks(args):
    """Two generators and the two PatchGAN discriminators (Scheme I adds two attention-guided ones)."""
    make_gen = (lambda: GeneratorII(args.ngf, args.n_res, args.n_masks)) if args.scheme == "II" else \
        (lambda: GeneratorI(args.ngf, args.n_res))
    nets = {"gen_a2b": make_gen(), "gen_b2a": make_gen(),
            "disc_a": PatchGAN(3, args.ndf), "disc_b": PatchGAN(3, args.ndf)}
    if args.scheme == "I":  # attention-guided discriminators: 1 attention channel + RGB (deviation 1)
        nets["disc_att_a"], nets["disc_att_b"] = PatchGAN(4, args.ndf), PatchGAN(4, args.ndf)
    for net in nets.values():
        common.init_normal(net)  # the official init_type normal, gain 0.02
    if args.bg_init:
        for gen in (nets["gen_a2b"], nets["gen_b2a"]):
            start_with_background(gen, args.bg_init)
    return nets


def start_with_background(gen, p):
    """Set the attention head's biases so that the background mask starts at p everywhere (the
    weights are N(0, 0.02), so the logits are about the biases): the output starts close to the
    input (deviation 5)."""
    last = gen.attention_decoder[-1] if isinstance(gen, GeneratorII) else gen.model[-1]
    with torch.no_grad():
        if isinstance(gen, GeneratorII):
            # softmax: background logit b, the others 0 -> p = e^b / (e^b + n - 1)
            last.bias[-1] = math.log(p * (gen.n_masks - 1) / (1 - p))
        else:
            last.bias[3] = math.log((1 - p) / p)  # sigmoid foreground 1 - p


# =============================================================================================
# Losses (LSGAN is common.lsgan: mean (x - target)^2, the official gan_mode lsgan)
# =============================================================================================


def total_variation(mask):
    """sum_{h,w} |A_{h+1,w} - A_{h,w}| + |A_{h,w+1} - A_{h,w}| per image, mean over images."""
    vertical = (mask[:, :, 1:] - mask[:, :, :-1]).abs().sum((1, 2, 3))
    horizontal = (mask[..., 1:] - mask[..., :-1]).abs().sum((1, 2, 3))
    return (vertical + horizontal).mean()


class ImagePool:
    """CycleGAN's history of generated images, which the discriminators see instead of the newest
    fakes half of the time once it is full (the new one is stored in place of the returned one).
    Items are tuples of tensors: (image,), or (image, mask) for Scheme I's attention-guided Ds."""

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
# The training step: G update, then D update on pooled fakes (the official order)
# =============================================================================================


def train_step(args, nets, opt_g, opt_d, pools, real_a, real_b, dist_):
    """One iteration on a batch of each domain; returns the detached losses."""
    gen_a2b, gen_b2a = nets["gen_a2b"], nets["gen_b2a"]
    gens, discs = [gen_a2b, gen_b2a], [nets[k] for k in nets if k.startswith("disc")]
    scheme_one = args.scheme == "I"
    n = real_a.shape[0]

    # ---------------- Generator update ----------------
    for d in discs:
        d.requires_grad_(False)
    with common.autocast(args.amp, real_a.device):
        # one call per generator: translation and identity mapping (deviation 2)
        out_a2b, att_a2b, _ = gen_a2b(torch.cat([real_a, real_b]))
        out_b2a, att_b2a, _ = gen_b2a(torch.cat([real_b, real_a]))
        fake_b = out_a2b[:n]
        idt_b = out_a2b[n:]
        fake_a = out_b2a[:n]
        idt_a = out_b2a[n:]
        rec_a, _, _ = gen_b2a(fake_b)
        rec_b, _, _ = gen_a2b(fake_a)
        # L_GAN(G, D_Y) (adversarial loss, LSGAN form): E_x[(D_Y(G(x)) - 1)^2], and the same for F, D_X
        g_adv = common.lsgan(nets["disc_b"](fake_b), 1.0) + common.lsgan(nets["disc_a"](fake_a), 1.0)
        # L_cycle (cycle-consistency loss): E_x |F(G(x)) - x|_1 + E_y |G(F(y)) - y|_1
        g_cycle = F.l1_loss(rec_a, real_a) + F.l1_loss(rec_b, real_b)
        # L_id (identity-preserving loss): E_y |G(y) - y|_1 + E_x |F(x) - x|_1, weighted lambda_identity * lambda_cycle
        g_identity = F.l1_loss(idt_b, real_b) + F.l1_loss(idt_a, real_a)
        g_att_adv = g_tv = torch.zeros((), device=real_a.device)
        if scheme_one:
            mask_a2b, mask_b2a = att_a2b[:n, :1], att_b2a[:n, :1]
            # L_AGAN(G, D_YA) (Scheme I): E_x[(D_YA([A_y, G(x)]) - 1)^2], and the same for F, D_XA
            g_att_adv = (common.lsgan(nets["disc_att_b"](torch.cat([mask_a2b, fake_b], 1)), 1.0)
                         + common.lsgan(nets["disc_att_a"](torch.cat([mask_b2a, fake_a], 1)), 1.0))
            # L_tv (Scheme I): sum |A_{h+1,w} - A_{h,w}| + |A_{h,w+1} - A_{h,w}| over both generators' masks
            g_tv = total_variation(mask_a2b) + total_variation(mask_b2a)
        # L = L_GAN + lambda_cycle L_cycle + lambda_id L_id (+ L_AGAN + lambda_tv L_tv in Scheme I) (full objective)
        g_loss = (g_adv + g_att_adv + args.lambda_cycle * g_cycle
                  + args.lambda_identity * args.lambda_cycle * g_identity + args.lambda_tv * g_tv)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    dist_.average_gradients(gens)
    opt_g.step()

    # ---------------- Discriminator update (pooled, detached fakes) ----------------
    for d in discs:
        d.requires_grad_(True)
    with common.autocast(args.amp, real_a.device):
        d_loss = 0.0
        pairs_by_domain = (("a", real_a, fake_a, att_b2a[:n, :1]), ("b", real_b, fake_b, att_a2b[:n, :1]))
        for domain, real, fake, mask in pairs_by_domain:
            # the pool keeps (fake, its attention) pairs for Scheme I's attention-guided D
            old_fake, *old_mask = pools[domain].query(fake.detach(), *([mask.detach()] if scheme_one else []))
            logit = nets[f"disc_{domain}"](torch.cat([real, old_fake]))
            # L_D = 0.5 * (E_y[(D_Y(y) - 1)^2] + E_x[D_Y(G(x))^2]) (LSGAN; CycleGAN halves the D objective)
            d_loss = d_loss + 0.5 * (common.lsgan(logit[:n], 1.0) + common.lsgan(logit[n:], 0.0))
            if scheme_one:
                # attention-guided D (Scheme I): real pair [A_y, y] vs fake pair [A_y, G(x)], same mask A_y
                pairs = torch.cat([torch.cat([mask.detach(), real], 1), torch.cat([old_mask[0], old_fake], 1)])
                logit = nets[f"disc_att_{domain}"](pairs)
                d_loss = d_loss + 0.5 * (common.lsgan(logit[:n], 1.0) + common.lsgan(logit[n:], 0.0))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    dist_.average_gradients(discs)
    opt_d.step()
    losses = {"d_loss": d_loss, "g_adv": g_adv + g_att_adv, "g_cycle": g_cycle, "g_identity": g_identity,
              "g_tv": g_tv, "g_loss": g_loss}
    return {k: v.detach() for k, v in losses.items()}


# =============================================================================================
# The training loop
# =============================================================================================


def train(args, dist_, device, nets, train_a, train_b):
    """--phase train (and bench): optimizers, image pools, the data streams, resume, then the loop."""
    gens = [nets["gen_a2b"], nets["gen_b2a"]]
    discs = [nets[k] for k in nets if k.startswith("disc")]
    opt_g = common.adam([p for g in gens for p in g.parameters()], args.lr, (0.5, 0.999), device)
    opt_d = common.adam([p for d in discs for p in d.parameters()], args.lr, (0.5, 0.999), device)
    optimizers = {"opt_g": opt_g, "opt_d": opt_d}
    pools = {d: ImagePool(args.pool_size, seed=args.seed + i) for i, d in enumerate("ab")}
    if args.iters is None:  # CycleGAN's epoch: a pass over the larger domain, all processes together
        epochs, n_images = args.n_epochs + args.n_epochs_decay, max(len(train_a), len(train_b))
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

    if args.phase == "bench":  # it/s, images/s and peak memory of the training step, as one JSON line
        bench = common.Bench(device, args.img_size, args.batch_size, args.amp, args.compile)
        for _ in bench.steps():
            losses = train_step(args, nets, opt_g, opt_d, pools, next(batches_a), next(batches_b), dist_)
        bench.report(losses)
        return

    sample_a = torch.stack([train_a[i]["image"] for i in range(4)]).to(device)
    sample_b = torch.stack([train_b[i]["image"] for i in range(4)]).to(device)
    decay_start = args.iters * args.n_epochs / max(1, args.n_epochs + args.n_epochs_decay)
    last_step = min(args.iters, args.stop_at or args.iters)
    with common.RunLog(args.out, args.ckpt, last_step, args.log_every, dist_, start_step,
                        extra.get("elapsed", 0.0)) as log:  # log.csv, progress bar, Ctrl-C and SIGTERM
        for step in range(start_step + 1, last_step + 1):
            lr = common.linear_decay(step, args.lr, args.iters, decay_start)
            common.set_lr([opt_g, opt_d], lr)
            losses = train_step(args, nets, opt_g, opt_d, pools, next(batches_a), next(batches_b), dist_)
            log.add(losses)
            save = step == last_step or (args.save_every and step % args.save_every == 0)
            if step % args.log_every == 0 or save:
                log.write(step, lr)  # a NaN/Inf loss raises Diverged here, before anything is saved
            if dist_.main and args.sample_every and step % args.sample_every == 0:
                sample_grid(nets, os.path.join(args.out, "samples", f"step_{step:07d}.png"), sample_a, sample_b)
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
    """(output, foreground attention = 1 - background mask) for a batch in eval mode."""
    out, attention, _ = nets[f"gen_{direction}"](x)
    return out.float(), 1 - attention[:, -1:].float()


@torch.no_grad()
def sample_grid(nets, path, real_a, real_b):
    """Per row: input, output, foreground attention over the input, every attention mask (the last is
    the background's; black 0, white 1), every content mask; A->B rows first, then B->A rows."""
    for net in nets.values():
        net.eval()
    rows = []
    for real, direction in ((real_a, "a2b"), (real_b, "b2a")):
        out, attention, content = nets[f"gen_{direction}"](real)
        rows.append([real, out, common.heat_overlay(1 - attention[:, -1:], real)]
                    + [common.grey(attention[:, i:i + 1]) for i in range(attention.shape[1])]
                    + [content[:, i] for i in range(content.shape[1])])
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
    """The command line -> the run's flags: a preset or the checkpoint's flags filled in, then checked."""
    parser = argparse.ArgumentParser(
        description="AttentionGAN (Tang et al., TNNLS 2021): attention-guided unpaired image-to-image translation.",
        formatter_class=common.HelpFormatter)
    groups = common.add_common_flags(parser, SCRIPT)
    add = groups["paper"].add_argument
    add_phase = groups["phases"].add_argument
    parser.set_defaults(lr=2e-4)
    add("--scheme", default="II", choices=["I", "II"],
        help="II: separate content/attention decoders, n masks (official code); I: one mask, attention-guided D, "
             "TV loss")
    add("--n_masks", type=int, default=10, help="Scheme II: attention masks n (n-1 content masks + the background)")
    add("--ngf", type=int, default=64, help="generator base channels")
    add("--ndf", type=int, default=64, help="discriminator base channels")
    add("--n_res", type=int, default=9, help="residual blocks in the generator")
    add("--lambda_cycle", type=float, default=10.0, help="cycle-consistency weight, per direction")
    add("--lambda_identity", type=float, default=0.5, help="identity weight, relative to --lambda_cycle")
    add("--lambda_tv", type=float, default=1e-6, help="Scheme I: total-variation weight on the attention masks")
    add("--bg_init", type=float, default=0.0,
        help="start the background attention at this value (0: the official init, 1/n_masks; the toy preset uses 0.5)")
    add("--pool_size", type=int, default=50, help="generated images kept for the D update (0: none)")
    add("--n_epochs", type=int, default=100, help="epochs at the initial learning rate")
    add("--n_epochs_decay", type=int, default=100, help="epochs of linear decay to 0")
    add("--preset", default="paper", choices=["paper", "released"],
        help="real data: 'released' trains like the released models (60 epochs, batch 4, constant lr)")
    add_phase("--direction", default="both", choices=["both", "a2b", "b2a"],
              help="test phase: which translations to write")
    preset = argparse.ArgumentParser(add_help=False)  # --preset alone, read first: it picks the real-data preset
    preset.add_argument("--preset", default="paper")
    released = preset.parse_known_args(argv)[0].preset == "released"
    real_preset = {"iters": None, **(RELEASED_PRESET if released else {})}
    args = common.parse_args(parser, argv, SCRIPT, {"toy": TOY_PRESET, "real": real_preset}, ARCH_FLAGS,
                             positive=("ngf", "ndf"))
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
