"""pyrycode-relay --check: every boot check of a command line and environment, nothing
bound, a report of what would be served on stdout, and the exit code the real boot
would have (0, or the refusal's own 1 or 2 with its `fix`), like `nginx -t`.

Each refusal case of test_lifecycle.BOOT_REFUSALS is run twice, as a boot and as a
--check, and both must refuse the same way: the check cannot drift from the boot."""

import socket

import pytest

from relayctl import free_port
from test_lifecycle import BOOT_REFUSALS


def _refusal(res):
    recs = [r for r in res.log_records if r.get("level") == "ERROR"]
    assert recs, f"no ERROR line:\n{res.stderr}"
    return recs[0]


def test_check_ok_reports_what_would_be_served_and_binds_nothing(relay_factory):
    # Both ports are taken by the test: a check that bound anything would fail.
    with socket.socket() as public, socket.socket() as metrics:
        for s in (public, metrics):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(1)
        port, mport = public.getsockname()[1], metrics.getsockname()[1]
        res = relay_factory.boot(["--check", "--insecure-listen", f"127.0.0.1:{port}",
                                  "--metrics-listen", f"127.0.0.1:{mport}", "--trust-x-forwarded-for",
                                  "--workers", "3", "--max-connections", "5000", "--rate-limit-burst", "0"])
    assert res.returncode == 0, res
    lines = res.stdout.splitlines()
    assert lines[0] == "pyrycode-relay: configuration ok (checked only: nothing was bound)", res.stdout
    report = dict(l.split(": ", 1) for l in lines[1:])
    assert report["mode"].startswith("insecure"), report
    assert report["listen"] == f"127.0.0.1:{port}"
    assert report["metrics-listen"] == f"127.0.0.1:{mport}"
    assert report["workers"] == "3"
    assert report["max-connections"] == "5000"
    assert "X-Forwarded-For" in report["client address"]
    assert report["rate-limit"] == "off"
    assert not [r for r in res.log_records if r.get("level") == "ERROR"], res.stderr
    assert not [r for r in res.log_records if r.get("msg") == "starting"], "--check must not start serving"


def test_check_resolves_default_workers_and_disabled_metrics(relay_factory):
    res = relay_factory.boot(["--check", "--insecure-listen", f"127.0.0.1:{free_port()}", "--metrics-listen="])
    assert res.returncode == 0, res
    report = dict(l.split(": ", 1) for l in res.stdout.splitlines()[1:])
    assert report["metrics-listen"] == "off"
    assert report["workers"].endswith("(one per CPU)") and int(report["workers"].split()[0]) >= 1
    assert report["client address"] == "TCP peer"


@pytest.mark.parametrize("args,env", BOOT_REFUSALS)
def test_check_refuses_exactly_as_the_boot(relay_factory, args, env):
    argv = args()
    boot = relay_factory.boot(argv, env=env)
    check = relay_factory.boot(["--check", *argv], env=env)
    assert boot.returncode == 2, boot
    assert check.returncode == boot.returncode, check
    b, c = _refusal(boot), _refusal(check)
    assert (c["msg"], c.get("err"), c.get("fix")) == (b["msg"], b.get("err"), b.get("fix"))
    assert c["fix"], c
    assert "configuration ok" not in check.stdout


def test_check_refuses_a_bad_metrics_address_with_exit_2_and_fix(relay_factory):
    res = relay_factory.boot(["--check", "--insecure-listen", "127.0.0.1:8080", "--metrics-listen", ":9090"])
    assert res.returncode == 2, res
    rec = _refusal(res)
    assert rec["msg"] == "refusing to start: invalid --metrics-listen address"
    assert rec["value"] == ":9090" and "127.0.0.1:9090" in rec["fix"]
    assert res.stdout == ""


def test_check_usage_error_exits_2(relay_factory):
    res = relay_factory.boot(["--check", "--insecure-listen", "127.0.0.1:8080", "--no-such-flag"])
    assert res.returncode == 2, res
    assert "flag provided but not defined: -no-such-flag" in res.stderr


def test_check_autocert_is_refused_with_exit_1_as_the_boot(relay_factory):
    # A cache directory the relay's user cannot create: the boot refuses with exit 1
    # (reference §1.3), and so must --check.
    boot = relay_factory.boot(["--domain", "relay.example.com", "--cert-cache", "/nonexistent"])
    check = relay_factory.boot(["--check", "--domain", "relay.example.com", "--cert-cache", "/nonexistent"])
    assert boot.returncode == check.returncode == 1, (boot, check)
    assert _refusal(check)["msg"] == _refusal(boot)["msg"] == "autocert setup failed"
    assert _refusal(check)["fix"]
