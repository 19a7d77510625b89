"""run.py's command line: the task list, one-line errors with exit code 2, the embedded default config."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import run
from conftest import ROOT, require_shared


def run_py(*args, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_help_lists_tasks():
    proc = run_py("--help")
    assert proc.returncode == 0
    for task in run.TASKS:
        assert f"  {task} " in proc.stdout


def test_unknown_task_exits_2_with_one_line():
    proc = run_py("nonsense", "fit")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["run.py nonsense: error: unknown task 'nonsense'; choose from: "
                                                + ", ".join(run.TASKS)]


def test_task_whose_module_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(run.TASKS, "ghost", run.TaskSpec("tasks.ghost:Ghost", "data.ghost:GhostData", "x.yaml", "-"))
    assert run.main(["ghost", "fit"]) == 2
    assert "task 'ghost' is not available in this checkout: module tasks.ghost not found" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["fit", "--model.no_such_key", "1"], "unrecognized arguments: --model.no_such_key"),
    (["fit", "--trainer.max_epochs", "abc"], 'Parser key "trainer.max_epochs"'),
    (["fit", "--model.pooling", "max"], 'Parser key "model.pooling"'),
    (["frobnicate"], "unknown subcommand 'frobnicate'"),
])
def test_unknown_key_or_bad_value_exits_2_with_one_line(capsys, args, message):
    assert run.main(["classify", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and message in err[0], err


def test_default_config_trains_on_the_bundled_sample(tmp_path):
    """`run.py classify fit` with no arguments uses configs/classify/default.yaml and data/samples (here cut
    to a few steps; the full default run is `make demo`)."""
    proc = run_py("classify", "fit", "--run_dir", str(tmp_path / "run"), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                  "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
                  "--data.cache_dir", str(tmp_path / "cache"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "fit_metrics.json").read_text())
    assert summary["global_step"] == 3 and 0.0 <= summary["metrics"]["val/accuracy"] <= 1.0
    shown = [line for line in (proc.stderr + proc.stdout).splitlines() if line.startswith("final metrics: ")]
    assert len(shown) == 1
    printed = json.loads(shown[0].removeprefix("final metrics: "))
    # the console shows the results; per-group learning rates stay in fit_metrics.json and metrics.csv
    assert printed["val/accuracy"] == summary["metrics"]["val/accuracy"]
    assert not any(k.startswith("lr-") for k in printed) and any(k.startswith("lr-") for k in summary["metrics"])
    # the last batch's training loss is shown apart, named for what it is
    assert "train/loss" not in printed and "train/loss" in summary["metrics"]
    last_batch = [line for line in proc.stdout.splitlines() if line.startswith("last training batch: ")]
    assert json.loads(last_batch[0].removeprefix("last training batch: "))["train/loss"] == \
        summary["metrics"]["train/loss"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "run" / "metrics.csv").is_file() and (tmp_path / "run" / "config.yaml").is_file()


def test_a_fit_that_stops_between_validations_says_its_val_metrics_are_older(tmp_path):
    """max_steps inside an epoch: Lightning does not validate at the stop, so the printed val/ metrics are those of
    the last epoch's end; the report names their step and the command that scores the final weights."""
    proc = run_py("classify", "fit", "--run_dir", str(tmp_path / "run"), "--trainer.max_epochs", "3",
                  "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2", "--trainer.max_steps", "5",
                  "--trainer.enable_progress_bar", "false", "--wandb", "false",
                  "--data.cache_dir", str(tmp_path / "cache"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "fit_metrics.json").read_text())
    assert (summary["global_step"], summary["validation_step"]) == (5, 3)
    output = proc.stderr + proc.stdout
    assert "the val/ metrics are of step 3, not of the final step 5: `run.py classify validate --ckpt_path" in output
    # a fit that validates after its last step says nothing of the kind
    proc = run_py("classify", "fit", "--run_dir", str(tmp_path / "run2"), "--trainer.max_epochs", "2",
                  "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
                  "--trainer.enable_progress_bar", "false", "--wandb", "false",
                  "--data.cache_dir", str(tmp_path / "cache"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run2" / "fit_metrics.json").read_text())
    assert (summary["global_step"], summary["validation_step"]) == (6, 6)
    assert "the val/ metrics are of step" not in proc.stderr + proc.stdout


def test_missing_checkpoint_or_bad_setting_is_one_line_exit_2(tmp_path, capsys):
    """A path that is not there, or a value outside a setting's choices: one line naming it, exit code 2."""
    assert run.main(["classify", "fit", "--model.config", "null", "--model.pretrained",
                     str(tmp_path / "absent.ckpt"), "--wandb", "false", "--run_dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.ckpt: checkpoint not found" in err[0]
    assert run.main(["lm", "fit", "--data.train_sampling", "sorted", "--wandb", "false",
                     "--run_dir", str(tmp_path / "b")]) == 2
    assert "train_sampling" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_json_lines_writer_writes_one_line_per_item_in_order(tmp_path):
    """The prediction writer is importable and testable on its own: one JSON line per returned dict, in order."""
    writer = run.JsonLinesWriter(tmp_path / "out" / "p.jsonl")
    writer.on_predict_start(None, None)
    writer.write_on_batch_end(None, None, [{"i": 0, "text": "é"}, {"i": 1}], None, None, 0)
    writer.write_on_batch_end(None, None, [], None, None, 1)                  # a batch that completes nothing
    writer.write_on_batch_end(None, None, [{"i": 2}], None, None, 2)
    writer.on_predict_end(None, None)
    lines = (tmp_path / "out" / "p.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["i"] for line in lines] == [0, 1, 2] and writer.count == 3
    assert '"é"' in lines[0]                                                 # UTF-8, not escaped


def test_ckpt_path_last_finds_the_newest_checkpoint_whatever_its_name(tmp_path):
    from tasks.checkpoint import latest_checkpoint
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    assert latest_checkpoint(tmp_path) is None
    for i, name in enumerate(["last.ckpt", "best-epoch=0-step=4.ckpt", "step=9.ckpt"]):
        (ckpts / name).write_bytes(b"x")
        os.utime(ckpts / name, ns=(10**9 * (i + 1), 10**9 * (i + 1)))
    (ckpts / "tmpabc").write_bytes(b"half-written")                          # a write in progress: not a .ckpt
    assert latest_checkpoint(tmp_path).name == "step=9.ckpt"
    os.utime(ckpts / "last.ckpt", ns=(3 * 10**9, 3 * 10**9))          # the same clock tick: last.ckpt wins the tie
    assert latest_checkpoint(tmp_path).name == "last.ckpt"
    # over several runs (a config's numbered run directories): the newest of all, a missing directory none
    other = tmp_path / "run_2"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.ckpt").write_bytes(b"x")
    os.utime(other / "checkpoints" / "last.ckpt", ns=(4 * 10**9, 4 * 10**9))
    assert latest_checkpoint(tmp_path, other, tmp_path / "run_3") == other / "checkpoints" / "last.ckpt"
    assert latest_checkpoint(tmp_path / "run_3") is None


def test_a_user_error_removes_the_run_directory_it_created_but_not_an_existing_one(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    new_dir = tmp_path / "new"
    assert run.main(["classify", "fit", "--data.train_file", str(bad), "--data.labels", '["0", "1"]', "--wandb",
                     "false", "--run_dir", str(new_dir)]) == 2
    assert "bad.tsv, line 3: label '7' is not in the label set" in capsys.readouterr().err
    assert not new_dir.exists()
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / "notes.txt").write_text("mine")
    assert run.main(["classify", "fit", "--data.train_file", str(bad), "--data.labels", '["0", "1"]', "--wandb",
                     "false", "--run_dir", str(old_dir)]) == 2
    assert (old_dir / "notes.txt").read_text() == "mine"


def test_bf16_on_a_cpu_without_bf16_arithmetic_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)     # this CPU, or one like it
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.delenv("NLP_ALLOW_EMULATED_BF16", raising=False)
    assert run.main(["classify", "fit", "--trainer.precision", "bf16-mixed", "--wandb", "false",
                     "--run_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no bfloat16 arithmetic" in err[0] and "--trainer.precision 32-true" in err[0]
    assert not (tmp_path / "run").exists()


ARENA_CHECK = """
import ctypes, json, sys
sys.path.insert(0, {root!r})
import torch, run
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = run.reuse_freed_memory()
block = torch.ones(64 << 18)                       # 64 MiB of float32, freed at once
del block
print(json.dumps({{"applied": applied, "free_in_heap": libc.mallinfo2().fordblks}}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
                    reason="glibc's malloc only")
@pytest.mark.parametrize("env, applied", [({}, True), ({"NLP_REUSE_FREED_MEMORY": "0"}, False),
                                          ({"MALLOC_ARENA_MAX": "2"}, False)])
def test_reuse_freed_memory_keeps_a_freed_large_block_in_the_heap(env, applied):
    """With the switch on, a freed 64 MiB block stays in the process's heap for the next allocation (glibc would
    otherwise have unmapped it); off by NLP_REUSE_FREED_MEMORY=0, and left alone when the environment tunes malloc."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES",
                                                                                          "LD_PRELOAD")}
    proc = subprocess.run([sys.executable, "-c", ARENA_CHECK.format(root=str(ROOT))], capture_output=True, text=True,
                          env={**clean, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["applied"] is applied
    if applied:
        assert out["free_in_heap"] >= 64 << 20
    else:
        assert out["free_in_heap"] < 64 << 20


def test_a_run_from_a_checkpoint_keeps_its_settings_and_evaluation_needs_a_trained_model(tmp_path, monkeypatch,
                                                                                          capsys, no_wandb):
    """In a fresh directory (runs/ is relative to it): predict without a model is refused; `--ckpt_path last` on
    predict takes the newest checkpoint of the config's fits; a `--model.X` that contradicts the checkpoint is one line,
    not silently overridden (a resumed `--model.lr 0` used to train on at the checkpoint's lr), an equal one is fine."""
    for name in ("configs", "data", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

    def error(*args) -> str:
        capsys.readouterr()
        assert run.main(["classify", *args, *quiet]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    assert "predict needs a trained model: --ckpt_path" in error("predict")
    assert "--ckpt_path last: no checkpoint in runs/classify/default/checkpoints or its numbered" in \
        error("predict", "--ckpt_path", "last")
    assert run.main(["classify", "fit", "--trainer.max_steps", "2", *quiet]) == 0
    assert run.main(["classify", "fit", "--trainer.max_steps", "3", *quiet]) == 0        # runs/classify/default_2
    assert run.main(["classify", "predict", "--ckpt_path", "last", *quiet]) == 0
    written = (tmp_path / "runs/classify/default_predict/config.yaml").read_text()
    assert "ckpt_path: runs/classify/default_2/checkpoints/last.ckpt" in written
    line = error("fit", "--ckpt_path", "last", "--model.lr", "0", "--trainer.max_steps", "4")
    assert line.startswith("run.py classify: error: --model.lr 0.0: runs/classify/default_2/checkpoints/last.ckpt "
                           "was trained with 0.001"), line
    assert run.main(["classify", "fit", "--ckpt_path", "last", "--model.lr", "1e-3", "--trainer.max_steps", "4",
                     *quiet]) == 0


def test_an_unknown_key_in_a_config_file_names_the_file(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("trainer:\n  max_epochs: 1\nmodel:\n  pooling: mean\n  lrr: 0.1\n", encoding="utf-8")
    assert run.main(["classify", "fit", "--config", str(ROOT / "configs/classify/default.yaml"),
                     "--config", str(config), "--run_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"run.py classify: error: {config}: unknown key model.lrr"), err


def test_task_help_names_the_extra_verbs():
    out = run_py("translate", "--help").stdout
    assert out.startswith("verbs of translate beyond fit, validate, test, predict: average, export, attention")
    assert "{fit,validate,test,predict}" in out                  # then LightningCLI's own help


def test_a_fit_that_fails_while_starting_prints_its_error_line_alone(tmp_path):
    """With wandb on (offline, the default) and the CSV log beside it: stderr is the one error line, without
    wandb's warning about a setting Lightning passes or the CSV logger's about the run directory wandb filled."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "classify", "fit", "--model.freeze_depth", "99",
                           "--run_dir", str(tmp_path / "run"), "--data.cache_dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "run.py classify: error: model.freeze_depth 99: the encoder has 3 levels (the embeddings and 2 layers)"]


TASK_CONFIGS = sorted(f"{path.parent.name}/{path.name}" for task in run.TASKS
                      for path in (ROOT / "configs" / task).glob("*.yaml"))


def named_paths(node) -> list[str]:
    """Every string in a parsed config that names a file or directory here (a relative or ../ path)."""
    if isinstance(node, dict):
        return [p for value in node.values() for p in named_paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in named_paths(value)]
    looks_like_path = isinstance(node, str) and "/" in node and not node.startswith(("hub:", "http")) \
        and " " not in node and not node.startswith(".cache")
    return [node] if looks_like_path and (node.startswith((".", "tests/", "data/", "configs/")) or "." in node) else []


@pytest.mark.parametrize("config", TASK_CONFIGS)
def test_every_config_parses_and_names_files_that_exist(config, capsys):
    """Each YAML in configs/<task>/ parses against its task's current options (a renamed or removed option would
    fail here, not in a user's hour-long run), and every file it names exists: the repository's own, and
    ../shared/data's (fails under REQUIRE_SHARED_DATA=1 when that is missing; skipped otherwise)."""
    task = config.split("/")[0]
    with pytest.raises(SystemExit) as exit_info:
        run.main([task, "fit", "--config", str(ROOT / "configs" / config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    paths = named_paths({"data": printed["data"], "model": printed["model"]})
    if config.endswith("default.yaml"):
        assert paths, f"{config} names no data file: the check below would test nothing"
    for path in paths:
        if path.startswith("../shared/"):
            require_shared(*Path(path).parts[3:])
        else:
            assert (ROOT / path).exists(), f"{config}: {path} does not exist"


def test_an_evaluation_in_its_fits_directory_keeps_the_fits_log_and_config(tmp_path):
    """`test` / `validate --run_dir <the fit's directory>` log into test_N / validate_N: the fit's metrics.csv (its
    curves) and config.yaml stay as the fit wrote them."""
    run_dir = tmp_path / "run"
    common = ["--run_dir", str(run_dir), "--wandb", "false", "--trainer.enable_progress_bar", "false"]
    assert run.main(["classify", "fit", "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1", *common]) == 0
    log, config = (run_dir / "metrics.csv").read_text(), (run_dir / "config.yaml").read_text()
    for sub in ("test", "validate", "test"):
        assert run.main(["classify", sub, "--ckpt_path", "last", *common]) == 0
    assert (run_dir / "metrics.csv").read_text() == log and (run_dir / "config.yaml").read_text() == config
    for version, key in (("test_1", "test/accuracy"), ("validate_1", "val/accuracy"), ("test_2", "test/accuracy")):
        assert key in (run_dir / version / "metrics.csv").read_text().splitlines()[0]
        evaluated = "ckpt_path: " + str(run_dir / "checkpoints" / "last.ckpt")
        assert evaluated in (run_dir / version / "config.yaml").read_text()
