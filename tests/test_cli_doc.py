"""One source for the command line: each subcommand's parser is built from ``jobs.cli.FLAGS``
alone, ``docs/cli.md`` is that table, and what each subcommand parses when a flag is absent is
what the page says (label: 10 views; evaluate and benchmark: 30).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import cli

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"
#: the least each subcommand parses with (label's --output is required)
MINIMAL = {"evaluate": ["evaluate"], "label": ["label", "--output", "out"], "benchmark": ["benchmark"]}
#: the defaults the issue and the README promise, held here by hand (not read from the table)
PROMISED = {"evaluate": {"views": 30, "precision": "fp32", "shard_size": 256, "save_probs": True},
            "label": {"views": 10, "top_k": 5, "max_attempts": 3, "shard_size": 256},
            "benchmark": {"views": 30, "duration": 20.0, "repeats": 3, "warmup": 5.0}}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "X3D_PRESETS_MODULE"}  # the shipped presets only
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_page_is_generated_from_the_parsers():
    made = subprocess.run([sys.executable, "-m", "jobs.cli"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert PAGE.read_text() == made.stdout, "regenerate: python -m jobs.cli > docs/cli.md"


def _documented(command: str) -> dict[str, object]:
    """flag -> the default the page's table gives it, for one subcommand."""
    text = PAGE.read_text()
    start = text.index(f"## `{command}`")
    end = text.find("\n## ", start + 1)
    rows = re.findall(r"^\| (`--[^|]*?) \| `([^`]*)` \|", text[start:end if end > 0 else None], re.M)
    return {re.findall(r"`(--[\w-]+)`", flags)[0]: ast.literal_eval(default) for flags, default in rows}


def _subparser(command: str):
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0]))]
    return sub.choices[command]


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_parsed_defaults_are_the_documented_ones(command: str):
    args = vars(cli.parse_args(MINIMAL[command][:1] + MINIMAL[command][1:]))
    documented = _documented(command)
    actions = {a.option_strings[0]: a.dest for a in _subparser(command)._actions if a.option_strings and a.dest != "help"}
    assert set(documented) == set(actions), "the page and the parser list different flags"
    for flag, dest in actions.items():
        if flag == "--output" and command == "label":
            continue  # required: given above
        assert args[dest] == documented[flag], f"{command} {flag}: parsed {args[dest]!r}, documented {documented[flag]!r}"
    for dest, value in PROMISED[command].items():
        assert args[dest] == value, f"{command} --{dest}: parsed {args[dest]!r}, promised {value!r}"


def test_no_action_is_shared_between_subcommands():
    """argparse ``parents=`` shares action objects, which let benchmark's ``set_defaults(views=30)``
    become label's default; every subcommand's actions must be its own."""
    seen: dict[int, str] = {}
    for command in cli.COMMANDS:
        for action in _subparser(command)._actions:
            assert id(action) not in seen, f"{action.option_strings} shared by {seen[id(action)]} and {command}"
            seen[id(action)] = command


def test_label_help_shows_only_labels_defaults():
    shown = subprocess.run([sys.executable, str(ROOT / "submit.py"), "label", "--help"], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "test views per video [10]" in text
    for other in ("benchmark:", "the dataset's", "random", "[30]", "evaluate, benchmark"):
        assert other not in text, f"label --help mentions {other!r}"


def test_copied_constants_match_their_sources():
    """jobs.cli keeps copies so that --help does not import torch (x3d.predict) — they must agree."""
    from jobs.datasets import FORMATS
    from x3d.predict import PRECISIONS

    assert cli.PRECISIONS == PRECISIONS
    assert cli.ANN_FORMATS == ("auto", *FORMATS)
