"""The guides' command-line examples run as shown.

Blocks fenced as ``sh`` need nothing outside this machine: they run, in order, in an empty
folder. Blocks fenced as ``shell`` need a BTCPay Server, PostgreSQL, Prometheus or Docker; for
those, every `flash-payouts` command they name must at least exist with the flags shown.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from flash_payouts.generated import ROOT

GUIDES = ["docs/operator-guide.md", "docs/user-guide.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(guide: str, kind: str) -> list[str]:
    text = (ROOT / guide).read_text()
    return [body for lang, body in FENCE.findall(text) if lang == kind]


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path)
    return env


@pytest.mark.parametrize("guide", GUIDES)
def test_runnable_examples_run_as_shown(guide: str, tmp_path: Path) -> None:
    script = "\n".join(blocks(guide, "sh"))
    assert script.strip(), f"{guide} shows no runnable example"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{guide}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr


def _commands(body: str) -> list[list[str]]:
    joined = body.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if "flash-payouts " not in line:
            continue
        words = shlex.split(line[line.index("flash-payouts ") :].split("&&")[0])
        found.append(words)
    return found


@pytest.mark.parametrize("guide", GUIDES)
def test_examples_needing_services_name_real_commands_and_flags(guide: str, tmp_path: Path) -> None:
    commands = [cmd for body in blocks(guide, "shell") for cmd in _commands(body)]
    for words in commands:
        # The sub-command path is the leading words without a dash; the flags must parse.
        path = []
        for word in words[1:]:
            if word.startswith("-"):
                break
            path.append(word)
        flags = [w for w in words[1 + len(path) :] if w.startswith("--")]
        helped = subprocess.run(
            [sys.executable, "-m", "flash_payouts", *path[:2], "--help"],
            env=clean_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert helped.returncode == 0, f"{guide}: `{' '.join(words)}` is not a command"
        for flag in flags:
            assert flag.split("=")[0] in helped.stdout, (
                f"{guide}: {flag} unknown in `{' '.join(words)}`"
            )
