#!/usr/bin/env bash
# Serve Mistral Medium 3.5 (128B, FP8 ~134 GB) with speculative decoding on vLLM, configured the way the
# agent needs: Mistral tokenizer/config/weights, auto tool choice with the Mistral tool parser, the Mistral
# reasoning parser, prefix caching, cached-token reporting. Tested with vLLM 0.32.0 and mistral_common 1.12.0
# (infra/vllm/constraints.txt; mistral_common 1.13.x makes vLLM 0.32.0 refuse every chat request).
#
# GPUs: eight 80 GB (or 141 GB) GPUs for the full 256k window (TP=8); four 80 GB GPUs at a reduced
# MAX_MODEL_LEN (TP=4, e.g. 65536). A single GPU cannot hold the weights, the draft head and a KV cache.
#
#   VLLM_API_KEY=... TENSOR_PARALLEL_SIZE=8 MAX_MODEL_LEN=262144 bash infra/vllm/serve.sh
#
# SPEC_METHOD picks the speculative decoding: eagle (the default: Mistral's EAGLE head, EAGLE_MODEL), suffix
# (vLLM's suffix decoding, no draft model: needs the arctic-inference package, see constraints.txt) or none.
# NUM_SPECULATIVE_TOKENS is the draft length (eagle: 3); for suffix, the most tokens one step may speculate
# (default 32). Images: the vision encoder is served, since tasks may carry images (OVERNIGHT_IMAGES_ENABLED, on by
# default; `overnight doctor` checks); LANGUAGE_MODEL_ONLY=1 passes --language-model-only (no vision encoder, more
# memory for the KV cache), and the platform then needs OVERNIGHT_IMAGES_ENABLED=false. The tests run this script on a CPU with a tiny model (tests/vllm/conftest.py), with
# TENSOR_PARALLEL_SIZE=1, small MAX_MODEL_LEN, MAX_NUM_SEQS and MAX_NUM_BATCHED_TOKENS.
set -euo pipefail

MODEL="${MODEL:-mistralai/Mistral-Medium-3.5-128B}"
EAGLE_MODEL="${EAGLE_MODEL:-mistralai/Mistral-Medium-3.5-128B-EAGLE}"
SERVED_MODEL_NAME="${SERVED_MODEL_NAME:-mistral-medium-3.5}"
SPEC_METHOD="${SPEC_METHOD:-eagle}"
TENSOR_PARALLEL_SIZE="${TENSOR_PARALLEL_SIZE:-8}"
MAX_MODEL_LEN="${MAX_MODEL_LEN:-262144}"
MAX_NUM_SEQS="${MAX_NUM_SEQS:-128}"
MAX_NUM_BATCHED_TOKENS="${MAX_NUM_BATCHED_TOKENS:-16384}"
GPU_MEMORY_UTILIZATION="${GPU_MEMORY_UTILIZATION:-0.85}"
DRAFT_MAX_MODEL_LEN="${DRAFT_MAX_MODEL_LEN:-65536}"
LANGUAGE_MODEL_ONLY="${LANGUAGE_MODEL_ONLY:-0}"
HOST="${HOST:-0.0.0.0}"
PORT="${PORT:-8000}"
: "${VLLM_API_KEY:?set VLLM_API_KEY (the platform sends it as OVERNIGHT_LLM_API_KEY)}"

case "$SPEC_METHOD" in
  eagle)
    SPECULATIVE=(--speculative-config "$(printf '{"method":"eagle","model":"%s","num_speculative_tokens":%s,"max_model_len":%s}' \
      "$EAGLE_MODEL" "${NUM_SPECULATIVE_TOKENS:-3}" "$DRAFT_MAX_MODEL_LEN")") ;;
  suffix)
    SPECULATIVE=(--speculative-config "$(printf '{"method":"suffix","num_speculative_tokens":%s}' \
      "${NUM_SPECULATIVE_TOKENS:-32}")") ;;
  none) SPECULATIVE=() ;;
  *) echo "SPEC_METHOD must be eagle, suffix or none (got '$SPEC_METHOD')" >&2; exit 2 ;;
esac
TEXT_ONLY=()
if [ "$LANGUAGE_MODEL_ONLY" = 1 ]; then TEXT_ONLY=(--language-model-only); fi

exec vllm serve "$MODEL" \
  --served-model-name "$SERVED_MODEL_NAME" \
  --tensor-parallel-size "$TENSOR_PARALLEL_SIZE" \
  --tokenizer-mode mistral --config-format mistral --load-format mistral \
  --enable-auto-tool-choice --tool-call-parser mistral \
  --reasoning-parser mistral \
  "${SPECULATIVE[@]}" \
  "${TEXT_ONLY[@]}" \
  --max-model-len "$MAX_MODEL_LEN" \
  --max-num-seqs "$MAX_NUM_SEQS" --max-num-batched-tokens "$MAX_NUM_BATCHED_TOKENS" \
  --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION" \
  --enable-prefix-caching \
  --enable-prompt-tokens-details \
  --enable-force-include-usage \
  --api-key "$VLLM_API_KEY" \
  --host "$HOST" --port "$PORT" \
  "$@"
