"""Framework detection reads names and magic bytes only, never loads anything (SECURITY AR-10)."""

import ast
import hashlib
import io
import json
import pickle
import random
import struct
import sys
import zipfile
from pathlib import Path

import pytest

from apps.registry import detection
from apps.registry.detection import (
    HEAD_BYTES,
    FileKind,
    detect_file,
    detect_version,
    load_snippet,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["files"]
COARSE = {"torchscript": "pytorch", "": "none"}


def coarse(framework: str) -> str:
    return COARSE.get(framework, framework)


class CountingStream(io.BytesIO):
    """A file opened by the code under test; remembers how many bytes it handed out."""

    opened: list["CountingStream"] = []

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0
        CountingStream.opened.append(self)

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def detect_bytes(path: str, data: bytes, *, stream: bool = True) -> FileKind:
    opener = (lambda: CountingStream(data)) if stream else None
    return detect_file(path, data[:HEAD_BYTES], opener, len(data))


def detect_fixture(relative: str) -> FileKind:
    return detect_bytes(Path(relative).name, (FIXTURES / relative).read_bytes())


def detect_fixture_folder(folder: str) -> dict[str, FileKind]:
    files = sorted(path for path in (FIXTURES / folder).rglob("*") if path.is_file())
    return {
        path.relative_to(FIXTURES / folder).as_posix(): detect_bytes(path.name, path.read_bytes())
        for path in files
    }


@pytest.fixture(autouse=True)
def _reset_streams() -> None:
    CountingStream.opened.clear()


def _expected_file_family(entry: dict) -> str:
    # Inside an MLflow model only the descriptor says "mlflow"; the rest are what they are.
    if entry["family"] == "mlflow":
        return {"MLmodel": "mlflow", "model.pkl": "sklearn"}.get(Path(entry["path"]).name, "none")
    return entry["family"]


@pytest.mark.parametrize("entry", MANIFEST, ids=[entry["path"] for entry in MANIFEST])
def test_manifest_fixture_is_detected(entry: dict) -> None:
    data = (FIXTURES / entry["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], "fixture changed"
    kind = detect_fixture(entry["path"])
    assert coarse(kind.framework) == _expected_file_family(entry)
    assert kind.unsafe_pickle == entry["pickle_based"]
    version = detect_version(detect_fixture_folder(entry["path"].split("/")[0]))
    assert coarse(version.framework) == entry["family"]


def test_fixture_details() -> None:
    assert detect_fixture("pytorch/model_scripted.pt").framework == "torchscript"
    assert detect_fixture("pytorch/model.pt").details["archive_folder"] == "model"
    safetensors = detect_fixture("safetensors/model.safetensors").details
    assert safetensors["tensors"] == 4 and safetensors["dtypes"] == ["F32"]
    assert safetensors["metadata"]["model"] == "TinyNet"
    assert detect_fixture("onnx/model.onnx").details == {"ir_version": 8}
    gguf = detect_fixture("gguf/model.gguf").details
    assert (gguf["version"], gguf["tensors"], gguf["architecture"]) == (3, 2, "llama")
    joblib_kind = detect_fixture("sklearn/model.joblib")
    assert joblib_kind.label == "scikit-learn (joblib)"
    assert "sklearn.linear_model._logistic.LogisticRegression" in joblib_kind.details["imports"]


def test_mlflow_version_summary() -> None:
    version = detect_version(detect_fixture_folder("mlflow_sklearn"))
    assert version.main_path == "."
    assert version.details["flavors"] == ["python_function", "sklearn"]
    assert version.details["loader_module"] == "mlflow.sklearn"
    assert "scikit-learn==1.9.1" in version.details["requirements"]
    assert version.pickle_paths == ("model.pkl",)
    assert "unsafe to load from untrusted sources" in version.warning
    assert 'mlflow.pyfunc.load_model(".")' in version.snippet


def test_not_a_model_folder() -> None:
    version = detect_version(detect_fixture_folder("not_a_model"))
    assert (version.framework, version.unsafe_pickle, version.warning) == ("", False, "")


class Boom:
    """Unpickling this opens (creates) the marker file: the canary for AR-10."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _torch_like_zip(payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/data/0", b"\0" * 16)
    return buffer.getvalue()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize(
    ("name", "framework"),
    [
        ("evil.pkl", "pickle"),
        ("model.joblib", "pickle"),
        ("model.pt", "pytorch"),
        ("pytorch_model.bin", "pytorch"),
        ("innocent.dat", "pickle"),
    ],
)
def test_malicious_pickle_is_flagged_and_never_run(
    tmp_path: Path, protocol: int, name: str, framework: str
) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Boom(marker), protocol=protocol)
    kind = detect_bytes(name, payload)
    assert kind.framework == framework
    assert kind.unsafe_pickle
    assert "io.open" in kind.details["imports"]  # what it would import, shown as advice
    zipped = detect_bytes("model.pt", _torch_like_zip(payload))
    assert (zipped.framework, zipped.unsafe_pickle) == ("pytorch", True)
    detect_version({name: kind, "model.pt": zipped})
    load_snippet(framework, [name])
    assert not marker.exists()


def test_the_canary_is_live(tmp_path: Path) -> None:
    # Control for the test above: the same bytes DO create the marker when unpickled.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Boom(marker))).close()
    assert marker.exists()


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_lying_safetensors_header_is_refused_without_reading_it() -> None:
    fake = struct.pack("<Q", 2**62) + b'{"w": {"dtype": "F32", "shape": [1]' + b"\0" * 100
    assert detect_bytes("model.safetensors", fake).framework == ""
    assert CountingStream.opened == []  # the claimed length was checked before any read


def test_safetensors_header_longer_than_the_file_is_refused() -> None:
    fake = struct.pack("<Q", 4096) + b'{"a": 1}' + b" " * 100
    assert detect_bytes("model.safetensors", fake).framework == ""
    assert CountingStream.opened == []


@pytest.mark.parametrize(
    ("header", "data"),
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 9),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8),
        ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 8]}}, b"\0" * 8),
        (
            {"__metadata__": {"a": 1}, "w": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}},
            b"\0" * 4,
        ),
        ({}, b""),
    ],
)
def test_inconsistent_safetensors_is_not_safetensors(header: dict, data: bytes) -> None:
    assert detect_bytes("model.safetensors", _safetensors_bytes(header, data)).framework == ""


def test_safetensors_long_header_is_read_through_the_stream_within_the_limit() -> None:
    header = {
        f"layer{i}.weight": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}
        for i in range(3000)
    }
    data = _safetensors_bytes(header, b"\0\0")
    assert len(data) > HEAD_BYTES
    kind = detect_bytes("model.safetensors", data)
    assert kind.framework == "safetensors" and kind.details["tensors"] == 3000
    assert sum(stream.bytes_read for stream in CountingStream.opened) <= len(data)


@pytest.mark.parametrize(
    "data",
    [
        random.Random(7).randbytes(4096),
        b"\x08\xff" + random.Random(8).randbytes(200),
        b"\x08\x02" + random.Random(9).randbytes(200),
        b"",
        b"\x08",
    ],
)
def test_random_bytes_named_onnx_are_not_onnx(data: bytes) -> None:
    assert detect_bytes("model.onnx", data).framework == ""


def test_onnx_needs_its_name() -> None:
    data = (FIXTURES / "onnx" / "model.onnx").read_bytes()
    assert detect_bytes("model.bin", data).framework == ""


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_zip_that_is_not_a_model(tmp_path: Path) -> None:
    data = _zip({"readme.txt": b"hi", "../../evil.sh": b"boom", "/tmp/abs": b"x", "d.csv": b""})
    kind = detect_bytes("bundle.zip", data)
    assert kind.framework == ""
    assert kind.label == "ZIP archive" and kind.details["entries"] == 4
    assert not kind.unsafe_pickle
    assert not (tmp_path.parent / "evil.sh").exists()
    # A pickle inside any zip warns, even when the zip is not a framework's archive.
    assert detect_bytes("b.zip", _zip({"data.pkl": b"", "x": b""})).unsafe_pickle
    assert detect_bytes("b.zip", _zip({"x/model.joblib": b""})).framework == ""


def test_zip_central_directory_read_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detection, "MAX_READ_BYTES", 4096)
    data = _zip(
        {f"archive/data/{i:05d}-{'x' * 40}": b"" for i in range(500)} | {"archive/data.pkl": b""}
    )
    kind = detect_bytes("model.pt", data)
    assert kind.framework == "" and kind.label == "ZIP archive (contents not inspected)"
    assert kind.unsafe_pickle  # a .pt we could not inspect is presumed to hold pickles
    assert max(stream.bytes_read for stream in CountingStream.opened) <= 4097


def test_corrupt_zip_and_no_stream() -> None:
    assert detect_bytes("model.keras", b"PK\x03\x04" + b"\0" * 50).framework == ""
    keras = (FIXTURES / "keras" / "model.keras").read_bytes()
    assert detect_bytes("model.keras", keras, stream=False).label.startswith("ZIP archive")


MLMODEL_EVIL = b"""\
flavors:
  python_function:
    loader_module: evil
    code: code
    python_version: 3.11.7
signature:
  inputs: '[{"type": "double", "name": "x"}]'
  outputs: '[{"type": "long"}]'
mlflow_version: 2.0.0
"""


def test_mlmodel_naming_an_evil_loader_is_parsed_not_imported() -> None:
    files = {
        "MLmodel": detect_bytes("MLmodel", MLMODEL_EVIL),
        "code/evil.py": detect_bytes("evil.py", b"open('/tmp/pwned', 'w')\n"),
    }
    version = detect_version(files)
    assert version.framework == "mlflow"
    assert version.details["loader_module"] == "evil"
    assert version.details["signature"]["inputs"].startswith('[{"type": "double"')
    assert "evil" not in sys.modules


def test_mlmodel_with_python_tags_is_refused_by_safe_load(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"flavors: !!python/object/apply:os.system ['touch {marker}']\n".encode()
    kind = detect_bytes("MLmodel", text)
    assert (kind.framework, kind.label) == ("", "MLmodel (unreadable)")
    assert not marker.exists()


def test_oversized_mlmodel_is_not_read() -> None:
    kind = detect_bytes("MLmodel", b"flavors: {}\n" + b"#" * (2 * 1024 * 1024))
    assert kind.framework == ""


def test_gguf_with_unknown_version_is_not_gguf() -> None:
    data = b"GGUF" + struct.pack("<IQQ", 99, 1, 1)
    assert detect_bytes("model.gguf", data).framework == ""


def test_truncated_and_random_inputs_never_crash() -> None:
    rng = random.Random(1234)
    names = ["model.pt", "model.onnx", "model.safetensors", "MLmodel", "m.pkl", "m.gguf", "x.h5"]
    samples = [(FIXTURES / entry["path"]).read_bytes() for entry in MANIFEST]
    for _ in range(3000):
        sample = rng.choice(samples)
        data = sample[: rng.randint(0, len(sample))]
        if rng.random() < 0.3:
            data = bytearray(data) + rng.randbytes(rng.randint(0, 64))
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        kind = detect_bytes(rng.choice(names), bytes(data))
        assert isinstance(kind, FileKind)


def test_saved_model_layout() -> None:
    saved = detect_bytes("saved_model.pb", b"\x08\x01\x12\x00")
    files = {
        "export/saved_model.pb": saved,
        "export/variables/variables.index": FileKind(),
        "export/variables/variables.data-00000-of-00001": FileKind(),
        "export/fingerprint.pb": FileKind(),
    }
    version = detect_version(files)
    assert (version.framework, version.main_path) == ("tensorflow", "export")
    assert version.details["variables"] is True
    assert 'tf.saved_model.load("export")' in version.snippet
    assert detect_bytes("saved_model.pb", b"garbage").framework == ""


def test_safest_format_leads_but_pickles_still_warn() -> None:
    files = {
        "model.safetensors": detect_fixture("safetensors/model.safetensors"),
        "pytorch_model.bin": detect_bytes("pytorch_model.bin", pickle.dumps({"w": 1})),
    }
    version = detect_version(files)
    assert version.framework == "safetensors"
    assert version.pickle_paths == ("pytorch_model.bin",)
    assert not version.snippet.startswith("# WARNING")


@pytest.mark.parametrize(
    ("framework", "paths", "expected"),
    [
        ("safetensors", ["model.safetensors"], 'load_file("model.safetensors")'),
        ("onnx", ["model.onnx"], 'InferenceSession("model.onnx")'),
        ("pytorch", ["model.pt"], 'torch.load("model.pt", weights_only=True'),
        ("torchscript", ["model_scripted.pt"], 'torch.jit.load("model_scripted.pt"'),
        ("sklearn", ["model.joblib"], 'joblib.load("model.joblib")'),
        ("sklearn", ["model.pkl"], "pickle.load(f)"),
        ("pickle", ["data/x.pickle"], 'open("data/x.pickle", "rb")'),
        ("keras", ["model.keras"], 'keras.saving.load_model("model.keras"'),
        ("tensorflow", ["sm/saved_model.pb"], 'tf.saved_model.load("sm")'),
        ("mlflow", ["m/MLmodel", "m/model.pkl"], 'mlflow.pyfunc.load_model("m")'),
        ("gguf", ["model.gguf"], 'GGUFReader("model.gguf")'),
    ],
)
def test_load_snippet(framework: str, paths: list[str], expected: str) -> None:
    snippet = load_snippet(framework, paths)
    assert expected in snippet
    ast.parse(snippet)
    pickled = framework in {"pytorch", "torchscript", "sklearn", "pickle", "mlflow"}
    assert snippet.startswith("# WARNING") == pickled


def test_load_snippet_quotes_paths_safely() -> None:
    snippet = load_snippet("onnx", ['we"ird\\name.onnx'])
    tree = ast.parse(snippet)
    strings = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)]
    assert 'we"ird\\name.onnx' in strings


@pytest.mark.parametrize(("framework", "paths"), [("", []), ("onnx", []), ("unknown", ["x.bin"])])
def test_load_snippet_without_a_model(framework: str, paths: list[str]) -> None:
    assert load_snippet(framework, paths).startswith("# No loadable model")
