"""The secret that authenticates a checkpoint's pickled rows.

Unpickling runs whatever code the bytes' author chose, and a checkpoint file
can come from anywhere (a shared drive, a colleague, a CI artifact). So each
pickled row carries a tag, HMAC-SHA256 under a secret kept *outside* the file,
over the checkpoint's id, the row's index, the item's fingerprint and the
pickle. A row is unpickled only when its tag verifies: whoever can forge a tag
holds the secret, and so could run code as this user anyway.

The secret is, first found of:

1. ``key=`` given to ``open_checkpoint``;
2. the environment variable ``SHOAL_CHECKPOINT_KEY`` (clusters and CI: the
   same secret on every machine that opens the file);
3. the user's key file (``key_file()``), created on first use with mode 0600.

The key file is read, or created, only when a pickled row is first written or
read: a checkpoint of JSON values never touches it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from pathlib import Path

from shoal._core.errors import InvalidOptionError

ENV_VAR = "SHOAL_CHECKPOINT_KEY"
MIN_KEY_CHARS = 16
_DOMAIN = b"shoal-checkpoint-row-v2"  # so a tag of this scheme means nothing elsewhere
_HOW_TO_MAKE = "python -c 'import secrets; print(secrets.token_hex(32))'"


def key_file() -> Path:
    """Where the user's checkpoint key lives (the platform's per-user data directory)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "shoal" / "checkpoint.key"


def _checked(text: str, source: str) -> bytes:
    key = text.strip()
    if len(key) < MIN_KEY_CHARS:
        raise InvalidOptionError(
            f"the checkpoint key from {source} has {len(key)} characters; use at least "
            f"{MIN_KEY_CHARS} random ones, e.g. from {_HOW_TO_MAKE}")
    return key.encode()


def _read_key_file(path: Path) -> bytes:
    """Raises: FileNotFoundError; InvalidOptionError for a file others can use."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        # Like ssh with a private key: a key others can read lets them forge tags.
        if sys.platform != "win32" and st.st_mode & 0o077:
            raise InvalidOptionError(
                f"the checkpoint key file {path} can be read or written by other users "
                f"(mode {st.st_mode & 0o777:04o}); run 'chmod 600 {path}'")
        text = f.read().decode("ascii", "replace")
    return _checked(text, f"the key file {path}")


def _create_key_file(path: Path) -> None:
    """Write a new random key to ``path`` unless another process just did."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() publishes the whole file at once and fails if it exists, so two
        # processes creating it at the same moment end up with one key.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def given_key(key: str | bytes | None) -> tuple[bytes | None, str]:
    """The secret from ``key=`` or the environment, checked, and where it came from.

    ``(None, ...)`` when neither gives one: the user's key file is the secret.

    Raises:
        InvalidOptionError: the key is shorter than ``MIN_KEY_CHARS``.
    """
    source = "the key= argument"
    if isinstance(key, bytes):  # used as given: decoding could lose random bytes
        if len(key) < MIN_KEY_CHARS:
            raise InvalidOptionError(f"the checkpoint key from {source} has {len(key)} bytes; "
                                     f"use at least {MIN_KEY_CHARS} random ones")
        return key, source
    if key is not None:
        return _checked(key, source), source
    if os.environ.get(ENV_VAR):
        return _checked(os.environ[ENV_VAR], f"${ENV_VAR}"), f"${ENV_VAR}"
    return None, f"your key file {key_file()}"


class RowSigner:
    """Tags the pickled rows of one checkpoint, and checks them.

    ``key`` and ``source`` come from ``given_key``; a None key means the
    user's key file, read (or made) on first use.
    """

    def __init__(self, checkpoint_id: str, key: bytes | None, source: str) -> None:
        self._prefix = b"\0".join([_DOMAIN, checkpoint_id.encode(), b""])
        self._key = key
        self.source = source  # named in the error for a row that does not verify

    def _user_key(self, create: bool) -> bytes | None:
        # Two threads may both get here first: both read (or create, see
        # _create_key_file) the same key, so the race is harmless.
        if self._key is None:
            path = key_file()
            try:
                try:
                    self._key = _read_key_file(path)
                except FileNotFoundError:
                    if not create:
                        return None
                    _create_key_file(path)
                    self._key = _read_key_file(path)
            except OSError as exc:
                raise InvalidOptionError(
                    f"cannot {'make' if create else 'read'} the checkpoint key file {path} "
                    f"({exc}); fix that, or set {ENV_VAR} to a secret of your own, e.g. from "
                    f"{_HOW_TO_MAKE}") from exc
        return self._key

    def _mac(self, key: bytes, idx: int, fingerprint: str, blob: bytes) -> bytes:
        mac = hmac.new(key, self._prefix, hashlib.sha256)
        mac.update(f"{idx}\0{fingerprint}\0".encode())
        mac.update(blob)
        return mac.digest()

    def tag(self, idx: int, fingerprint: str, blob: bytes) -> bytes:
        """The tag of a pickled row, creating the user's key file if needed.

        Raises:
            InvalidOptionError: no key can be found or made.
        """
        key = self._user_key(create=True)
        assert key is not None
        return self._mac(key, idx, fingerprint, blob)

    def verify(self, idx: int, fingerprint: str, blob: bytes, tag: bytes | None) -> bool:
        """True when ``tag`` was made by ``tag()`` under this key for this row.

        Raises:
            InvalidOptionError: the key file exists but cannot be used.
        """
        key = self._user_key(create=False)  # no key file: nothing here ever signed a row
        if key is None or tag is None:
            return False
        return hmac.compare_digest(self._mac(key, idx, fingerprint, blob), tag)
