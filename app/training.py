"""Local training: plain epochs on hard labels, distillation epochs, evaluation.

The teacher is frozen, so distillation normally reads its logits from a cache
computed once per site (``compute_logits``) and indexed by sample position;
passing the teacher itself instead runs it on every batch (the "online" path of
the original apps: the reference the tests hold the cache to).

With augmentation (``app.augment``) the batches are views re-made from the stored images;
the cache then holds the teacher's logits of every view (``compute_view_logits``), looked
up by the view's key, or the teacher runs on every freshly drawn view (online teaching).

Randomness (shuffle order, dropout) is derived from (seed, round, epoch) only,
so a round trains the same way whether the run was interrupted before it or not,
and whatever other sites of the same process do (``process_wide.seeded``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from app.augment import CachedViews, FreshViews, TrainingViews, training_views
from app.config import KDConfig
from app.data import Data
from app.errors import ConfigError, TrainingError
from app.losses import kd_loss
from app.process_wide import seeded

# Inference batch for caching logits and evaluating. Larger is not faster on the CPU: once a
# layer's output passes glibc's mmap threshold (32 MiB at most), every batch maps and zeroes
# fresh memory from the kernel (measured: 10k MNIST images through the 0.9M-parameter teacher,
# 1 thread: 3.6 s at 1024, 2.4 s at 256, 1.7 s at 128).
EVAL_BATCH = 128


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    samples: int
    per_class_accuracy: list[float | None]   # None for classes absent from the data
    confusion_matrix: list[list[int]]        # rows: true class, columns: predicted class

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_device(requested: str) -> torch.device:
    """auto → cuda when available, else cpu; an explicit cuda without a GPU is a config error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' — no CUDA GPU is visible here. Use device: auto (falls back "
                          "to the CPU) or run the container with --gpus all.")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def make_optimizer(model: nn.Module, config: KDConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def epoch_generator(seed: int, round_index: int, epoch: int) -> torch.Generator:
    """The shuffle order of one epoch, a function of (seed, round, epoch) alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + round_index * 1_009 + epoch)


@torch.inference_mode()
def compute_logits(model: nn.Module, data: Data, device: torch.device | str = "cpu",
                   batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits of ``model`` for every sample, in dataset order: float32 [N, K] on the CPU."""
    model.eval()
    # Each batch's logits go straight into one tensor: dozens of small chunks kept between the
    # batches' large activations would pin the allocator's free space in pieces too small to reuse,
    # and the process would grow by a multiple of one batch's activations (measured: 150 MB more
    # for the sample's 5,000 images through its teacher).
    logits: torch.Tensor | None = None
    for positions, images, _ in data.batches(batch_size):
        batch = model(images.to(device)).float().cpu()
        if logits is None:
            logits = torch.empty(len(data), *batch.shape[1:], dtype=batch.dtype)
        logits[positions] = batch
    return logits


def scheduled_lr(config: KDConfig, start: float, end: float) -> float:
    """The learning rate of a step spanning ``start``..``end`` of the run (shares from 0 to 1).

    ``lr_warmup``: the rate rises linearly over that share of the run, reaching ``learning_rate``
    at its end; then ``lr_schedule`` ``constant`` keeps it, ``cosine`` lowers it along half a
    cosine towards 0 at the end of the run (Loshchilov & Hutter 2017, without restarts).
    """
    warmup = config.lr_warmup
    if end < warmup:
        return config.learning_rate * end / warmup
    if config.lr_schedule == "constant":
        return config.learning_rate
    done = max(start - warmup, 0.0) / (1 - warmup)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * done))


@torch.inference_mode()
def compute_view_logits(model: nn.Module, data: Data, views: CachedViews, device: torch.device | str = "cpu",
                        batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits of ``model`` for every cached view of every sample, row i·K + k for view k of sample i:
    [N·K, classes] on the CPU, float16 (float32 if some logit exceeds float16's range). Each view is
    re-made exactly as training re-makes it (``views.epoch(k)``)."""
    model.eval()
    cached: torch.Tensor | None = None
    for view in range(views.per_image):
        for keys, images, _ in data.batches(batch_size, views=views.epoch(view)):
            logits = model(images.to(device)).float().cpu()
            if cached is None:
                cached = torch.empty(len(data) * views.per_image, logits.shape[1], dtype=torch.float16)
            if cached.dtype == torch.float16 and logits.abs().max() > torch.finfo(torch.float16).max:
                cached = cached.float()
            cached[keys] = logits.to(cached.dtype)
    assert cached is not None   # data is never empty
    return cached


@dataclass(frozen=True)
class Teaching:
    """What the students train on and where their teacher targets come from (``prepare_teaching``)."""

    views: TrainingViews | None          # None: the images as they are
    logits: torch.Tensor | None          # the teacher's logits, cached: a row per sample, or per view
    teacher: nn.Module | None            # online teaching: the teacher runs on every batch
    description: str                     # what was prepared, for the log

    def targets(self) -> dict:
        """``train_local``'s keyword arguments for the teacher's targets (``views`` goes with them)."""
        return {"teacher_logits": self.logits, "teacher": self.teacher}


def prepare_teaching(teacher: nn.Module, data: Data, config: KDConfig,
                     device: torch.device | str = "cpu") -> Teaching:
    """The frozen ``teacher``'s targets on ``data`` as ``config`` asks: logits cached once per sample
    (no augment), once per cached view (augment, teacher_views > 0), or none (teacher_views 0: online)."""
    started = time.perf_counter()
    views = training_views(config.augment, config.teacher_views, len(data), data.sample_shape[1:], config.seed)
    if views is None:
        logits = compute_logits(teacher, data, device)
        return Teaching(None, logits, None, f"logits of {len(data)} training samples cached in "
                                            f"{time.perf_counter() - started:.1f}s")
    augment = f"augment {', '.join(config.augment)}"
    if isinstance(views, FreshViews):
        return Teaching(views, None, teacher, f"{augment} with online teaching (teacher_views 0): the teacher runs "
                                              "on every freshly augmented batch")
    logits = compute_view_logits(teacher, data, views, device)
    return Teaching(views, logits, None, f"{augment}: logits of {views.per_image} views of each training image "
                                         f"cached in {time.perf_counter() - started:.1f}s; "
                                         f"{views.describe(logits.shape[1], logits)}")


def train_local(model: nn.Module, data: Data, config: KDConfig, *, epochs: int, proximal_mu: float = 0.0,
                teacher_logits: torch.Tensor | None = None, teacher: nn.Module | None = None,
                views: TrainingViews | None = None, round_index: int = 0, rounds: int = 0,
                device: torch.device | str = "cpu", role: str = "student",
                optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Train ``model`` in place for ``epochs`` epochs with ``config``'s training keys; return round statistics.

    With ``teacher_logits`` (cached, [N, K]) or ``teacher`` (run on each batch) the
    loss is the KD blend; with neither it is plain cross-entropy on the labels.
    ``views``: train on augmented views of the images instead; epoch e of this call is epoch
    ``round_index · epochs + e`` of the run, and cached ``teacher_logits`` are looked up by view.
    ``proximal_mu`` > 0 adds FedProx's (mu/2)·‖w − w_start‖² to the loss.
    ``rounds`` > 0: this call is round ``round_index`` of a run of that many rounds of ``epochs``
    epochs, over which ``lr_schedule`` and ``lr_warmup`` shape the learning rate step by step;
    0: the learning rate stays ``learning_rate`` (the teacher's training).
    ``role`` names the model in error messages ("student", "teacher", "baseline").
    ``optimizer``: one ``make_optimizer(model, config)`` made earlier, whose state (Adam's moments,
    SGD's momentum) carries over from call to call; by default a fresh one for this call.
    """
    with seeded(config.seed * 7_919 + round_index):   # dropout & co., reproducible per round
        return _train(model, data, config, epochs, proximal_mu, teacher_logits, teacher, views, round_index, rounds,
                      device, role, optimizer)


def _train(model: nn.Module, data: Data, config: KDConfig, epochs: int, proximal_mu: float,
           teacher_logits: torch.Tensor | None, teacher: nn.Module | None, views: TrainingViews | None,
           round_index: int, rounds: int,
           device: torch.device | str, role: str, optimizer: torch.optim.Optimizer | None) -> dict:
    distilling = teacher_logits is not None or teacher is not None
    if teacher is not None:
        teacher.eval()   # frozen: dropout off, BatchNorm statistics fixed; run under inference_mode
    optimizer = optimizer or make_optimizer(model, config)
    # FedProx's anchor: the weights training starts from, i.e. this round's global model.
    anchor = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad] \
        if proximal_mu > 0 else []
    scheduled = rounds > 0 and (config.lr_schedule != "constant" or config.lr_warmup > 0)
    per_epoch = math.ceil(len(data) / config.batch_size)
    run_steps = rounds * epochs * per_epoch
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    seen = 0
    started = time.perf_counter()
    for epoch in range(epochs):
        generator = epoch_generator(config.seed, round_index, epoch)
        remake = views.epoch(round_index * epochs + epoch) if views is not None else None
        for batch, (indices, images, labels) in enumerate(
                data.batches(config.batch_size, shuffle=True, generator=generator, views=remake)):
            if scheduled:
                step = (round_index * epochs + epoch) * per_epoch + batch
                for group in optimizer.param_groups:
                    group["lr"] = scheduled_lr(config, step / run_steps, (step + 1) / run_steps)
            images, labels = images.to(device), labels.to(device)   # with views, indices are the views' keys
            logits = model(images)
            if distilling:
                targets = _teacher_targets(teacher_logits, teacher, indices, images, device)
                loss = kd_loss(logits, targets, labels, config.temperature, config.alpha, config.loss)
            else:
                loss = F.cross_entropy(logits, labels)
            if anchor:
                loss = loss + proximal_mu / 2 * sum(((p - start) ** 2).sum() for p, start in anchor)
            if not torch.isfinite(loss):
                raise TrainingError(_divergence_message(role, loss.item(), config, round_index, epoch, batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double().cpu() * len(labels)
            correct += (logits.detach().argmax(dim=1) == labels).sum().cpu()
            seen += len(labels)
    return {"train_loss": loss_sum.item() / max(seen, 1),
            "train_accuracy": correct.item() / max(seen, 1),
            "samples": len(data), "epochs": epochs,
            "seconds": time.perf_counter() - started}


def _teacher_targets(cached: torch.Tensor | None, teacher: nn.Module | None, indices: torch.Tensor,
                     images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    if cached is not None:
        return cached[indices].to(device, torch.float32)   # views' logits are kept in float16
    with torch.no_grad():   # not inference_mode: mse_loss saves these targets for backward
        return teacher(images).float()


def _divergence_message(role: str, value: float, config: KDConfig, round_index: int,
                        epoch: int, batch: int) -> str:
    suggestion = config.learning_rate / 10
    return (f"training the {role} diverged: the loss became {value} in round {round_index + 1}, "
            f"epoch {epoch + 1}, batch {batch + 1} with learning_rate {config.learning_rate:g}. "
            f"Lower learning_rate in config.yml (e.g. to {suggestion:g}) and check the images hold "
            f"no NaN or extreme values.")


@torch.inference_mode()
def evaluate(model: nn.Module, data: Data, num_classes: int, device: torch.device | str = "cpu",
             batch_size: int = EVAL_BATCH) -> Evaluation:
    """Accuracy, mean cross-entropy, per-class accuracy and confusion matrix on ``data``."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum = 0.0
    for _, images, labels in data.batches(batch_size):
        logits = model(images.to(device)).float().cpu()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        pairs = labels * num_classes + logits.argmax(dim=1)
        confusion += torch.bincount(pairs, minlength=num_classes ** 2).view(num_classes, num_classes)
    samples = int(confusion.sum())
    per_class_total = confusion.sum(dim=1)
    diagonal = confusion.diagonal()
    per_class = [None if total == 0 else float(hit) / float(total)
                 for hit, total in zip(diagonal.tolist(), per_class_total.tolist())]
    return Evaluation(accuracy=float(diagonal.sum()) / max(samples, 1),
                      loss=loss_sum / max(samples, 1),
                      samples=samples, per_class_accuracy=per_class,
                      confusion_matrix=confusion.tolist())
