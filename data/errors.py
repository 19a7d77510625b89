"""The exception types for bad input data and bad settings.

Raise `DataError(f"{path}, line {n}: what is wrong")`; run.py prints it as one line and exits non-zero
before any training starts, so no checkpoint is written.
"""
from __future__ import annotations

import dataclasses


class DataError(ValueError):
    pass


class ConfigError(ValueError):
    """Settings that do not fit together or do not fit the data (name the key: `model.pooling ...`).
    run.py prints it as one line and exits with 2, like an unknown key, before any checkpoint is written."""


def check_fields(cls: type, fields, source: str, what: str) -> None:
    """A one-line ConfigError naming the first key of `fields` that the dataclass `cls` has no field for."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown {what} {unknown[0]!r} (known: {', '.join(sorted(known))})")


def check_overrides(pretrained: dict, overrides, source: str, tunable: tuple[str, ...] = ()) -> None:
    """A one-line ConfigError naming the first field of `overrides` (model.config) that would change the pretrained
    model `source` (its config fields: `pretrained`): only the `tunable` fields may differ."""
    for key, value in sorted((overrides or {}).items()):
        if key not in tunable and key in pretrained and value != pretrained[key]:
            allowed = f"only {', '.join(tunable)} may change" if tunable else "its architecture stays"
            raise ConfigError(f"model.config.{key} {value}: {source} has {pretrained[key]} ({allowed} with "
                              f"model.pretrained; --model.config null drops the others)")
