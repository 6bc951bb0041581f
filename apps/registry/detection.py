"""Framework detection from file names and magic bytes only (SECURITY AR-10).

Uploaded bytes are inert: nothing here unpickles, imports, loads or extracts them. The only
parsers run on user bytes are ``struct`` on fixed headers, ``json`` on a safetensors header,
``yaml.safe_load`` on an ``MLmodel`` file, ``pickletools.genops`` (a disassembler that never
executes anything) to list the globals a pickle would import, and ``zipfile`` reading a zip's
central directory (names only). Every read is bounded by ``MAX_READ_BYTES``.
"""

import io
import json
import math
import pickletools
import re
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import yaml

HEAD_BYTES = 64 * 1024  # what callers should pass as `head`: enough for every magic check
MAX_READ_BYTES = 4 * 1024 * 1024  # the most detection reads of any one file

OpenStream = Callable[[], BinaryIO]

_PICKLE_SUFFIXES = frozenset({"pkl", "pickle", "joblib"})
_LEGACY_TORCH_SUFFIXES = frozenset({"pt", "pth", "bin", "ckpt"})
_KERAS_V3_MEMBERS = frozenset({"metadata.json", "config.json", "model.weights.h5"})
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TORCHSCRIPT_CODE = re.compile(r"[^/]+/code/__torch__(/|\.py$)")
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_QUIET_OPS = _PUT_OPS | {"MEMOIZE", "FRAME"}  # opcodes that do not push onto the stack
_MAX_LISTED = 50


@dataclass(frozen=True)
class FileKind:
    """What one file looks like. ``framework`` is "" when it is not a recognised model file."""

    framework: str = ""
    label: str = ""
    unsafe_pickle: bool = False
    details: dict[str, object] = field(default_factory=dict, hash=False)


class _ReadLimitExceeded(Exception):
    """A parser asked for more bytes than detection may read."""


class _BudgetedReader:
    """A seekable reader that refuses to hand out more than `budget` bytes in total."""

    def __init__(self, stream: BinaryIO, budget: int) -> None:
        self._stream = stream
        self._left = budget

    def read(self, size: int | None = -1) -> bytes:
        wanted = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        data = self._stream.read(wanted)
        self._left -= len(data)
        if self._left < 0:
            raise _ReadLimitExceeded
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def seekable(self) -> bool:
        return True


@dataclass(frozen=True)
class _Probe:
    """The facts a detector may look at: a name, the first bytes, and a bounded way to more."""

    name: str
    head: bytes
    open_stream: OpenStream | None
    size: int | None

    @property
    def suffix(self) -> str:
        return self.name.rsplit(".", 1)[-1].lower() if "." in self.name else ""

    def prefix(self, length: int) -> bytes | None:
        """The first `length` bytes, or None if the file is shorter or that is too much to read."""
        if length <= len(self.head):
            return self.head[:length]
        if length > MAX_READ_BYTES or self.open_stream is None:
            return None
        with self.open_stream() as stream:
            data = stream.read(length)
        return data if len(data) == length else None

    def whole(self, limit: int) -> bytes | None:
        """The whole file if it is at most `limit` bytes long, else None."""
        if self.size is not None and self.size > limit:
            return None
        if self.open_stream is None or (self.size is not None and self.size <= len(self.head)):
            return self.head if len(self.head) <= limit else None
        with self.open_stream() as stream:
            data = stream.read(limit + 1)
        return data if len(data) <= limit else None


def detect_file(
    path: str, head: bytes, open_stream: OpenStream | None = None, size: int | None = None
) -> FileKind:
    """Say what framework wrote the file at `path` from its name and first bytes.

    `head` should hold the first HEAD_BYTES bytes (fewer for a shorter file); `open_stream`,
    when given, opens the file from the start for the few formats whose evidence lies further
    in (a zip's central directory, a long safetensors header); `size` is the file size.
    """
    probe = _Probe(path.rsplit("/", 1)[-1], head[:HEAD_BYTES], open_stream, size)
    for detector in _DETECTORS:
        kind = detector(probe)
        if kind is not None:
            return kind
    return FileKind()


def _detect_mlmodel(probe: _Probe) -> FileKind | None:
    if probe.name != "MLmodel":
        return None
    document = _safe_yaml(probe.whole(1024 * 1024))
    flavors = document.get("flavors") if isinstance(document, dict) else None
    if not isinstance(flavors, dict):
        return FileKind(label="MLmodel (unreadable)")
    pyfunc = flavors.get("python_function")
    pyfunc = pyfunc if isinstance(pyfunc, dict) else {}
    details = {
        "flavors": [str(name) for name in list(flavors)[:_MAX_LISTED]],
        "loader_module": _text(pyfunc.get("loader_module")),
        "python_version": _text(pyfunc.get("python_version")),
        "mlflow_version": _text(document.get("mlflow_version")),
        "signature": _mlflow_signature(document.get("signature")),
    }
    return FileKind("mlflow", "MLflow model", details=details)


def _safe_yaml(data: bytes | None) -> object:
    if data is None:
        return None
    try:
        return yaml.safe_load(data.decode("utf-8", errors="replace"))
    except (yaml.YAMLError, RecursionError):
        return None


def _mlflow_signature(signature: object) -> dict[str, str]:
    if not isinstance(signature, dict):
        return {}
    # MLflow stores each part as a JSON string; keep them as text, never evaluate them.
    return {key: _text(signature.get(key), 4000) for key in ("inputs", "outputs", "params")}


def _text(value: object, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _detect_requirements(probe: _Probe) -> FileKind | None:
    if probe.name != "requirements.txt":
        return None
    text = (probe.whole(256 * 1024) or b"").decode("utf-8", errors="replace")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    requirements = [line[:200] for line in lines if line][:200]
    return FileKind(label="pip requirements", details={"requirements": requirements})


def _detect_saved_model(probe: _Probe) -> FileKind | None:
    # SavedModel proto: field 1 (saved_model_schema_version) = 1 comes first.
    if probe.name == "saved_model.pb" and probe.head[:2] == b"\x08\x01":
        return FileKind("tensorflow", "TensorFlow SavedModel")
    return None


def _detect_zip(probe: _Probe) -> FileKind | None:
    if probe.head[:4] != b"PK\x03\x04":
        return None
    names = _zip_names(probe)
    if names is None:
        return FileKind(
            label="ZIP archive (contents not inspected)",
            unsafe_pickle=probe.suffix in _LEGACY_TORCH_SUFFIXES,
        )
    return _classify_zip(names)


def _zip_names(probe: _Probe) -> list[str] | None:
    if probe.open_stream is None:
        return None
    try:
        with probe.open_stream() as stream:
            reader = _BudgetedReader(stream, MAX_READ_BYTES)
            with zipfile.ZipFile(reader) as archive:  # type: ignore[arg-type]
                return archive.namelist()
    except (zipfile.BadZipFile, _ReadLimitExceeded, ValueError, EOFError, struct.error):
        return None


def _classify_zip(names: list[str]) -> FileKind:
    details: dict[str, object] = {"entries": len(names)}
    if set(names) >= _KERAS_V3_MEMBERS:
        return FileKind("keras", "Keras v3 (.keras)", details=details)
    archives = [name[: -len("/data.pkl")] for name in names if _is_depth_two(name, "data.pkl")]
    if not archives:
        pickles = [name for name in names if name.rsplit(".", 1)[-1] in _PICKLE_SUFFIXES]
        return FileKind(label="ZIP archive", unsafe_pickle=bool(pickles), details=details)
    details["archive_folder"] = archives[0]
    if any(_TORCHSCRIPT_CODE.match(name) for name in names) and any(
        _is_depth_two(name, "constants.pkl") for name in names
    ):
        return FileKind("torchscript", "PyTorch (TorchScript)", True, details)
    return FileKind("pytorch", "PyTorch (torch.save archive)", True, details)


def _is_depth_two(name: str, leaf: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and parts[1] == leaf and bool(parts[0])


def _detect_safetensors(probe: _Probe) -> FileKind | None:
    if len(probe.head) < 10 or probe.head[8:9] != b"{":
        return None
    (length,) = struct.unpack("<Q", probe.head[:8])
    # Check the claimed length before reading it: a lying header must not make us read 2**64.
    if length < 2 or 8 + length > MAX_READ_BYTES:
        return None
    if probe.size is not None and 8 + length > probe.size:
        return None
    raw = probe.prefix(8 + length)
    summary = _safetensors_summary(_json(raw[8:]) if raw else None)
    if summary is None:
        return None
    data_end = summary.pop("data_end")
    if probe.size is not None and 8 + length + data_end != probe.size:
        return None
    return FileKind("safetensors", "safetensors", details=summary)


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _safetensors_summary(header: object) -> dict | None:
    if not isinstance(header, dict):
        return None
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return None
    tensors = list(header.values())
    if not tensors or not all(_is_tensor_entry(tensor) for tensor in tensors):
        return None
    return {
        "tensors": len(tensors),
        "parameters": sum(math.prod(tensor["shape"]) for tensor in tensors),
        "dtypes": sorted({tensor["dtype"] for tensor in tensors}),
        "metadata": {key: value[:1000] for key, value in list(metadata.items())[:_MAX_LISTED]},
        "data_end": max(tensor["data_offsets"][1] for tensor in tensors),
    }


def _is_tensor_entry(entry: object) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    return (
        isinstance(shape, list)
        and all(type(dim) is int and dim >= 0 for dim in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(offset) is int for offset in offsets)
        and 0 <= offsets[0] <= offsets[1]
    )


def _detect_gguf(probe: _Probe) -> FileKind | None:
    if probe.head[:4] != b"GGUF" or len(probe.head) < 24:
        return None
    (version,) = struct.unpack_from("<I", probe.head, 4)
    if not 1 <= version <= 15:
        return None
    count_format = "<II" if version == 1 else "<QQ"
    tensors, fields = struct.unpack_from(count_format, probe.head, 8)
    details = {"version": version, "tensors": tensors, "metadata_fields": fields}
    if version > 1:
        details["architecture"] = _gguf_architecture(probe.head, 24)
    return FileKind("gguf", f"GGUF v{version}", details=details)


def _gguf_architecture(head: bytes, offset: int) -> str:
    """The value of the first metadata key when it is `general.architecture`, else ""."""
    key = b"general.architecture"
    start = offset + 8 + len(key)
    if head[offset + 8 : start] != key or len(head) < start + 12:
        return ""
    value_type, length = struct.unpack_from("<IQ", head, start)
    value = head[start + 12 : start + 12 + min(length, 64)]
    return value.decode("utf-8", errors="replace") if value_type == 8 else ""


def _detect_onnx(probe: _Probe) -> FileKind | None:
    # ONNX has no magic: a ModelProto starts with field 1 (ir_version) as a small varint.
    head = probe.head
    if probe.suffix == "onnx" and len(head) > 1 and head[0] == 0x08 and 3 <= head[1] <= 13:
        return FileKind("onnx", "ONNX", details={"ir_version": head[1]})
    return None


def _detect_hdf5(probe: _Probe) -> FileKind | None:
    if probe.head[:8] != _HDF5_MAGIC:
        return None
    if probe.suffix in {"h5", "hdf5", "keras"}:
        return FileKind("keras", "Keras (legacy HDF5)")
    return FileKind(label="HDF5 file")


def _detect_pickle(probe: _Probe) -> FileKind | None:
    head = probe.head
    has_magic = len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5
    if not has_magic:
        return _pickle_by_name(probe)
    imports = _pickle_globals(head)
    details = {"protocol": head[1], "imports": imports}
    if any(name.startswith("sklearn.") for name in imports):
        flavour = "joblib" if probe.suffix == "joblib" else "pickle"
        return FileKind("sklearn", f"scikit-learn ({flavour})", True, details)
    if probe.suffix in _LEGACY_TORCH_SUFFIXES:
        return FileKind("pytorch", "PyTorch (legacy pickle)", True, details)
    return FileKind("pickle", "Python pickle", True, details)


def _pickle_by_name(probe: _Probe) -> FileKind | None:
    # A .pkl/.joblib without the protocol 2+ magic is still pickle inside (protocol 0/1, or
    # joblib's compressed formats): warn rather than trust the first bytes.
    if probe.suffix in _PICKLE_SUFFIXES:
        return FileKind("pickle", f"Python pickle (.{probe.suffix})", True)
    return None


def _pickle_globals(data: bytes) -> list[str]:
    """The `module.name` globals a pickle would import, read by disassembling (advisory)."""
    found: dict[str, None] = {}
    memo: dict[object, object] = {}
    recent: tuple[object, object] = (None, None)
    try:
        for opcode, arg, _ in pickletools.genops(data):
            value = _pickle_step(opcode.name, arg, memo, recent, found)
            if opcode.name not in _QUIET_OPS:
                recent = (recent[1], value)
            if len(found) >= _MAX_LISTED:
                break
    except Exception:
        # Hostile or non-pickle bytes (joblib's inline arrays) stop the disassembler anywhere;
        # what was found until then is still worth showing.
        return list(found)
    return list(found)


def _pickle_step(name: str, arg: object, memo: dict, recent: tuple, found: dict) -> object:
    if name in _STRING_OPS:
        return arg
    if name in _GET_OPS:
        return memo.get(arg)
    if name == "MEMOIZE":
        memo[len(memo)] = recent[1]
    elif name in _PUT_OPS:
        memo[arg] = recent[1]
    elif name == "GLOBAL" and isinstance(arg, str):
        found[arg.replace(" ", ".")] = None
    elif name == "STACK_GLOBAL" and all(isinstance(part, str) for part in recent):
        found[f"{recent[0]}.{recent[1]}"] = None
    return None


_DETECTORS: tuple[Callable[[_Probe], FileKind | None], ...] = (
    _detect_mlmodel,
    _detect_requirements,
    _detect_saved_model,
    _detect_zip,
    _detect_safetensors,
    _detect_gguf,
    _detect_onnx,
    _detect_hdf5,
    _detect_pickle,
)


@dataclass(frozen=True)
class VersionFramework:
    """What a whole version holds: its main framework, where it lives and how to load it."""

    framework: str
    label: str
    main_path: str  # the file or folder a loader opens, relative to the version's root
    unsafe_pickle: bool = False
    pickle_paths: tuple[str, ...] = ()
    warning: str = ""
    details: dict[str, object] = field(default_factory=dict, hash=False)
    snippet: str = ""


_PICKLE_FRAMEWORKS = ("torchscript", "pytorch", "sklearn", "pickle")
# When a version holds several kinds of file, the descriptor or the safest format leads.
_PRIORITY = ("mlflow", "tensorflow", "keras", "safetensors", "onnx", "gguf", *_PICKLE_FRAMEWORKS)
PICKLE_WARNING = "unsafe to load from untrusted sources (loading a pickle can run arbitrary code)"


def detect_version(files: Mapping[str, FileKind]) -> VersionFramework:
    """Summarise a version from its files' kinds, keyed by their relative paths."""
    pickles = tuple(sorted(path for path, kind in files.items() if kind.unsafe_pickle))
    framework, path = _primary(files)
    kind = files.get(path, FileKind())
    main_path = _folder(path) if framework in {"mlflow", "tensorflow"} else path
    details = dict(kind.details) | _version_details(framework, main_path, files)
    return VersionFramework(
        framework=framework,
        label=_version_label(framework, kind),
        main_path=main_path,
        unsafe_pickle=bool(pickles),
        pickle_paths=pickles,
        warning=_pickle_warning(pickles),
        details=details,
        snippet=load_snippet(framework, [path] if path else []),
    )


def _pickle_warning(pickles: tuple[str, ...]) -> str:
    if not pickles:
        return ""
    more = f" and {len(pickles) - 3} more" if len(pickles) > 3 else ""
    return f"Pickle-based files ({', '.join(pickles[:3])}{more}): {PICKLE_WARNING}."


def _primary(files: Mapping[str, FileKind]) -> tuple[str, str]:
    for framework in _PRIORITY:
        # The shallowest match wins: the model at the root, not a nested helper file.
        paths = sorted((p for p, k in files.items() if k.framework == framework), key=_depth_key)
        if paths:
            return framework, paths[0]
    return "", ""


def _depth_key(path: str) -> tuple[int, str]:
    return path.count("/"), path


def _folder(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


def _version_label(framework: str, kind: FileKind) -> str:
    if framework == "mlflow":
        return f"MLflow model ({', '.join(map(str, kind.details.get('flavors', [])))})"
    return kind.label or "No model file recognised"


def _version_details(framework: str, folder: str, files: Mapping[str, FileKind]) -> dict:
    prefix = "" if folder == "." else f"{folder}/"
    if framework == "tensorflow":
        return {"variables": any(path.startswith(f"{prefix}variables/") for path in files)}
    if framework == "mlflow":
        requirements = files.get(f"{prefix}requirements.txt", FileKind()).details
        return {"requirements": requirements.get("requirements", [])}
    return {}


_SNIPPET_SUFFIXES = {
    "safetensors": ("safetensors",),
    "onnx": ("onnx",),
    "gguf": ("gguf",),
    "keras": ("keras", "h5", "hdf5"),
    "torchscript": ("pt", "pth"),
    "pytorch": ("pt", "pth", "bin", "ckpt"),
    "sklearn": ("joblib", "pkl", "pickle"),
    "pickle": ("pkl", "pickle", "joblib"),
}
_SNIPPETS = {
    "safetensors": "from safetensors.torch import load_file\n\ntensors = load_file({path})",
    "onnx": "import onnxruntime as ort\n\nsession = ort.InferenceSession({path})",
    "gguf": (
        "from gguf import GGUFReader\n\n"
        "reader = GGUFReader({path})  # to run it with llama.cpp: llama-cli -m {path}"
    ),
    "keras": (
        "import keras\n\n# safe_mode=True (the default) refuses Lambda layers that carry code.\n"
        "model = keras.saving.load_model({path}, safe_mode=True)"
    ),
    "tensorflow": "import tensorflow as tf\n\nmodel = tf.saved_model.load({path})",
    "mlflow": "import mlflow\n\nmodel = mlflow.pyfunc.load_model({path})",
    "torchscript": 'import torch\n\nmodel = torch.jit.load({path}, map_location="cpu")',
    "pytorch": (
        "import torch\n\n# weights_only=True refuses arbitrary objects: never turn it off for a\n"
        "# file you did not make yourself.\n"
        'state_dict = torch.load({path}, weights_only=True, map_location="cpu")'
    ),
    "joblib": "import joblib\n\nmodel = joblib.load({path})",
    "pickle": 'import pickle\n\nwith open({path}, "rb") as f:\n    model = pickle.load(f)',
}
_SNIPPET_WARNINGS = {
    "mlflow": "# WARNING: MLflow imports the flavor's loader module and may unpickle files:\n"
    "# load only from sources you trust.\n",
    "pickle": f"# WARNING: pickle-based, {PICKLE_WARNING}.\n",
}


def load_snippet(framework: str, paths: Sequence[str]) -> str:
    """A short Python snippet that loads the version's main file (paths relative to its root)."""
    path = _snippet_path(framework, paths)
    template = _SNIPPETS.get(_snippet_key(framework, path)) if path is not None else None
    if template is None:
        return "# No loadable model file was recognised in this version."
    # json.dumps gives a valid Python string literal, escapes included: no code injection.
    code = template.format(path=json.dumps(path, ensure_ascii=False))
    return _snippet_warning(framework) + code + "\n"


def _snippet_path(framework: str, paths: Sequence[str]) -> str | None:
    if framework in {"mlflow", "tensorflow"}:
        marker = "MLmodel" if framework == "mlflow" else "saved_model.pb"
        found = [p for p in paths if p.rsplit("/", 1)[-1] == marker]
        return _folder(min(found, key=_depth_key)) if found else (paths[0] if paths else None)
    suffixes = _SNIPPET_SUFFIXES.get(framework, ())
    found = [p for p in paths if p.rsplit(".", 1)[-1].lower() in suffixes]
    return min(found or paths, key=_depth_key) if (found or paths) else None


def _snippet_key(framework: str, path: str) -> str:
    if framework in {"sklearn", "pickle"}:
        return "joblib" if path.lower().endswith(".joblib") else "pickle"
    return framework


def _snippet_warning(framework: str) -> str:
    if framework == "mlflow":
        return _SNIPPET_WARNINGS["mlflow"]
    if framework in _PICKLE_FRAMEWORKS:
        return _SNIPPET_WARNINGS["pickle"]
    return ""
