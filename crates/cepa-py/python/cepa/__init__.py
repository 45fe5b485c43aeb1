"""cepa: does an image classifier carry a backdoor, which class does it target, and what does
its trigger look like.

The same detector as the ``cepa`` command (CEPA, the consensus-embedded-perturbation detector,
combined with Neural Cleanse by default), called with numpy arrays::

    import cepa
    images, labels = cepa.load_images("examples/mnist-badnets/images")
    report = cepa.scan("examples/mnist-badnets/model.onnx", images, labels)
    report.verdict, report.target, report.score      # ('backdoored', 0, 1.98...)
    report.trigger                                     # (C, H, W) float32, for a flagged model

``model`` is an ONNX file (path or bytes) or a ``torch.nn.Module`` (exported to ONNX inside;
torch is imported only then). ``images`` is a numpy array (N, H, W), (N, H, W, C) or
(N, C, H, W), uint8 (0..255) or float in [0, 1], or a path the command's readers accept (IDX,
CIFAR binary batches, an ImageFolder, .npy). Errors raise :class:`CepaError` with the command's
one-line message. The computation releases the GIL, and Ctrl-C stops it.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import CepaError

__all__ = [
    "CepaError",
    "Inspection",
    "Inversion",
    "Report",
    "inspect",
    "invert",
    "load_images",
    "scan",
    "__version__",
]

__version__: str = _native.__version__

PathLike = Union[str, "os.PathLike[str]"]
Model = Union[PathLike, bytes, Any]
Images = Union[np.ndarray, PathLike]
Floats = Union[float, Sequence[float], None]


class Report:
    """A scan's report: ``report.json`` of ``cepa scan --out``, as attributes.

    The top-level ``verdict``, ``target``, ``score`` and ``threshold`` are those of the verdict
    that decides (the combined one under the default ``verdict="agree"``); CEPA's own is under
    ``to_dict()["cepa"]``, Neural Cleanse's under ``to_dict()["baseline_nc"]``.
    """

    def __init__(self, data: Dict[str, Any], trigger: Optional[np.ndarray] = None,
                 mask: Optional[np.ndarray] = None) -> None:
        self._data = data
        self.trigger: Optional[np.ndarray] = trigger
        """The estimated trigger (C, H, W), float32, when stage 2 ran (a flagged model)."""
        self.mask: Optional[np.ndarray] = mask
        """The trigger's mask (H, W) in [0, 1] for a mask-and-pattern trigger."""

    @property
    def verdict(self) -> str:
        """``"backdoored"`` or ``"clean"``."""
        return self._data["verdict"]

    @property
    def backdoored(self) -> bool:
        """Whether the verdict is backdoored."""
        return self._data["verdict"] == "backdoored"

    @property
    def target(self) -> Optional[int]:
        """The class the backdoor targets (``None`` for a clean verdict)."""
        return self._data.get("target")

    @property
    def score(self) -> float:
        """The deciding score (backdoored above ``threshold``)."""
        return self._data["score"]

    @property
    def threshold(self) -> float:
        """The threshold the score is compared with."""
        return self._data["threshold"]

    @property
    def p_value(self) -> Optional[float]:
        """CEPA's p-value of the target (``None`` under a combined verdict)."""
        return self._data.get("p_value")

    @property
    def classes(self) -> List[Dict[str, Any]]:
        """Per class: its anomaly index and statistics (CEPA's decision)."""
        return self._data["decision"]["classes"]

    @property
    def verdict_rule(self) -> str:
        """Which verdict decided: ``agree``, ``either`` or ``cepa``."""
        return self._data["verdict_rule"]

    def to_dict(self) -> Dict[str, Any]:
        """The whole report (what ``report.json`` holds)."""
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __repr__(self) -> str:
        target = "" if self.target is None else f", target={self.target}"
        return (f"Report(verdict={self.verdict!r}{target}, score={self.score:.3f}, "
                f"threshold={self.threshold:.3f}, rule={self.verdict_rule!r})")


class Inversion:
    """Stage 2's estimate of a class's trigger (``cepa invert``)."""

    def __init__(self, data: Dict[str, Any], trigger: np.ndarray,
                 mask: Optional[np.ndarray]) -> None:
        self._data = data
        self.trigger: np.ndarray = trigger
        """The trigger (C, H, W), float32: an additive perturbation, or the pattern."""
        self.mask: Optional[np.ndarray] = mask
        """The mask (H, W) in [0, 1] of a mask-and-pattern trigger, else ``None``."""

    @property
    def target(self) -> int:
        return self._data["inversion"]["target"]

    @property
    def kind(self) -> str:
        """``additive`` or ``mask_pattern``."""
        return self._data["inversion"]["kind"]

    @property
    def asr(self) -> Optional[float]:
        """Attack success on held-out clean images of other classes."""
        return self._data["inversion"].get("asr")

    def to_dict(self) -> Dict[str, Any]:
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __repr__(self) -> str:
        asr = self.asr
        asr_text = "None" if asr is None else f"{asr:.3f}"
        return f"Inversion(target={self.target}, kind={self.kind!r}, asr={asr_text})"


class Inspection:
    """What a model is and how it is read (``cepa inspect``)."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self._data = data

    @property
    def num_classes(self) -> int:
        return self._data["num_classes"]

    @property
    def accuracy(self) -> Optional[float]:
        """Accuracy on the given images, when images were given."""
        return self._data.get("accuracy")

    @property
    def layers(self) -> List[Dict[str, Any]]:
        """Every layer the detector can work at (``candidate``) and its shape."""
        return self._data["layers"]

    @property
    def spec(self) -> Dict[str, Any]:
        """How the model is read: layout, mean/std, output kind, input size, classes."""
        return self._data["spec"]

    def to_dict(self) -> Dict[str, Any]:
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __repr__(self) -> str:
        acc = self.accuracy
        acc_text = "" if acc is None else f", accuracy={acc:.4f}"
        return f"Inspection(num_classes={self.num_classes}{acc_text})"


def load_images(path: PathLike, split: str = "test") -> Tuple[np.ndarray, np.ndarray]:
    """Read images the ``cepa`` command reads (IDX, CIFAR binary batches, an ImageFolder, .npy).

    Returns ``(images, labels)``: float32 (N, C, H, W) in [0, 1] and int64 (N,).
    """
    raw, labels, shape, _classes = _native.load_images(os.fspath(path), split)
    images = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32, copy=False)
    return images, np.asarray(labels, dtype=np.int64)


def scan(model: Model, images: Images, labels: Optional[np.ndarray] = None, *,
         per_class: int = 10, seed: int = 0, layout: Optional[str] = None,
         mean: Floats = None, std: Floats = None, output: str = "auto",
         baseline: Optional[str] = None, verdict: Optional[str] = None,
         out: Optional[PathLike] = None, invert: bool = True,
         num_classes: Optional[int] = None, config: Optional[PathLike] = None,
         layer: str = "auto", steps: Optional[int] = None, threshold: Optional[float] = None,
         holdout_per_class: Optional[int] = None, screen: Optional[bool] = None,
         split: str = "test", device: str = "cpu",
         reference: Sequence[PathLike] = ()) -> Report:
    """Decide whether ``model`` is backdoored and which class the backdoor targets (``cepa scan``).

    Args:
        model: an ONNX file (path or bytes) or a ``torch.nn.Module``.
        images: clean images, (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 or float in
            [0, 1]; or a path the command reads (then ``labels`` come from it).
        labels: the images' classes (1-D integers); ``None`` labels them with the model's own
            predictions.
        per_class: clean images per class that are optimised.
        seed: seed of the sampling and the initial perturbations (same seed, same report).
        layout: the model's input layout, ``"nchw"`` or ``"nhwc"`` (default: detected).
        mean, std: the model takes ``(pixel/255 - mean) / std`` (one value or one per channel).
        output: ``"logits"``, ``"probs"`` or ``"auto"`` (a trailing Softmax means probs).
        baseline: ``"nc"`` runs Neural Cleanse beside CEPA under ``verdict="cepa"``.
        verdict: ``"agree"`` (the default: CEPA and Neural Cleanse combined), ``"either"`` or
            ``"cepa"`` (CEPA alone).
        out: a folder for report.json, report.html and the pictures.
        invert: estimate the trigger of a flagged model (``Report.trigger``).
        num_classes: checked against the model's output.
        config: a settings file (TOML), as ``cepa scan --config``.
        layer: the layer(s) to work at by ONNX tensor name (comma-separated), or ``"auto"``.
        steps: optimisation steps per class.
        threshold: CEPA's threshold, applied as given.
        holdout_per_class: held-out clean images per class.
        screen: screening of a model with many classes (on by default from 20 classes);
            ``False`` runs the full scan of every class.
        split: which split of a dataset folder ``images`` names.
        device: ``"cpu"``, or ``"cuda"`` / ``"cuda:N"`` in a build with the ``cuda`` feature.
        reference: JSON reports of scans of clean models of the same task (``report.json``, or
            ``json.dumps(Report.to_dict())``): each class's CEPA index beside their mean, under
            ``to_dict()["reference"]`` (``cepa scan --reference``); the verdict does not use it.

    Raises:
        CepaError: the model cannot be read, the images do not fit it, a label is beyond its
            classes, a reference is not a scan of as many classes, ... (the command's one-line
            message).
    """
    opts: Dict[str, Any] = dict(
        per_class=_count("per_class", per_class), seed=_count("seed", seed),
        verdict=verdict, baseline=baseline, invert=bool(invert), layer=layer, steps=steps,
        threshold=threshold, holdout_per_class=holdout_per_class, screen=screen,
        config=None if config is None else os.fspath(config),
        out=None if out is None else os.path.abspath(os.fspath(out)),
        reference=[os.path.abspath(os.fspath(r)) for r in (
            [reference] if isinstance(reference, (str, bytes, os.PathLike)) else reference)],
    )
    with _model_file(model, images, layout) as path:
        pixels = _images(opts, images, labels, split)
        opts.update(_spec(layout, mean, std, output, num_classes, device))
        text, trigger = _native.scan(path, json.dumps(opts), pixels)
    data = json.loads(text)
    t, m = _trigger(trigger)
    return Report(data, t, m)


def invert(model: Model, images: Images, labels: Optional[np.ndarray] = None, *, target: int,
           per_class: int = 10, seed: int = 0, layout: Optional[str] = None,
           mean: Floats = None, std: Floats = None, output: str = "auto",
           kind: str = "auto", steps: Optional[int] = None, out: Optional[PathLike] = None,
           num_classes: Optional[int] = None, config: Optional[PathLike] = None,
           holdout_per_class: Optional[int] = None, split: str = "test",
           device: str = "cpu") -> Inversion:
    """Estimate the trigger that sends clean images to ``target`` (``cepa invert``).

    ``kind``: ``"auto"`` (both forms, the cheaper kept), ``"additive"`` or ``"mask-pattern"``.
    The other arguments are those of :func:`scan`.
    """
    opts: Dict[str, Any] = dict(
        target=_count("target", target), per_class=_count("per_class", per_class),
        seed=_count("seed", seed), kind=kind, steps=steps, holdout_per_class=holdout_per_class,
        config=None if config is None else os.fspath(config),
        out=None if out is None else os.path.abspath(os.fspath(out)),
    )
    with _model_file(model, images, layout) as path:
        pixels = _images(opts, images, labels, split)
        opts.update(_spec(layout, mean, std, output, num_classes, device))
        text, trigger = _native.invert(path, json.dumps(opts), pixels)
    t, m = _trigger(trigger)
    assert t is not None
    return Inversion(json.loads(text), t, m)


def inspect(model: Model, images: Optional[Images] = None, labels: Optional[np.ndarray] = None,
            *, layout: Optional[str] = None, mean: Floats = None, std: Floats = None,
            output: str = "auto", num_classes: Optional[int] = None,
            limit: Optional[int] = None, split: str = "test", device: str = "cpu") -> Inspection:
    """What the model is, how it is read, its layers, and (with labelled images) its accuracy."""
    opts: Dict[str, Any] = dict(limit=limit)
    with _model_file(model, images, layout) as path:
        pixels = None if images is None else _images(opts, images, labels, split)
        opts.update(_spec(layout, mean, std, output, num_classes, device))
        text = _native.inspect(path, json.dumps(opts), pixels)
    return Inspection(json.loads(text))


# ---------------------------------------------------------------------------------------------
# Checks and conversions, all before any compute.


def _count(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise CepaError(f"{name} must be a non-negative integer, not {v!r}")
    return int(v)


def _floats(name: str, v: Floats) -> Optional[List[float]]:
    if v is None:
        return None
    arr = np.atleast_1d(np.asarray(v, dtype=np.float64))
    if arr.ndim != 1 or arr.size not in (1, 3) or not np.all(np.isfinite(arr)):
        raise CepaError(f"{name} must be one finite number or one per channel, not {v!r}")
    return [float(x) for x in arr]


def _spec(layout: Optional[str], mean: Floats, std: Floats, output: str,
          num_classes: Optional[int], device: str) -> Dict[str, Any]:
    if layout is not None and layout.lower() not in ("nchw", "nhwc"):
        raise CepaError(f"layout must be 'nchw' or 'nhwc', not {layout!r}")
    if output not in ("auto", "logits", "probs"):
        raise CepaError(f"output must be 'auto', 'logits' or 'probs', not {output!r}")
    if not isinstance(device, str):
        raise CepaError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    return dict(layout=layout, mean=_floats("mean", mean), std=_floats("std", std),
                output=output, num_classes=num_classes, device=device)


def _to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) as float32 (N, C, H, W) in [0, 1]."""
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim == 4:
        first, last = images.shape[1] in (1, 3), images.shape[3] in (1, 3)
        if last and not first:
            images = images.transpose(0, 3, 1, 2)
        elif not first:
            raise CepaError(
                f"images: shape {images.shape} has neither 1 or 3 channels second (N, C, H, W) "
                "nor last (N, H, W, C)")
    else:
        raise CepaError(
            f"images: shape {images.shape} is not (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if images.shape[0] == 0:
        raise CepaError("images: the array holds no images")
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0)
    if not np.issubdtype(images.dtype, np.floating):
        raise CepaError(
            f"images: dtype {images.dtype} is neither uint8 (0..255) nor float in [0, 1]")
    out = np.ascontiguousarray(images, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise CepaError("images: the array holds NaN or infinite values")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        raise CepaError(
            f"images: float pixels must lie in [0, 1], these lie in [{lo:.3g}, {hi:.3g}] "
            "(divide uint8-range values by 255)")
    return out


def _images(opts: Dict[str, Any], images: Images, labels: Optional[np.ndarray],
            split: str) -> Optional[bytes]:
    """Put the images into ``opts`` (a path) or return their float32 bytes (an array)."""
    if isinstance(images, (str, os.PathLike)):
        if labels is not None:
            raise CepaError("labels come from the dataset when images is a path; pass labels=None")
        opts.update(data=os.fspath(images), split=split)
        return None
    x = _to_nchw(images)
    n = x.shape[0]
    if labels is not None:
        lab = np.asarray(labels)
        if lab.ndim != 1 or lab.shape[0] != n:
            raise CepaError(f"labels: shape {lab.shape} does not match {n} images (want ({n},))")
        if lab.dtype == np.bool_ or not np.issubdtype(lab.dtype, np.integer):
            raise CepaError(f"labels: dtype {lab.dtype} is not an integer type")
        if n and lab.min() < 0:
            raise CepaError(f"labels: label {int(lab.min())} is negative")
        opts["labels"] = [int(v) for v in lab]
    opts["shape"] = list(x.shape)
    return x.astype("<f4", copy=False).tobytes()


def _trigger(t: Optional[Tuple[Sequence[float], Optional[Sequence[float]], Sequence[int]]]
             ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    if t is None:
        return None, None
    values, mask, shape = t
    c, h, w = shape
    trigger = np.asarray(values, dtype=np.float32).reshape(c, h, w)
    m = None if mask is None else np.asarray(mask, dtype=np.float32).reshape(h, w)
    return trigger, m


class _model_file:
    """The model as a file the native side reads: a path as given, bytes or a torch module
    written to a temporary file (removed afterwards)."""

    def __init__(self, model: Model, images: Optional[Images], layout: Optional[str]) -> None:
        self.model, self.images, self.layout = model, images, layout
        self.tmp: Optional[str] = None

    def __enter__(self) -> str:
        m = self.model
        if isinstance(m, (str, os.PathLike)):
            return os.fspath(m)
        if isinstance(m, (bytes, bytearray, memoryview)):
            return self._write(bytes(m))
        if _is_torch_module(m):
            return self._export(m)
        raise CepaError(
            f"model must be an ONNX path, ONNX bytes or a torch.nn.Module, not {type(m).__name__}")

    def _write(self, data: bytes) -> str:
        fd, self.tmp = tempfile.mkstemp(prefix="cepa-", suffix=".onnx")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self.tmp

    def _export(self, module: Any) -> str:
        import torch  # optional: only a torch model needs it

        if self.images is None or isinstance(self.images, (str, os.PathLike)):
            raise CepaError("a torch model needs images as an array (its input shape comes from them)")
        x = _to_nchw(self.images)
        c, h, w = x.shape[1:]
        shape = (1, h, w, c) if (self.layout or "nchw").lower() == "nhwc" else (1, c, h, w)
        fd, self.tmp = tempfile.mkstemp(prefix="cepa-torch-", suffix=".onnx")
        os.close(fd)
        was_training = module.training
        module.eval()
        try:
            dummy = torch.zeros(shape, dtype=torch.float32)
            kwargs: Dict[str, Any] = dict(
                input_names=["input"], output_names=["output"], opset_version=17,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
            with warnings.catch_warnings():
                # torch >= 2.9 warns that the TorchScript exporter is the legacy one; it is the
                # one that keeps the batch dimension dynamic without extra packages.
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    torch.onnx.export(module, (dummy,), self.tmp, dynamo=False, **kwargs)
                except TypeError:  # torch < 2.5 has no `dynamo` argument
                    torch.onnx.export(module, (dummy,), self.tmp, **kwargs)
        except Exception as e:  # noqa: BLE001 - any export failure is the user's to see
            raise CepaError(f"cannot export the torch model to ONNX: {e}") from e
        finally:
            module.train(was_training)
        return self.tmp

    def __exit__(self, *exc: Any) -> None:
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass


def _is_torch_module(m: Any) -> bool:
    for cls in type(m).__mro__:
        if cls.__module__.startswith("torch.nn") and cls.__name__ == "Module":
            return True
    return False
