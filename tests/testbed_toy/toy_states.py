"""States of the toy app: every client sends a number each round, the coordinator sums, everyone gets the sum.

`config.yml` in the input dir (plain yaml) chooses what happens:

    exchange: plain | smpc | dp   how the numbers travel (default plain)
    rounds: 3                     rounds of send-to-coordinator, aggregate, broadcast
    fault: none | user_error | exception | crash | hang   what goes wrong (a site's own config.yml
    fault_round: 2                                         can differ from the generic one)
    round_delay: 0.0              seconds slept at the start of each round
    pid_dir: /some/folder         if set, each client writes <id>.pid and <id>-round<r>.pid there
    smpc_exponent: 3              fixed-point digits of configure_smpc
    dp: {epsilon: 1.0, delta: 1.0e-5, clipping: 1.0}   configure_dp with Gauss noise

Each client reads its number from `number.txt` and writes `input_files.txt` (its
input dir's files), `environment.json` (the variables the test-bed sets) and
`round<r>.json` (the sum it received in round r); `environment.json` also says whether the
client's garbage collector runs (the fork server imports with it off).
"""
from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path

import yaml
from FeatureCloud.app.engine.app import AppState, DPNoisetype, Role, app_state

FOLDERS = {"input": Path("/mnt/input"), "output": Path("/mnt/output")}
REPORTED_ENVIRONMENT = ("FC_TRANSITION_WAIT", "FC_TERMINAL_WAIT", "FC_DATA_POLL_INTERVAL", "KD_NUM_THREADS", "TOY_MARK")


def write_atomically(path: Path, text: str) -> None:
    """Tests poll these files, so they must never see one half written."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


@app_state("initial", Role.BOTH)
class Initial(AppState):
    def register(self):
        self.register_transition("round", Role.BOTH)

    def run(self):
        config = yaml.safe_load((FOLDERS["input"] / "config.yml").read_text())
        self.store("config", config)
        self.store("number", float((FOLDERS["input"] / "number.txt").read_text()))
        self.store("round", 0)
        files = sorted(str((Path(folder) / name).relative_to(FOLDERS["input"]))   # links followed, as opening does
                       for folder, _, names in os.walk(FOLDERS["input"], followlinks=True) for name in names)
        write_atomically(FOLDERS["output"] / "input_files.txt", "\n".join(files))
        write_atomically(FOLDERS["output"] / "environment.json",
                         json.dumps({**{name: os.environ.get(name) for name in REPORTED_ENVIRONMENT},
                                     "gc_enabled": gc.isenabled()}))
        if config.get("pid_dir"):
            write_atomically(Path(config["pid_dir"]) / f"{self.id}.pid", str(os.getpid()))
        exchange = config.get("exchange", "plain")
        if exchange == "smpc":
            self.configure_smpc(exponent=config.get("smpc_exponent", 3))
        if exchange == "dp":
            dp = config["dp"]
            self.configure_dp(epsilon=dp["epsilon"], delta=dp["delta"], clippingVal=dp["clipping"],
                              noisetype=DPNoisetype.GAUSS)
        return "round"


@app_state("round", Role.BOTH)
class Round(AppState):
    def register(self):
        self.register_transition("round", Role.BOTH)
        self.register_transition("done", Role.BOTH)

    def run(self):
        config = self.load("config")
        r = self.load("round") + 1
        self.store("round", r)
        rounds = config.get("rounds", 3)
        if config.get("pid_dir"):
            write_atomically(Path(config["pid_dir"]) / f"{self.id}-round{r}.pid", str(os.getpid()))
        time.sleep(config.get("round_delay", 0.0))
        if r == config.get("fault_round", 2):
            self.fail(config.get("fault", "none"), r)
        self.update(message=f"round {r}/{rounds}", progress=r / (rounds + 1))
        total = EXCHANGES[config.get("exchange", "plain")](self, self.load("number") * r, r)
        write_atomically(FOLDERS["output"] / f"round{r}.json", json.dumps(total))
        return "round" if r < rounds else "done"

    def fail(self, fault: str, r: int) -> None:
        if fault == "user_error":
            message = f"site {self.id}: number.txt cannot be used in round {r}. Fix number.txt."
            print(f"KD-ERROR {json.dumps(message)}", flush=True)
            raise ValueError("toy user error")
        if fault == "exception":
            raise LookupError(f"toy lookup failed in round {r}")
        if fault == "crash":
            os._exit(3)
        if fault == "hang":
            threading.Event().wait()


def exchange_plain(state: AppState, value: float, r: int) -> float:
    state.send_data_to_coordinator(value, memo=f"r{r}_up")
    if state.is_coordinator:
        state.broadcast_data(float(state.aggregate_data(memo=f"r{r}_up")), memo=f"r{r}_sum")
    return state.await_data(1, memo=f"r{r}_sum")


def exchange_smpc(state: AppState, value: float, r: int) -> list[float]:
    """Numbers with many decimals, so that the fixed-point sum differs from the float sum."""
    state.send_data_to_coordinator([value / 7, value], use_smpc=True, memo=f"r{r}_up")
    if state.is_coordinator:
        state.broadcast_data(state.aggregate_data(use_smpc=True, memo=f"r{r}_up"), memo=f"r{r}_sum")
    return state.await_data(1, memo=f"r{r}_sum")


def exchange_dp(state: AppState, value: float, r: int) -> dict[str, list[float]]:
    """Each client's vector (norm 5 * value) under its id, so the coordinator knows whose is whose."""
    state.send_data_to_coordinator({state.id: [3 * value, 4 * value]}, use_dp=True, memo=f"r{r}_up")
    if state.is_coordinator:
        merged = {site: vector for piece in state.gather_data(use_dp=True, memo=f"r{r}_up")
                  for site, vector in piece.items()}
        state.broadcast_data(merged, memo=f"r{r}_sum")
    return state.await_data(1, memo=f"r{r}_sum")


EXCHANGES = {"plain": exchange_plain, "smpc": exchange_smpc, "dp": exchange_dp}


@app_state("done", Role.BOTH)
class Done(AppState):
    """Participants report DONE; the coordinator ends the run only once every client has written its outputs."""

    def register(self):
        self.register_transition("terminal", Role.BOTH)

    def run(self):
        self.send_data_to_coordinator("DONE", memo="done")
        if self.is_coordinator:
            self.gather_data(memo="done")
        return "terminal"
