"""Forms of the registry pages: plain text in, the shapes the services take out.

Structured values are typed one per line so that a form works without JavaScript and reads
like a config file: tags and params "key=value", metrics "name=number", parents "model/3",
training data "uri [sha256]".
"""

import math
import re
from typing import Any

from django import forms

from apps.registry.models import Visibility
from registry_site.api_errors import ApiError

MAX_LINES = 200
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 1000
_PARENT = re.compile(r"(?P<model>[A-Za-z0-9][A-Za-z0-9._-]{0,127})/(?P<number>[1-9][0-9]{0,8})")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _lines(text: str) -> list[tuple[int, str]]:
    """Non-blank, stripped lines with their 1-based numbers; too many lines is an error."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) > MAX_LINES:
        raise forms.ValidationError(f"At most {MAX_LINES} lines.")
    return lines


def _split_pair(number: int, line: str, separator: str = "=") -> tuple[str, str]:
    key, found, value = line.partition(separator)
    key, value = key.strip(), value.strip()
    if not found or not key:
        raise forms.ValidationError(f"Line {number}: expected “key{separator}value”, got “{line}”.")
    if len(key) > MAX_KEY_CHARS or len(value) > MAX_VALUE_CHARS:
        raise forms.ValidationError(f"Line {number}: the key or value is too long.")
    return key, value


def _pairs(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for number, line in _lines(text):
        key, value = _split_pair(number, line)
        if key in pairs:
            raise forms.ValidationError(f"Line {number}: “{key}” is given twice.")
        pairs[key] = value
    return pairs


def _number(number: int, key: str, value: str) -> float | int:
    try:
        parsed = float(value)
    except ValueError:
        raise forms.ValidationError(
            f"Line {number}: “{key}” must be a number, got “{value}”."
        ) from None
    if not math.isfinite(parsed):
        raise forms.ValidationError(f"Line {number}: “{key}” must be a finite number.")
    return int(parsed) if re.fullmatch(r"[+-]?[0-9]+", value) else parsed


def _scalar(value: str) -> Any:
    """ "3" → 3, "0.1" → 0.1, "true" → True, anything else stays text."""
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if re.fullmatch(r"[+-]?[0-9]{1,18}", value):
        return int(value)
    try:
        parsed = float(value)
    except ValueError:
        return value
    return parsed if math.isfinite(parsed) else value


def _as_lines(mapping: dict[str, Any] | None) -> str:
    """The inverse of the pair fields, to prefill an edit form."""
    return "\n".join(f"{key}={value}" for key, value in (mapping or {}).items())


def _lines_widget(placeholder: str, rows: int = 3) -> forms.Textarea:
    return forms.Textarea(attrs={"rows": rows, "spellcheck": "false", "placeholder": placeholder})


class PairsField(forms.CharField):
    """ "key=value" per line → {key: value} (text values)."""

    widget = forms.Textarea(attrs={"rows": 4, "spellcheck": "false"})

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("strip", False)
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        return _as_lines(value) if isinstance(value, dict) else value

    def to_python(self, value: Any) -> dict[str, Any]:
        return _pairs(super().to_python(value) or "")


class MetricsField(PairsField):
    """ "name=number" per line → {name: number}."""

    def to_python(self, value: Any) -> dict[str, Any]:
        text = forms.CharField.to_python(self, value) or ""
        metrics: dict[str, Any] = {}
        for number, line in _lines(text):
            key, raw = _split_pair(number, line)
            if key in metrics:
                raise forms.ValidationError(f"Line {number}: “{key}” is given twice.")
            metrics[key] = _number(number, key, raw)
        return metrics


class ParamsField(PairsField):
    """ "name=value" per line → {name: scalar}: numbers and true/false are typed."""

    def to_python(self, value: Any) -> dict[str, Any]:
        return {key: _scalar(raw) for key, raw in super().to_python(value).items()}


class ParentsField(forms.CharField):
    """ "model/3" per line → ["model/3", …] (existence and access are the service's job)."""

    widget = forms.Textarea(attrs={"rows": 2, "spellcheck": "false"})

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> list[str]:
        parents: list[str] = []
        for number, line in _lines(super().to_python(value) or ""):
            if not _PARENT.fullmatch(line):
                raise forms.ValidationError(
                    f"Line {number}: expected “model-name/version”, e.g. “resnet/3”, got “{line}”."
                )
            if line not in parents:
                parents.append(line)
        return parents


class TrainingDataField(forms.CharField):
    """ "uri [sha256]" per line → [{"uri", "sha256"?}]. URIs are inert: never fetched."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false"})

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> list[dict[str, str]]:
        references: list[dict[str, str]] = []
        for number, line in _lines(super().to_python(value) or ""):
            parts = line.split()
            if len(parts) > 2 or len(parts[0]) > MAX_VALUE_CHARS:
                raise forms.ValidationError(
                    f"Line {number}: expected a URI, optionally followed by its SHA-256."
                )
            reference = {"uri": parts[0]}
            if len(parts) == 2:
                if not _SHA256.fullmatch(parts[1]):
                    raise forms.ValidationError(
                        f"Line {number}: a SHA-256 is 64 lowercase hexadecimal characters."
                    )
                reference["sha256"] = parts[1]
            references.append(reference)
        return references


class ServiceErrorsMixin:
    """Show an `ApiError` next to the field its `details["field"]` names, else on top.

    Services name fields as the API does ("tags.team", "parents.0", "source.run_id"): the
    longest alias or the first segment that is a form field wins.
    """

    # Service field names that a form shows under another name.
    service_field_aliases: dict[str, str] = {}

    def add_service_error(self, error: ApiError) -> None:
        named = str((error.details or {}).get("field", ""))
        field = self.service_field_aliases.get(named) or self.service_field_aliases.get(
            named.split(".")[0], named.split(".")[0]
        )
        target = field if field in self.fields else None  # type: ignore[attr-defined]
        self.add_error(target, error.message)  # type: ignore[attr-defined]


DESCRIPTION_HELP = (
    "The model card, in Markdown: what it does, intended use, training data, limitations."
)
TAGS_HELP = "One “key=value” per line, e.g. “task=classification”."
TAGS_PLACEHOLDER = "task=classification\nteam=risk"


def _card_field() -> forms.CharField:
    return forms.CharField(
        required=False,
        label="Model card",
        help_text=DESCRIPTION_HELP,
        widget=forms.Textarea(attrs={"rows": 14, "class": "markdown-input"}),
    )


def _visibility_field() -> forms.ChoiceField:
    return forms.ChoiceField(
        choices=Visibility.choices,
        initial=Visibility.PRIVATE,
        widget=forms.RadioSelect,
        help_text="Private: only people and teams granted a role. "
        "Internal: every signed-in user may view it.",
    )


class ModelCreateForm(ServiceErrorsMixin, forms.Form):
    """Register a model."""

    name = forms.CharField(
        max_length=128,
        help_text="Letters, digits, “.”, “_” and “-”; starts with a letter or digit. "
        "Cannot be changed later.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    description = _card_field()
    tags = PairsField(help_text=TAGS_HELP, widget=_lines_widget(TAGS_PLACEHOLDER))
    visibility = _visibility_field()

    def service_kwargs(self) -> dict[str, Any]:
        fields = ("name", "description", "tags", "visibility")
        return {key: self.cleaned_data[key] for key in fields}


class ModelEditForm(ServiceErrorsMixin, forms.Form):
    """Edit a model's card and tags; its visibility only for those who manage it."""

    description = _card_field()
    tags = PairsField(help_text=TAGS_HELP, widget=_lines_widget(TAGS_PLACEHOLDER))
    visibility = _visibility_field()

    def __init__(self, *args: Any, can_manage: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not can_manage:
            del self.fields["visibility"]

    def service_kwargs(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self.fields}


class VersionCreateForm(ServiceErrorsMixin, forms.Form):
    """A new version's metadata; its files are uploaded once it exists."""

    service_field_aliases = {
        "source": "source_uri",
        "source.uri": "source_uri",
        "source.run_id": "run_id",
        "source.commit": "commit",
    }

    description = forms.CharField(
        required=False,
        help_text="What changed in this version (Markdown).",
        widget=forms.Textarea(attrs={"rows": 4}),
    )
    metrics = MetricsField(
        help_text="One “name=number” per line, e.g. “accuracy=0.943”.",
        widget=_lines_widget("accuracy=0.943\nf1=0.88"),
    )
    params = ParamsField(
        label="Parameters",
        help_text="Training parameters, one “name=value” per line, e.g. “learning_rate=0.001”.",
        widget=_lines_widget("learning_rate=0.001\nepochs=20"),
    )
    tags = PairsField(help_text=TAGS_HELP, widget=_lines_widget(TAGS_PLACEHOLDER))
    parents = ParentsField(
        widget=_lines_widget("resnet50/3"),
        label="Parent versions",
        help_text="Versions this one was derived from (fine-tuned, distilled…), "
        "one “model-name/version” per line, e.g. “resnet50/3”.",
    )
    training_data = TrainingDataField(
        widget=_lines_widget("s3://datasets/train-2024.parquet"),
        label="Training data",
        help_text="One URI per line, optionally followed by a space and its SHA-256. "
        "Recorded as references: Regent never fetches them.",
    )
    source_uri = forms.CharField(
        required=False,
        max_length=MAX_VALUE_CHARS,
        label="Source URI",
        help_text="Where the code lives, e.g. a repository URL.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )
    run_id = forms.CharField(
        required=False,
        max_length=200,
        label="Run ID",
        help_text="The training run, e.g. an MLflow or W&B run id.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )
    commit = forms.CharField(
        required=False,
        max_length=200,
        help_text="The code commit the model was trained from.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )

    SOURCE_FIELDS = {"source_uri": "uri", "run_id": "run_id", "commit": "commit"}

    def service_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        source = {key: data[field] for field, key in self.SOURCE_FIELDS.items() if data[field]}
        kwargs = {
            key: data[key]
            for key in ("description", "metrics", "params", "tags", "parents", "training_data")
        }
        return kwargs | {"source": source or None}


class VersionEditForm(ServiceErrorsMixin, forms.Form):
    """The metadata that may still change once a version is sealed."""

    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4}))
    tags = PairsField(help_text=TAGS_HELP, widget=_lines_widget(TAGS_PLACEHOLDER))

    def service_kwargs(self) -> dict[str, Any]:
        return {key: self.cleaned_data[key] for key in ("description", "tags")}


class MultipleFileInput(forms.FileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """A file input with `multiple`: cleans to a list of uploaded files."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(**kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        single = super().clean
        files = data if isinstance(data, list | tuple) else [data]
        return [single(item, initial) for item in files]


class FileUploadForm(forms.Form):
    """The no-JavaScript upload: one or more files, or one file under a chosen path."""

    files = MultipleFileField(label="Files")
    path = forms.CharField(
        required=False,
        max_length=1024,
        label="Path in the version (optional)",
        help_text="For a single file: where it goes, e.g. “variables/variables.index”. "
        "Empty: the name of the file.",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("path") and len(data.get("files") or []) > 1:
            self.add_error("path", "A path can be given for a single file only.")
        return data


class ModelFilterForm(forms.Form):
    """The model list's search box and filters (GET)."""

    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "name, words or key:value"}),
    )
    visibility = forms.ChoiceField(
        required=False, choices=[("", "Any"), *Visibility.choices], label="Visibility"
    )
    archived = forms.BooleanField(required=False, label="Include archived")
