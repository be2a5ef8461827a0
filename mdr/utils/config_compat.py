"""Config keys added after runs were recorded, and the value under which a config means what it meant before: a
run folder's record and a stage's cache key leave such a key out while it holds that value."""

from __future__ import annotations

import copy
from typing import Any

NEUTRAL_DEFAULTS: dict[str, Any] = {
    "train.fast_dropout": False,  # added with train.fast_dropout: torch's own dropout, as before
    "train.checkpoint_every_n_steps": None,  # checkpoints at epoch ends only, as before
    "run.stages_only": False,  # a policy key (run.* is no part of a run's identity): the whole run, as before
    "negatives.pool.tokenizer": "default",  # added for the Thai word arm: mdr's words + bigrams, as before
    "trainer.num_nodes": 1,  # added to conf/trainer: one node, Lightning's default, as before
}


def parent_of(data: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    """The dict of ``data`` holding ``dotted``'s last part (None: a parent is missing), and that part."""
    *parents, leaf = dotted.split(".")
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def drop_neutral_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of plain config ``data`` without the keys of :data:`NEUTRAL_DEFAULTS` that hold their neutral value."""
    result = copy.deepcopy(data)
    for dotted, neutral in NEUTRAL_DEFAULTS.items():
        node, leaf = parent_of(result, dotted)
        if node is not None and leaf in node and type(node[leaf]) is type(neutral) and node[leaf] == neutral:
            node.pop(leaf)  # type check: False is neutral, 0 is not
    return result
