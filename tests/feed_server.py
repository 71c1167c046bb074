# ruff: noqa: E501 - the feeds are data, written as sites write them
"""A website's feeds in three languages, served by http.server on loopback (a thread).

``/ru/feed/`` is a WordPress-style RSS 2.0 (content:encoded, dc:creator, categories, Media RSS
image with credit), ``/be/feed/atom/`` an Atom feed, ``/feed.json`` a JSON Feed 1.1. Each has two
articles in the week 2026-11-30..2026-12-06 (Minsk time), one before and one after it; the
Russian feed has a third article in the week that exists only in Russian.
``/be/feed/excerpts/`` is a WordPress feed whose excerpts repeat or cut the article (see
``BE_EXCERPTS_RSS``). ``/thursday/ru/feed/`` and ``/thursday/be/feed/excerpts/`` are two of them
as they were on Thursday of that week. More paths answer badly: ``/missing/`` (404), ``/page.html`` (an HTML
page), ``/slow`` (answers after 3 s), ``/huge`` (6 MB), ``/to-file`` (a redirect to
``file:///etc/passwd``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from worker.editions.feeds import feed_fetcher

WEEK = ("2026-11-30", "2026-12-06")
# The server is on loopback, which feed fetching refuses unless the operator allows the host
# (NEWSLETTER_FEED_ALLOW_HOSTS, worker/safety/outbound.py): the tests allow it that way.
LOOPBACK = ("127.0.0.1",)
local_fetch = feed_fetcher(LOOPBACK)

RU_RSS = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"
  xmlns:wfw="http://wellformedweb.org/CommentAPI/" xmlns:dc="http://purl.org/dc/elements/1.1/"
  xmlns:atom="http://www.w3.org/2005/Atom" xmlns:sy="http://purl.org/rss/1.0/modules/syndication/"
  xmlns:media="http://search.yahoo.com/mrss/">
<channel>
  <title>Еженедельный анализ</title>
  <atom:link href="{base}/ru/feed/" rel="self" type="application/rss+xml" />
  <link>https://example.org/ru/</link>
  <description>Аналитика о Беларуси</description>
  <lastBuildDate>Sun, 06 Dec 2026 18:00:00 +0000</lastBuildDate>
  <language>ru-RU</language>
  <sy:updatePeriod>hourly</sy:updatePeriod>
  <generator>https://wordpress.org/?v=6.7</generator>
  <item>
    <title>Выборы после выборов: что изменилось в ЦИК</title>
    <link>https://example.org/ru/2026/12/cec/</link>
    <dc:creator><![CDATA[Анна Петрова]]></dc:creator>
    <pubDate>Sun, 06 Dec 2026 21:30:00 +0000</pubDate>
    <category><![CDATA[Политика]]></category>
    <guid isPermaLink="false">https://example.org/?p=903</guid>
    <description><![CDATA[Этот текст вышел 7 декабря в 00:30 по Минску, то есть уже после недели.]]></description>
    <content:encoded><![CDATA[<p>Вне периода.</p>]]></content:encoded>
  </item>
  <item>
    <title>Только по-русски: &#171;письма&#187; из колонии</title>
    <link>https://example.org/ru/2026/12/letters/</link>
    <dc:creator><![CDATA[Анна Петрова]]></dc:creator>
    <pubDate>Sat, 05 Dec 2026 09:00:00 +0000</pubDate>
    <category><![CDATA[Общество]]></category>
    <guid isPermaLink="false">https://example.org/?p=902</guid>
    <description><![CDATA[<p>Письма политзаключённых доходят с опозданием в месяцы. [&hellip;]</p>]]></description>
    <content:encoded><![CDATA[<p>Письма <em>политзаключённых</em> доходят с опозданием.</p>]]></content:encoded>
  </item>
  <item>
    <title>Китай не поддержал эскалацию</title>
    <link>https://example.org/ru/2026/12/china/</link>
    <comments>https://example.org/ru/2026/12/china/#respond</comments>
    <dc:creator><![CDATA[Иван Сидоров]]></dc:creator>
    <pubDate>Tue, 01 Dec 2026 07:00:00 +0000</pubDate>
    <category><![CDATA[Безопасность]]></category>
    <category><![CDATA[Китай]]></category>
    <guid isPermaLink="false">https://example.org/?p=901</guid>
    <description><![CDATA[<p>Минску не удалось втянуть Пекин в противостояние с Киевом и НАТО &#8230; <a href="https://example.org/ru/2026/12/china/">Читать далее</a> [&hellip;]</p>]]></description>
    <content:encoded><![CDATA[<figure class="wp-block-image"><img src="/media/2026/12/border.jpg" alt="Военные на пограничном посту" width="1200" height="800" class="wp-image-77" srcset="x 1x" /><figcaption>Граница, ноябрь</figcaption></figure>
<h2 class="wp-block-heading">Разворот</h2>
<p>13 июля <strong>Лукашенко</strong> объявил о &laquo;победе&raquo; &mdash; <a href="/ru/2026/11/border/" onclick="track()">подробнее</a>.</p>
<script>alert("xss")</script>
<p style="color:red">Угроза <span>не исчезла</span>: 2 * 3 &lt; 7.</p>
<ul><li>первое</li><li>второе</li></ul>]]></content:encoded>
    <media:content url="https://example.org/media/2026/12/border.jpg" medium="image" type="image/jpeg" width="1200" height="800">
      <media:credit>фото: elements.envato.com</media:credit>
    </media:content>
  </item>
  <item>
    <title>Экономика: рубль и санкции</title>
    <link>https://example.org/ru/2026/11/rouble/</link>
    <dc:creator><![CDATA[Иван Сидоров]]></dc:creator>
    <pubDate>Sun, 29 Nov 2026 21:30:00 +0000</pubDate>
    <category><![CDATA[Экономика]]></category>
    <guid isPermaLink="false">https://example.org/?p=900</guid>
    <description><![CDATA[Рубль держится, но запасы тают.]]></description>
    <content:encoded><![CDATA[<p>Опубликовано 30 ноября в 00:30 по Минску: уже в периоде.</p>]]></content:encoded>
  </item>
  <item>
    <title>Старый текст</title>
    <link>https://example.org/ru/2026/11/old/</link>
    <pubDate>Sun, 29 Nov 2026 20:00:00 +0000</pubDate>
    <description><![CDATA[До периода: 29 ноября, 23:00 по Минску.]]></description>
  </item>
</channel>
</rss>
"""

BE_ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="be">
  <title>Штотыднёвы аналіз</title>
  <id>https://example.org/be/</id>
  <updated>2026-12-06T12:00:00Z</updated>
  <link rel="self" href="{base}/be/feed/atom/"/>
  <entry>
    <title type="html">Кітай не падтрымаў эскалацыю</title>
    <id>tag:example.org,2026:be-901</id>
    <link rel="alternate" type="text/html" href="https://example.org/be/2026/12/china/"/>
    <link rel="enclosure" type="image/jpeg" length="123456" href="https://example.org/media/2026/12/border.jpg"/>
    <published>2026-12-01T10:00:00+03:00</published>
    <updated>2026-12-02T08:00:00+03:00</updated>
    <author><name>Іван Сідараў</name></author>
    <category term="Бяспека"/>
    <summary type="text">Мінску не ўдалося ўцягнуць Пекін у супрацьстаянне з Кіевам.</summary>
    <content type="html">&lt;p&gt;13 ліпеня &lt;b&gt;Лукашэнка&lt;/b&gt; абвясціў пра «перамогу».&lt;/p&gt;&lt;p&gt;Пагроза не знікла.&lt;/p&gt;</content>
  </entry>
  <entry>
    <title>Эканоміка: рубель і санкцыі</title>
    <id>tag:example.org,2026:be-900</id>
    <link rel="alternate" href="https://example.org/be/2026/11/rouble/"/>
    <published>2026-11-30T00:30:00+03:00</published>
    <updated>2026-11-30T00:30:00+03:00</updated>
    <category term="Эканоміка"/>
    <content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><p>Рубель трымаецца, але запасы таюць.</p><p>Другі абзац.</p></div></content>
  </entry>
  <entry>
    <title>Наступны тыдзень</title>
    <id>tag:example.org,2026:be-910</id>
    <link rel="alternate" href="https://example.org/be/2026/12/next/"/>
    <updated>2026-12-07T00:10:00+03:00</updated>
    <summary>Пасля перыяду.</summary>
  </entry>
</feed>
"""

EN_JSON = """{{
  "version": "https://jsonfeed.org/version/1.1",
  "title": "Belarus Weekly Analysis",
  "home_page_url": "https://example.org/",
  "feed_url": "{base}/feed.json",
  "language": "en",
  "items": [
    {{
      "id": "en-910",
      "url": "https://example.org/en/2026/12/next/",
      "title": "Next week",
      "content_text": "After the period.",
      "date_published": "2026-12-06T22:00:00Z"
    }},
    {{
      "id": "en-901",
      "url": "https://example.org/en/2026/12/china/",
      "title": "China did not back escalation",
      "summary": "Minsk failed to drag Beijing into its stand-off with Kyiv & NATO.",
      "content_html": "<p>On 13 July <strong>Lukashenka</strong> declared a <em>victory</em>.</p><img src=\\"https://example.org/media/2026/12/border.jpg\\" alt=\\"Soldiers at a border post\\"><p onmouseover=\\"x()\\">The threat remains.</p>",
      "image": "https://example.org/media/2026/12/border.jpg",
      "_image": {{"credit": "photo: elements.envato.com"}},
      "date_published": "2026-12-01T10:00:00+03:00",
      "tags": ["Security", "China"],
      "authors": [{{"name": "Ivan Sidorov"}}]
    }},
    {{
      "id": "en-900",
      "url": "/en/2026/11/rouble/",
      "title": "Economy: the rouble and sanctions",
      "content_html": "<p>The rouble holds, but reserves melt.</p><p>Second paragraph.</p>",
      "date_published": "2026-11-29T21:30:00Z",
      "tags": ["Economy"]
    }}
  ]
}}
"""

# A Belarusian WordPress feed whose excerpts repeat or cut the article: the lead repeated as the
# body's first paragraph (with a no-break space and an entity), the item's photo again inside the
# body (in a figure whose caption is the only credit, or in a link around it), an excerpt cut
# with "… Чытаць далей".
BE_EXCERPTS_RSS = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"
  xmlns:media="http://search.yahoo.com/mrss/">
<channel>
  <title>Штотыднёвы аналіз</title>
  <link>https://example.org/be/</link>
  <description>Аналітыка</description>
  <item>
    <title>Вяртанне: новыя правілы</title>
    <link>https://example.org/be/2026/12/return/</link>
    <pubDate>Wed, 02 Dec 2026 09:00:00 +0000</pubDate>
    <description><![CDATA[<p>Урад абвясціў новыя правілы для тых, хто &#8230; <a href="https://example.org/be/2026/12/return/">Чытаць далей</a></p>]]></description>
    <content:encoded><![CDATA[<figure class="wp-block-image"><img src="https://example.org/media/2026/12/return.jpg" alt="Памежны пераход" /><figcaption>Фота: Сяргей Гудзілін</figcaption></figure>
<p>Урад абвясціў новыя правілы для тых, хто вяртаецца з-за мяжы.</p>
<p>Камісія разгледзіць кожную заяву.</p>]]></content:encoded>
    <media:content url="https://example.org/media/2026/12/return.jpg" medium="image" type="image/jpeg" />
  </item>
  <item>
    <title>Падаткі</title>
    <link>https://example.org/be/2026/12/taxes/</link>
    <pubDate>Thu, 03 Dec 2026 09:00:00 +0000</pubDate>
    <description><![CDATA[Падаткі&nbsp;для ІП   растуць з 1&nbsp;студзеня.]]></description>
    <content:encoded><![CDATA[<p><a href="https://example.org/media/2026/12/taxes-full.jpg"><img src="/media/2026/12/taxes.jpg" alt="Калькулятар" /></a></p>
<p>Падаткі для <strong>ІП</strong> растуць з 1 студзеня.</p>
<p>Міністэрства тлумачыць чаму.</p>]]></content:encoded>
    <media:content url="https://example.org/media/2026/12/taxes.jpg" medium="image" type="image/jpeg">
      <media:credit>фота: belta.by</media:credit>
    </media:content>
  </item>
</channel>
</rss>
"""


def _without(feed: str, link: str) -> str:
    """``feed`` without the item (RSS ``<item>``) whose link is ``link``."""
    start = feed.index(f"<link>{link}</link>")
    first, last = feed.rindex("<item>", 0, start), feed.index("</item>", start) + len("</item>")
    return feed[:first] + feed[last:]


# The same feeds on Thursday 2026-12-03 at 08:00 UTC: the articles of later days not out yet.
THURSDAY_PATHS = {
    "/ru/feed/": _without(RU_RSS, "https://example.org/ru/2026/12/letters/"),
    "/be/feed/excerpts/": _without(BE_EXCERPTS_RSS, "https://example.org/be/2026/12/taxes/"),
}

PATHS = {
    **{
        f"/thursday{path}": ("application/rss+xml; charset=UTF-8", text)
        for path, text in THURSDAY_PATHS.items()
    },
    "/be/feed/excerpts/": ("application/rss+xml; charset=UTF-8", BE_EXCERPTS_RSS),
    "/ru/feed/": ("application/rss+xml; charset=UTF-8", RU_RSS),
    "/be/feed/atom/": ("application/atom+xml", BE_ATOM),
    "/feed.json": ("application/feed+json", EN_JSON),
    "/page.html": ("text/html", "<!doctype html><html><body><p>Not a feed</p></body></html>"),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]!s}"  # type: ignore[index]
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        if self.path == "/huge":
            body = b"<rss>" + b" " * (6 * 1024 * 1024)
            content_type = "application/rss+xml"
        elif self.path in PATHS:
            content_type, text = PATHS[self.path]
            body = text.format(base=base).encode("utf-8")
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)  # the client may stop reading at its size cap

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def feed_server() -> Iterator[str]:
    """Serve the feeds on a free loopback port; yields the base URL ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
