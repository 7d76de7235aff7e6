"""Stage 2 of ELM: a model trained on the programs ELM found (`elmjax finetune`).

`build_dataset` turns run directories into (prompt, program) data, `finetune` trains and
evaluates a model into a model directory that `elmjax evolve --model` and `elmjax rl --model`
load, `evaluate_dir` re-runs the evaluation. `prompts` is the text format a stage-2 model reads.
Imports `lm`, `store` (through `run_dir`), `run_dir` and `evaluation`, never the loop.
"""

from elmjax.finetune.config import FinetuneConfig
from elmjax.finetune.dataset import Dataset, DatasetError, Example, build_dataset
from elmjax.finetune.job import FinetuneError, evaluate_dir, finetune
from elmjax.finetune.prompts import completion_ids, normal_form, program_prompt

__all__ = [
    "Dataset",
    "DatasetError",
    "Example",
    "FinetuneConfig",
    "FinetuneError",
    "build_dataset",
    "completion_ids",
    "evaluate_dir",
    "finetune",
    "normal_form",
    "program_prompt",
]
