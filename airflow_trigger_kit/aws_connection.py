"""Airflow AWS connections turned into aiobotocore client settings, resolved at run time.

Triggers carry only an ``aws_conn_id``: the connection is looked up when the trigger runs (through
the supervisor in the triggerer, from the secrets backends on a worker), so no key, secret or
session token is ever part of serialized trigger kwargs, DAG files or logs.

What is read from the connection, following Airflow's Amazon provider (``AwsConnectionWrapper``):

* credentials: login / password (access key id / secret access key), else the extras
  ``aws_access_key_id`` / ``aws_secret_access_key``; ``aws_session_token`` from the extras.
  A connection without credentials uses botocore's default chain (environment variables, shared
  config and credentials files, web identity, container and instance profiles).
* ``region_name`` (extra), ``verify`` (extra: ``false`` or a CA bundle path), ``profile_name``
  (extra: a profile of the shared config files).
* the endpoint, first of: ``extra["service_config"]["s3"]["endpoint_url"]`` (``["sqs"]`` for the
  SQS client of S3 change notifications),
  ``extra["endpoint_url"]``, the legacy ``extra["host"]``, then the connection's host (with its
  port; ``https://`` is assumed when the host has no scheme). This is how S3-compatible stores
  (MinIO, moto, Ceph) are reached.
* ``config_kwargs`` (extra): botocore ``Config`` options (``{"s3": {"addressing_style": "path"}}``,
  ``{"retries": {...}}``, ``{"signature_version": "unsigned"}``), applied over this package's
  defaults (10 s connect timeout, 60 s read timeout, 3 attempts in botocore's standard retry mode;
  longer outages are retried by the trigger's own backoff).

A missing connection is an error naming the conn id, except for the default ``aws_default``, which
is optional (as in the Amazon provider): without it the default chain is used. ``aws_conn_id=None``
skips the lookup. Assume-role settings (``role_arn``) are not supported and fail loudly rather
than silently using other credentials.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow_trigger_kit.sources.base import PermanentSourceError

log = logging.getLogger(__name__)

DEFAULT_AWS_CONN_ID = "aws_default"
SERVICE = "s3"
DEFAULT_CONFIG: dict[str, Any] = {
    "connect_timeout": 10,
    "read_timeout": 60,
    "retries": {"mode": "standard", "max_attempts": 3},
}
_FALSE = ("false", "0", "no", "off")
_TRUE = ("true", "1", "yes", "on")


@dataclass(frozen=True)
class AwsClientConfig:
    """Everything needed to create one aiobotocore client.

    ``client_kwargs`` may hold secrets: it is excluded from ``repr`` and never logged; use
    :meth:`describe` for logs and messages.
    """

    conn_id: str | None
    client_kwargs: dict[str, Any] = field(repr=False)
    profile_name: str | None = None
    credential_source: str = "botocore default chain"

    @property
    def endpoint_url(self) -> str | None:
        value = self.client_kwargs.get("endpoint_url")
        return str(value) if value else None

    @property
    def region_name(self) -> str | None:
        value = self.client_kwargs.get("region_name")
        return str(value) if value else None

    def describe(self) -> str:
        """A log-safe description: where credentials come from, region, endpoint (without userinfo)."""
        parts = [f"aws_conn_id={self.conn_id!r}", f"credentials from {self.credential_source}"]
        if self.profile_name:
            parts.append(f"profile {self.profile_name!r}")
        parts.append(f"region {self.region_name or '(botocore default)'}")
        if self.endpoint_url:
            parts.append(f"endpoint {redact_url(self.endpoint_url)}")
        return ", ".join(parts)

    def create_client(self, session: Any | None = None, service: str = SERVICE) -> Any:
        """The aiobotocore client context manager (``async with`` it, or enter it on an exit stack).

        Without ``session``, clients share one aiobotocore session per event loop and profile:
        a new session loads botocore's S3 service model again, which made each client cost about
        0.13 CPU s (a shared session: about 0.02 s), so 1,000 waits paid minutes of CPU to start.
        """
        return (session or shared_session(self.profile_name)).create_client(service, **self.client_kwargs)


_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str | None, Any]] = weakref.WeakKeyDictionary()


def shared_session(profile_name: str | None) -> Any:
    """This event loop's aiobotocore session for ``profile_name`` (created on first use).

    Per loop, because credential refreshes hold asyncio locks bound to the loop that made them.
    """
    from aiobotocore.session import get_session

    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    sessions = _SESSIONS.setdefault(loop, {}) if loop is not None else {}
    session = sessions.get(profile_name)
    if session is None:
        session = get_session()
        if profile_name:
            session.set_config_variable("profile", profile_name)
        sessions[profile_name] = session
    return session


def redact_url(url: str) -> str:
    """``url`` without user info (``https://user:secret@host`` -> ``https://host``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable endpoint>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def client_config_from_connection(conn: Any | None, *, conn_id: str | None, service: str = SERVICE) -> AwsClientConfig:
    """Client settings from an Airflow connection (``None``: botocore's default chain only).

    ``service`` chooses the endpoint: ``extra["service_config"][service]["endpoint_url"]`` first
    (``"s3"`` for the watches, ``"sqs"`` for their change notifications), then the shared ones.

    Raises :class:`PermanentSourceError` naming the conn id and the field at fault for a half-set
    credential pair, an unsupported ``role_arn`` or malformed ``config_kwargs``.
    """
    config_kwargs = dict(DEFAULT_CONFIG)
    if conn is None:
        return AwsClientConfig(conn_id=conn_id, client_kwargs={"config": _aio_config(config_kwargs)})

    label = f"aws_conn_id={conn_id!r}"
    extra: dict[str, Any] = dict(getattr(conn, "extra_dejson", None) or {})
    if extra.get("role_arn"):
        raise PermanentSourceError(
            f"{label}: the extra 'role_arn' (assume role) is not supported by airflow-trigger-kit; give the "
            "connection keys, or leave it without credentials to use botocore's default chain "
            "(which honours AWS_ROLE_ARN with web identity, and instance or container roles)"
        )

    kwargs: dict[str, Any] = {}
    login, password = conn.login or None, conn.password or None
    extra_key, extra_secret = extra.get("aws_access_key_id") or None, extra.get("aws_secret_access_key") or None
    source = "botocore default chain"
    if login and password:
        kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = login, password
        source = "connection login/password"
    elif login or password:
        missing = "password (secret access key)" if login else "login (access key id)"
        raise PermanentSourceError(f"{label}: the connection has only half a key pair; its {missing} is empty")
    elif extra_key and extra_secret:
        kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = extra_key, extra_secret
        source = "connection extras"
    elif extra_key or extra_secret:
        raise PermanentSourceError(
            f"{label}: the extras hold only one of 'aws_access_key_id' and 'aws_secret_access_key'"
        )
    token = extra.get("aws_session_token") or None
    if token:
        if "aws_access_key_id" not in kwargs:
            raise PermanentSourceError(
                f"{label}: the extra 'aws_session_token' needs an access key id and secret access key"
            )
        kwargs["aws_session_token"] = token
        source += " with a session token"

    region = extra.get("region_name") or None
    if region:
        kwargs["region_name"] = str(region)
    endpoint = _endpoint_url(conn, extra, service)
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if "verify" in extra and extra["verify"] is not None:
        kwargs["verify"] = _verify(label, extra["verify"])

    user_config = extra.get("config_kwargs")
    if isinstance(user_config, str):
        try:
            user_config = json.loads(user_config)
        except ValueError:
            raise PermanentSourceError(f"{label}: the extra 'config_kwargs' must be a JSON object") from None
    if user_config is not None:
        if not isinstance(user_config, dict):
            raise PermanentSourceError(
                f"{label}: the extra 'config_kwargs' must be an object of botocore Config options, "
                f"got {type(user_config).__name__}"
            )
        config_kwargs.update(user_config)
    kwargs["config"] = _aio_config(config_kwargs, label)
    profile = extra.get("profile_name") or None
    return AwsClientConfig(
        conn_id=conn_id,
        client_kwargs=kwargs,
        profile_name=str(profile) if profile else None,
        credential_source=source,
    )


def _endpoint_url(conn: Any, extra: dict[str, Any], service: str = SERVICE) -> str | None:
    service_config = extra.get("service_config")
    if isinstance(service_config, dict):
        own_config = service_config.get(service)
        if isinstance(own_config, dict) and own_config.get("endpoint_url"):
            return str(own_config["endpoint_url"])
    for name in ("endpoint_url", "host"):
        if extra.get(name):
            return str(extra[name])
    host = getattr(conn, "host", None)
    if not host:
        return None
    host = str(host)
    if "://" not in host:
        host = f"https://{host}"
    port = getattr(conn, "port", None)
    if port and urlsplit(host).port is None:
        host = f"{host.rstrip('/')}:{int(port)}"
    return host


def _verify(label: str, value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _FALSE:
            return False
        if lowered in _TRUE:
            return True
        if value.strip():
            return value.strip()  # a CA bundle path
    raise PermanentSourceError(f"{label}: the extra 'verify' must be true, false or a CA bundle path, got {value!r}")


def _aio_config(options: dict[str, Any], label: str = "the default client configuration") -> Any:
    from aiobotocore.config import AioConfig
    from botocore import UNSIGNED

    # A deep copy: botocore rewrites the nested "retries" dict in place when a client is created,
    # so sharing DEFAULT_CONFIG's dict made every later client retry one more time.
    options = copy.deepcopy(options)
    if options.get("signature_version") == "unsigned":
        options["signature_version"] = UNSIGNED
    try:
        return AioConfig(**options)
    except TypeError as exc:
        raise PermanentSourceError(f"{label}: invalid 'config_kwargs' for botocore Config: {exc}") from None


async def aresolve_client_config(conn_id: str | None, service: str = SERVICE) -> AwsClientConfig:
    """Look ``conn_id`` up now (without blocking the loop) and build client settings from it.

    ``None`` skips the lookup; a missing ``aws_default`` falls back to botocore's default chain;
    any other missing conn id is a :class:`PermanentSourceError`.
    """
    if conn_id is None:
        config = client_config_from_connection(None, conn_id=None, service=service)
    else:
        from airflow.sdk.exceptions import AirflowNotFoundException

        from airflow_trigger_kit.connections import aget_connection

        try:
            conn = await aget_connection(conn_id)
        except AirflowNotFoundException:
            if conn_id != DEFAULT_AWS_CONN_ID:
                raise PermanentSourceError(
                    f"aws_conn_id={conn_id!r}: no such Airflow connection; create it (conn type 'aws'), or use "
                    f"{DEFAULT_AWS_CONN_ID!r} or None for botocore's default credential chain"
                ) from None
            log.info("connection %r is not defined; using botocore's default credential chain", conn_id)
            conn = None
        config = client_config_from_connection(conn, conn_id=conn_id, service=service)
    log.info("%s client: %s", service.upper(), config.describe())
    return config
