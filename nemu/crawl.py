"""Collecting a raw NEMu folder from NetEase Cloud Music (``python -m pipelines.crawl_nemu``).

The paper built NEMu from NetEase Cloud Music; this module is the collection step, and it writes exactly the raw
folder that ``python -m pipelines.build_nemu`` reads (``RAW/records.jsonl`` plus media files, see README.md,
"The raw format", and ``nemu/records.py``).

Endpoint. The crawler talks to a NeteaseCloudMusicApi-compatible HTTP endpoint (Binaryify/NeteaseCloudMusicApi,
which users run themselves, by default on http://127.0.0.1:3000; ``base_url`` points elsewhere). It uses the
plain GET forms and the response shapes that project documents (the server relays NetEase's own JSON):

=============================================  ====================================================================
``/top/playlist?cat=伤感&limit=&offset=``      ``{"playlists": [{"id", "name", "tags": [...]}], "total", "more", "code"}``
``/playlist/track/all?id=&limit=&offset=0``    ``{"songs": [{"id", "name", "ar": [{"id", "name"}], "al": {"picUrl"}}]}``
                                               (``{"playlist": {"tracks": [...]}}`` of ``/playlist/detail`` also read)
``/lyric?id=``                                 ``{"lrc": {"lyric": "[00:01.00]..."}}``; ``{"nolyric": true}`` = no lyrics
``/comment/music?id=&limit=``                  ``{"hotComments": [{"content", "user": {...}}], "comments": [...]}``
``/song/url?id=&br=``                          ``{"data": [{"id", "url", "size", "type", "code", "fee"}]}``; url null =
                                               not publicly downloadable
``/artists?id=``                               ``{"artist": {"id", "name", "picUrl", "img1v1Url"}}``
=============================================  ====================================================================

Labels. Playlists are listed under each requested emotion tag (``playlists_per_tag`` of them, NetEase's "hot"
order); a playlist's emotion tags are the tag it was listed under plus the emotion tags among its own ``tags``.
A song's vote for tag t is the number of distinct crawled playlists holding it that carry t; t becomes one of
the song's ``tags`` when it has at least ``min_votes`` votes (default 1: any emotion-tagged playlist holding the
song labels it, the paper's "emotion label set from the playlists"; raise it for cleaner, sparser labels). All
votes are kept in the record (``tag_votes``) so a stricter threshold can be applied later. Songs are taken
round-robin over the requested tags, in discovery order, up to ``max_songs`` songs in RAW.

Per song: title, artist, tags, lyrics (LRC), the top ``comments`` comments (hot comments first, then recent
ones; TEXT ONLY, user names, ids, avatars and times are dropped before anything is stored, per the dataset
card's privacy section), the album cover and ``posters`` artist pictures ("posters": our reading of the paper's
"cover and posters"; NetEase's generic default avatar is skipped), and the audio file where ``/song/url``
gives a public URL. The record keeps the source URLs (``source``), fetch times (``fetched_at``), the reason for
every part it lacks (``missing``), and the playlists and votes behind its tags; ``nemu.records`` ignores these
extra keys.

Politeness. One requests session: urllib3 ``Retry`` with exponential backoff on 429/500/502/503/504 and on
connection and read errors (``Retry-After`` honoured, capped at ``backoff_max``), ``timeout`` on every call,
one global rate limiter that every attempt passes, retries and redirects included (default 2 requests/s), and an
honest User-Agent naming the crawler and its research purpose. Requests are sequential.

Resume. ``RAW/crawl_state.jsonl`` is an append-only journal of everything fetched (playlist pages, track lists,
each song's lyrics, comments and audio URL, artist pictures, every media download, given-up songs). A crawl
started again on the same RAW replays it and fetches nothing it already has: no song in records.jsonl, no
journaled response, no downloaded file is fetched twice. A journaled failure (a 404, a malformed answer that
survived the retries) is final too: the song is completed without that part rather than asked again. Media are
written to ``NAME.part`` and renamed when complete, after checking the byte count against Content-Length (and
the size ``/song/url`` announced) and the file's magic bytes (mp3/flac/ogg/wav; jpg/png). A torn last line of
the journal or of records.jsonl (a kill during a write) is cut off on start. Records are appended one complete
line at a time. Only one crawl may write a RAW folder at once (an advisory lock on the journal).

Bad responses (HTTP errors after the retries, read timeouts, malformed JSON, missing fields, a truncated or
non-audio download) are logged per song with the reason in ``RAW/crawl_log.jsonl`` and the record's ``missing``
field, and the song is completed without that part, or skipped when nothing usable was fetched; an unexpected
error skips that song only. Two API conditions are not a song's fault and stop the crawl instead, journaling
nothing for the failed request so that the next run asks again: no connection to the endpoint at all, and 429
Too Many Requests persisting through every retry (being told to slow down is not a reason to go on). Nothing
already written is lost.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.exceptions import ConnectTimeoutError, HTTPError as Urllib3Error, MaxRetryError, NewConnectionError
from urllib3.util.retry import Retry

from nemu.labels import CHINESE_NAMES, NEMU_LABELS, emotion_labels
from nemu.records import RECORDS_FILE

try:  # advisory lock; absent on Windows, where two concurrent crawls are simply the user's responsibility
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger("nemu.crawl")

__version__ = "0.1"
DEFAULT_BASE_URL = "http://127.0.0.1:3000"
DEFAULT_USER_AGENT = (f"nemu-hhmpn-crawler/{__version__} (academic research crawler collecting the NEMu emotion "
                      f"dataset; sequential, rate-limited) python-requests/{requests.__version__}")
STATE_FILE = "crawl_state.jsonl"
LOG_FILE = "crawl_log.jsonl"
RETRY_STATUSES = (429, 500, 502, 503, 504)
PAGE_SIZE = 50  # playlists per /top/playlist page (the API's default); pages are keyed by (tag, offset)
CHUNK = 1 << 16
MAX_JSON_BYTES = 64 * 2**20  # a larger API answer is not one the crawler can use
# What decoding or reading an answer's shapes can raise: any of them is that answer's (that song's) failure.
# RecursionError: json refuses deeply nested input that way.
MALFORMED = (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, UnicodeError)
# NetEase's generic "no picture" avatar, served as the picture of artists without one: not a poster.
DEFAULT_AVATAR = "5639395138885805"

AUDIO_DIR, IMAGE_DIR = "audio", "images"

_ENGLISH_TO_CHINESE = {english.casefold(): chinese for english, chinese in NEMU_LABELS}


class CrawlError(RuntimeError):
    """The crawl cannot run at all (bad options, RAW locked by another crawl)."""


class EndpointUnavailable(Exception):
    """The API endpoint cannot be reached, or keeps answering 429: the crawl stops (nothing is journaled for the
    request), and the same command continues it later."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FetchError(Exception):
    """One request or response that could not be used; ``reason`` says why, ``url`` what was asked."""

    def __init__(self, reason: str, url: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.url = url


def emotion_tag(name: str) -> str:
    """The NetEase (Chinese) name of one of the 12 emotion tags, given either name; ValueError otherwise."""
    text = name.strip()
    if text in CHINESE_NAMES:
        return text
    if text.casefold() in _ENGLISH_TO_CHINESE:
        return _ENGLISH_TO_CHINESE[text.casefold()]
    raise ValueError(f"{name!r} is not one of the 12 NEMu emotion tags ({', '.join(CHINESE_NAMES)})")


def _cannot_connect(exc: requests.RequestException) -> bool:
    """True when no connection could be made at all (refused, unresolvable, connect timeout)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    cause = exc.args[0] if exc.args else None
    reason = cause.reason if isinstance(cause, MaxRetryError) else cause
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, (NewConnectionError, ConnectTimeoutError))


def _parsed(parse: Callable[[dict], object], data: dict, url: str | None):
    """``parse(data)``, any decoding surprise (a wrong type where the API documents another) turned into that
    answer's FetchError."""
    try:
        return parse(data)
    except FetchError:
        raise
    except MALFORMED as exc:
        raise FetchError(f"malformed answer ({type(exc).__name__}: {str(exc)[:200]})", url) from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------
# Options and summary


@dataclass
class CrawlOptions:
    raw_dir: Path
    tags: tuple[str, ...] = CHINESE_NAMES
    max_songs: int = 100
    playlists_per_tag: int = 10
    tracks_per_playlist: int = 100
    min_votes: int = 1
    comments: int = 20
    posters: int = 1  # artist pictures per song (first artists first); 0: cover only
    audio: bool = True
    bitrate: int = 128000  # /song/url br: the smallest common bitrate, gentlest on the server
    max_audio_bytes: int = 30 * 2**20
    max_image_bytes: int = 10 * 2**20
    rate: float = 2.0  # requests per second, every attempt counted
    timeout: float = 20.0  # seconds, connect and each read
    download_deadline: float = 300.0  # seconds for a whole answer or download, however slowly it trickles
    retries: int = 5
    backoff: float = 1.0  # urllib3 backoff_factor: 0 s before the 1st retry, backoff * 2**(n-1) before the n-th
    backoff_max: float = 60.0
    base_url: str = DEFAULT_BASE_URL
    user_agent: str = DEFAULT_USER_AGENT
    progress: bool = True

    def check(self) -> None:
        if not self.tags:
            raise CrawlError("no tags to crawl")
        self.tags = tuple(emotion_tag(t) for t in self.tags)
        for name in ("max_songs", "playlists_per_tag", "tracks_per_playlist", "min_votes"):
            if getattr(self, name) < 1:
                raise CrawlError(f"{name} must be at least 1")
        for name in ("comments", "posters", "retries"):
            if getattr(self, name) < 0:
                raise CrawlError(f"{name} must not be negative")
        if not self.rate > 0:
            raise CrawlError("rate must be positive (requests per second)")
        if not self.timeout > 0:
            raise CrawlError("timeout must be positive (seconds)")
        if not self.download_deadline > 0:
            raise CrawlError("download_deadline must be positive (seconds)")
        if not re.match(r"^https?://", self.base_url):
            raise CrawlError(f"base URL {self.base_url!r} must start with http:// or https://")
        self.base_url = self.base_url.rstrip("/")


@dataclass
class CrawlStats:
    requests: int = 0  # first attempts and redirects
    retries: int = 0  # further attempts made by the Retry policy
    bytes: int = 0  # media bytes written
    failures: Counter = field(default_factory=Counter)  # part -> logged problems this run


@dataclass
class CrawlSummary:
    raw_dir: Path
    selected: int  # songs chosen for RAW (max_songs at most)
    written: int  # records appended this run
    already: int  # selected songs already in records.jsonl before this run
    skipped: int  # selected songs given up (nothing usable), this run or before
    records_total: int  # lines in records.jsonl now
    playlists: int
    candidates: int  # distinct songs with at least one label
    missing: Counter  # part -> records written this run without it
    stats: CrawlStats
    seconds: float
    interrupted: bool = False
    stopped: str | None = None  # why the endpoint made the crawl stop early

    def __str__(self) -> str:
        missing = ", ".join(f"{part} {n}" for part, n in sorted(self.missing.items())) or "none"
        state = ("interrupted; run the same command again to continue" if self.interrupted else
                 f"stopped ({self.stopped})" if self.stopped else "done")
        return (
            f"{state}: "
            f"{self.records_total} records in {self.raw_dir / RECORDS_FILE}\n"
            f"songs: {self.selected} selected = {self.already} already there + {self.written} written now + "
            f"{self.skipped} skipped (+ {max(0, self.selected - self.already - self.written - self.skipped)} left)\n"
            f"discovery: {self.playlists} playlists, {self.candidates} emotion-labelled songs\n"
            f"written without: {missing}; {sum(self.stats.failures.values())} problems logged this run "
            f"(reasons in {self.raw_dir / LOG_FILE})\n"
            f"requests: {self.stats.requests} + {self.stats.retries} retries, {self.stats.bytes / 2**20:.1f} MiB "
            f"downloaded, {self.seconds:.1f} s"
        )


# ----------------------------------------------------------------------------------------------
# HTTP: rate limiter, retries, session


class RateLimiter:
    """At most ``rate`` calls of ``wait()`` per second, spaced evenly (1/rate apart), across threads."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if not rate > 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


class LimitedRetry(Retry):
    """urllib3 Retry whose every further attempt also passes the rate limiter and is counted."""

    limiter: RateLimiter | None = None
    stats: CrawlStats | None = None

    def new(self, **kw):
        fresh = super().new(**kw)
        fresh.limiter, fresh.stats = self.limiter, self.stats
        return fresh

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), self.backoff_max)

    def sleep(self, response=None) -> None:
        super().sleep(response)
        if self.stats is not None:
            self.stats.retries += 1
        if self.limiter is not None:
            self.limiter.wait()


class LimitedSession(requests.Session):
    """A requests session whose every request (redirect hops included) passes the rate limiter first."""

    def __init__(self, limiter: RateLimiter, stats: CrawlStats):
        super().__init__()
        self.limiter, self.stats = limiter, stats

    def send(self, request, **kwargs):
        self.limiter.wait()
        self.stats.requests += 1
        return super().send(request, **kwargs)


def make_session(*, rate: float, retries: int, backoff: float, user_agent: str, backoff_max: float = 60.0,
                 stats: CrawlStats | None = None) -> LimitedSession:
    """The crawler's session: global rate limit, retries with exponential backoff, honest User-Agent."""
    stats = stats if stats is not None else CrawlStats()
    session = LimitedSession(RateLimiter(rate), stats)
    retry = LimitedRetry(
        total=retries, connect=retries, read=retries, status=retries, other=0, redirect=5,
        backoff_factor=backoff, backoff_max=backoff_max, status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD"}), respect_retry_after_header=True, raise_on_status=False)
    retry.limiter, retry.stats = session.limiter, stats
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": user_agent, "Accept": "application/json, */*;q=0.5"})
    return session


# ----------------------------------------------------------------------------------------------
# Response parsing (the API's shapes -> the few fields we keep)


def _field(obj: object, *path: str):
    """obj[path[0]][path[1]]..., raising FetchError naming the missing field."""
    current = obj
    for depth, key in enumerate(path):
        if not isinstance(current, dict) or key not in current:
            raise FetchError(f"missing field {'.'.join(path[: depth + 1])!r}")
        current = current[key]
    return current


def _song_id(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return str(value).strip()
    return None


def parse_playlists(data: dict) -> tuple[list[dict], bool]:
    """/top/playlist -> ([{"id", "name", "tags"}], more)."""
    playlists = _field(data, "playlists")
    if not isinstance(playlists, list):
        raise FetchError("'playlists' is not a list")
    out = []
    for item in playlists:
        pid = _song_id(item.get("id")) if isinstance(item, dict) else None
        if pid is None:
            continue
        tags = item.get("tags") if isinstance(item.get("tags"), list) else []
        out.append({"id": pid, "name": str(item.get("name") or ""), "tags": [t for t in tags if isinstance(t, str)]})
    more = data.get("more")
    return out, bool(more) if more is not None else len(out) > 0


def parse_tracks(data: dict) -> list[dict]:
    """/playlist/track/all (``songs``) or /playlist/detail (``playlist.tracks``) -> [{"id", "name", "artists",
    "cover"}]; entries without a usable id are dropped."""
    if "songs" in data:
        tracks = data["songs"]
    else:
        tracks = _field(data, "playlist", "tracks")
    if not isinstance(tracks, list):
        raise FetchError("the track list is not a list")
    out = []
    for track in tracks:
        sid = _song_id(track.get("id")) if isinstance(track, dict) else None
        if sid is None:
            continue
        artists = track.get("ar", track.get("artists"))
        artists = [{"id": _song_id(a.get("id")), "name": str(a.get("name") or "")}
                   for a in (artists if isinstance(artists, list) else []) if isinstance(a, dict)]
        album = track.get("al", track.get("album"))
        cover = album.get("picUrl") if isinstance(album, dict) else None
        out.append({"id": sid, "name": str(track.get("name") or ""), "artists": artists,
                    "cover": cover if isinstance(cover, str) and cover.startswith(("http://", "https://")) else None})
    return out


def parse_lyrics(data: dict) -> str:
    """/lyric -> the LRC text; "" for a song NetEase marks as having no lyrics (instrumental, uncollected)."""
    if data.get("nolyric") or data.get("uncollected"):
        return ""
    lyric = _field(data, "lrc", "lyric")
    if lyric is None:
        return ""
    if not isinstance(lyric, str):
        raise FetchError(f"'lrc.lyric' is not text ({type(lyric).__name__})")
    return lyric


def parse_comments(data: dict, limit: int) -> list[str]:
    """/comment/music -> up to ``limit`` comment texts, hot comments first; only ``content`` is read, so user
    names, ids, avatars and times never leave this function."""
    if "hotComments" not in data and "comments" not in data:
        raise FetchError("missing fields 'hotComments' and 'comments'")
    texts, seen = [], set()
    for key in ("hotComments", "comments"):
        items = data.get(key) or []
        if not isinstance(items, list):
            raise FetchError(f"{key!r} is not a list")
        for item in items:
            content = item.get("content") if isinstance(item, dict) else None
            if isinstance(content, str) and content.strip() and content.strip() not in seen:
                seen.add(content.strip())
                texts.append(content.strip())
    return texts[:limit]


def parse_song_url(data: dict, song_id: str) -> dict:
    """/song/url -> {"url": str | None, "size": int | None, "type": str | None, "reason": str | None}."""
    entries = _field(data, "data")
    if not isinstance(entries, list) or not entries:
        raise FetchError("'data' is not a non-empty list")
    entry = next((e for e in entries if isinstance(e, dict) and _song_id(e.get("id")) == song_id), entries[0])
    if not isinstance(entry, dict):
        raise FetchError("'data[0]' is not an object")
    url = entry.get("url")
    size = entry.get("size") if isinstance(entry.get("size"), int) and entry.get("size") > 0 else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return {"url": None, "size": None, "type": None,
                "reason": f"no public audio URL (code {entry.get('code')}, fee {entry.get('fee')})"}
    kind = entry.get("type") if isinstance(entry.get("type"), str) else None
    return {"url": url, "size": size, "type": kind, "reason": None}


def parse_artist_picture(data: dict) -> str | None:
    """/artists -> the artist's picture URL, or None when the artist has only NetEase's default avatar."""
    artist = _field(data, "artist")
    if not isinstance(artist, dict):
        raise FetchError("'artist' is not an object")
    for key in ("picUrl", "img1v1Url", "cover", "avatar"):
        url = artist.get(key)
        if isinstance(url, str) and url.startswith(("http://", "https://")) and DEFAULT_AVATAR not in url:
            return url
    return None


def sniff_audio(head: bytes) -> str | None:
    """The audio suffix the build accepts for these first bytes, or None."""
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return ".mp3"
    if head.startswith(b"fLaC"):
        return ".flac"
    if head.startswith(b"OggS"):
        return ".ogg"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return ".wav"
    return None


def sniff_image(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    return None


# ----------------------------------------------------------------------------------------------
# The journal


def repair_jsonl(path: Path) -> int:
    """Cut a torn last line (no final newline: the process died inside a write); return bytes removed."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return 0
        block = min(size, 1 << 20)
        keep = 0
        position = size
        while position > 0:  # find the last newline
            step = min(block, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = position + cut + 1
                break
        handle.truncate(keep)
    return size - keep


class CrawlState:
    """The append-only journal ``RAW/crawl_state.jsonl``, replayed into dictionaries on open."""

    def __init__(self, raw_dir: Path):
        self.path = raw_dir / STATE_FILE
        self.listings: dict[tuple[str, int], dict] = {}
        self.tracks: dict[str, dict] = {}
        self.parts: dict[str, dict[str, dict]] = {}
        self.artists: dict[str, dict] = {}
        self.media: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}
        self.starts: list[dict] = []
        torn = repair_jsonl(self.path)
        if torn:
            log.warning("%s: cut a torn last line (%d bytes) left by an interrupted crawl", self.path, torn)
        if self.path.is_file():
            with self.path.open("rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    try:
                        self._apply(json.loads(raw))
                    except MALFORMED as exc:
                        log.warning("%s line %d ignored: %s: %s", self.path, number, type(exc).__name__, exc)
        self._handle = self.path.open("ab")
        if fcntl is not None:
            try:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._handle.close()
                raise CrawlError(f"another crawl is writing {raw_dir} ({self.path} is locked)") from None

    def _apply(self, event: dict) -> None:
        kind = event["event"]
        if kind == "listing":
            self.listings[(event["tag"], int(event["offset"]))] = event
        elif kind == "tracks":
            self.tracks[str(event["playlist"])] = event
        elif kind == "part":
            self.parts.setdefault(str(event["song"]), {})[event["part"]] = event
        elif kind == "artist":
            self.artists[str(event["artist"])] = event
        elif kind == "media":
            self.media[event["url"]] = event
        elif kind == "skip":
            self.skipped[str(event["song"])] = event["reason"]
        elif kind == "start":
            self.starts.append(event)
        else:
            raise ValueError(f"unknown event {kind!r}")

    def append(self, event: dict) -> dict:
        self._apply(event)
        self._handle.write((json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8"))
        self._handle.flush()
        return event

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()


# ----------------------------------------------------------------------------------------------
# The crawl


def _safe_name(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_-]", "_", text)[:80] or "x"


class Crawler:
    """One crawl of ``options.raw_dir``; ``run()`` does discovery, song selection and per-song fetching."""

    def __init__(self, options: CrawlOptions, session: requests.Session | None = None):
        options.check()
        self.options = options
        self.raw = Path(options.raw_dir)
        self.stats = CrawlStats()
        self.session = session or make_session(
            rate=options.rate, retries=options.retries, backoff=options.backoff, backoff_max=options.backoff_max,
            user_agent=options.user_agent, stats=self.stats)
        if isinstance(self.session, LimitedSession):
            self.stats = self.session.stats

    # -- HTTP helpers ------------------------------------------------------------------------

    def _get_json(self, path: str, params: dict) -> tuple[dict, str, str]:
        url = self.options.base_url + path
        try:
            response = self.session.get(url, params=params, timeout=self.options.timeout, stream=True)
        except requests.RequestException as exc:
            if _cannot_connect(exc):
                raise EndpointUnavailable(
                    f"cannot connect to {self.options.base_url} after {self.options.retries} retries ({exc}); start "
                    "a NeteaseCloudMusicApi server there or pass --base-url, then run the same command again") from None
            raise FetchError(f"request failed: {type(exc).__name__}: {exc}",
                             requests.Request("GET", url, params=params).prepare().url) from None
        fetched_at, full_url = _now(), response.url
        with response:
            if response.status_code == 429:
                raise EndpointUnavailable(
                    f"{full_url} still answers 429 Too Many Requests after {self.options.retries} retries: the "
                    "endpoint is limiting this crawler; wait, lower --rate and run the same command again")
            if response.status_code != 200:
                after = f" after {self.options.retries} retries" if response.status_code in RETRY_STATUSES else ""
                raise FetchError(f"HTTP {response.status_code}{after}", full_url)
            try:
                body = b"".join(self._read_body(response, full_url, MAX_JSON_BYTES))
            except requests.RequestException as exc:
                raise FetchError(f"reading the answer failed: {type(exc).__name__}: {exc}", full_url) from None
        try:
            data = json.loads(body)
        except MALFORMED as exc:
            raise FetchError(f"malformed JSON ({type(exc).__name__}: {str(exc)[:200]})", full_url) from None
        if not isinstance(data, dict):
            raise FetchError(f"expected a JSON object, got {type(data).__name__}", full_url)
        code = data.get("code")
        if code is not None and code != 200:
            raise FetchError(f"API code {code}: {data.get('msg') or data.get('message') or ''}".strip(), full_url)
        return data, full_url, fetched_at

    def _json_part(self, path: str, params: dict, parse: Callable[[dict], object]) -> dict:
        """Fetch and parse one JSON answer into a journal-ready dict (ok + value, or not ok + reason)."""
        url = None
        try:
            data, url, fetched_at = self._get_json(path, params)
            return {"ok": True, "value": _parsed(parse, data, url), "url": url, "fetched_at": fetched_at}
        except FetchError as exc:
            return {"ok": False, "reason": exc.reason, "url": exc.url or url, "fetched_at": _now()}

    def _read_body(self, response, url: str, limit: int):
        """The body's chunks, read one socket read at a time (``read1``), so that a server trickling bytes is
        cut off after ``download_deadline`` seconds in all (at most one ``timeout`` later), not only when one
        read stalls. FetchError names the deadline or the size limit."""
        deadline = self.options.download_deadline
        started = time.monotonic()
        count = 0
        try:
            while True:
                if time.monotonic() - started > deadline:
                    raise FetchError(f"download deadline exceeded ({count} bytes in {time.monotonic() - started:.1f} s;"
                                     f" limit {deadline:g} s, --download-deadline)", url)
                chunk = response.raw.read1(CHUNK, decode_content=True)
                if not chunk:
                    return
                count += len(chunk)
                if count > limit:
                    raise FetchError(f"too large (more than {limit} bytes)", url)
                yield chunk
        except (Urllib3Error, OSError) as exc:  # read timeout, reset, incomplete body: as requests would raise
            raise requests.ConnectionError(exc) from exc

    def _download(self, url: str, stem: Path, kind: str, expected_size: int | None = None) -> dict:
        """Download ``url`` once (journaled by URL) to ``stem`` + the suffix its magic bytes show."""
        known = self.state.media.get(url)
        if known is not None and (not known["ok"] or (self.raw / known["path"]).is_file()):
            return known
        sniff, limit = (sniff_audio, self.options.max_audio_bytes) if kind == "audio" else \
            (sniff_image, self.options.max_image_bytes)
        reason = None
        for _ in range(2):  # one more try for an interrupted body; status errors were retried by urllib3
            try:
                relative, size = self._download_once(url, stem, sniff, limit, expected_size)
            except FetchError as exc:
                reason = exc.reason
                if not exc.reason.startswith(("truncated", "download interrupted")):
                    break
                continue
            return self.state.append({"event": "media", "url": url, "ok": True, "path": relative, "bytes": size,
                                      "kind": kind, "fetched_at": _now()})
        return self.state.append({"event": "media", "url": url, "ok": False, "reason": reason, "kind": kind,
                                  "fetched_at": _now()})

    def _download_once(self, url: str, stem: Path, sniff, limit: int, expected_size: int | None) -> tuple[str, int]:
        part = stem.with_name(stem.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        declared: int | None = None
        count, head, content_type = 0, b"", "?"
        try:
            with self.session.get(url, stream=True, timeout=self.options.timeout) as response:
                if response.status_code != 200:
                    raise FetchError(f"HTTP {response.status_code}", url)
                length = response.headers.get("Content-Length", "")
                declared = int(length) if length.isdigit() else None
                if declared is not None and declared > limit:
                    raise FetchError(f"too large ({declared} bytes > limit {limit})", url)
                content_type = response.headers.get("Content-Type", "?")
                with part.open("wb") as handle:
                    for chunk in self._read_body(response, url, limit + 1):
                        if len(head) < 16:
                            head += chunk[: 16 - len(head)]
                        count += len(chunk)
                        if count > limit:
                            raise FetchError(f"too large (more than {limit} bytes)", url)
                        handle.write(chunk)
        except requests.RequestException as exc:
            part.unlink(missing_ok=True)
            if declared is not None and count < declared:
                raise FetchError(f"truncated download ({count} of {declared} bytes; {type(exc).__name__})", url) \
                    from None
            raise FetchError(f"download interrupted: {type(exc).__name__}: {exc}", url) from None
        except FetchError:
            part.unlink(missing_ok=True)
            raise
        try:
            if declared is not None and count != declared:
                raise FetchError(f"truncated download ({count} of {declared} bytes)", url)
            suffix = sniff(head)
            if count == 0 or suffix is None:
                raise FetchError(f"not {'an audio' if sniff is sniff_audio else 'an image'} file (Content-Type "
                                 f"{content_type}, starts with {head[:8]!r})", url)
            if expected_size is not None and count != expected_size:
                raise FetchError(f"truncated download ({count} bytes, the API announced {expected_size})"
                                 if count < expected_size else
                                 f"size mismatch ({count} bytes, the API announced {expected_size})", url)
        except FetchError:
            part.unlink(missing_ok=True)
            raise
        final = stem.with_name(stem.name + suffix)
        os.replace(part, final)
        self.stats.bytes += count
        return final.relative_to(self.raw).as_posix(), count

    # -- logging ---------------------------------------------------------------------------------

    def _problem(self, song: str | None, part: str, reason: str, url: str | None = None) -> None:
        self.stats.failures[part] += 1
        entry = {"time": _now(), "song": song, "part": part, "reason": reason, "url": url}
        with (self.raw / LOG_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        log.warning("song %s: %s: %s%s", song or "-", part, reason, f" ({url})" if url else "")

    # -- discovery ---------------------------------------------------------------------------------

    def _discover_playlists(self) -> dict[str, dict]:
        """pid -> {"name", "emotions": set, "order": (tag index, rank)}, playlists_per_tag under each tag."""
        found: dict[str, dict] = {}
        for tag_index, tag in enumerate(self.options.tags):
            collected: list[dict] = []
            offset = 0
            while len(collected) < self.options.playlists_per_tag:
                page = self.state.listings.get((tag, offset))
                if page is None:
                    params = {"cat": tag, "order": "hot", "limit": PAGE_SIZE, "offset": offset}
                    try:
                        data, url, fetched_at = self._get_json("/top/playlist", params)
                        playlists, more = _parsed(parse_playlists, data, url)
                    except FetchError as exc:
                        self._problem(None, f"playlists[{tag}]", f"{exc.reason}; not asked again this run", exc.url)
                        break
                    page = self.state.append({"event": "listing", "tag": tag, "offset": offset, "limit": PAGE_SIZE,
                                              "playlists": playlists, "more": more, "url": url,
                                              "fetched_at": fetched_at})
                collected.extend(page["playlists"])
                if not page["more"] or not page["playlists"]:
                    break
                offset += PAGE_SIZE
            for rank, playlist in enumerate(collected[: self.options.playlists_per_tag]):
                entry = found.setdefault(playlist["id"], {"name": playlist["name"], "emotions": set(),
                                                          "order": (tag_index, rank)})
                entry["emotions"].add(tag)
                entry["emotions"].update(emotion_tag(label) for label in emotion_labels(playlist["tags"]))
        return found

    def _playlist_tracks(self, pid: str) -> list[dict] | None:
        known = self.state.tracks.get(pid)
        if known is not None:
            return known["songs"]
        params = {"id": pid, "limit": self.options.tracks_per_playlist, "offset": 0}
        try:
            data, url, fetched_at = self._get_json("/playlist/track/all", params)
            songs = _parsed(parse_tracks, data, url)
        except FetchError as exc:
            self._problem(None, f"playlist[{pid}]", f"{exc.reason}; not asked again this run", exc.url)
            return None
        return self.state.append({"event": "tracks", "playlist": pid, "songs": songs, "url": url,
                                  "fetched_at": fetched_at})["songs"]

    def _select(self, playlists: dict[str, dict], bar: tqdm | None) -> tuple[list[str], dict, dict, dict]:
        """Vote labels from the playlists; the songs for RAW, round-robin over the tags in discovery order."""
        votes: dict[str, Counter] = {}
        info: dict[str, dict] = {}
        holders: dict[str, list[str]] = {}
        per_tag: dict[str, list[str]] = {tag: [] for tag in self.options.tags}
        for pid, entry in sorted(playlists.items(), key=lambda item: item[1]["order"]):
            tracks = self._playlist_tracks(pid)
            if bar is not None:
                bar.update(1)
            if tracks is None:
                continue
            first_tag = self.options.tags[entry["order"][0]]
            for track in tracks:
                sid = track["id"]
                if pid in holders.setdefault(sid, []):
                    continue
                holders[sid].append(pid)
                info.setdefault(sid, track)
                votes.setdefault(sid, Counter()).update(entry["emotions"])
                if sid not in per_tag[first_tag]:
                    per_tag[first_tag].append(sid)
        labelled = {sid for sid, counter in votes.items() if self._labels(counter)}
        queues = {tag: [sid for sid in sids if sid in labelled] for tag, sids in per_tag.items()}
        chosen: list[str] = []
        seen: set[str] = set()
        while len(chosen) < self.options.max_songs and any(queues.values()):
            for tag in self.options.tags:
                while queues[tag]:
                    sid = queues[tag].pop(0)
                    if sid not in seen:
                        seen.add(sid)
                        chosen.append(sid)
                        break
                if len(chosen) >= self.options.max_songs:
                    break
        return chosen, votes, info, holders

    def _labels(self, counter: Counter) -> list[str]:
        passed = [tag for tag, n in counter.items() if n >= self.options.min_votes]
        return [emotion_tag(label) for label in emotion_labels(passed)]  # canonical label order

    # -- one song ----------------------------------------------------------------------------------

    def _song_part(self, sid: str, part: str, path: str, params: dict, parse) -> dict:
        known = self.state.parts.get(sid, {}).get(part)
        if known is not None:
            return known
        result = self._json_part(path, params, parse)
        return self.state.append({"event": "part", "song": sid, "part": part, **result})

    def _artist_picture(self, aid: str) -> dict:
        known = self.state.artists.get(aid)
        if known is not None:
            return known
        result = self._json_part("/artists", {"id": aid}, parse_artist_picture)
        return self.state.append({"event": "artist", "artist": aid, **result})

    def _crawl_song(self, sid: str, track: dict, votes: Counter, playlists: list[str]) -> dict | None:
        o = self.options
        source: dict = {"base_url": o.base_url, "playlists": playlists}
        fetched: dict = {}
        missing: dict[str, str] = {}

        def note(part: str, reason: str, url: str | None) -> None:
            missing[part] = reason
            self._problem(sid, part, reason, url)

        lyrics = self._song_part(sid, "lyrics", "/lyric", {"id": sid}, parse_lyrics)
        source["lyrics"], fetched["lyrics"] = lyrics["url"], lyrics["fetched_at"]
        if not lyrics["ok"]:
            note("lyrics", lyrics["reason"], lyrics["url"])
        comments: dict = {"ok": True, "value": [], "url": None, "fetched_at": None}
        if o.comments:
            comments = self._song_part(sid, "comments", "/comment/music", {"id": sid, "limit": o.comments},
                                       lambda data: parse_comments(data, o.comments))
            source["comments"], fetched["comments"] = comments["url"], comments["fetched_at"]
            if not comments["ok"]:
                note("comments", comments["reason"], comments["url"])

        audio_path = None
        if o.audio:
            answer = self._song_part(sid, "song_url", "/song/url", {"id": sid, "br": o.bitrate},
                                     lambda data: parse_song_url(data, sid))
            source["song_url"], fetched["song_url"] = answer["url"], answer["fetched_at"]
            if not answer["ok"]:
                note("audio", answer["reason"], answer["url"])
            elif answer["value"]["url"] is None:
                note("audio", answer["value"]["reason"], answer["url"])
            else:
                media_url = answer["value"]["url"]
                got = self._download(media_url, self.raw / AUDIO_DIR / _safe_name(sid), "audio",
                                     answer["value"]["size"])
                source["audio"], fetched["audio"] = media_url, got["fetched_at"]
                if got["ok"]:
                    audio_path = got["path"]
                else:
                    note("audio", got["reason"], media_url)

        images: list[str] = []
        if track.get("cover"):
            got = self._download(track["cover"], self.raw / IMAGE_DIR / f"{_safe_name(sid)}-cover", "image")
            source["cover"], fetched["cover"] = track["cover"], got["fetched_at"]
            if got["ok"]:
                images.append(got["path"])
            else:
                note("cover", got["reason"], track["cover"])
        else:
            missing["cover"] = "the track has no album picture URL"
        poster_urls, poster_times = [], []
        for artist in [a for a in track.get("artists", []) if a.get("id") and a["id"] != "0"][: o.posters]:
            answer = self._artist_picture(artist["id"])
            if not answer["ok"]:
                note("poster", answer["reason"], answer["url"])
                continue
            if answer["value"] is None:
                continue  # the artist has only the default avatar
            got = self._download(answer["value"], self.raw / IMAGE_DIR / f"artist-{_safe_name(artist['id'])}", "image")
            poster_urls.append(answer["value"])
            poster_times.append(got["fetched_at"])
            if got["ok"]:
                if got["path"] not in images:
                    images.append(got["path"])
            else:
                note("poster", got["reason"], answer["value"])
        source["posters"], fetched["posters"] = poster_urls, poster_times

        lyric_text = lyrics["value"] if lyrics["ok"] else ""
        comment_texts = comments["value"] if comments["ok"] else []
        if not (lyric_text.strip() or comment_texts or audio_path or images):
            return None
        return {
            "id": sid,
            "title": track.get("name", ""),
            "artist": " / ".join(a["name"] for a in track.get("artists", []) if a.get("name")),
            "tags": self._labels(votes),
            "lyrics": lyric_text,
            "comments": comment_texts,
            "audio": audio_path,
            "images": images,
            "tag_votes": dict(sorted(votes.items())),
            "min_votes": o.min_votes,
            "source": source,
            "fetched_at": fetched,
            "missing": missing,
            "crawler": o.user_agent,
        }

    # -- the run -----------------------------------------------------------------------------------

    def _done_ids(self) -> set[str]:
        done = set()
        path = self.raw / RECORDS_FILE
        if path.is_file():
            with path.open("rb") as handle:
                for raw in handle:
                    try:
                        obj = json.loads(raw)
                    except MALFORMED:
                        continue
                    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                        done.add(obj["id"])
        return done

    def run(self) -> CrawlSummary:
        started = time.monotonic()
        self.raw.mkdir(parents=True, exist_ok=True)
        self.state = CrawlState(self.raw)
        bar = None
        written = already = 0
        missing_counts: Counter = Counter()
        selected: list[str] = []
        playlists: dict = {}
        candidates = 0
        interrupted = False
        stopped = None
        try:
            torn = repair_jsonl(self.raw / RECORDS_FILE)
            if torn:
                log.warning("%s: cut a torn last line (%d bytes) left by an interrupted crawl",
                            self.raw / RECORDS_FILE, torn)
            for stale in list((self.raw / AUDIO_DIR).glob("*.part")) + list((self.raw / IMAGE_DIR).glob("*.part")):
                stale.unlink()
            options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.options).items()}
            if self.state.starts and self.state.starts[-1]["options"].get("min_votes") != self.options.min_votes:
                log.warning("min_votes changed since the last run: records already written keep their tags "
                            "(their tag_votes allow relabelling)")
            self.state.append({"event": "start", "time": _now(), "options": options})
            done = self._done_ids()

            playlists = self._discover_playlists()
            bar = tqdm(total=len(playlists), desc="playlists", unit="list", disable=not self.options.progress)
            selected, votes, info, holders = self._select(playlists, bar)
            bar.close()
            candidates = sum(1 for counter in votes.values() if self._labels(counter))
            if len(selected) < self.options.max_songs:
                log.info("%d emotion-labelled songs found, fewer than --max-songs %d: raise --playlists-per-tag or "
                         "--tracks-per-playlist for more", len(selected), self.options.max_songs)
            already = sum(1 for sid in selected if sid in done)
            todo = [sid for sid in selected if sid not in done and sid not in self.state.skipped]
            bar = tqdm(total=len(selected), initial=len(selected) - len(todo), desc="songs", unit="song",
                       disable=not self.options.progress)
            with (self.raw / RECORDS_FILE).open("ab") as records:
                for sid in todo:
                    try:
                        record = self._crawl_song(sid, info[sid], votes[sid], holders[sid])
                    except (KeyboardInterrupt, CrawlError, EndpointUnavailable):
                        raise
                    except Exception as exc:  # noqa: BLE001 - one song's surprise must not end the crawl
                        self._problem(sid, "song", f"unexpected error, song skipped: {type(exc).__name__}: {exc}")
                        bar.update(1)
                        continue
                    if record is None:
                        reason = "nothing usable fetched (lyrics, comments, audio and images all failed)"
                        self.state.append({"event": "skip", "song": sid, "reason": reason})
                        self._problem(sid, "song", reason)
                    else:
                        records.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                        records.flush()
                        written += 1
                        missing_counts.update(record["missing"].keys())
                    bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
        except EndpointUnavailable as exc:
            stopped = exc.reason
            log.error("crawl stopped: %s", exc.reason)
        finally:
            if bar is not None:
                bar.close()
            self.state.close()
        skipped = sum(1 for sid in selected if sid in self.state.skipped)
        summary = CrawlSummary(
            raw_dir=self.raw, selected=len(selected), written=written, already=already, skipped=skipped,
            records_total=len(self._done_ids()), playlists=len(playlists), candidates=candidates,
            missing=missing_counts, stats=self.stats, seconds=time.monotonic() - started, interrupted=interrupted,
            stopped=stopped)
        return summary


def crawl(options: CrawlOptions, session: requests.Session | None = None) -> CrawlSummary:
    """Crawl into ``options.raw_dir``; see the module docstring."""
    return Crawler(options, session).run()

