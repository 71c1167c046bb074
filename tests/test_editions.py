"""Edition sources: the sample edition reads; a broken one reports every problem at once."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest

from worker.editions.files import (
    EditionContent,
    EditionInvalid,
    EditionProblem,
    check_edition,
    read_edition,
    read_newsletter_profile,
)

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"


def copy_sample(tmp_path: Path) -> Path:
    """A writable copy of the sample edition (the originals are read-only)."""
    folder = tmp_path / "edition"
    folder.mkdir()
    for file in SAMPLE.iterdir():
        shutil.copyfile(file, folder / file.name)
    return folder


def edit(folder: Path, name: str, old: str, new: str) -> None:
    path = folder / name
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_sample_edition_reads_in_three_languages() -> None:
    source = read_edition(SAMPLE)

    assert check_edition(SAMPLE) == []
    assert source.newsletter.languages == ("en", "be", "ru")
    assert source.newsletter.default_language == "en"
    assert source.newsletter.from_address == "weekly@example.org"
    assert source.newsletter.from_name["be"] == "Штотыднёвы аналіз"
    assert source.newsletter.reply_to == "editors@example.org"
    assert source.key == "2024-W28"
    ru = source.contents["ru"]
    assert (ru.period_start, ru.period_end) == (date(2024, 7, 8), date(2024, 7, 14))
    assert ru.subject.startswith("Китай не поддержал эскалацию")
    [item] = ru.items
    assert item.section == "Безопасность"
    assert item.image is not None and item.image.alt == "Военные на пограничном посту"
    assert item.image.credit == "фото: elements.envato.com"
    assert item.url == "https://example.org/ru/2024/07/china-did-not-back-escalation"
    assert item.body.count("\n\n") == 5  # six Markdown paragraphs
    assert not item.lead.endswith("\n")


def test_content_survives_a_json_round_trip() -> None:
    content = read_edition(SAMPLE).contents["be"]

    stored = json.loads(json.dumps(content.to_json(), ensure_ascii=False))

    assert stored["period_start"] == "2024-07-08"
    assert EditionContent.from_json(stored) == content


def test_profile_reads_alone() -> None:
    profile = read_newsletter_profile(SAMPLE / "newsletter.yaml")

    assert profile.name["ru"] == "Еженедельный анализ: Беларусь"
    assert profile.site == "https://example.org"


def problems_as_tuples(problems: list[EditionProblem]) -> set[tuple[str, str, int | None]]:
    return {(problem.file, problem.location, problem.line) for problem in problems}


def test_broken_edition_reports_every_problem_with_location(tmp_path: Path) -> None:
    # Given an edition with one mistake of each kind, spread over the files
    folder = copy_sample(tmp_path)
    edit(folder, "en.yaml", "end: 2024-07-14", "end: 2024-07-01")
    edit(folder, "en.yaml", "url: https://example.org/en/2024", "url: example.org/en/2024")
    edit(folder, "en.yaml", '      alt: "Soldiers at a border post"\n', "")
    edit(folder, "en.yaml", "    standfirst:", "    colour: red\n    standfirst:")
    edit(folder, "be.yaml", "preheader:", "preheadr:")
    edit(folder, "ru.yaml", '      alt: "Военные на пограничном посту"', '      alt: "  "')
    edit(folder, "ru.yaml", "  - section: Безопасность", "  - section: Бяспека\n    section: x")
    with (folder / "ru.yaml").open("a", encoding="utf-8") as handle:
        handle.write('  - title: "Second"\n    url: https://example.org/2\n    lead: L\n')

    # When it is checked
    problems = check_edition(folder)

    # Then every problem is there, with file, field path and line
    reasons = {(p.file, p.location): p.reason for p in problems}
    assert problems_as_tuples(problems) == {
        ("en.yaml", "period.end", 6),
        ("en.yaml", "items[0].colour", 12),
        ("en.yaml", "items[0].url", 14),
        ("en.yaml", "items[0].image", 15),
        ("be.yaml", "preheader", 2),
        ("be.yaml", "preheadr", 6),
        ("ru.yaml", "items[0].section", 9),
        ("ru.yaml", "items[0].image.alt", 15),
        ("ru.yaml", "items[1].body", 48),
        ("ru.yaml", "items", 7),
    }
    assert reasons[("en.yaml", "period.end")] == (
        "period ends (2024-07-01) before it starts (2024-07-08)"
    )
    assert reasons[("en.yaml", "items[0].url")] == (
        "bad URL 'example.org/en/2024/07/china-did-not-back-escalation': "
        "must start with https:// (or http://)"
    )
    assert reasons[("en.yaml", "items[0].image")] == "image without alt text"
    assert reasons[("ru.yaml", "items[0].image.alt")] == "image without alt text"
    assert reasons[("en.yaml", "items[0].colour")].startswith("unknown key 'colour'")
    assert reasons[("be.yaml", "preheader")] == "missing field 'preheader'"
    assert reasons[("ru.yaml", "items[0].section")] == "key appears twice (the last one would win)"
    assert reasons[("ru.yaml", "items[1].body")] == "missing field 'body'"
    assert reasons[("ru.yaml", "items")] == (
        "number of items 2 differs from en.yaml: 1; ru.yaml has 1 more: items[1] 'Second' "
        "(the last ones: items pair up in order)"
    )
    # And read_edition refuses it with the same list
    with pytest.raises(EditionInvalid) as raised:
        read_edition(folder)
    assert raised.value.problems == problems
    assert str(raised.value).count("\n") == len(problems) - 1
    assert "en.yaml:14: items[0].url: bad URL" in str(raised.value)


def test_languages_must_agree_on_key_and_period(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path)
    edit(folder, "ru.yaml", "start: 2024-07-08", "start: 2024-07-07")
    edit(folder, "be.yaml", "edition: 2024-W28", "edition: 2024-W29")

    problems = [(p.file, p.location, p.line, p.reason) for p in check_edition(folder)]

    assert problems == [
        ("be.yaml", "edition", 2, "edition key 2024-W29 differs from en.yaml: 2024-W28"),
        (
            "ru.yaml",
            "period",
            4,
            "period 2024-07-07 to 2024-07-14 differs from en.yaml: 2024-07-08 to 2024-07-14",
        ),
    ]


def test_missing_language_file_and_stray_file(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path)
    (folder / "be.yaml").rename(folder / "de.yaml")

    problems = check_edition(folder)

    assert [(p.file, p.reason) for p in problems] == [
        ("be.yaml", "file is missing"),
        (
            "de.yaml",
            "unknown file: its language is not in newsletter.yaml 'languages' (be, en, ru)",
        ),
    ]


def test_language_field_must_match_file_name(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path)
    edit(folder, "be.yaml", "language: be", "language: ru")

    [problem] = check_edition(folder)

    assert (problem.file, problem.location, problem.line) == ("be.yaml", "language", 3)
    assert problem.reason == "says 'ru' but the file is for 'be'"


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path)
    edit(folder, "ru.yaml", "  - section: Безопасность", "  - section: [Безопасность")

    [problem] = check_edition(folder)

    assert problem.file == "ru.yaml"
    assert problem.location == f"line {problem.line}"
    assert problem.line in (9, 10)
    assert problem.reason.startswith("YAML syntax:")


def test_profile_problems_are_all_reported(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path)
    edit(folder, "newsletter.yaml", "default_language: en", "default_language: de")
    edit(folder, "newsletter.yaml", '  ru: "Еженедельный анализ: Беларусь"\n', "")
    edit(folder, "newsletter.yaml", "site: https://example.org", "site: https://example org")
    edit(folder, "newsletter.yaml", 'reply_to: "editors@example.org"', 'reply_to: "editors"')

    problems = check_edition(folder)

    assert {(p.file, p.location, p.reason) for p in problems} == {
        ("newsletter.yaml", "default_language", "'de' is not in 'languages'"),
        ("newsletter.yaml", "name", "missing language 'ru'"),
        ("newsletter.yaml", "site", "bad URL 'https://example org': contains whitespace"),
        (
            "newsletter.yaml",
            "reply_to",
            "bad address 'editors': An email address must have an @-sign.",
        ),
    }


def test_subject_must_be_one_line_and_dates_real(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path)
    edit(folder, "en.yaml", 'subject: "China', 'subject: |\n  Two\n  lines\nx: "China')
    edit(folder, "be.yaml", "start: 2024-07-08", "start: 2024-07-32")

    problems = {(p.file, p.location): p.reason for p in check_edition(folder)}

    assert problems[("en.yaml", "subject")] == "must be one line"
    assert problems[("en.yaml", "x")].startswith("unknown key 'x'")
    assert problems[("be.yaml", "period.start")] == (
        "expected a date like 2024-07-08, got '2024-07-32'"
    )


def test_empty_file_and_not_a_folder(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path)
    (folder / "ru.yaml").write_text("# nothing yet\n", encoding="utf-8")

    assert [(p.file, p.reason) for p in check_edition(folder)] == [
        ("ru.yaml", "expected a mapping of keys, got nothing"),
    ]
    assert check_edition(tmp_path / "missing")[0].reason == "not a folder"


def test_cli_check_accepts_the_sample() -> None:
    from click.testing import CliRunner

    from worker.cli.edition import edition

    result = CliRunner().invoke(edition, ["check", str(SAMPLE)])

    assert result.exit_code == 0, result.output
    assert "be: 'Кітай не падтрымаў эскалацыю, і Мінск адвёў войскі ад украінскай мяжы'" in (
        result.output
    )
    assert result.output.rstrip().endswith(f"ok: {SAMPLE}")


def test_cli_check_prints_every_problem_and_fails(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from worker.cli.edition import edition

    folder = copy_sample(tmp_path)
    edit(folder, "en.yaml", "end: 2024-07-14", "end: 2024-07-01")
    edit(folder, "ru.yaml", '      alt: "Военные на пограничном посту"\n', "")

    result = CliRunner().invoke(edition, ["check", str(folder)])

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "en.yaml:6: period.end: period ends (2024-07-01) before it starts (2024-07-08)" in lines
    assert "ru.yaml:12: items[0].image: image without alt text" in lines
    assert lines[-1] == f"Error: 2 problems in {folder}"


def test_a_language_with_no_text_is_reported(tmp_path: Path) -> None:
    # Given a profile whose Russian name is written with nothing after it (`ru:`)
    folder = copy_sample(tmp_path)
    edit(folder, "newsletter.yaml", '  ru: "Еженедельный анализ: Беларусь"', "  ru:")
    edit(folder, "newsletter.yaml", 'be: "Штотыднёвы аналіз"', "be: ")

    # When it is checked
    problems = check_edition(folder)

    # Then both empty texts are problems (they used to pass, and the profile lacked them)
    assert [(p.file, p.location, p.line, p.reason) for p in problems] == [
        ("newsletter.yaml", "name.ru", 6, "is empty"),
        ("newsletter.yaml", "from.name.be", 7, "is empty"),
    ]
    with pytest.raises(EditionInvalid):
        read_newsletter_profile(folder / "newsletter.yaml")


PROFILE_KEYS = (
    "about, default_language, feeds, from, languages, name, publisher, reply_to, site, timezone"
)


def test_profile_shape_problems_name_the_field(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path)
    edit(folder, "newsletter.yaml", "languages: [en, be, ru]", "languages: [en, be, ru, en]")
    edit(folder, "newsletter.yaml", 'from: {address: "weekly@example.org"', "from: {adress: x")
    edit(folder, "newsletter.yaml", "site:", "2024: x\nsite:")

    problems = {(p.location, p.reason) for p in check_edition(folder)}

    assert problems == {
        ("languages", "language 'en' listed twice"),
        ("from.address", "missing field 'address'"),
        ("from.adress", "unknown key 'adress' (expected one of: address, name)"),
        ("2024", f"unknown key '2024' (expected one of: {PROFILE_KEYS})"),
    }


def _add_item(folder: Path, name: str, entry: str, last: bool = True) -> None:
    """Append ``entry`` (YAML lines of one list entry, indented as in the sample) to the file's
    ``items`` (which is the last key of the sample files)."""
    path = folder / name
    path.write_text(path.read_text(encoding="utf-8").rstrip("\n") + "\n" + entry, "utf-8")


RU_ONLY = """  - title: "Только по-русски"
    url: https://example.org/ru/only
    lead: "Статья только для русских читателей."
    body: "Текст."
"""


def test_an_absent_placeholder_keeps_the_languages_aligned_and_is_not_rendered(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from worker.cli.edition import edition
    from worker.editions.rendering import render_source

    folder = copy_sample(tmp_path)
    _add_item(folder, "ru.yaml", RU_ONLY)
    # without a decision for en and be: the count differs (the file check's wording)
    reasons = {(p.file, p.location): p.reason for p in check_edition(folder)}
    assert reasons[("ru.yaml", "items")].startswith("number of items 2 differs from en.yaml: 1;")
    _add_item(folder, "en.yaml", "  - absent: true\n")
    _add_item(folder, "be.yaml", "  - absent: true\n")
    assert check_edition(folder) == []
    result = CliRunner().invoke(edition, ["check", str(folder)])
    assert result.exit_code == 0, result.output
    source = read_edition(folder)
    assert source.contents["en"].absent == (1,) and len(source.contents["en"].items) == 1
    assert source.contents["ru"].absent == () and len(source.contents["ru"].items) == 2
    assert source.contents["en"].positions() == [0]
    back = EditionContent.from_json(json.loads(json.dumps(source.contents["be"].to_json())))
    assert back == source.contents["be"]
    rendered = render_source(source, "https://news.example.org")
    assert "Только по-русски" in rendered["ru"].html
    assert rendered["en"].html.count("<h2") == render_source(
        read_edition(SAMPLE), "https://news.example.org"
    )["en"].html.count("<h2")


def test_an_absent_placeholder_has_nothing_else_and_is_not_every_item(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path)
    _add_item(folder, "ru.yaml", RU_ONLY)
    _add_item(folder, "en.yaml", "  - absent: true\n    title: Invented\n")
    _add_item(folder, "be.yaml", "  - absent: false\n")
    reasons = {(p.file, p.location, p.line): p.reason for p in check_edition(folder)}
    assert reasons[("en.yaml", "items[1]", _last_line(folder, "en.yaml") - 1)] == (
        "a placeholder 'absent: true' has no other fields (found: title); write the article, "
        "or keep only 'absent: true'"
    )
    assert reasons[("be.yaml", "items[1]", _last_line(folder, "be.yaml"))] == (
        "'absent' must be true (got bool False); leave it out for an article"
    )
    (tmp_path / "only").mkdir()
    only = copy_sample(tmp_path / "only")
    path = only / "en.yaml"
    text = path.read_text("utf-8")
    path.write_text(text[: text.index("items:")] + "items:\n  - absent: true\n", "utf-8")
    found = {(p.file, p.location): p.reason for p in check_edition(only)}
    assert found[("en.yaml", "items")] == (
        "every item is 'absent: true': a language needs at least one article"
    )


def _last_line(folder: Path, name: str) -> int:
    return len((folder / name).read_text("utf-8").splitlines())
