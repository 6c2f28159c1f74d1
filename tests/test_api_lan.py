"""A store's LAN API (issue 19, point 4) against real agent processes: HTTPS with a certificate made
the documented way (fleet_pki.py --api-cert), scoped tokens from a 0600 file, a rate-limited token,
refusals logged without ids or token values; and the same gate under the waitress fallback."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import AgentProcess
from devtools.processes import broker as local_broker
from harness import ROOT, publish, start_agent

KIOSK, TILL, OFFICE, LIMITED = "kiosk-" + "k" * 40, "till-" + "t" * 40, "office-" + "o" * 40, "ltd-" + "l" * 40
SHOPPER = "lan-shopper-4711"


def tokens_file(work: Path) -> Path:
    path = work / "api-tokens"
    path.write_text(f"kiosk-1 recommend {KIOSK}\ntill-1 events {TILL}\noffice admin {OFFICE}\n"
                    f"busy-kiosk recommend {LIMITED} rate_per_s=0.5 burst=2\n")
    path.chmod(0o600)
    return path


class Client:
    """HTTPS (or HTTP) requests to an agent, one connection each."""

    def __init__(self, agent: AgentProcess, ca: Path | None) -> None:
        self.agent = agent
        self.context = ssl.create_default_context(cafile=str(ca)) if ca else None

    def call(self, method: str, path: str, token: str | None, body: object = None
             ) -> tuple[int, dict[str, str], bytes]:
        if self.context:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", self.agent.port, timeout=10,
                                                                           context=self.context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.agent.port, timeout=10)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agent.proc.poll() is not None:
                raise RuntimeError(f"agent exited; log:\n{self.agent.log()}")
            try:
                if self.call("GET", "/readyz", self.agent.token)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"agent not ready; log:\n{self.agent.log()}")


@pytest.fixture(scope="module")
def lan(int8_bundle: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    work = tmp_path_factory.mktemp("lan")
    pki = work / "pki"
    subprocess.run([sys.executable, str(ROOT / "firmware_configs" / "mosquitto" / "fleet_pki.py"), "--out", str(pki),
                    "--api-cert", "127.0.0.1,localhost", "--no-persistence"], check=True, capture_output=True)
    with local_broker() as broker:
        publish(int8_bundle, broker)
        agent = start_agent(broker.url, keys, work, f'api.tls_cert_file="{pki / "api" / "127.0.0.1.pem"}"',
                            f'api.tls_key_file="{pki / "api" / "127.0.0.1.key"}"',
                            f'api.tokens_file="{tokens_file(work)}"')
        client = Client(agent, pki / "api-ca.pem")
        try:
            client.wait_ready()
            yield client
        finally:
            agent.stop()


def test_each_token_reaches_only_the_routes_of_its_scopes_over_https(lan: Client) -> None:
    user = urllib.parse.quote(SHOPPER)
    event = {"user_id": SHOPPER, "item_id": "85123A", "event": "purchase"}
    cases = [
        (TILL, "POST", "/v1/events", event, 200),
        (KIOSK, "POST", "/v1/events", event, 403),
        (KIOSK, "GET", f"/v1/recommendations?user_id={user}&k=5", None, 200),
        (TILL, "GET", f"/v1/recommendations?user_id={user}&k=5", None, 403),
        (KIOSK, "GET", f"/v1/users/{user}/history", None, 403),
        (TILL, "GET", "/v1/model", None, 403),
        (KIOSK, "GET", "/metrics", None, 403),
        (KIOSK, "GET", "/readyz", None, 200),
        (OFFICE, "GET", f"/v1/users/{user}/history", None, 200),
        (OFFICE, "GET", "/v1/model", None, 200),
        (OFFICE, "GET", f"/v1/recommendations?user_id={user}", None, 403),  # admin is not every scope
        (lan.agent.token, "GET", f"/v1/recommendations?user_id={user}", None, 200),  # the single token: all
        (lan.agent.token, "DELETE", f"/v1/users/{user}", None, 200),
        (None, "GET", "/healthz", None, 200),
        (None, "GET", "/v1/recommendations?user_id=x", None, 401),
        ("wrong-" + "w" * 40, "GET", "/v1/recommendations?user_id=x", None, 401),
    ]
    for token, method, path, body, expected in cases:
        status, headers, raw = lan.call(method, path, token, body)
        assert status == expected, (token and token[:6], method, path, status, raw)
        if status in (401, 403):
            assert headers["content-type"] == "application/json"
            assert json.loads(raw)["error"]["code"] == {401: "unauthorized", 403: "forbidden"}[status]


def test_refusals_are_logged_with_the_token_name_and_no_id_or_token_value(lan: Client) -> None:
    time.sleep(1.1)  # refusal lines are throttled to one a second per kind
    user = urllib.parse.quote(SHOPPER)
    assert lan.call("DELETE", f"/v1/users/{user}", KIOSK)[0] == 403
    assert lan.call("GET", f"/v1/users/{user}/history", None)[0] == 401
    log = lan.agent.log()
    assert re.search(r"refused 403 DELETE other \(token kiosk-1\): needs scope admin", log), log[-2000:]
    assert "refused 401 GET other (token -)" in log
    for secret in (SHOPPER, KIOSK, TILL, OFFICE, LIMITED, lan.agent.token):
        assert secret not in log


def test_a_rate_limited_token_gets_429_with_retry_after(lan: Client) -> None:
    statuses = [lan.call("GET", "/v1/recommendations?user_id=busy", LIMITED) for _ in range(3)]
    assert [s for s, _, _ in statuses] == [200, 200, 429]  # a burst of 2, then 0.5 requests/s
    _, headers, raw = statuses[2]
    assert int(headers["retry-after"]) >= 1 and json.loads(raw)["error"]["code"] == "rate_limited"
    assert lan.call("GET", "/v1/recommendations?user_id=busy", KIOSK)[0] == 200  # buckets are per token


def test_plain_http_on_the_tls_port_gets_no_answer(lan: Client) -> None:
    with pytest.raises((http.client.HTTPException, OSError)):
        Client(lan.agent, None).call("GET", "/healthz", None)


def test_the_waitress_fallback_applies_the_same_scopes(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    with local_broker() as broker:
        publish(int8_bundle, broker)
        agent = start_agent(broker.url, keys, tmp_path, "api.server=waitress",
                            f'api.tokens_file="{tokens_file(tmp_path)}"')
        try:
            agent.wait_ready(60)
            assert agent.request("GET", "/v1/recommendations?user_id=w", token=KIOSK)[0] == 200
            status, raw = agent.request("DELETE", "/v1/users/w", token=KIOSK)
            assert status == 403 and json.loads(raw)["error"]["code"] == "forbidden"
            assert agent.request("GET", "/v1/model", token="nope")[0] == 401  # waitress' parser, on the headers
            log = agent.log()
            assert "REST API (waitress)" in log and "refused 401 GET other (token -)" in log
            assert "refused 403 DELETE other (token kiosk-1)" in log and KIOSK not in log
        finally:
            agent.stop()

