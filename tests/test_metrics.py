"""Tests of the metrics in common.py: KID/FID against closed forms, the FID Inception's loading and
pooling, feature extraction, the toy metrics (background PSNR/L1, attention IoU/pointing), and the
README's results table built from metrics.json files."""
import copy
import functools
import hashlib
import http.server
import math
import os
import socket
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image

from common import (UserError, _block_sizes, _build_fid_inception, attention_iou_pointing, extract_features,
                    fid_from_features, fid_inception, fid_weights_file, kid_blocks, kid_subsets, masked_psnr_l1,
                    mmd2_unbiased, polynomial_kernel)

METRICS_MODULE = sys.modules[fid_inception.__module__]  # where the metric functions look up their globals


# ------------------------------------------------------------------------------------------------- KID

def population_mmd2_mean_shift(mu):
    """Population MMD^2 between N(0, I) and N(mu, I) for k(a, b) = (a.b/d + 1)^3.
    For independent a ~ N(m_a, I), b ~ N(m_b, I) with c = m_a.m_b:
    E[a.b] = c, E[(a.b)^2] = c^2 + |m_a|^2 + |m_b|^2 + d, E[(a.b)^3] = c^3 + 3c(|m_a|^2 + |m_b|^2 + d + 2),
    and E k = 1 + 3 E[a.b]/d + 3 E[(a.b)^2]/d^2 + E[(a.b)^3]/d^3."""
    d, r = len(mu), float(mu @ mu)
    k_xx = 1 + 3 / d
    k_yy = 1 + 3 * r / d + 3 * (r * r + 2 * r + d) / d ** 2 + (r ** 3 + 3 * r * (2 * r + d + 2)) / d ** 3
    k_xy = 1 + 3 * (r + d) / d ** 2
    return k_xx + k_yy - 2 * k_xy


def brute_force_mmd2(x, y):
    """The unbiased MMD^2 written as explicit loops over pairs."""
    k = lambda a, b: (float(a @ b) / len(a) + 1) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_polynomial_kernel_and_mmd_match_explicit_formulas():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3)) + 0.5
    assert polynomial_kernel(x, y)[2, 4] == pytest.approx((x[2] @ y[4] / 3 + 1) ** 3, rel=1e-12)
    assert polynomial_kernel(torch.tensor(x), y).dtype == np.float64
    assert mmd2_unbiased(x, y) == pytest.approx(brute_force_mmd2(x, y), rel=1e-10)
    assert mmd2_unbiased(torch.tensor(x, dtype=torch.float32), y) == pytest.approx(mmd2_unbiased(x, y), rel=1e-6)


def test_mmd_of_a_set_with_itself_has_its_closed_form():
    # with S = off-diagonal kernel sum and T = trace: MMD^2_u(x, x) = -(2/n) (T/n - S/(n(n-1))), negative
    x = np.random.default_rng(1).normal(size=(50, 4))
    k, n = polynomial_kernel(x, x), 50
    expected = -(2 / n) * (np.trace(k) / n - (k.sum() - np.trace(k)) / (n * (n - 1)))
    assert expected < 0
    assert mmd2_unbiased(x, x) == pytest.approx(expected, rel=1e-10)


def test_kid_is_near_zero_for_two_draws_of_one_distribution():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    mean, std = kid_subsets(real, fake)
    block_mean, stderr = kid_blocks(real, fake, max_block_size=100)
    shifted = population_mmd2_mean_shift(np.full(16, 0.1))  # a small shift, for scale: 0.029
    assert abs(mean) < 0.05 * shifted and 0 < std < 0.1 * shifted
    assert abs(block_mean) < 4 * stderr


@pytest.mark.parametrize("shift", [0.1, 0.25, 0.5])
def test_kid_matches_the_closed_form_for_a_mean_shift(shift):
    rng = np.random.default_rng(3)
    mu = np.full(16, shift)
    real, fake = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16)) + mu
    expected = population_mmd2_mean_shift(mu)
    block_mean, stderr = kid_blocks(real, fake, max_block_size=100)  # 20 independent blocks of 100
    assert abs(block_mean - expected) < 4 * stderr
    assert abs(mmd2_unbiased(real, fake) - expected) < 4 * stderr  # the full-set estimate is tighter still
    assert kid_subsets(real, fake, n_subsets=20)[0] == pytest.approx(expected, rel=0.1)


def test_kid_grows_with_the_shift():
    rng = np.random.default_rng(4)
    real, noise = rng.normal(size=(500, 8)), rng.normal(size=(500, 8))
    kids = [kid_subsets(real, noise + shift, n_subsets=10, subset_size=500)[0] for shift in (0.0, 0.2, 0.4, 0.8)]
    assert kids == sorted(kids) and kids[-1] > 10 * abs(kids[0])


def test_one_subset_of_everything_is_the_plain_mmd():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 0.3
    mean, std = kid_subsets(real, fake, n_subsets=1, subset_size=1000, seed=7)
    assert mean == pytest.approx(mmd2_unbiased(real, fake), rel=1e-10) and std == 0.0


def test_subsets_are_drawn_without_replacement_fake_first_with_the_seed():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(30, 6)), rng.normal(size=(50, 6)) + 0.3
    draw = np.random.RandomState(11)
    fake_rows, real_rows = draw.choice(50, 30, replace=False), draw.choice(30, 30, replace=False)
    expected = mmd2_unbiased(real[real_rows], fake[fake_rows])
    assert kid_subsets(real, fake, n_subsets=1, seed=11)[0] == pytest.approx(expected, rel=1e-10)
    assert kid_subsets(real, fake, n_subsets=5, seed=11) == kid_subsets(real, fake, n_subsets=5, seed=11)
    assert kid_subsets(real, fake, n_subsets=5, seed=11) != kid_subsets(real, fake, n_subsets=5, seed=12)


def test_subsets_default_to_torch_fidelitys_seed_2020_and_clean_fids_size_rule():
    # torch-fidelity draws fake then real rows from RandomState(2020) per subset; the subset size is
    # min(N_real, N_fake, 1000) as in clean-fid; 100 subsets
    rng = np.random.default_rng(16)
    real, fake = rng.normal(size=(60, 5)), rng.normal(size=(90, 5)) + 0.2
    draw, estimates = np.random.RandomState(2020), []
    for _ in range(100):
        fake_rows = draw.choice(90, 60, replace=False)
        estimates.append(mmd2_unbiased(real[draw.choice(60, 60, replace=False)], fake[fake_rows]))
    first_fake = np.random.RandomState(2020).choice(90, 60, replace=False)  # the first subset by hand
    hand = brute_force_mmd2(real, fake[first_fake])  # all 60 real rows, in any order: the same MMD
    assert kid_subsets(real, fake, n_subsets=1) == (pytest.approx(hand, rel=1e-9), 0.0)
    mean, std = kid_subsets(real, fake)
    assert mean == pytest.approx(np.mean(estimates), rel=1e-9) and std == pytest.approx(np.std(estimates), rel=1e-9)
    assert kid_subsets(real, fake) == (mean, std)  # equal features, equal numbers
    assert kid_subsets(torch.tensor(real), torch.tensor(fake, dtype=torch.float32))[0] == pytest.approx(mean, rel=1e-5)


def test_one_block_is_the_plain_mmd():
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(25, 6)), rng.normal(size=(20, 6)) + 0.3
    mean, stderr = kid_blocks(torch.tensor(real), torch.tensor(fake), max_block_size=25)
    assert mean == pytest.approx(mmd2_unbiased(real, fake), rel=1e-10) and math.isnan(stderr)


def test_blocks_split_like_tf_gan():
    assert _block_sizes(25, 3) == [8, 8, 9]
    assert _block_sizes(17, 3) == [5, 6, 6]
    assert _block_sizes(30, 3) == [10, 10, 10]
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(25, 6)), rng.normal(size=(17, 6)) + 0.3
    estimates = [mmd2_unbiased(real[0:8], fake[0:5]), mmd2_unbiased(real[8:16], fake[5:11]),
                 mmd2_unbiased(real[16:25], fake[11:17])]
    mean, stderr = kid_blocks(real, fake, max_block_size=10)  # ceil(25 / 10) = 3 blocks
    assert mean == pytest.approx(np.mean(estimates), rel=1e-10)
    assert stderr == pytest.approx(np.std(estimates, ddof=1) / math.sqrt(3), rel=1e-10)


@pytest.mark.parametrize("n_real, n_fake", [(20, 150), (150, 20), (7, 300), (4, 100), (3, 100), (2, 2)])
def test_blocks_with_one_set_many_times_the_other(n_real, n_fake):
    # TF-GAN's ceil(max(N) / 10) blocks would give the smaller set blocks of 1 or 0 rows (nan there, a crash
    # before); min(N) // 2 blocks keep at least 2 rows of each set in every block
    rng = np.random.default_rng(n_real * 1000 + n_fake)
    real, fake = rng.normal(size=(n_real, 6)), rng.normal(size=(n_fake, 6)) + 0.3
    n_blocks = max(1, min(math.ceil(max(n_real, n_fake) / 10), min(n_real, n_fake) // 2))
    ends_real = np.cumsum([0] + _block_sizes(n_real, n_blocks))
    ends_fake = np.cumsum([0] + _block_sizes(n_fake, n_blocks))
    assert min(np.diff(ends_real)) >= 2 and min(np.diff(ends_fake)) >= 2 and max(np.diff(ends_fake)) >= 2
    estimates = [brute_force_mmd2(real[ends_real[i]:ends_real[i + 1]], fake[ends_fake[i]:ends_fake[i + 1]])
                 for i in range(n_blocks)]
    mean, stderr = kid_blocks(real, fake)
    assert math.isfinite(mean) and mean == pytest.approx(np.mean(estimates), rel=1e-9)
    if n_blocks > 1:
        assert stderr == pytest.approx(np.std(estimates, ddof=1) / math.sqrt(n_blocks), rel=1e-9)
    assert math.isfinite(kid_subsets(real, fake, n_subsets=5)[0])


def test_blocks_of_comparable_sets_are_tf_gans():
    # 150 vs 40: TF-GAN's 15 blocks already hold at least 2 rows of each set, so nothing changes
    rng = np.random.default_rng(17)
    real, fake = rng.normal(size=(150, 6)), rng.normal(size=(40, 6))
    ends_real, ends_fake = np.cumsum([0] + _block_sizes(150, 15)), np.cumsum([0] + _block_sizes(40, 15))
    estimates = [mmd2_unbiased(real[ends_real[i]:ends_real[i + 1]], fake[ends_fake[i]:ends_fake[i + 1]])
                 for i in range(15)]
    assert kid_blocks(real, fake)[0] == pytest.approx(np.mean(estimates), rel=1e-12)


def test_kid_of_a_single_image_is_a_user_error():
    with pytest.raises(UserError, match="at least 2 images"):
        kid_blocks(np.zeros((1, 4)), np.ones((50, 4)))


# ------------------------------------------------------------------------------------------------- FID

def gaussian_with_exact_stats(n, mean, variances, rng):
    """n samples whose sample mean is exactly `mean` and whose unbiased sample covariance is exactly diag(variances)."""
    noise = rng.normal(size=(n, len(mean)))
    orthonormal, _ = np.linalg.qr(noise - noise.mean(0))  # zero-mean orthonormal columns
    return orthonormal * math.sqrt(n - 1) * np.sqrt(variances) + mean


def test_fid_is_zero_for_identical_statistics():
    features = np.random.default_rng(9).normal(size=(300, 12)) @ np.random.default_rng(10).normal(size=(12, 12))
    shuffled = features[np.random.default_rng(11).permutation(300)]
    assert abs(fid_from_features(features, shuffled)) < 1e-9 * np.trace(np.cov(features, rowvar=False))


def test_fid_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(12)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    var1, var2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    real = gaussian_with_exact_stats(500, mu1, var1, rng)
    fake = torch.tensor(gaussian_with_exact_stats(400, mu2, var2, rng), dtype=torch.float64)
    expected = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    assert fid_from_features(real, fake) == pytest.approx(expected, rel=1e-9)


def test_fid_trace_sqrt_matches_the_eigenvalues_of_the_product_for_correlated_features():
    rng = np.random.default_rng(13)
    real = rng.normal(size=(400, 10)) @ rng.normal(size=(10, 10))
    fake = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10)) + 1.0
    cov1, cov2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    trace_sqrt = np.sqrt(np.linalg.eigvals(cov1 @ cov2).real.clip(0)).sum()  # a different route to tr sqrtm
    expected = ((real.mean(0) - fake.mean(0)) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt
    assert fid_from_features(real, fake) == pytest.approx(expected, rel=1e-8)


def test_fid_with_singular_covariances_is_finite():
    rng = np.random.default_rng(14)
    real, fake = rng.normal(size=(10, 32)), rng.normal(size=(12, 32)) + 0.5
    value = fid_from_features(real, fake)
    assert math.isfinite(value) and value > 0
    # the 22 zero eigenvalues come out as +-1e-16 and their square roots as ~3e-8 each
    assert abs(fid_from_features(real, real)) < 1e-5 * np.trace(np.cov(real, rowvar=False))


def test_fid_falls_back_to_eps_when_the_square_root_fails(monkeypatch):
    rng = np.random.default_rng(15)
    real, fake = rng.normal(size=(200, 6)), rng.normal(size=(200, 6)) + 0.2
    plain = fid_from_features(real, fake)
    original, calls = METRICS_MODULE._trace_sqrtm_product, []

    def fails_once(cov1, cov2):
        calls.append(np.diag(cov1).copy())
        return float("nan") if len(calls) == 1 else original(cov1, cov2)

    monkeypatch.setattr(METRICS_MODULE, "_trace_sqrtm_product", fails_once)
    assert fid_from_features(real, fake, eps=1e-6) == pytest.approx(plain, abs=1e-4)
    assert len(calls) == 2 and np.allclose(calls[1] - calls[0], 1e-6)  # the retry used cov + eps I


def test_fid_of_non_finite_features_is_nan_not_an_error():
    rng = np.random.default_rng(15)
    real, fake = rng.normal(size=(20, 6)), rng.normal(size=(20, 6))
    fake[3, 2] = np.nan  # numpy's eigh raises LinAlgError on it
    assert math.isnan(fid_from_features(real, fake)) and math.isnan(fid_from_features(fake * np.inf, real))


# -------------------------------------------------------------------------------------- Inception weights

def save_state_dict(module, path):
    """Save a state dict, return the SHA-256 hex digest of the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_network(monkeypatch):
    """FID_WEIGHTS_URL pointing at a closed port of this machine: every download fails at once."""
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/pt_inception-2015-12-05-6726825d.pth"
    monkeypatch.setattr(METRICS_MODULE, "FID_WEIGHTS_URL", url)


def test_fid_inception_without_weights_or_network_says_where_to_put_them(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError) as error:
        fid_inception()
    message = str(error.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message and "--inception_weights" in message
    assert str(tmp_path / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth") in message
    assert "failed" in message and "http://127.0.0.1:" in message
    assert os.listdir(tmp_path / "checkpoints") == []  # nothing half-written
    with pytest.raises(UserError, match="does not exist"):
        fid_inception(str(tmp_path / "missing.pth"))


def test_fid_inception_rejects_a_file_with_the_wrong_hash(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    wrong = tmp_path / "weights.pth"
    torch.save({"not": torch.zeros(1)}, wrong)
    with pytest.raises(UserError, match="6726825d"):
        fid_inception(str(wrong))


def test_a_url_without_a_hash_in_its_name_is_a_user_error(monkeypatch):
    monkeypatch.setattr(METRICS_MODULE, "FID_WEIGHTS_URL", "http://127.0.0.1:9/weights.pth")
    with pytest.raises(UserError, match="SHA-256 prefix"):
        fid_weights_file()


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on 127.0.0.1 (a thread, a free port) serving tmp_path/served; yields (folder, base URL, log)."""
    folder, requests = tmp_path / "served", []
    folder.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output quiet; count the requests instead
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_weights_are_downloaded_once_into_the_hub_cache(tmp_path, monkeypatch, file_server):
    folder, base, requests = file_server
    content = os.urandom(50_000)
    name = f"fake_inception-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    (folder / name).write_bytes(content)
    monkeypatch.setattr(METRICS_MODULE, "FID_WEIGHTS_URL", f"{base}/{name}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub.get_dir() is $TORCH_HOME/hub
    path = fid_weights_file()
    assert path == str(tmp_path / "torch" / "hub" / "checkpoints" / name)
    assert open(path, "rb").read() == content and len(requests) == 1
    assert fid_weights_file() == path and len(requests) == 1  # found in the cache: no second download
    assert os.listdir(tmp_path / "torch" / "hub" / "checkpoints") == [name]


def test_a_download_with_the_wrong_hash_is_refused_and_leaves_no_file(tmp_path, monkeypatch, file_server):
    folder, base, requests = file_server
    content = os.urandom(50_000)
    wrong_prefix = format(int(hashlib.sha256(content).hexdigest()[:8], 16) ^ 1, "08x")
    (folder / f"fake_inception-{wrong_prefix}.pth").write_bytes(content)
    monkeypatch.setattr(METRICS_MODULE, "FID_WEIGHTS_URL", f"{base}/fake_inception-{wrong_prefix}.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError, match="failed.*hash") as error:
        fid_weights_file()
    assert len(requests) == 1 and "--inception_weights" in str(error.value)
    assert os.listdir(tmp_path / "hub" / "checkpoints") == []  # neither the file nor a partial one


def test_fid_inception_loads_weights_from_the_hub_cache(tmp_path, monkeypatch, no_network):
    torch.manual_seed(0)
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                                num_classes=1008)  # the same keys as pytorch-fid's network
    digest = save_state_dict(reference, tmp_path / "checkpoints" / "weights.pth")
    os.rename(tmp_path / "checkpoints" / "weights.pth", tmp_path / "checkpoints" / f"pt_inception-{digest[:8]}.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(METRICS_MODULE, "FID_WEIGHTS_URL", f"http://127.0.0.1:9/pt_inception-{digest[:8]}.pth")
    model, label = fid_inception()
    assert label == "fid-inception (pt_inception-2015-12-05)" and not model.training
    first_conv = next(p for name, p in model.named_parameters() if name.endswith("Conv2d_1a_3x3.conv.weight"))
    assert torch.equal(first_conv, reference.Conv2d_1a_3x3.conv.weight)
    features = extract_features(model, [torch.rand(2, 3, 64, 64) * 2 - 1], "cpu")
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


@pytest.mark.parametrize("block_name, pool", [
    ("Mixed_5b", lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)),
    ("Mixed_6e", lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)),
    ("Mixed_7b", lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)),
    ("Mixed_7c", lambda x: F.max_pool2d(x, 3, stride=1, padding=1)),
])
def test_fid_inception_blocks_pool_like_the_tf_graph(block_name, pool):
    block = copy.deepcopy(getattr(_build_fid_inception(), block_name))
    block.branch_pool.conv = block.branch_pool.bn = nn.Identity()  # the pool branch now gives ReLU(pooled input)
    channels = block.branch1x1.conv.in_channels
    x = torch.randn(1, channels, 5, 5)
    with torch.no_grad():
        pooled = block(x)[:, -channels:]
    assert torch.allclose(pooled, F.relu(pool(x)), atol=1e-6)
    assert not torch.allclose(pooled, F.relu(F.avg_pool2d(x, 3, stride=1, padding=1)))  # torchvision's default


# ----------------------------------------------------------------------------------- feature extraction

def eight_bit(images):
    """What a saved PNG holds: the 256 levels of torchvision.utils.save_image, read back to [-1, 1]."""
    levels = ((images + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    return levels.float() / 255 * 2 - 1


def test_extract_features_with_an_injected_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))  # (N, 8, 1, 1)
    batches = [torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(3, 3, 16, 16) * 2 - 1]
    features = extract_features(net, batches, "cpu")
    assert features.shape == (7, 8) and features.dtype == torch.float64 and not features.requires_grad
    assert torch.allclose(features, net(eight_bit(torch.cat(batches))).flatten(1).double(), atol=1e-6)
    with pytest.raises(ValueError):
        extract_features(net, [], "cpu")


def test_extract_features_rounds_images_to_8_bits_like_a_saved_png(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1))
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    # less than half a grey level (1/255 on the [-1, 1] scale) away from the nearest level, either side
    levels = torch.floor((images + 1) / 2 * 255 + 0.5) / 255 * 2 - 1
    nudged = (levels + (torch.rand_like(images) - 0.5) * 0.9 / 255).clamp(-1, 1)
    assert not torch.equal(nudged, levels)
    assert torch.equal(extract_features(net, [nudged], "cpu"), extract_features(net, [levels], "cpu"))
    assert not torch.equal(extract_features(net, [levels + 1.2 / 255], "cpu"), extract_features(net, [levels], "cpu"))
    torchvision.utils.save_image((images + 1) / 2, tmp_path / "x.png", nrow=3, padding=0)
    png = torch.from_numpy(np.array(Image.open(tmp_path / "x.png"))).permute(2, 0, 1).float() / 255 * 2 - 1
    from_png = torch.stack(png.split(16, dim=2))  # (3, 16, 48) -> three (3, 16, 16) images
    assert torch.equal(extract_features(net, [images], "cpu"), extract_features(net, [from_png], "cpu"))
    assert torch.equal(extract_features(net, [from_png], "cpu"), net(from_png).flatten(1).double())  # 8-bit: as is


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 is a CUDA setting")
def test_extract_features_turns_tf32_off_and_restores_it():
    seen = []
    net = lambda x: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)) or x  # noqa
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        extract_features(net, [torch.zeros(1, 3, 4, 4)], "cuda")
        assert seen == [(False, False)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_extract_features_restores_tf32_also_on_cpu_and_after_an_error():
    seen, before = [], (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def failing(x):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        extract_features(failing, [torch.zeros(1, 3, 4, 4)], "cpu")
    assert seen == [(False, False)]
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_kid_on_injected_features_separates_different_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    real = extract_features(net, [torch.rand(100, 3, 16, 16) * 2 - 1], "cpu")
    same = extract_features(net, [torch.rand(100, 3, 16, 16) * 2 - 1], "cpu")
    darker = extract_features(net, [torch.rand(100, 3, 16, 16) - 1], "cpu")
    assert kid_subsets(real, darker, n_subsets=10)[0] > 10 * abs(kid_subsets(real, same, n_subsets=10)[0])


# ---------------------------------------------------------------------------------------- toy metrics

def square_masks():
    """Two 1x16x16 masks of different areas."""
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 4:12, 4:12] = 1
    mask[1, :, 0:8, :] = 1
    return mask


def test_masked_psnr_l1_ignores_changes_inside_the_mask():
    src, mask = torch.rand(2, 3, 16, 16) * 2 - 1, square_masks()
    assert masked_psnr_l1(src, src.clone(), mask) == (100.0, 0.0)
    changed_inside = torch.where(mask.bool(), -src, src)
    assert masked_psnr_l1(src, changed_inside, mask) == (100.0, 0.0)


def test_masked_psnr_l1_of_a_known_offset_outside_the_mask():
    src, mask = torch.zeros(2, 3, 16, 16, dtype=torch.float64), square_masks()
    offsets = torch.tensor([0.2, 0.02], dtype=torch.float64).view(2, 1, 1, 1)  # on the [0, 1] scale: 0.1 and 0.01
    out = torch.where(mask.bool(), torch.ones_like(src), src + offsets)  # inside: anything
    psnr, l1 = masked_psnr_l1(src, out, mask)
    assert psnr == pytest.approx((20.0 + 40.0) / 2, rel=1e-9)  # per image, then averaged
    assert l1 == pytest.approx((0.1 + 0.01) / 2, rel=1e-9)


def test_attention_equal_to_the_mask_or_its_complement():
    mask = square_masks()
    assert attention_iou_pointing(mask * 5 + 2, mask) == (1.0, 1.0)  # any scale
    assert attention_iou_pointing(1 - mask, mask) == (0.0, 0.0)


def test_low_resolution_attention_is_upsampled():
    attention = torch.zeros(1, 1, 8, 8)
    attention[0, 0, 2:5, 3:6] = 0.3
    mask = F.interpolate((attention > 0).float(), scale_factor=4, mode="nearest")  # 32x32, a 12x12 square
    # bilinear upsampling reproduces the square except its four corner pixels (0.625^2 < 0.5)
    assert attention_iou_pointing(attention, mask) == (pytest.approx(140 / 144), 1.0)


def test_attention_half_of_the_mask():
    mask, attention = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    attention[..., 8:24, 8:16] = 1
    assert attention_iou_pointing(attention, mask) == (pytest.approx(0.5), 1.0)
