"""Edition folders as zip archives (worker/editions/bundles.py): uploads read safely, exports
that `edition load` reads back to the same edition."""

from __future__ import annotations

import contextlib
import io
import shutil
import stat
import warnings
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.editions.bundles import (
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
    BundleProblem,
    bundle_of,
    export_bundle,
    extract_bundle,
)
from worker.editions.files import read_edition
from worker.editions.store import edition_contents, find_edition, save_edition
from worker.runtime import Runtime
from worker.settings import Settings

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


def zip_of(members: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def sample_members(prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{path.name}": path.read_bytes() for path in sorted(SAMPLE.glob("*.yaml"))}


def test_a_zipped_folder_unpacks_to_the_same_edition(tmp_path: Path) -> None:
    for prefix in ("", "2024-W28/"):
        members = sample_members(prefix) | {
            "__MACOSX/._en.yaml": b"junk",
            f"{prefix}.DS_Store": b"",
        }
        folder = extract_bundle(zip_of(members), tmp_path / prefix.strip("/") / "out")
        assert read_edition(folder) == read_edition(SAMPLE)
        assert sorted(p.name for p in folder.iterdir()) == [
            "be.yaml",
            "en.yaml",
            "newsletter.yaml",
            "ru.yaml",
        ]


@pytest.mark.parametrize(
    ("members", "links", "reason"),
    [
        ({"/etc/newsletter.yaml": b""}, (), "'/etc/newsletter.yaml': an absolute path is refused"),
        ({"../newsletter.yaml": b""}, (), "'../newsletter.yaml': a path with '..' or '.'"),
        ({"a/../../en.yaml": b""}, (), "'a/../../en.yaml': a path with '..' or '.'"),
        ({"a\\..\\en.yaml": b""}, (), "a name with '\\', ':' or NUL is refused"),
        ({"C:/en.yaml": b""}, (), "'C:/en.yaml': a name with"),
        ({"newsletter.yaml": b""}, ("en.yaml",), "'en.yaml': a symbolic link is refused"),
        ({"newsletter.yaml": b"", "run.sh": b""}, (), "'run.sh': not a file of an edition"),
        ({"newsletter.yaml": b"", "x.html": b""}, (), "'x.html': not a file of an edition"),
        ({"a/newsletter.yaml": b"", "a/b/en.yaml": b""}, (), "must be at the top of the archive"),
        ({"a/newsletter.yaml": b"", "b/en.yaml": b""}, (), "must be at the top of the archive"),
        ({"en.yaml": b""}, (), "no newsletter.yaml in the archive"),
        ({"a/en.yaml": b"", "en.yaml": b"", "newsletter.yaml": b""}, (), "must be at the top"),
    ],
)
def test_unsafe_archives_are_refused_with_the_member_named(
    tmp_path: Path, members: dict[str, bytes], links: tuple[str, ...], reason: str
) -> None:
    target = tmp_path / "out"
    with pytest.raises(BundleProblem) as raised:
        extract_bundle(zip_of(members, links), target)
    assert reason in str(raised.value)
    assert not target.exists()  # nothing written at all
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_caps_on_members_sizes_and_bombs(tmp_path: Path) -> None:
    many = {f"p{n}.jpg": JPEG for n in range(MAX_MEMBERS)} | sample_members()
    with pytest.raises(BundleProblem, match=f"has {MAX_MEMBERS + 4} members; at most 64"):
        extract_bundle(zip_of(many), tmp_path / "a")
    # 11 MB of zeros deflate to a few KB: the unpacked size counts
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("newsletter.yaml", b"")
        archive.writestr("bomb.png", b"\0" * (MAX_MEMBER_BYTES + 1))
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(BundleProblem, match=r"'bomb\.png': larger than 10 MB unpacked"):
        extract_bundle(buffer.getvalue(), tmp_path / "b")
    with pytest.raises(BundleProblem, match="not a zip archive"):
        extract_bundle(b"PK\x03\x04 not really", tmp_path / "c")
    with pytest.raises(BundleProblem, match="larger than 20 MB"):
        extract_bundle(b"\0" * (20 * 1024 * 1024 + 1), tmp_path / "d")
    assert not any(tmp_path.iterdir())


def test_a_member_whose_size_lies_is_refused(tmp_path: Path) -> None:
    # A directory entry saying 10 bytes for a member of 20 KB: the read is capped by the real size
    data = bytearray(zip_of(sample_members() | {"lie.png": b"x" * 20_000}))
    archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = archive.getinfo("lie.png")
    assert info.file_size == 20_000
    # zipfile checks the CRC and length as it reads: a forged size ends in a clear refusal
    central = data.rfind(b"lie.png") - 46
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(BundleProblem, match=r"'lie\.png'"):
        extract_bundle(bytes(data), tmp_path / "out")


TOKENS = ["a", "en", ".", "..", "/", "\\", ":", "yaml", ".yaml", ".jpg", "\x00", "é", " ", "~"]
names = st.lists(
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=8).map("".join),
    min_size=1,
    max_size=6,
)


@settings(
    derandomize=True, max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=names, with_profile=st.booleans())
def test_no_member_name_escapes_the_target(
    tmp_path: Path, names: list[str], with_profile: bool
) -> None:
    # Given an archive with arbitrary member names (the profile too, sometimes)
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    target = root / "inside" / "edition"
    members = dict.fromkeys(names, b"x") | ({"newsletter.yaml": b""} if with_profile else {})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
            data = zip_of(members)
    except (ValueError, IndexError):
        return  # zipfile itself cannot write such a name (NUL cuts it, to nothing at worst)
    # When it is unpacked
    with contextlib.suppress(BundleProblem):
        extract_bundle(data, target)
    # Then every file that exists under the case folder is a plain file directly in the target
    written = [path for path in root.rglob("*") if path.is_file()]
    assert all(path.parent == target for path in written), written
    assert all(not path.is_symlink() for path in root.rglob("*"))


def test_export_then_load_gives_the_same_edition(
    rt: Runtime, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.cli import main

    # Given the sample edition with one image of its own, loaded by the CLI from a zip
    folder = tmp_path / "2024-W28"
    shutil.copytree(SAMPLE, folder)
    en = (folder / "en.yaml").read_text(encoding="utf-8")
    (folder / "en.yaml").write_text(
        en.replace("url: https://example.org/media/2024/07/border.jpg", "url: border.jpg"), "utf-8"
    )
    (folder / "border.jpg").write_bytes(JPEG)
    upload = tmp_path / "upload.zip"
    upload.write_bytes(bundle_of(read_edition(folder), {"border.jpg": JPEG}))
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("NEWSLETTER_IMAGES_DIR", str(tmp_path / "images"))
    checked = CliRunner().invoke(main, ["edition", "check", str(upload)])
    assert checked.exit_code == 0, checked.output
    loaded = CliRunner().invoke(main, ["edition", "load", str(upload)])
    assert loaded.exit_code == 0, loaded.output
    assert "image served at /images/2024-W28/border.jpg" in loaded.output

    # When it is exported and loaded again
    exported = tmp_path / "export.zip"
    result = CliRunner().invoke(main, ["edition", "export", "2024-W28", str(exported)])
    assert result.exit_code == 0, result.output
    with rt.session() as session:
        edition = find_edition(session, "2024-W28")
        assert edition is not None
        before = edition_contents(session, edition)
    again = CliRunner().invoke(main, ["edition", "load", str(exported)])
    assert again.exit_code == 0, again.output

    # Then the stored content is the same, and the archive holds the folder with its image
    with rt.session() as session:
        edition = find_edition(session, "2024-W28")
        assert edition is not None
        assert edition_contents(session, edition) == before
        assert export_bundle(session, "2024-W28", str(tmp_path / "images")) == exported.read_bytes()
    assert before == dict(read_edition(folder).contents)
    assert sorted(zipfile.ZipFile(exported).namelist()) == [
        "2024-W28/be.yaml",
        "2024-W28/border.jpg",
        "2024-W28/en.yaml",
        "2024-W28/newsletter.yaml",
        "2024-W28/ru.yaml",
    ]
    missing = CliRunner().invoke(main, ["edition", "export", "2099-W01", str(tmp_path / "x.zip")])
    assert missing.exit_code == 1 and "Error: no edition '2099-W01'" in missing.output


def test_load_of_a_bad_zip_says_why_and_stores_nothing(
    rt: Runtime, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.cli import main

    bad = tmp_path / "bad.zip"
    bad.write_bytes(zip_of(sample_members() | {"../../evil.yaml": b""}))
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", settings.database_url)
    result = CliRunner().invoke(main, ["edition", "load", str(bad)])
    assert result.exit_code == 1
    assert "'../../evil.yaml': a path with '..' or '.' is refused; nothing stored" in result.output
    with rt.session() as session:
        assert find_edition(session, "2024-W28") is None


def test_save_edition_of_a_source_and_bundle_round_trip(rt: Runtime, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    source = read_edition(SAMPLE)
    with rt.session() as session:
        save_edition(session, source, datetime(2026, 12, 1, tzinfo=UTC))
        session.commit()
        data = export_bundle(session, "2024-W28")
    assert read_edition(extract_bundle(data, tmp_path / "x")) == source
