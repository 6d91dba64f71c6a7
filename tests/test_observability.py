"""Offline checks of the alerting rules and the Grafana dashboard in deploy/components/monitoring.

`promtool` (Debian/Ubuntu: the prometheus package; CI installs it) checks the rules file and
runs its unit tests. Every metric name the rules and the dashboard query is one the project
exports, derived from the metric objects of service.metrics and worker.metrics (a histogram as
its _bucket, _sum and _count series, a counter as _total), or one of the DCGM exporter's GPU
metrics, which the dashboard shows where an exporter runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import service.metrics
import worker.metrics

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "components" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERTS_TEST = MONITORING / "alerts_test.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboards" / "sd3-serve.json"

# NVIDIA's DCGM exporter (GPU operator, GKE's managed DCGM): GPU utilisation and frame buffer.
DCGM = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}
# The series each metric type is exposed as (prometheus_client).
SERIES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# Grafana's variables, replaced by what they expand to before PromQL sees the query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$model": ".*"}

Obj = dict[str, Any]


def families(*modules: ModuleType) -> dict[str, str]:
    """Metric family name -> type, of every metric object defined in `modules`."""
    found: dict[str, str] = {}
    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                for family in obj.describe():
                    found[family.name] = family.type
    return found


FAMILIES = families(service.metrics, worker.metrics)
EXPORTED = {name + suffix for name, kind in FAMILIES.items() for suffix in SERIES[kind]}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool not found: install Prometheus's promtool (apt-get install prometheus)"
        )
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---- which metrics an expression reads --------------------------------------------------------

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end() :].lstrip()
        if before.isdigit() or before == "." or after.startswith("(") or word in _KEYWORDS:
            continue  # part of a number, a function or aggregation, a keyword
        names.add(word)
    return names


def test_metric_names_reads_selectors_only() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (resolution, le) (rate(a_bucket{model=~"$model", '
        'x="by (y)"}[$__rate_interval]))) / on (model) group_left b > 1e3 and c offset 5m'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert metric_names("sum(rate(d_total[5m])) by (status) * 60") == {"d_total"}


def test_exported_metrics_come_from_both_processes() -> None:
    api = families(service.metrics)
    workers = families(worker.metrics)
    assert api and workers and not set(api) & set(workers)
    assert "histogram" in api.values() and "counter" in workers.values()
    # A histogram is read as its buckets; a counter as _total.
    histogram = next(name for name, kind in workers.items() if kind == "histogram")
    counter = next(name for name, kind in workers.items() if kind == "counter")
    assert {f"{histogram}_bucket", f"{counter}_total"} <= EXPORTED
    assert histogram not in EXPORTED and counter not in EXPORTED


# ---- the alerting rules ------------------------------------------------------------------------


def alert_rules() -> list[Obj]:
    rules: list[Obj] = [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]
    return rules


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests() -> None:
    result = run_promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in alert_rules()} == tested


def test_required_alerts() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert {"for", "labels", "annotations"} <= set.intersection(*(set(r) for r in rules.values()))
    no_worker = rules["Sd3ServeNoReadyWorker"]["expr"]
    # Both sides from the API, aggregated per model (every API replica reports the same value),
    # and matched on the model label alone.
    assert metric_names(no_worker) == {"sd3serve_queue_depth", "sd3serve_ready_workers"}
    assert no_worker.count("max by (model)") == 2 and "and on (model)" in no_worker
    assert rules["Sd3ServeQueueDepthHigh"]["for"] == "10m"
    assert "> 0.05" in rules["Sd3ServeJobFailureRatioHigh"]["expr"]
    assert "resolution" in rules["Sd3ServeJobLatencyP95High"]["expr"]


def test_alert_metrics_are_exported() -> None:
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= EXPORTED, f"{rule['alert']}: not exported: {used - EXPORTED}"


def test_prometheusrule_is_alerts_yaml() -> None:
    """One source of truth: regenerate with python3 deploy/components/monitoring/sync_rules.py."""
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text()), (
        "prometheusrule.yaml differs from alerts.yaml: run "
        "python3 deploy/components/monitoring/sync_rules.py"
    )


# ---- the dashboard ------------------------------------------------------------------------------


def dashboard() -> Obj:
    board: Obj = json.loads(DASHBOARD.read_text())
    return board


def panels() -> list[Obj]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"variable {var['name']}: {query}"
            exprs.append(match.group(1))
    return exprs


def test_dashboard_uses_the_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels():
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", wanted) == wanted, panel["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == wanted
    # No datasource of one particular Grafana (a uid other than the variable) anywhere.
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text()))
    assert uids == {"${datasource}", "-- Grafana --", board["uid"]}


def test_dashboard_layout() -> None:
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        here = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not here & cells, f"{panel['title']} overlaps another panel"
        cells |= here


def test_dashboard_metrics_are_exported() -> None:
    for expr in expressions():
        used = metric_names(expr)
        assert used, expr
        assert used <= EXPORTED | DCGM, f"not exported: {used - EXPORTED - DCGM} in {expr}"


def test_dashboard_shows_every_metric() -> None:
    """Every family the project exports, and the GPU metrics, has a place on the dashboard."""
    used = set().union(*(metric_names(e) for e in expressions()))
    shown = {name for name, kind in FAMILIES.items() if used & {name + s for s in SERIES[kind]}}
    assert shown == set(FAMILIES), f"not on the dashboard: {set(FAMILIES) - shown}"
    assert used >= DCGM
    # Job latency by resolution and by steps, each at p50 and p95.
    latency = [e for e in expressions() if "sd3serve_job_latency_seconds_bucket" in e]
    for label in ("resolution", "steps"):
        for quantile in ("0.5", "0.95"):
            assert any(
                f"histogram_quantile({quantile}," in e and f"by ({label}, le)" in e for e in latency
            ), (label, quantile)


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule), variables expanded."""
    rules = []
    for i, expr in enumerate(expressions()):
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
