"""The auth processor through real Envoy: tokens minted here with PyJWT and keys made with
cryptography, an HS256 secret, a JWKS with an RSA and a P-256 key, and an API key file.

Envoy's configuration is tests/e2e/envoy-auth.yaml: the processor on request headers, its
dynamic metadata copied by the route into x-auth-meta-* request headers, which the echo
upstream shows. A refused request must never reach the upstream: Envoy's counter of upstream
requests to the echo cluster says so.
"""

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import REPO, environment, running_stack

TEMPLATE = REPO / "tests" / "e2e" / "envoy-auth.yaml"
ISSUER = "https://issuer.test"
AUDIENCE = "orders-api"
SECRET = "s3cret-" + "x" * 40
API_KEY = "key-alpha-0123456789"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(public_key, kid):
    numbers = public_key.public_numbers()
    if isinstance(public_key, rsa.RSAPublicKey):
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64url(n),
                "e": b64url(e)}
    return {"kty": "EC", "kid": kid, "crv": "P-256", "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big"))}


class Keys:
    """The keys of one stack, and tokens signed with them."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.rsa = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048)
                    for kid in ("rsa-1", "rsa-2")}
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.secret_file = self.dir / "hs256.secret"
        self.secret_file.write_text(SECRET + "\n")
        self.jwks_file = self.dir / "jwks.json"
        self.write_jwks(["rsa-1"])
        digest = hashlib.sha256(API_KEY.encode()).hexdigest()
        self.api_keys_file = self.dir / "api-keys.txt"
        self.api_keys_file.write_text(f"# digest name scopes\n{digest} alpha read write\n"
                                      f"{hashlib.sha256(b'no-scope').hexdigest()} beta\n")

    def write_jwks(self, rsa_kids, text=None):
        """Replaces the JWKS file at once (a new file renamed over the old one)."""
        keys = [jwk_of(self.rsa[k].public_key(), k) for k in rsa_kids]
        keys.append(jwk_of(self.ec.public_key(), "ec-1"))
        tmp = self.jwks_file.with_suffix(".tmp")
        tmp.write_text(text if text is not None else json.dumps({"keys": keys}))
        os.replace(tmp, self.jwks_file)

    def env(self):
        return {
            "EXTPROC_AUTH_HS256_SECRET_FILE": str(self.secret_file),
            "EXTPROC_AUTH_JWKS_FILE": str(self.jwks_file),
            "EXTPROC_AUTH_API_KEYS_FILE": str(self.api_keys_file),
            "EXTPROC_AUTH_ISSUER": ISSUER,
            "EXTPROC_AUTH_AUDIENCE": AUDIENCE,
            "EXTPROC_AUTH_CLOCK_SKEW": "5",
            "EXTPROC_AUTH_REQUIRED_SCOPE": "read",
            "EXTPROC_AUTH_FORWARD_CLAIMS": "sub:x-auth-subject,email:x-auth-email",
            "EXTPROC_AUTH_RELOAD_INTERVAL": "1",
        }

    def token(self, alg="RS256", kid="rsa-1", **claims):
        now = int(time.time())
        body = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300,
                "scope": "read write", "email": "alice@example.test"}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        if alg == "HS256":
            return jwt.encode(body, SECRET, algorithm="HS256")
        key = self.ec if alg == "ES256" else self.rsa[kid]
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


@contextlib.contextmanager
def auth_stack(tmp_path_factory, name, processor_args=()):
    keys = Keys(tmp_path_factory.mktemp(f"{name}-keys"))
    log_dir = tmp_path_factory.mktemp(name)
    with environment(keys.env()):
        with running_stack(log_dir, TEMPLATE, ["auth"], processor_args=processor_args) as s:
            s.keys = keys
            yield s


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with auth_stack(tmp_path_factory, "e2e-auth") as s:
        yield s


def call(stack, headers=None, path="/orders"):
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


def bearer(token):
    return {"authorization": f"Bearer {token}"}


def upstream_requests(stack):
    url = f"http://127.0.0.1:{stack.admin_port}/stats?filter=^cluster.echo.upstream_rq_total$"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return int(text.split(":")[1]) if text.strip() else 0


def admitted(stack, headers):
    status, _, body = call(stack, headers)
    assert status == 200, (status, body, stack.logs())
    return json.loads(body)["headers"]


def refused(stack, headers, status=401):
    before = upstream_requests(stack)
    got, response_headers, body = call(stack, headers)
    assert got == status, (got, body)
    assert upstream_requests(stack) == before, "a refused request reached the upstream"
    assert response_headers["content-type"] == "application/json"
    return response_headers["www-authenticate"], json.loads(body)


# ---------------------------------------------------------------- admitted


@pytest.mark.parametrize("alg,kid", [("HS256", None), ("RS256", "rsa-1"), ("ES256", "ec-1")])
def test_a_good_token_goes_through_with_its_claims(stack, alg, kid):
    seen = admitted(stack, bearer(stack.keys.token(alg=alg, kid=kid)))
    assert seen["x-auth-subject"] == "alice"
    assert seen["x-auth-email"] == "alice@example.test"
    # Dynamic metadata as Envoy received it, through %DYNAMIC_METADATA% in the route.
    assert seen["x-auth-meta-sub"] == "alice"
    assert seen["x-auth-meta-method"] == "jwt"


def test_audience_in_a_list_and_scp_list_are_accepted(stack):
    token = stack.keys.token(aud=["other", AUDIENCE], scope=None, scp=["read"])
    assert admitted(stack, bearer(token))["x-auth-subject"] == "alice"


def test_expiry_within_the_clock_skew_is_accepted(stack):
    token = stack.keys.token(exp=int(time.time()) - 2)  # skew is 5 s
    admitted(stack, bearer(token))


def test_a_forged_claim_header_is_replaced_or_removed(stack):
    token = stack.keys.token(email=None)  # no email claim: its header must not pass either
    seen = admitted(stack, {**bearer(token), "x-auth-subject": "mallory",
                            "x-auth-email": "mallory@example.test",
                            "x-auth-meta-sub": "mallory"})
    assert seen["x-auth-subject"] == "alice"
    assert "x-auth-email" not in seen
    assert seen["x-auth-meta-sub"] == "alice"


def test_an_api_key_goes_through_with_its_name(stack):
    seen = admitted(stack, {"x-api-key": API_KEY, "x-auth-subject": "mallory"})
    assert seen["x-auth-subject"] == "alpha"
    assert seen["x-auth-meta-sub"] == "alpha"
    assert seen["x-auth-meta-method"] == "api_key"


# ---------------------------------------------------------------- refused


def test_a_missing_credential_gets_a_bare_challenge(stack):
    challenge, body = refused(stack, {})
    assert challenge == 'Bearer realm="extproc"'
    assert body == {"error": "unauthorized", "error_description": "no credential"}


BAD_TOKENS = {
    "expired": (dict(exp=-60), "token expired"),
    "not yet valid": (dict(nbf=60), "token not yet valid"),
    "wrong audience": (dict(aud="someone-else"), "wrong audience"),
    "wrong issuer": (dict(iss="https://evil.test"), "wrong issuer"),
    "no exp": (dict(exp=None), "token has no exp"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_claims_are_refused(stack, case):
    claims, reason = BAD_TOKENS[case]
    now = int(time.time())
    claims = {k: (now + v if k in ("exp", "nbf") and v is not None else v)
              for k, v in claims.items()}
    challenge, body = refused(stack, bearer(stack.keys.token(**claims)))
    assert 'error="invalid_token"' in challenge
    assert body == {"error": "invalid_token", "error_description": reason}


def test_a_wrong_signature_is_refused(stack):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE,
                        "exp": int(time.time()) + 300, "scope": "read"},
                       other, algorithm="RS256", headers={"kid": "rsa-1"})
    _, body = refused(stack, bearer(token))
    assert body["error_description"] == "bad signature"
    # A changed payload under a good signature, too.
    head, payload, sig = stack.keys.token(alg="HS256").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    forged = ".".join([head, b64url(json.dumps(claims).encode()), sig])
    assert refused(stack, bearer(forged))[1]["error_description"] == "bad signature"


def unsigned(header, claims, key=None):
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest()) if key else ""
    return signing_input + "." + sig


def test_alg_none_is_refused(stack):
    claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300,
              "scope": "read"}
    for alg in ("none", "None", "NONE"):
        _, body = refused(stack, bearer(unsigned({"alg": alg, "typ": "JWT"}, claims)))
        assert body["error_description"] == "algorithm not accepted"


def test_an_rsa_public_key_used_as_hmac_secret_is_refused(stack):
    """Algorithm confusion: HS256 signed with the RSA key's public PEM, naming the RSA kid."""
    pem = stack.keys.rsa["rsa-1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = {"sub": "admin", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300,
              "scope": "read"}
    token = unsigned({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims, key=pem)
    assert refused(stack, bearer(token))[1]["error_description"] == "bad signature"
    token = unsigned({"alg": "RS256", "typ": "JWT", "kid": "ec-1"}, claims, key=pem)
    assert refused(stack, bearer(token))[1]["error_description"] == \
        "algorithm does not match the key"


@pytest.mark.parametrize("value,reason", [
    ("Basic YWxpY2U6cHc=", "authorization is not a bearer token"),
    ("Bearer ", "empty bearer token"),
    ("Bearer not-a-jwt", "malformed token"),
    ("Bearer a.b.c", "malformed token"),
])
def test_malformed_authorization_is_refused(stack, value, reason):
    _, body = refused(stack, {"authorization": value})
    assert body["error_description"] == reason


def test_a_token_without_the_required_scope_gets_403(stack):
    challenge, body = refused(stack, bearer(stack.keys.token(scope="write")), status=403)
    assert 'error="insufficient_scope"' in challenge and 'scope="read"' in challenge
    assert body["error"] == "insufficient_scope"


def test_bad_api_keys_are_refused(stack):
    assert refused(stack, {"x-api-key": "wrong"})[1]["error_description"] == "unknown API key"
    assert refused(stack, {"x-api-key": "no-scope"}, status=403)[1]["error"] == \
        "insufficient_scope"


# ---------------------------------------------------------------- key rotation under load


def wait_for(what, predicate, stack, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{stack.logs()}"
        time.sleep(0.1)


def test_keys_rotate_while_load_runs(tmp_path_factory):
    """Four load threads send requests with the current token on four worker loops, while the
    JWKS gains a new key, is broken for a while, then loses the old key. No load request may
    fail: the load switches to the new key's token only once that is accepted, and the old key
    is removed only after."""
    with auth_stack(tmp_path_factory, "e2e-auth-rotation", ("--workers", "4")) as s:
        keys = s.keys
        current = {"token": keys.token(kid="rsa-1")}
        stop = threading.Event()
        failures, counts = [], [0] * 4

        def load(i):
            deadline = time.monotonic() + 60  # bounded even if the test body hangs
            while not stop.is_set() and time.monotonic() < deadline and counts[i] < 20000:
                status, _, body = call(s, bearer(current["token"]))
                counts[i] += 1
                if status != 200:
                    failures.append((status, body))

        threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            new = keys.token(kid="rsa-2")
            assert call(s, bearer(new))[0] == 401
            keys.write_jwks(["rsa-1", "rsa-2"])
            wait_for("the new key", lambda: call(s, bearer(new))[0] == 200, s)
            current["token"] = new
            # A broken file keeps the keys loaded before.
            keys.write_jwks([], text="{not json")
            wait_for("the broken file to be seen",
                     lambda: "keeping the keys loaded before" in
                     Path(s.log_dir / "processor.log").read_text(), s)
            assert call(s, bearer(keys.token(kid="rsa-1")))[0] == 200
            keys.write_jwks(["rsa-2"])
            old = keys.token(kid="rsa-1")
            wait_for("the old key to go", lambda: call(s, bearer(old))[0] == 401, s)
            time.sleep(0.5)  # some more load on the last key set
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures, failures[:5]
        assert sum(counts) > 0
        print(f"rotation: {sum(counts)} load requests, all admitted")
        log = Path(s.log_dir / "processor.log").read_text()
        assert log.count("auth: keys reloaded") == 2, log[-3000:]
