"""The `mt-policy` command. Each subcommand imports its stage lazily, so `--help` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mt_policy.errors import MtPolicyError

PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt", "tensorrt-engine")  # deploy.runtime's, without importing it


def _add_task_selection(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--suite", help="task suite: mt3, mt10, mt50 or one from --suite-file (default mt3)")
    group.add_argument("--tasks", help="comma-separated task names instead of a suite")
    p.add_argument("--suite-file", type=Path, help="YAML file defining more suites")


def _add_observation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", default="corner2", help="comma-separated camera names; 'none' for state-only (default corner2)")
    p.add_argument("--image-size", type=int, default=96, help="square image size in pixels (default 96)")
    p.add_argument("--proprio", choices=("agent_pos", "full_state"), default="agent_pos",
                   help="proprio vector: hand xyz + gripper (4-D) or the full state (default agent_pos)")
    p.add_argument("--render-quality", choices=("fast", "full"), default="fast",
                   help="fast: no shadows/reflections/skybox (~5x cheaper); full: MuJoCo defaults as LeRobot")


def _add_collect_options(p: argparse.ArgumentParser) -> None:
    _add_task_selection(p)
    _add_observation(p)
    p.add_argument("--episodes", type=int, default=10, help="demos per task to have in each store (default 10)")
    p.add_argument("--out", type=Path, required=True, help="directory for the stores, one <task>.zarr per task")
    p.add_argument("--workers", type=int, default=2, help="parallel rollout processes (default 2)")
    p.add_argument("--keep", choices=("success", "all"), default="success", help="which episodes to store (default success)")
    p.add_argument("--attempts-factor", type=float, default=3.0, help="give up on a task after this many attempts per missing demo")
    p.add_argument("--action-noise", type=float, default=0.0,
                   help="execute the expert's action plus Gaussian noise of this std (fraction of the action "
                        "half-range) and store the clean action, so demos show recoveries (default 0: none)")
    p.add_argument("--privileged", action="store_true",
                   help="also store each frame's full simulator state as a training-only target "
                        "(train.privileged_weight); the policy never sees it")
    p.add_argument("--settle-steps", type=int, default=0, metavar="K",
                   help="record K more expert steps after success, so demos show the motion finished inside the "
                        "goal region rather than stopping where success first fires (default 0)")
    p.add_argument("--tool-centre", action="store_true",
                   help="experts that put the hand flange on the goal (reach) aim the tool centre between the "
                        "fingertips at it instead, where the task measures success")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mt-policy", description="Multitask robot policies: collect, inspect, train, eval, export.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="roll out scripted experts into one zarr demo store per task")
    _add_collect_options(p)

    p = sub.add_parser("inspect", help="summarise (and validate) demo stores")
    p.add_argument("stores", nargs="+", type=Path)
    p.add_argument("--validate", action="store_true", help="read every chunk and check every invariant")
    p.add_argument("--sample-grid", type=Path, metavar="PNG", help="write a grid of frames from a few episodes")
    p.add_argument("--json", action="store_true", help="print summaries as JSON")

    p = sub.add_parser("import-lerobot", help="convert a local LeRobotDataset v3.0 into one demo store per task")
    p.add_argument("path", type=Path, help="the dataset's root directory (holding meta/info.json)")
    p.add_argument("--out", type=Path, required=True, help="directory for the stores, one <task>.zarr per task")
    p.add_argument("--map", action="append", default=[], metavar="LEROBOT_KEY=STORE_KEY",
                   help="map a LeRobot feature to a store key (obs/<camera>, obs/proprio, action); 'KEY=' leaves a "
                        "feature out; repeatable (default observation.images.<cam>=obs/<cam>, "
                        "observation.state=obs/proprio, action=action)")
    p.add_argument("--task-name", action="append", default=[], metavar="INDEX=NAME",
                   help="name the task with this task_index (default: the registered task its description names, "
                        "else a slug of the description); repeatable")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("export-lerobot", help="write demo stores as one LeRobotDataset v3.0 (one task per store)")
    p.add_argument("stores", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the dataset's root directory (must not exist)")
    p.add_argument("--repo-id", help="the dataset's repo id (default local/<out directory name>)")
    p.add_argument("--map", action="append", default=[], metavar="LEROBOT_KEY=STORE_KEY",
                   help="LeRobot feature name for a store key; repeatable (default as for import-lerobot)")
    p.add_argument("--images", choices=("video", "image"), default="video",
                   help="video: LeRobot's default, lossy (4:2:0 chroma); image: PNG frames, lossless (default video)")
    p.add_argument("--vcodec", choices=("libsvtav1", "h264", "hevc"), default="libsvtav1",
                   help="video codec (default libsvtav1, LeRobot's; it needs images of at least 32x32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("list", help="list registered tasks or suites")
    p.add_argument("what", choices=("tasks", "suites"))
    p.add_argument("--suite-file", type=Path, help="YAML file defining more suites")

    p = sub.add_parser("train", add_help=False, help="train a multitask policy (Hydra overrides; --help for Hydra's)")
    p.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="Hydra overrides, e.g. data.root=DIR train.steps=3000; -m for sweeps; --resume RUN_DIR")

    p = sub.add_parser("demo", help="the end-to-end demo on a small default (what `make demo` runs)")
    _add_collect_options(p)
    p.add_argument("--train-steps", type=int, default=4000, help="training steps (default 4000)")

    p = sub.add_parser("eval", help="per-task success rates of a checkpoint or ONNX export in sim (eval.json/md/png, GIFs)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint directory (PyTorch)")
    source.add_argument("--onnx", type=Path, metavar="DIR", help="export directory from `mt-policy export` (PolicyRuntime)")
    source.add_argument("--lerobot", type=Path, metavar="DIR",
                        help="LeRobot policy directory written by bench/peers.py (select_action, one action per step)")
    p.add_argument("--provider", default="cpu", choices=PROVIDER_CHOICES,
                   help="runtime provider for --onnx (default cpu: one thread per worker)")
    p.add_argument("--tasks", help="comma-separated subset of the checkpoint's tasks (default all)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task, on the first eval seeds (default 10)")
    p.add_argument("--first-episode", type=int, default=0, metavar="K",
                   help="start at the K-th eval seed instead of the first: tune on a slice (say K=1000) that the "
                        "reported first episodes never see (default 0)")
    p.add_argument("--workers", type=int, default=2, help="parallel rollout processes (default 2)")
    p.add_argument("--out", type=Path, help="output directory (default CHECKPOINT-eval or DIR-eval beside it; "
                                            "DIR-eval-ros with --over-ros)")
    p.add_argument("--videos", type=int, default=2, help="GIFs kept per task of successes and of failures (default 2)")
    p.add_argument("--n-action-steps", type=int, metavar="N", help="actions executed per predicted chunk (default: all)")
    p.add_argument("--temporal-ensemble", type=float, metavar="K",
                   help="predict every step and average overlapping chunks with weights exp(-K * age)")
    p.add_argument("--max-steps", type=int, metavar="N",
                   help="cap episodes below the task's limit (smoke tests; rates are then not comparable)")
    p.add_argument("--suite-file", type=Path, help="YAML file defining tasks the checkpoint was trained on")
    p.add_argument("--over-ros", action="store_true",
                   help="with --onnx: every action through ROS 2, from the serve node (a separate process) to the "
                        "sim bridge, in lock-step; one episode at a time, no videos")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("sim-bridge", help="a sim task as a ROS 2 robot for the serve node (episodes until Ctrl-C)")
    p.add_argument("--model", type=Path, required=True, help="export directory (its observation schema)")
    p.add_argument("--task", required=True, help="task to simulate (one of the export's)")
    p.add_argument("--episodes", type=int, help="stop after N episodes on the eval seeds (default: until Ctrl-C)")
    p.add_argument("--max-steps", type=int, metavar="N", help="cap episodes below the task's limit")
    p.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable",
                   help="observation QoS reliability (default reliable; also matches best-effort readers)")
    p.add_argument("--server", default="mt_policy_server",
                   help="serve node whose task is set (and action queue emptied) at every episode start; '' for none")

    p = sub.add_parser("export", help="export a checkpoint to ONNX (+ TensorRT engine), checked against PyTorch")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--out", type=Path, required=True, help="export directory (policy.onnx, policy.json[, policy.engine])")
    p.add_argument("--tasks", help="comma-separated subset of tasks (one task: that head alone, no task input)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--fp16", action="store_true", help="half precision for the TensorRT engine and TensorRT EP "
                   "(the ONNX graph stays fp32)")
    p.add_argument("--tensorrt", action="store_true", help="also build policy.engine (needs an NVIDIA GPU)")
    p.add_argument("--demos", type=Path, nargs="+", metavar="STORE",
                   help="demo stores for the parity check on real observations (default: the training run's)")

    p = sub.add_parser("add-task", help="attach a new task (head + embedding row) to a trained policy, with rehearsal")
    p.add_argument("--checkpoint", type=Path, required=True, help="source checkpoint (never modified)")
    p.add_argument("--task", required=True, help="name of the new task (the demo store's task)")
    p.add_argument("--demos", type=Path, required=True, metavar="STORE", help="the new task's demo store")
    p.add_argument("--out", type=Path, help="new checkpoint (default CHECKPOINT+TASK beside the source)")
    p.add_argument("--strategy", default="rehearsal", choices=("rehearsal", "frozen", "finetune"),
                   help="rehearsal: mix old-task windows into every batch (default); frozen: only the new head "
                        "and embedding row train; finetune: everything trains on the new task (forgets)")
    p.add_argument("--rehearsal-ratio", type=float, default=0.5, help="share of each batch from old tasks, in [0, 1) (default 0.5)")
    p.add_argument("--rehearsal-source", default="auto", choices=("auto", "stores", "buffer"),
                   help="old-task data: their stores, or the checkpoint's rehearsal buffer (default: stores when all exist)")
    p.add_argument("--init-from", metavar="TASK", help="initialise the new embedding row from this task "
                   "(default: the most similar task by description)")
    p.add_argument("--steps", type=int, help="training steps (default: a fifth of the source run's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the source run's)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes per task before/after (0: no evaluation)")
    p.add_argument("--workers", type=int, default=2, help="evaluation worker processes (default 2)")
    p.add_argument("--n-action-steps", type=int, metavar="N", help="actions executed per chunk in evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("trim", help="a smaller policy with only some tasks' heads and embeddings")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--tasks", required=True, help="comma-separated tasks to keep, in order")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("bench-runtime", help="batch-1 latency p50/p99/max: PyTorch eager vs ONNX Runtime (vs TensorRT)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint (exported to a temporary directory if --onnx is not given)")
    p.add_argument("--onnx", type=Path, metavar="DIR", help="export directory")
    p.add_argument("--task", help="task to time (default the first)")
    p.add_argument("--calls", type=int, default=1000, help="timed calls per backend (default 1000)")
    p.add_argument("--warmup", type=int, default=100, help="untimed calls first (default 100)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for eager and ORT CPU (default 1)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "train":  # everything after `train` belongs to Hydra (`--help`, `-m`, `--cfg job`)
        args.overrides = unknown + args.overrides
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return {"collect": cmd_collect, "inspect": cmd_inspect, "list": cmd_list, "demo": cmd_demo,
                "eval": cmd_eval, "train": cmd_train, "export": cmd_export,
                "bench-runtime": cmd_bench_runtime, "add-task": cmd_add_task, "trim": cmd_trim,
                "sim-bridge": cmd_sim_bridge, "import-lerobot": cmd_import_lerobot,
                "export-lerobot": cmd_export_lerobot}[args.command](args)
    except MtPolicyError as err:
        print(f"mt-policy {args.command}: error: {err}", file=sys.stderr)
        return 2


def _tasks_from_args(args: argparse.Namespace) -> list:
    from sim.suites import load_suite_file, resolve_tasks

    if args.suite_file:
        load_suite_file(args.suite_file)
    if args.suite is None and args.tasks is None:
        args.suite = "mt3"
    return resolve_tasks(args.suite, args.tasks)


def _obs_from_args(args: argparse.Namespace):
    from sim.tasks import ObservationConfig

    cams = () if args.cameras.strip().lower() in ("", "none") else tuple(c.strip() for c in args.cameras.split(","))
    return ObservationConfig(cams, (args.image_size, args.image_size), args.proprio, args.render_quality,
                             privileged=getattr(args, "privileged", False))


def _run_collect(args: argparse.Namespace):
    from sim.collect import collect

    tasks = _tasks_from_args(args)
    report = collect(tasks, args.episodes, args.out, _obs_from_args(args), workers=args.workers, keep=args.keep,
                     attempts_factor=args.attempts_factor, action_noise=args.action_noise,
                     settle_steps=args.settle_steps, tool_centre=args.tool_centre, progress=not args.no_progress)
    print(f"\n{'task':32s} {'kept':>5s} {'rejected':>8s}  store")
    for name, path in report.stores.items():
        print(f"{name:32s} {report.kept[name]:5d} {report.rejected[name]:8d}  {path}")
    print(f"{report.frames} new frames in {report.wall_seconds:.1f} s ({report.frames_per_second:.0f} frames/s, "
          f"store writes {report.write_share:.1%} of the time)")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.interrupted:
        print("interrupted: the stores hold every finished episode; run the same command again to resume", file=sys.stderr)
    return report


def cmd_collect(args: argparse.Namespace) -> int:
    report = _run_collect(args)
    return 130 if report.interrupted else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from mt_policy.demo_store import DemoStore
    from mt_policy.inspect_store import format_summary, sample_grid

    stores, summaries, failed = [], [], 0
    for path in args.stores:
        try:
            store = DemoStore.open(path)
            if args.validate:
                store.validate()
        except MtPolicyError as err:
            print(f"INVALID {err}", file=sys.stderr)
            failed += 1
            continue
        stores.append(store)
        summaries.append(store.summary() | ({"validated": True} if args.validate else {}))
    if args.json:
        print(json.dumps(summaries, indent=2))
    else:
        for summary in summaries:
            print(format_summary(summary) + ("\n  valid        yes (every chunk read, every invariant checked)" if args.validate else ""))
    if args.sample_grid and stores:
        print(f"sample grid: {sample_grid(stores, args.sample_grid)}")
    if failed:
        print(f"{failed} of {len(args.stores)} stores failed", file=sys.stderr)
        return 2
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from sim.suites import get_suite, load_suite_file, suite_names
    from sim.tasks import get_task, task_names

    if args.suite_file:
        load_suite_file(args.suite_file)
    if args.what == "tasks":
        for name in task_names():
            spec = get_task(name)
            print(f"{name:30s} {spec.difficulty:10s} {spec.description}")
    else:
        for name in suite_names():
            print(f"{name:8s} {', '.join(t.name for t in get_suite(name))}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    print(f"== 1/5 collect: {args.episodes} scripted demos per task -> {args.out}")
    report = _run_collect(args)
    if report.interrupted:
        return 130
    print("\n== 2/5 inspect --validate")
    grid = args.out / "sample_grid.png"
    code = cmd_inspect(argparse.Namespace(stores=list(report.stores.values()), validate=True, sample_grid=grid, json=False))
    if code:
        return code
    print(f"\n== 3/5 train ({args.out / 'train'})")
    result = _demo_train(args)
    print("\n== 4/5 per-task success in sim (eval seeds)")
    from sim.eval_report import format_markdown

    print(format_markdown(result))
    train_dir = (args.out / "train").resolve()
    export_dir = args.out / "export"
    print(f"\n== 5/5 export to ONNX ({export_dir}) and runtime latency")
    from deploy.latency import bench_runtime
    from deploy.onnx_export import export

    exported = export(train_dir / "checkpoints" / "last", export_dir)
    print(format_export(exported.manifest))
    latency = bench_runtime(train_dir / "checkpoints" / "last", export_dir, calls=1000, log=lambda _: None)
    rows = {(r["backend"], r["device"]): r for r in latency["rows"]}
    ort, eager = rows[("onnxruntime", "cpu")], rows[("pytorch-eager", "cpu")]
    print(f"runtime latency (batch 1, 1 thread, 1000 calls): onnxruntime CPU p50 {ort['p50_ms']:.3f} ms / p99 "
          f"{ort['p99_ms']:.3f} ms; PyTorch eager p50 {eager['p50_ms']:.3f} ms ({latency['ort_cpu_speedup_vs_eager_p50']:.1f}x)")
    print(f"\ndemo stores:   {args.out.resolve()}\nsample frames: {grid.resolve()}\n"
          f"checkpoint:    {train_dir / 'checkpoints' / 'last'}\n"
          f"onnx export:   {export_dir.resolve()} (mt-policy eval --onnx {export_dir})\n"
          f"eval report:   {train_dir / 'eval' / 'final'} (eval.md, eval.png, videos/)\n"
          f"training logs: {train_dir / 'train_log.csv'}, tensorboard --logdir {train_dir / 'tensorboard'}")
    return 0


def _demo_train(args: argparse.Namespace) -> dict:
    """Compose `training/conf/demo.yaml` for the demo's stores and run it in `<out>/train`."""
    from hydra import compose, initialize_config_module

    from training.config import register_configs
    from training.train import run_training

    register_configs()
    overrides = [f"data.root={args.out}", f"train.steps={args.train_steps}", f"train.progress={not args.no_progress}"]
    overrides += [f"data.suite={args.suite}"] if args.suite else ["data.suite=null", "+data.tasks={" + ",".join(
        f"{t.strip()}:{{}}" for t in args.tasks.split(",")) + "}"]
    if args.suite_file:
        overrides.append(f"data.suite_file={args.suite_file}")
    if (args.out / "train" / "checkpoints" / "last").exists():
        overrides.append("train.resume=true")  # a re-run continues (or just re-evaluates) the demo's run
    with initialize_config_module(config_module="training.conf", version_base="1.3"):
        cfg = compose("demo", overrides=overrides)
    return run_training(cfg, args.out / "train")


def train_overrides(overrides: list[str]) -> list[str]:
    """Expand `--resume RUN_DIR`: the run's saved overrides, then the new ones, in the same run dir."""
    overrides = list(overrides)
    if "--resume" not in overrides:
        return overrides
    at = overrides.index("--resume")
    if at + 1 >= len(overrides):
        raise MtPolicyError("--resume needs a run directory (the one holding .hydra/ and checkpoints/)")
    run_dir = Path(overrides[at + 1])
    del overrides[at : at + 2]
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        raise MtPolicyError(f"{run_dir}: not a training run directory (no .hydra/overrides.yaml)")
    import yaml

    saved = [o for o in (yaml.safe_load(saved_file.read_text()) or [])
             if not o.startswith(("hydra.run.dir=", "train.resume="))]
    return saved + overrides + [f"hydra.run.dir={run_dir}", "train.resume=true"]


def cmd_train(args: argparse.Namespace) -> int:
    overrides = train_overrides(args.overrides)
    from training.train import main as hydra_main

    sys.argv = ["mt-policy train", *overrides]
    hydra_main()
    return 0


def _import_ros(what: str):
    """`mt_policy_ros.<what>`, or an error saying what to install."""
    import importlib

    try:
        return importlib.import_module(f"mt_policy_ros.{what}")
    except ImportError as err:
        raise MtPolicyError(f"this needs ROS 2 and the mt_policy ROS package ({err}); install them with "
                            f"pip install -e '.[ros]' -e ros2_ws/src/mt_policy") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from sim.eval_report import format_markdown
    from sim.evaluate import EVAL_JSON, EVAL_MD, EVAL_PNG, VIDEO_DIR, evaluate

    # Beside, not inside, the policy: re-saving a checkpoint (or export) replaces its whole directory.
    policy = args.onnx or args.checkpoint or args.lerobot
    out = args.out or policy.with_name(f"{policy.name}-eval{'-ros' if args.over_ros else ''}")
    if args.over_ros and not args.onnx:
        raise MtPolicyError("--over-ros serves an export through the ROS node: pass --onnx DIR, not "
                            f"--{'lerobot' if args.lerobot else 'checkpoint'}")
    try:
        if args.over_ros:
            report = _import_ros("eval_over_ros").evaluate_over_ros(
                policy, out, tasks=args.tasks, episodes=args.episodes, n_action_steps=args.n_action_steps,
                max_steps=args.max_steps, provider=args.provider, temporal_ensemble=args.temporal_ensemble,
                progress=not args.no_progress, suite_file=args.suite_file, first_episode=args.first_episode)
        else:
            report = evaluate(policy, out, onnx_provider=args.provider if args.onnx else None,
                              kind="lerobot" if args.lerobot else None, tasks=args.tasks,
                              episodes=args.episodes, workers=args.workers, videos=args.videos,
                              n_action_steps=args.n_action_steps, temporal_ensemble=args.temporal_ensemble,
                              progress=not args.no_progress, suite_file=args.suite_file, max_steps=args.max_steps,
                              first_episode=args.first_episode)
    except KeyboardInterrupt:
        print("interrupted: no eval results written", file=sys.stderr)
        return 130
    print("\n" + format_markdown(report))
    videos = out / VIDEO_DIR
    print(f"results: {out / EVAL_JSON}, {out / EVAL_MD}, {out / EVAL_PNG}"
          + (f"; videos: {videos}" if videos.is_dir() else "") + f" ({report['wall_seconds']:.1f} s)")
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_sim_bridge(args: argparse.Namespace) -> int:
    _import_ros("sim_bridge").run_bridge(args.model, args.task, args.episodes, args.max_steps, args.qos, args.server)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from deploy.onnx_export import export

    result = export(args.checkpoint, args.out, tasks=args.tasks, opset=args.opset, fp16=args.fp16, demos=args.demos,
                    tensorrt=args.tensorrt)
    print(format_export(result.manifest))
    return 0


def format_export(manifest: dict) -> str:
    parity = manifest["parity"]
    lines = [f"wrote {manifest['graph']} ({manifest['parameters']['graph']:,} parameters, opset {manifest['opset']}, "
             f"sha256 {manifest['graph_sha256'][:12]}) and policy.json",
             "tasks: " + ", ".join(f"{t['index']}={t['name']} ({t['action_size']}-D)" for t in manifest["tasks"]),
             f"parity with PyTorch: max abs action error {parity['max_abs_error']:.2e} <= {parity['tolerance']:g} over "
             + ", ".join(f"{n} {src} observations" for src, n in parity["samples"].items())]
    lines += [f"note: {s}" for s in parity["skipped"]]
    if manifest.get("engine"):
        engine = manifest["engine"]
        lines.append(f"TensorRT {engine['tensorrt']} engine {engine['file']} ({'fp16' if engine['fp16'] else 'fp32'}): "
                     f"max abs action error {engine['parity']['max_abs_error']:.2e}")
    return "\n".join(lines)


def _registered_task(text: str):
    """The registered task a LeRobot task description (ours, LeRobot's Meta-World one, or a name) denotes, or None."""
    from mt_policy.lerobot_io import KnownTask, lerobot_metaworld_descriptions
    from sim.tasks import ObservationConfig, get_task, task_names

    names = task_names()
    by_text = {d.strip().lower(): n for n, d in lerobot_metaworld_descriptions().items() if n in names}
    by_text |= {get_task(n).description.strip().lower(): n for n in names} | {n.lower(): n for n in names}
    name = by_text.get(text.strip().lower())
    if name is None:
        return None
    spec, sources, schema = get_task(name), {}, None
    for proprio in ("full_state", "agent_pos"):  # agent_pos wins where both have the same size
        try:
            schema = spec.schema(ObservationConfig((), proprio=proprio))
        except MtPolicyError:
            continue
        sources[schema.observation.proprio_size] = proprio
    return None if schema is None else KnownTask(spec.info(), schema.action, schema.max_episode_steps, sources)


def cmd_import_lerobot(args: argparse.Namespace) -> int:
    from mt_policy.lerobot_io import import_lerobot

    names = {}
    for item in args.task_name:
        index, sep, name = item.partition("=")
        if not sep or not index.strip().isdigit() or not name.strip():
            raise MtPolicyError(f"--task-name {item!r}: expected INDEX=NAME, e.g. 0=pick-place-v3")
        names[int(index)] = name.strip()
    try:
        report = import_lerobot(args.path, args.out, overrides=args.map, task_names=names, identify=_registered_task,
                                progress=not args.no_progress)
    except KeyboardInterrupt:
        print("interrupted: the stores hold every finished episode; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"\n{'task_index':>10s}  {'task':32s} {'new':>5s} {'had':>5s}  store")
    for t in report.tasks:
        print(f"{t.task_index:10d}  {t.info.name:32s} {t.imported:5d} {t.skipped:5d}  {t.store}")
    print(f"{report.frames} new frames at {report.fps} fps; key map: {report.key_map.as_text()}")
    if report.ignored_features:
        print(f"not imported: {', '.join(report.ignored_features)}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_export_lerobot(args: argparse.Namespace) -> int:
    from mt_policy.lerobot_io import export_lerobot

    report = export_lerobot(args.stores, args.out, repo_id=args.repo_id, overrides=args.map, images=args.images,
                            vcodec=args.vcodec, progress=not args.no_progress)
    images = f"video ({report.vcodec})" if report.images == "video" else "PNG images"
    print(f"wrote {report.root} (repo id {report.repo_id}): {report.episodes} episodes, {report.frames} frames at "
          f"{report.fps} fps, {images}; key map: {report.key_map.as_text()}")
    for index, description in report.tasks.items():
        print(f"  task_index {index}: {description}")
    return 0


def cmd_add_task(args: argparse.Namespace) -> int:
    from training.add_task import AddTaskOptions, add_task, format_report

    opts = AddTaskOptions(args.checkpoint, args.task, args.demos, args.out, args.strategy, args.rehearsal_ratio,
                          args.rehearsal_source, args.init_from, args.steps, args.batch_size, args.lr,
                          eval_episodes=args.eval_episodes, workers=args.workers, n_action_steps=args.n_action_steps,
                          seed=args.seed, progress=not args.no_progress)
    try:
        report = add_task(opts)
    except KeyboardInterrupt:
        print(f"interrupted: {opts.checkpoint} is untouched; run the same command again to resume", file=sys.stderr)
        return 130
    print("\n" + format_report(report))
    print(f"checkpoint: {report['checkpoint']} (forgetting.json, forgetting.md inside)")
    return 0


def cmd_trim(args: argparse.Namespace) -> int:
    from mt_policy.checkpoint import load_checkpoint, load_extra, save_checkpoint
    from mt_policy.policy_edit import trim_policy
    from training.rehearsal import RehearsalBuffer
    from training.trainer import REHEARSAL

    if args.out.resolve() == args.checkpoint.resolve():
        raise MtPolicyError("--out is the source checkpoint; trim writes a new one")
    model, manifest = load_checkpoint(args.checkpoint)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    small = trim_policy(model, names)
    provenance = (manifest.get("provenance") or {}) | {"trimmed_from": str(args.checkpoint.resolve()), "tasks": names}
    provenance["stores"] = {k: v for k, v in (provenance.get("stores") or {}).items() if k in names}
    provenance["demo_seeds"] = {k: v for k, v in (provenance.get("demo_seeds") or {}).items() if k in names}
    extra = {}
    buffer = load_extra(args.checkpoint, REHEARSAL)
    if buffer is not None:
        extra[REHEARSAL] = RehearsalBuffer.from_tensors(buffer).only(names).to_tensors()
    save_checkpoint(small, args.out, provenance, extra_tensors=extra)
    before, after = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in small.parameters())
    print(f"kept {', '.join(names)}: {after:,} parameters (from {before:,}) -> {args.out}")
    return 0


def cmd_bench_runtime(args: argparse.Namespace) -> int:
    from deploy.latency import bench_runtime, format_table, write_result

    result = bench_runtime(args.checkpoint, args.onnx, task=args.task, calls=args.calls, warmup=args.warmup,
                           threads=args.threads)
    print("\n" + format_table(result))
    if args.json:
        write_result(result, args.json)
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
