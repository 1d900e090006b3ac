"""CAM-consistency loss, from "Not Just Compete, but Collaborate: Local Image-to-Image Translation via
Cooperative Mask Prediction". Daejin Kim, Mohammad Azam Khan, Jaegul Choo. CVPR 2021.
Paper: https://openaccess.thecvf.com/content/CVPR2021/html/Kim_Not_Just_Compete_but_Collaborate_Local_Image-to-Image_Translation_via_Cooperative_CVPR_2021_paper.html
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
retrieval; real data: KID/FID), bench.

Deviations from the paper / official StarGAN code:
 1. Grad-CAM is taken on D's feature map after block --cam_layer (default: the deepest one with at
    least 8x8 cells: block 4 at 128 px, block 3 at the 64 px toy size); StarGAN's last map is only
    2x2 at 128 px. The class score is the signed sum of the logits of the changed attributes,
    s = sum_j (c_trg,j - c_org,j) * logit_j (for one-hot groups: the new value's logit minus the old
    one's); M = ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of ds/dA_k, divided by its
    per-image maximum and bilinearly upsampled. It is computed on the translated image G(x, c),
    the image whose attributes D is asked to recognise. |x - y| is averaged over the colour channels.
 2. The loss weights could not be confirmed from the paper on this offline machine: --lambda_cam
    (G term, default 10) and --lambda_cam_d (D term, default 1) are flags, and --lambda_cam 0 is the
    StarGAN baseline. The D term is back-propagated through Grad-CAM (create_graph), so it reaches
    D's weights by second derivatives, as WGAN-GP does.
 3. One D update per iteration, G every --n_critic iterations (StarGAN). On G iterations G translates
    once: the translation is detached for the D update and reused for the G update (StarGAN
    translates twice with the same weights); real and fake images go through D in one call.
 4. InstanceNorm keeps no running statistics (StarGAN's track_running_stats=True makes eval-mode
    outputs depend on averaged statistics; parameters are unchanged: 8,430,528 / 44,762,048 for
    5 CelebA attributes at 128 px, as the official code).
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
TOY_PRESET = dict(img_size=64, conv_dim=16, n_res=3, d_conv_dim=16, d_layers=5, batch_size=16, iters=3000, lr=2e-4, sample_every=500, save_every=1000, log_every=50, workers=1)

# =============================================================================================
# Networks (StarGAN)
# =============================================================================================


class Generator(nn.Module):
    """StarGAN's G: [x, c tiled] -> the StarGAN body -> conv7 -> tanh."""

    def __init__(self, c_dim, conv_dim=64, n_res=6):
        super().__init__()
        self.body = common.star_generator_body(3 + c_dim, conv_dim, n_res)
        self.to_image = nn.Sequential(nn.Conv2d(conv_dim, 3, 7, 1, 3, bias=False), nn.Tanh())

    def forward(self, x, c):
        return self.to_image(self.body(common.tile_labels(x, c)))


def default_cam_layer(img_size, d_layers):
    """The deepest D block whose feature map still has at least 8 x 8 cells."""
    return max(1, min(d_layers, (img_size // 8).bit_length() - 1))


def check_args(args):
    """Exit 2 on sizes the networks cannot take."""
    if args.img_size % 2 ** args.d_layers or args.img_size < 2 ** args.d_layers:
        raise common.UserError(f"--img_size {args.img_size} does not work with --d_layers {args.d_layers}: D halves the "
                               f"image {args.d_layers} times, so the size must be a multiple of {2 ** args.d_layers}.")
    if args.cam_layer is None:
        args.cam_layer = default_cam_layer(args.img_size, args.d_layers)
    if not 1 <= args.cam_layer <= args.d_layers:
        raise common.UserError(f"--cam_layer {args.cam_layer}: D has blocks 1 to {args.d_layers}.")


def build_networks(args, attrs):
    return {"gen": Generator(attrs.c_dim, args.conv_dim, args.n_res),
            "disc": common.StarDiscriminator(args.img_size, args.d_conv_dim, attrs.c_dim, args.d_layers)}


# =============================================================================================
# Grad-CAM and the losses
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


def wgan_critic(src_real, src_fake):
    """E[D_src(G(x, c))] - E[D_src(x)] (StarGAN's adversarial loss for D, WGAN form)."""
    return src_fake.float().mean() - src_real.float().mean()


# =============================================================================================
# The training step
# =============================================================================================


def make_train_step(args, attrs, nets, run, opt_g, opt_d, batches, device, dist_):
    """Returns step(it) -> losses: a D update every iteration, a G update every n_critic."""
    gen, disc = run["gen"], run["disc"]
    decay_start = args.iters - (args.iters // 2 if args.iters_decay is None else args.iters_decay)
    zero = torch.zeros((), device=device)
    # G's losses of its last update, logged on every iteration (the log averages over iterations)
    last_g = dict.fromkeys(("g_adv", "g_cls", "g_rec", "g_cam"), zero)

    def step(it):
        lr = common.linear_decay(it, args.lr, args.iters, decay_start)
        common.set_lr([opt_g, opt_d], lr)
        real, labels = next(batches)
        n = real.shape[0]
        # target labels: the batch's labels in a random order (StarGAN)
        target = labels[torch.randperm(n, device=device)]
        c_org, c_trg = attrs.vector(labels), attrs.vector(target)
        # Grad-CAM score weights: +1 on the logits of gained attribute values, -1 on lost ones
        score_weights = c_trg - c_org
        update_g = it % args.n_critic == 0

        # ---------------- Discriminator update ----------------
        with common.autocast(args, device):
            with torch.set_grad_enabled(update_g):  # on G iterations the translation is reused below
                fake = gen(real, c_trg)
            src, cls, feature = disc(torch.cat([real, fake.detach()]), feature_layer=args.cam_layer)
            # L_adv^D = E[D_src(G(x, c))] - E[D_src(x)] + lambda_gp E[(||grad D_src(x^)||_2 - 1)^2] (StarGAN Eq. 1, WGAN-GP)
            d_adv = wgan_critic(src[:n], src[n:])
            d_gp = common.gradient_penalty(disc, real, fake)
            # L_cls^r = E[-log D_cls(c_org | x)] (StarGAN Eq. 2): D classifies real images by their own labels
            d_cls = common.attribute_classification_loss(attrs, cls[:n], labels)
            d_cam = zero
            if args.lambda_cam > 0:
                # L_cam^D = mean((1 - M) * sg[|x - y|]): D's Grad-CAM on y must cover what G changed (CAM-consistency, D term)
                cam = upsample(grad_cam(cls[n:], feature, score_weights, create_graph=True)[n:], args.img_size)
                d_cam = cam_consistency_d(cam, real, fake)
            d_loss = d_adv + args.lambda_gp * d_gp + args.lambda_cls * d_cls + args.lambda_cam_d * d_cam
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        dist_.average_gradients([nets["disc"]])
        opt_d.step()
        losses = {"d_adv": d_adv, "d_gp": d_gp, "d_cls": d_cls, "d_cam": d_cam}

        # ---------------- Generator update (every n_critic iterations) ----------------
        if update_g:
            nets["disc"].requires_grad_(False)
            with common.autocast(args, device):
                rec = gen(fake, c_org)
                src, cls, feature = disc(fake, feature_layer=args.cam_layer)
                # L_adv^G = -E[D_src(G(x, c))] (StarGAN Eq. 1, WGAN-GP, generator side)
                g_adv = -src.float().mean()
                # L_cls^f = E[-log D_cls(c | G(x, c))] (StarGAN Eq. 3): the translation has the target labels
                g_cls = common.attribute_classification_loss(attrs, cls, target)
                # L_rec = E |x - G(G(x, c), c_org)|_1 (StarGAN Eq. 4, cycle reconstruction)
                g_rec = (real - rec).abs().float().mean()
                g_cam = zero
                if args.lambda_cam > 0:
                    # L_cam^G = mean((1 - sg[M]) * |x - y|): leave alone what D does not attribute to the change (CAM-consistency, G term)
                    cam = upsample(grad_cam(cls, feature, score_weights, create_graph=False), args.img_size)
                    g_cam = cam_consistency_g(cam, real, fake)
                g_loss = g_adv + args.lambda_cls * g_cls + args.lambda_rec * g_rec + args.lambda_cam * g_cam
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            dist_.average_gradients([nets["gen"]])
            opt_g.step()
            nets["disc"].requires_grad_(True)
            last_g.update(g_adv=g_adv.detach(), g_cls=g_cls.detach(), g_rec=g_rec.detach(), g_cam=g_cam.detach())
        return {**{k: v.detach() for k, v in losses.items()}, **last_g, "lr": lr}

    return step


# =============================================================================================
# Phases
# =============================================================================================


def manipulate(args, attrs, run, x, labels, target):
    """(G(x, c_trg), Grad-CAM of the changed attributes on it) in eval mode; only the map takes a gradient."""
    with torch.no_grad():
        out = run["gen"](x, attrs.vector(target)).float()
    with torch.enable_grad():
        _, cls, feature = run["disc"](out.clone().requires_grad_(True), feature_layer=args.cam_layer)
        cam = grad_cam(cls, feature, attrs.vector(target) - attrs.vector(labels), create_graph=False)
    return out, upsample(cam.detach(), x.shape[-1])


@torch.no_grad()
def predict_labels(attrs, run, x):
    """Labels of new images (--input) from D's classifier."""
    return attrs.labels_from_logits(run["disc"](x)[1].float())


def sample_grid(args, attrs, nets, run, path, real, labels):
    """Per row: the input, then per manipulation (every value of every manipulated attribute) the
    Grad-CAM of the changed attributes over the output, and the output."""
    for net in nets.values():
        net.eval()
    columns = [real]
    for _, target in attrs.grid_targets(labels):
        out, cam = manipulate(args, attrs, run, real, labels, target)
        columns += [common.heat_overlay(cam, out), out]
    common.save_grid(path, columns)
    for net in nets.values():
        net.train()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="StarGAN with the CAM-consistency loss (Kim et al., CVPR 2021); --lambda_cam 0 is plain StarGAN.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Defaults are StarGAN's (CelebA, 128 px). On the toy dataset (the default --data toy-attr) flags not given "
               "on the command line come from the toy preset: " + " ".join(f"--{k} {v}" for k, v in TOY_PRESET.items()))
    common.add_common_flags(parser, SCRIPT, data="toy-attr")
    common.add_attribute_flags(parser)
    add = parser.add_argument
    parser.set_defaults(img_size=128, batch_size=16, iters=200_000, lr=1e-4)
    add("--iters_decay", type=int, default=None, help="last iterations over which the lr decays linearly to 0 (default: "
        "half of --iters, StarGAN's 100,000 of 200,000)")
    add("--conv_dim", type=int, default=64, help="G base channels")
    add("--n_res", type=int, default=6, help="residual blocks in G")
    add("--d_conv_dim", type=int, default=64, help="D base channels")
    add("--d_layers", type=int, default=6, help="stride-2 conv blocks in D")
    add("--n_critic", type=int, default=5, help="D updates per G update")
    add("--lambda_cls", type=float, default=1.0, help="attribute classification weight")
    add("--lambda_rec", type=float, default=10.0, help="reconstruction (cycle) weight")
    add("--lambda_gp", type=float, default=10.0, help="gradient penalty weight")
    add("--lambda_cam", type=float, default=10.0, help="CAM-consistency weight of the G term; 0 turns both terms off (plain StarGAN)")
    add("--lambda_cam_d", type=float, default=1.0, help="CAM-consistency weight of the D term")
    add("--cam_layer", type=int, default=None, help="D block whose feature map Grad-CAM uses (default: the deepest with >= 8x8 cells)")
    args = common.parse_args(parser, argv, SCRIPT, {"toy": TOY_PRESET, "real": {}}, ARCH_FLAGS)
    check_args(args)
    attrs, train_set = common.attribute_data(args, "train")
    dist_, device, nets, run = common.start_run(args, lambda a: build_networks(a, attrs))
    run["disc"] = nets["disc"]  # WGAN-GP and the D term differentiate through D twice, which torch.compile cannot
    manip = lambda x, labels, target, group: manipulate(args, attrs, run, x, labels, target)  # noqa: E731

    if args.phase in ("test", "eval"):
        common.load_checkpoint(args.ckpt, SCRIPT, nets)
        for net in nets.values():
            net.eval()
        if args.phase == "test":
            common.attribute_test(args, attrs, manip, lambda x: predict_labels(attrs, run, x), device)
        else:
            common.attribute_eval(args, attrs, manip, device)
        return

    opt_g = common.adam(nets["gen"].parameters(), args.lr, (0.5, 0.999), device)
    opt_d = common.adam(nets["disc"].parameters(), args.lr, (0.5, 0.999), device)
    optimizers = {"opt_g": opt_g, "opt_d": opt_d}
    start_step, elapsed, _, batches = common.begin_training(args, SCRIPT, dist_, device, nets, optimizers, train_set,
                                                            labels=True)
    step = make_train_step(args, attrs, nets, run, opt_g, opt_d, batches, device, dist_)
    if args.phase == "bench":
        common.bench(args, device, step, (batches,))
        return

    fixed = [train_set[i] for i in range(8)]
    sample_x = torch.stack([f["image"] for f in fixed]).to(device)
    sample_labels = torch.stack([f["labels"] for f in fixed]).to(device)

    def save(it, seconds):
        common.save_checkpoint(args.ckpt, SCRIPT, args, it, nets, optimizers, {"elapsed": seconds})

    def sample(it):
        sample_grid(args, attrs, nets, run, os.path.join(args.out, "samples", f"step_{it:07d}.png"), sample_x, sample_labels)

    common.finish_training(args, SCRIPT, dist_, nets, step, save, sample, start_step, elapsed)


if __name__ == "__main__":
    common.cli(main)
