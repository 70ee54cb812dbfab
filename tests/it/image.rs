//! The runtime image, assembled offline by `scripts/image` (debootstrap and buildah) from the
//! test build's binary, then run as its own user with the root read-only and the state
//! directory a separate writable one, as a pod with `readOnlyRootFilesystem` has it: first
//! inside its root, mounted with buildah and entered with chroot; then as a container, with
//! podman and runc (crun refuses this machine's cgroups v1 hierarchy, and raising rlimits is not
//! allowed here, so the container keeps the machine's open-files limit).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Something mounted for the test, unmounted (lazily, whatever happened) on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// buildah or podman on a store of the test's own (vfs), emptied when dropped.
struct Store {
    program: &'static str,
    dir: PathBuf,
    /// Options after the store's: podman's runtime.
    options: &'static [&'static str],
    /// What empties the store.
    cleanup: &'static [&'static str],
}

impl Store {
    fn buildah(dir: PathBuf) -> Store {
        Store {
            program: "buildah",
            dir,
            options: &[],
            cleanup: &["rm", "--all"],
        }
    }

    /// runc: crun refuses this machine's cgroups v1 hierarchy.
    fn podman(dir: PathBuf) -> Store {
        Store {
            program: "podman",
            dir,
            options: &["--runtime", "runc"],
            cleanup: &["rmi", "--all", "--force"],
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(self.program);
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(self.options);
        c
    }

    /// Run `args`; its standard output and error. Fails the test if it fails.
    fn output(&self, args: &[&str]) -> (String, String) {
        let out = self
            .cmd()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}: run ./scripts/services install", self.program));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "{} {args:?}: {stdout}{stderr}",
            self.program
        );
        (stdout, stderr)
    }

    /// Run `args`; its standard output, trimmed.
    fn run(&self, args: &[&str]) -> String {
        self.output(args).0.trim().to_string()
    }

    /// `podman run` with what this machine allows: its own hard limits on open files and
    /// processes (raising rlimits is refused here) and the host's network.
    fn run_container(&self, args: &[&str]) -> String {
        // podman's defaults raise them, which this machine refuses: keep its hard limits.
        let hard = |flag: &str| {
            Command::new("sh")
                .args(["-c", &format!("ulimit -H{flag}")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .ok()
                .filter(|l| l.parse::<u64>().is_ok())
                .unwrap_or_else(|| "1024".into())
        };
        let (files, procs) = (hard("n"), hard("u"));
        let nofile = format!("nofile={files}:{files}");
        let nproc = format!("nproc={procs}:{procs}");
        let mut all = vec![
            "run",
            "--rm",
            "--read-only",
            "--ulimit",
            &nofile,
            "--ulimit",
            &nproc,
            "--network",
            "host",
        ];
        all.extend(args);
        let (stdout, stderr) = self.output(&all);
        stdout + &stderr
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.cmd().args(self.cleanup).output();
    }
}

/// Run `args` inside `root` as uid/gid 10001 with a clean environment; status and output.
fn inside(root: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("/usr/sbin/chroot")
        .arg("--userspec=10001:10001")
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/var/lib/auditship")
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("chroot: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_image_runs_its_binary_pipelines_and_demo_as_its_user_on_a_read_only_root() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for tool in ["debootstrap", "buildah", "podman", "runc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} is not installed: run ./scripts/services install");
    }
    let dir = tempfile::tempdir().unwrap();
    // The test build's binary, stripped (a debug build carries hundreds of MB of symbols).
    let binary = dir.path().join("auditship");
    std::fs::copy(env!("CARGO_BIN_EXE_auditship"), &binary).unwrap();
    let stripped = Command::new("strip").arg(&binary).status();
    assert!(stripped.is_ok_and(|s| s.success()), "strip (binutils) failed");
    let archive = dir.path().join("auditship.oci.tar");
    let out = Command::new(root.join("scripts/image"))
        .arg("--binary")
        .arg(&binary)
        .arg("--out")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/image: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The image as an OCI archive: its configuration is the Dockerfile's.
    let b = Store::buildah(dir.path().join("buildah"));
    let oci = format!("oci-archive:{}", archive.display());
    let ctr = b.run(&["from", "--quiet", &oci]);
    let config: serde_json::Value =
        serde_json::from_str(&b.run(&["inspect", "--type", "container", &ctr])).unwrap();
    let c = &config["OCIv1"]["config"];
    assert_eq!(c["User"], "10001:10001");
    assert_eq!(c["Entrypoint"], serde_json::json!(["auditship"]));
    assert!(c["Volumes"].get("/var/lib/auditship").is_some(), "{c}");
    assert_eq!(
        c["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("USER 10001:10001") && dockerfile.contains("ENTRYPOINT [\"auditship\"]"));

    // Its root, read-only, with the state directory a writable one of its own.
    let mnt = PathBuf::from(b.run(&["mount", &ctr]));
    let ro = dir.path().join("ro");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let mount = |args: &[&str], target: &Path| {
        let ok = Command::new("mount")
            .args(args)
            .arg(target)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount {args:?} {} (the tests run as root)", target.display());
    };
    mount(&["--bind", mnt.to_str().unwrap()], &ro);
    let _ro = Mounted(ro.clone());
    mount(&["-o", "remount,bind,ro"], &ro);
    let chowned = Command::new("chown")
        .arg("10001:10001")
        .arg(&state)
        .status()
        .unwrap()
        .success();
    assert!(chowned);
    let state_in = ro.join("var/lib/auditship");
    mount(&["--bind", state.to_str().unwrap()], &state_in);
    let _state = Mounted(state_in);

    let (ok, text) = inside(&ro, &["/usr/local/bin/auditship", "--version"]);
    assert!(ok && text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    let (ok, text) = inside(&ro, &["id", "-u"]);
    assert!(ok && text.trim() == "10001", "{text}");

    let mut pipelines: Vec<String> = std::fs::read_dir(ro.join("etc/auditship/pipelines"))
        .unwrap()
        .map(|e| {
            format!(
                "/etc/auditship/pipelines/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    pipelines.sort();
    let shipped = std::fs::read_dir(root.join("pipelines")).unwrap().count();
    assert_eq!(pipelines.len(), shipped, "every shipped pipeline is in the image");
    let mut validate = vec!["/usr/local/bin/auditship", "validate"];
    validate.extend(pipelines.iter().map(String::as_str));
    let (ok, text) = inside(&ro, &validate);
    assert!(ok, "validate in the image: {text}");

    let (ok, text) = inside(
        &ro,
        &[
            "/usr/local/bin/auditship",
            "demo",
            "--dir",
            "/var/lib/auditship/demo",
        ],
    );
    assert!(ok, "demo in the image: {text}");
    assert!(text.contains("every event archived exactly once"), "{text}");
    assert!(
        state.join("demo/state/checkpoints.db").exists(),
        "the demo wrote to the state volume"
    );

    // The root is read-only for the process: only the state directory takes writes.
    let (ok, text) = inside(&ro, &["/bin/sh", "-c", "touch /etc/auditship/x"]);
    assert!(!ok && text.contains("Read-only file system"), "{text}");

    // The same archive as a container.
    drop(_state);
    drop(_ro);
    let podman = Store::podman(dir.path().join("podman"));
    let loaded = podman.run(&["load", "--quiet", "--input", archive.to_str().unwrap()]);
    let image = loaded
        .rsplit(':')
        .next()
        .map(str::trim)
        .unwrap_or_else(|| panic!("podman load said {loaded}"))
        .to_string();
    let volume = dir.path().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    assert!(Command::new("chown")
        .arg("10001:10001")
        .arg(&volume)
        .status()
        .unwrap()
        .success());
    let bind = format!("{}:/var/lib/auditship", volume.display());
    let text = podman.run_container(&["--volume", &bind, &image, "--version"]);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    let text = podman.run_container(&[
        "--volume",
        &bind,
        &image,
        "demo",
        "--dir",
        "/var/lib/auditship/demo",
    ]);
    assert!(text.contains("every event archived exactly once"), "{text}");
    assert!(volume.join("demo/state/checkpoints.db").exists());
    let text = podman.run_container(&[
        "--entrypoint",
        "/bin/sh",
        &image,
        "-c",
        "id -u; touch /etc/x || echo refused",
    ]);
    assert!(text.contains("10001") && text.contains("refused"), "{text}");
}
