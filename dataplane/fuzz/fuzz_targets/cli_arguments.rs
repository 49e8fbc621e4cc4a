//! Arbitrary JSON as a CLI tool's invocation arguments (`{"subcommand", "args", "fsal_mounts"}`)
//! through `arguments::parse`, and what it accepts into the container CLI's `run` argv. The
//! arguments are the agent's; invariants (any violation is a crash libFuzzer keeps):
//!
//! - nothing panics, whatever the input;
//! - accepted strings are the agent's exactly: the argv ends with the image, then the subcommand
//!   and each argument as one element, in order, and nothing of them comes before the image;
//! - a mount's paths are absolute and normalized (no empty, `.` or `..` segment), made of letters,
//!   digits, `_`, `.`, `-` and `/`; the container path is not reserved and not mounted twice; each
//!   `--mount` value reads back as exactly `type`, `src`, `dst` (and `ro`), with `dst` the path;
//! - parsing what was accepted gives it back unchanged.
#![no_main]

use std::path::PathBuf;
use std::time::Duration;

use aegis_seal_gateway::application::cli::arguments::{self, CliArguments};
use aegis_seal_gateway::infrastructure::container::{
    CliKind, ContainerCli, Limits, RunSpec, VolumeMount,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const IMAGE: &str = "localhost/busybox:latest";
/// Written out again rather than imported: the target checks the list, not only its use.
const RESERVED: [&str; 11] = [
    "/proc", "/sys", "/dev", "/tmp", "/bin", "/sbin", "/usr", "/lib", "/lib64", "/etc", "/root",
];

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        check(&value);
    }
});

fn check(value: &Value) {
    let Ok(parsed) = arguments::parse(value) else {
        return;
    };

    // The agent's strings, exactly.
    assert_eq!(
        value["subcommand"].as_str(),
        Some(parsed.subcommand.as_str())
    );
    let sent: Vec<&str> = value["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("accepted args are strings"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(parsed.args, sent);

    let mut targets = Vec::new();
    for m in &parsed.fsal_mounts {
        for path in [&m.mount_path, &m.remote_path] {
            assert!(normalized(path), "mount path {path:?}");
        }
        assert!(
            m.mount_path != "/"
                && !RESERVED
                    .iter()
                    .any(|r| m.mount_path == *r || m.mount_path.starts_with(&format!("{r}/"))),
            "reserved mount path {:?} accepted",
            m.mount_path
        );
        assert!(
            !targets.contains(&&m.mount_path),
            "{:?} mounted twice",
            m.mount_path
        );
        targets.push(&m.mount_path);
    }

    // Idempotent: what was accepted, sent again, is the same.
    let again = arguments::parse(&as_json(&parsed)).expect("accepted arguments, sent again");
    assert_eq!(again, parsed);

    check_argv(&parsed);
}

/// `/a/b`: absolute, no empty, `.` or `..` segment, no trailing `/` (but `/` itself), and only
/// characters a `--mount` value cannot read as a separator.
fn normalized(path: &str) -> bool {
    path == "/"
        || (path.starts_with('/')
            && path[1..].split('/').all(|s| !matches!(s, "" | "." | ".."))
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')))
}

fn as_json(a: &CliArguments) -> Value {
    json!({
        "subcommand": a.subcommand,
        "args": a.args,
        "fsal_mounts": a.fsal_mounts.iter().map(|m| json!({
            "volume_id": m.volume_id, "mount_path": m.mount_path,
            "remote_path": m.remote_path, "read_only": m.read_only,
        })).collect::<Vec<_>>(),
    })
}

/// The `run` argv the engine would build for these arguments, checked by structure.
fn check_argv(a: &CliArguments) {
    let mut command = vec![a.subcommand.clone()];
    command.extend(a.args.iter().cloned());
    let mounts: Vec<VolumeMount> = a
        .fsal_mounts
        .iter()
        .enumerate()
        .map(|(i, m)| VolumeMount {
            volume: format!("aegis-cli-exec-{i}"),
            target: m.mount_path.clone(),
            read_only: m.read_only,
        })
        .collect();
    let spec = RunSpec {
        name: "seal-exec-1".into(),
        labels: vec![("seal.100monkeys.ai/tool".into(), "t".into())],
        image: IMAGE.into(),
        command: command.clone(),
        limits: Limits {
            memory: "64m".into(),
            cpus: "0.5".into(),
            pids: 32,
        },
        volumes: Vec::new(),
        workdir: mounts.first().map(|m| m.target.clone()),
        mounts,
        timeout: Duration::from_secs(5),
        max_output_bytes: 1024,
    };
    for kind in [CliKind::Podman, CliKind::Docker] {
        let cli = ContainerCli {
            program: PathBuf::from("/usr/bin/podman"),
            kind,
            version: "5".into(),
            source: "PATH",
        };
        let argv = cli.run_argv(&spec, None);
        let image_at = argv.len() - command.len() - 1;
        assert_eq!(argv[image_at], IMAGE, "{argv:?}");
        assert_eq!(argv[image_at + 1..], command[..], "{argv:?}");

        let options = &argv[..image_at];
        let values: Vec<&String> = options
            .iter()
            .zip(options.iter().skip(1))
            .filter(|(flag, _)| *flag == "--mount")
            .map(|(_, value)| value)
            .collect();
        assert_eq!(values.len(), a.fsal_mounts.len(), "{argv:?}");
        for (value, m) in values.iter().zip(&a.fsal_mounts) {
            let pairs: Vec<(&str, &str)> = value
                .split(',')
                .map(|kv| kv.split_once('=').unwrap_or_else(|| panic!("{value}")))
                .collect();
            let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
            let expected = if m.read_only {
                vec!["type", "src", "dst", "ro"]
            } else {
                vec!["type", "src", "dst"]
            };
            assert_eq!(keys, expected, "{value}");
            assert_eq!(pairs[2].1, m.mount_path, "{value}");
            assert!(!pairs[2].1.contains('='), "{value}");
        }
    }
}
