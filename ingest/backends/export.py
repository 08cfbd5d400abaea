"""The CLIP towers exported to ONNX once per checkpoint snapshot and precision, cached in the data folder.

Layout: `<models_dir>/<snapshot>/onnx-<precision>/{vision,text}.onnx` and a `manifest.json` written last, so a
folder without a manifest is an export that never finished. Files are written to `.part` names and renamed; a lock
file per snapshot keeps two processes (a web app and a worker starting together) from exporting at once. A file
whose size or modification time no longer matches the manifest is hashed again, and rebuilt when it changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

# Bumped whenever the exported graphs change (inputs, outputs, opset, exporter): older folders are then rebuilt.
EXPORT_FORMAT = 1
# The TorchScript exporter first: here it exports ViT-B/32 in 5 s where torch.export's takes 13 s (a tiny test
# model: 0.15 s vs 3 s), and ONNX Runtime runs both graphs at the same speed. torch has deprecated it, so when it
# is gone (or fails on a model) the torch.export-based exporter takes over.
EXPORTERS = ("torchscript", "dynamo")
TORCHSCRIPT_OPSET = 17
DYNAMO_OPSET = 20
LOCK_WAIT_SECONDS = 3600.0  # an export of a large checkpoint on a slow CPU takes minutes, never an hour
MANIFEST = "manifest.json"
TOWERS = ("vision", "text")


@dataclass(frozen=True)
class Exported:
    """The ONNX files of one snapshot at one precision."""

    folder: Path
    vision: Path
    text: Path


@dataclass(frozen=True)
class TorchTowersForExport:
    """What an export needs: the fp32 towers on the CPU and an example of each input."""

    vision: torch.nn.Module
    text: torch.nn.Module
    image_size: tuple[int, int]
    example_ids: torch.Tensor
    max_tokens: int  # the text tower's position embeddings: the longest input the graph must accept


class _VisionGraph(torch.nn.Module):
    def __init__(self, vision: torch.nn.Module) -> None:
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixel_values).image_embeds


class _TextGraph(torch.nn.Module):
    """input_ids only: CLIP's causal mask means the end-of-text token, where the text is pooled, never attends to
    the padding after it, so the attention mask changes nothing."""

    def __init__(self, text: torch.nn.Module) -> None:
        super().__init__()
        self.text = text

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids=input_ids).text_embeds


def snapshot_folder(models_dir: Path, snapshot: str) -> Path:
    return models_dir / snapshot.replace(":", "-").replace("/", "-")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_record(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(path)}


def _intact(folder: Path, snapshot: str, precision: str) -> bool:
    """Whether `folder` holds a finished export of this snapshot and precision whose files are unchanged."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if (manifest.get("format"), manifest.get("snapshot"), manifest.get("precision")) != (
            EXPORT_FORMAT, snapshot, precision):
        log.info("exported models in %s are from another export format or snapshot: rebuilding", folder)
        return False
    for tower in TOWERS:
        path, record = folder / f"{tower}.onnx", manifest.get("files", {}).get(f"{tower}.onnx", {})
        try:
            stat = path.stat()
        except OSError:
            return False
        if stat.st_size != record.get("size"):
            log.warning("exported model %s is %d bytes, %s were written: rebuilding", path, stat.st_size,
                        record.get("size"))
            return False
        if stat.st_mtime_ns != record.get("mtime_ns") and _sha256(path) != record.get("sha256"):
            log.warning("exported model %s changed since it was written: rebuilding", path)
            return False
    return True


def invalidate(exported: Exported) -> None:
    """Make the next `ensure_exported` rebuild this export (e.g. its files do not load)."""
    (exported.folder / MANIFEST).unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(folder: Path, what: str) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is exporting %s; waiting for it", what)
        try:
            lock.acquire(timeout=LOCK_WAIT_SECONDS)
        except Timeout as exc:
            raise TimeoutError(f"gave up waiting {LOCK_WAIT_SECONDS:.0f} s for the export lock {lock.lock_file}; "
                               "if no vidsearch process is running, delete that file") from exc
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx prints its steps on stdout (which `--json` commands own) and warns about what it traces."""
    # onnxruntime.quantization logs every tensor it skips on the root logger.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    printed = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if printed.getvalue():
            log.debug("torch.onnx said: %s", printed.getvalue().strip())


def _export_fp32(towers: TorchTowersForExport, folder: Path, step: Callable[[str], None],
                 exporters: tuple[str, ...] = EXPORTERS) -> str:
    """Both towers to `folder`; returns the exporter that wrote them."""
    height, width = towers.image_size
    graphs = {
        "vision": (_VisionGraph(towers.vision), torch.zeros(2, 3, height, width), "pixel_values", "image_embeds",
                   {0: ("frames", 1, 4096)}),
        "text": (_TextGraph(towers.text), towers.example_ids, "input_ids", "text_embeds",
                 {0: ("texts", 1, 4096), 1: ("tokens", 2, towers.max_tokens)}),
    }
    used = exporters[0]
    for tower, (graph, example, input_name, output_name, axes) in graphs.items():
        step(f"exporting the {tower} tower to ONNX")
        part = folder / f"{tower}.onnx.part"
        for i, exporter in enumerate(exporters if used == exporters[0] else (used,)):
            try:
                _export_graph(graph.eval(), example, part, input_name, output_name, axes, exporter)
                used = exporter
                break
            except Exception as exc:  # noqa: BLE001 - a torch without the TorchScript exporter, or a graph it can't
                if i == len(exporters) - 1:
                    raise
                log.info("the %s exporter failed on the %s tower (%s: %s); trying %s", exporter, tower,
                         type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", exporters[i + 1])
        part.replace(folder / f"{tower}.onnx")
    return used


def _export_graph(graph: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str,
                  axes: dict[int, tuple[str, int, int]], exporter: str) -> None:
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        if exporter == "torchscript":
            torch.onnx.export(graph, (example,), str(path), input_names=[input_name], output_names=[output_name],
                              dynamic_axes={input_name: {a: name for a, (name, _lo, _hi) in axes.items()},
                                            output_name: {0: axes[0][0]}},
                              opset_version=TORCHSCRIPT_OPSET, dynamo=False)
        else:
            dims = {a: torch.export.Dim(name, min=lo, max=hi) for a, (name, lo, hi) in axes.items()}
            torch.onnx.export(graph, (example,), str(path), input_names=[input_name], output_names=[output_name],
                              dynamic_shapes={input_name: dims}, opset_version=DYNAMO_OPSET, dynamo=True,
                              external_data=False, verbose=False)


def _quantize_int8(source: Exported, folder: Path, step: Callable[[str], None]) -> None:
    """Dynamic int8 quantization: weights in QInt8 (twice as fast as QUInt8 on CPUs with VNNI), activations
    quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for tower in TOWERS:
        step(f"quantizing the {tower} tower to int8")
        part = folder / f"{tower}.onnx.part"
        with _quiet_exporter():
            quantize_dynamic(str(getattr(source, tower)), str(part), weight_type=QuantType.QInt8)
        part.replace(folder / f"{tower}.onnx")


def _write_manifest(folder: Path, model: str, snapshot: str, precision: str, seconds: float, exporter: str) -> None:
    manifest = {"format": EXPORT_FORMAT, "model": model, "snapshot": snapshot, "precision": precision,
                "exporter": exporter, "torch": torch.__version__, "export_seconds": round(seconds, 1),
                "files": {f"{tower}.onnx": _file_record(folder / f"{tower}.onnx") for tower in TOWERS}}
    part = folder / (MANIFEST + ".part")
    part.write_text(json.dumps(manifest, indent=2))
    part.replace(folder / MANIFEST)


def _exported(folder: Path) -> Exported:
    return Exported(folder, folder / "vision.onnx", folder / "text.onnx")


def _prune_other_snapshots(models_dir: Path, model: str, keep: Path) -> None:
    """Exports of earlier snapshots of the same model (a folder whose weights were replaced) are dead weight."""
    for other in models_dir.iterdir() if models_dir.is_dir() else ():
        if other == keep or not other.is_dir():
            continue
        manifests = list(other.glob(f"*/{MANIFEST}"))
        try:
            models = {json.loads(m.read_text()).get("model") for m in manifests}
        except (OSError, ValueError):
            continue
        if manifests and models == {model}:
            log.info("removing exported models of an earlier snapshot of %s: %s", model, other)
            shutil.rmtree(other, ignore_errors=True)


def ensure_exported(models_dir: Path, model: str, snapshot: str, precision: str,
                    load_towers: Callable[[], TorchTowersForExport],
                    progress: Callable[[str], None] | None = None,
                    exporters: tuple[str, ...] = EXPORTERS) -> Exported:
    """The ONNX towers of `snapshot` at `precision` (fp32 or int8), exported now if they are not cached intact.
    `load_towers` is called only when an export is needed (it loads the torch checkpoint)."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"ONNX exports are fp32 or int8, not {precision}")
    root = snapshot_folder(models_dir, snapshot)
    target = root / f"onnx-{precision}"
    if _intact(target, snapshot, precision):
        return _exported(target)
    steps = ["load"] + [f"{t}-fp32" for t in TOWERS] + ([f"{t}-int8" for t in TOWERS] if precision == "int8" else [])
    done = [0]

    def step(message: str) -> None:
        done[0] += 1
        text = f"{model}: {message} ({done[0]}/{len(steps)}; once per checkpoint, kept in {models_dir})"
        (progress or log.info)(text)

    with _locked(root, f"{model} ({precision})"):
        if _intact(target, snapshot, precision):  # another process finished it while this one waited
            return _exported(target)
        started = time.perf_counter()
        fp32 = root / "onnx-fp32"
        if not _intact(fp32, snapshot, "fp32"):
            step("loading the checkpoint in PyTorch")
            towers = load_towers()
            _reset(fp32)
            exporter = _export_fp32(towers, fp32, step, exporters)
            _write_manifest(fp32, model, snapshot, "fp32", time.perf_counter() - started, exporter)
            del towers
        else:
            done[0] += 3
        if precision == "int8":
            _reset(target)
            _quantize_int8(_exported(fp32), target, step)
            _write_manifest(target, model, snapshot, "int8", time.perf_counter() - started, "onnxruntime.quantization")
        log.info("%s: exported for ONNX Runtime (%s) in %.1f s", model, precision, time.perf_counter() - started)
    _prune_other_snapshots(models_dir, model, root)
    return _exported(target)


def _reset(folder: Path) -> None:
    """An empty folder for a new export (leftover `.part` files of an interrupted one go too)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
