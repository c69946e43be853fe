"""pytest fixtures for the end-to-end tests (helpers live in relayctl.py).

Fixtures:
  relay_bin      absolute path of the relay under test ($RELAY_BIN, default build/gcc/pyrycode-relay)
  relay_factory  RelayFactory: .start(args=..., env=..., metrics=...) -> Relay, .boot(args) -> BootResult;
                 every relay it started is stopped at teardown (SIGTERM, SIGKILL after 12 s) and
                 its exit code checked (0 unless start(expect_exit_code=...) said otherwise)
  relay          a relay started with defaults (one per test: no state leaks between tests,
                 and the per-IP upgrade rate limit starts full)
  server_id      a server-id unique to this test
  pyws           factory: pyws(relay, path, headers, **kw) -> relayctl.PyWs (a Python websockets
                 client in its own thread); every one is shut down at teardown
"""

import os
from pathlib import Path

import pytest

from relayctl import REPO_ROOT, PyWs, RelayFactory, unique_id


@pytest.fixture(scope="session")
def relay_bin() -> str:
    path = os.environ.get("RELAY_BIN") or str(REPO_ROOT / "build" / "gcc" / "pyrycode-relay")
    p = Path(path).resolve()
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"relay binary {p} not found or not executable (set RELAY_BIN, or build it: make CC=gcc)",
                    pytrace=False)
    return str(p)


@pytest.fixture
def relay_factory(relay_bin):
    factory = RelayFactory(relay_bin)
    yield factory
    problems = []
    for relay, code in factory.stop_all():
        mine = []
        if relay.killed_after_timeout:
            mine.append(f"relay on port {relay.port} ignored SIGTERM for 12 s and was killed")
        expected = getattr(relay, "expect_exit_code", 0)
        if expected is not None and code != expected:
            mine.append(f"relay on port {relay.port} exited with {code} after SIGTERM, expected {expected}")
        if mine:
            problems += mine + ["relay log (last 40 lines):\n" + relay.log_tail()]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def relay(relay_factory):
    return relay_factory.start()


@pytest.fixture
def server_id(request) -> str:
    return unique_id(request.node.name[:40])


@pytest.fixture
def pyws():
    made: list = []

    def make(relay, path: str, headers, **kw) -> PyWs:
        c = PyWs(relay, path, headers, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.shutdown()
