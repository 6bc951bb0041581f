"""Comparing versions of one model: pure functions over plain data, no database access.

The first version given is the *baseline*; every other version is compared with it:
metrics get a delta and a verdict (better/worse by the model's `metric_directions`, else
just higher/lower), keyed metadata (params, dependencies, tags, source) and training data
are matched by key or URI, files by path with SHA-256 deciding "changed". The model card is
per model, not per version, so the text diff is of the versions' own `description` fields.
"""

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apps.registry.markdown import card_word_diff

HIGHER, LOWER = "higher", "lower"
# Cell states, relative to the baseline's value for the same key.
SAME, CHANGED, ADDED, REMOVED, ABSENT, BASE = (
    "same",
    "changed",
    "added",
    "removed",
    "absent",
    "baseline",
)
# "numpy>=1.26" → "numpy": requirement lists are matched by package, not by position.
_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_DELTA_DIGITS = 12  # 0.93 - 0.91 is 0.020000000000000018; nobody means the tail


@dataclass(frozen=True)
class FileData:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class VersionData:
    """What a comparison reads of a version, detached from the ORM."""

    number: int
    description: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, Any] = field(default_factory=dict)
    dependencies: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    training_data: Sequence[Mapping[str, Any]] = ()
    files: Sequence[FileData] = ()


def version_data(version: Any) -> VersionData:
    """Read a `ModelVersion` (files prefetched) into `VersionData`."""
    files = tuple(
        FileData(artifact.path, artifact.size, artifact.sha256 or artifact.upload_sha256)
        for artifact in version.files.all()
    )
    return VersionData(
        number=version.number,
        description=version.description or "",
        metrics=version.metrics or {},
        params=version.params or {},
        tags=version.tags or {},
        dependencies=version.dependencies or {},
        source=version.source or {},
        training_data=tuple(version.training_data or ()),
        files=files,
    )


# --- Metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricCell:
    value: Any  # None: the version has no such metric
    delta: float | None = None  # value - baseline value
    relative: float | None = None  # delta / |baseline value|, when that is not 0
    better: bool | None = None  # None: no direction, no change, or nothing to compare
    best: bool = False  # the best value of the row (by direction), ties included

    @property
    def shown(self) -> str:
        return exact(self.value) if self.value is not None else ""

    @property
    def delta_text(self) -> str:
        return signed(self.delta) if self.delta is not None else ""

    @property
    def relative_text(self) -> str:
        if self.relative is None or self.delta == 0:
            return ""
        return f"{self.relative * 100:+.1f}%"

    @property
    def arrow(self) -> str:
        if not self.delta:
            return "="
        return "▲" if self.delta > 0 else "▼"

    @property
    def verdict(self) -> str:
        """better | worse | same | higher | lower | "" (nothing to compare)."""
        if self.delta is None:
            return ""
        if self.delta == 0:
            return "same"
        if self.better is not None:
            return "better" if self.better else "worse"
        return "higher" if self.delta > 0 else "lower"


@dataclass(frozen=True)
class MetricRow:
    name: str
    direction: str  # "higher", "lower" or "" (not set)
    cells: tuple[MetricCell, ...]

    @property
    def differs(self) -> bool:
        return len({_key(cell.value) for cell in self.cells}) > 1


def exact(value: Any) -> str:
    """A stored value digit for digit: 0.9312, 12, 1e-05 (floats that are whole lose ".0")."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if not isinstance(value, str) else value


def signed(delta: float) -> str:
    """ "+0.02", "-3", "0": a change with its sign."""
    if delta == 0:
        return "0"
    text = exact(abs(delta))
    return f"+{text}" if delta > 0 else f"-{text}"


def is_number(value: Any) -> bool:
    """A finite int or float; booleans are not numbers here."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def metric_rows(versions: Sequence[VersionData], directions: Mapping[str, str]) -> list[MetricRow]:
    """One row per metric any version has, by name; cells in the order of `versions`."""
    names = sorted({name for version in versions for name in version.metrics}, key=str.casefold)
    return [_metric_row(name, versions, directions.get(name, "")) for name in names]


def _metric_row(name: str, versions: Sequence[VersionData], direction: str) -> MetricRow:
    direction = direction if direction in (HIGHER, LOWER) else ""
    values = [version.metrics.get(name) for version in versions]
    best = _best_value(values, direction)
    base = values[0]
    cells = [MetricCell(base, best=best is not None and base == best)]
    for value in values[1:]:
        cell = _metric_cell(value, base, direction)
        cells.append(_with_best(cell, best))
    return MetricRow(name, direction, tuple(cells))


def _metric_cell(value: Any, base: Any, direction: str) -> MetricCell:
    if not (is_number(value) and is_number(base)):
        return MetricCell(value)
    delta = float(f"{value - base:.{_DELTA_DIGITS}g}")
    relative = delta / abs(base) if base else None
    better = None
    if direction and delta != 0:
        better = (delta > 0) == (direction == HIGHER)
    return MetricCell(value, delta, relative, better)


def _with_best(cell: MetricCell, best: Any) -> MetricCell:
    if best is None or cell.value != best:
        return cell
    return MetricCell(cell.value, cell.delta, cell.relative, cell.better, best=True)


def _best_value(values: Sequence[Any], direction: str) -> Any:
    """The best of the numeric values by `direction`; None when there is no contest."""
    numbers = [value for value in values if is_number(value)]
    if not direction or len(numbers) < 2 or len(set(numbers)) < 2:
        return None
    return max(numbers) if direction == HIGHER else min(numbers)


# --- Keyed metadata: params, dependencies, tags, source ---------------------------------------


@dataclass(frozen=True)
class ValueCell:
    present: bool
    value: str  # displayed form ("" when absent)
    state: str  # BASE for the baseline column, else SAME/CHANGED/ADDED/REMOVED/ABSENT


@dataclass(frozen=True)
class KeyRow:
    key: str
    cells: tuple[ValueCell, ...]

    @property
    def differs(self) -> bool:
        return any(cell.state not in (SAME, BASE, ABSENT) for cell in self.cells)


def display(value: Any) -> str:
    """A metadata value as text: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted keys; lists of requirement strings are keyed by package
    (`requirements[numpy]`), so "numpy>=1.26 → numpy>=2.0" is one changed row."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        elif _is_string_list(value):
            flat.update(_requirement_items(name, value))
        else:
            flat[name] = value
    return flat


def _is_string_list(value: Any) -> bool:
    return (
        isinstance(value, list | tuple) and bool(value) and all(isinstance(v, str) for v in value)
    )


def _requirement_items(name: str, items: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for index, item in enumerate(items):
        match = _REQUIREMENT_NAME.match(item)
        label = match.group(1).casefold() if match else str(index)
        key = f"{name}[{label}]"
        found[key if key not in found else f"{name}[{index}]"] = item
    return found


def key_rows(mappings: Sequence[Mapping[str, Any]]) -> list[KeyRow]:
    """One row per key any mapping has; each cell's state is relative to the first."""
    keys = sorted({key for mapping in mappings for key in mapping}, key=str.casefold)
    return [_key_row(key, [_lookup(mapping, key) for mapping in mappings]) for key in keys]


_MISSING = object()


def _lookup(mapping: Mapping[str, Any], key: str) -> Any:
    return mapping.get(key, _MISSING)


def _key_row(key: str, values: Sequence[Any]) -> KeyRow:
    base = values[0]
    cells = [_value_cell(base, BASE)]
    for value in values[1:]:
        cells.append(_value_cell(value, _state(base, value)))
    return KeyRow(key, tuple(cells))


def _value_cell(value: Any, state: str) -> ValueCell:
    if value is _MISSING:
        return ValueCell(False, "", state)
    return ValueCell(True, display(value), state)


def _state(base: Any, value: Any) -> str:
    if base is _MISSING and value is _MISSING:
        return ABSENT
    if base is _MISSING:
        return ADDED
    if value is _MISSING:
        return REMOVED
    return SAME if _key(base) == _key(value) else CHANGED


def _key(value: Any) -> str:
    """Equality that tells 1 from 1.0 from True the way JSON readers expect: by JSON text."""
    return json.dumps(value, sort_keys=True, default=str)


# --- Training data and files -----------------------------------------------------------------


def training_rows(versions: Sequence[VersionData]) -> list[KeyRow]:
    """Training data matched by URI; the value compared is the sha256 (then description)."""
    mappings = []
    for version in versions:
        by_uri: dict[str, Any] = {}
        for reference in version.training_data:
            uri = str(reference.get("uri", ""))
            by_uri[uri] = reference.get("sha256") or reference.get("description") or ""
        mappings.append(by_uri)
    return key_rows(mappings)


@dataclass(frozen=True)
class FileCell:
    file: FileData | None
    state: str


@dataclass(frozen=True)
class FileRow:
    path: str
    cells: tuple[FileCell, ...]

    @property
    def differs(self) -> bool:
        return any(cell.state not in (SAME, BASE, ABSENT) for cell in self.cells)


def file_rows(versions: Sequence[VersionData]) -> list[FileRow]:
    """Files matched by path; "changed" means a different SHA-256 (size alone never decides)."""
    by_path = [{item.path: item for item in version.files} for version in versions]
    paths = sorted({path for files in by_path for path in files})
    rows = []
    for path in paths:
        files = [found.get(path) for found in by_path]
        base = files[0]
        cells = [FileCell(base, BASE)]
        cells += [FileCell(item, _file_state(base, item)) for item in files[1:]]
        rows.append(FileRow(path, tuple(cells)))
    return rows


def _file_state(base: FileData | None, item: FileData | None) -> str:
    if base is None and item is None:
        return ABSENT
    if base is None:
        return ADDED
    if item is None:
        return REMOVED
    return SAME if base.sha256 == item.sha256 else CHANGED


def state_counts(rows: Sequence[KeyRow | FileRow], column: int) -> dict[str, int]:
    """{"added": 2, "removed": 0, "changed": 1, "same": 9} for one non-baseline column."""
    counts = {ADDED: 0, REMOVED: 0, CHANGED: 0, SAME: 0}
    for row in rows:
        state = row.cells[column].state
        if state in counts:
            counts[state] += 1
    return counts


# --- Descriptions --------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDiff:
    number: int  # the version compared with the baseline
    chunks: tuple[tuple[str, str], ...]  # (equal|insert|delete, text)

    @property
    def identical(self) -> bool:
        return all(op == "equal" for op, _ in self.chunks)


def description_diffs(versions: Sequence[VersionData]) -> list[TextDiff]:
    """The baseline's description against each other version's, word by word."""
    base = versions[0].description
    return [
        TextDiff(version.number, tuple(card_word_diff(base, version.description)))
        for version in versions[1:]
    ]


# --- Everything at once ------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A keyed-metadata table of the compare page."""

    slug: str
    title: str
    rows: tuple[KeyRow, ...]

    @property
    def changed_rows(self) -> list[KeyRow]:
        return [row for row in self.rows if row.differs]

    @property
    def same_rows(self) -> list[KeyRow]:
        return [row for row in self.rows if not row.differs]


@dataclass(frozen=True)
class Comparison:
    numbers: tuple[int, ...]  # baseline first
    metrics: tuple[MetricRow, ...]
    sections: tuple[Section, ...]  # params, dependencies, tags, source, training data
    files: tuple[FileRow, ...]
    descriptions: tuple[TextDiff, ...]

    @property
    def metric_names(self) -> list[str]:
        return [row.name for row in self.metrics]

    @property
    def changed_files(self) -> list[FileRow]:
        return [row for row in self.files if row.differs]

    @property
    def same_files(self) -> list[FileRow]:
        return [row for row in self.files if not row.differs]

    @property
    def file_summary(self) -> list[tuple[int, dict[str, int]]]:
        """Per non-baseline version: (number, how many files were added, removed, changed,
        kept)."""
        return [
            (self.numbers[column], state_counts(self.files, column))
            for column in range(1, len(self.numbers))
        ]


def compare_versions(
    versions: Sequence[VersionData], directions: Mapping[str, str] | None = None
) -> Comparison:
    """Compare `versions` (at least one; the first is the baseline)."""
    if not versions:
        raise ValueError("Nothing to compare.")
    sections = (
        Section("params", "Parameters", tuple(key_rows([v.params for v in versions]))),
        Section(
            "dependencies",
            "Dependencies",
            tuple(key_rows([flatten(v.dependencies) for v in versions])),
        ),
        Section("tags", "Tags", tuple(key_rows([v.tags for v in versions]))),
        Section("source", "Source", tuple(key_rows([v.source for v in versions]))),
        Section("training-data", "Training data", tuple(training_rows(versions))),
    )
    return Comparison(
        numbers=tuple(version.number for version in versions),
        metrics=tuple(metric_rows(versions, directions or {})),
        sections=sections,
        files=tuple(file_rows(versions)),
        descriptions=tuple(description_diffs(versions)),
    )
