"""Where the vendored conformance fixtures live: ``tests/data/conformance`` (see its README)."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "data" / "conformance"
