"""``python -m sim``: outputs, clear errors, sweeps and replay."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sim.__main__ import main


def test_run_writes_result_csv_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["--nodes", "20", "--duration", "20", "--scenario", "converged,crash:count=1:at=3,meta:at=2",
                 "--seed", "3", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["spec"]["nodes"] == 20 and result["detection"]["crashed"] == 1
    for name in ("timeseries.csv", "dissemination.csv", "detection.csv", "detection_cdf.csv",
                 "false_positives.csv"):
        assert (out / name).exists(), name
    rows = list(csv.DictReader((out / "timeseries.csv").read_text().splitlines()))
    assert len(rows) == 20 and rows[-1]["running"] == "19"
    pytest.importorskip("matplotlib")
    for name in ("timeseries.png", "dissemination.png", "detection.png"):
        assert (out / name).stat().st_size > 1000, name
    assert "trace " in capsys.readouterr().out


def test_replay_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a"
    assert main(["-n", "15", "-d", "10", "-s", "crash-1pct", "--out", str(out), "--no-plots",
                 "--no-progress"]) == 0
    assert main(["--replay", str(out / "result.json"), "--no-progress"]) == 0
    assert "replay OK" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    result["trace_hash"] = "0" * 32
    (out / "result.json").write_text(json.dumps(result))
    assert main(["--replay", str(out / "result.json"), "--no-progress"]) == 1


def test_sweep_writes_one_directory_per_point_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    assert main(["-d", "8", "-s", "meta-update", "--sweep", "nodes=10,20", "--sweep", "seed=1,2",
                 "--out", str(out), "--no-progress"]) == 0
    for point in ("nodes=10_seed=1", "nodes=10_seed=2", "nodes=20_seed=1", "nodes=20_seed=2"):
        assert (out / point / "result.json").exists()
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert [(r["nodes"], r["seed"]) for r in rows] == [("10", "1"), ("10", "2"), ("20", "1"), ("20", "2")]
    assert json.loads((out / "sweep.json").read_text())["axes"][0]["key"] == "nodes"


@pytest.mark.parametrize(("argv", "message"), [
    (["--scenario", "bogus"], "unknown scenario component"),
    (["--set", "nosuch=1"], "unknown config field"),
    (["--set", "lifeguard=perhaps"], "not a valid bool"),
    (["--nodes", "0"], "at least 1"),
    (["--duration", "-5"], "positive"),
    (["--sweep", "nodes=a,b", "-d", "1"], "not a number"),
])
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_replay_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--replay", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_list_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list-scenarios"]) == 0
    out = capsys.readouterr().out
    assert "crash-1pct" in out and "partition" in out
