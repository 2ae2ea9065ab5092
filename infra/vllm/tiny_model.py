"""Build a tiny random-weight Mistral-format model and an EAGLE draft head for it, with no download.

Run with the vLLM venv's python (it needs torch, safetensors and mistral_common; see cpu-venv.sh):

    PY=$(bash infra/vllm/cpu-venv.sh | tail -n1)
    $PY infra/vllm/tiny_model.py ~/.cache/overnight-vllm/models   # prints the target and EAGLE folders

The tokenizer is the newest tekken file that mistral-common ships in its package data, raised to the
v15 protocol of Mistral Medium 3.5 (think tokens, ``reasoning_effort`` as a model setting), so vLLM
renders and parses exactly what it would for the real model. The weights are random: the model speaks
noise, which is what the protocol tests want (the real server's parsers, grammar and junk).
Folder layout vLLM takes with ``--tokenizer-mode mistral --config-format mistral --load-format mistral``:
``params.json``, ``consolidated.safetensors``, ``tekken.json``. Idempotent: a complete folder is kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TOKENIZER_FILE = "tekken_240911.json"
SEED = 20
TARGET = {
    "dim": 128,
    "n_layers": 2,
    "head_dim": 32,  # the CPU attention backend takes 32, 64, ... (16 crashes at the first request)
    "hidden_dim": 256,
    "n_heads": 4,
    "n_kv_heads": 2,
    "norm_eps": 1e-5,
    "vocab_size": 131072,
    "rope_theta": 1_000_000.0,
    "max_position_embeddings": 32768,
    "max_seq_len": 32768,
    "tied_embeddings": False,
}
# Medium 3.5's special-token ranks: the old ones at 0-19, then these at their recent ranks.
RECENT_SPECIAL_RANKS = {"[ARGS]": 32, "[CALL_ID]": 33, "[THINK]": 34, "[/THINK]": 35}
REASONING_SETTINGS = {
    "reasoning_effort": {"type": "enum", "accepts_none": True, "default": "none", "values": ["none", "high"]}
}


def tokenizer_v15() -> dict[str, Any]:
    """mistral-common's packaged tekken file, raised to v15 with the special tokens Medium 3.5 uses."""
    import mistral_common
    from mistral_common.tokens.tokenizers.base import SpecialTokens
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    data = json.loads((Path(mistral_common.__file__).parent / "data" / TOKENIZER_FILE).read_text())
    num_special = data["config"]["default_num_special_tokens"]
    by_rank = {int(t["rank"]): SpecialTokens(t["token_str"]).value for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS}
    by_rank.update({rank: token for token, rank in RECENT_SPECIAL_RANKS.items()})
    rest = [s.value for s in SpecialTokens if s.value not in by_rank.values()]
    free = iter(range(max(RECENT_SPECIAL_RANKS.values()) + 1, num_special))
    by_rank.update({next(free): token for token in rest})
    special = [
        {"rank": rank, "token_str": by_rank.get(rank, Tekkenizer.SPECIAL_TOKEN_TEMPLATE.format(id=rank)),
         "is_control": True}
        for rank in range(max(by_rank) + 1)
    ]  # fmt: skip
    data["config"]["version"] = "v15"
    data.pop("image", None)
    data["special_tokens"] = special
    data["model_settings_builder"] = REASONING_SETTINGS
    return data


def random_weights(params: dict[str, Any], *, eagle: bool) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(SEED + int(eagle))
    dim, heads, kv_heads, head_dim = params["dim"], params["n_heads"], params["n_kv_heads"], params["head_dim"]

    def noise(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)

    weights = {"norm.weight": torch.ones(dim, dtype=torch.bfloat16)}
    if eagle:  # no embeddings or output head: vLLM shares the target's
        weights["eagle_linear.weight"] = noise(dim, 2 * dim)
    else:
        weights["tok_embeddings.weight"] = noise(params["vocab_size"], dim)
        weights["output.weight"] = noise(params["vocab_size"], dim)
    for layer in range(params["n_layers"]):
        prefix = f"layers.{layer}."
        weights |= {
            prefix + "attention.wq.weight": noise(heads * head_dim, dim),
            prefix + "attention.wk.weight": noise(kv_heads * head_dim, dim),
            prefix + "attention.wv.weight": noise(kv_heads * head_dim, dim),
            prefix + "attention.wo.weight": noise(dim, heads * head_dim),
            prefix + "feed_forward.w1.weight": noise(params["hidden_dim"], dim),
            prefix + "feed_forward.w2.weight": noise(dim, params["hidden_dim"]),
            prefix + "feed_forward.w3.weight": noise(params["hidden_dim"], dim),
            prefix + "attention_norm.weight": torch.ones(dim, dtype=torch.bfloat16),
            prefix + "ffn_norm.weight": torch.ones(dim, dtype=torch.bfloat16),
        }
    return weights


def write_model(folder: Path, params: dict[str, Any], tokenizer: dict[str, Any], *, eagle: bool) -> None:
    from safetensors.torch import save_file

    if (folder / "consolidated.safetensors").exists():
        return
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "params.json").write_text(json.dumps(params, indent=2))
    (partial / "tekken.json").write_text(json.dumps(tokenizer))
    save_file(random_weights(params, eagle=eagle), str(partial / "consolidated.safetensors"))
    partial.rename(folder)  # a folder is there whole or not at all


def build(root: Path) -> tuple[Path, Path]:
    """The target model's and the EAGLE head's folders under ``root``, built once."""
    target, eagle = root / "tiny-mistral", root / "tiny-mistral-eagle"
    if not (target / "consolidated.safetensors").exists() or not (eagle / "consolidated.safetensors").exists():
        tokenizer = tokenizer_v15()
        write_model(target, TARGET, tokenizer, eagle=False)
        write_model(eagle, TARGET, tokenizer, eagle=True)
    return target, eagle


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} FOLDER")
    for path in build(Path(sys.argv[1]).expanduser()):
        print(path)
