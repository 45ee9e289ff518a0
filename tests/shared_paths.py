"""Where the project's shared conformance fixtures live (``shared/`` beside the repository)."""

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"
