"""The served artifact: one registered model version holds the whole served function, without pickle.

A student version's MLflow model directory (``models:/<name>/<version>``) holds:

| path | what | loads with |
|---|---|---|
| ``data/model.pt2`` | ``torch.export`` program of ``x -> map(model(x) / T_calibrated)`` (MLflow's ``pt2``; ``model`` includes its fitted input standardisation, ``map`` is softmax or the chosen calibration map) | ``mlflow.pyfunc`` / ``mlflow.pytorch`` + torch |
| ``extra_files/model.onnx`` | the same function as ONNX (input ``x`` float32 ``[N, d...]``, output ``probabilities`` ``[N, C]``) | onnxruntime |
| ``extra_files/kdflow_model.json`` | architecture, arguments, preprocessing, input shape, classes, calibrated temperature, calibration map kind | kdflow |
| ``extra_files/state_dict.npz`` | the weights, preprocessing statistics and ``calibration_map.*`` buffers (NumPy arrays; read with ``allow_pickle=False``) | kdflow |

Serving needs only the first two (and ``requirements.txt`` lists exactly torch, mlflow, onnxruntime and numpy);
kdflow itself rebuilds the :class:`~kdflow.models.CalibratedClassifier` from the last two, because
recalibration and drift checks need the raw logits. Nothing in the directory is a pickle: MLflow checks the pt2
archive for pickles before loading it, the ONNX graph is a protobuf, and the weights are plain ``.npy`` arrays
in a zip (``numpy.savez``), read with ``allow_pickle=False``.

Teachers that users register themselves (any MLflow pytorch model) keep loading with ``mlflow.pytorch``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow.calibration import IsotonicMap, VectorScaling
from kdflow.config import ModelSpec, ServingRuntime
from kdflow.models import CalibratedClassifier, build_model
from kdflow.preprocess import Preprocessed

FORMAT = "kdflow-served/1"
ONNX_FILE = "model.onnx"
SPEC_FILE = "kdflow_model.json"
STATE_FILE = "state_dict.npz"
INPUT_NAME = "x"
OUTPUT_NAME = "probabilities"
EXTRA_DIR = "extra_files"
MAP_PREFIX = "calibration_map."  # weight-file keys of the calibration map's buffers
MAPS: dict[str, type[nn.Module]] = {"vector": VectorScaling, "isotonic": IsotonicMap}

log = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """A model directory is not a kdflow served artifact, or one of its files cannot be loaded."""


@dataclass(frozen=True)
class ServedSpec:
    """What kdflow needs to rebuild the served module: ``build_model(arch, args, input_shape, num_classes,
    preprocess)`` wrapped in ``CalibratedClassifier(model, temperature, map)`` (``calibration_map``:
    ``temperature`` for none, else the kind whose buffers the weight file holds). Specs written before the
    preprocessing and maps existed read as ``preprocess: none``, ``calibration_map: temperature``."""

    arch: str
    args: dict[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int
    temperature: float
    preprocess: str = "none"
    calibration_map: str = "temperature"

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "arch": self.arch,
            "args": self.args,
            "preprocess": self.preprocess,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "calibration_map": self.calibration_map,
        }

    @classmethod
    def of(
        cls,
        model: ModelSpec,
        input_shape: tuple[int, ...],
        num_classes: int,
        temperature: float,
        calibration_map: str = "temperature",
    ) -> ServedSpec:
        """The spec of a student built from the config's ``model`` (``cfg.student``), served at ``temperature``
        and ``calibration_map``."""
        return cls(model.arch, dict(model.args), tuple(input_shape), int(num_classes), float(temperature),
                   model.preprocess, calibration_map)  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServedSpec:
        if d.get("format") != FORMAT:
            raise ArtifactError(f"{SPEC_FILE}: format {d.get('format')!r}, expected {FORMAT!r}")
        kind = d.get("calibration_map", "temperature")
        if kind != "temperature" and kind not in MAPS:
            raise ArtifactError(f"{SPEC_FILE}: unknown calibration_map {kind!r}; known: temperature, {sorted(MAPS)}")
        return cls(d["arch"], dict(d["args"]), tuple(int(v) for v in d["input_shape"]), int(d["num_classes"]),
                   float(d["temperature"]), d.get("preprocess", "none"), kind)  # fmt: skip


def _quiet_onnx_logs() -> None:
    """The ONNX exporter logs one warning per torchvision operator it cannot register (torchvision is absent)."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def export_onnx(module: nn.Module, example: np.ndarray, path: str | Path) -> Path:
    """Export ``module`` (eval mode) to ONNX at ``path`` with ``torch.onnx.export(dynamo=True)``: input ``x``
    with a dynamic batch dimension, output ``probabilities``."""
    _quiet_onnx_logs()
    module.eval()
    path = Path(path)
    x = torch.as_tensor(np.asarray(example, dtype=np.float32))
    with warnings.catch_warnings():  # torch-internal deprecation notices of the exporter, not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            module,
            (x,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,  # one self-contained file (a student is small; the 2 GB protobuf limit is far)
            verbose=False,
        )
    return path


def check_spec(spec: ServedSpec, state: dict[str, torch.Tensor]) -> None:
    """Raise :class:`ArtifactError` unless ``build_model(spec)`` takes ``state`` exactly (same keys and shapes):
    a spec that cannot rebuild the weights would register a version kdflow cannot load back."""
    try:
        build_model(spec.arch, spec.args, spec.input_shape, spec.num_classes, spec.preprocess).load_state_dict(state)
    except Exception as exc:
        raise ArtifactError(
            f"the spec ({spec.arch} {spec.args}, input {list(spec.input_shape)}, {spec.num_classes} classes) does "
            f"not rebuild the served weights: {exc}"
        ) from exc


def write_extra_files(
    served: CalibratedClassifier, spec: ServedSpec, example: np.ndarray, directory: Path
) -> list[str]:
    """Write the ONNX copy, the spec and the weights of ``served`` into ``directory``; return their paths.

    The spec's ``preprocess`` is taken from the module, its truth: a champion trained without preprocessing
    (an older kdflow, or ``none``) keeps none when recalibrated under a config whose default differs."""
    spec = replace(spec, preprocess=served.model.preprocess.kind if isinstance(served.model, Preprocessed) else "none")
    if abs(float(served.temperature) - spec.temperature) > 1e-6:
        raise ArtifactError(f"spec temperature {spec.temperature} != served temperature {float(served.temperature)}")
    if served.map_kind != spec.calibration_map:
        raise ArtifactError(f"spec calibration_map {spec.calibration_map!r} != served map {served.map_kind!r}")
    state = {k: v.detach().cpu() for k, v in served.model.state_dict().items()}
    check_spec(spec, state)
    if served.calibration_map is not None:
        state.update({MAP_PREFIX + k: v.detach().cpu() for k, v in served.calibration_map.state_dict().items()})
    onnx_path = export_onnx(served, example, directory / ONNX_FILE)
    spec_path = directory / SPEC_FILE
    spec_path.write_text(json.dumps(spec.as_dict(), indent=2, sort_keys=True))
    state_path = directory / STATE_FILE
    np.savez(state_path, **{k: v.numpy() for k, v in state.items()})
    return [str(onnx_path), str(spec_path), str(state_path)]


def pip_requirements() -> list[str]:
    """Exactly what loading the artifact needs: torch (pt2), mlflow (pyfunc), onnxruntime (ONNX), numpy."""
    import onnxruntime

    import mlflow

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"onnxruntime=={onnxruntime.__version__}",
        f"numpy=={np.__version__}",
    ]


def example_rows(x: np.ndarray, n: int = 5) -> np.ndarray:
    """The input example: at least 2 rows (``pt2`` marks only dimensions larger than 1 as dynamic)."""
    example = np.asarray(x[:n], dtype=np.float32)
    if len(example) < 2:
        raise ArtifactError(
            f"the input example needs at least 2 rows for a dynamic batch dimension, got {len(example)}"
        )
    return example


def log_served_model(
    served: CalibratedClassifier,
    spec: ServedSpec,
    input_example: np.ndarray,
    registered_name: str | None = None,
    artifact_name: str = "model",
) -> tuple[str, str | None]:
    """Log the served function to the active MLflow run as ``pt2`` plus its ONNX copy, spec and weights
    (``extra_files``), with a tensor signature and input example; register it when a name is given.

    Returns ``(model_uri, version or None)``. Pip requirements are given explicitly (:func:`pip_requirements`)
    so MLflow neither guesses them nor spawns a subprocess to infer them."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    served.eval()
    example = example_rows(input_example)
    with torch.no_grad():
        output = served(torch.from_numpy(example)).numpy()
    with tempfile.TemporaryDirectory(prefix="kdflow-artifact-") as tmp:
        extra = write_extra_files(served, spec, example, Path(tmp))
        info = mlflow.pytorch.log_model(
            served,
            name=artifact_name,
            signature=infer_signature(example, output),
            input_example=example,
            registered_model_name=registered_name,
            serialization_format="pt2",
            extra_files=extra,
            pip_requirements=pip_requirements(),
        )
    version = getattr(info, "registered_model_version", None)
    return info.model_uri, (str(version) if version is not None else None)


def model_dir(model_uri: str) -> Path:
    """The local directory of an MLflow model (``models:/...``, ``runs:/...`` or a local path), downloaded if
    remote (MLflow caches nothing: each call downloads)."""
    if Path(model_uri).is_dir():
        return Path(model_uri)
    import mlflow.artifacts

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except Exception as exc:
        raise ArtifactError(f"cannot download model {model_uri}: {exc}") from exc


def is_served_artifact(directory: Path) -> bool:
    """Whether ``directory`` is a kdflow served artifact (has the spec file)."""
    return (directory / EXTRA_DIR / SPEC_FILE).is_file()


def read_spec(directory: Path) -> ServedSpec:
    """The :class:`ServedSpec` of a served artifact directory."""
    path = directory / EXTRA_DIR / SPEC_FILE
    try:
        return ServedSpec.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{path}: unreadable served-model spec ({exc})") from exc


def load_calibrated(directory: Path) -> CalibratedClassifier:
    """Rebuild the :class:`CalibratedClassifier` of a served artifact from its spec and weights
    (plain arrays, ``allow_pickle=False``: no code runs on load)."""
    spec = read_spec(directory)
    path = directory / EXTRA_DIR / STATE_FILE
    try:
        with np.load(path, allow_pickle=False) as arrays:
            state = {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    except Exception as exc:
        raise ArtifactError(f"{path}: cannot load the weights ({exc})") from exc
    buffers = {k[len(MAP_PREFIX) :]: state.pop(k) for k in [k for k in state if k.startswith(MAP_PREFIX)]}
    model = build_model(spec.arch, spec.args, spec.input_shape, spec.num_classes, spec.preprocess)
    model.load_state_dict(state)
    cal_map = None
    if spec.calibration_map != "temperature":
        try:
            cal_map = MAPS[spec.calibration_map](**buffers)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: the {spec.calibration_map} map's buffers are missing or malformed ({exc})")
    return CalibratedClassifier(model, spec.temperature, cal_map).eval()


@dataclass
class ServedModel:
    """A loaded served artifact: ``predict(x)`` maps float32 ``(n, *input_shape)`` to ``(n, C)`` probabilities
    with the ``runtime`` copy (``onnx``: onnxruntime on the ONNX graph; ``torch``: the pt2 program)."""

    uri: str
    runtime: ServingRuntime
    spec: ServedSpec
    _predict: Callable[[np.ndarray], np.ndarray]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.spec.input_shape

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``x`` (float32, ``(n, *input_shape)``)."""
        return self._predict(np.ascontiguousarray(x, dtype=np.float32))


def _onnx_predictor(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"{path}: onnxruntime cannot load it ({exc})") from exc
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _torch_predictor(directory: Path) -> Callable[[np.ndarray], np.ndarray]:
    import mlflow.pytorch

    try:
        program = mlflow.pytorch.load_model(str(directory), map_location="cpu")
    except Exception as exc:
        raise ArtifactError(f"{directory}: cannot load the pt2 program ({exc})") from exc

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return program(torch.from_numpy(x)).numpy()

    return predict


def load_served(model_uri: str, runtime: ServingRuntime = "onnx", threads: int = 1) -> ServedModel:
    """Load a registered (or local) served artifact for scoring with ``runtime``; ``threads`` for onnxruntime."""
    directory = model_dir(model_uri)
    if not is_served_artifact(directory):
        raise ArtifactError(
            f"{model_uri} is not a kdflow served artifact (no {EXTRA_DIR}/{SPEC_FILE}); register it with a current "
            "kdflow (the distill or recalibrate flow)"
        )
    spec = read_spec(directory)
    if runtime == "onnx":
        predict = _onnx_predictor(directory / EXTRA_DIR / ONNX_FILE, threads)
    elif runtime == "torch":
        predict = _torch_predictor(directory)
    else:
        raise ArtifactError(f"unknown runtime {runtime!r}; expected 'onnx' or 'torch'")
    return ServedModel(model_uri, runtime, spec, predict)
