"""Every query of the provisioned Grafana dashboard and of the Prometheus alert rules uses only
metric names the code exports (ours, the ledger gauges, dramatiq's middleware)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dramatiq.middleware.prometheus as dramatiq_prometheus
import pytest
import yaml
from prometheus_client import Counter, Histogram

from tests.services import DATA_KEY_ENV
from worker.db import session_scope
from worker.operators import metrics
from worker.operators.dashboard import LedgerCollector
from worker.settings import Settings

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "newsletter.json"

# PromQL words that look like metric names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "clamp",
    "abs",
    "ceil",
    "floor",
    "round",
    "label_replace",
    "label_join",
    "vector",
    "scalar",
    "time",
    "absent",
    "sum_over_time",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "le",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (label matchers, grouping labels, durations and
    numbers removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    words = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)
    return {w for w in words if w.lower() not in PROMQL_WORDS}


def exported_names(sqlite_url: str) -> set[str]:
    names: set[str] = set()
    # The families are registered on first use; their names and kinds are declared up front.
    for name, (kind, *_rest) in metrics.FAMILIES.items():
        if kind is Counter:
            names.add(name.removesuffix("_total") + "_total")
        elif kind is Histogram:
            names |= {name + suffix for suffix in ("_bucket", "_sum", "_count")}
    settings = Settings.from_env(DATA_KEY_ENV, database_url=sqlite_url)
    for family in LedgerCollector(lambda: session_scope(settings)).collect():
        names.add(family.name)
    # dramatiq's Prometheus middleware creates its metrics at worker boot; read their names from
    # its source rather than booting it (that would switch this process to multiprocess mode).
    source = Path(dramatiq_prometheus.__file__).read_text()
    for name, kind in re.findall(r'prom\.(\w+)\(\s*"(dramatiq_\w+)"', source):
        names |= (
            {kind + s for s in ("_bucket", "_sum", "_count")} if name == "Histogram" else {kind}
        )
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(x_seconds_bucket{job="a"}[5m])))'
        " / clamp_min(y_total, 1)"
    )
    assert metric_names(expr) == {"x_seconds_bucket", "y_total"}


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_query_uses_exported_metric_names(source: str, sqlite_url: str) -> None:
    exported = exported_names(sqlite_url)
    assert "newsletter_deliveries_total" in exported and "dramatiq_messages_total" in exported
    queries = dashboard_queries() if source == "dashboard" else alert_queries()
    assert len(queries) >= 5
    for title, expr in queries:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{title}: {sorted(unknown)} not exported by the code"


def test_dashboard_uses_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
