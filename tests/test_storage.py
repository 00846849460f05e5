"""Workspace storage on a local folder and on S3 (moto server over HTTP)."""

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
