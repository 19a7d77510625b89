"""The bad-input matrix: every mistake a user makes with data files, settings, checkpoints and pretrained
directories ends in exactly one stderr line that names the file / line / key and what is wrong, exit code 2
(run.py's code for a user error), no traceback, and nothing left behind (no run directory, no checkpoint). What a
user's tools write (a UTF-8 byte-order mark, Windows line ends, quoted CSV fields) is read as the plain file.
Predict writes one output line per input line, in order, an empty input line included (or refuses it in one line).

The cases that apply to every task are parametrised over run.TASKS and each task's embedded default config, so a
task added later is checked without new test code; they run in-process through `run.main` (fast), and a few run
as real processes to see the stderr a user sees.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import run
from conftest import FIXTURES, ROOT

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--wandb", "false"]
TASKS = list(run.TASKS)


# ---- what a case must look like ------------------------------------------------------------------------------
def fails_in_one_line(capsys, argv: list[str], *fragments: str, run_dir: Path | None = None) -> str:
    """Runs `run.py argv` in-process; it must exit with 2 and write exactly one stderr line that holds every
    fragment, and leave no run directory (so no checkpoint) behind. Returns the line."""
    capsys.readouterr()
    code = run.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == run.EXIT_USER_ERROR and len(lines) == 1, (code, err)
    assert lines[0].startswith(f"run.py {argv[0]}") and "error:" in lines[0] and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    if run_dir is not None:
        assert not run_dir.exists(), f"{run_dir} left behind"
    return lines[0]


def default_config(task: str) -> dict:
    return yaml.safe_load((ROOT / run.TASKS[task].default_config).read_text())


def training_file(task: str) -> tuple[str, object, Path]:
    """(data key, its value, the first training data file) of the task's default config: the first data setting
    other than predict_file / tokenizer that names an existing file (a path, a list of paths, or {path: ...})."""
    for key, value in default_config(task)["data"].items():
        if key == "predict_file" or key.startswith("tokenizer"):
            continue
        first = value[0] if isinstance(value, list) and value else value
        first = first.get("path") if isinstance(first, dict) else first
        if isinstance(first, str) and (ROOT / first).is_file():
            return key, value, ROOT / first
    pytest.fail(f"{task}: its default config names no training data file under data (a path, a list of paths or "
                f"{{path: ...}} entries): the data-file cases cannot run")


def with_training_file(task: str, path: Path) -> list[str]:
    """Command-line arguments that put `path` in place of the task's first training data file."""
    key, value, _ = training_file(task)
    if isinstance(value, list):
        first = {**value[0], "path": str(path)} if isinstance(value[0], dict) else str(path)
        value = [first, *value[1:]]
    else:
        value = str(path)
    return [f"--data.{key}", json.dumps(value) if isinstance(value, list) else value]


LENGTH_KEYS = ("max_source_length", "max_length", "block_size")   # seq2seq's max_length filters pairs instead


def length_key(task: str) -> str:
    """The data setting that bounds an input's length in tokens (the model must have that many positions)."""
    params = inspect.signature(run.import_target(run.TASKS[task].datamodule, task).__init__).parameters
    for key in LENGTH_KEYS:
        if key in params:
            return key
    pytest.fail(f"{task}: its data module has none of {LENGTH_KEYS}: tell this test its length key")


def fit(task: str, run_dir: Path, *args: str) -> list[str]:
    return [task, "fit", "--trainer.max_steps", "1", "--run_dir", str(run_dir), *QUIET, *args]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """task -> a last.ckpt of its default config after one step (read-only inputs of the checkpoint cases)."""
    out = {}
    for task in TASKS:
        run_dir = tmp_path_factory.mktemp(f"ckpt_{task}")
        assert run.main(fit(task, run_dir)) == 0, task
        out[task] = run_dir / "checkpoints" / "last.ckpt"
    return out


class RunsCode:
    """Unpickling this calls open(marker, "w"): the file appears if a loader ever runs a checkpoint's code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def code_carrying_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, path)
    return path


# ---- data files, every task --------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_bad_input_data_file_missing(task, tmp_path, capsys):
    absent = tmp_path / ("absent" + training_file(task)[2].suffix)
    fails_in_one_line(capsys, fit(task, tmp_path / "run", *with_training_file(task, absent)), str(absent),
                      "not found", run_dir=tmp_path / "run")


@pytest.mark.parametrize("task", TASKS)
def test_bad_input_data_file_is_a_directory(task, tmp_path, capsys):
    folder = tmp_path / ("folder" + training_file(task)[2].suffix)
    folder.mkdir()
    fails_in_one_line(capsys, fit(task, tmp_path / "run", *with_training_file(task, folder)), str(folder),
                      "not a file", run_dir=tmp_path / "run")


@pytest.mark.parametrize("task", TASKS)
def test_bad_input_data_file_empty(task, tmp_path, capsys):
    empty = tmp_path / ("empty" + training_file(task)[2].suffix)
    empty.write_bytes(b"")
    fails_in_one_line(capsys, fit(task, tmp_path / "run", *with_training_file(task, empty)), str(empty),
                      run_dir=tmp_path / "run")


@pytest.mark.parametrize("task", TASKS)
def test_bad_input_data_file_not_utf8_names_the_real_line(task, tmp_path, capsys):
    original = training_file(task)[2]
    lines = original.read_bytes().split(b"\n")
    n = min(3, len(lines))
    lines[n - 1] = lines[n - 1][:5] + b"\xff" + lines[n - 1][5:]           # a Latin-1 byte on line n
    bad = tmp_path / ("latin1" + original.suffix)
    bad.write_bytes(b"\n".join(lines))
    fails_in_one_line(capsys, fit(task, tmp_path / "run", *with_training_file(task, bad)), str(bad), f"line {n}",
                      "UTF-8", run_dir=tmp_path / "run")


@pytest.mark.parametrize("task", TASKS)
def test_bad_input_malformed_hub_split(task, tmp_path, capsys):
    """A data file given as a dataset split (data/hub.py) that is not hub:NAME[:CONFIG]:SPLIT."""
    expected = "a hub split holds both sides" if task == "translate" else "expected hub:NAME:SPLIT"
    fails_in_one_line(capsys, fit(task, tmp_path / "run", *with_training_file(task, "hub:nonsense")),
                      "hub:nonsense", expected, run_dir=tmp_path / "run")


@pytest.mark.parametrize("case, args, fragment", [
    ("context", ["--data.context", "paragraph"], "data.context 'paragraph': choose sentence or document"),
    ("stride", ["--data.context", "document", "--data.stride", "0"], "data.stride 0: must be in 1.."),
])
def test_bad_input_ner_window_settings(case, args, fragment, tmp_path, capsys):
    fails_in_one_line(capsys, fit("ner", tmp_path / "run", *args), fragment, run_dir=tmp_path / "run")


@pytest.mark.parametrize("task", TASKS)
def test_bad_input_byte_order_mark_and_crlf_are_read_as_the_plain_file(task, checkpoints, tmp_path):
    """Excel writes a byte-order mark, Windows CRLF line ends: the same run as on the plain file, weight for weight."""
    original = training_file(task)[2]
    windows = tmp_path / ("excel" + original.suffix)
    windows.write_bytes(b"\xef\xbb\xbf" + original.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    assert run.main(fit(task, tmp_path / "windows", *with_training_file(task, windows))) == 0
    plain, excel = (torch.load(path, weights_only=True)
                    for path in (checkpoints[task], tmp_path / "windows" / "checkpoints" / "last.ckpt"))
    assert plain["task"]["tokenizer"] == excel["task"]["tokenizer"], \
        f"{task}: the BOM/CRLF copy of {original.name} gave another tokenizer than the file itself"
    weights = plain["state_dict"]
    assert all(torch.equal(weights[k], excel["state_dict"][k]) for k in weights), \
        f"{task}: one step on the BOM/CRLF copy of {original.name} gave other weights than on the file itself"


# ---- settings, every task ----------------------------------------------------------------------------------
SETTINGS = {        # the shared settings (tasks/base.py, data/base.py) and the parser: each task keeps them
    "unknown_key": (["--model.no_such_key", "1"], ["model.no_such_key"]),
    "wrong_type": (["--data.batch_size", "many"], ["data.batch_size", "many"]),
    "zero_batch_size": (["--data.batch_size", "0"], ["data.batch_size 0"]),
    "zero_lr": (["--model.lr", "0"], ["model.lr 0"]),
}
MORE_SETTINGS = {   # the same checks' other values, on one task
    "unknown_data_key": (["--data.no_such_key", "1"], ["data.no_such_key"]),
    "float_steps": (["--trainer.max_steps", "1.5"], ["trainer.max_steps"]),
    "negative_batch_size": (["--data.batch_size", "-4"], ["data.batch_size -4"]),
    "zero_eval_batch_size": (["--data.eval_batch_size", "0"], ["data.eval_batch_size 0"]),
    "negative_lr": (["--model.lr", "-1"], ["model.lr -1"]),
    "warmup_ratio_above_1": (["--model.warmup_ratio", "1.5"], ["model.warmup_ratio 1.5"]),
    "negative_length": (["--data.max_length", "-1"], ["data.max_length -1"]),
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("case", list(SETTINGS))
def test_bad_input_setting(task, case, tmp_path, capsys):
    args, fragments = SETTINGS[case]
    fails_in_one_line(capsys, [task, "fit", "--run_dir", str(tmp_path / "run"), *QUIET, *args], *fragments,
                      run_dir=tmp_path / "run")


@pytest.mark.parametrize("case", list(MORE_SETTINGS))
def test_bad_input_setting_more_values(case, tmp_path, capsys):
    args, fragments = MORE_SETTINGS[case]
    fails_in_one_line(capsys, ["classify", "fit", "--run_dir", str(tmp_path / "run"), *QUIET, *args], *fragments,
                      run_dir=tmp_path / "run")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("value", ["0", "100000"])
def test_bad_input_sequence_length(task, value, tmp_path, capsys):
    """0, or longer than the model's positions (or than the text)."""
    key = length_key(task)
    fails_in_one_line(capsys, fit(task, tmp_path / "run", f"--data.{key}", value), f"{key} {value}",
                      run_dir=tmp_path / "run")


@pytest.mark.parametrize("task", TASKS)
def test_bad_input_config_file_missing_or_not_yaml(task, tmp_path, capsys):
    absent = tmp_path / "absent.yaml"
    fails_in_one_line(capsys, [task, "fit", "--config", str(absent)], "absent.yaml", "file not found")
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_steps: [1, 2\nmodel: {lr: 1e-3\n")
    fails_in_one_line(capsys, [task, "fit", "--config", str(broken)], "broken.yaml, line 3", "not valid YAML")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text((ROOT / run.TASKS[task].default_config).read_text() + "\nmodel_typo: {lr: 1}\n")
    fails_in_one_line(capsys, [task, "fit", "--config", str(unknown), "--run_dir", str(tmp_path / "run")],
                      "model_typo", run_dir=tmp_path / "run")


def test_bad_input_unknown_task_or_verb(capsys):
    fails_in_one_line(capsys, ["clasify", "fit"], "unknown task 'clasify'", *TASKS)
    for task in TASKS:
        fails_in_one_line(capsys, [task, "trian"], "unknown subcommand 'trian'", "fit")


# ---- checkpoints, every task -------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_bad_input_checkpoint_truncated_or_not_a_checkpoint(task, checkpoints, tmp_path, capsys):
    """Cut in half (to predict), or a text file named .ckpt (to resume from)."""
    truncated = tmp_path / "truncated.ckpt"
    data = checkpoints[task].read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("these are my notes, not a checkpoint\n")
    for verb, path in (("predict", truncated), ("fit", text)):
        fails_in_one_line(capsys, [task, verb, "--ckpt_path", str(path), "--run_dir", str(tmp_path / "run"), *QUIET],
                          str(path), "not a readable checkpoint", run_dir=tmp_path / "run")


@pytest.mark.parametrize("verb", ["predict", "fit"])
def test_bad_input_checkpoint_missing_or_a_directory(verb, tmp_path, capsys):
    for path, reason in ((tmp_path / "absent.ckpt", "checkpoint not found"), (tmp_path, "not a checkpoint file")):
        fails_in_one_line(capsys, ["classify", verb, "--ckpt_path", str(path), "--run_dir", str(tmp_path / "run"),
                                   *QUIET], str(path), reason, run_dir=tmp_path / "run")
    fails_in_one_line(capsys, ["classify", verb, "--ckpt_path", "last", "--run_dir", str(tmp_path / "run"), *QUIET],
                      "--ckpt_path last: no checkpoint", run_dir=tmp_path / "run")
    sharded = tmp_path / "last.ckpt"           # the layout Lightning's DeepSpeed strategy writes (tag "checkpoint")
    (sharded / "checkpoint").mkdir(parents=True)
    (sharded / "latest").write_text("checkpoint")
    fails_in_one_line(capsys, ["classify", verb, "--ckpt_path", str(sharded), "--run_dir", str(tmp_path / "run"),
                               *QUIET], str(sharded), "a DeepSpeed checkpoint directory", run_dir=tmp_path / "run")


@pytest.mark.parametrize("task", TASKS)
def test_bad_input_another_tasks_checkpoint_to_resume(task, checkpoints, tmp_path, capsys):
    other = next(t for t in TASKS if t != task)
    fails_in_one_line(capsys, [task, "fit", "--ckpt_path", str(checkpoints[other]), "--run_dir",
                               str(tmp_path / "run"), *QUIET],
                      f"this is a {other!r} checkpoint, not a {task!r} one", run_dir=tmp_path / "run")


@pytest.mark.parametrize("task", TASKS)
def test_bad_input_checkpoint_that_runs_code_is_refused_on_every_route(task, checkpoints, tmp_path, capsys):
    """--ckpt_path (predict; resuming reads it the same way), --model.pretrained as a .ckpt and as a Hugging Face
    directory whose pytorch_model.bin is the pickle: refused in one line, and the code never runs."""
    marker = tmp_path / "code_ran"
    evil = code_carrying_checkpoint(tmp_path / "evil.ckpt", marker)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    kind = torch.load(checkpoints[task], weights_only=True)["task"]["model_kind"]
    (hf_dir / "config.json").write_text(json.dumps(hf_config(kind)))
    code_carrying_checkpoint(hf_dir / "pytorch_model.bin", marker)
    for argv in ([task, "predict", "--ckpt_path", str(evil)],
                 fit(task, tmp_path / "run", "--model.pretrained", str(evil)),
                 fit(task, tmp_path / "run", "--model.pretrained", str(hf_dir))):
        fails_in_one_line(capsys, [*argv, "--run_dir", str(tmp_path / "run"), *QUIET], run_dir=tmp_path / "run")
        assert not marker.exists(), f"{argv}: the checkpoint's code ran"


# ---- pretrained directories, every task --------------------------------------------------------------------
def hf_config(kind: str) -> dict:
    """A tiny Hugging Face config.json of our model kind `kind` ("bert", "gpt" or "transformer")."""
    if kind == "gpt":
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 100, "n_positions": 64,
                "n_embd": 32, "n_layer": 1, "n_head": 2, "activation_function": "gelu_new"}
    return {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 100, "hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "max_position_embeddings": 64, "type_vocab_size": 2}


@pytest.mark.parametrize("task", TASKS)
def test_bad_input_pretrained_directory(task, checkpoints, tmp_path, capsys):
    """Empty, a config without weights, and a config of another architecture (a GPT-2 config given to a BERT
    task, a BERT config to a GPT task)."""
    kind = torch.load(checkpoints[task], weights_only=True)["task"]["model_kind"]
    empty, no_weights, other = tmp_path / "empty", tmp_path / "no_weights", tmp_path / "other_architecture"
    for d in (empty, no_weights, other):
        d.mkdir()
    (no_weights / "config.json").write_text(json.dumps(hf_config(kind)))
    other_kind = "bert" if kind == "gpt" else "gpt"
    (other / "config.json").write_text(json.dumps(hf_config(other_kind)))
    torch.save({"w": torch.zeros(1)}, other / "pytorch_model.bin")
    for path, reason in ((empty, "config.json"), (no_weights, "no model.safetensors or pytorch_model.bin"),
                         (other, repr(hf_config(other_kind)["model_type"]))):
        fails_in_one_line(capsys, fit(task, tmp_path / "run", "--model.config", "null", "--model.pretrained",
                                      str(path)), str(path), reason, run_dir=tmp_path / "run")


# ---- predict: one output line per input line ---------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_bad_input_predict_with_an_empty_line_keeps_outputs_in_line_with_inputs(task, checkpoints, tmp_path,
                                                                              capsys):
    """An empty line among the inputs: either an explicit result for it (outputs still line up one to one with
    input lines, in order), or one error line naming the file and that line. Never a shifted output."""
    source = ROOT / default_config(task)["data"]["predict_file"]
    header = 1 if source.suffix in (".tsv", ".csv") else 0
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    inputs = lines[header:header + 3]
    assert len(inputs) == 3, f"{source}: needs 3 non-empty input lines"
    path = tmp_path / f"with_gap{source.suffix}"
    path.write_text("\n".join(lines[:header] + [inputs[0], "", inputs[1], inputs[2]]) + "\n", encoding="utf-8")
    out = tmp_path / "predictions.jsonl"
    capsys.readouterr()
    code = run.main([task, "predict", "--ckpt_path", str(checkpoints[task]), "--data.predict_file", str(path),
                     "--predict_output", str(out), "--run_dir", str(tmp_path / "run"), *QUIET])
    err = capsys.readouterr().err.strip().splitlines()
    if code == run.EXIT_USER_ERROR:
        assert len(err) == 1 and str(path) in err[0] and f"line {header + 2}" in err[0], err
        return
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4, f"{task}: 4 input lines (one empty) gave {len(rows)} predictions"
    for row, line in zip([rows[0], rows[2], rows[3]], inputs):           # in order: each row names its own input
        text = json.loads(line)["question"] if source.suffix == ".jsonl" else line.split("\t")[0]
        assert text.strip()[:20] in json.dumps(row, ensure_ascii=False), (text, row)


# ---- table files (classify) --------------------------------------------------------------------------------
TABLE_CASES = {
    "header_only": ("t.tsv", "sentence\tlabel\n", "no data rows"),
    "wrong_field_count": ("t.tsv", "sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n", "line 3: expected 2"),
    "unknown_label": ("t.tsv", "sentence\tlabel\ngood film\t1\nbad film\t7\n", "line 3: label '7'"),
    "missing_column": ("t.tsv", "text\tlabel\ngood film\t1\n", "no column 'sentence'"),
    "empty_line": ("t.tsv", "sentence\tlabel\ngood film\t1\n\nbad film\t0\n", "line 3: empty line"),
    "empty_value": ("t.csv", "sentence,label\ngood film,1\n,0\n", "line 3: empty value in column 'sentence'"),
    "bad_json_line": ("t.jsonl", '{"sentence": "good film", "label": "1"}\n{"sentence": "bad film", label: 0}\n',
                      "line 2: not valid JSON"),
    "json_not_an_object": ("t.jsonl", '{"sentence": "good film", "label": "1"}\n["bad film", 0]\n',
                           "line 2: expected a JSON object"),
    "json_missing_key": ("t.jsonl", '{"sentence": "good film", "label": "1"}\n{"text": "bad film", "label": "0"}\n',
                         "line 2: missing or empty key 'sentence'"),
    "unknown_extension": ("t.xlsx", "sentence\tlabel\ngood film\t1\n", "unknown file type '.xlsx'"),
    "unclosed_quote": ("t.csv", 'sentence,label\n"good film,1\nbad film,0\n', "line 2: cannot parse"),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_bad_input_table_file(case, tmp_path, capsys):
    name, content, reason = TABLE_CASES[case]
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    labels = ["--data.labels", '["0", "1"]'] if case == "unknown_label" else []      # else inferred from the file
    fails_in_one_line(capsys, fit("classify", tmp_path / "run", "--data.train_file", str(path), "--data.val_file",
                                  str(path), *labels), str(path), reason, run_dir=tmp_path / "run")


def test_bad_input_quoted_csv_fields_are_read_whole(tmp_path):
    """A CSV field in quotes may hold commas, quotes ("") and line breaks: it is one value; a row is named by its
    first line."""
    from data.readers import read_table
    path = tmp_path / "quoted.csv"
    path.write_text('sentence,label\n"good, really ""good"" film",1\n"two\nlines",0\nplain,1\n', encoding="utf-8")
    table = read_table(path, ["sentence", "label"])
    assert table["sentence"] == ['good, really "good" film', "two\nlines", "plain"]
    assert table["label"] == ["1", "0", "1"] and table["_line"] == [2, 3, 5]
    assert run.main(fit("classify", tmp_path / "run", "--data.train_file", str(path), "--data.val_file",
                        str(path))) == 0


# ---- CoNLL files (ner) ---------------------------------------------------------------------------------------
CONLL_CASES = {       # the file starts "-DOCSTART- -X- -X- O", then a blank line: the case's first line is line 3
    "wrong_column_count": ("EU NNP B-NP B-ORG\nrejects VBZ B-VP\n", [], "line 4: expected 4 columns"),
    "not_a_bio_tag": ("EU NNP B-NP ORG\n", [], "line 3: tag 'ORG' is not BIO"),
    "i_without_b_under_strict_bio": ("EU NNP B-NP O\nrejects VBZ B-VP I-ORG\n", ["--data.strict_bio", "true"],
                                     "line 4: 'I-ORG' after 'O' is not valid BIO"),
}


@pytest.mark.parametrize("case", list(CONLL_CASES))
def test_bad_input_conll_file(case, tmp_path, capsys):
    content, args, reason = CONLL_CASES[case]
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\n" + content, encoding="utf-8")
    fails_in_one_line(capsys, fit("ner", tmp_path / "run", "--data.train_file", str(path), *args), str(path),
                      reason, run_dir=tmp_path / "run")


def test_bad_input_conll_tag_outside_the_training_label_set(tmp_path, capsys):
    val = tmp_path / "valid.txt"
    val.write_text("-DOCSTART- -X- -X- O\n\nParis NNP B-NP B-CITY\n", encoding="utf-8")
    fails_in_one_line(capsys, fit("ner", tmp_path / "run", "--data.val_file", str(val)), str(val),
                      "line 3: tag 'B-CITY' is not in the label set", run_dir=tmp_path / "run")


# ---- text files (lm) -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, args, reason", [
    ("To be, or not", [], "fewer than one block"),
    ("To be, or not to be: that is the question.\n" * 40, ["--data.tokenizer", "sentencepiece"],
     "data.tokenizer 'sentencepiece'"),
    ("To be, or not to be: that is the question.\n" * 40, ["--data.tokenizer", "gpt2"], "data.tokenizer_path"),
])
def test_bad_input_lm_text(text, args, reason, tmp_path, capsys):
    path = tmp_path / "short.txt"
    path.write_text(text, encoding="utf-8")
    fails_in_one_line(capsys, fit("lm", tmp_path / "run", "--data.train_files", json.dumps([str(path)]),
                                  "--data.cache_dir", str(tmp_path / "cache"), *args), reason,
                      run_dir=tmp_path / "run")


def test_bad_input_lm_generate_refuses_code_and_broken_checkpoints(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    for path in (code_carrying_checkpoint(tmp_path / "evil.ckpt", marker), tmp_path / "absent.ckpt"):
        capsys.readouterr()
        assert run.main(["lm", "generate", "--ckpt_path", str(path), "--max_new_tokens", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0], err
    assert not marker.exists()


# ---- as a user sees it: the real process's stderr ------------------------------------------------------------
def run_py(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=ROOT)


def test_bad_input_real_process_stderr_is_one_line(tmp_path):
    """Errors raised inside Lightning (a data file read in setup, after the trainer printed its notes) and while
    reading a checkpoint that runs code: the process's whole stderr is one line, exit code 2, no traceback."""
    marker = tmp_path / "code_ran"
    evil = code_carrying_checkpoint(tmp_path / "evil.ckpt", marker)
    bad = tmp_path / "train.txt"
    bad.write_bytes((FIXTURES / "conll_train.txt").read_bytes().replace(b"EU", b"\xc9U", 1))
    line = 1 + (FIXTURES / "conll_train.txt").read_bytes().split(b"EU")[0].count(b"\n")
    for args, fragments in (
            (["classify", "fit", "--ckpt_path", str(evil)], [str(evil), "could run code"]),
            (["ner", "fit", "--data.train_file", str(bad)], [str(bad), f"line {line}", "UTF-8"])):
        proc = run_py(*args, "--run_dir", str(tmp_path / "run"), *QUIET)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and all(f in lines[0] for f in fragments), proc.stderr
        assert not (tmp_path / "run").exists() and not marker.exists()


# ---- predict files: the file and line of what cannot be read ------------------------------------------------------
def test_bad_input_lm_prompt_outside_the_character_vocabulary_names_file_and_line(checkpoints, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ROMEO:\nJuliet 日本\n", encoding="utf-8")
    fails_in_one_line(capsys, ["lm", "predict", "--ckpt_path", str(checkpoints["lm"]), "--data.predict_file",
                               str(prompts), "--run_dir", str(tmp_path / "run"), *QUIET],
                      f"{prompts}, line 2: character '日' is not in the character vocabulary", run_dir=tmp_path / "run")


def test_bad_input_pretrain_predict_line_with_three_fields(checkpoints, tmp_path, capsys):
    lines = tmp_path / "lines.txt"
    lines.write_text("The [MASK] sat.\nA\tB\tC\n", encoding="utf-8")
    fails_in_one_line(capsys, ["pretrain", "predict", "--ckpt_path", str(checkpoints["pretrain"]),
                               "--data.predict_file", str(lines), "--run_dir", str(tmp_path / "run"), *QUIET],
                      f"{lines}, line 2: 3 tab-separated fields", run_dir=tmp_path / "run")
