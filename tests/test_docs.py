"""The docs stay true to the repository.

- every relative link (and ``#anchor``) in README.md and docs/*.md resolves;
- every ``python ...`` command in a code block of README.md and docs/*.md names something that exists, and each
  ``train.py`` / ``evaluate.py`` command composes against conf/ with its overrides (composed, never run): every
  value of a sweep list and every value of an experiment's own sweep parameters is tried once;
- README's config-group table lists exactly the options in conf/<group>/, and README stays short.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Pages and experiments other branches add; a link to / command with one of these is allowed while it is missing
# (once it exists it is checked like any other).

README_MAX_LINES = 200
SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate"}  # entry point -> config_name
SHELL_SEPARATORS = {"&&", "||", ";", "|"}
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
PLACEHOLDER = re.compile(r"<[^<>\s]*(?:\s[^<>]*)?>")  # <time>, <gpu partition>: a value the reader fills in


def doc_files() -> list[Path]:
    """README.md and the pages under docs/ (not the generated results under docs/results/)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def shell_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) inside fenced code blocks of shell (```bash, ```sh, ```console or unlabelled)."""
    language: str | None = None  # None: outside a block
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            language = line.strip().strip("`~").strip().lower() if language is None else None
            continue
        if language in SHELL_LANGUAGES:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link into ``path`` may name."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ID.findall(line))
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_problem(source: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``source``) does not resolve, or None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
        return None
    file_part, _, anchor = target.partition("#")
    path = (source.parent / file_part).resolve() if file_part else source
    relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    if not path.exists():
        return f"{relative} does not exist"
    if anchor and path.suffix == ".md" and anchor not in anchors(path):
        return f"{relative} has no heading or id for #{anchor}"
    return None


def link_problems(path: Path) -> list[str]:
    """Every unresolved relative link of one page, as ``file:line: target: why``."""
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            why = link_problem(path, target)
            if why:
                problems.append(f"{path.relative_to(ROOT)}:{number}: ({target}): {why}")
    return problems


def commands(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, argv) of each ``python ...`` command in the code blocks of ``path``.

    Continuation lines (trailing backslash) are joined, comments dropped, ``VAR=value`` prefixes skipped and
    ``a && b`` split. Placeholders such as ``<time>`` become ``X``.
    """
    pending: list[str] = []
    start = 0
    for number, line in shell_lines(path.read_text(encoding="utf-8")):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        pending.append(line)
        joined, pending = " ".join(pending), []
        try:
            tokens = shlex.split(PLACEHOLDER.sub("X", joined), comments=True)
        except ValueError as error:
            raise AssertionError(f"{path.relative_to(ROOT)}:{start}: cannot split {joined!r}: {error}") from error
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token not in SHELL_SEPARATORS:
                segment.append(token)
                continue
            while segment and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", segment[0]):
                segment.pop(0)
            if segment and Path(segment[0]).name in ("python", "python3"):
                yield start, segment
            segment = []


def expand(overrides: list[str]) -> list[list[str]]:
    """Override lists that together try every value of every sweep once (the others at their first value)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices: list[list[str]] = []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    lists = [[options[0] for options in choices]]
    for i, options in enumerate(choices):
        for option in options[1:]:
            variant = list(lists[0])
            variant[i] = option
            lists.append(variant)
    return lists


@functools.cache
def compose_problem(config_name: str, overrides: tuple[str, ...]) -> str | None:
    """Why ``overrides`` do not compose with ``config_name`` (the first line of Hydra's error), or None."""
    try:
        compose(config_name, overrides=list(overrides), return_hydra_config=True)
    except Exception as error:  # noqa: BLE001 (any composition error is the finding)
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None


def compose_problems(config_name: str, overrides: list[str]) -> list[str]:
    """Why ``overrides`` (and the sweep parameters of the experiment they select) do not compose; [] if they do."""
    variants = expand(overrides)
    problems = []
    for variant in variants:
        problem = compose_problem(config_name, tuple(variant))
        if problem:
            problems.append(f"{' '.join(variant)}: {problem}")
    if problems:
        return problems
    # an experiment's own sweep lists (hydra.sweeper.params), where the command line does not replace them
    cfg = compose(config_name, overrides=variants[0], return_hydra_config=True)
    given = {override.key_or_group for override in OverridesParser.create().parse_overrides(variants[0])}
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    swept = [f"{key}={value}" for key, value in params.items() if key not in given]
    for variant in expand(swept) if swept else []:
        problem = compose_problem(config_name, (*variants[0], *variant))
        if problem:
            problems.append(f"{' '.join(variant)} (the experiment's sweep list): {problem}")
    return problems


def command_problems(argv: list[str]) -> list[str]:
    """Problems of one ``python ...`` command: a missing module or script, or overrides that do not compose."""
    args = argv[1:]
    if args[:1] == ["-m"]:
        module = args[1] if len(args) > 1 else ""
        found = importlib.util.find_spec(module) is not None if module else False
        return [] if found else [f"no module {module!r}"]
    if not args:
        return ["no script"]
    script, overrides = args[0], args[1:]
    if not (ROOT / script).is_file():
        return [f"{script} does not exist"]
    if script not in SCRIPTS:
        return []
    flags = [o for o in overrides if o.startswith("-") and o not in ("-m", "--multirun")]
    if flags:
        return [f"flags this test does not understand: {flags}"]
    overrides = [o for o in overrides if o not in ("-m", "--multirun")]
    return compose_problems(SCRIPTS[script], overrides)


@pytest.fixture
def hydra_conf() -> Iterator[None]:
    """Hydra initialised on conf/, as the entry points see it."""
    compose_problem.cache_clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    compose_problem.cache_clear()


def test_readme_is_short() -> None:
    """README keeps to what mdr is, how to run it and what it found; the rest belongs in docs/."""
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_every_relative_link_resolves() -> None:
    problems = [problem for page in doc_files() for problem in link_problems(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_commands_compose(hydra_conf: None) -> None:
    readme = ROOT / "README.md"
    checked = 0
    problems = []
    for page in doc_files():
        for line, argv in commands(page):
            found = command_problems(argv)
            checked += page == readme
            problems += [f"{page.relative_to(ROOT)}:{line}: {' '.join(argv)}\n    {p}" for p in found]
    assert not problems, "commands that do not resolve against the repository:\n" + "\n".join(problems)
    assert checked >= 8, f"only {checked} python commands found in README's code blocks"


def test_config_table_matches_conf() -> None:
    """Every group under conf/ (but hydra) has a row; each row lists exactly its group's options."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {}
    for _, line in prose_lines(text):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([a-z_]+)`", cells[0]) if len(cells) >= 3 else None
        if match and (CONF / match.group(1)).is_dir():
            rows[match.group(1)] = set(re.findall(r"`([^`]+)`", cells[1]))
    problems = []
    for group in sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        on_disk = {f.stem for f in (CONF / group).glob("*.yaml")}
        listed = rows.get(group)
        if listed is None:
            problems.append(f"conf/{group}: no row in README's config table")
            continue
        if on_disk - listed:
            problems.append(f"conf/{group}: {sorted(on_disk - listed)} not listed in README")
        if listed - on_disk:
            problems.append(f"conf/{group}: README lists {sorted(listed - on_disk)}, which do not exist")
    assert not problems, "\n".join(problems)


def test_checks_catch_a_broken_link_and_a_missing_key(tmp_path: Path, hydra_conf: None) -> None:
    """The checks above can fail: a missing page, a missing anchor, an unknown key, a missing group option."""
    page = ROOT / "docs" / "x.md"  # not written: link_problem only needs its folder
    assert link_problem(page, "no-such-page.md") == "docs/no-such-page.md does not exist"
    assert "has no heading" in (link_problem(ROOT / "README.md", "#no-such-heading") or "")
    assert compose_problems("train", ["train.batch_sz=3"])
    assert compose_problems("train", ["model=no_such_model"])
    assert compose_problems("train", ["language=th,xx"])  # the second value of a sweep is checked too
    assert compose_problems("train", ["hydra.launcher.partition=gpu"])  # only the slurm launcher has it
    assert not compose_problems("train", ["launcher=slurm", "hydra.launcher.partition=gpu", "seed=0,1"])
    assert command_problems(["python", "-m", "mdr.reporting.no_such_module"])
    assert command_problems(["python", "benchmarks/no_such_benchmark.py"])


def test_an_experiments_own_sweep_list_is_checked(tmp_path: Path) -> None:
    """A key in an experiment's hydra.sweeper.params that conf/ lacks is found, though the command is fine."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "experiment" / "broken.yaml").write_text(
        "# @package _global_\nhydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n"
        "      seed: 0,1\n      train.batch_sz: 8,16\n",
        encoding="utf-8",
    )
    compose_problem.cache_clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            problems = compose_problems("train", ["experiment=broken"])
            # a command-line value replaces the experiment's list
            assert not compose_problems("train", ["experiment=broken", "+train.batch_sz=8"])
    finally:
        compose_problem.cache_clear()
    assert problems and all("train.batch_sz" in problem for problem in problems), problems


ANSWER = re.compile(r"<!-- ANSWER -->(.*?)<!-- /ANSWER -->", re.S)
FOUR_DECIMALS = re.compile(r"(?<![\d.])[-+]?(\d\.\d{4})(?!\d)")


def answer_number_problems(readme: str, reports: list[str]) -> list[str]:
    """Numbers with four decimals in README's answer that no committed report prints (stale or hand-typed)."""
    found = ANSWER.search(readme)
    if found is None:
        return ["README.md has no <!-- ANSWER --> ... <!-- /ANSWER --> block"]
    printed = {number for report in reports for number in FOUR_DECIMALS.findall(report)}
    return [number for number in FOUR_DECIMALS.findall(found.group(1)) if number not in printed]


def test_readme_answer_numbers_come_from_the_committed_report() -> None:
    """Every four-decimal number of README's answer is printed by the committed me5_small grid report
    (docs/results/me5_grid/results.md), which `python -m mdr.reporting.aggregate` recomputes from the committed
    per-query files: a number the report does not print is stale or typed by hand."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    report = (ROOT / "docs" / "results" / "me5_grid" / "results.md").read_text(encoding="utf-8")
    problems = answer_number_problems(readme, [report])
    assert not problems, f"README's answer has numbers its report does not print: {problems}"
    assert len(FOUR_DECIMALS.findall(ANSWER.search(readme).group(1))) >= 10  # the table is there


def test_a_stale_answer_number_is_caught() -> None:
    readme = "<!-- ANSWER -->\n| th | 0.7644 | -0.0315 [-0.0425, -0.0213] |\n<!-- /ANSWER -->"
    assert answer_number_problems(readme, ["0.7644 -0.0315 [-0.0425, -0.0213]"]) == []
    assert answer_number_problems(readme, ["0.7645 -0.0315 [-0.0425, -0.0213]"]) == ["0.7644"]


HELP_EXAMPLE = re.compile(r"^\s+(python (?:train|evaluate)\.py .*)$")
HELP_GROUP = re.compile(r"^  ([a-z_]+)\s{2,}(.*)$")


def help_text(script: str) -> str:
    """What ``python <script> --help`` prints (the app help of ``conf/<config>.yaml``'s ``hydra.help``)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def help_groups(text: str) -> dict[str, set[str]]:
    """group -> the options its ``--help`` line (and continuation lines) lists, ``*`` (the default) dropped."""
    groups: dict[str, set[str]] = {}
    section = text.split("Config groups", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    group = ""
    for line in section:
        match = HELP_GROUP.match(line)
        group, names = (match.group(1), match.group(2)) if match else (group, line)
        names = re.sub(r"\(none by default\)", "", names)
        groups.setdefault(group, set()).update(n.strip().rstrip("*") for n in names.split(",") if n.strip())
    return groups


HELP_OPENS = [("train.py", "train a multilingual bi-encoder"), ("evaluate.py", "evaluate an encoder")]


@pytest.mark.parametrize(("script", "does"), HELP_OPENS)
def test_help_says_what_the_command_does_and_lists_the_groups_it_uses(script: str, does: str, hydra_conf: None) -> None:
    """``--help`` opens with what the command does, its examples compose, and its groups are the entry config's
    with every option in conf/, shared bases (``_me5_grid``) left out."""
    text = help_text(script)
    assert text.startswith(f"{script}: {does}"), text[:300]
    assert "_me5_grid" not in text and "Powered by Hydra" not in text
    found = [HELP_EXAMPLE.match(line) for line in text.splitlines()]
    examples = [shlex.split(PLACEHOLDER.sub("X", m.group(1)), comments=True) for m in found if m]
    assert len(examples) >= 3, text
    problems = [f"{' '.join(argv)}: {p}" for argv in examples for p in command_problems(argv)]
    assert not problems, "\n".join(problems)
    groups = help_groups(text)
    used = {"train.py": {"stage", "negatives", "trainer", "experiment"}, "evaluate.py": set()}[script]
    assert set(groups) == {"data", "language", "launcher", "logger", "model", "paths"} | used
    for group, listed in groups.items():
        assert listed == {p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_")}, group
