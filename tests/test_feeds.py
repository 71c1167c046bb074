"""An edition from the website's feeds (worker/editions/feeds.py), served over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.feed_server import LOOPBACK, feed_server, local_fetch
from worker.editions.feeds import (
    FeedEdition,
    default_key,
    edition_from_feeds,
    ending_week,
    fetch_feed,
    is_cut,
    markdown_of,
    parse_feed,
    sending_day,
)
from worker.editions.files import (
    EditionImage,
    NewsletterProfile,
    check_edition,
    read_edition,
    read_newsletter_profile,
)
from worker.editions.writing import write_edition

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"
WEEK = (date(2026, 11, 30), date(2026, 12, 6))


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with feed_server() as base:
        yield base


def profile_for(site: str, **feeds: str) -> NewsletterProfile:
    sample = read_newsletter_profile(SAMPLE / "newsletter.yaml")
    chosen = feeds or {
        "en": f"{site}/feed.json",
        "be": f"{site}/be/feed/atom/",
        "ru": f"{site}/ru/feed/",
    }
    return replace(sample, timezone="Europe/Minsk", feeds=chosen)


def titles(started: FeedEdition) -> dict[str, list[str]]:
    return {lang: [item.title for item in c.items] for lang, c in started.contents.items()}


def test_three_feeds_give_the_items_of_the_week_in_minsk_time(site: str) -> None:
    # Given a WordPress RSS (ru), an Atom feed (be) and a JSON Feed (en), each with articles
    # before, inside and after the week (Minsk time, UTC+3)
    # When the edition of the week starts from them
    started = edition_from_feeds(profile_for(site), *WEEK, fetch=local_fetch)

    # Then each language has the week's articles, oldest first; 29 Nov 21:30 UTC is 30 Nov in
    # Minsk (in), 29 Nov 20:00 UTC is not; 6 Dec 21:30 UTC is 7 Dec (out)
    assert started.problems == []
    assert titles(started) == {
        "en": ["Economy: the rouble and sanctions", "China did not back escalation"],
        "be": ["Эканоміка: рубель і санкцыі", "Кітай не падтрымаў эскалацыю"],
        "ru": [
            "Экономика: рубль и санкции",
            "Китай не поддержал эскалацию",
            "Только по-русски: «письма» из колонии",
        ],
    }
    # The Russian-only article stays: nothing is dropped to make the languages match
    assert started.notes == ["the languages have different numbers of items (2 en, 2 be, 3 ru)"]
    assert {c.key for c in started.contents.values()} == {"2026-W49"}


def test_fields_of_a_wordpress_rss_item(site: str) -> None:
    started = edition_from_feeds(profile_for(site), *WEEK, fetch=local_fetch)
    china = started.contents["ru"].items[1]

    assert china.url == "https://example.org/ru/2026/12/china/"
    assert china.section == "Безопасность"  # the first category
    # The excerpt is cut ("НАТО … Читать далее […]"): the article's first paragraph is the lead
    # instead, and leaves the body
    assert china.lead == "13 июля Лукашенко объявил о «победе» — подробнее."
    # media:content with media:credit; the alt text the article gives the same picture
    assert china.image == EditionImage(
        url="https://example.org/media/2026/12/border.jpg",
        alt="Военные на пограничном посту",
        credit="фото: elements.envato.com",
    )
    # content:encoded, cleaned (no script, no onclick, no style) and written as Markdown; the
    # item's own photo (and its caption: the feed gives a credit) is not repeated in the body
    assert china.body == ("## Разворот\n\nУгроза не исчезла: 2 \\* 3 < 7.\n\n- первое\n- второе")
    # A cut excerpt whose article is one paragraph: that paragraph is the lead and stays the body
    letters = started.contents["ru"].items[2]
    assert letters.lead == "Письма политзаключённых доходят с опозданием."
    assert letters.body == "Письма *политзаключённых* доходят с опозданием."


def test_an_excerpt_that_repeats_or_cuts_the_article_is_cleaned(site: str) -> None:
    # Given a WordPress feed whose articles repeat their lead and photo, one excerpt cut short
    data, content_type = fetch_feed(f"{site}/be/feed/excerpts/", allow_hosts=LOOPBACK)
    returning, taxes = parse_feed(data, f"{site}/be/feed/excerpts/", content_type)

    # Then the cut excerpt ("… Чытаць далей") gives way to the first paragraph, which leaves the
    # body; the photo leaves the body with its figure, and its caption becomes the credit
    assert returning.lead == "Урад абвясціў новыя правілы для тых, хто вяртаецца з-за мяжы."
    assert returning.body == "Камісія разгледзіць кожную заяву."
    assert returning.image == EditionImage(
        "https://example.org/media/2026/12/return.jpg", "Памежны пераход", "Фота: Сяргей Гудзілін"
    )
    # And an excerpt equal to the first paragraph once no-break spaces, entities, tags and runs
    # of spaces are set aside stays the lead; the paragraph and the linked photo leave the body
    assert taxes.lead == "Падаткі для ІП растуць з 1 студзеня."
    assert taxes.body == "Міністэрства тлумачыць чаму."
    assert taxes.image == EditionImage(
        "https://example.org/media/2026/12/taxes.jpg", "Калькулятар", "фота: belta.by"
    )


@pytest.mark.parametrize(
    ("summary", "cut"),
    [
        ("<p>Минску не удалось втянуть Пекин &#8230; <a href='/x'>Читать далее</a></p>", True),
        ("Письма доходят с опозданием. [&hellip;]", True),
        ("Letters arrive late [...]", True),
        ("Letters arrive late...", True),
        ('<p>Letters arrive late. <a href="/x">Read more</a></p>', True),
        ("<p>Урад абвясціў правілы. <a href='/x'>Чытаць далей</a></p>", True),
        ("Letters arrive months late.", False),
        ("<p>A <a href='/x'>report</a> on letters.</p>", False),
    ],
)
def test_a_cut_summary_is_recognised(summary: str, cut: bool) -> None:
    assert is_cut(summary) is cut


def test_fields_of_atom_and_json_feed_items(site: str) -> None:
    started = edition_from_feeds(profile_for(site), *WEEK, fetch=local_fetch)
    be_china, be_rouble = started.contents["be"].items[1], started.contents["be"].items[0]
    en_china, en_rouble = started.contents["en"].items[1], started.contents["en"].items[0]

    # Atom: summary as lead, HTML content, the image enclosure (no description: no alt)
    assert be_china.lead == "Мінску не ўдалося ўцягнуць Пекін у супрацьстаянне з Кіевам."
    assert be_china.body == "13 ліпеня **Лукашэнка** абвясціў пра «перамогу».\n\nПагроза не знікла."
    assert be_china.image == EditionImage("https://example.org/media/2026/12/border.jpg", "")
    # Atom with XHTML content and no summary: the first paragraph is the lead
    assert be_rouble.lead == "Рубель трымаецца, але запасы таюць."
    assert be_rouble.body == "Другі абзац."  # the lead is not repeated
    assert be_rouble.section == "Эканоміка"
    # JSON Feed: image with the publisher's _image credit, alt from the article, tags[0]
    assert en_china.image == EditionImage(
        "https://example.org/media/2026/12/border.jpg",
        "Soldiers at a border post",
        "photo: elements.envato.com",
    )
    assert en_china.section == "Security"
    assert en_china.lead == "Minsk failed to drag Beijing into its stand-off with Kyiv & NATO."
    assert "onmouseover" not in en_china.body and en_china.body.endswith("The threat remains.")
    # A relative url resolves against the site's home page
    assert en_rouble.url == "https://example.org/en/2026/11/rouble/"
    assert en_rouble.lead == "The rouble holds, but reserves melt."
    assert en_rouble.body == "Second paragraph."
    # The item's image is not repeated inside the body
    assert en_china.body == "On 13 July **Lukashenka** declared a *victory*.\n\nThe threat remains."


def test_a_broken_feed_is_named_and_the_others_still_give_their_items(site: str) -> None:
    # Given the Belarusian feed answers 404
    profile = profile_for(
        site, en=f"{site}/feed.json", be=f"{site}/missing/", ru=f"{site}/ru/feed/"
    )
    # When the edition starts
    started = edition_from_feeds(profile, *WEEK, fetch=local_fetch)
    # Then the error names the feed, and en and ru keep their items
    assert [str(problem) for problem in started.problems] == [
        f"be feed: HTTP 404 at {site}/missing/"
    ]
    assert [len(started.contents[lang].items) for lang in ("en", "be", "ru")] == [2, 0, 3]


def test_a_page_that_is_no_feed_and_a_language_without_feed(site: str) -> None:
    profile = profile_for(site, en=f"{site}/feed.json", be=f"{site}/page.html")
    started = edition_from_feeds(profile, *WEEK, fetch=local_fetch)
    assert [str(problem) for problem in started.problems] == [
        f"be feed: not RSS/Atom/JSON Feed at {site}/page.html",
        "ru feed: no feed address in newsletter.yaml 'feeds'",
    ]
    assert len(started.contents["en"].items) == 2


def test_fetching_is_bounded(site: str) -> None:
    with pytest.raises(ValueError, match=r"^no answer within 0.5 s from http://127"):
        fetch_feed(f"{site}/slow", timeout=0.5, allow_hosts=LOOPBACK)
    with pytest.raises(ValueError, match=r"^larger than 5120 KB at "):
        fetch_feed(f"{site}/huge", allow_hosts=LOOPBACK)
    with pytest.raises(ValueError, match=r"^cannot fetch .*/to-file"):
        fetch_feed(
            f"{site}/to-file", allow_hosts=LOOPBACK
        )  # a redirect to file:///etc/passwd is not followed
    with pytest.raises(ValueError, match="must start with https://"):
        fetch_feed("file:///etc/passwd")
    body, content_type = fetch_feed(f"{site}/feed.json", allow_hosts=LOOPBACK)
    assert content_type == "application/feed+json" and body.startswith(b"{")


def test_not_a_feed_in_json_and_too_deep_json() -> None:
    from worker.editions.feeds import NotAFeed

    with pytest.raises(NotAFeed, match=r"without a jsonfeed\.org version"):
        parse_feed(b'{"items": []}', "https://example.org/feed.json")
    with pytest.raises(NotAFeed, match="not valid JSON"):
        parse_feed(b"{" * 100_000, "https://example.org/feed.json")


def test_markdown_of_keeps_text_safe() -> None:
    assert (
        markdown_of(
            '<p>a <a href="javascript:alert(1)">x</a> <img src=x onerror=y></p>',
            "https://example.org/a/",
        )
        == "a x ![](https://example.org/a/x)"
    )
    assert markdown_of("<p>[not a link](https://evil.example) _under_</p>", "https://e.org/") == (
        "\\[not a link\\](https://evil.example) \\_under\\_"
    )


def test_the_folder_written_is_an_edition_folder(site: str, tmp_path: Path) -> None:
    # Given the three feeds, with the Russian-only article and the Belarusian image without alt
    started = edition_from_feeds(profile_for(site), *WEEK, fetch=local_fetch)
    write_edition(tmp_path, profile_for(site), started.contents)

    # Then `edition check` reports exactly what the editor must decide, and nothing else
    problems = [str(problem) for problem in check_edition(tmp_path)]
    assert problems == [
        "be.yaml:20: items[1].image: image without alt text",
        "ru.yaml:9: items: number of items 3 differs from en.yaml: 2; ru.yaml has 1 more: "
        "items[2] 'Только по-русски: «письма» из колонии' (no item of en.yaml has the same link)",
    ]
    # When the editor drops the Russian-only article and describes the photo
    text = (tmp_path / "be.yaml").read_text(encoding="utf-8")
    (tmp_path / "be.yaml").write_text(
        text.replace(
            "url: https://example.org/media/2026/12/border.jpg\n",
            "url: https://example.org/media/2026/12/border.jpg\n    alt: Вайскоўцы на мяжы\n",
        ),
        encoding="utf-8",
    )
    ru = started.contents["ru"]
    write_edition(tmp_path, profile_for(site), {"ru": replace(ru, items=ru.items[:2])})
    # Then the folder is a valid edition with the feeds' values
    assert check_edition(tmp_path) == []
    source = read_edition(tmp_path)
    assert source.newsletter.feeds["ru"] == f"{site}/ru/feed/"
    assert source.newsletter.timezone == "Europe/Minsk"
    assert source.contents["en"].items[1].body == started.contents["en"].items[1].body + "\n"


def test_the_cli_writes_the_folder_and_names_a_failed_feed(site: str, tmp_path: Path) -> None:
    from worker.cli import main

    profile = tmp_path / "newsletter.yaml"
    profile.write_text(
        (SAMPLE / "newsletter.yaml").read_text(encoding="utf-8")
        + f"timezone: Europe/Minsk\nfeeds:\n  en: {site}/feed.json\n  be: {site}/be/feed/atom/\n"
        f"  ru: {site}/ru/missing/\n",
        encoding="utf-8",
    )
    out = tmp_path / "2026-W49"
    result = CliRunner().invoke(
        main,
        [
            "edition",
            "from-feeds",
            "--period",
            "2026-11-30..2026-12-06",
            "--newsletter",
            str(profile),
            str(out),
        ],
        env={"NEWSLETTER_FEED_ALLOW_HOSTS": "127.0.0.1"},
    )
    assert result.exit_code == 1, result.output
    assert f"ru feed: HTTP 404 at {site}/ru/missing/" in result.output
    assert "Error: 1 feed(s) failed" in result.output
    assert "en: 2 item(s)" in result.output and "be: 2 item(s)" in result.output
    assert (out / "newsletter.yaml").read_text(encoding="utf-8") == profile.read_text("utf-8")
    # The failed language is there, empty, for the editor to fill in
    assert read_edition_problems(out) == [
        "ru.yaml:7: subject: is empty",
        "ru.yaml:8: preheader: is empty",
        "ru.yaml:9: items: expected a non-empty list of items",
        "ru.yaml:9: items: number of items 0 differs from en.yaml: 2; en.yaml has 2 more: "
        "items[0] 'Economy: the rouble and sanctions', items[1] 'China did not back escalation' "
        "(no item of ru.yaml has the same link)",
    ]

    bad = CliRunner().invoke(main, ["edition", "from-feeds", "--period", "2026-12-06", str(out)])
    assert bad.exit_code == 2 and "expected two dates like 2026-11-30..2026-12-06" in bad.output


def read_edition_problems(folder: Path) -> list[str]:
    return [str(problem) for problem in check_edition(folder) if problem.file == "ru.yaml"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "feeds:\n  en: example.org/feed\n",
            "newsletter.yaml:30: feeds.en: feed address: bad URL 'example.org/feed': must start "
            "with https:// (or http://)",
        ),
        (
            "feeds:\n  de: https://example.org/de/feed/\n",
            "newsletter.yaml:30: feeds.de: language 'de' is not in 'languages' (be, en, ru)",
        ),
        ("feeds: https://example.org/feed/\n", "newsletter.yaml:29: feeds: expected one feed"),
        (
            "timezone: Europe/Mińsk\n",
            "newsletter.yaml:29: timezone: unknown time zone 'Europe/Mińsk' (expected an IANA "
            "name like Europe/Minsk)",
        ),
    ],
)
def test_bad_feed_settings_are_reported_where_they_are(
    tmp_path: Path, extra: str, expected: str
) -> None:
    text = (SAMPLE / "newsletter.yaml").read_text(encoding="utf-8")
    (tmp_path / "newsletter.yaml").write_text(text + extra, encoding="utf-8")
    from worker.editions.files import EditionInvalid

    with pytest.raises(EditionInvalid) as raised:
        read_newsletter_profile(tmp_path / "newsletter.yaml")
    assert str(raised.value.problems[0]).startswith(expected)


def test_default_key_and_a_period_the_wrong_way_round(site: str) -> None:
    # A weekly edition is made from the week that is ending, sent the Monday after
    assert ending_week(date(2026, 12, 3)) == (date(2026, 11, 30), date(2026, 12, 6))
    assert ending_week(date(2026, 11, 30)) == (date(2026, 11, 30), date(2026, 12, 6))
    assert ending_week(date(2026, 12, 6)) == (date(2026, 11, 30), date(2026, 12, 6))
    assert default_key(ending_week(date(2026, 12, 3))[0]) == "2026-W49"
    assert sending_day(date(2026, 12, 6)) == date(2026, 12, 7)
    assert default_key(date(2026, 11, 30)) == "2026-W49"
    assert default_key(date(2027, 1, 1)) == "2026-W53"
    with pytest.raises(ValueError, match=r"the period ends \(2026-11-01\) before"):
        edition_from_feeds(
            profile_for(site), date(2026, 11, 30), date(2026, 11, 1), fetch=local_fetch
        )
    with pytest.raises(ValueError, match="names no feeds"):
        edition_from_feeds(replace(profile_for(site), feeds={}), *WEEK, fetch=local_fetch)


def test_a_feed_of_absurd_nesting_is_one_failed_feed(site: str) -> None:
    # Given a JSON Feed whose article nests 50,000 <em> (the HTML, not the JSON, is deep)
    deep = '{"version": "https://jsonfeed.org/version/1.1", "items": [{"title": "x", "url": '
    deep += '"https://example.org/x", "date_published": "2026-12-01T10:00:00Z", "content_html": "'
    deep += "<em>" * 50_000 + 'x"}]}'

    def fetch(url: str) -> tuple[bytes, str]:
        return (deep.encode(), "application/feed+json") if "deep" in url else local_fetch(url)

    profile = profile_for(site, en="https://example.org/deep.json", ru=f"{site}/ru/feed/")
    # When the edition starts
    started = edition_from_feeds(profile, *WEEK, fetch=fetch)
    # Then that feed is reported, and the others are read
    assert [str(p) for p in started.problems] == [
        "en feed: an article nested too deeply at https://example.org/deep.json",
        "be feed: no feed address in newsletter.yaml 'feeds'",
    ]
    assert len(started.contents["ru"].items) == 3


def test_the_cli_defaults_to_the_week_that_is_ending(site: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from worker.cli import main

    profile = tmp_path / "newsletter.yaml"
    profile.write_text(
        (SAMPLE / "newsletter.yaml").read_text(encoding="utf-8")
        + f"timezone: Europe/Minsk\nfeeds:\n  en: {site}/feed.json\n  be: {site}/be/feed/atom/\n"
        f"  ru: {site}/ru/feed/\n",
        encoding="utf-8",
    )
    # Given no --period
    result = CliRunner().invoke(
        main,
        ["edition", "from-feeds", "--newsletter", str(profile), str(tmp_path / "out")],
        env={"NEWSLETTER_FEED_ALLOW_HOSTS": "127.0.0.1"},
    )
    # Then the period is Monday..Sunday of today's week in Minsk, keyed by its ISO week
    today = datetime.now(UTC).astimezone(ZoneInfo("Europe/Minsk")).date()
    monday, sunday = ending_week(today)
    assert result.exit_code == 0, result.output
    assert f"period {monday}..{sunday} (the week that is ending" in result.output
    assert f"edition {default_key(monday)} written to" in result.output


def test_the_first_paragraph_is_a_paragraph_not_a_heading_or_caption() -> None:
    items = [
        {"url": "https://e.org/a", "title": "A", "content_text": "One &amp; two.\n\nThree."},
        {"url": "https://e.org/b", "title": "B", "content_html": "Loose text.<p>Para.</p>"},
        {
            "url": "https://e.org/c",
            "title": "C",
            "content_html": "<figure><img src='/x.jpg'><figcaption>Cap</figcaption></figure>"
            "<h2>Head</h2><p>Para&nbsp;one.</p><p>Two.</p>",
        },
    ]
    document = {"version": "https://jsonfeed.org/version/1.1", "items": items}
    import json

    text, loose, headed = parse_feed(json.dumps(document).encode(), "https://e.org/feed.json")
    # JSON Feed's content_text: paragraphs by blank lines; the first is the lead, not repeated
    assert (text.lead, text.body) == ("One &amp; two.", "Three.")
    # Text outside a paragraph first: the old rule (the first block of text), kept in the body
    assert (loose.lead, loose.body) == ("Loose text.", "Loose text.\n\nPara.")
    # A heading or a figure before the first paragraph is neither the lead nor dropped
    assert headed.lead == "Para one."
    assert headed.body == "![](https://e.org/x.jpg)\n\nCap\n\n## Head\n\nTwo."
