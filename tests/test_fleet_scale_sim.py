"""The fleet simulation of bench/fleet_scale.py, small: 50 simulated agents, a 1 MB bundle, a real
Mosquitto and a real nginx origin over HTTPS. Every agent activates in both delivery modes, origin
delivery takes the bundle's bytes off the broker, and the simulated agents refuse tampered chunks
as the real agent does (so the bench's agents do verify what they count as delivered).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from devtools.fleet_sim.run import Rollout, run
from shared.openapi import document

AGENTS = 50
MODEL_BYTES = 1_000_000
CHUNKS = 5  # 1 MB of model in 256 KB chunks (4) and the catalog (1)


@pytest.fixture(scope="module", autouse=True)
def servers() -> None:
    for exe, package in (("mosquitto", "mosquitto"), ("nginx", "nginx-light")):
        if shutil.which(exe) is None and not os.path.exists(f"/usr/sbin/{exe}"):
            message = f"{exe} is missing: 'make {exe}' (apt-get install -y {package}) installs it"
            if os.environ.get("EDGE_REC_REQUIRE_ALL"):
                pytest.fail(message)
            pytest.skip(message)


def check_status_contract(status: dict[str, Any]) -> None:
    validator = Draft202012Validator({"$ref": "#/components/schemas/AgentStatus",
                                      "components": document()["components"]})
    errors = list(validator.iter_errors(status))
    assert not errors, errors[0].message


@pytest.mark.slow
def test_every_agent_activates_in_both_modes_and_the_origin_takes_the_bytes_off_the_broker() -> None:
    mqtt = run(Rollout(agents=AGENTS, mode="mqtt", model_bytes=MODEL_BYTES, timeout_s=60))
    origin = run(Rollout(agents=AGENTS, mode="origin", model_bytes=MODEL_BYTES, timeout_s=60))
    for result in (mqtt, origin):
        assert result["all_active"] and result["activated"] == AGENTS, result
        assert result["agent_errors"] == [] and result["agents_discarding"] == 0
        check_status_contract(result["status_example"])
        assert result["status_example"]["model_version"] == 1
    assert mqtt["agent_counters"]["mqtt_chunks"] == AGENTS * CHUNKS
    assert mqtt["agent_counters"]["origin_chunks"] == 0
    assert origin["agent_counters"]["origin_chunks"] == AGENTS * CHUNKS
    assert origin["agent_counters"]["mqtt_chunks"] == 0
    bundle = origin["bundle_bytes"]
    assert mqtt["broker"]["bytes_written"] > AGENTS * bundle
    assert origin["broker"]["bytes_written"] < 0.01 * mqtt["broker"]["bytes_written"]
    assert origin["origin"]["bytes_sent"] >= AGENTS * bundle
    assert origin["origin"]["requests"] == AGENTS * CHUNKS


@pytest.mark.slow
def test_a_chunk_the_origin_tampered_with_is_refused_and_fetched_over_mqtt() -> None:
    result = run(Rollout(agents=20, mode="origin", model_bytes=MODEL_BYTES, tamper="origin", timeout_s=60))
    assert result["all_active"], result
    assert result["agents_discarding"] == 20
    assert result["agent_counters"]["mqtt_chunks"] == 20  # the one bad chunk each, from the broker
    assert "chunk_rejected" in result["status_example"]["discarded"]["reason"]


@pytest.mark.slow
def test_a_tampered_mqtt_chunk_is_refused_and_nothing_activates() -> None:
    result = run(Rollout(agents=20, mode="mqtt", model_bytes=MODEL_BYTES, tamper="mqtt", timeout_s=8))
    assert not result["all_active"] and result["activated"] == 0, result
    assert result["agents_discarding"] == 20
    assert result["status_example"]["model_version"] is None
    assert "does not match its sha256" in result["status_example"]["discarded"]["reason"]
