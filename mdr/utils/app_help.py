"""The config groups an entry point's ``--help`` lists (``${mdr_config_groups:}`` in its ``hydra.help.template``)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import Any

WIDTH = 116  # characters per line of the listing


def shown(name: str) -> bool:
    """Whether a group or option is listed: not Hydra's own, not a ``_`` shared base (``experiment/_me5_grid``)."""
    last = name.rsplit("/", 1)[-1]
    return not (name == "hydra" or name.startswith("hydra/") or last.startswith("_"))


def format_groups(choices: Mapping[str, Any], options_of: Callable[[str], Iterable[str]]) -> str:
    """One line per group, ``  group  a, b*, c`` (``*``: the option ``choices`` holds for it; None: none chosen)."""
    groups = sorted(group for group in choices if shown(group))
    width = max((len(group) for group in groups), default=0)
    lines = []
    for group in groups:
        chosen = choices[group]
        names = [f"{name}*" if name == chosen else name for name in sorted(options_of(group)) if shown(name)]
        text = ", ".join(names) + ("  (none by default)" if chosen is None else "")
        indents = {"initial_indent": f"  {group.ljust(width)}  ", "subsequent_indent": " " * (width + 4)}
        lines.append(textwrap.fill(text, width=WIDTH, **indents, break_on_hyphens=False))
    return "\n".join(lines)


def config_groups(*, _root_: Any) -> str:
    """Resolver ``${mdr_config_groups:}``: the groups of the composed config being helped."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return format_groups(dict(_root_.hydra.runtime.choices), loader.get_group_options)
