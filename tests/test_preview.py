"""Edition preview: HTML, text and 600/375 px screenshots per language, from headless Chromium.

Needs Chromium (apt-get install -y chromium); fails, not skips, without it.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from worker.cli.edition import edition
from worker.devtools.chromium import HeadlessChromium
from worker.editions.preview import write_preview

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"


def test_preview_writes_every_language(tmp_path: Path) -> None:
    with HeadlessChromium(offline=True) as camera:
        written = write_preview(SAMPLE, tmp_path, "https://news.example.org", camera)

    assert [path.name for path in written] == [
        f"{language}{suffix}"
        for language in ("en", "be", "ru")
        for suffix in (".html", ".txt", "-desktop.png", "-mobile.png")
    ]
    assert "Кітай не падтрымаў" in (tmp_path / "be.html").read_text(encoding="utf-8")
    assert (tmp_path / "ru.txt").read_text(encoding="utf-8").startswith("Еженедельный анализ")
    for language in ("en", "be", "ru"):
        with Image.open(tmp_path / f"{language}-desktop.png") as desktop:
            assert desktop.width == 600 and desktop.height > 1000
        with Image.open(tmp_path / f"{language}-mobile.png") as mobile:
            assert mobile.width == 375 and mobile.height > 1500


def test_cli_preview(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        edition,
        [
            "preview",
            str(SAMPLE),
            "--out",
            str(tmp_path / "out"),
            "--offline",
            "--public-url",
            "https://news.example.org",
        ],
    )

    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 12
    assert (tmp_path / "out" / "be-mobile.png").is_file()
