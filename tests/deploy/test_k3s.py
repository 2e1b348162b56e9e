"""k3s/: every manifest against the Kubernetes schemas, and the references between them.

Offline: kubernetes-validate ships the JSON schemas of each Kubernetes release. The
strict schemas refuse unknown fields, so a misspelt key fails here, not at apply time.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from kubernetes_validate import utils as kubernetes_validate

from .support import (
    K3S,
    NAMESPACE,
    PACKAGING,
    ROOT,
    Manifest,
    cli_env_vars,
    k3s_manifests,
    parse,
    parse_dockerfile,
    unread_env_vars,
    yaml_documents,
)

# The oldest Kubernetes the manifests target (k3s releases of 2024 on), and the newest
# the installed kubernetes-validate knows: an API removed since fails there.
KUBERNETES_VERSION = "1.30"
LATEST_VERSION = kubernetes_validate.major_minor(kubernetes_validate.latest_version())
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "IngressClass",
    "PriorityClass",
    "CustomResourceDefinition",
    "ClusterIssuer",
}
# The seed's layout.
EXPECTED_TREE = {
    "namespace.yaml",
    "ingress.yaml",
    "cockroachdb/statefulset.yaml",
    "cockroachdb/service.yaml",
    "cockroachdb/job.yaml",
    "cockroachdb/pdb.yaml",
    "cockroachdb/certs-job.yaml",
    "minio/deployment.yaml",
    "minio/pvc.yaml",
    "minio/service.yaml",
    "minio/secret.yaml",
    "control-plane/deployment.yaml",
    "control-plane/service.yaml",
    "control-plane/configmap.yaml",
    "control-plane/secret.yaml",
    "control-plane/hpa.yaml",
    "control-plane/migrate-job.yaml",
}
# Secrets no manifest holds: the certificates Job (cockroachdb/certs-job.yaml) makes them.
GENERATED_SECRETS = {
    "cockroachdb-ca",
    "cockroachdb-node",
    "cockroachdb-client-root",
    "edgesync-db-client",
}
MANIFESTS = k3s_manifests()


def find(kind: str, name: str | None = None) -> Manifest:
    found = [m for m in MANIFESTS if m.kind == kind and (name is None or m.name == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[m.where for m in found]}"
    return found[0]


def pod_templates() -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for manifest in MANIFESTS:
        if manifest.kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield manifest, manifest.doc["spec"]["template"]


def only_container(manifest: Manifest) -> dict[str, Any]:
    containers = manifest.doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, manifest.where
    container: dict[str, Any] = containers[0]
    return container


def env_of(configmap: Manifest, secret: Manifest) -> dict[str, str]:
    return {**configmap.doc["data"], **secret.doc["stringData"]}


# -- the tree and the schemas ------------------------------------------------------------


def test_tree_is_the_seeds_layout() -> None:
    found = {str(p.relative_to(K3S)) for p in K3S.rglob("*") if p.is_file()}
    assert found == EXPECTED_TREE


def test_kubernetes_validate_ships_the_schemas_offline() -> None:
    assert KUBERNETES_VERSION in {
        kubernetes_validate.major_minor(v) for v in kubernetes_validate.all_versions()
    }


@pytest.mark.parametrize("version", sorted({KUBERNETES_VERSION, LATEST_VERSION}))
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.where)
def test_manifest_matches_the_kubernetes_schema(manifest: Manifest, version: str) -> None:
    try:
        kubernetes_validate.validate(manifest.doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{manifest.where}: {path}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{manifest.where}: {exc.message}")


def test_the_validator_catches_mistakes() -> None:
    """Guard against a vacuous pass: a misspelt field and a wrong type are refused."""
    deployment = find("Deployment", "control-plane-api").doc
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "three"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.where)
def test_everything_is_in_the_namespace(manifest: Manifest) -> None:
    metadata = manifest.doc["metadata"]
    if manifest.kind in CLUSTER_SCOPED:
        assert "namespace" not in metadata, manifest.where
    else:
        assert metadata.get("namespace") == NAMESPACE, manifest.where
    assert metadata.get("labels", {}).get("app.kubernetes.io/part-of") == "edgesync"


def test_namespace() -> None:
    namespace = find("Namespace")
    assert namespace.name == NAMESPACE
    assert namespace.path == K3S / "namespace.yaml"


def test_names_are_unique() -> None:
    seen = [(m.kind, m.name) for m in MANIFESTS]
    assert len(seen) == len(set(seen))


# -- references between objects --------------------------------------------------------


def test_services_select_pods_and_their_ports() -> None:
    templates = list(pod_templates())
    for service in (m for m in MANIFESTS if m.kind == "Service"):
        selector = service.doc["spec"]["selector"]
        selected = [
            template
            for _, template in templates
            if selector.items() <= template["metadata"]["labels"].items()
        ]
        assert selected, f"{service.where} selects no pods"
        port_names = {
            port["name"]
            for template in selected
            for container in template["spec"]["containers"]
            for port in container.get("ports", [])
        }
        for port in service.doc["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{service.where}: {port}"


def test_workload_selectors_match_their_templates() -> None:
    for manifest, template in pod_templates():
        selector = manifest.doc["spec"].get("selector")
        if selector is None:  # Jobs generate theirs
            continue
        assert selector["matchLabels"].items() <= template["metadata"]["labels"].items()


def test_referenced_configmaps_secrets_and_claims_exist() -> None:
    names = {(m.kind, m.name) for m in MANIFESTS}
    for manifest, template in pod_templates():
        spec = template["spec"]
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in names
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = find("Secret", ref["name"]).doc["stringData"]
                    assert ref["key"] in secret, manifest.where
            mounted = {v["name"] for v in container.get("volumeMounts", [])}
            declared = {v["name"] for v in spec.get("volumes", [])}
            claims = {
                c["metadata"]["name"] for c in manifest.doc["spec"].get("volumeClaimTemplates", [])
            }
            assert mounted <= declared | claims, manifest.where
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert ("Secret", name) in names or name in GENERATED_SECRETS, manifest.where
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names


def test_images_match_docker_compose() -> None:
    compose = yaml_documents(PACKAGING / "docker-compose.yml")[0]["services"]
    for name in ("cockroachdb", "minio"):
        images = {
            container["image"]
            for _, template in pod_templates()
            for container in template["spec"]["containers"]
            if container["image"].split(":")[0] == compose[name]["image"].split(":")[0]
        }
        assert images == {compose[name]["image"]}, name


# -- the security profile ------------------------------------------------------------------


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    labels = find("Namespace").doc["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("manifest", [m for m, _ in pod_templates()], ids=lambda m: m.where)
def test_pods_meet_the_restricted_profile(manifest: Manifest) -> None:
    spec = manifest.doc["spec"]["template"]["spec"]
    pod = spec.get("securityContext", {})
    assert pod.get("runAsNonRoot") is True
    assert pod.get("runAsUser", 0) != 0
    assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False
    allowed_volumes = {"emptyDir", "persistentVolumeClaim", "configMap", "secret", "projected"}
    for volume in spec.get("volumes", []):
        assert set(volume) - {"name"} <= allowed_volumes, volume
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        context = container.get("securityContext", {})
        assert context.get("allowPrivilegeEscalation") is False, container["name"]
        assert context.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
        assert "privileged" not in context
        assert container.get("resources", {}).get("limits"), container["name"]


# -- CockroachDB ---------------------------------------------------------------------------


def test_cockroachdb_is_a_three_node_cluster_on_persistent_volumes() -> None:
    statefulset = find("StatefulSet", "cockroachdb").doc["spec"]
    assert statefulset["replicas"] == 3
    claims = statefulset["volumeClaimTemplates"]
    assert claims and claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    headless = find("Service", statefulset["serviceName"]).doc["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    command = " ".join(only_container(find("StatefulSet", "cockroachdb"))["command"])
    join = re.search(r"--join=(\S+)", command)
    assert join, command
    expected = [f"cockroachdb-{i}.{statefulset['serviceName']}" for i in range(3)]
    assert join[1].split(",") == expected


def test_cockroachdb_runs_as_its_kubernetes_guidance_asks() -> None:
    """Secure mode, logs to stderr, no liveness probe, a long drain, a pinned patch."""
    statefulset = find("StatefulSet", "cockroachdb")
    pod = statefulset.doc["spec"]["template"]["spec"]
    container = only_container(statefulset)
    command = " ".join(container["command"])
    assert "--insecure" not in command
    assert "--certs-dir=/cockroach/cockroach-certs" in command
    assert re.search(r"--logtostderr(=\w+)?\b", command)
    assert "livenessProbe" not in container
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert pod["terminationGracePeriodSeconds"] >= 300
    # The node certificate reaches the certs dir (copied there, keys 0400).
    (copy,) = pod["initContainers"]
    assert "chmod 0400" in copy["command"][2]
    certs = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert certs["/cockroach/cockroach-certs"] in {m["name"] for m in copy["volumeMounts"]}
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"cockroachdb-node"}


def test_every_cockroach_image_is_one_pinned_patch_version() -> None:
    images = {
        c["image"]
        for _, template in pod_templates()
        for c in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]
        if c["image"].startswith("cockroachdb/cockroach")
    }
    assert len(images) == 1, images
    assert re.fullmatch(r"cockroachdb/cockroach:v\d+\.\d+\.\d+", images.pop())


def test_nothing_in_k3s_runs_cockroachdb_insecure() -> None:
    for manifest, template in pod_templates():
        for c in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]:
            assert "--insecure" not in " ".join(c.get("command", [])), manifest.where


def test_the_certs_job_makes_every_certificate_secret() -> None:
    jobs = [m for m in MANIFESTS if m.kind == "Job" and m.name == "cockroachdb-certs"]
    (job,) = jobs
    spec = job.doc["spec"]["template"]["spec"]
    (generate,) = spec["initContainers"]
    script = generate["command"][2]
    for what in ("create-ca", "create-node", "create-client root", "create-client edgesync"):
        assert f"cert {what}" in script
    for name in ("cockroachdb-public", "*.cockroachdb"):
        assert f'"{name}' in script or f" {name} " in script, name
    (store,) = spec["containers"]
    program = store["command"][2]
    compile(program, "certs-job store", "exec")  # it parses
    for secret in GENERATED_SECRETS:
        assert f'"{secret}"' in program, secret
    # The existing CA is never replaced: it is checked first and written last.
    assert program.index("cockroachdb-ca") < program.index('store("cockroachdb-node"')
    assert program.rindex('store("cockroachdb-ca"') > program.rindex('store("edgesync-db-client"')
    # Its token comes only through the projected volume, and may only get and create Secrets.
    assert spec["automountServiceAccountToken"] is False
    assert any("projected" in v for v in spec["volumes"])
    role = find("Role", "cockroachdb-certs").doc
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]}
    ]
    binding = find("RoleBinding", "cockroachdb-certs").doc
    assert binding["subjects"][0]["name"] == spec["serviceAccountName"]


def test_cockroachdb_disruption_budget_covers_the_nodes() -> None:
    pdb = find("PodDisruptionBudget", "cockroachdb").doc["spec"]
    labels = find("StatefulSet", "cockroachdb").doc["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1


def test_init_job_initialises_the_cluster_and_creates_the_database() -> None:
    job = find("Job", "cockroachdb-init")
    script = "\n".join(only_container(job)["command"])
    assert 'cockroach init --certs-dir="$certs" --host=cockroachdb-0.cockroachdb:26257' in script
    url = urlsplit(control_plane_env()["DATABASE_URL"])
    database = url.path.lstrip("/")
    assert f"CREATE DATABASE IF NOT EXISTS {database}" in script
    assert f"CREATE USER IF NOT EXISTS {url.username}" in script
    # CREATE DATABASE sits inside a retry loop (right after init it can fail).
    loop = script[script.rindex("for attempt") :]
    assert "CREATE DATABASE" in loop and "sleep" in loop and "exit 1" in loop
    assert job.doc["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


# -- MinIO ------------------------------------------------------------------------------------


def test_minio_has_a_volume_a_service_and_credentials() -> None:
    deployment = find("Deployment", "minio")
    container = only_container(deployment)
    assert container["args"][:2] == ["server", "/data"]
    assert {"secretRef": {"name": "minio-credentials"}} in container["envFrom"]
    assert deployment.doc["spec"]["strategy"]["type"] == "Recreate"  # RWO volume
    credentials = find("Secret", "minio-credentials").doc["stringData"]
    assert set(credentials) == {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    assert "REPLACE-ME" in credentials["MINIO_ROOT_PASSWORD"]


# -- the control plane ------------------------------------------------------------------------


def control_plane_env() -> dict[str, str]:
    return env_of(
        find("ConfigMap", "control-plane-config"), find("Secret", "control-plane-secrets")
    )


def test_control_plane_config_is_what_serve_reads() -> None:
    """Every key of the ConfigMap and the Secret is a variable `edgesync serve` reads."""
    env = control_plane_env()
    assert set(env) <= cli_env_vars("serve"), set(env) - cli_env_vars("serve")
    # ... and each one reaches its option with a valid value.
    args = only_container(find("Deployment", "control-plane-api"))["args"][1:]
    assert unread_env_vars("serve", env, args) == set()


def test_control_plane_config_has_the_shared_stores_and_secrets() -> None:
    configmap = find("ConfigMap", "control-plane-config").doc["data"]
    secret = find("Secret", "control-plane-secrets").doc["stringData"]
    assert {"DATABASE_URL", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "EDGESYNC_ADMIN_TOKEN"} <= set(
        secret
    )
    assert {"EDGESYNC_PUBLIC_URL", "MINIO_ENDPOINT", "EDGESYNC_ARTIFACT_DELIVERY"} <= set(configmap)
    assert not [key for key in configmap if re.search("SECRET|TOKEN|PASSWORD|DATABASE_URL", key)]
    assert "REPLACE-ME" in secret["EDGESYNC_ADMIN_TOKEN"]
    assert "REPLACE-ME" in secret["MINIO_SECRET_KEY"]
    # Stateless replicas: the stores are shared, never the embedded defaults.
    assert secret["DATABASE_URL"].startswith("postgresql://")


def test_control_plane_points_at_the_cluster_services() -> None:
    env = control_plane_env()
    database = urlsplit(env["DATABASE_URL"])
    service = find("Service", database.hostname).doc["spec"]
    assert database.port in {p["port"] for p in service["ports"]}
    host, _, port = env["MINIO_ENDPOINT"].partition(":")
    assert int(port) in {p["port"] for p in find("Service", host).doc["spec"]["ports"]}
    minio = find("Secret", "minio-credentials").doc["stringData"]
    assert env["MINIO_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
    assert env["MINIO_SECRET_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def test_control_plane_deployment() -> None:
    deployment = find("Deployment", "control-plane-api")
    assert deployment.doc["spec"]["replicas"] == 3
    container = only_container(deployment)
    assert container["args"][0] == "serve"
    ctx = parse("serve", container["args"][1:])
    (port,) = container["ports"]
    assert ctx.params["port"] == port["containerPort"]
    assert ctx.params["host"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["resources"]["requests"]["cpu"]  # the HPA scales on it


def test_control_plane_image_matches_the_dockerfile() -> None:
    """Non-root as the image's user, read-only root: only /tmp and the data dir are writable.

    SHIV_ROOT is not a volume: the image unpacks and compiles the zipapp there at build
    time, so nothing is written to it at run time.
    """
    deployment = find("Deployment", "control-plane-api")
    pod = deployment.doc["spec"]["template"]["spec"]
    container = only_container(deployment)
    runtime = parse_dockerfile(PACKAGING / "Dockerfile").stages[-1]
    user = runtime.last("USER")
    assert user is not None
    assert pod["securityContext"]["runAsUser"] == int(user.value.split(":")[0])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    data_dir = str(parse("serve", container["args"][1:]).params["data_dir"])
    certs = db_certs_dir()
    assert set(mounts) == {"/tmp", data_dir, certs}
    shiv_root = runtime.env()["SHIV_ROOT"]
    assert not any(shiv_root.startswith(path) for path in mounts)
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {path: name for path, name in mounts.items() if path != certs}
    assert all("emptyDir" in volumes[name] for name in writable.values())


def db_certs_dir() -> str:
    """Where DATABASE_URL's certificates are: one directory, the same for all three."""
    query = dict(parse_qsl(urlsplit(control_plane_env()["DATABASE_URL"]).query))
    dirs = {query[key].rsplit("/", 1)[0] for key in ("sslrootcert", "sslcert", "sslkey")}
    assert len(dirs) == 1, dirs
    return dirs.pop()


def test_serve_connects_with_tls_verifying_the_server_and_a_client_certificate() -> None:
    url = urlsplit(control_plane_env()["DATABASE_URL"])
    query = dict(parse_qsl(url.query))
    assert query["sslmode"] == "verify-full"
    assert url.password is None  # the client certificate is the credential
    assert query["sslcert"].endswith(f"client.{url.username}.crt")
    assert query["sslkey"].endswith(f"client.{url.username}.key")
    for name in ("control-plane-api", "control-plane-migrate"):
        kind = "Deployment" if name == "control-plane-api" else "Job"
        manifest = find(kind, name)
        pod = manifest.doc["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in only_container(manifest)["volumeMounts"]}
        volume = {v["name"]: v for v in pod["volumes"]}[mounts[db_certs_dir()]]
        assert volume["secret"]["secretName"] == "edgesync-db-client"
        # libpq takes a root-owned key only at u=rw,g=r or less; fsGroup gives us g.
        assert volume["secret"]["defaultMode"] & 0o137 == 0
        assert pod["securityContext"]["fsGroup"]


def test_the_migrate_job_runs_edgesync_migrate_on_the_same_database() -> None:
    job = find("Job", "control-plane-migrate")
    container = only_container(job)
    deployment = only_container(find("Deployment", "control-plane-api"))
    assert container["image"] == deployment["image"]
    assert container["args"] == ["migrate"]
    (variable,) = container["env"]
    assert variable["name"] in cli_env_vars("migrate")
    assert variable["valueFrom"]["secretKeyRef"] == {
        "name": "control-plane-secrets",
        "key": "DATABASE_URL",
    }


def test_hpa_scales_the_deployment_on_cpu() -> None:
    hpa = find("HorizontalPodAutoscaler").doc
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    target = find(spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"])
    assert target.kind == "Deployment" and target.name == "control-plane-api"
    assert spec["minReplicas"] == 3 == target.doc["spec"]["replicas"]
    assert spec["maxReplicas"] >= 10
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_ingress_serves_the_api_over_tls_through_traefik() -> None:
    ingress = find("Ingress")
    assert ingress.path == K3S / "ingress.yaml"
    spec = ingress.doc["spec"]
    assert spec["ingressClassName"] == "traefik"
    assert ingress.doc["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
    (tls,) = spec["tls"]
    assert tls["secretName"]
    (rule,) = spec["rules"]
    assert tls["hosts"] == [rule["host"]]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = find("Service", backend["name"]).doc["spec"]
    assert backend["port"]["name"] in {p["name"] for p in service["ports"]}
    public = urlsplit(control_plane_env()["EDGESYNC_PUBLIC_URL"])
    assert (public.scheme, public.hostname) == ("https", rule["host"])


def test_manifests_hold_no_real_secrets() -> None:
    for manifest in MANIFESTS:
        if manifest.kind != "Secret":
            continue
        assert "data" not in manifest.doc, f"{manifest.where}: use stringData placeholders"
        text = manifest.path.read_text()
        assert "REPLACE" in text.upper(), manifest.where


def test_docs_describe_applying_the_tree() -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "kubectl apply -f k3s/namespace.yaml" in docs
    assert "kubectl apply -R -f k3s/" in docs


def shell_scripts() -> Iterator[tuple[str, str]]:
    """(where, script) of every container started as `bash|sh -c SCRIPT`."""
    for manifest, template in pod_templates():
        spec = template["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            command = container.get("command", [])
            if len(command) >= 3 and command[0].endswith(("/bash", "/sh")) and "c" in command[1]:
                yield f"{manifest.where}/{container['name']}", command[2]


def test_embedded_shell_scripts_parse() -> None:
    scripts = list(shell_scripts())
    # CockroachDB's start and its certificate copy, the init Job, the certs Job.
    assert len(scripts) >= 4
    for where, script in scripts:
        result = subprocess.run(
            ["bash", "-n", "-c", script], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, f"{where}: {result.stderr}"
        # Kubernetes replaces $(NAME) in commands with the variable NAME: none intended.
        assert not re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", script), where
