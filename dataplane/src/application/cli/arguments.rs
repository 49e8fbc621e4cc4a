//! The invocation arguments of a CLI tool: `{"subcommand": "...", "args": ["..."], "fsal_mounts": [...]}`.
//!
//! Stricter than upstream: a non-string argument is refused rather than silently dropped (dropping
//! one changes what the command means), and `fsal_mounts` is optional (a run without a workspace
//! is valid). Mount paths are normalized and restricted so they cannot inject `--mount` options.

use serde_json::Value;

/// Most arguments after the subcommand.
pub const MAX_ARGS: usize = 1024;
/// Most bytes of all arguments together.
pub const MAX_ARGS_BYTES: usize = 256 * 1024;
/// Most workspace mounts of one run.
pub const MAX_MOUNTS: usize = 16;
/// Paths a workspace may not be mounted on, nor under: the kernel's file systems, the container's
/// own scratch space and run state, and where images keep their programs and configuration
/// (`/opt` and `/app` included), where a volume the agent can write would replace the allowlisted
/// command itself.
pub const RESERVED_MOUNT_PATHS: [&str; 17] = [
    "/proc", "/sys", "/dev", "/tmp", "/run", "/bin", "/sbin", "/usr", "/lib", "/lib32", "/lib64",
    "/libx32", "/etc", "/root", "/opt", "/app", "/var",
];

/// Where the NFS server exports workspaces: `<root>/<tenant_id>/<volume_id>` (ADR-036). A tenant's
/// calls mount only what lies under its own directory.
pub const NFS_VOLUMES_ROOT: &str = "/aegis/volumes";

/// Parsed, validated arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliArguments {
    pub subcommand: String,
    pub args: Vec<String>,
    pub fsal_mounts: Vec<FsalMount>,
}

/// An NFS-exported workspace volume to mount (reference §5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsalMount {
    pub volume_id: String,
    pub mount_path: String,
    pub read_only: bool,
    /// The export path on the NFS server, e.g. `/aegis/volumes/<tenant>/<volume>`.
    pub remote_path: String,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses `params.arguments`; the error is the 400 message.
pub fn parse(arguments: &Value) -> Result<CliArguments, String> {
    let obj = arguments.as_object().ok_or_else(|| {
        format!(
            "CLI invocation arguments must be an object, not {}",
            kind(arguments)
        )
    })?;
    let subcommand = match obj.get("subcommand") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("CLI invocation requires subcommand".into()),
    };
    // No allowlist holds a control character, and the subcommand is logged: a line break in it
    // would write a line of the agent's choosing into the gateway's log.
    if subcommand.chars().any(char::is_control) {
        return Err("CLI invocation subcommand contains a control character".into());
    }
    let args = match obj.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_ARGS {
                return Err(format!("CLI invocation has more than {MAX_ARGS} args"));
            }
            let mut args = Vec::with_capacity(items.len());
            let mut total = 0usize;
            for (i, item) in items.iter().enumerate() {
                let Value::String(s) = item else {
                    return Err(format!(
                        "CLI invocation args[{i}] must be a string, not {}",
                        kind(item)
                    ));
                };
                if s.contains('\0') {
                    return Err(format!("CLI invocation args[{i}] contains a NUL byte"));
                }
                total += s.len();
                args.push(s.clone());
            }
            if total > MAX_ARGS_BYTES {
                return Err(format!(
                    "CLI invocation args exceed {MAX_ARGS_BYTES} bytes in total"
                ));
            }
            args
        }
        Some(other) => {
            return Err(format!(
                "CLI invocation args must be an array of strings, not {}",
                kind(other)
            ));
        }
    };
    let fsal_mounts = match obj.get("fsal_mounts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_MOUNTS {
                return Err(format!(
                    "CLI invocation has more than {MAX_MOUNTS} fsal_mounts"
                ));
            }
            let mut mounts: Vec<FsalMount> = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let mount = parse_mount(i, item)?;
                if mounts.iter().any(|m| m.mount_path == mount.mount_path) {
                    return Err(format!(
                        "fsal_mounts[{i}].mount_path {} is mounted twice",
                        mount.mount_path
                    ));
                }
                mounts.push(mount);
            }
            mounts
        }
        Some(other) => {
            return Err(format!(
                "CLI invocation fsal_mounts must be an array, not {}",
                kind(other)
            ));
        }
    };
    Ok(CliArguments {
        subcommand,
        args,
        fsal_mounts,
    })
}

fn parse_mount(i: usize, item: &Value) -> Result<FsalMount, String> {
    let obj = item
        .as_object()
        .ok_or_else(|| format!("fsal_mounts[{i}] must be an object, not {}", kind(item)))?;
    let text = |field: &str| match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err(format!("fsal_mounts[{i}].{field} is required")),
    };
    let volume_id = text("volume_id")?;
    let mount_path = normalize_path(&text("mount_path")?).ok_or_else(|| {
        format!(
            "fsal_mounts[{i}].mount_path must be an absolute path of letters, digits, '_', '.', '-' and '/', without '..'"
        )
    })?;
    if mount_path == "/"
        || RESERVED_MOUNT_PATHS
            .iter()
            .any(|p| mount_path == *p || mount_path.starts_with(&format!("{p}/")))
    {
        return Err(format!(
            "fsal_mounts[{i}].mount_path {mount_path} is reserved"
        ));
    }
    let remote_path = normalize_path(&text("remote_path")?).ok_or_else(|| {
        format!(
            "fsal_mounts[{i}].remote_path must be an absolute path of letters, digits, '_', '.', '-' and '/', without '..'"
        )
    })?;
    let read_only = match obj.get("read_only") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "fsal_mounts[{i}].read_only must be a boolean, not {}",
                kind(other)
            ));
        }
    };
    Ok(FsalMount {
        volume_id,
        mount_path,
        read_only,
        remote_path,
    })
}

/// Why a mount lies outside the calling tenant's workspaces, if one does. `fsal_mounts` come from
/// the agent's own arguments, so without this any agent could mount another tenant's volume, or
/// the whole export. A call without a tenant has no workspaces. Paths are already normalized.
pub fn mount_outside_tenant(mounts: &[FsalMount], tenant_id: Option<&str>) -> Option<String> {
    // A tenant id that is not one plain path segment (`a/b`, `..`) names no directory of its own.
    let segment = |t: &str| !matches!(t, "" | "." | "..") && plain_segment(t);
    let own = tenant_id.map(|t| (segment(t), format!("{NFS_VOLUMES_ROOT}/{t}/")));
    mounts.iter().enumerate().find_map(|(i, m)| match &own {
        Some((true, own)) if m.remote_path.starts_with(own.as_str()) => None,
        Some((true, own)) => Some(format!(
            "fsal_mounts[{i}].remote_path {} is not under {own}",
            m.remote_path
        )),
        Some((false, _)) | None => Some(format!(
            "fsal_mounts[{i}].remote_path {}: the caller's tenant has no workspace directory",
            m.remote_path
        )),
    })
}

/// Only `A-Z a-z 0-9 _ . -`: nothing that could change the meaning of a `--mount` value.
fn plain_segment(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An absolute path with `.` and empty segments removed; `None` with `..`, or characters that
/// could change the meaning of a `--mount` value (`,`, `=`, quotes, spaces, controls).
fn normalize_path(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let mut out = String::with_capacity(p.len());
    for segment in p.split('/') {
        match segment {
            "" | "." => {}
            ".." => return None,
            s if plain_segment(s) => {
                out.push('/');
                out.push_str(s);
            }
            _ => return None,
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_subcommand_alone_is_a_valid_call() {
        let a = parse(&json!({"subcommand": "status"})).unwrap();
        assert_eq!(a.subcommand, "status");
        assert!(a.args.is_empty() && a.fsal_mounts.is_empty());
    }

    #[test]
    fn refusals_name_the_field() {
        let err = |v: Value| parse(&v).unwrap_err();
        assert_eq!(err(json!({})), "CLI invocation requires subcommand");
        assert_eq!(
            err(json!({"subcommand": 3})),
            "CLI invocation requires subcommand"
        );
        assert_eq!(
            err(json!({"subcommand": "log", "args": ["-n", 5]})),
            "CLI invocation args[1] must be a string, not a number"
        );
        assert_eq!(
            err(json!({"subcommand": "log", "args": "-n 5"})),
            "CLI invocation args must be an array of strings, not a string"
        );
        assert_eq!(
            err(
                json!({"subcommand": "log", "fsal_mounts": [{"mount_path": "/w", "remote_path": "/r"}]})
            ),
            "fsal_mounts[0].volume_id is required"
        );
        assert!(err(json!({"subcommand": "x", "fsal_mounts": [{"volume_id": "v", "mount_path": "/w,src=/etc", "remote_path": "/r"}]})).contains("mount_path"));
        assert!(err(json!({"subcommand": "x", "fsal_mounts": [{"volume_id": "v", "mount_path": "/w/../etc", "remote_path": "/r"}]})).contains("mount_path"));
        assert!(err(json!({"subcommand": "x", "fsal_mounts": [{"volume_id": "v", "mount_path": "/proc/x", "remote_path": "/r"}]})).contains("reserved"));
        assert!(err(json!({"subcommand": "x", "fsal_mounts": [{"volume_id": "v", "mount_path": "/usr/bin", "remote_path": "/r"}]})).contains("reserved"));
        assert!(err(json!({"subcommand": "x", "fsal_mounts": [{"volume_id": "v", "mount_path": "/etc", "remote_path": "/r"}]})).contains("reserved"));
        for image_programs in ["/opt", "/opt/conda/bin", "/app", "/var/lib/tool", "/run"] {
            let e = err(
                json!({"subcommand": "x", "fsal_mounts": [{"volume_id": "v", "mount_path": image_programs, "remote_path": "/r"}]}),
            );
            assert_eq!(
                e,
                format!("fsal_mounts[0].mount_path {image_programs} is reserved")
            );
        }
        assert!(err(json!({"subcommand": "x", "fsal_mounts": [{"volume_id": "v", "mount_path": "/w", "remote_path": "/r", "read_only": "yes"}]})).contains("boolean"));
    }

    #[test]
    fn a_subcommand_with_a_line_break_is_refused() {
        assert_eq!(
            parse(&json!({"subcommand": "log\nERROR sqlx::pool: database pool acquire timed out"}))
                .unwrap_err(),
            "CLI invocation subcommand contains a control character"
        );
    }

    #[test]
    fn a_tenant_mounts_only_its_own_workspaces() {
        let mounts = |remote: &[&str]| {
            let items: Vec<Value> = remote
                .iter()
                .enumerate()
                .map(|(i, r)| json!({"volume_id": "v", "mount_path": format!("/workspace/{i}"), "remote_path": r}))
                .collect();
            parse(&json!({"subcommand": "x", "fsal_mounts": items}))
                .unwrap()
                .fsal_mounts
        };
        let own = mounts(&["/aegis/volumes/acme/v1", "/aegis/volumes/acme/v2/src"]);
        assert_eq!(mount_outside_tenant(&own, Some("acme")), None);
        assert_eq!(mount_outside_tenant(&[], None), None);
        for (remote, tenant) in [
            ("/aegis/volumes/globex/v1", Some("acme")),
            ("/aegis/volumes/acme-corp/v1", Some("acme")),
            ("/aegis/volumes/acme", Some("acme")),
            ("/", Some("acme")),
        ] {
            let found = mount_outside_tenant(&mounts(&["/aegis/volumes/acme/ok", remote]), tenant);
            assert!(
                found
                    .as_deref()
                    .is_some_and(|r| r.starts_with("fsal_mounts[1].remote_path")),
                "{remote} for {tenant:?}: {found:?}"
            );
        }
        // No tenant, or one that is no plain directory name, has no workspaces at all.
        let nested = mounts(&["/aegis/volumes/acme/x/v1"]);
        for (mounts, tenant) in [(&own, None), (&nested, Some("acme/x")), (&own, Some(".."))] {
            assert_eq!(
                mount_outside_tenant(mounts, tenant).as_deref(),
                Some(
                    format!(
                        "fsal_mounts[0].remote_path {}: the caller's tenant has no workspace directory",
                        mounts[0].remote_path
                    )
                    .as_str()
                ),
                "{tenant:?}"
            );
        }
    }

    #[test]
    fn mounts_are_normalized() {
        let a = parse(&json!({"subcommand": "x", "fsal_mounts": [
            {"volume_id": "v1", "mount_path": "/workspace/./src/", "remote_path": "//aegis/volumes/t/v1", "read_only": true}
        ]}))
        .unwrap();
        assert_eq!(
            a.fsal_mounts,
            [FsalMount {
                volume_id: "v1".into(),
                mount_path: "/workspace/src".into(),
                read_only: true,
                remote_path: "/aegis/volumes/t/v1".into(),
            }]
        );
    }
}
