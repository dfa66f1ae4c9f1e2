"""The `flash-payouts` command as an operator meets it: help, settings, one-line failures, serve."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from flash_payouts.generated import ROOT, generated_docs
from flash_payouts.settings import OPTIONS, ConfigError, Settings, load
from ledger import migrate

KEY = "11" * 32


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "flash_payouts", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_every_command_and_every_setting() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("migrate", "serve", "exporter", "keygen", "docs"):
        assert command in top.stdout
    serve_help = run_cli("serve", "--help").stdout
    for opt in OPTIONS:
        assert opt.flag in serve_help
        assert opt.env in serve_help


def test_flags_win_over_environment_which_wins_over_defaults() -> None:
    import argparse

    ns = argparse.Namespace(**{o.name: None for o in OPTIONS})
    assert load(ns, env={}).k1_ttl == Settings().k1_ttl
    assert load(ns, env={"FLASH_K1_TTL": "42"}).k1_ttl == 42.0
    ns.k1_ttl = "7"
    assert load(ns, env={"FLASH_K1_TTL": "42"}).k1_ttl == 7.0


def test_secrets_never_appear_in_repr_or_error_messages() -> None:
    settings = load(None, env={"FLASH_MASTER_KEY": KEY, "FLASH_BTCPAY_API_KEY": "topsecret"})
    assert KEY not in repr(settings) and "topsecret" not in repr(settings)
    with pytest.raises(ConfigError) as err:
        load(None, env={"FLASH_API_BURST": "not-a-number"})
    assert "not-a-number" in str(err.value)


def test_generated_documents_are_up_to_date() -> None:
    for rel, content in generated_docs().items():
        path = ROOT / rel
        assert path.exists(), f"{rel} is missing: run `flash-payouts docs generate`"
        assert path.read_text() == content, f"{rel} is stale: run `flash-payouts docs generate`"


def test_unreachable_database_is_one_line_and_non_zero(tmp_path: Path) -> None:
    port = free_port()
    result = run_cli(
        "serve",
        "--database-url",
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere",
        env={"FLASH_MASTER_KEY": KEY},
        cwd=tmp_path,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach database" in lines[0] and str(port) in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["--database-url", "definitely not a url"],
            {"FLASH_MASTER_KEY": KEY},
            "malformed database URL",
        ),
        (["--database-url", "mysql://x/y"], {"FLASH_MASTER_KEY": KEY}, "unsupported database"),
        (["--gateway-listen", "nope"], {"FLASH_MASTER_KEY": KEY}, "not HOST:PORT"),
        ([], {}, "no master key"),
        ([], {"FLASH_MASTER_KEY": "short"}, "master key unusable"),
        ([], {"FLASH_MASTER_KEY_FILE": "/nonexistent/key"}, "cannot read master key file"),
        (["--public-url", "cards.example"], {"FLASH_MASTER_KEY": KEY}, "not an http(s) URL"),
        ([], {"FLASH_MASTER_KEY": KEY, "FLASH_BTCPAY_URL": "https://x:port"}, "FLASH_BTCPAY_URL"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path: Path, args, env, expected) -> None:
    result = run_cli("serve", *args, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["cards", "limits", "c1", "--tx-limit", "abc"], "'abc' is not a whole number of sats"),
        (["cards", "wipe"], "the following arguments are required: card"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
        (["serve", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_usage_errors_are_one_line_naming_the_command(tmp_path: Path, args, expected) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert result.stderr.startswith("flash-payouts") and "--help" in result.stderr


def test_migrating_to_an_unknown_revision_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    env = {"FLASH_MASTER_KEY": KEY}
    first = run_cli("migrate", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    for extra in ([], ["--downgrade"]):
        result = run_cli("migrate", "--revision", "nope", *extra, env=env, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Can't locate revision identified by 'nope'" in result.stderr
    url = f"sqlite+aiosqlite:///{tmp_path}/flash-payouts.db"
    assert f"at revision {migrate.current_revision(url)}" in first.stdout
    assert migrate.current_revision(url) is not None


def test_serve_on_an_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    result = run_cli("serve", env={"FLASH_MASTER_KEY": KEY}, cwd=tmp_path)
    assert result.returncode == 2
    assert "run `flash-payouts migrate`" in result.stderr


def test_migrate_then_serve_answers_on_all_three_listeners(tmp_path: Path) -> None:
    assert run_cli("migrate", cwd=tmp_path).returncode == 0
    assert (tmp_path / "flash-payouts.db").exists()  # the embedded default, in the working dir
    ports = {name: free_port() for name in ("gateway", "api", "metrics")}
    env = {"FLASH_MASTER_KEY": KEY}
    env.update({f"FLASH_{n.upper()}_LISTEN": f"127.0.0.1:{p}" for n, p in ports.items()})
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_")} | env
    proc = subprocess.Popen(
        [sys.executable, "-m", "flash_payouts", "serve"],
        cwd=tmp_path,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        answers = asyncio.run(_poll_health(ports.values()))
        assert answers == [200, 200, 200]
        # A second instance on the same ports fails with one line naming the address.
        second = run_cli("serve", env=env, cwd=tmp_path)
        assert second.returncode == 2
        assert "cannot listen on 127.0.0.1:" in second.stderr
        assert second.stderr.count("\n") == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0  # SIGTERM is a clean shutdown


async def _poll_health(ports) -> list[int]:
    deadline = time.monotonic() + 30
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        for port in ports:
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                        statuses.append(resp.status)
                        break
                except aiohttp.ClientConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
    return statuses
