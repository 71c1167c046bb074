"""Edition folders as zip archives: an upload read safely, an edition exported.

A bundle is a zip of one edition folder (docs/editions.md): ``newsletter.yaml``, one
``<language>.yaml`` per language and the edition's own images (``border.jpg``), either at the top
of the archive or inside one folder (``2024-W28/en.yaml``, as zipping a folder gives).
:func:`extract_bundle` unpacks an upload into a folder of ours after checking every member: a
size and member-count cap (compressed and uncompressed: no zip bombs), no absolute path, no
``..``, no backslash, no symbolic link, no nested folder, only the known kinds of file. Every
problem is a :class:`BundleProblem` naming the member. :func:`bundle_of` zips an edition folder's
values back; ``edition load`` of the archive gives the same edition.
"""

from __future__ import annotations

import io
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session

from worker.editions.files import PROFILE_FILE, EditionSource, local_images
from worker.editions.images import stored_image
from worker.editions.schema import LANGUAGE_TAG, is_local_image
from worker.editions.store import DEFAULT_SLUG, edition_contents, find_edition, profile_of
from worker.editions.writing import content_yaml, profile_yaml
from worker.models import Newsletter

MAX_BUNDLE_BYTES = 20 * 1024 * 1024  # the archive as uploaded
MAX_UNPACKED_BYTES = 40 * 1024 * 1024  # all members, unpacked
MAX_MEMBER_BYTES = 10 * 1024 * 1024  # one member, unpacked (a large photo)
MAX_MEMBERS = 64  # three languages, the profile and a few dozen photos
# zip's earliest date on every exported member: the same edition gives the same bytes.
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
# Archivers add these; they are skipped, not refused (macOS's resource forks, Finder's notes).
_IGNORED = re.compile(r"^(?:__MACOSX/.*|(?:.*/)?\.DS_Store|(?:.*/)?Thumbs\.db)$")


class BundleProblem(ValueError):
    """An archive that cannot be an edition folder; the message names the member and why."""


def _kind_ok(name: str) -> bool:
    """Whether ``name`` (a file name, no folder) is a file an edition folder holds."""
    if name == PROFILE_FILE or is_local_image(name):
        return True
    return name.endswith(".yaml") and bool(LANGUAGE_TAG.match(name[: -len(".yaml")]))


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's path inside the archive, refused unless it is relative, plain and safe."""
    name = info.filename
    if "\\" in name or "\x00" in name or ":" in name:
        raise BundleProblem(f"{name!r}: a name with '\\', ':' or NUL is refused")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise BundleProblem(f"{name!r}: an absolute path is refused")
    if any(part in ("..", ".") for part in path.parts) or not path.parts:
        raise BundleProblem(f"{name!r}: a path with '..' or '.' is refused")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise BundleProblem(f"{name!r}: a symbolic link is refused")
    kind = stat.S_IFMT(mode)  # 0 when the archiver recorded no file type (zipfile's writestr)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise BundleProblem(f"{name!r}: only plain files are allowed")
    return path


def extract_bundle(data: bytes, target: Path) -> Path:
    """Unpack the zip ``data`` into the empty or new folder ``target``; returns ``target``,
    which then holds the edition folder's files (a single top folder in the archive is taken
    off). Nothing is written outside ``target``, and nothing at all when the archive is refused.

    Raises :class:`BundleProblem`: not a zip, over :data:`MAX_BUNDLE_BYTES` /
    :data:`MAX_MEMBERS` / :data:`MAX_MEMBER_BYTES` / :data:`MAX_UNPACKED_BYTES`, an unsafe member
    name, a link, a nested folder, an unknown kind of file, a name given twice, no
    ``newsletter.yaml``. The edition itself is checked afterwards by ``check_edition``.
    """
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleProblem(f"the archive is larger than {MAX_BUNDLE_BYTES // (1024 * 1024)} MB")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as error:
        raise BundleProblem(f"not a zip archive ({error})") from None
    with archive:
        if len(infos) > MAX_MEMBERS:
            raise BundleProblem(f"the archive has {len(infos)} members; at most {MAX_MEMBERS}")
        members = _plan(infos)
        contents = _read_members(archive, members)
    target.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (target / name).write_bytes(content)
    return target


def _plan(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """The members to unpack, by their file name in the edition folder."""
    files: list[tuple[PurePosixPath, zipfile.ZipInfo]] = []
    for info in infos:
        if _IGNORED.match(info.filename):
            continue
        path = _member_path(info)
        if not info.is_dir():
            files.append((path, info))
    tops = {path.parts[0] for path, _ in files if len(path.parts) > 1}
    prefix = len(tops) == 1 and all(len(path.parts) == 2 for path, _ in files)
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for path, info in files:
        if len(path.parts) > (2 if prefix else 1):
            raise BundleProblem(
                f"{info.filename!r}: the edition's files must be at the top of the archive "
                "or in one folder"
            )
        name = path.name
        if not _kind_ok(name):
            raise BundleProblem(
                f"{info.filename!r}: not a file of an edition folder (newsletter.yaml, "
                "<language>.yaml, images .jpg .png .gif .webp)"
            )
        if name in members:
            raise BundleProblem(f"{info.filename!r}: {name} appears twice")
        if info.file_size > MAX_MEMBER_BYTES:
            raise BundleProblem(
                f"{info.filename!r}: larger than {MAX_MEMBER_BYTES // (1024 * 1024)} MB unpacked"
            )
        total += info.file_size
        members[name] = info
    if total > MAX_UNPACKED_BYTES:
        raise BundleProblem(f"larger than {MAX_UNPACKED_BYTES // (1024 * 1024)} MB unpacked")
    if PROFILE_FILE not in members:
        raise BundleProblem(f"no {PROFILE_FILE} in the archive: is it an edition folder?")
    return members


def _read_members(
    archive: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo]
) -> dict[str, bytes]:
    """Each member's bytes, read with a cap: the sizes in the directory may lie."""
    contents: dict[str, bytes] = {}
    total = 0
    for name, info in members.items():
        try:
            with archive.open(info) as stream:
                content = stream.read(MAX_MEMBER_BYTES + 1)
        except (
            zipfile.BadZipFile,
            NotImplementedError,  # a compression method zipfile does not know
            RuntimeError,  # an encrypted member
            OSError,
            EOFError,
            zlib.error,  # a forged deflate stream
        ) as error:
            raise BundleProblem(f"{info.filename!r}: cannot be read ({error})") from None
        total += len(content)
        if len(content) > MAX_MEMBER_BYTES or total > MAX_UNPACKED_BYTES:
            raise BundleProblem(f"{info.filename!r}: larger unpacked than the archive says")
        contents[name] = content
    return contents


def bundle_of(source: EditionSource, images: Mapping[str, bytes] | None = None) -> bytes:
    """A zip of the edition ``source`` as a folder named after its key (``2024-W28/en.yaml``),
    with its own ``images`` (file name -> bytes). ``extract_bundle`` + ``read_edition`` give the
    same ``source`` back. The same edition gives the same bytes (members carry a fixed date)."""
    buffer = io.BytesIO()
    folder = source.key

    def add(archive: zipfile.ZipFile, name: str, data: str | bytes) -> None:
        info = zipfile.ZipInfo(f"{folder}/{name}", date_time=_FIXED_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        archive.writestr(info, data)

    with zipfile.ZipFile(buffer, "w") as archive:
        add(archive, PROFILE_FILE, profile_yaml(source.newsletter))
        for language, content in source.contents.items():
            add(archive, f"{language}.yaml", content_yaml(content))
        for name, data in sorted((images or {}).items()):
            if not is_local_image(name):
                raise ValueError(f"not an image file name: {name!r}")
            add(archive, name, data)
    return buffer.getvalue()


def export_bundle(
    session: Session, key: str, images_dir: str = "", slug: str = DEFAULT_SLUG
) -> bytes:
    """The stored edition ``key`` of newsletter ``slug`` as a bundle (:func:`bundle_of`), with
    the images it keeps in ``images_dir/<key>/`` (``NEWSLETTER_IMAGES_DIR``). Raises
    ``LookupError`` when there is no such edition, ``BundleProblem`` when one of its own images
    is no longer stored."""
    edition = find_edition(session, key, slug)
    if edition is None:
        raise LookupError(f"no edition {key!r}")
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None  # a foreign key
    profile = profile_of(newsletter)
    stored = edition_contents(session, edition)
    order = [*profile.languages, *sorted(set(stored) - set(profile.languages))]
    source = EditionSource(
        newsletter=profile,
        contents={language: stored[language] for language in order if language in stored},
    )
    images: dict[str, bytes] = {}
    for name in local_images(source):
        path = stored_image(images_dir, key, name)
        if path is None:
            raise BundleProblem(f"image {name!r} of edition {key} is not in NEWSLETTER_IMAGES_DIR")
        images[name] = path.read_bytes()
    return bundle_of(source, images)


@contextmanager
def edition_folder(path: Path) -> Iterator[Path]:
    """``path`` itself when it is a folder; when it is a zip file, a temporary folder holding its
    unpacked edition (:func:`extract_bundle`), removed afterwards. Raises
    :class:`BundleProblem` for a file that is no acceptable bundle."""
    if path.is_dir():
        yield path
        return
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        raise BundleProblem(f"the archive is larger than {MAX_BUNDLE_BYTES // (1024 * 1024)} MB")
    with tempfile.TemporaryDirectory(prefix="edition-") as scratch:
        yield extract_bundle(path.read_bytes(), Path(scratch) / "edition")
