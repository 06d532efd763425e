"""R2ContentStore against a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from botocore.config import Config

from studio.storage.base import object_key, sha256_hex
from studio.storage.errors import StorageError, StorageRejected, StorageUnavailable
from studio.storage.r2 import R2ContentStore, build_s3_client
from studio.storage.settings import MAX_PRESIGNED_TTL_SECONDS, StorageSettings
from tests.storage.conftest import r2_settings

PNG = b"\x89PNG\r\n\x1a\n" + b"placeholder image bytes" * 50


def _record_requests(client, operation: str) -> list[dict[str, str]]:
    """Capture the headers of every request botocore is about to put on the wire."""
    seen: list[dict[str, str]] = []

    def on_send(request, **_: object) -> None:
        seen.append(
            {
                k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                for k, v in request.headers.items()
            }
        )

    client.meta.events.register(f"before-send.s3.{operation}", on_send)
    return seen


def test_upload_records_size_type_checksum_and_serves_public_url(r2_store, s3_server, s3_bucket):
    key = object_key("av1", "b1", "p1")
    stored = r2_store.put("p1", key, PNG, "image/png", "capa1")

    assert stored.backend == "r2"
    assert stored.size == len(PNG)
    assert stored.checksum == sha256_hex(PNG)
    assert stored.url == f"{s3_server.public_url(s3_bucket)}/{key}"
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(PNG)
    assert head["Metadata"]["sha256"] == sha256_hex(PNG)
    response = httpx.get(stored.url)
    assert response.status_code == 200
    assert response.content == PNG


@pytest.mark.parametrize("tier", ["capa2", "capa3"])
def test_premium_tiers_go_to_the_private_bucket_with_no_lasting_link(
    r2_store, s3_server, s3_bucket, s3_private_bucket, tier
):
    key = object_key("av1", "b1", f"p-{tier}")
    stored = r2_store.put(f"p-{tier}", key, PNG, "image/png", tier)

    assert stored.url == ""  # nothing to keep: links are minted on demand
    head = s3_server.client().head_object(Bucket=s3_private_bucket, Key=key)
    assert head["Metadata"]["sha256"] == sha256_hex(PNG)
    with pytest.raises(Exception, match=r"404|Not Found"):
        s3_server.client().head_object(Bucket=s3_bucket, Key=key)
    assert httpx.get(f"{s3_server.endpoint_url}/{s3_private_bucket}/{key}").status_code == 403
    link = r2_store.presigned_url(key, tier)
    query = parse_qs(urlsplit(link).query)
    assert query["X-Amz-Expires"] == ["3600"]  # PRESIGNED_URL_TTL_SECONDS' default
    response = httpx.get(link)
    assert response.status_code == 200
    assert response.content == PNG


def test_presigned_ttl_is_configurable_and_capped_at_seven_days(
    s3_server, s3_bucket, s3_private_bucket
):
    short = R2ContentStore(
        r2_settings(s3_server, s3_bucket, s3_private_bucket, presigned_url_ttl_seconds=600)
    )
    long = R2ContentStore(
        r2_settings(s3_server, s3_bucket, s3_private_bucket, presigned_url_ttl_seconds=30 * 86400)
    )
    short_q = parse_qs(urlsplit(short.presigned_url("k", "capa2")).query)
    long_q = parse_qs(urlsplit(long.presigned_url("k", "capa3")).query)
    assert short_q["X-Amz-Expires"] == ["600"]
    assert long_q["X-Amz-Expires"] == [str(MAX_PRESIGNED_TTL_SECONDS)]


def test_ttl_variables_and_their_aliases(monkeypatch):
    """PRESIGNED_URL_TTL_SECONDS, R2_PRESIGNED_TTL_SECONDS (alias); R2_PRIVATE_BUCKET_NAME,
    R2_STAGING_BUCKET (alias)."""
    for name in ("PRESIGNED_URL_TTL_SECONDS", "R2_PRESIGNED_TTL_SECONDS",
                 "R2_PRIVATE_BUCKET_NAME", "R2_STAGING_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    assert StorageSettings(_env_file=None).presigned_url_ttl_seconds == 3600
    monkeypatch.setenv("R2_PRESIGNED_TTL_SECONDS", "120")
    monkeypatch.setenv("R2_STAGING_BUCKET", "old-name")
    settings = StorageSettings(_env_file=None)
    assert (settings.presigned_url_ttl_seconds, settings.r2_private_bucket_name) == (
        120,
        "old-name",
    )
    monkeypatch.setenv("PRESIGNED_URL_TTL_SECONDS", "60")
    monkeypatch.setenv("R2_PRIVATE_BUCKET_NAME", "new-name")
    settings = StorageSettings(_env_file=None)
    assert (settings.presigned_url_ttl_seconds, settings.r2_private_bucket_name) == (
        60,
        "new-name",
    )


def test_public_url_without_private_bucket_refuses_premium_uploads(s3_server, s3_bucket):
    store = R2ContentStore(r2_settings(s3_server, s3_bucket))
    with pytest.raises(StorageRejected, match="R2_PRIVATE_BUCKET_NAME"):
        store.put("p-x", object_key("av1", "b1", "p-x"), PNG, "image/png", "capa2")
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_bucket)


def test_without_public_domain_one_bucket_holds_every_tier(s3_server, s3_private_bucket):
    store = R2ContentStore(r2_settings(s3_server, s3_private_bucket))
    for tier in ("capa1", "capa2"):
        key = object_key("av1", "b1", f"p-one-{tier}")
        stored = store.put(f"p-one-{tier}", key, PNG, "image/png", tier)  # type: ignore[arg-type]
        assert stored.url == ""
        assert httpx.get(f"{s3_server.endpoint_url}/{s3_private_bucket}/{key}").status_code == 403
        assert httpx.get(store.presigned_url(key, tier)).content == PNG  # type: ignore[arg-type]


def test_keys_are_keyed_by_a_secret_not_derivable_from_the_piece_id():
    plain = object_key("av1", "b1", "p1", secret=b"one")
    assert plain.startswith("avatars/av1/batches/b1/") and plain.endswith(".png")
    assert "p1" not in plain.rsplit("/", 1)[1]
    assert plain == object_key("av1", "b1", "p1", secret=b"one")  # stable: retries agree
    assert plain != object_key("av1", "b1", "p1", secret=b"two")
    assert plain != object_key("av1", "b1", "p2", secret=b"one")


def test_no_streaming_checksum_headers_on_the_wire(r2_store):
    sent = _record_requests(r2_store.client, "PutObject")
    r2_store.put("p-wire", object_key("av1", "b1", "p-wire"), PNG, "image/png", "capa1")

    assert len(sent) == 1
    headers = sent[0]
    assert not [h for h in headers if h.startswith("x-amz-checksum-")]
    assert "x-amz-sdk-checksum-algorithm" not in headers
    assert "x-amz-trailer" not in headers
    assert "x-amz-decoded-content-length" not in headers
    assert "aws-chunked" not in headers.get("content-encoding", "")
    assert not headers.get("x-amz-content-sha256", "").startswith("STREAMING-")
    assert headers["content-length"] == str(len(PNG))


def test_default_boto3_would_send_checksums_so_the_probe_is_meaningful(s3_server, s3_bucket):
    """Control: an untuned client does add checksum headers; the probe above can see them."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name="auto",
        config=Config(s3={"addressing_style": "path"}),
    )
    sent = _record_requests(client, "PutObject")
    client.put_object(Bucket=s3_bucket, Key="control", Body=PNG)
    assert [h for h in sent[0] if h.startswith("x-amz-checksum-")]


def test_reupload_of_same_bytes_is_a_noop(r2_store):
    key = object_key("av1", "b1", "p-twice")
    puts = _record_requests(r2_store.client, "PutObject")
    first = r2_store.put("p-twice", key, PNG, "image/png", "capa1")
    second = r2_store.put("p-twice", key, PNG, "image/png", "capa1")

    assert len(puts) == 1
    assert first.checksum == second.checksum
    assert first.key == second.key


def test_reupload_with_different_bytes_replaces_the_object(r2_store, s3_server, s3_bucket):
    key = object_key("av1", "b1", "p-changed")
    puts = _record_requests(r2_store.client, "PutObject")
    r2_store.put("p-changed", key, PNG, "image/png", "capa1")
    changed = PNG + b"v2"
    stored = r2_store.put("p-changed", key, changed, "image/png", "capa1")

    assert len(puts) == 2
    assert stored.checksum == sha256_hex(changed)
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert body == changed


def test_outage_raises_storage_unavailable_without_secrets(r2_store, s3_server):
    s3_server.stop()
    try:
        with pytest.raises(StorageUnavailable) as caught:
            r2_store.put("p-down", object_key("av1", "b1", "p-down"), PNG, "image/png", "capa1")
    finally:
        s3_server.start()
    assert isinstance(caught.value, StorageError)
    assert s3_server.secret_key not in str(caught.value)
    assert caught.value.__cause__ is None


def test_wrong_credentials_are_rejected_without_leaking_the_secret(s3_server, s3_bucket):
    bad_secret = "not-the-right-secret-0123456789"
    store = R2ContentStore(r2_settings(s3_server, s3_bucket, r2_secret_access_key=bad_secret))
    with pytest.raises(StorageRejected) as caught:
        store.put("p-auth", object_key("av1", "b1", "p-auth"), PNG, "image/png", "capa1")
    assert bad_secret not in str(caught.value)
    assert "HTTP 403" in str(caught.value)


def test_missing_bucket_is_rejected(s3_server):
    store = R2ContentStore(r2_settings(s3_server, "no-such-bucket-here"))
    with pytest.raises(StorageRejected):
        store.put("p-nob", object_key("av1", "b1", "p-nob"), PNG, "image/png", "capa1")


def test_settings_defaults_and_endpoint_derivation(monkeypatch):
    for name in ("R2_ENDPOINT_URL", "R2_PUBLIC_URL", "UPLOAD_TO_STORAGE_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("R2_ACCOUNT_ID", "acct123")
    monkeypatch.setenv("R2_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "shh-secret")
    settings = StorageSettings(_env_file=None)
    assert settings.r2_bucket_name == "vixenbliss-content"
    assert settings.endpoint_url == "https://acct123.r2.cloudflarestorage.com"
    assert settings.use_r2
    assert "shh-secret" not in repr(settings)
    monkeypatch.setenv("UPLOAD_TO_STORAGE_ENABLED", "false")
    assert not StorageSettings(_env_file=None).use_r2


def test_unconfigured_r2_refuses_to_build_a_client(monkeypatch):
    for name in ("R2_ACCOUNT_ID", "R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = StorageSettings(_env_file=None)
    assert not settings.r2_configured
    with pytest.raises(StorageRejected):
        build_s3_client(settings)


@pytest.fixture
def proxy(s3_server, s3_bucket):
    from tests.storage.recording_proxy import RecordingProxy

    recording = RecordingProxy(upstream=s3_server.endpoint_url).start()
    yield recording
    recording.stop()


def _via_proxy(s3_server, s3_bucket, proxy, **overrides) -> R2ContentStore:
    private = s3_server.new_bucket("private")
    return R2ContentStore(
        r2_settings(s3_server, s3_bucket, private, r2_endpoint_url=proxy.url, **overrides)
    )


def test_wire_capture_shows_a_plain_body_with_content_length(s3_server, s3_bucket, proxy):
    store = _via_proxy(s3_server, s3_bucket, proxy)
    stored = store.put("p-proxy", object_key("av1", "b1", "p-proxy"), PNG, "image/png", "capa2")
    link = store.presigned_url(stored.key, "capa2")
    assert httpx.get(link).content == PNG  # presigned for, and relayed by, the proxy

    (put,) = proxy.of("PUT")
    assert put.body_size == len(PNG)  # the raw bytes, not an aws-chunked envelope
    assert put.headers["content-length"] == str(len(PNG))
    assert "transfer-encoding" not in put.headers
    assert "aws-chunked" not in put.headers.get("content-encoding", "")
    assert not [h for h in put.headers if h.startswith("x-amz-checksum-")]
    assert "x-amz-trailer" not in put.headers
    assert put.headers["x-amz-meta-sha256"] == sha256_hex(PNG)


def test_transient_5xx_is_retried_until_it_succeeds(s3_server, s3_bucket, proxy):
    store = _via_proxy(s3_server, s3_bucket, proxy, r2_max_attempts=3)
    proxy.fail_puts = 2
    stored = store.put("p-retry", object_key("av1", "b1", "p-retry"), PNG, "image/png", "capa1")
    assert len(proxy.of("PUT")) == 3
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=stored.key)["Body"].read()
    assert body == PNG


def test_5xx_after_all_retries_falls_back_to_local(s3_server, s3_bucket, proxy, tmp_path):
    from studio.storage.fallback import FallbackContentStore
    from studio.storage.local import LocalContentStore

    store = FallbackContentStore(
        _via_proxy(s3_server, s3_bucket, proxy, r2_max_attempts=2), LocalContentStore(tmp_path)
    )
    proxy.fail_puts = 5
    stored = store.put("p-503", object_key("av1", "b1", "p-503"), PNG, "image/png", "capa1")
    assert len(proxy.of("PUT")) == 2
    assert stored.backend == "local" and stored.needs_sync
    assert (tmp_path / stored.key).read_bytes() == PNG


def test_a_loaded_s3_model_lets_the_first_client_read_no_model_file(
    monkeypatch, s3_server, s3_bucket
):
    """`load_s3_model` (a warm process, before it forks runs) loads botocore's S3 model
    and endpoint data into the process's session with no store configured and no thread
    started; a run's first client then reads no model file (its image step's staging
    waited 0.3-0.6 s for that on a loaded worker) and still works."""
    import threading

    import botocore.loaders

    from studio.storage import r2

    r2._session.cache_clear()  # a fresh process's session
    threads = threading.active_count()
    r2.load_s3_model()
    assert threading.active_count() == threads

    def no_reading(*args, **kwargs):
        raise AssertionError("a model file was read after load_s3_model")

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", no_reading)
    store = R2ContentStore(r2_settings(s3_server, s3_bucket))
    store.put("p-warm", object_key("av1", "b1", "p-warm"), PNG, "image/png", "capa1")


def test_a_warm_process_loads_the_s3_model_before_it_forks_runs():
    """engine/warm_server.py's `preload` (what every forked run inherits) includes the
    S3 model: a client built after it reads no model file."""
    import subprocess
    import sys

    script = (
        "import botocore.loaders\n"
        "from engine import warm_server\n"
        "warm_server.preload()\n"
        "def no_reading(*a, **k):\n"
        "    raise SystemExit('a model file was read after preload')\n"
        "botocore.loaders.JSONFileLoader.load_file = no_reading\n"
        "from studio.storage import r2\n"
        "r2._session().client('s3', endpoint_url='http://127.0.0.1:9', region_name='auto',\n"
        "                     aws_access_key_id='k', aws_secret_access_key='s')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
