"""OAuth2 side of dicomfs-emulator: the JWT-bearer and refresh-token grants,
bearer checks on API paths, token lifetime, the metadata server. JWTs are
signed here with the `cryptography` package, independently of the emulator.
"""
import json
import os
import stat
import time
import urllib.parse
import urllib.request

from emulator_fixture import sign_jwt

UNAUTH_PREFIX = "Request had invalid authentication credentials. Expected OAuth 2 access token"


def assert_unauthenticated(resp):
    code, headers, body = resp
    assert code == 401, body
    err = json.loads(body)["error"]
    assert err["code"] == 401
    assert err["status"] == "UNAUTHENTICATED"
    assert err["message"].startswith(UNAUTH_PREFIX)


def other_key_pem():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def form_post(url, fields):
    req = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_credentials_file(emulator):
    st = os.stat(emulator.credentials)
    assert stat.S_IMODE(st.st_mode) == 0o600
    key = emulator.key()
    assert key["type"] == "service_account"
    assert key["token_uri"] == emulator.url + "/token"
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert key["client_email"].endswith(".iam.gserviceaccount.com")
    assert key["project_id"] == "test-project"
    assert key["private_key_id"]
    assert emulator.env["GOOGLE_APPLICATION_CREDENTIALS"] == emulator.credentials
    assert emulator.env["STORAGE_EMULATOR_HOST"] == emulator.url
    assert emulator.env["CLOUDSDK_API_ENDPOINT_OVERRIDES_HEALTHCARE"] == emulator.url + "/"
    assert emulator.env["GCE_METADATA_HOST"] == "127.0.0.1:%d" % emulator.port


def test_no_token_is_unauthenticated(emulator):
    assert_unauthenticated(emulator.request("GET", "/storage/v1/b/staging", auth=False))
    assert_unauthenticated(emulator.request("GET", "/storage/v1/b/staging", auth=False,
                                            headers={"Authorization": "Bearer made-up"}))
    assert_unauthenticated(emulator.request(
        "GET", "/v1/projects/test-project/locations/us-central1/datasets", auth=False))
    assert_unauthenticated(emulator.request(
        "POST", "/upload/storage/v1/b/staging/o?uploadType=media&name=x", body=b"x", auth=False))
    assert emulator.stats()["unauthenticated"] == 4


def test_jwt_bearer_grant(emulator):
    status, body = emulator.exchange(emulator.jwt())
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    token = body["access_token"]
    code, _, _ = emulator.request("GET", "/storage/v1/b/staging",
                                  headers={"Authorization": "Bearer " + token})
    assert code == 200
    # The audiences Google's libraries use are accepted as well.
    for aud in ("https://oauth2.googleapis.com/token", "https://www.googleapis.com/oauth2/v4/token"):
        status, body = emulator.exchange(emulator.jwt(aud=aud))
        assert status == 200, body
    # /oauth2/v4/token is the path gtoken posts to.
    status, body = form_post(emulator.url + "/oauth2/v4/token", {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": emulator.jwt()})
    assert status == 200, body


def test_jwt_signed_with_another_key_is_refused(emulator):
    key = dict(emulator.key())
    key["private_key"] = other_key_pem()
    status, body = emulator.exchange(emulator.jwt(key=key))
    assert status == 400
    assert body["error"] == "invalid_grant"
    assert body["error_description"]
    # Without kid the emulator tries every key it issued: still refused.
    now = int(time.time())
    claims = {"iss": key["client_email"], "aud": key["token_uri"], "iat": now, "exp": now + 600}
    status, body = emulator.exchange(sign_jwt(key["private_key"], claims))
    assert status == 400 and body["error"] == "invalid_grant"


def test_jwt_claims_are_checked(emulator):
    now = int(time.time())
    cases = [
        {"aud": "https://example.com/token"},
        {"iat": now - 7200, "exp": now - 3600},   # expired
        {"iat": now + 600, "exp": now + 1200},    # issued in the future
        {"iat": now, "exp": now + 7200},          # longer than an hour
    ]
    for overrides in cases:
        status, body = emulator.exchange(emulator.jwt(**overrides))
        assert status == 400, overrides
        assert body["error"] == "invalid_grant", overrides
    # A tampered signature.
    jwt = emulator.jwt()
    head, claims, sig = jwt.split(".")
    status, body = emulator.exchange(".".join((head, claims, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB"))))
    assert status == 400 and body["error"] == "invalid_grant"
    status, body = form_post(emulator.url + "/token", {"grant_type": "password"})
    assert status == 400 and body["error"] == "unsupported_grant_type"


def test_token_expires(emulator_factory):
    emu = emulator_factory("--token-ttl", "2")
    token = emu.token()
    h = {"Authorization": "Bearer " + token}
    assert emu.request("GET", "/storage/v1/b/staging", headers=h)[0] == 200
    time.sleep(3)
    assert_unauthenticated(emu.request("GET", "/storage/v1/b/staging", headers=h))


def test_token_survives_restart(emulator):
    token = emulator.token()
    emulator.restart()
    code, _, _ = emulator.request("GET", "/storage/v1/b/staging",
                                  headers={"Authorization": "Bearer " + token})
    assert code == 200


def test_metadata_server(emulator):
    base = "/computeMetadata/v1/instance/service-accounts/default/token"
    code, _, _ = emulator.request("GET", base, auth=False)
    assert code == 403
    code, hdrs, body = emulator.request("GET", base, auth=False,
                                        headers={"Metadata-Flavor": "Google"})
    assert code == 200
    assert hdrs["Metadata-Flavor"] == "Google"
    doc = json.loads(body)
    assert doc["token_type"] == "Bearer" and doc["expires_in"] == 3600
    assert emulator.request("GET", "/storage/v1/b/staging",
                            headers={"Authorization": "Bearer " + doc["access_token"]})[0] == 200
    code, hdrs, body = emulator.request("GET", "/computeMetadata/v1/project/project-id",
                                        auth=False, headers={"Metadata-Flavor": "Google"})
    assert code == 200 and body == b"test-project" and hdrs["Metadata-Flavor"] == "Google"
    code, _, body = emulator.request(
        "GET", "/computeMetadata/v1/instance/service-accounts/default/email", auth=False,
        headers={"Metadata-Flavor": "Google"})
    assert code == 200 and body.decode() == emulator.key()["client_email"]


def test_no_auth(emulator_factory):
    emu = emulator_factory("--no-auth", credentials=False)
    code, _, body = emu.request("GET", "/storage/v1/b/staging", auth=False)
    assert code == 200, body
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in emu.env


def test_refresh_token_grant(emulator_factory, tmp_path):
    user = str(tmp_path / "adc.json")
    emu = emulator_factory("--write-user-credentials", user)
    with open(user) as f:
        creds = json.load(f)
    assert stat.S_IMODE(os.stat(user).st_mode) == 0o600
    assert creds["type"] == "authorized_user"
    assert creds["token_uri"] == emu.url + "/token"
    status, body = form_post(creds["token_uri"], {
        "grant_type": "refresh_token", "refresh_token": creds["refresh_token"],
        "client_id": creds["client_id"], "client_secret": creds["client_secret"]})
    assert status == 200, body
    assert emu.request("GET", "/storage/v1/b/staging",
                       headers={"Authorization": "Bearer " + body["access_token"]})[0] == 200
    status, body = form_post(creds["token_uri"], {
        "grant_type": "refresh_token", "refresh_token": "1//not-issued",
        "client_id": creds["client_id"], "client_secret": creds["client_secret"]})
    assert status == 400 and body["error"] == "invalid_grant"


def test_self_signed_jwt_as_bearer(emulator):
    jwt = emulator.jwt(aud="https://healthcare.googleapis.com/")
    code, _, _ = emulator.request("GET", "/storage/v1/b/staging",
                                  headers={"Authorization": "Bearer " + jwt})
    assert code == 200
    key = dict(emulator.key())
    key["private_key"] = other_key_pem()
    forged = emulator.jwt(key=key, aud="https://healthcare.googleapis.com/")
    assert_unauthenticated(emulator.request("GET", "/storage/v1/b/staging",
                                            headers={"Authorization": "Bearer " + forged}))


def test_resumable_session_needs_no_token(emulator):
    code, hdrs, body = emulator.request(
        "POST", "/upload/storage/v1/b/staging/o?uploadType=resumable&name=s", body=b"",
        headers={"Content-Type": "application/json"})
    assert code == 200, body
    session = hdrs["Location"][len(emulator.url):]
    code, _, body = emulator.request("PUT", session, body=b"abc", auth=False,
                                     headers={"Content-Range": "bytes 0-2/3"})
    assert code == 200, body
    assert json.loads(body)["size"] == "3"


def test_tokenless_resumable_start_refused(emulator):
    # A resumable start is an API call like any other: without a token (or
    # with a bad one) it is refused, as the real service does. Only the
    # session's own requests go without (the session URI is the credential).
    path = "/upload/storage/v1/b/staging/o?uploadType=resumable&name=anon"
    assert_unauthenticated(emulator.request("POST", path, body=b"", auth=False))
    assert_unauthenticated(emulator.request("POST", path, body=b"", auth=False,
                                            headers={"Authorization": "Bearer bogus"}))
    code, hdrs, body = emulator.request("POST", path, body=b"")
    assert code == 200 and hdrs["Location"], body
    assert emulator.stats()["unauthenticated"] == 2


def test_metadata_paths_used_by_google_auth(emulator):
    h = {"Metadata-Flavor": "Google"}
    code, hdrs, body = emulator.request("GET", "/", auth=False, headers=h)
    assert code == 200 and hdrs["Metadata-Flavor"] == "Google"
    code, hdrs, body = emulator.request(
        "GET", "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
        auth=False, headers=h)
    assert code == 200 and hdrs["Metadata-Flavor"] == "Google"
    doc = json.loads(body)
    assert doc["email"] == emulator.key()["client_email"]
    assert "https://www.googleapis.com/auth/cloud-platform" in doc["scopes"]
    code, _, _ = emulator.request("GET", "/computeMetadata/v1/instance", auth=False, headers=h)
    assert code == 200
    code, _, _ = emulator.request("GET", "/computeMetadata/v1/nope", auth=False, headers=h)
    assert code == 404
