"""Typed readers for settings from the environment.

Each reader accepts NAME or NAME_FILE (a path whose content is the value, for secrets
mounted by an orchestrator) and stops start-up with one explanatory line on a malformed
value instead of guessing.
"""

import os
import sys
from pathlib import Path
from typing import NoReturn

TRUE_VALUES = {"1", "true", "yes", "on"}
FALSE_VALUES = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    """The value of NAME, or the content of the file named by NAME_FILE, or the default."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as error:
            stop_startup(
                f"{name}_FILE names {file_path!r}, which cannot be read ({error.strerror})."
            )
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = env_str(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    stop_startup(f"{name} must be a boolean (1/0, true/false), not {raw!r}.")


def env_int(name: str, default: int) -> int:
    raw = env_str(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        stop_startup(f"{name} must be an integer, not {raw!r}.")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = env_str(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def stop_startup(message: str) -> NoReturn:
    """Stop start-up with one explanatory line instead of a traceback."""
    sys.stderr.write(f"Regent cannot start: {message}\n")
    raise SystemExit(2)
