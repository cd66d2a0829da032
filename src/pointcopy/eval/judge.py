"""LLM judge/extractor client for any OpenAI-compatible chat endpoint, with an on-disk cache.

Configuration comes from the environment (never from files in the repo):
  POINTCOPY_JUDGE_BASE_URL    e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 (falls back to
                              OPENAI_BASE_URL)
  POINTCOPY_JUDGE_MODEL       e.g. gpt-4o-mini                                      (no default: name it)
  POINTCOPY_JUDGE_API_KEY     bearer token, optional for local servers
  POINTCOPY_JUDGE_ALLOW_HTTP  1 to allow plain http to a host that is not this machine

A key goes only where it belongs: the judge's own key to the judge's endpoint; a generic OPENAI_API_KEY is used
only when the endpoint is OpenAI's own (https://api.openai.com), never sent to another base URL. Plain http is
refused for any host but loopback (a key or the benchmark's prompts would cross the network in clear text) unless
POINTCOPY_JUDGE_ALLOW_HTTP=1.

Every call is cached under `cache_dir/<sha256>.json`, keyed by (model, messages, temperature, attempt), so
re-scoring a run costs nothing and gives the same answers; the file also records the prompt hash and model so a
report can say exactly which judge produced a score. Stdlib `urllib` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import ipaddress
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class JudgeError(RuntimeError):
    """The endpoint could not be reached or answered with something unusable."""


@dataclass
class JudgeConfig:
    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    timeout_s: float = 120.0
    max_tokens: int = 256

    @classmethod
    def from_env(cls, env: dict | None = None) -> "JudgeConfig":
        env = os.environ if env is None else env
        base = env.get("POINTCOPY_JUDGE_BASE_URL") or env.get("OPENAI_BASE_URL")
        model = env.get("POINTCOPY_JUDGE_MODEL")
        if not base or not model:
            raise JudgeError("judge not configured: set POINTCOPY_JUDGE_BASE_URL and POINTCOPY_JUDGE_MODEL "
                             "(and POINTCOPY_JUDGE_API_KEY if the endpoint needs one)")
        base = base.rstrip("/")
        check_endpoint(base, allow_http=env.get("POINTCOPY_JUDGE_ALLOW_HTTP", "") in ("1", "true", "yes"))
        key = env.get("POINTCOPY_JUDGE_API_KEY")
        if not key and urllib.parse.urlsplit(base).hostname == OPENAI_HOST and base.startswith("https://"):
            key = env.get("OPENAI_API_KEY")
        return cls(base_url=base, model=model, api_key=key)


OPENAI_HOST = "api.openai.com"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(base_url: str, allow_http: bool = False) -> None:
    """Refuse a base URL that is not http(s), or plain http to a host other than this machine (unless allowed)."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JudgeError(f"judge base URL {base_url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_http:
        raise JudgeError(f"judge base URL {base_url!r} is plain http to another host: prompts and the API key would "
                         f"travel unencrypted; use https, or set POINTCOPY_JUDGE_ALLOW_HTTP=1 if that network is "
                         f"trusted")


def prompt_hash(model: str, messages: list[dict], temperature: float, attempt: int = 0) -> str:
    blob = json.dumps({"model": model, "messages": messages, "temperature": temperature, "attempt": attempt},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect with the Authorization header to wherever it points (another host, plain
    http); the judge never follows one: the 30x surfaces as an HTTP error naming the status."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class ChatJudge:
    """`ask(prompt)` -> reply text, from the cache when possible, else one HTTP call (with retries on errors)."""

    def __init__(self, config: JudgeConfig, cache_dir: str | Path | None = None, retries: int = 3,
                 backoff_s: float = 1.0):
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.retries, self.backoff_s = retries, backoff_s
        self.calls = 0  # HTTP requests actually sent
        self.cache_hits = 0

    def ask(self, prompt: str, attempt: int = 0) -> str:
        """Reply to a single user message; `attempt` > 0 asks again (a different cache entry)."""
        messages = [{"role": "user", "content": prompt}]
        key = prompt_hash(self.config.model, messages, self.config.temperature, attempt)
        path = self.cache_dir / f"{key}.json" if self.cache_dir else None
        if path is not None and path.is_file():
            self.cache_hits += 1
            return json.loads(path.read_text(encoding="utf-8"))["reply"]
        reply = self._post(messages)
        if path is not None:
            record = {"reply": reply, "model": self.config.model, "prompt_sha256": key, "prompt": prompt,
                      "attempt": attempt}
            # write atomically: an interrupted run never leaves a half-written cache entry behind
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False)
            os.replace(tmp, path)
        return reply

    def _post(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.config.model, "messages": messages,
                           "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        url = self.config.base_url + "/chat/completions"
        last: Exception | None = None
        for i in range(self.retries + 1):
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with _OPENER.open(req, timeout=self.config.timeout_s) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                self.calls += 1
                content = payload["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise JudgeError(f"judge reply has no text content: {str(payload)[:200]}")
                return content
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError, KeyError,
                    IndexError) as exc:
                last = exc
                if isinstance(exc, urllib.error.HTTPError) and exc.code < 500 and exc.code != 429:
                    break  # client errors (bad key, bad model) will not heal by retrying
                if i < self.retries:
                    time.sleep(self.backoff_s * (2 ** i))
        raise JudgeError(f"judge request to {url} failed: {last}")
