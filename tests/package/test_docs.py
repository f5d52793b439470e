"""README.md and docs/*.md stay true to the code: every documented ``copd-ifm`` command parses with the real
parser (a renamed or removed flag fails here, not for the reader), every ``make`` target, ``pipelines/`` script,
config and repository path they name exists, and every relative link resolves."""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from copd_ifm.cli import build_parser, main
from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&"}
REPO_DIRS = ("copd_ifm", "natural_images", "configs", "pipelines", "benchmarks", "tests", "docs")
# a placeholder a reader fills in (RUN, DATASET_METHOD, <sid>, {train,val}, *): such a path is not checked as named
PLACEHOLDER = re.compile(r"[<>{}]|(?<![a-z])[A-Z][A-Z_]+(?![a-z])")


def _name(doc: Path) -> str:
    return str(doc.relative_to(REPO))


def _fenced_shell(text: str) -> list[str]:
    """The logical lines of the shell code blocks (``\\`` continuations joined), comment-only lines dropped."""
    lines = []
    for lang, body in re.findall(r"^```([A-Za-z]*)\n(.*?)^```", text, flags=re.M | re.S):
        if lang in SHELL_FENCES:
            joined = re.sub(r"\\\n\s*", " ", body)
            lines += [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return lines


def _inline_code(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", prose)


def _expand(line: str, env: dict[str, str]) -> str:
    """Shell variables as a reader's shell would see them: ``${N:-48}`` → 48, a variable set earlier in the
    block → its value, any other → 0 (a value every documented use of one accepts: ranks, shard indices)."""
    line = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m[1], m[2] if m[2] is not None else "0"), line)
    return re.sub(r"\$(\w+)", lambda m: env.get(m[1], "0"), line)


def _usage_variants(tokens: list[str]) -> list[list[str]]:
    """Usage notation as written in the docs: ``[--opt V]`` is given, ``a|b|c`` is each of a, b, c, ``PATH...``
    is one PATH."""
    words = [t if "=" in t else t.strip("[]").removesuffix("...") for t in tokens]   # KEY=[a, b] is a value
    choices = [w.split("|") if "|" in w and "=" not in w else [w] for w in words if w]
    return [list(v) for v in itertools.product(*choices)]


def _commands(doc: Path) -> list[tuple[str, list[str]]]:
    """(line, tokens) of every command line in the doc's shell blocks, variables expanded."""
    env: dict[str, str] = {}
    out = []
    for line in _fenced_shell(doc.read_text(encoding="utf-8")):
        if m := re.fullmatch(r"(\w+)=(\S*)", line):
            env[m[1]] = shlex.split(m[2])[0] if m[2] else ""
            continue
        out.append((line, shlex.split(_expand(line, env), comments=True)))
    return out


def _cli_argv(tokens: list[str]) -> list[str] | None:
    """The ``copd-ifm`` arguments of a command line (``copd-ifm``, ``python -m copd_ifm``, ``torchrun … -m
    copd_ifm``), else None."""
    ends = [i for i, t in enumerate(tokens) if t in SHELL_OPERATORS]
    tokens = tokens[:ends[0]] if ends else tokens      # the first command of a pipe or list
    if tokens and tokens[0] == "copd-ifm":
        return tokens[1:]
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] == "copd_ifm" and re.search(r"(python3?|torchrun)$", tokens[0]):
            return tokens[i + 2:]
    return None


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace | None, str]:
    """``parse_args`` without running anything: the namespace, or None and argparse's one-line error."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv), ""
    except SystemExit:
        return None, err.getvalue().strip()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _command_path(argv: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The leading sub-command words of ``argv`` (``vision study``) and the parser they select."""
    parser, path = build_parser(), []
    for word in argv:
        sub = _subparsers(parser)
        if word not in sub:
            break
        parser, path = sub[word], [*path, word]
    return path, parser


def _config_missing(value: str | None) -> bool:
    """A ``--config`` / ``--cohort`` value names nothing shipped: neither a YAML under configs/ nor a file path."""
    if value is None or PLACEHOLDER.search(value) or value.endswith((".csv", ".yaml", ".yml")):
        return False
    return not any((REPO / "configs").rglob(f"{value}.yaml"))


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", (REPO / "Makefile").read_text(encoding="utf-8"), flags=re.M))


def _repo_paths(text: str) -> set[str]:
    """Repository paths named in code spans and shell blocks (``copd_ifm/ct/dicom.py``, ``configs/cohorts/``)."""
    spans = _inline_code(text) + _fenced_shell(text)
    found = set()
    for span in spans:
        for m in re.finditer(rf"(?<![\w./$-])((?:{'|'.join(REPO_DIRS)})/[\w./*<>{{}},-]*)", span):
            found.add(m[1].rstrip(".,"))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_documented_commands_parse_with_the_real_parser(doc: Path) -> None:
    parser = build_parser()
    failures = []
    for line, tokens in _commands(doc):
        argv = _cli_argv(tokens)
        if argv is None:
            continue
        for variant in _usage_variants(argv):
            args, error = _parse(parser, variant)
            if args is None:
                failures.append(f"{line!r}: {error}")
            elif _config_missing(getattr(args, "config", None)) or _config_missing(getattr(args, "cohort", None)):
                failures.append(f"{line!r}: --config/--cohort names no YAML under configs/")
    assert not failures, f"{_name(doc)}:\n" + "\n".join(failures)


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_flags_in_inline_commands_exist(doc: Path) -> None:
    """`copd-ifm STAGE --flag …` in prose may be partial, but each flag it shows must belong to that command."""
    failures = []
    for span in _inline_code(doc.read_text(encoding="utf-8")):
        if not span.startswith("copd-ifm "):
            continue
        words = [w.strip("[]") for w in span.split()[1:]]
        path, parser = _command_path(words)
        known = {s for a in parser._actions for s in a.option_strings}
        flags = {w.split("=", 1)[0] for w in words if w.startswith("--")}
        failures += [f"`{span}`: {flag} is not an option of copd-ifm {' '.join(path)}" for flag in sorted(flags - known)]
        configs = [after for flag, after in zip(words, words[1:]) if flag in ("--config", "--cohort")]
        failures += [f"`{span}`: {name} names no YAML under configs/" for name in configs if _config_missing(name)]
    assert not failures, f"{_name(doc)}:\n" + "\n".join(failures)


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_make_targets_and_pipeline_scripts_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    targets = _make_targets()
    named = {w for _, tokens in _commands(doc) if tokens[:1] == ["make"]
             for w in tokens[1:] if "=" not in w and not w.startswith("-")}
    named |= set(re.findall(r"`make ([\w-]+)", text))
    assert named <= targets, f"{_name(doc)}: make targets not in the Makefile: {sorted(named - targets)}"
    scripts = set(re.findall(r"pipelines/[\w.-]+\.sh", text))
    missing = sorted(s for s in scripts if not (REPO / s).is_file())
    assert not missing, f"{_name(doc)}: no such script: {missing}"
    for script in sorted(scripts):   # bash -n: the script at least parses
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_named_repository_paths_and_links_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = []
    for path in sorted(_repo_paths(text)):
        if "*" in path:
            ok = any(REPO.glob(path))
        elif PLACEHOLDER.search(path):
            continue
        else:
            ok = (REPO / path).exists() or (REPO / f"{path}.yaml").is_file()
        if not ok:
            missing.append(path)
    links = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    for link in links:
        target = link.split("#", 1)[0]
        if target and not re.match(r"[a-z]+:", target) and not (doc.parent / target).exists():
            missing.append(f"link {link}")
    assert not missing, f"{_name(doc)}: named but not in the repository: {missing}"


def _documented_command_paths() -> list[tuple[str, ...]]:
    paths = set()
    for doc in DOCS:
        for _, tokens in _commands(doc):
            if (argv := _cli_argv(tokens)) is not None:
                paths.add(tuple(_command_path(argv)[0]))
    return sorted(paths)


def test_every_documented_command_answers_help() -> None:
    """``copd-ifm … --help`` run for real (in-process) for every command the docs show, and the entry point once
    as a user runs it."""
    paths = _documented_command_paths()
    assert ("pretrain",) in paths and ("vision", "pretrain") in paths and ("export",) in paths
    for path in paths:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0 and out.getvalue().startswith(f"usage: copd-ifm {' '.join(path)}".rstrip())
    proc = subprocess.run([sys.executable, "-m", "copd_ifm", "--help"], cwd=REPO, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)
    assert proc.returncode == 0 and "vision" in proc.stdout and "study" in proc.stdout


def test_documented_inspect_of_the_test_series_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """The cheap example that needs no external data, run for real: `inspect` of the DICOM series in tests/data."""
    runs = [argv for doc in DOCS for _, tokens in _commands(doc) if (argv := _cli_argv(tokens)) is not None
            and argv[:1] == ["inspect"] and all((REPO / a).exists() for a in argv[1:] if not a.startswith("-"))]
    assert runs, "the docs show no inspect of a folder in the repository"
    for argv in runs:
        assert main([argv[0], *(str(REPO / a) if (REPO / a).exists() else a for a in argv[1:])]) == 0
        assert capsys.readouterr().out.rstrip().endswith(": ok")


def test_the_readme_opens_with_the_two_commands() -> None:
    """CI and a first-time reader start from the README's opening block: `make demo`, then `make test`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first = re.search(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)
    assert first is not None and text.index(first[0]) < text.index("\n## ")
    assert [line.split()[:2] for line in first[1].splitlines()] == [["make", "demo"], ["make", "test"]]
    assert "run the whole test suite" in first[1]
