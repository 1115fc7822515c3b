"""The reference side of algorithms/ghpo/tests/qwen2.rs: Hugging Face
transformers' own Qwen2 (eager attention).

  make <dir> tied|untied single|sharded
      writes a small random Qwen2 model folder (save_pretrained) and
      <dir>/expected.safetensors: a left-padded batch (ids, mask) and its logits.
  logits <model dir> <ids/mask file> <out file>
      loads a model folder written by anyone (kiln's writer included) with
      from_pretrained and writes the logits of the batch in <ids/mask file>.
  greedy <model dir> <ids/mask file> <new tokens> <out file>
      greedy generate() from the left-padded batch; writes the new tokens.
  bench <model dir> <batch> <prompt len> <new tokens> <repeats>
      times greedy generate() (KV cache) on random prompts; prints tokens/s.
  folder-greedy <model dir> <text> <new tokens>
      loads a whole folder as a user would (weights with from_pretrained,
      tokenizer.json with PreTrainedTokenizerFast), greedy-generates from
      the encoded text and prints {"prompt": ids, "new": ids} as JSON.
  grpo-loss <inputs file> <out file>
      the GRPO loss written out plainly in PyTorch, for each aggregation mode,
      from logp, old_logp, ref_logp, advantages, mask, eps_low, eps_high, beta.
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM


def batch():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 90]], dtype=torch.long)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.long)
    return ids, mask


def logits(model, ids, mask):
    pos = mask.cumsum(-1) - 1
    pos = pos.masked_fill(mask == 0, 1)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()


def make(out, tied, sharded):
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=50000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        attn_implementation="eager",
    )
    model = Qwen2ForCausalLM(cfg).eval()
    # transformers starts biases at 0 and norms at 1: perturb them so a loader
    # that skipped them could not pass.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="20KB" if sharded else "5GB")
    ids, mask = batch()
    save_file({"ids": ids, "mask": mask, "logits": logits(model, ids, mask).contiguous()}, f"{out}/expected.safetensors")


def greedy(model_dir, batch_file, n, out):
    model = Qwen2ForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    b = load_file(batch_file)
    with torch.no_grad():
        seq = model.generate(
            input_ids=b["ids"],
            attention_mask=b["mask"],
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    save_file({"tokens": seq[:, b["ids"].shape[1]:].contiguous()}, out)


def grpo_loss(inputs, out):
    x = load_file(inputs)
    logp, old, ref, adv, mask = x["logp"], x["old_logp"], x["ref_logp"], x["advantages"], x["mask"]
    eps_low, eps_high, beta = (float(v) for v in x["params"])
    losses = {}
    for mode in ["token_mean", "seq_mean_token_mean", "dr_grpo"]:
        total = 0.0
        for i in range(logp.shape[0]):
            row = []
            for t in range(logp.shape[1]):
                if mask[i, t] == 0:
                    continue
                ratio = torch.exp(logp[i, t] - old[i, t])
                clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
                term = -torch.min(ratio * adv[i], clipped * adv[i])
                d = ref[i, t] - logp[i, t]
                term = term + beta * (torch.exp(d) - d - 1)
                row.append(term)
            if mode == "seq_mean_token_mean":
                total += sum(row) / max(len(row), 1)
            else:
                total += sum(row)
        if mode == "token_mean":
            losses[mode] = total / mask.sum()
        elif mode == "seq_mean_token_mean":
            losses[mode] = total / logp.shape[0]
        else:
            losses[mode] = total / (logp.shape[0] * logp.shape[1])
    save_file({k: torch.tensor([float(v)], dtype=torch.float64) for k, v in losses.items()}, out)


def bench(model_dir, batch, prompt_len, new, repeats):
    import time

    torch.set_num_threads(torch.get_num_threads())
    model = Qwen2ForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.config.vocab_size, (batch, prompt_len), generator=g)
    mask = torch.ones_like(ids)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)
            best = min(best, time.perf_counter() - t0)
    print(f"transformers {__import__('transformers').__version__} generate: {batch * new / best:.0f} tokens/s ({best:.3f} s for {batch}x{new} new tokens, best of {repeats}, {torch.get_num_threads()} threads)")


def folder_greedy(model_dir, text, n):
    import json
    import os

    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    model = Qwen2ForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    print(json.dumps({"prompt": ids, "new": out[0, len(ids):].tolist()}))


def main():
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3] == "tied", sys.argv[4] == "sharded")
    elif sys.argv[1] == "logits":
        model = Qwen2ForCausalLM.from_pretrained(sys.argv[2], attn_implementation="eager", dtype=torch.float32).eval()
        b = load_file(sys.argv[3])
        save_file({"logits": logits(model, b["ids"], b["mask"]).contiguous()}, sys.argv[4])
    elif sys.argv[1] == "greedy":
        greedy(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif sys.argv[1] == "bench":
        bench(sys.argv[2], *(int(a) for a in sys.argv[3:7]))
    elif sys.argv[1] == "folder-greedy":
        folder_greedy(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "grpo-loss":
        grpo_loss(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")


if __name__ == "__main__":
    main()
