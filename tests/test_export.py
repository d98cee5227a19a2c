"""ONNX export and PolicyRuntime: parity with PyTorch, provider choice and refusal, input checks, no hot-path allocations."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import random_policy

from deploy.manifest import ExportError, read_export, sha256_file
from deploy.onnx_export import FP32_TOLERANCE, export
from deploy.runtime import ObservationError, PolicyRuntime, RuntimeConfigError
from deploy.tensorrt_engine import nvidia_gpu_count
from mt_policy.checkpoint import load_checkpoint, save_checkpoint
from mt_policy.cli import main
from mt_policy.errors import UnknownNameError
from mt_policy.model import ModelConfig, MultiTaskPolicy
from mt_policy.runner import torch_predictor
from sim.collect import collect
from sim.tasks import ObservationConfig, get_task

STATE = ObservationConfig(cameras=(), proprio="agent_pos")
PIXELS = ObservationConfig(cameras=("corner2",), image_size=(32, 32))
MIXED = ("drawer-close-v3", "reacher-v5", "window-close-v3")  # reacher: 2-D actions, 6-D proprio; Meta-World: 4-D, 4-D
SMALL = ModelConfig(encoder_channels=(8, 16), feature_dim=32, trunk_dims=(32,), head_hidden=32, action_chunk=4,
                    task_embedding_scale=1.0)
HAS_GPU = nvidia_gpu_count() > 0


def _policy(names: tuple[str, ...], obs_config: ObservationConfig, seed: int = 0) -> MultiTaskPolicy:
    return random_policy(names, obs_config, SMALL, seed)


@pytest.fixture(scope="module")
def state_stores(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("state-stores")
    report = collect([get_task(n) for n in MIXED[:2]], 2, out, STATE, workers=2, progress=False)
    return report.stores


@pytest.fixture(scope="module")
def mixed_export(tmp_path_factory, state_stores) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mixed")
    ckpt = save_checkpoint(_policy(MIXED, STATE), root / "ckpt", {"stores": {k: str(v) for k, v in state_stores.items()}})
    export(ckpt, root / "export", log=lambda _: None)
    return ckpt, root / "export"


def _obs(runtime_or_model, task: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    schema = get_task(task).schema(STATE if not runtime_or_model.observation.cameras else PIXELS)
    obs = {f"obs/{c.name}": rng.integers(0, 256, c.shape, dtype=np.uint8) for c in schema.observation.cameras}
    obs["obs/proprio"] = rng.normal(size=schema.observation.proprio_size).astype(np.float32)
    return obs


def test_multi_task_export_matches_pytorch_on_random_and_stored_observations(mixed_export):
    ckpt, out = mixed_export
    manifest = json.loads((out / "policy.json").read_text())
    parity = manifest["parity"]
    assert parity["passed"] and parity["max_abs_error"] <= FP32_TOLERANCE
    assert set(parity["errors"]["random"]) == set(MIXED)
    assert set(parity["errors"]["stored"]) == set(MIXED[:2])  # the tasks whose stores the run recorded
    assert parity["skipped"] == ["stored observations for window-close-v3: no demo store found"]
    assert [i["name"] for i in manifest["inputs"]] == ["proprio", "task"]
    assert manifest["inputs"][0]["shape"] == ["batch", 6]  # padded to the widest proprio
    assert manifest["action_width"] == 4 and manifest["outputs"][0]["shape"] == ["batch", SMALL.action_chunk, 4]
    assert {t["name"]: t["action_size"] for t in manifest["tasks"]} == {
        "drawer-close-v3": 4, "reacher-v5": 2, "window-close-v3": 4}
    assert manifest["graph_sha256"] == sha256_file(out / "policy.onnx")
    assert manifest["provenance"]["checkpoint"] == str(ckpt.resolve())


def test_runtime_predicts_what_pytorch_predicts_for_every_task(mixed_export):
    ckpt, out = mixed_export
    model, _ = load_checkpoint(ckpt)
    runtime = PolicyRuntime(out, provider="cpu")
    rng = np.random.default_rng(1)
    for task in MIXED:
        runtime.set_task(task)
        reference = torch_predictor(model, task)
        for _ in range(3):
            obs = _obs(model, task, rng)
            chunk = runtime.predict(obs)
            assert chunk.shape == (SMALL.action_chunk, get_task(task).schema(STATE).action.size)
            np.testing.assert_allclose(chunk, reference(obs), atol=FP32_TOLERANCE, rtol=0)


def test_switching_task_changes_the_head_and_the_action_size(mixed_export):
    _, out = mixed_export
    runtime = PolicyRuntime(out, provider="cpu", task="drawer-close-v3")
    obs = {"obs/proprio": np.ones(4, np.float32)}
    drawer = runtime.predict(obs).copy()
    runtime.set_task("window-close-v3")
    window = runtime.predict(obs).copy()
    assert drawer.shape == window.shape == (4, 4) and not np.allclose(drawer, window)
    runtime.set_task("reacher-v5")
    assert runtime.predict({"obs/proprio": np.ones(6, np.float32)}).shape == (4, 2)
    with pytest.raises(UnknownNameError, match="known exported tasks: drawer-close-v3, reacher-v5, window-close-v3"):
        runtime.set_task("push-v3")
    assert runtime.task == "reacher-v5"  # a refused switch keeps the old task


def test_single_task_export_keeps_that_head_alone(tmp_path):
    ckpt = save_checkpoint(_policy(MIXED, STATE), tmp_path / "ckpt")
    export(ckpt, tmp_path / "one", tasks="reacher-v5", log=lambda _: None)
    exported = read_export(tmp_path / "one")
    assert not exported.has_task_input and exported.task_names == ["reacher-v5"] and exported.action_width == 2
    runtime = PolicyRuntime(tmp_path / "one", provider="cpu")
    obs = {"obs/proprio": np.linspace(-1, 1, 6).astype(np.float32)}
    model, _ = load_checkpoint(ckpt)
    np.testing.assert_allclose(runtime.predict(obs), torch_predictor(model, "reacher-v5")(obs), atol=FP32_TOLERANCE)


def test_pixel_export_matches_pytorch_on_frames_from_a_demo_store(tmp_path):
    store = collect([get_task("drawer-close-v3")], 1, tmp_path / "demos", PIXELS, workers=1, progress=False)
    ckpt = save_checkpoint(_policy(("drawer-close-v3", "window-close-v3"), PIXELS), tmp_path / "ckpt")
    result = export(ckpt, tmp_path / "export", demos=list(store.stores.values()), log=lambda _: None)
    assert result.parity.ok and result.parity.samples["stored"] > 0
    assert set(result.parity.errors["stored"]) == {"drawer-close-v3"}
    inputs = {i["name"]: i for i in result.manifest["inputs"]}
    assert inputs["corner2"] == {"name": "corner2", "shape": ["batch", 32, 32, 3], "dtype": "uint8"}


def test_parity_reads_only_the_policys_cameras_from_a_store_that_recorded_more(tmp_path):
    two = dataclasses.replace(PIXELS, cameras=("corner2", "topview"))
    store = collect([get_task("drawer-close-v3")], 1, tmp_path / "demos", two, workers=1, progress=False)
    stores = list(store.stores.values())
    # A run trained with data.cameras=[corner2] on this store: its frames check the export.
    ckpt = save_checkpoint(_policy(("drawer-close-v3",), PIXELS), tmp_path / "ckpt")
    result = export(ckpt, tmp_path / "export", demos=stores, log=lambda _: None)
    assert result.parity.ok and result.parity.samples["stored"] > 0
    # A policy reading a camera the store never recorded is refused, naming the store and the camera.
    wrist = save_checkpoint(_policy(("drawer-close-v3",), dataclasses.replace(PIXELS, cameras=("gripperPOV",))),
                            tmp_path / "wrist")
    with pytest.raises(ExportError, match=r"drawer-close-v3.zarr: camera\(s\) \['gripperPOV'\] not recorded"):
        export(wrist, tmp_path / "export-wrist", demos=stores, log=lambda _: None)


def test_encoder_strides_survive_the_checkpoint_and_the_export(tmp_path):
    import torch

    model = random_policy(("drawer-close-v3",), PIXELS, dataclasses.replace(SMALL, encoder_strides=(1, 1)))
    assert model.encoders["corner2"].conv(torch.zeros(1, 3, 32, 32)).shape[-2:] == (32, 32)  # default (2, 1): 16x16
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    assert load_checkpoint(ckpt)[0].config.encoder_strides == (1, 1)
    assert export(ckpt, tmp_path / "export", log=lambda _: None).parity.ok
    with pytest.raises(ValueError, match="encoder_strides"):
        dataclasses.replace(SMALL, encoder_strides=(2,))


def test_a_group_normalised_encoder_survives_the_checkpoint_and_the_export(tmp_path):
    import torch

    model = random_policy(("drawer-close-v3",), PIXELS, dataclasses.replace(SMALL, encoder_norm="group"))
    norms = [m for m in model.encoders["corner2"].conv if isinstance(m, torch.nn.GroupNorm)]
    assert [(n.num_groups, n.num_channels) for n in norms] == [(1, 8), (2, 16)]  # 8 channels a group
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    assert load_checkpoint(ckpt)[0].config.encoder_norm == "group"
    assert export(ckpt, tmp_path / "export", log=lambda _: None).parity.ok
    with pytest.raises(ValueError, match=r"encoder_norm must be one of \['none', 'group'\], got 'batch'"):
        dataclasses.replace(SMALL, encoder_norm="batch")


def test_a_residual_encoder_trains_and_survives_the_checkpoint_and_the_export(tmp_path):
    import torch

    from mt_policy.model import ResidualBlock

    config = dataclasses.replace(SMALL, encoder_blocks=2)
    pixels = dataclasses.replace(PIXELS, image_size=(48, 48))  # the segfault below needs 48 px or more
    fresh = MultiTaskPolicy(config, [random_policy(("drawer-close-v3",), pixels, SMALL).tasks[0]])
    blocks = [m for m in fresh.encoders["corner2"].conv if isinstance(m, ResidualBlock)]
    assert len(blocks) == 4  # two a layer
    # skips: average-pool + projection (3 -> 8 channels, stride 2), identity, projection alone (8 -> 16, stride 1), identity
    assert [len(b.skip) for b in blocks] == [2, 0, 1, 0]
    image = torch.rand(2, 3, 48, 48)
    skips_only = image
    for block in blocks:
        skips_only = torch.relu(block.skip(skips_only))
    # A fresh stack is its skips (the branches' gains start at 0), so depth cannot blow up at initialisation.
    assert torch.equal(fresh.encoders["corner2"].conv(image), skips_only)

    # One training step through the trainer's path (uint8 HWC images, random shift: channels-last strides);
    # torch 2.10 segfaulted in the backward of a strided 1x1 skip conv on such input.
    fresh.train()
    obs = {"obs/corner2": torch.randint(0, 256, (4, 48, 48, 3), dtype=torch.uint8), "obs/proprio": torch.randn(4, 4)}
    fresh.head("drawer-close-v3", fresh.features(obs, torch.zeros(4, dtype=torch.long))).abs().mean().backward()
    assert all(b.gain.grad is not None and torch.isfinite(b.gain.grad).all() and b.gain.grad.abs() > 0 for b in blocks)

    model = random_policy(("drawer-close-v3",), pixels, config)
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    assert load_checkpoint(ckpt)[0].config.encoder_blocks == 2
    assert export(ckpt, tmp_path / "export", log=lambda _: None).parity.ok
    with pytest.raises(ValueError, match="encoder_blocks must be >= 0, got -1"):
        dataclasses.replace(SMALL, encoder_blocks=-1)


def test_a_sharpened_spatial_softmax_finds_a_small_spot_learns_its_scale_and_survives_the_export(tmp_path):
    import torch

    from mt_policy.model import SpatialSoftmax

    # One bright cell in the top-left corner of an otherwise dim post-ReLU map: a plain softmax puts the
    # keypoint near the centre, a sharpened one on the spot.
    feature_map = torch.full((1, 1, 12, 12), 0.1)
    feature_map[0, 0, 1, 1] = 1.0
    spot = -1.0 + 2.0 / 11  # cell 1 of 12 in [-1, 1]
    plain = SpatialSoftmax()(feature_map)
    sharp = SpatialSoftmax(sharpness=20.0)(feature_map)
    assert plain.abs().max() < 0.1
    assert torch.allclose(sharp, torch.tensor([[spot, spot]]), atol=0.05)
    assert [n for n, _ in SpatialSoftmax().named_parameters()] == []  # the default adds nothing to old checkpoints

    config = dataclasses.replace(SMALL, keypoint_sharpness=10.0)
    model = random_policy(("drawer-close-v3",), PIXELS, config)
    pool = model.encoders["corner2"].pool
    assert torch.isclose(pool.log_sharpness.exp(), torch.tensor(10.0))
    model.train()
    obs = {"obs/corner2": torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8), "obs/proprio": torch.randn(4, 4)}
    model.head("drawer-close-v3", model.features(obs, torch.zeros(4, dtype=torch.long))).abs().mean().backward()
    assert pool.log_sharpness.grad is not None and pool.log_sharpness.grad.abs() > 0
    ckpt = save_checkpoint(model.eval(), tmp_path / "ckpt")
    loaded = load_checkpoint(ckpt)[0]
    assert loaded.config.keypoint_sharpness == 10.0
    assert torch.equal(loaded.encoders["corner2"].pool.log_sharpness, pool.log_sharpness)
    assert export(ckpt, tmp_path / "export", log=lambda _: None).parity.ok
    with pytest.raises(ValueError, match=r"keypoint_sharpness must be >= 0 \(0: a plain softmax\), got -1"):
        dataclasses.replace(SMALL, keypoint_sharpness=-1.0)


def test_the_attention_pool_computes_attention_reads_positions_and_survives_the_export(tmp_path):
    import torch

    from mt_policy.model import ATTENTION_QUERIES, AttentionPool, multi_head_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    reference = torch.cat([torch.nn.functional.scaled_dot_product_attention(q[..., h * 4:(h + 1) * 4], k[..., h * 4:(h + 1) * 4],
                                                                             v[..., h * 4:(h + 1) * 4]) for h in range(4)], dim=-1)
    assert torch.allclose(multi_head_attention(q, k, v, heads=4), reference, atol=1e-6)

    pool = AttentionPool(channels=16, cells=12, layers=2)
    feature_map = torch.randn(2, 16, 3, 4)
    assert pool(feature_map).shape == (2, ATTENTION_QUERIES * 16)
    # Without positions, attention cannot tell cells apart: shuffling them leaves the read-out unchanged.
    # The learned positions are what let it say where something is.
    shuffled = feature_map.flatten(2)[..., torch.randperm(12)].reshape(2, 16, 3, 4)
    assert not torch.allclose(pool(feature_map), pool(shuffled), atol=1e-4)
    with torch.no_grad():
        pool.position.zero_()
    assert torch.allclose(pool(feature_map), pool(shuffled), atol=1e-5)

    pixels = dataclasses.replace(PIXELS, image_size=(48, 48))
    config = dataclasses.replace(SMALL, encoder_pool="attention", attention_layers=1)
    model = random_policy(("drawer-close-v3", "window-close-v3"), pixels, config)
    model.train()
    obs = {"obs/corner2": torch.randint(0, 256, (4, 48, 48, 3), dtype=torch.uint8), "obs/proprio": torch.randn(4, 4)}
    model.head("drawer-close-v3", model.features(obs, torch.zeros(4, dtype=torch.long))).abs().mean().backward()
    pool = model.encoders["corner2"].pool
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (pool.position, pool.queries))
    ckpt = save_checkpoint(model.eval(), tmp_path / "ckpt")
    assert load_checkpoint(ckpt)[0].config.attention_layers == 1
    assert export(ckpt, tmp_path / "export", log=lambda _: None).parity.ok
    with pytest.raises(ValueError, match="attention_layers must be >= 0, got -1"):
        dataclasses.replace(config, attention_layers=-1)
    with pytest.raises(ValueError, match="attention width 10 .* must divide into 4 heads"):
        MultiTaskPolicy(dataclasses.replace(config, encoder_channels=(8, 10)), model.tasks)


def test_export_refuses_to_write_a_graph_that_fails_parity(tmp_path, monkeypatch):
    import deploy.onnx_export as onnx_export

    real = onnx_export.ort_cpu_runner

    def drifting(path):
        run = real(path)
        return lambda feed: run(feed) + 1e-3  # a graph 10x outside the tolerance

    monkeypatch.setattr(onnx_export, "ort_cpu_runner", drifting)
    ckpt = save_checkpoint(_policy(MIXED[:1], STATE), tmp_path / "ckpt")
    with pytest.raises(ExportError, match="disagrees with PyTorch.*nothing written"):
        export(ckpt, tmp_path / "export", log=lambda _: None)
    assert not (tmp_path / "export").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left either


def test_export_will_not_replace_a_directory_that_is_not_an_export(tmp_path):
    ckpt = save_checkpoint(_policy(MIXED[:1], STATE), tmp_path / "ckpt")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an mt_policy export"):
        export(ckpt, tmp_path / "precious", log=lambda _: None)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_auto_provider_reports_where_it_landed(mixed_export):
    runtime = PolicyRuntime(mixed_export[1], provider="auto")
    assert runtime.provider == ("tensorrt" if HAS_GPU else "cpu")
    assert PolicyRuntime(mixed_export[1], provider="cpu").provider == "cpu"


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without an NVIDIA GPU")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_provider_without_a_gpu_is_an_error_not_a_fallback(mixed_export, provider):
    with pytest.raises(RuntimeConfigError, match=f"provider '{provider}' needs an NVIDIA GPU"):
        PolicyRuntime(mixed_export[1], provider=provider)


def test_unknown_provider_and_missing_engine_are_refused(mixed_export):
    with pytest.raises(RuntimeConfigError, match="choose one of auto, tensorrt, cuda, cpu, tensorrt-engine"):
        PolicyRuntime(mixed_export[1], provider="openvino")
    with pytest.raises(RuntimeConfigError, match="no TensorRT engine"):
        PolicyRuntime(mixed_export[1], provider="tensorrt-engine")


def test_a_checkpoint_is_not_an_export(mixed_export):
    with pytest.raises(ExportError, match="that is a training checkpoint: export it first"):
        PolicyRuntime(mixed_export[0])


@pytest.mark.parametrize(("change", "message"), [
    (lambda o: o.pop("obs/proprio"), "observation has no 'obs/proprio'; expected float32 of shape \\(4,\\)"),
    (lambda o: o.update({"obs/proprio": np.zeros(5, np.float32)}), "obs/proprio is float32 of shape \\(5,\\), expected"),
    (lambda o: o.update({"obs/proprio": np.zeros(4, np.float64)}), "obs/proprio is float64 of shape \\(4,\\), expected float32"),
    (lambda o: o.update({"obs/proprio": [0.0, 0.0, 0.0, 0.0]}), "obs/proprio must be a numpy array"),
    (lambda o: o["obs/proprio"].__setitem__(2, np.inf), "obs/proprio has NaN/inf at index 2"),
])
def test_bad_observations_are_refused_with_the_key_and_what_was_expected(mixed_export, change, message):
    runtime = PolicyRuntime(mixed_export[1], provider="cpu", task="drawer-close-v3")
    obs = {"obs/proprio": np.zeros(4, np.float32)}
    change(obs)
    with pytest.raises(ObservationError, match=message):
        runtime.predict(obs)


def test_bad_images_are_refused(tmp_path):
    ckpt = save_checkpoint(_policy(("drawer-close-v3",), PIXELS), tmp_path / "ckpt")
    export(ckpt, tmp_path / "export", log=lambda _: None)
    runtime = PolicyRuntime(tmp_path / "export", provider="cpu")
    good = {"obs/corner2": np.zeros((32, 32, 3), np.uint8), "obs/proprio": np.zeros(4, np.float32)}
    runtime.predict(good)
    with pytest.raises(ObservationError, match=r"obs/corner2 is float32 of shape \(32, 32, 3\), expected uint8"):
        runtime.predict(good | {"obs/corner2": np.zeros((32, 32, 3), np.float32)})
    with pytest.raises(ObservationError, match=r"obs/corner2 is uint8 of shape \(3, 32, 32\)"):
        runtime.predict(good | {"obs/corner2": np.zeros((3, 32, 32), np.uint8)})


def test_predict_allocates_no_arrays_and_reuses_its_output_buffer(tmp_path):
    # 64 px so that one image copy (12,288 bytes) stands well clear of onnxruntime's own transient Python
    # objects (about 2 KB at peak, seen in CI), which a 32 px image (3,072 bytes) did not.
    obs_config = ObservationConfig(cameras=("corner2",), image_size=(64, 64))
    ckpt = save_checkpoint(_policy(("drawer-close-v3",), obs_config), tmp_path / "ckpt")
    export(ckpt, tmp_path / "export", log=lambda _: None)
    runtime = PolicyRuntime(tmp_path / "export", provider="cpu")
    image = np.zeros((64, 64, 3), np.uint8)
    obs = {"obs/corner2": image, "obs/proprio": np.zeros(4, np.float32)}
    first = runtime.predict(obs)
    tracemalloc.start()
    for _ in range(300):
        runtime.predict(obs)  # onnxruntime's bindings keep a small, bounded pool of Python objects
    settled, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for _ in range(1000):
        last = runtime.predict(obs)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.shares_memory(first, last)
    assert current - settled < 1024, f"{current - settled} bytes kept over 1,000 calls"
    # One transient copy of the image in any call would lift the peak by its full size.
    assert peak - settled < image.nbytes / 2, f"{peak - settled} bytes peak over 1,000 calls"


def test_the_runtime_does_not_import_torch(mixed_export):
    code = ("import sys, numpy as np; from deploy.runtime import PolicyRuntime; "
            f"r = PolicyRuntime({str(mixed_export[1])!r}, provider='cpu'); "
            "r.runner(2).act({'obs/proprio': np.zeros(4, np.float32)}); print(sorted(m for m in sys.modules if m.startswith(('torch', 'mujoco', 'training', 'sim'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without an NVIDIA GPU")
def test_cli_export_tensorrt_without_a_gpu_says_so_and_writes_nothing(tmp_path, capsys):
    ckpt = save_checkpoint(_policy(MIXED[:1], STATE), tmp_path / "ckpt")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "export"), "--tensorrt"]) == 2
    assert "TensorRT needs an NVIDIA GPU, and this machine has none" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


@pytest.mark.skipif(not HAS_GPU, reason="TensorRT needs an NVIDIA GPU; this machine has none")
def test_tensorrt_engine_matches_pytorch(tmp_path):
    ckpt = save_checkpoint(_policy(("drawer-close-v3", "window-close-v3"), PIXELS), tmp_path / "ckpt")
    result = export(ckpt, tmp_path / "export", tensorrt=True, log=lambda _: None)
    assert result.engine_parity["parity"]["passed"]
    runtime = PolicyRuntime(tmp_path / "export" / "policy.engine")
    assert runtime.provider == "tensorrt-engine"


def test_cli_export_and_bench_runtime(mixed_export, tmp_path, capsys):
    ckpt, _ = mixed_export
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "export"), "--tasks",
                 "reacher-v5,drawer-close-v3"]) == 0
    printed = capsys.readouterr().out
    assert "tasks: 0=reacher-v5 (2-D), 1=drawer-close-v3 (4-D)" in printed
    assert "parity with PyTorch: max abs action error" in printed
    assert main(["bench-runtime", "--checkpoint", str(ckpt), "--onnx", str(tmp_path / "export"), "--calls", "50",
                 "--warmup", "5", "--task", "drawer-close-v3", "--json", str(tmp_path / "bench.json")]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    backends = {(r["backend"], r["device"]) for r in result["rows"]}
    assert {("pytorch-eager", "cpu"), ("onnxruntime", "cpu")} <= backends
    for row in result["rows"]:
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"] and row["calls"] == 50
    assert result["flops_per_call"] > 0 and result["parameters"] == sum(
        p.numel() for p in load_checkpoint(ckpt)[0].parameters())
    assert "| onnxruntime | cpu |" in capsys.readouterr().out


def test_cli_eval_runs_an_export_through_the_runtime(mixed_export, tmp_path, capsys):
    _, out = mixed_export
    code = main(["eval", "--onnx", str(out), "--episodes", "1", "--max-steps", "5", "--videos", "0", "--no-progress",
                 "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["policy"] == {"kind": "onnx", "provider": "cpu"} and set(report["tasks"]) == set(MIXED)
    assert all(row["episodes"] == 1 for row in report["tasks"].values())
