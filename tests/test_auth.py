"""JWT authentication (SPEC §2), unit level: keys of every kind generated here with
`cryptography`, tokens minted here, times from an injected clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from rpad import config as config_mod
from rpad.auth import Authenticator, Keys, bearer_token, load_keys, parse_ttl
from rpad.core.errors import AuthError
from rpad.core.principal import Principal, require_client_access, require_role

NOW = 1_767_225_600.0
SECRET = b"0123456789abcdef0123456789abcdef"
OLD_SECRET = b"an-older-secret-still-accepted!!"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def private_keys() -> dict[str, Any]:
    return {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


PRIVATE = private_keys()


def pem(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built by hand (pyjwt refuses to make the malicious ones)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if hmac_key is None:
        return signing_input + "."
    sig = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def make_auth(clock: Clock | None = None, *, gens: dict[str, int] | None = None,
              public: bool = True, **kw: Any) -> Authenticator:
    keys = Keys([SECRET, OLD_SECRET],
                [(alg, k.public_key()) for alg, k in PRIVATE.items()] if public else [])
    g = gens if gens is not None else {}
    return Authenticator(keys, token_generation=lambda sub: g.get(sub, 0),
                         clock=clock or Clock(), **kw)


def external(alg: str, **claims: Any) -> str:
    base = {"sub": "alice", "role": "viewer", "exp": int(NOW) + 600}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, PRIVATE[alg],
                      algorithm=alg)


def refused(auth: Authenticator, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.verify(token)
    return info.value


# -- own tokens (HS256) ------------------------------------------------------------------------


def test_mint_and_verify() -> None:
    auth = make_auth()
    token = auth.mint(role="service", sub="gw", ttl_seconds=3600, topics=["task.*"],
                      publish=["task.*"])
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"sub": "gw", "role": "service", "iat": int(NOW), "exp": int(NOW) + 3600,
                      "topics": ["task.*"], "publish": ["task.*"]}
    assert auth.verify(token) == Principal("gw", "service", ("task.*",), ("task.*",),
                                           NOW + 3600, 0)


def test_agent_tokens_carry_the_generation_and_never_need_exp() -> None:
    gens = {"robot-1": 4}
    auth = make_auth(gens=gens)
    token = auth.mint(role="agent", sub="robot-1", ttl_seconds=None)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims == {"sub": "robot-1", "role": "agent", "iat": int(NOW), "gen": 4}
    p = auth.verify(token)
    assert (p.role, p.sub, p.gen, p.exp) == ("agent", "robot-1", 4, None)


def test_admin_minted_with_ttl_never_has_no_exp_and_is_accepted() -> None:
    auth = make_auth()
    token = auth.mint(role="admin", sub="root", ttl_seconds=None)
    assert "exp" not in jwt.decode(token, SECRET, algorithms=["HS256"])
    assert auth.verify(token).is_admin


def test_rotation_every_secret_verifies_the_first_signs() -> None:
    auth = make_auth()
    old = jwt.encode({"sub": "u", "role": "viewer", "exp": int(NOW) + 60}, OLD_SECRET,
                     algorithm="HS256")
    assert auth.verify(old).sub == "u"
    assert jwt.decode(auth.mint(role="viewer", sub="u", ttl_seconds=60), SECRET,
                      algorithms=["HS256"], options={"verify_exp": False})["sub"] == "u"
    unknown = jwt.encode({"sub": "u", "role": "admin"}, b"x" * 32, algorithm="HS256")
    err = refused(auth, unknown)
    assert (err.status, err.code, err.message) == (
        401, "unauthorized", "the token's signature does not verify")


def test_expiry_follows_the_injected_clock_with_leeway() -> None:
    clock = Clock()
    auth = make_auth(clock, leeway_seconds=30)
    token = auth.mint(role="viewer", sub="u", ttl_seconds=60)
    clock.now = NOW + 60 + 30  # exactly exp + leeway: still valid
    assert auth.verify(token).sub == "u"
    clock.now = NOW + 60 + 30.5  # the cached verification expires too
    err = refused(auth, token)
    assert (err.status, err.code, err.message) == (401, "token_expired", "the token has expired")
    # A fresh authenticator (no cache) agrees.
    err = refused(make_auth(clock, leeway_seconds=30), token)
    assert err.code == "token_expired"


def test_a_clock_far_from_the_real_one_is_what_counts() -> None:
    # Tokens minted on a fake clock years away from the real one verify on that clock.
    clock = Clock(4_102_444_800.0)  # 2100-01-01
    auth = make_auth(clock)
    token = auth.mint(role="viewer", sub="u", ttl_seconds=60)
    assert auth.verify(token).sub == "u"
    past = Clock(1_000_000_000.0)  # 2001
    assert make_auth(past).mint(role="viewer", sub="u", ttl_seconds=60)
    assert refused(make_auth(clock), make_auth(past).mint(role="viewer", sub="u",
                                                          ttl_seconds=60)).code == "token_expired"


def test_not_yet_valid_tokens_are_refused() -> None:
    auth = make_auth(leeway_seconds=30)
    for claim in ("nbf", "iat"):
        token = jwt.encode({"sub": "u", "role": "viewer", "exp": int(NOW) + 600,
                            claim: int(NOW) + 31}, SECRET, algorithm="HS256")
        err = refused(auth, token)
        assert err.message == "the token is not valid yet (nbf/iat in the future)"
        ok = jwt.encode({"sub": "u", "role": "viewer", "exp": int(NOW) + 600,
                         claim: int(NOW) + 30}, SECRET, algorithm="HS256")
        assert auth.verify(ok).sub == "u"


# -- external issuers (verification-only public keys) -----------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_public_key_tokens_verify(alg: str) -> None:
    auth = make_auth()
    p = auth.verify(external(alg, role="admin", sub="ops"))
    assert (p.sub, p.role) == ("ops", "admin")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_public_key_tokens_expire(alg: str) -> None:
    err = refused(make_auth(), external(alg, exp=int(NOW) - 31))
    assert err.code == "token_expired"


def test_several_public_keys_of_one_kind_are_active_at_once() -> None:
    second = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = Keys([SECRET], [("RS256", PRIVATE["RS256"].public_key()),
                           ("RS256", second.public_key())])
    auth = Authenticator(keys, clock=Clock())
    for key in (PRIVATE["RS256"], second):
        token = jwt.encode({"sub": "u", "role": "viewer", "exp": int(NOW) + 60}, key,
                           algorithm="RS256")
        assert auth.verify(token).sub == "u"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "u", "role": "viewer", "exp": int(NOW) + 60}, stranger,
                       algorithm="RS256")
    assert refused(auth, token).message == "the token's signature does not verify"


def test_external_non_agent_tokens_must_expire() -> None:
    auth = make_auth()
    err = refused(auth, external("RS256", exp=None))
    assert err.message == "a viewer token from an external issuer must carry an exp claim"
    assert auth.verify(external("RS256", role="agent", sub="r1", exp=None)).role == "agent"


def test_no_key_for_the_algorithm() -> None:
    err = refused(make_auth(public=False), external("ES256"))
    assert (err.status, err.message) == (401, "no key is configured for ES256 tokens")


# -- attacks -----------------------------------------------------------------------------------


def test_alg_none_is_refused() -> None:
    token = forge({"alg": "none", "typ": "JWT"}, {"sub": "x", "role": "admin"}, None)
    err = refused(make_auth(), token)
    assert (err.status, err.code, err.message) == (
        401, "unauthorized", "the token's algorithm 'none' is not accepted")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_hs256_signed_with_a_public_keys_bytes_is_refused(alg: str) -> None:
    public_pem = pem(PRIVATE[alg].public_key())
    token = forge({"alg": "HS256", "typ": "JWT"},
                  {"sub": "x", "role": "admin", "exp": int(NOW) + 60}, public_pem)
    err = refused(make_auth(), token)
    assert (err.status, err.message) == (401, "the token's signature does not verify")


def test_algorithm_swapped_in_the_header_is_refused() -> None:
    # Signed with the RSA key but labelled ES256: checked against the EC key, and fails.
    token = external("RS256")
    _header, rest = token.split(".", 1)
    swapped = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode()) + "." + rest
    assert refused(make_auth(), swapped).status == 401


@pytest.mark.parametrize(("token", "message"), [
    ("", "the token is empty or too long"),
    ("x" * 9000, "the token is empty or too long"),
    ("not-a-jwt", "the token is malformed (not a JWT)"),
    ("a.b.c", "the token is malformed (not a JWT)"),
])
def test_malformed(token: str, message: str) -> None:
    assert refused(make_auth(), token).message == message


@pytest.mark.parametrize(("claims", "message"), [
    ({"role": "admin"}, "the token lacks the 'sub' claim"),
    ({"sub": "u"}, "the token's role claim must be one of agent, viewer, operator, service, admin"),
    ({"sub": "u", "role": "root"},
     "the token's role claim must be one of agent, viewer, operator, service, admin"),
    ({"sub": "u" * 129, "role": "admin"},
     "the token's sub claim must be a string of 1 to 128 characters"),
    ({"sub": "u", "role": "viewer", "topics": "all"},
     "the token's topics claim must be a list of strings"),
    ({"sub": "u", "role": "agent", "gen": "1"}, "the token's gen claim must be an integer"),
    ({"sub": "u", "role": "viewer", "exp": "soon"}, "the token's exp claim must be a number"),
    ({"sub": "u", "role": "operator", "exec": "rpa-*"},
     "the token's exec claim must be a list of non-empty strings"),
    ({"sub": "u", "role": "operator", "exec": ["tag:"]},
     "the token's exec claim's entry tag: needs a tag glob after it"),
])
def test_bad_claims(claims: dict[str, Any], message: str) -> None:
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert refused(make_auth(), token).message == message


def test_issuer_and_audience() -> None:
    auth = make_auth(issuer="https://login.example", audience="rpad")
    good = auth.mint(role="viewer", sub="u", ttl_seconds=60)
    assert jwt.decode(good, SECRET, algorithms=["HS256"], audience="rpad",
                      options={"verify_exp": False})["iss"] == "https://login.example"
    assert auth.verify(good).sub == "u"
    assert auth.verify(external("RS256", iss="https://login.example",
                                aud=["other", "rpad"])).sub == "alice"
    cases = [
        ({"iss": "https://evil.example", "aud": "rpad"}, "the token is from another issuer"),
        ({"iss": "https://login.example", "aud": "other"}, "the token is for another audience"),
        ({"aud": "rpad"}, "the token lacks the 'iss' claim"),
        ({"iss": "https://login.example"}, "the token lacks the 'aud' claim"),
    ]
    for claims, message in cases:
        err = refused(auth, external("ES256", **claims))
        assert (err.status, err.message) == (401, message), claims


def test_revocation_by_generation() -> None:
    gens: dict[str, int] = {}
    auth = make_auth(gens=gens)
    old = auth.mint(role="agent", sub="r1", ttl_seconds=None)
    assert auth.verify(old).gen == 0  # and now cached
    gens["r1"] = 1
    err = refused(auth, old)
    assert (err.status, err.code, err.message) == (401, "token_revoked",
                                                   "the token has been revoked")
    new = auth.mint(role="agent", sub="r1", ttl_seconds=None)
    assert auth.verify(new).gen == 1
    # Other clients' tokens and other roles are untouched.
    assert auth.verify(auth.mint(role="agent", sub="r2", ttl_seconds=None)).gen == 0
    assert auth.verify(auth.mint(role="viewer", sub="r1", ttl_seconds=60)).role == "viewer"


def test_reconfigure_drops_removed_keys_and_the_cache() -> None:
    auth = make_auth()
    token = external("EdDSA")
    assert auth.verify(token).sub == "alice"
    auth.reconfigure(Keys([SECRET], []), issuer="", audience="", leeway_seconds=0)
    assert refused(auth, token).message == "no key is configured for EdDSA tokens"


# -- role checks -------------------------------------------------------------------------------


ROLE_ORDER = ["agent", "viewer", "service", "admin"]


@pytest.mark.parametrize("have", ROLE_ORDER)
@pytest.mark.parametrize("need", ROLE_ORDER)
def test_require_role(have: str, need: str) -> None:
    p = Principal("u", have)
    if ROLE_ORDER.index(have) >= ROLE_ORDER.index(need):
        require_role(p, need)
    else:
        with pytest.raises(AuthError) as info:
            require_role(p, need)
        assert (info.value.status, info.value.code, info.value.message) == (
            403, "forbidden", f"this needs the {need} role or higher; the token's role is {have}")


@pytest.mark.parametrize(("role", "sub", "write", "allowed"), [
    ("agent", "c1", True, True), ("agent", "c1", False, True),
    ("agent", "c2", True, False), ("agent", "c2", False, False),
    ("viewer", "v", False, True), ("viewer", "v", True, False),
    ("service", "s", True, True), ("admin", "a", True, True),
])
def test_require_client_access(role: str, sub: str, write: bool, allowed: bool) -> None:
    p = Principal(sub, role)
    if allowed:
        require_client_access(p, "c1", write=write)
    else:
        with pytest.raises(AuthError) as info:
            require_client_access(p, "c1", write=write)
        assert info.value.status == 403


# -- helpers and keys --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("30d", 2_592_000.0), ("2w", 1_209_600.0),
    ("3600", 3600.0), ("1.5h", 5400.0), ("never", None),
    # The longest: 523 weeks, in any unit.
    ("523w", 316_310_400.0), ("3661d", 316_310_400.0), ("0003661.000d", 316_310_400.0),
    ("316310400", 316_310_400.0),
])
def test_parse_ttl(text: str, seconds: float | None) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1h", "1y", "soon", "1" + "0" * 400 + "d",
                                  "99999999999999d", "0.000w", "523.0000000000000000000000000001w",
                                  "316310401", "3661d ", " 30d", "\u0663\u0660d", "1_0d", "1e3s"])
def test_parse_ttl_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer  abc ", "abc"), (None, None), ("", None),
    ("Basic dXNlcjpwYXNz", None), ("Bearer", None), ("Bearer   ", None),
])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def make_config(tmp_path: Path, **auth: Any) -> config_mod.Config:
    return config_mod.from_dict({"state_dir": str(tmp_path / "state"), "auth": auth})


def test_a_secret_is_generated_once_owner_only(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = make_config(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_keys(cfg, generate=False)
    keys = load_keys(cfg)
    path = tmp_path / "state" / "jwt.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(keys.secrets) == 1 and len(keys.secrets[0]) >= 32
    assert load_keys(cfg).secrets == keys.secrets  # kept across starts


def test_a_systemd_credential_is_preferred(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "jwt.secret").write_bytes(b"credential-secret-0123456789\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    keys = load_keys(make_config(tmp_path))
    assert keys.secrets == [b"credential-secret-0123456789"]
    assert not (tmp_path / "state" / "jwt.secret").exists()


def test_configured_keys_are_loaded(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    extra = tmp_path / "old"
    extra.write_bytes(OLD_SECRET + b"\n")
    files = []
    for alg, key in PRIVATE.items():
        f = tmp_path / f"{alg}.pem"
        f.write_bytes(pem(key.public_key()))
        files.append(str(f))
    cfg = make_config(tmp_path, secret_file=str(secret), extra_secret_files=[str(extra)],
                      public_key_file=files[0], extra_public_key_files=files[1:])
    keys = load_keys(cfg)
    assert keys.secrets == [SECRET, OLD_SECRET]
    assert [alg for alg, _ in keys.public_keys] == ["RS256", "ES256", "EdDSA"]
    auth = Authenticator(keys, clock=Clock())
    for alg in PRIVATE:
        assert auth.verify(external(alg)).sub == "alice"


def test_bad_key_files_are_named_by_their_key(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"too short")
    with pytest.raises(ValueError) as info:
        load_keys(make_config(tmp_path, secret_file=str(short)))
    assert str(info.value) == f"auth.secret_file: {short}: a secret must be at least 16 bytes"
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError) as info:
        load_keys(make_config(tmp_path, public_key_file=str(garbage)))
    assert str(info.value).startswith(
        f"auth.public_key_file: {garbage} is not a usable PEM public key")
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(pem(ec.generate_private_key(ec.SECP384R1()).public_key()))
    with pytest.raises(ValueError) as info:
        load_keys(make_config(tmp_path, extra_public_key_files=[str(p384)]))
    assert str(info.value) == (
        f"auth.extra_public_key_files[0]: {p384} is not a usable PEM public key: "
        "an EC key must be on the P-256 curve (ES256), not secp384r1")


def test_exec_claims_count_on_operator_tokens_only() -> None:
    auth = make_auth()
    op = auth.verify(auth.mint(role="operator", sub="op", ttl_seconds=60,
                               exec_=["rpa-*", "tag:lab"]))
    assert (op.role, op.exec) == ("operator", ("rpa-*", "tag:lab"))
    assert op.at_least("viewer") and not op.at_least("service")
    # A claim forged into another role's token is dropped, never honoured.
    for role in ("viewer", "service", "admin", "agent"):
        claims = {"sub": "x", "role": role, "exec": ["*"], "exp": 2**40}
        assert auth.verify(jwt.encode(claims, SECRET, algorithm="HS256")).exec == ()
    with pytest.raises(ValueError, match="operator tokens"):
        auth.mint(role="viewer", sub="v", ttl_seconds=60, exec_=["*"])
