"""A site's idle time: background measurements run only while the site waits for the others."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from app import results
from app.federation import federate
from app.idle import IdleTime
from app.site import Site
from app.profile import fastest_ms, summarize
from tests.conftest import site_input

SHORT = 0.05   # long enough for a background thread to get going, on a busy machine too


def test_a_job_runs_only_inside_windows():
    idle, pieces = IdleTime(), []

    def job() -> None:
        for _ in range(3):
            idle.run(lambda: pieces.append(time.monotonic()))
    done = idle.start(job)
    time.sleep(SHORT)
    assert pieces == [] and not done.done()   # no window yet: nothing ran
    with idle.waiting():
        done.result(timeout=10)
    assert len(pieces) == 3


def test_jobs_run_one_after_another_in_the_order_started():
    idle, release, order = IdleTime(), threading.Event(), []

    def first() -> None:
        order.append("first started")
        release.wait(10)
        order.append("first ended")
        raise RuntimeError("the first job failed")
    failed = idle.start(first)
    second = idle.start(lambda: idle.run(lambda: order.append("second")))
    idle.finish(second)   # the first too: the second runs after it
    time.sleep(SHORT)
    assert order == ["first started"] and not second.done()   # waits for the first, though it could run
    release.set()
    second.result(timeout=10)
    assert order == ["first started", "first ended", "second"]
    with pytest.raises(RuntimeError, match="first job failed"):   # for whoever takes its result, not the next job
        failed.result()


def test_a_piece_the_end_of_a_window_cut_short_is_reported():
    idle, started, release = IdleTime(), threading.Event(), threading.Event()

    def piece() -> str:
        started.set()
        release.wait(10)
        return "ran"
    with idle.waiting():
        done = idle.start(lambda: idle.run(piece))
        assert started.wait(10)
    release.set()   # the window ended while the piece ran: the site's own work may have slowed it
    assert done.result(timeout=10) == ("ran", False)
    with idle.waiting():
        assert idle.start(lambda: idle.run(lambda: "ran")).result(timeout=10) == ("ran", True)


def test_the_end_of_a_window_waits_for_a_whole_piece():
    idle, inside, ended = IdleTime(), threading.Event(), []

    def job() -> None:
        with idle.whole():
            inside.set()
            time.sleep(SHORT)
            ended.append(time.monotonic())
    with idle.waiting():
        idle.start(job)
        assert inside.wait(10)
    assert ended   # the window closed only after the piece


def test_finish_lets_a_job_run_without_windows_and_leaves_later_jobs_to_the_windows():
    idle = IdleTime()
    done = idle.start(lambda: [idle.run(lambda: index)[0] for index in range(3)])
    later = idle.start(lambda: idle.run(lambda: "ran")[0])
    idle.finish(done)
    assert done.result(timeout=10) == [0, 1, 2]
    time.sleep(SHORT)
    assert not later.done()   # still waiting for a window
    with idle.waiting():
        assert later.result(timeout=10) == "ran"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_a_job_yields_to_the_sites_work_until_its_result_is_awaited():
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    own, idle = nice(), IdleTime()
    in_window = idle.start(lambda: idle.run(nice)[0])
    with idle.waiting():
        assert in_window.result(timeout=10) == 19   # a piece outlasting its window yields to the site's work
    awaited = IdleTime()
    job = awaited.start(lambda: awaited.run(nice)[0])
    awaited.finish(job)
    assert job.result(timeout=10) == (own if os.geteuid() == 0 else 19)   # raising it back needs root
    assert nice() == own   # the caller's thread is untouched


@pytest.mark.parametrize("clock, counted", [(time.thread_time, True), (time.perf_counter, False)],
                         ids=["cpu time", "wall time"])
def test_a_timed_run_the_end_of_a_wait_cut_short_counts_only_in_cpu_time(clock, counted):
    """The site's own work after the wait may stretch the run's wall time, never its thread's CPU time."""
    idle, inside, release, calls = IdleTime(), threading.Event(), threading.Event(), []

    def run() -> None:
        calls.append(None)
        if len(calls) == 2:   # the first timed run (the first call warms up)
            inside.set()
            release.wait(10)
    with idle.waiting():
        job = idle.start(lambda: fastest_ms({"model": run}, repeats=1, budget_s=1e-6, clock=clock, idle=idle))
        assert inside.wait(10)
    release.set()
    if counted:
        assert job.result(timeout=10)["model"] >= 0
    else:
        time.sleep(SHORT)
        assert not job.done()   # its next run waits for the next wait
        idle.finish(job)
        job.result(timeout=10)
    assert len(calls) == (2 if counted else 3)


def test_a_background_measurement_leaves_the_global_random_generator_alone():
    """The site trains (dropout draws from torch's global generator) while its teacher is measured."""
    model = nn.Linear(4, 2)
    before = torch.get_rng_state()
    summarize(model, (4,), large_batch=8, repeats=1)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_teacher_is_measured_in_the_waits_and_its_result_used_at_the_end(monkeypatch):
    calls = []
    real = results.summarize
    monkeypatch.setattr(results, "summarize", lambda *args, **kwargs: calls.append(kwargs) or real(*args, **kwargs))
    teacher, idle = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), IdleTime()
    site = SimpleNamespace(name="c1", teacher=teacher, train=SimpleNamespace(sample_shape=(1, 4, 4)))
    results.measure_teacher(site, idle)
    results.measure_teacher(site, idle)   # a second fold sharing the teacher: measured once
    future, _ = results._TEACHER_SUMMARIES[teacher][(1, 4, 4)]
    time.sleep(SHORT)
    assert not future.done()   # no window yet
    with idle.waiting():
        summary = future.result(timeout=30)
    assert summary == results.teacher_summary(teacher, (1, 4, 4))
    assert summary["parameters"] == 51 and len(calls) == 1 and calls[0]["idle"] is idle


def test_the_student_is_measured_in_the_waits_on_a_copy_that_the_rounds_leave_alone(monkeypatch):
    """Its size and speed depend on its architecture, not on its weights: measured on a copy taken before
    the rounds, which change the student's weights and mode meanwhile; the result is taken at the end."""
    calls = []
    real = results.summarize
    monkeypatch.setattr(results, "summarize",
                        lambda model, *args, **kwargs: calls.append(model) or real(model, *args, **kwargs))
    student, idle = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.Dropout()), IdleTime()
    site = SimpleNamespace(name="c1", student=student, train=SimpleNamespace(sample_shape=(1, 4, 4)))
    results.measure_student(site, idle)
    future, _ = results._STUDENT_SUMMARIES[student]
    with torch.no_grad():
        student[1].weight.add_(1.0)   # a round trains the student meanwhile
    time.sleep(SHORT)
    assert not future.done()   # no window yet
    with idle.waiting():
        summary = future.result(timeout=30)
    assert student.training   # the measurement switched its copy, not the student, to eval mode
    assert calls[0] is not student and not torch.equal(calls[0][1].weight, student[1].weight)
    assert results.student_summary(site) == summary and summary["parameters"] == 51 and len(calls) == 1
    assert results.student_summary(site)["parameters"] == 51 and calls[1] is student   # none left: measured now


def test_a_teacher_measurement_the_waits_did_not_finish_completes_when_needed():
    teacher, idle = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), IdleTime()
    results.measure_teacher(SimpleNamespace(name="c1", teacher=teacher, train=SimpleNamespace(sample_shape=(1, 4, 4))),
                            idle)
    assert results.teacher_summary(teacher, (1, 4, 4))["parameters"] == 51   # no window ever opened


def test_a_failing_background_measurement_fails_where_its_result_is_taken():
    teacher, idle = nn.Linear(3, 2), IdleTime()   # takes 3 features: (1, 4, 4) images cannot pass
    results.measure_teacher(SimpleNamespace(name="c1", teacher=teacher, train=SimpleNamespace(sample_shape=(1, 4, 4))),
                            idle)
    with pytest.raises(RuntimeError):
        results.teacher_summary(teacher, (1, 4, 4))


def test_a_sites_outputs_up_to_the_teachers_size_do_not_wait_for_its_measurement(tmp_path):
    """The coordinator prepares its outputs, then waits for the other sites' in an idle window: a teacher
    measurement the rounds' waits left unfinished may go on there, and only finishing the outputs needs it."""
    site = Site.load(site_input(tmp_path / "in", n_train=200, n_test=100, max_iter=1), tmp_path / "out", "c1",
                     log=lambda message: None)
    federate([site], write=False)
    idle = IdleTime()
    results.measure_teacher(site, idle)
    future, _ = results._TEACHER_SUMMARIES[site.teacher][site.train.sample_shape]
    metrics = results.prepare_outputs(site)
    assert not future.done()   # no window opened: the measurement has not run
    assert "latency_ms_batch1" not in metrics["teacher"] and metrics["compression"] is None
    metrics = results.finish_outputs(site, metrics)
    assert metrics["teacher"]["latency_ms_batch1"] > 0 and metrics["compression"]["parameters_ratio"] > 10
    assert list(metrics["teacher"])[-1] == "source"   # metrics.json keeps its order
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["teacher"] == metrics["teacher"]
