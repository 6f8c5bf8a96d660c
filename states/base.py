"""What every state of this app shares: where the site's files are, the site
object, progress reporting, the update/aggregate/broadcast exchange of a round,
and turning user mistakes into one readable log line."""
from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from pathlib import Path

from FeatureCloud.app.engine.app import AppState, DPNoisetype, State

from app.checkpoint import write_error
from app.errors import ERROR_MARKER, KDError
from app.site import Site

MAX_MESSAGE = 40   # the engine rejects longer status messages
SETUP_SHARE, RESULTS_SHARE = 0.1, 0.05   # of the progress bar, before the first round and after the last


@dataclass
class Paths:
    """The site's input and output folders; the container's unless ``main.py serve`` says otherwise."""

    input_dir: Path = Path("/mnt/input")
    output_dir: Path = Path("/mnt/output")


PATHS = Paths()


class KDState(AppState):
    """Base state: ``step()`` does the work. A user mistake (KDError) is printed as one
    ``KD-ERROR <json message>`` line, because the engine reports only the exception's class
    name to the controller; every failure also leaves ``unfinished/error.txt`` in the output."""

    def step(self) -> str:
        raise NotImplementedError

    def run(self) -> str:
        try:
            return self.step()
        except KDError as error:
            message = f"site {self.id}: {error}"
            print(f"{ERROR_MARKER} {json.dumps(message)}", flush=True)
            write_error(PATHS.output_dir, message)
            raise
        except Exception:
            write_error(PATHS.output_dir, f"site {self.id}: unexpected failure\n{traceback.format_exc()}")
            raise

    @property
    def site(self) -> Site:
        return self.load("site")

    def progress(self, message: str, done_steps: float) -> None:
        """Report ``message`` and the share of the run's steps (teacher rounds + rounds) done."""
        site = self.site
        steps = site.config.teacher_rounds + site.config.max_iter - site.first_round
        self.report(message, SETUP_SHARE + (1 - SETUP_SHARE - RESULTS_SHARE) * done_steps / max(steps, 1))

    def report(self, message: str, fraction: float) -> None:
        self.update(message=message[:MAX_MESSAGE], progress=min(max(fraction, 0.0), 1.0), state=State.RUNNING)

    def exchange(self, payload: object, memo: str) -> dict:
        """Send this site's update the way the config asks (plain, through the controller's secure
        sum, with its differential-privacy noise); the coordinator turns what it receives into the
        global models and broadcasts them; every site, the coordinator included, returns them."""
        site, update = self.site, f"{memo}_update"
        wire = site.wire
        self.send_data_to_coordinator(payload, use_smpc=wire.smpc, use_dp=wire.dp, memo=update)
        if self.is_coordinator:
            received = (self.aggregate_data(use_smpc=True, use_dp=wire.dp, memo=update) if wire.smpc
                        else self.gather_data(use_dp=wire.dp, memo=update))
            self.broadcast_data(site.aggregate(received, sites=len(self.clients)), memo=f"{memo}_global")
        return self.await_data(memo=f"{memo}_global")

    def configure_privacy(self) -> None:
        """Hand the config's SMPC and DP settings to the engine.

        featurecloud 0.1.0's configure_dp rejects every Laplace configuration (it sets delta
        to 0, then refuses delta <= 0), so Laplace is written into the engine's DP settings
        directly: exactly the fields configure_dp would have written, validated by our config.
        """
        config = self.site.config
        self.configure_smpc(exponent=config.smpc_exponent)
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
