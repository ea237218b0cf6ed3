"""The viewer's web server: read-only, on the standard library's ``ThreadingHTTPServer``.

A thread per connection is what tile serving needs (slide reads and JPEG encoding release
the GIL); no framework would add anything here but a dependency.

What it serves, and nothing else:

- ``/``, ``/view/<slide_id>``: the slide list and a slide's viewer (:mod:`.pages`);
- ``/slides/<slide_id>.dzi``, ``/slides/<slide_id>_files/<level>/<col>_<row>.jpeg``: DeepZoom
  descriptors and tiles (OpenSlide's deepzoom-server convention) of the slides the folder's
  records name; pyramid levels only, never the label or macro image;
- ``/api/...``: a slide's overlays (layers, tissue outline, shapes, ROI, hotspot) as JSON and
  pictures, and its IHC nuclei by class as a DeepZoom overlay on the slide's own tile grid
  (``/api/slides/<slide_id>/nuclei.dzi``, ``.../nuclei_files/<level>/<col>_<row>.png``);
- ``/static/...``: the page code and OpenSeadragon, from the package;
- any other path: a file of the output folder with a picture, table or page suffix
  (``report.html`` and its pictures), never a folder listing, a hidden file, a slide file or a
  file outside the folder.

Each path segment is percent-decoded once; a segment that decodes to ``.``, ``..`` or holds a
slash, backslash or NUL is refused before any file is looked at.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .. import __version__
from ..errors import InputError, UserError
from .cache import Memo
from .catalog import Catalog, read_catalog
from .deepzoom import TileNotFoundError
from .ihc import output_file
from .nuclei import Nuclei, read_nuclei, tile_png
from .pages import index_page, viewer_page
from .slidedata import NotViewableError, SlideData, load_slide

log = logging.getLogger(__name__)

TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".csv": "text/csv; charset=utf-8", ".json": "application/json", ".geojson": "application/geo+json",
         ".txt": "text/plain; charset=utf-8", ".dzi": "application/xml", ".md": "text/plain; charset=utf-8"}
FOLDER_TYPES = (".html", ".png", ".jpg", ".jpeg", ".csv", ".json", ".geojson")   # what an output folder serves
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
NUCLEI_CACHE = 512 * 2**20   # bytes of nuclei tables kept in memory (a million nuclei: 13 MB)


class NotFoundError(LookupError):
    """Nothing to serve at this path (also every refused path: a refusal says no more)."""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _json(obj) -> Response:
    return Response(200, json.dumps(obj, separators=(",", ":")).encode(), TYPES[".json"],
                    {"Cache-Control": "no-cache"})


def _page(text: str) -> Response:
    return Response(200, text.encode(), TYPES[".html"], {"Cache-Control": "no-cache",
                                                         "Content-Security-Policy": PAGE_POLICY})


def path_segments(raw: str) -> list[str]:
    """The decoded segments of a request path; :class:`NotFoundError` for any that could step
    out of where it is looked up (``..``, an encoded slash) or is not UTF-8."""
    path = urlsplit(raw).path
    if not path.startswith("/"):
        raise NotFoundError(raw)
    segments = []
    for part in path[1:].split("/"):
        try:
            text = unquote(part, errors="strict")
        except UnicodeDecodeError:
            raise NotFoundError(raw) from None
        if text in (".", "..") or any(c in text for c in "/\\\x00"):
            raise NotFoundError(raw)
        segments.append(text)
    return segments


def _static_files() -> dict[str, resources.abc.Traversable]:
    """The package's static files by relative name (the only names ``/static/`` answers to)."""
    files, todo = {}, [("", resources.files("pathology.view") / "static")]
    while todo:
        prefix, folder = todo.pop()
        for item in folder.iterdir():
            if item.is_dir():
                todo.append((f"{prefix}{item.name}/", item))
            elif item.name.rsplit(".", 1)[-1] in ("js", "css", "png", "txt", "md"):
                files[prefix + item.name] = item
    return files


class Viewer:
    """The application behind the server: the folder's catalog, open slides and caches."""

    def __init__(self, root: Path, slides_dir: Path | None = None, cache_mb: float = 256, open_slides: int = 8):
        self.root = Path(root).resolve()
        self.catalog: Catalog = read_catalog(self.root)
        self.slides_dir = slides_dir
        self.tiles: Memo[bytes] = Memo(cache_mb * 2**20, len)
        self.pictures: Memo[bytes] = Memo(64 * 2**20, len)
        self.loaded: Memo[SlideData] = Memo(open_slides)
        self.nuclei: Memo[Nuclei] = Memo(NUCLEI_CACHE, lambda n: n.nbytes)
        self.static = _static_files()

    # -- routing --------------------------------------------------------------------------------------------
    def respond(self, raw_path: str) -> Response:
        """The response to a GET of ``raw_path`` (as sent, percent-encoded)."""
        try:
            return self._route(path_segments(raw_path), parse_qs(urlsplit(raw_path).query))
        except (NotFoundError, TileNotFoundError):
            return Response(404, b"not found\n")
        except (NotViewableError, UserError) as exc:
            return Response(404, f"{exc}\n".encode())

    def _route(self, seg: list[str], query: dict[str, list[str]]) -> Response:
        match seg:
            case [""]:
                page = (query.get("page") or ["1"])[0]
                page = int(page) if page.isdigit() else 1
                return _page(index_page(self.catalog, (query.get("q") or [""])[0], page,
                                        (self.root / "report.html").is_file()))
            case ["view", sid] if sid in self.catalog.entries:
                return _page(viewer_page(sid))
            case ["slides", name] if name.endswith(".dzi"):
                return Response(200, self._zoom(name[:-4]).dzi().encode(), TYPES[".dzi"], {"Cache-Control": "no-cache"})
            case ["slides", files, level, tile] if files.endswith("_files") and tile.endswith(".jpeg"):
                return self._tile(files[:-len("_files")], level, tile[:-len(".jpeg")])
            case ["api", "slides", sid, "nuclei.dzi"]:
                self._nuclei(sid)          # read now: a table it cannot use fails here, before any tile
                return Response(200, self._zoom(sid).dzi("png").encode(), TYPES[".dzi"], {"Cache-Control": "no-cache"})
            case ["api", "slides", sid, "nuclei_files", level, tile] if tile.endswith(".png"):
                return self._nuclei_tile(sid, level, tile[:-len(".png")])
            case ["favicon.ico"]:       # asked for by every page the browser opens here (report.html too)
                return Response(204, b"", "image/x-icon", {"Cache-Control": "max-age=86400"})
            case ["api", "viewer"]:
                return _json({"app": "pathology view", "version": __version__, "slides": len(self.catalog.entries)})
            case ["api", "slides", sid]:
                return _json(self.slide(sid).info(f"/api/slides/{_quote(sid)}"))
            case ["api", "slides", sid, "layers", index, name] if name.endswith(".png"):
                return self._layer(sid, index, name[:-len(".png")])
            case ["api", "slides", sid, "shapes", name] if name.endswith(".geojson"):
                return self._shapes(sid, name)
            case ["static", *rest] if "/".join(rest) in self.static:
                name = "/".join(rest)
                return Response(200, self.static[name].read_bytes(), TYPES["." + name.rsplit(".", 1)[-1]],
                                {"Cache-Control": "max-age=3600"})
            case _:
                return self._folder_file(seg)

    # -- slides ---------------------------------------------------------------------------------------------
    def slide(self, slide_id: str) -> SlideData:
        """The slide's data, gathered once (the most recently viewed slides stay open)."""
        if slide_id not in self.catalog.entries:
            raise NotFoundError(slide_id)
        return self.loaded.get(slide_id, lambda: load_slide(self.catalog, slide_id, self.slides_dir))

    def _zoom(self, slide_id: str):
        zoom = self.slide(slide_id).zoom
        if zoom is None:
            raise NotViewableError(f"{slide_id}: neither the slide nor a thumbnail is available")
        return zoom

    def _tile(self, slide_id: str, level: str, address: str) -> Response:
        key = (slide_id, *_tile_address(level, address))
        zoom = self._zoom(slide_id)
        body = self.tiles.get(key, lambda: zoom.jpeg(*key[1:]))
        return Response(200, body, "image/jpeg", {"Cache-Control": "max-age=3600"})

    def _nuclei(self, slide_id: str) -> Nuclei:
        """The slide's nuclei, read from its cells table once (the most recently viewed stay in memory)."""
        data = self.slide(slide_id)
        if data.cells is None:
            raise NotFoundError(slide_id)
        return self.nuclei.get(slide_id, lambda: read_nuclei(data.cells, data.mpp, data.dimensions))

    def _nuclei_tile(self, slide_id: str, level: str, address: str) -> Response:
        z, col, row = _tile_address(level, address)
        region = self._zoom(slide_id).region(z, col, row)
        nuclei = self._nuclei(slide_id)
        body = self.tiles.get((slide_id, "nuclei", z, col, row), lambda: tile_png(nuclei, region))
        return Response(200, body, "image/png", {"Cache-Control": "max-age=3600"})

    def _layer(self, slide_id: str, index: str, scale: str) -> Response:
        data = self.slide(slide_id)
        layer = data.layers[_index(index, "", len(data.layers))]
        if scale not in layer.scales:
            raise NotFoundError(scale)
        body = self.pictures.get((slide_id, index, scale), lambda: layer.picture(data.dimensions, scale))
        return Response(200, body, "image/png", {"Cache-Control": "no-cache"})

    def _shapes(self, slide_id: str, name: str) -> Response:
        data = self.slide(slide_id)
        path = output_file(self.root, data.record or {}, data.shapes[_index(name, ".geojson", len(data.shapes))])
        if path is None:
            raise NotFoundError(slide_id)
        return Response(200, path.read_bytes(), TYPES[".geojson"], {"Cache-Control": "no-cache"})

    # -- the output folder's own files (report.html and its pictures) ----------------------------------------
    def _folder_file(self, seg: list[str]) -> Response:
        if not seg or any(not s or s.startswith(".") for s in seg):
            raise NotFoundError("/".join(seg))
        try:
            path = self.root.joinpath(*seg).resolve(strict=True)
        except OSError:                 # missing, a file taken for a folder, a name too long, no permission
            raise NotFoundError("/".join(seg)) from None
        if not path.is_relative_to(self.root) or not path.is_file() or path.suffix.lower() not in FOLDER_TYPES:
            raise NotFoundError("/".join(seg))
        return Response(200, path.read_bytes(), TYPES[path.suffix.lower()], {"Cache-Control": "no-cache"})


def _quote(text: str) -> str:
    return quote(text, safe="")


def _tile_address(level: str, address: str) -> tuple[int, int, int]:
    """(level, col, row) of a tile path's ``<level>/<col>_<row>``; :class:`NotFoundError` if not that."""
    numbers = [level, *address.split("_")]
    if len(numbers) != 3 or not all(n.isascii() and n.isdigit() for n in numbers):
        raise NotFoundError(address)
    return int(numbers[0]), int(numbers[1]), int(numbers[2])


def _index(name: str, suffix: str, count: int) -> int:
    """``3`` from ``"3.png"`` when below ``count``; :class:`NotFoundError` otherwise."""
    stem = name[:len(name) - len(suffix)]
    if not (stem.isascii() and stem.isdigit()) or int(stem) >= count:
        raise NotFoundError(name)
    return int(stem)


class Handler(BaseHTTPRequestHandler):
    """GET and HEAD only: every other method is refused (501) by the base class."""

    protocol_version = "HTTP/1.1"     # keep-alive: a viewer fetches hundreds of tiles per minute
    timeout = 120                      # an idle keep-alive connection's thread ends after 2 minutes
    disable_nagle_algorithm = True     # headers and body are two writes: without this a keep-alive
                                       # client waits ~40 ms for the delayed ACK on every response
    server_version = f"pathology-view/{__version__}"
    sys_version = ""
    server: ViewHTTPServer

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        if not self.server.host_allowed(self.headers.get("Host", "")):
            response = Response(403, b"this viewer answers on its own address only\n")
        else:
            try:
                response = self.server.viewer.respond(self.path)
            except Exception:
                log.exception("%s: error answering %s", self.server.viewer.root, self.path)
                response = Response(500, b"internal error (see the viewer's log)\n")
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # the browser moved on (a tile no longer in view)
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class ViewHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], viewer: Viewer):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.viewer = viewer
        self.loopback = is_loopback(address[0])
        super().__init__(address, Handler)

    def host_allowed(self, host: str) -> bool:
        """On a loopback address, only requests naming a loopback host (a web page elsewhere
        that re-points its own name at 127.0.0.1 cannot read the slides: DNS rebinding)."""
        if not self.loopback:
            return True
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.find("]")]
        return name.lower() in LOOPBACK_NAMES


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ViewServer:
    """``pathology view``'s server on ``host:port`` (port 0: a free one), serving ``root``.

    ``serve_forever()`` blocks (the command); ``start()`` serves from a thread (tests,
    benchmarks) until ``close()``.
    """

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
                 slides_dir: Path | None = None, cache_mb: float = 256):
        self.viewer = Viewer(Path(root), slides_dir, cache_mb)
        try:
            self.httpd = ViewHTTPServer((host, port), self.viewer)
        except OSError as exc:
            raise InputError(f"cannot serve on {host}:{port}: {exc.strerror or exc}"
                             + ("; pass another --port" if port else "")) from None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> ViewServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="pathology-view", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()

    def __enter__(self) -> ViewServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
