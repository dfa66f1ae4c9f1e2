"""Grafana datasources and dashboard provider, Prometheus and Alertmanager configuration.

The defaults match ``docker-compose.yml``: service names as hosts, secrets as environment
variables that Grafana expands when it reads its provisioning files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .common import DEFAULT_API_URL, POSTGRES_TYPE, POSTGRES_UID, PROMETHEUS_UID

SCRAPE_JOB = "flash-payouts"

# Where Grafana finds the dashboard JSON inside its container (docker-compose.yml mounts
# provisioning/grafana at /etc/grafana/provisioning).
GRAFANA_DASHBOARDS_PATH = "/etc/grafana/provisioning/dashboards"
PROMETHEUS_RULES_PATH = "/etc/prometheus/rules"


@dataclass(frozen=True)
class Targets:
    """Where the pieces of the stack reach each other."""

    metrics: str = "app:9810"
    prometheus_url: str = "http://prometheus:9090"
    alertmanager: str = "alertmanager:9093"
    postgres: str = "postgres:5432"
    database: str = "flash"
    grafana_user: str = "flash_grafana"
    scrape_interval: str = "15s"
    evaluation_interval: str = "30s"
    # Where alert notifications go: Alertmanager posts to it, or Grafana where it alerts instead.
    alert_webhook_env: str = "FLASH_ALERT_WEBHOOK_URL"
    alert_webhook_default: str = "http://localhost:9/flash-alerts-not-configured"
    # Where merchants' browsers reach the API: the boards' export links.
    api_url: str = DEFAULT_API_URL
    # Where Grafana reads the per-store roles' password files (one organisation per store).
    password_dir: str = "/etc/grafana/flash-stores"


@dataclass(frozen=True)
class StoreOrg:
    """A store's own Grafana organisation, reading the ledger as the store's own role."""

    org_id: int
    store_id: str
    name: str
    role: str

    @property
    def title(self) -> str:
        return f"Flash: {self.name} ({self.store_id})"


def datasources(t: Targets) -> dict[str, Any]:
    return {"apiVersion": 1, "datasources": _org_datasources(t, 1, t.grafana_user, None)}


def store_datasources(t: Targets, orgs: list[StoreOrg]) -> dict[str, Any]:
    """Each store organisation's datasources: the same uids as the main organisation's, so the
    same boards work there, and the ledger as the store's role."""
    found = []
    for org in orgs:
        found += _org_datasources(t, org.org_id, org.role, f"{t.password_dir}/{org.role}")
    return {"apiVersion": 1, "datasources": found}


def _org_datasources(
    t: Targets, org_id: int, user: str, password_file: str | None
) -> list[dict[str, Any]]:
    # Expanded by Grafana when it reads this file: an environment variable, or a file's text.
    password = (
        "$FLASH_GRAFANA_DB_PASSWORD" if password_file is None else f"$__file{{{password_file}}}"
    )
    return [
        {
            "name": "Prometheus",
            "orgId": org_id,
            "type": "prometheus",
            "uid": PROMETHEUS_UID,
            "access": "proxy",
            "url": t.prometheus_url,
            "isDefault": True,
            "editable": False,
            "jsonData": {"httpMethod": "POST", "timeInterval": t.scrape_interval},
        },
        {
            "name": "Flash ledger",
            "orgId": org_id,
            "type": POSTGRES_TYPE,
            "uid": POSTGRES_UID,
            "access": "proxy",
            "url": t.postgres,
            "user": user,
            "isDefault": False,
            "editable": False,
            "jsonData": {
                "database": t.database,
                "sslmode": "disable",
                "postgresVersion": 1600,
                "timescaledb": False,
                "maxOpenConns": 10,
            },
            "secureJsonData": {"password": password},
        },
    ]


def dashboard_provider(orgs: list[StoreOrg] | None = None) -> dict[str, Any]:
    """The boards' provider for the main organisation, or for each store organisation."""
    if orgs is None:
        return {"apiVersion": 1, "providers": [_provider("flash-payouts", 1)]}
    return {
        "apiVersion": 1,
        "providers": [_provider(f"flash-payouts-org-{o.org_id}", o.org_id) for o in orgs],
    }


def _provider(name: str, org_id: int) -> dict[str, Any]:
    return {
        "name": name,
        "orgId": org_id,
        "folder": "Flash Payouts",
        "folderUid": "flash-payouts",
        "type": "file",
        "disableDeletion": True,
        "allowUiUpdates": False,
        "updateIntervalSeconds": 60,
        "options": {"path": GRAFANA_DASHBOARDS_PATH, "foldersFromFilesStructure": False},
    }


def prometheus_config(
    t: Targets, rule_files: list[str] | None = None, *, alerting: bool = True
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": t.scrape_interval,
            "evaluation_interval": t.evaluation_interval,
        },
        "rule_files": rule_files if rule_files is not None else [f"{PROMETHEUS_RULES_PATH}/*.yml"],
        "scrape_configs": [
            {
                "job_name": SCRAPE_JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [t.metrics]}],
            }
        ],
    }
    if alerting:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [t.alertmanager]}]}]
        }
    return config


def alertmanager_config(t: Targets) -> dict[str, Any]:
    # Alertmanager does not expand environment variables: the URL is read from a file the
    # compose stack writes from FLASH_ALERT_WEBHOOK_URL at start (see docker-compose.yml).
    return {
        "route": {
            "receiver": "flash-oncall",
            "group_by": ["alertname", "store"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": [
                {
                    "matchers": ['severity="critical"'],
                    "receiver": "flash-oncall",
                    "group_wait": "10s",
                    "repeat_interval": "1h",
                }
            ],
        },
        "receivers": [
            {
                "name": "flash-oncall",
                "webhook_configs": [
                    {"url_file": "/alertmanager/webhook-url", "send_resolved": True}
                ],
            }
        ],
        "inhibit_rules": [
            {
                # When the ledger or the exporter is down every other rule is blind or noisy.
                "source_matchers": ['alertname=~"FlashLedgerDown|FlashExporterDown"'],
                "target_matchers": ['severity="warning"'],
            }
        ],
    }
