"""docs/PROMISES.md points at tests that exist, and its figures section is rewritten in place."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from conftest import ROOT

DOCUMENT = ROOT / "docs" / "PROMISES.md"
_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`")


def _load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("promises_bench", ROOT / "bench" / "promises.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def referenced_tests() -> list[tuple[str, str | None]]:
    """(file, test or None) for each reference; ``::name`` alone means the file named before it."""
    found, current = [], None
    for match in _REFERENCE.finditer(DOCUMENT.read_text()):
        path, name = match.groups()
        if path is None and name is None:
            continue
        current = path or current
        assert current is not None, f"{match[0]} names no file"
        found.append((current, name))
    return found


def test_every_promise_points_at_a_test_that_exists() -> None:
    references = referenced_tests()
    assert len(references) > 20
    for path, name in references:
        source = ROOT / path
        assert source.is_file(), path
        if name is not None:
            assert re.search(rf"^def {name}\(", source.read_text(), re.MULTILINE), f"{path}::{name}"


def test_every_test_that_measures_a_figure_is_run_by_the_command() -> None:
    bench = _load_bench()
    call = re.compile(r"^\s+record_figures\(", re.MULTILINE)
    recording = {str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py") if call.search(path.read_text())}
    assert recording == set(bench.FIGURE_TESTS)


def test_the_figures_section_is_replaced_between_its_markers(tmp_path: Path) -> None:
    bench = _load_bench()
    document = tmp_path / "PROMISES.md"
    document.write_text(f"# Promises\n\nbefore\n{bench.BEGIN}\nold figures\n{bench.END}\nafter\n")
    table = bench.render({"load": {"senders": 9, "rates": {"instances_per_second": 36.25}}}, 1, "2026-12-02", "2 cores")
    bench.update_document(document, table)
    text = document.read_text()
    assert "old figures" not in text and text.startswith("# Promises\n\nbefore\n") and text.endswith("after\n")
    assert "| load | senders | 9 |" in text and "| load | rates.instances_per_second | 36.2 |" in text
