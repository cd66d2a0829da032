"""Official output files used as oracles (paths under shared/benchmarks/<benchmark>/)."""

MATHV_FILES = [
    "Random-Chance.jsonl",
    "closed-source/Gemini/Gemini-Pro.jsonl",
    "closed-source/Gemini/Gemini-Pro-CoT.jsonl",
    "closed-source/Qwen/Qwen-VL-Max.jsonl",
    "closed-source/Qwen/Qwen-VL-Max-CoT.jsonl",
    "closed-source/Qwen/Qwen-VL-Plus.jsonl",
    "open-source/Internlm/InternLM-XComposer2-VL-CoT.jsonl",
    "open-source/LLavA/LLaVA-v1.5-7B.jsonl",
    "open-source/Sphinx/SPHINX-MoE.jsonl",
]

MATHVISTA_FILES = {  # output file -> (score file, integer rule that produced the stored predictions; EVAL.md §1.5)
    "bard/output_bard.json": ("bard/scores_bard.json", "legacy"),
    "chatgpt/output_chatgpt.json": ("chatgpt/scores_chatgpt.json", "legacy"),
    "gpt4/output_gpt4_2shot_code.json": ("gpt4/scores_gpt4_2shot_code.json", "legacy"),
    "gpt4/output_gpt4_2shot_solution_use_ocr.json": ("gpt4/scores_gpt4_2shot_solution_use_ocr.json", "legacy"),
    "idefics/output_idefics_9b_instruct.json": ("idefics/scores_idefics_9b_instruct.json", "legacy"),
    "llavar/output_llavar.json": ("llavar/scores_llavar.json", "current"),
    "random/output_random_guess.json": ("random/scores_random_guess.json", "legacy"),
}
