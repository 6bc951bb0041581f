"""The audit filters, from a query string: the page, the export and the API read them alike."""

from datetime import UTC, date, datetime, time

from django import forms
from django.utils.dateparse import parse_date, parse_datetime

from apps.audit.selectors import AuditFilters

MAX_FILTER_LENGTH = 150
MOMENT_ERROR = "Not a date. Use 2025-01-31 or 2025-01-31T14:00 (UTC, or with an offset)."


def parse_moment(text: str, *, end_of_day: bool = False) -> datetime | None:
    """An aware datetime from "2025-01-31", "2025-01-31T14:00" or "…+02:00"; None if invalid.

    Times without an offset are UTC. A bare date is the start of that day, or with
    `end_of_day` its last instant, so `until=2025-01-31` includes all of the 31st.
    """
    text = text.strip()
    try:
        day = parse_date(text)  # first: a bare date also parses as a datetime at midnight
        moment = _day_bound(day, end_of_day) if day is not None else parse_datetime(text)
        if moment is None:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):  # well-formed but impossible: 2025-02-30, year 0
        return None


def _day_bound(day: date, end_of_day: bool) -> datetime:
    return datetime.combine(day, time.max if end_of_day else time.min)


def _text_field(label: str, placeholder: str) -> forms.CharField:
    return forms.CharField(
        required=False,
        max_length=MAX_FILTER_LENGTH,
        label=label,
        widget=forms.TextInput(attrs={"placeholder": placeholder}),
    )


class AuditFilterForm(forms.Form):
    """GET filters of the audit log. Values are trimmed; `since`/`until` become datetimes."""

    actor = _text_field("Actor", "username")
    action = _text_field("Action", "token.created or token")
    model = _text_field("Model", "model name")
    target = _text_field("Object", "registry.modelversion:42")
    via = _text_field("Via", "web, api, email…")
    since = _text_field("Since (UTC)", "2025-01-31")
    until = _text_field("Until (UTC)", "2025-01-31T18:00")

    def _clean_moment(self, name: str, *, end_of_day: bool) -> datetime | None:
        text = self.cleaned_data.get(name, "")
        if not text:
            return None
        moment = parse_moment(text, end_of_day=end_of_day)
        if moment is None:
            raise forms.ValidationError(MOMENT_ERROR)
        return moment

    def clean_since(self) -> datetime | None:
        return self._clean_moment("since", end_of_day=False)

    def clean_until(self) -> datetime | None:
        return self._clean_moment("until", end_of_day=True)

    def filters(self) -> AuditFilters:
        """The cleaned filters; call after `is_valid()` returned True."""
        return AuditFilters(**self.cleaned_data)

    @property
    def is_filtered(self) -> bool:
        return any(self.data.get(name, "").strip() for name in self.fields)
