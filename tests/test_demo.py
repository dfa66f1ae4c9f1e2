"""The demo, the README's main command, as a newcomer runs it: real traffic, then a clean exit."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str | None = None) -> str:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.read().decode()


def sample(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def refused_taps(metrics: str) -> float:
    """Taps refused for what a card or a forger did (not the unreadable ones)."""
    return sum(
        sample(metrics, "flash_taps_total", outcome=o)
        for o in ("replay", "bad_mac", "unknown_card")
    )


def statuses(metrics: str) -> set[str]:
    return {
        s
        for s in ("Completed", "Processing", "Failed")
        if sample(metrics, "flash_payouts", status=s)
    }


def test_demo_drives_real_traffic_and_leaves_a_consistent_ledger(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gateway", "api", "metrics")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_")}
    env.update({f"FLASH_{n.upper()}_LISTEN": f"127.0.0.1:{p}" for n, p in ports.items()})
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flash_payouts",
                "demo",
                "--duration",
                "25",
                "--rate",
                "8",
                "--seed",
                "7",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 90
            while "API token" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
            text = log.read_text()
            token = re.search(r"API token +(\S+)", text).group(1)
            store = re.search(r"store (\S+), pull payment", text).group(1)
            # Watch the metrics until the demo has shown what it shows, for most of its run.
            watch_until = time.monotonic() + 20
            while True:
                time.sleep(2)
                metrics = get(f"http://127.0.0.1:{ports['metrics']}/metrics")
                if refused_taps(metrics) > 0 and len(statuses(metrics)) >= 2:
                    break
                if time.monotonic() > watch_until:
                    break
            payouts = get(
                f"http://127.0.0.1:{ports['api']}/plugins/flash/api/payouts?storeId={store}&limit=500",
                token,
            )
        finally:
            proc.wait(timeout=120)
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output

    assert sample(metrics, "flash_taps_total", outcome="accepted") > 0
    assert refused_taps(metrics) > 0
    assert len(statuses(metrics)) >= 2, statuses(metrics)
    assert '"boltcardId": "' in payouts or '"boltcardId":"' in payouts

    corrected = re.search(
        r"reconcile after the demo: (\d+) payouts checked against BTCPay, (\d+) corrected", output
    )
    assert corrected, output[-2000:]
    assert int(corrected.group(1)) > 0 and int(corrected.group(2)) == 0
