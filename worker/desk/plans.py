"""What a send will do, said before it is enqueued: how many readers in which language, when.

The audience is counted by the rule the send itself plans by
(:func:`worker.sending.planning.readers_by_language`: confirmed readers of the newsletter, less
those who had the edition with ``only_new``), and readers whose language the edition lacks are
counted in the language they will get (the newsletter's default, as
:func:`worker.sending.planning.plan_deliveries` does). The counts are those of now: readers who
confirm before a scheduled send starts are planned too.

The sentence is in the desk's language (``templates/desk/plan_sentence.txt.j2``; numbers,
weekdays, months and the time zone's city from CLDR via Babel): "12,345 readers: 5,210 be,
4,100 ru, 3,035 en, Monday 15 July 09:00 Minsk time".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time
from functools import cache

import jinja2
from babel import Locale
from babel.dates import format_datetime, get_timezone_location
from sqlalchemy.orm import Session

from worker.editions.localisation import format_number, translations
from worker.editions.store import edition_contents, profile_of, stored_problems
from worker.models import Edition, Newsletter
from worker.sending.planning import readers_by_language
from worker.sending.schedule import WeeklyTime, zone
from worker.sending.sends import Repeat, earlier_sends
from worker.sending.slots import get_slot, newest_unsent, weekly_time
from worker.settings import TEMPLATES_DIR


@dataclass(frozen=True)
class Plan:
    """A send of ``edition_key`` as it would be planned now.

    ``readers``: language → readers, largest first; ``at``: the UTC instant (None: now);
    ``timezone``: the IANA zone the time is shown in; ``earlier``: ids of the sends of the
    edition that count as sent (the duplicate guard refuses a plain second send); ``problems``:
    how many problems the desk stored with the edition (a send is refused while any remain).
    """

    edition_key: str
    readers: tuple[tuple[str, int], ...]
    at: datetime | None
    timezone: str
    only_new: bool
    earlier: tuple[int, ...]
    problems: int

    @property
    def total(self) -> int:
        return sum(n for _, n in self.readers)

    @property
    def refused(self) -> bool:
        """Whether the send would be refused (problems, or sent before without a repeat)."""
        return bool(self.problems) or (bool(self.earlier) and not self.only_new)


def newsletter_zone(session: Session, newsletter_id: int) -> str:
    """The time zone the desk shows and takes times in: the newsletter's (``timezone:`` in
    newsletter.yaml), else the weekly slot's, else UTC."""
    newsletter = session.get(Newsletter, newsletter_id)
    if newsletter is not None and profile_of(newsletter).timezone != "UTC":
        return profile_of(newsletter).timezone
    slot = get_slot(session, newsletter_id)
    return slot.timezone if slot is not None else "UTC"


def plan(
    session: Session,
    edition: Edition,
    *,
    at: datetime | None = None,
    zone_name: str | None = None,
    repeat: Repeat = Repeat.REFUSE,
) -> Plan:
    """The plan of a send of ``edition`` at ``at`` (an aware instant; None: now), shown in
    ``zone_name`` (None: :func:`newsletter_zone`). Reads only. Raises
    ``worker.sending.schedule.ScheduleError`` for an unknown zone."""
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None
    zone_name = zone_name or newsletter_zone(session, newsletter.id)
    zone(zone_name)
    languages = set(edition_contents(session, edition))
    default = newsletter.default_language
    if languages and default not in languages:
        default = sorted(languages)[0]
    only_new = repeat is Repeat.ONLY_NEW
    counted: dict[str, int] = {}
    for language, n in readers_by_language(session, newsletter.id, edition.id, only_new).items():
        planned_as = language if language in languages else default
        counted[planned_as] = counted.get(planned_as, 0) + n
    readers = tuple(sorted(counted.items(), key=lambda item: (-item[1], item[0])))
    earlier = tuple(send.id for send in earlier_sends(session, edition.id))
    if repeat is Repeat.AGAIN:
        earlier = ()
    return Plan(
        edition.key,
        readers,
        at,
        zone_name,
        only_new,
        earlier,
        len(stored_problems(session, edition)),
    )


@cache
def _environment(language: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=False,  # plain text: the page that shows it escapes it
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    return env


def sentence(plan: Plan, language: str, now: datetime) -> str:
    """``plan`` in words, in ``language`` (the catalogues of ``templates/locale``; numbers,
    weekdays, months and the zone's city from CLDR): "12,345 readers: 5,210 be, 4,100 ru,
    3,035 en, Monday 15 July 09:00 Minsk time". ``now`` is shown when the plan has no time.
    A time in UTC is said as "… 09:00 UTC"; a planned time in another zone is followed by its
    UTC time: "… 09:00 Minsk time (06:00 UTC)"."""
    locale = Locale.parse(language)
    tz = zone(plan.timezone)
    instant = plan.at or now
    template = _environment(language).get_template("desk/plan_sentence.txt.j2")
    return template.render(
        total=plan.total,
        total_text=format_number(plan.total, language),
        parts=", ".join(f"{format_number(n, language)} {lang}" for lang, n in plan.readers),
        local=format_datetime(instant, "EEEE d MMMM HH:mm", tzinfo=tz, locale=locale),
        city=""
        if plan.timezone == "UTC"
        else get_timezone_location(tz, locale=locale, return_city=True),
        # a planned local time is followed by its UTC time, so that no one reads one for the other
        utc=f"{plan.at.astimezone(UTC):%H:%M}" if plan.at and plan.timezone != "UTC" else "",
    ).strip()


# When the send page suggests a time and the newsletter has no weekly slot: Monday 09:00 local.
DEFAULT_WEEKLY = WeeklyTime(0, time(9, 0))


@dataclass(frozen=True)
class SlotState:
    """The newsletter's weekly slot as the send page shows it: ``on`` (a slot exists),
    ``weekday`` (0 = Monday) and ``local_time`` (``HH:MM``) in ``timezone``, ``next_at`` (its
    next firing, UTC) and ``edition_key``, the edition it would send then (the newest one not
    sent yet; None: it would send nothing)."""

    on: bool
    weekday: int | None = None
    local_time: str | None = None
    timezone: str | None = None
    next_at: datetime | None = None
    edition_key: str | None = None


def slot_state(session: Session, newsletter_id: int) -> SlotState:
    """The weekly slot of ``newsletter_id`` (:class:`SlotState`; ``on`` False when none).
    Reads only."""
    slot = get_slot(session, newsletter_id)
    if slot is None:
        return SlotState(on=False)
    waiting = newest_unsent(session, newsletter_id)
    return SlotState(
        on=True,
        weekday=slot.weekday,
        local_time=slot.local_time,
        timezone=slot.timezone,
        next_at=slot.next_at.replace(tzinfo=UTC) if slot.next_at.tzinfo is None else slot.next_at,
        edition_key=waiting.key if waiting is not None else None,
    )


def suggested_time(session: Session, newsletter_id: int, now: datetime, zone_name: str) -> datetime:
    """The time the send page preselects (UTC, after ``now``): the weekly slot's next firing
    when a slot is set, else the next Monday 09:00 in ``zone_name`` (:data:`DEFAULT_WEEKLY`)."""
    slot = get_slot(session, newsletter_id)
    if slot is not None:
        return weekly_time(slot).next_after(now, slot.timezone)
    return DEFAULT_WEEKLY.next_after(now, zone_name)


def moment(instant: datetime, zone_name: str, language: str, with_utc: bool = True) -> str:
    """``instant`` in words in ``language``, local time first: "Monday 7 December 09:00 Minsk
    time (06:00 UTC)" (CLDR weekday, month and city via Babel; the catalogues' "… time");
    ``with_utc`` False leaves the UTC part out; a UTC zone reads "… 06:00 UTC"."""
    locale = Locale.parse(language)
    tz = zone(zone_name)
    local = format_datetime(instant, "EEEE d MMMM HH:mm", tzinfo=tz, locale=locale)
    if zone_name == "UTC":
        return f"{local} UTC"
    city = get_timezone_location(tz, locale=locale, return_city=True)
    words = translations(language).gettext("%(local)s %(city)s time") % {
        "local": local,
        "city": city,
    }
    if not with_utc:
        return words
    return f"{words} ({instant.astimezone(UTC):%H:%M} UTC)"
