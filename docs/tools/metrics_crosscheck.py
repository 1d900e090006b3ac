"""A cross-check (docs/results.md), and no part of the package: KID and FID of the same random feature
arrays by common.py and by the reference libraries torch-fidelity, pytorch-fid and clean-fid, which it imports
from a separate environment (pip install torch-fidelity pytorch-fid clean-fid scipy requests).
Usage: python metrics_crosscheck.py PATH_TO_THIS_REPOSITORY"""
import sys

import numpy as np
import torch

sys.path.insert(0, sys.argv[1])  # the repository
import common  # noqa: E402
from cleanfid.fid import frechet_distance as cleanfid_fid, kernel_distance as cleanfid_kid  # noqa: E402
from pytorch_fid.fid_score import calculate_frechet_distance  # noqa: E402
from torch_fidelity.metric_kid import kid_features_to_metric  # noqa: E402
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric  # noqa: E402

rng = np.random.default_rng(0)
real = rng.normal(size=(500, 2048))
fake = 0.9 * rng.normal(size=(300, 2048)) + 0.05  # a small difference in scale and mean
print(f"features: real {real.shape}, fake {fake.shape}, float64, numpy default_rng(0)")

ours_kid = common.kid_subsets(real, fake)  # 100 subsets of min(300, 500, 1000) = 300, seed 2020
tf = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=100, kid_subset_size=300,
                            kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=2020, verbose=False)
np.random.seed(2020)  # clean-fid draws with np.random: feats2 (here fake) first, then feats1
cf_kid = cleanfid_kid(real, fake, num_subsets=100, max_subset_size=1000)
print(f"KID mean  ours {ours_kid[0]:.15e}  torch-fidelity {tf['kernel_inception_distance_mean']:.15e}  "
      f"clean-fid {cf_kid:.15e}")
print(f"KID std   ours {ours_kid[1]:.15e}  torch-fidelity {tf['kernel_inception_distance_std']:.15e}")
print(f"|ours - torch-fidelity| mean {abs(ours_kid[0] - tf['kernel_inception_distance_mean']):.3e} "
      f"std {abs(ours_kid[1] - tf['kernel_inception_distance_std']):.3e}; "
      f"|ours - clean-fid| {abs(ours_kid[0] - cf_kid):.3e}")

ours_fid = common.fid_from_features(real, fake)
mu1, s1, mu2, s2 = real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False)
pf = calculate_frechet_distance(mu1, s1, mu2, s2)
cf = cleanfid_fid(mu1, s1, mu2, s2)
st1, st2 = fid_features_to_statistics(torch.from_numpy(real)), fid_features_to_statistics(torch.from_numpy(fake))
tfid = fid_statistics_to_metric(st1, st2, verbose=False)["frechet_inception_distance"]
print(f"FID ours {ours_fid:.10f}  pytorch-fid {pf:.10f}  clean-fid {cf:.10f}  torch-fidelity {tfid:.10f}")
print(f"|ours - pytorch-fid| {abs(ours_fid - pf):.3e}  |ours - clean-fid| {abs(ours_fid - cf):.3e}  "
      f"|ours - torch-fidelity| {abs(ours_fid - tfid):.3e}  (relative {abs(ours_fid - pf) / pf:.1e})")

# full-rank covariances (more samples than dimensions): the square roots agree to rounding
real64, fake64 = real[:, :64], fake[:, :64]
mu1, s1, mu2, s2 = real64.mean(0), np.cov(real64, rowvar=False), fake64.mean(0), np.cov(fake64, rowvar=False)
ours64, pf64 = common.fid_from_features(real64, fake64), calculate_frechet_distance(mu1, s1, mu2, s2)
print(f"FID of the first 64 dimensions: ours {ours64:.12f}  pytorch-fid {pf64:.12f}  "
      f"|difference| {abs(ours64 - pf64):.1e}")
