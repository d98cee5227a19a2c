"""The ROS 2 package in ros2_ws/src/mt_policy: manifest, setup files, launch file and params file agree with
each other and with `mt_policy_ros.params.SERVE_PARAMS`.

`launch`/`launch_ros` cannot be installed from pip, so the launch file is checked through its syntax tree;
the params file is loaded by the real rcl parser (rclpy) when rclpy is installed.
"""

from __future__ import annotations

import ast
import configparser
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

import mt_policy
import mt_policy_ros
from mt_policy_ros.params import PARAM_NAMES, SERVE_PARAMS

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ros2_ws" / "src" / "mt_policy"
NAME = "mt_policy"
LAUNCH = PKG / "launch" / "serve.launch.py"
CONFIG = PKG / "config" / "serve.yaml"
YAML_NODE_KEY = "/**/mt_policy_server"
DEFAULTS = {p.name: p.default for p in SERVE_PARAMS}
LAUNCH_ARGS = {"model", "task", "provider", "params_file", "namespace", "log_level"}
EXEC_DEPENDS = {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "trajectory_msgs", "launch", "launch_ros",
                "ament_index_python", "python3-numpy"}


# ---------------------------------------------------------------- package.xml

def test_package_xml_is_an_ament_python_format3_manifest():
    root = ET.parse(PKG / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == NAME
    assert root.findtext("version") == "0.1.0"
    assert root.findtext("license") == "Apache-2.0"
    assert (root.findtext("description") or "").strip()
    maintainer = root.find("maintainer")
    assert maintainer is not None and maintainer.get("email") and (maintainer.text or "").strip()
    assert root.findtext("export/build_type") == "ament_python"
    exec_depends = {e.text for e in root.findall("exec_depend")}
    assert EXEC_DEPENDS <= exec_depends, f"missing exec_depend: {sorted(EXEC_DEPENDS - exec_depends)}"
    assert "python3-pytest" in {e.text for e in root.findall("test_depend")}


# ---------------------------------------------------------------- setup.py / setup.cfg

@pytest.fixture(scope="module")
def dist():
    """setup.py run up to option parsing, from the package directory as colcon and pip run it."""
    import setuptools  # noqa: F401, I001  (first: it provides `distutils` on Python >= 3.12)
    from distutils.core import run_setup

    cwd = os.getcwd()
    os.chdir(PKG)
    try:
        return run_setup("setup.py", stop_after="init")
    finally:
        os.chdir(cwd)


def console_scripts(dist) -> dict[str, str]:
    entries = dist.entry_points["console_scripts"]
    return {name.strip(): target.strip() for name, target in (e.split("=", 1) for e in entries)}


def test_setup_py_packages_only_mt_policy_ros(dist):
    assert dist.packages == ["mt_policy_ros"]
    # `mt_policy` (pip: `mt-policy`) is the main project's distribution; reusing it would uninstall that.
    assert dist.get_name().replace("_", "-").lower() != "mt-policy"


def test_console_scripts_point_into_mt_policy_ros(dist):
    scripts = console_scripts(dist)
    assert scripts["serve"] == "mt_policy_ros.serve_node:main"
    assert scripts["sim_bridge"] == "mt_policy_ros.sim_bridge:main"
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert module.split(".")[0] in dist.packages and func, f"{name} = {target}"


def test_setup_cfg_installs_executables_where_ros2_launch_looks():
    cfg = configparser.RawConfigParser()
    assert cfg.read(PKG / "setup.cfg")
    assert cfg.get("develop", "script_dir") == f"$base/lib/{NAME}"
    assert cfg.get("install", "install_scripts") == f"$base/lib/{NAME}"


def test_data_files_exist_and_install_index_manifest_launch_and_config(dist):
    installed = {}
    for dest, sources in dist.data_files:
        for source in sources:
            assert (PKG / source).is_file(), f"data_files: {source} missing"
            installed[source] = dest
    assert installed[f"resource/{NAME}"] == "share/ament_index/resource_index/packages"
    assert installed["package.xml"] == f"share/{NAME}"
    assert installed["launch/serve.launch.py"] == f"share/{NAME}/launch"
    assert installed["config/serve.yaml"] == f"share/{NAME}/config"


def test_no_module_named_mt_policy_in_the_ros_package():
    assert not (PKG / "mt_policy").exists() and not (PKG / "mt_policy.py").exists()
    assert (PKG / "mt_policy_ros" / "__init__.py").is_file()
    # The installed names resolve to the main project and to this package respectively.
    assert PKG not in Path(mt_policy.__file__).resolve().parents
    assert Path(mt_policy_ros.__file__).resolve().parent == PKG / "mt_policy_ros"


# ---------------------------------------------------------------- launch/serve.launch.py

def call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return None


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if call_name(n) == name]


def const_arg(call: ast.Call, index: int = 0):
    arg = call.args[index]
    assert isinstance(arg, ast.Constant), ast.dump(arg)
    return arg.value


def keyword(call: ast.Call, name: str) -> ast.expr:
    found = [k.value for k in call.keywords if k.arg == name]
    assert found, f"{call_name(call)}() has no {name}="
    return found[0]


def launch_config(node: ast.expr) -> str | None:
    """The argument name of `LaunchConfiguration('x')`, else None."""
    return const_arg(node) if call_name(node) == "LaunchConfiguration" else None


@pytest.fixture(scope="module")
def launch_tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


@pytest.fixture(scope="module")
def node_call(launch_tree) -> ast.Call:
    nodes = calls(launch_tree, "Node")
    assert len(nodes) == 1
    return nodes[0]


def test_launch_file_defines_generate_launch_description(launch_tree):
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in launch_tree.body)


def test_launch_declares_exactly_the_arguments(launch_tree):
    declared = [const_arg(c) for c in calls(launch_tree, "DeclareLaunchArgument")]
    assert sorted(declared) == sorted(LAUNCH_ARGS)
    used = {launch_config(c) for c in calls(launch_tree, "LaunchConfiguration")}
    assert used <= LAUNCH_ARGS, f"LaunchConfiguration of undeclared arguments {used - LAUNCH_ARGS}"


def test_launch_argument_defaults(launch_tree):
    args = {const_arg(c): c for c in calls(launch_tree, "DeclareLaunchArgument")}
    defaults = {name: next((k.value for k in c.keywords if k.arg == "default_value"), None) for name, c in args.items()}
    assert defaults["model"] is None  # required
    for name, value in {"task": "", "provider": "auto", "namespace": "", "log_level": "info"}.items():
        assert isinstance(defaults[name], ast.Constant) and defaults[name].value == value, name
    # params_file defaults to the package's installed config/serve.yaml
    source = ast.unparse(launch_tree)
    assert "get_package_share_directory('mt_policy')" in source and "'serve.yaml'" in source


def test_launch_node_runs_the_serve_console_script(node_call, dist):
    assert keyword(node_call, "package").value == NAME
    assert keyword(node_call, "executable").value in console_scripts(dist)
    assert keyword(node_call, "name").value == "mt_policy_server"
    assert launch_config(keyword(node_call, "namespace")) == "namespace"
    arguments = keyword(node_call, "arguments")
    assert isinstance(arguments, ast.List)
    items = [e.value if isinstance(e, ast.Constant) else launch_config(e) for e in arguments.elts]
    assert items == ["--ros-args", "--log-level", "log_level"]


def test_launch_node_parameters_are_serve_params(node_call):
    parameters = keyword(node_call, "parameters")
    assert isinstance(parameters, ast.List)
    assert launch_config(parameters.elts[0]) == "params_file"  # file first, launch arguments override it
    dicts = [e for e in parameters.elts if isinstance(e, ast.Dict)]
    assert dicts
    keys = [k.value for d in dicts for k in d.keys]
    assert set(keys) <= set(PARAM_NAMES), f"not serve parameters: {set(keys) - set(PARAM_NAMES)}"
    assert {"model", "task", "provider"} <= set(keys)


def test_launch_sets_fastdds_large_data_before_the_node(launch_tree, node_call):
    sets = [c for c in calls(launch_tree, "SetEnvironmentVariable") if const_arg(c) == "FASTDDS_BUILTIN_TRANSPORTS"]
    assert len(sets) == 1
    value = sets[0].args[1] if len(sets[0].args) > 1 else keyword(sets[0], "value")
    if call_name(value) == "EnvironmentVariable":  # keeps a value the user already set
        assert const_arg(value) == "FASTDDS_BUILTIN_TRANSPORTS"
        value = keyword(value, "default_value")
    assert isinstance(value, ast.Constant) and value.value == "LARGE_DATA"
    assert (sets[0].lineno, sets[0].col_offset) < (node_call.lineno, node_call.col_offset)


# ---------------------------------------------------------------- config/serve.yaml

@pytest.fixture(scope="module")
def yaml_params() -> dict:
    data = yaml.safe_load(CONFIG.read_text())
    assert list(data) == [YAML_NODE_KEY]
    assert list(data[YAML_NODE_KEY]) == ["ros__parameters"]
    return data[YAML_NODE_KEY]["ros__parameters"]


def test_yaml_lists_the_serve_params_but_model_and_task(yaml_params):
    assert set(yaml_params) <= set(PARAM_NAMES), f"unknown: {set(yaml_params) - set(PARAM_NAMES)}"
    assert set(yaml_params) == set(PARAM_NAMES) - {"model", "task"}


def test_yaml_values_have_the_defaults_types(yaml_params):
    for name, value in yaml_params.items():
        default = DEFAULTS[name]
        assert type(value) is type(default), f"{name}: {value!r} is {type(value).__name__}, default {default!r}"
        if isinstance(default, list):
            assert value and {type(v) for v in value} == {type(v) for v in default}, name
        assert value == default, f"{name}: {value!r} != default {default!r}"


def test_readme_documents_every_parameter():
    readme = (ROOT / "ros2_ws" / "README.md").read_text()
    for name in PARAM_NAMES:
        assert f"| `{name}` |" in readme, name


def test_rcl_loads_the_yaml_in_any_namespace_with_ros_types(yaml_params):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    def overrides(node_name: str, args: list[str]) -> dict:
        context = Context()
        rclpy.init(args=["--ros-args", *args], context=context)
        try:
            node = Node(node_name, context=context, automatically_declare_parameters_from_overrides=True,
                        start_parameter_services=False, enable_rosout=False)
            try:
                return {n: (p.type_, p.value) for n, p in node._parameters.items() if n in DEFAULTS}
            finally:
                node.destroy_node()
        finally:
            rclpy.shutdown(context=context)

    expected = {n: (Parameter.Type.from_parameter_value(DEFAULTS[n]), v) for n, v in yaml_params.items()}
    for ns in ("/", "/robot1", "/a/b"):
        assert overrides("mt_policy_server", ["--params-file", str(CONFIG), "-r", f"__ns:={ns}"]) == expected, ns
    assert overrides("other_node", ["--params-file", str(CONFIG)]) == {}

    # What launch_ros does with the launch arguments: a `/**` file after params_file; later files win.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"/**": {"ros__parameters": {"model": "/m", "task": "", "provider": "cpu"}}}, f)
        f.flush()
        got = overrides("mt_policy_server", ["--params-file", str(CONFIG), "--params-file", f.name,
                                             "-r", "__ns:=/robot1"])
    assert got["provider"] == (Parameter.Type.STRING, "cpu")
    assert got["model"] == (Parameter.Type.STRING, "/m") and got["task"] == (Parameter.Type.STRING, "")
