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
report can say exactly which judge produced a score. Requests go through `pointcopy.llm.ChatClient` (retries,
backoff, no redirects), standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from pointcopy.llm import is_loopback


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


class ChatJudge:
    """`ask(prompt)` -> reply text, from the cache when possible, else one HTTP call (with retries on errors)."""

    def __init__(self, config: JudgeConfig, cache_dir: str | Path | None = None, retries: int = 3,
                 backoff_s: float = 1.0):
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.retries, self.backoff_s = retries, backoff_s
        from pointcopy.llm import ChatClient, LLMSettings

        # transport only (retries, backoff, no redirects): the judge keeps its own cache, keyed with `attempt`
        self._client = ChatClient(LLMSettings(config.base_url, config.model, config.api_key,
                                              temperature=config.temperature, max_tokens=config.max_tokens,
                                              json_mode=False, timeout=config.timeout_s, max_retries=retries,
                                              backoff=backoff_s, concurrency=1))
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
        from pointcopy.llm import LLMError

        try:
            completion = self._client.complete(messages)
        except LLMError as exc:
            self.calls += exc.attempts
            raise JudgeError(f"judge request to {self.config.base_url}/chat/completions failed: {exc.detail}") \
                from None
        self.calls += completion.attempts
        return completion.text
