"""The cluster files: KubeRay manifests and image build file (k8s/), Ray
cluster-launcher configs (cluster/).

No cluster is started here. The launcher configs are checked against the JSON schema
that ships inside the installed Ray wheel, after the same default-filling `ray up`
does; the KubeRay manifests against the fields and limits KubeRay's own validation
enforces (ray-operator/controllers/ray/utils/validation.go and constant.go, KubeRay
v1.5); and every file against the versions pinned in pyproject.toml, so that bumping
Ray or torch in one place and not the others fails here instead of on a cluster.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CLUSTER = REPO / "cluster"
YAML_FILES = sorted([*K8S.glob("*.yaml"), *CLUSTER.glob("*.yaml")])
LAUNCHER_CONFIGS = sorted(CLUSTER.glob("*.yaml"))

# The Python of the Ray images (the `py311` of their tags).
IMAGE_PYTHON = "3.11"

# KubeRay's limits (utils/constant.go): service names are the cluster name plus up to
# 10 characters and must fit 63; a RayJob's cluster name is the job name plus 6.
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RAYJOB_SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


# ---- the pins ---------------------------------------------------------------------------


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pinned(name: str) -> str:
    """The exact version pyproject.toml pins `name` to (`name==X`, extras allowed)."""
    for line in _pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.name == name:
            pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            assert len(pins) == 1, f"pyproject.toml must pin {name} with ==, found {line!r}"
            return pins[0]
    raise AssertionError(f"pyproject.toml does not depend on {name}")


RAY_VERSION = _pinned("ray")
TORCH_VERSION = _pinned("torch")
PACKAGE_VERSION = _pyproject()["project"]["version"]
PY_TAG = "py" + IMAGE_PYTHON.replace(".", "")
RAY_IMAGE = f"rayproject/ray:{RAY_VERSION}-{PY_TAG}-gpu"
TFNAS_IMAGE = f"tfnas-ray:{PACKAGE_VERSION}-ray{RAY_VERSION}-{PY_TAG}-gpu"


def _load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _one(path: Path) -> dict:
    docs = _load(path)
    assert len(docs) == 1, f"{path.name}: expected one YAML document, found {len(docs)}"
    return docs[0]


def test_the_cluster_files_exist():
    names = {p.relative_to(REPO).as_posix() for p in YAML_FILES}
    assert names >= {
        "cluster/aws-gpu.yaml",
        "cluster/gcp-gpu.yaml",
        "cluster/onprem.yaml",
        "k8s/pvc.yaml",
        "k8s/raycluster.yaml",
        "k8s/rayjob.yaml",
    }
    assert (K8S / "Dockerfile").is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_yaml_parses_to_mappings(path):
    docs = _load(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs)


def test_image_python_satisfies_requires_python():
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert IMAGE_PYTHON in requires, f"images run Python {IMAGE_PYTHON}, pyproject requires {requires}"


# ---- KubeRay manifests ------------------------------------------------------------------


def _pod_templates(cluster_spec: dict) -> list[tuple[str, dict]]:
    templates = [("head", cluster_spec.get("headGroupSpec", {}).get("template", {}))]
    for group in cluster_spec.get("workerGroupSpecs") or []:
        templates.append((f"worker group {group.get('groupName')!r}", group.get("template", {})))
    return templates


def kuberay_problems(manifest: dict) -> list[str]:
    """What KubeRay (or this project's conventions for it) would object to in a
    RayCluster or RayJob manifest; [] when there is nothing.

    KubeRay's own checks: apiVersion/kind, a DNS-1035 name within its length limit,
    a head group with rayStartParams and a container image, worker groups with unique
    names, 0 <= minReplicas <= replicas <= maxReplicas, rayStartParams of strings.
    This project's: the Ray version of pyproject.toml, in-tree autoscaling, token
    auth, a head with no CPUs for work, GPU workers starting from zero, a
    memory-backed /dev/shm and the shared results volume on every pod, usage stats
    off; for a RayJob, a `tfnas` entrypoint and a cluster torn down after the job.
    """
    problems: list[str] = []
    kind = manifest.get("kind")
    if manifest.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion is {manifest.get('apiVersion')!r}, not 'ray.io/v1'")
    if kind not in ("RayCluster", "RayJob"):
        return problems + [f"kind is {kind!r}, not RayCluster or RayJob"]
    name = (manifest.get("metadata") or {}).get("name") or ""
    max_name = MAX_RAYJOB_NAME if kind == "RayJob" else MAX_RAYCLUSTER_NAME
    if not DNS_1035_LABEL.match(name) or len(name) > max_name:
        problems.append(f"metadata.name {name!r} is not a DNS-1035 label of at most {max_name} characters")
    spec = manifest.get("spec") or {}

    if kind == "RayJob":
        entrypoint = spec.get("entrypoint") or ""
        if not entrypoint.startswith("tfnas "):
            problems.append(f"spec.entrypoint {entrypoint!r} does not start with 'tfnas '")
        if spec.get("shutdownAfterJobFinishes") is not True:
            problems.append("spec.shutdownAfterJobFinishes is not true: the GPU cluster would outlive the job")
        if spec.get("submissionMode", "K8sJobMode") not in RAYJOB_SUBMISSION_MODES:
            problems.append(f"spec.submissionMode {spec.get('submissionMode')!r} is not one of {sorted(RAYJOB_SUBMISSION_MODES)}")
        ttl = spec.get("ttlSecondsAfterFinished", 0)
        if not isinstance(ttl, int) or ttl < 0:
            problems.append(f"spec.ttlSecondsAfterFinished {ttl!r} is not a non-negative integer")
        if "rayClusterSpec" not in spec:
            return problems + ["spec.rayClusterSpec is missing"]
        spec, where = spec["rayClusterSpec"], "spec.rayClusterSpec"
    else:
        where = "spec"

    if spec.get("rayVersion") != RAY_VERSION:
        problems.append(f"{where}.rayVersion {spec.get('rayVersion')!r} != pyproject's Ray {RAY_VERSION!r}")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(f"{where}.enableInTreeAutoscaling is not true")
    if (spec.get("authOptions") or {}).get("mode") != "token":
        problems.append(f"{where}.authOptions.mode is not 'token'")

    head = spec.get("headGroupSpec") or {}
    head_params = head.get("rayStartParams")
    if not isinstance(head_params, dict):
        problems.append(f"{where}.headGroupSpec.rayStartParams is missing")
    elif head_params.get("num-cpus") != "0":
        problems.append(f"{where}.headGroupSpec.rayStartParams.num-cpus is {head_params.get('num-cpus')!r}, not '0'")

    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        problems.append(f"{where}.workerGroupSpecs is missing or empty")
        groups = []
    names = [group.get("groupName") for group in groups]
    if len(set(names)) != len(names):
        problems.append(f"worker group names {names} are not unique")
    for group in groups:
        label = f"worker group {group.get('groupName')!r}"
        if not group.get("groupName"):
            problems.append(f"{label}: groupName is missing")
        counts = {key: group.get(key) for key in ("replicas", "minReplicas", "maxReplicas")}
        if not all(isinstance(value, int) and value >= 0 for value in counts.values()):
            problems.append(f"{label}: replicas/minReplicas/maxReplicas {counts} are not all integers >= 0")
        elif not counts["minReplicas"] <= counts["replicas"] <= counts["maxReplicas"] or counts["maxReplicas"] < 1:
            problems.append(f"{label}: needs 0 <= minReplicas <= replicas <= maxReplicas, maxReplicas >= 1; got {counts}")
        elif counts["minReplicas"] != 0:
            problems.append(f"{label}: minReplicas is {counts['minReplicas']}, not 0: idle GPUs would be kept")
        if not isinstance(group.get("rayStartParams"), dict):
            problems.append(f"{label}: rayStartParams is missing")
        containers = (group.get("template") or {}).get("spec", {}).get("containers") or [{}]
        limits = (containers[0].get("resources") or {}).get("limits") or {}
        if str(limits.get("nvidia.com/gpu")) != "1":
            problems.append(f"{label}: limits nvidia.com/gpu is {limits.get('nvidia.com/gpu')!r}, not 1")

    params = [(f"{where}.headGroupSpec", head_params)] + [
        (f"worker group {g.get('groupName')!r}", g.get("rayStartParams")) for g in groups
    ]
    for label, start_params in params:
        if isinstance(start_params, dict) and not all(isinstance(v, str) for v in start_params.values()):
            problems.append(f"{label}: rayStartParams values must be strings, got {start_params}")

    for label, template in _pod_templates(spec):
        pod = (template or {}).get("spec") or {}
        containers = pod.get("containers") or []
        if not containers or not containers[0].get("image"):
            problems.append(f"{label}: template.spec.containers[0].image is missing")
            continue
        container = containers[0]
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        mounts = {m.get("mountPath"): m.get("name") for m in container.get("volumeMounts") or []}
        shm = volumes.get(mounts.get("/dev/shm"), {})
        if (shm.get("emptyDir") or {}).get("medium") != "Memory":
            problems.append(f"{label}: /dev/shm is not a memory-backed emptyDir")
        results = volumes.get(mounts.get("/results"), {})
        if (results.get("persistentVolumeClaim") or {}).get("claimName") != "tfnas-results":
            problems.append(f"{label}: /results is not the tfnas-results claim")
        env = {e.get("name"): e.get("value") for e in container.get("env") or []}
        if env.get("RAY_USAGE_STATS_ENABLED") != "0":
            problems.append(f"{label}: env RAY_USAGE_STATS_ENABLED is not '0'")
        resources = container.get("resources") or {}
        if resources.get("requests") != resources.get("limits"):
            problems.append(f"{label}: resource requests differ from limits")
    return problems


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifest_has_what_kuberay_requires(name):
    manifest = _one(K8S / name)
    assert manifest["kind"] == {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob"}[name]
    assert kuberay_problems(manifest) == []


def test_kuberay_check_finds_problems():
    """The check above can fail: each broken copy is reported, naming the field."""
    job = _one(K8S / "rayjob.yaml")
    cases = {
        "does not start with 'tfnas '": lambda m: m["spec"].update(entrypoint="python run.py"),
        "shutdownAfterJobFinishes is not true": lambda m: m["spec"].pop("shutdownAfterJobFinishes"),
        "spec.rayClusterSpec is missing": lambda m: m["spec"].pop("rayClusterSpec"),
        "rayVersion '2.0.0'": lambda m: m["spec"]["rayClusterSpec"].update(rayVersion="2.0.0"),
        "/dev/shm is not a memory-backed emptyDir": lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0][
            "template"]["spec"]["volumes"][0]["emptyDir"].pop("medium"),
        "limits nvidia.com/gpu is None": lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0][
            "template"]["spec"]["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"),
        "needs 0 <= minReplicas <= replicas <= maxReplicas": lambda m: m["spec"]["rayClusterSpec"][
            "workerGroupSpecs"][0].update(minReplicas=2),
        "num-cpus is None": lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].clear(),
        "is not a DNS-1035 label": lambda m: m["metadata"].update(name="x" * (MAX_RAYJOB_NAME + 1)),
        "apiVersion is 'ray.io/v1alpha1'": lambda m: m.update(apiVersion="ray.io/v1alpha1"),
    }
    for expected, breaks in cases.items():
        broken = copy.deepcopy(job)
        breaks(broken)
        problems = kuberay_problems(broken)
        assert any(expected in problem for problem in problems), (expected, problems)


def test_rayjob_entrypoint_is_a_command_the_cli_accepts():
    """The RayJob runs a real tfnas command: its options parse, its benchmark exists."""
    import typer.main

    from tfnas_ray import cli
    from tfnas_ray.benchmarks import load_benchmarks

    args = shlex.split(_one(K8S / "rayjob.yaml")["spec"]["entrypoint"])
    assert args[:3] == ["tfnas", "reproduce", "nb-nlp-ptb"]
    group = typer.main.get_command(cli.app)
    command = group.get_command(group.make_context("tfnas", args[1:]), args[1])
    assert command is not None, f"`tfnas {args[1]}` is not a command"
    params = command.make_context(args[1], args[2:]).params
    assert params["benchmark"] in load_benchmarks()
    assert params["address"] == "auto"
    assert str(params["out"]).startswith("/results/")
    # Scoring starts from zero GPU pods: GPU scorers that wait for the autoscaler.
    assert params["device"] == "gpu" and params["workers"] >= 1 and params["wait_for_gpus"] > 0
    group = _one(K8S / "rayjob.yaml")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == 0
    assert params["workers"] <= group["maxReplicas"]


def test_pvc_is_the_shared_results_volume():
    pvc = _one(K8S / "pvc.yaml")
    assert pvc["apiVersion"] == "v1" and pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["metadata"]["name"] == "tfnas-results"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert re.fullmatch(r"\d+(Gi|Ti)", pvc["spec"]["resources"]["requests"]["storage"])


def test_manifests_run_the_image_the_dockerfile_builds():
    images = set()
    for name in ("raycluster.yaml", "rayjob.yaml"):
        manifest = _one(K8S / name)
        spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
        images |= {t["spec"]["containers"][0]["image"] for _, t in _pod_templates(spec)}
    assert images == {TFNAS_IMAGE}
    # The tag a user copies from the Dockerfile's build command, or from the guide, is
    # the one deployed; the guide's base image is the Dockerfile's.
    assert f"-t {TFNAS_IMAGE} ." in (K8S / "Dockerfile").read_text()
    guide = (REPO / "docs" / "cluster.md").read_text()
    assert set(re.findall(r"(?<![\w-])tfnas-ray:[\w.-]+", guide)) == {TFNAS_IMAGE}
    assert set(re.findall(r"rayproject/ray:[\w.-]+", guide)) == {RAY_IMAGE}


# ---- the image build file ----------------------------------------------------------------


def test_dockerfile_pins_agree_with_pyproject():
    text = (K8S / "Dockerfile").read_text()
    from_lines = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert from_lines == [RAY_IMAGE]
    assert re.search(r"^ENV\s+RAY_USAGE_STATS_ENABLED=0\b", text, flags=re.M)
    # A CUDA build of exactly the pinned torch, from PyTorch's index.
    torch_pins = re.findall(r'"torch==([^"]+)"', text)
    assert torch_pins == [TORCH_VERSION]
    assert re.search(r'--index-url "?https://download\.pytorch\.org/whl/\$\{TORCH_CUDA\}', text)
    assert re.search(r"^ARG TORCH_CUDA=cu\d{3}$", text, flags=re.M)
    assert "pip install --no-deps ." in text
    assert f"ray.__version__ == '{RAY_VERSION}'" in text


def test_dockerfile_copies_files_that_exist_and_are_not_ignored():
    text = (K8S / "Dockerfile").read_text()
    sources = [
        src
        for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.M)
        for src in [w for w in line.split() if not w.startswith("--")][:-1]
    ]
    assert sources == ["pyproject.toml", "README.md", "tfnas_ray"]
    ignored = [
        line.strip()
        for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for src in sources:
        assert (REPO / src).exists(), f"the Dockerfile copies {src}, which the repository lacks"
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), f"{src} is in Dockerfile.dockerignore"


def test_dockerfile_installs_every_other_dependency_of_pyproject():
    """Run the Dockerfile's own requirements step: pyproject's dependencies minus torch."""
    text = (K8S / "Dockerfile").read_text()
    step = re.search(r'^RUN (python -c ".*?") > /tmp/requirements\.txt', text, flags=re.M)
    assert step, "the Dockerfile no longer derives its requirements from pyproject.toml"
    shell_command = step.group(1).replace("python ", f"{shlex.quote(sys.executable)} ", 1)
    out = subprocess.run(["sh", "-c", shell_command], cwd=REPO, capture_output=True, text=True, check=True).stdout
    expected = [d for d in _pyproject()["project"]["dependencies"] if Requirement(d).name != "torch"]
    assert out.splitlines() == expected


# ---- Ray cluster-launcher configs --------------------------------------------------------


def _validate_launcher_config(config: dict) -> dict:
    """What `ray up` does before touching a cloud: fill in the provider's defaults,
    then validate against ray/autoscaler/ray-schema.json of the installed Ray."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_validates_against_rays_schema(path):
    import json

    import jsonschema
    import ray.autoscaler

    config = _one(path)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # as written
    _validate_launcher_config(config)  # as `ray up` sees it


def test_schema_validation_can_fail():
    config = _one(CLUSTER / "aws-gpu.yaml")
    import jsonschema

    with pytest.raises(jsonschema.ValidationError, match="bogus_field"):
        _validate_launcher_config({**config, "bogus_field": 1})
    broken = copy.deepcopy(config)
    broken["available_node_types"]["ray.worker.gpu"]["resources"] = {"GPU": "one"}
    with pytest.raises(jsonschema.ValidationError):
        _validate_launcher_config(broken)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_runs_the_pinned_ray_and_this_package(path):
    config = _one(path)
    assert config["docker"]["image"] == RAY_IMAGE
    assert "--env RAY_USAGE_STATS_ENABLED=0" in config["docker"]["run_options"]
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["docker"]["worker_run_options"] == ["--gpus all"]
    # The checkout is copied to every node and installed from there, with its token.
    assert config["file_mounts"] == {"~/tfnas-ray": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    assert ".venv" in config["rsync_exclude"] and ".git" in config["rsync_exclude"]
    setup = "\n".join(config["setup_commands"])
    assert re.findall(r'"torch==([^"]+)"', setup) == [TORCH_VERSION]
    assert re.findall(r'"ray\[[a-z,]+\]==([^"]+)"', setup) == [RAY_VERSION]
    assert re.search(r"pip install .*~/tfnas-ray$", setup, flags=re.M)
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "ray start --head --port=6379 --dashboard-host=0.0.0.0" in head
    assert "--num-cpus=0" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker


@pytest.mark.parametrize("name, provider", [("aws-gpu.yaml", "aws"), ("gcp-gpu.yaml", "gcp")])
def test_cloud_configs_autoscale_single_gpu_workers(name, provider):
    config = _one(CLUSTER / name)
    assert config["provider"]["type"] == provider
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert len(workers) == 1
    worker = workers[0]
    assert worker["resources"]["GPU"] == 1
    assert worker["min_workers"] == 0 and 1 <= worker["max_workers"] <= config["max_workers"]
    node = worker["node_config"]
    if provider == "aws":
        assert re.fullmatch(r"g[4-6]\w*\.\w+", node["InstanceType"])
    else:
        assert [a["acceleratorType"] for a in node["guestAccelerators"]] in (["nvidia-l4"], ["nvidia-tesla-t4"])
        assert node["scheduling"]["onHostMaintenance"] == "TERMINATE"


def test_onprem_config_marks_what_the_user_fills_in():
    config = _one(CLUSTER / "onprem.yaml")
    provider = config["provider"]
    assert provider["type"] == "local"
    placeholders = [provider["head_ip"], *provider["worker_ips"], config["auth"]["ssh_user"], config["auth"]["ssh_private_key"]]
    assert all(value.startswith("FILL-IN-") for value in placeholders), placeholders
    # The header's `grep -n FILL-IN` finds every one of them.
    text = (CLUSTER / "onprem.yaml").read_text()
    assert all(f": {v}" in text or f"- {v}" in text for v in placeholders)
    # The local provider builds its node types from the addresses; it rejects its own.
    assert "available_node_types" not in config
    prepared = _validate_launcher_config(config)
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == len(provider["worker_ips"])


# ---- pod security ---------------------------------------------------------------------------

# The rayproject/ray images run as user `ray`: uid 1000, primary group `users` (100)
# (`docker run rayproject/ray:2.60.0-py311-gpu id` prints uid=1000(ray) gid=100(users)).
IMAGE_UID, IMAGE_GID = 1000, 100


def pod_security_problems(manifest: dict) -> list[str]:
    """What a RayCluster / RayJob manifest leaves open: every pod must run as the image's
    non-root user under the RuntimeDefault seccomp profile, every container without
    privilege escalation, and worker pods without a service-account token (only the
    head's autoscaler talks to the Kubernetes API). [] when there is nothing."""
    spec = manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]
    problems = []
    for where, template in _pod_templates(spec):
        pod = template.get("spec") or {}
        context = pod.get("securityContext") or {}
        if context.get("runAsNonRoot") is not True:
            problems.append(f"{where}: securityContext.runAsNonRoot is not true")
        if context.get("runAsUser") != IMAGE_UID or context.get("runAsGroup") != IMAGE_GID:
            problems.append(f"{where}: runs as {context.get('runAsUser')}:{context.get('runAsGroup')}, not the image's {IMAGE_UID}:{IMAGE_GID}")
        if (context.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        if where != "head" and pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        for container in pod.get("containers") or []:
            if (container.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: container {container.get('name')!r} allows privilege escalation")
    autoscaler = (spec.get("autoscalerOptions") or {}).get("securityContext") or {}
    if spec.get("enableInTreeAutoscaling") and autoscaler.get("allowPrivilegeEscalation") is not False:
        problems.append("autoscaler sidecar allows privilege escalation")
    return problems


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_pods_run_unprivileged_as_the_images_user(name):
    assert pod_security_problems(_one(K8S / name)) == []


def test_pod_security_check_finds_problems():
    job = _one(K8S / "rayjob.yaml")
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["automountServiceAccountToken"] = True
    worker["securityContext"]["runAsUser"] = 0
    worker["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    del job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["securityContext"]["seccompProfile"]
    assert pod_security_problems(job) == [
        "head: seccompProfile is not RuntimeDefault",
        "worker group 'gpu': runs as 0:100, not the image's 1000:100",
        "worker group 'gpu': automountServiceAccountToken is not false",
        "worker group 'gpu': container 'ray-worker' allows privilege escalation",
    ]


def test_the_image_keeps_its_non_root_user():
    # The manifests' runAsUser is the base image's `ray`; a `USER` line would change it.
    users = re.findall(r"^USER\s+(\S+)", (K8S / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert users in ([], ["ray"]), users
