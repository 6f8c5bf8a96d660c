"""main.py's start-up in a container: the modules a run imports late are imported while the site waits
for the controller, and the engine's first state starts only once they are (never beside them)."""
from __future__ import annotations

import gc
import sys
import threading
import time

import FeatureCloud.app.engine.app as engine_module
import pytest
from FeatureCloud.app.engine.app import App, AppState, Role, app_state

import main

SLOW_IMPORT = 0.8   # seconds the probe module sleeps while it is imported (main says so above 0.5 s)


@pytest.fixture(autouse=True)
def short_engine_waits(monkeypatch):
    for name, seconds in main.APP_ENGINE_WAITS.items():
        monkeypatch.setattr(engine_module, name, seconds)


@pytest.fixture(autouse=True)
def collector_back_on():
    yield
    gc.enable()   # serve() turns it off for its imports; a failed test must not leave it off


def engine_with_first_state(run) -> App:
    """A real engine whose first state calls ``run()`` and ends the run."""
    engine = App()

    @app_state("initial", Role.BOTH, engine)
    class Initial(AppState):
        def register(self):
            self.register_transition("terminal", Role.BOTH)

        def run(self):
            run()
            return "terminal"

    engine.register()
    return engine


def test_the_first_state_starts_only_once_the_preload_is_imported(tmp_path, monkeypatch, capfd):
    (tmp_path / "kd_preload_probe.py").write_text(f"import time\ntime.sleep({SLOW_IMPORT})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(main, "PRELOAD", ("kd_preload_probe",))
    monkeypatch.delitem(sys.modules, "kd_preload_probe", raising=False)
    seen: dict[str, object] = {}
    entered = threading.Event()

    def first_state():
        seen["probe imported"] = "kd_preload_probe" in sys.modules
        seen["collecting"] = gc.isenabled()
        seen["thread"] = threading.current_thread()
        entered.set()

    engine = engine_with_first_state(first_state)
    gc.disable()   # as serve() does before its imports
    started = time.monotonic()
    main._preload_before_first_state(engine)
    # the engine's POST /setup handler, arriving while the import is under way
    engine.handle_setup("c1", True, ["c1"], "c1")
    assert time.monotonic() - started < SLOW_IMPORT / 2, "POST /setup waited for the import: it must not"
    assert entered.wait(SLOW_IMPORT * 20), "the first state never ran"
    assert time.monotonic() - started >= SLOW_IMPORT
    assert seen["probe imported"] is True and seen["collecting"] is True
    assert seen["thread"] is engine.thread   # the engine's own state-machine thread ran it
    engine.thread.join(10)
    assert "the first state waited" in capfd.readouterr().out


def test_a_failed_preload_import_still_starts_the_first_state(tmp_path, monkeypatch):
    (tmp_path / "kd_broken_probe.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(main, "PRELOAD", ("kd_broken_probe",))
    entered = threading.Event()
    engine = engine_with_first_state(entered.set)
    main._preload_before_first_state(engine)
    engine.handle_setup("c1", True, ["c1"], "c1")
    assert entered.wait(10), "a module that fails to import must be left to the state that needs it"
    engine.thread.join(10)
