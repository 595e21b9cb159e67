"""schemathesis against the OpenAPI the real server serves (keys on, TLS on loopback): every
operation, a fixed seed and a bounded number of examples each; no 5xx and no response that breaks
its documented schema. The queue's renders are the fake generate (this fuzzes the API, not the
renderer)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from api_helpers import Server, make_tls

EXAMPLES = 12          # per operation; hypothesis derandomized (a fixed seed)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schemathesis")
    key = subprocess.run([sys.executable, "-m", "flashhead", "keys", "create", "--data-dir", str(tmp / "data")],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    server = Server(tmp / "data", make_tls(tmp / "tls"), fake_generate=True,
                    env={"FLASHHEAD_TEST_FAKE_CHUNK_S": "0.01", "FLASHHEAD_TEST_FAKE_CHUNKS": "2"}).start()
    yield server, key
    server.stop()


def _operations() -> list[str]:
    """The operation labels are those of the app's own schema (no server needed to list them)."""
    from flashhead.api.app import create_app
    from flashhead.api.auth import OPEN
    from flashhead.config import Settings

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        spec = create_app(Settings(data_dir=tmp), engines=object(), generate=lambda *a, **k: None,
                          auth_mode=OPEN).openapi()
    return [f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item]


@pytest.fixture(scope="module")
def api_schema(served):
    server, _ = served
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", verify=str(server.tls.ca_pem))


@pytest.mark.parametrize("label", _operations())
@pytest.mark.slow
def test_no_server_errors_and_responses_match_the_schema(label, api_schema, served):
    server, key = served
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is in the app but not in the served OpenAPI"

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.call_and_validate(headers={"Authorization": f"Key {key}"}, verify=str(server.tls.ca_pem),
                               timeout=30, checks=[not_a_server_error, response_schema_conformance])

    fuzz()
    assert server.proc.poll() is None, "the server died"
