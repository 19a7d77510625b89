"""Language-model task: sampling rules, generation from checkpoints, and `run.py lm` end to end (tiny models)."""
from __future__ import annotations

import json

import pytest
import yaml
import torch
from hypothesis import given, settings, strategies as st

import run
from conftest import FIXTURES, require_shared
from data.lm_tokenizer import TextTokenizer
from modeling import GPT, GPTConfig
from modeling.generation import top_p_filter
from tasks.lm import generate_ids, load_checkpoint, main_generate, prompt_ids

SHAKESPEARE = FIXTURES / "tinyshakespeare_head.txt"


def tiny_gpt(vocab_size: int = 40, block_size: int = 32, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, max_positions=block_size, num_layers=2, num_heads=2, hidden_size=32)).eval()


# --- sampling rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_new_tokens", [5, 60])  # 60 > block_size: the uncached, cropped-context path
def test_top_k_1_sampling_equals_greedy(max_new_tokens):
    model = tiny_gpt()
    ids = [3, 1, 4, 1, 5]
    greedy = generate_ids(model, ids, max_new_tokens, temperature=0)
    for seed in range(3):
        sampled = generate_ids(model, ids, max_new_tokens, temperature=1.3, top_k=1, seed=seed, num_samples=2)
        assert torch.equal(sampled, greedy.expand(2, -1))
    # and sampling without the filter does differ from greedy (the test above is not vacuous)
    free = generate_ids(model, ids, max_new_tokens, temperature=2.0, seed=0, num_samples=4)
    assert not all(torch.equal(row, greedy[0]) for row in free)


@settings(max_examples=200, deadline=None)
@given(logits=st.lists(st.floats(-8, 8), min_size=2, max_size=30), p=st.floats(0.01, 1.0))
def test_top_p_keeps_smallest_set_reaching_p(logits, p):
    x = torch.tensor([logits], dtype=torch.float64)
    kept = torch.isfinite(top_p_filter(x, p))[0]
    probs = x.softmax(-1)[0]
    order = torch.argsort(probs, descending=True, stable=True)
    cumulative = probs[order].cumsum(0)
    # smallest m with cumulative[m-1] >= p (ties in probability may swap which equal tokens are kept)
    m = int((cumulative < p - 1e-12).sum()) + 1
    m = min(m, len(logits))
    assert int(kept.sum()) >= 1
    kept_mass = float(probs[kept].sum())
    assert kept_mass >= p - 1e-9 or int(kept.sum()) == len(logits)
    # minimal: the kept set is exactly as large as the top-m prefix, and contains every strictly larger token
    assert int(kept.sum()) == m
    threshold = probs[order[m - 1]]
    assert bool(kept[probs > threshold + 1e-12].all())


def test_top_p_on_a_known_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.6)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.9)).tolist() == [[True, True, True, False]]
    # sampling under top-p only ever draws from the nucleus
    model = tiny_gpt()
    out = generate_ids(model, [1, 2], 30, temperature=1.0, top_p=0.3, seed=0, num_samples=8)
    assert out.shape == (8, 32)


# --- end to end through run.py ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """`run.py lm fit` on the embedded default, shortened: 12 optimizer steps with gradient accumulation 2."""
    run_dir = tmp_path_factory.mktemp("lm_run")
    cache = tmp_path_factory.mktemp("lm_cache")
    rc = run.main(["lm", "fit", "--run_dir", str(run_dir), "--wandb", "false",
                   "--trainer.max_steps", "12", "--trainer.val_check_interval", "12",
                   "--trainer.accumulate_grad_batches", "2", "--trainer.enable_progress_bar", "false",
                   "--trainer.enable_model_summary", "false", "--data.val_batches", "3",
                   "--data.cache_dir", str(cache), "--model.sample_tokens", "20"])
    assert rc == 0
    return run_dir


def test_lm_fit_on_embedded_default_runs_end_to_end(trained_run):
    summary = json.loads((trained_run / "fit_metrics.json").read_text())
    assert summary["global_step"] == 12
    loss = summary["metrics"]["val/loss"]
    assert 0 < loss < 4.2  # below the uniform-guess loss ln(vocab) ~ 4.1 after a few steps
    assert summary["metrics"]["val/ppl"] == pytest.approx(torch.exp(torch.tensor(loss)).item(), rel=1e-4)
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    samples = (trained_run / "samples.txt").read_text()
    assert "===== step 12 sample 0 =====" in samples


def test_checkpoint_carries_model_and_tokenizer(trained_run):
    model, tokenizer = load_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert tokenizer.kind == "char" and tokenizer.chars == "".join(sorted(set(text)))
    assert model.config.vocab_size == tokenizer.vocab_size and model.config.num_layers == 2


def test_generation_from_checkpoint_is_reproducible_with_a_seed(trained_run, capsys):
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    args = ["--ckpt_path", ckpt, "--prompt", "ROMEO:", "--max_new_tokens", "40", "--top_k", "10"]
    outputs = []
    for seed in ("7", "7", "8"):
        assert main_generate(args + ["--seed", seed]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]
    assert outputs[0].startswith("ROMEO:") and len(outputs[0]) == len("ROMEO:") + 40 + 1
    # the streamed text is what the model generates for that seed
    model, tok = load_checkpoint(ckpt)
    ids = prompt_ids(tok, "ROMEO:")
    expected = generate_ids(model, ids, 40, temperature=1.0, top_k=10, seed=7)[0, len(ids):].tolist()
    assert outputs[0] == "ROMEO:" + tok.decode(expected) + "\n"
    # greedy through the CLI equals temperature 0
    assert main_generate(["--ckpt_path", ckpt, "--prompt", "A", "--max_new_tokens", "10", "--greedy"]) == 0
    greedy = generate_ids(model, prompt_ids(tok, "A"), 10, temperature=0)[0, 1:].tolist()
    assert capsys.readouterr().out == "A" + tok.decode(greedy) + "\n"


def test_generate_rejects_bad_arguments(trained_run, capsys):
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    assert main_generate(["--ckpt_path", ckpt, "--prompt", "Café ♥", "--max_new_tokens", "3"]) == 2
    assert "--prompt, line 1: character 'é' is not in the character vocabulary" in capsys.readouterr().err
    assert main_generate(["--ckpt_path", ckpt, "--temperature", "-1"]) == 2
    assert main_generate(["--ckpt_path", "nope.ckpt"]) == 2
    assert main_generate(["--ckpt_path", ckpt, "--top_p", "1.5"]) == 2


def test_lm_test_scores_every_token_of_a_file_with_a_sliding_window(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    test_file = tmp_path / "held_out.txt"
    text = SHAKESPEARE.read_text(encoding="utf-8")[-600:]
    test_file.write_text(text, encoding="utf-8")
    rc = run.main(["lm", "test", "--ckpt_path", str(ckpt), "--run_dir", str(tmp_path / "test_run"),
                   "--data.test_file", str(test_file), "--data.test_stride", "16",
                   "--trainer.enable_progress_bar", "false"])
    assert rc == 0
    metrics = json.loads((tmp_path / "test_run" / "test_metrics.json").read_text())["metrics"]
    assert metrics["test/tokens"] == len(text) - 1
    assert metrics["test/ppl"] == pytest.approx(torch.exp(torch.tensor(metrics["test/loss"])).item(), rel=1e-4)

    # the same number computed by hand: every token scored once with >= block - stride + 1 tokens of context
    model, tok = load_checkpoint(ckpt)
    ids = tok.encode(text)
    T, stride = model.config.max_positions, 16
    total, count = 0.0, 0
    with torch.no_grad():
        for t in range(1, len(ids)):
            if t <= T:
                window_start = 0
            else:
                # the window that scores target t starts at the multiple of stride with t in its last stride
                k = -(-(t - T) // stride)
                window_start = k * stride
            ctx = torch.tensor([ids[window_start:t]])
            logits = model(ctx)[0, -1]
            total += float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([ids[t]])))
            count += 1
    assert metrics["test/loss"] == pytest.approx(total / count, rel=1e-4)


def test_generate_from_hugging_face_gpt2_directory(tmp_path, capsys):
    from modeling.hf import save_gpt2
    gpt2_tok = require_shared("tokenizers", "gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, max_positions=64, num_layers=1, num_heads=2, hidden_size=16))
    save_gpt2(model, tmp_path / "hf")
    args = ["--hf_dir", str(tmp_path / "hf"), "--tokenizer_path", str(gpt2_tok), "--prompt", "Hello",
            "--max_new_tokens", "8", "--seed", "3"]
    assert main_generate(args) == 0
    first = capsys.readouterr().out
    assert main_generate(args) == 0
    assert capsys.readouterr().out == first and first.startswith("Hello")
    tok = TextTokenizer.gpt2(gpt2_tok)
    expected = generate_ids(model.eval(), tok.encode("Hello"), 8, temperature=1.0, seed=3)[0, 1:].tolist()
    assert first == "Hello" + tok.decode(expected) + "\n"


@pytest.mark.parametrize("config", sorted(p.name for p in (FIXTURES.parent.parent / "configs" / "lm").glob("*.yaml")))
def test_lm_configs_parse(config, capsys):
    path = FIXTURES.parent.parent / "configs" / "lm" / config
    with pytest.raises(SystemExit) as exit_info:
        run.main(["lm", "fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_steps"] > 0
    if config == "shakespeare_char_cpu.yaml":  # the nanoGPT CPU recipe, exactly
        m, d, t = printed["model"], printed["data"], printed["trainer"]
        c = m["config"]
        assert (c["num_layers"], c["num_heads"], c["hidden_size"], c["dropout"], c["bias"]) == (4, 4, 128, 0.0, False)
        assert (m["lr"], list(m["betas"]), m["weight_decay"], m["warmup_steps"], m["min_lr_ratio"]) == \
            (1e-3, [0.9, 0.99], 0.1, 100, 0.1)
        assert (d["block_size"], d["batch_size"], d["val_fraction"], d["val_batches"], d["tokenizer"]) == \
            (64, 12, 0.1, 20, "char")
        assert (t["max_steps"], t["val_check_interval"], t["gradient_clip_val"]) == (2000, 250, 1.0)


def test_lm_fit_under_bf16_autocast_with_clipping(tmp_path, monkeypatch):
    monkeypatch.setenv("NLP_ALLOW_EMULATED_BF16", "1")          # the bf16 path, also on CPUs that emulate bf16
    rc = run.main(["lm", "fit", "--run_dir", str(tmp_path / "bf16"), "--wandb", "false",
                   "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "4",
                   "--trainer.val_check_interval", "4", "--trainer.enable_progress_bar", "false",
                   "--trainer.enable_model_summary", "false", "--data.val_batches", "2",
                   "--data.cache_dir", str(tmp_path / "cache"), "--model.num_samples", "0"])
    assert rc == 0
    metrics = json.loads((tmp_path / "bf16" / "fit_metrics.json").read_text())["metrics"]
    assert 0 < metrics["val/loss"] < 5


def denormals_flushed() -> bool:
    return bool((torch.tensor([1e-310], dtype=torch.float64) * 1.0)[0] == 0)


def test_flush_denormal_lasts_the_run_and_no_longer(tmp_path, monkeypatch):
    """model.flush_denormal sets a process-wide CPU flag: on while an lm run trains, off after it, and off after a
    run that fails too (it used to stay on, and later code in the process lost its subnormal floats)."""
    quiet = ["--trainer.enable_progress_bar", "false", "--wandb", "false"]
    calls = []
    real = torch.set_flush_denormal
    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: calls.append(on) or real(on))
    assert run.main(["lm", "fit", "--trainer.max_steps", "2", "--run_dir", str(tmp_path / "a"), *quiet]) == 0
    assert calls == [True, False] and not denormals_flushed()
    calls.clear()
    last = str(tmp_path / "a" / "checkpoints" / "last.ckpt")      # a context longer than the model's: refused
    assert run.main(["lm", "fit", "--ckpt_path", last, "--data.block_size", "128", "--run_dir", str(tmp_path / "b"),
                     *quiet]) == 2
    assert calls == [True, False] and not denormals_flushed()


def test_fit_from_a_gpt2_directory_keeps_its_architecture(tmp_path, capsys):
    """`lm fit --model.pretrained <GPT-2 directory>`: the embedded default's model.config (64 wide) would be ignored
    silently; it is one line instead, and with --model.config null the run trains the directory's model."""
    from modeling.hf import save_gpt2
    torch.manual_seed(0)
    save_gpt2(GPT(GPTConfig(vocab_size=128, max_positions=64, num_layers=1, num_heads=2, hidden_size=32)),
              tmp_path / "gpt2")
    fit = ["lm", "fit", "--model.pretrained", str(tmp_path / "gpt2"), "--trainer.max_steps", "2", "--wandb", "false",
           "--run_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"]
    capsys.readouterr()
    assert run.main(fit) == 2
    assert f"error: model.config.hidden_size 64: {tmp_path / 'gpt2'} has 32 (its architecture stays" \
           in capsys.readouterr().err
    assert run.main([*fit, "--model.config", "null"]) == 0
    config = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["task"]["model_config"]
    assert (config["hidden_size"], config["num_layers"], config["vocab_size"]) == (32, 1, 128)


def test_validate_of_a_checkpoint_scores_the_batches_its_fit_scored(tmp_path):
    """lm validation draws `val_batches` random batches, fixed by the step of the weights validated: `validate` of
    the best checkpoint and of last.ckpt reproduce the fit's scores of their steps to the last digit. Before, the
    batches followed a pass counter, which each checkpoint stored at another point: the best checkpoint was scored
    on other batches than the ones that made it the best."""
    run_dir = tmp_path / "run"
    common = ["--run_dir", str(run_dir), "--wandb", "false", "--trainer.enable_progress_bar", "false"]
    assert run.main(["lm", "fit", "--trainer.max_steps", "30", "--trainer.val_check_interval", "10", *common]) == 0
    fit = json.loads((run_dir / "fit_metrics.json").read_text())
    best = fit["best_checkpoint"]
    best_score = torch.load(best, weights_only=True, map_location="cpu")["callbacks"]
    best_score = next(v["best_model_score"] for k, v in best_score.items() if k.startswith("ModelCheckpoint"))
    for ckpt, expected in ((best, float(best_score)), (fit["last_checkpoint"], fit["metrics"]["val/loss"])):
        assert run.main(["lm", "validate", "--ckpt_path", ckpt, *common]) == 0
        assert json.loads((run_dir / "validate_metrics.json").read_text())["metrics"]["val/loss"] == \
            pytest.approx(expected, abs=1e-6), ckpt
