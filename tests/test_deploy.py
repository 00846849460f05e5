"""cluster.yaml passes Ray's own cluster-config validation; the deploy/ manifests parse and agree."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from ray_jobs import refresh

REPO = Path(__file__).resolve().parent.parent


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does before it contacts AWS: merge Ray's AWS defaults, then validate the schema.
    config = prepare_config(load("cluster.yaml"))
    validate_config(config)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu_types and all(t["max_workers"] > t["min_workers"] for t in gpu_types)
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu_types)
    assert sum(t["max_workers"] for n, t in types.items() if n != config["head_node_type"]) <= config["max_workers"]
    assert not config["provider"]["cache_stopped_nodes"]  # spot instances cannot be stopped
    assert any("pip install" in c and "musicray" in c for c in config["setup_commands"])
    assert config["file_mounts"] == {"~/musicray": "."}


def test_refresh_is_scheduled_on_kuberay():
    cron = load("deploy/refresh-raycronjob.yaml")
    assert (cron["apiVersion"], cron["kind"]) == ("ray.io/v1", "RayCronJob")
    assert len(cron["spec"]["schedule"].split()) == 5
    job = cron["spec"]["jobTemplate"]
    assert job["entrypoint"].split()[:3] == ["python", "-m", "ray_jobs.refresh"]
    refresh.parse_args(job["entrypoint"].split()[3:])  # the arguments are the job's own
    assert job["shutdownAfterJobFinishes"] is True
    cluster = job["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpus = [g for g in cluster["workerGroupSpecs"]
            if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpus and all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in cluster["workerGroupSpecs"])


def test_rayservice_carries_the_serve_config():
    service = load("deploy/rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert load("serve_config.yaml")["applications"] == serve["applications"]  # the two must not drift


def test_serve_config_passes_ray_validation_and_builds_the_apps():
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(load("serve_config.yaml"))  # what `serve deploy` checks first
    apps = {app.name: app for app in config.applications}
    assert {name: app.route_prefix for name, app in apps.items()} == {"recommend": "/", "generate": "/generate"}
    for app in apps.values():
        module, _, name = app.import_path.partition(":")
        builder = getattr(__import__(module, fromlist=[name]), name)
        built = call_user_app_builder_with_args_if_necessary(builder, app.args)  # as the cluster imports it
        for deployment in app.deployments:
            assert deployment.name == built._bound_deployment.name
            assert 0 < deployment.ray_actor_options.num_gpus <= 1  # fractional GPU replicas
            scaling = deployment.autoscaling_config
            assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"] and scaling["target_ongoing_requests"] > 0
            assert deployment.health_check_period_s > 0 and "poll_seconds" in deployment.user_config


def test_crontab_submits_the_refresh_job():
    lines = [l for l in (REPO / "deploy/crontab").read_text().splitlines() if l.strip() and not l.startswith("#")]
    jobs = [l for l in lines if "=" not in l.split()[0]]
    assert len(jobs) == 1
    fields = jobs[0].split(None, 5)
    assert len(fields) == 6 and all(f.replace("*", "0").replace("/", "").isdigit() for f in fields[:5])
    command = shlex.split(fields[5])
    job = command[command.index("--") + 1: command.index(">>")]
    assert "submit" in command and job[:3] == ["python", "-m", "ray_jobs.refresh"]
    refresh.parse_args([a.replace("$CATALOG", "s3://b/a/").replace("$ROOT", "s3://b/w") for a in job[3:]])


def test_every_place_serve_starts_uses_the_haproxy_ingress():
    from ray_jobs.serve import INGRESS_ENV

    settings = [f"{name}={value}" for name, value in INGRESS_ENV.items()]
    dockerfile = [line.split()[1:] for line in (REPO / "deploy/Dockerfile").read_text().splitlines()
                  if line.startswith("ENV ")]
    assert any(set(settings) <= set(words) for words in dockerfile)  # KubeRay's head and workers
    cluster = load("cluster.yaml")
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key]
              if "ray start" in c]
    assert len(starts) == 2 and all(set(settings) <= set(shlex.split(c.split(";")[-1])) for c in starts)
