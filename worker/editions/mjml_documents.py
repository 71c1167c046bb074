"""MJML documents and template files: check them as reference MJML's strict mode would, and turn
them into HTML with mjml-python after expanding ``mj-include`` from the template folder.

Two checks, because Jinja sits between the template file and the MJML:

* :func:`check_template_files` reads each ``*.mjml.j2`` under the template folder with its Jinja
  syntax blanked out, so every problem carries the line of the template file an editor opens.
  Values computed by Jinja (``width="{{ w }}"``) cannot be checked there;
* :func:`check_document` checks a rendered document (or a plain ``.mjml`` file), so computed
  values are checked too; its lines are those of the document (for a plain file, the file's).
"""

from __future__ import annotations

from pathlib import Path

import mjml

from worker.editions.includes import IncludeProblem, expand, graft, mask_jinja
from worker.editions.mjml_rules import MjmlProblem, validate
from worker.editions.mjml_tree import parse

Problem = MjmlProblem | IncludeProblem
"""What the checks report; ``str()`` of either is ``file:line (element) — message``."""


class MjmlRefused(ValueError):
    """An MJML document that strict validation or mjml-python refuses; ``problems`` lists each
    (empty when mjml-python's own parse error is the reason, given in the message)."""

    def __init__(self, message: str, problems: tuple[Problem, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


def check_document(text: str, file: Path, root: Path, *, name: str | None = None) -> list[Problem]:
    """Every problem of the MJML document ``text`` written in ``file`` (includes resolved against
    ``file``'s folder, confined to ``root``). ``name`` replaces the file name in reports. Never
    raises."""
    root, file = root.resolve(), file.resolve()
    tree = parse(text, name or _relative(file, root))
    includes = graft(tree, file, root)
    problems: list[Problem] = [*includes, *validate(tree)]
    return sorted(problems, key=lambda p: (p.file != tree.file, p.file, p.line))


def check_template_files(root: Path) -> list[Problem]:
    """Every problem in the MJML templates (``*.mjml.j2``) under ``root`` and the files they
    include, with template-file lines. Never raises."""
    root = root.resolve()
    problems: list[Problem] = []
    for path in sorted(root.rglob("*.mjml.j2")):
        try:
            masked = mask_jinja(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            reason = f"cannot be read as UTF-8 text ({type(error).__name__})"
            problems.append(MjmlProblem(_relative(path, root), 1, "file", None, reason))
            continue
        problems.extend(check_document(masked, path, root))
    return problems


def to_html(text: str, file: Path, root: Path, *, name: str | None = None) -> str:
    """HTML for the MJML document ``text`` written in ``file``: includes expanded (see
    :mod:`worker.editions.includes`), strictly validated, rendered by mjml-python.

    Raises :class:`MjmlRefused` listing every problem, or mjml-python's parse error.
    """
    root, file = root.resolve(), file.resolve()
    problems = check_document(text, file, root, name=name)
    shown = name or _relative(file, root)
    if problems:
        listed = "\n".join(str(problem) for problem in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        raise MjmlRefused(f"{len(problems)} MJML {noun}:\n{listed}", tuple(problems))
    try:
        return mjml.mjml2html(expand(text, file, root))
    except IncludeProblem as problem:  # checked above; kept for a file changed in between
        raise MjmlRefused(str(problem), (problem,)) from problem
    except ValueError as error:
        raise MjmlRefused(f"{shown}: MJML: {error}") from error


def file_to_html(path: Path, root: Path) -> str:
    """HTML for the MJML file ``path`` inside the template folder ``root`` (see :func:`to_html`)."""
    return to_html(path.read_text(encoding="utf-8"), path.resolve(), root)


def _relative(file: Path, root: Path) -> str:
    try:
        return file.resolve().relative_to(root).as_posix()
    except ValueError:
        return file.name
