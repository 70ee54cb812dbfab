//! The deploy files checked with the tools their users run: hadolint over the `Dockerfile`,
//! yamllint over every YAML file, and `deploy/kubernetes` rendered by `kubectl kustomize` (from
//! Debian's kubernetes-client) and validated by `kubernetes-validate` against the Kubernetes
//! schemas, strictly (an unknown field fails). All pinned, installed by `scripts/services`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A path `scripts/services env` exports as `var`, or how to install it.
fn service(var: &str) -> PathBuf {
    let out = Command::new(root().join("scripts/services"))
        .arg("env")
        .output()
        .unwrap_or_else(|e| panic!("scripts/services env: {e}"));
    let env = String::from_utf8_lossy(&out.stdout);
    let path = env
        .lines()
        .find_map(|l| l.strip_prefix(&format!("export {var}=")))
        .map(|p| PathBuf::from(p.trim_matches('\'')))
        .unwrap_or_else(|| panic!("scripts/services env names no {var}: {env}"));
    assert!(
        path.exists(),
        "{} is missing: run `./scripts/services install`",
        path.display()
    );
    path
}

/// A tool installed in the Python test tools' virtualenv.
fn pytool(name: &str) -> PathBuf {
    let python = service("AUDITSHIP_PYTHON");
    let tool = python.with_file_name(name);
    assert!(
        tool.exists(),
        "{} is missing: run `./scripts/services install`",
        tool.display()
    );
    tool
}

/// Run `cmd`; its exit status and everything it printed.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn hadolint_passes_the_dockerfile_and_catches_what_it_should() {
    let hadolint = pytool("hadolint");
    let dockerfile = root().join("Dockerfile");
    let (ok, text) = run(Command::new(&hadolint).arg("--no-color").arg(&dockerfile));
    assert!(ok, "hadolint:\n{text}");

    // The lint runs for real: the same file with its exceptions removed, and running as root, is
    // refused for those.
    let original = std::fs::read_to_string(&dockerfile).unwrap();
    let altered = original
        .replace("# hadolint ignore=DL3008\n", "")
        .replace("USER 10001:10001\n", "USER root\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Dockerfile");
    std::fs::write(&file, altered).unwrap();
    let (ok, text) = run(Command::new(&hadolint).arg("--no-color").arg(&file));
    assert!(!ok, "hadolint passed an altered Dockerfile");
    assert!(text.contains("DL3008"), "{text}");
    assert!(text.contains("DL3002"), "{text}");
}

#[test]
fn the_image_runs_as_the_user_the_manifests_name() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("USER 10001:10001"), "non-root user");
    assert!(dockerfile.contains("ENTRYPOINT [\"auditship\"]"));
    assert!(dockerfile.contains("VOLUME [\"/var/lib/auditship\"]"));
    for label in ["title", "version", "source", "licenses"] {
        assert!(
            dockerfile.contains(&format!("org.opencontainers.image.{label}=")),
            "OCI label {label}"
        );
    }
}

#[test]
fn yamllint_passes_every_yaml_file() {
    let (ok, list) = run(Command::new("git").current_dir(root()).args([
        "ls-files",
        "--cached",
        "--others",
        "--exclude-standard",
        "*.yaml",
        "*.yml",
    ]));
    assert!(ok, "git ls-files: {list}");
    let files: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        files.iter().any(|f| f.starts_with("deploy/kubernetes/")),
        "the manifests are among the files: {files:?}"
    );
    let (ok, text) = run(Command::new(pytool("yamllint"))
        .current_dir(root())
        .arg("--strict")
        .args(&files));
    assert!(ok, "yamllint:\n{text}");

    // It reads the repository's settings and fails on what they forbid.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "a:\n    b: 1\n  c: [1,2]\n").unwrap();
    let (ok, _) = run(Command::new(pytool("yamllint"))
        .current_dir(root())
        .arg("--strict")
        .arg(&bad));
    assert!(!ok, "yamllint passed a malformed file");
}

/// `kubectl kustomize deploy/kubernetes`.
fn render() -> String {
    let (ok, text) = run(Command::new(service("AUDITSHIP_KUBECTL"))
        .arg("kustomize")
        .arg(root().join("deploy/kubernetes")));
    assert!(ok, "kubectl kustomize:\n{text}");
    text
}

#[test]
fn the_kustomization_renders_and_every_resource_validates() {
    let rendered = render();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let (ok, text) = run(Command::new(pytool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .arg(&file));
    assert!(ok, "kubernetes-validate:\n{text}");
    for kind in [
        "configmap/auditship-pipelines",
        "service/auditship",
        "statefulset/auditship",
        "poddisruptionbudget/auditship",
        "cronjob/auditship-backfill",
        "persistentvolumeclaim/auditship-backfill",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind} validated:\n{text}"
        );
    }

    // A field the schema does not know fails: the validation is strict.
    let broken = rendered.replacen("readOnlyRootFilesystem: true", "readOnlyRootFilesytem: true", 1);
    assert_ne!(broken, rendered);
    std::fs::write(&file, broken).unwrap();
    let (ok, text) = run(Command::new(pytool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .arg(&file));
    assert!(!ok, "a misspelt field passed:\n{text}");
}

/// Every document of a YAML text, read by PyYAML (the test tools' Python) as JSON.
fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new(service("AUDITSHIP_PYTHON"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML could not read the YAML");
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

#[test]
fn the_pods_run_hardened_from_the_one_image_line_with_the_key_from_a_secret() {
    let rendered = render();
    let docs = yaml_docs(&rendered);
    let kustomization =
        yaml_docs(&std::fs::read_to_string(root().join("deploy/kubernetes/kustomization.yaml")).unwrap());
    let image = &kustomization[0]["images"][0];
    let want = format!(
        "{}:{}",
        image["newName"].as_str().unwrap(),
        image["newTag"].as_str().unwrap()
    );
    let pod_specs: Vec<(&str, &serde_json::Value)> = docs
        .iter()
        .filter_map(|d| match d["kind"].as_str()? {
            "StatefulSet" => Some(("StatefulSet", &d["spec"]["template"]["spec"])),
            "CronJob" => Some(("CronJob", &d["spec"]["jobTemplate"]["spec"]["template"]["spec"])),
            _ => None,
        })
        .collect();
    assert_eq!(pod_specs.len(), 2, "a StatefulSet and a CronJob");
    for (kind, spec) in pod_specs {
        assert_eq!(
            spec["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{kind}"
        );
        assert_eq!(
            spec["securityContext"]["runAsUser"].as_u64(),
            Some(10001),
            "{kind}"
        );
        let containers = spec["containers"].as_array().unwrap();
        for c in containers {
            assert_eq!(
                c["image"].as_str(),
                Some(want.as_str()),
                "{kind}: the kustomization's image"
            );
            assert_eq!(
                c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{kind}"
            );
            assert_eq!(
                c["envFrom"][0]["secretRef"]["name"].as_str(),
                Some("auditship"),
                "{kind}"
            );
            assert!(
                c["resources"]["requests"]["memory"].is_string(),
                "{kind}: requests"
            );
            let mounts: Vec<&str> = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| m["mountPath"].as_str())
                .collect();
            assert!(mounts.contains(&"/var/lib/auditship"), "{kind}: state volume");
            assert!(
                !rendered.contains("MIOSA_API_KEY=") && !rendered.contains("msk_"),
                "no key in the manifests"
            );
            if kind == "StatefulSet" {
                assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/health"));
                assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/live"));
            }
        }
    }
    assert!(
        docs.iter()
            .any(|d| d["kind"].as_str() == Some("PodDisruptionBudget")),
        "a disruption budget"
    );
}

#[test]
fn the_manifests_pipeline_file_validates() {
    let (ok, text) = run(Command::new(env!("CARGO_BIN_EXE_auditship"))
        .arg("validate")
        .arg(root().join("deploy/kubernetes/archive.toml")));
    assert!(ok, "auditship validate:\n{text}");
}
