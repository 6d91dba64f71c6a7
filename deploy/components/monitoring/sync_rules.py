"""Write prometheusrule.yaml from alerts.yaml, the one source of sd3-serve's alerting rules.

    python3 deploy/components/monitoring/sync_rules.py

alerts.yaml is a plain Prometheus rules file (docker compose's Prometheus loads it, promtool
checks it); the Prometheus operator wants the same groups inside a PrometheusRule. Kustomize
cannot wrap a file into an object, so the wrapped copy is written here, keeping the comments,
and tests/test_observability.py fails while the two differ.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = """\
# GENERATED from alerts.yaml by sync_rules.py (python3 deploy/components/monitoring/sync_rules.py):
# the same groups under spec. Edit alerts.yaml, then run it; tests/test_observability.py fails
# while the two differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: sd3-serve
  labels:
    app.kubernetes.io/name: sd3-serve
    app.kubernetes.io/part-of: sd3-serve
spec:
"""


def render(alerts: str) -> str:
    """The PrometheusRule holding the groups of `alerts` (a rules file's text), indented."""
    body = alerts[alerts.index("groups:") :]
    return HEADER + "".join(
        f"  {line}" if line.strip() else line for line in body.splitlines(keepends=True)
    )


def main() -> None:
    target = HERE / "prometheusrule.yaml"
    target.write_text(render((HERE / "alerts.yaml").read_text()))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
