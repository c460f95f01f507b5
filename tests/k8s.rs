//! The Kubernetes manifests in `deploy/k8s/`: every file the kustomization
//! names exists; the objects refer to each other consistently (selectors,
//! named ports, volumes, service addresses, the autoscaler's target, the
//! optional components' targets); each container's environment with the
//! ConfigMap's `fleet.toml` is a config `fleet config` accepts; and the
//! resources pass the Kubernetes API schemas (kubernetes-validate, strict),
//! the base alone and with each component under `components/` rendered onto
//! it (a strategic merge of its patches, as kustomize does).
//!
//! No cluster is needed. The schema check needs `kubernetes-validate` (PyPI);
//! without it the test says why and passes, unless
//! `FLEET_REQUIRE_KUBERNETES_VALIDATE=1` (CI) demands it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_yaml_ng::{Mapping, Value};

use crate::support::FLEET;

const K8S: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s");

fn load(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display())))
        .collect()
}

/// The keys of a dotted path; a key that holds dots is written in brackets,
/// as in `metadata.labels.[app.kubernetes.io/part-of]`.
fn keys(path: &str) -> Vec<&str> {
    let mut keys = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        let (key, tail) = match rest.strip_prefix('[') {
            Some(inner) => {
                let (key, tail) = inner.split_once(']').expect("unclosed [ in path");
                (key, tail.strip_prefix('.').unwrap_or(tail))
            }
            None => rest.split_once('.').unwrap_or((rest, "")),
        };
        keys.push(key);
        rest = tail;
    }
    keys
}

/// The value at a dotted path; panics naming the path when it is absent.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    keys(path).into_iter().fold(value, |v, key| {
        v.get(key)
            .unwrap_or_else(|| panic!("`{path}` missing (at `{key}`) in {}", describe(value)))
    })
}

fn text<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string in {}", describe(value)))
}

fn list<'a>(value: &'a Value, path: &str) -> &'a [Value] {
    at(value, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("`{path}` is not a list in {}", describe(value)))
}

fn map<'a>(value: &'a Value, path: &str) -> &'a Mapping {
    at(value, path)
        .as_mapping()
        .unwrap_or_else(|| panic!("`{path}` is not a mapping in {}", describe(value)))
}

fn describe(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("{kind}/{name}")
}

/// Every pair of `selector` is in `labels`.
fn selects(selector: &Mapping, labels: &Mapping) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The kustomization and the objects of every resource file it lists.
struct Base {
    kustomization: Value,
    objects: Vec<Value>,
    files: Vec<PathBuf>,
}

impl Base {
    fn load() -> Self {
        let kustomization = load(&Path::new(K8S).join("kustomization.yaml")).remove(0);
        let files: Vec<PathBuf> = list(&kustomization, "resources")
            .iter()
            .map(|r| Path::new(K8S).join(r.as_str().expect("resource paths are strings")))
            .collect();
        let objects = files.iter().flat_map(|f| load(f)).collect();
        Self {
            kustomization,
            objects,
            files,
        }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| text(o, "kind") == kind)
    }

    fn find<'a>(&'a self, kind: &'a str, name: &str) -> &'a Value {
        self.of_kind(kind)
            .find(|o| text(o, "metadata.name") == name)
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }

    fn workloads(&self) -> impl Iterator<Item = &Value> + '_ {
        self.objects
            .iter()
            .filter(|o| matches!(text(o, "kind"), "StatefulSet" | "Deployment"))
    }

    /// The one workload whose pods `selector` picks.
    fn workload_selected_by(&self, selector: &Mapping, by: &str) -> &Value {
        let picked: Vec<&Value> = self
            .workloads()
            .filter(|w| selects(selector, map(w, "spec.template.metadata.labels")))
            .collect();
        assert_eq!(picked.len(), 1, "{by} selects {} workloads", picked.len());
        picked[0]
    }
}

fn containers(workload: &Value) -> &[Value] {
    list(workload, "spec.template.spec.containers")
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    container
        .get("env")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .map(|e| (text(e, "name").to_owned(), text(e, "value").to_owned()))
        .collect()
}

/// The container port named `name`.
fn port_named(container: &Value, name: &str) -> Option<u64> {
    container
        .get("ports")?
        .as_sequence()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort")?.as_u64())
}

fn port_of(address: &str) -> u64 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"))
}

#[test]
fn the_kustomization_names_files_that_exist() {
    let base = Base::load();
    for file in &base.files {
        assert!(file.is_file(), "resource {} does not exist", file.display());
    }
    for generator in list(&base.kustomization, "configMapGenerator") {
        for file in list(generator, "files") {
            let path = Path::new(K8S).join(file.as_str().unwrap());
            assert!(path.is_file(), "configMapGenerator file {} does not exist", path.display());
        }
    }
    let images: Vec<&str> = list(&base.kustomization, "images").iter().map(|i| text(i, "name")).collect();
    for workload in base.workloads() {
        for container in containers(workload) {
            let image = text(container, "image");
            assert!(
                images.contains(&image),
                "{}: image {image} is not in the kustomization's images",
                describe(workload)
            );
        }
    }
    for object in &base.objects {
        assert_eq!(
            object
                .get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(|l| l.get("app.kubernetes.io/part-of")),
            Some(&Value::from("fleet")),
            "{} lacks the part-of label",
            describe(object)
        );
    }
    for component in ["gpu", "prometheus-operator", "tls"] {
        let dir = Path::new(K8S).join("components").join(component);
        let kustomization = load(&dir.join("kustomization.yaml")).remove(0);
        assert_eq!(text(&kustomization, "kind"), "Component");
        let paths = ["resources", "patches"].iter().flat_map(|key| {
            kustomization
                .get(*key)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .map(|entry| match entry {
                    Value::String(path) => path.clone(),
                    other => text(other, "path").to_owned(),
                })
        });
        for path in paths {
            assert!(dir.join(&path).is_file(), "component {component}: {path} does not exist");
        }
    }
}

#[test]
fn services_workloads_and_addresses_refer_to_each_other() {
    let base = Base::load();
    let generated: Vec<&str> = list(&base.kustomization, "configMapGenerator")
        .iter()
        .map(|g| text(g, "name"))
        .collect();
    for workload in base.workloads() {
        let name = describe(workload);
        assert!(
            selects(
                map(workload, "spec.selector.matchLabels"),
                map(workload, "spec.template.metadata.labels")
            ),
            "{name}: its selector does not pick its own pods"
        );
        if text(workload, "kind") == "StatefulSet" {
            base.find("Service", text(workload, "spec.serviceName"));
        }
        let pod = at(workload, "spec.template.spec");
        let mut volumes: Vec<&str> = list(pod, "volumes").iter().map(|v| text(v, "name")).collect();
        for config_map in list(pod, "volumes").iter().filter_map(|v| v.get("configMap")) {
            assert!(
                generated.contains(&text(config_map, "name")),
                "{name}: ConfigMap {config_map:?} is not generated"
            );
        }
        if let Some(claims) = workload.get("spec").and_then(|s| s.get("volumeClaimTemplates")) {
            volumes.extend(claims.as_sequence().unwrap().iter().map(|c| text(c, "metadata.name")));
        }
        let annotations = map(workload, "spec.template.metadata.annotations");
        for container in containers(workload) {
            for mount in list(container, "volumeMounts") {
                assert!(volumes.contains(&text(mount, "name")), "{name}: mount {mount:?} has no volume");
            }
            let env = env_of(container);
            let metrics = port_named(container, "metrics").unwrap_or_else(|| panic!("{name}: no metrics port"));
            assert_eq!(port_of(&env["FLEET_METRICS_LISTEN"]), metrics, "{name}: metrics listen vs port");
            assert_eq!(
                annotations.get("prometheus.io/port").and_then(Value::as_str),
                Some(metrics.to_string().as_str()),
                "{name}: scrape annotation vs metrics port"
            );
            if let Some(listen) = env.get("FLEET_LISTEN") {
                let grpc = port_named(container, "grpc").unwrap_or_else(|| panic!("{name}: no grpc port"));
                assert_eq!(port_of(listen), grpc, "{name}: gRPC listen vs port");
                for probe in ["readinessProbe", "livenessProbe"] {
                    assert_eq!(at(container, &format!("{probe}.grpc.port")).as_u64(), Some(grpc), "{name}: {probe}");
                }
            }
            // host:port addresses name a Service with that port whose pods are the role's.
            for (variable, role) in [("FLEET_REPLAY_ADDRESS", "replay"), ("FLEET_LEARNER_ADDRESS", "learner")] {
                let Some(address) = env.get(variable) else { continue };
                let (host, port) = address.rsplit_once(':').unwrap();
                let service = base.find("Service", host);
                let service_port = list(service, "spec.ports")
                    .iter()
                    .find(|p| at(p, "port").as_u64() == Some(port.parse().unwrap()))
                    .unwrap_or_else(|| panic!("{name}: {variable}={address}: {host} has no port {port}"));
                let target = base.workload_selected_by(map(service, "spec.selector"), host);
                assert_eq!(text(target, "spec.template.metadata.labels.[app.kubernetes.io/component]"), role);
                let target_port = port_named(&containers(target)[0], text(service_port, "targetPort"));
                assert_eq!(target_port.map(|p| p.to_string()), Some(port.to_owned()), "{name}: {variable}");
            }
        }
    }
    for service in base.of_kind("Service") {
        let target = base.workload_selected_by(map(service, "spec.selector"), &describe(service));
        for port in list(service, "spec.ports") {
            let target_port = text(port, "targetPort");
            assert!(
                containers(target).iter().any(|c| port_named(c, target_port).is_some()),
                "{}: targetPort {target_port} is not a port of {}",
                describe(service),
                describe(target)
            );
        }
    }
    let autoscaler = base.of_kind("HorizontalPodAutoscaler").next().expect("an autoscaler");
    let scaled = base.find(
        text(autoscaler, "spec.scaleTargetRef.kind"),
        text(autoscaler, "spec.scaleTargetRef.name"),
    );
    for container in containers(scaled) {
        at(container, "resources.requests.cpu");
    }

    // The optional components patch and select what the base defines.
    let dir = Path::new(K8S).join("components");
    let patch = load(&dir.join("gpu/learner-gpu.yaml")).remove(0);
    let learner = base.find(text(&patch, "kind"), text(&patch, "metadata.name"));
    for container in containers(&patch) {
        assert!(containers(learner).iter().any(|c| text(c, "name") == text(container, "name")));
        at(container, "resources.limits.[nvidia.com/gpu]");
    }
    let monitor = load(&dir.join("prometheus-operator/service-monitor.yaml")).remove(0);
    let selector = map(&monitor, "spec.selector.matchLabels");
    let port = text(&list(&monitor, "spec.endpoints")[0], "port");
    let mut roles = Vec::new();
    for service in base.of_kind("Service").filter(|s| selects(selector, map(s, "metadata.labels"))) {
        assert!(
            list(service, "spec.ports").iter().any(|p| text(p, "name") == port),
            "{}",
            describe(service)
        );
        roles.push(text(service, "metadata.labels.[app.kubernetes.io/component]"));
    }
    roles.sort();
    assert_eq!(roles, ["actor", "learner", "replay"], "the ServiceMonitor scrapes every role");
}

#[test]
fn every_containers_environment_makes_a_valid_config() {
    let base = Base::load();
    let gpu = load(&Path::new(K8S).join("components/gpu/learner-gpu.yaml")).remove(0);
    let mut checked = 0;
    for (workload, patch) in base
        .workloads()
        .map(|w| (w, None))
        .chain([(base.find("StatefulSet", "fleet-learner"), Some(&gpu))])
    {
        let mount_of = |volume: &str| {
            containers(workload)[0]["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|m| text(m, "name") == volume)
                .map(|m| text(m, "mountPath").to_owned())
        };
        let container = &containers(workload)[0];
        let mut env = env_of(container);
        if let Some(patch) = patch {
            env.extend(env_of(&containers(patch)[0]));
        }
        let config_dir = mount_of("config").expect("the config volume is mounted");
        assert_eq!(env["FLEET_CONFIG"], format!("{config_dir}/fleet.toml"));
        env.insert("FLEET_CONFIG".into(), format!("{K8S}/fleet.toml"));
        let role: Vec<&str> = list(container, "args").iter().map(|a| a.as_str().unwrap()).collect();
        let help = Command::new(FLEET).args(&role).arg("--help").output().unwrap();
        assert!(
            help.status.success(),
            "{}: `fleet {}` is not a role",
            describe(workload),
            role.join(" ")
        );

        let output = Command::new(FLEET).arg("config").env_clear().envs(&env).output().unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            describe(workload),
            String::from_utf8_lossy(&output.stderr)
        );
        let config: toml::Table = String::from_utf8(output.stdout).unwrap().parse().unwrap();
        if let ["replay" | "learner"] = role[..] {
            // The root filesystem is read-only: checkpoints must land on the volume.
            let checkpoints = config[role[0]]["checkpoint_dir"].as_str().unwrap();
            let data = mount_of("data").expect("replay and the learner mount their data volume");
            assert!(checkpoints.starts_with(&format!("{data}/")), "{checkpoints} is not under {data}");
        }
        if role == ["learner"] {
            let device = if patch.is_some() { "cuda" } else { "cpu" };
            assert_eq!(config["learner"]["device"].as_str(), Some(device));
        }
        checked += 1;
    }
    assert_eq!(checked, 4, "replay, learner, actor and the GPU learner");
}

/// The TLS component patches replay, the learner and the actors: each
/// container mounts the Secret's volume, which the patch defines, points
/// every `FLEET_TLS__*` file key at a file in it, and makes a config `fleet
/// config` accepts with real certificate files there; replay's and the
/// learner's probes become `fleet health`, which speaks TLS.
#[test]
fn the_tls_component_patches_every_workload_into_a_valid_tls_config() {
    let base = Base::load();
    let dir = Path::new(K8S).join("components/tls");
    let kustomization = load(&dir.join("kustomization.yaml")).remove(0);
    let pki = crate::tls::Pki::new();
    let mut patched = Vec::new();
    for entry in list(&kustomization, "patches") {
        let patch = load(&dir.join(text(entry, "path"))).remove(0);
        let workload = base.find(text(&patch, "kind"), text(&patch, "metadata.name"));
        let name = describe(workload);
        let volumes: Vec<&Value> = list(&patch, "spec.template.spec.volumes").iter().collect();
        for container in containers(&patch) {
            let original = containers(workload)
                .iter()
                .find(|c| text(c, "name") == text(container, "name"))
                .unwrap_or_else(|| panic!("{name}: no container {}", text(container, "name")));
            let mount = &list(container, "volumeMounts")[0];
            let volume = volumes
                .iter()
                .find(|v| text(v, "name") == text(mount, "name"))
                .unwrap_or_else(|| panic!("{name}: mount {mount:?} has no volume in the patch"));
            assert_eq!(text(volume, "secret.secretName"), "fleet-tls", "{name}");
            let mount_path = text(mount, "mountPath");
            let tls_env = env_of(container);
            for key in ["CERT_FILE", "KEY_FILE", "CA_FILE", "CLIENT_CA_FILE"] {
                let path = &tls_env[&format!("FLEET_TLS__{key}")];
                assert!(
                    path.starts_with(&format!("{mount_path}/")),
                    "{name}: {key} {path} is not in the Secret"
                );
            }
            if env_of(original).contains_key("FLEET_LISTEN") {
                for probe in ["readinessProbe", "livenessProbe"] {
                    assert!(at(container, &format!("{probe}.grpc")).is_null(), "{name}: {probe} drops grpc");
                    let command: Vec<&str> = list(container, &format!("{probe}.exec.command"))
                        .iter()
                        .map(|a| a.as_str().unwrap())
                        .collect();
                    assert_eq!(command, ["fleet", "health"], "{name}: {probe}");
                }
            }
            // The Secret's files, here the test's, with the ConfigMap's fleet.toml.
            let mut env = env_of(original);
            for (variable, path) in tls_env {
                let file = match path.rsplit('/').next().unwrap() {
                    "tls.crt" => "cert.pem",
                    "tls.key" => "key.pem",
                    "ca.crt" => "ca.pem",
                    other => panic!("{name}: {variable} names an unknown Secret key {other}"),
                };
                env.insert(variable, pki.path(file).display().to_string());
            }
            env.insert("FLEET_CONFIG".into(), format!("{K8S}/fleet.toml"));
            let output = Command::new(FLEET).arg("config").env_clear().envs(&env).output().unwrap();
            assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
            let config: toml::Table = String::from_utf8(output.stdout).unwrap().parse().unwrap();
            assert_eq!(config["tls"]["cert_file"].as_str(), Some(env["FLEET_TLS__CERT_FILE"].as_str()));
        }
        patched.push(text(workload, "metadata.name").to_owned());
    }
    patched.sort();
    assert_eq!(patched, ["fleet-actor", "fleet-learner", "fleet-replay"]);
}

/// The kubernetes-validate command, or `None` (after saying why) when it is
/// not installed and not required.
fn validator() -> Option<String> {
    let validator = std::env::var("FLEET_KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into());
    if !Command::new(&validator).arg("--version").output().is_ok_and(|o| o.status.success()) {
        let reason = format!("{validator} is not installed (pip install kubernetes-validate)");
        if std::env::var("FLEET_REQUIRE_KUBERNETES_VALIDATE").is_ok_and(|v| v == "1") {
            panic!("{reason}, and FLEET_REQUIRE_KUBERNETES_VALIDATE=1 requires this test to run");
        }
        eprintln!("skipped: {reason} (set FLEET_REQUIRE_KUBERNETES_VALIDATE=1 to make this a failure)");
        return None;
    }
    Some(validator)
}

/// Runs kubernetes-validate (strict) on `files`; returns its report, with
/// how many objects passed and the `(kind, apiVersion)` of each it has no
/// schema for.
fn validate(validator: &str, files: &[PathBuf]) -> (String, usize, Vec<(String, String)>) {
    let output = Command::new(validator).arg("--strict").args(files).output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    let passed = report.matches(" passed for resource ").count();
    let unknown = report
        .lines()
        .filter_map(|l| l.split_once("Couldn't find schema for kind ")?.1.split_once(" with api version "))
        .map(|(kind, rest)| (kind.to_owned(), rest.split_whitespace().next().unwrap_or("").to_owned()))
        .collect();
    (report, passed, unknown)
}

#[test]
fn resources_pass_the_kubernetes_schemas() {
    let Some(validator) = validator() else { return };
    let base = Base::load();
    let (report, passed, unknown) = validate(&validator, &base.files);
    assert_eq!(unknown, [], "{report}");
    assert_eq!(passed, base.objects.len(), "every object was checked against a schema: {report}");
}

/// A list a strategic merge patch merges item by item, and the field that
/// identifies an item (Kubernetes' `patchMergeKey`), for the lists fleet's
/// patches touch; any other list is replaced whole.
fn merge_key(list: &str) -> Option<&'static str> {
    match list {
        "containers" | "initContainers" | "volumes" | "env" | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// `patch` merged into `target` as a strategic merge patch does: mappings
/// merge key by key, `null` deletes a key, lists with a merge key merge
/// item by item (see [`merge_key`]), anything else is replaced.
fn merge(target: &mut Value, patch: &Value, field: &str) {
    match (target, patch) {
        (Value::Mapping(target), Value::Mapping(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                    continue;
                }
                let name = key.as_str().unwrap_or("");
                match target.get_mut(key) {
                    Some(existing) => merge(existing, value, name),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Sequence(target), Value::Sequence(patch)) if merge_key(field).is_some() => {
            let key = merge_key(field).unwrap();
            for item in patch {
                let id = item
                    .get(key)
                    .unwrap_or_else(|| panic!("a `{field}` item in a patch lacks its `{key}`"));
                match target.iter_mut().find(|t| t.get(key) == Some(id)) {
                    Some(existing) => merge(existing, item, field),
                    None => target.push(item.clone()),
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// The base's objects with the component in `dir` enabled: its resources
/// added, its patches merged into the base object of the same kind and
/// name, as `kubectl kustomize` renders an overlay that names the
/// component (namespaces and generated ConfigMaps aside, which no schema
/// check needs).
fn render_with(base: &Base, dir: &Path) -> Vec<Value> {
    let kustomization = load(&dir.join("kustomization.yaml")).remove(0);
    assert_eq!(text(&kustomization, "kind"), "Component", "{}", dir.display());
    let mut objects = base.objects.clone();
    let entries = |key: &str| kustomization.get(key).and_then(Value::as_sequence).cloned().unwrap_or_default();
    for resource in entries("resources") {
        objects.extend(load(&dir.join(resource.as_str().expect("resource paths are strings"))));
    }
    for entry in entries("patches") {
        let path = dir.join(text(&entry, "path"));
        for patch in load(&path) {
            let (kind, name) = (text(&patch, "kind"), text(&patch, "metadata.name"));
            let target = objects
                .iter_mut()
                .find(|o| text(o, "kind") == kind && text(o, "metadata.name") == name)
                .unwrap_or_else(|| panic!("{}: no {kind} named {name} to patch", path.display()));
            merge(target, &patch, "");
        }
    }
    objects
}

/// Every component under `deploy/k8s/components`.
fn components() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(Path::new(K8S).join("components"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// The TLS component rendered onto the base keeps what the base defines
/// and adds what the patches say: a check of the merge the schema test
/// below relies on.
#[test]
fn the_tls_component_renders_onto_the_base_as_kustomize_merges_it() {
    let base = Base::load();
    let rendered = render_with(&base, &Path::new(K8S).join("components/tls"));
    assert_eq!(rendered.len(), base.objects.len());
    let replay = rendered
        .iter()
        .find(|o| text(o, "kind") == "StatefulSet" && text(o, "metadata.name") == "fleet-replay")
        .unwrap();
    let original = &containers(base.find("StatefulSet", "fleet-replay"))[0];
    let container = &containers(replay)[0];
    let env = env_of(container);
    for (name, value) in env_of(original) {
        assert_eq!(env.get(&name), Some(&value), "the base's {name} is kept");
    }
    assert_eq!(env["FLEET_TLS__CERT_FILE"], "/etc/fleet/tls/tls.crt");
    let mounts: Vec<&str> = list(container, "volumeMounts").iter().map(|m| text(m, "mountPath")).collect();
    assert_eq!(mounts.len(), list(original, "volumeMounts").len() + 1, "{mounts:?}");
    assert!(mounts.contains(&"/etc/fleet/tls"), "{mounts:?}");
    let volumes = list(replay, "spec.template.spec.volumes");
    assert!(volumes.iter().any(|v| text(v, "name") == "tls"));
    assert!(volumes.len() > 1, "the base's volumes are kept");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert!(
            at(container, probe).get("grpc").is_none(),
            "{probe}: `grpc: null` removes the gRPC probe"
        );
        assert_eq!(list(container, &format!("{probe}.exec.command")).len(), 2);
    }
    assert_eq!(text(container, "image"), text(original, "image"));
}

/// Each component, rendered onto the base, passes the Kubernetes API
/// schemas (strict) like the base: every object of a Kubernetes API group
/// is checked, and only custom resources (prometheus-operator's
/// ServiceMonitor), for which the tool has no schema, are not.
#[test]
fn every_component_rendered_onto_the_base_passes_the_kubernetes_schemas() {
    let Some(validator) = validator() else { return };
    let base = Base::load();
    let dir = tempfile::tempdir().unwrap();
    let components = components();
    let names: Vec<String> = components
        .iter()
        .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["gpu", "prometheus-operator", "tls"] {
        assert!(names.iter().any(|n| n == expected), "no component {expected} in {names:?}");
    }
    for (component, name) in components.iter().zip(&names) {
        let objects = render_with(&base, component);
        let file = dir.path().join(format!("{name}.yaml"));
        let documents: Vec<String> = objects.iter().map(|o| serde_yaml_ng::to_string(o).unwrap()).collect();
        std::fs::write(&file, documents.join("---\n")).unwrap();
        let (report, passed, unknown) = validate(&validator, std::slice::from_ref(&file));
        for (kind, api_version) in &unknown {
            let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
            let built_in = group.is_empty() || !group.contains('.') || group.ends_with(".k8s.io");
            assert!(
                !built_in,
                "{name}: no schema for {kind} {api_version}, a Kubernetes API group: {report}"
            );
        }
        assert_eq!(
            passed + unknown.len(),
            objects.len(),
            "{name}: every rendered object was checked or is a custom resource: {report}"
        );
        assert!(passed >= base.objects.len(), "{name}: {report}");
    }
}
