"""Every script's ``--help``, as a user runs it, says each flag's default (or that the flag is
required): README sends the reader there for them."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

import prepare_market
import reproduce
import test as test_script
from core_reid.options import build_parser
from core_reid.utils import shown_default

REPO = Path(__file__).resolve().parents[1]
PARSERS = {"prepare_market.py": prepare_market.build_parser,
           "train_self.py": lambda: build_parser("train_self.py"),
           "train_core.py": lambda: build_parser("train_core.py"),
           "test.py": test_script.build_parser,
           "reproduce.py": reproduce.build_parser}


def help_blocks(text: str) -> dict[str, str]:
    """Each flag's entry in ``--help`` (its line and the indented lines below), one line."""
    blocks: dict[str, str] = {}
    flag = None
    for line in text.split("options:", 1)[1].splitlines():
        start = re.match(r"^  (-[-\w]+)", line)
        if start:
            flag = start.group(1)
            blocks[flag] = line
        elif flag and line.startswith("    "):
            blocks[flag] += " " + line.strip()
    return blocks


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_help_gives_every_flags_default(script):
    shown = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    blocks = help_blocks(shown.stdout)
    flags = [action for action in PARSERS[script]()._actions
             if action.option_strings and action.default is not argparse.SUPPRESS]
    assert {action.option_strings[0] for action in flags} == set(blocks) - {"-h"}
    for action in flags:
        block = blocks[action.option_strings[0]]
        if action.required:
            assert block.endswith("(required)"), block
        elif "default:" not in (action.help or ""):  # else the help says it in its own words
            default = shown_default(action.default).replace("%%", "%")
            assert block.endswith(f"(default: {default})"), block
        assert "default:" in block or "(required)" in block, block
