"""Classification of failed S3 calls: permanent (raised, naming bucket, prefix and conn id) or transient."""

from __future__ import annotations

import asyncio

from airflow_trigger_kit.aws_connection import redact_url
from airflow_trigger_kit.sources.base import PermanentSourceError, TransientSourceError

PERMANENT_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidBucketName",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
        "InvalidArgument",
        "InvalidRequest",
        "NotSignedUp",
        "RequestTimeTooSkewed",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "500",
        "502",
        "503",
        "504",
    }
)
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)


def classify_error(
    exc: BaseException, *, bucket: str, prefix: str, conn_id: str | None, endpoint: str | None = None
) -> Exception:
    """A :class:`PermanentSourceError` or :class:`TransientSourceError` for a failed S3 call.

    The message names the bucket, the prefix and the conn id (never a credential).
    """
    from botocore import exceptions as bex

    where = f"s3://{bucket}/{prefix}"
    conn = f"aws_conn_id={conn_id!r}"
    at = f" at {redact_url(endpoint)}" if endpoint else ""
    if isinstance(exc, (PermanentSourceError, TransientSourceError)):
        return exc
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {}) or {}
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or "")
        status = int((exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            return PermanentSourceError(
                f"bucket {bucket!r} does not exist (NoSuchBucket) while listing prefix {prefix!r} with {conn}{at}; "
                "check the bucket parameter and the connection's region and endpoint_url"
            )
        if code in ("AccessDenied", "AllAccessDisabled"):
            return PermanentSourceError(
                f"access denied ({code}) listing {where} with {conn}{at}: the credentials need "
                f"s3:ListBucket on arn:aws:s3:::{bucket} (prefix {prefix!r})"
            )
        if code in CREDENTIAL_CODES:
            return PermanentSourceError(
                f"S3 rejected the credentials of {conn} ({code}) listing bucket {bucket!r} prefix {prefix!r}{at}; "
                "check the connection's access key id, secret access key and session token"
            )
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
            return PermanentSourceError(
                f"bucket {bucket!r} is in another region than {conn} is configured for ({code}: {message}) "
                f"listing prefix {prefix!r}; set region_name in the connection's extras"
            )
        if code in TRANSIENT_CODES or status in (429, 500, 502, 503, 504):
            return TransientSourceError(
                f"S3 is throttling or unavailable ({code or status}: {message}) listing {where}{at} with {conn}"
            )
        if code in PERMANENT_CODES or 400 <= status < 500:
            return PermanentSourceError(f"S3 refused listing {where} with {conn}{at}: {code or status}: {message}")
        return TransientSourceError(f"S3 error listing {where}{at} with {conn}: {code or status}: {message}")
    if isinstance(exc, bex.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return PermanentSourceError(
            f"TLS certificate of the S3 endpoint{at} not trusted listing {where} with {conn}: {exc}; "
            "set the connection's 'verify' extra to a CA bundle path"
        )
    if isinstance(exc, (bex.ConnectionError, bex.HTTPClientError, bex.CredentialRetrievalError)):
        return TransientSourceError(f"cannot reach S3{at} listing {where} with {conn}: {type(exc).__name__}: {exc}")
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError, bex.UnknownCredentialError)):
        return PermanentSourceError(
            f"no usable AWS credentials for {conn} listing {where} ({type(exc).__name__}): the connection has none "
            "and botocore's default chain found none (environment, shared files, web identity, instance profile)"
        )
    if isinstance(exc, bex.BotoCoreError):
        return PermanentSourceError(f"listing {where} with {conn}{at} failed: {type(exc).__name__}: {exc}")
    import aiohttp

    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError, OSError, aiohttp.ClientError)):
        return TransientSourceError(f"cannot reach S3{at} listing {where} with {conn}: {type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else Exception(str(exc))
