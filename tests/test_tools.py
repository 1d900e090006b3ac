"""docs/tools: the results tables and pictures (results.py), the step profiler (profile_step.py), the CRC timing."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import common
from common import UserError
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "docs", "tools"))
import profile_step  # noqa: E402
import results  # noqa: E402


def _fake_run(folder, seed, success_a2b, psnr_b2a, kid):
    os.makedirs(folder)
    part = {"translation_success": success_a2b, "background_psnr_db": 20.0, "attention_iou": 0.5,
            "attention_pointing": 1.0, "toy_kid_blocks_x100": [kid, 0.1]}
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump({"data": "toy", "a2b": part, "b2a": {**part, "background_psnr_db": psnr_b2a}}, f)
    with open(os.path.join(folder, "args.json"), "w") as f:
        json.dump({"seed": seed}, f)
    return str(folder)


def test_results_table_reads_metrics_and_averages_seeds(tmp_path):
    one = _fake_run(tmp_path / "s0", 0, 1.0, 18.0, 2.0)
    two = _fake_run(tmp_path / "s1", 1, 0.5, 22.0, 4.0)
    lines = results.results_table([f"M (`python x.py`)={one},{two}", f"only seed 0={one}"]).splitlines()
    assert lines[0].startswith("| method (cells: A→B / B→A) | seed | success | bg PSNR dB")
    mean_row = lines[2].split(" | ")
    # success A->B: mean 75%, sample std 35.4 points; B->A identical runs: std 0
    assert mean_row[1] == "0/1" and mean_row[2] == "75% ± 35 / 75% ± 35"
    assert mean_row[3] == "20.00 ± 0.00 / 20.00 ± 2.83"
    assert mean_row[6].startswith("3.00 ± 1.41 / 3.00 ± 1.41")  # toy-KID: the estimate, not its spread
    assert lines[3].split(" | ")[2] == "100% / 100%"
    with pytest.raises(UserError, match="does not exist"):
        results.results_table([f"x={tmp_path / 'missing'}"])
    attribute_run = tmp_path / "attr"
    os.makedirs(attribute_run)
    with open(attribute_run / "metrics.json", "w") as f:
        json.dump({"color": {"attribute_accuracy": 1.0}, "sleeve": {"attribute_accuracy": 0.5}}, f)
    with open(attribute_run / "args.json", "w") as f:
        json.dump({"seed": 0}, f)
    assert "100.0% / 50.0%" in results.results_table([f"a={attribute_run}"])
    with pytest.raises(UserError, match="either two-domain runs or attribute runs"):
        results.results_table([f"two-domain={one}", f"attribute={attribute_run}"])


def test_op_counter_counts_dispatched_operators():
    x = torch.ones(3)
    with profile_step.OpCounter() as counter:
        y = x + x          # aten.add
        z = (y * 2).sum()  # aten.mul, aten.sum
    assert counter.count == 3 and z.item() == 12


def test_grid_rows_keeps_the_asked_rows_of_a_sample_grid(tmp_path):
    levels = torch.tensor([-1.0, 0.0, 1.0])  # row r is one grey level: 0, 128, 255
    column = levels[:, None, None, None].expand(3, 3, 8, 8)
    common.save_grid(str(tmp_path / "grid.png"), [column, column])
    results.grid_rows(str(tmp_path / "grid.png"), str(tmp_path / "rows.png"), 8, [2, 0])
    kept = np.asarray(Image.open(tmp_path / "rows.png").convert("RGB"))
    assert kept.shape == (2 + 2 * 10, 2 + 2 * 10, 3)
    assert kept[2 + 4, 2 + 4, 0] == 255 and kept[2 + 10 + 4, 2 + 4, 0] == 0
    with pytest.raises(UserError, match="rows 0..2"):
        results.grid_rows(str(tmp_path / "grid.png"), str(tmp_path / "x.png"), 8, [3])


@pytest.mark.slow
def test_profile_step_counts_the_operators_of_a_step_and_times_the_loader(tmp_path, data_root):
    import subprocess
    argv = ["--out", str(tmp_path / "b"), "--data_root", data_root, "--img_size", "32", "--ch", "4", "--n_res", "1",
            "--n_dis", "4", "--workers", "0"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "tools", "profile_step.py"), "ugatit.py", *argv],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
    assert 1000 < result["ops_per_step"] < 20000  # 4 generator passes, 8 D passes, their backward, Adam
    # the loader alone, both domains' streams: images per second delivered vs consumed by the step
    assert result["loader_img_s"] > 0 and result["step_img_s"] == pytest.approx(2 * result["img_s"], rel=0.05)
    assert "convolution" in r.stderr  # the profiler's operator table
    assert not os.path.exists(tmp_path / "b" / "ckpt.pt")


def test_check_tf_release_compares_a_converted_release_with_the_official_outputs(capsys):
    import check_tf_release  # docs/tools
    for kind, name in (("ugatit", "ugatit_light"), ("uag", "uag")):
        check_tf_release.main(kind, os.path.join(ROOT, "tests", "fixtures", "tf_releases", name))
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("gen_", "att_"))]
        assert len(lines) == (2 if kind == "ugatit" else 4)
        differences = [float(word.rstrip(",")) for line in lines for word in line.split()
                       if word.rstrip(",").replace(".", "").replace("e-", "").isdigit()]
        assert differences and max(differences) < 1e-4, lines


def test_crc_check_time_times_a_file_of_the_asked_size(capsys, monkeypatch):
    import crc_check_time
    monkeypatch.setattr(sys, "argv", ["crc_check_time.py", "--gib", "0.03125"])  # two tensors of 16 MiB
    crc_check_time.main()
    result = json.loads(capsys.readouterr().out)
    assert result["file_gib"] == pytest.approx(0.031, abs=0.001)
    assert all(result[k] > 0 for k in ("torch_load_s", "crc_check_s", "load_tensors_s"))
