"""CAM-consistency loss, from "Not Just Compete, but Collaborate: Local Image-to-Image Translation via
Cooperative Mask Prediction". Daejin Kim, Mohammad Azam Khan, Jaegul Choo. CVPR 2021.
Paper: https://openaccess.thecvf.com/content/CVPR2021/html/
       Kim_Not_Just_Compete_but_Collaborate_Local_Image-to-Image_Translation_via_Cooperative_CVPR_2021_paper.html
Base model: StarGAN (Choi et al., CVPR 2018, https://arxiv.org/abs/1711.09020), official code yunjey/stargan.

StarGAN edits attributes (hair colour, gender, ... or a shirt's colour and sleeves) with one
generator G(x, c) conditioned on the target labels c, trained against a WGAN-GP discriminator with
an auxiliary attribute classifier. The CAM-consistency loss asks D, through Grad-CAM on its
classifier, *where* the changed attributes are, and asks G to leave every other pixel alone:
  G:  mean((1 - sg[M]) |x - G(x, c)|)          preserve what D does not attribute to the change
  D:  mean((1 - M) sg[|x - G(x, c)|])          D's map must cover what G changed (the collaboration)
with M the Grad-CAM map of the changed attributes on the translated image. `--lambda_cam 0` turns
both terms off: the script is then plain StarGAN, the paper's baseline.

Phases: train, test (--input for your own images, --target for the manipulation), eval (toy-attr:
attribute accuracy by the toy judge, preservation outside the changed region, Grad-CAM IoU,
retrieval; real data: KID/FID), bench. The file reads top to bottom: networks, Grad-CAM and the
losses, the training step, the training loop, sampling and test, main().

Deviations from the paper / official StarGAN code:
 1. Grad-CAM is taken on D's feature map after block --cam_layer (default: the deepest one with at
    least 8x8 cells: block 4 at 128 px, block 3 at the 64 px toy size); StarGAN's last map is only
    2x2 at 128 px. The class score is the signed sum of the logits of the changed attributes,
    s = sum_j (c_trg,j - c_org,j) * logit_j (for one-hot groups: the new value's logit minus the old
    one's); M = ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of ds/dA_k, divided by its
    per-image maximum and bilinearly upsampled. It is computed on the translated image G(x, c),
    the image whose attributes D is asked to recognise. |x - y| is averaged over the colour channels.
 2. The loss weights are flags: --lambda_cam (G term, default 10) and --lambda_cam_d (D term,
    default 1); these defaults are ours, not confirmed against the paper. The D term is
    back-propagated through Grad-CAM (create_graph), so it reaches D's weights by second
    derivatives, as WGAN-GP does.
 3. One D update per iteration, G every --n_critic iterations (StarGAN). On G iterations G translates
    once: the translation is detached for the D update and reused for the G update (StarGAN
    translates twice with the same weights); real and fake images go through D in one call.
 4. InstanceNorm keeps no running statistics (StarGAN's track_running_stats=True makes eval-mode
    outputs depend on averaged statistics; parameters are unchanged: 8,430,528 / 44,762,048 for
    5 CelebA attributes at 128 px, as the official code). tools/official.py drops them from StarGAN's
    files: its test never calls .eval(), so it too normalises each image by its own statistics.
 5. Categorical attribute groups (toy-attr, labels.csv) are one-hot blocks with a cross-entropy
    each, as StarGAN does for RaFD; CelebA's attributes are binary with BCE. The CelebA test split
    is 2,000 images (StarGAN's code keeps 1,999 through an off-by-one).
 6. Sampling, test and eval translate under torch.no_grad() in eval mode (Grad-CAM alone takes a
    gradient there); the learning rate decays linearly to 0 over the last --iters_decay iterations
    each iteration (StarGAN steps it every 1,000).
 7. --compile compiles G only: the gradient penalty and the D term differentiate through D twice
    (double backward), which torch.compile does not support.
"""
import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = "camconsistency"
ARCH_FLAGS = ("img_size", "attrs", "conv_dim", "n_res", "d_conv_dim", "d_layers", "cam_layer")
TOY_PRESET = dict(img_size=64, conv_dim=16, n_res=3, d_conv_dim=16, d_layers=5, batch_size=16, iters=3000, lr=2e-4,
                  sample_every=500, save_every=1000, log_every=50, workers=1)

# =============================================================================================
# Networks (StarGAN)
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
    """StarGAN's G on [x, c tiled over the image]: conv7 -> conv_dim, two conv4 stride-2 downsamplings,
    n_res residual blocks, two ConvT4 stride-2 upsamplings (no conv bias, InstanceNorm with affine
    parameters, ReLU), conv7 -> 3, tanh."""

    def __init__(self, c_dim, conv_dim=64, n_res=6):
        super().__init__()
        norm = lambda ch: nn.InstanceNorm2d(ch, affine=True)  # noqa: E731
        layers, ch = [nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False), norm(conv_dim), nn.ReLU(True)], conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), norm(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(n_res)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        self.body = nn.Sequential(*layers)
        self.to_image = nn.Sequential(nn.Conv2d(conv_dim, 3, 7, 1, 3, bias=False), nn.Tanh())

    def forward(self, x, c):
        c = c.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])  # the labels tiled over the image
        return self.to_image(self.body(torch.cat([x, c], dim=1)))


class Discriminator(nn.Module):
    """StarGAN's D: n_layers x [conv4 stride 2, LeakyReLU 0.01], channels doubling from conv_dim, no
    normalisation; out_src conv3 -> a patch of real/fake scores, out_cls a conv over the whole last
    map -> c_dim attribute logits."""

    def __init__(self, img_size=128, conv_dim=64, c_dim=5, n_layers=6):
        super().__init__()
        chans = [3] + [conv_dim * 2 ** i for i in range(n_layers)]
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.01))
                                    for a, b in zip(chans[:-1], chans[1:]))
        self.out_src = nn.Conv2d(chans[-1], 1, 3, 1, 1, bias=False)
        self.out_cls = nn.Conv2d(chans[-1], c_dim, img_size // 2 ** n_layers, bias=False)

    def forward(self, x, feature_layer=None):
        """-> (src, cls), or (src, cls, the feature map after block `feature_layer`) (1-based)."""
        feature = None
        for k, block in enumerate(self.blocks, start=1):
            x = block(x)
            feature = x if k == feature_layer else feature
        src, cls = self.out_src(x), self.out_cls(x).flatten(1)
        return (src, cls) if feature_layer is None else (src, cls, feature)


def default_cam_layer(img_size, d_layers):
    """The deepest D block whose feature map still has at least 8 x 8 cells."""
    return max(1, min(d_layers, (img_size // 8).bit_length() - 1))


def check_args(args):
    """Exit 2 on sizes the networks cannot take."""
    if args.img_size % 2 ** args.d_layers or args.img_size < 2 ** args.d_layers:
        raise common.UserError(f"--img_size {args.img_size} does not work with --d_layers {args.d_layers}: D halves "
                               f"the image {args.d_layers} times, so the size must be a multiple of "
                               f"{2 ** args.d_layers}.")
    if args.cam_layer is None:
        args.cam_layer = default_cam_layer(args.img_size, args.d_layers)
    if not 1 <= args.cam_layer <= args.d_layers:
        raise common.UserError(f"--cam_layer {args.cam_layer}: D has blocks 1 to {args.d_layers}.")


def build_networks(args, attrs):
    """StarGAN's G and D (D with an attribute classifier over the c_dim label columns)."""
    return {"gen": Generator(attrs.c_dim, args.conv_dim, args.n_res),
            "disc": Discriminator(args.img_size, args.d_conv_dim, attrs.c_dim, args.d_layers)}



# =============================================================================================
# Grad-CAM and the losses: CAM-consistency, StarGAN's gradient penalty and classification
# =============================================================================================


def grad_cam(cls, feature, score_weights, create_graph):
    """Grad-CAM of D's classifier (Selvaraju et al. 2017) for the changed attributes.

    s_n = sum_j w_nj cls_nj (w = c_trg - c_org); alpha_nk = mean_ij ds_n/dA_nkij;
    M_n = ReLU(sum_k alpha_nk A_nk) / max_ij(...). Images are independent in D, so one gradient of
    sum_n s_n gives every image's own. With create_graph the map is differentiable in D's weights."""
    score = (cls.float() * score_weights).sum()
    grads, = torch.autograd.grad(score, feature, create_graph=create_graph, retain_graph=True)
    alpha = grads.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * feature.float()).sum(dim=1, keepdim=True))
    return cam / cam.amax(dim=(2, 3), keepdim=True).clamp_min(1e-8)


def upsample(cam, size):
    return F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)


def cam_consistency_g(cam, real, fake):
    """G term: mean((1 - sg[M]) |x - y|), |x - y| averaged over the colour channels; M is a constant."""
    return ((1 - cam.detach()) * (real - fake).abs().float().mean(dim=1, keepdim=True)).mean()


def cam_consistency_d(cam, real, fake):
    """D term: mean((1 - M) sg[|x - y|]); the gradient reaches D through M only."""
    return ((1 - cam) * (real - fake).detach().abs().float().mean(dim=1, keepdim=True)).mean()


def gradient_penalty(disc, real, fake):
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad_x^ D_src(x^)||_2 - 1)^2] at x^ = a real + (1 - a) fake,
    a ~ U(0, 1) per image; differentiable with respect to D (create_graph)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    grad, = torch.autograd.grad(disc(x_hat)[0].float().sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def classification_loss(attrs, logits, labels):
    """StarGAN's domain classification loss, summed over the manipulated groups: a binary attribute's
    BCE-with-logits summed over the attributes and averaged over the images, a categorical group's
    cross-entropy over its block of logits."""
    loss = logits.new_zeros(()).float()
    for g, columns in attrs.slices.items():
        block = logits[:, columns].float()
        if attrs.binary[g]:
            loss = loss + F.binary_cross_entropy_with_logits(block, labels[:, g:g + 1].float(), reduction="sum") \
                / len(block)
        else:
            loss = loss + F.cross_entropy(block, labels[:, g])
    return loss


# =============================================================================================
# The training step: a D update every iteration, a G update every n_critic
# =============================================================================================


def train_step(args, attrs, nets, opt_g, opt_d, real, labels, step, dist_):
    """One iteration on a batch of images and their labels; returns the detached losses (the G terms
    on G iterations only)."""
    gen, disc = nets["gen"], nets["disc"]
    n = real.shape[0]
    # target labels: the batch's labels in a random order (StarGAN)
    target = labels[torch.randperm(n, device=real.device)]
    c_org, c_trg = attrs.vector(labels), attrs.vector(target)
    # Grad-CAM score weights: +1 on the logits of gained attribute values, -1 on lost ones
    score_weights = c_trg - c_org
    update_g = step % args.n_critic == 0
    zero = torch.zeros((), device=real.device)

    # ---------------- Discriminator update ----------------
    with common.autocast(args.amp, real.device):
        with torch.set_grad_enabled(update_g):  # on G iterations the translation is reused below
            fake = gen(real, c_trg)
        src, cls, feature = disc(torch.cat([real, fake.detach()]), feature_layer=args.cam_layer)
        # L_adv^D = E[D_src(G(x, c))] - E[D_src(x)] (StarGAN Eq. 1, WGAN form) ...
        d_adv = src[n:].float().mean() - src[:n].float().mean()
        # ... + lambda_gp E[(||grad D_src(x^)||_2 - 1)^2] (WGAN-GP)
        d_gp = gradient_penalty(disc, real, fake)
        # L_cls^r = E[-log D_cls(c_org | x)] (StarGAN Eq. 2): D classifies real images by their own labels
        d_cls = classification_loss(attrs, cls[:n], labels)
        d_cam = zero
        if args.lambda_cam > 0:
            # L_cam^D = mean((1 - M) * sg[|x - y|]): D's Grad-CAM on y must cover what G changed (D term)
            cam = upsample(grad_cam(cls[n:], feature, score_weights, create_graph=True)[n:], args.img_size)
            d_cam = cam_consistency_d(cam, real, fake)
        d_loss = d_adv + args.lambda_gp * d_gp + args.lambda_cls * d_cls + args.lambda_cam_d * d_cam
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    dist_.average_gradients([disc])
    opt_d.step()
    losses = {"d_adv": d_adv, "d_gp": d_gp, "d_cls": d_cls, "d_cam": d_cam}

    # ---------------- Generator update (every n_critic iterations) ----------------
    if update_g:
        disc.requires_grad_(False)
        with common.autocast(args.amp, real.device):
            rec = gen(fake, c_org)
            src, cls, feature = disc(fake, feature_layer=args.cam_layer)
            # L_adv^G = -E[D_src(G(x, c))] (StarGAN Eq. 1, WGAN-GP, generator side)
            g_adv = -src.float().mean()
            # L_cls^f = E[-log D_cls(c | G(x, c))] (StarGAN Eq. 3): the translation has the target labels
            g_cls = classification_loss(attrs, cls, target)
            # L_rec = E |x - G(G(x, c), c_org)|_1 (StarGAN Eq. 4, cycle reconstruction)
            g_rec = (real - rec).abs().float().mean()
            g_cam = zero
            if args.lambda_cam > 0:
                # L_cam^G = mean((1 - sg[M]) * |x - y|): leave alone what D does not attribute to the change (G term)
                cam = upsample(grad_cam(cls, feature, score_weights, create_graph=False), args.img_size)
                g_cam = cam_consistency_g(cam, real, fake)
            g_loss = g_adv + args.lambda_cls * g_cls + args.lambda_rec * g_rec + args.lambda_cam * g_cam
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        dist_.average_gradients([gen])
        opt_g.step()
        disc.requires_grad_(True)
        losses.update(g_adv=g_adv, g_cls=g_cls, g_rec=g_rec, g_cam=g_cam)
    return {k: v.detach() for k, v in losses.items()}


# =============================================================================================
# The training loop
# =============================================================================================


def train(args, attrs, train_set, dist_, device, nets):
    """--phase train (and bench): optimizers, the data streams, resume, then the loop."""
    opt_g = common.adam(nets["gen"].parameters(), args.lr, (0.5, 0.999), device)
    opt_d = common.adam(nets["disc"].parameters(), args.lr, (0.5, 0.999), device)
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

    if args.phase == "bench":  # it/s, images/s and peak memory of the training step, as one JSON line
        bench = common.Bench(device, args.img_size, args.batch_size, args.amp, args.compile)
        for step in bench.steps():
            losses = train_step(args, attrs, nets, opt_g, opt_d, *next(batches), step, dist_)
        bench.report(losses)
        return

    fixed = [train_set[i] for i in range(8)]
    sample_x = torch.stack([f["image"] for f in fixed]).to(device)
    sample_labels = torch.stack([f["labels"] for f in fixed]).to(device)
    decay_start = args.iters - (args.iters // 2 if args.iters_decay is None else args.iters_decay)
    last_step = min(args.iters, args.stop_at or args.iters)
    with common.RunLog(args.out, args.ckpt, last_step, args.log_every, dist_, start_step,
                        extra.get("elapsed", 0.0)) as log:  # log.csv, progress bar, Ctrl-C and SIGTERM
        for step in range(start_step + 1, last_step + 1):
            lr = common.linear_decay(step, args.lr, args.iters, decay_start)
            common.set_lr([opt_g, opt_d], lr)
            real, labels = next(batches)
            losses = train_step(args, attrs, nets, opt_g, opt_d, real, labels, step, dist_)
            log.add(losses)
            save = step == last_step or (args.save_every and step % args.save_every == 0)
            if step % args.log_every == 0 or save:
                log.write(step, lr)  # a NaN/Inf loss raises Diverged here, before anything is saved
            if dist_.main and args.sample_every and step % args.sample_every == 0:
                path = os.path.join(args.out, "samples", f"step_{step:07d}.png")
                sample_grid(args, attrs, nets, path, sample_x, sample_labels)
            interrupted = log.interrupted(step)  # Ctrl-C or SIGTERM: save, then stop
            if save or interrupted:
                log.write(step, lr)
                if dist_.main:
                    extra = {"elapsed": log.seconds(), "attributes": attrs.state}
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


def manipulate(args, attrs, nets, x, labels, target):
    """(G(x, c_trg), Grad-CAM of the changed attributes on it, or None without D (an export)) in eval mode; only
    the map takes a gradient."""
    with torch.no_grad():
        out = nets["gen"](x, attrs.vector(target)).float()
    if "disc" not in nets:
        return out, None
    with torch.enable_grad():
        _, cls, feature = nets["disc"](out.clone().requires_grad_(True), feature_layer=args.cam_layer)
        cam = grad_cam(cls, feature, attrs.vector(target) - attrs.vector(labels), create_graph=False)
    return out, upsample(cam.detach(), x.shape[-1])


def sample_grid(args, attrs, nets, path, real, labels):
    """Per row: the input, then per manipulation (every value of every manipulated attribute) the
    Grad-CAM of the changed attributes over the output, and the output."""
    for net in nets.values():
        net.eval()
    columns = [real]
    for _, _, target, _ in attrs.changes(labels):
        out, cam = manipulate(args, attrs, nets, real, labels, target)
        columns += [common.heat_overlay(cam, out), out]
    common.save_grid(path, columns)
    for net in nets.values():
        net.train()


def labels_from_logits(attrs, logits):
    """D's classifier logits (N, c_dim) -> (N, G) labels of the manipulated groups (the others 0)."""
    labels = torch.zeros(logits.shape[0], len(attrs.names), dtype=torch.long, device=logits.device)
    for g, columns in attrs.slices.items():
        labels[:, g] = (logits[:, columns.start] > 0).long() if attrs.binary[g] else logits[:, columns].argmax(1)
    return labels


def test(args, attrs, nets, device, step):
    """--phase test: <out>/test/<name>_<attribute>=<value>.png and its Grad-CAM map for every single
    change of the test images, or the --target manipulations applied one after the other; --input
    images get their labels from D's classifier. The inputs go to test/input/<name>.png, and
    test/index.html shows a row per image: input, then map and output per change."""
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
        if args.input:  # your own images: their labels come from D's classifier
            with torch.no_grad():
                labels = labels_from_logits(attrs, nets["disc"](x)[1].float())
        else:
            labels = batch["labels"].to(device)
        common.save_pictures(os.path.join(folder, "input"), batch["name"], x)
        inputs += batch["name"]
        if targets:  # --target: the manipulations one after the other
            out, current = x, labels
            for group, value in targets:
                target = attrs.set_value(current, group, value)
                out, cam = manipulate(args, attrs, nets, out, current, target)
                current = target
            tag = "_".join(attrs.describe(g, v) for g, v in targets)
            names = [f"{name}_{tag}" for name in batch["name"]]
            common.save_pictures(folder, names, out, cam)
            written.update(names)
            count += len(x)
            continue
        for group, value, target, valid in attrs.changes(labels):  # every single change of the image's values
            if valid.any():
                out, cam = manipulate(args, attrs, nets, x[valid], labels[valid], target[valid])
                names = [f"{name}_{attrs.describe(group, value)}"
                         for name, keep in zip(batch["name"], valid.tolist()) if keep]
                common.save_pictures(folder, names, out, cam)
                written.update(names)
                count += len(names)
    tags = (["_".join(attrs.describe(g, v) for g, v in targets)] if targets else
            [attrs.describe(g, v) for g in attrs.manipulated for v in range(len(attrs.values[g]))])
    kinds = ("_attention", "") if "disc" in nets else ("",)  # an export (G alone) has no Grad-CAM maps
    rows = [(name, [f"input/{name}.png"] + [f"{name}_{tag}{kind}.png" if f"{name}_{tag}" in written else None
                                            for tag in tags for kind in kinds]) for name in inputs]
    common.write_index_html(folder, f"{SCRIPT}.py on {args.data}, step {step}", vars(args), ["input"] + [
        f"{tag} {'Grad-CAM' if kind else 'output'}" for tag in tags for kind in kinds], rows)
    maps = " and Grad-CAM maps" if count and "disc" in nets else ""
    print(f"{count} manipulated images{maps} in {folder}")
    print(f"open {os.path.join(folder, 'index.html')} to see them side by side")


def evaluate(args, attrs, nets, device):
    """--phase eval: the attribute metrics (accuracy, preservation, Grad-CAM, retrieval; on real data KID/FID)
    for every single change of the test split -> <out>/metrics.json."""
    _, test_set = common.attribute_data(args.data, args.data_root, args.img_size, args.attrs, "test")
    metrics = common.AttributeMetrics(attrs, test_set, args.data, args.img_size, args.data_root, args.ckpt, device,
                                      args.workers, args.inception_weights)
    for batch in common.test_batches(test_set, args.workers):
        x, labels = batch["image"].to(device), batch["labels"].to(device)
        for group, value, target, valid in attrs.changes(labels):
            if valid.any():
                keep = valid.to(device)
                out, cam = manipulate(args, attrs, nets, x[keep], labels[keep], target[keep])
                metrics.add(batch, keep, group, value, target, out, cam)
    common.write_metrics(args.out, metrics.summary())


def parse_flags(argv=None):
    """The command line -> the run's flags: the toy preset or the checkpoint's flags filled in, then checked."""
    parser = argparse.ArgumentParser(
        description="StarGAN with the CAM-consistency loss (Kim et al., CVPR 2021); --lambda_cam 0 is plain StarGAN.",
        formatter_class=common.HelpFormatter)
    groups = common.add_common_flags(parser, SCRIPT, data="toy-attr")
    add = groups["paper"].add_argument
    add_phase = groups["phases"].add_argument
    groups["data"].add_argument("--attrs", default=None, help="comma-separated attributes to manipulate (default: "
                                f"toy-attr color,sleeve; CelebA {','.join(common.CELEBA_DEFAULT_ATTRS)}; labels.csv "
                                f"every column)")
    add_phase("--target", default=None, help="test phase: the manipulation(s) to apply, e.g. color=red,sleeve=long "
              "(default: every value of every manipulated attribute)")
    parser.set_defaults(img_size=128, batch_size=16, iters=200_000, lr=1e-4)
    add("--iters_decay", type=int, default=None, help="last iterations over which the lr decays linearly to 0 "
        "(default: half of --iters, StarGAN's 100,000 of 200,000)")
    add("--conv_dim", type=int, default=64, help="G base channels")
    add("--n_res", type=int, default=6, help="residual blocks in G")
    add("--d_conv_dim", type=int, default=64, help="D base channels")
    add("--d_layers", type=int, default=6, help="stride-2 conv blocks in D")
    add("--n_critic", type=int, default=5, help="D updates per G update")
    add("--lambda_cls", type=float, default=1.0, help="attribute classification weight")
    add("--lambda_rec", type=float, default=10.0, help="reconstruction (cycle) weight")
    add("--lambda_gp", type=float, default=10.0, help="gradient penalty weight")
    add("--lambda_cam", type=float, default=10.0,
        help="CAM-consistency weight of the G term; 0 turns both terms off (plain StarGAN)")
    add("--lambda_cam_d", type=float, default=1.0, help="CAM-consistency weight of the D term")
    add("--cam_layer", type=int, default=None,
        help="D block whose feature map Grad-CAM uses (default: the deepest with >= 8x8 cells)")
    args = common.parse_args(parser, argv, SCRIPT, {"toy": TOY_PRESET, "real": {}}, ARCH_FLAGS,
                             positive=("conv_dim", "d_conv_dim", "d_layers", "n_critic"))
    check_args(args)
    return args


def main(argv=None):
    args = parse_flags(argv)
    dist_ = common.Dist(args.device)  # torchrun's process group (a single process without torchrun)
    device = common.pick_device(args.device, dist_.local_rank, args.amp)
    if args.phase in ("test", "eval"):  # the checkpoint holds the attribute set: --input needs no dataset
        state = common.read_checkpoint(args.ckpt, SCRIPT)
        attrs = common.AttributeSet(**state["extra"]["attributes"])
    else:
        attrs, train_set = common.attribute_data(args.data, args.data_root, args.img_size, args.attrs, "train")
    common.seed_everything(args.seed)
    nets = build_networks(args, attrs)
    for net in nets.values():
        common.to_device(net, device)
    if args.compile:  # G only: WGAN-GP and the D term differentiate through D twice (deviation 7)
        nets["gen"].compile()
    if args.phase in ("test", "eval"):
        nets, step = common.load_for_inference(args.ckpt, SCRIPT, nets, state)  # G alone: an export
        if "disc" not in nets and (args.phase == "eval" or args.input):
            raise common.UserError(f"{'--phase eval' if args.phase == 'eval' else '--input'} needs D (its Grad-CAM, "
                                   f"its classifier for the labels of your images), and {args.ckpt} holds G alone (an "
                                   f"export, or StarGAN's G converted without its D): use a checkpoint with D.")
        if args.phase == "test":
            test(args, attrs, nets, device, step)
        else:
            evaluate(args, attrs, nets, device)
    else:
        train(args, attrs, train_set, dist_, device, nets)
    dist_.close(nets.values())  # under torchrun: the replicas' weight sums


if __name__ == "__main__":
    common.cli(main)
