"""The harness under abuse (issue 17): paths from config values stay inside the output folder,
damaged files and bad YAML give one-line errors naming the file, killed checkpoint saves leave
nothing behind, runs without a training step are refused, one run per output folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from svdlib.experiments import checkpoint as ckpt
from svdlib.experiments.config import ExperimentConfig, expand_sweep, load_config
from svdlib.experiments.metrics import collect_summaries, read_json
from svdlib.experiments.train import main, run_sweep, train

QUICK = "profiles:\n  quick: {epochs: 1, train_subset: 64, test_subset: 32, batch_size: 32}\n"
TINY = "name: cli\nkind: zca\nwidth: 4\nstem_width: 8\ngroup_size: 8\nimage_size: 8\n"
RUNTIME = ["--set", "progress=false", "num_threads=1", "max_steps_per_epoch=1"]


def tiny(**kw) -> ExperimentConfig:
    base = dict(name="tiny", kind="zca", width=4, stem_width=8, group_size=8, image_size=8,
                batch_size=32, epochs=1, train_subset=64, test_subset=32, max_steps_per_epoch=1,
                progress=False, num_threads=1)
    return ExperimentConfig(**{**base, **kw})


def _config_file(tmp_path, text=TINY + QUICK, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _cli(capsys, *args) -> tuple[int, str]:
    """Exit code and stderr of the training CLI; a Python traceback fails the test."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _tree(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


# --------------------------------------------------------------------------- item 6: sweep paths
@pytest.mark.parametrize("value", ["../../../X", "a/b", "..\\evil", "/abs"])
def test_sweep_values_that_are_not_a_plain_folder_name_are_refused_at_load(tmp_path, value):
    cfg_path = _config_file(tmp_path)
    with pytest.raises(ValueError, match=r"sweep value .*description.* not usable as a folder name"):
        load_config(cfg_path, overrides={"sweep": {"description": ["ok", value]}})


def test_a_sweep_cannot_write_outside_the_output_folder(tmp_path, capsys):
    cfg_path = _config_file(tmp_path)
    out = tmp_path / "deep" / "er" / "out"
    code, err = _cli(capsys, "--config", cfg_path, "--out", str(out), "--sweep", *RUNTIME,
                     'sweep={description: ["../../../X"]}')
    assert code == 2 and "description" in err and "folder name" in err
    assert _tree(tmp_path) == {"c.yaml"}                  # nothing written anywhere


def test_run_sweep_refuses_a_run_folder_that_resolves_outside_the_output_folder(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "seed=0").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match=r"seed=0.*resolves to .*elsewhere.* outside"):
        run_sweep(tiny(sweep={"seed": [0]}), out)
    assert os.listdir(elsewhere) == []


def test_expand_sweep_suffixes_are_single_folder_names():
    cfg = tiny(sweep={"remedy_options": [{"degree": 9}], "lr_milestones": [[1, 2]], "seed": [0, 1]})
    for suffix, _ in expand_sweep(cfg):
        assert os.sep not in suffix and "/" not in suffix and suffix not in ("", ".", "..")


# --------------------------------------------------------------------------- item 7: bad files
def _interrupted_run(tmp_path) -> str:
    out = str(tmp_path / "run")
    train(tiny(epochs=2), out, stop_after_epoch=1)
    assert os.path.isfile(os.path.join(out, "checkpoint.pt"))
    return out


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "foreign"])
def test_a_damaged_checkpoint_is_an_error_naming_the_file(tmp_path, capsys, damage):
    out = _interrupted_run(tmp_path)
    path = os.path.join(out, "checkpoint.pt")
    data = open(path, "rb").read()
    if damage == "foreign":                               # a valid torch file, not a checkpoint
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        with open(path, "wb") as fh:
            fh.write({"truncated": data[: len(data) // 2], "empty": b"",
                      "garbage": b"not a checkpoint\n" * 10}[damage])
    with pytest.raises(ValueError, match=r"checkpoint\.pt"):
        ckpt.load_checkpoint(path) if damage != "foreign" else train(tiny(epochs=2), out, resume=True)
    cfg_path = _config_file(tmp_path, TINY + QUICK.replace("epochs: 1", "epochs: 2"))
    code, err = _cli(capsys, "--config", cfg_path, "--out", out, "--resume", *RUNTIME)
    assert code == 2 and path in err and "--overwrite" in err
    assert err.count("\n") == 1                           # one line, no traceback


@pytest.mark.parametrize("text,expected", [
    ("name: [unclosed\n", r"could not parse config file .*bad\.yaml"),
    ("name: !!python/object/apply:os.system [\"echo hi\"]\n",
     r"config file .*bad\.yaml.*python/object/apply:os\.system"),
    ("\t- tab\n", r"could not parse config file .*bad\.yaml"),
])
def test_malformed_yaml_is_an_error_naming_the_file(tmp_path, capsys, text, expected):
    path = _config_file(tmp_path, text, name="bad.yaml")
    with pytest.raises(ValueError, match=expected):
        load_config(path, profile="paper")
    code, err = _cli(capsys, "--config", path, "--out", str(tmp_path / "r"), "--profile", "paper")
    assert code == 2 and err.startswith("error: ") and "bad.yaml" in err
    assert not (tmp_path / "r").exists()


def test_a_truncated_summary_is_an_error_naming_the_file(tmp_path, capsys):
    out = str(tmp_path / "run")
    train(tiny(), out)
    path = os.path.join(out, "summary.json")
    text = open(path).read()
    with open(path, "w") as fh:
        fh.write(text[: len(text) // 2])
    with pytest.raises(ValueError, match=rf"{path}.*not valid JSON"):
        read_json(path)
    with pytest.raises(ValueError, match=rf"{path}"):
        collect_summaries(tmp_path)
    code, err = _cli(capsys, "--config", _config_file(tmp_path), "--out", out, "--resume", *RUNTIME)
    assert code == 2 and path in err


@pytest.mark.parametrize("where,text", [
    ("top level", "epochs: two\n" + QUICK),                          # a value the profile overrides
    ("profiles.quick", "profiles:\n  quick: {epochs: two}\n"),
    ("profiles.paper", "profiles:\n  quick: {epochs: 1}\n  paper: {epochs: two}\n"),
])
def test_every_value_in_a_file_is_type_checked_naming_field_section_and_file(tmp_path, where, text):
    path = _config_file(tmp_path, TINY + text, name="typed.yaml")
    with pytest.raises(TypeError, match=rf"epochs must be int, got 'two' \(str\) \({where} of "
                                        rf".*typed\.yaml\)"):
        load_config(path, profile="quick")


def test_a_base_file_value_is_named_with_the_base_file(tmp_path):
    _config_file(tmp_path, "lr: fast\n", name="base.yaml")
    path = _config_file(tmp_path, "base: base.yaml\n" + TINY + "lr: 0.1\n" + QUICK, name="child.yaml")
    with pytest.raises(TypeError, match=r"lr must be float, got 'fast' \(str\) \(top level of .*base\.yaml\)"):
        load_config(path)


# --------------------------------------------------------------------------- item 8: harness edges
_KILLED_SAVE = """
import os, signal, sys, torch
from svdlib.experiments import checkpoint

def half_written(obj, f, *args, **kwargs):
    data = b"partial checkpoint bytes"
    if isinstance(f, (str, bytes, os.PathLike)):
        with open(f, "wb") as fh:
            fh.write(data)
    else:
        f.write(data)
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)             # killed in the middle of the save

torch.save = half_written
checkpoint.save_checkpoint(sys.argv[1], {"x": torch.zeros(3)})
"""


def _killed_save(path) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(path)],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -signal.SIGKILL


def _temporaries(directory) -> list[str]:
    return sorted(f for f in os.listdir(directory) if f not in ("checkpoint.pt", "metrics.jsonl",
                                                                 "config.yaml", "summary.json"))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_temporaries_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _killed_save(path)
    first = _temporaries(tmp_path)
    assert len(first) == 1 and not path.exists()          # what a kill leaves behind
    _killed_save(path)                                    # a save removes it, then is killed too
    second = _temporaries(tmp_path)
    assert len(second) == 1 and second != first
    (tmp_path / "notes.txt").write_text("not ours")
    ckpt.save_checkpoint(path, {"x": torch.ones(3)})
    assert _temporaries(tmp_path) == ["notes.txt"]
    assert torch.equal(ckpt.load_checkpoint(path)["x"], torch.ones(3))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_temporaries_of_killed_saves_are_removed_on_resume(tmp_path):
    out = _interrupted_run(tmp_path)
    _killed_save(os.path.join(out, "checkpoint.pt"))
    assert _temporaries(out)
    summary = train(tiny(epochs=2), out, resume=True)
    assert summary["status"] == "finished" and _temporaries(out) == []


def test_save_checkpoint_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if _is_dir_fd(fd) else "file"
        events.append(f"fsync {kind}")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ckpt.save_checkpoint(tmp_path / "checkpoint.pt", {"x": torch.zeros(2)})
    expected = ["fsync file", "replace"] + (["fsync dir"] if os.name == "posix" else [])
    assert events == expected


def _is_dir_fd(fd) -> bool:
    import stat

    return stat.S_ISDIR(os.fstat(fd).st_mode)


def test_a_run_without_a_training_step_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"no training step.*batch_size 128.*64 training images"
                                         r".*drop_last"):
        train(tiny(batch_size=128), out)
    assert not os.path.exists(out / "summary.json") and not os.path.exists(out / "config.yaml")
    code, err = _cli(capsys, "--config", _config_file(tmp_path), "--out", str(out), *RUNTIME,
                     "batch_size=100")
    assert code == 2 and "no training step" in err
    # without drop_last the smaller batch is a step: that run is fine
    assert train(tiny(batch_size=128, drop_last=False), out)["steps"] == 1


_HOLD_LOCK = """
import sys, time
from svdlib.experiments.lock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_the_same_folder_is_refused_and_a_dead_owners_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock = os.path.join(str(out), ".lock")
        with pytest.raises(FileExistsError, match=rf"{lock}.*PID {holder.pid}"):
            train(tiny(), out)
        code, err = _cli(capsys, "--config", _config_file(tmp_path), "--out", str(out), *RUNTIME)
        assert code == 2 and lock in err and f"PID {holder.pid}" in err
        assert _tree(out) == {".lock"}                     # the refused run touched nothing
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(os.path.join(str(out), ".lock"))  # a dead owner's lock stays behind
    assert train(tiny(), out)["status"] == "finished"       # ... and is taken over
    assert not os.path.exists(os.path.join(str(out), ".lock"))


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="no training step"):
        train(tiny(batch_size=128), out)
    assert not os.path.exists(out / ".lock")
    assert train(tiny(), out)["status"] == "finished"
