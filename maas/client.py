"""HTTP client for TorchServe's inference and management APIs, with token handling.

Every call reads key_file.json fresh; a key that expires within `renew_margin_s` is
renewed with the API key first, and a request refused for its token is retried once
after a renewal, so long-running CLIs, probes and load tests never hold a stale copy.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from maas.core.errors import ServeError
from maas.keys import KeyFileError, read_keys
from maas.properties import Endpoints

log = logging.getLogger(__name__)


class ServerNotRunning(ServeError):
    pass


class TokenRefused(ServeError):
    pass


class TLSError(ServeError):
    """The server's certificate is not trusted (or TLS failed): waiting will not help."""


class ApiError(ServeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


def api_path(*parts: str | None) -> str:
    """A URL path from model names, versions and route words, each percent-quoted: TorchServe
    accepts registrations under names like `a/../b` or `été`, which must not change the route."""
    return "/" + "/".join(quote(str(p), safe="") for p in parts if p)


def says_token_refused(text: str) -> bool:
    """TorchServe 0.12's words for a bad or expired key (over HTTP with a 400, not 401; over gRPC
    with PERMISSION_DENIED): the one check the CLI, the gRPC client and Locust's users share."""
    return "token authorization failed" in (text or "").lower()


def _token_refused(resp: requests.Response) -> bool:
    return resp.status_code in (400, 401) and says_token_refused(resp.text)


def error_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and "message" in body:
            return str(body["message"])
    except ValueError:
        pass
    return resp.text.strip()[:500] or resp.reason


class TorchServeClient:
    def __init__(self, endpoints: Endpoints, key_file: Path | None, timeout: float = 60.0,
                 renew_margin_s: float = 120.0, verify: bool | str = True) -> None:
        self.endpoints = endpoints
        self.key_file = key_file
        self.timeout = timeout
        self.renew_margin_s = renew_margin_s
        self.http = requests.Session()
        # True, or a CA bundle for https endpoints (see TorchServe._ca_bundle). Passed on every
        # request: requests lets $REQUESTS_CA_BUNDLE override a session-level setting.
        self.verify = verify

    # ---- keys -----------------------------------------------------------------------
    def fresh_key(self, kind: str, margin_s: float | None = None) -> str | None:
        """The current `kind` key from key_file.json, renewed first when it expires within `margin_s`
        (default: the client's renew_margin_s)."""
        if self.key_file is None:
            return None
        keys = read_keys(self.key_file)
        if keys[kind].expires_within(self.renew_margin_s if margin_s is None else margin_s):
            self.renew_key(kind)
            keys = read_keys(self.key_file)
        return keys[kind].value

    def renew_key(self, kind: str) -> None:
        """Ask TorchServe for a new `kind` key ("inference" or "management"), using the API key."""
        api_key = read_keys(self.key_file)["API"].value
        resp = self._send("POST", f"{self.endpoints.management}/token", params={"type": kind},
                          headers={"Authorization": f"Bearer {api_key}"})
        if resp.status_code != 200:
            raise TokenRefused(f"renewing the {kind} key was refused: HTTP {resp.status_code} {error_message(resp)}")
        log.info("renewed the %s key", kind)

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        timeout = kwargs.pop("timeout", self.timeout)
        try:
            return self.http.request(method, url, timeout=timeout, verify=self.verify, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise TLSError(f"TLS with {url.split('/', 3)[2]} failed: {exc.args[0] if exc.args else exc}; "
                           "set MAAS_CA_BUNDLE to the CA that signed the server's certificate") from None
        except requests.ConnectionError:
            raise ServerNotRunning(f"TorchServe is not answering at {url.split('/', 3)[:3][-1]}: "
                                   "start it with `maas serve start`") from None
        except requests.Timeout:
            raise ServeError(f"TorchServe did not answer {method} {url.split('?')[0]} within {timeout:g} s") from None

    def request(self, api: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A call to the "inference" or "management" API with the right, fresh key."""
        base = self.endpoints.inference if api == "inference" else self.endpoints.management
        headers = dict(kwargs.pop("headers", {}) or {})
        for attempt in (1, 2):
            try:
                key = self.fresh_key(api)
            except KeyFileError as exc:
                raise ServerNotRunning(str(exc)) from None
            if key:
                headers["Authorization"] = f"Bearer {key}"
            resp = self._send(method, base + path, headers=headers, **kwargs)
            if not _token_refused(resp) or self.key_file is None or attempt == 2:
                break
            self.renew_key(api)  # expired between reading and sending: renew once and retry
        if _token_refused(resp):
            raise TokenRefused(f"TorchServe refused the {api} key from {self.key_file}: {error_message(resp)}")
        return resp

    # ---- inference API ----------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        resp = self.request("inference", "GET", "/ping", timeout=5)
        if resp.status_code != 200:
            raise ApiError(resp.status_code, error_message(resp))
        return resp.json()

    def predict(self, model: str, body: bytes, content_type: str = "application/json",
                version: str | None = None) -> requests.Response:
        path = api_path("predictions", model, version)
        return self.request("inference", "POST", path, data=body, headers={"Content-Type": content_type})

    def predict_json(self, model: str, payload: Any, version: str | None = None) -> Any:
        resp = self.predict(model, json.dumps(payload).encode(), version=version)
        if resp.status_code != 200:
            raise ApiError(resp.status_code, error_message(resp))
        return resp.json()

    # ---- management API ---------------------------------------------------------------
    def management(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request("management", method, path, **kwargs)
        if resp.status_code >= 300:
            raise ApiError(resp.status_code, error_message(resp))
        return resp.json() if resp.content else {}

    def list_models(self) -> list[dict[str, Any]]:
        return self.management("GET", "/models", params={"limit": 1000})["models"]

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        return self.management("GET", api_path("models", model, version))
