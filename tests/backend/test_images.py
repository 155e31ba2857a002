"""Image references, fetching (allowlist, auth, redirects), safe decoding, Redis cache."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import redis

from squeezesam.backend.images import Fetcher, ImageCache, ImageError, decode, resolve
from squeezesam.models.predictor import letterbox

from .conftest import LEGACY_TOKEN, PAT, upload_ref


def test_resolve_rules(settings, fake_ls):
    assert resolve("/data/upload/1/a-b.jpg", settings) == (
        f"{fake_ls.url}/data/upload/1/a-b.jpg",
        True,
    )
    url, auth = resolve("/data/local-files/?d=pets/a.jpg", settings)
    assert url == f"{fake_ls.url}/data/local-files/?d=pets/a.jpg" and auth
    assert resolve(f"{fake_ls.url}/tasks/1/presign/?fileuri=x", settings)[1] is True
    other = f"http://{fake_ls.other_host}/public/a.jpg"
    assert resolve(other, settings) == (other, False)  # allowlisted: no credentials
    with pytest.raises(ImageError, match="not allowed") as err:
        resolve("https://evil.example/a.jpg", settings)
    assert err.value.status == 403
    with pytest.raises(ImageError, match="scheme"):
        resolve("file:///etc/passwd", settings)
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL"):
        resolve("/data/upload/1/a.jpg", replace(settings, label_studio_url=""))


@pytest.mark.parametrize("key", [LEGACY_TOKEN, PAT])
def test_fetch_upload_local_files_presign_with_either_token(key, settings, fake_ls, sample_images):
    fetcher = Fetcher(replace(settings, label_studio_api_key=key))
    name = sample_images[0].name
    expected = sample_images[0].read_bytes()
    assert fetcher.fetch(upload_ref(sample_images[0])) == expected
    assert fetcher.fetch(f"/data/local-files/?d=some/dir/{name}") == expected
    presign = f"/tasks/1/presign/?fileuri={fake_ls.url}/data/upload/1/0badf00d-{name}"
    assert fetcher.fetch(presign) == expected
    sent = fake_ls.requests[-1][1]
    assert sent.startswith("Token " if key == LEGACY_TOKEN else "Bearer access-")


def test_no_credentials_to_other_hosts(settings, fake_ls, sample_images):
    fetcher = Fetcher(settings)
    url = f"http://{fake_ls.other_host}/public/{sample_images[0].name}"
    assert fetcher.fetch(url) == sample_images[0].read_bytes()
    assert fake_ls.requests[-1] == (f"/public/{sample_images[0].name}", "")
    # a presign redirect to an allowlisted host drops the credentials too
    fetcher.fetch(f"/tasks/1/presign/?fileuri={url}")
    assert fake_ls.requests[-1][1] == ""


def test_wrong_token_and_unreachable_host(settings, fake_ls, sample_images):
    with pytest.raises(ImageError, match="HTTP 401"):
        Fetcher(replace(settings, label_studio_api_key="wrong")).fetch(upload_ref(sample_images[0]))
    with pytest.raises(ImageError, match="refused LABEL_STUDIO_API_KEY"):
        Fetcher(replace(settings, label_studio_api_key="a.b.c")).fetch(upload_ref(sample_images[0]))
    closed = replace(settings, image_allowed_hosts=("127.0.0.1:9",), image_fetch_timeout=2)
    with pytest.raises(ImageError, match="unreachable") as err:
        Fetcher(closed).fetch("http://127.0.0.1:9/x.jpg")
    assert err.value.status == 502


def test_download_size_limit(settings, sample_images):
    small = replace(settings, image_max_bytes=1000)
    with pytest.raises(ImageError, match="larger than 1000 bytes") as err:
        Fetcher(small).fetch(upload_ref(sample_images[0]))
    assert err.value.status == 413


def test_decode_refuses_bombs_corrupt_and_non_images(fake_ls, sample_images):
    with pytest.raises(ImageError, match="above the limit"):
        decode(fake_ls.special["/bomb.png"], 20_000_000)
    with pytest.raises(ImageError, match="corrupt"):
        decode(fake_ls.special["/corrupt.jpg"], 20_000_000)
    with pytest.raises(ImageError, match="not an image"):
        decode(b"hello", 20_000_000)
    rgb = decode(sample_images[0].read_bytes(), 20_000_000)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


def test_cache_round_trip_and_lru_bound(settings, sample_images):
    connection = redis.Redis.from_url(settings.redis_url)
    cache = ImageCache(connection, replace(settings, image_cache_items=2))
    prepared = letterbox(decode(sample_images[0].read_bytes(), 10**9))
    keys = [ImageCache.key(f"http://x/{i}.jpg", 512) for i in range(3)]
    for key in keys:
        cache.put(key, prepared)
    fresh = ImageCache(connection, settings)  # another worker: no local copy
    assert fresh.get(keys[0]) is None  # evicted, least recently used
    got = fresh.get(keys[2])
    assert np.array_equal(got.pixels, prepared.pixels)
    assert got.original_size == prepared.original_size and got.scale == prepared.scale
    assert got.valid_size == prepared.valid_size
    assert 0 < connection.ttl(keys[2]) <= settings.image_cache_ttl
