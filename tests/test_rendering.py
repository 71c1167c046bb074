"""Renditions: Jinja2 -> MJML -> HTML plus a text part, per language, with safe editorial text."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import jinja2
import pytest

from worker.editions.files import EditionContent, EditionImage, EditionItem, read_edition
from worker.editions.rendering import (
    GMAIL_CLIP_BYTES,
    MESSAGES,
    PARTS,
    TRANSACTIONAL,
    UNSUBSCRIBE_URL,
    TemplateProblem,
    _autoescape,
    _mjml_to_html,
    check_templates,
    html_lang,
    messages_on_disk,
    render_edition,
    render_message,
    sample_context,
)
from worker.editions.richtext import clean_html, markdown_to_html, markdown_to_text

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"
PUBLIC = "https://news.example.org"
SOURCE = read_edition(SAMPLE)
PROFILE = SOURCE.newsletter


def visible_text(html: str) -> str:
    """The HTML without tags, comments and head: roughly what a reader sees."""
    body = html.split("<body", 1)[1]
    body = re.sub(r"<!--.*?-->", "", body, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


@pytest.mark.parametrize("language", ["en", "be", "ru"])
def test_sample_edition_renders_in_each_language(language: str) -> None:
    content = SOURCE.contents[language]

    rendered = render_edition(PROFILE, content, public_url=PUBLIC + "/")

    assert rendered.lang == language
    assert html_lang(rendered.html) == language
    assert rendered.subject == content.subject
    assert rendered.preheader == content.preheader
    assert rendered.warnings == ()
    archive = f"{PUBLIC}/archive/2024-W28/{language}"
    assert f'href="{archive}"' in rendered.html
    assert f": {archive}\n" in rendered.text
    assert content.items[0].title in " ".join(rendered.text.split())
    assert content.items[0].url in rendered.text
    assert PROFILE.name[language] in visible_text(rendered.html)


def test_period_and_plural_appear_localised() -> None:
    be = render_edition(PROFILE, SOURCE.contents["be"], public_url=PUBLIC)
    ru = render_edition(PROFILE, SOURCE.contents["ru"], public_url=PUBLIC)

    assert "8–14 ліпеня 2024 · 1 артыкул" in be.text
    assert "8–14 ліпеня 2024 · 1 артыкул" in visible_text(be.html)
    assert "8—14 июля 2024\u202fг. · 1 статья" in ru.text
    assert "Адкрыць у браўзеры" in be.html and "Отписаться" in ru.text


@pytest.mark.parametrize("language", ["en", "be", "ru"])
def test_unsubscribe_placeholder_once_in_html_and_text(language: str) -> None:
    rendered = render_edition(PROFILE, SOURCE.contents[language], public_url=PUBLIC)

    assert rendered.html.count(UNSUBSCRIBE_URL) == 1
    assert f'href="{UNSUBSCRIBE_URL}"' in rendered.html
    assert rendered.text.count(UNSUBSCRIBE_URL) == 1
    assert re.search(rf"^\S[^\n]*: {re.escape(UNSUBSCRIBE_URL)}$", rendered.text, re.M)


def test_preheader_is_hidden_at_the_top_of_the_body() -> None:
    rendered = render_edition(PROFILE, SOURCE.contents["en"], public_url=PUBLIC)

    body = rendered.html.split("<body", 1)[1]
    hidden = re.search(r'<div style="display:none;[^"]*">([^<]*)</div>', body)
    assert hidden is not None
    assert hidden.group(1) == rendered.preheader
    assert body.index(hidden.group(0)) < body.index(PROFILE.name["en"])


def tricky_content() -> EditionContent:
    """Three items with '<', '&', quotes and Cyrillic in every field, and hostile Markdown."""
    ru = SOURCE.contents["ru"]
    base = ru.items[0]
    second = EditionItem(
        section="Экономика & <рынки>",
        title='Скидки <до 50%> & "подарки"',
        standfirst="Если цена < 100 руб. (<$2), купон не нужен",
        url="https://news.example.org/r?id=48&lang=ru&utm_source=newsletter",
        image=EditionImage(
            url="https://example.org/a.jpg?w=600&h=400", alt='Цены "до" & <после>', credit=None
        ),
        lead="Лид с <b>тегом</b> & амперсандом",
        body=(
            "Абзац со [ссылкой](https://example.org/x?a=1&b=2) и <script>alert(1)</script>.\n\n"
            '<img src=x onerror="alert(1)"> <span style="color:red">красный</span>\n\n'
            "[плохая](javascript:alert(1)) и **жирный** текст.\n"
        ),
    )
    third = replace(base, section=None, standfirst=None, image=None, title="Третий материал")
    return replace(ru, items=(base, second, third))


def test_several_items_with_hostile_text_render_safely() -> None:
    rendered = render_edition(PROFILE, tricky_content(), public_url=PUBLIC)
    html, text = rendered.html, rendered.text

    # Every item is there, in order
    positions = [html.index(t) for t in ("Китай не поддержал", "Скидки &lt;до 50%&gt;", "Третий")]
    assert positions == sorted(positions)
    assert "3 статьи" in text
    # Editorial text arrives escaped in HTML, verbatim in text (handed case m02)
    assert "Скидки &lt;до 50%&gt; &amp; &#34;подарки&#34;" in html
    assert "Если цена &lt; 100 руб. (&lt;$2), купон не нужен" in html
    assert 'href="https://news.example.org/r?id=48&amp;lang=ru&amp;utm_source=newsletter"' in html
    assert 'alt="Цены &#34;до&#34; &amp; &lt;после&gt;"' in html
    assert "Лид с &lt;b&gt;тегом&lt;/b&gt; &amp; амперсандом" in html
    assert "<$2)" not in html and "<до 50%>" not in html
    assert 'Скидки <до 50%> & "подарки"' in text
    assert "Если цена < 100 руб. (<$2), купон не нужен" in text
    # Markdown links kept; script, handlers, inline style and javascript: links gone
    assert 'href="https://example.org/x?a=1&amp;b=2"' in html
    assert "ссылкой (https://example.org/x?a=1&b=2)" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text, inert
    assert not re.search(r"<script|<[^>]*\son\w+=|<[^>]*style=\"color:red|href=\"javascript", html)
    assert "<strong>жирный</strong>" in html
    # The page still has exactly one unsubscribe link
    assert html.count(UNSUBSCRIBE_URL) == 1 and text.count(UNSUBSCRIBE_URL) == 1


def test_markdown_html_is_sanitised() -> None:
    html = markdown_to_html(
        "# Title\n\n<div onclick=x>raw</div>\n\n[a](https://e.org 'T') [b](data:text/html,x)\n\n"
        "![pic](https://e.org/p.png)\n\n- one\n- two\n"
    )

    assert html.startswith('<h3 style="')  # headings demoted below the item title
    assert "&lt;div onclick=x&gt;raw&lt;/div&gt;" in html  # raw HTML shown as text, inert
    assert '<a href="https://e.org" title="T" style="' in html
    assert 'href="data:' not in html
    assert '<img src="https://e.org/p.png" alt="pic" style="max-width:100%;height:auto;">' in html
    assert "<li>one</li>" in html


def test_html_cleaner_drops_active_content() -> None:
    dirty = (
        '<p onclick="x()" style="position:fixed" class="c">a<script>alert(1)</script>'
        '<a href="javascript:alert(1)">j</a><a href="https://e.org" onmouseover="x">ok</a>'
        "<style>p{}</style><iframe src=https://e.org></iframe></p>"
    )

    assert clean_html(dirty) == (
        '<p style="margin:0 0 16px 0;">a<a style="color:#1a5c96;text-decoration:underline;" '
        'rel="noopener noreferrer">j</a><a href="https://e.org" style="color:#1a5c96;'
        'text-decoration:underline;" rel="noopener noreferrer">ok</a></p>'
    )


def test_markdown_text_shows_structure_and_urls() -> None:
    text = markdown_to_text(
        "## Heading\n\nPara with [a link](https://e.org/a?b=1&c=2) and <tag>.\n\n"
        "- one\n- two\n\n1. first\n2. second\n\n> quoted\n\n[https://e.org](https://e.org)\n"
    )

    assert text == (
        "Heading\n-------\n\n"
        "Para with a link (https://e.org/a?b=1&c=2) and <tag>.\n\n"
        "- one\n- two\n\n1. first\n2. second\n\n> quoted\n\n"
        "https://e.org"
    )


def test_text_part_lines_stay_short() -> None:
    for language in ("en", "be", "ru"):
        rendered = render_edition(PROFILE, SOURCE.contents[language], public_url=PUBLIC)
        long_lines = [
            line for line in rendered.text.splitlines() if len(line) > 78 and "://" not in line
        ]
        assert long_lines == []


def test_gmail_clipping_warning_for_huge_html() -> None:
    content = SOURCE.contents["en"]
    big = replace(content.items[0], body="Word " * 25_000)

    rendered = render_edition(PROFILE, replace(content, items=(big,)), public_url=PUBLIC)

    assert len(rendered.html.encode()) > GMAIL_CLIP_BYTES
    [warning] = rendered.warnings
    assert "Gmail clips messages over 102 KB" in warning


def test_confirmation_message_in_three_languages() -> None:
    context = {"confirm_url": "https://news.example.org/confirm/abc?x=1&y=2", "expires_hours": 48}

    en = render_message("confirmation", "en", context, profile=PROFILE, public_url=PUBLIC)
    be = render_message("confirmation", "be", context, profile=PROFILE, public_url=PUBLIC)
    ru = render_message(
        "confirmation", "ru", {**context, "expires_hours": 1}, profile=PROFILE, public_url=PUBLIC
    )

    assert en.subject == "Confirm your subscription to Belarus Weekly Analysis"
    assert be.subject == "Пацвердзіце падпіску на «Штотыднёвы аналіз: Беларусь»"
    assert ru.subject == "Подтвердите подписку на «Еженедельный анализ: Беларусь»"
    assert 'href="https://news.example.org/confirm/abc?x=1&amp;y=2"' in en.html
    assert "https://news.example.org/confirm/abc?x=1&y=2" in en.text
    assert "48 hours" in en.text and "48 гадзін" in be.text and "1 час." in ru.text
    assert UNSUBSCRIBE_URL not in en.html + en.text  # pending readers have nothing to leave
    assert html_lang(be.html) == "be"


@pytest.mark.parametrize("name", TRANSACTIONAL)
@pytest.mark.parametrize("language", ["en", "be", "ru"])
def test_every_transactional_message_renders(name: str, language: str) -> None:
    rendered = render_message(
        name, language, sample_context(name), profile=PROFILE, public_url=PUBLIC
    )

    assert rendered.lang == language and html_lang(rendered.html) == language
    assert rendered.subject and rendered.preheader and "\n" not in rendered.subject
    assert rendered.text.startswith(PROFILE.name[language] + "\n")
    expected_unsubscribe = 1 if name == "welcome" else 0
    assert rendered.html.count(UNSUBSCRIBE_URL) == expected_unsubscribe
    assert rendered.text.count(UNSUBSCRIBE_URL) == expected_unsubscribe


def test_unknown_language_falls_back() -> None:
    default = render_message("welcome", "de", {}, profile=PROFILE, public_url=PUBLIC)
    chosen = render_message(
        "welcome", "uk", {}, profile=PROFILE, public_url=PUBLIC, fallbacks=("ru",)
    )

    assert default.lang == "en" and default.subject == "Welcome to Belarus Weekly Analysis"
    assert chosen.lang == "ru" and chosen.subject.startswith("Добро пожаловать")


def test_missing_value_or_message_is_a_template_problem() -> None:
    with pytest.raises(TemplateProblem, match="confirm_url"):
        render_message(
            "confirmation", "en", {"expires_hours": 48}, profile=PROFILE, public_url=PUBLIC
        )
    with pytest.raises(TemplateProblem, match="unknown message"):
        render_message("newsletter", "en", {}, profile=PROFILE, public_url=PUBLIC)
    with pytest.raises(TemplateProblem, match="MJML"):
        _mjml_to_html("<mjml><mj-body><mj-text>a < b</mj-text></mj-body></mjml>", "test")


def test_every_message_has_every_part() -> None:
    assert set(messages_on_disk()) >= set(MESSAGES)
    assert len(PARTS) == 4
    check_templates(PROFILE)  # raises on any problem


def test_autoescape_covers_mjml_templates() -> None:
    # The trap: select_autoescape(["mjml"]) looks at the last suffix only.
    assert jinja2.select_autoescape(["mjml"])("body.mjml.j2") is False
    assert _autoescape("edition/body.mjml.j2") is True
    assert _autoescape("edition/body.txt.j2") is False


def test_rendering_is_deterministic() -> None:
    content = SOURCE.contents["be"]

    first = render_edition(PROFILE, content, public_url=PUBLIC)
    second = render_edition(PROFILE, content, public_url=PUBLIC)

    assert first == second
