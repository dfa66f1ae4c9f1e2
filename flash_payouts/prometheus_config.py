"""A Prometheus configuration for a Prometheus on this machine, scraping the local exporter."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from .generated import ROOT

RULES = ROOT / "provisioning" / "prometheus" / "rules"


def write_local_config(folder: Path, metrics_listen: str, *, interval: str = "5s") -> Path:
    """Write prometheus.yml (and a copy of the generated alert rules) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rule_files = []
    if RULES.is_dir():
        target = folder / "rules"
        shutil.copytree(RULES, target, dirs_exist_ok=True)
        rule_files = [str(p) for p in sorted(target.glob("*.yml"))]
    host, _, port = metrics_listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rule_files,
        "scrape_configs": [
            {"job_name": "flash-payouts", "static_configs": [{"targets": [f"{host}:{port}"]}]}
        ],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
