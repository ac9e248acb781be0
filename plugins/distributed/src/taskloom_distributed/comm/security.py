"""Security settings of a cluster: a shared token, TLS certificates (mutual TLS), or both.

:class:`Security` is what a scheduler, a worker and a client are given (or read from the
configuration: ``distributed.comm.auth`` and ``distributed.comm.tls.ca_file|cert|key``).  With
TLS, both ends present a certificate signed by the CA in ``tls_ca_file`` and verify the other's:
a listener refuses a peer without one.  Host names are not checked -- workers are reached by IP
address -- so the CA is the trust boundary: sign certificates for the cluster's machines only.
"""

from __future__ import annotations

import os
import secrets
import ssl
from typing import Any

import attrs
from taskloom.errors import ConfigError

_TLS_KEYS = ("ca_file", "cert", "key")


def new_token() -> str:
    """A fresh random authentication token: 192 bits in hex, safe to paste into a shell and never
    taken for an option (``secrets.token_urlsafe`` may start with ``-``, which ``--auth-token``
    would then refuse)."""
    return secrets.token_hex(24)


def _token(value: Any) -> str | None:
    """A token from the configuration (an env var may have been read as a number)."""
    if value is None or value == "":
        return None
    return str(value)


@attrs.frozen(repr=False)
class Security:
    """How connections authenticate: ``token`` (an HMAC challenge both ways) and/or TLS files.

    ``tls_key`` may be omitted when ``tls_cert`` holds the private key too.
    """

    token: str | None = attrs.field(default=None, converter=_token)
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_config(cls, **overrides: Any) -> Security:
        """The configured settings (``distributed.comm.*``), with non-None ``overrides`` on top."""
        from taskloom import config

        tls = config.get("distributed.comm.tls", {}) or {}
        values = {
            "token": config.get("distributed.comm.auth", None),
            **{f"tls_{k}": tls.get(k) or None for k in _TLS_KEYS},
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def tls(self) -> bool:
        """True if TLS files are set (connections must use ``tls://`` addresses)."""
        return bool(self.tls_ca_file or self.tls_cert or self.tls_key)

    @property
    def scheme(self) -> str:
        return "tls" if self.tls else "tcp"

    def _check(self, need_cert: bool) -> None:
        missing = [f"tls_{k}" for k in ("ca_file", "cert") if getattr(self, f"tls_{k}") is None]
        if not need_cert and "tls_cert" in missing:
            missing.remove("tls_cert")
        if missing:
            raise ConfigError(
                f"TLS needs {' and '.join(missing)} (distributed.comm.tls.{missing[0][4:]}, "
                f"--{missing[0].replace('_', '-')}); set are: "
                + (", ".join(f"tls_{k}" for k in _TLS_KEYS if getattr(self, f"tls_{k}")) or "none")
            )
        for name in ("tls_ca_file", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{name} (distributed.comm.tls.{name[4:]}): no such file {path!r}")

    def _context(self, purpose: ssl.Purpose, need_cert: bool) -> ssl.SSLContext:
        self._check(need_cert)
        try:
            ctx = ssl.create_default_context(purpose, cafile=self.tls_ca_file)
            if self.tls_cert is not None:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"cannot load the TLS files (ca_file={self.tls_ca_file!r}, cert={self.tls_cert!r}, "
                f"key={self.tls_key!r}): {exc}"
            ) from exc
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # peers are reached by address; the CA signature is the identity
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def server_context(self) -> ssl.SSLContext | None:
        """For a listener: present our certificate, require and verify the peer's (mutual TLS)."""
        return self._context(ssl.Purpose.CLIENT_AUTH, need_cert=True) if self.tls else None

    def client_context(self) -> ssl.SSLContext | None:
        """For a connecting side: verify the listener's certificate, present ours if we have one."""
        return self._context(ssl.Purpose.SERVER_AUTH, need_cert=False) if self.tls else None

    def __repr__(self) -> str:  # never print the token
        token = "set" if self.token else "none"
        files = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("tls_ca_file", "tls_cert", "tls_key"))
        return f"Security(token={token}, {files})"


def client_security(security: Security | None, token: str | None = None, cluster: Any = None) -> Security:
    """What a client connects with: explicit arguments, then the cluster's, then the configuration."""
    if security is None:
        security = getattr(cluster, "security", None) or Security.from_config()
    token = token or getattr(cluster, "auth_token", None) or security.token
    return attrs.evolve(security, token=token)
