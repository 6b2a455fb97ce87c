"""`pmstore serve` (the REST service under uvicorn) and the client commands put/get/ls/rm/stat.

`serve` reads service.settings.Settings from the PMSTORE_* environment; its flags
override. It runs one uvicorn worker with uvloop and httptools and no access log (an
access log costs about a third of the throughput). The client commands talk to a server
at --url (PMSTORE_URL) with --token (PMSTORE_API_TOKEN) through service.client.Client.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_URL = "http://127.0.0.1:8080"
Opt = typer.Option
Url = Annotated[str, Opt("--url", envvar="PMSTORE_URL", help="server base URL")]
Token = Annotated[str | None, Opt("--token", envvar="PMSTORE_API_TOKEN", help="bearer token",
                                  show_default=False)]


def _fail(msg: str, code: int = 2):
    from rich.console import Console
    from rich.markup import escape
    Console(stderr=True).print(f"[red]error:[/red] {escape(msg)}")
    raise typer.Exit(code)


def _client(url: str, token: str | None):
    from service.client import Client
    return Client(url, token or None)


def _remote(fn):
    """Run fn(); print API and connection errors as one line (exit 1: the API said no, 2: no server)."""
    import httpx

    from allocator.errors import PmstoreError
    try:
        return fn()
    except httpx.TransportError as e:
        _fail(f"cannot reach the server: {e}")
    except PmstoreError as e:
        _fail(f"{getattr(e, 'code', type(e).__name__)}: {e}", 1)


def register(app: typer.Typer) -> None:
    """Add the server and client commands to the root `pmstore` app."""

    @app.command("serve")
    def serve(heap: Annotated[Path | None, Opt("--heap", help="heap file [PMSTORE_HEAP_PATH]")] = None,
              host: Annotated[str | None, Opt(help="bind address [PMSTORE_HOST: 127.0.0.1]")] = None,
              port: Annotated[int | None, Opt(help="TCP port [PMSTORE_PORT: 8080]")] = None,
              durability: Annotated[str | None, Opt(help="sync | os [PMSTORE_DURABILITY]")] = None,
              initial_size: Annotated[str | None, Opt(help="new heap size [PMSTORE_HEAP_INITIAL_SIZE]")] = None,
              max_size: Annotated[str | None, Opt(help="largest heap size [PMSTORE_HEAP_MAX_SIZE]")] = None,
              max_object_size: Annotated[str | None, Opt(help="largest object [PMSTORE_MAX_OBJECT_SIZE]")] = None,
              verify_reads: Annotated[bool | None, Opt("--verify-reads/--no-verify-reads",
                                                       help="CRC32C on GET [PMSTORE_VERIFY_READS]")] = None,
              backend: Annotated[str | None, Opt(help="auto | msync | flush [PMSTORE_BACKEND]")] = None,
              write_threads: Annotated[int | None, Opt(help="writer threads, 0: inline "
                                                            "[PMSTORE_WRITE_THREAD_COUNT]")] = None,
              log_level: Annotated[str, Opt(help="uvicorn log level")] = "info"):
        """Serve the REST API over the store (settings from PMSTORE_*; flags override). The token
        is read only from PMSTORE_API_TOKEN, so it does not show in the process list."""
        from pydantic import ValidationError

        from service.settings import Settings, describe_error
        flags = {"heap_path": heap, "host": host, "port": port, "durability": durability,
                 "heap_initial_size": initial_size, "heap_max_size": max_size,
                 "max_object_size": max_object_size, "verify_reads": verify_reads, "backend": backend,
                 "write_thread_count": write_threads}
        try:
            settings = Settings(**{k: v for k, v in flags.items() if v is not None})
        except ValidationError as e:
            _fail(f"invalid settings:\n{describe_error(e)}")
        import uvicorn

        from service.app import create_app
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                    access_log=False, log_level=log_level, lifespan="on", timeout_graceful_shutdown=10)

    @app.command("put")
    def put(key: str, file: Annotated[Path | None, typer.Argument(help="file to upload ('-' or none: stdin)")] = None,
            content_type: Annotated[str | None, Opt(help="Content-Type to store")] = None,
            url: Url = DEFAULT_URL, token: Token = None):
        """Store FILE (or stdin) under KEY on the server."""
        data = sys.stdin.buffer.read() if file is None or str(file) == "-" else file.read_bytes()
        with _client(url, token) as c:
            r = _remote(lambda: c.put(key, data, content_type=content_type, content_md5=True))
        print(json.dumps(r))

    @app.command("get")
    def get(key: str, output: Annotated[Path | None, Opt("-o", "--output", help="write here, not stdout")] = None,
            url: Url = DEFAULT_URL, token: Token = None):
        """Print (or save) the object KEY."""
        with _client(url, token) as c:
            data = _remote(lambda: c.get(key))
        if output is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            output.write_bytes(data)

    @app.command("ls")
    def ls(prefix: Annotated[str, typer.Argument(help="key prefix")] = "",
           limit: Annotated[int, Opt(help="stop after this many (0: all)")] = 0,
           json_out: Annotated[bool, Opt("--json", help="one JSON object per line")] = False,
           url: Url = DEFAULT_URL, token: Token = None):
        """List objects under PREFIX in key order: size, etag, key."""
        with _client(url, token) as c:
            def rows():
                out = []
                for meta in c.iter(prefix):
                    out.append(meta)
                    if limit and len(out) >= limit:
                        break
                return out
            for m in _remote(rows):
                print(json.dumps(m._asdict()) if json_out else f"{m.size:>12} {m.etag} {m.key}")

    @app.command("rm")
    def rm(keys: Annotated[list[str], typer.Argument(help="keys to delete")],
           if_match: Annotated[str | None, Opt(help="delete only if the ETag matches")] = None,
           url: Url = DEFAULT_URL, token: Token = None):
        """Delete objects."""
        with _client(url, token) as c:
            for key in keys:
                _remote(lambda k=key: c.delete(k, if_match=if_match))

    @app.command("stat")
    def stat(key: Annotated[str | None, typer.Argument(help="object key (none: the server's statistics)")] = None,
             url: Url = DEFAULT_URL, token: Token = None):
        """Print an object's metadata, or the server's statistics, as JSON."""
        with _client(url, token) as c:
            out = _remote(lambda: c.head(key)._asdict() if key is not None else c.stats())
        print(json.dumps(out, indent=None if key is not None else 2))


__all__ = ["register"]
