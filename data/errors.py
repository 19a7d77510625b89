"""The one exception type for bad input data.

Raise `DataError(f"{path}, line {n}: what is wrong")`; run.py prints it as one line and exits non-zero
before any training starts, so no checkpoint is written.
"""


class DataError(ValueError):
    pass


class ConfigError(ValueError):
    """Settings that do not fit together or do not fit the data (name the key: `model.pooling ...`).
    run.py prints it as one line and exits with 2, like an unknown key, before any checkpoint is written."""
