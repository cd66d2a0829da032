"""`pointcopy pipeline {build,shapes-input}`: build v1g training data from text-only reasoning traces.

    # the shapes world, no LLM: write its text-only traces, then decompose, ground and filter them
    pointcopy shapes data --root runs/shapes
    pointcopy pipeline shapes-input --split runs/shapes/data/test --out runs/pipeline/inputs.jsonl
    pointcopy pipeline build --input runs/pipeline/inputs.jsonl --out runs/pipeline/shapes \\
        --decomposer shapes --model src/pointcopy/embedded/assets/shapes-tiny

    # your traces, an LLM behind any OpenAI-compatible endpoint (vLLM, Ollama, a hosted API) and a Qwen2.5-VL
    pointcopy pipeline build --input traces.jsonl --out runs/pipeline/mine --decomposer llm \\
        --llm-base-url http://127.0.0.1:8000/v1 --llm-model Qwen/Qwen2.5-72B-Instruct \\
        --model Qwen/Qwen2.5-VL-7B-Instruct
    torchrun --nproc-per-node 8 -m pointcopy.cli pipeline build ...    # each rank grounds its own shard

Writes OUT/v1g.jsonl (+ images/), OUT/dropped.jsonl (every dropped record with its reasons), OUT/report.json
and report.md (records in/out per rule, retention, objects and copies per trace, IoU where the input has ground
truth), and per-shard stage files under OUT/shards/. A killed run resumes where it stopped. See
`pointcopy.pipeline.build` for the stages and `pointcopy.pipeline.filter` for the rules.
"""

from __future__ import annotations

import argparse

from .args import output_dir, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="stage", required=True, metavar="{build,shapes-input}")
    b = sub.add_parser("build", help="decompose -> filter -> ground -> filter -> v1g records",
                       description="decompose -> filter -> ground -> filter -> v1g records (resumable, sharded)")
    _build_arguments(b)
    s = sub.add_parser("shapes-input", help="write a shapes split's text-only traces as pipeline input",
                       description="a shapes split's questions and text-only reasoning (no detect calls, no "
                                   "boxes) as pipeline input; object boxes ride along as ground truth for the "
                                   "report's IoU only")
    s.add_argument("--split", required=True, help="a shapes split folder (pointcopy shapes data)")
    s.add_argument("--out", required=True, help="the JSONL file to write")
    s.add_argument("--limit", type=positive_int, help="first N items only")


def _build_arguments(b: argparse.ArgumentParser) -> None:
    from pointcopy.pipeline.build import GROUNDERS
    from pointcopy.pipeline.filter import FilterOptions

    from .ground import add_ground_options

    f = FilterOptions()
    b.add_argument("--input", required=True, help="JSONL of text-only traces (see pointcopy.pipeline.inputs)")
    b.add_argument("--out", type=output_dir, required=True, help="output directory (resumable)")
    b.add_argument("--limit", type=positive_int, help="first N input records only")
    d = b.add_argument_group("decomposition")
    d.add_argument("--decomposer", choices=("llm", "shapes"), required=True,
                   help="llm: an OpenAI-compatible endpoint; shapes: the shapes world's deterministic rewrite")
    d.add_argument("--llm-base-url", help="e.g. http://127.0.0.1:8000/v1 (env POINTCOPY_LLM_BASE_URL, "
                                          "OPENAI_BASE_URL)")
    d.add_argument("--llm-model", help="model name at the endpoint (env POINTCOPY_LLM_MODEL)")
    d.add_argument("--llm-api-key", help="bearer key (env POINTCOPY_LLM_API_KEY; OPENAI_API_KEY only for "
                                         "OPENAI_BASE_URL or api.openai.com); prefer the environment: flags show "
                                         "up in process lists")
    d.add_argument("--llm-temperature", type=float, default=0.0)
    d.add_argument("--llm-max-tokens", type=positive_int, default=4096)
    d.add_argument("--llm-seed", type=int)
    d.add_argument("--llm-timeout", type=positive_float, default=120.0, help="seconds per request")
    d.add_argument("--llm-retries", type=int, default=4, help="retries on 429/5xx/timeouts/unusable answers")
    d.add_argument("--llm-concurrency", type=positive_int, default=8, help="requests in flight")
    d.add_argument("--no-json-mode", action="store_true",
                   help="do not send response_format=json_object (for servers that reject it)")
    d.add_argument("--fewshot", nargs="+", help="few-shot example JSONL files (default: the shipped chart, "
                                                "geometry and counting examples)")
    d.add_argument("--system-prompt", help="a file replacing the shipped rules prompt")
    d.add_argument("--cache", help="LLM answer cache folder (default: OUT/llm-cache)")
    g = b.add_argument_group("grounding")
    g.add_argument("--grounder", choices=GROUNDERS, default="attention",
                   help="attention: Algorithm 1 with --model; ground-truth: the input's own boxes (reference runs)")
    g.add_argument("--model", help="Qwen2.5-VL-family checkpoint for the attention grounder (path or hub id)")
    add_ground_options(g)
    g.add_argument("--device", help="device of the grounding model (default: cpu; under torchrun with CUDA: "
                                    "cuda:LOCAL_RANK)")
    g.add_argument("--threads", type=positive_int, help="torch CPU threads")
    fl = b.add_argument_group("filters")
    fl.add_argument("--min-objects", type=positive_int, default=f.min_objects,
                    help="drop records with fewer objects (paper: 3)")
    fl.add_argument("--filter-min-contrast", type=float, default=f.min_contrast,
                    help="drop records with an object whose contrast is below this (0: off)")
    fl.add_argument("--min-box-px", type=float, default=f.min_box_px, help="drop boxes with a side below this")
    r = b.add_argument_group("running")
    r.add_argument("--shard", help="I/N: process only shard I of N (default: all; under torchrun/accelerate: "
                                   "the rank's shard)")
    r.add_argument("--no-progress", action="store_true")


def _decomposer(args):
    from pathlib import Path

    from pointcopy.pipeline.decompose import DEFAULT_FEWSHOT, LLMDecomposer, ShapesDecomposer, load_examples

    if args.decomposer == "shapes":
        return ShapesDecomposer()
    from pointcopy.llm import LLMSettings

    settings = LLMSettings.from_env(args.llm_base_url, args.llm_model, args.llm_api_key,
                                    temperature=args.llm_temperature, max_tokens=args.llm_max_tokens,
                                    seed=args.llm_seed, json_mode=not args.no_json_mode, timeout=args.llm_timeout,
                                    max_retries=args.llm_retries, concurrency=args.llm_concurrency)
    system = Path(args.system_prompt).read_text(encoding="utf-8") if args.system_prompt else None
    return LLMDecomposer(settings, load_examples(args.fewshot or DEFAULT_FEWSHOT),
                         cache_dir=args.cache or Path(args.out) / "llm-cache", system_prompt=system)


def run(args: argparse.Namespace) -> int:
    if args.stage == "shapes-input":
        from pointcopy.pipeline.inputs import shapes_inputs, write_inputs

        n = write_inputs(shapes_inputs(args.split, args.limit), args.out)
        print(f"wrote {n} text-only traces to {args.out}")
        return 0

    import os

    from pointcopy.pipeline.build import BuildOptions, build, parse_shard, shard_from_env
    from pointcopy.pipeline.filter import FilterOptions

    from .ground import ground_options_from

    shard = parse_shard(args.shard) if args.shard else shard_from_env() or (0, 1)
    device = args.device
    if device is None and shard_from_env() is not None:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    opts = BuildOptions(args.input, str(args.out), grounder=args.grounder, model=args.model,
                        ground=ground_options_from(args),
                        filter=FilterOptions(args.min_objects, args.filter_min_contrast, args.min_box_px),
                        shard=shard, limit=args.limit, threads=args.threads, device=device,
                        progress=not args.no_progress)
    report = build(opts, _decomposer(args))
    if report is not None:
        from pointcopy.pipeline.build import report_markdown

        print(report_markdown(report), end="")
    return 0
