"""Insight pages: compare versions of a model, and the trend charts of the model page.

Compare: `models/<name>/compare/?v=1&v=3` (any two or more versions of one model; the model
is in the path, so versions of two models can never be mixed) or `?v=3&against=production`
(the stage's current holder joins as the baseline). The baseline is the first column and
every other column is compared with it: the `against` holder, else `base=N` if selected,
else the lowest number. The model card belongs to the model, so the text diff is of the
versions' own descriptions.

Both pages run a bounded number of queries whatever the number of versions or files.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from apps.registry import charts, compare, selectors
from apps.registry.access import access_model, model_permissions
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.services import model_update
from registry_site.api_errors import ApiError

MAX_COMPARED = 8  # columns; more would not fit a screen and would not be read
PICKER_LIMIT = 500  # versions offered as checkboxes on the compare page
MAX_VERSION_NUMBER = 2_147_483_647
PRODUCTION = "production"
TREND_MAX_VERSIONS = 500  # the most recent; the chart says when older ones are left out
TREND_DEFAULT_METRICS = 3
TREND_MAX_METRICS = 8
DIRECTION_CHOICES = [("", "not set"), ("higher", "higher is better"), ("lower", "lower is better")]


# --- Compare: which versions --------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What the compare URL asks for: version numbers, an optional stage, a baseline."""

    numbers: tuple[int, ...]
    against: str = ""
    base: int | None = None
    dropped: int = 0  # numbers beyond MAX_COMPARED, left out

    def query(self, base: int | None = None) -> str:
        """The query string of this selection (with another baseline if `base` is given)."""
        pairs: list[tuple[str, Any]] = [("v", number) for number in self.numbers]
        if self.against:
            pairs.append(("against", self.against))
        chosen = base if base is not None else self.base
        if chosen is not None and not self.against:
            pairs.append(("base", chosen))
        return urlencode(pairs)


def _version_number(text: str) -> int:
    """A version number from the URL; anything else is a 404 (as for a missing version)."""
    text = text.strip()
    if not text.isdigit() or len(text) > 10 or not 1 <= int(text) <= MAX_VERSION_NUMBER:
        raise Http404("Not found.")
    return int(text)


def parse_selection(data: QueryDict) -> Selection:
    numbers: list[int] = []
    for text in data.getlist("v"):
        number = _version_number(text)
        if number not in numbers:
            numbers.append(number)
    base = data.get("base", "").strip()
    return Selection(
        numbers=tuple(numbers[:MAX_COMPARED]),
        against=data.get("against", "").strip()[:64],
        base=_version_number(base) if base else None,
        dropped=max(0, len(numbers) - MAX_COMPARED),
    )


def _stage_holder(model: RegisteredModel, stage_name: str) -> int | None:
    """The number of the version holding `stage_name` (404 if the model has no such stage)."""
    from apps.approvals.models import Stage  # approvals builds on the registry, not back

    found = Stage.objects.filter(model=model, name=stage_name).values_list(
        "current_version__number", flat=True
    )
    numbers = list(found[:1])
    if not numbers:
        raise Http404("Not found.")
    return numbers[0]


def _baseline(selection: Selection, numbers: Sequence[int], holder: int | None) -> int:
    if holder is not None:
        return holder
    if selection.base in numbers:
        return selection.base
    return min(numbers)


def resolve_versions(
    model: RegisteredModel, selection: Selection
) -> tuple[list[ModelVersion], int | None]:
    """The selected versions, baseline first then by number, and the `against` holder.

    404 if a number does not exist or `against` names no stage of the model. Two queries
    for the versions and their files, plus one for the stage, whatever the count.
    """
    holder = _stage_holder(model, selection.against) if selection.against else None
    wanted = set(selection.numbers) | ({holder} if holder is not None else set())
    found = {
        version.number: version
        for version in model.versions.filter(number__in=wanted)
        .select_related("created_by")
        .prefetch_related("files")
    }
    if len(found) != len(wanted):
        raise Http404("Not found.")
    if not found:
        return [], holder
    base = _baseline(selection, sorted(found), holder)
    ordered = [found[base]] + [found[number] for number in sorted(found) if number != base]
    for version in ordered:
        version.model = model
    return ordered, holder


# --- Compare: the page --------------------------------------------------------------------


class MetricDirectionsForm(forms.Form):
    """Owners say, per metric, whether higher or lower is better (one select per metric).

    Fields are indexed (`direction_0`…), not named after metrics: metric names are free
    text. The names come from the server-side comparison, never from the posted data.
    """

    def __init__(self, *args: Any, metrics: Sequence[str], current: dict[str, str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.metrics = list(metrics)
        for index, name in enumerate(self.metrics):
            self.fields[f"direction_{index}"] = forms.ChoiceField(
                label=name,
                choices=DIRECTION_CHOICES,
                required=False,
                initial=current.get(name, ""),
            )

    def merged(self, current: dict[str, str]) -> dict[str, str]:
        """`current` with this form's metrics set or cleared; other metrics kept."""
        directions = dict(current)
        for index, name in enumerate(self.metrics):
            chosen = self.cleaned_data.get(f"direction_{index}")
            if chosen:
                directions[name] = chosen
            else:
                directions.pop(name, None)
        return directions


def _columns(
    model: RegisteredModel,
    versions: Sequence[ModelVersion],
    selection: Selection,
    stages: dict[str, int | None],
) -> list[dict[str, Any]]:
    held: dict[int, list[str]] = {}
    for stage, number in stages.items():
        if number is not None:
            held.setdefault(number, []).append(stage)
    url = reverse("insight:compare", args=[model.name])
    return [
        {
            "version": version,
            "is_baseline": index == 0,
            "stages": held.get(version.number, []),
            "files": len(version.files.all()),
            "size": sum(artifact.size for artifact in version.files.all()),
            "base_url": f"{url}?{selection.query(base=version.number)}",
        }
        for index, version in enumerate(versions)
    ]


def _picker(model: RegisteredModel) -> list[int]:
    """The version numbers offered on the page, newest first (one query)."""
    numbers = model.versions.order_by("-number").values_list("number", flat=True)
    return list(numbers[:PICKER_LIMIT])


def compare_context(
    request: HttpRequest, model: RegisteredModel, selection: Selection
) -> dict[str, Any]:
    versions, holder = resolve_versions(model, selection)
    perms = model_permissions(request.user, model)
    stages = selectors.model_stage_summary(model)
    comparison = None
    if len(versions) >= 2:
        data = [compare.version_data(version) for version in versions]
        comparison = compare.compare_versions(data, model.metric_directions or {})
    context = {
        "model": model,
        "perms": perms,
        "selection": selection,
        "versions": versions,
        "holder": holder,
        "comparison": comparison,
        "columns": _columns(model, versions, selection, stages),
        "picker": _picker(model),
        "stages": stages,
        "compare_url": reverse("insight:compare", args=[model.name]),
    }
    if comparison and "manage" in perms and comparison.metrics:
        context["directions_form"] = MetricDirectionsForm(
            metrics=comparison.metric_names, current=model.metric_directions or {}
        )
    return context


@require_GET
@login_required
def compare_view(request: HttpRequest, name: str) -> HttpResponse:
    """Two or more versions side by side: metrics, metadata, files, descriptions."""
    model = access_model(request.user, name)
    context = compare_context(request, model, parse_selection(request.GET))
    return render(request, "registry/compare.html", context)


@require_POST
@login_required
def metric_directions_view(request: HttpRequest, name: str) -> HttpResponse:
    """Set which way is better for the compared metrics (owners); back to the comparison."""
    model = access_model(request.user, name, "manage")
    selection = parse_selection(request.POST)
    context = compare_context(request, model, selection)
    metrics = context["comparison"].metric_names if context["comparison"] else []
    current = model.metric_directions or {}
    form = MetricDirectionsForm(request.POST, metrics=metrics, current=current)
    if form.is_valid():
        try:
            model_update(actor=request.user, model=model, metric_directions=form.merged(current))
        except ApiError as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, "Metric directions saved.")
            return redirect(f"{context['compare_url']}?{selection.query()}")
    context["directions_form"] = form
    return render(request, "registry/compare.html", context, status=400)


# --- Production holders (compare links, trend markers) -----------------------------------


def production_holder_number(model: RegisteredModel) -> int | None:
    """The number of the version in production now (None: empty or no such stage)."""
    from apps.approvals.models import Stage

    found = Stage.objects.filter(model=model, name=PRODUCTION).values_list(
        "current_version__number", flat=True
    )
    return next(iter(found[:1]), None)


def production_history(model: RegisteredModel) -> tuple[set[int], int | None]:
    """({numbers of every version that ever held production}, the number holding it now)."""
    from apps.approvals.models import StageAssignment

    held = set(
        StageAssignment.objects.filter(stage__model=model, stage__name=PRODUCTION).values_list(
            "version__number", flat=True
        )
    )
    current = production_holder_number(model)
    if current is not None:
        held.add(current)  # a holder assigned without history (imported data) still counts
    return held, current


# --- Trends ------------------------------------------------------------------------------


def _metric_names(rows: Iterable[tuple[int, Any]]) -> list[str]:
    """Every numeric metric name, in the order the newest versions use them."""
    names: dict[str, None] = {}
    for _, metrics in rows:
        for name, value in (metrics or {}).items():
            if compare.is_number(value):
                names.setdefault(name, None)
    return list(names)


def _trend_rows(points: Sequence[charts.TrendPoint]) -> list[dict[str, Any]]:
    """The table beside a chart: newest first, with the change from the previous point."""
    rows = []
    previous = None
    for point in points:
        delta = ""
        if previous is not None:
            delta = compare.signed(float(f"{point.value - previous.value:.12g}"))
        rows.append({"point": point, "value": compare.exact(point.value), "delta": delta})
        previous = point
    return rows[::-1]


def _chart(
    model: RegisteredModel,
    name: str,
    index: int,
    rows: Sequence[tuple[int, Any]],
    production: tuple[set[int], int | None],
) -> dict[str, Any]:
    held, current = production
    points = [
        charts.TrendPoint(
            number=number,
            value=metrics[name],
            url=reverse("registry:version-detail", args=[model.name, number]),
            held_production=number in held,
            in_production=number == current,
        )
        for number, metrics in rows
        if compare.is_number((metrics or {}).get(name))
    ]
    return {
        "name": name,
        "id": f"trend-{index}",
        "direction": (model.metric_directions or {}).get(name, ""),
        "svg": charts.trend_svg(name, points, chart_id=f"trend-{index}"),
        "rows": _trend_rows(points),
    }


def trends_context(request: HttpRequest, model: RegisteredModel) -> dict[str, Any]:
    """The model page's Trends tab: chosen metrics (`?metric=` repeated) charted across the
    most recent TREND_MAX_VERSIONS versions. Three queries whatever the number of versions."""
    recent = model.versions.order_by("-number").values_list("number", "metrics")
    rows = list(recent[: TREND_MAX_VERSIONS + 1])
    truncated = len(rows) > TREND_MAX_VERSIONS
    rows = rows[:TREND_MAX_VERSIONS]
    names = _metric_names(rows)
    asked = [name for name in dict.fromkeys(request.GET.getlist("metric")) if name in names]
    chosen = asked[:TREND_MAX_METRICS] or names[:TREND_DEFAULT_METRICS]
    rows.reverse()  # oldest first, for the charts
    production = production_history(model)
    return {
        "metric_names": names,
        "chosen": chosen,
        "charts": [_chart(model, name, i, rows, production) for i, name in enumerate(chosen)],
        "version_total": len(rows),
        "truncated": truncated,
        "max_versions": TREND_MAX_VERSIONS,
        "max_metrics": TREND_MAX_METRICS,
        "production_now": production[1],
    }
