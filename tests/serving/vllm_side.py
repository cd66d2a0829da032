"""The vLLM half of the serving tests: run with the vLLM environment's Python (`.venv-vllm`), never imported by
pytest. Reads a job JSON (argv[1]) written by test_vllm.py, generates with `PointCopyEngine`, writes the results
JSON (argv[2]). Each engine is closed before the next starts."""

import json
import sys

from PIL import Image


def _prompts(rows):
    return [(r["prompt"], [Image.open(r["image"]).convert("RGB")]) for r in rows]


def main(job_path: str, out_path: str) -> None:
    from pointcopy.serving.engine import PointCopyEngine

    job, out = json.load(open(job_path)), {}
    shapes = job["shapes"]
    prompts, steps = _prompts(shapes["rows"]), shapes["max_new_tokens"]
    with PointCopyEngine(shapes["model"], max_num_seqs=32, max_model_len=1024, dtype="float32") as engine:
        out["batched"] = engine.generate_ids(prompts, steps)
        out["single"] = [engine.generate_ids([prompts[i]], steps)[0] for i in shapes["single"]]
        out["penalty"] = engine.generate_ids([prompts[i] for i in shapes["penalty_rows"]], steps,
                                             repetition_penalty=shapes["penalty"])
    # chunked prefill with mixed batches: a 32-token step budget splits every prompt (and its image tokens) over
    # several steps, next to other requests' decode steps
    with PointCopyEngine(shapes["model"], max_num_seqs=8, max_model_len=1024, dtype="float32",
                         max_num_batched_tokens=32, enable_chunked_prefill=True) as engine:
        out["chunked"] = engine.generate_ids([prompts[i] for i in shapes["chunked_rows"]], steps)
    oracle = job["oracle"]
    with PointCopyEngine(oracle["model"], max_num_seqs=2, max_model_len=512, dtype="float32",
                         logprobs_mode="raw_logits") as engine:
        image = Image.open(oracle["image"]).convert("RGB")
        result = engine.generate_outputs([(oracle["prompt"], [image])], oracle["max_new_tokens"],
                                         logprobs=oracle["top"])[0].outputs[0]
        out["oracle_ids"] = list(result.token_ids)
        out["oracle_top"] = [{str(t): lp.logprob for t, lp in step.items()} for step in result.logprobs]
    json.dump(out, open(out_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
