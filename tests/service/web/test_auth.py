"""Access control: off by default; with a tokens file, bearer tokens for the API and a
sign-in form with an HTTP-only session cookie for the pages; tokens kept only as hashes
and managed by ``python -m service.web.tokens``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from yarl import URL

from main import init_app
from service.workers.pool import DetectorPool
from settings import BASE_DIR
from service.web.auth import COOKIE_NAME, safe_next
from service.web.tokens import TokenError, TokenStore, create_token, read_entries, revoke_token

JPEG = {"Content-Type": "image/jpeg"}
PROTECTED = ["/", "/history", "/api/detections", "/api/stats",
             "/api/detections/00000000-0000-0000-0000-000000000000",
             "/detections/00000000-0000-0000-0000-000000000000"]


def tokens_command(*args: str, cwd: Path = BASE_DIR,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.web.tokens", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "tokens.json"


@pytest.fixture
async def secured(make_config: Any, detector_pool: DetectorPool, tokens_file: Path,
                  aiohttp_client: Any) -> tuple[Any, str]:
    token = create_token(tokens_file, "ci")
    config = make_config({"auth": {"tokens_file": str(tokens_file)}})
    client = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    return client, token


async def test_off_by_default(client: Any, portrait_jpeg: bytes) -> None:
    for path in PROTECTED[:4]:
        assert (await client.get(path)).status == 200
    assert {"pool", "workers", "admission"} <= set(await (await client.get("/readyz")).json())
    assert (await client.post("/detect", data=portrait_jpeg, headers=JPEG)).status == 200
    response = await client.get("/login", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/"


async def test_every_endpoint_but_health_needs_a_token(secured: tuple[Any, str],
                                                       portrait_jpeg: bytes) -> None:
    client, token = secured
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/static/css/app.css")).status == 200
    for path in PROTECTED:
        response = await client.get(path)
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["error"]["code"] == "unauthorized"
    for header in (f"Bearer {token}x", "Bearer ", f"Basic {token}", token, f"Bearer {token[:-1]}"):
        response = await client.get("/api/stats", headers={"Authorization": header})
        assert response.status == 401, header
    response = await client.post("/detect", data=portrait_jpeg, headers=JPEG)
    assert response.status == 401

    auth = {"Authorization": f"Bearer {token}"}
    for path in PROTECTED[:4]:
        assert (await client.get(path, headers=auth)).status == 200, path
    response = await client.post("/detect", data=portrait_jpeg, headers={**JPEG, **auth})
    assert response.status == 200
    record = await response.json()
    assert (await client.get(f"/api/detections/{record['id']}", headers=auth)).status == 200
    assert (await client.get(f"/detections/{record['id']}/image")).status == 401


async def test_readyz_shows_details_only_to_a_signed_in_caller(
        secured: tuple[Any, str]) -> None:
    secured_client, token = secured
    for headers in ({}, {"Authorization": f"Bearer {token}x"}):
        response = await secured_client.get("/readyz", headers=headers)
        assert response.status == 200
        assert await response.json() == {"status": "ready"}, headers  # nothing else
    full = await (await secured_client.get(
        "/readyz", headers={"Authorization": f"Bearer {token}"})).json()
    assert full["status"] == "ready" and {"pool", "workers", "admission", "spool"} <= set(full)
    # A session (the sign-in form's cookie) counts as signed in.
    await secured_client.post("/login", data={"token": token}, allow_redirects=False)
    assert set(await (await secured_client.get("/readyz")).json()) == set(full)


async def test_pages_sign_in_with_a_session_cookie(secured: tuple[Any, str]) -> None:
    client, token = secured
    page = {"Accept": "text/html,application/xhtml+xml"}
    response = await client.get("/history?label=stop", headers=page, allow_redirects=False)
    assert response.status == 303
    location = URL(response.headers["Location"])
    assert location.path == "/login" and location.query["next"] == "/history?label=stop"

    form_page = await client.get("/login?next=%2Fhistory%3Flabel%3Dstop")
    html = await form_page.text()
    assert form_page.status == 200 and 'type="password"' in html
    assert 'name="next" value="/history?label=stop"' in html

    wrong = await client.post("/login", data={"token": "yolo_wrong", "next": "/history"},
                              allow_redirects=False)
    assert wrong.status == 401 and "not valid" in await wrong.text()
    assert COOKIE_NAME not in wrong.cookies

    response = await client.post("/login", data={"token": token, "next": "/history?label=stop"},
                                 allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/history?label=stop"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the next test
    assert token not in cookie

    # The test client keeps the cookie: pages and the API now answer.
    html = await (await client.get("/history", headers=page)).text()
    assert "Sign out" in html
    assert (await client.get("/api/stats")).status == 200

    response = await client.post("/logout", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/login"
    assert (await client.get("/api/stats")).status == 401


async def test_cookie_is_secure_when_configured(make_config: Any, detector_pool: DetectorPool,
                                                tokens_file: Path, aiohttp_client: Any) -> None:
    token = create_token(tokens_file, "web")
    config = make_config({"auth": {"tokens_file": str(tokens_file), "cookie_secure": True}})
    client = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    response = await client.post("/login", data={"token": token}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/"
    assert "Secure" in response.headers["Set-Cookie"]


async def test_revoking_a_token_locks_it_out_and_ends_its_sessions(
        secured: tuple[Any, str], tokens_file: Path) -> None:
    client, token = secured
    await client.post("/login", data={"token": token}, allow_redirects=False)
    assert (await client.get("/api/stats")).status == 200
    other = create_token(tokens_file, "other")
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/stats", headers=bearer)).status == 200

    result = tokens_command("--file", str(tokens_file), "revoke", "ci")
    assert result.returncode == 0, result.stderr
    assert (await client.get("/api/stats", headers=bearer)).status == 401
    assert (await client.get("/api/stats")).status == 401  # the session died with it
    other_bearer = {"Authorization": f"Bearer {other}"}
    assert (await client.get("/api/stats", headers=other_bearer)).status == 200


def test_tokens_command_stores_only_hashes(tokens_file: Path, tmp_path: Path) -> None:
    created = tokens_command("--file", str(tokens_file), "create", "deploy-bot")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("yolo_") and len(token) >= 40
    text = tokens_file.read_text()
    assert token not in text
    entry = json.loads(text)["tokens"][0]
    assert entry["name"] == "deploy-bot" and len(entry["sha256"]) == 64
    assert tokens_file.stat().st_mode & 0o777 == 0o600
    assert TokenStore(tokens_file).name_for(token) == "deploy-bot"
    assert TokenStore(tokens_file).name_for(token + "x") is None

    listed = tokens_command("--file", str(tokens_file), "list")
    assert listed.stdout.startswith("deploy-bot\t")
    duplicate = tokens_command("--file", str(tokens_file), "create", "deploy-bot")
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr
    assert tokens_command("--file", str(tokens_file), "revoke", "nobody").returncode == 1
    for bad in ("", "a b", "../x", "x" * 65, "<script>"):
        with pytest.raises(TokenError):
            create_token(tokens_file, bad)
    revoke_token(tokens_file, "deploy-bot")
    assert read_entries(tokens_file) == []

    # Without --file, the command uses auth.tokens_file of the service's configuration.
    raw = yaml.safe_load((BASE_DIR / "config" / "test.yaml").read_text())
    raw["models"]["service-6cls"]["weights"] = "tests/data/service-6cls.cfg"  # any file
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    raw["auth"] = {"tokens_file": str(tokens_file)}
    config.write_text(yaml.safe_dump(raw))
    assert tokens_command("--config", str(config), "create", "ops").returncode == 0
    assert [entry.name for entry in read_entries(tokens_file)] == ["ops"]
    # ... and $YOLO_CONFIG, as main.py does
    other = tmp_path / "other.json"
    raw["auth"] = {"tokens_file": str(other)}
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(raw))
    by_env = tokens_command("create", "env-bot",
                            env={**os.environ, "YOLO_CONFIG": str(tmp_path / "env.yaml")})
    assert by_env.returncode == 0, by_env.stderr
    assert "access control is OFF" not in by_env.stderr
    assert [entry.name for entry in read_entries(other)] == ["env-bot"]


def test_tokens_command_as_the_readme_shows_it_on_the_default_config(tmp_path: Path) -> None:
    """``python -m service.web.tokens create ci-bot`` in a checkout with the shipped config
    (auth.tokens_file: null) makes var/tokens.json and says exactly how to turn access
    control on.  Run in a copy of the project's code and config (the model files linked),
    so that the checkout's own var/ is left alone."""
    root = tmp_path / "checkout"
    (root / "config").mkdir(parents=True)
    shutil.copy(BASE_DIR / "config" / "config.yaml", root / "config")
    shutil.copy(BASE_DIR / "settings.py", root)  # a copy: its folder is the project root
    for entry in BASE_DIR.iterdir():  # the rest of the project, linked
        if entry.name not in ("config", "settings.py", "var", ".git", ".venv"):
            (root / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if k != "YOLO_CONFIG"}
    created = tokens_command("create", "ci-bot", cwd=root, env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    path = root / "var" / "tokens.json"
    assert f"created in {path}" in created.stderr
    assert TokenStore(path).name_for(token) == "ci-bot"
    note = ("note: access control is OFF: auth.tokens_file is null in "
            f"{root / 'config' / 'config.yaml'}, so the service checks no tokens. To turn it "
            "on, set\n  auth:\n    tokens_file: var/tokens.json\nin that file and restart "
            "the service.\n")
    assert created.stderr.endswith(note)
    listed = tokens_command("list", cwd=root, env=env)
    assert listed.stdout.startswith("ci-bot\t") and listed.stderr == note
    # The line it names is the one the service reads: set, the same file is checked.
    text = (root / "config" / "config.yaml").read_text()
    assert "  tokens_file: null" in text
    (root / "config" / "config.yaml").write_text(
        text.replace("  tokens_file: null", "  tokens_file: var/tokens.json", 1))
    read = subprocess.run(
        [sys.executable, "-c",
         "from settings import load_config; print(load_config().auth.tokens_file)"],
        cwd=root, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert read.stdout.strip() == str(path)
    again = tokens_command("list", cwd=root, env=env)
    assert again.stdout.startswith("ci-bot\t") and again.stderr == ""


async def test_missing_or_broken_tokens_file_refuses_everyone(
        make_config: Any, detector_pool: DetectorPool, tmp_path: Path,
        aiohttp_client: Any) -> None:
    path = tmp_path / "tokens.json"
    config = make_config({"auth": {"tokens_file": str(path)}})
    client = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    assert (await client.get("/api/stats")).status == 401
    path.write_text("{not json")
    assert (await client.get("/api/stats", headers={"Authorization": "Bearer x"})).status == 401
    assert (await client.get("/readyz")).status == 200


@pytest.mark.parametrize(("target", "safe"), [
    (None, "/"), ("", "/"), ("/history?label=a", "/history?label=a"),
    ("//evil.example/x", "/"), ("https://evil.example", "/"), ("/\\evil", "/"),
    ("javascript:alert(1)", "/"), ("/ok\r\nSet-Cookie: x", "/"),
])
def test_login_only_returns_to_this_site(target: str | None, safe: str) -> None:
    assert safe_next(target) == safe


async def test_login_and_logout_refuse_other_sites(secured: tuple[Any, str]) -> None:
    client, token = secured
    here = f"http://{client.server.host}:{client.server.port}"
    cross_site = ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"})
    for headers in cross_site:
        response = await client.post("/login", data={"token": token}, headers=headers,
                                     allow_redirects=False)
        assert response.status == 403, headers
        assert (await response.json())["error"]["code"] == "cross_origin"
        assert COOKIE_NAME not in response.cookies
    same = await client.post("/login", data={"token": token},
                             headers={"Origin": here, "Sec-Fetch-Site": "same-origin"},
                             allow_redirects=False)
    assert same.status == 303 and COOKIE_NAME in same.cookies
    for headers in cross_site:  # another site cannot sign the user out either
        refused = await client.post("/logout", headers=headers, allow_redirects=False)
        assert refused.status == 403, headers
        assert (await client.get("/api/stats")).status == 200  # still signed in


@pytest.mark.parametrize("path", ["/", "/login", "/api/detections", "/static/css/app.css",
                                  "/nope"])
async def test_security_headers_on_every_response(client: Any, path: str) -> None:
    response = await client.get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-eval" not in csp and "script-src 'self' 'unsafe-inline'" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


async def test_the_sign_in_page_links_only_to_what_opens_without_a_token(
        secured: tuple[Any, str]) -> None:
    client, _ = secured
    html = await (await client.get("/login")).text()
    links = re.findall(r'href="([^"]+)"', html)
    assert links and all(link.startswith("/static/") or link in ("/", "#main")
                         for link in links), links
