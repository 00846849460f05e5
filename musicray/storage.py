"""Workspace storage: one root URI, a local path or ``s3://bucket/prefix``.

Every read and write in musicray goes through ``pyarrow.fs`` so the same code runs
on a laptop folder and on S3 (or any S3-compatible store). Credentials and region
come from the standard AWS environment / config files; ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) points at an S3-compatible server such as MinIO.

Publishing follows one rule: data first, pointer last. A reader that follows a
``LATEST`` pointer therefore never sees a half-written result.

Writes are atomic at any size: a local file is written beside its target and renamed; an S3
object up to ``S3_PART_SIZE`` is one PUT, a larger one a multipart upload that is completed only
once every part is in, and aborted on any error.
"""

from __future__ import annotations

import functools
import math
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kwargs = {}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        # S3-compatible servers (MinIO, moto) address buckets by path, not subdomain.
        kwargs["force_virtual_addressing"] = False
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


_LOCAL = pafs.LocalFileSystem()


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path, ``file://`` URI or ``s3://`` URI."""
    uri = str(uri)
    if is_s3(uri):
        return _s3_filesystem(s3_endpoint(), s3_region()), uri[len("s3://"):].rstrip("/")
    if uri.startswith("file://"):
        uri = unquote(urlparse(uri).path)
    elif "://" in uri:
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://")
    return _LOCAL, os.path.abspath(uri)


def join(uri: str | Path, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def normalize(uri: str | Path) -> str:
    """A canonical form: absolute local paths, ``s3://`` URIs unchanged."""
    uri = str(uri)
    if is_s3(uri):
        return uri.rstrip("/")
    if uri.startswith("file://"):
        uri = unquote(urlparse(uri).path)
    return os.path.abspath(uri)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


# S3 objects above this size go up in parts of this size (larger when 10,000 parts would not hold
# them), so no object hits the 5 GB cap of one PUT; a failed part is resent alone, not the object.
S3_PART_SIZE = 64 * 2**20
_S3_MIN_PART_SIZE = 5 * 2**20  # S3 refuses smaller parts, except the last one
_S3_MAX_PARTS = 10_000


def write_bytes(uri: str, data: bytes, part_size: int | None = None) -> None:
    """Write a whole object atomically: readers see the old or the new content, never a part.

    On a local disk we write a temporary sibling and rename. On S3 an object up to ``part_size``
    (default ``S3_PART_SIZE``) is one PUT, which is atomic by itself; a larger one is a multipart
    upload, which S3 shows only once it is completed.
    """
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    part_size = S3_PART_SIZE if part_size is None else part_size
    if part_size < _S3_MIN_PART_SIZE:
        raise ValueError(f"part_size must be at least {_S3_MIN_PART_SIZE} bytes (S3's smallest part), "
                         f"got {part_size}")
    bucket, _, key = path.partition("/")
    if len(data) <= part_size:
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
    else:
        _upload_in_parts(bucket, key, data, part_size)


def _upload_in_parts(bucket: str, key: str, data: bytes, part_size: int) -> None:
    """A multipart upload that either completes whole or is aborted, leaving no object and no parts."""
    client = s3_client()
    part_size = max(part_size, math.ceil(len(data) / _S3_MAX_PARTS))
    # As boto3's own managed upload does: when the client checksums requests (its default), the
    # upload declares CRC32 and the completion lists every part's, else S3 refuses to complete it.
    checksum = ({"ChecksumAlgorithm": "CRC32"}
                if client.meta.config.request_checksum_calculation == "when_supported" else {})
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **checksum)["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, len(data), part_size), start=1):
            response = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                          Body=data[start:start + part_size], **checksum)  # one part copied at a time
            part = {"PartNumber": number, "ETag": response["ETag"]}
            if checksum and "ChecksumCRC32" in response:
                part["ChecksumCRC32"] = response["ChecksumCRC32"]
            parts.append(part)
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": parts})
    except BaseException as error:  # an interrupt too: uploaded parts are stored (and billed) until aborted
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception as abort_error:  # noqa: BLE001 - the upload's own error is the one to raise
            error.add_note(f"the multipart upload {upload_id} of s3://{bucket}/{key} could not be aborted "
                           f"({abort_error}); its parts stay until a lifecycle rule or abort removes them")
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


@dataclass(frozen=True)
class ListedFile:
    uri: str
    size: int
    etag: str | None  # S3 only: lets incremental jobs skip a file without reading it


def list_files(prefix: str, suffixes: tuple[str, ...] | None = None) -> list[ListedFile]:
    """Every file under a prefix (recursively), sorted by URI, optionally filtered by suffix.

    On S3 the listing goes through boto3 so each object's ETag comes with it.
    """
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    if is_s3(prefix):
        files = _list_s3(prefix)
    else:
        fs, path = resolve(prefix)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"no such directory: {prefix}")
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = [ListedFile(i.path, i.size, None) for i in infos if i.type == pafs.FileType.File]
    if wanted:
        files = [f for f in files if f.uri.lower().endswith(wanted)]
    return sorted(files, key=lambda f: f.uri)


def list_dirs(prefix: str) -> list[str]:
    """The names of the folders directly under a prefix, sorted; none if it does not exist."""
    fs, path = resolve(prefix)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos if i.type == pafs.FileType.Directory)


def s3_client():
    return _s3_client(s3_endpoint(), s3_region())


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint: str | None, region: str | None):
    import boto3  # credentials come from the standard AWS environment and config files

    return boto3.client("s3", endpoint_url=endpoint, region_name=region)


def _list_s3(prefix: str) -> list[ListedFile]:
    parsed = urlparse(prefix)
    bucket, key_prefix = parsed.netloc, parsed.path.lstrip("/")
    if key_prefix and not key_prefix.endswith("/"):
        key_prefix += "/"
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix)
    return [
        ListedFile(f"s3://{bucket}/{obj['Key']}", obj["Size"], obj["ETag"].strip('"'))
        for page in pages
        for obj in page.get("Contents", [])
        if not obj["Key"].endswith("/")
    ]


def read_pointer(pointer_uri: str) -> str | None:
    """The id a ``LATEST`` pointer names, or None if nothing was published yet."""
    if not exists(pointer_uri):
        return None
    return read_text(pointer_uri).strip() or None


def publish(pointer_uri: str, value: str) -> None:
    """Point ``pointer_uri`` at ``value``. Call it only after the data it names is complete."""
    write_text(pointer_uri, value + "\n")
