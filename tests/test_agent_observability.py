"""What an operator's tools read from a running agent: JSON log lines (agent.log_format = "json") and
the ``edge_agent_build_info`` metric. A real agent process, no model (none is needed for either)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from devtools.processes import Broker
from edge_agent import __version__
from edge_agent.log_format import JsonFormatter
from edge_agent.runtime import installed_runtime
from harness import post_events, start_agent

pytestmark = pytest.mark.slow

SHOPPER = "shopper-7f3a9c-private"


def test_json_logs_are_one_object_a_line_without_shoppers_ids(broker: Broker, keys: Path, tmp_path: Path) -> None:
    agent = start_agent(broker.url, keys, tmp_path, 'agent.log_format="json"')
    try:
        assert post_events(agent, [{"user_id": SHOPPER, "item_id": "i-1", "event": "view"}])[0] == 200
        assert agent.request("GET", f"/v1/history/{SHOPPER}", token="wrong-token-0123456789")[0] == 401  # logged
        assert agent.request("GET", "/v1/recommendations?user_id=" + SHOPPER)[0] in (200, 503)
    finally:
        assert agent.stop() == 0
    lines = [line for line in agent.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line: a JSON object, nothing else
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in records), records
    messages = " ".join(r["message"] for r in records)
    assert "REST API (granian) listening" in messages and "stopped" in messages
    assert any(r["level"] == "WARNING" and "401" in r["message"] for r in records), messages  # the refusal
    assert SHOPPER not in agent.log()


def test_json_formatter_fields_and_traceback() -> None:
    import logging

    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("edge_agent.x", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "ERROR" and line["logger"] == "edge_agent.x" and line["message"] == "failed x"
    assert line["time"].endswith("+00:00") and "ValueError: boom" in line["exception"]


def test_build_info_metric_names_version_python_and_runtime(broker: Broker, keys: Path, tmp_path: Path) -> None:
    agent = start_agent(broker.url, keys, tmp_path)
    try:
        status, raw = agent.request("GET", "/metrics")
    finally:
        agent.stop()
    assert status == 200
    [line] = [line for line in raw.decode().splitlines() if line.startswith("edge_agent_build_info{")]
    for label, value in {"version": __version__, "python": platform.python_version(),
                         "runtime": installed_runtime(), "machine": platform.machine()}.items():
        assert f'{label}="{value}"' in line, line
    assert installed_runtime() in ("litert", "tflite_runtime", "tensorflow")  # this venv has one
    assert line.endswith(" 1.0")
