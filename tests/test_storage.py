"""Workspace storage on a local folder and on S3 (moto server over HTTP)."""

import random

import pytest

from musicray import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ws")
    bucket = request.getfixturevalue("bucket")
    return f"s3://{bucket}/ws"


def test_write_read_list_delete(root):
    storage.write_bytes(storage.join(root, "a", "x.bin"), b"1")
    storage.write_text(storage.join(root, "a", "b", "y.txt"), "é")
    assert storage.read_text(storage.join(root, "a", "b", "y.txt")) == "é"
    listed = storage.list_files(storage.join(root, "a"))
    assert [f.uri.rsplit("/", 1)[-1] for f in listed] == ["y.txt", "x.bin"]  # sorted by URI: a/b/ < a/x
    assert [f.size for f in listed if f.uri.endswith("x.bin")] == [1]
    assert all((f.etag is not None) == storage.is_s3(root) for f in listed)
    storage.delete(storage.join(root, "a", "x.bin"))
    assert not storage.exists(storage.join(root, "a", "x.bin"))


def test_pointer_is_published_last_and_read_back(root):
    pointer = storage.join(root, "embeddings", "LATEST")
    assert storage.read_pointer(pointer) is None
    storage.write_text(storage.join(root, "embeddings", "snap-1", "manifest.json"), "{}")
    storage.publish(pointer, "snap-1")
    assert storage.read_pointer(pointer) == "snap-1"
    storage.publish(pointer, "snap-2")
    assert storage.read_pointer(pointer) == "snap-2"


def test_local_writes_leave_no_temporary_files(tmp_path):
    target = tmp_path / "ws" / "LATEST"
    for i in range(3):
        storage.write_text(str(target), f"run-{i}")
    assert [p.name for p in target.parent.iterdir()] == ["LATEST"]
    assert target.read_text() == "run-2"


def test_bad_uris_are_named():
    with pytest.raises(ValueError, match="gs://bucket/x"):
        storage.resolve("gs://bucket/x")
    with pytest.raises(FileNotFoundError, match="/no/such/dir"):
        storage.list_files("/no/such/dir")


# -- objects above the part size: multipart uploads on the S3 server ---------------------------------

MiB = 2**20
PART = 5 * MiB  # S3's (and moto's) smallest part but the last


@pytest.fixture
def on_s3_call(s3_endpoint):
    """Run a function before or after one S3 operation of musicray's client (a botocore event hook)."""
    events, registered = storage.s3_client().meta.events, []

    def register(when: str, operation: str, handler) -> None:
        event, unique_id = f"{when}-call.s3.{operation}", f"test-storage-{len(registered)}"
        events.register(event, handler, unique_id=unique_id)
        registered.append((event, unique_id))

    yield register
    for event, unique_id in registered:
        events.unregister(event, unique_id=unique_id)


def _uploads_in_progress(bucket: str) -> list:
    return storage.s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


# Short test names and ids: the bucket fixture names a bucket after the test, cut at 60 characters.
@pytest.mark.parametrize("size, parts", [(PART, None), (11 * MiB, 3)], ids=["one-put", "three-parts"])
def test_large_object_goes_up_in_parts(bucket, on_s3_call, size, parts):
    """Above the part size, a multipart upload: byte-exact, in parts, and invisible until complete."""
    uri = f"s3://{bucket}/ws/big.bin"
    data = random.Random(size).randbytes(size)
    seen_mid_upload = []
    on_s3_call("after", "UploadPart", lambda **kwargs: seen_mid_upload.append(storage.exists(uri)))
    storage.write_bytes(uri, data, part_size=PART)

    assert storage.read_bytes(uri) == data
    client = storage.s3_client()
    etag = client.head_object(Bucket=bucket, Key="ws/big.bin")["ETag"].strip('"')
    if parts is None:  # up to the part size: one PUT, as before
        assert "-" not in etag and seen_mid_upload == []
        assert "PartsCount" not in client.head_object(Bucket=bucket, Key="ws/big.bin", PartNumber=1)
    else:
        assert etag.endswith(f"-{parts}")  # S3's ETag of a multipart object: md5 of the part md5s, -count
        heads = [client.head_object(Bucket=bucket, Key="ws/big.bin", PartNumber=n) for n in range(1, parts + 1)]
        assert [h["PartsCount"] for h in heads] == [parts] * parts
        assert [h["ContentLength"] for h in heads] == [PART, PART, size - 2 * PART]
        assert seen_mid_upload == [False] * parts  # no reader saw the object before the upload completed
    assert _uploads_in_progress(bucket) == []


class _Interrupted(Exception):
    """A failure half-way through an upload (a dropped connection, a killed worker)."""


@pytest.mark.parametrize("operation, call, error", [
    ("UploadPart", 2, _Interrupted),  # after the first part is stored
    ("CompleteMultipartUpload", 1, KeyboardInterrupt),  # every part stored; Ctrl-C before completion
], ids=["part-2", "complete"])
def test_failed_upload_leaves_old_object(bucket, on_s3_call, operation, call, error):
    """A failure mid-upload: the old object stays as it was, and the upload is aborted (no parts left)."""
    uri = f"s3://{bucket}/ws/big.bin"
    storage.write_bytes(uri, b"old")
    calls = []

    def fail(**kwargs):
        calls.append(operation)
        if len(calls) == call:
            raise error(f"{operation} failed")

    on_s3_call("before", operation, fail)
    with pytest.raises(error):
        storage.write_bytes(uri, random.Random(0).randbytes(11 * MiB), part_size=PART)

    assert len(calls) == call  # the failure came where it was meant to, mid-upload
    assert storage.read_bytes(uri) == b"old"
    assert [f.uri for f in storage.list_files(f"s3://{bucket}/ws")] == [uri]
    assert _uploads_in_progress(bucket) == []  # aborted: no orphaned parts


def test_part_size_below_s3_minimum_is_refused(bucket):
    with pytest.raises(ValueError, match="part_size"):
        storage.write_bytes(f"s3://{bucket}/ws/x.bin", b"x" * (6 * MiB), part_size=MiB)
    assert storage.list_files(f"s3://{bucket}/ws") == [] and _uploads_in_progress(bucket) == []
