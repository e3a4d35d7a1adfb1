"""Configuration (CONTRACT section 8) through the real daemon and CLI: an unknown
variable is warned of and ignored, a wrong value of a known one stops the daemon."""

from __future__ import annotations

from pathlib import Path

from conftest import Daemon, run_cli


def test_the_daemon_warns_of_an_unknown_variable_and_runs(make_daemon) -> None:
    daemon: Daemon = make_daemon(workers=1, env={"PROCPOOL_WROKERS": "2"})
    daemon.cli("submit", "echo", "1", "--id", "still-runs")
    assert daemon.wait_status("still-runs", "completed").result == 1
    [warning] = daemon.wait_events("config.unknown_variable")
    assert warning["level"] == "WARNING"
    assert "PROCPOOL_WROKERS" in warning["msg"] and "PROCPOOL_WORKERS?" in warning["msg"]
    assert "did you mean PROCPOOL_WORKERS?" in daemon.stderr()


def test_a_command_warns_of_an_unknown_variable_once(tmp_path: Path) -> None:
    # submit: it works on a home no daemon has made (list would say there is no store).
    result = run_cli(tmp_path / "home", "submit", "echo", env={"PROCPOOL_HOEM": "x"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "procpool: warning: ignoring environment variable PROCPOOL_HOEM: no config key"
        " 'hoem' (did you mean PROCPOOL_HOME?)\n"
    )


def test_a_wrong_value_of_a_known_variable_still_stops_the_daemon(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "home", "run", env={"PROCPOOL_WORKERS": "many"})
    assert result.returncode == 2
    assert "PROCPOOL_WORKERS" in result.stderr and "Traceback" not in result.stderr
