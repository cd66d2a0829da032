"""Official prompt builders (EVAL.md §1.4, §2.3, §3.1)."""

from __future__ import annotations

_MATHVISTA_HINTS = {
    "multi_choice": "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
    "integer": "Please answer the question requiring an integer answer and provide the final value, "
               "e.g., 1, 2, 3, at the end.",
    "float1": "Please answer the question requiring a floating-point number with one decimal place and provide "
              "the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    "float2": "Please answer the question requiring a floating-point number with two decimal places and provide "
              "the final value, e.g., 1.23, 1.34, 1.45, at the end.",
    "list": "Please answer the question requiring a Python list as an answer and provide the final list, "
            "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}


def _mathvista_hint(item: dict) -> str:
    pid = item.get("pid")
    if item.get("question_type") == "multi_choice":
        return _MATHVISTA_HINTS["multi_choice"]
    atype = item.get("answer_type")
    if atype == "integer":
        return _MATHVISTA_HINTS["integer"]
    if atype == "float":
        prec = item.get("precision")
        if prec is None or int(prec) not in (1, 2):
            raise ValueError(f"MathVista item {pid!r}: field 'precision' must be 1 or 2 for a float, got {prec!r}")
        return _MATHVISTA_HINTS[f"float{int(prec)}"]
    if atype == "list":
        return _MATHVISTA_HINTS["list"]
    raise ValueError(f"MathVista item {pid!r}: unsupported answer_type {atype!r}")


def mathvista_query(item: dict) -> str:
    """Official zero-shot query: hint, question, unit, choices (rebuilds data/query.json for testmini)."""
    if "question" not in item:
        raise ValueError(f"MathVista item {item.get('pid')!r}: missing field 'question'")
    q = "Hint: " + _mathvista_hint(item) + "\n" + "Question: " + item["question"]
    if item.get("unit"):
        q += f" (Unit: {item['unit']})"
    choices = item.get("choices")
    if choices:
        q += "\nChoices:\n" + "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices))
    return q.strip()


def _mathvision_options(item: dict) -> str:
    options = item.get("options") or []
    if not options or list(options) == list("ABCDE"):
        return ""  # options drawn in the image: the official prompt omits them
    return "".join(f"({chr(ord('A') + i)}) {o}\n" for i, o in enumerate(options))


def mathvision_query(item: dict, mode: str = "cot") -> str:
    """Official MATH-V prompts: mode 'cot' (boxed answer) or 'direct' (single word or phrase)."""
    if "question" not in item:
        raise ValueError(f"MATH-V item {item.get('id')!r}: missing field 'question'")
    opts = _mathvision_options(item)
    if mode == "cot":
        return ('Please solve the problem step by step and put your answer in one "\\boxed{}". If it is a multiple '
                'choice question, only one letter is allowed in the "\\boxed{}".\n' + f"{item['question']}\n{opts}")
    if mode == "direct":
        return f"{item['question']}\n{opts}\nAnswer the question using a single word or phrase."
    raise ValueError(f"MATH-V prompt mode must be 'cot' or 'direct', got {mode!r}")


MATHVERSE_INSTRUCTIONS = {  # (mode, multiple choice) -> the instruction the released queries start with
    ("wo", True): "Please directly answer the question and provide the correct option letter, e.g., A, B, C, D.",
    ("wo", False): "Please directly answer the question and provide the final value, e.g., 1, 2.5, 300.",
    ("cot", True): "Please first conduct reasoning, and then answer the question and provide the correct option "
                   "letter, e.g., A, B, C, D, at the end.",
    ("cot", False): "Please first conduct reasoning, and then answer the question and provide the final value, "
                    "e.g., 1, 2.5, 300, at the end.",
}


def mathverse_query(item: dict, mode: str = "wo") -> str:
    """MathVerse prompt as released in the data: `query_wo` (primary, no CoT) or `query_cot`. Items without them
    (the public visualizer subset: `question` + `choices`) get the same composition the released queries follow
    (instruction, newline, `Question: ` + the question with its choices; true of all 788 testmini text-only
    items, tested)."""
    key = {"wo": "query_wo", "cot": "query_cot"}.get(mode)
    if key is None:
        raise ValueError(f"MathVerse prompt mode must be 'wo' or 'cot', got {mode!r}")
    if key in item:
        return item[key]
    if "question" not in item:
        raise ValueError(f"MathVerse item {item.get('sample_index', item.get('pid'))!r}: missing field {key!r} "
                         f"(and no 'question' to build it from)")
    choices = item.get("choices") or []
    question = item["question"].rstrip() + "\nChoices:\n" + "\n".join(choices) if choices else item["question"]
    mc = item.get("question_type") in ("multi-choice", "multi_choice")
    return f"{MATHVERSE_INSTRUCTIONS[(mode, mc)]}\nQuestion: {question}"