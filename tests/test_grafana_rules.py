"""The generated boards and provisioning, read by Grafana 11.2's own rules (tests/grafana_model.py):
every query reaches a datasource of its kind, every name is one of Grafana's panel models, the
folders provision without a clash, and the compose stack alerts through one path."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_model import (
    FolderClash,
    compose_merge,
    misnamed,
    misrouted,
    provision_folders,
    sources_of,
    started,
)

from dashboards import alerts
from dashboards.common import POSTGRES_TYPE
from dashboards.generate import DEFAULT_OUT, ROOT, render

USER_GUIDE = ROOT / "docs/user-guide.md"


def generated(rel: str) -> Any:
    text = render()[rel]
    return json.loads(text) if rel.endswith(".json") else yaml.safe_load(text)


def boards() -> list[dict[str, Any]]:
    return [generated(rel) for rel in sorted(render()) if rel.endswith(".json")]


def sources() -> dict[str, Any]:
    return sources_of(generated("grafana/datasources/flash.yaml"))


def test_every_query_of_every_board_reaches_a_datasource_of_its_kind() -> None:
    problems = [p for board in boards() for p in misrouted(board, sources())]
    assert not problems, "\n".join(problems)


def test_every_panel_names_the_datasource_of_its_targets_or_mixed() -> None:
    for board in boards():
        for panel in board["panels"]:
            refs = {json.dumps(t["datasource"], sort_keys=True) for t in panel["targets"]}
            expected = (
                json.loads(refs.pop())
                if len(refs) == 1
                else {"type": "datasource", "uid": "-- Mixed --"}
            )
            assert panel["datasource"] == expected, (board["uid"], panel["title"])


def test_the_routing_model_catches_a_panel_left_to_the_default_datasource() -> None:
    # The boards as they were: SQL panels without a datasource of their own, which Grafana's
    # query runner sends to the default datasource (Prometheus).
    board = copy.deepcopy(next(b for b in boards() if b["uid"] == "flash-payouts-overview"))
    sql_panel = next(
        p for p in board["panels"] if p["targets"][0]["datasource"]["type"] == POSTGRES_TYPE
    )
    sql_panel["datasource"] = None
    problems = misrouted(board, sources())
    assert problems == [
        f"flash-payouts-overview: panel {sql_panel['title']!r} target A "
        f"({POSTGRES_TYPE}) would query flash-prometheus (prometheus)"
    ]
    # A board older than schema 36 is migrated on load, which fills the panel's datasource in.
    board["schemaVersion"] = 35
    assert misrouted(board, sources()) == []


def test_a_mixed_panel_keeps_each_target_on_its_own_datasource() -> None:
    board = copy.deepcopy(next(b for b in boards() if b["uid"] == "flash-payouts-overview"))
    prom_panel = next(p for p in board["panels"] if p["title"] == "Pending now")
    sql_panel = next(p for p in board["panels"] if p["title"] == "Payouts")
    both = {**prom_panel, "targets": prom_panel["targets"] + [
        {**sql_panel["targets"][0], "refId": "B"}
    ]}  # fmt: skip
    board["panels"] = [both]
    assert len(misrouted(board, sources())) == 1  # the panel names Prometheus: B goes there
    both["datasource"] = {"type": "datasource", "uid": "-- Mixed --"}
    assert misrouted(board, sources()) == []


def test_panel_options_and_field_config_are_names_of_grafanas_panel_models() -> None:
    problems = [p for board in boards() for p in misnamed(board)]
    assert not problems, "\n".join(problems)


def test_the_name_check_catches_an_option_grafana_does_not_have() -> None:
    board = copy.deepcopy(boards()[0])
    board["panels"][0]["options"]["legendDisplayMode"] = "table"  # Grafana 7's name
    assert f"{board['uid']}/{board['panels'][0]['title']}.options.legendDisplayMode" in (
        misnamed(board)
    )


def test_datasources_are_grafana_plugins_with_one_default() -> None:
    found = generated("grafana/datasources/flash.yaml")["datasources"]
    assert {d["type"] for d in found} == {"prometheus", "grafana-postgresql-datasource"}
    assert [d["uid"] for d in found if d["isDefault"]] == ["flash-prometheus"]


# --- folders and alerting


def test_alert_rules_and_boards_provision_into_folders_of_their_own() -> None:
    groups = generated("grafana-alerting/rules.yaml")["groups"]
    providers = generated("grafana/dashboards/flash.yaml")["providers"]
    folders = provision_folders(groups, providers)
    assert folders[1, "Flash Payouts"] == "flash-payouts"
    assert folders[1, alerts.FOLDER] != "flash-payouts"
    assert alerts.FOLDER != "Flash Payouts"


def test_the_folder_model_fails_when_rules_take_the_boards_folder_title() -> None:
    groups = copy.deepcopy(generated("grafana-alerting/rules.yaml")["groups"])
    for group in groups:
        group["folder"] = "Flash Payouts"
    with pytest.raises(FolderClash):
        provision_folders(groups, generated("grafana/dashboards/flash.yaml")["providers"])


def _compose(*files: str) -> dict[str, Any]:
    merged = yaml.safe_load((ROOT / files[0]).read_text())
    for name in files[1:]:
        merged = compose_merge(merged, yaml.safe_load((ROOT / name).read_text()))
    return merged


def _alert_paths(compose: dict[str, Any]) -> list[str]:
    """Who sends notifications: Grafana when it mounts rules, Prometheus when its
    configuration has rules and an Alertmanager that runs."""
    services = started(compose)
    paths = []
    for volume in services["grafana"]["volumes"]:
        source, mount = volume.split(":")[:2]
        mounted = (ROOT / source).rglob("*.yaml") if (ROOT / source).is_dir() else []
        if mount.startswith("/etc/grafana/provisioning") and any(
            p.name == "rules.yaml" for p in mounted
        ):
            paths.append("grafana")
    config_source = next(
        v.split(":")[0]
        for v in services["prometheus"]["volumes"]
        if v.split(":")[1] == "/etc/prometheus/prometheus.yml"
    )
    config = yaml.safe_load((ROOT / config_source).read_text())
    if config.get("rule_files") and config.get("alerting") and "alertmanager" in services:
        paths.append("prometheus")
    return paths


def test_compose_alerts_through_prometheus_and_alertmanager_only() -> None:
    assert _alert_paths(_compose("docker-compose.yml")) == ["prometheus"]


def test_compose_with_the_grafana_alerting_file_alerts_through_grafana_only() -> None:
    merged = _compose("docker-compose.yml", "docker-compose.grafana-alerting.yml")
    assert _alert_paths(merged) == ["grafana"]
    assert "FLASH_ALERT_WEBHOOK_URL" in merged["services"]["grafana"]["environment"]
    for volume in merged["services"]["grafana"]["volumes"]:
        source = volume.split(":")[0]
        assert not source.startswith(".") or (ROOT / source).exists(), source


def test_alert_links_carry_the_configured_grafana_url(tmp_path: Path) -> None:
    from flash_payouts.cli import main

    url = "https://grafana.example.org/"
    assert main(["dashboards", "generate", "--out", str(tmp_path), "--grafana-url", url]) == 0
    rules = yaml.safe_load((tmp_path / "prometheus/rules/flash.yml").read_text())
    grafana = yaml.safe_load((tmp_path / "grafana-alerting/rules.yaml").read_text())
    links = [r["annotations"]["dashboard"] for g in rules["groups"] for r in g["rules"]]
    links += [r["annotations"]["dashboard"] for g in grafana["groups"] for r in g["rules"]]
    assert len(links) == 2 * len(alerts.rules())
    assert all(link.startswith("https://grafana.example.org/d/") for link in links), links
    assert "localhost:3000" not in (tmp_path / "prometheus/rules/flash.yml").read_text()


def test_export_links_point_at_the_configured_api_url(tmp_path: Path) -> None:
    from flash_payouts.cli import main

    api = "https://flash-api.example.org"
    assert main(["dashboards", "generate", "--out", str(tmp_path), "--api-url", api]) == 0
    board = json.loads((tmp_path / "grafana/dashboards/payouts_overview.json").read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["api_url"]["type"] == "constant"
    assert variables["api_url"]["query"] == variables["api_url"]["current"]["value"] == api
    listed = next(p for p in board["panels"] if p["title"] == "Payouts listed")
    [link] = [
        link
        for o in listed["fieldConfig"]["overrides"]
        for prop in o["properties"]
        if prop["id"] == "links"
        for link in prop["value"]
    ]
    assert link["url"].startswith("${api_url}/plugins/flash/api/payouts/export?")
    for parameter in ("storeId=", "startDate=", "endDate=", "status=", "boltcardId=", "q="):
        assert parameter in link["url"]


def test_a_grafana_url_that_is_not_a_url_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flash_payouts.cli import main

    code = main(["dashboards", "generate", "--out", str(tmp_path), "--grafana-url", "grafana"])
    err = capsys.readouterr().err
    assert code == 2 and "--grafana-url (FLASH_GRAFANA_URL)" in err and len(err.splitlines()) == 1


def _guide_anchors() -> set[str]:
    anchors = set()
    for line in USER_GUIDE.read_text().splitlines():
        m = re.match(r"#{1,6} (.+)$", line)
        if m:
            anchors.add(alerts.runbook_anchor(m.group(1)))
    return anchors


def test_every_rule_links_to_its_own_section_of_the_user_guide() -> None:
    anchors = _guide_anchors()
    prometheus = generated("prometheus/rules/flash.yml")
    grafana = generated("grafana-alerting/rules.yaml")
    for group in prometheus["groups"] + grafana["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            path, _, anchor = url.partition("#")
            assert path == "docs/user-guide.md" and (ROOT / path).exists()
            assert anchor in anchors, (
                f"{url}: add a section headed with the rule's title to docs/user-guide.md"
            )
    sections = {alerts.runbook_anchor(r.title) for r in alerts.rules()}
    assert len(sections) == len(alerts.rules())


def test_grafana_rules_name_their_board_and_panel_as_grafana_exports_them() -> None:
    ids = {(b["uid"], p["id"]) for b in boards() for p in b["panels"]}
    for group in generated("grafana-alerting/rules.yaml")["groups"]:
        assert group["folder"] == alerts.FOLDER
        for rule in group["rules"]:
            assert (rule["dashboardUid"], rule["panelId"]) in ids
            assert not any(k.startswith("__") for k in rule["annotations"])


def test_committed_provisioning_has_no_grafana_rules_in_the_default_mounts() -> None:
    assert not (DEFAULT_OUT / "grafana/alerting").exists()
    assert (DEFAULT_OUT / "grafana-alerting/rules.yaml").exists()
