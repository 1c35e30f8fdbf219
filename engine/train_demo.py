"""Train the bundled demo model on text that every Python installation carries.

The corpus is the language reference (`pydoc_data.topics`), the standard library's docstrings
and the standard library's own (non-test) source. Documents are held out whole for evaluation:
a language-reference topic, or a standard-library module (its docstrings and its source
together, so that neither leaks the other). The tokenizer is a byte-level BPE trained with
`tokenizers`; the model is a small Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention)
built from the same Hugging Face config dict that is saved as `config.json`.

Everything is deterministic given `--seed` and a fixed number of steps:

    python -m engine.train_demo --out engine/models/tiny
    python -m engine.train_demo --quick --out /tmp/tiny     # a smoke test, seconds
    python -m engine.train_demo --card-only                 # rewrite README.md from training.json
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import Tensor
from tqdm import tqdm

from engine.config import ModelConfig
from engine.model import LlamaModel

DEFAULT_OUT = Path(__file__).resolve().parent / "models" / "tiny"
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = [BOS, EOS, *(f"<|{role}|>" for role in ROLES)]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", "test", "tests", "idle_test"}
# The language reference is its own source; codec tables are not text.
SKIP_PACKAGES = {"pydoc_data", "encodings"}
SAMPLES_MARKER = "<!-- samples: filled by python -m engine.model_card -->"
SAMPLES_HEADING = "## Samples (produced by the engine)"
BASELINE_HELD_OUT = 5.05


# --- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Everything that determines the result, besides the Python installation."""

    seed: int = 0
    steps: int = 1100
    batch_size: int = 8
    seq_len: int = 512
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 2
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 60
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_windows: int = 48
    held_out_fraction: float = 0.05
    sources: tuple[str, ...] = ("topics", "docstrings", "source")
    save_dtype: str = "bfloat16"


QUICK = Settings(
    steps=8,
    batch_size=4,
    seq_len=64,
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    warmup_steps=2,
    eval_every=4,
    eval_windows=4,
    held_out_fraction=0.1,
    sources=("topics",),
    save_dtype="float32",
)


# --- corpus -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    source: str  # "topics", "docstrings" or "source"
    group: str  # what is held out together: "topic:<name>" or "module:<dotted.name>"
    text: str


@dataclass
class Corpus:
    train: list[Document]
    held_out: list[Document]
    digest: str = ""

    @property
    def chars(self) -> int:
        return sum(len(d.text) for d in self.train + self.held_out)


def topic_documents() -> list[Document]:
    from pydoc_data.topics import topics

    return [Document("topics", f"topic:{k}", topics[k].strip()) for k in sorted(topics)]


def stdlib_files() -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) for the standard library's non-test Python files, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root).parts
        if rel and rel[0] in SKIP_PACKAGES:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and "." not in d)
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith(("test_", "_sysconfigdata")):
                continue
            stem = name[:-3]
            parts = (*rel, stem) if stem != "__init__" else rel
            yield ".".join(parts), here / name


def docstrings(module: str, tree: ast.Module) -> str:
    """The module's docstrings, each under the qualified name of what it documents."""
    chunks: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    chunks.append(f"{name}\n{doc}")
                visit(child, name)

    doc = ast.get_docstring(tree)
    if doc:
        chunks.append(f"{module}\n{doc}")
    visit(tree, module)
    return "\n\n".join(chunks)


def stdlib_documents(sources: tuple[str, ...]) -> list[Document]:
    docs: list[Document] = []
    for module, path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:  # a few lib2to3 fixtures are Python 2
            continue
        group = f"module:{module}"
        doc_text = docstrings(module, tree) if "docstrings" in sources else ""
        if doc_text:
            docs.append(Document("docstrings", group, doc_text))
        if "source" in sources and text.strip():
            docs.append(Document("source", group, text))
    return docs


def unique(docs: list[Document]) -> list[Document]:
    """The first of each set of documents with the same text (topics 'if' and 'else' are)."""
    seen: set[str] = set()
    kept: list[Document] = []
    for d in docs:
        if d.text not in seen:
            seen.add(d.text)
            kept.append(d)
    return kept


def corpus_digest(docs: list[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        for part in (d.source, d.group, d.text):
            h.update(part.encode("utf-8", errors="surrogatepass") + b"\0")
    return h.hexdigest()


def build_corpus(settings: Settings) -> Corpus:
    """All documents, split by group (topic or module) into train and held-out, seeded."""
    docs = topic_documents() if "topics" in settings.sources else []
    if {"docstrings", "source"} & set(settings.sources):
        docs += stdlib_documents(settings.sources)
    docs = unique(docs)
    groups = sorted({d.group for d in docs})
    rng = random.Random(settings.seed)
    count = max(1, round(len(groups) * settings.held_out_fraction))
    held = set(rng.sample(groups, count))
    return Corpus(
        train=[d for d in docs if d.group not in held],
        held_out=[d for d in docs if d.group in held],
        digest=corpus_digest(docs),
    )


# --- tokenizer ----------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def token_stream(tok: Tokenizer, docs: list[Document]) -> Tensor:
    """The documents as one stream: <bos> text <eos> <bos> text <eos> ..."""
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    assert bos is not None and eos is not None, "the demo tokenizer has <bos> and <eos>"
    ids: list[int] = []
    for enc in tok.encode_batch([d.text for d in docs], add_special_tokens=False):
        ids += [bos, *enc.ids, eos]
    return torch.tensor(ids, dtype=torch.long)


# --- model --------------------------------------------------------------------------------------


def hf_config(s: Settings, tok: Tokenizer) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "head_dim": s.hidden_size // s.num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": s.seq_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": tok.token_to_id(BOS),
        "eos_token_id": tok.token_to_id(EOS),
        "dtype": s.save_dtype,
        "use_cache": True,
    }


def init_weights(model: LlamaModel, seed: int) -> None:
    """Normal(0.02) matrices, residual outputs scaled by 1/sqrt(2 * layers); norms are ones."""
    g = torch.Generator().manual_seed(seed)
    out_std = 0.02 / math.sqrt(2 * model.cfg.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2:
                continue
            std = out_std if name.endswith((".o", ".down")) else 0.02
            p.normal_(0.0, std, generator=g)


def causal_attend(batch: int, seq: int) -> Callable[[int, Tensor, Tensor, Tensor], Tensor]:
    """Dense causal attention over `batch` sequences of `seq` flat tokens each."""

    def attend(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        def split(x: Tensor) -> Tensor:
            return x.view(batch, seq, x.shape[1], x.shape[2]).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(q), split(k), split(v), is_causal=True, enable_gqa=True
        )
        return out.transpose(1, 2).reshape(batch * seq, q.shape[1], q.shape[2])

    return attend


def batch_loss(model: LlamaModel, windows: Tensor) -> Tensor:
    """Mean next-token loss over `windows` of shape [B, S + 1]."""
    b, s = windows.shape[0], windows.shape[1] - 1
    inputs, targets = windows[:, :-1].reshape(-1), windows[:, 1:].reshape(-1)
    positions = torch.arange(s).repeat(b)
    hidden = model(inputs, positions, causal_attend(b, s))
    return F.cross_entropy(model.logits(hidden), targets)


def eval_windows(stream: Tensor, seq_len: int, count: int) -> Tensor:
    """Up to `count` non-overlapping windows spread evenly over `stream`."""
    n = (len(stream) - 1) // seq_len
    picks = sorted({int(i * n / count) for i in range(count)}) if n > count else range(n)
    return torch.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in picks])


@torch.no_grad()
def evaluate(model: LlamaModel, windows: Tensor, batch: int) -> float:
    total = 0.0
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        total += batch_loss(model, chunk).item() * len(chunk)
    return total / len(windows)


def lr_at(step: int, s: Settings) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio * lr`."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: LlamaModel, s: Settings) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": s.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95), eps=1e-8)


# --- training -----------------------------------------------------------------------------------


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    held_out: list[dict[str, float]] = field(default_factory=list)


def train(
    model: LlamaModel, train_ids: Tensor, evals: dict[str, Tensor], s: Settings, quiet: bool
) -> History:
    g = torch.Generator().manual_seed(s.seed + 1)
    opt = make_optimizer(model, s)
    hist = History()
    offsets = torch.arange(s.seq_len + 1)
    bar = tqdm(range(s.steps), desc="train", unit="step", disable=quiet, dynamic_ncols=True)
    for step in bar:
        starts = torch.randint(0, len(train_ids) - s.seq_len - 1, (s.batch_size,), generator=g)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        loss = batch_loss(model, train_ids[starts[:, None] + offsets])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        hist.train_loss.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_at(step, s):.1e}")
        if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
            record = {"step": step + 1, "train": recent_loss(hist)}
            record |= {k: evaluate(model, w, s.batch_size) for k, w in evals.items()}
            hist.held_out.append(record)
            if not quiet:
                tqdm.write(
                    " ".join(
                        f"{k}={v:.4f}" if k != "step" else f"step {v}" for k, v in record.items()
                    )
                )
    return hist


def recent_loss(hist: History, last: int = 50) -> float:
    window = hist.train_loss[-last:]
    return sum(window) / len(window)


# --- saving -------------------------------------------------------------------------------------


def save_model(model: LlamaModel, out: Path, config: dict[str, Any], dtype: str) -> None:
    weights = {k: v.to(getattr(torch, dtype)) for k, v in model.hf_state_dict().items()}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_json(out / "config.json", config)
    write_json(
        out / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "do_sample": True,
            "temperature": 0.8,
            "top_p": 0.95,
            "max_new_tokens": 64,
        },
    )


def save_tokenizer(tok: Tokenizer, out: Path, seq_len: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": EOS,
            "add_bos_token": True,
            "model_max_length": seq_len,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def rounded_copy(model: LlamaModel, dtype: str) -> LlamaModel:
    """The model as it is saved: weights rounded to `dtype`, computed in float32."""
    copy = LlamaModel(model.cfg)
    with torch.no_grad():
        for mine, theirs in zip(copy.parameters(), model.parameters(), strict=True):
            mine.copy_(theirs.to(getattr(torch, dtype)).float())
    return copy


# --- the model card -----------------------------------------------------------------------------


def write_card(out: Path) -> None:
    """README.md from training.json, keeping an already filled-in samples section."""
    stats = json.loads((out / "training.json").read_text())
    samples = SAMPLES_MARKER
    card = out / "README.md"
    if card.exists() and SAMPLES_HEADING in card.read_text():
        samples = card.read_text().split(SAMPLES_HEADING, 1)[1].strip() or SAMPLES_MARKER
    card.write_text(card_text(stats, samples))


def card_text(st: dict[str, Any], samples: str) -> str:
    s, final = st["settings"], st["final"]
    curve = "\n".join(
        f"| {r['step']} | {r['train']:.3f} | {r['held_out']:.3f} | {r['held_out_prose']:.3f} |"
        for r in st["curve"]
    )
    sources = ", ".join(SOURCE_NAMES[x] for x in s["sources"])
    return f"""# tiny: the Symphony Workbench demo model

A {st["params"] / 1e6:.2f}M-parameter Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention)
trained by `python -m engine.train_demo` (`symphony train-demo`) on text that ships with every
Python. It writes English-like (and Python-like) text; it knows nothing and follows no
instructions. It exists so that the engine runs on a laptop CPU in seconds.

To reproduce it (the same corpus needs the same Python version; see the hash below):

    python -m engine.train_demo --seed {s["seed"]} --steps {s["steps"]} --out engine/models/tiny

## Corpus

{sources}, from Python {st["python_version"]} ({st["python_implementation"]}).
The corpus differs between Python versions, so the exact one is pinned by its hash:

- corpus sha256: `{st["corpus_sha256"]}`
- {st["documents"]} documents, {st["chars"]:,} characters, {st["tokens"]:,} tokens;
  held out for evaluation: {st["held_out_documents"]} documents ({st["held_out_groups"]}
  topics/modules, whole), {st["held_out_tokens"]:,} tokens

## Tokenizer

Byte-level BPE trained with `tokenizers`, {st["vocab_size"]} tokens including the special
tokens {", ".join(f"`{t}`" for t in SPECIAL_TOKENS)}. The chat template in
`tokenizer_config.json` is `<|role|>` newline content `{EOS}` per message (the model was
never trained on chats).

## Model and training

| | |
|---|---|
| parameters | {st["params"]:,} (tied embeddings) |
| layers / hidden / MLP | {s["num_layers"]} / {s["hidden_size"]} / {s["intermediate_size"]} |
| heads / kv heads / head dim | {s["num_heads"]} / {s["num_kv_heads"]} / \
{s["hidden_size"] // s["num_heads"]} |
| context (trained) | {s["seq_len"]} |
| steps × batch × length | {s["steps"]} × {s["batch_size"]} × {s["seq_len"]} \
= {st["tokens_trained"]:,} tokens ({st["epochs"]:.2f} epochs) |
| optimizer | AdamW, lr {s["lr"]}, warmup {s["warmup_steps"]}, cosine to \
{s["min_lr_ratio"]}×, weight decay {s["weight_decay"]}, clip {s["grad_clip"]} |
| seed | {s["seed"]} |
| weights | {s["save_dtype"]} |
| training wall time | {st["train_seconds"] / 60:.1f} min on {st["cpu_threads"]} CPU threads \
({st["tokens_per_second"]:.0f} tokens/s); {st["total_seconds"] / 60:.1f} min in all |
{notes(st)}
## Loss

Final, with the weights as saved ({s["save_dtype"]}):

| | loss |
|---|---|
| train (mean of the last 50 steps) | {final["train"]:.3f} |
| held-out, all documents | {final["held_out"]:.3f} |
| held-out, prose only (language reference + docstrings) | {final["held_out_prose"]:.3f} |
| baseline: a ~5M model on the language reference alone, best held-out | {BASELINE_HELD_OUT} |

Losses are mean cross-entropy per token (nats). The baseline is the best held-out loss of an
earlier ~5M-parameter model trained on the language reference alone, which memorized it and
got worse after that, possibly with another tokenizer, so the comparison is indicative.

Held-out loss during training (it falls for the whole run):

| step | train | held-out | held-out prose |
|---|---|---|---|
{curve}

{SAMPLES_HEADING}

{samples}
"""


def notes(st: dict[str, Any]) -> str:
    """Remarks added to training.json by hand (say, that the machine was shared), as a list."""
    return "".join(f"\n- {note}" for note in st.get("notes", [])) + "\n"


SOURCE_NAMES = {
    "topics": "The language reference (`pydoc_data.topics`, one document per topic)",
    "docstrings": "the standard library's docstrings (one document per module)",
    "source": "the standard library's non-test source (one document per module)",
}


# --- main ---------------------------------------------------------------------------------------


def run(s: Settings, out: Path, quiet: bool = False) -> dict[str, Any]:
    started = time.time()
    torch.manual_seed(s.seed)
    corpus = build_corpus(s)
    tok = train_tokenizer([d.text for d in corpus.train], s.vocab_size)
    train_ids, held_ids = token_stream(tok, corpus.train), token_stream(tok, corpus.held_out)
    prose = [d for d in corpus.held_out if d.source != "source"]
    evals = {
        "held_out": eval_windows(held_ids, s.seq_len, s.eval_windows),
        "held_out_prose": eval_windows(token_stream(tok, prose), s.seq_len, s.eval_windows),
    }
    config = hf_config(s, tok)
    model = LlamaModel(ModelConfig.from_dict(config))
    init_weights(model, s.seed)
    log(
        quiet,
        f"corpus {corpus.chars:,} chars, {len(train_ids):,} train tokens; "
        f"{sum(p.numel() for p in model.parameters()):,} parameters",
    )
    train_started = time.time()
    hist = train(model, train_ids, evals, s, quiet)
    train_seconds = time.time() - train_started
    saved = rounded_copy(model, s.save_dtype)
    final = {"train": recent_loss(hist)}
    final |= {k: evaluate(saved, w, s.batch_size) for k, w in evals.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out, config, s.save_dtype)
    save_tokenizer(tok, out, s.seq_len)
    counts = (len(train_ids), len(held_ids))
    stats = training_stats(s, corpus, tok, model, hist, final, counts, train_seconds, started)
    write_json(out / "training.json", stats)
    write_card(out)
    log(quiet, f"saved to {out}: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
    return stats


def training_stats(
    s: Settings,
    corpus: Corpus,
    tok: Tokenizer,
    model: LlamaModel,
    hist: History,
    final: dict[str, float],
    counts: tuple[int, int],
    train_seconds: float,
    started: float,
) -> dict[str, Any]:
    train_tokens, held_tokens = counts
    trained = s.steps * s.batch_size * s.seq_len
    return {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_full_version": sys.version,
        "torch_version": torch.__version__,
        "corpus_sha256": corpus.digest,
        "documents": len(corpus.train) + len(corpus.held_out),
        "held_out_documents": len(corpus.held_out),
        "held_out_groups": len({d.group for d in corpus.held_out}),
        "held_out_names": sorted({d.group for d in corpus.held_out}),
        "chars": corpus.chars,
        "tokens": train_tokens + held_tokens,
        "held_out_tokens": held_tokens,
        "tokens_trained": trained,
        "epochs": trained / train_tokens,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "params": sum(p.numel() for p in model.parameters()),
        "cpu_threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "total_seconds": time.time() - started,
        "tokens_per_second": trained / train_seconds,
        "settings": asdict(s),
        "final": final,
        "curve": hist.held_out,
    }


def log(quiet: bool, message: str) -> None:
    if not quiet:
        tqdm.write(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="symphony train-demo", description="Train the bundled demo model (CPU)."
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (HF layout)")
    p.add_argument("--steps", type=int, help="training steps (default: 1100; --quick: 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny model on a tiny corpus, seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--card-only", action="store_true", help="rewrite README.md from training.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.card_only:
        write_card(args.out)
        return 0
    s = replace(QUICK if args.quick else Settings(), seed=args.seed)
    if args.steps:
        s = replace(s, steps=args.steps)
    run(s, args.out, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
