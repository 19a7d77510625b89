"""The one exception type for bad input data.

Raise `DataError(f"{path}, line {n}: what is wrong")`; run.py prints it as one line and exits non-zero
before any training starts, so no checkpoint is written.
"""


class DataError(ValueError):
    pass
