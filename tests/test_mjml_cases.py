"""The handed MJML cases (tests/cases/mjml) and the reference-MJML lint of every template."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import mjml
import pytest

from tests import mjml_reference
from worker.editions.files import read_edition
from worker.editions.mjml_documents import MjmlRefused, check_document, to_html
from worker.editions.rendering import (
    TRANSACTIONAL,
    _autoescape,
    edition_mjml,
    message_mjml,
    sample_context,
)

CASES = Path(__file__).resolve().parent / "cases" / "mjml"
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"


def case(case_id: str) -> dict[str, Any]:
    cases = json.loads((CASES / "cases.json").read_text(encoding="utf-8"))
    return next(item for item in cases if item["id"] == case_id)


def render_case_template(name: str, context: dict[str, Any], *, autoescape: Any) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(CASES),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(name).render(context)


def test_m02_editorial_lt_and_amp_survive_with_our_autoescape() -> None:
    m02 = case("m02")

    # When the case template is rendered the way worker.editions.rendering renders MJML templates
    source = render_case_template(m02["file"], m02["context"], autoescape=_autoescape)
    html = mjml.mjml2html(source)

    # Then the text and the URL arrive as entities and nothing is swallowed
    for expected in m02["expected"]["html_contains"]:
        assert expected in html
    for unexpected in m02["expected"]["html_not_contains"]:
        assert unexpected not in html
    # And reference MJML accepts the same document
    assert mjml_reference.render({"m02": source})["m02"].errors == ()


def test_m02_naive_environment_breaks_mjml_python() -> None:
    m02 = case("m02")
    naive = jinja2.select_autoescape(["mjml"])  # the trap: does not match "x.mjml.j2"

    source = render_case_template(m02["file"], m02["context"], autoescape=naive)

    assert "(<$2)" in source
    with pytest.raises(ValueError, match="unable to parse"):
        mjml.mjml2html(source)


def test_m03_unitless_values_fail_the_lint() -> None:
    m03 = case("m03")
    source = (CASES / m03["file"]).read_text(encoding="utf-8")

    reference = mjml_reference.render({"m03": source})["m03"]
    ours = mjml.mjml2html(source)

    # The lint (reference strict validation) rejects both unitless attributes
    assert len(reference.errors) == 2
    for word in m03["expected"]["lint_errors_mention"]:
        assert any(f"Attribute {word} has invalid value" in error for error in reference.errors)
    # Reference MJML reads width="300" as 300 px; mjml-python stretches the image to the column.
    expected = m03["expected"]["if_rendered_anyway"]
    assert f'width="{expected["img_width_attr"]}"' in reference.html
    assert re.search(r'<img[^>]*width="550"', ours), "mjml-python changed: revisit docs/editions.md"


def every_template_document() -> dict[str, str]:
    """The MJML our templates produce: every message in every language of the sample."""
    source = read_edition(SAMPLE)
    profile = source.newsletter
    documents = {
        f"edition/{language}": edition_mjml(profile, content, public_url="https://x.example")
        for language, content in source.contents.items()
    }
    for name in TRANSACTIONAL:
        for language in profile.languages:
            documents[f"{name}/{language}"] = message_mjml(
                name,
                language,
                sample_context(name),
                profile=profile,
                public_url="https://x.example",
            )
    return documents


def test_every_template_passes_reference_strict_validation() -> None:
    documents = every_template_document()

    results = mjml_reference.render(documents)

    assert len(results) == 9
    assert {key: result.errors for key, result in results.items() if result.errors} == {}


def all_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((CASES / "cases.json").read_text(encoding="utf-8"))
    return [item for item in cases if item.get("kind") == "mjml"]


def case_document(item: dict[str, Any]) -> tuple[str, Path, Path]:
    """(MJML source, the file it is written in, the template folder) of a handed case: a
    ``.mjml`` file, a ``.mjml.j2`` template rendered with the case's context the way
    worker.editions.rendering renders (autoescaped), or a folder with ``main`` (default
    ``main.mjml``) that may include the folder's other files."""
    path = CASES / item["file"]
    if path.is_dir():
        main = path / item.get("main", "main.mjml")
        return main.read_text(encoding="utf-8"), main, path
    if path.name.endswith(".j2"):
        source = render_case_template(item["file"], item.get("context", {}), autoescape=_autoescape)
        return source, path, CASES
    return path.read_text(encoding="utf-8"), path, CASES


@pytest.mark.parametrize("item", all_cases(), ids=lambda item: str(item["id"]))
def test_each_case_gets_the_verdict_it_stands_for(item: dict[str, Any]) -> None:
    # Given a handed case (and any case of the same kind added to cases.json)
    source, file, root = case_document(item)
    expected = item["expected"]

    # When it is checked and rendered as our templates are
    problems = check_document(source, file, root)
    described = [str(problem) for problem in problems]

    # Then a lint error names each attribute the case names, and the render is refused
    if expected.get("template_lint") == "error" or expected.get("render") in ("error", "refused"):
        assert problems, "no problem reported"
        for word in expected.get("lint_errors_mention", []) + expected.get("error_mentions", []):
            assert any(word in text for text in described), (word, described)
        with pytest.raises(MjmlRefused):
            to_html(source, file, root)
        return
    # And a valid case renders, keeping what it must keep
    assert described == []
    html = to_html(source, file, root)
    for text in expected.get("html_contains", []):
        assert text in html
    for text in expected.get("html_not_contains", []):
        assert text not in html
