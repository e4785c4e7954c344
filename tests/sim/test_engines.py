"""Sweeps on execution engines (issue 15): local vs dask give the same points, resume,
failures, dying workers, the memory bound and bad engine arguments."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.__main__ import main
from sim.engines import EngineError, parse_bytes
from sim.run import RunSpec, execute
from sim.sweep import canonical_spec, estimate_bytes

SWEEP = ["-d", "8", "-s", "crash-1pct", "--sweep", "nodes=10,20", "--sweep", "seed=1,2", "--no-plots"]
POINTS = ("nodes=10_seed=1", "nodes=10_seed=2", "nodes=20_seed=1", "nodes=20_seed=2")


def _results(out: Path) -> dict[str, dict[str, Any]]:
    return {p: json.loads((out / p / "result.json").read_text()) for p in POINTS}


def _without_perf(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "perf"}


@pytest.mark.slow
def test_local_and_dask_give_identical_points(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    runs = {
        "local-1": ["--engine", "local", "--workers", "1"],
        "local-2": ["--engine", "local", "--workers", "2"],
        "dask-2": ["--engine", "dask", "--workers", "2"],
    }
    results = {}
    for label, extra in runs.items():
        assert main([*SWEEP, *extra, "--out", str(tmp_path / label), "--no-progress"]) == 0, label
        results[label] = _results(tmp_path / label)
    ref = results["local-1"]
    assert len({r["trace_hash"] for r in ref.values()}) == 4  # four different runs
    for label, res in results.items():
        for p in POINTS:
            assert res[p]["trace_hash"] == ref[p]["trace_hash"], (label, p)
            assert _without_perf(res[p]) == _without_perf(ref[p]), (label, p)
            # Each point's peak is its own process's (a fresh one), never a reused worker's.
            assert 0 < res[p]["perf"]["process_peak_rss_mib"] < 1000
    # And the same as running the spec in this process.
    direct = execute(RunSpec(nodes=20, duration=8, scenario="crash-1pct", seed=2)).result
    assert direct["trace_hash"] == ref["nodes=20_seed=2"]["trace_hash"]
    sweep = json.loads((tmp_path / "dask-2" / "sweep.json").read_text())
    assert [p["result"]["spec"]["nodes"] for p in sweep["points"]] == [10, 10, 20, 20]
    assert sweep["run"]["engine"].startswith("dask") and sweep["run"]["points_run"] == 4


def test_resume_skips_points_with_an_equal_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sw"
    assert main([*SWEEP, "--out", str(out)]) == 0
    first = _results(out)
    capsys.readouterr()
    # The same points spelled differently (a preset expanded) are the same runs.
    argv = [*SWEEP, "--out", str(out)]
    argv[argv.index("crash-1pct")] = "converged,crash:pct=1:at=5"
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "4/4 done (4 resumed)" in err and "0 to run" in err
    assert json.loads((out / "sweep.json").read_text())["run"]["points_run"] == 0
    # A point whose recorded spec differs, and one half written, run again; the others do not.
    r = first["nodes=10_seed=2"]
    r["spec"]["seed"] = 99
    (out / "nodes=10_seed=2" / "result.json").write_text(json.dumps(r))
    (out / "nodes=20_seed=1" / "result.json").unlink()
    assert main([*SWEEP, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 to run" in err
    again = _results(out)
    assert {p: x["trace_hash"] for p, x in again.items()} == {p: x["trace_hash"] for p, x in first.items()}
    sw = json.loads((out / "sweep.json").read_text())
    assert sw["run"]["points_run"] == 2 and sw["run"]["points_resumed"] == 2


def test_canonical_spec_ignores_spelling_not_values() -> None:
    a = RunSpec(nodes=10, duration=8, scenario="crash-1pct", overrides=(("lifeguard", "false"),))
    b = RunSpec(nodes=10, duration=8.0, scenario="converged,crash:pct=1:at=5", overrides=(("lifeguard", "0"),))
    assert canonical_spec(a) == canonical_spec(b)
    assert canonical_spec(a) != canonical_spec(RunSpec(nodes=10, duration=8, scenario="crash-1pct"))


def test_a_failing_point_is_reported_and_the_others_kept(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sw"
    # node 12 exists only in the 20-node run: the 10-node point fails when it installs the scenario.
    assert main(["-d", "6", "-s", "converged,meta:node=12:at=1", "--sweep", "nodes=10,20", "--out", str(out),
                 "--no-plots", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "point nodes=10 failed: error: meta: node 12 out of range" in err
    assert "Traceback" not in err
    assert json.loads((out / "nodes=20" / "result.json").read_text())["spec"]["nodes"] == 20
    assert not (out / "nodes=10" / "result.json").exists()
    sweep = json.loads((out / "sweep.json").read_text())
    assert [p["result"]["spec"]["nodes"] for p in sweep["points"]] == [20]
    assert sweep["failed"] == [{"name": "nodes=10", "message": "error: meta: node 12 out of range"}]


def test_memory_limit_keeps_points_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = estimate_bytes(RunSpec(nodes=20, duration=8))
    assert main([*SWEEP, "--out", str(tmp_path / "m"), "--workers", "2",
                 "--memory-limit", str(int(one * 1.5))]) == 0
    err = capsys.readouterr().err
    assert "1 running" in err and "2 running" not in err
    capsys.readouterr()
    assert main([*SWEEP, "--out", str(tmp_path / "n"), "--workers", "2", "--memory-limit", "1M"]) == 0
    err = capsys.readouterr().err
    assert "exceeds the memory limit; running it alone" in err and "2 running" not in err


# Measured peak RSS of crash-1pct points with the compact member table (MiB; §6 and §7
# of docs/scaling.md): the estimate must cover each, by at most ~1.6x from 1,000 up.
MEASURED_PEAK_MIB = {1000: 84.9, 3000: 232.7, 10000: 1560.0}


@pytest.mark.parametrize(("nodes", "peak"), sorted(MEASURED_PEAK_MIB.items()))
def test_memory_estimate_covers_measured_peaks(nodes: int, peak: float) -> None:
    est = estimate_bytes(RunSpec(nodes=nodes, duration=45)) / (1 << 20)
    assert peak <= est <= 1.6 * peak


def test_memory_estimate_shape() -> None:
    est = [estimate_bytes(RunSpec(nodes=n, duration=45)) for n in (10, 100, 1000, 10000, 100000)]
    assert est == sorted(est) and est[0] >= 32 << 20  # an interpreter with the core loaded
    # Quadratic for large N (the crash storm's per-pair state), near-flat for small N.
    # 10x the nodes: ~100x the bytes at the top (not 10x), ~1x at the bottom.
    assert 70 < est[4] / est[3] <= 100 and est[1] / est[0] < 1.1
    assert estimate_bytes(RunSpec(nodes=1000, duration=45)) == estimate_bytes(RunSpec(nodes=1000, duration=600))


def test_parse_bytes() -> None:
    assert parse_bytes("4G") == 4 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes("1000") == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(EngineError):
            parse_bytes(bad)


@pytest.mark.parametrize(("argv", "message"), [
    (["--engine", "ray"], "unknown engine 'ray' (engines: local, dask)"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler needs --engine dask"),
    (["--engine", "dask", "--scheduler", "localhost"], "expected an address like tcp://HOST:8786"),
    (["--memory-limit", "lots"], "is not a size"),
    (["--trace", "t.jsonl"], "--trace is for single runs"),
])
def test_bad_engine_arguments_are_one_line_errors(argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-d", "1", "--sweep", "nodes=2,3", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("error: ")


@pytest.mark.slow
def test_unreachable_scheduler_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("distributed")
    # Port 9 on loopback: nothing listens (discard is never enabled here), the connect is refused.
    assert main(["-d", "1", "--sweep", "nodes=2,3", "--no-progress", "--engine", "dask",
                 "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the dask scheduler at tcp://127.0.0.1:9" in err


# --- dying workers ----------------------------------------------------------------------------

KILL_SWEEP = ["-d", "20", "-s", "crash-1pct", "--sweep", "nodes=120,121", "--no-plots"]


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (points are started from pool threads)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _is_point(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"sim" in cmd and b"--out" in cmd and b"--no-progress" in cmd


def _wait_for(what: str, probe: Any, deadline_s: float = 60.0) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def _sweep_process(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "sim", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _expected_hashes() -> dict[str, str]:
    return {f"nodes={n}": execute(RunSpec(nodes=n, duration=20, scenario="crash-1pct")).result["trace_hash"]
            for n in (120, 121)}


@pytest.mark.slow
def test_local_engine_runs_a_killed_point_again(tmp_path: Path) -> None:
    out = tmp_path / "k"
    with _sweep_process([*KILL_SWEEP, "--workers", "2", "--out", str(out)]) as proc:
        victim = _wait_for("a point process", lambda: [c for c in _children(proc.pid) if _is_point(c)])[0]
        os.kill(victim, signal.SIGKILL)  # a process this test's sweep started
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert "killed by SIGKILL; running it again (attempt 2 of 3)" in err
    want = _expected_hashes()
    for name, h in want.items():
        assert json.loads((out / name / "result.json").read_text())["trace_hash"] == h


@pytest.mark.slow
def test_dask_point_survives_its_worker_dying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")
    import logging
    out = tmp_path / "k"
    # The killed worker cannot remove its point's temporary directory: keep it in tmp_path.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                                  dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
            distributed.Client(cluster) as client:
        workers: dict[str, int] = client.run(os.getpid)
        with _sweep_process([*KILL_SWEEP, "--engine", "dask", "--scheduler", cluster.scheduler_address,
                             "--out", str(out)]) as proc:
            def busy_worker() -> list[int]:
                return [w for w in workers.values() if any(_is_point(c) for c in _children(w))]
            worker = _wait_for("a worker running a point", busy_worker)[0]
            point = next(c for c in _children(worker) if _is_point(c))
            os.kill(worker, signal.SIGKILL)  # a worker of the cluster this test started
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        # The point's own process went with its worker (no orphan simulation left running).
        _wait_for("the orphaned point to exit", lambda: not Path(f"/proc/{point}").exists()
                  or b"Z" in Path(f"/proc/{point}/stat").read_bytes().split(b")")[-1][:3], 30)
    want = _expected_hashes()
    for name, h in want.items():
        assert json.loads((out / name / "result.json").read_text())["trace_hash"] == h
    assert json.loads((out / "sweep.json").read_text())["run"]["points_run"] == 2
