"""MJML validation: our checks report what reference MJML's strict validation reports, with the
file, line, element and attribute at fault and what is allowed (issue 13)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import mjml_reference
from tests.test_mjml_cases import CASES, case
from worker.editions import rendering
from worker.editions.files import NewsletterProfile
from worker.editions.localisation import TEMPLATE_ROOT
from worker.editions.mjml_documents import (
    MjmlRefused,
    check_document,
    check_template_files,
    to_html,
)
from worker.editions.mjml_rules import MjmlProblem
from worker.editions.mjml_tree import RULES_FILE
from worker.editions.rendering import TemplateProblem

HEAD = "<mjml>\n<mj-head><mj-title>t</mj-title></mj-head>\n<mj-body>\n"
TAIL = "\n</mj-body>\n</mjml>\n"


def wrap(body: str) -> str:
    """A document whose body starts on line 4."""
    return HEAD + body + TAIL


# Each document breaks one rule of reference MJML's strict validation (or several); the test
# below demands the same (line, element, message) from our validator as from reference MJML.
CORPUS = {
    "unknown element": wrap("<mj-section><mj-column><mj-txt>x</mj-txt></mj-column></mj-section>"),
    "illegal attribute": wrap(
        '<mj-section>\n<mj-column colour="red">\n<mj-text>x</mj-text>\n</mj-column>\n</mj-section>'
    ),
    "two illegal attributes": wrap(
        '<mj-section><mj-column><mj-image href="#" size="2" scr="a.png" /></mj-column></mj-section>'
    ),
    "enum": wrap(
        '<mj-section><mj-column><mj-text align="middle">x</mj-text></mj-column></mj-section>'
    ),
    "colour": wrap(
        '<mj-section background-color="#12345"><mj-column><mj-text color="bleu">x</mj-text>'
        '<mj-text color="rgb(1,2,3)">ok</mj-text><mj-text color="RED">x</mj-text>'
        "</mj-column></mj-section>"
    ),
    "units": wrap(
        '<mj-section padding="10px 20"><mj-column width="50"><mj-image src="a.png" width="50%" '
        'height="auto" /><mj-divider border-width="1em" /><mj-text padding="1px 2px 3px 4px 5px">'
        "x</mj-text></mj-column></mj-section>"
    ),
    "negative": wrap(
        '<mj-section><mj-column><mj-text letter-spacing="-1px" line-height="-2px">x</mj-text>'
        "</mj-column></mj-section>"
    ),
    "boolean and integer": wrap(
        '<mj-section full-width="yes"><mj-column><mj-accordion><mj-accordion-element>'
        "<mj-accordion-title>t</mj-accordion-title><mj-accordion-text>x</mj-accordion-text>"
        '</mj-accordion-element></mj-accordion><mj-carousel thumbnails="maybe"><mj-carousel-image '
        'src="a.png" /></mj-carousel></mj-column></mj-section><mj-wrapper '
        'full-width="full-width"></mj-wrapper><mj-hero mode="fixed-height" height="10"></mj-hero>'
        '<mj-section><mj-column><mj-image src="a.png" fluid-on-mobile="yes" />'
        '<mj-image src="b.png" fluid-on-mobile="true" />'
        '<mj-table cellpadding="four" cellspacing="2">x</mj-table>'
        "</mj-column></mj-section>"
    ),
    "children": wrap(
        "<mj-column><mj-text>x</mj-text></mj-column>\n<mj-section><mj-text>y</mj-text>"
        "<mj-column><mj-section /></mj-column></mj-section>"
    ),
    "head": (
        '<mjml>\n<mj-head>\n<mj-title>t</mj-title>\n<mj-attributes><mj-text padding="4" />'
        '<mj-all font-family="Arial" /><mj-class name="x" color="red" /></mj-attributes>\n'
        "<mj-text>x</mj-text>\n</mj-head>\n<mj-body><mj-section><mj-column>"
        '<mj-text mj-class="x" css-class="y">ok</mj-text>'
        "</mj-column></mj-section></mj-body>\n</mjml>"
    ),
    "raw content is not checked": wrap(
        '<mj-section><mj-column><mj-text><p foo="bar"><mj-nonsense color="x">a</mj-nonsense></p>'
        '</mj-text><mj-raw><mj-section colr="1" /></mj-raw></mj-column></mj-section>'
    ),
}


def ours(source: str, tmp_path: Path) -> list[tuple[int, str, str]]:
    file = tmp_path / "doc.mjml"
    file.write_text(source, encoding="utf-8")
    return [
        (p.line, p.element, p.message)
        for p in check_document(source, file, tmp_path)
        if isinstance(p, MjmlProblem)
    ]


def split_illegal(problems: tuple[tuple[int, str, str], ...]) -> list[tuple[int, str, str]]:
    """Reference MJML lists several illegal attributes of one element in one message; we give
    one problem per attribute."""
    out = []
    for line, tag, message in problems:
        several = re.fullmatch(r"Attributes (.+) are illegal", message)
        if several:
            out += [(line, tag, f"Attribute {a} is illegal") for a in several[1].split(", ")]
        else:
            out.append((line, tag, message))
    return out


def test_every_rule_agrees_with_reference_strict_validation(tmp_path: Path) -> None:
    # Given documents that break each kind of rule
    reference = mjml_reference.render(CORPUS)

    for name, source in CORPUS.items():
        # When both validators read the same document
        expected = sorted(split_illegal(reference[name].problems))
        got = sorted(ours(source, tmp_path))

        # Then they report the same problems at the same lines with the same words
        assert got == expected, name
    # And the corpus is not trivially empty: each kind of rule fired at least once
    everything = " ".join(m for s in CORPUS.values() for _, _, m in ours(s, tmp_path))
    for words in (
        "doesn't exist",
        "is illegal",
        "type Enum",
        "type Color",
        "type Unit",
        "type Boolean",
        "type NInteger",
        "cannot be used inside",
    ):
        assert words in everything


def test_m03_problems_name_element_attribute_line_and_what_is_allowed(tmp_path: Path) -> None:
    m03 = case("m03")
    path = CASES / m03["file"]

    problems = check_document(path.read_text(encoding="utf-8"), path, CASES)

    assert [(p.line, p.element, p.attribute) for p in problems] == [
        (5, "mj-image", "width"),
        (6, "mj-text", "padding-top"),
    ]
    image, text = (str(p) for p in problems)
    assert image.startswith("m03_unitless_image_width.mjml:5 (mj-image) — Attribute width")
    assert "allowed: 1 value(s) in px, e.g. 10px" in image
    assert "only accepts (px, %) units" in text
    for word in m03["expected"]["lint_errors_mention"]:
        assert any(p.attribute == word for p in problems)


def test_m03_is_refused_before_mjml_python_stretches_the_logo(tmp_path: Path) -> None:
    path = CASES / case("m03")["file"]

    with pytest.raises(ValueError, match=r"2 MJML problems:\n.*:5 \(mj-image\) — Attribute width"):
        to_html(path.read_text(encoding="utf-8"), path, CASES)


def test_unknown_element_suggests_the_close_names(tmp_path: Path) -> None:
    [problem] = ours(CORPUS["unknown element"], tmp_path)
    [full] = check_document(CORPUS["unknown element"], tmp_path / "d.mjml", tmp_path)

    assert problem == (4, "mj-txt", "Element mj-txt doesn't exist or is not registered")
    assert "did you mean mj-text" in full.allowed


def test_template_file_problems_carry_the_template_line(tmp_path: Path) -> None:
    # Given a Jinja template whose line 4 has a unitless width and line 5 a computed one
    folder = tmp_path / "msg"
    folder.mkdir()
    (folder / "body.mjml.j2").write_text(
        '{% extends "base.mjml.j2" %}\n{# a comment\n over two lines #}\n'
        '{% block content %}<mj-section><mj-column><mj-image src="{{ src }}" width="120" />\n'
        '<mj-image src="a.png" width="{{ w }}" /><mj-text>{{ x }}</mj-text>'
        "</mj-column></mj-section>{% endblock %}\n",
        encoding="utf-8",
    )

    problems = check_template_files(tmp_path)

    # Then the unitless value is reported at its line in the template file; the computed one is not
    assert [(p.file, p.line, p.attribute) for p in problems] == [("msg/body.mjml.j2", 4, "width")]


def test_our_templates_have_no_problems() -> None:
    assert check_template_files(TEMPLATE_ROOT) == []


def test_a_bad_value_computed_by_jinja_stops_the_render(tmp_path: Path) -> None:
    # Given a rendered document whose width came from a value (not checkable in the template file)
    source = wrap(
        '<mj-section><mj-column><mj-image src="a.png" width="120" /></mj-column></mj-section>'
    )

    with pytest.raises(ValueError) as raised:
        to_html(source, tmp_path / "rendered.mjml", tmp_path, name="edition/body.mjml.j2 (en)")

    assert "edition/body.mjml.j2 (en):4 (mj-image) — Attribute width has invalid value: 120" in str(
        raised.value
    )


def test_edition_check_lists_each_template_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a copy of the templates where the welcome body has an illegal attribute on line 5
    root = tmp_path / "templates"
    shutil.copytree(TEMPLATE_ROOT, root)
    body = root / "welcome" / "body.mjml.j2"
    lines = body.read_text(encoding="utf-8").split("\n")
    lines[4] = lines[4] + '<mj-spacer heigth="10px" />'
    body.write_text("\n".join(lines), encoding="utf-8")
    monkeypatch.setattr(rendering, "TEMPLATE_ROOT", root)
    rendering.environment.cache_clear()

    # When the templates are checked
    try:
        with pytest.raises(TemplateProblem) as raised:
            rendering.check_templates(_profile())
    finally:
        rendering.environment.cache_clear()

    # Then the problem names the file, line, element and attribute
    [problem] = raised.value.problems
    assert str(problem).startswith(
        "welcome/body.mjml.j2:5 (mj-spacer) — Attribute heigth is illegal (allowed: "
    )
    assert isinstance(problem, MjmlProblem)
    assert (problem.element, problem.attribute) == ("mj-spacer", "heigth")
    assert "height" in problem.allowed.split(", ")


def _profile() -> NewsletterProfile:
    from worker.editions.files import read_edition

    sample = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"
    return read_edition(sample).newsletter


def test_edition_check_command_reports_template_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.cli.edition import edition

    root = tmp_path / "templates"
    shutil.copytree(TEMPLATE_ROOT, root)
    layout = root / "base" / "layout.mjml.j2"
    layout.write_text(
        layout.read_text(encoding="utf-8").replace(
            '<mj-divider border-width="1px"', '<mj-divider border-width="1"'
        ),
        encoding="utf-8",
    )
    monkeypatch.setattr(rendering, "TEMPLATE_ROOT", root)
    rendering.environment.cache_clear()
    sample = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"
    try:
        result = CliRunner().invoke(edition, ["check", str(sample)])
    finally:
        rendering.environment.cache_clear()

    assert result.exit_code == 1
    line = 1 + layout.read_text(encoding="utf-8").split("\n").index(
        next(x for x in layout.read_text(encoding="utf-8").split("\n") if "<mj-divider" in x)
    )
    expected = f"templates/base/layout.mjml.j2:{line}: (mj-divider) — Attribute border-width has"
    assert expected in result.output


def test_rules_table_matches_the_pinned_reference_mjml() -> None:
    # The committed table is what tests/fidelity/rules.js dumps from the installed npm package.
    mjml_reference.ensure_installed()
    node = shutil.which("node")
    assert node is not None
    dumped = subprocess.run(
        [node, str(mjml_reference.FIDELITY_DIR / "rules.js")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout

    assert json.loads(dumped) == json.loads(RULES_FILE.read_text(encoding="utf-8"))


MJML_BITS = st.sampled_from(
    [
        "<mjml>",
        "</mjml>",
        "<mj-body>",
        "</mj-body>",
        "<mj-section>",
        "</mj-section>",
        "<mj-column>",
        "</mj-column>",
        '<mj-text align="x">',
        "</mj-text>",
        "<mj-raw>",
        "</mj-raw>",
        '<mj-include path="../x" />',
        '<mj-include path="a.mjml"/>',
        "<p>",
        "</p>",
        '<mj-image width="3"/>',
        "<!--",
        "-->",
        "<![CDATA[",
        "]]>",
        "&amp;",
        "<",
        ">",
        "\n",
        '"',
        "<mj-head>",
        "</mj-head>",
        "<mj-style>",
        "</mj-style>",
        "<mj-foo>",
        "</",
    ]
)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(MJML_BITS | st.text(max_size=5), max_size=40).map("".join))
def test_checking_any_text_reports_and_never_crashes(text: str) -> None:
    root = Path(__file__).resolve().parent / "includes"
    assert not (root / "a.mjml").exists()  # so that include is a problem, not a read

    problems = check_document(text, root / "main.mjml", root)

    assert all(str(problem) for problem in problems)
    with contextlib.suppress(MjmlRefused):
        to_html(text, root / "main.mjml", root)


def test_a_template_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.mjml.j2").write_bytes(b"<mjml>\xff\xfe</mjml>")

    [problem] = check_template_files(tmp_path)

    assert (
        str(problem) == "bad.mjml.j2:1 (file) — cannot be read as UTF-8 text (UnicodeDecodeError)"
    )
