"""Decomposition (the paper's stage 2, PAPER.md §4.4): a text-only reasoning trace -> the same reasoning with a
``detect()`` call and a fresh ``<objN>`` id for each visual reference, plus an object list of self-contained
descriptions (what the grounder localises).

    {"reasoning": 'detect(query="red bar", objects=["<obj1>"]) The <obj1> for 2019 reaches 42 ...',
     "obj_list": {"<obj1>": {"type": "bar", "description": "the red bar for 2019 in the bar chart"}, ...}}

Two decomposers, one interface (``decompose_many(records) -> (record, Decomposition | DecomposeError)``):

* :class:`LLMDecomposer`: any OpenAI-compatible chat endpoint (``pointcopy.llm.ChatClient``: retries, backoff,
  requests in flight, on-disk cache). The prompt is the paper's rules (``prompts/decompose.md``) followed by
  few-shot examples (``prompts/fewshot/general.jsonl``: a chart, a geometry figure, a counting scene), each a
  data file a user replaces per domain (``--fewshot``). The answer must be one JSON object (a Markdown code fence
  around it is tolerated, prose is not); an unusable answer is sent back with what was wrong and retried.
* :class:`ShapesDecomposer`: deterministic, for the shapes world (its objects are known by construction): every
  line of a text-only shapes trace that opens with an object's description gets that object's ``detect`` call,
  and a later mention of a description becomes its id; ``ShapesDecomposer`` inverts
  ``data.shapes.traces.text_only``, so the whole pipeline runs on CPU without an LLM.

Whether a decomposition is *usable* (ids match the object list, unique labels, enough objects, well-formed
detect calls) is not decided here but by ``pipeline.filter``, so every rule is counted in one place.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .inputs import SourceRecord

__all__ = ["Decomposition", "DecomposeError", "Example", "parse_answer", "load_examples", "user_message",
           "ShapesDecomposer", "LLMDecomposer", "PROMPTS", "DEFAULT_FEWSHOT"]

PROMPTS = Path(__file__).with_name("prompts")
DEFAULT_FEWSHOT = PROMPTS / "fewshot" / "general.jsonl"
_KEY = re.compile(r"<?obj(\d+)>?\Z")
_FENCE = re.compile(r"\A```(?:json)?\s*\n(.*)\n```\Z", re.S)


@dataclass
class Decomposition:
    """A grounded-reasoning rewrite: ``reasoning`` with detect calls and ``<objN>`` ids; ``objects`` maps each id
    (``"<obj1>"``) to ``{"description": str, "type": str | None}`` in the order given."""

    reasoning: str
    objects: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"reasoning": self.reasoning, "obj_list": self.objects}

    @classmethod
    def from_dict(cls, d: dict) -> "Decomposition":
        return cls(d["reasoning"], dict(d["obj_list"]))


class DecomposeError(ValueError):
    """No decomposition for a record: ``kind`` (``llm_unparseable``, ``llm_http``, ``llm_timeout``, ...,
    ``no_objects``) and ``detail``."""

    def __init__(self, kind: str, detail: str):
        self.kind, self.detail = kind, detail
        super().__init__(f"{kind}: {detail}")


# ---------------------------------------------------------------------------------------------------- parsing
def _object_list(raw: Any) -> dict[str, dict]:
    """``obj_list`` in any of the shapes LLMs write it -> {"<objN>": {"description", "type"}}.

    Accepted: {"<obj1>": "desc"}, {"<obj1>": {"description": ..., "type": ...}}, [{"id": "<obj1>", ...}]
    (also "object"/"key"/"label" for the id); ids with or without the angle brackets. Anything else is a
    ValueError (the answer is retried)."""
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = []
        for entry in raw:
            if not isinstance(entry, dict):
                raise ValueError(f"obj_list entries must be objects, got {type(entry).__name__}")
            key = next((entry[k] for k in ("id", "object", "key", "label") if k in entry), None)
            if key is None:
                raise ValueError(f"obj_list entry without an id: {json.dumps(entry)[:80]}")
            items.append((key, {k: v for k, v in entry.items() if k not in ("id", "object", "key", "label")}))
    else:
        raise ValueError(f"obj_list must be an object or a list, got {type(raw).__name__}")
    out: dict[str, dict] = {}
    for key, value in items:
        m = _KEY.match(str(key).strip())
        if m is None:
            raise ValueError(f"obj_list key {key!r} is not an object id like <obj1>")
        if isinstance(value, str):
            value = {"description": value}
        if not isinstance(value, dict) or not isinstance(value.get("description", ""), str):
            raise ValueError(f"obj_list entry {key!r} must be a description string or {{'description': ...}}")
        tag = f"<obj{int(m.group(1))}>"
        if tag in out:
            raise ValueError(f"obj_list lists {tag} twice")
        out[tag] = {"description": str(value.get("description", "")).strip(),
                    "type": value.get("type") if isinstance(value.get("type"), str) else None}
    return out


def parse_answer(text: str) -> Decomposition:
    """An LLM answer -> Decomposition. The answer must be one JSON object with a string ``reasoning`` and an
    ``obj_list`` (a Markdown code fence around it is tolerated). Raises ValueError saying what is wrong."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a JSON object ({e.msg} at character {e.pos})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("reasoning", "obj_list") if k not in data]
    if missing:
        raise ValueError(f"the JSON object lacks {', '.join(repr(k) for k in missing)}")
    if not isinstance(data["reasoning"], str) or not data["reasoning"].strip():
        raise ValueError("'reasoning' must be a non-empty string")
    return Decomposition(data["reasoning"].strip(), _object_list(data["obj_list"]))


# ---------------------------------------------------------------------------------------------------- prompt
@dataclass(frozen=True)
class Example:
    """A few-shot example: the inputs and the decomposition a good answer gives."""

    question: str
    reasoning: str
    answer: str | None
    output: Decomposition


def user_message(question: str, reasoning: str, answer: str | None) -> str:
    """The user turn for one record (and for each few-shot example)."""
    text = f"Question: {question.strip()}\n\nText-only reasoning:\n{reasoning.strip()}"
    return text + (f"\n\nFinal answer: {answer.strip()}" if answer else "")


def load_examples(paths: str | Path | Sequence[str | Path] = DEFAULT_FEWSHOT) -> list[Example]:
    """Few-shot examples from JSONL files (one {"question", "reasoning", "answer", "output": {"reasoning",
    "obj_list"}} a line). Each example's output must pass the pipeline's decomposition rules (a bad example
    teaches the LLM bad answers): ValueError naming the file, line and rule."""
    from .filter import FilterOptions, check_decomposition

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out = []
    for path in paths:
        for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
                dec = parse_answer(json.dumps(row["output"]))
                ex = Example(str(row["question"]), str(row["reasoning"]), row.get("answer"), dec)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"few-shot example {where}: {e}") from None
            drops = check_decomposition(dec, FilterOptions(min_objects=1))
            if drops:
                raise ValueError(f"few-shot example {where}: {drops[0]}")
            out.append(ex)
    if not out:
        raise ValueError(f"no few-shot examples in {', '.join(map(str, paths))}")
    return out


# ---------------------------------------------------------------------------------------------------- LLM
class LLMDecomposer:
    """Decomposition by an LLM behind an OpenAI-compatible endpoint (see the module docstring)."""

    name = "llm"

    def __init__(self, settings, examples: Sequence[Example] | None = None, cache_dir: str | Path | None = None,
                 system_prompt: str | None = None):
        from ..llm import ChatClient

        self.examples = list(examples) if examples is not None else load_examples()
        self.system = system_prompt if system_prompt is not None else \
            (PROMPTS / "decompose.md").read_text(encoding="utf-8").strip()
        self.client = ChatClient(settings, cache_dir=cache_dir)

    def messages(self, rec: SourceRecord) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}]
        for ex in self.examples:
            msgs.append({"role": "user", "content": user_message(ex.question, ex.reasoning, ex.answer)})
            msgs.append({"role": "assistant", "content": json.dumps(ex.output.to_dict(), ensure_ascii=False)})
        msgs.append({"role": "user", "content": user_message(rec.question, rec.reasoning, rec.answer)})
        return msgs

    def settings(self) -> dict:
        """What decides the answers (a rerun with other settings must not reuse a stage's rows)."""
        s = self.client.settings
        prompt = json.dumps([self.system, [(e.question, e.reasoning, e.answer, e.output.to_dict())
                                           for e in self.examples]], sort_keys=True)
        return {"decomposer": self.name, "model": s.model, "sampling": s.sampling(),
                "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()[:16]}

    def decompose_many(self, records: Sequence[SourceRecord], progress: bool = False
                       ) -> Iterator[tuple[SourceRecord, Decomposition | DecomposeError]]:
        """(record, result) in completion order; several requests in flight (the client's ``concurrency``)."""
        from ..llm import LLMError

        requests = _Lazy(records, self.messages)  # built as sent: a prompt is kilobytes, a corpus 1e5 records
        for i, result in self.client.complete_many(requests, validate=parse_answer, progress=progress):
            if isinstance(result, LLMError):
                yield records[i], DecomposeError(f"llm_{result.kind}", f"{result.detail} ({result.attempts} "
                                                                        f"attempts)")
            else:
                yield records[i], result.parsed


class _Lazy:
    """`f(x)` for each of `items`, computed when iterated; has a length (for progress)."""

    def __init__(self, items: Sequence, f):
        self.items, self.f = items, f

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return (self.f(x) for x in self.items)


# ---------------------------------------------------------------------------------------------------- shapes
class ShapesDecomposer:
    """The shapes world's deterministic decomposer (the inverse of ``data.shapes.traces.text_only``)."""

    name = "shapes"

    def settings(self) -> dict:
        from ..data.shapes.traces import TRACE_FORMAT

        return {"decomposer": self.name, "trace_format": TRACE_FORMAT}

    @staticmethod
    def decompose(reasoning: str) -> Decomposition:
        from ..data.shapes.traces import DESCRIPTION, enum_call, object_key

        line_start = re.compile(rf"({DESCRIPTION.pattern}): ")
        lines, objects = [], {}
        for line in reasoning.split("\n"):
            m = line_start.match(line)
            if m:
                key = object_key(len(objects) + 1)
                objects[key] = {"description": m.group(1), "type": "object"}
                line = f"{enum_call(len(objects))} {line}"
            lines.append(line)
        if not objects:
            raise DecomposeError("no_objects", "no line opens with an object description")
        owner: dict[str, list[str]] = {}
        for key, obj in objects.items():
            owner.setdefault(obj["description"], []).append(key)
        mention = re.compile(rf"(?<=: )({DESCRIPTION.pattern})(?=\.)")  # "big cyan cylinder: <desc>. It is ..."
        for i, line in enumerate(lines):
            if not line_start.match(line) and not line.startswith("detect("):
                lines[i] = mention.sub(lambda m: owner[m.group()][0] if len(owner.get(m.group(), ())) == 1
                                       else m.group(), line)
        return Decomposition("\n".join(lines), objects)

    def decompose_many(self, records: Iterable[SourceRecord], progress: bool = False
                       ) -> Iterator[tuple[SourceRecord, Decomposition | DecomposeError]]:
        for rec in records:
            try:
                yield rec, self.decompose(rec.reasoning)
            except DecomposeError as e:
                yield rec, e
