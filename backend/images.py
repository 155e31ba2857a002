"""Task images: resolve the reference, fetch it safely, decode it once, cache it in Redis.

* Where from: relative references (`/data/upload/...`, `/data/local-files/?d=...`,
  `/tasks/<id>/presign/?fileuri=...`) and absolute URLs at exactly Label Studio's scheme,
  host and port (LABEL_STUDIO_URL, the default port made explicit) are fetched with its
  credentials; other http(s) URLs only when IMAGE_ALLOWED_HOSTS lists their host and port
  (a bare host: its default port), and then without credentials; another port or scheme
  of Label Studio's host is such an other URL. Redirects are followed by hand, each hop
  checked the same way (a presign URL may redirect to a bucket, which must then be
  allowlisted), and credentials never leave Label Studio's origin.
* Messages and logs show an image reference without its query string (`safe_ref`):
  presigned URLs carry their signature there.
* Decoding: the header is read first and anything above IMAGE_MAX_PIXELS is refused
  before a single pixel is decoded; EXIF orientation is applied (browsers do, so
  `original_width/height` from the editor are the rotated size).
* Cache: the letterboxed `PreparedImage` goes into Redis, keyed by URL and working size,
  with a TTL and an LRU bound, so each next click on a task on any worker skips
  download and decode. A tiny per-process copy of the last images saves the Redis read.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections import OrderedDict
from urllib.parse import urljoin, urlsplit

import numpy as np
import redis
import requests
from PIL import Image, ImageOps, UnidentifiedImageError

from squeezesam.backend.origins import DEFAULT_PORTS, origin_of
from squeezesam.backend.settings import Settings
from squeezesam.models.predictor import PreparedImage

MAX_REDIRECTS = 3
# formats decoded: what browsers (so the Label Studio editor) display; JPEG covers MPO
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "AVIF")
TOKEN_REFRESH_PATH = "/api/token/refresh/"
ACCESS_TOKEN_LIFETIME = 240.0  # LS access tokens live 300 s; renew with a margin


class ImageError(Exception):
    """The image cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


# --- where from ----------------------------------------------------------------------


def resolve(ref: str, settings: Settings) -> tuple[str, bool]:
    """(absolute URL, send Label Studio credentials?) or ImageError if not allowed."""
    parts = urlsplit(ref)
    if not parts.scheme and not parts.netloc:
        if not settings.label_studio_url:
            raise ImageError(
                f"image {_safe(ref)!r} is a Label Studio path but LABEL_STUDIO_URL is not set",
                422,
            )
        base = settings.label_studio_url.rstrip("/") + "/"
        url = _check_absolute(urljoin(base, ref.lstrip("/")), settings)
        return url, _is_label_studio(url, settings)
    url = _check_absolute(ref, settings)
    return url, _is_label_studio(url, settings)


def _is_label_studio(url: str, settings: Settings) -> bool:
    """Exactly Label Studio's scheme, host and port (the default port made explicit):
    the only URLs its credentials are sent to."""
    ls = settings.label_studio_origin
    return ls is not None and origin_of(url) == ls


def _allowed_by_list(url: str, settings: Settings) -> bool:
    """Listed in IMAGE_ALLOWED_HOSTS: `host:port`, or `host` for the scheme's default port."""
    origin = origin_of(url)
    if origin is None:
        return False
    scheme, host, port = origin
    for entry in settings.image_allowed_hosts:
        listed = urlsplit(f"//{entry}")
        try:
            listed_port = listed.port if listed.port is not None else DEFAULT_PORTS[scheme]
        except ValueError:  # a bad port in the entry: it allows nothing
            continue
        if (listed.hostname or "").lower() == host and listed_port == port:
            return True
    return False


def _check_absolute(url: str, settings: Settings) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ImageError(f"image URL scheme {parts.scheme!r} is not allowed (http/https, "
                         "or s3/gs/azure-blob through Label Studio's presign)")  # fmt: skip
    # userinfo, backslashes and the like are where URL parsers disagree about the host
    # (`http://10.0.0.1\@ls-host/` is ls-host to urlsplit, 10.0.0.1 to urllib3): refused
    if not _plain_netloc(url, parts.netloc):
        raise ImageError(f"image URL {_safe(url)!r} has an ambiguous host part", 403)
    if not (_is_label_studio(url, settings) or _allowed_by_list(url, settings)):
        origin = origin_of(url)
        where = f"{origin[0]}://{origin[1]}:{origin[2]}" if origin else parts.netloc.lower()
        raise ImageError(
            f"image host {where!r} is not allowed: only Label Studio (exactly the scheme, "
            "host and port of LABEL_STUDIO_URL) and IMAGE_ALLOWED_HOSTS are fetched from",
            403,
        )
    return url


def _plain_netloc(url: str, netloc: str) -> bool:
    """host[:port] only, and urllib3 (which requests connects with) reads the same host."""
    if not netloc or any(c in netloc for c in "@\\%") or not netloc.isprintable():
        return False
    if any(c.isspace() for c in netloc):
        return False
    try:
        from urllib3.util import parse_url

        theirs = parse_url(url)
        ours = urlsplit(url)
        return (theirs.host or "").lower().strip("[]") == (ours.hostname or "") and (
            theirs.port == ours.port
        )
    except ValueError:  # includes urllib3's LocationParseError and a bad port
        return False


# --- credentials ---------------------------------------------------------------------


class LabelStudioAuth:
    """The Authorization header for Label Studio, from LABEL_STUDIO_API_KEY.

    A personal access token is a JWT refresh token (three dot-separated parts): it is
    exchanged at /api/token/refresh/ for an access token sent as `Bearer`, renewed
    before its 300 s run out. Anything else is a legacy token sent as `Token <key>`.
    """

    def __init__(self, settings: Settings, session: requests.Session) -> None:
        self.settings = settings
        self.session = session
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    @property
    def is_pat(self) -> bool:
        return self.settings.label_studio_api_key.count(".") == 2

    def header(self, force_refresh: bool = False) -> dict[str, str]:
        key = self.settings.label_studio_api_key
        if not key:
            return {}
        if not self.is_pat:
            return {"Authorization": f"Token {key}"}
        with self._lock:
            if force_refresh or self._access is None or time.monotonic() > self._expires:
                self._access = self._refresh(key)
                self._expires = time.monotonic() + ACCESS_TOKEN_LIFETIME
            return {"Authorization": f"Bearer {self._access}"}

    def _refresh(self, key: str) -> str:
        url = self.settings.label_studio_url.rstrip("/") + TOKEN_REFRESH_PATH
        try:
            response = self.session.post(
                url, json={"refresh": key}, timeout=self.settings.image_fetch_timeout
            )
        except requests.RequestException as exc:
            raise ImageError(
                f"Label Studio token refresh failed: {type(exc).__name__}", 502
            ) from None
        if response.status_code != 200 or "access" not in _json(response):
            # never echo the token; the status says enough
            raise ImageError(
                f"Label Studio refused LABEL_STUDIO_API_KEY (token refresh answered "
                f"{response.status_code})",
                502,
            )
        return _json(response)["access"]


def _json(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# --- fetch -----------------------------------------------------------------------------


class Fetcher:
    """Downloads image bytes, per process (keeps one connection pool and one token)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies/netrc from the environment
        self.auth = LabelStudioAuth(settings, self.session)

    def fetch(self, ref: str) -> bytes:
        url, with_auth = resolve(ref, self.settings)
        for _ in range(MAX_REDIRECTS + 1):
            response = self._get(url, with_auth)
            if response.status_code == 401 and with_auth and self.auth.is_pat:
                response.close()  # the access token may have been revoked: renew once
                response = self._get(url, with_auth, force_refresh=True)
            if response.is_redirect:
                target = urljoin(url, response.headers.get("Location", ""))
                response.close()
                url = _check_absolute(target, self.settings)
                # credentials only ever go to Label Studio's own scheme, host and port
                with_auth = with_auth and _is_label_studio(url, self.settings)
                continue
            return self._read(response, url)
        raise ImageError(f"image {_safe(ref)}: more than {MAX_REDIRECTS} redirects", 502)

    def _get(self, url: str, with_auth: bool, force_refresh: bool = False) -> requests.Response:
        headers = self.auth.header(force_refresh) if with_auth else {}
        try:
            return self.session.get(
                url,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=self.settings.image_fetch_timeout,
            )
        except requests.RequestException as exc:
            raise ImageError(
                f"image {_safe(url)} is unreachable: {type(exc).__name__}", 502
            ) from None

    def _read(self, response: requests.Response, url: str) -> bytes:
        with response:
            if response.status_code != 200:
                status = 404 if response.status_code == 404 else 502
                raise ImageError(f"image {_safe(url)} answered HTTP {response.status_code}", status)
            limit = self.settings.image_max_bytes
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise ImageError(f"image {_safe(url)} is larger than {limit} bytes", 413)
            data = bytearray()
            for chunk in response.iter_content(1 << 16):
                data += chunk
                if len(data) > limit:
                    raise ImageError(f"image {_safe(url)} is larger than {limit} bytes", 413)
            return bytes(data)


def _safe(url: str) -> str:
    """A URL for messages and logs: without query string and fragment (presigned URLs
    carry their signature there; `/data/local-files/?d=` its path) and without userinfo."""
    return safe_ref(url)


def safe_ref(ref: str) -> str:
    """An image reference fit for a message or a log line: scheme, host, port and path
    only; a query string is replaced by `?...`, never shown."""
    try:
        parts = urlsplit(str(ref))
    except ValueError:
        return "<unparsable image reference>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    shown = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else parts.path
    return shown + ("?..." if parts.query else "")


# --- decode ------------------------------------------------------------------------------


def _formats() -> list[str]:
    Image.init()  # AVIF only where this Pillow build has it
    return [f for f in IMAGE_FORMATS if f in Image.OPEN]


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes -> uint8 HxWx3 RGB, refusing non-images, corrupt files and pixel bombs."""
    try:
        # reads the header only; only formats a browser shows (what the annotator sees),
        # never PIL's exotic decoders (EPS would run Ghostscript on the bytes)
        image = Image.open(io.BytesIO(data), formats=_formats())
    except UnidentifiedImageError:
        raise ImageError(
            f"the file is not an image (unknown format; {', '.join(IMAGE_FORMATS)} are read)",
            422,
        ) from None
    except Image.DecompressionBombError as exc:  # PIL's own check, above 2x 89 Mpx
        raise ImageError(f"image is too large: {exc} (IMAGE_MAX_PIXELS)", 413) from None
    except Exception as exc:
        raise ImageError(f"the image header is corrupt: {exc}", 422) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} (IMAGE_MAX_PIXELS)",
            413,
        )
    try:
        # PIL's own bomb check is ours now (max_pixels); it would warn at 89 Mpx
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16"):  # 16-bit grey: keep the high byte, as browsers do
            grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
            rgb = np.repeat(grey[:, :, None], 3, axis=2)
        else:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise ImageError(f"the image is corrupt or truncated: {exc}", 422) from None
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        raise ImageError("the image is empty", 422)
    return rgb


# --- cache ---------------------------------------------------------------------------------

CACHE_PREFIX = "squeezesam:img:"
CACHE_INDEX = "squeezesam:img-lru"  # sorted set: key -> last use, for the LRU bound
LOCAL_ITEMS = 4  # per-process copies (a worker mostly sees the task it just saw)


class ImageCache:
    """PreparedImage by (URL, working size), shared by all workers through Redis."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.redis = connection
        self.settings = settings
        self._local: OrderedDict[str, tuple[float, PreparedImage]] = OrderedDict()

    @staticmethod
    def key(url: str, working_size: int) -> str:
        digest = hashlib.sha256(f"{working_size}|{url}".encode()).hexdigest()[:32]
        return CACHE_PREFIX + digest

    def get(self, key: str) -> PreparedImage | None:
        now = time.time()
        local = self._local.get(key)
        if local is not None and now - local[0] < self.settings.image_cache_ttl:
            self._local.move_to_end(key)
            self._touch(key, now)
            return local[1]
        raw = self.redis.hgetall(key)
        if not raw:
            return None
        meta = json.loads(raw[b"meta"])
        pixels = np.frombuffer(raw[b"pixels"], dtype=np.uint8).reshape(meta["shape"])
        prepared = PreparedImage(
            pixels=pixels,
            original_size=tuple(meta["original_size"]),
            scale=float(meta["scale"]),
            valid_size=tuple(meta["valid_size"]),
        )
        self._remember(key, prepared, now)
        self._touch(key, now)
        return prepared

    def put(self, key: str, prepared: PreparedImage) -> None:
        now = time.time()
        meta = {
            "shape": list(prepared.pixels.shape),
            "original_size": list(prepared.original_size),
            "scale": prepared.scale,
            "valid_size": list(prepared.valid_size),
        }
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"meta": json.dumps(meta), "pixels": prepared.pixels.tobytes()})
            pipe.expire(key, self.settings.image_cache_ttl)
            pipe.zadd(CACHE_INDEX, {key: now})
            pipe.execute()
        self._remember(key, prepared, now)
        self._evict()

    def _touch(self, key: str, now: float) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.expire(key, self.settings.image_cache_ttl)
            pipe.zadd(CACHE_INDEX, {key: now})
            pipe.execute()

    def _remember(self, key: str, prepared: PreparedImage, now: float) -> None:
        self._local[key] = (now, prepared)
        self._local.move_to_end(key)
        while len(self._local) > LOCAL_ITEMS:
            self._local.popitem(last=False)

    def _evict(self) -> None:
        """Keep at most IMAGE_CACHE_ITEMS images: drop the least recently used."""
        excess = self.redis.zcard(CACHE_INDEX) - self.settings.image_cache_items
        if excess <= 0:
            return
        oldest = self.redis.zpopmin(CACHE_INDEX, excess)
        if oldest:
            self.redis.delete(*[member for member, _ in oldest])
