"""The cross-validation folds of one site, trained in the same rounds.

With ``logic: {mode: directory, dir: data}`` (fc-deep-learning's convention for FeatureCloud's
Cross-Validation output) every sub-folder of ``<input>/data`` holds one fold's training and test
files under the names config.yml gives. Each fold is a ``Site`` of its own: its data, its teacher
(trained on the fold's training files only), its students, its outputs in ``<output>/data/<fold>/``.
``Folds`` holds them and offers the states the same steps as one ``Site``, so every message of a
round carries every fold:

- plain messages hold a dict, one entry per fold;
- numeric messages (secure sum, differential privacy) hold the folds' vectors one after another, in
  fold order, each as long as that fold's own. Every site has the same folds and the same student
  (both checked in the plan), so every site's message, and their secure sum, splits the same way.

Under differential privacy the controller clips and noises that one vector: the clipping norm bounds
all folds' changes together, so each round's release keeps the configured (epsilon, delta) however
many folds there are, and each fold's change gets a share of the norm.

Where the states and the live page want one site's figures (the rounds so far, the teacher's
accuracy, the summary the coordinator collects), ``Folds`` gives the mean over the folds; in ``file``
mode there is one fold, the site itself, and its figures and outputs are the site's own.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from app import checkpoint, cv_summary, files
from app.report import render_cv_report
from app.config import KDConfig, effective_document, load_config, read_document
from app.errors import ConfigError, DataError, FederationError, KDError
from app.idle import IdleTime, in_background, settle
from app.results import (export_student, federation_summary, finish_outputs, measure_student, measure_teacher,
                         prepare_outputs, site_summary)
from app.site import CONFIG_FILE, Site, resolve_input
from app.timings import Timings
from app.training import Evaluation
from app.transport import Models, Wire

FILE_MODE = ""   # the name of the one fold of file mode


class Folds:
    """One site's folds (``{fold name: Site}``, in fold order) and its own log."""

    def __init__(self, name: str, output_dir: Path, input_dir: Path, sites: dict[str, Site], config: KDConfig,
                 log: Callable[[str], None]) -> None:
        self.name = name
        self.input_dir = input_dir
        self.output_dir = output_dir
        self.sites = sites
        self.config = config
        self._log = log
        self.log_lines: list[str] = []
        self._segments: list[int] | None = None   # the lengths of the folds' vectors in the last message
        self.idle = IdleTime()   # while the states wait for the other sites (``IdleTime.waiting``)

    @property
    def cross_validation(self) -> bool:
        return FILE_MODE not in self.sites

    @property
    def wire(self) -> Wire:
        return self._first.wire

    @property
    def first_round(self) -> int:
        return self._first.first_round

    @property
    def next_teacher_round(self) -> int | None:
        return self._first.next_teacher_round   # every fold trains in the same rounds

    @property
    def next_round(self) -> int | None:
        return self._first.next_round

    def share_done(self) -> float:
        return self._first.share_done()

    @property
    def _first(self) -> Site:
        return next(iter(self.sites.values()))

    @property
    def rounds(self) -> list[dict]:
        """The rounds so far: the site's own, or each figure's mean over the folds."""
        if not self.cross_validation:
            return self._first.rounds
        return [{key: _mean([row[key] for row in rows]) for key in rows[0]}
                for rows in zip(*(site.rounds for site in self.sites.values()))]

    # ------------------------------------------------------------------ set-up
    @classmethod
    def load(cls, input_dir: Path, output_dir: Path, name: str, log: Callable[[str], None] = print,
             status: Callable[[str], None] | None = None) -> "Folds":
        """Read the config; load one Site (file mode) or one per fold folder (directory mode).
        ``status`` receives short progress messages (decoding images) for the status line."""
        config = load_config(input_dir / CONFIG_FILE)
        if config.logic.mode == "file":
            site = Site.load(input_dir, output_dir, name, log, status=status)
            return cls(name, output_dir, input_dir, {FILE_MODE: site}, config, log)
        folds = cls(name, output_dir, input_dir, {}, config, log)
        folder = resolve_input(input_dir, config.logic.dir, "logic.dir")
        names = fold_names(folder, config.logic.dir)
        _refuse_resume(config, input_dir)
        teacher = None
        for fold in names:
            data_dir = folder / fold
            _check_training_file(config, input_dir, data_dir, fold)
            with _naming(fold):
                site = Site.load(input_dir, output_dir / config.logic.dir / fold, name,
                                 log=lambda message, fold=fold: folds.log(f"fold {fold}: {message}"),
                                 data_dir=data_dir, teacher=teacher, status=status)
            if not (config.teacher_rounds or config.teacher_epochs):
                teacher = site.teacher   # never trained here: one frozen teacher serves every fold
            folds.sites[fold] = site
        folds.log(f"cross-validation: {len(names)} folds in {config.logic.dir}/ ({', '.join(names)}), "
                  "trained in the same rounds")
        return folds

    def begin_run(self, name: str) -> None:
        """The controller named this site, read before it did (``EarlyStart``): every fold is ``name`` now, and
        the run's clock (``timings``, the seconds in metrics.json) starts now, as if it had been read now."""
        self.name = name
        for site in self.sites.values():
            site.name = name
            site.started = time.time()
            site.timings = Timings()

    def teach_early(self) -> None:
        """Compute what ``Site.teach_early`` allows ahead, in one background thread, one fold after the other
        (the folds may share one teacher)."""
        early = [(site, future) for site in self.sites.values() if (future := site.teach_early()) is not None]
        if early:
            in_background(lambda: [settle(future, site.teacher_outputs) for site, future in early], "early teacher")

    def log(self, message: str) -> None:
        self.log_lines.append(f"{time.strftime('%H:%M:%S')} {message}")
        self._log(message)

    def survey(self) -> dict:
        """``Site.survey`` of all folds together: one class list and one channel count serve every fold."""
        surveys = [site.survey() for site in self.sites.values()]
        classes = [survey["classes"] for survey in surveys if survey["classes"] is not None]
        colours = [survey["colour"] for survey in surveys if survey["colour"] is not None]
        return {"site": self.name, "classes": sorted(set().union(*classes)) if classes else None,
                "arrays": any(survey["arrays"] for survey in surveys), "colour": any(colours) if colours else None}

    def make_plan(self, surveys: list[dict] | None = None) -> dict:
        """The coordinator's run plan from every site's survey (only its own if None): every fold starts
        from the same weights, so one plan (of the first fold) serves all, with the folds every site must have."""
        return {**self._first.make_plan(surveys if surveys is not None else [self.survey()]), "folds": list(self.sites)}

    def adopt_plan(self, plan: dict) -> None:
        """Check this site has the coordinator's folds, then let every fold adopt the plan."""
        theirs, mine = plan["folds"], list(self.sites)
        if theirs != mine:
            raise FederationError(_folds_differ(self.name, mine, theirs, self.config.logic.dir))
        self._each(lambda fold, site: site.adopt_plan(plan))

    def needs_channel_sums(self) -> bool:
        return self._first.needs_channel_sums()

    def channel_sums(self) -> Any:
        """Every fold's ``Site.channel_sums``, one vector after another (each fold is normalized by the
        statistics of its own training files at every site)."""
        return self._merge(self._each(lambda fold, site: site.channel_sums()))

    def pool_channel_sums(self, received: Any, sites: int) -> dict[str, dict]:
        """The coordinator's federated normalization of every fold."""
        parts = self._split(received, summed=self.wire.smpc)
        return self._each(lambda fold, site: site.pool_channel_sums(parts[fold], sites))

    def adopt_normalization(self, statistics: dict[str, dict]) -> None:
        self._each(lambda fold, site: site.adopt_normalization(statistics[fold]))

    # ----------------------------------------------------------------- rounds
    def teacher_round(self) -> Any:
        return self._merge(self._each(lambda fold, site: site.teacher_round()))

    def apply_teacher(self, global_models: dict[str, Models]) -> None:
        self._each(lambda fold, site: site.apply_teacher(global_models[fold]))

    def prepare_teacher(self) -> Evaluation:
        """Every fold's teacher ready; its evaluation (with folds: mean accuracy and loss over the folds,
        the confusion matrix of all folds' test files together). The students' and the frozen teachers'
        size and speed are measured from now on in this site's idle time (``idle``), for the outputs."""
        evaluations = list(self._each(lambda fold, site: site.prepare_teacher()).values())
        for site in self.sites.values():
            measure_student(site, self.idle)
        for site in self.sites.values():
            measure_teacher(site, self.idle)
        return evaluations[0] if not self.cross_validation else _mean_evaluation(evaluations)

    def train_round(self) -> Any:
        return self._merge(self._each(lambda fold, site: site.train_round()))

    def aggregate(self, received: Any, sites: int) -> dict[str, Models]:
        """The coordinator's global models of every fold from what the controller delivered."""
        parts = self._split(received, summed=self.wire.smpc)
        return self._each(lambda fold, site: site.aggregate(parts[fold], sites))

    def apply_global(self, global_models: dict[str, Models]) -> None:
        self._each(lambda fold, site: site.apply_global(global_models[fold]))

    def _each(self, step: Callable[[str, Site], Any]) -> dict[str, Any]:
        """``step(fold, site)`` for every fold, in fold order; a user mistake met in one names its fold."""
        done = {}
        for fold, site in self.sites.items():
            with _naming(fold):
                done[fold] = step(fold, site)
        return done

    def summary(self) -> dict:
        """This site's figures so far (with folds: the mean over the folds), for the live page."""
        if not self.cross_validation:
            return self._first.summary()
        return _mean_summary(self.name, [site.summary() for site in self.sites.values()])

    def export_students(self) -> dict[str, dict]:
        """Every fold's student exported (``results.export_student``), first of the outputs."""
        return {fold: export_student(site) for fold, site in self.sites.items()}

    def done_summary(self, exported: dict[str, dict]) -> dict:
        """What the coordinator collects from this site at the end (``results.site_summary``); with
        folds the mean over the folds, and every fold's own under "folds"."""
        if not self.cross_validation:
            return site_summary(self._first, exported[FILE_MODE])
        folds = {fold: site_summary(site, exported[fold]) for fold, site in self.sites.items()}
        return {**_mean_summary(self.name, list(folds.values())), "folds": folds}

    def summaries(self, received: Any) -> list[dict]:
        """The sites' summaries that came with their plain updates (none under SMPC or DP)."""
        if not self.cross_validation:
            return self.wire.summaries(self._split(received, summed=self.wire.smpc)[FILE_MODE])
        parts = self._split(received, summed=self.wire.smpc)
        per_fold = [self.wire.summaries(parts[fold]) for fold in self.sites]
        return [_mean_summary(summaries[0]["site"], list(summaries)) for summaries in zip(*per_fold)]

    # ---------------------------------------------------------------- outputs
    def prepare_outputs(self, exported: dict[str, dict] | None = None) -> dict[str, dict]:
        """Every fold's outputs that need only this site (``results.prepare_outputs``); ``exported``:
        what ``export_students`` returned. The coordinator makes these while the others write theirs."""
        exported = exported or self.export_students()
        return {fold: prepare_outputs(site, exported[fold]) for fold, site in self.sites.items()}

    def write_outputs(self, federation: list[dict] | None = None, exported: dict[str, dict] | None = None,
                      prepared: dict[str, dict] | None = None) -> dict:
        """Every fold's outputs in its folder; with folds also their summary at the top of the output
        folder (metrics.json, report.md, config.yml, log.txt). ``federation``: every site's
        ``done_summary`` (coordinator only); ``exported``: what ``export_students`` returned;
        ``prepared``: what ``prepare_outputs`` returned, if it ran already.
        Nothing is published before everything is written. Returns the metrics of the top folder."""
        prepared = prepared or self.prepare_outputs(exported)
        if not self.cross_validation:
            return finish_outputs(self._first, prepared[FILE_MODE], federation)
        metrics = {fold: finish_outputs(site, prepared[fold], [summary["folds"][fold] for summary in federation]
                                        if federation else None, publish=False)
                   for fold, site in self.sites.items()}
        out = self.output_dir / files.UNFINISHED
        summary = {**cv_summary.summarize(self.name, self.config.logic.dir, metrics), "rounds": self.rounds}
        if federation:   # per round and site, means over the folds (what the live page charts)
            summary["federation"] = federation_summary([{key: value for key, value in site.items() if key != "folds"}
                                                        for site in federation])
        files.write_json(out / files.METRICS, {**summary, "config": self.config.model_dump()})
        files.write_text(out / files.REPORT, render_cv_report(summary))
        files.write_config(effective_document(read_document(self.input_dir / files.CONFIG), self.config),
                           out / files.CONFIG)
        self.log(f"cross-validation summary written to {self.output_dir}")
        files.write_text(out / files.LOG, "\n".join(self.log_lines) + "\n")
        for site in self.sites.values():
            files.publish(site.output_dir)
        files.publish(self.output_dir)
        return summary

    # ---------------------------------------------------------------- messages
    def _merge(self, payloads: dict[str, Any]) -> Any:
        """One message from the folds' payloads: their vectors one after another, or a dict."""
        if all(isinstance(payload, list) for payload in payloads.values()):
            self._segments = [len(payload) for payload in payloads.values()]
            return [number for payload in payloads.values() for number in payload]
        self._segments = None
        return payloads

    def _split(self, received: Any, summed: bool) -> dict[str, Any]:
        """Each fold's part of what the coordinator received: of the one summed vector (``summed``),
        else of every site's message."""
        if self._segments is None:
            return {fold: [message[fold] for message in received] for fold in self.sites}
        messages = [received] if summed else list(received)
        parts: dict[str, list] = {fold: [] for fold in self.sites}
        for message in messages:
            if len(message) != sum(self._segments):
                raise FederationError(f"received {len(message)} numbers for {len(self.sites)} folds of "
                                      f"{sum(self._segments)}: the sites' students differ. Every site must use "
                                      "the same student_model and student_args.")
            start = 0
            for fold, length in zip(self.sites, self._segments):
                parts[fold].append(message[start:start + length])
                start += length
        return {fold: part[0] if summed else part for fold, part in parts.items()}


@contextmanager
def _naming(fold: str) -> Iterator[None]:
    """A user mistake (KDError) raised for one cross-validation fold says which fold."""
    try:
        yield
    except KDError as error:
        if fold == FILE_MODE:
            raise
        raise type(error)(f"fold '{fold}': {error}") from error


def _mean(values: list) -> Any:
    """The mean of numbers (None if one is missing); other values (round numbers) from the first."""
    if any(value is None for value in values):
        return None
    if all(isinstance(value, float) for value in values):
        return sum(values) / len(values)
    return values[0]


def _mean_summary(site: str, summaries: list[dict]) -> dict:
    """One site-shaped summary of the folds' summaries: mean accuracies (per round too), all folds'
    images counted."""
    merged: dict[str, Any] = {}
    for key in summaries[0]:
        values = [summary.get(key) for summary in summaries]
        if key == "site":
            merged[key] = site
        elif key == "rounds":
            merged[key] = [{column: _mean([row.get(column) for row in rows]) for column in rows[0]}
                           for rows in zip(*values)]
        elif key.endswith("_samples"):
            merged[key] = sum(values)
        else:
            merged[key] = _mean(values)
    return merged


def _mean_evaluation(evaluations: list[Evaluation]) -> Evaluation:
    """Mean accuracy and loss over the folds; counts and confusion matrix of all folds' test files."""
    confusion = [[sum(cells) for cells in zip(*rows)] for rows in zip(*(e.confusion_matrix for e in evaluations))]
    per_class = [None if sum(row) == 0 else row[index] / sum(row) for index, row in enumerate(confusion)]
    return Evaluation(accuracy=_mean([e.accuracy for e in evaluations]), loss=_mean([e.loss for e in evaluations]),
                      samples=sum(e.samples for e in evaluations), per_class_accuracy=per_class,
                      confusion_matrix=confusion)


def fold_names(folder: Path, shown: str) -> list[str]:
    """The fold folders in ``folder`` (hidden ones aside), in numeric order when all are numbers."""
    if not folder.is_dir():
        listing = ", ".join(sorted(entry.name for entry in folder.parent.iterdir())) or "nothing"
        raise ConfigError(f"logic.dir: '{shown}' — no such folder in the input folder (it holds: {listing}). "
                          "With logic.mode: directory, put one sub-folder per cross-validation fold there (as "
                          "FeatureCloud's Cross-Validation app writes them), or set logic.dir to their folder.")
    names = [entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")]
    if not names:
        raise ConfigError(f"logic.dir: '{shown}' holds no fold folders. With logic.mode: directory every fold's "
                          f"files are in a sub-folder ({shown}/0/, {shown}/1/, ...); use logic.mode: file for "
                          "files directly in the input folder.")
    return sorted(names, key=_fold_order)


def _fold_order(name: str) -> tuple:
    return (0, int(name), "") if re.fullmatch(r"\d+", name) else (1, 0, name)


def _check_training_file(config: KDConfig, input_dir: Path, data_dir: Path, fold: str) -> None:
    path = resolve_input(data_dir, config.train_dataset, "train_dataset")
    if path.exists():
        return
    shown = data_dir.relative_to(input_dir.resolve())
    listing = ", ".join(sorted(entry.name for entry in data_dir.iterdir())) or "nothing"
    raise DataError(f"fold '{fold}' has no training file: train_dataset '{shown / config.train_dataset}' does not "
                    f"exist ({shown}/ holds: {listing}). Every fold folder needs the training and test files under "
                    "the same names: put it there, or set train_dataset to the name the folds use (Cross-"
                    "Validation's result: train).")


def _refuse_resume(config: KDConfig, input_dir: Path) -> None:
    """A checkpoint holds one run's models, not one per fold: resuming folds from it would be wrong."""
    if not config.init_student:
        return
    path = resolve_input(input_dir, config.init_student, "init_student")
    if path.is_file() and checkpoint.read(path) is not None:
        raise ConfigError(f"init_student: '{config.init_student}' is a checkpoint, and resuming is not supported "
                          f"with logic.mode: directory (cross-validation folds): a checkpoint holds one fold's "
                          "models. Start the run again without init_student, or continue one fold on its own "
                          "(logic.mode: file with that fold's files and its checkpoint.pt).")


def _folds_differ(site: str, mine: list[str], theirs: list[str], folder: str) -> str:
    missing, extra = [f for f in theirs if f not in mine], [f for f in mine if f not in theirs]
    if missing:
        problem = f"fold '{missing[0]}' of the coordinator is missing here"
    elif extra:
        problem = f"fold '{extra[0]}' is here but not at the coordinator"
    else:
        problem = "the coordinator has a fold here where it is not"
    return (f"site {site}'s folds in {folder}/ ({', '.join(mine) or 'none'}) differ from the coordinator's "
            f"({', '.join(theirs) or 'none'}): {problem}. Every site needs the same folds: run Cross-Validation "
            "with the same n_splits and split_dir at every site.")
