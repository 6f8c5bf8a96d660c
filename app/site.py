"""One site of the federation: everything it computes, nothing it communicates.

The FeatureCloud states call these methods in order and move their results
between sites:

    site = Site.load(input_dir, output_dir, name)      # every site: config, models, data listed
    survey = site.survey()                             # every site: class folders, colour (to the coordinator)
    plan = site.make_plan(surveys)                     # coordinator: classes, channels, initial weights
    site.adopt_plan(plan)                              # every site: same config? same student? decode, dry run
    sums = site.channel_sums()                         # every site, with normalize: federated ...
    site.adopt_normalization(site.pool_channel_sums(received))  # ... the coordinator pools them
    while site.next_teacher_round:                     # (only with teacher_rounds > 0)
        payload = site.teacher_round()                 # every site
        site.apply_teacher(site.aggregate(received, sites))  # coordinator aggregates, every site applies
    site.prepare_teacher()                             # every site: local epochs, accuracy, logits cache
    while site.next_round:
        payload = site.train_round()                   # every site
        global_models = site.aggregate(received, sites)  # coordinator
        site.apply_global(global_models)               # every site: load, evaluate, checkpoint
    exported = results.export_student(site)            # every site, at the end: model files (int8 too)
    results.write_outputs(site, federation, exported)  # every site: metrics, report, plots

``app.federation.federate`` runs exactly this for sites in one process; the FeatureCloud
states run it with the engine carrying the payloads. Rounds are counted from 1 as people
count them (logs, metrics.json, checkpoints, memos); the site keeps the count.

Models travel as ``{model name: {tensor name: numpy array}}`` ("student", and
"baseline" when the no-teacher baseline is trained alongside it; "teacher" in
teacher rounds), in the form ``site.wire`` says (plain, secure sum, noised change).
With FedBN the BatchNorm entries never leave the site.
"""
from __future__ import annotations

import copy
import os
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from app import checkpoint, normalization
from app.aggregation import batchnorm_keys, to_arrays, to_state_dict
from app.agreement import agree_channels, agree_classes
from app.config import KDConfig, differences, load_config
from app.data import (Data, Decoding, ImageFolderSource, LabelsFile, Source, TensorData, check_compatible,
                      decode_folders, open_dataset, unknown_folder_error)
from app.errors import ConfigError, DataError, FederationError
from app.images import has_colour
from app.memory import release_free_memory
from app.timings import Timings
from app.model_checks import agreed_classes
from app.model_files import build_model
from app.normalization import Normalization
from app.process_wide import seeded
from app.server_optimizer import ServerOptimizer
from app.weights import load_weights, state_signature
from app.training import Evaluation, Teaching, evaluate, prepare_teaching, resolve_device, train_local
from app.transport import Models, Wire

CONFIG_FILE = "config.yml"

# Keys naming a site's own files (and its hardware) may differ between sites;
# every other key shapes the joint training and must be the same everywhere.
# init_student is read by the coordinator, whose weights reach everyone in the plan (with FedBN each
# site also reads its own copy for the BatchNorm layers it keeps).
SITE_LOCAL_KEYS = ("train_dataset", "test_dataset", "train_labels", "test_labels", "image_shape",
                   "teacher_model", "teacher_args",
                   "teacher_weights", "student_model", "init_student", "device", "image_memory_mb")
# Float images above this while normalize is set were most likely never scaled from 0..255 to [0, 1].
UNSCALED_FLOATS = 2.0
SECURE_SUM_SITES = 3   # with fewer, the coordinator can subtract its own update from the sum


def resolve_input(input_dir: Path, name: str, key: str) -> Path:
    """``name`` from config.yml as a path inside the site's input folder.

    The name alone decides (no absolute path, no '../' leaving the folder); links inside the
    folder are followed wherever they point, since a site's files may be linked in rather than
    copied (the local test-bed does so, and a user may too)."""
    root = Path(os.path.abspath(input_dir))
    path = Path(os.path.normpath(root / name))
    if not path.is_relative_to(root):
        raise ConfigError(f"{key}: {name!r} — must name a file inside the input folder "
                          f"({input_dir}); use a plain file name such as 'train.npz'.")
    return path


class Site:
    """The state of one site: its config, models, data and the rounds so far."""

    def __init__(self, name: str, input_dir: Path, output_dir: Path, config: KDConfig,
                 teacher: torch.nn.Module, student: torch.nn.Module, sources: dict[str, Source],
                 device: torch.device, log: Callable[[str], None],
                 status: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.input_dir = input_dir
        self.output_dir = output_dir
        self.config = config
        self.teacher = teacher
        self.models = {"student": student}
        if config.baseline:   # same architecture and initial weights, trained without the teacher
            self.models["baseline"] = copy.deepcopy(student)
        self.wire = Wire.from_config(config)
        # FedBN: BatchNorm layers stay local, the rest is averaged
        self.local_keys = {"teacher": batchnorm_keys(teacher) if config.fedbn else set(),
                           "student": batchnorm_keys(student) if config.fedbn else set()}
        self.local_keys["baseline"] = self.local_keys["student"]
        # The coordinator's optimizer over the students' rounds; teacher rounds stay plain FedAvg.
        self.server = ServerOptimizer(config, {name: {key for key, p in model.named_parameters() if p.requires_grad}
                                               - self.local_keys[name] for name, model in self.models.items()})
        self.previous: Models = {}   # the global models this round starts from (same at every site)
        self.teacher_rounds_done = 0
        self.rounds_done = 0       # distillation rounds behind the global student, resumed ones included
        self.resumed_rounds = 0    # of them, those done by the run this one resumes
        self.sources = sources
        # Set by _prepare_data (at load for arrays, by adopt_plan for image folders): the data, the
        # agreed class names (None: integer labels of arrays), channels (None: the arrays' own) and
        # the class count of the models.
        self.train: Data = None   # type: ignore[assignment]
        self.test: Data = None    # type: ignore[assignment]
        self.classes: list[str] | None = None
        self.channels: int | None = None
        self.num_classes = 0
        self.normalization: Normalization | None = None
        self.pooled_from: dict = {}      # normalize: federated: how many pixels and sites the statistics cover
        self.warnings: list[str] = []   # also shown in report.md
        self.device = device
        self._log = log
        self.status = status or (lambda message: None)
        self.log_lines: list[str] = []
        self.teaching: Teaching | None = None   # the students' views and teacher targets, from prepare_teacher
        self.teacher_evaluation: Evaluation | None = None
        # teach_early: what the teacher's outputs were computed from, and their Future
        self._early_teacher: tuple[tuple, Future] | None = None
        self.evaluations: dict[str, Evaluation] = {}
        self.rounds: list[dict] = []
        self.last_stats: dict[str, dict] = {}
        self.started = time.time()
        self.timings = Timings()

    @property
    def student(self) -> torch.nn.Module:
        return self.models["student"]

    @property
    def next_teacher_round(self) -> int | None:
        """The number of the federated teacher round to train next; None once all are done."""
        done = self.teacher_rounds_done
        return done + 1 if done < self.config.teacher_rounds else None

    @property
    def next_round(self) -> int | None:
        """The number of the distillation round to train next; None after the last."""
        return self.rounds_done + 1 if self.rounds_done < self.config.max_iter else None

    @property
    def first_round(self) -> int:
        """The number of the first distillation round this run trains (after the resumed ones)."""
        return self.resumed_rounds + 1

    def share_done(self) -> float:
        """How much of this run's rounds (federated teacher rounds, then distillation rounds) is done."""
        total = self.config.teacher_rounds + self.config.max_iter - self.resumed_rounds
        done = self.teacher_rounds_done + self.rounds_done - self.resumed_rounds
        return done / max(total, 1)

    # ------------------------------------------------------------------ set-up
    @classmethod
    def load(cls, input_dir: Path, output_dir: Path, name: str, log: Callable[[str], None] = print,
             data_dir: Path | None = None, teacher: torch.nn.Module | None = None,
             status: Callable[[str], None] | None = None) -> "Site":
        """Read config and model files, read array datasets and list image folders. A site reading
        arrays only also dry-runs one batch through both models; image folders wait for the plan.

        ``data_dir``: the folder of the datasets (a cross-validation fold's; the input folder by
        default). ``teacher``: a frozen teacher another fold of this site loaded already. ``status``
        receives short progress messages (decoding) for the status line."""
        began = time.time()
        config = load_config(input_dir / CONFIG_FILE)
        device = resolve_device(config.device)

        def path_of(key: str, folder: Path = input_dir) -> Path:
            return resolve_input(folder, getattr(config, key), key)

        def dataset(role: str) -> Source:
            labels = f"{role}_labels"
            return open_dataset(path_of(f"{role}_dataset", data_dir or input_dir), f"{role}_dataset",
                                LabelsFile(path_of(labels, data_dir or input_dir), labels)
                                if getattr(config, labels) else None, config.image_shape, root=input_dir)

        sources = {f"{role}_dataset": dataset(role) for role in ("train", "test")}
        for source in sources.values():
            if isinstance(source, ImageFolderSource) and config.classes is not None:
                unknown = sorted(set(source.classes) - set(config.classes))
                if unknown:
                    raise unknown_folder_error(source, unknown[0], config.classes)
        with seeded(config.seed):   # an untrained teacher and the student start alike everywhere
            if teacher is None:
                teacher = build_model(path_of("teacher_model"), config.teacher_args, "teacher_model")
                if config.teacher_weights:
                    load_weights(teacher, path_of("teacher_weights"), "teacher_weights")
            student = build_model(path_of("student_model"), config.student_args, "student_model")
        site = cls(name, input_dir, output_dir, config, teacher.to(device), student.to(device), sources, device,
                   log, status)
        site.timings = Timings(start=began)
        folders = [source for source in sources.values() if isinstance(source, ImageFolderSource)]
        for source in folders:
            site._report_folder(source)
        if not folders:   # arrays need nothing from the other sites: ready (and dry-run) at once
            site._prepare_data(config.classes, config.channels)
        return site

    def _report_folder(self, source: ImageFolderSource) -> None:
        folders = source.folders
        self.log(f"{source.name}: {len(source):,} image files in {len(source.classes)} class folders")
        if folders.empty:
            names = ", ".join(folders.empty)
            self.warn(f"{source.name}: class folder {names} holds no files and is skipped" if len(folders.empty) == 1
                      else f"{source.name}: class folders {names} hold no files and are skipped")
        if folders.loose_files:
            self.log(f"{source.name}: {len(folders.loose_files)} file(s) next to the class folders are ignored "
                     f"({', '.join(folders.loose_files[:3])}); only files inside class folders are images")

    def survey(self) -> dict:
        """What the coordinator needs from this site to fix classes and channels: class folder names,
        whether arrays are read too, whether any training image has colour. No pixel leaves the site."""
        folders = [source for source in self.sources.values() if isinstance(source, ImageFolderSource)]
        colour = None
        if folders and self.config.channels is None:   # the training folder decides, the test folder if none
            folders[0].colour = colour = has_colour(folders[0].folders.files, folders[0].name)
        return {"site": self.name,
                "classes": sorted({name for source in folders for name in source.classes}) if folders else None,
                "arrays": any(not isinstance(source, ImageFolderSource) for source in self.sources.values()),
                "colour": colour}

    def log(self, message: str) -> None:
        self.log_lines.append(f"{time.strftime('%H:%M:%S')} {message}")
        self._log(message)

    def warn(self, message: str) -> None:
        """A log line the report repeats: something the user should look at, not an error."""
        self.warnings.append(message)
        self.log(f"WARNING: {message}")

    def shared_config(self) -> dict:
        return {key: value for key, value in self.config.model_dump().items() if key not in SITE_LOCAL_KEYS}

    def make_plan(self, surveys: list[dict] | None = None) -> dict:
        """The coordinator's run plan from every site's survey (only its own if None): shared
        settings, the class list, the channels, and the weights every site starts from."""
        surveys = surveys if surveys is not None else [self.survey()]
        shared = self.shared_config()
        start = {"round": 0, "student": to_arrays(self.student.state_dict())}
        if self.config.init_student:
            path = resolve_input(self.input_dir, self.config.init_student, "init_student")
            start = self._initial_student(path)
            self._resume_server(start.pop(checkpoint.SERVER), start["round"], path)
        plan = {"coordinator": self.name, "config": shared, "sites": len(surveys),
                "classes": agree_classes(surveys, self.config.classes),
                "channels": agree_channels(surveys, self.config.channels),
                "signature": state_signature(self.student),
                "resumed_rounds": start["round"],
                "models": {name: start.get(name) or start["student"] for name in self.models}}
        if self.config.teacher_rounds:   # the federation trains one teacher, from the coordinator's weights
            plan["teacher"] = to_arrays(self.teacher.state_dict())
            plan["teacher_signature"] = state_signature(self.teacher)
        return plan

    def _initial_student(self, path: Path) -> dict:
        """Weights (and first round) from init_student: a checkpoint.pt or a plain student.pt."""
        saved = checkpoint.read(path)
        if saved is None:
            probe = copy.deepcopy(self.student)
            load_weights(probe, path, "init_student")
            return {"round": 0, "student": to_arrays(probe.state_dict()), checkpoint.SERVER: None}
        server = saved.pop(checkpoint.SERVER, None)
        if saved["round"] >= self.config.max_iter:
            raise ConfigError(f"init_student: '{path.name}' already holds round {saved['round']} and max_iter is "
                              f"{self.config.max_iter}. Raise max_iter to train further rounds.")
        for name in self.models:
            if saved.get(name) is not None:
                probe = copy.deepcopy(self.student)
                checkpoint.load_into(probe, saved[name], path, name)
        self.log(f"resuming from {path.name}: rounds 1..{saved['round']} are done")
        return {**{key: to_arrays(value) if isinstance(value, dict) else value for key, value in saved.items()},
                checkpoint.SERVER: server}

    def _resume_server(self, saved: dict | None, round_number: int, path: Path) -> None:
        """The coordinator's server optimizer continues from its state in the checkpoint of ``round_number``."""
        wanted = self.config.server_optimizer
        if round_number == 0 or not self.server.stateful:
            return
        written_with = saved["server_optimizer"] if saved else "fedavg"
        if written_with != wanted:
            self.log(f"server_optimizer: {path.name} was written by a run with {written_with}; {wanted} starts "
                     f"from a fresh state in round {round_number + 1}")
            return
        missing = sorted(set(self.models) - set(saved["models"]))
        if missing:
            raise ConfigError(
                f"init_student: '{path.name}' holds no {wanted} state for the {', '.join(missing)}: it was written "
                "by a participant (only the coordinator keeps the server optimizer's state) or by a run without "
                "that model. Resume from the coordinator's checkpoint.pt, or start a new run from student.pt.")
        self.server.load_state_dict(saved)

    def adopt_plan(self, plan: dict) -> None:
        """Check this site agrees with the coordinator's plan, decode its images with the agreed
        classes and channels, run one batch through both models, take the initial weights."""
        theirs = KDConfig.model_validate({**self.config.model_dump(), **plan["config"]},
                                         context={"require_teacher": False})
        differing = differences(self.config, theirs, ignore=SITE_LOCAL_KEYS)
        if differing:
            raise FederationError(
                f"site {self.name}'s config.yml disagrees with the coordinator's on "
                f"{', '.join(d.split(':')[0] for d in differing)}: " + "; ".join(differing)
                + ". Use the same values at every site (ship config.yml in the generic folder).")
        if self.train is None:   # image folders: decoded now that classes and channels are agreed
            self._prepare_data(plan["classes"], plan["channels"])
        self._check_same_architecture("student", self.student, plan["signature"])
        if "teacher" in plan:
            self._check_same_architecture("teacher", self.teacher, plan["teacher_signature"])
        if self.config.use_smpc and plan["sites"] < SECURE_SUM_SITES:
            self.warn(f"use_smpc with {plan['sites']} site{'s' if plan['sites'] > 1 else ''}: the coordinator "
                      "receives the sum of every site's update and knows its own, so it can subtract its own from "
                      "the sum and learn the other site's update exactly (students, normalization statistics); "
                      f"secure aggregation hides single updates only with {SECURE_SUM_SITES} or more sites")
        for name, model in self.models.items():
            _load_entries(model, plan["models"][name])
        if "teacher" in plan:
            mine = to_arrays(self.teacher.state_dict())
            if self.config.teacher_weights and any(not np.array_equal(mine[key], value)
                                                   for key, value in plan["teacher"].items()):
                self.log(f"teacher_rounds: the federated teacher starts from the coordinator's weights, "
                         f"not from this site's {self.config.teacher_weights}")
            _load_entries(self.teacher, plan["teacher"])
        self.rounds_done = self.resumed_rounds = plan["resumed_rounds"]
        if self.config.fedbn and self.config.init_student and plan["coordinator"] != self.name:
            self._resume_own_layers()
        self.timings.phase_done("initial")

    def _prepare_data(self, classes: list[str] | None, channels: int | None) -> None:
        """Decode the image folders (agreed classes and channels), check the arrays against the
        preprocessing keys, dry-run both models, set a fixed normalization."""
        config = self.config
        self.classes, self.channels = classes, channels
        if classes is not None:
            self.log(f"classes agreed by the federation: {', '.join(classes)}")
        if channels is not None:
            self.log(f"image folders decoded to {channels} channel{'s' if channels > 1 else ''}"
                     + (f", resized to {config.image_hw[0]}×{config.image_hw[1]}" if config.image_hw else ""))
        data = decode_folders(self.sources, Decoding(
            classes or [], channels or 3, size=config.image_hw, memory_bytes=config.image_memory_mb * 2 ** 20,
            status=self.status, log=self.log))
        for key, source in self.sources.items():
            if not isinstance(source, ImageFolderSource):
                self._check_arrays(key, data[key])
        self.train, self.test = data["train_dataset"], data["test_dataset"]
        check_compatible(self.train, self.test,
                         image_files=any(isinstance(source, ImageFolderSource) for source in self.sources.values()))
        self.num_classes = agreed_classes(self.teacher, self.student, self.train, self.test,
                                          (config.teacher_model, config.student_model), self.device,
                                          classes=classes)
        self.log(f"{len(self.train)} training and {len(self.test)} test samples of shape "
                 f"{list(self.train.sample_shape)}, {self.num_classes} classes, device {self.device}")
        fixed = normalization.fixed(config.normalize, self.train.sample_shape[0])
        if fixed is not None:
            self.adopt_normalization(fixed.as_dict())

    def _check_arrays(self, key: str, data: Data) -> None:
        """Arrays are used as they are: image_size and channels, if set, must describe them already;
        labels must index the class list; floats far above 1 are reported when normalizing."""
        config, (channels, *size) = self.config, data.sample_shape
        if config.image_hw and tuple(size) != config.image_hw or config.channels and channels != config.channels:
            raise DataError(
                f"{data.name}: the arrays hold images of {channels}×{size[0]}×{size[1]} (channels×height×width), "
                f"but config.yml asks for {config.channels or channels}×"
                f"{'×'.join(map(str, config.image_hw or size))}. image_size and channels resize and convert "
                "image files only: save the arrays at that size, or unset image_size/channels.")
        if self.classes is not None and data.num_classes_seen > len(self.classes):
            raise DataError(f"{data.name}: labels go up to {data.num_classes_seen - 1}, but classes names only "
                            f"{len(self.classes)} classes. Add the missing names to classes in config.yml.")
        if config.normalize != "none" and isinstance(data, TensorData) and data.images.is_floating_point():
            largest = float(data.images.max())
            if largest > UNSCALED_FLOATS:
                self.warn(f"{data.name}: float images reach {largest:g} while normalize is set: they look like "
                          "0..255 values that were never scaled to [0, 1]. They are used as they are, so the models "
                          "(a pretrained teacher above all) see values far from what the normalization expects; "
                          "divide them by 255 or save them as uint8")

    def needs_channel_sums(self) -> bool:
        """Whether the federation computes the normalization from every site's images."""
        return self.config.normalize == "federated"

    def channel_sums(self) -> list:
        """This site's pixel count and per-channel sums and sums of squares of its training images, as
        its wire sends them (fixed-point integers into a secure sum without DP)."""
        return self.wire.encode_numbers(normalization.channel_sums(self.train))

    def pool_channel_sums(self, received: object, sites: int) -> dict:
        """The coordinator's federated normalization from every site's channel sums (or their secure sum)."""
        totals = normalization.total(self.wire.decode_numbers(received) if self.wire.smpc else received,
                                     summed=self.wire.smpc)
        return {**normalization.pooled(totals).as_dict(), "pixels": int(round(totals[0])), "sites": sites}

    def adopt_normalization(self, statistics: dict) -> None:
        """Normalize every batch of this site's data from now on: training, evaluation, the teacher's
        logits; exports carry it in their graph."""
        self.normalization = Normalization(tuple(statistics["mean"]), tuple(statistics["std"]))
        self.pooled_from = {key: statistics[key] for key in ("pixels", "sites") if key in statistics}
        for data in (self.train, self.test):
            data.normalization = self.normalization
        source = {"federated": "over every site's training images"}.get(self.config.normalize, "")
        self.log(f"normalize {self.config.normalize if isinstance(self.config.normalize, str) else 'mean/std'}: "
                 f"mean {_rounded(self.normalization.mean)}, std {_rounded(self.normalization.std)} {source}".rstrip())

    def _check_same_architecture(self, role: str, model: torch.nn.Module, theirs: list) -> None:
        mine = state_signature(model)
        if _as_lists(mine) != _as_lists(theirs):
            file = getattr(self.config, f"{role}_model")
            raise FederationError(
                f"site {self.name}'s {role} ({file}) differs from the coordinator's: "
                f"{_first_difference(mine, theirs)}. Every site must use the same {role}_model file "
                f"and {role}_args.")

    def _resume_own_layers(self) -> None:
        """FedBN: the BatchNorm layers this site kept to itself resume from its own copy of
        init_student (its own checkpoint of the same round), not from the coordinator's."""
        path = resolve_input(self.input_dir, self.config.init_student, "init_student")
        if not path.is_file():
            self.log(f"fedbn: no init_student '{self.config.init_student}' in this site's input, so its "
                     "BatchNorm layers start from the coordinator's; put this site's own checkpoint.pt there "
                     "to resume them")
            return
        own = self._initial_student(path)
        if own["round"] != self.resumed_rounds:
            raise FederationError(
                f"init_student '{path.name}' of site {self.name} holds round {own['round']}, the coordinator's "
                f"round {self.resumed_rounds}. With fedbn every site resumes from its own checkpoint.pt of the "
                "same interrupted run.")
        for name, model in self.models.items():
            _load_entries(model, own.get(name) or own["student"], only=self.local_keys[name])

    # ----------------------------------------------------------------- teacher
    def teacher_round(self) -> object:
        """One local pass of federated teacher training on hard labels; the payload to send."""
        teacher = {"teacher": self.teacher}
        self._start_round(teacher)
        train_local(self.teacher, self.train, self.config, epochs=self.config.local_epochs,
                    proximal_mu=self.config.proximal_mu, round_index=self.teacher_rounds_done, device=self.device,
                    role="teacher")
        return self.wire.encode(self.name, self._shared(teacher), len(self.train), self.previous)

    def apply_teacher(self, global_models: Models) -> None:
        """Load the federated teacher and log its accuracy on this site's test set."""
        _load_all({"teacher": self.teacher}, global_models)
        self.teacher_rounds_done += 1
        accuracy = evaluate(self.teacher, self.test, self.num_classes, self.device).accuracy
        self.log(f"teacher round {self.teacher_rounds_done}/{self.config.teacher_rounds}: "
                 f"global teacher test accuracy {accuracy:.4f}")

    def prepare_teacher(self) -> Evaluation:
        """Train the teacher locally if asked, evaluate it, freeze it and cache its training-set logits
        (of every cached view with augment)."""
        if self.config.teacher_epochs:
            stats = train_local(self.teacher, self.train, self.config, epochs=self.config.teacher_epochs,
                                round_index=self.config.teacher_rounds, device=self.device, role="teacher")
            self.log(f"teacher trained locally for {self.config.teacher_epochs} epochs "
                     f"(train loss {stats['train_loss']:.4f}, {stats['seconds']:.1f}s)")
        self.teacher_evaluation, self.teaching = self._early_teacher_outputs() or self.teacher_outputs()
        self.log(f"teacher: test accuracy {self.teacher_evaluation.accuracy:.4f}; {self.teaching.description}")
        release_free_memory()
        self.timings.phase_done("teacher")
        return self.teacher_evaluation

    def teach_early(self) -> Future | None:
        """A Future for ``teacher_outputs``, for the caller to compute ahead of ``prepare_teacher`` (while the
        site waits for the controller or the plan), or None if something still to come may change them:
        teacher rounds or epochs train the teacher, image folders are decoded with the federation's classes,
        normalize: federated waits for every site's statistics. ``prepare_teacher`` takes the outputs only
        if the teacher and the data are still the ones they were computed from."""
        config = self.config
        if config.teacher_epochs or config.teacher_rounds or self.train is None or self.needs_channel_sums():
            return None
        self._early_teacher = (self._teacher_inputs(), Future())
        return self._early_teacher[1]

    def teacher_outputs(self) -> tuple[Evaluation, Teaching]:
        """The frozen teacher's evaluation on the test set, and its targets for the students."""
        self.teacher.eval().requires_grad_(False)
        return (evaluate(self.teacher, self.test, self.num_classes, self.device),
                prepare_teaching(self.teacher, self.train, self.config, self.device))

    def _early_teacher_outputs(self) -> tuple[Evaluation, Teaching] | None:
        """What ``teach_early`` computed (waiting for it), if it was computed from what the teacher would
        see now; raises what computing it raised, as computing it now would."""
        if self._early_teacher is None:
            return None
        inputs, future = self._early_teacher
        self._early_teacher = None
        outputs = future.result()
        if inputs != self._teacher_inputs():
            self.log("the teacher or the data changed after the teacher's outputs were computed ahead: "
                     "computing them again")
            return None
        return outputs

    def _teacher_inputs(self) -> tuple:
        """What the teacher's outputs depend on that the run could change: the teacher's tensors (each with
        its count of in-place changes, which loading weights raises), the data and their normalization, the
        class count."""
        tensors = [*self.teacher.parameters(), *self.teacher.buffers()]
        return (tuple((id(tensor), tensor._version) for tensor in tensors), id(self.train), id(self.test),
                self.train.normalization, self.test.normalization, self.num_classes, str(self.device))

    # ------------------------------------------------------------------ rounds
    def train_round(self) -> object:
        """Local training from the current global models; the payload to send."""
        self._start_round(self.models)
        config = self.config
        local = {"epochs": config.local_epochs, "proximal_mu": config.proximal_mu, "round_index": self.rounds_done,
                 "rounds": config.max_iter, "device": self.device,
                 "views": self.teaching.views}   # the baseline sees the same views
        self.last_stats = {"student": train_local(self.student, self.train, config,
                                                  **self.teaching.targets(), **local)}
        if "baseline" in self.models:
            self.last_stats["baseline"] = train_local(self.models["baseline"], self.train, config,
                                                      role="baseline student", **local)
        self.timings.add("training", sum(stats["seconds"] for stats in self.last_stats.values()))
        return self.wire.encode(self.name, self._shared(self.models), len(self.train), self.previous,
                                summary=self.summary())

    def aggregate(self, received: object, sites: int) -> Models:
        """The coordinator's global models from what the controller delivered of ``sites`` sites."""
        return self.server.step(self.previous, self.wire.decode(received, self.previous, sites))

    def apply_global(self, global_models: Models) -> None:
        """Load the global models, evaluate them on this site's test set, record the round, checkpoint."""
        _load_all(self.models, global_models)
        self.rounds_done += 1
        started = time.perf_counter()
        self.evaluations = {name: evaluate(model, self.test, self.num_classes, self.device)
                            for name, model in self.models.items()}
        self.timings.add("evaluation", time.perf_counter() - started)
        record = {"round": self.rounds_done}
        for name, evaluation in self.evaluations.items():
            prefix = "" if name == "student" else f"{name}_"
            record.update({f"{prefix}train_loss": self.last_stats[name]["train_loss"],
                           f"{prefix}train_accuracy": self.last_stats[name]["train_accuracy"],
                           f"{prefix}accuracy": evaluation.accuracy, f"{prefix}loss": evaluation.loss})
        record["seconds"] = sum(stats["seconds"] for stats in self.last_stats.values())
        self.rounds.append(record)
        checkpoint.write(self.output_dir, self.rounds_done, self.models, self.server.state_dict())
        release_free_memory()
        baseline = f", baseline {record['baseline_accuracy']:.4f}" if "baseline" in self.models else ""
        self.log(f"round {record['round']}/{self.config.max_iter}: train loss {record['train_loss']:.4f}, "
                 f"global student test accuracy {record['accuracy']:.4f}{baseline}")
        self.timings.round_done(self.rounds_done)

    def summary(self) -> dict:
        """The few numbers the coordinator collects from every site for the federation report."""
        accuracy = {name: evaluation.accuracy for name, evaluation in self.evaluations.items()}
        return {"site": self.name, "test_samples": len(self.test), "train_samples": len(self.train),
                "teacher_accuracy": self.teacher_evaluation.accuracy if self.teacher_evaluation else None,
                "student_accuracy": accuracy.get("student"), "baseline_accuracy": accuracy.get("baseline"),
                "rounds": [{key: row[key] for key in ("round", "accuracy", "baseline_accuracy") if key in row}
                           for row in self.rounds]}

    # ----------------------------------------------------------------- helpers
    def _shared(self, models: dict[str, torch.nn.Module]) -> Models:
        """The entries of ``models`` that are averaged (all but FedBN's local ones)."""
        return {name: {key: value for key, value in to_arrays(model.state_dict()).items()
                       if key not in self.local_keys[name]}
                for name, model in models.items()}

    def _start_round(self, models: dict[str, torch.nn.Module]) -> None:
        """Remember where this round starts, the global models (as loaded into ``models``), which the wire
        forms that send changes or sums and the server optimizer need (``previous``)."""
        self.previous = self._shared(models)


def _load_all(models: dict[str, torch.nn.Module], global_models: Models) -> None:
    for name, model in models.items():
        _load_entries(model, global_models[name])   # FedBN's local entries are not in it: they stay


def _load_entries(model: torch.nn.Module, weights: dict, only: set[str] | None = None) -> None:
    """Load ``weights`` (all, or the ``only`` keys) into ``model``, keeping its other entries."""
    state = model.state_dict()
    state.update({key: value for key, value in to_state_dict(weights).items() if only is None or key in only})
    model.load_state_dict(state)


def _rounded(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{value:.4f}" for value in values) + "]"


def _as_lists(signature: list) -> list:
    return [[name, list(shape), dtype] for name, shape, dtype in signature]


def _first_difference(mine: list, theirs: list) -> str:
    theirs_by_name = {entry[0]: entry for entry in theirs}
    for name, shape, _ in mine:
        other = theirs_by_name.get(name)
        if other is None:
            return f"'{name}' exists only here"
        if tuple(other[1]) != tuple(shape):
            return f"'{name}' has shape {list(shape)} here, {list(other[1])} at the coordinator"
    missing = [entry[0] for entry in theirs if entry[0] not in {n for n, _, _ in mine}]
    return f"'{missing[0]}' exists only at the coordinator" if missing else "tensor order or dtypes differ"
