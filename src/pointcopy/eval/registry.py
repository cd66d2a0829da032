"""The benchmark registry: one `BenchmarkSpec` per benchmark, holding every fact the commands need about it.

In the spirit of lm-evaluation-harness tasks, a benchmark is data, not a branch: `pointcopy eval` and `pointcopy
score` look a spec up (`get(name)`) and use its fields; they hold no per-benchmark tables or if/else chains.

    spec = registry.get("mathvision")
    bench = spec.load(data_dir, split=None)              # default split, checked against spec.splits
    prompt = spec.prompt(bench.items["15"], None)         # default prompt mode, checked against spec.prompt_modes
    fields = spec.score_item(item, row, ScoreOptions(), ev, judge=None)   # -> spec.item_fields, in that order
    summary = spec.aggregate([(item, fields["correct"]), ...])            # official summary layout

A spec's per-item scorer takes the benchmark item (gold fields from the benchmark data only), the predictions row
(`response` and/or a stored extraction), explicit `ScoreOptions`, the safe-math `Evaluator` and the judge (a
`judge.ChatJudge`, or None when `spec.uses_judge(options)` is False). It returns the official-compatible and the
strict verdicts together, as the fields written to `items.jsonl` (`correct` and `strict_correct` among them), and
raises ValueError naming the item for a row it cannot score.

Adding a benchmark: write its loader (`data.load_<name>`), its official prompt builder (`prompts.<name>_query`), its
official-compatible extraction/scoring/aggregation module and a strict scorer (`strict.<name>`), then register one
`BenchmarkSpec` at the bottom of this file. `tests/eval/test_registry.py` checks the spec is complete.

Nothing here imports torch or transformers (`pointcopy score` must run without them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from pointcopy.eval import data, mathverse, mathvision, mathvista, prompts, safe_math, strict

if TYPE_CHECKING:  # pragma: no cover
    from pointcopy.eval.judge import ChatJudge

MATHVERSE_MODES = mathverse.MODES
MATH_BACKENDS = safe_math.BACKENDS
INTEGER_RULES = mathvista.INTEGER_RULES


# --------------------------------------------------------------------------------------------- options
def _positive_seconds(text: str) -> float:
    from pointcopy.commands.args import positive_float

    return positive_float(text)


@dataclass(frozen=True)
class ScoreOptions:
    """How to score, explicitly (no argparse namespace). Each benchmark reads the options that concern it:

    re_extract      all: ignore an extraction stored in the predictions row and extract from `response` again
    integer_rule    MathVista: integer normalisation, `current` int(float(x)) or `legacy` int(x) (EVAL.md §1.5)
    quick_extract   MathVista: also try the official `The answer is "x".` rule
    llm_extract     MathVista: LLM extraction (the judge) for items the deterministic fast paths cannot extract
    mathverse_mode  MathVerse: `deterministic` (judge-free) or `judge` (official two-stage LLM judge)
    math_backend    numeric parser of the safe-math evaluator: `native` or `latex2sympy2` (MATH-V official path)
    timeout         per-item math time limit, seconds
    judge_cache     judge cache directory (None: no judge is ever built from these options)
    """

    re_extract: bool = field(default=False, metadata={"help": "ignore stored extractions and extract again"})
    integer_rule: str = field(default="current", metadata={
        "choices": INTEGER_RULES, "help": "MathVista integer normalisation: current int(float(x)) or legacy int(x)"})
    quick_extract: bool = field(default=False, metadata={"help": 'MathVista: also try `The answer is "x".`'})
    llm_extract: bool = field(default=False, metadata={
        "help": "MathVista: LLM extraction for items the fast paths cannot extract (POINTCOPY_JUDGE_* variables)"})
    mathverse_mode: str = field(default="deterministic", metadata={
        "choices": MATHVERSE_MODES, "help": "MathVerse: judge-free (default) or the official two-stage LLM judge"})
    math_backend: str = field(default="native", metadata={
        "choices": MATH_BACKENDS, "help": "MATH-V numeric parser: own safe parser (default) or latex2sympy2"})
    timeout: float = field(default=safe_math.DEFAULT_TIMEOUT_S, metadata={
        "type": _positive_seconds, "help": "per-item math time limit, s"})
    judge_cache: Path | None = field(default=None, metadata={
        "help": "judge cache directory (default OUTDIR/judge_cache)"})

    def __post_init__(self) -> None:
        for name, value, allowed in (("integer_rule", self.integer_rule, INTEGER_RULES),
                                     ("mathverse_mode", self.mathverse_mode, MATHVERSE_MODES),
                                     ("math_backend", self.math_backend, MATH_BACKENDS)):
            if value not in allowed:
                raise ValueError(f"scoring option {name} must be one of {allowed}, got {value!r}")
        if not self.timeout > 0:
            raise ValueError(f"scoring option timeout must be > 0, got {self.timeout!r}")

    def evaluator(self) -> safe_math.Evaluator:
        """The safe-math evaluator these options ask for (a context manager; close it when done)."""
        return safe_math.Evaluator(self.timeout, self.math_backend)

    def judge(self) -> "ChatJudge":
        """The LLM judge (POINTCOPY_JUDGE_* environment variables; JudgeError when not configured)."""
        from pointcopy.eval.judge import ChatJudge, JudgeConfig

        if self.judge_cache is None:
            raise ValueError("a judge needs a cache directory (ScoreOptions.judge_cache)")
        return ChatJudge(JudgeConfig.from_env(), self.judge_cache)


# the per-item scorer: (item, predictions row, options, evaluator, judge or None) -> items.jsonl fields
ItemScorer = Callable[[dict, dict, ScoreOptions, safe_math.Evaluator, "ChatJudge | None"], dict]


# --------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything about one benchmark that loading, prompting, generating and scoring need."""

    name: str  # command-line name (`pointcopy eval <name>`)
    title: str  # how messages and reports name it
    id_key: str  # the id field of its items and of the rows `pointcopy eval` writes
    prediction_id_keys: tuple[str, ...]  # id fields accepted in a predictions file, tried in order
    splits: tuple[str, ...]  # the first is the default
    loader: Callable[[Any, str], data.Benchmark]  # (data_dir, split) -> Benchmark (items keyed by id)
    prompt_modes: tuple[str, ...]  # the first is the default
    prompt_builder: Callable[[dict, str], str]  # (item, mode) -> the official prompt
    # fields that decide whether an answer is right: taken from the benchmark data only, never from a predictions
    # row (official output files repeat the item, and a row could otherwise carry its own gold answer)
    gold_fields: tuple[str, ...]
    score_item: ItemScorer  # official-compatible + strict verdicts of one row
    item_fields: tuple[str, ...]  # what score_item returns, in items.jsonl order
    aggregate: Callable[[Iterable[tuple[dict, bool]]], dict]  # (item, correct) pairs -> official summary layout
    groups: dict[str, Callable[[dict], Any]]  # report breakdowns: group name -> item -> group value
    describe: Callable[[ScoreOptions], str]  # the official-compatible scorer, as the report names it
    uses_judge: Callable[[ScoreOptions], bool] = lambda opts: False  # does scoring call the LLM judge?
    notes: Callable[[ScoreOptions], list[str]] = lambda opts: []  # report notes these options always add
    split_help: str = ""  # one line for --split help, when the splits need explaining
    # the error of a predictions row whose id is not in the split (fields: title, id, id_key, split)
    unknown_id_error: str = "{title} item {id!r}: {id_key} not in {split}"

    @property
    def default_split(self) -> str:
        return self.splits[0]

    @property
    def default_prompt_mode(self) -> str:
        return self.prompt_modes[0]

    def check_split(self, split: str | None) -> str:
        split = split or self.default_split
        if split not in self.splits:
            raise ValueError(f"{self.title} split must be one of {self.splits}, got {split!r}")
        return split

    def check_prompt_mode(self, mode: str | None) -> str:
        mode = mode or self.default_prompt_mode
        if mode not in self.prompt_modes:
            raise ValueError(f"{self.name}: prompt mode must be one of {self.prompt_modes}, got {mode!r}")
        return mode

    def load(self, data_dir: str | Path, split: str | None = None) -> data.Benchmark:
        """The split (default: `default_split`) from a data directory."""
        return self.loader(data_dir, self.check_split(split))

    def prompt(self, item: dict, mode: str | None = None) -> str:
        """The official prompt of `item` in prompt mode `mode` (default: `default_prompt_mode`)."""
        return self.prompt_builder(item, self.check_prompt_mode(mode))

    def unknown_id(self, rid: str, split: str) -> str:
        return self.unknown_id_error.format(title=self.title, id=rid, id_key=self.id_key, split=split)

    def row_id(self, row: dict) -> str | None:
        """The id of a predictions row (the first of `prediction_id_keys` it has), as a string."""
        return next((str(row[k]) for k in self.prediction_id_keys if k in row), None)

    def with_gold(self, base: dict, row: dict) -> tuple[dict, list[str]]:
        """The benchmark item with the row's other fields (official output files carry the item, with the
        metadata its score breakdowns were computed from), gold fields always from `base`; plus the gold fields
        the row tried to change."""
        gold = self.gold_fields
        item = {**base, **{k: v for k, v in row.items() if not k.startswith("_") and k not in gold}}
        return item, [k for k in gold if k in row and row[k] != base.get(k)]


# --------------------------------------------------------------------------------------------- MATH-V
def _score_mathvision(item: dict, row: dict, opts: ScoreOptions, ev: safe_math.Evaluator, judge=None) -> dict:
    response = row.get("response")
    if "model_answer" in row and not opts.re_extract:
        answer, source = row["model_answer"], "stored"
    else:
        if not isinstance(response, str):
            raise ValueError(f"MATH-V item {row.get('_id', item.get('id'))!r}: field 'response' missing or not a "
                             f"string")
        answer, source = mathvision.extract_answer(response), "rules"
    correct = mathvision.score_item(item, answer, ev)
    s_ext, s_ok = strict.mathvision(item, response, ev) if isinstance(response, str) else (None, False)
    return {"model_answer": answer, "extraction_source": source, "correct": correct, "strict_extraction": s_ext,
            "strict_correct": s_ok}


MATHVISION = BenchmarkSpec(
    name="mathvision", title="MATH-V", id_key="id", prediction_id_keys=("id",), splits=("test", "testmini"),
    loader=data.load_mathvision, prompt_modes=("cot", "direct"), prompt_builder=prompts.mathvision_query,
    gold_fields=("answer", "options", "question"),
    score_item=_score_mathvision,
    item_fields=("model_answer", "extraction_source", "correct", "strict_extraction", "strict_correct"),
    aggregate=mathvision.aggregate,
    groups={"level": lambda it: it["level"], "subject": lambda it: it["subject"]},
    describe=lambda opts: f"MATH-V evaluate.py rules, math backend {opts.math_backend}",
)


# --------------------------------------------------------------------------------------------- MathVista
def _score_mathvista(item: dict, row: dict, opts: ScoreOptions, ev: safe_math.Evaluator, judge=None) -> dict:
    response = row.get("response")
    if "extraction" in row and not opts.re_extract:
        extraction, source = row["extraction"], "stored"
    else:
        extraction, source = mathvista.extract_answer(item, response, opts.quick_extract), "rules"
        if extraction is None and judge is not None and opts.llm_extract:
            extraction, source = mathvista.llm_extract(judge, item, response), "llm"
    pred, tf = mathvista.score_item(item, extraction, opts.integer_rule)
    s_ext, s_pred, s_ok = strict.mathvista(item, response, ev) if isinstance(response, str) else (None, None, False)
    return {"extraction": extraction, "extraction_source": source if extraction is not None else "none",
            "prediction": pred, "correct": tf, "strict_extraction": s_ext, "strict_prediction": s_pred,
            "strict_correct": s_ok}


MATHVISTA = BenchmarkSpec(
    name="mathvista", title="MathVista", id_key="pid", prediction_id_keys=("pid",), splits=("testmini", "test"),
    loader=data.load_mathvista, prompt_modes=("query",),  # the official zero-shot query (rebuilds query.json)
    prompt_builder=lambda item, mode: prompts.mathvista_query(item),
    gold_fields=("answer", "choices", "question_type", "answer_type", "precision", "unit", "question", "query"),
    score_item=_score_mathvista,
    item_fields=("extraction", "extraction_source", "prediction", "correct", "strict_extraction",
                 "strict_prediction", "strict_correct"),
    aggregate=mathvista.aggregate,
    groups={"task": lambda it: (it.get("metadata") or {}).get("task"),
            "category": lambda it: (it.get("metadata") or {}).get("category"),
            "question_type": lambda it: it["question_type"]},
    describe=lambda opts: f"MathVista calculate_score.py rules, integer rule {opts.integer_rule}",
    uses_judge=lambda opts: opts.llm_extract,
    split_help="test: prompts only, no answers; Hub parquet layout",
)


# --------------------------------------------------------------------------------------------- MathVerse
def _score_mathverse(item: dict, row: dict, opts: ScoreOptions, ev: safe_math.Evaluator, judge=None) -> dict:
    response = row.get("response", row.get("model_answer"))
    stored = row.get("extraction") if not opts.re_extract else None
    res = mathverse.score_item(item, response, opts.mathverse_mode, judge, stored)
    s_ext, s_ok = strict.mathverse(item, response, ev) if isinstance(response, str) else (None, False)
    return {"extraction": res["extraction"], "correct": res["correct"], "judge_failed": res["judge_failed"],
            "strict_extraction": s_ext, "strict_correct": s_ok}


MATHVERSE = BenchmarkSpec(
    name="mathverse", title="MathVerse", id_key="sample_index",
    prediction_id_keys=("sample_index", "pid"),  # testmini's sample_index, or the public subset's pid
    splits=data.MATHVERSE_SPLITS, loader=data.load_mathverse,
    prompt_modes=("wo", "cot"), prompt_builder=prompts.mathverse_query,
    gold_fields=("answer", "choices", "question_type", "question", "query_wo", "query_cot", "precision", "unit"),
    score_item=_score_mathverse,
    item_fields=("extraction", "correct", "judge_failed", "strict_extraction", "strict_correct"),
    aggregate=mathverse.aggregate,
    groups={"problem_version": lambda it: it.get("problem_version") or (it.get("metadata") or {}).get(
        "problem_version")},
    describe=lambda opts: f"MathVerse two-stage, mode {opts.mathverse_mode}",
    uses_judge=lambda opts: opts.mathverse_mode == "judge",
    notes=lambda opts: [mathverse.DETERMINISTIC_NOTE] if opts.mathverse_mode == "deterministic" else [],
    split_help="testmini: the 5 image versions; public_subset: the visualizer subset (ids are pids)",
    unknown_id_error="MathVerse sample {id!r}: not in {split}",
)


# --------------------------------------------------------------------------------------------- the registry
BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in (MATHVISTA, MATHVISION, MATHVERSE)}


def names() -> tuple[str, ...]:
    """Registered benchmark names, in registration order."""
    return tuple(BENCHMARKS)


def get(name: str) -> BenchmarkSpec:
    """The spec of a registered benchmark; ValueError listing the known names otherwise."""
    try:
        return BENCHMARKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}") from None


def _choices(values: tuple[str, ...]) -> str:
    return " | ".join(f"{v} (default)" if n == 0 else v for n, v in enumerate(values))


def split_help() -> str:
    """--split help text built from the specs."""
    return "split; " + "; ".join(f"{s.name}: {_choices(s.splits)}" + (f" [{s.split_help}]" if s.split_help else "")
                                 for s in BENCHMARKS.values())


def prompt_help() -> str:
    """--prompt help text built from the specs."""
    return "prompt mode; " + "; ".join(f"{s.name}: {_choices(s.prompt_modes)}" for s in BENCHMARKS.values())
