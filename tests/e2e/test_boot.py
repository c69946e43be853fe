"""Process lifecycle seen from outside: refusals at boot exit 2, SIGTERM exits 0
(reference §7.4, §7.6). The config issue owns the full flag/env table; these check the
harness's boot path and the basics every relay build must get right."""

import signal

import pytest


def test_refuses_to_start_without_a_listen_mode(relay_factory):
    res = relay_factory.boot([])
    assert res.returncode == 2, res


@pytest.mark.parametrize("args", [["--no-such-flag"], ["--insecure-listen", "127.0.0.1:1", "positional"]],
                         ids=["unknown-flag", "positional-argument"])
def test_bad_command_line_exits_2(relay_factory, args):
    res = relay_factory.boot(args)
    assert res.returncode == 2, res


def test_sigterm_closes_idle_connections_and_exits_0(relay):
    c = relay.connect()
    assert c.request("GET", "/healthz").status == 200  # now an idle keep-alive connection
    relay.signal(signal.SIGTERM)
    c.wait_closed(2.0)
    c.close()
    assert relay.wait_exit(12) == 0
    assert relay.find_logs("shutdown complete"), relay.log_tail()
