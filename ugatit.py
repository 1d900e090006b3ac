"""U-GAT-IT: Unsupervised Generative Attentional Networks with Adaptive Layer-Instance Normalization
for Image-to-Image Translation. Junho Kim, Minjae Kim, Hyeonwoo Kang, Kwanghee Lee. ICLR 2020.
Paper: https://arxiv.org/abs/1907.10830   Official PyTorch code: https://github.com/znxlwm/UGATIT-pytorch

Two generators (A->B, B->A) whose encoder features are re-weighted by a CAM auxiliary classifier
(attention: where do the domains differ?) and decoded with AdaLIN residual blocks whose gamma and
beta come from an MLP; four discriminators (global and local per domain), each with its own CAM.
LSGAN + CAM + cycle + identity losses. Phases: train, test (--input for your own images), eval
(toy metrics or KID/FID), bench. Ablations: --no_cam, --no_gcam, --no_dcam, --norm.

The file reads top to bottom: networks, losses (in the training step, each under its formula),
the training step, the training loop, sampling and test, main().

Deviations from the official PyTorch code (each keeps the paper's math unless it says otherwise):
 1. Weights start from N(0, 0.02) as the paper says; the official PyTorch code keeps PyTorch's
    default init (--init default gives that).
 2. Each training step runs every generator forward once: the translations are detached for the D
    update and reused for the G update (the official step translates twice and back-propagates the
    D loss through both generators). Same math, about a quarter less work.
 3. Networks called twice on equal-shaped inputs are called once on the concatenated batch
    (translation + identity through each generator; real + fake through each D). Every layer
    normalises per image, so the outputs are the same; the one difference is that a D's spectral
    norm makes one power iteration per D update instead of one per call (the official D sees the
    real and the fake batch under slightly different weight normalisations).
 4. D's CAM re-weights its feature maps with the spectral-normalised FC weight (the official code
    multiplies by the raw `weight_orig`, a tensor the classifier never uses).
 5. Spectral norm is torch.nn.utils.parametrizations.spectral_norm; the official code uses the
    legacy torch.nn.utils.spectral_norm. Both make one power iteration per forward in training
    mode, but the parametrization starts with 15 iterations when it is created (legacy: random u
    and v) and updates u before v (legacy: v, then u).
 6. --n_dis sets the discriminator depth (global n_dis+1 layers, local n_dis-1); the official code
    ignores the flag and hard-codes 7 and 5, so its global D cannot take images below 96 px.
 7. Sampling and testing run under torch.no_grad() in eval mode; D weights need no gradient in the
    G update.
 8. The ablations are our reading of the paper (its code for them was not released): --no_gcam
    removes G's CAM (no re-weighting, no CAM loss); --no_dcam removes D's CAM (no re-weighting, no
    CAM logit); --norm replaces the decoder's AdaLIN/ILN by AdaIN/IN (adain), IN, LN or GN with
    learned affine parameters (in, ln, gn; those variants have no gamma/beta MLP).
 9. --tf_release builds the generator of the authors' TensorFlow code (taki0112/UGATIT), whose
    selfie2anime weights are the only trained U-GAT-IT released (tools/official.py converts them):
    convolutions with biases, affine instance norms in the encoder, one CAM weight and bias shared by
    the GAP and GMP logits (the maps re-weighted by weight + bias), an MLP with biases, and biased
    variances in AdaLIN and ILN. Its AdaLIN rho smoothing (rho - 0.1, clipped) and the NHWC order of
    the full MLP's input are exact re-parametrisations, done by the converter.
"""
import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

import common

SCRIPT = "ugatit"
ARCH_FLAGS = ("img_size", "light", "ch", "n_res", "n_dis", "no_cam", "no_gcam", "no_dcam", "norm", "tf_release")
TOY_PRESET = dict(img_size=64, light=True, ch=16, n_res=4, n_dis=4, iters=2500, lr=2e-4, sample_every=250,
                  save_every=500, log_every=50, workers=1)

# =============================================================================================
# Networks
# =============================================================================================


def layer_instance_norm(x, rho, gamma, beta, eps, unbiased=True):
    """gamma * (rho * a_I + (1 - rho) * a_L) + beta (paper Sec. 2.1.1) with the official code's
    unbiased variances (the TF release's biased ones: unbiased=False) and eps inside the square root.
    a_I = (x - mu_I) / sqrt(var_I + eps) per channel, a_L = (x - mu_L) / sqrt(var_L + eps) per image.
    The layer statistics follow from the per-channel ones, so one reduction and one multiply-add pass
    over x suffice."""
    n_in = x.shape[2] * x.shape[3]
    var_in, mu_in = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    mu_ln = mu_in.mean(dim=1, keepdim=True)
    var_ln = (var_in + mu_in ** 2).mean(dim=1, keepdim=True) - mu_ln ** 2
    n_ln = n_in * x.shape[1]
    inv_in = torch.rsqrt(var_in * (n_in / (n_in - 1) if unbiased else 1.0) + eps)
    inv_ln = torch.rsqrt(var_ln * (n_ln / (n_ln - 1) if unbiased else 1.0) + eps)
    scale = gamma * (rho * inv_in + (1 - rho) * inv_ln)
    shift = beta - gamma * (rho * inv_in * mu_in + (1 - rho) * inv_ln * mu_ln)
    return x * scale + shift


class AdaILN(nn.Module):
    """AdaLIN (paper Sec. 2.1.1): gamma * (rho * a_I + (1 - rho) * a_L) + beta, gamma and beta from the
    MLP, rho learned (init 0.9, clipped to [0, 1] after each update). `mix=False` is AdaIN (rho = 1)."""

    def __init__(self, ch, mix=True, eps=1e-5, unbiased=True):
        super().__init__()
        self.mix, self.eps = mix, eps
        self.unbiased = unbiased
        if mix:
            self.rho = nn.Parameter(torch.full((1, ch, 1, 1), 0.9))

    def forward(self, x, gamma, beta):
        rho = self.rho if self.mix else 1.0
        gamma, beta = gamma[:, :, None, None], beta[:, :, None, None]
        return layer_instance_norm(x, rho, gamma, beta, self.eps, self.unbiased)


class ILN(nn.Module):
    """Layer-Instance Norm of the up-sampling blocks: learned rho (init 0), gamma (1), beta (0)."""

    def __init__(self, ch, eps=1e-5, unbiased=True):
        super().__init__()
        self.eps = eps
        self.unbiased = unbiased
        self.rho = nn.Parameter(torch.zeros(1, ch, 1, 1))
        self.gamma = nn.Parameter(torch.ones(1, ch, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, ch, 1, 1))

    def forward(self, x):
        return layer_instance_norm(x, self.rho, self.gamma, self.beta, self.eps, self.unbiased)


def decoder_norms(kind, ch, unbiased=True):
    """(residual-block norm, up-sampling norm) for --norm."""
    if kind == "adalin":
        return AdaILN(ch, unbiased=unbiased), ILN(ch, unbiased=unbiased)
    if kind == "adain":
        return AdaILN(ch, mix=False), nn.InstanceNorm2d(ch, affine=True)
    groups = {"in": None, "ln": 1, "gn": min(32, ch)}[kind]
    make = (lambda c: nn.InstanceNorm2d(c, affine=True)) if groups is None else (lambda c: nn.GroupNorm(groups, c))
    return make(ch), make(ch)


class ResidualBlock(nn.Module):
    """The encoder's residual block: x + [reflect-pad, conv3, IN, ReLU, reflect-pad, conv3, IN](x), no conv bias
    (the TF release: conv biases, affine IN)."""

    def __init__(self, dim, tf=False):
        super().__init__()
        conv = lambda: nn.Conv2d(dim, dim, 3, bias=tf)  # noqa: E731
        self.block = nn.Sequential(nn.ReflectionPad2d(1), conv(), nn.InstanceNorm2d(dim, affine=tf), nn.ReLU(True),
                                   nn.ReflectionPad2d(1), conv(), nn.InstanceNorm2d(dim, affine=tf))

    def forward(self, x):
        return x + self.block(x)


class AdaptiveResidualBlock(nn.Module):
    """Decoder residual block: x + norm(conv3(ReLU(norm(conv3(x))))), norms fed by the MLP's gamma, beta."""

    def __init__(self, dim, norm, tf=False):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv1, self.conv2 = nn.Conv2d(dim, dim, 3, bias=tf), nn.Conv2d(dim, dim, 3, bias=tf)
        self.norm1, self.norm2 = decoder_norms(norm, dim, not tf)[0], decoder_norms(norm, dim, not tf)[0]

    @staticmethod
    def _norm(layer, x, gamma, beta):
        return layer(x, gamma, beta) if isinstance(layer, AdaILN) else layer(x)

    def forward(self, x, gamma, beta):
        out = F.relu(self._norm(self.norm1, self.conv1(self.pad(x)), gamma, beta))
        return x + self._norm(self.norm2, self.conv2(self.pad(out)), gamma, beta)


class Generator(nn.Module):
    """Encoder -> CAM attention -> AdaLIN decoder. Returns (image, cam_logit, heatmap). `tf`: the variant of the
    authors' TensorFlow release (deviation 9)."""

    def __init__(self, ch=64, n_res=4, img_size=256, light=False, cam=True, norm="adalin", tf=False):
        super().__init__()
        self.light = light
        self.cam = cam
        self.adaptive = norm in ("adalin", "adain")
        self.tf = tf
        enc = [nn.ReflectionPad2d(3), nn.Conv2d(3, ch, 7, bias=tf), nn.InstanceNorm2d(ch, affine=tf), nn.ReLU(True)]
        for mult in (1, 2):  # two stride-2 convs: ch -> 2ch -> 4ch
            enc += [nn.ReflectionPad2d(1), nn.Conv2d(ch * mult, ch * mult * 2, 3, 2, bias=tf),
                    nn.InstanceNorm2d(ch * mult * 2, affine=tf), nn.ReLU(True)]
        dim = ch * 4
        enc += [ResidualBlock(dim, tf) for _ in range(n_res)]
        self.encoder = nn.Sequential(*enc)
        if cam:
            # auxiliary classifier eta_s: bias-free logits on the global average and max pooled features (the TF
            # release: one weight and one bias for both)
            self.gap_fc = nn.Linear(dim, 1, bias=tf)
            if not tf:
                self.gmp_fc = nn.Linear(dim, 1, bias=False)
            self.conv1x1 = nn.Conv2d(dim * 2, dim, 1)
        if self.adaptive:
            mlp_in = dim if light else (img_size // 4) ** 2 * dim
            self.mlp = nn.Sequential(nn.Linear(mlp_in, dim, bias=tf), nn.ReLU(True),
                                     nn.Linear(dim, dim, bias=tf), nn.ReLU(True))
            self.gamma, self.beta = nn.Linear(dim, dim, bias=tf), nn.Linear(dim, dim, bias=tf)
        self.res_blocks = nn.ModuleList([AdaptiveResidualBlock(dim, norm, tf) for _ in range(n_res)])
        up = []
        for mult in (4, 2):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                   nn.Conv2d(ch * mult, ch * mult // 2, 3, bias=tf), decoder_norms(norm, ch * mult // 2, not tf)[1],
                   nn.ReLU(True)]
        up += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 3, 7, bias=tf), nn.Tanh()]
        self.upsample = nn.Sequential(*up)

    def forward(self, x):
        x = self.encoder(x)
        cam_logit = None
        if self.cam:
            gmp_fc = self.gap_fc if self.tf else self.gmp_fc
            gap_logit = self.gap_fc(x.mean(dim=(2, 3)))
            gmp_logit = gmp_fc(x.amax(dim=(2, 3)))
            cam_logit = torch.cat([gap_logit, gmp_logit], dim=1)
            # attention feature maps a_s(x) = w_s * E_s(x): channels re-weighted by the classifier's weights
            # (the TF release re-weights by weight + bias)
            w_gap = self.gap_fc.weight + self.gap_fc.bias if self.tf else self.gap_fc.weight
            w_gmp = w_gap if self.tf else gmp_fc.weight
            gap = x * w_gap[:, :, None, None]
            gmp = x * w_gmp[:, :, None, None]
            x = F.relu(self.conv1x1(torch.cat([gap, gmp], dim=1)))
        heatmap = x.sum(dim=1, keepdim=True)
        gamma = beta = None
        if self.adaptive:
            h = self.mlp(x.mean(dim=(2, 3)) if self.light else x.flatten(1))
            gamma, beta = self.gamma(h), self.beta(h)
        for block in self.res_blocks:
            x = block(x, gamma, beta)
        return self.upsample(x), cam_logit, heatmap


class Discriminator(nn.Module):
    """Spectral-norm PatchGAN with a CAM: n_layers 7 is the global D (286 px receptive field), 5 the
    local one (70 px). Returns (patch logits, cam_logit, heatmap)."""

    def __init__(self, ch=64, n_layers=7, cam=True, init="normal"):
        super().__init__()
        self.cam = cam
        convs = [nn.Conv2d(3, ch, 4, 2)]
        convs += [nn.Conv2d(ch * 2 ** (i - 1), ch * 2 ** i, 4, 2) for i in range(1, n_layers - 2)]
        convs += [nn.Conv2d(ch * 2 ** (n_layers - 3), ch * 2 ** (n_layers - 2), 4, 1)]
        dim = ch * 2 ** (n_layers - 2)
        sn_layers = list(convs)
        if cam:
            self.gap_fc, self.gmp_fc = nn.Linear(dim, 1, bias=False), nn.Linear(dim, 1, bias=False)
            self.conv1x1 = nn.Conv2d(dim * 2, dim, 1)
            sn_layers += [self.gap_fc, self.gmp_fc]
        self.classifier = nn.Conv2d(dim, 1, 4, bias=False)
        sn_layers.append(self.classifier)
        self.trunk = nn.Sequential(*[m for conv in convs
                                     for m in (nn.ReflectionPad2d(1), conv, nn.LeakyReLU(0.2, True))])
        self.pad = nn.ReflectionPad2d(1)
        if init == "normal":
            common.init_normal(self)
        for layer in sn_layers:  # after the init, so the power iteration starts from the final weights
            spectral_norm(layer)

    def forward(self, x):
        x = self.trunk(x)
        cam_logit = None
        if self.cam:
            w_gap, w_gmp = self.gap_fc.weight, self.gmp_fc.weight  # spectral-normalised (deviation 4)
            cam_logit = torch.cat([F.linear(x.mean(dim=(2, 3)), w_gap), F.linear(x.amax(dim=(2, 3)), w_gmp)], 1)
            x = torch.cat([x * w_gap[:, :, None, None], x * w_gmp[:, :, None, None]], dim=1)
            x = F.leaky_relu(self.conv1x1(x), 0.2)
        heatmap = x.sum(dim=1, keepdim=True)
        return self.classifier(self.pad(x)), cam_logit, heatmap


def check_args(args):
    """Exit 2 on an image size the networks cannot take."""
    def d_out(n_layers):
        s = args.img_size
        for _ in range(n_layers - 2):
            s //= 2
        return s - 1  # size after the stride-1 trunk conv; the classifier's reflect pad needs >= 2
    global_layers, local_layers = args.n_dis + 1, args.n_dis - 1
    if args.n_dis < 4:
        raise common.UserError(f"--n_dis {args.n_dis} is too shallow: the local discriminator has n_dis-1 layers "
                               f"and needs 3; use 4 or more (paper: 6).")
    if args.img_size % 4 or args.img_size < 16:
        raise common.UserError(f"--img_size {args.img_size} does not work: the generator halves the image twice "
                               f"and doubles it back, so it must be a multiple of 4 and at least 16.")
    if d_out(global_layers) < 2:
        smallest = 3 * 2 ** (global_layers - 2)
        raise common.UserError(f"--img_size {args.img_size} is too small for --n_dis {args.n_dis}: the global "
                               f"discriminator ({global_layers} layers) needs at least {smallest} px. Use a larger "
                               f"image or a smaller --n_dis (the toy preset uses 64 px with --n_dis 4).")
    assert d_out(local_layers) >= 2


def build_networks(args):
    """The two generators and the four discriminators (global and local per domain)."""
    g_cam = not (args.no_cam or args.no_gcam)
    nets = {name: Generator(args.ch, args.n_res, args.img_size, args.light, g_cam, args.norm, args.tf_release)
            for name in ("gen_a2b", "gen_b2a")}
    d_cam = not (args.no_cam or args.no_dcam)
    for domain in "ab":
        nets[f"disc_global_{domain}"] = Discriminator(args.ch, args.n_dis + 1, d_cam, args.init)
        nets[f"disc_local_{domain}"] = Discriminator(args.ch, args.n_dis - 1, d_cam, args.init)
    if args.init == "normal":
        common.init_normal(nets["gen_a2b"])
        common.init_normal(nets["gen_b2a"])
    return nets


def clip_rho(gen):
    """rho <- clip_[0,1](rho) after every update (paper Sec. 2.1.1)."""
    for m in gen.modules():
        if isinstance(getattr(m, "rho", None), nn.Parameter):
            m.rho.data.clamp_(0, 1)


# =============================================================================================
# Losses (LSGAN is common.lsgan: mean (x - target)^2)
# =============================================================================================


def bce(logit, target):
    """Binary cross-entropy of logits against a constant target 1 or 0 (the generator CAM loss)."""
    return F.binary_cross_entropy_with_logits(logit, torch.full_like(logit, target))


# =============================================================================================
# The training step: D update, then G update on the same batch (the official order)
# =============================================================================================


def train_step(args, nets, opt_g, opt_d, real_a, real_b, dist_):
    """One iteration on a batch of each domain; returns the detached losses."""
    gen_a2b, gen_b2a = nets["gen_a2b"], nets["gen_b2a"]
    gens, discs = [gen_a2b, gen_b2a], [nets[k] for k in nets if k.startswith("disc")]
    disc_pairs_a = [nets["disc_global_a"], nets["disc_local_a"]]  # judge domain A: real A vs B->A
    disc_pairs_b = [nets["disc_global_b"], nets["disc_local_b"]]  # judge domain B: real B vs A->B
    use_gcam, use_dcam = not (args.no_cam or args.no_gcam), not (args.no_cam or args.no_dcam)
    n = real_a.shape[0]
    with common.autocast(args.amp, real_a.device):
        # One forward per generator: its translation and its identity mapping (deviations 2, 3).
        out_a2b, cam_a2b, _ = gen_a2b(torch.cat([real_a, real_b]))
        out_b2a, cam_b2a, _ = gen_b2a(torch.cat([real_b, real_a]))
    fake_a2b, fake_b2b = out_a2b[:n], out_a2b[n:]
    fake_b2a, fake_a2a = out_b2a[:n], out_b2a[n:]

    # ---------------- Discriminator update ----------------
    for d in discs:
        d.requires_grad_(True)
    with common.autocast(args.amp, real_a.device):
        d_adv, d_cam = 0.0, 0.0
        for disc_list, real, fake in ((disc_pairs_a, real_a, fake_b2a), (disc_pairs_b, real_b, fake_a2b)):
            for disc in disc_list:
                logit, cam_logit, _ = disc(torch.cat([real, fake.detach()]))
                # L_gan^{D_t} (Sec. 2.2, LSGAN): E_{x~X_t}[(D_t(x) - 1)^2] + E_{x~X_s}[D_t(G_{s->t}(x))^2]
                d_adv = d_adv + common.lsgan(logit[:n], 1.0) + common.lsgan(logit[n:], 0.0)
                if use_dcam:
                    # L_cam^{D_t} (Sec. 2.2): the same LSGAN on D's auxiliary classifier eta_{D_t}
                    d_cam = d_cam + common.lsgan(cam_logit[:n], 1.0) + common.lsgan(cam_logit[n:], 0.0)
        d_loss = args.adv_weight * (d_adv + d_cam)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    dist_.average_gradients(discs)
    opt_d.step()

    # ---------------- Generator update ----------------
    for d in discs:
        d.requires_grad_(False)
    with common.autocast(args.amp, real_a.device):
        rec_a, _, _ = gen_b2a(fake_a2b)
        rec_b, _, _ = gen_a2b(fake_b2a)
        g_adv, g_cam_adv = 0.0, 0.0
        for disc_list, fake in ((disc_pairs_a, fake_b2a), (disc_pairs_b, fake_a2b)):
            for disc in disc_list:
                logit, cam_logit, _ = disc(fake)
                # L_gan^{s->t} (Sec. 2.2, LSGAN, G side): E_{x~X_s}[(D_t(G_{s->t}(x)) - 1)^2]
                g_adv = g_adv + common.lsgan(logit, 1.0)
                if use_dcam:
                    g_cam_adv = g_cam_adv + common.lsgan(cam_logit, 1.0)
        # L_cycle^{s->t} (Sec. 2.2): E_{x~X_s} |x - G_{t->s}(G_{s->t}(x))|_1
        g_cycle = F.l1_loss(rec_a, real_a) + F.l1_loss(rec_b, real_b)
        # L_identity^{s->t} (Sec. 2.2): E_{x~X_t} |x - G_{s->t}(x)|_1
        g_identity = F.l1_loss(fake_a2a, real_a) + F.l1_loss(fake_b2b, real_b)
        g_cam = torch.zeros((), device=real_a.device)
        if use_gcam:
            # L_cam^{s->t} (Sec. 2.2): -(E_{x~X_s}[log eta_s(x)] + E_{x~X_t}[log(1 - eta_s(x))]);
            # G_{s->t}'s classifier says 1 on its source domain, 0 on target images (identity path)
            g_cam = bce(cam_a2b[:n], 1.0) + bce(cam_a2b[n:], 0.0) + bce(cam_b2a[:n], 1.0) + bce(cam_b2a[n:], 0.0)
        # lambda_1 L_gan + lambda_2 L_cycle + lambda_3 L_identity + lambda_4 L_cam (Sec. 2.2, full objective)
        g_loss = (args.adv_weight * (g_adv + g_cam_adv) + args.cycle_weight * g_cycle
                  + args.identity_weight * g_identity + args.cam_weight * g_cam)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    dist_.average_gradients(gens)
    opt_g.step()
    for gen in gens:
        clip_rho(gen)
    losses = {"d_loss": d_loss, "g_adv": torch.as_tensor(g_adv + g_cam_adv), "g_cycle": g_cycle,
              "g_identity": g_identity, "g_cam": g_cam, "g_loss": g_loss}
    return {k: v.detach() for k, v in losses.items()}


# =============================================================================================
# The training loop
# =============================================================================================


def train(args, dist_, device, nets, train_a, train_b):
    """--phase train (and bench): optimizers, the data streams, resume, then the loop."""
    gens = [nets["gen_a2b"], nets["gen_b2a"]]
    discs = [nets[k] for k in nets if k.startswith("disc")]
    opt_g = common.adam([p for g in gens for p in g.parameters()], args.lr, (0.5, 0.999), device, args.weight_decay)
    opt_d = common.adam([p for d in discs for p in d.parameters()], args.lr, (0.5, 0.999), device, args.weight_decay)
    optimizers = {"opt_g": opt_g, "opt_d": opt_d}
    start_step = 0
    extra = {}
    if args.phase == "train":  # refuses to overwrite a run; writes args.json
        common.prepare_out(args.out, args.ckpt, vars(args), args.resume, dist_.main)
    if args.resume:
        ckpt = common.load_checkpoint(args.ckpt, SCRIPT, nets, optimizers)
        start_step, extra = ckpt["step"], ckpt["extra"]
    dist_.broadcast(nets.values())
    batches_a = common.train_batches(train_a, args.batch_size, args.workers, args.seed, device, dist_, start_step)
    batches_b = common.train_batches(train_b, args.batch_size, args.workers, args.seed + 1, device, dist_, start_step)
    if args.resume:  # after the data streams, which draw their seeds from the global RNG
        common.set_rng_state(ckpt["rng"])

    if args.phase == "bench":  # it/s, images/s and peak memory of the training step, as one JSON line
        bench = common.Bench(device, args.img_size, args.batch_size, args.amp, args.compile)
        for _ in bench.steps():
            losses = train_step(args, nets, opt_g, opt_d, next(batches_a), next(batches_b), dist_)
        bench.report(losses)
        return

    # fixed sample images: the first four training images of each domain
    sample_a = torch.stack([train_a[i]["image"] for i in range(4)]).to(device)
    sample_b = torch.stack([train_b[i]["image"] for i in range(4)]).to(device)
    decay_start = args.iters // 2 if args.decay else args.iters
    last_step = min(args.iters, args.stop_at or args.iters)
    with common.RunLog(args.out, args.ckpt, last_step, args.log_every, dist_, start_step,
                        extra.get("elapsed", 0.0)) as log:  # log.csv, progress bar, Ctrl-C and SIGTERM
        for step in range(start_step + 1, last_step + 1):
            lr = common.linear_decay(step, args.lr, args.iters, decay_start)
            common.set_lr([opt_g, opt_d], lr)
            losses = train_step(args, nets, opt_g, opt_d, next(batches_a), next(batches_b), dist_)
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
                    common.save_checkpoint(args.ckpt, SCRIPT, vars(args), step, nets, optimizers,
                                           {"elapsed": log.seconds()})
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
    """(output, attention heatmap) for a batch in eval mode; direction 'a2b' or 'b2a'."""
    out, _, heatmap = nets[f"gen_{direction}"](x)
    return out.float(), heatmap.float()


@torch.no_grad()
def sample_grid(nets, path, real_a, real_b):
    """Per row: real, heatmap(identity), identity, heatmap(translation), translation,
    heatmap(cycle), cycle; A->B rows first, then B->A rows (the official sample layout)."""
    for net in nets.values():
        net.eval()
    rows = []
    for real, fwd, back in ((real_a, "a2b", "b2a"), (real_b, "b2a", "a2b")):
        same, same_map = translate(nets, real, back)  # the generator into the real image's own domain
        fake, fake_map = translate(nets, real, fwd)
        cyc, cyc_map = translate(nets, fake, back)
        rows.append([real, common.heat_overlay(same_map, real), same, common.heat_overlay(fake_map, real), fake,
                     common.heat_overlay(cyc_map, fake), cyc])
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
            out, heatmap = translate(nets, x, direction)
            common.save_pictures(os.path.join(folder, "input", source), batch["name"], x)
            common.save_pictures(os.path.join(folder, direction), batch["name"], out, heatmap, under=x)
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
        description="U-GAT-IT (Kim et al., ICLR 2020): attention-guided unpaired image-to-image translation.",
        formatter_class=common.HelpFormatter)
    groups = common.add_common_flags(parser, SCRIPT)
    add = groups["paper"].add_argument
    add_phase = groups["phases"].add_argument
    add("--light", action=argparse.BooleanOptionalAction, default=False,
        help="U-GAT-IT-light: the gamma/beta MLP reads globally pooled features (10.6M instead of 279M G parameters)")
    add("--ch", type=int, default=64, help="base channel count of G and D")
    add("--n_res", type=int, default=4, help="residual blocks in the encoder and in the decoder")
    add("--n_dis", type=int, default=6, help="D depth: the global D has n_dis+1 layers, the local one n_dis-1")
    add("--adv_weight", type=float, default=1.0, help="lambda_1, adversarial (LSGAN) weight")
    add("--cycle_weight", type=float, default=10.0, help="lambda_2, cycle-consistency weight")
    add("--identity_weight", type=float, default=10.0, help="lambda_3, identity weight")
    add("--cam_weight", type=float, default=1000.0, help="lambda_4, generator CAM loss weight")
    add("--weight_decay", type=float, default=1e-4, help="Adam weight decay (official code)")
    add("--decay", action=argparse.BooleanOptionalAction, default=True,
        help="decay the learning rate linearly to 0 over the second half of --iters")
    add("--norm", default="adalin", choices=["adalin", "adain", "in", "ln", "gn"],
        help="decoder normalisation (paper's ablation: AdaLIN vs AdaIN, IN, LN, GN)")
    add("--no_cam", action="store_true", help="ablation: no CAM anywhere (G and D)")
    add("--no_gcam", action="store_true", help="ablation: no CAM in the generators")
    add("--no_dcam", action="store_true", help="ablation: no CAM in the discriminators")
    add("--init", default="normal", choices=["normal", "default"],
        help="N(0, 0.02) init (paper) or PyTorch's default (official PyTorch code)")
    add("--tf_release", action="store_true",
        help="the generator of the authors' TensorFlow code, for its released weights (tools/official.py; deviation 9)")
    add_phase("--direction", default="both", choices=["both", "a2b", "b2a"],
              help="test phase: which translations to write")
    args = common.parse_args(parser, argv, SCRIPT, {"toy": TOY_PRESET, "real": {}}, ARCH_FLAGS, positive=("ch",))
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
