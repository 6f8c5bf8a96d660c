"""Augmentation with consistent teacher views: view pixels, cached views' logits, cycling, online teaching,
and a site training on views while its test images stay untouched (real MNIST)."""
import math
import re

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from app.api import distill
from app.augment import CROP_RATIO, CROP_SCALE, JITTER, Augmentation, CachedViews, FreshViews, Views
from app.config import SECTION, KDConfig, effective_document, parse_config
from app.errors import ConfigError
from app.data import Decoding, LazyFiles, TensorData, decode_folders, open_dataset
from app.images import decode_files
from app.normalization import Normalization
from app.training import compute_view_logits, epoch_generator, prepare_teaching, train_local
from tests.conftest import image_folders
from tests.test_site import load

ALL = ("flip", "crop", "color")


def images(n=40, channels=3, size=(12, 14), seed=0, low=0.0, high=1.0):
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, channels, *size, generator=generator)


def dataset(n=40, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    pixels = images(n, seed=seed) * 0.5 + labels[:, None, None, None] * 0.25   # learnable: brightness ~ class
    return TensorData(pixels, labels)


def conv_net(seed, classes=3, width=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * width, classes))


class Float16Outputs(nn.Module):
    """A teacher whose logits float16 holds exactly, so cached logits equal online ones bit for bit."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).half().float()


def test_augment_and_teacher_views_keys():
    def config(**settings):
        return parse_config({SECTION: settings}, require_teacher=False)
    assert (config().augment, config().teacher_views) == ([], None)
    assert (config(augment="none").augment, config(augment=None).augment) == ([], [])
    assert (config(augment="crop").augment, config(augment="crop").teacher_views) == (["crop"], 4)
    assert config(augment=["color", "flip"], teacher_views=0).teacher_views == 0
    # the effective config.yml of a run shows the views it drew, and reads back the same
    used = config(augment=["flip"])
    assert effective_document(None, used)[SECTION]["teacher_views"] == 4
    assert parse_config(effective_document(None, used), require_teacher=False) == used
    for settings, message in (({"augment": ["flip", "rotate"]}, "augment: ['flip', 'rotate'] — must be a list of "
                                                                "distinct operations from: flip, crop, color"),
                              ({"augment": ["crop", "crop"]}, "augment: ['crop', 'crop'] — must be a list of distinct"),
                              ({"teacher_views": 8}, "teacher_views: 8 — only used with augment, which is not set"),
                              ({"augment": ["crop"], "teacher_views": -1}, "teacher_views: -1 — must be a whole "
                                                                           "number of views per training image")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            config(**settings)


def test_distill_in_a_script_takes_augment_and_teacher_views():
    data, teacher, student = dataset(24), conv_net(1), conv_net(2)
    lines = []
    history = distill(teacher, student, (data.images, data.labels), (data.images, data.labels), epochs=2,
                      batch_size=8, augment=["crop", "flip"], teacher_views=2, log=lines.append)
    assert "24 images × 2 views × 3 classes × 2 bytes = 288 bytes" in lines[0]
    assert len(history.epochs) == 2 and 0 <= history.epochs[-1]["accuracy"] <= 1


def test_crop_and_flip_remake_what_torchvision_makes_image_by_image():
    pixels = images(32, size=(12, 14))
    augmentation = Augmentation.of(["crop", "flip"])
    views = augmentation.draw(32, (12, 14), torch.Generator().manual_seed(1))
    made = augmentation.make(views, pixels)
    for image, (top, left, height, width), flip, got in zip(pixels, views.boxes.tolist(), views.flips, made):
        expected = TF.resized_crop(image, top, left, height, width, [12, 14], antialias=False)
        torch.testing.assert_close(got, TF.horizontal_flip(expected) if flip else expected, rtol=0, atol=1e-5)
    assert 0 < int(views.flips.sum()) < 32 and (views.boxes[:, 2:] < torch.tensor([12, 14])).any(dim=1).sum() > 16
    flipped_only = Augmentation.of(["flip"])
    views = flipped_only.draw(32, (12, 14), torch.Generator().manual_seed(1))
    mirrored = torch.where(views.flips[:, None, None, None], pixels.flip(3), pixels)
    assert torch.equal(flipped_only.make(views, pixels), mirrored)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_is_torchvisions_brightness_then_contrast(channels):
    pixels = images(16, channels=channels, low=0.3, high=0.6)   # stays in [0, 1]: torchvision's clipping never acts
    augmentation = Augmentation.of(["color"])
    views = augmentation.draw(16, (12, 14), torch.Generator().manual_seed(2))
    made = augmentation.make(views, pixels)
    for image, (brightness, contrast), got in zip(pixels, views.jitter.float().tolist(), made):
        expected = TF.adjust_contrast(TF.adjust_brightness(image, brightness), contrast)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(views.boxes[:, 2:], torch.tensor([[12, 14]] * 16, dtype=torch.int16))


def test_views_are_drawn_in_their_ranges_and_from_the_seed_alone():
    size = (40, 30)
    views = CachedViews.draw(Augmentation.of(ALL), 500, 4, size, seed=7).views
    assert len(views) == 2000 and views.nbytes == 2000 * Views.BYTES_PER_VIEW
    top, left, height, width = views.boxes.long().unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 40).all() and (left + width <= 30).all()
    share = (height * width).float() / (40 * 30)
    assert share.min() > CROP_SCALE[0] - 0.05 and share.max() <= 1 and share.min() < 0.45 and share.max() > 0.9
    ratio = (width / height.float())[(width < 30) & (height < 40)]   # sides not cut to the image's
    assert ratio.min() > CROP_RATIO[0] - 0.1 and ratio.max() < CROP_RATIO[1] + 0.1
    assert 0.45 < views.flips.float().mean() < 0.55
    factors = views.jitter.float()
    assert factors.min() >= 1 - JITTER - 1e-3 and factors.max() <= 1 + JITTER + 1e-3 and factors.std() > 0.05
    again = CachedViews.draw(Augmentation.of(ALL), 500, 4, size, seed=7).views
    other = CachedViews.draw(Augmentation.of(ALL), 500, 4, size, seed=8).views
    assert all(torch.equal(a, b) for a, b in zip(vars(views).values(), vars(again).values()))
    assert not torch.equal(views.boxes, other.boxes)


def test_cached_logits_of_a_view_are_the_teachers_output_on_the_remade_pixels():
    data, teacher = dataset(30), conv_net(1)
    views = CachedViews.draw(Augmentation.of(ALL), len(data), 3, (12, 14), seed=0)
    cached = compute_view_logits(teacher, data, views, batch_size=7)
    assert cached.shape == (90, 3) and cached.dtype == torch.float16
    with torch.no_grad():
        for image in (0, 13, 29):
            for view in range(3):
                key = torch.tensor([image * 3 + view])
                pixels = views.augmentation.make(views.views[key], data.images[[image]])
                torch.testing.assert_close(cached[key].float(), teacher(pixels), rtol=2e-3, atol=1e-3)
            assert len({tuple(row) for row in cached[image * 3:image * 3 + 3].tolist()}) == 3


@pytest.mark.parametrize("kind", ["uint8 arrays", "image files decoded per batch"])
def test_views_are_made_from_the_stored_uint8_pixels_then_channels_and_normalization(tmp_path, kind):
    """Grey uint8 pixels (arrays in memory, or PNG files decoded batch by batch above the memory bound): the
    view is re-made from the pixels scaled to [0, 1], then repeated to 3 channels and normalized; the
    teacher's cached logits are its output on exactly that, and training delivers exactly that."""
    if kind == "uint8 arrays":
        data = load(tmp_path, n_train=30).train
        stored = data.images
    else:
        source = open_dataset(image_folders(tmp_path, n_train=30, n_test=1) / "train", "train_dataset")
        data = decode_folders({"train": source}, Decoding([str(d) for d in range(10)], 1, memory_bytes=0))["train"]
        assert isinstance(data, LazyFiles)
        stored = decode_files(data.files, data.size, data.stored_channels, resize=data.resize, name=data.name)
    assert stored.dtype == torch.uint8 and stored.shape[1] == 1
    data.channels, data.normalization = 3, Normalization((0.2, 0.3, 0.4), (0.5, 0.6, 0.7))
    teacher = conv_net(1, classes=10)
    views = CachedViews.draw(Augmentation.of(ALL), len(data), 2, (28, 28), seed=5)

    def expected(keys, images):
        made = views.augmentation.make(views.views[keys], images.float() / 255)
        return data.normalization.apply(made.expand(-1, 3, -1, -1))
    cached = compute_view_logits(teacher, data, views, batch_size=8)
    with torch.no_grad():
        for image in (0, 17, 29):
            keys = torch.tensor([image * 2, image * 2 + 1])
            torch.testing.assert_close(cached[keys].float(), teacher(expected(keys, stored[[image, image]])),
                                       rtol=2e-3, atol=1e-3)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:8]
    keys, delivered, _ = next(data.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0),
                                           views=views.epoch(1)))
    assert torch.equal(keys, order * 2 + 1)
    torch.testing.assert_close(delivered, expected(keys, stored[order]), rtol=0, atol=1e-5)
    assert not torch.equal(delivered, data.normalization.apply(stored[order].float().div(255).expand(-1, 3, -1, -1)))


def test_training_cycles_through_the_views_against_their_own_logits():
    """Epoch e of the run (over rounds) trains every image on view e mod K, re-made from the stored image; a
    student taught from the cached logits ends where one taught by the teacher on those pixels ends."""
    data, teacher = dataset(24), Float16Outputs(conv_net(1))
    views = CachedViews.draw(Augmentation.of(ALL), len(data), 3, (12, 14), seed=0)
    config = KDConfig(batch_size=24, learning_rate=0.01, alpha=0.7)   # one batch an epoch
    seen = []
    cached, online = conv_net(2), conv_net(2)
    cached.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    logits = compute_view_logits(teacher, data, views)
    for round_index in range(2):
        train_local(cached, data, config, epochs=2, teacher_logits=logits, views=views, round_index=round_index)
        train_local(online, data, config, epochs=2, teacher=teacher, views=views, round_index=round_index)
    for number, pixels in enumerate(seen):   # epochs 0..3 of the run: views 0, 1, 2, 0
        order = torch.randperm(len(data), generator=epoch_generator(config.seed, number // 2, number % 2))
        keys = order * 3 + number % 3
        assert torch.equal(pixels, views.augmentation.make(views.views[keys], data.images[order]))
    assert not torch.equal(seen[0], seen[1])
    for name, tensor in cached.state_dict().items():
        torch.testing.assert_close(tensor, online.state_dict()[name], rtol=1e-4, atol=1e-6)


def test_online_teaching_runs_the_teacher_on_a_fresh_view_every_epoch_and_is_reproducible():
    data = dataset(24)
    config = KDConfig(batch_size=8, learning_rate=0.01, augment=["crop", "color"], teacher_views=0, seed=3)
    students = []
    for seed in (3, 3, 4):
        teacher, student = conv_net(1), conv_net(2)
        taught, learnt = [], []
        teacher.register_forward_pre_hook(lambda module, inputs, taught=taught: taught.append(inputs[0].clone()))
        student.register_forward_pre_hook(lambda module, inputs, learnt=learnt: learnt.append(inputs[0].clone()))
        teaching = prepare_teaching(teacher, data, config.model_copy(update={"seed": seed}))
        assert isinstance(teaching.views, FreshViews) and teaching.logits is None and not taught
        train_local(student, data, config.model_copy(update={"seed": seed}), epochs=2, **teaching.targets(),
                    views=teaching.views)
        assert len(taught) == len(learnt) == 6 and all(torch.equal(a, b) for a, b in zip(taught, learnt))
        students.append(student.state_dict())
    first_epoch, second_epoch = (torch.cat(learnt[:3]), torch.cat(learnt[3:]))
    assert first_epoch.shape == second_epoch.shape and not torch.equal(first_epoch.sum(0), second_epoch.sum(0))
    assert all(torch.equal(value, students[1][name]) for name, value in students[0].items())
    assert not all(torch.equal(value, students[2][name]) for name, value in students[0].items())


def test_without_augment_the_logits_are_cached_once_per_image_as_before():
    data, teacher = dataset(20), conv_net(1)
    teaching = prepare_teaching(teacher, data, KDConfig())
    assert teaching.views is None and teaching.teacher is None
    assert teaching.logits.dtype == torch.float32 and teaching.logits.shape == (20, 3)
    with torch.no_grad():
        torch.testing.assert_close(teaching.logits, teacher(data.images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("teacher_views", [2, 0])
def test_a_site_trains_student_and_baseline_on_views_and_never_augments_test_images(tmp_path, teacher_views):
    site = load(tmp_path, n_train=300, max_iter=2, baseline=True, augment=["crop", "color"],
                teacher_views=teacher_views)
    lines = []
    site._log = lines.append
    site.adopt_plan(site.make_plan())
    evaluated, trained, teacher_calls = {name: [] for name in site.models}, {name: [] for name in site.models}, []
    for name, model in site.models.items():   # trained on views, evaluated on the test images as they are
        model.register_forward_pre_hook(lambda module, inputs, name=name: (
            trained if module.training else evaluated)[name].append(inputs[0].clone()))
    site.teacher.register_forward_hook(lambda module, inputs, output: teacher_calls.append(len(inputs[0])))
    site.prepare_teacher()
    cached = 300 * teacher_views
    assert sum(teacher_calls) == cached + len(site.test)
    start = {name: {k: v.clone() for k, v in model.state_dict().items()} for name, model in site.models.items()}
    for _ in range(2):
        site.apply_global(site.aggregate([site.train_round()], sites=1))
    # online: the teacher ran on each training batch of each round; cached: never again
    assert sum(teacher_calls) == cached + len(site.test) + (2 * 300 if teacher_views == 0 else 0)
    for name, model in site.models.items():
        assert torch.equal(torch.cat(evaluated[name]), torch.cat([site.test.float_images()] * 2))
        assert any(not torch.equal(value, start[name][key]) for key, value in model.state_dict().items())
    # the baseline trained on exactly the student's views, batch by batch, which are not the images as they are
    assert torch.equal(torch.cat(trained["student"]), torch.cat(trained["baseline"]))
    first = trained["student"][0]
    order = torch.randperm(300, generator=epoch_generator(site.config.seed, 0, 0))[:len(first)]
    assert first.shape == site.train.float_images()[order].shape
    assert not torch.equal(first, site.train.float_images()[order])
    assert [r["round"] for r in site.rounds] == [1, 2]
    assert site.rounds[-1]["accuracy"] > 0.25 and site.rounds[-1]["baseline_accuracy"] > 0.25   # chance: 0.1
    teacher_line = next(line for line in lines if line.startswith("teacher: test accuracy"))
    if teacher_views:
        assert ("augment crop, color: logits of 2 views of each training image cached in" in teacher_line
                and "300 images × 2 views × 10 classes × 2 bytes = 11.7 KB of float16 teacher logits, plus "
                    "7.6 KB of view parameters (13 bytes per view)" in teacher_line)
    else:
        assert "online teaching (teacher_views 0)" in teacher_line
    assert math.isfinite(site.rounds[-1]["train_loss"])


def test_same_seed_same_student_on_cached_views(tmp_path):
    students = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        site = load(tmp_path / run, n_train=200, max_iter=1, augment=list(ALL), teacher_views=2, seed=seed)
        site.adopt_plan(site.make_plan())
        site.prepare_teacher()
        site.apply_global(site.aggregate([site.train_round()], sites=1))
        students.append(site.student.state_dict())
    assert all(torch.equal(value, students[1][name]) for name, value in students[0].items())
    assert not all(torch.equal(value, students[2][name]) for name, value in students[0].items())
