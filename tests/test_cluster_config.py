"""ray_cluster.yaml (cloud provider) and its commented local-provider variant pass Ray's own
autoscaler schema and the cluster launcher's preparation of a config; the KubeRay manifest
is a RayCluster with the fields its CRD requires."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).parent.parent
CLUSTER = ROOT / "ray_cluster.yaml"
KUBERAY = ROOT / "config" / "kuberay-raycluster.yaml"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
LOCAL = re.compile(r"^# --- begin local provider ---\n(.*?)^# --- end local provider ---",
                   re.S | re.M)


def cloud_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CLUSTER.read_text())
    return config


def local_config() -> dict[str, Any]:
    """The commented variant, uncommented the way its header says: drop the leading "# "."""
    match = LOCAL.search(CLUSTER.read_text())
    assert match, "the local-provider block is missing from ray_cluster.yaml"
    lines = match.group(1).splitlines(keepends=True)
    assert all(line.startswith(("# ", "#\n")) for line in lines)
    config: dict[str, Any] = yaml.safe_load("".join(line[2:] for line in lines))
    return config


def launcher_accepts(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does with a config before it starts anything: the schema, then the
    provider's defaults and checks."""
    jsonschema.validate(config, SCHEMA)
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def test_cloud_cluster_passes_rays_schema_with_head_workers_and_bounds() -> None:
    config = cloud_config()
    prepared = launcher_accepts(config)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = config["head_node_type"]
    workers = [t for t in types if t != head]
    assert head in types and workers
    for name in workers:
        assert 0 < types[name]["min_workers"] <= types[name]["max_workers"]
        assert types[name]["max_workers"] <= config["max_workers"]
    assert prepared["available_node_types"][head]["max_workers"] == 0
    # The hub is installed on every node, and every node runs a gateway on the cluster.
    assert any("pip install" in c and "switchboard" in c for c in config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        commands = " ".join(config[key])
        assert "ray start" in commands and "hub serve" in commands, key
        assert "RAY_ADDRESS=auto" in commands and "RAY_AUTH_MODE=token" in commands, key
    assert "--head" in " ".join(config["head_start_ray_commands"])


def test_local_variant_passes_rays_schema_and_the_local_provider() -> None:
    config = local_config()
    prepared = launcher_accepts(config)
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert "available_node_types" not in config
    # The local provider supplies its single node type, sized by the machines listed.
    [node_type] = prepared["available_node_types"].values()
    assert node_type["max_workers"] == len(config["provider"]["worker_ips"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "hub serve" in " ".join(config[key]), key


def test_local_provider_refuses_node_types_so_the_variant_keeps_them_out() -> None:
    config = local_config()
    config["available_node_types"] = cloud_config()["available_node_types"]
    config["head_node_type"] = cloud_config()["head_node_type"]
    jsonschema.validate(config, SCHEMA)  # the schema alone allows it...
    with pytest.raises(Exception, match="available_node_types"):
        prepare_config(config)  # ...the local provider does not


def test_schema_check_catches_a_misspelt_field() -> None:
    config = cloud_config()
    config["max_worker"] = config.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(config, SCHEMA)


def test_kuberay_manifest_is_a_raycluster_with_the_crds_required_fields() -> None:
    docs = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    [cluster] = [d for d in docs if d["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["name"]
    spec = cluster["spec"]
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert head["template"]["spec"]["containers"][0]["name"] == "ray-head"
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = group["template"]["spec"]["containers"]
        assert all(c["name"] and c["image"] for c in containers)
        gateway = [c for c in containers if "hub serve" in " ".join(c.get("args", []))]
        assert gateway, "every worker pod runs a gateway"
        env = {e["name"]: e.get("value") for e in gateway[0]["env"]}
        assert env["RAY_ADDRESS"] == "auto" and env["RAY_AUTH_MODE"] == "token"
        assert gateway[0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["gcsFaultToleranceOptions"]["redisAddress"]
    services = [d for d in docs if d["kind"] == "Service"]
    assert services and services[0]["spec"]["selector"].items() <= \
        groups[0]["template"]["metadata"]["labels"].items()
