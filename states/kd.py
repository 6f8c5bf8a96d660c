"""The app's state machine:

    initial ──> teacher ──> distill ──(next round)──> distill ... ──> write_results ──> terminal

Memos name the phase and round (``plan``, ``r3_update``, ``r3_global``, ``done``):
URL-safe and unique, as the engine requires.
"""
from __future__ import annotations

from FeatureCloud.app.engine.app import Role, app_state

from app.site import Site
from states.base import PATHS, KDState

# Share of the progress bar before the first round and after the last one.
SETUP_SHARE, RESULTS_SHARE = 0.1, 0.05


@app_state("initial", Role.BOTH)
class InitialState(KDState):
    """Load config, models and data; agree on the run plan and the initial student."""

    def register(self) -> None:
        self.register_transition("teacher", Role.BOTH)

    def step(self) -> str:
        self.progress("checking config, models, data", 0.0)
        site = Site.load(PATHS.input_dir, PATHS.output_dir, self.id, log=self.site_log)
        self.store("site", site)
        if self.is_coordinator:
            self.broadcast_data(site.make_plan(), memo="plan")
        site.adopt_plan(self.await_data(memo="plan"))
        return "teacher"


@app_state("teacher", Role.BOTH)
class TeacherState(KDState):
    """Evaluate the teacher on the local test set and cache its logits."""

    def register(self) -> None:
        self.register_transition("distill", Role.BOTH)

    def step(self) -> str:
        self.progress("evaluating teacher", SETUP_SHARE / 2)
        self.site.prepare_teacher()
        self.store("round", 0)
        return "distill"


@app_state("distill", Role.BOTH)
class DistillState(KDState):
    """One communication round: local KD epochs, FedAvg at the coordinator, evaluation everywhere."""

    def register(self) -> None:
        self.register_transition("distill", Role.BOTH)
        self.register_transition("write_results", Role.BOTH)

    def step(self) -> str:
        site, index = self.site, self.load("round")
        rounds = site.config.max_iter
        label = f"round {index + 1}/{rounds}"
        share = SETUP_SHARE + (1 - SETUP_SHARE - RESULTS_SHARE) * index / rounds
        self.progress(f"{label} distilling", share)
        update = site.train_round(index)
        self.send_data_to_coordinator({**update, "site": self.id}, memo=f"r{index + 1}_update")
        if self.is_coordinator:
            self.progress(f"{label} aggregating", share)
            updates = self.gather_data(memo=f"r{index + 1}_update")
            self.broadcast_data(site.aggregate({u["site"]: u for u in updates}), memo=f"r{index + 1}_global")
        else:
            self.progress(f"{label} waiting for global model", share)
        site.apply_global(self.await_data(memo=f"r{index + 1}_global"), index)
        self.store("round", index + 1)
        return "distill" if index + 1 < rounds else "write_results"


@app_state("write_results", Role.BOTH)
class WriteResultsState(KDState):
    """Write every site's outputs; the coordinator ends only after every site reported DONE."""

    def register(self) -> None:
        self.register_transition("terminal", Role.BOTH)

    def step(self) -> str:
        site = self.site
        self.progress("writing results", 1 - RESULTS_SHARE)
        if self.is_coordinator:
            self.send_data_to_coordinator(site.summary(), memo="done")
            site.write_outputs(federation=self.gather_data(memo="done"))
        else:
            site.write_outputs()
            self.send_data_to_coordinator(site.summary(), memo="done")
        self.progress("done", 1.0)
        return "terminal"
