"""k8s/monitoring/: the Grafana dashboard and the PrometheusRule.

The dashboard must parse and use its datasource variable; the rule file must carry
exactly the alerts the runbook documents. Every PromQL expression in both may name only
metrics a running sidecar exposes on /metrics (plus ``up``, which Prometheus makes for
every target). The real ``promtool`` (Debian package ``prometheus``) checks the rules,
parses every dashboard expression (as recording rules), and unit-tests each alert on
synthetic series: it fires on the condition it describes and stays silent on healthy
traffic.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import in_process_app
from support_prometheus import PROMTOOL

MONITORING = Path(__file__).resolve().parents[1] / "k8s" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULES = MONITORING / "prometheus-rule.yaml"
ALERTS = {"LogMinerThroughputDrop", "LogMinerQueueGrowing", "LogMinerAnomalyRateSpike",
          "LogMinerAnomalyRateZero", "LogMinerModelLoadFailures", "LogMinerDrift",
          "LogMinerSpoolBacklog", "LogMinerDown"}
PROMETHEUS_MADE = {"up"}  # Prometheus's own series for every scrape target
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$instance": ".*"}
# The metrics the dashboard must show (the list), by what they measure.
DASHBOARD_MUST_SHOW = {
    "logminer_receiver_records_total", "logminer_exporter_records_total",
    "logminer_pipeline_queue_records", "logminer_spool_bytes",
    "logminer_spool_backlog_age_seconds", "logminer_redaction_values_total",
    "logminer_scoring_anomalies_total", "logminer_scoring_records_total",
    "logminer_scoring_unseen_templates_total", "logminer_drift_template_psi",
    "logminer_drift_template_js", "logminer_drift_unknown_template_share",
    "logminer_scoring_batch_seconds_bucket", "logminer_pipeline_ingest_latency_seconds_bucket",
    "logminer_exporter_delivery_latency_seconds_bucket", "logminer_scoring_sessions_live",
    "logminer_scoring_sessions_evicted_total", "logminer_scoring_model_info"}

_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                              "_created"),
             "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}

# ----------------------------------------------------------------------------- PromQL names

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBERS = re.compile(r"(?<![\w:])\d[\w.]*")
_IDENTIFIERS = re.compile(r"[A-Za-z_:][\w:]*(?!\w)(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers left once strings, label matchers,
    ranges, grouping label lists and numbers are cut, that are not function calls."""
    for pattern in (_STRINGS, _MATCHERS, _RANGES, _GROUPINGS, _NUMBERS):
        expr = pattern.sub(" ", expr)
    return set(_IDENTIFIERS.findall(expr)) - _KEYWORDS


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (le, kind) (rate(a_bucket{x="y{}",k=~"b"}[5m] '
            'offset 1h))) / ignoring (kind) c_total > bool 1e3 or on (job) '
            'label_replace(d, "dst", "$1", "src", "(.*)") unless up{job="x"}')
    assert metric_names(expr) == {"a_bucket", "c_total", "d", "up"}


# ----------------------------------------------------------------------------- the assets


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels, including those nested in collapsed rows."""
    return [p for panel in panels for p in (panel, *all_panels(panel.get("panels", [])))]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression: panel targets and the selectors of ``label_values`` queries."""
    board = dashboard()
    exprs = [t["expr"] for p in all_panels(board["panels"]) for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) \
                else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: unexpected query {query!r}"
            exprs.append(match.group(1))
    return exprs


def rule_groups() -> list[dict[str, Any]]:
    resource = yaml.safe_load(RULES.read_text())
    assert (resource["apiVersion"], resource["kind"]) == (
        "monitoring.coreos.com/v1", "PrometheusRule")
    return resource["spec"]["groups"]


def alert_rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rule_groups() for r in group["rules"] if "alert" in r}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def exposed_series_names(data_dir: Path) -> set[str]:
    """Series names a running sidecar's /metrics can produce, from each family's type."""
    async def scrape() -> str:
        app = in_process_app(data_dir)
        await app.start()
        try:
            url = f"http://127.0.0.1:{app.status.port}/metrics"
            return await asyncio.to_thread(
                lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        finally:
            await app.stop()

    names = set()
    for family in text_string_to_metric_families(asyncio.run(scrape())):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


# ----------------------------------------------------------------------------- tests


def test_dashboard_parses_and_takes_its_datasource_from_a_variable():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource", "prometheus")
    panels = all_panels(board["panels"])
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
    shown = set().union(*map(metric_names, dashboard_exprs()))
    assert not DASHBOARD_MUST_SHOW - shown


def test_rule_file_has_exactly_the_runbook_alerts():
    rules = alert_rules()
    assert set(rules) == ALERTS
    assert len([r for g in rule_groups() for r in g["rules"]]) == len(ALERTS)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["runbook"] == f"k8s/README.md#{name.lower()}"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_promtool_accepts_the_rules(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}))
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_parses_every_dashboard_expression(tmp_path):
    exprs = dashboard_exprs()
    for variable, value in GRAFANA_VARIABLES.items():
        exprs = [e.replace(variable, value) for e in exprs]
    assert not [e for e in exprs if "$" in e]  # every variable is substituted
    rules = tmp_path / "dashboard-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_expressions_name_only_metrics_the_sidecar_exposes(tmp_path):
    exposed = exposed_series_names(tmp_path) | PROMETHEUS_MADE
    exprs = {f"dashboard: {e}": e for e in dashboard_exprs()}
    exprs.update({f"alert {name}": rule["expr"] for name, rule in alert_rules().items()})
    unknown = {where: sorted(metric_names(e) - exposed) for where, e in exprs.items()
               if metric_names(e) - exposed}
    assert not unknown, "not exposed by the sidecar:\n" + "\n".join(
        f"  {names} in {where}" for where, names in unknown.items())


# ----------------------------------------------------------------------------- alert behaviour

T = {"job": "logminer-metrics", "instance": "10.0.0.7:8080"}
SEL = 'job="logminer-metrics",instance="10.0.0.7:8080"'


def fires(alert: str, at: str, series: dict[str, str], **labels: str) -> dict[str, Any]:
    """A promtool test case: ``alert`` fires at ``at`` with target plus ``labels``."""
    return {"interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": [
                {"exp_labels": {**T, "severity": alert_rules()[alert]["labels"]["severity"],
                                **labels}}]}]}


HEALTHY = {  # a day and a bit of ordinary traffic: 10 records/s, 1% flagged
    f"up{{{SEL}}}": "1x1500",
    f'logminer_receiver_records_total{{{SEL},receiver="forward",tag="app"}}': "0+600x1500",
    f"logminer_pipeline_queue_records{{{SEL}}}": "0x1500",
    f"logminer_scoring_records_total{{{SEL}}}": "0+600x1500",
    f'logminer_scoring_anomalies_total{{{SEL},kind="record"}}': "0+6x1500",
    f'logminer_scoring_model_loads_total{{{SEL},role="live",result="loaded"}}': "1x1500",
    f"logminer_drift_template_psi{{{SEL}}}": "0.02x1500",
    f"logminer_drift_unknown_template_share{{{SEL}}}": "0.01x1500",
    f'logminer_spool_backlog_age_seconds{{{SEL},exporter="forward"}}': "0.5x1500",
}

CASES = [
    fires("LogMinerDown", "10m", {f"up{{{SEL}}}": "0x10"}),
    # 10 records/s for two hours, then 1/s.
    fires("LogMinerThroughputDrop", "160m", {
        f'logminer_receiver_records_total{{{SEL},receiver="forward",tag="app"}}':
            "0+600x120 72060+60x39"}),
    fires("LogMinerQueueGrowing", "30m", {f"logminer_pipeline_queue_records{{{SEL}}}":
                                          "0+100x30"}),
    # 1% flagged for a day, then 20%.
    fires("LogMinerAnomalyRateSpike", "1500m", {
        f"logminer_scoring_records_total{{{SEL}}}": "0+600x1500",
        f'logminer_scoring_anomalies_total{{{SEL},kind="record"}}': "0+6x1440 8760+120x59"}),
    # Busy, and no anomaly series at all.
    fires("LogMinerAnomalyRateZero", "420m", {
        f"logminer_scoring_records_total{{{SEL}}}": "0+100x420"}),
    # The refused series appears with its first refusal.
    fires("LogMinerModelLoadFailures", "8m", {
        f'logminer_scoring_model_loads_total{{{SEL},role="shadow",result="refused"}}':
            "_x5 1x10"}, role="shadow", result="refused"),
    fires("LogMinerDrift", "70m", {f"logminer_drift_template_psi{{{SEL}}}": "0.3x70",
                                   f"logminer_drift_unknown_template_share{{{SEL}}}": "0.05x70"}),
    fires("LogMinerDrift", "70m", {f"logminer_drift_template_psi{{{SEL}}}": " ".join(["NaN"] * 71),
                                   f"logminer_drift_unknown_template_share{{{SEL}}}": "0.5x70"}),
    fires("LogMinerSpoolBacklog", "25m", {
        f'logminer_spool_backlog_age_seconds{{{SEL},exporter="forward"}}': "0+60x30"},
          exporter="forward"),
    {"interval": "1m",
     "input_series": [{"series": s, "values": v} for s, v in HEALTHY.items()],
     "alert_rule_test": [{"eval_time": "1500m", "alertname": a, "exp_alerts": []}
                         for a in sorted(ALERTS)]},
]


def test_each_alert_fires_on_its_condition_and_none_on_healthy_traffic(tmp_path):
    assert {case["alert_rule_test"][0]["alertname"] for case in CASES[:-1]} == ALERTS
    # promtool compares annotations too; the templates are checked by `check rules`.
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                     "tests": CASES}))
    result = promtool("test", "rules", tests)
    assert result.returncode == 0, result.stdout + result.stderr

