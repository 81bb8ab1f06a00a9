"""The command line's errors: one line each (``error: ...``), the traceback with --debug, and
none of the noise orbax leaves behind after a failed restore. None of these trains."""

import errno
import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

from experiments import config as config_lib
from experiments import run
from experiments.tasks import translate

ROOT = pathlib.Path(__file__).parents[2]


@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty"])
def test_resume_needs_a_run(made, tmp_path):
    workdir = tmp_path / "run"
    if made:
        workdir.mkdir()
    with pytest.raises(SystemExit, match=r"^error: .*/run holds no run to resume; drop --resume"):
        run.main(["translate", "--workdir", str(workdir), "--resume"])
    assert workdir.exists() == made


def test_resume_without_its_config_names_the_missing_file(tmp_path):
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"--resume: .*/config.json is missing, but .* holds"):
        run.main(["translate", "--workdir", str(tmp_path), "--resume"])


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=r"^error: --workdir .*/file is a file, not a directory"):
        run.main(["translate", "--preset", "smoke", "--workdir", str(tmp_path / "file")])


def test_a_full_disk_is_one_line(tmp_path, monkeypatch):
    def full(config, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    # The task's setup is not what is tested: its data would take seconds to read.
    monkeypatch.setattr(
        translate, "setup", lambda config, workdir: types.SimpleNamespace(config=config)
    )
    monkeypatch.setattr(config_lib, "save", full)
    with pytest.raises(SystemExit, match=r"^error: cannot write the run directory .*No space left"):
        run.main(["translate", "--preset", "smoke", "--workdir", str(tmp_path)])


@pytest.mark.parametrize("how", ["--debug", "ZOO_DEBUG=1"])
def test_debug_shows_the_traceback_of_a_user_error(how, tmp_path, monkeypatch):
    argv = ["translate", "--set", "train.steps=many", "--workdir", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"^error: train.steps: expected int, got 'many'"):
        run.main(argv)
    if how == "--debug":
        argv.append("--debug")
    else:
        monkeypatch.setenv("ZOO_DEBUG", "1")
    with pytest.raises(ValueError, match=r"train.steps: expected int") as raised:
        run.main(argv)
    assert any(str(entry.path).endswith("config.py") for entry in raised.traceback)


def _raised_in(filename: str, error: BaseException) -> BaseException:
    """``error`` with a traceback through code that claims to live in ``filename``."""
    code = compile("def fail(error):\n    raise error\n", filename, "exec")
    scope: dict = {}
    exec(code, scope)
    try:
        scope["fail"](error)
    except BaseException as raised:
        return raised
    raise AssertionError("unreachable")


def test_only_what_a_failed_checkpoint_read_leaves_behind_is_hidden():
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py")
    assert run._from_checkpointing(RuntimeError("Event loop is closed"))
    assert run._from_checkpointing(_raised_in(orbax_file, ValueError("shape (32,) vs (16,)")))
    wrapped = ValueError("read failed")
    wrapped.__cause__ = _raised_in(orbax_file, OSError("tensorstore"))
    assert run._from_checkpointing(wrapped)
    assert not run._from_checkpointing(_raised_in(__file__, RuntimeError("a bug")))
    assert not run._from_checkpointing(RuntimeError("Event loop is running"))
    assert not run._from_checkpointing(None)


@pytest.mark.slow
def test_resuming_with_another_model_size_prints_only_the_error(tmp_path):
    """A model_dim changed in config.json: one CheckpointError, not orbax's asyncio noise."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ZOO_DEBUG", None)
    command = [sys.executable, "-m", "experiments.run", "lm", "--workdir", str(tmp_path)]
    subprocess.run(
        [*command, "--preset", "smoke", "--steps", "2"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model"]["model_dim"] *= 2
    (tmp_path / "config.json").write_text(json.dumps(saved))
    result = subprocess.run(
        [*command, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: no intact checkpoint in "), result.stderr
    assert all(line.startswith("  ") for line in lines[1:]), result.stderr
    assert "Event loop is closed" not in result.stderr
