"""The app's configuration: section ``fc_knowledge_distillation`` of config.yml.

``load_config`` reads the file with ``yaml.safe_load`` and validates it against
``KDConfig``. Every problem is collected and reported at once, one line per key,
in the form ``alpha: 1.5 — must be a number between 0 and 1``. Each field
declares in words what it allows, so type errors and range errors read alike.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      model_validator)

from app.augment import DEFAULT_TEACHER_VIEWS, OPERATIONS
from app.errors import ConfigError
from app.losses import DistillKind

SECTION = "fc_knowledge_distillation"


def _number(value: Any) -> Any:
    # YAML 1.1 reads `1e-3` (no dot) as a string; accept it as the number it means.
    if isinstance(value, bool):
        raise ValueError("not a number")
    if isinstance(value, str):
        return float(value)
    return value


def _whole_number(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("not a whole number")
    if isinstance(value, float):
        return int(value)
    return value


def _field(default: Any, allowed: str, **constraints: Any) -> Any:
    return Field(default, json_schema_extra={"allowed": allowed}, **constraints)


def _training(default: Any, allowed: str, **constraints: Any) -> Any:
    """A key of local training itself: ``distill()`` takes it as a keyword too (``TRAINING_KEYS``)."""
    return Field(default, json_schema_extra={"allowed": allowed, "training": True}, **constraints)


def _image_shape(value: Any) -> Any:
    if value is None:
        return value
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise ValueError("not a list of 2 or 3 numbers")
    sizes = [_whole_number(size) for size in value]
    if any(not isinstance(size, int) or size < 1 for size in sizes):
        raise ValueError("not whole numbers ≥ 1")
    return sizes


def _augment(value: Any) -> Any:
    """A list of distinct operations; none (or empty) for no augmentation, one name for a list of one."""
    if value is None or value == "none":
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(name in OPERATIONS for name in names) or len(set(names)) < len(names):
        raise ValueError("not a list of operations")
    return names


def _augmenting(value: Any) -> bool:
    try:
        return bool(_augment(value))
    except ValueError:
        return True   # a bad augment is reported as such; its teacher_views default meanwhile


Number = Annotated[float, BeforeValidator(_number), AllowInfNan(False)]   # .inf/.nan: never meant
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
ImageShape = Annotated[list[int], BeforeValidator(_image_shape)]
Operations = Annotated[list[str], BeforeValidator(_augment)]

MAX_IMAGE_SIDE = 4096
NORMALIZE_MODES = ("none", "imagenet", "federated")


def _image_size(value: Any) -> Any:
    """An int, or [height, width], of whole numbers from 1 to MAX_IMAGE_SIDE."""
    if value is None:
        return None
    sides = [_whole_number(side) for side in (value if isinstance(value, (list, tuple)) else [value])]
    if len(sides) not in (1, 2) or not all(isinstance(side, int) and 1 <= side <= MAX_IMAGE_SIDE for side in sides):
        raise ValueError("not an image size")
    return sides[0] if not isinstance(value, (list, tuple)) else sides


def _class_names(value: Any) -> Any:
    """Distinct, non-empty names; YAML reads a folder named 3 as the number 3, so numbers become text."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError("not a list of names")
    names = [str(name) if isinstance(name, int) and not isinstance(name, bool) else name for name in value]
    if not all(isinstance(name, str) and name.strip() for name in names) or len(set(names)) != len(names):
        raise ValueError("not distinct names")
    return names


def _normalization(value: Any) -> Any:
    """A mode name, or {mean: [...], std: [...]} with one value per channel and every std > 0."""
    if isinstance(value, str) and value in NORMALIZE_MODES:
        return value
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise ValueError("not a normalization")
    mean, std = ([value[key]] if not isinstance(value[key], list) else value[key] for key in ("mean", "std"))
    values = [_number(number) for number in mean + std]
    if (len(mean) != len(std) or len(mean) not in (1, 3)
            or not all(isinstance(number, (int, float)) and math.isfinite(number) for number in values)
            or not all(number > 0 for number in values[len(mean):])):
        raise ValueError("not a normalization")
    return {"mean": [float(number) for number in values[:len(mean)]],
            "std": [float(number) for number in values[len(mean):]]}


ImageSize = Annotated[Any, BeforeValidator(_image_size)]
ClassNames = Annotated[Any, BeforeValidator(_class_names)]
Normalization = Annotated[Any, BeforeValidator(_normalization)]


class DPConfig(BaseModel):
    """Differential privacy of the updates, applied by the FeatureCloud controller."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: Number = _field(1.0, "a number > 0 (privacy budget per round; smaller is more private)", gt=0)
    delta: Number = _field(1e-5, "a number between 0 and 1 (gauss noise needs > 0)", ge=0, lt=1)
    clipping: Number = _field(1.0, "a number > 0: the norm every site's update is clipped to", gt=0)
    noise: Literal["gauss", "laplace"] = _field("gauss", "one of: gauss, laplace")

    @model_validator(mode="after")
    def _gauss_needs_delta(self) -> "DPConfig":
        if self.noise == "gauss" and self.delta == 0:
            raise ValueError("dp.delta: 0 — gauss noise needs a delta > 0 (e.g. 1e-5); use noise: laplace "
                             "for pure epsilon-differential privacy")
        return self


class LogicConfig(BaseModel):
    """Where the datasets are: in the input folder (file), or one cross-validation fold per sub-folder
    of ``dir`` (directory), as fc-deep-learning's ``logic`` key says it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["file", "directory"] = _field("file", "one of: file, directory")
    dir: str = _field(".", "the name of a folder inside the input folder (its sub-folders are the folds)",
                      min_length=1)


# server_learning_rate when none is given: rates that worked for each server optimizer in trials on one
# federation, then run by bench/convergence.py everywhere (README: Server optimizers); one number cannot fit
# them all: an Adam step moves every weight by about the rate itself, FedAvg's by the average change times it.
SERVER_LEARNING_RATES = {"fedavg": 1.0, "fedavgm": 0.3, "fedadam": 0.1, "fedyogi": 0.03}


class KDConfig(BaseModel):
    """Validated settings of one site. The training defaults were chosen by bench/convergence.py (README:
    Defaults); the rest follow the original FeatureCloud KD app."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher_model: str = _field("teacher.py", "the name of a .py file defining class Model", min_length=1)
    student_model: str = _field("student.py", "the name of a .py file defining class Model", min_length=1)
    teacher_args: dict[str, Any] = _field({}, "a mapping of keyword arguments for the teacher's Model(...)")
    student_args: dict[str, Any] = _field({}, "a mapping of keyword arguments for the student's Model(...)")
    teacher_weights: str | None = _field(None, "the name of a weights file (.pt/.pth) for the teacher, or empty")
    teacher_rounds: WholeNumber = _field(0, "a whole number of federated teacher rounds ≥ 0", ge=0)
    teacher_epochs: WholeNumber = _field(0, "a whole number of local teacher epochs ≥ 0", ge=0)
    train_dataset: str = _field("train_dataset.pth", "the name of a dataset file or folder", min_length=1)
    test_dataset: str = _field("test_dataset.pth", "the name of a dataset file or folder", min_length=1)
    train_labels: str | None = _field(None, "the name of a .npy/.npz file with train_dataset's labels, or empty")
    test_labels: str | None = _field(None, "the name of a .npy/.npz file with test_dataset's labels, or empty")
    logic: LogicConfig = _field(LogicConfig(), "a mapping with mode (file or directory) and dir")
    image_shape: ImageShape | None = _field(None, "a list of 2 or 3 whole numbers ≥ 1 ([C, H, W], [H, W, C] or "
                                                  "[H, W]: the shape flat image vectors are reshaped to), or empty")
    classes: ClassNames = _field(None, "a list of distinct class names (the class folders' names, in label "
                                       "order), or empty")
    image_size: ImageSize = _field(None, f"a whole number of pixels from 1 to {MAX_IMAGE_SIDE}, or [height, width], "
                                         "or empty (all images must then share one size)")
    channels: Literal[1, 3] | None = _field(None, "1 or 3, or empty (3 if any training image has colour, else 1)")
    normalize: Normalization = _field("none", "one of: none, imagenet, federated, or {mean: [...], std: [...]} "
                                              "with 1 or 3 values each and every std > 0")
    image_memory_mb: WholeNumber = _field(4096, "a whole number of megabytes ≥ 0", ge=0)

    max_iter: WholeNumber = _field(10, "a whole number of communication rounds ≥ 1", ge=1)
    local_epochs: WholeNumber = _field(1, "a whole number of local epochs per round ≥ 1", ge=1)
    batch_size: WholeNumber = _training(32, "a whole number ≥ 1", ge=1)
    learning_rate: Number = _training(0.008, "a number > 0 and ≤ 10", gt=0, le=10)
    optimizer: Literal["adam", "sgd"] = _training("adam", "one of: adam, sgd")
    momentum: Number = _training(0.9, "a number between 0 and 1 (used by sgd)", ge=0, lt=1)
    weight_decay: Number = _training(0.0, "a number ≥ 0", ge=0)
    lr_schedule: Literal["constant", "cosine"] = _training("constant", "one of: constant, cosine")
    lr_warmup: Number = _training(0.0, "a number from 0 to below 1: the share of the run spent warming up", ge=0, lt=1)

    temperature: Number = _training(4.0, "a number > 0 and ≤ 100", gt=0, le=100)
    alpha: Number = _training(0.8, "a number between 0 and 1", ge=0, le=1)
    loss: DistillKind = _training("kl", "one of: " + ", ".join(get_args(DistillKind)))

    augment: Operations = _training([], f"a list of distinct operations from: {', '.join(OPERATIONS)} (or none)")
    teacher_views: WholeNumber | None = _training(
        None, f"a whole number of views per training image from 0 (online teaching) to 1000, or empty "
              f"({DEFAULT_TEACHER_VIEWS} when augment is set)", ge=0, le=1000)

    aggregation: Literal["fedavg", "fedprox"] = _field("fedavg", "one of: fedavg, fedprox")
    mu: Number = _field(0.01, "a number ≥ 0 (FedProx's proximal weight)", ge=0)
    server_optimizer: Literal["fedavg", "fedavgm", "fedadam", "fedyogi"] = _field(
        "fedavg", "one of: fedavg, fedavgm, fedadam, fedyogi")
    server_learning_rate: Number | None = _field(
        None, "a number > 0 and ≤ 10, or empty (then " + ", ".join(
            f"{rate:g} for {name}" for name, rate in SERVER_LEARNING_RATES.items()) + ")", gt=0, le=10)
    server_momentum: Number = _field(0.9, "a number between 0 and 1 (used by fedavgm)", ge=0, lt=1)
    server_beta1: Number = _field(0.9, "a number between 0 and 1 (used by fedadam, fedyogi)", ge=0, lt=1)
    server_beta2: Number = _field(0.99, "a number between 0 and 1 (used by fedadam, fedyogi)", ge=0, lt=1)
    server_tau: Number = _field(0.001, "a number > 0 (used by fedadam, fedyogi)", gt=0)
    fedbn: bool = _field(False, "true or false", strict=True)
    use_smpc: bool = _field(False, "true or false", strict=True)
    smpc_exponent: WholeNumber = _field(8, "a whole number of decimal digits from 1 to 12", ge=1, le=12)
    dp: DPConfig | None = _field(None, "a mapping with epsilon, delta, clipping and noise, or empty")

    baseline: bool = _field(False, "true or false", strict=True)
    init_student: str | None = _field(None, "the name of a student.pt or checkpoint.pt of an earlier run, or empty")
    quantize: bool = _field(True, "true or false", strict=True)

    seed: WholeNumber = _training(0, "a whole number ≥ 0", ge=0)
    device: Literal["auto", "cpu", "cuda"] = _training("auto", "one of: auto, cpu, cuda")

    @property
    def proximal_mu(self) -> float:
        """FedProx's weight in federated local training: ``mu`` under ``aggregation: fedprox``, else 0."""
        return self.mu if self.aggregation == "fedprox" else 0.0

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """image_size as (height, width), or None when unset."""
        if self.image_size is None:
            return None
        sides = self.image_size if isinstance(self.image_size, list) else [self.image_size]
        return (sides[0], sides[-1])

    @model_validator(mode="after")
    def _statistics_fit_the_channels(self) -> "KDConfig":
        if isinstance(self.normalize, dict) and self.channels and len(self.normalize["mean"]) != self.channels:
            raise ValueError(f"normalize: {len(self.normalize['mean'])} means and stds but channels is "
                             f"{self.channels} — give one mean and one std per channel")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_teacher_views(cls, data: Any) -> Any:
        # Filled in here, so the effective config.yml a run writes shows the number of views it used.
        if isinstance(data, dict) and data.get("teacher_views") is None and _augmenting(data.get("augment")):
            return {**data, "teacher_views": DEFAULT_TEACHER_VIEWS}
        return data

    @model_validator(mode="after")
    def _views_need_augment(self) -> "KDConfig":
        if self.teacher_views is not None and not self.augment:
            raise ValueError(f"teacher_views: {self.teacher_views} — only used with augment, which is not set: set "
                             f"augment (e.g. augment: [{', '.join(OPERATIONS)}]) or remove teacher_views")
        return self

    @model_validator(mode="before")
    @classmethod
    def _server_learning_rate(cls, data: Any) -> Any:
        # Filled in before validation, so the value used is the one every dump shows (effective config.yml).
        if isinstance(data, dict) and data.get("server_learning_rate") is None:
            optimizer = data.get("server_optimizer", "fedavg")
            rate = SERVER_LEARNING_RATES.get(optimizer) if isinstance(optimizer, str) else None
            if rate is not None:   # else server_optimizer itself is reported as wrong
                data = {**data, "server_learning_rate": rate}
        return data

    @model_validator(mode="after")
    def _has_a_teacher(self, info: ValidationInfo) -> "KDConfig":
        # Only a site's config.yml (parse_config) needs a teacher source: the Python API passes
        # the teacher as a module, and code building a KDConfig for training alone has none.
        has_source = self.teacher_weights or self.teacher_rounds or self.teacher_epochs
        if (info.context or {}).get("require_teacher", False) and not has_source:
            raise ValueError("teacher_weights: not set, and teacher_rounds and teacher_epochs are 0 — the "
                             "teacher needs trained weights: name a weights file in teacher_weights, or train "
                             "it with teacher_rounds (federated) and/or teacher_epochs (at each site)")
        return self


FIELDS = tuple(KDConfig.model_fields)
TRAINING_KEYS = tuple(key for key, field in KDConfig.model_fields.items() if field.json_schema_extra.get("training"))


def load_config(path: str | Path) -> KDConfig:
    """Read and validate config.yml; raise ConfigError listing every problem."""
    path = Path(path)
    return parse_config(_read_yaml(path), source=path.name)


def parse_config(document: Any, source: str = "config.yml", require_teacher: bool = True) -> KDConfig:
    """Validate an already-parsed YAML document (sectioned or flat)."""
    section = _section(document, source)
    try:
        return KDConfig.model_validate(section, context={"require_teacher": require_teacher})
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
    raise ConfigError(_problem_report(source, problems))


def effective_document(original: Any, config: KDConfig) -> dict:
    """The config document to hand on to the next app of a workflow.

    Other apps' sections are kept as they were; ours holds every key with the
    value actually used, defaults included, so a reader sees the whole run.
    """
    ours = config.model_dump()
    if isinstance(original, dict) and (SECTION in original or not _looks_flat(original)):
        return {**original, SECTION: ours}
    return {SECTION: ours}


def read_document(path: str | Path) -> Any:
    """The raw YAML document of config.yml (for ``effective_document``)."""
    return _read_yaml(Path(path))


def differences(mine: KDConfig, theirs: KDConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """Keys whose values differ, rendered as ``key: mine != theirs``."""
    a, b = mine.model_dump(), theirs.model_dump()
    return [f"{key}: {a[key]!r} here, {b[key]!r} at the coordinator"
            for key in FIELDS if key not in ignore and a[key] != b[key]]


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(
            f"{path.name}: not found at {path}. Put a config.yml with a "
            f"'{SECTION}:' section in the generic (or client) input folder.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: cannot be read ({exc}). Save it as a UTF-8 text file.") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{path.name}: YAML syntax error{where}: {problem}. "
            "Check indentation and that each setting reads 'key: value'.") from None


def _looks_flat(document: dict) -> bool:
    return any(key in FIELDS or not isinstance(value, dict) for key, value in document.items())


def _section(document: Any, source: str) -> dict:
    if document is None or document == {}:
        raise ConfigError(f"{source}: the file is empty. Add a '{SECTION}:' section (see the README).")
    if not isinstance(document, dict):
        raise ConfigError(
            f"{source}: expected a mapping of settings, found {type(document).__name__}. "
            f"Start the file with '{SECTION}:' and indent the settings below it.")
    if SECTION in document:
        section = document[SECTION]
        if section is None:
            return {}
        if not isinstance(section, dict):
            raise ConfigError(
                f"{source}: '{SECTION}' must hold indented 'key: value' settings, "
                f"found {section!r}.")
        return section
    if _looks_flat(document):
        return document
    found = ", ".join(str(key) for key in document)
    hint = difflib.get_close_matches(SECTION, [str(key) for key in document], n=1)
    suggestion = f" Rename '{hint[0]}' to '{SECTION}'." if hint else (
        f" Add a '{SECTION}:' section with this app's settings.")
    raise ConfigError(f"{source}: no '{SECTION}' section (found: {found}).{suggestion}")


def _describe(error: dict) -> str:
    loc = [str(part) for part in error["loc"]]
    if not loc or (loc == ["dp"] and error["type"] == "value_error"):
        return str(error["ctx"]["error"])   # a rule about several keys together, already worded
    key = ".".join(loc)
    schema = _schema_of(loc[:-1])
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], list(schema.model_fields), n=1, cutoff=0.6)
        hint = f" — did you mean '{close[0]}'?" if close else " — see the README for the list of keys"
        return f"{key}: unknown key{hint}"
    field = schema.model_fields.get(loc[-1])
    allowed = (field.json_schema_extra or {}).get("allowed") if field else None
    finite = "finite, and " if error["type"] == "finite_number" else ""
    return f"{key}: {error['input']!r} — must be {finite}{allowed or error['msg']}"


def _schema_of(path: list[str]) -> type[BaseModel]:
    """The settings class a nested key lives in (``dp.epsilon`` lives in DPConfig)."""
    return {"dp": DPConfig, "logic": LogicConfig}.get(".".join(path), KDConfig)


def _problem_report(source: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    lines = "\n".join(f"  - {problem}" for problem in problems)
    return f"{source} has {len(problems)} problems:\n{lines}"
