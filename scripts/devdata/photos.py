"""Photo-like images of MNIST digits: a coloured digit on a coloured, shaded, noisy background, of a
random non-square size, saved as a JPEG or PNG file in one of the modes real image folders hold, some
JPEGs stored turned as a camera held sideways stores them, with the EXIF orientation that turns them upright.

The digit (MNIST's 28 x 28 box) fills 80-100% of the image's centred square, somewhere inside
it, so resizing the shorter side and centre-cropping (what the app's `image_size` does) never cuts
it; smaller digits would leave strokes of a pixel at 32 px. Its colour differs from the
background's in luminance, so it stays readable in grayscale too.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112
# How a file with each EXIF orientation stores an upright image: the inverse of what a viewer does
# (3: turn 180 degrees, 6: turn 90 degrees clockwise, 8: turn 90 degrees anticlockwise).
STORED_TURNED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)   # ITU-R 601, as PIL's convert("L")
MIN_CONTRAST = 90   # luminance difference, 0..255, between the digit and any part of the background
NOISE = 4.0         # standard deviation of the pixel noise, 0..255


@dataclass(frozen=True)
class Kind:
    """How a photo is stored: PIL mode and file format."""

    name: str
    mode: str
    format: str
    suffix: str
    share: float
    rotated: bool = False   # stored turned, with the EXIF orientation that shows it upright


# Mostly colour JPEGs, as cameras and archives write them; the other modes real folders mix in.
KINDS = (
    Kind("rgb-jpeg", "RGB", "JPEG", ".jpg", 0.34),
    Kind("rotated-jpeg", "RGB", "JPEG", ".jpg", 0.06, rotated=True),
    Kind("rgb-jpeg-upper", "RGB", "JPEG", ".JPG", 0.05),
    Kind("rgb-png", "RGB", "PNG", ".png", 0.15),
    Kind("gray-jpeg", "L", "JPEG", ".jpg", 0.07),
    Kind("gray-png", "L", "PNG", ".png", 0.08),
    Kind("rgba-png", "RGBA", "PNG", ".png", 0.12),
    Kind("palette-png", "P", "PNG", ".png", 0.13),
)


def random_kind(rng: np.random.Generator) -> Kind:
    return KINDS[rng.choice(len(KINDS), p=[kind.share for kind in KINDS])]


def render(digit: np.ndarray, rng: np.random.Generator, sizes: tuple[int, int] = (40, 120),
           transparent: bool = False) -> Image.Image:
    """One photo of ``digit`` (MNIST uint8 [28, 28]): RGB, or RGBA with a see-through background
    whose colour, seen on white, still contrasts with the digit."""
    height, width = _size(rng, sizes)
    side = min(height, width)
    box = max(8, round(side * rng.uniform(0.8, 1.0)))
    top = (height - side) // 2 + int(rng.integers(0, side - box + 1))
    left = (width - side) // 2 + int(rng.integers(0, side - box + 1))

    while True:   # a background the digit can contrast with (mid-grey ones leave no room)
        background = _shaded_background(height, width, rng)
        opacity = rng.uniform(0.6, 0.9) if transparent else 1.0
        seen = (opacity * background + (1 - opacity) * 255) @ LUMA   # luminance on white
        if seen.min() >= MIN_CONTRAST or seen.max() <= 255 - MIN_CONTRAST:
            break
    ink = _ink(float(seen.min()), float(seen.max()), rng)
    mask = np.zeros((height, width), dtype=np.float32)
    mask[top:top + box, left:left + box] = np.asarray(
        Image.fromarray(digit).resize((box, box), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    pixels = background * (1 - mask[..., None]) + ink * mask[..., None]
    pixels = np.clip(pixels + NOISE * rng.standard_normal(pixels.shape, dtype=np.float32), 0, 255).astype(np.uint8)
    if not transparent:
        return Image.fromarray(pixels, "RGB")
    alpha = np.round(255 * np.maximum(opacity, mask)).astype(np.uint8)
    return Image.fromarray(np.dstack([pixels, alpha]), "RGBA")


def photo_file(digit: np.ndarray, rng: np.random.Generator, kind: Kind, sizes: tuple[int, int] = (40, 120)) -> bytes:
    """The bytes of a ``kind`` file showing ``digit``."""
    image = render(digit, rng, sizes, transparent=kind.mode == "RGBA")
    if kind.mode == "L":
        image = image.convert("L")
    elif kind.mode == "P":
        image = image.quantize(colors=int(rng.integers(16, 65)), method=Image.Quantize.FASTOCTREE)
    options = {"quality": int(rng.integers(75, 96))} if kind.format == "JPEG" else {"compress_level": 3}
    if kind.rotated:
        orientation = list(STORED_TURNED)[int(rng.integers(len(STORED_TURNED)))]
        return turned_file(image, orientation, **options)
    buffer = io.BytesIO()
    image.save(buffer, format=kind.format, **options)
    return buffer.getvalue()


def turned_file(image: Image.Image, orientation: int, **options: int) -> bytes:
    """A JPEG file of ``image`` stored turned, with the EXIF ``orientation`` (3, 6 or 8) that shows it
    upright again."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    image.transpose(STORED_TURNED[orientation]).save(buffer, format="JPEG", exif=exif, **options)
    return buffer.getvalue()


def _size(rng: np.random.Generator, sizes: tuple[int, int]) -> tuple[int, int]:
    low, high = sizes
    while True:
        height, width = (int(n) for n in rng.integers(low, high + 1, size=2))
        if height != width or low == high:
            return height, width


def _shaded_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [H, W, 3]: a colour shading linearly into a similar one, as under uneven light."""
    start = rng.uniform(0, 255, size=3)
    end = np.clip(start + rng.uniform(-40, 40, size=3), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    along = (np.cos(angle) * np.arange(width, dtype=np.float32)[None, :] / width
             + np.sin(angle) * np.arange(height, dtype=np.float32)[:, None] / height)
    along = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    return (start + along[..., None] * (end - start)).astype(np.float32)


def _ink(darkest: float, brightest: float, rng: np.random.Generator) -> np.ndarray:
    """A random colour whose luminance is at least MIN_CONTRAST below ``darkest`` or above ``brightest``."""
    sides = [side for side, fits in (("dark", darkest >= MIN_CONTRAST), ("bright", brightest <= 255 - MIN_CONTRAST))
             if fits]
    colour = rng.uniform(0, 255, size=3)
    value = float(colour @ LUMA)
    if sides[int(rng.integers(len(sides)))] == "dark":
        target = rng.uniform(0, darkest - MIN_CONTRAST)
        if value > target:   # darken, keeping the hue
            colour = colour * (target / value)
    else:
        target = rng.uniform(brightest + MIN_CONTRAST, 255)
        if value < target:   # lighten towards white, keeping the hue
            colour = 255 - (255 - colour) * ((255 - target) / (255 - value))
    return colour.astype(np.float32)
