"""The one chat-completions client of the project (the v1g pipeline's decomposer, the MathVerse judge): any
OpenAI-compatible endpoint (vLLM, Ollama, hosted APIs), standard library only.

    client = ChatClient(LLMSettings.from_env(), cache_dir="runs/v1g/llm-cache")
    c = client.complete([{"role": "user", "content": "..."}], validate=json_object)
    c.text, c.parsed, c.cached, c.attempts
    for i, result in client.complete_many(conversations, validate=json_object): ...   # Completion or LLMError

Retries (`max_retries` after the first attempt, one budget shared by every kind of failure):

* HTTP 408/429/5xx, a socket timeout, a refused/reset/dropped connection, and a 200 whose body is not the
  chat-completions shape are retried after a wait: `backoff` seconds, doubling each time, capped at `max_backoff`,
  plus up to 10 % jitter so that concurrent workers do not retry in lockstep. A `Retry-After` header (seconds or an
  HTTP date) on a 429 or 503 replaces that wait, capped at `max_backoff`.
* Any other 4xx (bad key, unknown model, malformed request) fails at once: asking again cannot fix it.
* An answer that `validate(text)` rejects with ValueError is retried at once (the server is fine, the answer is
  not) as a repair turn: the original messages + the bad answer as an assistant message + a user message naming
  the error. Only the latest bad answer is shown, so the prompt does not grow with each failure.

When the budget is spent the call raises `LLMError` whose `kind` is the last failure's ("http", "timeout",
"connection", "unparseable"); `complete_many` yields it in place of the Completion instead.

`timeout` bounds each socket operation (connect, each read) and, checked between reads, the whole reply.

Cache (`cache_dir`): one JSON file per request, `cache_dir/<key[:2]>/<key>.json` = {"text", "model", "created"},
key = sha256 of the canonical JSON of {"messages": the original messages, "model", "sampling":
settings.sampling()}. Only answers that passed `validate` are stored, and a stored answer is validated again when
read (a stricter validator than the one that wrote it re-asks the model instead of returning it). The endpoint and
the key are not part of the cache key: the same model served elsewhere answers from the same cache, and a rerun
of the same requests sends no HTTP request at all. Files are written atomically (tmp file + os.replace), so a
killed run never leaves a half-written entry and concurrent writers of one key are harmless.

Environment (`LLMSettings.from_env`; explicit arguments win):
  POINTCOPY_LLM_BASE_URL   e.g. http://127.0.0.1:8000/v1 (vLLM), http://127.0.0.1:11434/v1 (Ollama); falls back to
                           OPENAI_BASE_URL
  POINTCOPY_LLM_MODEL      the served model name (no default, and no OPENAI_* fallback)
  POINTCOPY_LLM_API_KEY    bearer token, optional for local servers; falls back to OPENAI_API_KEY only where that
                           key belongs: the base URL came from OPENAI_BASE_URL too, or it is https://api.openai.com

The Authorization header never follows a redirect (urllib would resend it to wherever a 30x points), and a
loopback endpoint never goes through an http(s)_proxy from the environment.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import random
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)

ERROR_KINDS = ("http", "timeout", "connection", "unparseable", "config")
REPAIR_PROMPT = "Your answer could not be used: {error}. Answer again with only the JSON object, no other text."
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
RETRY_AFTER_STATUSES = (429, 503)
OPENAI_HOST = "api.openai.com"
_SNIPPET = 300  # characters of a body / answer quoted in an error


class LLMError(RuntimeError):
    """A completion that could not be obtained. kind: "http" | "timeout" | "connection" | "unparseable" |
    "config"; detail: what happened (status, body start, parse error, answer start); attempts: HTTP requests made."""

    def __init__(self, kind: str, detail: str, attempts: int = 0):
        if kind not in ERROR_KINDS:
            raise ValueError(f"LLMError kind {kind!r} is not one of {ERROR_KINDS}")
        self.kind, self.detail, self.attempts = kind, detail, attempts
        suffix = f" (after {attempts} attempt{'s' if attempts != 1 else ''})" if attempts else ""
        super().__init__(f"{kind}: {detail}{suffix}")

    def __reduce__(self):  # keep kind/detail/attempts across pickling (process pools, multiprocessing queues)
        return (type(self), (self.kind, self.detail, self.attempts))


@dataclass(frozen=True)
class LLMSettings:
    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 4096
    seed: int | None = None
    json_mode: bool = True
    timeout: float = 120.0
    max_retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    concurrency: int = 4

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 **kw) -> "LLMSettings":
        """Arguments win; else POINTCOPY_LLM_BASE_URL / POINTCOPY_LLM_MODEL / POINTCOPY_LLM_API_KEY, then
        OPENAI_BASE_URL / OPENAI_API_KEY. Other settings come from `kw`. A missing base URL or model raises
        LLMError("config") naming the flag and the variable."""
        env = os.environ
        openai_base = False
        if not base_url:
            base_url = env.get("POINTCOPY_LLM_BASE_URL") or None
            if not base_url and env.get("OPENAI_BASE_URL"):
                base_url, openai_base = env["OPENAI_BASE_URL"], True
        model = model or env.get("POINTCOPY_LLM_MODEL") or None
        missing = []
        if not base_url:
            missing.append("the endpoint: pass --llm-base-url or set POINTCOPY_LLM_BASE_URL (or OPENAI_BASE_URL), "
                           "e.g. http://127.0.0.1:8000/v1")
        if not model:
            missing.append("the model: pass --llm-model or set POINTCOPY_LLM_MODEL (the name the server serves)")
        if missing:
            raise LLMError("config", "LLM not configured; missing " + "; and ".join(missing))
        if not api_key:
            api_key = env.get("POINTCOPY_LLM_API_KEY") or None
        if not api_key and env.get("OPENAI_API_KEY"):
            # OPENAI_API_KEY is OpenAI's key: it goes with OPENAI_BASE_URL or to OpenAI itself, never to a third
            # party's endpoint named in POINTCOPY_LLM_BASE_URL.
            parts = urllib.parse.urlsplit(base_url)
            if openai_base or (parts.scheme == "https" and parts.hostname == OPENAI_HOST):
                api_key = env["OPENAI_API_KEY"]
        return cls(base_url=base_url, model=model, api_key=api_key, **kw)

    def sampling(self) -> dict:
        """Everything besides the messages and the model that decides the answer (part of the cache key)."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed,
                "json_mode": self.json_mode}

    def __repr__(self) -> str:  # settings end up in logs and run manifests: never print the key
        shown = ", ".join(f"{f.name}={'***' if f.name == 'api_key' and self.api_key else repr(getattr(self, f.name))}"
                          for f in fields(self))
        return f"LLMSettings({shown})"


@dataclass
class Completion:
    text: str
    parsed: Any
    cached: bool
    attempts: int


def json_object(text: str) -> dict:
    """A ready-made `validate`: the answer as a JSON object. Tolerates a ```json fence around it (some servers add
    one even in JSON mode); raises ValueError for anything else."""
    t = text.strip()
    if t.startswith("```"):
        t = t[3:]
        t = t[4:] if t[:4].lower() == "json" else t
        t = t.rsplit("```", 1)[0] if t.rstrip().endswith("```") else t
        t = t.strip()
    obj = json.loads(t)  # JSONDecodeError is a ValueError
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def cache_key(messages: list[dict], model: str, sampling: dict) -> str:
    blob = json.dumps({"messages": messages, "model": model, "sampling": sampling}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def is_loopback(host: str | None) -> bool:
    """True for localhost and loopback addresses (requests there bypass any proxy set in the environment)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would resend the Authorization header to wherever it points. The 30x
    surfaces as an "http" error naming the status."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Retryable(Exception):
    """One failed attempt that another attempt may fix."""

    def __init__(self, kind: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.kind, self.detail, self.retry_after = kind, detail, retry_after


def _snippet(text: str) -> str:
    text = text.strip()
    return repr(text[:_SNIPPET] + ("..." if len(text) > _SNIPPET else ""))


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the other allowed form: an HTTP date
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


class ChatClient:
    """Thread-safe: one client serves every worker of `complete_many` (and any threads of the caller)."""

    def __init__(self, settings: LLMSettings, cache_dir: str | Path | None = None,
                 sleep: Callable[[float], Any] = time.sleep):
        parts = urllib.parse.urlsplit(settings.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LLMError("config", f"LLM base URL {settings.base_url!r} is not an http(s) URL "
                                     f"(e.g. http://127.0.0.1:8000/v1)")
        if not settings.model:
            raise LLMError("config", "no LLM model named (--llm-model / POINTCOPY_LLM_MODEL)")
        if settings.concurrency < 1 or settings.max_retries < 0 or settings.timeout <= 0:
            raise LLMError("config", f"need concurrency >= 1, max_retries >= 0, timeout > 0; got {settings!r}")
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.sleep = sleep
        handlers: list = [_NoRedirect()]
        if is_loopback(parts.hostname):
            handlers.append(urllib.request.ProxyHandler({}))  # a local server is never behind the env's proxy
        self._opener = urllib.request.build_opener(*handlers)
        self._lock = threading.Lock()
        self._random = random.Random()
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0}

    # ----------------------------------------------------------------------------------------------- public
    def complete(self, messages: list[dict], validate: Callable[[str], Any] | None = None) -> Completion:
        """One answer for `messages` (cache, then the endpoint with retries). Raises LLMError."""
        try:
            return self._complete(messages, validate)
        except LLMError:
            self._count("failures")
            raise

    def complete_many(self, requests: Iterable[list[dict]], validate: Callable[[str], Any] | None = None,
                      progress: bool = False) -> Iterator[tuple[int, Completion | LLMError]]:
        """(index, Completion or LLMError) for each conversation, in completion order, with up to
        `settings.concurrency` requests in flight. Conversations are submitted as workers free up, so `requests`
        may be a long or lazy iterable, and closing the iterator early cancels what has not started. An exception
        other than LLMError (a bug in `validate`, say) propagates."""
        total = len(requests) if hasattr(requests, "__len__") else None
        source = iter(enumerate(requests))
        window = 2 * self.settings.concurrency  # a few queued behind the workers keeps them busy
        failed_n = 0
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="llm", unit="req", disable=not progress, dynamic_ncols=True)
        pool = ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="llm")
        pending: dict[Future, int] = {}
        try:
            while True:
                for i, msgs in source:
                    pending[pool.submit(self.complete, msgs, validate)] = i
                    if len(pending) >= window:
                        break
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    try:
                        result: Completion | LLMError = fut.result()
                    except LLMError as exc:
                        result, failed_n = exc, failed_n + 1
                    if progress:
                        with self._lock:
                            s = dict(self.stats)
                        bar.set_postfix(failed=failed_n, cached=s["cache_hits"], requests=s["requests"],
                                        retries=s["retries"], refresh=False)
                        bar.update(1)
                    yield i, result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()

    # ------------------------------------------------------------------------------------------- internals
    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def _complete(self, messages: list[dict], validate: Callable[[str], Any] | None) -> Completion:
        s = self.settings
        key = cache_key(messages, s.model, s.sampling()) if self.cache_dir is not None else None
        if key is not None:
            hit = self._cache_read(key, validate)
            if hit is not None:
                self._count("cache_hits")
                return hit
        conversation = list(messages)
        attempts = waits = 0
        while True:
            attempts += 1
            self._count("requests")
            try:
                text = self._post(conversation, attempts)
            except _Retryable as exc:
                if attempts > s.max_retries:
                    raise LLMError(exc.kind, exc.detail, attempts) from None
                delay = self._delay(waits, exc.retry_after)
                waits += 1
                self._count("retries")
                log.info("llm: %s on attempt %d, retrying in %.2f s: %s", exc.kind, attempts, delay, exc.detail)
                self.sleep(delay)
                continue
            parsed = None
            if validate is not None:
                try:
                    parsed = validate(text)
                except ValueError as exc:
                    error = str(exc) or type(exc).__name__
                    if attempts > s.max_retries:
                        raise LLMError("unparseable", f"answer rejected: {error}; answer began {_snippet(text)}",
                                       attempts) from None
                    self._count("retries")
                    log.info("llm: answer rejected on attempt %d (%s), asking again", attempts, error)
                    conversation = list(messages) + [{"role": "assistant", "content": text},
                                                     {"role": "user", "content": REPAIR_PROMPT.format(error=error)}]
                    continue
            if key is not None:
                self._cache_write(key, text)
            return Completion(text=text, parsed=parsed, cached=False, attempts=attempts)

    def _delay(self, waits: int, retry_after: float | None) -> float:
        s = self.settings
        if retry_after is not None:
            return min(retry_after, s.max_backoff)
        base = s.backoff * (2 ** min(waits, 60))
        with self._lock:
            jitter = 1.0 + 0.1 * self._random.random()
        return min(base * jitter, s.max_backoff)

    def _body(self, conversation: list[dict]) -> bytes:
        s = self.settings
        body: dict[str, Any] = {"model": s.model, "messages": conversation, "temperature": s.temperature,
                                "max_tokens": s.max_tokens}
        if s.seed is not None:
            body["seed"] = s.seed
        if s.json_mode:
            body["response_format"] = {"type": "json_object"}
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _post(self, conversation: list[dict], attempt: int) -> str:
        """One HTTP request -> the answer text. Raises _Retryable, or LLMError("http") for a status that retrying
        cannot fix."""
        s = self.settings
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if s.api_key:
            headers["Authorization"] = f"Bearer {s.api_key}"
        req = urllib.request.Request(self.url, data=self._body(conversation), headers=headers, method="POST")
        deadline = time.monotonic() + s.timeout
        try:
            with self._opener.open(req, timeout=s.timeout) as resp:
                raw = self._read(resp, deadline)
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                body = ""
            detail = f"HTTP {exc.code} from {self.url}: {_snippet(body)}"
            if exc.code in RETRY_STATUSES:
                ra = _retry_after(exc.headers) if exc.code in RETRY_AFTER_STATUSES else None
                raise _Retryable("http", detail, ra) from None
            raise LLMError("http", detail, attempt) from None
        except urllib.error.URLError as exc:  # connect-phase failures arrive wrapped
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retryable("timeout", f"no connection to {self.url} within {s.timeout} s") from None
            raise _Retryable("connection", f"cannot reach {self.url}: {reason}") from None
        except (TimeoutError, socket.timeout):
            raise _Retryable("timeout", f"no answer from {self.url} within {s.timeout} s") from None
        except (OSError, http.client.HTTPException) as exc:  # reset, dropped, truncated, bad status line
            raise _Retryable("connection", f"connection to {self.url} failed: {type(exc).__name__}: {exc}") from None
        text = raw.decode("utf-8", "replace")
        try:
            content = json.loads(text)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise _Retryable("unparseable", f"HTTP 200 from {self.url} without choices[0].message.content: "
                                            f"{_snippet(text)}")
        return content

    @staticmethod
    def _read(resp, deadline: float) -> bytes:
        chunks = []
        while True:
            chunk = resp.read(1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            if time.monotonic() > deadline:  # a server trickling bytes would otherwise never time out
                raise TimeoutError

    def _cache_path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_read(self, key: str, validate: Callable[[str], Any] | None) -> Completion | None:
        path = self._cache_path(key)
        try:
            text = json.loads(path.read_text(encoding="utf-8"))["text"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("llm: unreadable cache entry %s (%s); asking the model", path, exc)
            return None
        if not isinstance(text, str):
            return None
        parsed = None
        if validate is not None:
            try:
                parsed = validate(text)
            except ValueError as exc:
                log.info("llm: cached answer %s no longer validates (%s); asking the model", path.name, exc)
                return None
        return Completion(text=text, parsed=parsed, cached=True, attempts=0)

    def _cache_write(self, key: str, text: str) -> None:
        path = self._cache_path(key)
        record = {"text": text, "model": self.settings.model,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False)
            os.replace(tmp, path)
        except OSError as exc:  # the answer in hand is still good; only a rerun would pay for it again
            log.warning("llm: could not write cache entry %s: %s", path, exc)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
