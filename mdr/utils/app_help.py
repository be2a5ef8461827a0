"""The config groups an entry point's ``--help`` lists: ``${mdr_config_groups:}`` in its ``hydra.help.template``.

Only the groups the entry config uses are listed (``hydra.runtime.choices``), Hydra's own (``hydra``,
``hydra/*``) left out, and so are groups and options whose name starts with ``_``: shared bases such as
``experiment/_me5_grid``, not something to pick.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import Any

WIDTH = 116
"""Characters per line of the listing (continuation lines are indented under the options)."""


def shown(name: str) -> bool:
    """Whether a group or option is listed: not Hydra's own, not a ``_`` shared base."""
    last = name.rsplit("/", 1)[-1]
    return not (name == "hydra" or name.startswith("hydra/") or last.startswith("_"))


def format_groups(choices: Mapping[str, Any], options_of: Callable[[str], Iterable[str]]) -> str:
    """One line per group, ``  group  a, b*, c`` (``*``: the entry config's choice), groups sorted by name.

    Args:
        choices: group -> the option the composed config chose (None where it chooses none, e.g. ``experiment``).
        options_of: a group's options (config names).
    """
    groups = sorted(group for group in choices if shown(group))
    width = max((len(group) for group in groups), default=0)
    lines = []
    for group in groups:
        chosen = choices[group]
        names = [f"{name}*" if name == chosen else name for name in sorted(options_of(group)) if shown(name)]
        text = ", ".join(names) + ("  (none by default)" if chosen is None else "")
        lines.append(
            textwrap.fill(
                text,
                width=WIDTH,
                initial_indent=f"  {group.ljust(width)}  ",
                subsequent_indent=" " * (width + 4),
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


def config_groups(*, _root_: Any) -> str:
    """Resolver ``${mdr_config_groups:}``: the groups of the composed config being helped, from Hydra's loader."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return format_groups(dict(_root_.hydra.runtime.choices), loader.get_group_options)
