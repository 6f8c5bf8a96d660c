"""The app's state machine:

    initial ──> teacher ──(teacher round)──> teacher ... ──> distill ──(next round)──> distill ...
            ──> write_results ──> terminal

One transition per round (the app sets the engine's TRANSITION_WAIT to 0; the platform's is 1 s);
the initial state makes its several exchanges without one. Memos name the phase and round
(``survey``, ``plan``, ``norm_update``, ``norm_global``, ``t2_update``, ``r3_update``,
``r3_global``, ``done``): URL-safe and unique, as the engine requires.
``register_states`` puts the states on one engine ``App`` with that app's folders and page.
"""
from __future__ import annotations

from FeatureCloud.app.engine.app import App, Role, app_state

from app.early_start import EarlyStart
from app.files import REPORT
from states.base import RESULTS_SHARE, SETUP_SHARE, Folders, KDState
from web.status import StatusBoard


class InitialState(KDState):
    """Load config, models and data; agree on classes, channels, the run plan, the initial weights
    and, with normalize: federated, the normalization statistics."""

    def register(self) -> None:
        self.register_transition("teacher", Role.BOTH)

    def step(self) -> str:
        self.report("checking config, models, data", 0.0)
        site = self.early.take(self.id, log=self.site_log, status=lambda message: self.report(message, SETUP_SHARE / 2))
        self.store("site", site)
        self.board.publish(site=site.name, coordinator=self.is_coordinator, rounds_total=site.config.max_iter)
        self.configure_privacy()
        self.send_data_to_coordinator(site.survey(), memo="survey")
        if self.is_coordinator:
            self.broadcast_data(site.make_plan(self.gather_data(memo="survey")), memo="plan")
        site.adopt_plan(self.await_data(memo="plan"))
        if site.needs_channel_sums():   # secure-summed under use_smpc; never noised: they are no update
            site.adopt_normalization(self.exchange(site.channel_sums(), memo="norm",
                                                   combine=site.pool_channel_sums, noised=False))
        return "teacher"


class TeacherState(KDState):
    """Federated teacher rounds (if any), then local teacher epochs, evaluation and the logits cache."""

    def register(self) -> None:
        self.register_transition("teacher", Role.BOTH)
        self.register_transition("distill", Role.BOTH)

    def step(self) -> str:
        site = self.site
        number = site.next_teacher_round
        if number:
            self.progress(f"teacher round {number}/{site.config.teacher_rounds}")
            site.apply_teacher(self.exchange(site.teacher_round(), memo=f"t{number}"))
            return "teacher"
        self.progress("preparing teacher")
        self.board.publish(teacher=site.prepare_teacher().as_dict())
        return "distill"


class DistillState(KDState):
    """One communication round: local KD epochs, FedAvg at the coordinator, evaluation everywhere."""

    def register(self) -> None:
        self.register_transition("distill", Role.BOTH)
        self.register_transition("write_results", Role.BOTH)

    def step(self) -> str:
        site = self.site
        number = site.next_round
        self.progress(f"round {number}/{site.config.max_iter} distilling", round=number)
        site.apply_global(self.exchange(site.train_round(), memo=f"r{number}"))
        self.board.publish(rounds=site.rounds)
        if self.is_coordinator:
            self.publish_federation(self.load("summaries"))
        return "distill" if site.next_round else "write_results"


class WriteResultsState(KDState):
    """Write every site's outputs; the coordinator ends only after every site reported DONE."""

    def register(self) -> None:
        self.register_transition("terminal", Role.BOTH)

    def step(self) -> str:
        site = self.site
        self.report("writing results", 1 - RESULTS_SHARE)
        exported = site.export_students()   # first: the summary carries the int8 model's accuracy
        if self.is_coordinator:   # its own outputs first, while the other sites write theirs
            prepared = site.prepare_outputs(exported)
            self.send_data_to_coordinator(site.done_summary(exported), memo="done")
            with site.idle.waiting():   # its teacher's measurement, if unfinished, may go on meanwhile
                federation = self.gather_data(memo="done")
            metrics = site.write_outputs(federation=federation, prepared=prepared)
        else:
            metrics = site.write_outputs(exported=exported)
            self.send_data_to_coordinator(site.done_summary(exported), memo="done")
        self.report("done", 1.0)
        self.board.finish(metrics, site.output_dir, REPORT)
        self.wait_until_sent()
        return "terminal"


STATES = {"initial": InitialState, "teacher": TeacherState, "distill": DistillState,
          "write_results": WriteResultsState}


def register_states(app: App, folders: Folders, board: StatusBoard, early: EarlyStart | None = None) -> App:
    """Put the app's states on ``app`` (the engine's own ``app`` in a container; any ``App`` instance when
    several sites share one process), each knowing ``folders`` and ``board``; the initial state takes the
    site from ``early`` (``main.py serve`` starts it before the controller's POST /setup; one never started
    reads the input when the site is taken). Call ``app.register()`` afterwards."""
    early = early or EarlyStart(folders.input_dir, folders.output_dir)
    for name, state in STATES.items():
        app_state(name, Role.BOTH, app, folders=folders, board=board, early=early)(state)
    return app
