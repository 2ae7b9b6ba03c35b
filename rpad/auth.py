"""JWT keys and tokens (SPEC §2): loading keys, minting, verifying.

Keys: HS256 secrets (the first signs what ``rpad token`` mints; all verify, for rotation) and
verification-only public keys (RS256, ES256, EdDSA) of another issuer. The algorithm a token
may use is decided by the key that verifies it, never by the token alone: an HS256 token is
only ever checked against secrets, so a public key's bytes can never serve as an HMAC secret,
and ``alg: none`` matches no key at all. A ``kid`` header is ignored (every configured key of
the right kind is tried); nothing is ever fetched because a token says so.
"""

from __future__ import annotations

import os
import re
import secrets as pysecrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .config import Config
from .core.errors import AuthError
from .core.exec_access import exec_claim_problem
from .core.principal import ROLES, Principal

SECRET_BYTES = 32
MIN_SECRET_BYTES = 16
TOKEN_CACHE_SIZE = 10_000
MAX_TOKEN_CHARS = 8192
CREDENTIAL_NAME = "jwt.secret"
# The longest lifetime a token can be minted with: 523 weeks (3661 days, ten years and a
# week); longer is what "never" is for. A whole number of every unit of TTL_UNITS, so that the
# OpenAPI document can state the limit exactly (rpad.api.schemas.ttl_pattern).
MAX_TTL_SECONDS = 523 * 7 * 86400
# A lifetime's units, in seconds; no unit is seconds.
TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TTL_RE = re.compile(r"([0-9]+(?:[.][0-9]+)?)([smhdw]?)")


def parse_ttl(text: str) -> float | None:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"30d"``, ``"2w"``, ``"3600"`` → seconds; ``"never"``
    → None. ASCII digits only; the limits are compared exactly (in decimal), so that the
    document's pattern and this function agree on every string. Raises ValueError."""
    if text == "never":
        return None
    m = _TTL_RE.fullmatch(text)
    if not m:
        raise ValueError(f"{text[:64]!r} is not a duration such as 90s, 15m, 1h, 30d or never")
    number, unit = Decimal(m.group(1)), TTL_UNITS[m.group(2)]
    if number <= 0:
        raise ValueError("a token lifetime must be positive")
    if number > MAX_TTL_SECONDS // unit:  # (exact: Decimal against an int, no rounding)
        raise ValueError(f"a token lifetime must be at most {MAX_TTL_SECONDS // 604800} weeks "
                         f"({MAX_TTL_SECONDS // 86400} days), or never")
    return float(number) * unit


def _alg_of_public_key(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"an EC key must be on the P-256 curve (ES256), not {key.curve.name}")  # noqa: TRY004 (a key file's content, reported as a config error)
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("unsupported public key type (use RSA, EC P-256 or Ed25519)")


@attrs.define
class Keys:
    secrets: list[bytes]
    public_keys: list[tuple[str, Any]]  # (alg, key object)


def _read_secret(key: str, path: Path) -> bytes:
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) < MIN_SECRET_BYTES:
        raise ValueError(f"{key}: {path}: a secret must be at least {MIN_SECRET_BYTES} bytes")
    return data


def _create_durably(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) holding ``data``, all or nothing, and on disk before this
    returns: written to a temporary file, fsynced, linked into place (FileExistsError if the
    path exists), and the directory fsynced. Tokens are signed with this secret as soon as
    rpad starts; after a crash or power loss it must not come back empty."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_keys(cfg: Config, *, generate: bool = True) -> Keys:
    """Read the configured keys. With no secret file configured, use the systemd credential
    ``jwt.secret`` if there is one, else ``<state_dir>/jwt.secret``, generated (mode 0600) on
    first start. Raises ValueError naming the config key and the file on a bad key."""
    secret_list: list[bytes] = []
    if cfg.auth.secret_file:
        secret_list.append(_read_secret("auth.secret_file", Path(cfg.auth.secret_file)))
    else:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        cred = Path(cred_dir) / CREDENTIAL_NAME if cred_dir else None
        if cred is not None and cred.exists():
            secret_list.append(_read_secret(f"credential {CREDENTIAL_NAME}", cred))
        else:
            path = cfg.secret_path
            if not path.exists():
                if not generate:
                    raise ValueError(f"{path} does not exist: start `rpad serve` once, set auth.secret_file, "
                                     "or pass `rpad token --secret-file PATH`")
                try:
                    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    _create_durably(path, (pysecrets.token_urlsafe(SECRET_BYTES) + "\n").encode())
                except FileExistsError:
                    pass  # another process created it first: use theirs
                except OSError as exc:
                    raise ValueError(
                        f"state_dir: cannot create the JWT secret {path}: {exc.strerror or exc}"
                    ) from None
            secret_list.append(_read_secret("auth.secret_file (generated)", path))
    for i, extra in enumerate(cfg.auth.extra_secret_files):
        secret_list.append(_read_secret(f"auth.extra_secret_files[{i}]", Path(extra)))
    public: list[tuple[str, Any]] = []
    named = [("auth.public_key_file", cfg.auth.public_key_file)] + [
        (f"auth.extra_public_key_files[{i}]", f)
        for i, f in enumerate(cfg.auth.extra_public_key_files)]
    for key, key_file in named:
        if not key_file:
            continue
        try:
            pem = Path(key_file).read_bytes()
        except OSError as exc:
            raise ValueError(f"{key}: cannot read {key_file}: {exc.strerror or exc}") from None
        try:
            public_key = serialization.load_pem_public_key(pem)
            public.append((_alg_of_public_key(public_key), public_key))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{key}: {key_file} is not a usable PEM public key: {exc}") from None
    return Keys(secret_list, public)


class Authenticator:
    def __init__(
        self,
        keys: Keys,
        *,
        issuer: str = "",
        audience: str = "",
        leeway_seconds: float = 30.0,
        token_generation: Callable[[str], int] = lambda _sub: 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self.token_generation = token_generation
        self.clock = clock
        # Verified tokens: signature checks are the expensive part of a request.
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    def reconfigure(self, keys: Keys, *, issuer: str, audience: str, leeway_seconds: float) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self._cache.clear()

    # -- minting -------------------------------------------------------------------------------

    def mint(self, *, role: str, sub: str, ttl_seconds: float | None, topics: Sequence[str] = (),
             publish: Sequence[str] = (), gen: int | None = None,
             exec_: Sequence[str] = ()) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if exec_ and role != "operator":
            raise ValueError("an exec claim is for operator tokens (admins reach every client, "
                             "other roles none)")
        problem = exec_claim_problem(list(exec_)) if exec_ else None
        if problem:
            raise ValueError(problem)
        now = int(self.clock())
        claims: dict[str, Any] = {"sub": sub, "role": role, "iat": now}
        if ttl_seconds is not None:
            claims["exp"] = now + int(ttl_seconds)
        if topics:
            claims["topics"] = list(topics)
        if publish:
            claims["publish"] = list(publish)
        if exec_:
            claims["exec"] = list(exec_)
        if role == "agent":
            claims["gen"] = self.token_generation(sub) if gen is None else gen
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.keys.secrets[0], algorithm="HS256")

    # -- verifying -----------------------------------------------------------------------------

    def verify(self, token: str) -> Principal:
        """Return the token's principal or raise AuthError(401)."""
        now = self.clock()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.exp is not None and now > cached.exp + self.leeway_seconds:
                del self._cache[token]
                raise AuthError(401, "the token has expired", "token_expired")
            self._check_generation(cached)
            return cached
        principal = self._verify_uncached(token)
        self._check_generation(principal)
        self._cache[token] = principal
        if len(self._cache) > TOKEN_CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    def _check_generation(self, p: Principal) -> None:
        if p.role == "agent" and p.gen != self.token_generation(p.sub):
            raise AuthError(401, "the token has been revoked", "token_revoked")

    def _verify_uncached(self, token: str) -> Principal:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise AuthError(401, "the token is empty or too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "the token is malformed (not a JWT)") from None
        alg = header.get("alg")
        if alg == "HS256":
            candidates: list[Any] = list(self.keys.secrets)
            own = True
        elif alg in ("RS256", "ES256", "EdDSA"):
            candidates = [k for a, k in self.keys.public_keys if a == alg]
            own = False
        else:
            raise AuthError(401, f"the token's algorithm {str(alg)[:20]!r} is not accepted")
        if not candidates:
            raise AuthError(401, f"no key is configured for {alg} tokens")
        # Times are checked below against this authenticator's clock (pyjwt would use its own).
        options: jwt.types.Options = {"require": ["sub"], "verify_aud": bool(self.audience),
                                   "verify_exp": False, "verify_nbf": False, "verify_iat": False}
        claims: dict[str, Any] | None = None
        last: Exception | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token, key, algorithms=[alg], options=options, leeway=self.leeway_seconds,
                    issuer=self.issuer or None, audience=self.audience or None,
                )
                break
            except jwt.InvalidSignatureError as exc:
                last = exc
            except jwt.InvalidAudienceError:
                raise AuthError(401, "the token is for another audience") from None
            except jwt.InvalidIssuerError:
                raise AuthError(401, "the token is from another issuer") from None
            except jwt.MissingRequiredClaimError as exc:
                raise AuthError(401, f"the token lacks the {exc.claim!r} claim") from None
            except jwt.PyJWTError as exc:
                last = exc
        if claims is None:
            if isinstance(last, jwt.InvalidSignatureError):
                raise AuthError(401, "the token's signature does not verify")
            raise AuthError(401, "the token is invalid")
        self._check_times(claims)
        return self._principal(claims, own)

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self.clock()
        leeway = self.leeway_seconds
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise AuthError(401, f"the token's {name} claim must be a number")
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if exp is not None and now > exp + leeway:
            raise AuthError(401, "the token has expired", "token_expired")
        if (nbf is not None and nbf > now + leeway) or (iat is not None and iat > now + leeway):
            raise AuthError(401, "the token is not valid yet (nbf/iat in the future)")

    def _principal(self, claims: dict[str, Any], own: bool) -> Principal:
        sub, role = claims.get("sub"), claims.get("role")
        if not isinstance(sub, str) or not 0 < len(sub) <= 128:
            raise AuthError(401, "the token's sub claim must be a string of 1 to 128 characters")
        if role not in ROLES:
            raise AuthError(401, f"the token's role claim must be one of {', '.join(ROLES)}")
        exp = claims.get("exp")
        if exp is None and role != "agent" and not own:
            raise AuthError(401, f"a {role} token from an external issuer must carry an exp claim")
        topics = _glob_list(claims.get("topics"), "topics")
        publish = _glob_list(claims.get("publish"), "publish")
        gen = claims.get("gen", 0)
        if isinstance(gen, bool) or not isinstance(gen, int):
            raise AuthError(401, "the token's gen claim must be an integer")
        exec_claim = claims.get("exec")
        if exec_claim is not None:
            problem = exec_claim_problem(exec_claim)
            if problem:
                raise AuthError(401, f"the token's {problem.removeprefix('the ')}")
        # Only operators' exec claims mean anything; others' are dropped, never honoured.
        exec_globs = tuple(exec_claim) if role == "operator" and exec_claim else ()
        return Principal(sub, role, topics, publish, float(exp) if exp is not None else None, gen,
                         exec_globs)


def _glob_list(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 256 for v in value):
        raise AuthError(401, f"the token's {name} claim must be a list of strings")
    return tuple(value)


def bearer_token(header_value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <jwt>`` header, or None."""
    if not header_value:
        return None
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
