"""One site of the federation: everything it computes, nothing it communicates.

The FeatureCloud states call these methods in order and move their results
between sites:

    site = Site.load(input_dir, output_dir, name)      # every site: config, models, data, dry run
    plan = site.make_plan()                            # coordinator: run plan + initial student
    site.adopt_plan(plan)                              # every site: same config? same student?
    site.prepare_teacher()                             # every site: teacher weights, accuracy, logits cache
    update = site.train_round(r)                       # every site, each round
    global_weights = site.aggregate(updates)           # coordinator, each round
    site.apply_global(global_weights, r)               # every site: load, evaluate on own test set
    site.write_outputs(federation)                     # every site, at the end
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import torch

from app import report
from app.aggregation import Update, fedavg, to_arrays, to_state_dict
from app.config import KDConfig, differences, effective_document, load_config, read_document
from app.data import Data, check_compatible, load_dataset
from app.errors import ConfigError, FederationError
from app.models import (build_model, check_outputs, dry_run, load_weights, state_signature,
                        summarize)
from app.training import Evaluation, TrainSettings, compute_logits, evaluate, resolve_device, train_local

CONFIG_FILE = "config.yml"
DRY_RUN_BATCH = 4

# Keys naming a site's own files (and its hardware) may differ between sites;
# every other key shapes the joint training and must be the same everywhere.
SITE_LOCAL_KEYS = ("train_dataset", "test_dataset", "teacher_model", "teacher_args",
                   "teacher_weights", "student_model", "device")


def resolve_input(input_dir: Path, name: str, key: str) -> Path:
    """``name`` from config.yml as a path inside the site's input folder."""
    root = input_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"{key}: {name!r} — must name a file inside the input folder "
                          f"({input_dir}); use a plain file name such as 'train.npz'.")
    return path


class Site:
    """The state of one site: its config, models, data and the rounds so far."""

    def __init__(self, name: str, input_dir: Path, output_dir: Path, config: KDConfig,
                 teacher: torch.nn.Module, student: torch.nn.Module, train: Data, test: Data,
                 num_classes: int, device: torch.device, log: Callable[[str], None]) -> None:
        self.name = name
        self.input_dir = input_dir
        self.output_dir = output_dir
        self.config = config
        self.teacher = teacher
        self.student = student
        self.train = train
        self.test = test
        self.num_classes = num_classes
        self.device = device
        self._log = log
        self.log_lines: list[str] = []
        self.teacher_logits: torch.Tensor | None = None
        self.teacher_evaluation: Evaluation | None = None
        self.student_evaluation: Evaluation | None = None
        self.rounds: list[dict] = []
        self.last_stats: dict = {}
        self.started = time.time()

    # ------------------------------------------------------------------ set-up
    @classmethod
    def load(cls, input_dir: Path, output_dir: Path, name: str,
             log: Callable[[str], None] = print) -> "Site":
        """Read config, data and model files and dry-run one batch through both models."""
        config = load_config(input_dir / CONFIG_FILE)
        device = resolve_device(config.device)

        def path_of(key: str) -> Path:
            return resolve_input(input_dir, getattr(config, key), key)

        train = load_dataset(path_of("train_dataset"), "train_dataset")
        test = load_dataset(path_of("test_dataset"), "test_dataset")
        check_compatible(train, test)
        teacher = build_model(path_of("teacher_model"), config.teacher_args, "teacher_model")
        torch.manual_seed(config.seed)   # the coordinator's initial student is everyone's
        student = build_model(path_of("student_model"), config.student_args, "student_model")
        if config.teacher_weights:
            load_weights(teacher, path_of("teacher_weights"), "teacher_weights")
        else:
            raise ConfigError("teacher_weights: not set — the teacher needs trained weights. Put the "
                              "teacher's state_dict (.pt) in the generic folder and name it here.")
        _, sample, _ = next(iter(train.batches(DRY_RUN_BATCH)))
        teacher_out = dry_run(teacher, sample, "teacher_model")
        student_out = dry_run(student, sample, "student_model")
        labels_need = max(train.num_classes_seen, test.num_classes_seen)
        num_classes = check_outputs(teacher_out, student_out, labels_need,
                                    (config.teacher_model, config.student_model))
        site = cls(name, input_dir, output_dir, config, teacher.to(device), student.to(device),
                   train, test, num_classes, device, log)
        site.log(f"site {name}: {len(train)} training and {len(test)} test samples of shape "
                 f"{list(train.sample_shape)}, {num_classes} classes, device {device}")
        return site

    def log(self, message: str) -> None:
        self.log_lines.append(f"{time.strftime('%H:%M:%S')} {message}")
        self._log(message)

    def shared_config(self) -> dict:
        return {key: value for key, value in self.config.model_dump().items() if key not in SITE_LOCAL_KEYS}

    def make_plan(self) -> dict:
        """The coordinator's run plan: shared settings and the initial student every site starts from."""
        shared = self.shared_config()
        digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]
        return {"config": shared, "digest": digest, "num_classes": self.num_classes,
                "signature": state_signature(self.student),
                "student": to_arrays(self.student.state_dict())}

    def adopt_plan(self, plan: dict) -> None:
        """Check this site agrees with the coordinator's plan, then take its initial student."""
        theirs = self.config.model_copy(update=plan["config"])
        differing = differences(self.config, theirs, ignore=SITE_LOCAL_KEYS)
        if differing:
            raise FederationError(
                f"site {self.name}'s config.yml disagrees with the coordinator's on "
                f"{', '.join(d.split(':')[0] for d in differing)}: " + "; ".join(differing)
                + ". Use the same values at every site (ship config.yml in the generic folder).")
        mine = state_signature(self.student)
        if mine != plan["signature"]:
            raise FederationError(
                f"site {self.name}'s student ({self.config.student_model}) differs from the "
                f"coordinator's: {_first_difference(mine, plan['signature'])}. Every site must use "
                "the same student_model file and student_args.")
        if plan["num_classes"] != self.num_classes:
            raise FederationError(
                f"site {self.name}'s models output {self.num_classes} classes, the coordinator's "
                f"{plan['num_classes']}. Use the same model files at every site.")
        self.student.load_state_dict(to_state_dict(plan["student"]))

    # ----------------------------------------------------------------- teacher
    def prepare_teacher(self) -> Evaluation:
        """Evaluate the frozen teacher and cache its logits on the training set."""
        self.teacher.eval().requires_grad_(False)
        self.teacher_evaluation = evaluate(self.teacher, self.test, self.num_classes, self.device)
        started = time.perf_counter()
        self.teacher_logits = compute_logits(self.teacher, self.train, self.device)
        self.log(f"teacher: test accuracy {self.teacher_evaluation.accuracy:.4f}; logits of "
                 f"{len(self.train)} training samples cached in {time.perf_counter() - started:.1f}s")
        return self.teacher_evaluation

    # ------------------------------------------------------------------ rounds
    def train_round(self, round_index: int) -> dict:
        """Local distillation from the current global student; the update to send."""
        settings = TrainSettings.from_config(self.config)
        self.last_stats = train_local(self.student, self.train, settings, teacher_logits=self.teacher_logits,
                                      round_index=round_index, device=self.device)
        return {"weights": to_arrays(self.student.state_dict()), "samples": len(self.train),
                "stats": self.last_stats}

    @staticmethod
    def aggregate(updates: dict[str, dict]) -> dict:
        """FedAvg of the sites' updates (coordinator only); ``updates`` maps site → update."""
        averaged = fedavg([Update(site, update["weights"], update["samples"])
                           for site, update in updates.items()])
        return to_arrays(averaged)

    def apply_global(self, weights: dict, round_index: int) -> dict:
        """Load the global student, evaluate it on this site's test set, record the round."""
        self.student.load_state_dict(to_state_dict(weights))
        self.student_evaluation = evaluate(self.student, self.test, self.num_classes, self.device)
        record = {"round": round_index + 1,
                  "train_loss": self.last_stats.get("train_loss"),
                  "train_accuracy": self.last_stats.get("train_accuracy"),
                  "accuracy": self.student_evaluation.accuracy,
                  "loss": self.student_evaluation.loss,
                  "seconds": self.last_stats.get("seconds")}
        self.rounds.append(record)
        self.log(f"round {record['round']}/{self.config.max_iter}: train loss {record['train_loss']:.4f}, "
                 f"global student test accuracy {record['accuracy']:.4f}")
        return record

    # ----------------------------------------------------------------- outputs
    def summary(self) -> dict:
        """The few numbers the coordinator collects from every site."""
        return {"site": self.name, "test_samples": len(self.test), "train_samples": len(self.train),
                "teacher_accuracy": self.teacher_evaluation.accuracy if self.teacher_evaluation else None,
                "student_accuracy": self.student_evaluation.accuracy if self.student_evaluation else None}

    def write_outputs(self, federation: list[dict] | None = None) -> dict:
        """Write every output file of this site; returns the metrics written to metrics.json."""
        out = self.output_dir
        example = next(iter(self.test.batches(1)))[1].to(self.device)
        teacher_summary = summarize(self.teacher, self.train.sample_shape)
        student_summary = summarize(self.student, self.train.sample_shape)
        metrics = {
            "site": self.name,
            "teacher": {**self.teacher_evaluation.as_dict(), **teacher_summary.as_dict()},
            "student": {**self.student_evaluation.as_dict(), **student_summary.as_dict()},
            "compression": _compression(teacher_summary.as_dict(), student_summary.as_dict()),
            "rounds": self.rounds,
            "data": {"train_samples": len(self.train), "test_samples": len(self.test),
                     "num_classes": self.num_classes, "sample_shape": list(self.train.sample_shape)},
            "config": self.config.model_dump(),
            "seconds": time.time() - self.started,
        }
        if federation is not None:
            metrics["federation"] = _federation_summary(federation)
        report.save_state_dict(self.student.state_dict(), out / report.STUDENT_WEIGHTS)
        report.export_torchscript(self.student, example, out / report.STUDENT_TORCHSCRIPT)
        report.write_json(out / report.METRICS, metrics)
        report.write_rounds_csv(self.rounds, out / report.ROUNDS_CSV)
        teacher_accuracy = self.teacher_evaluation.accuracy
        report.plot_rounds(self.rounds, "accuracy", out / report.ACCURACY_PLOT,
                           title=f"Global student accuracy on {self.name}'s test set",
                           ylabel="test accuracy", references={"teacher": teacher_accuracy})
        report.plot_rounds(self.rounds, "loss", out / report.LOSS_PLOT, title="Loss per round",
                           ylabel="cross-entropy",
                           series={"student test loss": "loss", "local train loss (KD)": "train_loss"})
        report.write_config(effective_document(read_document(self.input_dir / CONFIG_FILE), self.config),
                            out / report.CONFIG)
        self.log(f"outputs written to {out}")
        report.write_text(out / report.LOG, "\n".join(self.log_lines) + "\n")
        return metrics


def _compression(teacher: dict, student: dict) -> dict:
    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None
    return {"parameters_ratio": ratio(teacher["parameters"], student["parameters"]),
            "size_ratio": ratio(teacher["size_bytes"], student["size_bytes"]),
            "speedup_batch1": ratio(teacher["latency_ms_batch1"], student["latency_ms_batch1"]),
            "speedup_large_batch": ratio(teacher["latency_ms_per_sample"], student["latency_ms_per_sample"])}


def _federation_summary(sites: list[dict]) -> dict:
    """Per-site results and accuracies weighted by test-set size."""
    total = sum(site["test_samples"] for site in sites)

    def weighted(key: str) -> float | None:
        if any(site[key] is None for site in sites):
            return None
        return sum(site[key] * site["test_samples"] for site in sites) / total
    return {"sites": sites, "test_samples": total,
            "teacher_accuracy": weighted("teacher_accuracy"),
            "student_accuracy": weighted("student_accuracy")}


def _first_difference(mine: list, theirs: list) -> str:
    theirs_by_name = {entry[0]: entry for entry in theirs}
    for name, shape, dtype in mine:
        other = theirs_by_name.get(name)
        if other is None:
            return f"'{name}' exists only here"
        if tuple(other[1]) != tuple(shape):
            return f"'{name}' has shape {list(shape)} here, {list(other[1])} at the coordinator"
    missing = [entry[0] for entry in theirs if entry[0] not in {n for n, _, _ in mine}]
    return f"'{missing[0]}' exists only at the coordinator" if missing else "tensor order or dtypes differ"
