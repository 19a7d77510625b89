"""tasks/encoders.py: one task starts from another task's checkpoint (every BERT task keeps its encoder under
`bert.*`, with or without a pooler), or from a Hugging Face directory."""
import dataclasses
import logging

import pytest
import torch

from data.errors import ConfigError
from modeling import BERT, BertConfig
from tasks.checkpoint import Blueprint, CheckpointError
from tasks.encoders import load_encoder

CONFIG = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, ffn_size=32, max_positions=32)


def _save(path, bert: BERT, task: str = "classify", drop: tuple[str, ...] = (), kind: str = "bert"):
    state = {"bert." + k: v for k, v in bert.state_dict().items() if not k.startswith(drop)}
    state["head.weight"] = torch.zeros(3, CONFIG.hidden_size)            # the task's own head: not the encoder's
    bp = Blueprint(task, kind, dataclasses.asdict(bert.config), tokenizer="{}", labels=["a", "b", "c"])
    torch.save({"state_dict": state, "task": bp.to_dict()}, path)
    return path


def _same_weights(a: BERT, b: BERT, skip: str = "pooler.") -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items() if not k.startswith(skip))


def test_classify_checkpoint_gives_its_encoder_to_ner(tmp_path):
    torch.manual_seed(0)
    source = BERT(CONFIG, pooler=True)
    path = _save(tmp_path / "classify.ckpt", source)
    bert, tokenizer = load_encoder(str(path), pooler=False)
    assert bert.pooler is None and tokenizer == "{}"
    assert _same_weights(bert, source)


def test_ner_checkpoint_gives_its_encoder_to_classify_and_names_the_new_pooler(tmp_path, caplog):
    torch.manual_seed(1)
    source = BERT(CONFIG, pooler=False)
    path = _save(tmp_path / "ner.ckpt", source, task="ner")
    with caplog.at_level(logging.WARNING):
        bert, _ = load_encoder(str(path), pooler=True)
    assert _same_weights(bert, source)
    assert "pooler.weight" in caplog.text and "initialised" in caplog.text


def test_missing_encoder_weights_or_config_are_errors_naming_the_file(tmp_path):
    source = BERT(CONFIG, pooler=False)
    path = _save(tmp_path / "cut.ckpt", source, drop=("layers.1.",))
    with pytest.raises(ConfigError, match=r"cut\.ckpt: encoder weights missing.*layers\.1\."):
        load_encoder(str(path), pooler=False)
    torch.save({"state_dict": {}}, tmp_path / "empty.ckpt")
    with pytest.raises(CheckpointError, match=r"empty\.ckpt: not written by this suite's tasks"):
        load_encoder(str(tmp_path / "empty.ckpt"), pooler=False)
    with pytest.raises(CheckpointError, match=r"absent\.ckpt: checkpoint not found"):
        load_encoder(str(tmp_path / "absent.ckpt"), pooler=False)
    gpt = _save(tmp_path / "lm.ckpt", source, task="lm", kind="gpt")
    with pytest.raises(ConfigError, match=r"lm\.ckpt: a 'lm' checkpoint holds a gpt, not a BERT encoder"):
        load_encoder(str(gpt), pooler=False)


def _dropouts(bert: BERT) -> set[float]:
    from modeling.attention import MultiHeadAttention
    from modeling.dropout import Dropout
    return ({m.p for m in bert.modules() if isinstance(m, Dropout)} |
            {m.dropout for m in bert.modules() if isinstance(m, MultiHeadAttention)})


@pytest.mark.parametrize("kind", ["ckpt", "hf"])
def test_dropout_override_reaches_every_dropout_and_keeps_the_weights(tmp_path, kind):
    from modeling.hf import save_bert
    torch.manual_seed(0)
    source = BERT(dataclasses.replace(CONFIG, dropout=0.1, attention_dropout=0.1), pooler=True)
    path = _save(tmp_path / "c.ckpt", source) if kind == "ckpt" else save_bert(source, tmp_path / "hf")
    assert _dropouts(load_encoder(str(path), pooler=True)[0]) == {0.1}
    bert = load_encoder(str(path), pooler=True, overrides={"dropout": 0.0, "attention_dropout": 0.0})[0]
    assert _dropouts(bert) == {0.0} and bert.config.dropout == bert.config.attention_dropout == 0.0
    assert _same_weights(bert, source, skip="-")
    with pytest.raises(ConfigError, match="unknown BERT setting 'dropuot'"):
        load_encoder(str(path), pooler=True, overrides={"dropuot": 0.0})


def test_a_pretrained_encoder_keeps_its_architecture_and_its_vocabulary(tmp_path, capsys):
    """The embedded ner default sets a tiny model.config and the fixture vocabulary: started from another task's
    checkpoint, each would be silently wrong or a traceback (a 32-wide config over 128-wide weights; the fixture's
    392 token ids indexing SST-2's embedding rows). Each is one line naming the setting, until both are dropped."""
    import run
    quiet = ["--trainer.max_steps", "2", "--wandb", "false", "--trainer.enable_progress_bar", "false"]
    assert run.main(["classify", "fit", "--run_dir", str(tmp_path / "classify"), *quiet]) == 0
    ckpt = str(tmp_path / "classify" / "checkpoints" / "last.ckpt")
    ner = ["ner", "fit", "--model.pretrained", ckpt, "--run_dir", str(tmp_path / "ner"), *quiet]
    capsys.readouterr()
    assert run.main(ner) == 2
    assert f"error: model.config.ffn_size 64: {ckpt} has 512 (only dropout, attention_dropout, " \
           f"activation_checkpointing may change" in capsys.readouterr().err
    assert run.main([*ner, "--model.config", "null"]) == 2
    assert f"error: data.tokenizer: not the vocabulary of {ckpt} (392 tokens, its own has" in capsys.readouterr().err
    assert run.main([*ner, "--model.config", "{dropout: 0.2}", "--data.tokenizer", "null"]) == 0
    trained = torch.load(tmp_path / "ner" / "checkpoints" / "last.ckpt", weights_only=True)["task"]
    assert trained["model_config"]["hidden_size"] == 128 and trained["model_config"]["dropout"] == 0.2
