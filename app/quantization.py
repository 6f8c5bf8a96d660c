"""The int8 student: ``student.onnx`` quantized with onnxruntime and measured against the float model.

Static quantization in QDQ form: int8 weights, one scale per output channel, and uint8
activations whose ranges are calibrated (min/max) on a few hundred of the site's own
training images. The images never leave the site; only the resulting figures do. The
float graph is quantized as it was exported, nothing is re-exported: the int8 model takes
exactly the float model's input (name, shape, type, scaling; a normalization inside the
graph stays inside it).

Like the other exports, a model that cannot be quantized is reported in the returned dict,
never raised: it must not cost the run's other results.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from app.errors import first_line
from app.files import write_bytes
from app.profile import onnx_latency

# Min/max ranges of a few hundred images are as good as those of thousands for the ranges
# activations take; calibration time and the site's wait grow with the count.
CALIBRATION_SAMPLES = 256
FEW_CALIBRATION_SAMPLES = 100   # below this, report.md warns that the ranges rest on few images
CALIBRATION_BATCH = 32   # the calibrator keeps only each batch's min and max: memory is that of one batch
CHECK_BATCH = 256
# onnxruntime's quantizer advises pre-processing (symbolic shape inference and graph
# optimization: seconds per model, for speed-ups the exporter's constant folding mostly
# already gives); its other warnings are kept and reported.
_ADVICE = "pre-processing"


def quantize_int8(float_model: bytes, calibration: np.ndarray, notes: list[str]) -> bytes:
    """``float_model`` (ONNX bytes) statically quantized to int8, calibrated on ``calibration``
    (images as the float model takes them); what the quantizer warned about goes into ``notes``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load_model_from_string(float_model)
    reader = _CalibrationReader(model.graph.input[0].name, calibration)
    with tempfile.TemporaryDirectory(prefix="kd-int8-") as folder, _quantizer_warnings(notes):
        path = Path(folder) / "student_int8.onnx"
        quantize_static(model, path, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return path.read_bytes()


def export_int8(float_path: Path, calibration: np.ndarray,
                test: Iterable[tuple[np.ndarray, np.ndarray]], path: Path) -> dict:
    """Quantize the ONNX file at ``float_path`` into ``path``, then run both models with
    onnxruntime (same session options) on the ``test`` batches of (images, labels).

    The int8 file is written whenever onnxruntime can run it on the test batches, whatever its
    accuracy: the returned dict says how it compares (accuracy, agreement with the float
    model, size on disk, latency at batch 1 and 256) and report.md recommends one of the two.
    A model the quantizer or onnxruntime cannot handle is not written; the dict says why.
    """
    if not float_path.is_file():
        return {"exported": False, "error": f"{float_path.name} was not exported, so there is nothing to quantize"}
    float_model = float_path.read_bytes()
    notes: list[str] = []
    step = f"onnxruntime could not quantize {float_path.name}"
    try:
        int8_model = quantize_int8(float_model, calibration, notes)
        step = "onnxruntime cannot run the int8 model"
        float_session, int8_session = _sessions(float_model, int8_model)
        checked = _compare(float_session, int8_session, test)
        latency = onnx_latency({"float": float_session, "int8": int8_session}, calibration.shape[1:])
    except Exception as error:  # noqa: BLE001 — any quantizer or runtime failure is reported the same way
        return {"exported": False, "calibration_samples": len(calibration),
                "error": f"{step}: {type(error).__name__}: {first_line(error)}",
                **({"quantizer_warnings": notes} if notes else {})}
    write_bytes(path, int8_model)
    float_onnx = {"accuracy": checked.pop("float_accuracy"), "size_bytes": len(float_model), **latency["float"]}
    result = {"exported": True, "calibration_samples": len(calibration), **checked,
              "size_bytes": len(int8_model), **latency["int8"], "float_onnx": float_onnx}
    if notes:
        result["quantizer_warnings"] = notes
    return result


def _compare(float_session, int8_session, test: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Accuracy of both models on the test batches and how often their predictions agree."""
    name = float_session.get_inputs()[0].name
    samples = float_correct = int8_correct = agreeing = 0
    for images, labels in test:
        float_predictions = float_session.run(None, {name: images})[0].argmax(1)
        int8_predictions = int8_session.run(None, {name: images})[0].argmax(1)
        samples += len(labels)
        float_correct += int((float_predictions == labels).sum())
        int8_correct += int((int8_predictions == labels).sum())
        agreeing += int((float_predictions == int8_predictions).sum())
    return {"test_samples": samples, "accuracy": int8_correct / samples, "float_accuracy": float_correct / samples,
            "agreement": agreeing / samples}


def _sessions(*models: bytes) -> list:
    """onnxruntime CPU sessions of ``models``, all with the same options: one thread, the
    caller's, so that latency is one core's work, measurable in that thread's CPU time
    (``onnx_latency``) however busy the machine is with other sites or programs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return [onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"]) for model in models]


class _CalibrationReader:
    """What quantize_static asks for calibration: one input feed per call, None at the end."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self._feeds: Iterator[dict] = ({input_name: np.ascontiguousarray(images[start:start + CALIBRATION_BATCH])}
                                       for start in range(0, len(images), CALIBRATION_BATCH))

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


@contextmanager
def _quantizer_warnings(collected: list[str]) -> Iterator[None]:
    """Collect what onnxruntime's quantizer says through the root logger and Python warnings
    (numpy's, on NaN activations) instead of letting it print into the site's log in other
    formats (or install a root handler of its own)."""
    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if record.levelno >= logging.WARNING and _ADVICE not in message:
                collected.append(message)

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [Collect()]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        root.handlers = saved
        collected += list(dict.fromkeys(f"{warning.category.__name__}: {warning.message}" for warning in caught))
