"""What fine-tuning and text evaluation cost on this CPU, one thread: the numbers behind the
best recipe's choices (docs/benchmarks.md, "The best recipe").

    .venv/bin/python benchmarks/finetune_speed.py [--data DIR]

1. Forward + backward of each EfficientNet-Lite backbone at its native size (batch 32, train mode,
   channels-last, as photo fine-tuning runs it) and of MiniLM (batch 128 captions of 16 word
   pieces), in fp32 and bf16 autocast: photos/s and captions/s, the best of 2 timed repeats after
   a warm-up.
2. One Adam step over MiniLM's parameters, per-tensor (torch's CPU default) and fused: seconds.
3. A fine-tuning step's text side (128 Flickr8k dev captions, forward + backward, fp32) in one
   padded pass and in MiniLMTextEncoder's length groups: seconds.
4. MiniLM embedding of 1,024 Flickr8k dev captions through ``encode_by_length`` at several batch
   sizes, and in file order (no sorting) at 512, the old default: seconds.

Writes benchmarks/results/finetune_speed.json (``--name``: another file, for another CPU's
figures), with ``bf16_speedup_linear`` (``_common.bf16_speedup``: the probe that decides the
Flickr8k benchmarks' precision).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from itmatch.data import load_corpus
from itmatch.features.backbones import get_backbone
from itmatch.models.minilm import LENGTH_GROUP, MiniLMTextEncoder, MiniLMTextProcessor, load_minilm
from itmatch.models.text_processing import encode_by_length

from _common import REPO_ROOT, bf16_speedup, write_result

SIZES = {"efficientnet_lite0": 224, "efficientnet_lite2": 260}


def best_of(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def fwd_bwd(module: torch.nn.Module, make_input, bf16: bool):
    def step():
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = make_input()
        out.float().sum().backward()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "flickr8k")
    ap.add_argument("--name", default="finetune_speed", help="the result file: benchmarks/results/NAME.json "
                    "(another CPU's figures go beside the first's, e.g. finetune_speed_noamx)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict = {"threads": 1, "bf16_speedup_linear": round(bf16_speedup(), 2), "training_speed": {},
                 "text_embedding_1024_dev_captions_s": {}}
    for name, size in SIZES.items():
        net = get_backbone(name).train().to(memory_format=torch.channels_last)
        x = torch.randn(32, 3, size, size).to(memory_format=torch.channels_last)
        for prec in ("fp32", "bf16"):
            s = best_of(fwd_bwd(net, lambda net=net, x=x: net(x), prec == "bf16"))
            out["training_speed"][f"{name}_{size}px_{prec}_photos_per_s"] = round(32 / s, 2)
    bert = load_minilm().train()
    ids = torch.randint(1000, 20000, (128, 16))
    mask = torch.ones_like(ids)
    for prec in ("fp32", "bf16"):
        s = best_of(fwd_bwd(bert, lambda: bert(input_ids=ids, attention_mask=mask).last_hidden_state, prec == "bf16"))
        out["training_speed"][f"minilm_{prec}_captions_per_s"] = round(128 / s, 1)

    params = list(bert.parameters())  # one Adam step over MiniLM's parameters: per-tensor loop vs fused
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    out["adam_step_minilm_s"] = {}
    for name, kw in (("per_tensor", {}), ("fused", {"fused": True})):
        opt = torch.optim.Adam(params, lr=1e-4, **kw)
        out["adam_step_minilm_s"][name] = round(best_of(opt.step, repeats=5), 3)

    captions = load_corpus("flickr8k", str(args.data), "dev").flat_captions()[:1024]
    processor, encoder = MiniLMTextProcessor(), MiniLMTextEncoder(embed_dim=64).eval()
    encoded = processor.encode(captions)
    # A training step's text side: 128 real captions (every 8th dev caption), forward + backward
    # through the trainable encoder in one padded pass and in length groups (MiniLMTextEncoder's way).
    batch = processor.collate(encoded[::8][:128])
    out["fine_tuning_step_128_dev_captions"] = {
        "longest_word_pieces": int(batch["input_ids"].shape[1]),
        "mean_word_pieces": round(float(batch["attention_mask"].sum(1).float().mean()), 1),
        "group_size": LENGTH_GROUP,
    }
    head = lambda states: encoder.fc(states)  # noqa: E731 (the projection both ways)
    for name, fn in (("one_pass_s", lambda: head(encoder._encode(**batch))), ("length_groups_s", lambda: encoder(**batch))):
        out["fine_tuning_step_128_dev_captions"][name] = round(best_of(fwd_bwd(encoder, fn, False)), 2)
    with torch.no_grad():
        for batch in (16, 32, 64, 128, 512):
            s = best_of(lambda batch=batch: encode_by_length(encoded, processor.collate, lambda b: encoder(**b), batch))
            out["text_embedding_1024_dev_captions_s"][f"length_order_batch_{batch}"] = round(s, 2)

        def file_order():
            for i in range(0, len(encoded), 512):
                encoder(**processor.collate(encoded[i : i + 512]))

        out["text_embedding_1024_dev_captions_s"]["file_order_batch_512"] = round(best_of(file_order), 2)
    print(write_result(args.name, out))
    print(out)


if __name__ == "__main__":
    main()
