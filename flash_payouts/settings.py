"""Every option of the monitor: one table, read from flags and ``FLASH_*`` environment variables.

The table below is the one source for ``--help``, for ``Settings`` and for the generated
``docs/configuration.md``. A flag wins over the environment, which wins over the default.
Secrets (the master key, API keys) are never part of ``repr`` and never printed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ledger.db import DEFAULT_DATABASE_URL, DatabaseUrlError, parse_database_url


class ConfigError(Exception):
    """Configuration that cannot work; the message is one line for the operator."""


def listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen address {value!r} is not HOST:PORT")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be positive")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be positive")
    return number


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _network(value: str) -> str:
    if value not in NETWORKS:
        raise ValueError(f"must be one of {', '.join(NETWORKS)}")
    return value


NETWORKS = ("bitcoin", "testnet", "signet", "regtest")


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    secret: bool = False
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "FLASH_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option(
        "database_url",
        DEFAULT_DATABASE_URL,
        "Ledger database: sqlite+aiosqlite:///FILE (embedded) or postgresql+psycopg://USER@HOST/DB.",
        metavar="URL",
    ),
    Option(
        "db_pool_size",
        10,
        "Connections per process to PostgreSQL, kept open; make it cover the requests a process"
        " has in flight (beyond it, up to as many again are opened and closed per request).",
        _non_negative_int,
        metavar="N",
    ),
    Option(
        "gateway_listen",
        "127.0.0.1:8080",
        "Public listener: Boltcard taps, LNURL callbacks and BTCPay webhooks.",
        metavar="HOST:PORT",
    ),
    Option(
        "api_listen", "127.0.0.1:8081", "REST API listener (authenticated).", metavar="HOST:PORT"
    ),
    Option(
        "metrics_listen",
        "127.0.0.1:9810",
        "Prometheus /metrics listener (internal).",
        metavar="HOST:PORT",
    ),
    Option(
        "public_url",
        "",
        "Base URL at which wallets and BTCPay reach the gateway (default: http://GATEWAY_LISTEN).",
        metavar="URL",
    ),
    Option(
        "master_key",
        "",
        "Master key (64 hex characters or base64 of 32 bytes) sealing card keys and webhook "
        "secrets at rest.",
        secret=True,
        metavar="KEY",
    ),
    Option(
        "master_key_file",
        "",
        "File holding the master key (instead of FLASH_MASTER_KEY).",
        metavar="PATH",
    ),
    Option(
        "btcpay_url",
        "",
        "BTCPay Server base URL, for `btcpay connect`; for `cards add|import` and "
        "`btcpay issuer` on a store not connected yet, where their pull payments are read.",
        metavar="URL",
    ),
    Option(
        "btcpay_api_key",
        "",
        "Greenfield API key, for `btcpay connect`.",
        secret=True,
        metavar="KEY",
    ),
    Option(
        "btcpay_timeout",
        10.0,
        "Seconds to wait for BTCPay on any one call.",
        _positive_float,
        metavar="SECONDS",
    ),
    Option(
        "btcpay_card_proxy",
        False,
        "Stand in front of BTCPay's /boltcard: taps of cards the gateway does not manage are "
        "recorded, linked to their payouts and forwarded to BTCPay (true/false).",
        _flag,
        metavar="BOOL",
    ),
    Option(
        "btcpay_boltcard_url",
        "",
        "BTCPay base URL that such taps are forwarded to (default: each store's BTCPay URL); "
        "it must not route back to the gateway.",
        metavar="URL",
    ),
    Option(
        "reconcile_interval",
        300.0,
        "Seconds between full reconciles with BTCPay inside `serve`.",
        _positive_float,
        metavar="SECONDS",
    ),
    Option(
        "k1_ttl",
        300.0,
        "Seconds a tap's k1 stays valid for the callback.",
        _positive_float,
        metavar="SECONDS",
    ),
    Option(
        "network",
        "bitcoin",
        "Lightning network the invoices must be for: " + ", ".join(NETWORKS) + ".",
        _network,
        metavar="NAME",
    ),
    Option(
        "min_withdrawable_sats",
        1,
        "Smallest withdrawal offered to a wallet, in sats.",
        _non_negative_int,
        metavar="SATS",
    ),
    Option(
        "default_tx_limit_sats",
        100_000,
        "Per-transaction limit of new cards, in sats.",
        _non_negative_int,
        metavar="SATS",
    ),
    Option(
        "default_day_limit_sats",
        1_000_000,
        "Per-day limit of new cards, in sats.",
        _non_negative_int,
        metavar="SATS",
    ),
    Option(
        "metrics_top_cards",
        20,
        "Cards given their own series (top K by recent activity); 0: none.",
        _non_negative_int,
        metavar="K",
    ),
    Option(
        "metrics_slow_max_age",
        60.0,
        "Seconds the slow-moving readings (active cards over 1d/30d, the choice of the top "
        "cards) are reused between scrapes; 0: every scrape reads them.",
        _non_negative_float,
        metavar="SECONDS",
    ),
    Option(
        "api_rate",
        20.0,
        "API requests per second per credential (token bucket rate).",
        _positive_float,
        metavar="PER_SECOND",
    ),
    Option(
        "api_burst",
        60,
        "API burst per credential (token bucket size).",
        _non_negative_int,
        metavar="N",
    ),
    Option(
        "grafana_db_password",
        "",
        "Password given to Grafana's read-only PostgreSQL role when `migrate` creates it "
        "(default flash_grafana: change it outside a local trial).",
        secret=True,
        metavar="PASSWORD",
    ),
    Option(
        "grafana_url",
        "http://localhost:3000",
        "Grafana's address as people open it: the alerts' links to the boards (used by "
        "`dashboards generate`) and the scheduled reports' link point there.",
        metavar="URL",
    ),
    Option(
        "api_url",
        "",
        "The API's address as merchants' browsers reach it: the boards' export links point "
        "there (used by `dashboards generate`; default: http://API_LISTEN).",
        metavar="URL",
    ),
    Option(
        "runbook_url",
        "docs/user-guide.md",
        "Where the user guide is published: each alert's runbook_url is its section there "
        "(used by `dashboards generate`).",
        metavar="URL",
    ),
    Option(
        "report_interval",
        60.0,
        "Seconds between checks of the report schedules inside `serve`.",
        _positive_float,
        metavar="SECONDS",
    ),
    Option(
        "report_retry_base",
        60.0,
        "Seconds before a failed report send is tried again; each further retry waits three "
        "times as long.",
        _positive_float,
        metavar="SECONDS",
    ),
    Option(
        "report_attempts",
        6,
        "Attempts at sending one report on one channel before it is given up.",
        _positive_int,
        metavar="N",
    ),
    Option(
        "report_send_timeout",
        30.0,
        "Seconds one report send (SMTP or webhook) may take.",
        _positive_float,
        metavar="SECONDS",
    ),
    Option(
        "report_attachment_max_rows",
        100_000,
        "Most payouts a report's spreadsheet attachment holds; a larger period's email says "
        "how to export them instead.",
        _non_negative_int,
        metavar="N",
    ),
    Option("log_level", "info", "Log level: debug, info, warning, error.", metavar="LEVEL"),
)

_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    db_pool_size: int = 10
    gateway_listen: str = "127.0.0.1:8080"
    api_listen: str = "127.0.0.1:8081"
    metrics_listen: str = "127.0.0.1:9810"
    public_url: str = ""
    master_key: str = field(default="", repr=False)
    master_key_file: str = ""
    btcpay_url: str = ""
    btcpay_api_key: str = field(default="", repr=False)
    btcpay_timeout: float = 10.0
    btcpay_card_proxy: bool = False
    btcpay_boltcard_url: str = ""
    reconcile_interval: float = 300.0
    k1_ttl: float = 300.0
    network: str = "bitcoin"
    min_withdrawable_sats: int = 1
    default_tx_limit_sats: int = 100_000
    default_day_limit_sats: int = 1_000_000
    metrics_top_cards: int = 20
    metrics_slow_max_age: float = 60.0
    api_rate: float = 20.0
    api_burst: int = 60
    grafana_db_password: str = field(default="", repr=False)
    grafana_url: str = "http://localhost:3000"
    api_url: str = ""
    runbook_url: str = "docs/user-guide.md"
    report_interval: float = 60.0
    report_retry_base: float = 60.0
    report_attempts: int = 6
    report_send_timeout: float = 30.0
    report_attachment_max_rows: int = 100_000
    log_level: str = "info"

    @property
    def gateway_base_url(self) -> str:
        """Where wallets and BTCPay reach the gateway, without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host, port = listen_address(self.gateway_listen)
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

    @property
    def api_base_url(self) -> str:
        """Where browsers reach the API, without a trailing slash."""
        if self.api_url:
            return self.api_url.rstrip("/")
        host, port = listen_address(self.api_listen)
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

    def master_key_text(self) -> str:
        """The master key, from the environment or its file; ConfigError when there is none."""
        if self.master_key:
            return self.master_key.strip()
        if self.master_key_file:
            try:
                return Path(self.master_key_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read master key file {self.master_key_file}: {exc.strerror}"
                ) from None
        raise ConfigError(
            "no master key: set FLASH_MASTER_KEY or FLASH_MASTER_KEY_FILE "
            "(generate one with `flash-payouts keygen`)"
        )

    def validate(self) -> Settings:
        try:
            parse_database_url(self.database_url)
        except DatabaseUrlError as exc:
            raise ConfigError(str(exc)) from None
        for name in ("gateway_listen", "api_listen", "metrics_listen"):
            listen_address(getattr(self, name))
        for name in ("public_url", "btcpay_url", "grafana_url", "api_url"):
            value = getattr(self, name)
            if value and not _is_http_url(value):
                opt = _BY_NAME[name]
                raise ConfigError(
                    f"{opt.flag} ({opt.env}): {value!r} is not an http(s) URL "
                    "(such as https://host.example)"
                )
        return self


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number, an unbalanced IPv6 bracket
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option as a flag; its help names the environment variable and the default."""
    group = parser.add_argument_group("settings (each also from its FLASH_* environment variable)")
    for opt in OPTIONS:
        default = "(secret)" if opt.secret else repr(opt.default)
        group.add_argument(
            opt.flag,
            dest=opt.name,
            default=None,
            metavar=opt.metavar,
            help=f"{opt.help} [env {opt.env}; default {default}]",
        )


def load(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then ``FLASH_*`` variables, then defaults."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = getattr(args, opt.name, None) if args is not None else None
        source = opt.flag
        if raw is None and opt.env in env and env[opt.env] != "":
            raw, source = env[opt.env], opt.env
        if raw is None:
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except ValueError as exc:
            shown = "(secret)" if opt.secret else repr(raw)
            raise ConfigError(f"{source}: bad value {shown}: {exc}") from None
    return Settings(**values).validate()


def configuration_markdown() -> str:
    """The generated reference, docs/configuration.md."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `flash-payouts docs generate` from flash_payouts/settings.py. "
        "Do not edit. -->",
        "",
        "Every option can be given as a flag to any `flash-payouts` command or as an",
        "environment variable. A flag wins over the environment, which wins over the default.",
        "Secrets are never printed, logged or exported as metrics; prefer",
        "`FLASH_MASTER_KEY_FILE` in production.",
        "",
        "| flag | environment | default | meaning |",
        "|---|---|---|---|",
    ]
    for opt in OPTIONS:
        default = "(none)" if opt.default in ("", None) else f"`{opt.default}`"
        lines.append(f"| `{opt.flag}` | `{opt.env}` | {default} | {opt.help.replace('|', '/')} |")
    lines += [
        "",
        "The master key is 32 random bytes, written as 64 hex characters or as URL-safe base64.",
        "`flash-payouts keygen` prints a fresh one. Losing it makes the sealed card keys and",
        "webhook secrets unreadable; keep a copy with your backups, apart from the database.",
        "",
    ]
    return "\n".join(lines)


assert {f.name for f in fields(Settings)} == set(_BY_NAME), "Settings and OPTIONS disagree"
