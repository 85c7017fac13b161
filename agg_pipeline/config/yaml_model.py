"""YAML text -> a validated pydantic model, with errors that name the file and the key.

Both catalogues (readings: ``catalogue.py``; event rollups: ``events.py``) load this way,
so a bad key fails at load the same way in both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def parse_model(
    text: str,
    origin: str,
    model: type[M],
    error: type[ValueError],
    what: str,
    location: Callable[[Sequence[int | str]], str],
) -> M:
    """Parse ``text`` as YAML and validate it as ``model``; any problem raises ``error``
    with ``what`` (e.g. "catalogue") and ``origin`` (the file) and, per problem, the key
    path as ``location`` formats it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{what} {origin!r}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {origin!r}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = re.sub(r"^Value error, ", "", err["msg"])
            # Model-wide checks (no location) name their key in the message itself.
            where = f"{location(err['loc'])}: " if err["loc"] else ""
            problems.append(f"{where}{msg}")
        raise error(f"{what} {origin!r}: " + "; ".join(problems)) from None
