"""Each rank of a run: what the engine records in status.json's `ranks` (a real one- and two-process run on the
CPU), the monitor's per-rank view, `tunedeck status`, and the GPU screen naming the run and rank of a process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import psutil
import pytest
from engine_runs import dump, kill, start, wait_final, wait_for
from test_gpu import FakeNvml
from tui_fixtures import SIZE, assert_snapshot, make_app, make_run, one_gpu_snapshot, rank_entries, screen_text
from tui_fixtures import wait_for as wait_screen

from engine.hardware import GpuProbe, format_snapshot, label_run_processes, snapshot
from engine.runs.protocol import status_ranks
from tui.cli.runs import progress_line
from tui.follow import rank_row
from tui.screens.monitor import MonitorScreen


@pytest.fixture(autouse=True)
def fast_monitor(monkeypatch):
    monkeypatch.setattr(MonitorScreen, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(MonitorScreen, "STATUS_SECONDS", 0.1)


def gpu_sampler(pids: list[int]):
    """The real snapshot() over a stand-in NVML whose one GPU runs these pids."""
    procs = [SimpleNamespace(pid=pid, usedGpuMemory=(30 + i) * 2**30) for i, pid in enumerate(pids)]
    return lambda workspace: snapshot(workspace, GpuProbe(FakeNvml(procs=procs)))


def test_one_process_run_records_its_one_rank(write_config, workspace):
    run, proc = start(write_config(max_steps=4, save_steps=4, eval_steps=4, logging_steps=2), workspace)
    status = wait_final(run, proc)
    assert status["state"] == "completed", dump(run)
    (entry,) = status_ranks(status)
    assert entry["rank"] == 0 and entry["local_rank"] == 0 and entry["pid"] == status["pid"] == proc.pid
    assert entry["host"] == socket.gethostname() and entry["device"] == "cpu"
    assert 0 < entry["memory_used"] <= entry["memory_peak"]
    assert entry["utilization"] is None  # no GPU: nothing to report busy
    assert status["ranks_step"] == 4  # refreshed at each training log, not only at the start


@pytest.mark.asyncio
async def test_two_rank_run_shows_each_rank_and_labels_its_processes(write_config, workspace):
    run, proc = start(write_config(nproc_per_node=2, max_steps=5000, save_steps=1000, eval_steps=1000,
                                   logging_steps=1), workspace)
    try:
        # Paused, the ranks stay alive and still while the screens look at them.
        wait_for(lambda: len(status_ranks(run.status())) == 2 and run.status()["state"] == "running",
                 timeout=180, what="two ranks recorded")
        run.send_command("pause")
        wait_for(lambda: run.status()["state"] == "paused", timeout=60, what="the pause")
        status = run.status()
        ranks = status_ranks(status)
        assert [e["rank"] for e in ranks] == [0, 1] and [e["local_rank"] for e in ranks] == [0, 1]
        pids = [e["pid"] for e in ranks]
        assert len(set(pids)) == 2 and pids[0] == status["pid"]
        assert all(psutil.pid_exists(pid) for pid in pids)  # the ranks themselves, not the torchrun agent
        assert all(e["host"] == socket.gethostname() and e["device"] == "cpu" for e in ranks)
        assert all(0 < e["memory_used"] <= e["memory_peak"] for e in ranks)

        # The GPU snapshot names the run and rank of each of its processes, and nothing else.
        stranger = os.getpid()
        (gpu,) = gpu_sampler([*pids, stranger])(workspace)["gpus"]
        by_pid = {p["pid"]: p for p in gpu["processes"]}
        assert [(by_pid[pid]["run_id"], by_pid[pid]["rank"]) for pid in pids] == [(run.id, 0), (run.id, 1)]
        assert "run_id" not in by_pid[stranger]
        text = format_snapshot({"gpus": [gpu], "host": {}})
        assert f"rank 1 · run {run.id}" in text

        # `tunedeck status` prints a line per rank.
        out = subprocess.run([sys.executable, "-m", "tui.cli", "status", run.id, "--workspace", str(workspace)],
                             capture_output=True, text=True, timeout=60).stdout
        assert "rank  host" in out and all(str(pid) in out for pid in pids), out

        app = make_app(workspace, sampler=gpu_sampler([*pids, stranger]), attach=run.id)
        async with app.run_test(size=SIZE) as pilot:
            await wait_screen(pilot, lambda: "rank  host" in screen_text(app), timeout=30)
            lines = screen_text(app).splitlines()
            for entry in ranks:  # one row per rank, with its pid, above the plots
                assert any(line.split()[:1] == [str(entry["rank"])] and str(entry["pid"]) in line
                           for line in lines), lines
            await pilot.press("1")
            await wait_screen(pilot, lambda: f"rank 1 · run {run.id}"[:30] in screen_text(app), timeout=30)
            text = screen_text(app)
            assert f"rank 0 · run {run.id}"[:30] in text and f"{stranger}" in text
        run.send_command("stop")
        assert wait_final(run, proc, timeout=120)["state"] == "stopped", dump(run)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            kill(proc)


@pytest.mark.asyncio
async def test_monitor_lists_ranks_above_the_plots_and_all_of_them_with_g(snap_ws):
    run = make_run(snap_ws, run_id="20250101-090000-ddp-0001", steps=40, ranks=rank_entries(2))
    app = make_app(snap_ws, attach=run.id)
    async with app.run_test(size=SIZE) as pilot:
        await wait_screen(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.view is not None
                          and app.screen.view.events > 0 and not app.screen.view.replaying)
        app.clear_notifications()
        await pilot.pause()
        text = screen_text(app)
        assert "   0  node-a        cuda:0          30.0 / 36.5 GiB  90%     5000" in text
        assert "   1  node-a        cuda:1          31.0 / 37.5 GiB  89%     5001" in text
        assert "loss 0.959" in text  # the plots are still there
        assert_snapshot(app, "monitor_two_ranks")
        await pilot.press("g")
        await wait_screen(pilot, lambda: "2 ranks at step 40" in screen_text(app))
        assert "loss 0.959" not in screen_text(app)
        await pilot.press("g")
        await wait_screen(pilot, lambda: "loss 0.959" in screen_text(app))
        await pilot.press("l")  # the whole log takes the ranks' lines too
        await wait_screen(pilot, lambda: "loading model" in screen_text(app) and "cuda:0" not in screen_text(app))


@pytest.mark.asyncio
async def test_monitor_of_many_ranks_summarises_and_g_lists_every_one(tmp_path):
    run = make_run(tmp_path, steps=10, ranks=rank_entries(16, nodes=2))
    app = make_app(tmp_path, attach=run.id)
    async with app.run_test(size=SIZE) as pilot:
        await wait_screen(pilot, lambda: "13 more" in screen_text(app))
        text = screen_text(app)
        assert "highest peak rank 15 51.5 GiB" in text and "node-b" not in text
        await pilot.press("g")
        await wait_screen(pilot, lambda: "16 ranks at step 10" in screen_text(app))
        for _ in range(16):
            await pilot.press("down")
        await wait_screen(pilot, lambda: "  15  node-b" in screen_text(app))


@pytest.mark.asyncio
async def test_one_rank_run_keeps_the_plots_whole(tmp_path):
    run = make_run(tmp_path, steps=10, ranks=rank_entries(1))
    app = make_app(tmp_path, attach=run.id)
    async with app.run_test(size=SIZE) as pilot:
        await wait_screen(pilot, lambda: "step 10/100" in screen_text(app))
        assert "rank  host" not in screen_text(app)
        await pilot.press("g")  # still there on demand
        await wait_screen(pilot, lambda: "1 rank at step 10" in screen_text(app))
        assert "cuda:0" in screen_text(app)


@pytest.mark.asyncio
async def test_gpu_screen_names_run_and_rank_of_a_process(snap_ws):
    here = socket.gethostname()
    run = make_run(snap_ws, run_id="20250101-090000-ddp-0001", ranks=rank_entries(2, host=here))
    finished = make_run(snap_ws, run_id="20250101-080000-old-0001", state="completed",
                        ranks=rank_entries(3, host=here))  # its pids may be anyone's by now
    def sampler(workspace):  # the fixed GPU of the other screen tests, running three processes
        snap = one_gpu_snapshot(workspace)
        snap["gpus"][0]["processes"] = [{"pid": pid, "memory_mib": 30000 + pid % 10 * 1024, "user": "alice",
                                         "command": "python -m engine.training.worker"} for pid in (5000, 5001, 5002)]
        label_run_processes(snap, workspace)
        return snap

    app = make_app(snap_ws, sampler=sampler)
    async with app.run_test(size=SIZE) as pilot:
        await wait_screen(pilot, lambda: "rank 1 · run" in screen_text(app))
        text = screen_text(app)
        assert f"rank 0 · run {run.id}" in text and f"rank 1 · run {run.id}" in text
        assert finished.id not in text and "rank 2" not in text
        assert_snapshot(app, "gpu_run_ranks")


def test_damaged_rank_entries_are_left_out_or_read_none():
    status = {"ranks": [{"rank": 1, "memory_used": "lots", "pid": 7, "host": 5}, "junk", {"no": "rank"},
                        {"rank": 0, "memory_used": 2**30, "error": "CUDA error"}]}
    first, second = status_ranks(status)
    assert (first["rank"], first["memory_used"]) == (0, 2**30)
    assert (second["rank"], second["memory_used"], second["pid"], second["host"]) == (1, None, 7, "5")
    assert status_ranks({"ranks": "junk"}) == [] and status_ranks({}) == []
    assert rank_row(first).endswith("not measured: CUDA error")
    assert "n/a /  n/a GiB  n/a        7" in rank_row(second)


def test_progress_line_of_attach_plain_carries_memory_per_rank():
    status = {"state": "running", "step": 5, "max_steps": 10}
    assert "mem/rank 30.0 31.0 GiB  [running]" in progress_line({**status, "ranks": rank_entries(2)})
    assert "mem/rank" not in progress_line({**status, "ranks": rank_entries(1)})
