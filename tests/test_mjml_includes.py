"""``mj-include``: files inside the template folder render as reference MJML renders them; paths
outside it are refused with an error that names the include (issue 13)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import jinja2
import pytest

from tests import mjml_reference
from tests.test_fidelity import MAX_DIFFERING_SHARE, differing_share
from worker.devtools.chromium import HeadlessChromium
from worker.editions.files import read_edition
from worker.editions.includes import IncludeProblem, expand, rebase_paths
from worker.editions.mjml_documents import MjmlRefused, check_document, file_to_html, to_html
from worker.editions.preview import WIDTHS
from worker.editions.rendering import _TemplateLoader, render_edition

INCLUDES = Path(__file__).resolve().parent / "includes"
TEXTS = (
    "Header from partials/header.mjml",
    "Masthead, included by header.mjml relative to its own folder",
    "Body text written in the main file.",
    "Raw HTML from partials/notice.html",
    "Footer from a whole MJML document",
    ".lead div { letter-spacing: 1px; }",
)


@pytest.mark.slow
def test_includes_render_like_reference_mjml(tmp_path: Path) -> None:
    # Given main.mjml including a fragment (which includes a file beside itself), a whole
    # document with a head, an HTML file and a CSS file
    main = INCLUDES / "main.mjml"
    reference = mjml_reference.render(
        {"main": main.read_text(encoding="utf-8")}, files={"main": main}, include_root=INCLUDES
    )["main"]

    # When mjml-python renders it through our include expansion
    ours = file_to_html(main, INCLUDES)

    # Then reference MJML finds nothing to complain about and both carry every included part
    assert reference.errors == ()
    for text in TEXTS:
        assert text in ours
        assert text in reference.html
    # And both look the same in Chromium, at the fidelity threshold of every template
    (tmp_path / "ours.html").write_text(ours, encoding="utf-8")
    (tmp_path / "reference.html").write_text(reference.html, encoding="utf-8")
    with HeadlessChromium(offline=True) as browser:
        for width in WIDTHS.values():
            share, _ = differing_share(
                browser.screenshot(tmp_path / "ours.html", width),
                browser.screenshot(tmp_path / "reference.html", width),
            )
            assert share <= MAX_DIFFERING_SHARE, (width, f"{share:.3%}")


def test_head_of_an_included_document_joins_the_head(tmp_path: Path) -> None:
    expanded = expand(
        (INCLUDES / "main.mjml").read_text(encoding="utf-8"), INCLUDES / "main.mjml", INCLUDES
    )

    head, body = expanded.split("</mj-head>")
    assert '<mj-class name="footer"' in head
    assert "<mj-style>.lead div" in head
    assert "mj-include" not in expanded
    assert "<mj-raw><div" in body


def test_text_outside_includes_is_kept_byte_for_byte() -> None:
    source = (
        "<mjml>\n<mj-body><!-- a comment --><mj-section><mj-column><mj-text>a &amp; b"
        '<mj-include path="x"/></mj-text></mj-column></mj-section></mj-body></mjml>'
    )

    assert expand(source, INCLUDES / "doc.mjml", INCLUDES) == source  # include in raw text stays


def folder(tmp_path: Path) -> tuple[Path, Path]:
    """A template folder inside tmp_path and a secret file beside it (outside)."""
    root = tmp_path / "templates"
    shutil.copytree(INCLUDES, root)
    secret = tmp_path / "secret.mjml"
    secret.write_text("<mj-section><mj-column><mj-text>SECRET</mj-text></mj-column></mj-section>")
    return root, secret


def document(path: str, kind: str = "") -> str:
    kind_attr = f' type="{kind}"' if kind else ""
    return (
        "<mjml>\n<mj-head><mj-title>t</mj-title></mj-head>\n<mj-body>\n"
        f'<mj-include path="{path}"{kind_attr} />\n</mj-body>\n</mjml>\n'
    )


ESCAPES = {
    "parent": "../secret.mjml",
    "deep parent": "partials/../../secret.mjml",
    "encoded": "%2e%2e/secret.mjml",
    "double encoded": "%252e%252e%252fsecret.mjml",
    "absolute": "{tmp}/secret.mjml",
    "etc passwd as html": "/etc/passwd",
    "unc": "//server/share/x.mjml",
    "windows drive": "C:/x.mjml",
    "nul": "partials/header.mjml%00",
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_paths_outside_the_folder_are_refused_by_name(tmp_path: Path, name: str) -> None:
    root, _ = folder(tmp_path)
    path = ESCAPES[name].replace("{tmp}", str(tmp_path))
    kind = "html" if "html" in name else ""
    source = document(path, kind)

    with pytest.raises(MjmlRefused) as raised:
        to_html(source, root / "main.mjml", root)

    [problem] = raised.value.problems
    assert isinstance(problem, IncludeProblem)
    assert (problem.file, problem.line, problem.path) == ("main.mjml", 4, path)
    assert f'main.mjml:4 (mj-include) — path="{path}": refused' in str(raised.value)
    assert "SECRET" not in str(raised.value)


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    root, secret = folder(tmp_path)
    os.symlink(secret, root / "partials" / "link.mjml")
    os.symlink(tmp_path, root / "partials" / "up")

    for path in ("partials/link.mjml", "partials/up/secret.mjml"):
        with pytest.raises(
            MjmlRefused, match=f'path="{path}": refused: outside the template folder'
        ):
            to_html(document(path), root / "main.mjml", root)


def test_reference_mjml_does_not_read_outside_either(tmp_path: Path) -> None:
    # Reference MJML leaves a "denied" comment where we refuse: neither reads the file.
    root, _ = folder(tmp_path)
    main = root / "main.mjml"
    documents = {
        name: document(path.replace("{tmp}", str(tmp_path))) for name, path in ESCAPES.items()
    }

    results = mjml_reference.render(
        documents, files=dict.fromkeys(documents, main), include_root=root
    )

    for name, result in results.items():
        assert "SECRET" not in result.html, name


def test_an_escape_from_a_nested_include_is_refused_where_it_is_written(tmp_path: Path) -> None:
    root, _ = folder(tmp_path)
    (root / "partials" / "sneaky.mjml").write_text(
        '<mj-raw></mj-raw>\n<mj-include path="../../secret.mjml" />'
    )

    problems = check_document(document("partials/sneaky.mjml"), root / "main.mjml", root)

    assert [str(p) for p in problems] == [
        'partials/sneaky.mjml:2 (mj-include) — path="../../secret.mjml": '
        "refused: outside the template folder"
    ]


def test_a_link_inside_the_folder_is_followed(tmp_path: Path) -> None:
    root, _ = folder(tmp_path)
    os.symlink(root / "partials" / "masthead.mjml", root / "alias.mjml")

    html = to_html(document("alias.mjml"), root / "main.mjml", root)

    assert "Masthead, included by header.mjml" in html


def test_missing_circular_and_directory_includes_are_named(tmp_path: Path) -> None:
    root, _ = folder(tmp_path)
    (root / "a.mjml").write_text('<mj-include path="partials/b.mjml" />')
    (root / "partials" / "b.mjml").write_text('<mj-include path="../a.mjml" />')

    cases = {
        "nothing.mjml": 'path="nothing.mjml": mj-include fails to read file: nothing.mjml does '
        "not exist",
        "partials": 'path="partials": not a regular file',
        "a.mjml": 'partials/b.mjml:1 (mj-include) — path="../a.mjml": circular inclusion',
    }
    for path, message in cases.items():
        with pytest.raises(MjmlRefused) as raised:
            to_html(document(path), root / "main.mjml", root)
        assert message in str(raised.value), path


def test_a_validation_problem_in_an_included_file_names_file_line_and_chain(tmp_path: Path) -> None:
    root, _ = folder(tmp_path)
    (root / "partials" / "masthead.mjml").write_text(
        '<mj-section>\n  <mj-column>\n    <mj-image src="a.png" width="300" />\n'
        "  </mj-column>\n</mj-section>\n"
    )

    [problem] = check_document(document("partials/header.mjml"), root / "main.mjml", root)

    assert str(problem).startswith(
        "partials/masthead.mjml:3, included at partials/header.mjml:6, "
        "itself included at main.mjml:4 "
        "(mj-image) — Attribute width has invalid value: 300"
    )


def test_templates_include_relative_to_the_file_that_writes_the_include(tmp_path: Path) -> None:
    # Given a Jinja layout in base/ and a child in news/, each including a partial beside itself
    root = tmp_path / "templates"
    (root / "base").mkdir(parents=True)
    (root / "news").mkdir()
    (root / "base" / "layout.mjml.j2").write_text(
        "<mjml><mj-head><mj-title>{{ title }}</mj-title></mj-head><mj-body>\n"
        '<mj-include path="frame.mjml" />{% block content %}{% endblock %}</mj-body></mjml>'
    )
    (root / "base" / "frame.mjml").write_text(
        "<mj-section><mj-column><mj-text>FRAME</mj-text></mj-column></mj-section>"
    )
    (root / "news" / "body.mjml.j2").write_text(
        '{% extends "base/layout.mjml.j2" %}{% block content %}<mj-include path="part.mjml" />'
        "{% endblock %}"
    )
    (root / "news" / "part.mjml").write_text(
        "<mj-section><mj-column><mj-text>PART</mj-text></mj-column></mj-section>"
    )
    env = jinja2.Environment(loader=_TemplateLoader(root), autoescape=True)

    # When the child is rendered and turned into HTML as rendering.py does
    source = env.get_template("news/body.mjml.j2").render(title="x")
    html = to_html(source, root / "rendered.mjml", root)

    # Then each include was found beside the template that wrote it
    assert 'path="base/frame.mjml"' in source and 'path="news/part.mjml"' in source
    assert "FRAME" in html and "PART" in html


def test_rebase_leaves_absolute_paths_to_be_refused() -> None:
    source = '<mj-include path="/etc/passwd" type="html" /><mj-include path="../x.mjml"/>'

    assert rebase_paths(source, "news") == (
        '<mj-include path="/etc/passwd" type="html" /><mj-include path="news/../x.mjml"/>'
    )


def test_an_include_typed_by_an_editor_is_text(tmp_path: Path) -> None:
    # Given an edition whose title and body carry an mj-include of a file outside the folder
    sample = read_edition(Path(__file__).resolve().parent.parent / "examples/editions/2024-W28")
    attack = '<mj-include path="/etc/passwd" type="html" />'
    content = sample.contents["en"]
    item = dataclasses.replace(content.items[0], title=attack, body=attack)
    content = dataclasses.replace(content, items=(item, *content.items[1:]))

    # When it is rendered
    rendered = render_edition(sample.newsletter, content, public_url="https://x.example")

    # Then it is shown as text and nothing was read
    assert "&lt;mj-include path=" in rendered.html
    assert "root:" not in rendered.html


def test_inlined_css_is_refused_because_mjml_python_would_not_inline_it() -> None:
    source = document("partials/styles/brand.css").replace(
        'brand.css"', 'brand.css" type="css" css-inline="inline"'
    )

    with pytest.raises(MjmlRefused, match='css-inline="inline" is not inlined by mjml-python'):
        to_html(source, INCLUDES / "main.mjml", INCLUDES)
    # Without css-inline the same file is included as a <style>
    plain = source.replace(' css-inline="inline"', "")
    assert ".lead div { letter-spacing: 1px; }" in to_html(plain, INCLUDES / "main.mjml", INCLUDES)
