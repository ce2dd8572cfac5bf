"""The ``rankwise`` commands the documentation shows, checked against the CLI they document.

Readers copy commands from README.md and docs/*.md. A flag renamed in the code, a subcommand removed or a
value an option no longer takes breaks them for those readers and for no test of the code, so every
``rankwise`` command in those files — in shell blocks (backslash continuations joined, comments dropped),
in the crontab and systemd examples, and in inline code — is parsed here by the CLI's own parser, and each
option value the line sets goes through the validator the library applies when the command runs (choice
options are plain strings to the parser). Parsing executes nothing.

Synopsis lines are parsed too, not skipped: ``[optional]`` parts are included, each alternative of
``(a | b)`` and ``x|y`` is a line of its own, ``...``/``…`` (other options) is dropped and a metavariable
such as ``DIR`` takes an example value (:data:`METAVARIABLES`). Two kinds of line cannot name all of a
command's required parameters, so for them a missing required parameter is no failure (every other error
is): inline code in prose, which often names a command without its options (`rankwise monitor run`), and
a synopsis listing several subcommands (`rankwise keys list|revoke KEY_ID`), whose positional
metavariables are dropped as well because the line cannot say which subcommand takes them.

The cheap commands then run for real, as written, in a directory laid out like the repository: indexing
the bundled knowledge base, creating API keys, and the production loop's reports, which on stores no
traffic reached must refuse with one ``error:`` line. Training, serving and promotion are run by
tests/test_loop_walkthrough.py.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from test_serving import ENV
from typer._click.exceptions import MissingParameter  # typer vendors click: its errors are not click's

from rankwise.cli import app
from rankwise.corpus import SAMPLE_KB
from rankwise.errors import RankwiseError
from rankwise.evaluation.compare import parse_first_stages
from rankwise.evaluation.gates import MetricGate
from rankwise.feedback.events import QUERY_LOGGING
from rankwise.inference.backends import BACKEND_CHOICES, EMBEDDER_BACKENDS
from rankwise.monitoring.check import REFERENCES
from rankwise.options import (
    FIRST_STAGE_METHODS,
    FUSIONS,
    GRANULARITIES,
    RERANK_FUSIONS,
    choose,
    parse_duration,
    parse_share,
    since_timestamp,
)
from rankwise.rerank.declaration import RERANKER_KINDS
from rankwise.serving.auth import ROLES

ROOT = Path(__file__).resolve().parents[1]
#: where readers find commands, in the order the real runs follow them (the loop first: it builds the index)
DOCS = ("docs/production-loop.md", "docs/monitoring.md", "README.md", "docs/architecture.md", "docs/scaling.md")
#: fenced blocks that hold command lines: shell scripts, a crontab, a systemd unit
COMMAND_BLOCKS = {"bash", "sh", "shell", "cron", "ini"}
#: at least this many commands per document: an extraction that silently finds nothing must fail
AT_LEAST = {"docs/production-loop.md": 20, "docs/monitoring.md": 18, "README.md": 32, "docs/architecture.md": 2,
            "docs/scaling.md": 6}
#: ... of which at least this many, in all, are checked exactly as written (no placeholders, not prose)
AT_LEAST_AS_WRITTEN = 29

#: what the docs' shell variables hold while a line is parsed or run (``day=$(date +%F)``)
SHELL_VARIABLES = {"day": "2025-01-31"}
#: an example value for each metavariable the synopses use
METAVARIABLES = {"DIR": "kb-index", "BEIR_DIR": "beir/scifact", "SOURCE": "docs/", "QUERY": "reset MFA",
                 "N": "20", "NAME": "app", "DEVICE": "cpu", "PATH": "models/cross-encoder",
                 "HUB_ID": "org/cross-encoder", "KEY_ID": "k-1", "RECORD_ID": "r-1",
                 "DOC_ID": "old-page", "FILE": "deletions.txt", "GROUP": "finance",
                 "URL": "postgresql://rankwise@db/rankwise", "ADDRESS": "auto"}
#: "and other options": dropped before parsing
ELLIPSES = {"...", "…"}

FENCE = re.compile(r"^\s*```\s*(\S*)")
INLINE = re.compile(r"`(rankwise [^`]+)`")
#: the word that starts the program: `rankwise`, a path to it, a unit's `ExecStart=/usr/local/bin/rankwise`
PROGRAM = re.compile(r"(?:Exec\w*=)?(?:\S*/)?rankwise")
REDIRECTION = re.compile(r"\d*[<>]")
METAVARIABLE = re.compile(r"[A-Z][A-Z0-9_]*")
SYNOPSIS = re.compile(r"^[\[(]|[\])]$|\|")

# A choice option is a plain string to the parser and is validated by the library when the command runs,
# so a wrong value in the docs passes make_context: each option value a line sets goes through the same
# validator here, keyed by parameter name, or by "subcommand parameter" where a name means another thing.
VALUE_CHECKS: dict[str, Callable[[str], object]] = {
    "first_stage": lambda v: choose(v, FIRST_STAGE_METHODS, "first stage"),
    "first_stages": parse_first_stages,
    "fusion": lambda v: choose(v, FUSIONS, "fusion"),
    "granularity": lambda v: choose(v, GRANULARITIES, "granularity"),
    "rerank_fusion": lambda v: choose(v, RERANK_FUSIONS, "rerank fusion"),
    "backend": lambda v: choose(v, BACKEND_CHOICES, "inference backend"),
    "embedding_backend": lambda v: choose(v, ("auto", *EMBEDDER_BACKENDS), "inference backend"),
    "architecture": lambda v: choose(v, RERANKER_KINDS, "architecture"),
    "log_queries": lambda v: choose(v, QUERY_LOGGING, "query logging"),
    "role": lambda v: choose(v, ROLES, "role"),
    "retention": lambda v: parse_duration(v, "--retention"),
    "monitor_every": lambda v: parse_duration(v, "--monitor-every"),
    "follow_interval": lambda v: v.strip() in ("0", "0s") or parse_duration(v, "--follow-interval"),
    "since": since_timestamp,
    "until": since_timestamp,
    "reference_since": since_timestamp,
    "reference_until": since_timestamp,
    "canary": lambda v: parse_share(v, "--canary"),
    "shadow_share": lambda v: parse_share(v, "--shadow-share"),
    "max_drop": lambda v: parse_share(v, "--max-drop"),
    "gate": MetricGate.parse,
    "monitor check reference": lambda v: choose(v, REFERENCES, "reference"),
}

#: documented commands run for real, by subcommand: "ok" must succeed; "refused" reads a feedback store,
#: monitoring history or audit log no traffic reached, and must say so in one `error:` line
RUN = {"": "ok", "index": "ok", "keys add": "ok", "feedback export": "refused", "feedback purge": "refused",
       "shadow report": "refused", "experiment report": "refused", "canary report": "refused",
       "monitor drift": "refused", "monitor check": "refused", "monitor list": "refused",
       "audit verify": "refused"}
MUST_RUN = {"index", "keys add", "feedback export", "shadow report", "experiment report", "canary report"}

CLI = typer.main.get_command(app)


# ------------------------------------------------------------------------------------- reading the docs
@dataclass(frozen=True)
class DocCommand:
    """One ``rankwise`` command line as a document shows it."""

    doc: str
    line: int
    words: tuple[str, ...]  # the shell words after `rankwise`, comments and redirections dropped
    inline: bool  # from prose, which often names a command without its required options

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: rankwise {' '.join(self.words)}"

    @property
    def synopsis(self) -> bool:
        """Written with placeholders: metavariables, ``[optional]`` parts, alternatives or ``...``."""
        return any(w in ELLIPSES or SYNOPSIS.search(w) or METAVARIABLE.fullmatch(w) for w in self.words)


def _logical_lines(block: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """A block's lines with backslash continuations joined, and a synopsis's indented continuation lines."""
    current: list[Any] | None = None
    for number, line in block:
        if current and current[1].endswith("\\"):
            current[1] = f"{current[1][:-1].rstrip()} {line.strip()}"
        elif (current and line[:1].isspace() and current[1].startswith("rankwise ")
              and not line.strip().startswith("#")):
            current[1] = f"{current[1]} {line.strip()}"
        else:
            if current:
                yield current[0], current[1]
            current = [number, line.strip()]
    if current:
        yield current[0], current[1]


def _command_lines(words: list[str]) -> Iterator[list[str]]:
    """The ``rankwise`` commands in one line's shell words: each `&&`/`;` part, after a crontab's schedule and
    user or a unit's ``ExecStart=``, without redirections."""
    part: list[str] = []
    for word in [*words, ";"]:
        if word not in ("&&", "||", ";"):
            part.append(word)
            continue
        starts = [i for i, w in enumerate(part) if PROGRAM.fullmatch(w)
                  and not (i + 1 < len(part) and PROGRAM.fullmatch(part[i + 1]))]
        if starts:
            yield [w for w in part[starts[0] + 1:] if not REDIRECTION.match(w)]
        part = []


def _read(doc: str) -> tuple[list[DocCommand], list[str]]:
    """The commands ``doc`` shows, and the lines that mention the program but could not be read as commands."""
    commands: list[DocCommand] = []
    unreadable: list[str] = []
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    block: list[tuple[int, str]] | None = None
    language = ""
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence and block is None:
            block, language = [], fence.group(1)
        elif fence:
            if language in COMMAND_BLOCKS:
                for start, text in _logical_lines(block):
                    try:
                        found = list(_command_lines(shlex.split(text, comments=True)))
                    except ValueError:
                        found = []
                    commands += [DocCommand(doc, start, tuple(words), inline=False) for words in found]
                    code = text.split(" #")[0]
                    if not found and not code.lstrip().startswith("#") and any(
                            PROGRAM.fullmatch(w) for w in code.split()):
                        unreadable.append(f"{doc}:{start}: {text}")
            block = None
        elif block is not None:
            block.append((number, line))
        else:
            commands += [DocCommand(doc, number, tuple(shlex.split(span)[1:]), inline=True)
                         for span in INLINE.findall(line)]
    return commands, unreadable


def _all_commands() -> list[DocCommand]:
    return [command for doc in DOCS for command in _read(doc)[0]]


COMMANDS = _all_commands()


# ----------------------------------------------------------------------------- from a line to argv lists
@dataclass(frozen=True)
class Variant:
    """One concrete command line a documented line stands for."""

    argv: tuple[str, ...]
    placeholders: frozenset[str] = frozenset()  # values standing in for metavariables: not the doc's values
    alternatives: frozenset[str] = frozenset()  # words picked from an `a|b` list

    def __str__(self) -> str:
        return f"rankwise {shlex.join(self.argv)}"


def _shell_variables(word: str, command: DocCommand) -> str:
    def value(match: re.Match[str]) -> str:
        if match.group(1) not in SHELL_VARIABLES:
            pytest.fail(f"{command}\n  ${match.group(1)} has no value here: add one to SHELL_VARIABLES")
        return SHELL_VARIABLES[match.group(1)]

    return re.sub(r"\$\{?(\w+)\}?", value, word)


def _groups(words: list[str]) -> list[list[str]]:
    """One word list per alternative of each ``( a | b )`` group."""
    opened = next((i for i, w in enumerate(words) if w.startswith("(")), None)
    if opened is None:
        return [words]
    closed = next(i for i in range(opened, len(words)) if words[i].endswith(")"))
    inner = words[opened:closed + 1]
    inner[0] = inner[0][1:]
    inner[-1] = inner[-1][:-1]
    choices = [list(g) for bar, g in itertools.groupby(inner, lambda w: w == "|") if not bar]
    return [line for choice in choices for line in _groups([*words[:opened], *choice, *words[closed + 1:]])]


def _variants(command: DocCommand) -> list[Variant]:
    words = [_shell_variables(w, command) for w in command.words]
    if not command.synopsis:
        return [Variant(tuple(words))]
    words = [w.lstrip("[").rstrip("]") for w in words if w not in ELLIPSES]
    variants = []
    for line in _groups([w for w in words if w]):
        for picked in itertools.product(*(w.split("|") for w in line)):
            unknown = [w for w in picked if METAVARIABLE.fullmatch(w) and w not in METAVARIABLES]
            if unknown:
                pytest.fail(f"{command}\n  no example value for {', '.join(unknown)}: add one to METAVARIABLES")
            variants.append(Variant(
                argv=tuple(METAVARIABLES.get(w, w) for w in picked),
                placeholders=frozenset(METAVARIABLES[w] for w in picked if w in METAVARIABLES),
                alternatives=frozenset(w for w, doc_word in zip(picked, line, strict=True) if "|" in doc_word)))
    return variants


# ------------------------------------------------------------------------------------ the CLI's parser
def _walk(command: Any = CLI, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*path, name))


def _parse(variant: Variant, partial: bool) -> tuple[str, list[Any]]:
    """Parse ``variant`` as ``rankwise`` would, down to its subcommand, without invoking anything.

    The subcommand resolved (``""`` for the program itself) and the contexts parsed on the way — none past
    an eager option that ends the command line (``--version``), nor for a leaf parsed ``partial``ly whose
    required parameters the line leaves out. Raises the CLI's own usage errors.
    """
    contexts = []
    command, path = CLI, []
    try:
        contexts.append(CLI.make_context("rankwise", list(variant.argv)))
        while hasattr(command, "commands"):
            ctx = contexts[-1]
            rest = [*ctx._protected_args, *ctx.args]  # what the group hands on, as TyperGroup.invoke reads it
            if not rest:
                if not command.invoke_without_command:
                    ctx.fail("Missing command.")
                break
            name, command, rest = command.resolve_command(ctx, rest)
            path.append(name)
            if name in variant.alternatives and not hasattr(command, "commands"):
                # one of several subcommands the line lists: which positional metavariables are its own
                # the line cannot say, nor all of its required parameters
                partial = True
                rest = [w for i, w in enumerate(rest) if not (
                    w in variant.placeholders and (i == 0 or not rest[i - 1].startswith("-")))]
            contexts.append(command.make_context(name, rest, parent=ctx))
    except typer.Exit:
        pass  # an eager option ran and ended the command line, as it does in the CLI
    except MissingParameter:
        if not partial:
            raise
    return " ".join(path), contexts


def _check_values(contexts: list[Any]) -> None:
    """Each option value the line set, through the validator the library applies when the command runs."""
    for ctx in contexts:
        subcommand = ctx.command_path.removeprefix("rankwise").strip()
        for name, value in ctx.params.items():
            source = ctx.get_parameter_source(name)
            check = VALUE_CHECKS.get(f"{subcommand} {name}", VALUE_CHECKS.get(name))
            if check is None or source is None or source.name != "COMMANDLINE":
                continue
            for item in value if isinstance(value, list | tuple) else [value]:
                check(item)


# -------------------------------------------------------------------------------------------- the tests
def test_the_docs_show_the_commands_checked_here() -> None:
    found = {doc: _read(doc) for doc in DOCS}
    counts = {doc: len(commands) for doc, (commands, _) in found.items()}
    assert all(counts[doc] >= AT_LEAST[doc] for doc in DOCS), (
        f"fewer documented commands found than expected: {counts} (at least {AT_LEAST})")
    unreadable = [line for _, lines in found.values() for line in lines]
    assert not unreadable, f"lines that run rankwise but were not read as commands: {unreadable}"
    as_written = sum(not c.synopsis and not c.inline for c in COMMANDS)
    assert as_written >= AT_LEAST_AS_WRITTEN, f"only {as_written} commands are checked exactly as written"


def test_parsing_runs_no_option_callback_but_the_version() -> None:
    """make_context processes every option, and processing calls its callback: the only one the CLI has
    prints the version and exits, so parsing the docs has no side effects. A new one must be read before
    it is added here."""
    callbacks = [f"{' '.join(('rankwise', *path))} {param.opts[0]}"
                 for path, command in _walk() for param in command.params if param.callback is not None]
    assert callbacks == ["rankwise --version"]


def test_every_value_check_names_a_parameter_of_the_cli() -> None:
    """A renamed parameter must not silently turn its value check off."""
    params = {(" ".join(path), param.name) for path, command in _walk() for param in command.params}
    names = {name for _, name in params}
    for key in VALUE_CHECKS:
        subcommand, _, name = key.rpartition(" ")
        assert ((subcommand, name) in params) if subcommand else (name in names), key


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.doc}:{c.line}:{' '.join(c.words[:2])}")
def test_a_documented_command_parses(command: DocCommand) -> None:
    for variant in _variants(command):
        try:
            _, contexts = _parse(variant, partial=command.inline)
            _check_values(contexts)
        except (typer.TyperException, RankwiseError) as error:
            message = error.format_message() if isinstance(error, typer.TyperException) else str(error)
            pytest.fail(f"{command}\n  parsed as: {variant}\n  {type(error).__name__}: {message}")


def test_the_cheap_documented_commands_run_as_written(tmp_path: Path) -> None:
    from rankwise.experiments import load_experiment
    from rankwise.feedback.store import SQLiteFeedbackStore
    from rankwise.index import Index
    from rankwise.serving.auth import KeyStore

    (tmp_path / "src" / "rankwise" / "data").mkdir(parents=True)
    (tmp_path / "src" / "rankwise" / "data" / "sample_kb").symlink_to(SAMPLE_KB, target_is_directory=True)
    experiment = tmp_path / "experiment.toml"
    experiment.write_text(_documented_file("docs/production-loop.md", "# experiment.toml"))
    load_experiment(experiment)  # the doc's experiment file is valid: its report below refuses for want of traffic
    env = {**ENV, "XDG_DATA_HOME": str(tmp_path / "user-data")}  # no default store exists: none had traffic

    runs: dict[tuple[str, ...], tuple[DocCommand, str]] = {}  # a command the docs repeat runs once
    for command in COMMANDS:
        subcommand = _runnable(command)
        if subcommand in RUN:
            runs.setdefault(_variants(command)[0].argv, (command, subcommand))
    assert MUST_RUN <= {subcommand for _, subcommand in runs.values()}, runs
    roles_added = []
    for argv, (command, subcommand) in runs.items():
        if RUN[subcommand] == "ok" and any(word.startswith("postgresql://") for word in argv):
            continue  # needs a PostgreSQL server: parsed above, run for real in test_postgres_*.py
        for i, word in enumerate(argv[:-1]):
            if word == "--feedback-db" and not (tmp_path / argv[i + 1]).exists():
                SQLiteFeedbackStore(tmp_path / argv[i + 1]).close()  # as a server creates it, before any traffic
        done = subprocess.run([sys.executable, "-m", "rankwise", *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        said = f"{command}\n  exit {done.returncode}\n  stdout: {done.stdout[-2000:]}\n  stderr: {done.stderr[-2000:]}"
        if RUN[subcommand] == "ok":
            assert done.returncode == 0, said
        else:
            lines = done.stderr.strip().splitlines()
            assert done.returncode in (1, 2) and not done.stdout, said
            assert len(lines) == 1 and lines[0].startswith("error: "), said
        if subcommand == "keys add":
            assert done.stdout.startswith("rk_") and len(done.stdout.split()) == 1, said
            roles_added.append(sorted(argv[i + 1] for i, w in enumerate(argv[:-1]) if w == "--role"))
        if subcommand == "":
            assert done.stdout.startswith("rankwise "), said

    documents = sum(1 for line in (SAMPLE_KB / "corpus.jsonl").read_text().splitlines() if line.strip())
    assert Index(tmp_path / "kb-index").manifest.num_documents == documents
    assert [sorted(key.roles) for key in KeyStore(tmp_path / "keys.json").list()] == roles_added


def _runnable(command: DocCommand) -> str | None:
    """The subcommand of a line that runs as written, or None: a synopsis, or prose that names a command
    without its required parameters."""
    if command.synopsis:
        return None
    try:
        return _parse(_variants(command)[0], partial=False)[0]
    except typer.TyperException:
        return None


def _documented_file(doc: str, first_line: str) -> str:
    """The fenced block of ``doc`` whose first line is ``first_line``: a file the doc tells readers to write."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"^```\w*\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    matching = [block for block in blocks if block.startswith(first_line + "\n")]
    assert len(matching) == 1, f"{doc} has {len(matching)} blocks starting with {first_line!r}"
    return matching[0]
