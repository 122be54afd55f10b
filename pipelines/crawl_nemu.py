"""nemu-crawl --out RAW: collect a raw NEMu folder from a NeteaseCloudMusicApi endpoint.

A thin layer over ``nemu.crawl.crawl``; the method, the endpoints and the resume rules are in that module's
docstring. For research only: respect NetEase Cloud Music's terms of service and copyright (README.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from nemu.progress import show_progress
from pipelines import cli
from nemu.labels import CHINESE_NAMES

PROG = cli.prog_of("pipelines.crawl_nemu")

try:  # requests and urllib3 are the crawl extra: pip install "nemu-hhmpn[crawl]"
    from nemu.crawl import DEFAULT_BASE_URL, DEFAULT_USER_AGENT, LOG_FILE, STATE_FILE, CrawlError, CrawlOptions, \
        crawl, emotion_tag
except ModuleNotFoundError as missing:  # pragma: no cover - only without the extra
    sys.exit(f"nemu-crawl needs {missing.name}: pip install 'nemu-hhmpn[crawl]' (or -r requirements.txt)")


def _tags(text: str) -> tuple[str, ...]:
    try:
        return tuple(emotion_tag(t) for t in text.replace("，", ",").split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    defaults = CrawlOptions(raw_dir=Path("."))
    p = cli.command_parser(
        "pipelines.crawl_nemu",
        description="Collect NEMu raw records (RAW/records.jsonl + audio/ + images/, the folder "
                    "`nemu-build --raw RAW` reads) from a NeteaseCloudMusicApi-compatible endpoint "
                    "(run one yourself, e.g. Binaryify/NeteaseCloudMusicApi on port 3000). Playlists are listed "
                    "under each emotion tag; a song's labels are the emotion tags of the playlists holding it. "
                    f"Resumable: RAW/{STATE_FILE} journals every answer, so the same command continues a killed "
                    f"crawl without fetching anything twice; problems are logged per song in RAW/{LOG_FILE}. "
                    "For research only: respect NetEase Cloud Music's terms of service and copyright.")
    cli.add_out(p, "the raw folder to create or continue (records.jsonl, audio/, images/)", positional_alias=True)
    p.add_argument("--tags", type=_tags, metavar="TAG,TAG", default=",".join(CHINESE_NAMES),
                   help="comma-separated emotion tags whose playlists are crawled: NetEase names (伤感,治愈,...) or "
                        "the English label names (Sad,Healing,...); only the 12 NEMu emotion tags")
    p.add_argument("--max-songs", type=cli.positive_int, metavar="N", default=defaults.max_songs,
                   help="songs in RAW at most (records already there count), taken round-robin over the tags")
    p.add_argument("--playlists-per-tag", type=cli.positive_int, metavar="N", default=defaults.playlists_per_tag,
                   help="playlists listed per tag (NetEase 'hot' order); more playlists give more votes per song")
    p.add_argument("--tracks-per-playlist", type=cli.positive_int, metavar="N", default=defaults.tracks_per_playlist,
                   help="songs read from the head of each playlist")
    p.add_argument("--min-votes", type=cli.positive_int, metavar="N", default=defaults.min_votes,
                   help="an emotion tag becomes a song's label when at least this many crawled playlists holding "
                        "the song carry it (all votes are kept in the record's tag_votes)")
    p.add_argument("--comments", type=cli.nonnegative_int, metavar="N", default=defaults.comments,
                   help="top comments kept per song (hot comments first; text only, no user names or ids); 0: none")
    p.add_argument("--posters", type=cli.nonnegative_int, metavar="N", default=defaults.posters,
                   help="artist pictures kept per song besides the album cover; 0: cover only")
    p.add_argument("--rate", type=cli.positive_float, metavar="RATE", default=defaults.rate,
                   help="global limit in requests per second, every attempt counted (retries and media included)")
    p.add_argument("--timeout", type=cli.positive_float, metavar="SECONDS", default=defaults.timeout,
                   help="seconds to wait for a connection and for each read, on every request")
    p.add_argument("--download-deadline", type=cli.positive_float, default=defaults.download_deadline, metavar="SECONDS",
                   help="seconds in all for one API answer or media download, however slowly the server sends it "
                        "(--timeout bounds each read only); a download past it is that song's failure")
    p.add_argument("--retries", type=cli.nonnegative_int, metavar="N", default=defaults.retries,
                   help="retries per request on 429/500/502/503/504, connection errors and timeouts")
    p.add_argument("--backoff", type=cli.nonnegative_float, metavar="SECONDS", default=defaults.backoff,
                   help="exponential backoff factor (urllib3): no wait before the first retry, BACKOFF * 2**(n-1) "
                        "seconds before the n-th consecutive one; a Retry-After header is honoured instead; both "
                        "capped at 60 s")
    p.add_argument("--base-url", metavar="URL", default=DEFAULT_BASE_URL,
                   help="NeteaseCloudMusicApi-compatible endpoint serving /top/playlist, /playlist/track/all, "
                        "/lyric, /comment/music, /song/url and /artists")
    p.add_argument("--user-agent", metavar="TEXT", default=DEFAULT_USER_AGENT,
                   help="User-Agent header; keep it honest (add a contact address for your project)")
    p.add_argument("--no-audio", action="store_true",
                   help="do not ask for or download audio (records get audio: null)")
    p.add_argument("--bitrate", type=cli.positive_int, metavar="BPS", default=defaults.bitrate, help="bitrate asked of /song/url (br)")
    p.add_argument("--max-audio-mb", type=cli.positive_float, metavar="MB", default=defaults.max_audio_bytes / 2**20,
                   help="audio downloads larger than this are refused (the song is kept without audio)")
    cli.add_progress(p)
    return p


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


@cli.command("pipelines.crawl_nemu", resumes=True)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = cli.out_folder_problem("--out", args.out)
    if problem:
        return cli.error(PROG, problem)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    logger = logging.getLogger("nemu.crawl")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    options = CrawlOptions(
        raw_dir=args.out, tags=args.tags, max_songs=args.max_songs, playlists_per_tag=args.playlists_per_tag,
        tracks_per_playlist=args.tracks_per_playlist, min_votes=args.min_votes, comments=args.comments,
        posters=args.posters, audio=not args.no_audio, bitrate=args.bitrate,
        max_audio_bytes=int(args.max_audio_mb * 2**20), rate=args.rate, timeout=args.timeout,
        download_deadline=args.download_deadline, retries=args.retries,
        backoff=args.backoff, base_url=args.base_url, user_agent=args.user_agent, progress=show_progress(not args.no_progress))
    try:
        summary = crawl(options)
    except (CrawlError, OSError) as exc:
        return cli.error(PROG, exc)
    finally:
        logger.removeHandler(handler)
    print(summary)
    if summary.interrupted:  # the crawl caught Ctrl-C (or SIGTERM) itself, to journal what it had
        return cli.interrupted(PROG, resumes=True)
    return 3 if summary.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
