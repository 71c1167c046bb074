"""Schema migrations with Alembic: one history in ``migrations/``, run by ``newsletter db upgrade``.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from worker.settings import MIGRATIONS_DIR


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration for ``database_url`` using the project's migrations folder."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` to ``revision`` (default: the newest)."""
    command.upgrade(alembic_config(database_url), revision)


def revision(database_url: str, message: str) -> None:
    """Autogenerate a new migration from the difference between the models and the database."""
    command.revision(alembic_config(database_url), message=message, autogenerate=True)
