"""The generated boards, alert rules and provisioning: up to date, well formed, and checked by
promtool; docker-compose.yml parses and mounts only files that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import service_missing

from dashboards import alerts
from dashboards.common import SCHEMA_VERSION, to_dict
from dashboards.generate import DEFAULT_OUT, ROOT, render
from dashboards.loader import load_dashboards
from exporter.catalogue import CATALOGUE
from flash_payouts.cli import main

EXPECTED_BOARDS = {
    "flash-payouts-overview": "Payouts overview",
    "flash-payout-detail": "Payout detail",
    "flash-boltcards": "Boltcards",
    "flash-service-health": "Service health",
}


def boards() -> list[dict[str, Any]]:
    return [to_dict(b) for b in load_dashboards().values()]


def provisioned(rel: str) -> Any:
    return yaml.safe_load((DEFAULT_OUT / rel).read_text())


def files_under(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_committed_provisioning_is_what_the_code_generates() -> None:
    committed = files_under(DEFAULT_OUT)
    wanted = render()
    stale = sorted(k for k in wanted if committed.get(k) != wanted[k])
    extra = sorted(set(committed) - set(wanted))
    assert not stale and not extra, (
        f"provisioning/ is stale ({stale}) or has files no code writes ({extra}); "
        "run `flash-payouts dashboards generate`"
    )


def test_generate_command_writes_the_committed_files_into_another_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dashboards", "generate", "--out", str(tmp_path / "out")]) == 0
    assert "wrote 14 files" in capsys.readouterr().out
    assert files_under(tmp_path / "out") == files_under(DEFAULT_OUT)


def test_boards_are_the_four_of_the_issue_with_stable_uids_and_a_current_schema() -> None:
    found = {b["uid"]: b for b in boards()}
    assert {uid: b["title"] for uid, b in found.items()} == EXPECTED_BOARDS
    for board in found.values():
        assert board["schemaVersion"] >= SCHEMA_VERSION >= 39
        names = {v["name"]: v for v in board["templating"]["list"]}
        assert names["datasource"]["type"] == "datasource"
        assert names["datasource"]["query"] == "prometheus"
        assert names["store"]["multi"] and names["store"]["includeAll"]


def test_uids_are_unique_across_boards_rules_and_datasources() -> None:
    uids = [b["uid"] for b in boards()]
    uids += [
        r["uid"] for g in provisioned("grafana-alerting/rules.yaml")["groups"] for r in g["rules"]
    ]
    uids += [d["uid"] for d in provisioned("grafana/datasources/flash.yaml")["datasources"]]
    assert len(uids) == len(set(uids))
    for board in boards():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), board["uid"]
        titles = [p["title"] for p in board["panels"]]
        assert len(titles) == len(set(titles)), board["uid"]


def _datasource_refs(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict):
            found.append(ds)
        for value in node.values():
            found += _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            found += _datasource_refs(value)
    return found


def test_every_datasource_reference_exists_in_the_provisioning() -> None:
    sources = {
        d["uid"]: d["type"] for d in provisioned("grafana/datasources/flash.yaml")["datasources"]
    }
    for board in boards():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        refs = _datasource_refs(board)
        assert refs, board["uid"]
        for ref in refs:
            uid = ref["uid"]
            m = re.fullmatch(r"\$\{(\w+)\}", uid)
            if m:
                variable = variables[m.group(1)]
                assert variable["type"] == "datasource" and variable["query"] == ref["type"]
                assert sources[variable["current"]["value"]] == ref["type"]
            else:
                assert sources[uid] == ref["type"], (board["uid"], ref)
    for group in provisioned("grafana-alerting/rules.yaml")["groups"]:
        for rule in group["rules"]:
            for step in rule["data"]:
                assert step["datasourceUid"] == "__expr__" or step["datasourceUid"] in sources


def test_each_rule_condition_and_expression_names_an_existing_ref_id() -> None:
    for group in provisioned("grafana-alerting/rules.yaml")["groups"]:
        for rule in group["rules"]:
            ref_ids = [step["refId"] for step in rule["data"]]
            assert len(ref_ids) == len(set(ref_ids))
            assert rule["condition"] in ref_ids
            for step in rule["data"]:
                assert step["model"]["refId"] == step["refId"]
                if step["datasourceUid"] == "__expr__":
                    assert step["model"]["expression"] in ref_ids
                    assert ref_ids.index(step["model"]["expression"]) < ref_ids.index(step["refId"])
            assert rule["noDataState"] in ("NoData", "Alerting", "OK")
            assert rule["execErrState"] in ("Error", "Alerting", "OK")


def test_no_panels_overlap_and_all_fit_the_grid() -> None:
    for board in boards():
        cells: dict[tuple[int, int], str] = {}
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, (board["uid"], panel["title"], cells[x, y])
                    cells[x, y] = panel["title"]


def test_every_rule_has_summary_description_severity_and_a_link_to_its_board_and_panel() -> None:
    panels = {(b["uid"], p["id"]) for b in boards() for p in b["panels"]}
    rules = [r for g in provisioned("grafana-alerting/rules.yaml")["groups"] for r in g["rules"]]
    assert len(rules) == len(alerts.rules()) >= 12
    for rule in rules:
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert (rule["dashboardUid"], rule["panelId"]) in panels
        assert f"/d/{rule['dashboardUid']}/" in notes["dashboard"]
        assert notes["runbook_url"].startswith("docs/user-guide.md#")
    for rule in alerts.rules():
        text = rule.summary + rule.description
        assert "$labels.store" in text or "$labels.card" in text or "$labels.instance" in text


def test_alert_thresholds_are_settings_of_the_generator() -> None:
    strict = alerts.prometheus_rules(alerts.Thresholds(card_taps=3, failure_ratio=0.05))
    exprs = {r["alert"]: r["expr"] for g in strict["groups"] for r in g["rules"]}
    assert exprs["FlashCardTappingFast"].endswith("> 3")
    assert exprs["FlashPayoutFailureRatio"].endswith("> 0.05")


def _promql_of_boards() -> list[str]:
    return [
        t["expr"]
        for b in boards()
        for p in b["panels"]
        for t in p.get("targets", [])
        if t.get("datasource", {}).get("type") == "prometheus"
    ]


def test_queries_name_only_metrics_of_the_catalogue() -> None:
    known = {name for spec in CATALOGUE for name in spec.sample_names}
    known |= {"up", "scrape_duration_seconds"}
    exprs = _promql_of_boards() + [r.value for r in alerts.rules()]
    used = {m for e in exprs for m in re.findall(r"\b((?:flash_|up\b|scrape_)\w*)", e)}
    assert used and used <= known, used - known


def promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if not found:
        service_missing("promtool is not installed (Debian package prometheus)")
    return str(found)


def test_promtool_accepts_the_rule_file() -> None:
    out = subprocess.run(
        [promtool(), "check", "rules", str(DEFAULT_OUT / "prometheus/rules/flash.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts.rules())} rules found" in out.stdout


def test_promtool_unit_tests_fire_each_alert_on_its_bad_series_only() -> None:
    tests = provisioned("prometheus/tests/flash.test.yml")["tests"]
    assert {t["alert_rule_test"][0]["alertname"] for t in tests} == {r.name for r in alerts.rules()}
    out = subprocess.run(
        [promtool(), "test", "rules", "flash.test.yml"],
        cwd=DEFAULT_OUT / "prometheus/tests",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_fail_when_the_good_series_would_fire_too(tmp_path: Path) -> None:
    # Rules with lower thresholds make the good series fire: the committed expectations must
    # then fail, which shows they do check that the good series stays silent.
    out_dir = tmp_path / "strict"
    files = render(alerts.Thresholds(card_taps=2, limit_refusals=0))
    for rel in ("prometheus/rules/flash.yml",):
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_text(files[rel])
    tests_dir = out_dir / "prometheus/tests"
    tests_dir.mkdir(parents=True)
    (tests_dir / "flash.test.yml").write_text(render()["prometheus/tests/flash.test.yml"])
    out = subprocess.run(
        [promtool(), "test", "rules", "flash.test.yml"],
        cwd=tests_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert 'card="good"' in out.stdout + out.stderr


def test_docker_compose_parses_and_every_mounted_file_exists() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "app", "prometheus", "alertmanager", "grafana"} <= set(services)
    mounted = []
    for name, service in services.items():
        assert "healthcheck" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                mounted.append(source)
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    assert "./provisioning/grafana/dashboards" in mounted
    assert "./provisioning/grafana/datasources" in mounted
    assert "./provisioning/prometheus/prometheus.yml" in mounted
    assert services["app"]["build"] == "." and (ROOT / "Dockerfile").exists()
    # Secrets come from the environment, with defaults only for a local trial.
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in (
        "FLASH_POSTGRES_PASSWORD",
        "FLASH_GRAFANA_DB_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
    ):
        assert "${" + secret + ":-" in text


def test_grafana_reads_the_ledger_password_and_webhook_from_its_environment() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana_env = compose["services"]["grafana"]["environment"]
    opt_in = yaml.safe_load((ROOT / "docker-compose.grafana-alerting.yml").read_text())
    ds = provisioned("grafana/datasources/flash.yaml")["datasources"]
    pg = next(d for d in ds if d["type"] == "grafana-postgresql-datasource")
    assert pg["user"] == "flash_grafana"
    assert pg["secureJsonData"]["password"] == "$FLASH_GRAFANA_DB_PASSWORD"
    assert "FLASH_GRAFANA_DB_PASSWORD" in grafana_env
    contact = provisioned("grafana-alerting/contact-points.yaml")["contactPoints"][0]
    assert contact["receivers"][0]["settings"]["url"] == "$FLASH_ALERT_WEBHOOK_URL"
    assert "FLASH_ALERT_WEBHOOK_URL" in opt_in["services"]["grafana"]["environment"]
