"""Gates a version must pass before it may enter a stage. Pure reads; no state changes.

Each gate gives a `GateResult`; a request is refused (409 `gate_failed`) when any fails, and
the results are shown on the request page. Gates are evaluated again when the quorum is
reached, because the stage's holder (and so a metric comparison) may have changed.
"""

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any

from apps.approvals.models import Stage, StageAssignment, StagePolicy
from apps.registry.markdown import card_sections, section_key
from apps.registry.models import ModelVersion, VersionStatus

COMPARATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
METADATA_FIELDS = ("description", "metrics", "params", "training_data", "dependencies", "source")


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_gates(version: ModelVersion, stage: Stage, policy: StagePolicy) -> list[GateResult]:
    """Every gate of `policy` for putting `version` into `stage`, in display order."""
    results = [_ready_gate(version, policy)]
    if policy.requires_stage_id:
        results.append(_stage_order_gate(version, policy.requires_stage))
    holder = stage.current_version
    results.extend(_metric_gate(version, holder, gate) for gate in policy.metric_gates)
    if policy.required_card_sections:
        results.append(_card_gate(version, policy.required_card_sections))
    if policy.required_metadata:
        results.append(_metadata_gate(version, policy.required_metadata))
    return results


def failed(results: list[GateResult]) -> list[GateResult]:
    return [result for result in results if not result.passed]


def _ready_gate(version: ModelVersion, policy: StagePolicy) -> GateResult:
    if version.status != VersionStatus.READY:
        return GateResult("ready", False, f"Version is {version.status}, not ready.")
    if version.external_artifacts and policy.requires_verified_files:
        return GateResult("ready", False, "Files are outside Regent and were never verified.")
    return GateResult("ready", True, "Version is ready: every file verified.")


def _stage_order_gate(version: ModelVersion, required: Stage) -> GateResult:
    held = StageAssignment.objects.filter(stage=required, version=version).exists()
    if held:
        return GateResult("stage_order", True, f"Version has been in {required.name}.")
    return GateResult(
        "stage_order",
        False,
        f"Version must be in {required.name} before this stage.",
        {"required_stage": required.name},
    )


def _metric_gate(
    version: ModelVersion, holder: ModelVersion | None, gate: dict[str, Any]
) -> GateResult:
    metric, op = gate.get("metric", ""), gate.get("op", ">=")
    name = f"metric:{metric}"
    value = version.metrics.get(metric)
    if not _is_number(value):
        return GateResult(name, False, f"Version has no value for {metric}.", {"metric": metric})
    bound, against = _metric_bound(holder, gate)
    details = {"metric": metric, "op": op, "value": value, "bound": bound, "against": against}
    if bound is None:
        return GateResult(name, True, f"No current holder to compare {metric} with.", details)
    passed = COMPARATORS[op](value, bound)
    verdict = "meets" if passed else "does not meet"
    message = f"{metric} {value} {verdict} {op} {bound} ({against})."
    return GateResult(name, passed, message, details)


def _metric_bound(holder: ModelVersion | None, gate: dict[str, Any]) -> tuple[Any, str]:
    if gate.get("against") == "threshold":
        return gate.get("threshold"), "threshold"
    if holder is None:
        return None, "current holder"
    value = holder.metrics.get(gate.get("metric", ""))
    return (value if _is_number(value) else None), f"v{holder.number}, the current holder"


def _card_gate(version: ModelVersion, required: list[str]) -> GateResult:
    present = {section_key(heading) for heading in card_sections(version.model.description)}
    missing = [section for section in required if section_key(section) not in present]
    if missing:
        message = "Model card lacks: " + ", ".join(missing) + "."
        return GateResult("documentation", False, message, {"missing_sections": missing})
    return GateResult("documentation", True, "Model card has every required section.")


def _metadata_gate(version: ModelVersion, required: list[str]) -> GateResult:
    missing = [key for key in required if not _has_metadata(version, key)]
    if missing:
        message = "Version lacks metadata: " + ", ".join(missing) + "."
        return GateResult("metadata", False, message, {"missing_metadata": missing})
    return GateResult("metadata", True, "Version has every required metadata key.")


def _has_metadata(version: ModelVersion, key: str) -> bool:
    if key in METADATA_FIELDS:
        return bool(getattr(version, key))
    return bool(version.tags.get(key)) or key in version.params


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
