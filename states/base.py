"""What every state of this app shares: where the site's files are and its live page's
board (both per app instance: several sites may share one process), the site object,
progress reporting (to the controller and to the site's live page), the
update/aggregate/broadcast exchange of a round, and turning user mistakes into one
readable log line."""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import FeatureCloud.app.engine.app as engine
from FeatureCloud.app.engine.app import AppState, DPNoisetype, State

from app.early_start import EarlyStart
from app.errors import ERROR_MARKER, KDError, first_line
from app.files import write_error
from app.folds import Folds
from app.results import federation_summary
from web.status import StatusBoard

MAX_MESSAGE = 40   # the engine rejects longer status messages
SETUP_SHARE, RESULTS_SHARE = 0.1, 0.05   # of the progress bar, before the first round and after the last


@dataclass(frozen=True)
class Folders:
    """One app instance's input and output folders: the container's unless ``main.py serve`` (or
    whoever registers the states on an engine ``App``) names others."""

    input_dir: Path = Path("/mnt/input")
    output_dir: Path = Path("/mnt/output")


# The page's phase while each state runs (write_results ends with "done", published with the report).
PHASES = {"initial": "checking", "teacher": "teacher", "distill": "round", "write_results": "writing"}


class KDState(AppState):
    """Base state: ``step()`` does the work. A user mistake (KDError) is printed as one
    ``KD-ERROR <json message>`` line, because the engine reports only the exception's class
    name to the controller; every failure also leaves ``unfinished/error.txt`` in the output.
    Every state of an app instance holds that instance's ``folders``, ``board`` (what its
    /web page shows) and ``early`` (its input, read before the controller named the site if started)."""

    def __init__(self, folders: Folders, board: StatusBoard, early: EarlyStart) -> None:
        super().__init__()
        self.folders = folders
        self.board = board
        self.early = early

    def step(self) -> str:
        raise NotImplementedError

    def run(self) -> str:
        try:
            self.board.publish(state=self.name)
            target = self.step()
            # The engine enters ``target`` as soon as this returns (our transitions are named after their
            # targets): the page's state follows at once, so the test-bed can tell the engine's placeholder
            # message (the new state's name) from the app's own.
            self.board.publish(state=target)
            return target
        except KDError as error:
            message = f"site {self.id}: {error}"
            print(f"{ERROR_MARKER} {json.dumps(message)}", flush=True)
            write_error(self.folders.output_dir, message)
            self.board.fail(message)
            raise
        except Exception as error:
            write_error(self.folders.output_dir, f"site {self.id}: unexpected failure\n{traceback.format_exc()}")
            self.board.fail(f"site {self.id}: unexpected failure: {first_line(error)} (see the site's log)")
            raise

    @property
    def site(self) -> Folds:
        """This site: its folds (one, the site itself, unless cross-validation folds are used)."""
        return self.load("site")

    def progress(self, message: str, **page: object) -> None:
        """Report ``message`` and the share of the run's rounds (teacher rounds + rounds) done."""
        self.report(message, SETUP_SHARE + (1 - SETUP_SHARE - RESULTS_SHARE) * self.site.share_done(),
                    measured=True, **page)

    def report(self, message: str, fraction: float, measured: bool = False, **page: object) -> None:
        """Tell the controller and the page; ``page`` holds further fields for the page only."""
        fraction = min(max(fraction, 0.0), 1.0)
        self.update(message=message[:MAX_MESSAGE], progress=fraction, state=State.RUNNING)
        self.board.progress(PHASES[self.name], message, fraction, measured=measured, **page)

    def publish_federation(self, summaries: list[dict]) -> None:
        """Coordinator: every site's accuracy per round as far as it is known here (its own up to this
        round, the others' up to the last one, from their plain updates), weighted over all sites only
        when every site's figures are in."""
        known = {summary["site"]: summary for summary in summaries}
        known[self.id] = self.site.summary()
        federation = federation_summary(list(known.values()))
        if len(known) < len(self.clients):
            federation["rounds"] = []
            federation["note"] = (f"{len(known)} of {len(self.clients)} sites so far: with secure aggregation or "
                                  "differential privacy the others' accuracy arrives at the end of the run.")
        self.board.publish(federation=federation)

    def exchange(self, payload: object, memo: str, combine: Callable[[object, int], object] | None = None,
                 noised: bool = True) -> Any:
        """Send this site's update the way the config asks (plain, or through the controller's secure
        sum; with its differential-privacy noise unless ``noised`` is False); the coordinator turns what
        it receives into the global result (``combine``, by default the global models) and broadcasts
        it; every site, the coordinator included, returns it. Memos: ``<memo>_update``, ``<memo>_global``."""
        site, update = self.site, f"{memo}_update"
        wire = site.wire
        use_dp = wire.dp and noised
        self.send_data_to_coordinator(payload, use_smpc=wire.smpc, use_dp=use_dp, memo=update)
        if self.is_coordinator:
            with site.idle.waiting():
                received = (self.aggregate_data(use_smpc=True, use_dp=use_dp, memo=update) if wire.smpc
                            else self.gather_data(use_dp=use_dp, memo=update))
            if combine is None:   # the models' exchange: plain updates carry each site's summary
                self.store("summaries", site.summaries(received))
            self.broadcast_data((combine or site.aggregate)(received, len(self.clients)), memo=f"{memo}_global")
        with site.idle.waiting():   # the site's measurements in the background may run meanwhile
            return self.await_data(memo=f"{memo}_global")

    def wait_until_sent(self) -> None:
        """Return once the controller has taken every message this site queued. Before the finished status,
        the engine's loop at `terminal` checks for that every TRANSITION_WAIT, which the app sets to 0: it
        would spin. Waiting here costs nothing: the run cannot end before the controller took them."""
        while self._app.data_outgoing:
            time.sleep(engine.DATA_POLL_INTERVAL)

    def configure_privacy(self) -> None:
        """Hand the config's SMPC and DP settings to the engine.

        featurecloud 0.1.0's configure_dp rejects every Laplace configuration (it sets delta
        to 0, then refuses delta <= 0), so Laplace is written into the engine's DP settings
        directly: exactly the fields configure_dp would have written, validated by our config.
        """
        config = self.site.config
        self.configure_smpc(exponent=self.site.wire.controller_exponent)
        if config.dp is None:
            return
        dp = config.dp
        if dp.noise == "gauss":
            self.configure_dp(epsilon=dp.epsilon, delta=dp.delta, clippingVal=dp.clipping,
                              noisetype=DPNoisetype.GAUSS)
        else:
            self._app.default_dp.update(serialization="json", noisetype=DPNoisetype.LAPLACE.value,
                                        epsilon=dp.epsilon, delta=0.0, sensitivity=None, clippingVal=dp.clipping)

    @staticmethod
    def site_log(message: str) -> None:
        """The site's own log lines, distinct from the engine's per-state lines."""
        print(f"[KD] {message}", flush=True)
