"""ShardedClient: one key space over several pmstore servers (the compose profile `cluster`).

Each key lives on exactly one shard: the one nginx's `hash $uri consistent` picks from the
shards' "host:port" names (docker/nginx/nginx.conf). `shard_for` reproduces that placement,
so key operations may go through the gateway or straight to the owning shard and land on
the same server. Listing cannot be routed to one shard: `list` runs a k-way merge
(heapq.merge) of the shards' own sorted pages and hands out its own continuation token.
Must not: retry a key operation on another shard (the key would be written where reads do
not look), or touch the wire format (it only uses service.client.Client).
"""

from __future__ import annotations

import base64
import bisect
import heapq
import itertools
import json
import zlib
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from service.client import DEFAULT_TIMEOUT_S, Client, ObjectMeta, Page, iter_pages

LIST_LIMIT_MAX = 10_000     # objects per page, the API's own bound
CHASH_POINTS = 160          # ring points per server of weight 1 (nginx, ketama)
TOKEN_PREFIX = "m1."        # marks a merged-listing token (version 1)
_DONE = False               # a shard's cursor once it has nothing more to list


def nginx_uri(key: str) -> bytes:
    """$uri as nginx derives it from the request line service.client sends for `key`: the
    path percent-decoded with dot segments removed (merge_slashes is off, so '//' stays)."""
    out: list[str] = []
    segs = ("v1/objects/" + key).split("/")
    for i, seg in enumerate(segs):
        if seg in (".", ".."):
            if seg == ".." and out:
                out.pop()
            if i == len(segs) - 1:
                out.append("")          # "a/." and "a/.." end in a slash
            continue
        out.append(seg)
    return ("/" + "/".join(out)).encode("utf-8")


class HashRing:
    """nginx's consistent-hash ring (ngx_http_upstream_hash_module, `hash ... consistent`).

    Each server contributes CHASH_POINTS points: crc32(host NUL port prev), prev being the
    previous point's hash as 4 little-endian bytes (starting at 0); a key goes to the first
    point >= crc32(key), wrapping round. Equal points keep one owner (nginx dedups after an
    unstable sort; with 480 32-bit points a tie is about 3e-5 likely).
    """

    def __init__(self, names: Sequence[str]):
        points: dict[int, int] = {}
        for idx, name in enumerate(names):
            host, sep, port = name.rpartition(":")
            if not (sep and port.isdigit()):
                host, port = name, ""
            base = host.encode() + b"\0" + port.encode()
            prev = 0
            for _ in range(CHASH_POINTS):
                prev = zlib.crc32(base + prev.to_bytes(4, "little"))
                points.setdefault(prev, idx)
        self._hashes = sorted(points)
        self._owner = [points[h] for h in self._hashes]

    def lookup(self, data: bytes) -> int:
        """Index (into the names given) of the server that owns data."""
        i = bisect.bisect_left(self._hashes, zlib.crc32(data))
        return self._owner[i % len(self._hashes)]


class ShardedClient:
    """Key operations on the owning shard (through `gateway` when given, else directly);
    listings merged across every shard. A context manager (closes its connections).

    shards: the shards' base URLs, in nginx.conf's `server` order; `names` (default: each
    URL's "host:port") must be the strings nginx.conf names them by, or placement differs.
    Invariants: `list` pages are in bytewise key order (str order of code points is the
    order of their UTF-8 bytes) and `after=<next>` continues with exactly the keys greater
    than the last one returned, whatever changed on the shards in between.
    """

    def __init__(self, shards: Sequence[str], *, gateway: str | None = None, token: str | None = None,
                 names: Sequence[str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        if not shards:
            raise ValueError("ShardedClient needs at least one shard URL")
        self.names = list(names) if names is not None else [urlsplit(u).netloc for u in shards]
        if len(self.names) != len(shards) or not all(self.names):
            raise ValueError(f"one 'host:port' name per shard needed, got {self.names!r} for {list(shards)!r}")
        self.ring = HashRing(self.names)
        self.shards = [Client(u, token, timeout_s=timeout_s) for u in shards]
        self.gateway = Client(gateway, token, timeout_s=timeout_s) if gateway else None

    # ------------------------------------------------------------ key operations
    def shard_for(self, key: str) -> int:
        """Index of the shard that holds key (the one nginx routes it to)."""
        return self.ring.lookup(nginx_uri(key))

    def _route(self, key: str) -> Client:
        return self.gateway if self.gateway is not None else self.shards[self.shard_for(key)]

    def put(self, key: str, data: bytes, **kw) -> dict:
        """Client.put on the owning shard: {"key", "size", "etag", "created"}."""
        return self._route(key).put(key, data, **kw)

    def get(self, key: str, **kw) -> bytes:
        return self._route(key).get(key, **kw)

    def head(self, key: str) -> ObjectMeta:
        return self._route(key).head(key)

    def exists(self, key: str) -> bool:
        return self._route(key).exists(key)

    def delete(self, key: str, **kw) -> None:
        self._route(key).delete(key, **kw)

    # ------------------------------------------------------------ listing
    def list(self, prefix: str = "", *, after: str | None = None, limit: int = 1000) -> Page:
        """Up to `limit` objects under prefix from all shards in key order; Page.next (None on
        the last page) is this client's token: pass it back as `after`."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise ValueError(f"limit must be 1..{LIST_LIMIT_MAX}, not {limit}")
        last_key, cursors = self._decode(after)
        # cursors[i]: shard i's token for the page holding its next unlisted object (None: its
        # first page; _DONE: nothing left). A page may start before last_key; those are skipped.
        pos = list(cursors)
        page_size = min(limit + 1, LIST_LIMIT_MAX)
        streams = [self._stream(i, prefix, c, last_key, page_size, pos)
                   for i, c in enumerate(cursors) if c is not _DONE]
        merged = heapq.merge(*streams, key=lambda m: m.key)
        objects = list(itertools.islice(merged, limit))
        more = next(merged, None) is not None
        for s in streams:
            s.close()
        return Page(objects, self._encode(objects[-1].key, pos) if more else None)

    def iter(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectMeta]:
        """Every object under prefix on every shard, in key order."""
        return iter_pages(self.list, prefix, page_size)

    def _stream(self, i: int, prefix: str, token: str | None, last_key: str | None, page_size: int,
                pos: list) -> Iterator[ObjectMeta]:
        """Shard i's objects under prefix with keys above last_key, page by page from `token`;
        pos[i] always names the page of the object yielded last (the resume point)."""
        shard = self.shards[i]
        while True:
            page = shard.list(prefix, after=token, limit=page_size)
            pos[i] = token
            for meta in page.objects:
                if last_key is None or meta.key > last_key:
                    yield meta
            if page.next is None:
                pos[i] = _DONE
                return
            token = page.next

    def _encode(self, last_key: str, cursors: list) -> str:
        raw = json.dumps({"after": last_key, "shards": cursors}, separators=(",", ":")).encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode(self, token: str | None) -> tuple[str | None, list]:
        if token is None:
            return None, [None] * len(self.shards)
        try:
            if not token.startswith(TOKEN_PREFIX):
                raise ValueError("prefix")
            body = token[len(TOKEN_PREFIX):]
            state = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            last_key, cursors = state["after"], state["shards"]
            if not isinstance(last_key, str) or not isinstance(cursors, list) or \
                    not all(c is None or c is _DONE or isinstance(c, str) for c in cursors):
                raise ValueError("shape")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"after: not a `next` token from ShardedClient.list ({e})") from None
        if len(cursors) != len(self.shards):
            raise ValueError(f"after: the token is for {len(cursors)} shards, this client has {len(self.shards)}")
        return last_key, cursors

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        for c in self.shards:
            c.close()
        if self.gateway is not None:
            self.gateway.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["HashRing", "ShardedClient", "nginx_uri"]
