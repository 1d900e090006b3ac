"""Nothing lost, no traceback: the fault and bad-input classes of every script (exit code 2 and one
message, or exit code 1 for a diverged run; checkpoints that must survive are compared byte for byte)."""
import csv
import errno
import glob
import os
import signal
import subprocess
import sys
import time

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
from conftest import QUIET, ROOT, TINY, copy_run, run_main

sys.path.insert(0, os.path.join(ROOT, "tools"))
import export as export_tool  # noqa: E402

MODULES = {"ugatit": ugatit, "attentiongan": attentiongan, "uag": uag, "camconsistency": camconsistency,
           "amgan": amgan}
SCRIPTS = list(TINY)
TWO_DOMAIN = ["ugatit", "attentiongan", "uag"]


def tensors_finite(path):
    state = torch.load(path, weights_only=True)
    return all(t.isfinite().all() for net in state["models"].values() for t in net.values() if t.is_floating_point())


def write_folder_dataset(root, n=3, broken=()):
    """A two-domain folder dataset of small random images; the names in `broken` are not images."""
    for split in ("trainA", "trainB", "testA", "testB"):
        os.makedirs(root / split, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                root / split / f"{i}.png")
        for name in broken:
            (root / split / name).write_bytes(b"\x89PNG\r\n\x1a\n not an image")


# ---------------------------------------------------------------------------------------------
# 1. The NaN guard checks what it saves
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_divergent_update_on_a_save_step_never_replaces_a_finite_checkpoint(tmp_path, data_root, script,
                                                                             monkeypatch):
    out = str(tmp_path / "run")
    MODULES[script].main(["--iters", "2", "--out", out, "--data_root", data_root, *TINY[script], *QUIET])
    with open(os.path.join(out, "ckpt.pt"), "rb") as f:
        finite_checkpoint = f.read()
    adam_step = torch.optim.Adam.step

    def diverging_step(self, *args, **kwargs):  # the update makes a weight infinite; the losses before it were finite
        result = adam_step(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", diverging_step)
    with pytest.raises(common.Diverged, match="keeps the last checkpoint|last good checkpoint"):  # a save step
        MODULES[script].main(["--out", out, "--resume", "--iters", "4", "--save_every", "1", "--log_every", "4",
                              "--data_root", data_root, "--workers", "0"])
    with open(os.path.join(out, "ckpt.pt"), "rb") as f:
        assert f.read() == finite_checkpoint  # the step-2 checkpoint, untouched


def test_non_finite_weights_are_never_saved(tmp_path):
    net, path = torch.nn.Linear(3, 2), str(tmp_path / "ckpt.pt")
    opt = torch.optim.Adam(net.parameters())
    common.save_checkpoint(path, "ugatit", {}, 1, {"net": net}, {"opt": opt})
    before = open(path, "rb").read()
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    with pytest.raises(common.Diverged, match="weights of net became NaN/Inf by step 2; .* keeps the last checkpoint"):
        common.save_checkpoint(path, "ugatit", {}, 2, {"net": net}, {"opt": opt})
    assert open(path, "rb").read() == before
    with pytest.raises(common.Diverged, match="no checkpoint was saved"):
        common.save_checkpoint(str(tmp_path / "new.pt"), "ugatit", {}, 2, {"net": net}, {"opt": opt})


def test_a_run_that_diverges_before_its_first_save_says_no_checkpoint_exists(tmp_path, data_root):
    out = tmp_path / "run"
    r = run_main("ugatit.py", "--out", str(out), "--iters", "30", "--lr", "1e30", "--save_every", "100",
                   "--data_root", data_root, *TINY["ugatit"], *QUIET)
    assert r.returncode == 1 and "no checkpoint was saved" in r.stderr and not (out / "ckpt.pt").exists(), r.stderr


# ---------------------------------------------------------------------------------------------
# 2 and 11. Unreadable images: skipped and counted in training (also across a resume), an error at test time
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", TWO_DOMAIN)
def test_a_folder_without_one_readable_image_exits_2(tmp_path, script):
    root = tmp_path / "data"
    write_folder_dataset(root, n=0, broken=["a.png", "b.jpg"])
    r = run_main(f"{script}.py", "--data", str(root), "--out", str(tmp_path / "run"), "--iters", "2",
                   *TINY[script], "--workers", "1")
    assert r.returncode == 2 and "none of the 2 images" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_unreadable_test_image_or_input_is_named_and_nothing_is_replaced(tmp_path):
    root = tmp_path / "data"
    write_folder_dataset(root, broken=["zz.png"])
    out = str(tmp_path / "run")
    ugatit.main(["--data", str(root), "--out", out, "--iters", "2", *TINY["ugatit"], *QUIET])
    for argv in (["--phase", "test"], ["--phase", "test", "--input", str(root / "testA" / "zz.png")]):
        r = run_main("ugatit.py", "--out", out, "--workers", "0", *argv)
        assert r.returncode == 2 and "zz.png" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_skipped_images_are_counted_on_across_a_resume(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_folder_dataset(root, n=1, broken=["x.png", "y.png", "z.png"])
    out = str(tmp_path / "run")
    ugatit.main(["--data", str(root), "--out", out, "--iters", "6", "--stop_at", "3", *TINY["ugatit"], *QUIET])
    monkeypatch.setitem(common._stats, "skipped", 0)  # as in a new process: nothing in memory
    r = run_main("ugatit.py", "--out", out, "--resume", "--workers", "0")
    assert r.returncode == 0, r.stderr
    with open(os.path.join(out, "log.csv")) as f:
        skipped = [int(row["skipped_images"]) for row in csv.DictReader(f)]
    assert len(skipped) == 6 and skipped[2] > 0 and skipped == sorted(skipped)  # counted on, never back to 0


# ---------------------------------------------------------------------------------------------
# 3, 4, 5. Flags out of range, an --out that cannot be a folder, attribute datasets named wrongly
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script, flag, value", [
    ("ugatit", "--batch_size", "0"), ("ugatit", "--lr", "-1"), ("ugatit", "--lr", "inf"), ("ugatit", "--lr", "1e39"),
    ("ugatit", "--workers", "-1"),
    ("ugatit", "--log_every", "0"), ("ugatit", "--seed", "-1"), ("ugatit", "--iters", "0"), ("ugatit", "--iters", "-1"),
    ("ugatit", "--stop_at", "0"), ("attentiongan", "--pool_size", "-1"), ("uag", "--epochs", "0"),
    ("camconsistency", "--n_critic", "0"), ("amgan", "--cls_iters", "0"), ("amgan", "--lambda_a", "nan"),
])
def test_numeric_flags_out_of_range_exit_2(tmp_path, script, flag, value):
    with pytest.raises(common.UserError, match=f"--{flag[2:]} .* out of range"):
        MODULES[script].main(["--out", str(tmp_path / "run"), flag, value])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_out_that_cannot_be_a_folder_exits_2(tmp_path, data_root, script):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(common.UserError, match="cannot create the folder"):
        MODULES[script].main(["--out", str(tmp_path / "taken"), "--iters", "1", "--data_root", data_root,
                              *TINY[script], *QUIET])
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.parametrize("script", ["amgan", "camconsistency"])
def test_attribute_scripts_explain_their_own_layouts(tmp_path, script):
    (tmp_path / "labels.csv").write_text("filename,color\n")
    for data, message in ((tmp_path / "missing", "is not a dataset folder"),
                          (tmp_path / "labels.csv", "is a file, not a dataset folder")):
        with pytest.raises(common.UserError, match=message) as e:
            MODULES[script].main(["--data", str(data), "--out", str(tmp_path / "run")])
        assert "labels.csv" in str(e.value) and "trainA" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# 6, 7. 16-bit and rotated images; attribute tables in other encodings
# ---------------------------------------------------------------------------------------------


def test_sixteen_bit_grey_is_scaled_and_exif_orientation_applied(tmp_path):
    grey = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(grey).save(tmp_path / "g16.png")
    image = np.asarray(common.load_image(tmp_path / "g16.png"))
    assert image.shape == (32, 32, 3) and abs(image.mean() - grey.mean() / 257) < 1  # not clipped to white
    photo = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = photo.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    photo.save(tmp_path / "portrait.jpg", exif=exif)
    assert common.load_image(tmp_path / "portrait.jpg").size == (20, 40)
    for mode in ("L", "RGBA", "P"):  # the conversions that already worked
        Image.new(mode, (8, 8)).save(tmp_path / f"{mode}.png")
        assert common.load_image(tmp_path / f"{mode}.png").mode == "RGB"


def test_attribute_tables_read_a_bom_and_name_the_line_of_a_non_utf8_byte(tmp_path):
    (tmp_path / "labels.csv").write_bytes("\ufefffilename,color\na.png,red\nb.png,blue\n".encode())
    names, values, files, _ = common.read_labels_csv(str(tmp_path / "labels.csv"))
    assert names == ["color"] and files == ["a.png", "b.png"]
    (tmp_path / "labels.csv").write_bytes(b"filename,color\na.png,red\nb.png,r\xe9d\n")
    with pytest.raises(common.UserError, match="line 3: byte 0xe9"):
        common.read_labels_csv(str(tmp_path / "labels.csv"))
    (tmp_path / "list_attr_celeba.txt").write_bytes(b"1\nMale\n\xff.jpg 1\n")
    with pytest.raises(common.UserError, match="line 3: byte 0xff"):
        common.read_celeba_attributes(str(tmp_path / "list_attr_celeba.txt"))


# ---------------------------------------------------------------------------------------------
# 8. AMGAN: an attribute with one value, Ctrl-C while the attribute CNN trains
# ---------------------------------------------------------------------------------------------


def test_an_attribute_with_a_single_value_stops_before_any_training(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    rows = [f"{i}.png,red,{['long', 'short'][i % 2]}" for i in range(20)]
    (tmp_path / "data" / "labels.csv").write_text("filename,color,sleeve\n" + "\n".join(rows) + "\n")
    with pytest.raises(common.UserError, match="color takes a single value"):
        amgan.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--attrs", "color,sleeve"])
    assert not (tmp_path / "run").exists()


def test_ctrl_c_in_this_process_while_the_attribute_cnn_trains_saves_it_and_the_next_run_continues(
        tmp_path, data_root, monkeypatch):
    """SIGINT raised during the CNN's step 3 (as a terminal's Ctrl-C): <classifier>.partial at step 3, exit 130; the
    same command continues from it."""
    argv = ["--phase", "classifier", "--out", str(tmp_path / "run"), "--data_root", data_root, "--img_size", "32",
            "--cls_batch_size", "8", "--workers", "0"]
    forward = amgan.AttributeCNN.forward
    calls = []

    def interrupted_at_step_3(self, x):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return forward(self, x)

    monkeypatch.setattr(amgan.AttributeCNN, "forward", interrupted_at_step_3)
    handlers = [signal.getsignal(s) for s in common.STOP_SIGNALS]  # SIG_IGN for SIGINT in a background job
    r = run_main("amgan.py", *argv, "--cls_iters", "100")
    partial = tmp_path / "run" / "classifier.pt.partial"
    assert r.returncode == 130 and partial.exists() and "at step 3 is saved" in r.stderr, r.stderr
    assert [signal.getsignal(s) for s in common.STOP_SIGNALS] == handlers  # given back
    monkeypatch.setattr(amgan.AttributeCNN, "forward", forward)
    r = run_main("amgan.py", *argv, "--cls_iters", "5")
    assert r.returncode == 0 and "from step 3" in r.stdout, r.stderr
    assert (tmp_path / "run" / "classifier.pt").exists() and not partial.exists()


@pytest.mark.slow
def test_ctrl_c_while_the_attribute_cnn_trains_saves_it_and_the_next_run_continues(tmp_path, data_root):
    argv = [sys.executable, os.path.join(ROOT, "amgan.py"), "--phase", "classifier", "--out", str(tmp_path / "run"),
            "--data_root", data_root, "--img_size", "32", "--cls_batch_size", "8", "--workers", "0"]
    p = subprocess.Popen([*argv, "--cls_iters", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(15)  # rendering the toy data, then training
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    partial = tmp_path / "run" / "classifier.pt.partial"
    assert p.returncode == 130 and partial.exists() and "Traceback" not in err, err
    step = torch.load(partial, weights_only=True)["step"]
    r = subprocess.run([*argv, "--cls_iters", str(step + 2)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"from step {step}" in r.stdout, r.stderr
    assert (tmp_path / "run" / "classifier.pt").exists() and not partial.exists()


# ---------------------------------------------------------------------------------------------
# 9, 10, 11. Damaged checkpoints, a full disk, killed saves, a log without a checkpoint
# ---------------------------------------------------------------------------------------------


def test_damaged_or_foreign_checkpoints_are_named_without_torch_advice(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    torch.save({"x": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a module: not weights-only data
    torch.save({"script": "ugatit", "version": common.CKPT_VERSION, "args": {}}, tmp_path / "partial.pt")
    for name, message in (("junk.pt", "not a checkpoint of this project"), ("pickled.pt", "not a checkpoint"),
                          ("partial.pt", "lacks extra, models, optimizers, rng, step")):
        r = run_main("ugatit.py", "--phase", "eval", "--ckpt", str(tmp_path / name), "--out", str(tmp_path))
        assert r.returncode == 2 and message in r.stderr and "weights_only" not in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    net, path = torch.nn.Linear(3, 2), str(tmp_path / "ckpt.pt")
    opt = torch.optim.Adam(net.parameters())
    common.save_checkpoint(path, "ugatit", {}, 1, {"net": net}, {"opt": opt})
    before = open(path, "rb").read()

    def full_disk(obj, file):
        open(file, "wb").write(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(common.UserError, match="MB free.*previous checkpoint is kept"):
        common.save_checkpoint(path, "ugatit", {}, 2, {"net": net}, {"opt": opt})
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["ckpt.pt"]


def test_a_new_run_removes_stale_temp_files_and_refuses_a_folder_with_a_log(tmp_path, data_root):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt.pt.tmp4242").write_bytes(b"killed mid-save")
    ugatit.main(["--out", str(out), "--iters", "1", "--data_root", data_root, *TINY["ugatit"], *QUIET])
    assert not glob.glob(str(out / "ckpt.pt.tmp*"))
    (out / "ckpt.pt").unlink()  # a log of an earlier run, but no checkpoint
    log = (out / "log.csv").read_text()
    with pytest.raises(common.UserError, match="log.csv already exists"):
        ugatit.main(["--out", str(out), "--iters", "1", "--data_root", data_root, *TINY["ugatit"], *QUIET])
    assert (out / "log.csv").read_text() == log


# ---------------------------------------------------------------------------------------------
# 12. Two runs, a scheduler, a flipped bit: one training per folder, SIGTERM saves, CRCs checked
# ---------------------------------------------------------------------------------------------


def hold_lock(out):
    """A real process that holds <out>/.lock the way a running training does (OS lock, its line in the file)."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import common; common.lock_run_folder(sys.argv[2]); "
            "print('locked', flush=True); time.sleep(600)")
    os.makedirs(out, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", code, ROOT, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_training_in_a_locked_folder_exits_2_naming_the_first_and_a_dead_lock_is_taken(
        tmp_path, data_root, trained):
    out = copy_run(trained("ugatit"), tmp_path / "run")
    before = {name: open(os.path.join(out, name), "rb").read() for name in ("ckpt.pt", "args.json", "log.csv")}
    holder = hold_lock(out)
    (tmp_path / "run" / "ckpt.pt.tmp77").write_bytes(b"the running training's save in progress")
    try:
        for argv in (["--resume", "--iters", "4"], ["--iters", "4"]):  # the same command resumed, or a fresh run
            r = run_main("ugatit.py", "--out", out, "--data_root", data_root, "--workers", "0", *argv)
            assert r.returncode == 2 and f"process {holder.pid} on" in r.stderr and "still running" in r.stderr, r
        r = run_main("ugatit.py", "--out", str(tmp_path / "other"), "--data_root", data_root, "--iters", "1",
                     *TINY["ugatit"], *QUIET)
        assert r.returncode == 0, r.stderr  # another folder is free
    finally:
        holder.kill()  # killed: its lock goes with it
        holder.wait()
    assert {name: open(os.path.join(out, name), "rb").read() for name in before} == before
    assert (tmp_path / "run" / "ckpt.pt.tmp77").exists()  # the refused runs deleted nothing
    r = run_main("ugatit.py", "--out", out, "--data_root", data_root, "--workers", "0", "--resume", "--iters", "4")
    assert r.returncode == 0, r.stderr
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"] == 4
    assert f"process {os.getpid()} on" in (tmp_path / "run" / ".lock").read_text()


def start_training(script, out, data_root, *flags, wait_for="log.csv", workers="0", **popen):
    """A real training process of `script` (tiny networks, 100,000 steps, a log row per step) into the folder `out`,
    returned once <out>/<wait_for> exists (log.csv: it trains) -> (process, its command without --iters)."""
    argv = [sys.executable, os.path.join(ROOT, f"{script}.py"), "--out", str(out), "--data_root", data_root,
            *TINY[script], "--workers", workers, "--log_every", "1", "--sample_every", "0"]
    p = subprocess.Popen([*argv, "--iters", "100000", *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, **popen)
    deadline = time.time() + 120
    while not (out / wait_for).exists() and time.time() < deadline:
        time.sleep(0.2)
    return p, argv


@pytest.mark.slow
def test_two_real_trainings_started_into_one_folder_only_the_first_runs(tmp_path, data_root):
    out = tmp_path / "run"
    first, argv = start_training("ugatit", out, data_root, "--save_every", "5", wait_for="ckpt.pt")  # it has saved
    second = subprocess.run([*argv, "--iters", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    resumed = subprocess.run([*argv, "--iters", "3", "--resume"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    for r in (second, resumed):
        assert r.returncode == 2 and f"process {first.pid} on" in r.stderr, r.stderr
    assert first.returncode == 143 and "Traceback" not in err and "could not write" not in err, err
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] >= 5


def test_sigterm_in_this_process_saves_a_checkpoint_and_exits_143(tmp_path, data_root, monkeypatch):
    """SIGTERM during step 3 (what a scheduler sends before a kill): the step finishes, its checkpoint is saved, exit
    143; --resume continues; the handlers are given back."""
    out = str(tmp_path / "run")
    train_step = uag.train_step
    steps = []

    def terminated_at_step_3(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            signal.raise_signal(signal.SIGTERM)
        return train_step(*args, **kwargs)

    monkeypatch.setattr(uag, "train_step", terminated_at_step_3)
    handlers = [signal.getsignal(s) for s in common.STOP_SIGNALS]
    r = run_main("uag.py", "--iters", "100", "--out", out, "--data_root", data_root, *TINY["uag"], *QUIET,
                 "--save_every", "100")
    assert r.returncode == 143 and "checkpoint at step 3" in r.stderr and "--resume" in r.stderr, r.stderr
    assert torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"] == 3
    assert [signal.getsignal(s) for s in common.STOP_SIGNALS] == handlers
    monkeypatch.setattr(uag, "train_step", train_step)
    r = run_main("uag.py", "--out", out, "--resume", "--iters", "5", "--data_root", data_root, "--workers", "0")
    assert r.returncode == 0 and torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["step"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGINT, 130)])
def test_a_signal_to_every_process_of_a_run_with_workers_saves_and_exits(tmp_path, data_root, signum, code):
    """Ctrl-C in a terminal, or SIGTERM from SLURM, reaches the DataLoader workers too; they ignore it, the main
    process finishes its step, saves and stops them: the exit code of the signal, a checkpoint, no traceback."""
    out = tmp_path / "run"
    p, _ = start_training("attentiongan", out, data_root, "--save_every", "100000", workers="2",
                          start_new_session=True)  # its own process group
    time.sleep(np.random.default_rng().uniform(0, 1))  # anywhere in a step
    os.killpg(p.pid, signum)  # the whole process group, as a terminal or a scheduler does
    _, err = p.communicate(timeout=120)
    assert p.returncode == code and "Traceback" not in err and "continue with --resume" in err, err
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] >= 1


@pytest.mark.slow
def test_sigterm_to_a_real_training_saves_a_checkpoint_that_resumes(tmp_path, data_root):
    out = tmp_path / "run"
    p, argv = start_training("camconsistency", out, data_root, "--save_every", "10000")
    p.terminate()  # SIGTERM
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "continue with --resume" in err and "Traceback" not in err, err
    step = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    r = subprocess.run([*argv, "--resume", "--iters", str(step + 2)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and torch.load(out / "ckpt.pt", weights_only=True)["step"] == step + 2, r.stderr


def flip_bytes_in_a_weight(path, count=64):
    """Flip `count` bytes in the middle of the largest tensor record of a torch.save zip file."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        record = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(record.header_offset)
        local_header = f.read(30)
        start = record.header_offset + 30 + int.from_bytes(local_header[26:28], "little") + \
            int.from_bytes(local_header[28:30], "little") + record.file_size // 2
        f.seek(start)
        data = f.read(count)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))


def test_a_checkpoint_with_flipped_bytes_is_refused_and_kept(tmp_path, data_root, trained):
    out = copy_run(trained("attentiongan"), tmp_path / "run")
    path = os.path.join(out, "ckpt.pt")
    torch.load(path, weights_only=True)  # torch.load itself does not notice what follows
    flip_bytes_in_a_weight(path)
    assert torch.load(path, weights_only=True)["step"] == 2
    damaged = open(path, "rb").read()
    for argv in (["--phase", "test"], ["--phase", "eval"], ["--resume", "--iters", "4"]):
        r = run_main("attentiongan.py", "--out", out, "--data_root", data_root, "--workers", "0", *argv)
        assert r.returncode == 2 and f"{path} is damaged" in r.stderr and "CRC-32" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert open(path, "rb").read() == damaged and not os.path.exists(os.path.join(out, "test"))


# ---------------------------------------------------------------------------------------------
# 13. Files named alike, float images, contradicting labels, --out inside the data
# ---------------------------------------------------------------------------------------------


def test_an_out_inside_the_dataset_is_refused_before_anything_is_written(tmp_path):
    root = tmp_path / "data"
    write_folder_dataset(root, n=2)
    files = sorted(glob.glob(str(root / "**" / "*"), recursive=True))
    for out in (root / "trainA" / "run", root / "run"):
        r = run_main("ugatit.py", "--data", str(root), "--out", str(out), "--iters", "2", *TINY["ugatit"], *QUIET)
        assert r.returncode == 2 and "inside the dataset" in r.stderr and "--out" in r.stderr, r.stderr
    assert sorted(glob.glob(str(root / "**" / "*"), recursive=True)) == files
    r = run_main("ugatit.py", "--data", str(root), "--out", str(tmp_path / "data_run"), "--iters", "1",
                 *TINY["ugatit"], *QUIET)  # a sibling whose name starts like the data folder's is outside it
    assert r.returncode == 0, r.stderr


def test_inputs_named_alike_get_outputs_named_apart(tmp_path, trained):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, colour in (("x.jpg", (255, 0, 0)), ("x.png", (0, 0, 255)), ("y.png", (0, 255, 0))):
        Image.new("RGB", (32, 32), colour).save(folder / name)
    out = tmp_path / "test_run"
    r = run_main("ugatit.py", "--phase", "test", "--ckpt", os.path.join(trained("ugatit"), "ckpt.pt"), "--out",
                 str(out), "--input", str(folder), "--workers", "0", "--direction", "a2b")
    assert r.returncode == 0, r.stderr
    written = sorted(os.listdir(out / "test" / "input" / "A"))
    assert written == ["x.jpg.png", "x.png.png", "y.png"]  # one output per input, y keeps its plain name
    red = np.asarray(Image.open(out / "test" / "input" / "A" / "x.jpg.png"))
    assert red[..., 0].mean() > 200 and red[..., 2].mean() < 50


def test_a_float_tiff_in_0_1_is_scaled_not_black(tmp_path):
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(ramp, mode="F").save(tmp_path / "f.tif")
    image = np.asarray(common.load_image(tmp_path / "f.tif"))
    assert abs(image.mean() - 127.5) < 1 and image.max() == 255


def test_a_file_listed_twice_with_different_labels_is_refused_naming_both_lines(tmp_path):
    (tmp_path / "labels.csv").write_text("filename,color\na.png,red\nb.png,blue\na.png,red\nb.png,red\n")
    with pytest.raises(common.UserError, match="b.png twice with different labels, on lines 3 and 5"):
        common.read_labels_csv(str(tmp_path / "labels.csv"))
    (tmp_path / "list_attr_celeba.txt").write_text("3\nMale Young\n1.jpg 1 -1\n2.jpg 1 1\n1.jpg  -1 -1\n")
    with pytest.raises(common.UserError, match="1.jpg twice with different labels, on lines 3 and 5"):
        common.read_celeba_attributes(str(tmp_path / "list_attr_celeba.txt"))
    (tmp_path / "list_attr_celeba.txt").write_text("2\nMale Young\n1.jpg 1 -1\n1.jpg 1 -1\n")  # the same twice
    assert common.read_celeba_attributes(str(tmp_path / "list_attr_celeba.txt"))[1] == ["1.jpg", "1.jpg"]


# ---------------------------------------------------------------------------------------------
# 14. AMGAN's attribute CNN files, a full disk at test time, exports
# ---------------------------------------------------------------------------------------------


def test_a_truncated_partial_attribute_cnn_exits_2_and_is_kept(tmp_path, data_root):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"step": 3, "cnn": {"w": torch.zeros(1000)}, "opt": {}}, out / "classifier.pt.partial")
    truncated = (out / "classifier.pt.partial").read_bytes()[:700]
    (out / "classifier.pt.partial").write_bytes(truncated)
    r = run_main("amgan.py", "--phase", "classifier", "--out", str(out), "--data_root", data_root, "--img_size", "32",
                 "--cls_iters", "2", "--workers", "0")
    assert r.returncode == 2 and "classifier.pt.partial" in r.stderr and "delete it" in r.stderr, r.stderr
    assert (out / "classifier.pt.partial").read_bytes() == truncated


def test_a_pickled_classifier_is_refused_in_one_line(tmp_path, trained):
    torch.save({"script": "amgan-classifier", "cnn": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    r = run_main("amgan.py", "--phase", "test", "--out", trained("amgan"), "--classifier", str(tmp_path / "pickled.pt"),
                 "--workers", "0", "--cam_as_mask")
    assert r.returncode == 2 and "pickled.pt is not a readable attribute CNN" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "weights_only" not in r.stderr


def test_a_full_disk_during_the_test_phase_exits_2_naming_the_file(tmp_path, trained, monkeypatch):
    def full_disk(tensor, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(common.torchvision.utils, "save_image", full_disk)
    r = run_main("uag.py", "--phase", "test", "--ckpt", os.path.join(trained("uag"), "ckpt.pt"), "--out",
                 str(tmp_path / "t"), "--workers", "0")
    assert r.returncode == 2 and "No space left on device" in r.stderr and ".png" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_an_export_into_a_read_only_folder_exits_2_and_keeps_the_earlier_export(tmp_path, trained, monkeypatch):
    out = copy_run(trained("ugatit"), tmp_path / "run")
    export_tool.export("ugatit", out)
    before = {f: open(f, "rb").read() for f in glob.glob(os.path.join(out, "export", "*"))}

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(out, "export", "x"))
    for target in ((torch.export, "save"), (torch, "save")):
        with monkeypatch.context() as m:
            m.setattr(*target, read_only)
            r = run_main("tools/export.py", "ugatit.py", "--out", out)
        assert r.returncode == 2 and "Permission denied" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert {f: open(f, "rb").read() for f in glob.glob(os.path.join(out, "export", "*"))} == before


def test_resuming_from_an_export_says_it_is_one(tmp_path, trained):
    out = copy_run(trained("ugatit"), tmp_path / "run")
    export_tool.export("ugatit", out)
    r = run_main("ugatit.py", "--out", str(tmp_path / "more"), "--resume", "--ckpt",
                 os.path.join(out, "export", "generators.pt"), "--iters", "4", "--workers", "0")
    assert r.returncode == 2 and "is an export" in r.stderr and os.path.join(out, "ckpt.pt") in r.stderr, r.stderr
    assert "network flags" not in r.stderr


def test_the_attribute_cnn_does_not_train_into_a_locked_folder(tmp_path, data_root):
    holder = hold_lock(tmp_path / "run")
    try:
        r = run_main("amgan.py", "--phase", "classifier", "--out", str(tmp_path / "run"), "--data_root", data_root,
                     "--img_size", "32", "--cls_iters", "2", "--workers", "0")
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2 and f"process {holder.pid} on" in r.stderr, r.stderr
    assert os.listdir(tmp_path / "run") == [".lock"]


def test_a_disk_without_file_locks_warns_and_trains(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")  # Unix

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot lock .*No locks available.*nothing keeps a second training out"):
        common.lock_run_folder(str(tmp_path))
    assert str(tmp_path) not in common._locks
