"""S3 bucket naming rules and prefix sanity checks, applied at DAG parse time.

The rules are AWS's documented rules for general purpose buckets ("Bucket naming rules" in the
Amazon S3 user guide): 3-63 characters of lowercase letters, digits, ``.`` and ``-``; starting and
ending with a letter or digit; no ``..``; not an IP address; none of the reserved prefixes
(``xn--``, ``sthree-``, ``amzn-s3-demo-``) or suffixes (``-s3alias``, ``--ol-s3``, ``.mrap``,
``--table-s3``). Directory buckets (S3 Express One Zone) are named ``base--zone-id--x-s3``; they
are accepted in that form.

Buckets created in us-east-1 before March 2018 may have names outside these rules (up to 255
characters, uppercase letters, ``_``): ``legacy_bucket_name=True`` checks only the rules those
names followed. S3-compatible stores that allow other names need the same opt-out.

Prefixes are never rejected (any string is a legal key prefix), but ``..`` and ``//`` are almost
always a mistake — S3 keys are literal strings, so ``a/../b/`` is not ``b/`` and ``a//b/`` is not
``a/b/`` — and so is a leading ``/``: those get an :class:`S3PrefixWarning` naming the prefix.
"""

from __future__ import annotations

import ipaddress
import re
import string
import warnings

BUCKET_CHARS_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
DIRECTORY_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]*--[a-z0-9-]+--x-s3$")
LEGACY_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")
ALLOWED_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-")
RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--table-s3")
OPT_OUT = "pass legacy_bucket_name=True for a bucket created before March 2018 or a store with other rules"


class S3PrefixWarning(UserWarning):
    """A prefix that is legal but almost certainly not what was meant (``..``, ``//``, leading ``/``)."""


def validate_bucket_name(bucket: str, *, legacy: bool = False) -> None:
    """Raise ``ValueError`` naming ``bucket`` and the rule it breaks; see the module docstring."""
    if legacy:
        if not LEGACY_BUCKET_RE.match(bucket):
            raise ValueError(
                f"bucket must be 3-255 characters of letters, digits, '.', '-' or '_' (starting and ending with "
                f"a letter or digit) even with legacy_bucket_name=True, got {bucket!r}"
            )
        return
    problem = _bucket_problem(bucket)
    if problem is not None:
        raise ValueError(f"bucket {bucket!r} is not a valid S3 bucket name: {problem}; {OPT_OUT}")


def _bucket_problem(bucket: str) -> str | None:
    if not 3 <= len(bucket) <= 63:
        return f"it must be 3 to 63 characters long, not {len(bucket)}"
    if bucket.lower() != bucket and BUCKET_CHARS_RE.match(bucket.lower()):
        return "it must not contain uppercase letters"
    if not BUCKET_CHARS_RE.match(bucket):
        bad = sorted({c for c in bucket if c not in ALLOWED_CHARS})
        if bad:
            return f"it may hold only lowercase letters, digits, '.' and '-', not {', '.join(map(repr, bad))}"
        return "it must start and end with a lowercase letter or a digit"
    if ".." in bucket:
        return "it must not contain two adjacent periods ('..')"
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        pass
    else:
        return "it must not be formatted as an IP address"
    for prefix in RESERVED_PREFIXES:
        if bucket.startswith(prefix):
            return f"the prefix {prefix!r} is reserved by AWS"
    for suffix in RESERVED_SUFFIXES:
        if bucket.endswith(suffix):
            return f"the suffix {suffix!r} is reserved by AWS for access points and other bucket kinds"
    if bucket.endswith("--x-s3") and not DIRECTORY_BUCKET_RE.match(bucket):
        return "a name ending in '--x-s3' must be a directory bucket name of the form 'base-name--zone-id--x-s3'"
    return None


def is_directory_bucket(bucket: str) -> bool:
    """Whether ``bucket`` is named like an S3 Express One Zone directory bucket."""
    return DIRECTORY_BUCKET_RE.match(bucket) is not None


def warn_about_prefix(prefix: str) -> None:
    """Warn (:class:`S3PrefixWarning`) about a legal prefix that is probably a mistake."""
    hints = []
    if ".." in prefix:
        hints.append("'..' is not resolved: S3 keys are literal strings, so it matches only keys containing '..'")
    if "//" in prefix:
        hints.append(
            f"'//' matches only keys with an empty path segment (did you mean {re.sub('/{2,}', '/', prefix)!r}?)"
        )
    if prefix.startswith("/"):
        hints.append(f"S3 keys rarely start with '/' (did you mean {prefix.lstrip('/')!r}?)")
    if hints:
        warnings.warn(
            f"prefixes: {prefix!r} is a legal S3 prefix but probably not the intended one: {'; '.join(hints)}",
            S3PrefixWarning,
            stacklevel=3,
        )
