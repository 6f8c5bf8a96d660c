"""The student as deployment formats: TorchScript and ONNX, the ONNX one checked with onnxruntime.

Both take what a deployment has, images scaled to [0, 1]: the run's normalization, if any,
is the first layer of the exported graph (``deployable``)."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from app.errors import OutputError, first_line
from app.files import atomic_write, write_bytes
from app.normalization import Normalization, Normalize


def deployable(model: nn.Module, normalization: Normalization | None) -> nn.Module:
    """``model`` taking [0, 1] images: preceded by the normalization when the run used one."""
    return model if normalization is None else nn.Sequential(Normalize(normalization), model)


# The exports below take a CPU model and are reported in the returned dict, never raised:
# a model an exporter cannot handle must not cost the run's other results.

def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> dict:
    """A TorchScript file runnable without the model's Python source (traced on ``example``)."""
    model.eval()
    # TorchScript is deprecated in favour of torch.export but is still what most
    # deployment stacks load; the warning would only confuse users reading the log.
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model, example, check_trace=False)
            atomic_write(path, lambda handle: torch.jit.save(traced, handle))
    except OutputError:
        raise   # the disk, not the model: every other output fails alike
    except Exception as error:  # noqa: BLE001 — any tracing failure is reported the same way
        return {"exported": False, "error": f"{type(error).__name__}: {first_line(error)}"}
    return {"exported": True}


def export_onnx(model: nn.Module, images: torch.Tensor, path: Path) -> dict:
    """Export to ONNX (dynamic batch size) and check it: onnxruntime's predictions on ``images``
    against PyTorch's.

    The file is written whenever onnxruntime can load and run it, also when the check finds
    different predictions: the returned dict (and so report.md) says how far apart they are.
    A model the exporter or onnxruntime cannot handle is not written; the dict says why."""
    model.eval()
    buffer = io.BytesIO()
    try:
        # The TorchScript-based exporter: fast (well under a second for small models)
        # and without the dynamo exporter's extra dependencies.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (images[:1],), buffer, dynamo=False, input_names=["images"],
                              output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        import onnxruntime   # only needed here; keeps start-up light

        session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        onnx_logits = session.run(None, {"images": images.numpy()})[0]
    except Exception as error:  # noqa: BLE001 — any exporter or runtime failure is reported the same way
        return {"exported": False, "error": f"{type(error).__name__}: {first_line(error)}"}
    write_bytes(path, buffer.getvalue())
    with torch.no_grad():
        torch_logits = model(images).float().numpy()
    return {"exported": True, "checked_samples": len(images),
            "max_abs_difference": float(abs(onnx_logits - torch_logits).max()),
            "same_predictions": bool((onnx_logits.argmax(1) == torch_logits.argmax(1)).all())}
