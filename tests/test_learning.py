"""The pipeline learns, not just runs: collect -> train -> eval (PyTorch and ONNX) on mt3 from full state, on CPU."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from deploy.onnx_export import export
from sim.collect import collect
from sim.evaluate import evaluate
from sim.suites import get_suite
from sim.tasks import ObservationConfig
from training.config import register_configs
from training.trainer import Trainer

CONF = Path(__file__).resolve().parents[1] / "training" / "conf"


def test_mt3_state_only_policy_succeeds_on_every_task_in_pytorch_and_onnx(tmp_path):
    data = tmp_path / "data"
    report = collect(get_suite("mt3"), 20, data, ObservationConfig(cameras=(), proprio="full_state"), workers=2,
                     progress=False)
    assert set(report.kept.values()) == {20}
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={data}", "data.suite=mt3", "train.steps=1500",
                                          "train.batch_size=256", "train.progress=false", "train.log_every=100",
                                          "train.checkpoint_every=1500", "model.task_embedding_scale=1.0"])
    checkpoint = Trainer(cfg, tmp_path / "run").fit()
    result = evaluate(checkpoint, tmp_path / "eval", episodes=10, workers=2, videos=0, n_action_steps=4,
                      progress=False)
    rates = {task: r["success_rate"] for task, r in result["tasks"].items()}
    assert set(rates) == {"button-press-topdown-v3", "drawer-close-v3", "window-close-v3"}
    print(f"mt3 state-only success: {rates}")
    assert all(rate >= 0.8 for rate in rates.values()), rates

    # The exported graph, run by PolicyRuntime in the eval workers, succeeds as often (same seeds, same runner).
    export(checkpoint, tmp_path / "onnx", log=lambda _: None)
    onnx = evaluate(tmp_path / "onnx", tmp_path / "eval-onnx", episodes=10, workers=2, videos=0, n_action_steps=4,
                    progress=False, onnx_provider="cpu")
    assert onnx["policy"] == {"kind": "onnx", "provider": "cpu"}
    for task, row in result["tasks"].items():
        lo, hi = row["ci95"]
        assert lo <= onnx["tasks"][task]["success_rate"] <= hi, (task, row, onnx["tasks"][task])
    print(f"onnx: {({t: r['success_rate'] for t, r in onnx['tasks'].items()})}")
