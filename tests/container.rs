//! The container image of `docker/Dockerfile`, built with Debian's podman and run against a
//! local redis-server. No image registry is needed: the runtime stage's base image is made from
//! Debian packages (debootstrap, `podman import`) and the binary is the one cargo built for the
//! tests, passed in the build context (`BINARY=prebuilt`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use redis::Commands;

/// The base image the test makes, kept between runs.
const BASE: &str = "localhost/ringproxy-base:bookworm";
const IMAGE: &str = "localhost/ringproxy:test";

/// podman's settings for a machine without systemd or a registry: runc, the cgroupfs
/// manager, and no default ulimits (a container may not raise them here).
const CONTAINERS_CONF: &str = "[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\nevents_logger = \"file\"\n";

struct Podman {
    conf: PathBuf,
}

impl Podman {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .output()
            .expect("podman (scripts/test installs it)")
    }

    /// Runs podman and returns its standard output, failing the test if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A minimal Debian bookworm as an image, unless one was made before.
    fn ensure_base(&self, work: &Path) {
        if self.run(&["image", "exists", BASE]).status.success() {
            return;
        }
        let rootfs = work.join("rootfs");
        let debootstrap = Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&rootfs)
            .arg("http://deb.debian.org/debian")
            .output()
            .expect("debootstrap (scripts/test installs it)");
        assert!(
            debootstrap.status.success(),
            "debootstrap: {}",
            String::from_utf8_lossy(&debootstrap.stderr)
        );
        for unneeded in [
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
            "usr/share/info",
            "var/lib/apt/lists",
            "var/cache/apt",
        ] {
            let _ = std::fs::remove_dir_all(rootfs.join(unneeded));
        }
        let tar = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{}' -c . | podman import - {BASE}",
                rootfs.display()
            ))
            .env("CONTAINERS_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(
            tar.status.success(),
            "{}",
            String::from_utf8_lossy(&tar.stderr)
        );
    }
}

/// A container, removed when dropped.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run(&["rm", "-f", &self.name]);
    }
}

#[test]
fn the_image_serves_a_pool_as_a_non_root_user_and_reports_its_health() {
    let work = TempDir::new("container");
    let podman = Podman {
        conf: work.write("containers.conf", CONTAINERS_CONF),
    };
    podman.ensure_base(&work.0);
    // The build context: the Dockerfile and the binary under test.
    let context = work.0.join("context");
    std::fs::create_dir_all(context.join("docker")).unwrap();
    let dockerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/Dockerfile");
    std::fs::copy(dockerfile, context.join("docker/Dockerfile")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_ringproxy"),
        context.join("docker/ringproxy"),
    )
    .unwrap();
    let base = format!("RUNTIME_BASE={BASE}");
    podman.ok(&[
        "build",
        "--format",
        "docker",
        "-f",
        "docker/Dockerfile",
        "--build-arg",
        "BINARY=prebuilt",
        "--build-arg",
        &base,
        "-t",
        IMAGE,
        context.to_str().unwrap(),
    ]);
    let user = podman.ok(&["image", "inspect", IMAGE, "--format", "{{.Config.User}}"]);
    assert_eq!(
        user, "10001:10001",
        "the process runs as an unprivileged user"
    );
    let size: u64 = podman
        .ok(&["image", "inspect", IMAGE, "--format", "{{.Size}}"])
        .parse()
        .unwrap();
    eprintln!("image size with the test binary: {} MB", size / 1_000_000);

    let redis = Redis::start();
    let (port, admin) = (free_port(), free_port());
    let config = work.write("config.yaml", &pool_over(port, &[&redis], &["one"]));
    let container = Container {
        podman: &podman,
        name: format!("ringproxy-test-{}", std::process::id()),
    };
    let mount = format!("{}:/etc/ringproxy/config.yaml:ro", config.display());
    let admin_listen = format!("RINGPROXY_ADMIN_LISTEN=127.0.0.1:{admin}");
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &container.name,
        "--network",
        "host",
        "-e",
        &admin_listen,
        "-v",
        &mount,
        IMAGE,
    ]);
    wait_until("the container serves", Duration::from_secs(30), || {
        http_get(admin, "/ready").is_some_and(|(status, _)| status == 200)
    });
    let _: () = connect(port).set("from-container", "yes").unwrap();
    assert_eq!(
        redis.client().get::<_, String>("from-container").unwrap(),
        "yes"
    );
    let health = podman.run(&["healthcheck", "run", &container.name]);
    assert!(
        health.status.success(),
        "the image's health check: {}",
        String::from_utf8_lossy(&health.stdout)
    );
    // podman stop sends SIGTERM: ringproxy drains and exits 0.
    podman.ok(&["stop", "-t", "15", &container.name]);
    let code = podman.ok(&[
        "inspect",
        &container.name,
        "--format",
        "{{.State.ExitCode}}",
    ]);
    assert_eq!(code, "0");
}
