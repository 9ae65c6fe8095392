"""
The README is the first thing a user reads: keep its option table and message catalogue
in step with the code and the schema folder.
"""

from __future__ import annotations

from telemetry_service.errors import Rejection
from telemetry_service.options import OPTIONS
from telemetry_service.schemas import SchemaCatalog

from .process import REPO

README = (REPO / "README.md").read_text()


def test_every_option_is_in_the_readme_table_with_its_environment_variable_and_default() -> None:
    rows = [line for line in README.splitlines() if line.startswith("| `--")]
    assert len(rows) == len(OPTIONS)
    for option, row in zip(OPTIONS, rows, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"`--{option.name}`"
        assert cells[1] == f"`{option.env}`"
        if not option.default.startswith("("):
            assert cells[2] == f"`{option.default}`"


def test_every_shipped_type_is_in_the_catalogue(catalog: SchemaCatalog) -> None:
    for message_type in catalog.types:
        assert f"`{message_type}`" in README


def test_every_reason_code_is_documented() -> None:
    import telemetry_service.errors as errors

    codes = [v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str) and k == v]
    assert len(codes) == 14
    for code in codes:
        assert f"| `{code}` |" in README
    assert Rejection("X", "y").to_frame() == {"type": "ERROR", "reason": "X", "detail": "y"}


def test_every_local_file_the_readme_shows_exists() -> None:
    import re

    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (REPO / target).exists(), target
