"""Forms of the approval pages: plain fields in, the values the services take out.

Lists are typed one per line so every form works without JavaScript and reads like a config
file: metric gates "auc >= holder" or "auc >= 0.9", card sections, metadata keys, usernames.
"""

import math
import re
from datetime import datetime
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from apps.approvals.gates import COMPARATORS
from apps.approvals.models import Decision, Stage, StagePolicy
from apps.approvals.services import MAX_COMMENT
from apps.registry.access import can
from apps.registry.models import RegisteredModel
from registry_site.api_errors import ApiError

MAX_LINES = 50
MAX_TTL_HOURS = 24 * 365
MAX_REQUIRED_APPROVALS = 20
_GATE = re.compile(r"(?P<metric>[A-Za-z0-9_.:/-]{1,128})\s*(?P<op>>=|<=|>|<)\s*(?P<bound>\S{1,64})")
_LIST_ITEM = re.compile(r"[^\s,]{1,150}")


def _comment_widget(placeholder: str) -> forms.Textarea:
    return forms.Textarea(attrs={"rows": 3, "placeholder": placeholder})


class ServiceErrorMixin:
    """Put a service's `ApiError` on the field it names, or on the form as a whole."""

    # The service's name of a field ("approvers.users", "metric_gates.0") → the form's.
    service_field_aliases: dict[str, str] = {}

    def add_service_error(self, error: ApiError) -> None:
        named = str((error.details or {}).get("field", ""))
        field = self.service_field_aliases.get(named, named.split(".")[0])
        target = field if field in self.fields else None  # type: ignore[attr-defined]
        self.add_error(target, error.message)  # type: ignore[attr-defined]


# --- Promotion requests and reviews ----------------------------------------------------------


class PromotionCreateForm(ServiceErrorMixin, forms.Form):
    """Which stage to ask for, and why."""

    stage = forms.ChoiceField(label="Stage")
    reason = forms.CharField(
        label="Reason",
        required=False,
        max_length=MAX_COMMENT,
        widget=_comment_widget("What changed, and why this version should be promoted."),
        help_text="Shown to the reviewers and in the notification email.",
    )

    def __init__(self, *args: Any, stages: list[Stage], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stages = {stage.name: stage for stage in stages}
        self.fields["stage"].choices = [(name, name) for name in self.stages]

    def clean_stage(self) -> Stage:
        return self.stages[self.cleaned_data["stage"]]


class ReviewForm(ServiceErrorMixin, forms.Form):
    """Approve with an optional comment. `revision` and `version_state` are what the page
    showed: a request or version that moved since then is refused (409), never decided blind."""

    comment = forms.CharField(
        label="Comment",
        required=False,
        max_length=MAX_COMMENT,
        widget=_comment_widget("Optional when approving; required when rejecting."),
    )
    revision = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    version_state = forms.CharField(required=False, max_length=64, widget=forms.HiddenInput)


class RejectForm(ReviewForm):
    """A rejection says why."""

    def clean_comment(self) -> str:
        comment = self.cleaned_data.get("comment", "")
        if not comment.strip():
            raise forms.ValidationError("Say why you reject it: the requester needs to know.")
        return comment


class LinkDecisionForm(forms.Form):
    """The email link's confirmation page: one comment box, an Approve and a Reject button."""

    decision = forms.ChoiceField(choices=Decision.choices)
    comment = forms.CharField(
        label="Comment",
        required=False,
        max_length=MAX_COMMENT,
        widget=_comment_widget("Optional when approving; required when rejecting."),
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("decision") == Decision.REJECT and not cleaned.get("comment", "").strip():
            self.add_error("comment", "Say why you reject it: the requester needs to know.")
        return cleaned


# --- Stages ----------------------------------------------------------------------------------


class RollbackForm(ServiceErrorMixin, forms.Form):
    reason = forms.CharField(
        label="Reason",
        max_length=MAX_COMMENT,
        widget=_comment_widget("What went wrong with the current version?"),
        help_text="Required. Recorded in the history and the audit log, and emailed to approvers.",
    )


class HolderAtForm(forms.Form):
    """`?at=2025-01-31T14:00`: what held the stage at that moment (UTC)."""

    at = forms.DateTimeField(
        label="Moment (UTC)",
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )

    def clean_at(self) -> datetime:
        moment = self.cleaned_data["at"]
        if moment.year < 1970:
            raise forms.ValidationError("Choose a moment after 1970.")
        return moment


class StageCreateForm(ServiceErrorMixin, forms.Form):
    name = forms.CharField(
        label="New stage",
        max_length=32,
        help_text="Lowercase letters, digits, “-” or “_”, e.g. “canary”.",
    )


# --- Policy ----------------------------------------------------------------------------------


def _lines(text: str) -> list[tuple[int, str]]:
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) > MAX_LINES:
        raise forms.ValidationError(f"At most {MAX_LINES} lines.")
    return lines


def _items(text: str) -> list[str]:
    """Names separated by newlines or commas, without duplicates, in the order given."""
    found: list[str] = []
    for word in re.split(r"[\s,]+", text.strip()):
        if not word:
            continue
        if not _LIST_ITEM.fullmatch(word):
            raise forms.ValidationError(f"“{word[:40]}” is not a valid name.")
        if word not in found:
            found.append(word)
    if len(found) > MAX_LINES:
        raise forms.ValidationError(f"At most {MAX_LINES} names.")
    return found


def parse_metric_gates(text: str) -> list[dict[str, Any]]:
    """ "auc >= holder" / "latency_ms <= 20" per line → the policy's metric gate dicts."""
    gates = []
    for number, line in _lines(text):
        match = _GATE.fullmatch(line)
        if match is None or match["op"] not in COMPARATORS:
            raise forms.ValidationError(
                f"Line {number}: expected “metric >= holder” or “metric >= 0.9”, got “{line}”."
            )
        gate: dict[str, Any] = {"metric": match["metric"], "op": match["op"]}
        if match["bound"].lower() == "holder":
            gate["against"] = "holder"
        else:
            gate.update(against="threshold", threshold=_threshold(number, match["bound"]))
        gates.append(gate)
    return gates


def _threshold(number: int, text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise forms.ValidationError(
            f"Line {number}: the bound must be “holder” or a number, got “{text}”."
        ) from None
    if not math.isfinite(value):
        raise forms.ValidationError(f"Line {number}: the bound must be a finite number.")
    return int(value) if re.fullmatch(r"[+-]?[0-9]+", text) else value


def metric_gates_text(gates: list[dict[str, Any]]) -> str:
    """The inverse of `parse_metric_gates`, to prefill the form."""
    lines = []
    for gate in gates or []:
        bound = "holder" if gate.get("against") != "threshold" else gate.get("threshold")
        lines.append(f"{gate.get('metric', '')} {gate.get('op', '>=')} {bound}")
    return "\n".join(lines)


def _lines_field(label: str, help_text: str, placeholder: str) -> forms.CharField:
    return forms.CharField(
        label=label,
        required=False,
        max_length=10_000,
        help_text=help_text,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "placeholder": placeholder}),
    )


class StagePolicyForm(ServiceErrorMixin, forms.Form):
    """Everything an owner decides about a stage: quorum, expiry, order, gates, approvers."""

    service_field_aliases = {
        "approvers.users": "approver_users",
        "approvers.groups": "approver_groups",
    }

    required_approvals = forms.IntegerField(
        label="Required approvals",
        min_value=0,
        max_value=MAX_REQUIRED_APPROVALS,
        help_text="0 moves the stage as soon as the request passes its checks.",
    )
    request_ttl_hours = forms.IntegerField(
        label="Requests expire after (hours)", min_value=1, max_value=MAX_TTL_HOURS
    )
    requires_stage = forms.ChoiceField(
        label="Must have been in",
        required=False,
        help_text="Stage order: a version must have held that stage before it may enter this one.",
    )
    requires_verified_files = forms.BooleanField(
        label="Files must be stored and verified by Regent", required=False
    )
    metric_gates = _lines_field(
        "Metric gates",
        "One per line: “auc >= holder” (compared with the current holder) or “auc >= 0.9”.",
        "auc >= holder\nlatency_ms <= 20",
    )
    required_card_sections = _lines_field(
        "Required model card sections", "One heading per line, e.g. “Intended use”.", "Intended use"
    )
    required_metadata = _lines_field(
        "Required metadata",
        "One key per line: description, metrics, params, training_data, dependencies, source, "
        "or a tag or parameter name.",
        "training_data",
    )
    approver_users = _lines_field(
        "Approvers (users)", "Usernames, one per line. They need a role on the model.", "erin"
    )
    approver_groups = _lines_field("Approvers (teams)", "Team names, one per line.", "risk-team")

    def __init__(self, *args: Any, stage: Stage, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage = stage
        others = Stage.objects.filter(model_id=stage.model_id).exclude(pk=stage.pk)
        self.fields["requires_stage"].choices = [("", "— no requirement —")] + [
            (name, name) for name in others.values_list("name", flat=True)
        ]

    def clean_metric_gates(self) -> list[dict[str, Any]]:
        return parse_metric_gates(self.cleaned_data["metric_gates"])

    def clean_required_card_sections(self) -> list[str]:
        return [line[:200] for _, line in _lines(self.cleaned_data["required_card_sections"])]

    def clean_required_metadata(self) -> list[str]:
        return _items(self.cleaned_data["required_metadata"])

    def clean_approver_users(self) -> list[str]:
        names = _items(self.cleaned_data["approver_users"])
        users = {u.get_username(): u for u in get_user_model().objects.filter(username__in=names)}
        unknown = [name for name in names if name not in users]
        if unknown:
            raise forms.ValidationError("No such user: " + ", ".join(unknown) + ".")
        model: RegisteredModel = self.stage.model
        blind = [name for name in names if not can(users[name], "view", model)]
        if blind:
            raise forms.ValidationError(
                "Give them a role on the model first (they could not see the request): "
                + ", ".join(blind)
                + "."
            )
        return names

    def clean_approver_groups(self) -> list[str]:
        return _items(self.cleaned_data["approver_groups"])  # the service names unknown teams

    def policy_values(self) -> dict[str, Any]:
        """The `values` of `services.policy_replace`."""
        data = self.cleaned_data
        names = (
            "required_approvals",
            "request_ttl_hours",
            "requires_stage",
            "requires_verified_files",
            "metric_gates",
            "required_card_sections",
            "required_metadata",
        )
        return {name: data[name] for name in names}


def policy_initial(policy: StagePolicy, users: list[Any], groups: list[Group]) -> dict[str, Any]:
    """The form's starting values from the stored policy and the current approvers."""
    return {
        "required_approvals": policy.required_approvals,
        "request_ttl_hours": policy.request_ttl_hours,
        "requires_stage": policy.requires_stage.name if policy.requires_stage_id else "",
        "requires_verified_files": policy.requires_verified_files,
        "metric_gates": metric_gates_text(policy.metric_gates),
        "required_card_sections": "\n".join(policy.required_card_sections or []),
        "required_metadata": "\n".join(policy.required_metadata or []),
        "approver_users": "\n".join(user.get_username() for user in users),
        "approver_groups": "\n".join(group.name for group in groups),
    }
