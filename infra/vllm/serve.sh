#!/usr/bin/env bash
# Serve Mistral Medium 3.5 (128B, FP8 ~134 GB) with its EAGLE draft head on vLLM, configured the way the
# agent needs: Mistral tokenizer/config/weights, auto tool choice with the Mistral tool parser, the Mistral
# reasoning parser, prefix caching, cached-token reporting. Needs vLLM >= 0.18 and mistral_common >= 1.11.1.
#
# GPUs: eight 80 GB (or 141 GB) GPUs for the full 256k window (TP=8); four 80 GB GPUs at a reduced
# MAX_MODEL_LEN (TP=4, e.g. 65536). A single GPU cannot hold the weights, the draft head and a KV cache.
#
#   VLLM_API_KEY=... TENSOR_PARALLEL_SIZE=8 MAX_MODEL_LEN=262144 bash infra/vllm/serve.sh
set -euo pipefail

MODEL="${MODEL:-mistralai/Mistral-Medium-3.5-128B}"
EAGLE_MODEL="${EAGLE_MODEL:-mistralai/Mistral-Medium-3.5-128B-EAGLE}"
SERVED_MODEL_NAME="${SERVED_MODEL_NAME:-mistral-medium-3.5}"
TENSOR_PARALLEL_SIZE="${TENSOR_PARALLEL_SIZE:-8}"
MAX_MODEL_LEN="${MAX_MODEL_LEN:-262144}"
GPU_MEMORY_UTILIZATION="${GPU_MEMORY_UTILIZATION:-0.85}"
NUM_SPECULATIVE_TOKENS="${NUM_SPECULATIVE_TOKENS:-3}"
DRAFT_MAX_MODEL_LEN="${DRAFT_MAX_MODEL_LEN:-65536}"
HOST="${HOST:-0.0.0.0}"
PORT="${PORT:-8000}"
: "${VLLM_API_KEY:?set VLLM_API_KEY (the platform sends it as OVERNIGHT_LLM_API_KEY)}"

SPECULATIVE_CONFIG=$(printf '{"method":"eagle","model":"%s","num_speculative_tokens":%s,"max_model_len":%s}' \
  "$EAGLE_MODEL" "$NUM_SPECULATIVE_TOKENS" "$DRAFT_MAX_MODEL_LEN")

exec vllm serve "$MODEL" \
  --served-model-name "$SERVED_MODEL_NAME" \
  --tensor-parallel-size "$TENSOR_PARALLEL_SIZE" \
  --tokenizer-mode mistral --config-format mistral --load-format mistral \
  --enable-auto-tool-choice --tool-call-parser mistral \
  --reasoning-parser mistral \
  --speculative-config "$SPECULATIVE_CONFIG" \
  --language-model-only \
  --max-model-len "$MAX_MODEL_LEN" \
  --max-num-seqs 128 --max-num-batched-tokens 16384 \
  --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION" \
  --enable-prefix-caching \
  --enable-prompt-tokens-details \
  --enable-force-include-usage \
  --api-key "$VLLM_API_KEY" \
  --host "$HOST" --port "$PORT" \
  "$@"
