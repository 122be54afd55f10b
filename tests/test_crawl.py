"""The NEMu crawler against a fake NeteaseCloudMusicApi on 127.0.0.1: real response shapes, injected 429s,
500s, slow answers, malformed bodies, truncated and non-audio downloads; the raw folder it writes builds; a
killed crawl resumes without fetching anything twice; the rate limit holds."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from nemu import crawl as crawl_module
from nemu.build import BuildOptions, build
from nemu.crawl import (DEFAULT_AVATAR, LOG_FILE, STATE_FILE, CrawlError, CrawlOptions, CrawlState, FetchError,
                        RateLimiter, crawl, make_session, parse_artist_picture, parse_comments,
                        parse_lyrics, parse_playlists, parse_song_url, parse_tracks, sniff_audio, sniff_image)
from nemu.records import read_records
from pipelines import crawl_nemu

REPO = Path(__file__).resolve().parents[1]


def iter_log(raw_dir: Path):
    """The per-song problem log of a raw folder."""
    path = Path(raw_dir) / LOG_FILE
    if path.is_file():
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)
TAGS = ("伤感", "治愈", "快乐", "安静")
LYRICS = ["窗外的雨一直下", "我想起你的笑脸", "城市的灯火阑珊", "风吹过安静的街", "回忆像一首老歌"]
COMMENTS = ["这首歌太好听了", "单曲循环一整天。真的很喜欢！", "想起了以前的日子", "好治愈的声音"]
NICKNAME = "隐私用户甲"  # must never reach RAW
USER_ID = 987654321

# playlist id -> (listed under, its own tags, song ids); the third playlist of each tag must never be read
PLAYLISTS = {
    11: ("伤感", ["伤感", "孤独", "华语"], [1001, 1002, 1003, 1004]),
    12: ("伤感", ["伤感", "华语"], [1001, 1005, 1006]),
    13: ("伤感", ["伤感"], [1099]),
    21: ("治愈", ["治愈", "清新"], [1007, 1008, 1009, 1002]),
    22: ("治愈", ["治愈"], [1010, 1011]),
    23: ("治愈", ["治愈"], [1099]),
    31: ("快乐", ["快乐", "兴奋"], [1012, 1013, 1001]),
    32: ("快乐", ["快乐"], [1014]),
    33: ("快乐", ["快乐"], [1099]),
    41: ("安静", ["安静", "放松"], [1015, 1016]),
    42: ("安静", ["安静", "伤感"], [1016, 1003]),
    43: ("安静", ["安静"], [1099]),
}
SONGS = list(range(1001, 1017))
# expected labels with --min-votes 1 (NetEase names, canonical label order)
EXPECTED_TAGS = {
    "1001": ["伤感", "孤独", "兴奋", "快乐"], "1002": ["清新", "伤感", "治愈", "孤独"],
    "1003": ["伤感", "孤独", "安静"], "1016": ["伤感", "放松", "安静"],
}


def wav_bytes(seconds: float, freq: float) -> bytes:
    sr = 22050
    t = np.arange(int(seconds * sr)) / sr
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format="WAV")
    return buffer.getvalue()


def image_bytes(colour: tuple[int, int, int], fmt: str) -> bytes:
    array = np.zeros((40, 56, 3), dtype=np.uint8)
    array[:] = colour
    array[::7] = 255 - np.array(colour, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


class FakeNetease:
    """A NeteaseCloudMusicApi look-alike. ``faults[key]`` is a list of faults served one per request to that key
    (path plus sorted query, or a media path); a fault ending in ``*`` is served forever. Every request is logged
    as [arrival time, key, path, params, outcome, User-Agent] where outcome is "ok" for a complete normal answer."""

    def __init__(self):
        self.log: list[list] = []
        self.faults: dict[str, list[str]] = {}
        self.no_audio = {"1008"}  # /song/url gives url null (no public copy)
        self.no_lyrics = {"1011"}
        self.artist_of = {sid: (503 if sid in (1012, 1015) else 501 if sid % 2 else 502) for sid in SONGS}
        self.hang_at: tuple[str, int] | None = None  # (path, n): the n-th request to path hangs
        self.hung = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.audio = {str(sid): wav_bytes(0.6 + 0.1 * (sid % 4), 200 + 30 * (sid % 12)) for sid in SONGS}
        self.images = {f"album-{a}.jpg": image_bytes((30 * a, 90, 160), "JPEG") for a in range(9)}
        self.images.update({f"artist-{a}.png": image_bytes((200, 40 * (a - 500), 60), "PNG") for a in (501, 502)})
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no delayed-ACK stalls

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def key(path: str, params: dict | None = None) -> str:
        return path + ("?" + "&".join(f"{k}={v}" for k, v in sorted(params.items())) if params else "")

    def fault(self, path: str, params: dict | None, kinds: list[str]) -> None:
        self.faults[self.key(path, {k: str(v) for k, v in (params or {}).items()})] = list(kinds)

    def served(self, outcome: str = "ok") -> Counter:
        return Counter(entry[1] for entry in self.log if entry[4] == outcome)

    # -- the API ------------------------------------------------------------------------------------

    def track(self, sid: int) -> dict:
        return {"name": f"歌{sid}", "id": sid, "pst": 0, "t": 0, "ar": [
                    {"id": self.artist_of[sid], "name": f"歌手{self.artist_of[sid]}", "tns": [], "alias": []}],
                "alia": [], "pop": 100, "fee": 8, "dt": 200000,
                "al": {"id": 7000 + (sid - 1001) // 2, "name": "专辑",
                       "picUrl": f"{self.base_url}/media/img/album-{(sid - 1001) // 2}.jpg", "tns": []}}

    def answer(self, path: str, q: dict):
        if path == "/top/playlist":
            rows = [pid for pid, (tag, _, _) in PLAYLISTS.items() if tag == q.get("cat")]
            offset, limit = int(q.get("offset", 0)), int(q.get("limit", 50))
            page = rows[offset: offset + limit]
            return {"playlists": [{"name": f"歌单{pid}", "id": pid, "trackCount": len(PLAYLISTS[pid][2]),
                                   "tags": PLAYLISTS[pid][1], "coverImgUrl": f"{self.base_url}/media/img/album-0.jpg",
                                   "creator": {"nickname": NICKNAME, "userId": USER_ID}} for pid in page],
                    "total": len(rows), "code": 200, "more": offset + limit < len(rows), "cat": q.get("cat")}
        if path == "/playlist/track/all":
            songs = PLAYLISTS[int(q["id"])][2][: int(q.get("limit", 1000))]
            return {"songs": [self.track(s) for s in songs], "privileges": [{"id": s} for s in songs], "code": 200}
        if path == "/lyric":
            if q["id"] in self.no_lyrics:
                return {"sgc": True, "sfy": False, "qfy": False, "nolyric": True, "code": 200}
            sid = int(q["id"])
            lrc = "[00:00.00] 作词 : 某某\n[00:00.50] 作曲 : 某某\n" + "\n".join(
                f"[00:{5 + k:02d}.00]{line}" for k, line in enumerate(LYRICS[: 2 + sid % 4]))
            return {"sgc": False, "sfy": False, "qfy": False, "lrc": {"version": 3, "lyric": lrc},
                    "klyric": {"version": 0, "lyric": ""}, "tlyric": {"version": 0, "lyric": ""}, "code": 200}
        if path == "/comment/music":
            sid = int(q["id"])

            def comment(k):
                return {"user": {"nickname": NICKNAME, "userId": USER_ID, "avatarUrl": "http://x/a.jpg"},
                        "beReplied": [], "commentId": sid * 10 + k, "content": COMMENTS[(sid + k) % 4],
                        "time": 1600000000000, "likedCount": 10}
            return {"isMusician": False, "userId": -1, "topComments": [], "moreHot": True,
                    "hotComments": [comment(0), comment(1)], "code": 200,
                    "comments": [comment(2), comment(0)], "total": 4, "more": False}
        if path == "/song/url":
            sid = q["id"]
            if sid in self.no_audio:
                return {"data": [{"id": int(sid), "url": None, "br": 0, "size": 0, "md5": None, "code": 404,
                                  "type": None, "fee": 1}], "code": 200}
            return {"data": [{"id": int(sid), "url": f"{self.base_url}/media/audio/{sid}.wav", "br": 128000,
                              "size": len(self.audio[sid]), "md5": "0", "code": 200, "type": "wav", "fee": 0}],
                    "code": 200}
        if path == "/artists":
            aid = int(q["id"])
            pic = (f"http://p2.music.126.net/6y-UleORITEDbvrOLV0Q8A==/{DEFAULT_AVATAR}.jpg" if aid == 503
                   else f"{self.base_url}/media/img/artist-{aid}.png")
            return {"artist": {"id": aid, "name": f"歌手{aid}", "picUrl": pic, "img1v1Url": pic,
                               "briefDesc": ""}, "hotSongs": [], "more": False, "code": 200}
        return None

    def media(self, path: str):
        name = path.rsplit("/", 1)[-1]
        if path.startswith("/media/audio/"):
            return self.audio.get(name.removesuffix(".wav")), "audio/wav"
        if path.startswith("/media/img/"):
            return self.images.get(name), "image/jpeg" if name.endswith(".jpg") else "image/png"
        return None, None

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        parts = urlsplit(h.path)
        path, q = parts.path, dict(parse_qsl(parts.query))
        key = self.key(path, q)
        with self.lock:
            queue = self.faults.get(key)
            fault = None
            if queue:
                fault = queue[0].rstrip("*")
                if not queue[0].endswith("*"):
                    queue.pop(0)
            nth = 1 + sum(1 for entry in self.log if entry[2] == path)
            if self.hang_at == (path, nth):
                fault = "hang"
            entry = [arrived, key, path, q, fault or "ok", h.headers.get("User-Agent")]
            self.log.append(entry)
        try:
            self.respond(h, path, q, fault)
        except (BrokenPipeError, ConnectionResetError):
            entry[4] = "client gone"

    def send(self, h, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def respond(self, h, path: str, q: dict, fault: str | None) -> None:
        if fault == "hang":
            self.hung.set()
            self.release.wait(60)
            h.close_connection = True
            return
        if fault == "slow":
            time.sleep(1.0)
        if fault in ("429", "500", "503", "404"):
            extra = {"Retry-After": "0"} if fault == "429" else None
            self.send(h, int(fault), b'{"code": %s, "msg": "injected"}' % fault.encode(), "application/json", extra)
            return
        if fault == "malformed":
            self.send(h, 200, b'{"code": 200, "lrc": {"lyric": "[00:0', "application/json")
            return
        if fault == "missing":
            self.send(h, 200, b'{"code": 200}', "application/json")
            return
        if fault == "html":
            self.send(h, 200, b"<!DOCTYPE html><html><body>please log in</body></html>", "text/html")
            return
        if fault == "nested":  # valid JSON nested deeper than Python's json can decode (RecursionError)
            self.send(h, 200, b'{"code": 200, "lrc": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "application/json")
            return
        if fault == "not-utf8":
            self.send(h, 200, b'{"code": 200, "lrc": {"lyric": "\xff\xfe\xfa"}}', "application/json")
            return
        if fault == "wrong-types":  # every field the API documents, of another type
            self.send(h, 200, b'{"code": 200, "hotComments": {"content": 1}, "comments": 7, "lrc": [1], '
                              b'"data": {"url": 3}, "artist": [null]}', "application/json")
            return
        if fault == "trickle":  # a correct header, then one byte every 50 ms for up to 20 s
            body = self.media(path)[0] if path.startswith("/media/") else \
                json.dumps(self.answer(path, q)).encode("utf-8")
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            until = time.monotonic() + 20
            for i in range(len(body)):
                if time.monotonic() > until:
                    break
                h.wfile.write(body[i:i + 1])
                h.wfile.flush()
                time.sleep(0.05)
            h.close_connection = True
            return
        if path.startswith("/media/"):
            body, content_type = self.media(path)
            if body is None:
                self.send(h, 404, b"not found", "text/plain")
                return
            if fault == "truncate":
                h.send_response(200)
                h.send_header("Content-Type", content_type)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body[: len(body) // 2])
                h.wfile.flush()
                h.close_connection = True
                return
            self.send(h, 200, body, content_type)
            return
        data = self.answer(path, q)
        if data is None:
            self.send(h, 404, b'{"code": 404, "msg": "no such API"}', "application/json")
            return
        self.send(h, 200, json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")


@pytest.fixture
def server():
    fake = FakeNetease()
    yield fake
    fake.close()


def options(raw: Path, server: FakeNetease, **kw) -> CrawlOptions:
    settings = dict(raw_dir=raw, tags=TAGS, max_songs=16, playlists_per_tag=2, rate=1000.0, timeout=3.0, retries=2,
                    backoff=0.0, base_url=server.base_url, progress=False)
    settings.update(kw)
    return CrawlOptions(**settings)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_options(raw: Path, out: Path) -> BuildOptions:
    return BuildOptions(raw_dir=raw, out_dir=out, image_encoder="efficientnet-lite0", workers=1, progress=False)


# ----------------------------------------------------------------------------------------------


def test_parsers_read_the_api_shapes_and_keep_no_user_fields():
    playlists, more = parse_playlists({"playlists": [{"id": 5, "name": "x", "tags": ["伤感", 3]}, {"name": "no id"}],
                                       "total": 2, "more": True, "code": 200})
    assert playlists == [{"id": "5", "name": "x", "tags": ["伤感"]}] and more
    tracks = parse_tracks({"songs": [{"id": 7, "name": "s", "ar": [{"id": 1, "name": "a"}],
                                      "al": {"picUrl": "http://p/1.jpg"}}, {"name": "no id"}]})
    assert tracks == [{"id": "7", "name": "s", "artists": [{"id": "1", "name": "a"}], "cover": "http://p/1.jpg"}]
    assert parse_tracks({"playlist": {"tracks": [{"id": 8, "name": "t", "ar": [], "al": {}}]}})[0]["cover"] is None
    assert parse_lyrics({"lrc": {"lyric": "[00:01.00]a"}}) == "[00:01.00]a"
    assert parse_lyrics({"nolyric": True, "code": 200}) == ""
    comments = parse_comments({"hotComments": [{"content": " 好听 ", "user": {"nickname": NICKNAME}}],
                               "comments": [{"content": "好听"}, {"content": "再听", "user": {"userId": USER_ID}}]}, 5)
    assert comments == ["好听", "再听"]
    assert parse_song_url({"data": [{"id": 9, "url": None, "code": 404, "fee": 1}]}, "9")["url"] is None
    assert parse_song_url({"data": [{"id": 9, "url": "http://m/9.mp3", "size": 10}]}, "9")["size"] == 10
    assert parse_artist_picture({"artist": {"picUrl": f"http://p/{DEFAULT_AVATAR}.jpg"}}) is None
    for bad, parse in [({"code": 200}, parse_playlists), ({"playlist": {}}, parse_tracks), ({}, parse_lyrics),
                       ({"lrc": {"lyric": 5}}, parse_lyrics), ({}, lambda d: parse_comments(d, 3)),
                       ({"data": []}, lambda d: parse_song_url(d, "1")), ({"code": 200}, parse_artist_picture)]:
        with pytest.raises(FetchError):
            parse(bad)
    assert sniff_audio(wav_bytes(0.1, 300)[:16]) == ".wav" and sniff_audio(b"ID3\x04") == ".mp3"
    assert sniff_audio(b"<!DOCTYPE html>") is None
    assert sniff_image(image_bytes((1, 2, 3), "PNG")[:16]) == ".png" and sniff_image(b"\xff\xd8\xff\xe0") == ".jpg"


def test_crawl_survives_bad_responses_and_writes_a_folder_that_builds(server, tmp_path):
    raw = tmp_path / "raw"
    server.fault("/top/playlist", {"cat": "伤感", "order": "hot", "limit": 50, "offset": 0}, ["429", "429"])
    server.fault("/playlist/track/all", {"id": 21, "limit": 100, "offset": 0}, ["500"])
    server.fault("/lyric", {"id": 1002}, ["slow"])  # answers after the client's timeout: retried
    server.fault("/lyric", {"id": 1003}, ["malformed*"])
    server.fault("/comment/music", {"id": 1004, "limit": 20}, ["missing*"])
    server.fault("/media/audio/1005.wav", None, ["truncate*"])
    server.fault("/media/audio/1006.wav", None, ["html*"])
    server.fault("/media/img/album-3.jpg", None, ["404*"])  # the cover of 1007 and 1008
    server.fault("/song/url", {"id": 1009, "br": 128000}, ["500*"])
    server.fault("/media/audio/1010.wav", None, ["truncate"])  # once: the second try completes
    server.fault("/artists", {"id": 502}, ["503"])
    for path, params in [("/lyric", {"id": 1012}), ("/comment/music", {"id": 1012, "limit": 20}),
                         ("/song/url", {"id": 1012, "br": 128000})]:
        server.fault(path, params, ["404*"])
    server.fault("/media/img/album-5.jpg", None, ["404*"])  # 1011 and 1012: 1012 then has nothing at all

    summary = crawl(options(raw, server, timeout=0.5))

    records = {r["id"]: r for r in lines(raw / "records.jsonl")}
    assert set(records) == {str(s) for s in SONGS} - {"1012"}  # 1012: nothing usable, skipped
    assert summary.written == 15 and summary.skipped == 1 and summary.records_total == 15
    assert summary.stats.retries >= 6
    for sid, tags in EXPECTED_TAGS.items():
        assert records[sid]["tags"] == tags
    assert records["1001"]["tag_votes"] == {"伤感": 2, "兴奋": 1, "孤独": 1, "快乐": 1}
    assert all("1099" not in r["source"]["playlists"] for r in records.values())
    assert not any(entry[3].get("id") in ("13", "23", "33", "43") for entry in server.log)  # playlists_per_tag

    # what each bad response left
    assert records["1002"]["lyrics"].startswith("[00:00.00]") and "lyrics" not in records["1002"]["missing"]
    assert records["1003"]["lyrics"] == "" and "malformed JSON" in records["1003"]["missing"]["lyrics"]
    assert records["1004"]["comments"] == [] and "missing fields" in records["1004"]["missing"]["comments"]
    assert records["1005"]["audio"] is None and "truncated" in records["1005"]["missing"]["audio"]
    assert records["1006"]["audio"] is None and "not an audio file" in records["1006"]["missing"]["audio"]
    assert records["1007"]["images"] == ["images/artist-501.png"] and "HTTP 404" in records["1007"]["missing"]["cover"]
    assert records["1008"]["audio"] is None and "no public audio URL" in records["1008"]["missing"]["audio"]
    assert records["1009"]["audio"] is None and "HTTP 500 after 2 retries" in records["1009"]["missing"]["audio"]
    assert records["1010"]["audio"] == "audio/1010.wav"
    assert (raw / "audio" / "1010.wav").read_bytes() == server.audio["1010"]
    assert records["1011"]["lyrics"] == "" and "lyrics" not in records["1011"]["missing"]
    assert records["1015"]["images"] == ["images/1015-cover.jpg"]  # default avatar is no poster
    assert records["1002"]["images"] == ["images/1001-cover.jpg", "images/artist-502.png"]  # same album as 1001:
    assert records["1004"]["images"][0] == "images/1003-cover.jpg"  # one download, one file

    # the per-song log names every problem with its reason
    logged = {(e["song"], e["part"]) for e in iter_log(raw)}
    assert {("1003", "lyrics"), ("1004", "comments"), ("1005", "audio"), ("1006", "audio"), ("1007", "cover"),
            ("1008", "audio"), ("1009", "audio"), ("1012", "song")} <= logged
    assert ("1010", "audio") not in logged

    # source URLs and fetch times are kept; user fields never are
    r = records["1001"]
    assert r["source"]["lyrics"].endswith("/lyric?id=1001") and r["source"]["audio"].endswith("/media/audio/1001.wav")
    assert r["source"]["cover"].endswith("/media/img/album-0.jpg") and r["source"]["posters"]
    assert set(r["fetched_at"]) >= {"lyrics", "comments", "song_url", "audio", "cover", "posters"}
    assert len(r["comments"]) == 3 and set(r["comments"]) <= set(COMMENTS)
    for name in ("records.jsonl", STATE_FILE, LOG_FILE):
        text = (raw / name).read_text(encoding="utf-8")
        assert NICKNAME not in text and str(USER_ID) not in text, name

    # retry policy: 404 is not retried, 5xx and 429 are; nothing successful is fetched twice; no partial files
    assert server.served("404")[FakeNetease.key("/lyric", {"id": "1012"})] == 1
    assert server.served("500")[FakeNetease.key("/song/url", {"id": "1009", "br": "128000"})] == 3
    assert max(server.served("ok").values()) == 1
    assert server.served("404")["/media/img/album-3.jpg"] == 1
    assert not list(raw.rglob("*.part"))

    read = read_records(raw)
    assert len(read.records) == 15 and not read.quarantined and not read.without_emotion
    built = build(build_options(raw, tmp_path / "out"))
    assert built.kept == 15 and built.quarantined == 0


def test_killed_crawl_resumes_without_fetching_anything_twice(server, tmp_path):
    raw = tmp_path / "raw"
    server.hang_at = ("/lyric", 6)  # the sixth song's first request never answers: the crawl is killed there
    command = [sys.executable, "-m", "pipelines.crawl_nemu", "--out", str(raw), "--tags", ",".join(TAGS), "--max-songs", "16",
               "--playlists-per-tag", "2", "--rate", "1000", "--timeout", "30", "--retries", "1", "--backoff", "0",
               "--base-url", server.base_url, "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.hung.wait(60), process.communicate(timeout=5)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    server.release.set()
    first = [r["id"] for r in lines(raw / "records.jsonl")]
    assert len(first) == 5
    mark = len(server.log)

    server.hang_at = None
    summary = crawl(options(raw, server))
    assert summary.already == 5 and summary.written == 11

    again = server.log[mark:]
    assert not [e for e in again if e[2] in ("/top/playlist", "/playlist/track/all")]  # discovery is journaled
    for sid in first:
        assert not [e for e in again if e[3].get("id") == sid or f"/{sid}.wav" in e[2] or f"/{sid}-" in e[2]]
    assert max(server.served("ok").values()) == 1  # over both runs, no answer was fetched twice
    assert [e[1] for e in server.log if e[4] == "hang"] == [e[1] for e in again[:1]]  # only the unanswered one

    final = lines(raw / "records.jsonl")
    assert [r["id"] for r in final[:5]] == first and len({r["id"] for r in final}) == 16
    read = read_records(raw)
    assert len(read.records) == 16 and not read.quarantined
    built = build(build_options(raw, tmp_path / "out"))
    assert built.kept == 16 and built.quarantined == 0 and sum(built.splits.values()) == 16


def test_torn_lines_are_cut_and_the_record_rewritten_from_the_journal(server, tmp_path):
    raw = tmp_path / "raw"
    crawl(options(raw, server, comments=2))
    records = (raw / "records.jsonl").read_bytes()
    last = records.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    (raw / "records.jsonl").write_bytes(records[: len(records) - len(last) // 2 - 1])  # kill inside the write
    with (raw / STATE_FILE).open("ab") as handle:
        handle.write(b'{"event": "part", "song": "10')
    mark = len(server.log)
    summary = crawl(options(raw, server, comments=2))
    assert server.log[mark:] == []  # everything came from the journal and the files on disk
    assert summary.written == 1 and summary.records_total == 16
    assert (raw / "records.jsonl").read_bytes() == records
    assert not read_records(raw).quarantined


def test_min_votes_flag_sets_how_many_playlists_make_a_label(server, tmp_path):
    raw = tmp_path / "raw"
    crawl(options(raw, server, min_votes=2, audio=False, comments=0, posters=0))
    records = {r["id"]: r for r in lines(raw / "records.jsonl")}
    assert {sid: r["tags"] for sid, r in records.items()} == {"1001": ["伤感"], "1003": ["伤感"], "1016": ["安静"]}
    assert records["1016"]["tag_votes"] == {"伤感": 1, "安静": 2, "放松": 1} and records["1016"]["audio"] is None
    assert not any(e[2] in ("/song/url", "/comment/music", "/artists") for e in server.log)


def test_max_songs_takes_songs_round_robin_over_the_tags(server, tmp_path):
    raw = tmp_path / "raw"
    crawl(options(raw, server, max_songs=4, audio=False, comments=0, posters=0))
    assert [r["id"] for r in lines(raw / "records.jsonl")] == ["1001", "1007", "1012", "1015"]
    crawl(options(raw, server, max_songs=6, audio=False, comments=0, posters=0))  # a larger crawl continues
    assert [r["id"] for r in lines(raw / "records.jsonl")] == ["1001", "1007", "1012", "1015", "1002", "1008"]


def test_an_unexpected_error_skips_only_that_song(server, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    real = crawl_module.parse_comments

    def broken(data, limit):
        if data["hotComments"][0]["commentId"] // 10 == 1005:
            raise RuntimeError("surprise")
        return real(data, limit)

    monkeypatch.setattr(crawl_module, "parse_comments", broken)
    summary = crawl(options(raw, server, audio=False, posters=0))
    assert summary.written == 15 and "1005" not in {r["id"] for r in lines(raw / "records.jsonl")}
    assert any(e["song"] == "1005" and "RuntimeError: surprise" in e["reason"] for e in iter_log(raw))
    monkeypatch.setattr(crawl_module, "parse_comments", real)
    mark = len(server.log)
    assert crawl(options(raw, server, audio=False, posters=0)).written == 1
    assert [e[2] for e in server.log[mark:]] == ["/comment/music"]  # its lyrics and cover were journaled


def test_rate_limit_holds(server):
    """Every request leaves at or after its slot, and the slots are 1/rate apart. Checked where the limiter acts,
    in the client: the server's arrival times also carry its own thread's scheduling delays, which on a loaded
    machine bring two arrivals closer than the client sent them (this test once failed there)."""
    session = make_session(rate=20, retries=0, backoff=0, user_agent="test")
    limiter, wait = session.limiter, session.limiter.wait
    slots, sent = [], []

    def recorded_wait():
        wait()
        sent.append(time.monotonic())
        slots.append(limiter._next - limiter.interval)  # the slot this request was given (one thread)

    limiter.wait = recorded_wait
    started = time.monotonic()
    for _ in range(10):
        assert session.get(f"{server.base_url}/lyric", params={"id": 1001}, timeout=5).status_code == 200
    assert time.monotonic() - started >= 9 * 0.05
    assert len(sent) == 10 and len(server.log) == 10
    assert all(b - a >= 0.05 - 1e-9 for a, b in zip(slots, slots[1:]))  # slots 1/rate apart (more when late)
    assert all(when >= slot for when, slot in zip(sent, slots))  # no request before its slot


def test_retries_back_off_and_pass_the_rate_limiter(server):
    server.fault("/lyric", {"id": 1001}, ["500", "429", "503"])
    session = make_session(rate=20, retries=3, backoff=0.05, user_agent="nemu-test-agent/1")
    response = session.get(f"{server.base_url}/lyric", params={"id": 1001}, timeout=5)
    assert response.status_code == 200 and session.stats.retries == 3 and session.stats.requests == 1
    arrivals = [e[0] for e in server.log]
    assert [e[4] for e in server.log] == ["500", "429", "503", "ok"]
    assert {e[5] for e in server.log} == {"nemu-test-agent/1"}
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) >= 0.05 - 0.02  # every attempt waits its turn
    assert gaps[2] >= 0.2 - 0.02  # exponential backoff: 0, 2*0.05, 4*0.05 seconds before retries 1, 2, 3


def test_rate_limit_holds_over_a_whole_crawl_with_retries(server, tmp_path):
    server.fault("/playlist/track/all", {"id": 11, "limit": 100, "offset": 0}, ["500", "500"])
    crawl(options(tmp_path / "raw", server, rate=40, audio=False, comments=0, posters=0))
    arrivals = sorted(e[0] for e in server.log)
    assert len(arrivals) > 25
    assert min(b - a for a, b in zip(arrivals, arrivals[1:])) >= 1 / 40 - 0.02
    for i in range(len(arrivals) - 10):
        assert arrivals[i + 10] - arrivals[i] >= 10 / 40 - 0.02


def test_rate_limiter_spaces_calls_evenly():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    now[0] += 2.0  # idle time is not saved up into a burst
    limiter.wait()
    limiter.wait()
    assert slept == [0.25, 0.25, 0.25]


def test_user_agent_timeouts_and_base_url(server, tmp_path):
    crawl(options(tmp_path / "raw", server, max_songs=1, audio=False, comments=0, posters=0,
                  user_agent="nemu-research-crawler/0 (mailto:someone@example.org)"))
    assert server.log and {e[5] for e in server.log} == {"nemu-research-crawler/0 (mailto:someone@example.org)"}
    # a server that never answers in time: every request times out, the crawl ends with nothing, no crash
    server.fault("/top/playlist", {"cat": "伤感", "order": "hot", "limit": 50, "offset": 0}, ["slow*"])
    started = time.monotonic()
    summary = crawl(options(tmp_path / "raw2", server, tags=("伤感",), timeout=0.3, retries=1))
    assert summary.records_total == 0 and time.monotonic() - started < 3
    assert any("ReadTimeout" in e["reason"] or "Read timed out" in e["reason"] for e in iter_log(tmp_path / "raw2"))


def test_one_crawl_per_raw_folder(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    state = CrawlState(tmp_path)
    try:
        with pytest.raises(CrawlError, match="another crawl"):
            CrawlState(tmp_path)
    finally:
        state.close()


def test_cli_help_explains_every_flag_and_prints_a_summary(server, tmp_path, capsys):
    text = crawl_nemu.parser().format_help()
    for flag in ("--tags", "--max-songs", "--playlists-per-tag", "--min-votes", "--comments", "--rate", "--timeout",
                 "--retries", "--base-url", "--user-agent", "--no-audio", "--no-progress", "research"):
        assert flag in text
    with pytest.raises(SystemExit):
        crawl_nemu.parser().parse_args(["--out", "raw", "--tags", "伤感,华语"])  # not an emotion tag
    code = crawl_nemu.main(["--out", str(tmp_path / "raw"), "--tags", "Sad,治愈", "--max-songs", "3", "--playlists-per-tag", "2",
                            "--rate", "1000", "--base-url", server.base_url, "--no-audio", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "3 records" in out and "3 selected" in out and "requests:" in out
    assert {e[3].get("cat") for e in server.log if e[2] == "/top/playlist"} == {"伤感", "治愈"}
    assert all(e[5].startswith("nemu-hhmpn-crawler/") and "research" in e[5] for e in server.log)


def test_persistent_429_or_no_endpoint_stops_the_crawl_and_the_next_run_continues(server, tmp_path, capsys):
    raw = tmp_path / "raw"
    server.fault("/lyric", {"id": 1002}, ["429*"])  # the fifth song: the endpoint keeps saying "slow down"
    summary = crawl(options(raw, server, retries=1))
    assert "429" in summary.stopped and summary.written == 4
    assert [r["id"] for r in lines(raw / "records.jsonl")] == ["1001", "1007", "1012", "1015"]
    assert not [e for e in lines(raw / STATE_FILE) if e.get("song") == "1002"]  # nothing final about 1002
    server.faults.clear()
    summary = crawl(options(raw, server))
    records = {r["id"]: r for r in lines(raw / "records.jsonl")}
    assert summary.stopped is None and len(records) == 16 and records["1002"]["missing"] == {}
    assert max(server.served("ok").values()) == 1

    import socket
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    code = crawl_nemu.main(["--out", str(tmp_path / "raw2"), "--base-url", f"http://127.0.0.1:{port}", "--retries", "0",
                            "--no-progress"])
    assert code == 3 and time.monotonic() - started < 5
    assert "cannot connect" in capsys.readouterr().out


def test_undecodable_answers_are_that_songs_failure(server, tmp_path):
    """Deeply nested JSON (RecursionError in json), bytes that are not UTF-8 and fields of the wrong types fail
    only the part they answer; the songs are kept without it and the crawl goes on."""
    raw = tmp_path / "raw"
    server.fault("/lyric", {"id": 1001}, ["nested*"])
    server.fault("/lyric", {"id": 1007}, ["not-utf8*"])
    server.fault("/comment/music", {"id": 1012, "limit": 20}, ["wrong-types*"])
    server.fault("/song/url", {"id": 1015, "br": 128000}, ["wrong-types*"])
    server.fault("/artists", {"id": 501}, ["wrong-types*"])
    server.fault("/playlist/track/all", {"id": 32, "limit": 100, "offset": 0}, ["nested*"])
    summary = crawl(options(raw, server))
    records = {r["id"]: r for r in lines(raw / "records.jsonl")}
    assert summary.stopped is None and not summary.interrupted
    assert "malformed JSON (RecursionError" in records["1001"]["missing"]["lyrics"]
    assert "malformed JSON" in records["1007"]["missing"]["lyrics"]
    assert records["1001"]["lyrics"] == "" and records["1001"]["audio"]  # the rest of the song is kept
    assert "is not a list" in records["1012"]["missing"]["comments"]
    assert "data" in records["1015"]["missing"]["audio"]
    log = list(iter_log(raw))
    assert any(e["part"] == "playlist[32]" and "RecursionError" in e["reason"] for e in log)
    assert "1014" not in records  # only in playlist 32, whose track list could not be decoded
    assert not any("unexpected error" in e["reason"] for e in log)  # each was an answer's failure, not a crash
    # the failures are journaled: a second run asks none of them again
    mark = len(server.log)
    crawl(options(raw, server))
    assert not [e for e in server.log[mark:] if e[2] in ("/lyric", "/comment/music", "/song/url")]


def test_a_trickling_server_is_cut_off_after_the_download_deadline(server, tmp_path):
    """--timeout bounds each read; a server sending one byte every 50 ms never trips it, so each answer and
    download also has a total deadline (--download-deadline)."""
    raw = tmp_path / "raw"
    server.fault("/media/audio/1001.wav", None, ["trickle*"])
    server.fault("/lyric", {"id": 1007}, ["trickle*"])
    started = time.monotonic()
    summary = crawl(options(raw, server, timeout=2.0, download_deadline=1.0, retries=0))
    elapsed = time.monotonic() - started
    records = {r["id"]: r for r in lines(raw / "records.jsonl")}
    assert "download deadline exceeded" in records["1001"]["missing"]["audio"]
    assert records["1001"]["audio"] is None and not list((raw / "audio").glob("*.part"))
    assert "download deadline exceeded" in records["1007"]["missing"]["lyrics"]
    assert summary.written == 16
    # two trickles cut at 1 s each (+ at most one 2 s read each) instead of 20 s each
    assert elapsed < 12, elapsed
    assert crawl_nemu.parser().parse_args(["--out", "r", "--download-deadline", "5"]).download_deadline == 5.0
