"""Config keys added after runs were recorded, and the value under which a config means what it meant before.

A run folder's record (:mod:`mdr.run_folder`) and a stage's cache key (:mod:`mdr.stages`) leave such a key out
while it holds that value: a run or a cached stage made before the key existed is still the same config (resumed,
skipped or reused), and one that sets the key to anything else is another config.
"""

from __future__ import annotations

import copy
from typing import Any

NEUTRAL_DEFAULTS: dict[str, Any] = {
    "train.fast_dropout": False,  # added with train.fast_dropout: torch's own dropout, as before
}


def drop_neutral_defaults(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``data`` (a plain config, or its ``prefix`` section) without the keys that hold their neutral value."""
    result = copy.deepcopy(data)
    for dotted, neutral in NEUTRAL_DEFAULTS.items():
        if prefix and not dotted.startswith(prefix + "."):
            continue
        *parents, leaf = (dotted[len(prefix) + 1 :] if prefix else dotted).split(".")
        node: Any = result
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            value = node[leaf]
            if type(value) is type(neutral) and value == neutral:  # False, not 0
                node.pop(leaf)
    return result
