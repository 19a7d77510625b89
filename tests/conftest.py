"""Shared test fixtures.

Tests that need the real data in ../shared/data use the `shared_data` fixture: it skips when the data is
absent on a developer's machine, but fails loudly when REQUIRE_SHARED_DATA=1 (CI sets it).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests use small models: one thread each is fastest, and `make test` runs two pytest workers on two cores.
# Subprocesses (CLI tests, DDP workers) inherit the setting through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# This process stays on one thread whatever OMP_NUM_THREADS says: tests fork it (benchmarks/kill_resume.Child.call,
# to skip start-up time), and a fork of a process that has run a GNU OpenMP region on more than one thread hangs at
# its own first parallel region (torch's CPU wheel uses libgomp).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def require_shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        msg = f"shared data missing: {path}"
        if os.environ.get("REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " (REQUIRE_SHARED_DATA=1)")
        pytest.skip(msg)
    return path


@pytest.fixture
def no_wandb(monkeypatch):
    """In-process runs log to CSV only (tests run with one torch thread already: see the top of this file)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture
def shared_data():
    return require_shared


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
