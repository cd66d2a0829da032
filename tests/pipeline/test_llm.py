"""The LLM step's chat client (pointcopy.llm) against a real ReplayServer on 127.0.0.1: parsing, repair
turns, retries with backoff (a recorded, not real, sleep), timeouts, fatal statuses, the on-disk cache,
concurrency and error isolation in complete_many, and configuration from the environment."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
import urllib.request

import pytest

from pointcopy.llm import (REPAIR_PROMPT, ChatClient, Completion, LLMError, LLMSettings, cache_key,
                                    json_object)
from pointcopy.pipeline.replay import ReplayServer, load_script

GOOD = '{"objects": ["red circle", "blue square"]}'
ENV_VARS = ("POINTCOPY_LLM_BASE_URL", "POINTCOPY_LLM_MODEL", "POINTCOPY_LLM_API_KEY", "OPENAI_BASE_URL",
            "OPENAI_API_KEY")


def ask(text: str) -> list[dict]:
    return [{"role": "system", "content": "Answer with a JSON object."}, {"role": "user", "content": text}]


@pytest.fixture
def replay():
    """replay(script) -> a started ReplayServer, stopped after the test."""
    servers = []

    def start(script) -> ReplayServer:
        servers.append(ReplayServer(script).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def sleeps():
    """A recording `sleep`: backoff waits are checked, not waited."""
    return []


def client_for(server: ReplayServer, sleeps: list | None = None, cache_dir=None, **kw) -> ChatClient:
    settings = LLMSettings(base_url=server.base_url, model=kw.pop("model", "replay-model"), **kw)
    return ChatClient(settings, cache_dir=cache_dir, sleep=(sleeps.append if sleeps is not None else time.sleep))


# ------------------------------------------------------------------------------------------------ answers
def test_good_answer_is_parsed_and_the_request_is_well_formed(replay, sleeps):
    server = replay({"shapes in scene 1": GOOD})
    client = client_for(server, sleeps, api_key="sk-test", seed=7, max_tokens=321)
    c = client.complete(ask("List the shapes in scene 1."), validate=json_object)
    assert c == Completion(text=GOOD, parsed={"objects": ["red circle", "blue square"]}, cached=False, attempts=1)
    assert len(server.requests) == 1
    body = server.requests[0]
    assert body["model"] == "replay-model" and body["messages"] == ask("List the shapes in scene 1.")
    assert body["temperature"] == 0.0 and body["max_tokens"] == 321 and body["seed"] == 7
    assert body["response_format"] == {"type": "json_object"}
    assert server.request_headers[0]["Authorization"] == "Bearer sk-test"
    assert client.stats == {"requests": 1, "cache_hits": 0, "retries": 0, "failures": 0}
    assert sleeps == []


def test_without_key_seed_or_json_mode_those_fields_are_not_sent(replay):
    server = replay({"*": "plain text"})
    c = client_for(server, json_mode=False).complete(ask("hello"))
    assert c.text == "plain text" and c.parsed is None
    assert "seed" not in server.requests[0] and "response_format" not in server.requests[0]
    assert "Authorization" not in server.request_headers[0]


def test_malformed_json_is_repaired_with_the_error_in_the_repair_turn(replay, sleeps):
    server = replay({"scene 2": ['{"objects": ["red circle",', GOOD]})
    client = client_for(server, sleeps)
    c = client.complete(ask("List the shapes in scene 2."), validate=json_object)
    assert c.parsed == {"objects": ["red circle", "blue square"]} and c.attempts == 2
    assert len(server.requests) == 2
    repair = server.requests[1]["messages"]
    assert repair[:2] == ask("List the shapes in scene 2.")
    assert repair[2] == {"role": "assistant", "content": '{"objects": ["red circle",'}
    assert repair[3]["role"] == "user" and repair[3]["content"].startswith("Your answer could not be used: ")
    try:
        json.loads('{"objects": ["red circle",')
    except ValueError as exc:
        assert str(exc) in repair[3]["content"]
    assert repair[3]["content"].endswith("Answer again with only the JSON object, no other text.")
    assert client.stats["retries"] == 1 and sleeps == []  # a bad answer is asked again at once


def test_prose_every_time_is_unparseable_after_all_retries(replay, sleeps):
    server = replay({"*": "Sure! Here are the shapes: a red circle and a blue square."})
    client = client_for(server, sleeps, max_retries=2)
    with pytest.raises(LLMError) as info:
        client.complete(ask("List the shapes."), validate=json_object)
    err = info.value
    assert err.kind == "unparseable" and err.attempts == 3 and len(server.requests) == 3
    assert "Expecting value" in err.detail and "Sure! Here are the shapes" in err.detail
    # each repair shows only the latest bad answer: the prompt does not grow
    assert [len(r["messages"]) for r in server.requests] == [2, 4, 4]
    assert client.stats == {"requests": 3, "cache_hits": 0, "retries": 2, "failures": 1}


def test_a_validator_that_rejects_on_content_also_repairs(replay, sleeps):
    def needs_objects(text):
        obj = json_object(text)
        if not obj.get("objects"):
            raise ValueError("'objects' must be a non-empty list")
        return obj

    server = replay({"*": ['{"objects": []}', GOOD]})
    c = client_for(server, sleeps).complete(ask("List."), validate=needs_objects)
    assert c.attempts == 2 and "'objects' must be a non-empty list" in server.requests[1]["messages"][-1]["content"]


def test_json_object_accepts_a_fenced_object_and_rejects_a_list():
    assert json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert json_object(' {"a": 1} ') == {"a": 1}
    with pytest.raises(ValueError, match="JSON object"):
        json_object("[1, 2]")


# ------------------------------------------------------------------------------------------- HTTP failures
def test_429_waits_for_retry_after_then_succeeds(replay, sleeps):
    server = replay({"*": [{"status": 429, "headers": {"Retry-After": "7"}}, GOOD]})
    client = client_for(server, sleeps, backoff=1.0, max_backoff=30.0)
    c = client.complete(ask("x"), validate=json_object)
    assert c.attempts == 2 and len(server.requests) == 2
    assert sleeps == [7.0]  # the header, not the 1 s backoff


def test_retry_after_is_capped_at_max_backoff(replay, sleeps):
    server = replay({"*": [{"status": 503, "headers": {"Retry-After": "600"}}, GOOD]})
    client_for(server, sleeps, max_backoff=5.0).complete(ask("x"))
    assert sleeps == [5.0]


def test_500_then_success_backs_off(replay, sleeps):
    server = replay({"*": [{"status": 500}, GOOD]})
    client = client_for(server, sleeps, backoff=0.5)
    c = client.complete(ask("x"), validate=json_object)
    assert c.attempts == 2 and len(server.requests) == 2 and client.stats["retries"] == 1
    assert len(sleeps) == 1 and 0.5 <= sleeps[0] <= 0.55  # backoff plus at most 10 % jitter


def test_500_forever_fails_with_http_after_retries_and_doubling_capped_waits(replay, sleeps):
    server = replay({"*": {"status": 500, "body": "upstream exploded"}})
    client = client_for(server, sleeps, max_retries=3, backoff=1.0, max_backoff=2.5)
    with pytest.raises(LLMError) as info:
        client.complete(ask("x"))
    err = info.value
    assert err.kind == "http" and err.attempts == 4 and len(server.requests) == 4
    assert "500" in err.detail and "upstream exploded" in err.detail
    assert len(sleeps) == 3
    assert 1.0 <= sleeps[0] <= 1.1 and 2.0 <= sleeps[1] <= 2.2 and sleeps[2] == 2.5
    assert client.stats["failures"] == 1


def test_slow_reply_times_out_and_is_retried(replay, sleeps):
    server = replay({"*": [{"delay": 1.5, "content": '{"slow": true}'}, GOOD]})
    client = client_for(server, sleeps, timeout=0.3)
    t0 = time.monotonic()
    c = client.complete(ask("x"), validate=json_object)
    assert time.monotonic() - t0 < 1.2  # did not wait for the slow answer
    assert c.parsed == json.loads(GOOD) and c.attempts == 2 and len(server.requests) == 2
    assert client.stats["retries"] == 1 and len(sleeps) == 1


def test_timeout_every_time_is_a_timeout_error(replay, sleeps):
    server = replay({"*": {"delay": 1.0, "content": GOOD}})
    with pytest.raises(LLMError) as info:
        client_for(server, sleeps, timeout=0.2, max_retries=1).complete(ask("x"))
    assert info.value.kind == "timeout" and info.value.attempts == 2 and len(server.requests) == 2


def test_401_fails_at_once(replay, sleeps):
    server = replay({"*": {"status": 401, "body": {"error": {"message": "Incorrect API key provided"}}}})
    client = client_for(server, sleeps, max_retries=4)
    with pytest.raises(LLMError) as info:
        client.complete(ask("x"))
    err = info.value
    assert err.kind == "http" and err.attempts == 1 and len(server.requests) == 1 and sleeps == []
    assert "401" in err.detail and "Incorrect API key" in err.detail


def test_a_200_that_is_not_a_chat_completion_is_unparseable(replay, sleeps):
    server = replay({"flaky": [{"raw": "<html>proxy error</html>", "status": 200}, GOOD],
                     "broken": {"raw": '{"choices": []}'}})
    client = client_for(server, sleeps, max_retries=2)
    assert client.complete(ask("flaky"), validate=json_object).attempts == 2
    with pytest.raises(LLMError) as info:
        client.complete(ask("broken"))
    assert info.value.kind == "unparseable" and info.value.attempts == 3 and len(server.requests) == 5
    assert "choices" in info.value.detail


def test_a_dropped_connection_is_retried_and_a_refused_one_fails_as_connection(replay, sleeps):
    server = replay({"*": [{"drop": True}, GOOD]})
    assert client_for(server, sleeps).complete(ask("x")).attempts == 2 and len(server.requests) == 2
    port = server.port
    server.stop()  # nothing listens there now
    client = ChatClient(LLMSettings(f"http://127.0.0.1:{port}/v1", "m", max_retries=1), sleep=sleeps.append)
    with pytest.raises(LLMError) as info:
        client.complete(ask("x"))
    assert info.value.kind == "connection" and info.value.attempts == 2


# --------------------------------------------------------------------------------------------------- cache
def test_cache_second_client_sends_nothing_and_returns_the_same_text(replay, tmp_path):
    server = replay({"*": GOOD})
    first = client_for(server, cache_dir=tmp_path).complete(ask("scene 3"), validate=json_object)
    assert first.cached is False and len(server.requests) == 1

    # another endpoint and key, same model: the cache does not care where the model is served
    other = replay({"*": '{"different": 1}'})
    client = ChatClient(LLMSettings(other.base_url, "replay-model", api_key="sk-other"), cache_dir=tmp_path)
    again = client.complete(ask("scene 3"), validate=json_object)
    assert again == Completion(text=first.text, parsed=first.parsed, cached=True, attempts=0)
    assert other.requests == [] and client.stats == {"requests": 0, "cache_hits": 1, "retries": 0, "failures": 0}

    key = cache_key(ask("scene 3"), "replay-model", LLMSettings("http://x", "replay-model").sampling())
    entry = json.loads((tmp_path / key[:2] / f"{key}.json").read_text())
    assert entry["text"] == GOOD and entry["model"] == "replay-model" and entry["created"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_misses_on_another_temperature_or_model(replay, tmp_path):
    server = replay({"*": GOOD})
    client_for(server, cache_dir=tmp_path).complete(ask("q"))
    client_for(server, cache_dir=tmp_path, temperature=0.7).complete(ask("q"))
    client_for(server, cache_dir=tmp_path, model="another-model").complete(ask("q"))
    client_for(server, cache_dir=tmp_path, seed=1).complete(ask("q"))
    assert len(server.requests) == 4
    hit = client_for(server, cache_dir=tmp_path, temperature=0.7).complete(ask("q"))
    assert hit.cached and len(server.requests) == 4


def test_cache_keys_the_original_messages_and_stores_only_valid_answers(replay, sleeps, tmp_path):
    server = replay({"repair me": ["not json", GOOD], "never": "still not json"})
    client = client_for(server, sleeps, cache_dir=tmp_path, max_retries=1)
    assert client.complete(ask("repair me"), validate=json_object).attempts == 2
    with pytest.raises(LLMError):
        client.complete(ask("never"), validate=json_object)
    assert len(list(tmp_path.rglob("*.json"))) == 1  # the failure left nothing behind
    n = len(server.requests)
    rerun = client_for(server, sleeps, cache_dir=tmp_path).complete(ask("repair me"), validate=json_object)
    assert rerun.cached and rerun.text == GOOD and len(server.requests) == n


def test_a_cached_answer_that_no_longer_validates_is_asked_again(replay, tmp_path):
    server = replay({"*": ["prose answer", GOOD]})
    assert client_for(server, cache_dir=tmp_path).complete(ask("q")).text == "prose answer"  # no validate: stored
    c = client_for(server, cache_dir=tmp_path).complete(ask("q"), validate=json_object)
    assert c.cached is False and c.parsed == json.loads(GOOD) and len(server.requests) == 2
    # and the good answer replaced the stored one
    assert client_for(server, cache_dir=tmp_path).complete(ask("q"), validate=json_object).cached


# ------------------------------------------------------------------------------------------- complete_many
def test_complete_many_runs_requests_concurrently(replay):
    server = replay({"*": {"delay": 0.3, "content": GOOD}})
    client = client_for(server, concurrency=4)
    t0 = time.monotonic()
    results = list(client.complete_many([ask(f"item {i}") for i in range(8)], validate=json_object))
    elapsed = time.monotonic() - t0
    assert sorted(i for i, _ in results) == list(range(8))
    assert all(isinstance(r, Completion) and r.parsed == json.loads(GOOD) for _, r in results)
    assert elapsed < 0.5 * 8 * 0.3  # serial would take 2.4 s; four at a time about 0.6 s
    assert server.max_in_flight == 4 and len(server.requests) == 8


def test_complete_many_isolates_a_failing_request(replay, sleeps):
    server = replay({"item 2": {"status": 401}, "item 4": "never json", "*": GOOD})
    client = client_for(server, sleeps, concurrency=3, max_retries=1)
    results = dict(client.complete_many([ask(f"item {i}") for i in range(6)], validate=json_object))
    assert sorted(results) == list(range(6))
    assert isinstance(results[2], LLMError) and results[2].kind == "http"
    assert isinstance(results[4], LLMError) and results[4].kind == "unparseable"
    assert all(isinstance(results[i], Completion) for i in (0, 1, 3, 5))
    assert len(server.requests) == 1 + 2 + 4 and client.stats["failures"] == 2


def test_complete_many_rerun_is_served_from_cache(replay, tmp_path):
    server = replay({"*": GOOD})
    convs = [ask(f"item {i}") for i in range(5)]
    list(client_for(server, cache_dir=tmp_path).complete_many(convs, validate=json_object))
    client = client_for(server, cache_dir=tmp_path)
    results = list(client.complete_many(convs, validate=json_object))
    assert len(server.requests) == 5 and all(r.cached for _, r in results) and client.stats["cache_hits"] == 5


# --------------------------------------------------------------------------------------------- configuration
@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_from_env_precedence(clean_env):
    env = clean_env
    env.setenv("OPENAI_BASE_URL", "https://api.example.org/v1")
    env.setenv("OPENAI_API_KEY", "sk-openai")
    env.setenv("POINTCOPY_LLM_MODEL", "env-model")
    s = LLMSettings.from_env(temperature=0.2)
    assert (s.base_url, s.model, s.api_key, s.temperature) == ("https://api.example.org/v1", "env-model",
                                                               "sk-openai", 0.2)
    env.setenv("POINTCOPY_LLM_BASE_URL", "http://127.0.0.1:8000/v1")
    s = LLMSettings.from_env()
    # OPENAI_API_KEY belongs to OPENAI_BASE_URL's endpoint, not to the one named by POINTCOPY_LLM_BASE_URL
    assert (s.base_url, s.api_key) == ("http://127.0.0.1:8000/v1", None)
    env.setenv("POINTCOPY_LLM_API_KEY", "sk-pointcopy")
    assert LLMSettings.from_env().api_key == "sk-pointcopy"
    s = LLMSettings.from_env(base_url="http://10.0.0.5:8000/v1", model="arg-model", api_key="sk-arg")
    assert (s.base_url, s.model, s.api_key) == ("http://10.0.0.5:8000/v1", "arg-model", "sk-arg")
    env.delenv("POINTCOPY_LLM_API_KEY")
    env.setenv("POINTCOPY_LLM_BASE_URL", "https://api.openai.com/v1")
    assert LLMSettings.from_env().api_key == "sk-openai"  # OpenAI's own endpoint


def test_from_env_config_errors_name_flag_and_variable(clean_env):
    with pytest.raises(LLMError) as info:
        LLMSettings.from_env()
    err = info.value
    assert err.kind == "config" and err.attempts == 0
    for word in ("--llm-base-url", "POINTCOPY_LLM_BASE_URL", "--llm-model", "POINTCOPY_LLM_MODEL"):
        assert word in str(err)
    clean_env.setenv("POINTCOPY_LLM_BASE_URL", "http://127.0.0.1:8000/v1")
    with pytest.raises(LLMError, match="POINTCOPY_LLM_MODEL") as info:
        LLMSettings.from_env()
    assert "POINTCOPY_LLM_BASE_URL" not in str(info.value)
    with pytest.raises(LLMError, match="not an http"):
        ChatClient(LLMSettings("127.0.0.1:8000/v1", "m"))


def test_error_pickles_and_settings_hide_the_key():
    err = pickle.loads(pickle.dumps(LLMError("timeout", "slow", 3)))
    assert (err.kind, err.detail, err.attempts) == ("timeout", "slow", 3)
    assert "sk-secret" not in repr(LLMSettings("http://127.0.0.1/v1", "m", api_key="sk-secret"))
    assert REPAIR_PROMPT.format(error="E").startswith("Your answer could not be used: E.")


# ------------------------------------------------------------------------------------------ replay server
def test_replay_scripts_load_from_json_and_jsonl_and_serve_models(tmp_path):
    rows = [{"match": "alpha", "actions": [{"content": "A1"}, "A2"]}, {"match": "*", "actions": ["other"]}]
    (tmp_path / "s.json").write_text(json.dumps(rows))
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    for name in ("s.json", "s.jsonl"):
        with ReplayServer(load_script(tmp_path / name)) as server:
            client = ChatClient(LLMSettings(server.base_url, "m"))
            assert [client.complete(ask(t)).text for t in ("alpha", "alpha", "alpha", "beta")] == \
                ["A1", "A2", "A2", "other"]
            models = json.loads(urllib.request.urlopen(server.base_url + "/models", timeout=5).read())
            assert models["data"][0]["id"] == "replay"
    with pytest.raises(ValueError, match="unknown replay action"):
        ReplayServer({"*": {"contnet": "typo"}})


def test_replay_main_prints_the_base_url_first(tmp_path):
    script = tmp_path / "s.jsonl"
    script.write_text(json.dumps({"match": "*", "actions": [GOOD]}) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "pointcopy.pipeline.replay", "--script", str(script),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        c = ChatClient(LLMSettings(base_url, "m", timeout=10)).complete(ask("x"), validate=json_object)
        assert c.parsed == json.loads(GOOD)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.stderr.read() == ""  # no request logs
