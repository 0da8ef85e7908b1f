"""Identity score: is the person in the output the person in the reference?

Pipeline (CPU only, no model hub):

1. Detect faces with dlib's HOG frontal detector. A first pass runs at the image's own scale; only when it
   finds fewer faces than needed (none in a reference, fewer than the reference's in an output) and the
   image is small (≤ 0.64 MP) is it re-run with the picture upsampled once, so faces down to ~40 px are found
   without paying the 4x cost on every picture. Pictures are analysed at ≤ ``ANALYSIS_MAX_SIDE`` px.
2. Locate 5 landmarks per face (``shape_predictor_5_face_landmarks.dat``).
3. Describe each aligned face: by default dlib's ResNet (128-d, Euclidean distance, same person below
   0.6), or an ArcFace-class ONNX model through :class:`OnnxFaceEmbedder` (L2-normalised embedding,
   cosine similarity, same person at cosine ≥ 0.35).
4. Match faces: each reference face is paired with a distinct output face so that the summed distance is
   minimal (Hungarian assignment). The overall verdict is the *worst* matched pair: an edit that keeps
   one person but changes another has not kept "the people". A reference face left without an output
   face is *lost*, which fails the verdict.

When the reference has no face (a product, an object, a scene) identity is not measured; the
weights-free feature consistency score of :mod:`kontext_studio.analysis.consistency` is reported instead.

Similarity mapping (both metrics): ``similarity = 1 / (1 + (distance / threshold) ** 4)``. It is 1 at
distance 0, exactly 0.5 at the method's threshold, strictly decreasing, and tends to 0; for the dlib
ResNet a typical same-person distance of 0.35 gives ≈ 0.9 and a stranger at 0.9 gives ≈ 0.16. For the
ONNX scorer ``distance = 1 - cosine`` and the threshold is ``1 - 0.35 = 0.65``.

dlib's models ship in the ``face_recognition_models`` package, whose ``__init__`` imports
``pkg_resources`` (gone from new setuptools): its folder is located with ``importlib.util.find_spec``,
which does not execute the package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from kontext_studio.analysis.common import DETECTOR_LOCK, face_detector
from kontext_studio.analysis.consistency import ConsistencyReport, compare_features, rgb_array
from kontext_studio.core.errors import InvalidRequest

# dlib's documented operating point for its ResNet descriptor (99.38% on LFW).
DLIB_THRESHOLD = 0.6
# Same-person cosine similarity for ArcFace-class models (insightface's buffalo / AuraFace range 0.3–0.4).
ARCFACE_COSINE_THRESHOLD = 0.35
# Exponent of the distance→similarity curve; 4 keeps same-person pairs near 1 and strangers near 0.
SIMILARITY_SHARPNESS = 4.0
# Pictures under this size carry too little face to describe.
MIN_SIDE = 32
# Larger pictures are downscaled first: HOG cost grows with pixels and faces stay ≥ 80 px at this size.
ANALYSIS_MAX_SIDE = 1024
# Upsampling doubles each side (4x the HOG cost): only pictures up to 0.64 MP (800x800) get the second pass;
# larger ones already show any face worth judging at ≥ 80 px.
UPSAMPLE_MAX_PIXELS = 640_000
# The strongest detection counts at dlib's default threshold (0); further faces must score higher,
# because weak HOG hits on hands or badges (measured 0.1–0.2 on the astronaut photo) would otherwise
# become reference faces that then "get lost" in every output.
EXTRA_FACE_MIN_SCORE = 0.3

# ArcFace's canonical 112x112 positions of the image-left and image-right eye centres (insightface).
_ARCFACE_EYES = np.array([[38.2946, 51.6963], [73.5318, 51.5014]], dtype=np.float64)


class FaceModelError(InvalidRequest, ValueError):
    """A face-embedding model file is missing, not ONNX, or its input/output shapes do not fit.

    Also a ``ValueError`` so callers outside the engine's error tree can catch it the ordinary way.
    """

    code = "invalid_face_model"


Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class DetectedFace:
    """One face found in a picture.

    Attributes:
        box: (left, top, right, bottom) in the caller's original pixel coordinates.
        score: the HOG detector's confidence (higher is surer; 0 is dlib's default cut-off).
        landmarks: the 5 landmark points (x, y) in original pixel coordinates.
    """

    box: Box
    score: float
    landmarks: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class FaceMatch:
    """One reference face and the output face it was matched with.

    Attributes:
        reference_box: (left, top, right, bottom) of the reference face.
        output_box: the matched output face, or None when the face was lost.
        distance: the method's distance (None when lost).
        similarity: in [0, 1], see the module docstring (0.0 when lost).
        same_person: distance below the threshold (False when lost).
    """

    reference_box: Box
    output_box: Box | None
    distance: float | None
    similarity: float
    same_person: bool


@dataclass
class IdentityReport:
    """The answer of :func:`compare_identity`.

    Attributes:
        measured: True when a face identity verdict was reached (a lost face is a measured failure).
        reason: in words, why identity was not measured or why the verdict failed; None when all is well.
        method: ``"dlib-resnet"``, ``"onnx:<file name>"``, or ``"features"`` (no face in the reference).
        distance: the worst matched pair's distance (None when nothing was matched).
        similarity: the worst pair's similarity in [0, 1]; 0.0 when a face was lost; for ``"features"``
            the feature consistency score.
        same_person: the overall verdict: every reference face matched and under the threshold.
            None when not measured.
        threshold: the distance threshold of the method (None for ``"features"``).
        metric: ``"euclidean"`` or ``"cosine-distance"`` (None for ``"features"``).
        faces: one entry per reference face, sorted left to right.
        lost_faces: reference faces with no output face left to match.
        reference_faces: faces detected in the reference.
        output_faces: faces detected in the output.
        consistency: the feature consistency report, when it was used.
        seconds: wall time of the comparison.
    """

    measured: bool
    reason: str | None
    method: str
    distance: float | None = None
    similarity: float | None = None
    same_person: bool | None = None
    threshold: float | None = None
    metric: str | None = None
    faces: list[FaceMatch] = field(default_factory=list)
    lost_faces: int = 0
    reference_faces: int = 0
    output_faces: int = 0
    consistency: ConsistencyReport | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (boxes become lists, nested reports dicts)."""
        data = asdict(self)
        for face in data["faces"]:
            face["reference_box"] = list(face["reference_box"])
            face["output_box"] = None if face["output_box"] is None else list(face["output_box"])
        return data


@runtime_checkable
class FaceEmbedder(Protocol):
    """What :func:`compare_identity` needs from a face descriptor model.

    ``method`` names it in reports, ``metric`` names the distance, ``threshold`` is the distance under
    which two faces are the same person.
    """

    method: str
    metric: str
    threshold: float

    def embed(self, rgb: np.ndarray, landmarks: Any) -> np.ndarray:
        """Describe the face given by dlib ``landmarks`` (a full_object_detection) in ``rgb``."""
        ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Distance between two descriptors returned by :meth:`embed`."""
        ...


def similarity_from_distance(distance: float, threshold: float) -> float:
    """Map a distance to a similarity in [0, 1]: 1 at 0, 0.5 at ``threshold``, strictly decreasing.

    Args:
        distance: a non-negative distance (Euclidean, or 1 - cosine).
        threshold: the same-person distance threshold of the method (> 0).

    Returns:
        ``1 / (1 + (distance / threshold) ** 4)``.

    Raises:
        ValueError: when ``threshold`` is not positive.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    ratio = max(0.0, distance) / threshold
    return float(1.0 / (1.0 + ratio**SIMILARITY_SHARPNESS))


# --------------------------------------------------------------------------------------------- models


def dlib_models_dir() -> Path:
    """Find the ``models/`` folder of ``face_recognition_models`` without importing the package.

    Returns:
        The folder holding ``shape_predictor_5_face_landmarks.dat`` and the ResNet descriptor.

    Raises:
        FaceModelError: when the package or its model files are not installed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "models"
        if (folder / "dlib_face_recognition_resnet_model_v1.dat").is_file():
            return folder
    raise FaceModelError(
        "dlib's face models were not found: install the analysis extra "
        "(pip install 'kontext-studio[analysis]', which brings face_recognition_models)"
    )


class _DlibModels:
    """dlib's detector (shared with the reference checker), and the landmark predictor and ResNet, which
    load on first use: a picture without a face never pays for them."""

    def __init__(self) -> None:
        self.folder = dlib_models_dir()
        self.detector = face_detector()
        # dlib documents its detectors and networks as unsafe for concurrent use (they keep per-call
        # buffers inside the object): one call at a time each. The landmark predictor is stateless.
        self.detector_lock = DETECTOR_LOCK
        self.resnet_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._predictor: Any = None
        self._resnet: Any = None

    @property
    def predictor(self) -> Any:
        if self._predictor is None:
            with self._load_lock:
                if self._predictor is None:
                    import dlib

                    self._predictor = dlib.shape_predictor(str(self.folder / "shape_predictor_5_face_landmarks.dat"))
        return self._predictor

    @property
    def resnet(self) -> Any:
        if self._resnet is None:
            with self._load_lock:
                if self._resnet is None:
                    import dlib

                    self._resnet = dlib.face_recognition_model_v1(
                        str(self.folder / "dlib_face_recognition_resnet_model_v1.dat"))
        return self._resnet


_models: _DlibModels | None = None
_models_lock = threading.Lock()


def _dlib_models() -> _DlibModels:
    # Loading the ResNet takes ~0.3 s and 20 MB: once per process, double-checked under a lock.
    global _models
    if _models is None:
        with _models_lock:
            if _models is None:
                _models = _DlibModels()
    return _models


class DlibFaceEmbedder:
    """dlib's ResNet face descriptor: 128-d, Euclidean distance, same person under 0.6.

    Args:
        threshold: the same-person distance threshold (dlib's documented 0.6 by default).
    """

    method = "dlib-resnet"
    metric = "euclidean"

    def __init__(self, threshold: float = DLIB_THRESHOLD):
        self.threshold = threshold

    def embed(self, rgb: np.ndarray, landmarks: Any) -> np.ndarray:
        """Describe one face.

        Args:
            rgb: the ``uint8`` RGB picture (H, W, 3).
            landmarks: dlib's ``full_object_detection`` for the face (5 points).

        Returns:
            The 128-d descriptor as float64.
        """
        models = _dlib_models()
        with models.resnet_lock:
            descriptor = models.resnet.compute_face_descriptor(rgb, landmarks, 0)
        return np.asarray(descriptor, dtype=np.float64)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Euclidean distance between two descriptors.

        Args:
            a: a descriptor from :meth:`embed`.
            b: another descriptor.

        Returns:
            ``||a - b||``.
        """
        return float(np.linalg.norm(a - b))


def _eye_centres(landmarks: Any) -> np.ndarray:
    # dlib's 5-point model: parts 0–1 and 2–3 are the corners of each eye, part 4 the base of the nose.
    points = np.array([(p.x, p.y) for p in landmarks.parts()], dtype=np.float64)
    eyes = np.stack([points[0:2].mean(axis=0), points[2:4].mean(axis=0)])
    return eyes[np.argsort(eyes[:, 0])]  # image-left eye first, as in ArcFace's template


def _similarity_from_two_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    # The 2x3 rotation+scale+translation that maps the two src points exactly onto the two dst points.
    src_vec, dst_vec = src[1] - src[0], dst[1] - dst[0]
    src_c = complex(src_vec[0], src_vec[1])
    if abs(src_c) < 1e-6:
        raise ValueError("degenerate landmarks: both eyes at the same point")
    rotation = complex(dst_vec[0], dst_vec[1]) / src_c
    a, b = rotation.real, rotation.imag
    linear = np.array([[a, -b], [b, a]])
    offset = dst[0] - linear @ src[0]
    return np.hstack([linear, offset[:, None]])


class OnnxFaceEmbedder:
    """An ArcFace-class ONNX face-recognition model (ArcFace, AuraFace, insightface ``w600k_*``).

    Faces are still found and landmarked by dlib; the two eye centres are mapped onto ArcFace's canonical
    112x112 template (scaled to the model's input size), the crop is normalised as
    ``(pixel - mean) / std`` in RGB (or BGR) order, and the model's output is L2-normalised. Distances are
    ``1 - cosine``; the same-person threshold is ``1 - cosine_threshold``.

    Args:
        model_path: the ``.onnx`` file.
        cosine_threshold: same person at or above this cosine similarity (0.35 suits ArcFace-class models).
        mean: subtracted from each 0–255 pixel value.
        std: divides the centred value (127.5 / 128 are both common).
        channel_order: ``"rgb"`` or ``"bgr"``: the order the model was trained on.

    Raises:
        FaceModelError: the file is missing, is not a loadable ONNX model, or takes/returns shapes that do
            not fit a face embedder (one square image input NCHW or NHWC with 3 channels, one (N, D)
            output with D ≥ 2).
    """

    metric = "cosine-distance"

    def __init__(
        self,
        model_path: str | Path,
        *,
        cosine_threshold: float = ARCFACE_COSINE_THRESHOLD,
        mean: float = 127.5,
        std: float = 128.0,
        channel_order: str = "rgb",
    ):
        path = Path(model_path)
        if not path.is_file():
            raise FaceModelError(f"face model {str(path)!r} does not exist (expected an .onnx file)", field="model")
        if channel_order not in ("rgb", "bgr"):
            raise FaceModelError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}", field="channel_order")
        if not -1.0 < cosine_threshold < 1.0:
            raise FaceModelError(f"cosine_threshold must lie in (-1, 1), got {cosine_threshold}", field="threshold")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # the errors we raise say what matters; skip ORT's warnings
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types: all mean "unusable"
            raise FaceModelError(
                f"{path.name} is not a loadable ONNX model ({type(exc).__name__}: {str(exc).strip()[:200]})",
                field="model",
            ) from exc
        self.method = f"onnx:{path.name}"
        self.threshold = 1.0 - cosine_threshold
        self.cosine_threshold = cosine_threshold
        self.mean, self.std, self.channel_order = mean, std, channel_order
        self._check_signature(path.name)

    def _check_signature(self, name: str) -> None:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise FaceModelError(f"{name} takes {len(inputs)} inputs; a face embedder takes one image", field="model")
        if not outputs:
            raise FaceModelError(f"{name} has no outputs", field="model")
        tensor = inputs[0]
        shape = list(tensor.shape)
        if tensor.type not in ("tensor(float)", "tensor(float16)"):
            raise FaceModelError(f"{name} takes {tensor.type}; expected a float image tensor", field="model")
        if len(shape) != 4:
            raise FaceModelError(
                f"{name} takes a rank-{len(shape)} input {shape}; expected (N, 3, H, W)", field="model"
            )
        if shape[1] == 3:
            self._layout, height, width = "nchw", shape[2], shape[3]
        elif shape[3] == 3:
            self._layout, height, width = "nhwc", shape[1], shape[2]
        else:
            raise FaceModelError(f"{name} takes {shape}: no 3-channel axis (NCHW or NHWC expected)", field="model")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise FaceModelError(f"{name} has a fixed batch of {shape[0]}; a batch of 1 is needed", field="model")
        size = height if isinstance(height, int) else (width if isinstance(width, int) else 112)
        if isinstance(height, int) and isinstance(width, int) and height != width:
            raise FaceModelError(f"{name} takes {height}x{width} crops; face crops are square", field="model")
        if not 32 <= size <= 1024:
            raise FaceModelError(f"{name} takes {size} px crops; expected 32–1024 (ArcFace uses 112)", field="model")
        self.input_size = int(size)
        self._input_name = tensor.name
        self._dtype = np.float16 if tensor.type == "tensor(float16)" else np.float32
        # A dry run catches what the declared shapes hide (a reshape to a fixed size, a wrong output rank).
        probe = self._run(np.zeros((self.input_size, self.input_size, 3), dtype=np.uint8))
        if probe.ndim != 2 or probe.shape[0] != 1 or probe.shape[1] < 2:
            raise FaceModelError(
                f"{name} returns shape {tuple(probe.shape)}; a face embedder returns (1, D) with D ≥ 2", field="model"
            )
        self.dimension = int(probe.shape[1])

    def _run(self, crop: np.ndarray) -> np.ndarray:
        pixels = crop[:, :, ::-1] if self.channel_order == "bgr" else crop
        batch = ((pixels.astype(np.float32) - self.mean) / self.std)[None]
        if self._layout == "nchw":
            batch = batch.transpose(0, 3, 1, 2)
        try:
            result = self._session.run(None, {self._input_name: np.ascontiguousarray(batch, dtype=self._dtype)})[0]
        except Exception as exc:
            raise FaceModelError(
                f"{self.method} failed on a {self.input_size}px face crop ({type(exc).__name__}: {str(exc)[:200]})",
                field="model",
            ) from exc
        return np.asarray(result, dtype=np.float64)

    def align(self, rgb: np.ndarray, landmarks: Any) -> np.ndarray:
        """Cut the face out of ``rgb`` aligned to ArcFace's eye template, at the model's input size.

        Args:
            rgb: the ``uint8`` RGB picture (H, W, 3).
            landmarks: dlib's 5-point ``full_object_detection`` for the face.

        Returns:
            A ``uint8`` RGB crop of shape (size, size, 3).
        """
        import cv2

        template = _ARCFACE_EYES * (self.input_size / 112.0)
        matrix = _similarity_from_two_points(_eye_centres(landmarks), template)
        return cv2.warpAffine(rgb, matrix, (self.input_size, self.input_size), flags=cv2.INTER_LINEAR, borderValue=0)

    def embed(self, rgb: np.ndarray, landmarks: Any) -> np.ndarray:
        """Describe one face with the ONNX model.

        Args:
            rgb: the ``uint8`` RGB picture (H, W, 3).
            landmarks: dlib's 5-point ``full_object_detection`` for the face.

        Returns:
            The L2-normalised embedding (D,) as float64.

        Raises:
            FaceModelError: when the model fails or returns a non-finite or zero embedding.
        """
        vector = self._run(self.align(rgb, landmarks)).reshape(-1)
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0.0:
            raise FaceModelError(f"{self.method} returned a zero or non-finite embedding", field="model")
        return vector / norm

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine distance ``1 - cos(a, b)`` between two L2-normalised embeddings, in [0, 2].

        Args:
            a: an embedding from :meth:`embed`.
            b: another embedding.

        Returns:
            ``1 - a·b``, clipped to [0, 2] against rounding.
        """
        return float(np.clip(1.0 - float(np.dot(a, b)), 0.0, 2.0))


# ------------------------------------------------------------------------------------------- detection


@dataclass
class _Analysed:
    faces: list[DetectedFace]
    shapes: list[Any]  # dlib full_object_detection in working (downscaled) coordinates
    working: np.ndarray
    scale: float  # working px per original px


def _working_copy(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    height, width = rgb.shape[:2]
    longest = max(height, width)
    if longest <= ANALYSIS_MAX_SIDE:
        return rgb, 1.0
    scale = ANALYSIS_MAX_SIDE / longest
    small = Image.fromarray(rgb).resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS
    )
    return np.ascontiguousarray(np.asarray(small)), scale


def _detect(rgb: np.ndarray, want: int) -> _Analysed:
    models = _dlib_models()
    working, scale = _working_copy(rgb)
    found: list[tuple[Any, float]] = []
    passes = [0]
    if working.shape[0] * working.shape[1] <= UPSAMPLE_MAX_PIXELS:
        passes.append(1)
    for upsample in passes:
        with models.detector_lock:
            rects, scores, _ = models.detector.run(working, upsample, 0.0)
        candidates = sorted(zip(rects, scores, strict=True), key=lambda item: -item[1])
        kept = [c for i, c in enumerate(candidates) if i == 0 or c[1] >= EXTRA_FACE_MIN_SCORE]
        if len(kept) > len(found):
            found = kept
        if len(found) >= want:
            break  # the cheap pass was enough; upsampling costs ~4x
    found.sort(key=lambda item: (item[0].left(), item[0].top()))
    faces, shapes = [], []
    back = 1.0 / scale  # boxes and landmarks are reported in the caller's pixels, not the working copy's
    for rect, score in found:
        shape = models.predictor(working, rect)
        shapes.append(shape)
        box = (
            max(0, round(rect.left() * back)),
            max(0, round(rect.top() * back)),
            min(rgb.shape[1], round((rect.right() + 1) * back)),
            min(rgb.shape[0], round((rect.bottom() + 1) * back)),
        )
        points = tuple((round(p.x * back, 1), round(p.y * back, 1)) for p in shape.parts())
        faces.append(DetectedFace(box=box, score=round(float(score), 3), landmarks=points))
    return _Analysed(faces=faces, shapes=shapes, working=working, scale=scale)


# A reference is usually compared with many outputs (the variations of one edit): describe it once.
# Entries hold boxes and descriptors only (no pixels), so 16 of them cost a few kilobytes.
_CACHE_SIZE = 16
_cache: OrderedDict[tuple[Any, ...], tuple[list[DetectedFace], list[np.ndarray]]] = OrderedDict()
_cache_lock = threading.Lock()


def _analyse(rgb: np.ndarray, want: int, embedder: FaceEmbedder) -> tuple[list[DetectedFace], list[np.ndarray]]:
    # dlib embedders share one process-wide model, so any instance with the same method may share entries;
    # other embedders are keyed by the object itself (an id could be reused by a different model later).
    model_key: Any = embedder.method if isinstance(embedder, DlibFaceEmbedder) else embedder
    digest = hashlib.blake2b(rgb.tobytes(), digest_size=16).digest()
    key = (digest, rgb.shape, want, model_key)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    analysed = _detect(rgb, want)
    vectors = []
    for shape in analysed.shapes:
        vector = embedder.embed(analysed.working, shape)
        vector.setflags(write=False)  # shared through the cache: nobody may change it in place
        vectors.append(vector)
    result = (analysed.faces, vectors)
    with _cache_lock:
        _cache[key] = result
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


def clear_cache() -> None:
    """Forget the cached face descriptors (for timing runs, or after swapping a model file in place)."""
    with _cache_lock:
        _cache.clear()


def detect_faces(image: Image.Image) -> list[DetectedFace]:
    """Find the faces in a picture (HOG detector, upsampled once when the picture is small).

    Args:
        image: any PIL image.

    Returns:
        The faces, sorted left to right; empty for pictures under 32 px or without a frontal face.

    Raises:
        TypeError: when ``image`` is not a PIL image.
        FaceModelError: when dlib's face models are not installed.
    """
    rgb = rgb_array(image)
    if min(rgb.shape[:2]) < MIN_SIDE:
        return []
    return _detect(rgb, want=1).faces


# ------------------------------------------------------------------------------------------ comparison


def _match(distances: np.ndarray) -> list[int | None]:
    # One output face per reference face, minimising the summed distance: greedy "best output face"
    # would let two reference people claim the same output face and hide that one of them vanished.
    from scipy.optimize import linear_sum_assignment

    assigned: list[int | None] = [None] * distances.shape[0]
    if distances.size:
        rows, cols = linear_sum_assignment(distances)
        for row, col in zip(rows, cols, strict=True):
            assigned[int(row)] = int(col)
    return assigned


def _not_measured(reason: str, method: str, started: float, **extra: Any) -> IdentityReport:
    return IdentityReport(measured=False, reason=reason, method=method, seconds=time.perf_counter() - started, **extra)


def compare_identity(reference: Image.Image, output: Image.Image, scorer: FaceEmbedder | None = None) -> IdentityReport:
    """Say whether the output still shows the reference's person (or people, or object).

    Every reference face is matched with a distinct output face (minimal summed distance). The overall
    verdict is the worst matched pair; a reference face with no output face left is lost, and a lost face
    fails the verdict (``same_person`` False, the reason names it). Without a face in the reference,
    identity is not measured and the feature consistency score is reported (method ``"features"``).

    Args:
        reference: the reference picture, any PIL mode (16-bit, grayscale and CMYK are converted).
        output: the edited picture, any PIL mode.
        scorer: the face descriptor: None for dlib's ResNet (:class:`DlibFaceEmbedder`), or e.g. an
            :class:`OnnxFaceEmbedder`.

    Returns:
        An :class:`IdentityReport`. Pictures under 32 px give ``measured=False`` with a reason.

    Raises:
        TypeError: when an argument is not a PIL image.
        FaceModelError: when dlib's face models are missing or the ONNX scorer fails.
    """
    started = time.perf_counter()
    embedder: FaceEmbedder = scorer if scorer is not None else DlibFaceEmbedder()
    ref_rgb, out_rgb = rgb_array(reference), rgb_array(output)
    for label, rgb in (("reference", ref_rgb), ("output", out_rgb)):
        if min(rgb.shape[:2]) < MIN_SIDE:
            return _not_measured(
                f"the {label} image is {rgb.shape[1]}x{rgb.shape[0]} px, too small to compare "
                f"(needs at least {MIN_SIDE} px on each side); identity is not measured",
                embedder.method,
                started,
            )

    ref_faces, ref_vectors = _analyse(ref_rgb, 1, embedder)
    if not ref_faces:
        consistency = compare_features(reference, output)
        fallback_reason = "no face in the reference, so the object's details are compared instead"
        if not consistency.measured:
            fallback_reason = f"no face in the reference, and {consistency.reason}"
        return _not_measured(
            fallback_reason,
            "features",
            started,
            similarity=consistency.score if consistency.measured else None,
            consistency=consistency,
        )

    out_faces, out_vectors = _analyse(out_rgb, len(ref_faces), embedder)
    distances = np.array([[embedder.distance(r, o) for o in out_vectors] for r in ref_vectors]).reshape(
        len(ref_vectors), len(out_vectors)
    )
    matches: list[FaceMatch] = []
    for index, column in enumerate(_match(distances)):
        ref_box = ref_faces[index].box
        if column is None:
            matches.append(FaceMatch(ref_box, None, None, 0.0, False))
            continue
        dist = float(distances[index, column])
        matches.append(
            FaceMatch(
                reference_box=ref_box,
                output_box=out_faces[column].box,
                distance=round(dist, 4),
                similarity=round(similarity_from_distance(dist, embedder.threshold), 4),
                same_person=dist < embedder.threshold,
            )
        )
    paired = [m for m in matches if m.distance is not None]
    lost = len(matches) - len(paired)
    worst = max(paired, key=lambda m: m.distance or 0.0) if paired else None
    same = lost == 0 and all(m.same_person for m in paired)
    reason: str | None = None
    if lost and not out_faces:
        reason = f"the face was lost: no face found in the output ({len(matches)} in the reference)"
    elif lost:
        reason = (
            f"{lost} of {len(matches)} reference faces {'was' if lost == 1 else 'were'} lost: "
            f"the output shows only {len(out_faces)} face{'s' if len(out_faces) != 1 else ''}"
        )
    elif not same and worst is not None:
        reason = (
            f"a different person: distance {worst.distance:.3f} is over the same-person threshold "
            f"{embedder.threshold:.2f} ({embedder.method})"
        )
    return IdentityReport(
        measured=True,
        reason=reason,
        method=embedder.method,
        distance=worst.distance if worst else None,
        similarity=0.0 if lost else (worst.similarity if worst else None),
        same_person=same,
        threshold=embedder.threshold,
        metric=embedder.metric,
        faces=matches,
        lost_faces=lost,
        reference_faces=len(ref_faces),
        output_faces=len(out_faces),
        seconds=time.perf_counter() - started,
    )
