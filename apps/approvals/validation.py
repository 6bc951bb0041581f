"""Validation of stage names and policy values."""

import re

from registry_site.api_errors import ApiError

STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def validate_stage_name(name: str) -> str:
    name = name.strip()
    if not STAGE_NAME.fullmatch(name):
        raise ApiError(
            "Stage names: 1 to 32 lowercase letters, digits, '-' or '_', starting with a letter.",
            details={"field": "name"},
        )
    return name
