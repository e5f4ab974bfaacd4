"""Making a botocore S3 client from s3fs-style ``storage_options``, and turning its errors into ours.

ckpt talks to S3 through botocore's synchronous client (installed with s3fs by ``ckpt[s3]``):
one client per storage, thread-safe, with bounded timeouts and retries so that every failure
(missing bucket, refused credentials, a dead endpoint) ends in one :class:`StorageError` that
names the URL instead of a hang or a botocore traceback.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from ..errors import MissingDependencyError, StorageError

#: Options ckpt itself reads (everything else is passed on like s3fs does).
_OWN = ("part_size", "parts_in_flight", "read_block", "readahead", "tail_bytes", "lease_ttl",
        "abandoned_after", "conditional_writes", "connect_timeout", "read_timeout", "retries")


@dataclasses.dataclass
class Settings:
    """How one S3 storage reads, writes and locks (``storage_options`` may set each)."""

    part_size: int = 16 << 20          # multipart part size (S3's minimum is 5 MiB)
    parts_in_flight: int = 3           # parts uploading at once: the save's memory is (this + 1) parts
    read_block: int = 64 << 20         # the largest ranged GET of a restore
    readahead: int = 2                 # blocks fetched ahead of the reader, in parallel
    tail_bytes: int = 1 << 20          # the first GET of an open: EOCD + central directory + manifest
    lease_ttl: float = 30.0            # a writer's lease is taken over after this long unrenewed
    abandoned_after: float = 3600.0    # ckpt's uploads older than this are aborted by cleanup
    conditional_writes: Any = "auto"   # "auto" probes the store once; True trusts it; False never uses them
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    retries: int = 3


def botocore() -> Any:
    try:
        import botocore.config
        import botocore.exceptions
        import botocore.session
    except ImportError as e:
        raise MissingDependencyError(
            f"s3:// locations need s3fs (botocore): pip install 'ckpt[s3]' ({e})", package="s3fs", extra="s3"
        ) from None
    return botocore


def make_client(options: Mapping[str, Any]) -> tuple[Any, Settings]:
    """A botocore S3 client and ckpt's settings from s3fs-style options (``key``, ``secret``,
    ``token``, ``endpoint_url``, ``client_kwargs``, ``config_kwargs``, ``profile``, ``anon``)."""
    bc = botocore()
    opts = dict(options)
    settings = Settings(**{k: opts.pop(k) for k in _OWN if k in opts})
    client_kwargs = dict(opts.pop("client_kwargs", None) or {})
    config_kwargs = dict(opts.pop("config_kwargs", None) or {})
    if "endpoint_url" in opts:
        client_kwargs["endpoint_url"] = opts.pop("endpoint_url")
    for ours, theirs in (("key", "aws_access_key_id"), ("secret", "aws_secret_access_key"),
                         ("token", "aws_session_token")):
        if ours in opts:
            client_kwargs[theirs] = opts.pop(ours)
    if "region_name" in opts:
        client_kwargs["region_name"] = opts.pop("region_name")
    session = bc.session.Session(profile=opts.pop("profile", None))
    if opts.pop("anon", False):
        config_kwargs["signature_version"] = bc.UNSIGNED
    opts.pop("use_listings_cache", None)  # s3fs-only options that mean nothing here
    opts.pop("default_block_size", None)
    if opts:
        raise TypeError(f"unknown S3 storage option(s): {', '.join(sorted(opts))}")
    config_kwargs.setdefault("connect_timeout", settings.connect_timeout)
    config_kwargs.setdefault("read_timeout", settings.read_timeout)
    config_kwargs.setdefault("retries", {"max_attempts": settings.retries, "mode": "standard"})
    config_kwargs.setdefault("max_pool_connections", 4 + settings.parts_in_flight + settings.readahead * 2)
    client_kwargs.setdefault("region_name", session.get_config_variable("region") or "us-east-1")
    config = bc.config.Config(**config_kwargs)
    return session.create_client("s3", config=config, **client_kwargs), settings


def code(e: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('' for anything else)."""
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return ""
    err = response.get("Error", {})
    c = str(err.get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return c or (str(status) if status else "")


def precondition_failed(e: BaseException) -> bool:
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""
    return code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def not_found(e: BaseException) -> bool:
    return code(e) in ("NoSuchKey", "404", "NotFound")


def is_network(e: BaseException) -> bool:
    bc = botocore()
    return isinstance(e, (bc.exceptions.BotoCoreError, bc.exceptions.ClientError))


def storage_error(e: BaseException, url: str, doing: str, endpoint: Optional[str] = None) -> StorageError:
    """One clear StorageError for a botocore failure while ``doing`` something at ``url``."""
    bc = botocore()
    c = code(e)
    where = f" at {endpoint}" if endpoint else ""
    if c == "NoSuchBucket":
        msg = f"{url}: the bucket does not exist{where} (while {doing})"
    elif c in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "403",
               "InvalidToken", "AllAccessDisabled"):
        msg = f"{url}: the store refused the credentials ({c}) while {doing}; check AWS_ACCESS_KEY_ID/" \
              f"AWS_SECRET_ACCESS_KEY or storage_options key/secret"
    elif isinstance(e, bc.exceptions.NoCredentialsError):
        msg = f"{url}: no AWS credentials found while {doing} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, " \
              f"a profile, or storage_options key/secret; anon=True for public buckets)"
    elif isinstance(e, (bc.exceptions.EndpointConnectionError, bc.exceptions.ConnectTimeoutError,
                        bc.exceptions.ReadTimeoutError, bc.exceptions.ConnectionClosedError)):
        msg = f"{url}: cannot reach the S3 endpoint{where} while {doing}: {type(e).__name__}"
    elif c:
        msg = f"{url}: the store answered {c} while {doing}: {e}"
    else:
        msg = f"{url}: {type(e).__name__} while {doing}: {e}"
    return StorageError(msg, file=url)
