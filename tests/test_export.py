"""tools/export.py (generators.pt and torch.export programs) and the test phase's index.html, for every script."""
import glob
import re
import html.parser
import os
import shutil
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

import amgan
import attentiongan
import camconsistency
import common
import uag
import ugatit
from conftest import ROOT, run_main

sys.path.insert(0, os.path.join(ROOT, "tools"))
import export as export_tool  # noqa: E402

MODULES = {"ugatit": ugatit, "attentiongan": attentiongan, "uag": uag, "amgan": amgan, "camconsistency": camconsistency}
COMMON = ["--img_size", "32", "--workers", "0", "--log_every", "1", "--sample_every", "0", "--save_every", "1"]
TINY = {"ugatit": ["--ch", "4", "--n_res", "1", "--n_dis", "4", "--light"],
        "attentiongan": ["--ngf", "4", "--ndf", "4", "--n_res", "1", "--n_masks", "3"],
        "uag": ["--ngf", "4", "--ndf", "4", "--n_res", "1"],
        "amgan": ["--conv_dim", "4", "--d_conv_dim", "4", "--n_res", "1", "--d_layers", "4", "--batch_size", "2",
                  "--no_attention_loss", "--no_perceptual"],
        "camconsistency": ["--conv_dim", "4", "--d_conv_dim", "4", "--n_res", "1", "--d_layers", "4",
                           "--batch_size", "2", "--n_critic", "1"]}
# the test phase on a few pictures: own images for the two-domain scripts, one target for the attribute scripts
TEST_ARGS = {"amgan": ["--target", "color=red"], "camconsistency": ["--target", "color=red"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """train_and_export(script) -> (run folder, its export folder): one tiny run and fp32 export per script."""
    done = {}

    def train_and_export(script):
        if script not in done:
            out = str(tmp_path_factory.mktemp(script) / "run")
            MODULES[script].main(["--iters", "1", "--out", out, "--data_root", data_root, *COMMON, *TINY[script]])
            done[script] = out, export_tool.export(script, out)
        return done[script]
    return train_and_export


def run_test_phase(script, out, ckpt, data_root, tmp_path):
    if script not in TEST_ARGS and not os.path.isdir(tmp_path / "mine"):
        os.makedirs(tmp_path / "mine")
        for i in range(3):
            image = common.toy_render("toy", "test", i, 40, domain="AB"[i % 2])["image"]
            Image.fromarray(((image.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)).save(
                tmp_path / "mine" / f"my {i}&.png")  # a space and & for the page's escaping
    extra = TEST_ARGS.get(script, ["--input", str(tmp_path / "mine")])
    MODULES[script].main(["--phase", "test", "--out", out, "--ckpt", ckpt, "--data_root", data_root, "--workers", "0",
                          *extra])
    return os.path.join(out, "test")


def pictures(folder):
    return {os.path.relpath(f, folder): np.asarray(Image.open(f), dtype=np.int16)
            for f in glob.glob(os.path.join(folder, "**", "*.png"), recursive=True)}


class Page(html.parser.HTMLParser):
    """The links, pictures and heading of index.html."""

    def __init__(self):
        super().__init__()
        self.urls, self.heading, self.in_h1, self.tags = [], "", False, []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if (tag, k) in (("img", "src"), ("a", "href"))]
        self.in_h1 = tag == "h1"

    def handle_endtag(self, tag):
        self.in_h1 = False

    def handle_data(self, data):
        self.heading += data if self.in_h1 else ""


def check_index(folder, script, step):
    text = open(os.path.join(folder, "index.html"), encoding="utf-8").read()
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    page = Page()
    page.feed(text)
    assert {"html", "head", "title", "style", "body", "h1", "table", "tr", "th", "td", "img", "a"} <= set(page.tags)
    assert f"{script}.py" in page.heading and "toy" in page.heading and f"step {step}" in page.heading
    assert page.urls
    for url in page.urls:
        assert "://" not in url and not url.startswith("/"), url
        assert os.path.isfile(os.path.join(folder, urllib.request.url2pathname(url))), url
    assert any(u.startswith("input/") for u in page.urls)  # the inputs are written and shown
    return page


# the fast tier exports U-GAT-IT, the slow tier the other four scripts
OTHER_FOUR = [pytest.param(script, marks=pytest.mark.slow) for script in MODULES if script != "ugatit"]


@pytest.mark.parametrize("script", ["ugatit", *OTHER_FOUR])
def test_test_from_the_export_gives_the_pictures_of_ckpt_and_an_index(script, tmp_path, data_root, runs):
    """generators.pt holds the generators alone and tests like ckpt.pt; index.html links what is on disk."""
    out, export = runs(script)
    state = torch.load(os.path.join(export, "generators.pt"), weights_only=True)
    assert sorted(os.listdir(export)) == sorted(["generators.pt"] + [f"{k}.pt2" for k in state["models"]])
    assert state["optimizers"] == {} and not any(k.startswith("disc") for k in state["models"])
    assert state["extra"]["export_dtype"] == "fp32"
    assert os.path.getsize(os.path.join(export, "generators.pt")) < os.path.getsize(os.path.join(out, "ckpt.pt"))
    results = {}
    for name, ckpt in (("ckpt", os.path.join(out, "ckpt.pt")), ("export", os.path.join(export, "generators.pt"))):
        folder = run_test_phase(script, str(tmp_path / name), ckpt, data_root, tmp_path)
        results[name] = pictures(folder)
        check_index(folder, script, 1)
    reference, exported = results["ckpt"], results["export"]
    if script == "camconsistency":  # its Grad-CAM maps need D, which an export does not hold
        reference = {k: v for k, v in reference.items() if not k.endswith("_attention.png")}
    assert reference.keys() == exported.keys() and len(reference) > 3
    for k in reference:
        assert np.array_equal(reference[k], exported[k]), k  # fp32: the same weights, the same pictures


PROGRAM_RUNNER = r"""
import sys, torch
torch.manual_seed(0)
out = {}
for path, shapes in eval(sys.argv[1]):
    program = torch.export.load(path).module()
    out[path] = {n: program(*[torch.randn(n, *s) for s in shapes]) for n in (1, 3)}
torch.save(out, sys.argv[2])
"""


@pytest.mark.slow
def test_programs_in_a_fresh_process_equal_the_eager_networks_for_batch_1_and_3(tmp_path, runs):
    """Every script's .pt2 programs, loaded by a process that never imported this project, give the eager networks'
    outputs for batches of 1 and 3 (exported with 2); the attribute scripts' G takes (x, code)."""
    jobs, eager = [], {}
    for script in MODULES:
        out, export = runs(script)
        state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
        nets, examples = export_tool.translators(script, state)
        for k, net in nets.items():
            net.load_state_dict(state["models"][k])
            path = os.path.join(export, f"{k}.pt2")
            jobs.append((path, [tuple(t.shape[1:]) for t in examples[k]]))
            eager[path] = net.eval()
    subprocess.run([sys.executable, "-c", PROGRAM_RUNNER, repr(jobs), str(tmp_path / "out.pt")], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=str(tmp_path))
    outputs = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for path, shapes in jobs:
            for n in (1, 3):
                expected = eager[path](*[torch.randn(n, *s) for s in shapes])
                expected = expected if isinstance(expected, tuple) else (expected,)
                got = outputs[path][n]
                got = got if isinstance(got, (tuple, list)) else (got,)
                assert len(got) == len(expected)
                for g, e in zip(got, expected):
                    assert (g is None and e is None) or torch.allclose(g, e, atol=1e-5), path


@pytest.mark.slow
def test_the_readme_loading_example_runs_on_an_export(tmp_path, data_root):
    """The README's Python block, run as it is in a fresh process next to a toy U-GAT-IT export."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S)[1]
    assert "torch.export.load" in snippet
    out = str(tmp_path / "results" / "ugatit_toy")
    ugatit.main(["--iters", "1", "--out", out, "--data_root", data_root, *COMMON[2:], "--img_size", "64",
                 *TINY["ugatit"]])
    export_tool.main(["ugatit.py", "--out", out])
    check = snippet + "\nassert image.shape == (4, 3, 64, 64) and heatmap.shape[0] == 4\nprint('ok')\n"
    result = subprocess.run([sys.executable, "-c", check], cwd=str(tmp_path), capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_bf16_export_is_smaller_and_translates_alike(tmp_path, data_root, runs):
    """generators.pt in bf16 is smaller, and --phase test from it gives nearly the pictures of ckpt.pt."""
    fp32 = os.path.getsize(os.path.join(runs("camconsistency")[1], "generators.pt"))
    out = str(tmp_path / "run")
    os.makedirs(out)
    shutil.copy(os.path.join(runs("camconsistency")[0], "ckpt.pt"), out)
    export = export_tool.export("camconsistency", out, dtype="bf16")
    bf16 = os.path.getsize(os.path.join(export, "generators.pt"))
    state = torch.load(os.path.join(export, "generators.pt"), weights_only=True)
    assert bf16 < 0.75 * fp32 and all(t.dtype == torch.bfloat16 for t in state["models"]["gen"].values()
                                       if t.is_floating_point())
    assert state["extra"]["export_dtype"] == "bf16"
    reference = pictures(run_test_phase("camconsistency", str(tmp_path / "ckpt"), os.path.join(out, "ckpt.pt"),
                                        data_root, tmp_path))
    half = pictures(run_test_phase("camconsistency", str(tmp_path / "bf16"), os.path.join(export, "generators.pt"),
                                   data_root, tmp_path))
    for k, v in half.items():
        assert np.abs(reference[k] - v).mean() < 3, k  # bf16 weights: close, not equal


def test_export_errors_exit_2(tmp_path):
    result = run_main("tools/export.py", "ugatit.py", "--out", str(tmp_path / "none"))
    assert result.returncode == 2 and "no checkpoint at" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(common.UserError, match="exports a run of"):
        export_tool.export("official", str(tmp_path))


def test_index_html_escapes_names_and_links_relatively(tmp_path):
    common.write_index_html(str(tmp_path), "x.py on <toy>, step 3", {"data": "a&b"}, ["in", "out"],
                            [("a <b>", ["in/a b#1.png", None])])
    text = open(tmp_path / "index.html", encoding="utf-8").read()
    assert "&lt;toy&gt;" in text and "a &lt;b&gt;" in text and 'src="in/a%20b%231.png"' in text and "<td></td>" in text
