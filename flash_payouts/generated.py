"""Files generated from code: one command writes them, and a test fails when they are stale."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .settings import configuration_markdown

ROOT = Path(__file__).resolve().parent.parent


def _producers() -> dict[str, Callable[[], str]]:
    producers: dict[str, Callable[[], str]] = {"docs/configuration.md": configuration_markdown}
    try:
        from exporter.catalogue import metrics_markdown
    except ImportError:
        pass
    else:
        producers["docs/metrics.md"] = metrics_markdown
    return producers


def generated_docs() -> dict[str, str]:
    """Relative path -> the content it must have."""
    return {path: produce() for path, produce in _producers().items()}


def write_docs(root: Path = ROOT) -> list[str]:
    """Write every generated document under ``root``; returns the paths that changed."""
    changed = []
    for rel, content in generated_docs().items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text() != content:
            target.write_text(content)
            changed.append(rel)
    return changed
