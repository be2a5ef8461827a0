"""The error every layer raises for bad input (data files, config keys), so that none imports another for it."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data; the message names the file and line, or the key, at fault."""
