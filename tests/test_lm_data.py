"""Language-modelling data: tokenizers, split, token cache, block cutter, random batches, sliding windows."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import FIXTURES, require_shared
from data import text as text_mod
from data.lm_tokenizer import EOT, TextTokenizer
from data.cache import content_key
from data.text import RandomBlocks, SlidingWindows, TextDataModule, cached_tokens, split_documents

SHAKESPEARE = FIXTURES / "tinyshakespeare_head.txt"
GERMAN = FIXTURES / "multi30k_val_head.de"


@pytest.fixture(scope="module")
def trained_bpe() -> TextTokenizer:
    texts = [SHAKESPEARE.read_text(encoding="utf-8"), GERMAN.read_text(encoding="utf-8")]
    return TextTokenizer.train_bpe(texts, vocab_size=400)


# --- tokenizers ------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text())
def test_trained_byte_level_bpe_round_trips_any_utf8(trained_bpe, text):
    ids = trained_bpe.encode(text)
    assert all(0 <= i < trained_bpe.vocab_size for i in ids)
    assert trained_bpe.decode(ids) == text


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1))
def test_bpe_survives_serialisation(trained_bpe, text):
    restored = TextTokenizer.from_str(trained_bpe.to_str())
    assert restored.encode(text) == trained_bpe.encode(text)
    assert restored.eot_id == trained_bpe.eot_id


def test_gpt2_tokenizer_matches_reference_ids():
    tok = TextTokenizer.gpt2(require_shared("tokenizers", "gpt2"))
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode("Hello") == [15496]
    assert tok.encode("Hello world" + EOT) == [15496, 995, 50256]
    text = SHAKESPEARE.read_text(encoding="utf-8")
    # encoding in line pieces (how long texts are encoded) gives exactly the ids of one whole-text call
    assert tok.encode(text) == tok.tokenizer.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == text


def test_char_tokenizer_is_nanogpt_vocabulary_plus_eot():
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tok = TextTokenizer.char_from_text([text])
    assert tok.chars == "".join(sorted(set(text)))
    assert tok.eot_id == len(tok.chars) and tok.vocab_size == len(tok.chars) + 1
    assert tok.decode(tok.encode(text)) == text
    assert TextTokenizer.from_str(tok.to_str()).encode("First") == tok.encode("First")
    with pytest.raises(ValueError, match=r"prompt, line 2: character 'é'"):
        tok.encode("First\nCafé", where="prompt")


# --- split and cache -------------------------------------------------------------------------------------
def test_split_is_nanogpt_cut_and_loses_nothing():
    docs = ["a" * 50, "b" * 30, "c" * 20]
    train, val = split_documents(docs, 0.1)
    assert train == ["a" * 50, "b" * 30, "c" * 10] and val == ["c" * 10]
    assert "".join(train + val) == "".join(docs)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    n = len(text)
    assert split_documents([text], 0.1) == ([text[: int(n * 0.9)]], [text[int(n * 0.9):]])


def test_token_cache_builds_once_and_is_memory_mapped(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"train": np.arange(10, dtype=np.uint16), "val": np.arange(3, dtype=np.uint16)}

    first = cached_tokens(tmp_path, "k", build)
    second = cached_tokens(tmp_path, "k", build)
    assert len(calls) == 1
    assert isinstance(second["train"], np.memmap)
    np.testing.assert_array_equal(first["train"], np.arange(10))
    np.testing.assert_array_equal(second["val"], np.arange(3))
    assert not list(tmp_path.glob("*.tmp*"))


def test_cache_key_keeps_parts_apart():
    assert content_key("ab", "c") != content_key("a", "bc")
    assert content_key("a", "b") == content_key("a", "b") != content_key("b", "a")


def test_datamodule_caches_tokens_keyed_by_file_and_tokenizer(tmp_path, monkeypatch):
    kwargs = dict(train_files=[str(SHAKESPEARE), str(GERMAN)], block_size=16, batch_size=4,
                  cache_dir=str(tmp_path))
    dm = TextDataModule(**kwargs)
    dm.setup("fit")
    tok = dm.tokenizer
    docs = [SHAKESPEARE.read_text(encoding="utf-8"), GERMAN.read_text(encoding="utf-8")]
    # the two splits together are the whole corpus, documents joined by one end-of-text token, nothing lost
    whole = np.concatenate([dm.splits["train"], dm.splits["val"]])
    np.testing.assert_array_equal(whole, tok.encode_documents(docs))
    assert int((whole == tok.eot_id).sum()) == 1
    assert len(dm.splits["train"]) == int(sum(map(len, docs)) * 0.9) + 1  # + the eot between the documents

    # a second run reads the cache and does not tokenise again
    monkeypatch.setattr(TextTokenizer, "encode_documents", lambda *a, **k: pytest.fail("re-tokenised"))
    dm2 = TextDataModule(**kwargs)
    dm2.setup("fit")
    assert isinstance(dm2.splits["train"], np.memmap)
    np.testing.assert_array_equal(dm2.splits["val"], dm.splits["val"])
    # a different tokenizer is a different cache entry
    monkeypatch.undo()
    dm3 = TextDataModule(**{**kwargs, "tokenizer": "bpe", "bpe_vocab_size": 300})
    dm3.setup("fit")
    assert dm3.tokenizer.kind == "bpe" and len(dm3.splits["train"]) < len(dm.splits["train"])


# --- block cutter and batches ----------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(n_tokens=st.integers(2, 400), block=st.integers(1, 40), val_fraction=st.floats(0.05, 0.5))
def test_block_cutter_stays_in_split_and_drops_no_token(n_tokens, block, val_fraction):
    corpus = np.arange(n_tokens, dtype=np.uint32)  # token value == position in the corpus
    cut = int(n_tokens * (1 - val_fraction))
    for split in (corpus[:cut], corpus[cut:]):
        blocks = SlidingWindows(split, block, stride=block)      # the block cutter
        targets = []
        for i in range(len(blocks)):
            item = blocks[i]
            x, y = item["input_ids"], item["targets"]
            real = y != -100
            assert x.shape == y.shape == (block,)
            # every real input/target is a token of this split, and targets are the inputs shifted by one
            xs, ys = x[real], y[real]
            if len(split):
                assert ((xs >= split[0]) & (xs <= split[-1])).all() and ((ys >= split[0]) & (ys <= split[-1])).all()
            assert (ys == xs + 1).all()
            targets.extend(ys.tolist())
        # each token of the split after the first is predicted exactly once, in order
        assert targets == split[1:].tolist()


def test_random_blocks_are_contiguous_windows_of_one_split():
    split = np.arange(1000, 1500, dtype=np.uint32)
    ds = RandomBlocks(split, block_size=32, batch_size=8, seed=0, num_batches=50)
    seen_first = seen_last = False
    for batch in ds:
        x, y = batch["input_ids"], batch["targets"]
        assert x.shape == y.shape == (8, 32) and x.dtype == torch.long
        assert (y == x + 1).all() and (torch.diff(x, dim=1) == 1).all()
        assert x.min() >= 1000 and y.max() <= 1499
        seen_first |= bool((x[:, 0] == 1000).any())
        seen_last |= bool((y[:, -1] == 1499).any())
    assert len(ds) == 50
    # seeded: the same seed draws the same batches; successive passes draw new ones
    a, b = RandomBlocks(split, 32, 8, seed=3, num_batches=2), RandomBlocks(split, 32, 8, seed=3, num_batches=2)
    pass1 = [t["input_ids"] for t in a]
    assert all(torch.equal(p, q["input_ids"]) for p, q in zip(pass1, b))
    assert not torch.equal(pass1[0], next(iter(a))["input_ids"])


def test_shuffled_blocks_visit_every_block_of_an_epoch_once_before_repeating():
    split = np.arange(10_000, 10_000 + 1003, dtype=np.uint32)
    block, batch = 10, 7
    ds = RandomBlocks(split, block_size=block, batch_size=batch, seed=1, num_batches=3 * 100 // batch,
                      sampling="shuffled")
    starts = [int(s) - 10_000 for b in ds for s in b["input_ids"][:, 0]]
    epoch = (len(split) - block) // block                        # at least 99 blocks per epoch, whatever the phase
    first = starts[:epoch - epoch % batch]                       # whole batches inside the first epoch
    assert len(set(first)) == len(first)                         # no block twice within an epoch
    assert len({s % block for s in first}) == 1                  # one phase per epoch
    for b in ds:                                                 # contiguous windows inside the split
        assert (b["targets"] == b["input_ids"] + 1).all() and b["targets"].max() <= 10_000 + 1002
    with pytest.raises(ValueError, match="sampling"):
        RandomBlocks(split, block, batch, seed=0, sampling="sorted")


@pytest.mark.parametrize("n_tokens,block,stride", [(100, 16, 1), (100, 16, 5), (100, 16, 16), (10, 16, 8),
                                                   (17, 16, 4), (2, 4, 2)])
def test_sliding_windows_score_every_token_once_with_full_context(n_tokens, block, stride):
    tokens = np.arange(n_tokens, dtype=np.uint32)
    ds = SlidingWindows(tokens, block, stride)
    scored = []
    for i in range(len(ds)):
        x, y = ds[i]["input_ids"], ds[i]["targets"]
        for pos in torch.nonzero(y != -100).flatten().tolist():
            target = int(y[pos])
            assert target == int(x[pos]) + 1
            context = pos + 1  # tokens the model sees before predicting `target`
            if target > block:  # beyond the first window every token sees at least block - stride + 1 tokens
                assert context >= block - stride + 1
                if stride == 1:
                    assert context == block
            scored.append(target)
    assert sorted(scored) == list(range(1, n_tokens)) == scored


def test_val_batches_zero_evaluates_whole_split(tmp_path):
    dm = TextDataModule(train_files=[str(SHAKESPEARE)], block_size=64, batch_size=12, val_batches=0,
                        cache_dir=str(tmp_path))
    dm.setup("fit")
    n_targets = sum(int((b["targets"] != -100).sum()) for b in dm.val_dataloader())
    assert n_targets == len(dm.splits["val"]) - 1
    dm_random = TextDataModule(train_files=[str(SHAKESPEARE)], cache_dir=str(tmp_path))
    dm_random.setup("fit")
    assert len(list(dm_random.val_dataloader())) == 20


def test_bad_inputs_fail_with_one_clear_message(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbroken \xff byte\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: not UTF-8 text \(byte 0xff\)"):
        text_mod.read_documents([bad])
    with pytest.raises(ValueError, match="missing.txt: file not found"):
        text_mod.read_documents([tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="data.tokenizer 'words': unknown tokenizer"):
        TextDataModule(train_files=[str(SHAKESPEARE)], tokenizer="words", cache_dir=str(tmp_path)).setup("fit")
