"""Grafana 11.2's own rules, reproduced from its source, to check generated files without Grafana.

- Query routing: ``PanelQueryRunner.run`` (public/app/features/query/state) resolves the panel's
  datasource (none: the default datasource; ``${var}``: the variable's current value) and
  rewrites every target whose datasource differs to it, unless the panel is Mixed or the
  target is an expression. ``DashboardMigrator`` fills a missing panel datasource (migration 36)
  only for boards older than schema 36. A query variable without a datasource asks the default.
- Panel models: the option and field-config names of each panel plugin, read from
  grafana-foundation-sdk (generated from Grafana's own schemas; the 11.2 build).
- Provisioning folders: alerting is provisioned first (``RunInitProvisioners``) and creates a
  rule group's folder by title with a new uid; the dashboard provider then looks its folder up
  by ``folderUid`` (by title without one) and creates it when missing, which fails when a folder
  of that title already exists ("a folder with the same name already exists").
- docker compose's merge of several files: mappings merge, sequences append, ``command`` and
  ``entrypoint`` are replaced, ``volumes`` are unique by their mount point in the container.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any

MIXED_UID = "-- Mixed --"
EXPRESSION_UID = "__expr__"
# Datasource plugin ids of Grafana 11 (their plugin.json ids; "postgres" is the old alias).
DATASOURCE_PLUGINS = {"prometheus", "grafana-postgresql-datasource"}
# Which datasource type can run a target, by the query field the target carries.
QUERY_FIELD_TYPES = {"rawSql": "grafana-postgresql-datasource", "expr": "prometheus"}
LATEST_SCHEMA = 39  # DashboardMigrator's latest version in Grafana 11.2


@dataclass(frozen=True)
class Source:
    uid: str
    type: str
    default: bool = False


def sources_of(provisioning: dict[str, Any]) -> dict[str, Source]:
    return {
        d["uid"]: Source(d["uid"], d["type"], bool(d.get("isDefault")))
        for d in provisioning["datasources"]
    }


def _default(sources: dict[str, Source]) -> Source:
    defaults = [s for s in sources.values() if s.default]
    assert len(defaults) == 1, "Grafana needs exactly one default datasource per organisation"
    return defaults[0]


def _interpolate(uid: str, variables: dict[str, Any]) -> str:
    m = re.fullmatch(r"\$\{?(\w+)\}?", uid)
    if not m:
        return uid
    variable = variables[m.group(1)]
    return variable["current"]["value"]


def resolve(ref: Any, sources: dict[str, Source], variables: dict[str, Any]) -> Source:
    """DatasourceSrv.get: no reference is the default; a uid or a ${variable} is looked up."""
    if ref is None:
        return _default(sources)
    uid = ref if isinstance(ref, str) else ref.get("uid")
    if uid is None:
        return _default(sources)
    if uid == MIXED_UID:
        return Source(MIXED_UID, "mixed")
    uid = _interpolate(uid, variables)
    if uid not in sources:
        raise LookupError(f"datasource {uid!r} is not provisioned")
    return sources[uid]


def _migrate_36(panel: dict[str, Any], sources: dict[str, Source]) -> None:
    """DashboardMigrator, schema 36: a panel without datasource takes the default, then its
    targets' one when they name one."""
    targets = panel.get("targets") or []
    if not targets:
        return
    was_default = False
    if panel.get("datasource") is None:
        d = _default(sources)
        panel["datasource"] = {"type": d.type, "uid": d.uid}
        was_default = True
    for target in targets:
        ds = target.get("datasource")
        if (ds is None or ds.get("uid") is None) and panel["datasource"].get("uid") != MIXED_UID:
            target["datasource"] = dict(panel["datasource"])
        if was_default and (target.get("datasource") or {}).get("uid") != EXPRESSION_UID:
            panel["datasource"] = target["datasource"]


def _wanted_type(target: dict[str, Any]) -> str | None:
    if (target.get("datasource") or {}).get("type") == EXPRESSION_UID:
        return EXPRESSION_UID
    for field, kind in QUERY_FIELD_TYPES.items():
        if field in target:
            return kind
    return None


def misrouted(board: dict[str, Any], sources: dict[str, Source]) -> list[str]:
    """Every query of the board that Grafana would send to a datasource of another type."""
    board = copy.deepcopy(board)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    problems = []
    for name, variable in variables.items():
        if variable["type"] != "query":
            continue
        wanted = "grafana-postgresql-datasource" if "SELECT" in variable["query"] else "prometheus"
        got = resolve(variable.get("datasource"), sources, variables)
        if got.type != wanted:
            problems.append(f"{board['uid']}: variable ${name} queries {got.uid} ({got.type})")
    for panel in board["panels"]:
        if board.get("schemaVersion", 0) < 36:
            _migrate_36(panel, sources)
        panel_ds = resolve(panel.get("datasource"), sources, variables)
        for target in panel.get("targets", []):
            wanted = _wanted_type(target)
            if wanted is None or wanted == EXPRESSION_UID:
                continue
            ref = target.get("datasource")
            is_expression = (ref or {}).get("type") == EXPRESSION_UID
            # PanelQueryRunner: attach the panel's datasource to each query.
            if not ref or (
                _interpolate(ref.get("uid") or "", variables) != panel_ds.uid
                and panel_ds.type != "mixed"
                and not is_expression
            ):
                destination = panel_ds
            else:
                destination = resolve(ref, sources, variables)
            if destination.type != wanted:
                problems.append(
                    f"{board['uid']}: panel {panel['title']!r} target {target.get('refId')} "
                    f"({wanted}) would query {destination.uid} ({destination.type})"
                )
    return problems


# --- panel models (grafana-foundation-sdk)


def _model_keys(cls: type) -> tuple[set[str], dict[str, type]]:
    """The JSON keys a foundation-sdk model reads, and the model class of each nested object."""
    source = inspect.getsource(cls.from_json)  # type: ignore[attr-defined]
    module = importlib.import_module(cls.__module__)
    keys = set(re.findall(r'if "(\w+)" in data', source))
    nested: dict[str, type] = {}
    for owner, name, key in re.findall(
        r"(?:(\w+)\.)?(\w+)\.from_json\((?:data\[\"(\w+)\"\]|item)", source
    ):
        if not key:
            continue
        where = importlib.import_module(f"{module.__package__}.{owner}") if owner else module
        nested[key] = getattr(where, name)
    for owner, name, key in re.findall(
        r"\[(?:(\w+)\.)?(\w+)\.from_json\(item\) for item in data\[\"(\w+)\"\]\]", source
    ):
        where = importlib.import_module(f"{module.__package__}.{owner}") if owner else module
        nested[key] = getattr(where, name)
    return keys, nested


def unknown_keys(data: Any, cls: type, where: str) -> list[str]:
    """Keys of ``data`` that the model ``cls`` (and its nested models) does not have."""
    keys, nested = _model_keys(cls)
    found = []
    items = data if isinstance(data, list) else [data]
    for item in items:
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key not in keys:
                found.append(f"{where}.{key}")
            elif key in nested and isinstance(value, dict | list):
                found += unknown_keys(value, nested[key], f"{where}.{key}")
    return found


def panel_plugin(panel_type: str) -> Any:
    module = importlib.import_module(f"grafana_foundation_sdk.models.{panel_type}")
    return module


def misnamed(board: dict[str, Any]) -> list[str]:
    """Panel, option and field-config names the board uses that Grafana 11.2's models lack."""
    from grafana_foundation_sdk.models import dashboard

    problems = unknown_keys(
        {k: v for k, v in board.items() if k != "panels"}, dashboard.Dashboard, board["uid"]
    )
    for panel in board["panels"]:
        where = f"{board['uid']}/{panel['title']}"
        plugin = panel_plugin(panel["type"])
        if plugin.variant_config().identifier != panel["type"]:
            problems.append(f"{where}: no panel plugin {panel['type']!r}")
        problems += unknown_keys(
            {k: v for k, v in panel.items() if k not in ("options", "fieldConfig")},
            dashboard.Panel,
            where,
        )
        problems += unknown_keys(panel.get("options", {}), plugin.Options, f"{where}.options")
        field_config = panel.get("fieldConfig", {})
        problems += unknown_keys(
            {k: v for k, v in field_config.get("defaults", {}).items() if k != "custom"},
            dashboard.FieldConfig,
            f"{where}.defaults",
        )
        custom_model = getattr(plugin, "FieldConfig", None)
        custom = field_config.get("defaults", {}).get("custom", {})
        if custom and custom_model is None:
            problems.append(f"{where}: {panel['type']} has no custom field config")
        elif custom:
            problems += unknown_keys(custom, custom_model, f"{where}.custom")
        field_keys, _ = _model_keys(dashboard.FieldConfig)
        custom_keys = _model_keys(custom_model)[0] if custom_model else set()
        for override in field_config.get("overrides", []):
            for prop in override["properties"]:
                name = prop["id"]
                known = (
                    name.removeprefix("custom.") in custom_keys
                    if name.startswith("custom.")
                    else name in field_keys
                )
                if not known:
                    problems.append(f"{where}: override property {name!r}")
        for target in panel.get("targets", []):
            kind = (target.get("datasource") or {}).get("type")
            if kind not in DATASOURCE_PLUGINS:
                problems.append(f"{where}: target datasource plugin {kind!r}")
        steps = field_config.get("defaults", {}).get("thresholds", {}).get("steps")
        if not isinstance(steps, list) or (steps and steps[0].get("value") is not None):
            problems.append(f"{where}: thresholds must be a list starting at null: {steps!r}")
    for variable in board["templating"]["list"]:
        problems += unknown_keys(
            variable, dashboard.VariableModel, f"{board['uid']}/${variable['name']}"
        )
    return problems


# --- provisioning folders


class FolderClash(Exception):
    pass


def provision_folders(
    alert_groups: list[dict[str, Any]], providers: list[dict[str, Any]]
) -> dict[tuple[int, str], str]:
    """(org, title) -> folder uid after Grafana's start-up provisioning; FolderClash when the
    dashboard provider cannot create its folder."""
    folders: dict[tuple[int, str], str] = {}  # (org, title) -> uid
    for n, group in enumerate(alert_groups):
        key = (group.get("orgId", 1), group["folder"])
        folders.setdefault(key, f"generated-{n}")  # getOrCreateFolderByTitle
    for provider in providers:
        org, title, uid = provider.get("orgId", 1), provider["folder"], provider.get("folderUid")
        if uid:
            if any(o == org and u == uid for (o, _), u in folders.items()):
                continue
            if (org, title) in folders:
                raise FolderClash(f"a folder with the same name already exists: {title!r}")
            folders[org, title] = uid
        else:
            folders.setdefault((org, title), f"generated-{title}")
    return folders


# --- docker compose


def compose_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for name, service in override.get("services", {}).items():
        target = merged["services"].setdefault(name, {})
        for key, value in service.items():
            if key in ("command", "entrypoint") or key not in target:
                target[key] = copy.deepcopy(value)
            elif key == "volumes":
                by_mount = {_mount_point(v): v for v in target[key]}
                for volume in value:
                    by_mount[_mount_point(volume)] = volume
                target[key] = list(by_mount.values())
            elif isinstance(value, dict):
                target[key] = {**target[key], **value}
            elif isinstance(value, list):
                target[key] = target[key] + [v for v in value if v not in target[key]]
            else:
                target[key] = value
    return merged


def _mount_point(volume: str) -> str:
    parts = volume.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def started(compose: dict[str, Any], profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The services ``docker compose up`` starts with these profiles enabled."""
    return {
        name: s
        for name, s in compose["services"].items()
        if not s.get("profiles") or set(s["profiles"]) & set(profiles)
    }
