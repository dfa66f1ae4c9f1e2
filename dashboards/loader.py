"""Finding and loading the boards: each ``*.dashboard.py`` file defines ``dashboard``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from grafanalib.core import Dashboard

from .common import POSTGRES_TYPE, to_dict

HERE = Path(__file__).resolve().parent


def dashboard_files() -> list[Path]:
    return sorted(HERE.glob("*.dashboard.py"))


def load_dashboard(path: Path) -> Dashboard:
    # The file names carry a second dot (grafanalib's convention), so they are loaded by path.
    spec = importlib.util.spec_from_file_location(f"dashboards._board_{path.stem[:-10]}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dashboard = getattr(module, "dashboard", None)
    if not isinstance(dashboard, Dashboard):
        raise TypeError(f"{path.name} defines no grafanalib Dashboard named 'dashboard'")
    return dashboard


def load_dashboards() -> dict[str, Dashboard]:
    """Board file stem (``payouts_overview``) -> its dashboard."""
    return {
        path.name.removesuffix(".dashboard.py"): load_dashboard(path) for path in dashboard_files()
    }


def sql_queries() -> list[tuple[str, str, str]]:
    """(board uid, panel or variable title, raw SQL) for every SQL query of every board."""
    found = []
    for board in load_dashboards().values():
        data = to_dict(board)
        for panel in data["panels"]:
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") == POSTGRES_TYPE:
                    found.append((data["uid"], panel["title"], target["rawSql"]))
        for variable in data["templating"]["list"]:
            if (variable.get("datasource") or {}).get("type") == POSTGRES_TYPE:
                found.append((data["uid"], f"${variable['name']}", variable["query"]))
    return found
