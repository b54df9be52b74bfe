"""docker/ checked without Docker or Kubernetes: the compose files, the image, the entrypoint's guards and
the KubeRay manifests — every reference names something defined, ports stay on 127.0.0.1 unless the
user opts in, no secret is written down or put on a command line, and the sweep files the docs and the
RayJob name exist in the image and validate. The entrypoint runs for real (bash, dry-run mode)."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from satune.specs import load_sweep

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"
CLUSTER_MD = ROOT / "docs" / "cluster.md"
OVERLAYS = ["compose.gpu.yaml", "compose.auth.yaml"]
K8S = sorted((DOCKER / "k8s").glob("*.yaml"))
SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET|PASSWD|CREDENTIAL", re.I)
GOOD = "0123456789abcdef0123456789abcdef"  # a stand-in for `openssl rand -hex 16`


# --- helpers ------------------------------------------------------------------------------------------


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def merge(base, over, key: str = ""):
    """Compose's merge of an override file, as far as these files need: mappings merge, the lists
    compose merges by target (secrets, ports, volumes) are joined, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(over, list) and key in ("secrets", "ports", "volumes"):
        return base + over
    return over


def project(*overlays: str) -> dict:
    doc = load_yaml(DOCKER / "compose.yaml")
    for name in overlays:
        doc = merge(doc, load_yaml(DOCKER / name))
    return doc


PROJECTS = {"compose.yaml": project(), **{f"compose.yaml + {o}": project(o) for o in OVERLAYS}}


def interpolate(text: str, env: dict[str, str]) -> str:
    """${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message} as compose resolves them."""

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        value = env.get(name)
        if op in (":-", ":?"):
            if not value:
                assert op == ":-", f"${{{name}}} is required"
                return arg
            return value
        if op == "-":
            return arg if value is None else value
        return value or ""

    return re.sub(r"\$\{(\w+)(?:(:-|-|:\?)([^}]*))?\}", one, text)


def example_env() -> dict[str, str]:
    values = {}
    for line in (DOCKER / "example.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def run_entrypoint(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, secrets: dict[str, str] | None = None
):
    """The entrypoint under bash, dry-run: secrets are files in tmp_path/secrets, HOME is tmp_path/home."""
    sdir, home = tmp_path / "secrets", tmp_path / "home"
    sdir.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    for name, value in (secrets or {}).items():
        (sdir / name).write_text(value + "\n")
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "SATUNE_SECRETS_DIR": str(sdir),
        "SATUNE_ENTRYPOINT_DRY_RUN": "1",
        "SATUNE_DOCKER_DIR": str(DOCKER),
    }
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=60
    )


RAY_ENV = {"RAY_AUTH_MODE": "token"}


def ray_env(tmp_path: Path) -> dict[str, str]:
    return {**RAY_ENV, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "secrets" / "ray_auth_token")}


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY in docker/Dockerfile, destinations made absolute."""
    workdir, copies = PurePosixPath("/"), []
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "WORKDIR":
            workdir = workdir / words[1]
        if words[0] == "COPY":
            args = [w for w in words[1:] if not w.startswith("--")]
            copies.append((args[:-1], str(workdir / args[-1])))
    return copies


def repo_path_in_image(image_path: str) -> Path | None:
    """The repository file that the image holds at `image_path` (through the Dockerfile's COPYs)."""
    for sources, dest in reversed(dockerfile_copies()):  # a later COPY overlays an earlier one
        for src in sources:
            dest_of_src = dest if len(sources) == 1 else str(PurePosixPath(dest) / PurePosixPath(src).name)
            if image_path == dest_of_src:
                return ROOT / src
            if image_path.startswith(dest_of_src.rstrip("/") + "/") and (ROOT / src).is_dir():
                return ROOT / src / image_path[len(dest_of_src.rstrip("/")) + 1 :]
    return None


def k8s_docs() -> list[dict]:
    return [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]


def walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,), v
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


# --- compose ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["compose.yaml", *OVERLAYS])
def test_compose_files_parse(name):
    doc = load_yaml(DOCKER / name)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), f"{name}: no services"
    assert "version" not in doc, f"{name}: `version` is obsolete in Compose v2"


@pytest.mark.parametrize("name", list(PROJECTS))
def test_compose_references_are_defined(name):
    doc = PROJECTS[name]
    services = doc["services"]
    volumes, secrets, networks = (set(doc.get(k) or {}) for k in ("volumes", "secrets", "networks"))
    problems = []
    for sname, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problems.append(f"{sname}: depends_on {dep}, which is not a service")
        for vol in svc.get("volumes") or []:
            source = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if source.startswith((".", "/")):
                if not (DOCKER / source).exists():
                    problems.append(f"{sname}: bind-mounts {source}, which is not in docker/")
            elif source not in volumes:
                problems.append(f"{sname}: mounts volume {source}, which is not defined")
        for sec in svc.get("secrets") or []:
            source = sec["source"] if isinstance(sec, dict) else sec
            if source not in secrets:
                problems.append(f"{sname}: uses secret {source}, which is not defined")
        nets = svc.get("networks") or []
        for net in nets if isinstance(nets, list) else nets.keys():
            if net not in networks:
                problems.append(f"{sname}: joins network {net}, which is not defined")
        env_files = svc.get("env_file") or []
        for ef in [env_files] if isinstance(env_files, str) else env_files:
            path = ef["path"] if isinstance(ef, dict) else ef
            if not (DOCKER / path).exists():
                problems.append(f"{sname}: env_file {path} is not in docker/")
    used_volumes = {
        (v["source"] if isinstance(v, dict) else v.split(":")[0])
        for s in services.values()
        for v in s.get("volumes") or []
    }
    used_secrets = {
        (x["source"] if isinstance(x, dict) else x) for s in services.values() for x in s.get("secrets") or []
    }
    problems += [f"volume {v} is defined but never mounted" for v in volumes - used_volumes]
    problems += [f"secret {s} is defined but no service uses it" for s in secrets - used_secrets]
    assert not problems, "\n".join(problems)


def test_every_secret_comes_from_the_env_file_and_the_example_lists_it():
    example = example_env()
    for name, doc in PROJECTS.items():
        for sname, spec in (doc.get("secrets") or {}).items():
            assert set(spec) == {"environment"}, f"{name}: secret {sname} must come from docker/.env (environment:)"
            assert spec["environment"] in example, f"docker/example.env does not list {spec['environment']}"
            # the entrypoint names the variable from the file name: ray_auth_token -> RAY_AUTH_TOKEN
            assert spec["environment"] == sname.upper(), f"secret {sname} should come from {sname.upper()}"


def test_published_ports_bind_to_loopback_unless_the_user_opts_in():
    opt_in = {"SATUNE_BIND_ADDRESS": "10.1.2.3"}
    for name, doc in PROJECTS.items():
        for sname, svc in doc["services"].items():
            for port in svc.get("ports") or []:
                assert isinstance(port, str), f"{sname}: write ports as HOST_IP:HOST_PORT:CONTAINER_PORT"
                default = interpolate(port, {})
                assert default.count(":") == 2 and default.startswith("127.0.0.1:"), (
                    f"{name}: {sname} publishes {port!r} beyond 127.0.0.1 by default"
                )
                assert interpolate(port, opt_in).startswith("10.1.2.3:"), (
                    f"{sname}: {port!r} ignores the opt-in SATUNE_BIND_ADDRESS"
                )
        assert not doc["services"]["postgres"].get("ports"), "PostgreSQL must not be published"
        assert not doc["services"]["prometheus"].get("ports"), "Prometheus has no login: do not publish it"


def test_long_running_services_have_healthchecks_and_restart_policies():
    for sname, svc in project()["services"].items():
        if sname == "preflight":
            assert svc.get("restart") == "no", "preflight runs once"
            continue
        assert svc.get("restart") in ("unless-stopped", "always"), f"{sname}: no restart policy"
        assert svc.get("healthcheck", {}).get("test"), f"{sname}: no healthcheck"


def test_everything_waits_for_the_preflight_check():
    services = project()["services"]
    waits = {
        n
        for n, s in services.items()
        if (s.get("depends_on") or {}).get("preflight", {}).get("condition") == "service_completed_successfully"
    }
    # the rest waits for one of those (ray-worker and grafana wait for the head)
    for sname, svc in services.items():
        if sname == "preflight" or sname in waits:
            continue
        assert set(svc.get("depends_on") or {}) & waits, f"{sname} starts without waiting for preflight"
    for name, doc in PROJECTS.items():  # with every overlay, preflight gets and checks every secret in use
        preflight = doc["services"]["preflight"]
        given = {s["source"] for s in preflight["secrets"]}
        used = {s["source"] for svc in doc["services"].values() for s in svc.get("secrets") or []}
        assert used <= given, f"{name}: preflight does not get {used - given}"
        checked = {secret for group in preflight["command"][1:] for secret in CHECKED_BY.get(group, ())}
        assert preflight["command"][0] == "check" and used <= checked, f"{name}: preflight skips {used - checked}"


def test_no_secret_values_in_compose_k8s_or_image_files():
    files = [
        DOCKER / "compose.yaml",
        *(DOCKER / o for o in OVERLAYS),
        DOCKER / "Dockerfile",
        *K8S,
        *(DOCKER / "mlflow").iterdir(),
        DOCKER / "prometheus" / "prometheus.yml",
    ]
    secret_vars = {spec["environment"] for doc in PROJECTS.values() for spec in (doc.get("secrets") or {}).values()}
    for path in files:
        text = re.sub(r"(^|\s)#.*", "", path.read_text())  # comments may say "replace change-me"
        assert "change-me" not in text.lower(), f"{path.name} holds a placeholder secret"
        for var in secret_vars:  # secret values only ever become files, never interpolated into a file
            assert not re.search(r"\$\{?" + var + r"\b", text), f"{path.name} interpolates the secret {var}"
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"{path.name} has a URL with user:password@"
    for name, doc in PROJECTS.items():
        for sname, svc in doc["services"].items():
            env = svc.get("environment") or {}
            assert isinstance(env, dict), f"{sname}: write environment as a mapping"
            for key, value in env.items():
                if SECRET_WORDS.search(key):
                    assert key.endswith(("_FILE", "_PATH")) and str(value).startswith("/run/secrets/"), (
                        f"{name}: {sname} sets {key} to a value; secrets are files under /run/secrets"
                    )
                    secret = str(value).removeprefix("/run/secrets/")
                    assert secret in {s["source"] for s in svc.get("secrets") or []}, (
                        f"{sname}: {key} names /run/secrets/{secret}, which the service does not get"
                    )
            assert "env_file" not in svc, f"{sname}: env_file would put docker/.env's secrets in its environment"


def test_mlflow_container_mounts_only_its_artifacts_and_tune_storage_stays_with_ray():
    services = project()["services"]
    mounts = {n: [str(v).split(":")[0] for v in s.get("volumes") or []] for n, s in services.items()}
    assert mounts["mlflow"] == ["mlflow-artifacts"], "the MLflow server (no login) mounts its artifacts alone"
    assert {n for n, m in mounts.items() if "shared" in m} == {"ray-head", "ray-worker"}, (
        "Tune's storage holds pickled state: only the Ray nodes mount it"
    )
    assert {n for n, m in mounts.items() if "mlflow-artifacts" in m} == {"mlflow"}
    for volume in services["grafana"]["volumes"]:
        if volume.startswith("ray-metrics:"):
            assert volume.endswith(":ro"), "Grafana reads the head's provisioning read-only"
    for volume in services["prometheus"]["volumes"]:
        if volume.startswith("./"):
            assert volume.endswith(":ro")


def test_ray_nodes_use_token_auth_from_a_secret_file():
    for name, doc in PROJECTS.items():
        for sname in ("ray-head", "ray-worker"):
            svc = doc["services"][sname]
            env = svc["environment"]
            assert env.get("RAY_AUTH_MODE") == "token", f"{name}: {sname} without token auth"
            assert "RAY_AUTH_TOKEN" not in env, f"{sname}: the token must be a file, not an environment value"
            assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_auth_token"
            assert svc["command"] == [sname], f"{sname}: the entrypoint's role starts Ray (and checks the token)"


def test_the_metrics_tab_is_wired_as_ray_reads_it():
    services = project()["services"]
    head = services["ray-head"]["environment"]
    assert head["RAY_PROMETHEUS_HOST"] == "http://prometheus:9090" and "prometheus" in services
    assert head["RAY_GRAFANA_HOST"] == "http://grafana:3000" and "grafana" in services
    assert interpolate(head["RAY_GRAFANA_IFRAME_HOST"], {}) == "http://127.0.0.1:3000"
    grafana = services["grafana"]["environment"]
    root = head["RAY_METRICS_OUTPUT_ROOT"]
    entrypoint = " ".join(services["grafana"]["entrypoint"])  # Ray's provisioning, with satune's provider added
    assert f"cp -R {root}/grafana/provisioning " in entrypoint  # where Ray 2.60 writes it
    assert grafana["GF_SECURITY_ALLOW_EMBEDDING"] == "true" and grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert f"{root}/grafana/provisioning/datasources/default.yml" in str(services["ray-head"]["healthcheck"]["test"])
    prom = load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    sd = prom["scrape_configs"][0]["dns_sd_configs"][0]
    assert set(sd["names"]) == {"ray-head", "ray-worker"} and sd["port"] == 8080


GRAFANA = DOCKER / "grafana"


def test_grafana_starts_from_rays_provisioning_with_satunes_dashboard_added(tmp_path):
    """The grafana service's entrypoint, run for real with its paths moved under tmp_path: Ray's data
    source and dashboard provider, and satune's provider, whose folder is where compose mounts
    docker/grafana/dashboards; then Grafana's own /run.sh, with the provisioning path in its environment."""
    grafana = project()["services"]["grafana"]
    (mount,) = [v.split(":")[1] for v in grafana["volumes"] if v.startswith("./grafana:")]
    assert f"./grafana:{mount}:ro" in grafana["volumes"]
    ray = tmp_path / "ray-metrics" / "grafana" / "provisioning"
    for sub in ("datasources", "dashboards"):
        (ray / sub).mkdir(parents=True)
        (ray / sub / "default.yml").write_text(f"ray's {sub}")
    run_sh = tmp_path / "run.sh"
    run_sh.write_text('#!/bin/sh\necho "grafana with $GF_PATHS_PROVISIONING"\n')
    run_sh.chmod(0o755)
    argv = [
        arg.replace("$$", "$")
        .replace("/ray-metrics", str(tmp_path / "ray-metrics"))
        .replace(mount, str(GRAFANA))
        .replace("/run.sh", str(run_sh))
        for arg in grafana["entrypoint"]
    ]
    target = tmp_path / "provisioning"
    (target / "stale").mkdir(parents=True)  # a restart starts afresh
    out = subprocess.run(
        argv, env={"PATH": os.environ["PATH"], "GF_PATHS_PROVISIONING": str(target)}, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"grafana with {target}", out.stderr
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*.yml")) == [
        "dashboards/default.yml",
        "dashboards/satune.yml",
        "datasources/default.yml",
    ]
    assert grafana["environment"]["GF_PATHS_PROVISIONING"].startswith("/tmp/")  # writable in the container
    (provider,) = load_yaml(target / "dashboards" / "satune.yml")["providers"]
    assert provider["options"]["path"] == f"{mount}/dashboards"
    assert sorted(p.name for p in (GRAFANA / "dashboards").iterdir()) == ["satune_trials.json"]


def test_the_satune_dashboard_plots_what_trials_export():
    """Every series it queries is a gauge satune.tune.metrics defines (renamed there, this fails),
    filtered and grouped only by that gauge's tags; one panel per trial for the epoch and the proxy."""
    import json

    from satune.tune import metrics

    board = json.loads((GRAFANA / "dashboards" / "satune_trials.json").read_text())
    exported = {metrics.exported(name): keys for name, (_, keys) in metrics.GAUGES.items()}
    variables = [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    queries = {p["title"]: [t["expr"] for t in p["targets"]] for p in board["panels"]}
    used = set()
    for expr in [*variables, *(e for exprs in queries.values() for e in exprs)]:
        names = re.findall(r"\bray_\w+", expr)
        assert names and set(names) <= set(exported), f"{expr}: not a metric satune exports"
        used |= set(names)
        labels = {k for group in re.findall(r"by \(([^)]*)\)", expr) for k in re.split(r"\s*,\s*", group)}
        labels |= set(re.findall(r"(\w+)=~", expr)) | set(re.findall(r"label_values\(\w+, (\w+)\)", expr))
        for name in names:
            assert labels <= set(exported[name]), f"{expr}: {name} has no tag {labels - set(exported[name])}"
    assert used == set(exported)
    epoch = metrics.exported(metrics.EPOCH)
    assert queries["Epoch per trial"] == [f'max by (sweep, trial, config) ({epoch}{{sweep=~"$sweep"}})']
    assert metrics.exported(metrics.PROXY) in queries["Proxy metric per trial"][0]
    for panel in board["panels"]:
        assert all("{{trial}}" in t["legendFormat"] for t in panel["targets"]), panel["title"]


def test_ray_commands_export_metrics_where_prometheus_scrapes(tmp_path):
    for role in ("ray-head", "ray-worker"):
        out = run_entrypoint(tmp_path, role, env=ray_env(tmp_path), secrets={"ray_auth_token": GOOD})
        assert out.returncode == 0, out.stderr
        argv = out.stdout.splitlines()
        assert argv[:2] == ["ray", "start"] and "--metrics-export-port=8080" in argv and argv[-1] == "--block"
    head = run_entrypoint(tmp_path, "ray-head", env=ray_env(tmp_path)).stdout.splitlines()
    assert "--num-cpus=0" in head and "--dashboard-host=0.0.0.0" in head


# --- the entrypoint's guards --------------------------------------------------------------------------

GROUPS = {
    "postgres_password": "postgres",
    "ray_auth_token": "ray",
    "grafana_admin_password": "grafana",
    "mlflow_admin_password": "mlflow-auth",
    "mlflow_flask_secret_key": "mlflow-auth",
    "mlflow_tracking_password": "mlflow-client",
}


CHECKED_BY = {
    "postgres": {"postgres_password"},
    "ray": {"ray_auth_token"},
    "grafana": {"grafana_admin_password"},
    "mlflow-auth": {"mlflow_admin_password", "mlflow_flask_secret_key", "mlflow_tracking_password"},
    "mlflow-client": {"mlflow_tracking_password"},
}


def all_good() -> dict[str, str]:
    return {name: GOOD for name in GROUPS}


def test_every_compose_secret_has_a_guard():
    declared = {s for doc in PROJECTS.values() for s in doc.get("secrets") or {}}
    assert declared == set(GROUPS), "a secret without a guard in docker/entrypoint.sh (or a stale one here)"


@pytest.mark.parametrize("secret", sorted(GROUPS))
def test_entrypoint_refuses_the_example_placeholders(tmp_path, secret):
    placeholder = example_env()[secret.upper()]
    secrets = {**all_good(), secret: placeholder}
    out = run_entrypoint(tmp_path, "check", GROUPS[secret], env=ray_env(tmp_path), secrets=secrets)
    assert out.returncode == 78, f"{secret}={placeholder!r} was accepted: {out.stdout}"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and secret.upper() in lines[0] and "placeholder" in lines[0], out.stderr
    assert placeholder not in lines[0].split(secret.upper())[1].replace("docker/example.env", ""), "echoes the value"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("short-but-set", "too short"),
        ("two words here and more", "spaces"),
        ("password-0123456789", "placeholder"),
        ("CHANGE-ME-0123456789abcdef", "placeholder"),
    ],
)
def test_entrypoint_refuses_empty_short_or_guessable_secrets(tmp_path, value, why):
    out = run_entrypoint(tmp_path, "check", "postgres", secrets={"postgres_password": value})
    assert out.returncode == 78 and why in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    if value:
        assert value not in out.stderr, "the refusal echoes the secret"


def test_entrypoint_refuses_a_missing_secret_and_accepts_good_ones(tmp_path):
    out = run_entrypoint(tmp_path, "check", "postgres", "ray", "grafana", env=ray_env(tmp_path))
    assert out.returncode == 78 and "POSTGRES_PASSWORD" in out.stderr and "missing" in out.stderr
    out = run_entrypoint(tmp_path, "check", *sorted(set(GROUPS.values())), env=ray_env(tmp_path), secrets=all_good())
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"RAY_AUTH_MODE": "disabled"}, "token authentication only"),
        ({"RAY_AUTH_TOKEN": GOOD}, "docker inspect"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": ""}, "not set"),
    ],
)
def test_ray_roles_refuse_to_start_without_token_auth_from_a_file(tmp_path, env, why):
    for role in ("ray-head", "ray-worker"):
        out = run_entrypoint(tmp_path, role, env={**ray_env(tmp_path), **env}, secrets={"ray_auth_token": GOOD})
        assert out.returncode == 78 and why in out.stderr and not out.stdout, out.stderr


def test_mlflow_command_line_carries_no_password(tmp_path):
    password = "s3cr3t:with\\odd-chars-0123456789"
    out = run_entrypoint(tmp_path, "mlflow", env={"PGHOST": "postgres"}, secrets={"postgres_password": password})
    assert out.returncode == 0, out.stderr
    argv = out.stdout.splitlines()
    assert argv[:2] == ["mlflow", "server"]
    assert not any(password in a or "0123456789" in a for a in argv), "the password is on the command line"
    uri = next(a.split("=", 1)[1] for a in argv if a.startswith("--backend-store-uri="))
    assert re.fullmatch(r"postgresql\+psycopg2://mlflow@postgres:5432/mlflow", uri), uri
    pgpass = tmp_path / "home" / ".pgpass"
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600, "the pgpass file must be the owner's alone"
    assert pgpass.read_text() == "postgres:5432:*:mlflow:s3cr3t\\:with\\\\odd-chars-0123456789\n"  # libpq escapes
    # the compose service passes no password either: the role alone, the secret as a file
    mlflow = project("compose.auth.yaml")["services"]["mlflow"]
    assert mlflow["command"] == ["mlflow"]


def test_mlflow_basic_auth_takes_its_secrets_from_files(tmp_path):
    secrets = {
        "postgres_password": GOOD,
        "mlflow_admin_password": "a" * 8 + GOOD,
        "mlflow_flask_secret_key": "b" * 8 + GOOD,
        "mlflow_tracking_password": "c" * 8 + GOOD,
    }
    out = run_entrypoint(tmp_path, "mlflow", env={"SATUNE_MLFLOW_AUTH": "1"}, secrets=secrets)
    assert out.returncode == 0, out.stderr
    assert "--app-name=basic-auth" in out.stdout.splitlines()
    assert not any(v in out.stdout for v in secrets.values())
    ini = (DOCKER / "mlflow" / "basic_auth.ini").read_text()
    assert not re.search(r"^\s*admin_password\s*=", ini, re.M), "the admin password comes from a secret"
    secrets["mlflow_admin_password"] = example_env()["MLFLOW_ADMIN_PASSWORD"]
    out = run_entrypoint(tmp_path, "mlflow", env={"SATUNE_MLFLOW_AUTH": "1"}, secrets=secrets)
    assert out.returncode == 78 and "MLFLOW_ADMIN_PASSWORD" in out.stderr


def test_mlflow_answers_to_its_in_cluster_name(tmp_path):
    out = run_entrypoint(
        tmp_path, "mlflow", env={"SATUNE_PUBLIC_HOST": "gpu-box.lab"}, secrets={"postgres_password": GOOD}
    )
    hosts = next(a.split("=", 1)[1] for a in out.stdout.splitlines() if a.startswith("--allowed-hosts=")).split(",")
    host = load_sweep(DOCKER / "sweeps" / "smoke.yaml").tracking.uri.split("://")[1].rstrip("/")
    for wanted in (host, "mlflow", "127.0.0.1:5000", "localhost:5000", "gpu-box.lab:5000"):
        assert any(fnmatch.fnmatch(wanted, h) for h in hosts), f"MLflow would refuse Host: {wanted}"
    assert "*" not in hosts and not any(fnmatch.fnmatch("evil.example.com", h) for h in hosts)


def test_ray_nodes_get_mlflow_credentials_as_an_owner_only_file(tmp_path):
    env = {
        **ray_env(tmp_path),
        "MLFLOW_TRACKING_USERNAME": "satune",
        "MLFLOW_TRACKING_PASSWORD_FILE": str(tmp_path / "secrets" / "mlflow_tracking_password"),
    }
    out = run_entrypoint(
        tmp_path, "ray-worker", env=env, secrets={"ray_auth_token": GOOD, "mlflow_tracking_password": "p%" + GOOD}
    )
    assert out.returncode == 0, out.stderr
    creds = tmp_path / "home" / ".mlflow" / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    import configparser

    parser = configparser.ConfigParser()
    parser.read(creds)
    assert parser["mlflow"]["mlflow_tracking_username"] == "satune"
    assert parser["mlflow"]["mlflow_tracking_password"] == "p%" + GOOD  # as MLflow's client reads it
    assert "p%" + GOOD not in out.stdout


def test_entrypoint_passes_other_commands_through(tmp_path):
    out = run_entrypoint(tmp_path, "echo", "hello", env={"SATUNE_ENTRYPOINT_DRY_RUN": "0"})
    assert out.returncode == 0 and out.stdout == "hello\n"


# --- the image ----------------------------------------------------------------------------------------


def test_dockerfile_copies_existing_files_and_its_entrypoint_is_executable():
    text = (DOCKER / "Dockerfile").read_text()
    for sources, _ in dockerfile_copies():
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])", text, re.M)
    assert entry, "no ENTRYPOINT"
    for program in yaml.safe_load(entry.group(1))[:1]:
        src = repo_path_in_image(program)
        assert src is not None and src.is_file(), f"ENTRYPOINT {program} is not copied from the repository"
        assert os.access(src, os.X_OK), f"{src.relative_to(ROOT)} is not executable (chmod +x)"
        assert src.read_text().startswith("#!/usr/bin/env bash"), "the entrypoint needs bash"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert text.index("USER") < text.index("ENTRYPOINT")


def test_build_context_lets_in_only_what_the_dockerfile_copies():
    patterns = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "**", "start from nothing, then allow what the image needs"

    def included(path: str) -> bool:  # Docker's rule: the last matching pattern wins; parents count
        verdict = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            parts = PurePosixPath(path).parts
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatch(p, pat) or (pat == "**") for p in prefixes):
                verdict = negate
        return verdict

    for sources, _ in dockerfile_copies():
        for src in sources:
            assert included(src), f"Dockerfile.dockerignore keeps {src} out of the build context"
    for secret_path in ("docker/.env", "runs/sweep/state.pkl", ".venv/bin/python", "docker/secrets/x", ".git/config"):
        assert not included(secret_path), f"{secret_path} would enter the build context"


def test_the_image_holds_the_sweeps_the_docs_and_the_rayjob_name():
    named = set(re.findall(r"/opt/satune/sweeps/[\w/.-]+\.yaml", CLUSTER_MD.read_text()))
    named |= set(re.findall(r"/opt/satune/sweeps/[\w/.-]+\.yaml", (DOCKER / "compose.yaml").read_text()))
    jobs = [d for d in k8s_docs() if d["kind"] == "RayJob"]
    for job in jobs:
        entry = job["spec"]["entrypoint"].split()
        assert entry[:2] == ["satune", "sweep"], f"{job['metadata']['name']}: the RayJob must run `satune sweep`"
        named.add(entry[2])
    assert jobs and named
    for image_path in sorted(named):
        src = repo_path_in_image(image_path)
        assert src is not None and src.is_file(), f"{image_path} is not in the image (no COPY puts it there)"
        load_sweep(src, base_dir="/shared")  # validates


def test_cluster_sweep_files_validate_and_use_the_shared_volume_and_server():
    files = sorted((DOCKER / "sweeps").glob("*.yaml"))
    assert files
    services = project()["services"]
    port = services["mlflow"]["ports"][0].rsplit(":", 1)[1]
    for path in files:
        spec = load_sweep(path)
        assert spec.storage.startswith("/shared/"), f"{path.name}: storage must be on the shared volume"
        assert spec.tracking.uri == f"http://mlflow:{port}", f"{path.name}: tracking.uri must be the compose server"
    for sname in ("ray-head", "ray-worker"):
        assert "shared:/shared" in services[sname]["volumes"]


# --- Kubernetes ---------------------------------------------------------------------------------------


def test_kuberay_manifests_parse_and_use_ray_io_v1():
    kinds = {d["kind"]: d for d in k8s_docs()}
    assert {"RayCluster", "RayJob"} <= set(kinds)
    for doc in k8s_docs():
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1", f"{doc['kind']} must be ray.io/v1"
    cluster, job = kinds["RayCluster"], kinds["RayJob"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    assert cluster["spec"]["rayVersion"] == "2.60.0"
    assert "runtimeEnvYAML" not in job["spec"], "the dashboard shows runtime_env: keep secrets and settings out"


def test_kuberay_manifests_reference_only_defined_or_documented_objects():
    docs = k8s_docs()
    defined = {(d["kind"], d["metadata"]["name"]) for d in docs}
    documented = set(re.findall(r"kubectl create secret generic ([\w-]+)", CLUSTER_MD.read_text()))
    wanted: set[tuple[str, str]] = set()
    for doc in docs:
        for path, value in walk(doc):
            key = path[-1]
            if key == "secretName" or (key == "name" and len(path) > 1 and path[-2] in ("secretKeyRef", "secretRef")):
                wanted.add(("Secret", value))
            elif key == "name" and len(path) > 1 and path[-2] in ("configMap", "configMapKeyRef", "configMapRef"):
                wanted.add(("ConfigMap", value))
            elif key == "claimName":
                wanted.add(("PersistentVolumeClaim", value))
    assert ("Secret", "satune-ray-token") in wanted
    for kind, name in sorted(wanted):
        ok = (kind, name) in defined or (kind == "Secret" and name in documented)
        assert ok, f"{kind} {name} is neither in docker/k8s/ nor created in docs/cluster.md"
    assert not any(d["kind"] == "Secret" for d in docs), "a Secret in the manifests would commit its value"


def test_kuberay_pods_run_unprivileged_and_share_the_storage():
    cluster = next(d for d in k8s_docs() if d["kind"] == "RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    images = set()
    for group in groups:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert mounts.get("/shared") == "shared", "every Ray pod mounts Tune's storage at /shared"
        for c in pod["containers"]:
            images.add(c["image"])
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            for env in c.get("env", []):
                if SECRET_WORDS.search(env["name"]):
                    assert "value" not in env, f"{env['name']} is written in the manifest"
        assert group["rayStartParams"].get("metrics-export-port") == "8080"
    assert len(images) == 1, "one image for every node"
    pvc = next(d for d in k8s_docs() if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every node writes Tune's storage"


# --- the repository and the docker CLI -----------------------------------------------------------------


def test_git_ignores_the_env_file_and_keeps_the_example():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", "docker/.env", "docker/prod.env", "docker/example.env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ignored == ["docker/.env", "docker/prod.env"], ignored


def _compose_cli() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode == 0


def test_docker_compose_config_accepts_the_files(tmp_path):
    """The Compose CLI's own parser, where it is installed. It is optional: this project's machines and
    CI have no Docker, and the checks above cover the files without it; set SATUNE_TEST_DOCKER=1 to make
    its absence a failure (on a machine meant to have it)."""
    if not _compose_cli():
        if os.environ.get("SATUNE_TEST_DOCKER") == "1":
            pytest.fail("SATUNE_TEST_DOCKER=1 but `docker compose version` fails: install Docker Compose >= 2.24")
        pytest.skip("`docker compose` is not installed here (optional; SATUNE_TEST_DOCKER=1 requires it)")
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={GOOD}\n" for k in example_env() if SECRET_WORDS.search(k)))
    for overlays in ([], *([o] for o in OVERLAYS)):
        args = ["docker", "compose", "--env-file", str(env_file), "-f", str(DOCKER / "compose.yaml")]
        args += [a for o in overlays for a in ("-f", str(DOCKER / o))]
        out = subprocess.run([*args, "config", "--quiet"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"docker compose config {overlays}: {out.stderr}"
        rendered = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=120).stdout
        assert GOOD not in rendered, "a secret's value appears in the rendered configuration"
