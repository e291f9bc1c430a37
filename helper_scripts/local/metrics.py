"""The metrics the functions would emit on AWS, read back from their logs.

Each function writes its metrics as CloudWatch embedded metric format (EMF) lines on standard
output (src/telemetry.rs); on AWS, CloudWatch Logs extracts them from the function's log group.
Here the same lines land in the local run's function logs, and this reads them as CloudWatch
would: each directive of `_aws.CloudWatchMetrics` names a namespace, its dimension sets and its
metrics, whose values are the document's members of the same names
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html).
"""

from __future__ import annotations

import json
from pathlib import Path


def emf_documents(log_dir: Path) -> list[tuple[str, dict]]:
    """Every EMF document in the function logs of `log_dir`, with the function that wrote it."""
    out = []
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith("{") or '"_aws"' not in line:
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("_aws"), dict):
                out.append((path.stem, doc))
    return out


def metrics_of(function: str, doc: dict) -> list[dict]:
    """The metrics one document defines, one entry per metric and dimension set."""
    out = []
    for directive in doc["_aws"].get("CloudWatchMetrics") or []:
        for metric in directive.get("Metrics") or []:
            name = metric.get("Name")
            value = doc.get(name)
            values = value if isinstance(value, list) else [value]
            for dimension_set in directive.get("Dimensions") or [[]]:
                out.append(
                    {
                        "function": function,
                        "namespace": directive.get("Namespace"),
                        "metric": name,
                        "unit": metric.get("Unit", "None"),
                        "dimensions": {d: doc.get(d) for d in dimension_set},
                        "values": values,
                        "timestamp": doc["_aws"].get("Timestamp"),
                    }
                )
    return out


def emitted(log_dir: Path) -> list[dict]:
    """Every metric the functions of a local run emitted, in the order of their logs."""
    return [m for function, doc in emf_documents(log_dir) for m in metrics_of(function, doc)]


def summary(metrics: list[dict]) -> list[str]:
    """One line per metric and dimension values: the count of values and their sum (a count
    metric) or their range (a time)."""
    grouped: dict[tuple, list[float]] = {}
    units: dict[tuple, str] = {}
    for m in metrics:
        key = (m["metric"], tuple(sorted(m["dimensions"].items())))
        grouped.setdefault(key, []).extend(v for v in m["values"] if isinstance(v, (int, float)))
        units[key] = m["unit"]
    lines = []
    for (name, dims), values in sorted(grouped.items()):
        where = ",".join(f"{k}={v}" for k, v in dims)
        if units[(name, dims)] == "Count":
            figure = f"{sum(values):g}"
        elif values:
            figure = f"{min(values):.0f}" if len(values) == 1 else f"{min(values):.0f}-{max(values):.0f} ({len(values)} values)"
        else:
            figure = "-"
        lines.append(f"{name}{{{where}}} {figure} {units[(name, dims)]}")
    return lines
