"""Grafana's query interpolation, reproduced for running the boards' queries outside Grafana.

Tests and the benchmark run every panel query against a real PostgreSQL and a real Prometheus;
this turns a panel's text into what Grafana would send for a given time range and variable
values: ``$__timeFilter``, ``$__timeFrom()``, ``$__timeTo()``, ``$__timeGroup[Alias]`` for the
PostgreSQL datasource, ``$__range``, ``$__interval`` and ``$__rate_interval`` for Prometheus,
and variables in the formats the boards use (``$name``, ``${name}``, ``${name:sqlstring}``,
``${name:queryparam}``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

Value = str | Sequence[str]

_VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000}


@dataclass(frozen=True)
class Frame:
    """A time range and the variables' current values, as a board would have them."""

    time_from: datetime
    time_to: datetime
    variables: Mapping[str, Value] = field(default_factory=dict)
    interval: str = "1m"  # Grafana's $__interval for the panel's width and range
    scrape_interval: str = "15s"

    @classmethod
    def last(cls, span: timedelta, **kwargs: object) -> Frame:
        now = datetime.now(UTC).replace(microsecond=0)
        return cls(time_from=now - span, time_to=now, **kwargs)  # type: ignore[arg-type]


def seconds(interval: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|M)", interval.strip())
    if not m:
        raise ValueError(f"not an interval: {interval!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _rfc3339(moment: datetime) -> str:
    """Go's time.RFC3339Nano in UTC, as Grafana's PostgreSQL macros write the range."""
    utc = moment.astimezone(UTC)
    fraction = f"{utc.microsecond:06d}".rstrip("0")
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def _values(value: Value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _sql_variable(frame: Frame, name: str, fmt: str | None, original: str) -> str:
    if name not in frame.variables:
        return original
    value = frame.variables[name]
    if fmt == "sqlstring":
        return ",".join(_quote(v) for v in _values(value))
    if isinstance(value, str):
        return value  # Grafana puts a single value into SQL as it is
    return ",".join(_quote(v) for v in value)


def _prom_variable(frame: Frame, name: str, fmt: str | None, original: str) -> str:
    if name not in frame.variables:
        return original
    value = frame.variables[name]
    if isinstance(value, str):
        return value
    # Multi-value variables become an escaped regex alternation, as Grafana renders them.
    return "(" + "|".join(re.sub(r"([\\.^$*+?()\[\]{}|])", r"\\\\\1", v) for v in value) + ")"


def _builtin(frame: Frame) -> dict[str, str]:
    span = int((frame.time_to - frame.time_from).total_seconds())
    scrape = seconds(frame.scrape_interval)
    step = seconds(frame.interval)
    return {
        "__range": f"{span}s",
        "__range_s": str(span),
        "__interval": frame.interval,
        "__interval_ms": str(int(step * 1000)),
        "__rate_interval": f"{int(max(step + scrape, 4 * scrape))}s",
    }


def expand_prometheus(expr: str, frame: Frame) -> str:
    builtin = _builtin(frame)

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name in builtin:
            return builtin[name]
        return _prom_variable(frame, name, m.group(2), m.group(0))

    return _VAR.sub(sub, expr)


def _time_group(column: str, interval: str, alias: bool) -> str:
    n = seconds(interval)
    n_text = str(int(n)) if n.is_integer() else str(n)
    group = f"floor(extract(epoch from {column})/{n_text})*{n_text}"
    return f'{group} AS "time"' if alias else group


def expand_sql(raw: str, frame: Frame) -> str:
    builtin = _builtin(frame)

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name in ("__interval", "__interval_ms"):
            return builtin[name]
        if name.startswith("__"):
            return m.group(0)  # a macro, expanded below
        return _sql_variable(frame, name, m.group(2), m.group(0))

    text = _VAR.sub(sub, raw)
    start, end = _quote(_rfc3339(frame.time_from)), _quote(_rfc3339(frame.time_to))
    text = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN {start} AND {end}", text)
    text = text.replace("$__timeFrom()", start).replace("$__timeTo()", end)

    def group(m: re.Match[str]) -> str:
        args = [a.strip() for a in m.group(2).split(",")]
        return _time_group(args[0], args[1], alias=m.group(1) == "Alias")

    text = re.sub(r"\$__timeGroup(Alias)?\(([^)]+)\)", group, text)
    if "$__" in text:
        raise ValueError(f"unexpanded macro in: {text}")
    return text
