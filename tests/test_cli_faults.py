"""Faults and bad input of ``njetify finetune`` / ``convert`` / ``inspect`` (issue 22): a run folder that
two runs write at once, resumes without a valid run.json or checkpoint, a run killed in its first
validation, absurd options (refused before the model is loaded), njetify files given as --weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_cli import TINY, _folder, assert_user_error, run, tiny_model, two_class  # noqa: F401 - fixtures

from njetify.cli.errors import UserError
from njetify.cli.run_lock import LOCK_NAME, RunLock


ARGS = ["--data", "folder:imgs", "-b", "4", "--epochs", "1", "--out", "run"]


def test_lock_refuses_a_second_writer_and_frees_on_release(tmp_path):
    first = RunLock(tmp_path / "run").acquire()
    with pytest.raises(UserError, match=r"in use by another 'njetify finetune' \(pid \d+ on "):
        RunLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).is_file()


def test_a_running_finetune_locks_its_folder_until_its_process_ends(run, two_class, tmp_path):
    """A process holding the lock: finetune into its folder is refused (exit 2, nothing written); once
    that process is killed (-9: no clean-up) the folder is free at once."""
    code = ("import pathlib, sys, time; from njetify.cli.run_lock import RunLock; "
            "RunLock(pathlib.Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_user_error(run("finetune", two_class, *ARGS), "'run' is in use by another 'njetify finetune'",
                          f"pid {holder.pid}", "choose another --out")
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "run" / LOCK_NAME).is_file()  # left behind by the killed process, but not held
    res = run("finetune", two_class, *ARGS)
    assert res.exit_code == 0, res.stderr
    assert not (tmp_path / "run" / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_finetunes_into_one_folder_at_once(run, two_class, tmp_path):
    """Two real processes started together: one trains, the other is refused with exit 2; the
    folder holds the files of the one that ran."""
    from test_cli_runs import NJETIFY, ENV

    # a built-in model: the test-only one is registered in this process only, not in the two subprocesses
    res = run("convert", "resnet20", "--input-size", "3x16x16", "--num-classes", "2", "--out", "r20.safetensors")
    assert res.exit_code == 0, res.output
    cmds = [[str(NJETIFY), "finetune", "r20.safetensors", *ARGS, "--seed", str(seed), "--limit-val", "2"] for seed in (1, 2)]
    procs = [subprocess.Popen(c, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (rc, _) in enumerate(results) if rc == 0)
    err = " ".join(results[1 - winner][1].split())
    assert "in use by another 'njetify finetune'" in err or "already holds a run" in err, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["seed"] == winner + 1


@pytest.fixture
def stopped_run(run, two_class, tmp_path):
    res = run("finetune", two_class, *ARGS, "--max-steps", "1", "--checkpoint-every", "1")
    assert res.exit_code == 0, res.stderr
    return tmp_path / "run"


def test_resume_without_a_valid_run_json_refuses(run, two_class, stopped_run):
    history = (stopped_run / "history.json").read_bytes()
    saved = (stopped_run / "run.json").read_bytes()
    (stopped_run / "run.json").unlink()
    assert_user_error(run("finetune", two_class, "--data", "folder:imgs", "--out", "run", "--resume"),
                      "run.json is missing", "cannot continue", "--force")
    (stopped_run / "run.json").write_text("{ truncated")
    assert_user_error(run("finetune", two_class, "--data", "folder:imgs", "--out", "run", "--resume"),
                      "run.json is not readable", "--force")
    assert (stopped_run / "history.json").read_bytes() == history  # nothing trained
    (stopped_run / "run.json").write_bytes(saved)
    res = run("finetune", two_class, "--data", "folder:imgs", "--out", "run", "--resume")
    assert res.exit_code == 0, res.stderr


def test_resume_from_a_corrupt_or_foreign_checkpoint_is_a_user_error(run, two_class, stopped_run):
    settings = (stopped_run / "run.json").read_bytes()
    good = (stopped_run / "last.pt").read_bytes()
    (stopped_run / "last.pt").write_bytes(good[: len(good) // 2])
    resume = ["finetune", two_class, "--data", "folder:imgs", "--out", "run", "--resume", "--epochs", "3"]
    assert_user_error(run(*resume), "--resume", "last.pt is not a readable checkpoint", "--force")
    assert (stopped_run / "run.json").read_bytes() == settings  # a failed resume leaves run.json alone
    (stopped_run / "last.pt").write_bytes(good)
    other = run("convert", TINY, "--input-size", "3x16x16", "--num-classes", "2", "--order", "2",
                "--max-fit-error", "none", "--out", "other.safetensors")
    assert other.exit_code == 0, other.output
    assert_user_error(run("finetune", "other.safetensors", "--data", "folder:imgs", "--out", "run", "--resume"),
                      "written for another model", "two.safetensors", "--force")
    assert (stopped_run / "run.json").read_bytes() == settings


def test_a_run_killed_in_its_first_validation_can_be_started_again(run, two_class, tmp_path, monkeypatch):
    """Killed before its first checkpoint (here: in the first validation; the lock file stays behind as
    after SIGTERM): the folder holds run.json only, and the same command takes it over without --force."""
    from njetify.train import trainer

    def killed(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(trainer._Trainer, "evaluate", killed)
        assert run("finetune", two_class, *ARGS).exit_code == 130
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.json"]
    (tmp_path / "run" / LOCK_NAME).write_text("pid 999999 on a host, since a while\n")  # as SIGTERM leaves it
    assert_user_error(run("finetune", two_class, *ARGS[:-2], "--out", "run", "--resume"),
                      "stopped before its first checkpoint", "without --resume")
    res = run("finetune", two_class, *ARGS)
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "run" / "last.pt").is_file()


def test_a_folder_of_other_files_is_not_a_run(run, two_class, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model.safetensors").write_bytes((tmp_path / two_class).read_bytes())
    for extra in ([], ["--force"]):
        assert_user_error(run("finetune", two_class, "--data", "folder:imgs", "--out", "mine", *extra),
                          "holds other files (model.safetensors)", "not a run")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize("args, needles", [
    (["--lr", "nan"], ["--lr: must be a finite positive number up to 10, got nan"]),
    (["--lr", "inf"], ["--lr: must be a finite positive number", "inf"]),
    (["--lr", "0"], ["--lr: must be a finite positive number"]),
    (["--sigma-lr", "1e9"], ["--sigma-lr: must be a finite non-negative number up to 10", "1000000000"]),
    (["--sigma-lr", "nan"], ["--sigma-lr: must be a finite"]),
    (["--val-split", "0"], ["--data folder:imgs", "val_split must be a fraction in (0, 1)"]),
])
def test_absurd_options_are_refused_before_the_model_is_loaded(run, two_class, tmp_path, monkeypatch, args, needles):
    import njetify.cli.finetune_cmd as F

    def no_load(path):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(F, "load_converted", no_load)
    assert_user_error(run("finetune", two_class, *ARGS, *args), *needles)
    assert not (tmp_path / "run").exists()


def test_data_without_val_is_refused_before_the_model_is_loaded(run, two_class, tmp_path, monkeypatch):
    import njetify.cli.finetune_cmd as F

    monkeypatch.setattr(F, "load_converted", lambda path: pytest.fail("model loaded before the data was checked"))
    _folder(tmp_path / "nosplit", split=False)
    assert_user_error(run("finetune", two_class, "--data", "folder:nosplit"), "no val/ or test/", "--val-split 0.1")


def test_weights_that_are_an_njetify_file(run, two_class):
    assert_user_error(run("convert", TINY, "--num-classes", "2", "--weights", two_class, "--out", "x.safetensors"),
                      "--weights", "is a model written by njetify", "already converted",
                      f"njetify finetune/inspect/bake {two_class}")


def test_inspect_at_an_input_size_with_other_channels(run, two_class):
    assert_user_error(run("inspect", two_class, "--input-size", "1x28x28"),
                      "--input-size 1x28x28", "3 input channel(s)", "--input-size 3x28x28")
