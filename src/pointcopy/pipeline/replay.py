"""A real OpenAI-compatible HTTP server that answers from a script: the LLM step's tests, and a way to run the
pipeline end to end with no model (`python -m pointcopy.pipeline.replay --script FILE`).

It serves POST {prefix}/chat/completions and GET {prefix}/models on 127.0.0.1, answering concurrently (one daemon
thread per request), so a client's timeouts, retries and concurrency are exercised over real sockets.

A script maps a *match key* to a list of *actions*. A request is answered by the first key (in script order) that
is a substring of the last user message's text. When none is, the user messages before it are tried, latest
first: a client's repair turn ("Your answer could not be used: ...") is the last user message, and it should
still be answered by the key of the question it repairs (a key such as "could not be used" can target repair
turns, since the last message is tried first). "*" matches anything, but only once no key matches any user
message. Each key's actions are used in order and the last one repeats once they run out. No matching key -> 400
(a script mistake should fail a test, not hang it). Actions:

  {"content": "..."}                               200, a chat.completion whose choices[0].message.content is it
                                                   (a dict or list is sent as its JSON text); "..." alone is the same
  {"status": 429, "headers": {"Retry-After": "0"}, "body": "..."}
                                                   that status, headers and body (an OpenAI-style JSON error object
                                                   when no body is given)
  {"delay": 2.5, ...}                              sleep that long first (timeouts)
  {"raw": "not json at all", "status": 200}        that body verbatim (a broken protocol)
  {"drop": true}                                   close the connection without answering

Script forms: {key: [actions]} (or {key: action}), a list of {"match": key, "actions": [...]} rows, or a
ReplayScript; `load_script` reads the rows from a JSON (list) or JSONL (one row per line) file.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ACTION_KEYS = frozenset({"content", "status", "headers", "body", "delay", "raw", "drop"})


def _action(a: Any) -> dict:
    if isinstance(a, str):
        return {"content": a}
    if not isinstance(a, dict):
        raise ValueError(f"a replay action is a dict or a string, not {type(a).__name__}: {a!r}")
    unknown = set(a) - ACTION_KEYS
    if unknown:
        raise ValueError(f"unknown replay action key(s) {sorted(unknown)} in {a!r}; known: {sorted(ACTION_KEYS)}")
    if not ({"content", "status", "raw", "drop"} & set(a)):
        raise ValueError(f"a replay action needs one of content / status / raw / drop: {a!r}")
    return dict(a)


class ReplayScript:
    """Ordered (match key -> actions) rules, each with its own cursor; `next_action` is thread-safe."""

    def __init__(self, rules: list[tuple[str, list]]):
        self.rules: list[tuple[str, list[dict]]] = []
        for match, actions in rules:
            if not isinstance(match, str):
                raise ValueError(f"a match key is a string, not {match!r}")
            actions = actions if isinstance(actions, list) else [actions]
            if not actions:
                raise ValueError(f"match key {match!r} has no actions")
            self.rules.append((match, [_action(a) for a in actions]))
        self._used = [0] * len(self.rules)
        self._lock = threading.Lock()

    @classmethod
    def coerce(cls, script: "ReplayScript | dict | list") -> "ReplayScript":
        if isinstance(script, ReplayScript):
            return script
        if isinstance(script, dict):
            if "match" in script and "actions" in script:  # a single row
                script = [script]
            else:
                return cls(list(script.items()))
        if isinstance(script, list):
            rows = []
            for row in script:
                if not isinstance(row, dict) or "match" not in row or "actions" not in row:
                    raise ValueError(f"a script row is {{'match': ..., 'actions': [...]}}, not {row!r}")
                rows.append((row["match"], row["actions"]))
            return cls(rows)
        raise ValueError(f"a replay script is a dict, a list of rows or a ReplayScript, not {type(script).__name__}")

    def rule_for(self, texts: list[str]) -> int | None:
        """The rule answering a request whose user messages are `texts`, latest first (None: no key matches)."""
        for text in texts:
            for r, (match, _) in enumerate(self.rules):
                if match != "*" and match in text:
                    return r
        return next((r for r, (match, _) in enumerate(self.rules) if match == "*"), None)

    def next_action(self, texts: str | list[str]) -> dict | None:
        """Consume the action for a request whose user messages are `texts` (latest first; a string: just the
        last one). None: no key matches."""
        r = self.rule_for([texts] if isinstance(texts, str) else texts)
        if r is None:
            return None
        with self._lock:
            n = self._used[r]
            self._used[r] += 1
        actions = self.rules[r][1]
        return actions[min(n, len(actions) - 1)]


def load_script(path: str | Path) -> ReplayScript:
    """{"match": ..., "actions": [...]} rows from a JSON file (a list of rows, or a {key: actions} object) or a
    JSONL file (one row per line; blank lines skipped)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not a JSON row: {exc}") from None
    return ReplayScript.coerce(data)


def user_texts(messages: Any) -> list[str]:
    """The user messages' texts, latest first (text parts of a multimodal content list joined by newlines)."""
    out = []
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = "\n".join(p.get("text", "") for p in content
                                    if isinstance(p, dict) and p.get("type") == "text")
            out.append(content if isinstance(content, str) else "")
    return out


def _error_body(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": "replay_error", "code": status}}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # tests and the example script want a quiet stderr
        pass

    def _send(self, status: int, body: bytes | str | dict | list, headers: dict | None = None) -> None:
        if isinstance(body, (dict, list)):
            data, ctype = json.dumps(body).encode("utf-8"), "application/json"
        else:
            data = body.encode("utf-8") if isinstance(body, str) else body
            ctype = "text/plain; charset=utf-8"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            for k, v in (headers or {}).items():
                self.send_header(str(k), str(v))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to answer
        self.close_connection = True

    def do_GET(self):
        replay = self.server.replay
        if self.path.split("?")[0].rstrip("/") == f"{replay.prefix}/models":
            self._send(200, {"object": "list", "data": [{"id": replay.model, "object": "model", "created": 0,
                                                         "owned_by": "replay"}]})
        else:
            self._send(404, _error_body(404, f"replay: no route GET {self.path}"))

    def do_POST(self):
        replay = self.server.replay
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?")[0].rstrip("/") != f"{replay.prefix}/chat/completions":
            self._send(404, _error_body(404, f"replay: no route POST {self.path}"))
            return
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._send(400, _error_body(400, f"replay: request body is not JSON: {exc}"))
            return
        replay._arrived(body, dict(self.headers.items()))
        try:
            texts = user_texts(body.get("messages") if isinstance(body, dict) else None)
            action = replay.script.next_action(texts)
            if action is None:
                last = texts[0] if texts else ""
                self._send(400, _error_body(400, f"replay: no script entry matches the user messages (last: "
                                                 f"{last[:200]!r})"))
                return
            if action.get("delay"):
                time.sleep(float(action["delay"]))
            if action.get("drop"):
                self.close_connection = True
                return
            headers = action.get("headers") or {}
            if "raw" in action:
                self._send(int(action.get("status", 200)), str(action["raw"]), headers)
            elif "content" in action and int(action.get("status", 200)) == 200:
                self._send(200, replay.completion(body, action["content"]), headers)
            else:
                status = int(action["status"])
                self._send(status, action.get("body", _error_body(status, f"replay: scripted status {status}")),
                           headers)
        finally:
            replay._left()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping through a delay never holds up stop()
    replay: "ReplayServer"

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ReplayServer:
    """ThreadingHTTPServer on 127.0.0.1 (port 0 = a free port) serving POST {prefix}/chat/completions and GET
    {prefix}/models from a script. `requests`: every chat request body received, in arrival order;
    `request_headers`: their HTTP headers, in the same order; `max_in_flight`: the most chat requests it was
    answering at once."""

    def __init__(self, script: ReplayScript | dict | list, host: str = "127.0.0.1", port: int = 0,
                 prefix: str = "/v1", model: str = "replay"):
        self.script = ReplayScript.coerce(script)
        self.host, self.port = host, port
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.model = model
        self.base_url = ""
        self.requests: list[dict] = []
        self.request_headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._served = 0

    def _arrived(self, body: dict, headers: dict) -> None:
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _left(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def completion(self, request: dict, content: Any) -> dict:
        """A chat.completion body answering `request` with `content` (non-strings as their JSON text)."""
        text = content if isinstance(content, str) else json.dumps(content)
        with self._lock:
            self._served += 1
            n = self._served
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", [])
                           if isinstance(m, dict))
        completion_words = len(text.split())
        return {"id": f"chatcmpl-replay-{n}", "object": "chat.completion", "created": int(time.time()),
                "model": request.get("model") or self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_words, "completion_tokens": completion_words,
                          "total_tokens": prompt_words + completion_words}}

    def start(self) -> "ReplayServer":
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.replay = self
        self._server = server
        self.port = server.server_address[1]
        self.base_url = f"http://{self.host}:{self.port}{self.prefix}"
        # a short poll interval: stop() waits up to one interval for serve_forever to notice
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"replay:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ReplayServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pointcopy.pipeline.replay",
                                 description="Serve scripted chat-completions answers (OpenAI-compatible).")
    ap.add_argument("--script", required=True, help="JSON or JSONL file of {'match': ..., 'actions': [...]} rows")
    ap.add_argument("--port", type=int, default=8000, help="port (0 = any free port; default 8000)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--prefix", default="/v1")
    ap.add_argument("--model", default="replay", help="the model id GET /models lists")
    args = ap.parse_args(argv)
    server = ReplayServer(load_script(args.script), host=args.host, port=args.port, prefix=args.prefix,
                          model=args.model).start()
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
