//! The statuses a reconcile writes, and the transitions between them that deserve an Event. Pure:
//! the caller passes the clock's reading.

use aegis_seal_crds::{GatewayAcceptance, ResourceResult, SealGatewayStatus, ToolStatus};
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const ACCEPTED: &str = "Accepted";
pub const READY: &str = "Ready";
pub const CLI_TOOLS_RUNNABLE: &str = "CliToolsRunnable";

/// Longest Event note the API server accepts.
const MAX_NOTE_BYTES: usize = 1024;

/// Now, to the second: a condition time survives a round trip through the API unchanged, so an
/// unchanged status compares equal to what the server holds.
pub fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// A condition that keeps its previous transition time when its status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = find(previous, type_)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The status of a resource after the gateway `gateway` compiled it (`result`), or stopped
/// selecting it (`None`). Other gateways' entries are kept, except those of gateways that no
/// longer `exist`. The condition and the serving list are derived from all entries, so every
/// gateway that writes the status writes the same: two gateways that judge a resource
/// differently do not overwrite each other's verdict for ever.
pub fn resource_status(
    previous: Option<&ToolStatus>,
    result: Option<&ResourceResult>,
    generation: Option<i64>,
    gateway: &str,
    exists: impl Fn(&str) -> bool,
    now: &Time,
) -> ToolStatus {
    let empty = ToolStatus::default();
    let previous = previous.unwrap_or(&empty);
    let observed_generation = match result {
        Some(_) => generation,
        None => previous.observed_generation,
    };
    // A status written before `acceptance` lists only the gateways that served the resource.
    let served_before = previous
        .gateways
        .iter()
        .filter(|g| !previous.acceptance.iter().any(|a| &a.gateway == *g))
        .map(|g| GatewayAcceptance {
            gateway: g.clone(),
            accepted: true,
            message: String::new(),
            observed_generation: previous.observed_generation,
        });
    let mut acceptance: Vec<GatewayAcceptance> = previous
        .acceptance
        .iter()
        .cloned()
        .chain(served_before)
        .filter(|a| a.gateway != gateway && exists(&a.gateway))
        .chain(result.map(|r| GatewayAcceptance {
            gateway: gateway.to_owned(),
            accepted: r.accepted(),
            message: if r.accepted() {
                String::new()
            } else {
                r.message()
            },
            observed_generation: generation,
        }))
        .collect();
    acceptance.sort_by(|a, b| a.gateway.cmp(&b.gateway));
    let conditions = if acceptance.is_empty() {
        Vec::new()
    } else {
        vec![accepted_condition(
            &previous.conditions,
            &acceptance,
            observed_generation,
            now,
        )]
    };
    ToolStatus {
        conditions,
        observed_generation,
        tool_name: result
            .map(|r| r.name.clone())
            .or_else(|| previous.tool_name.clone()),
        gateways: acceptance
            .iter()
            .filter(|a| a.accepted)
            .map(|a| a.gateway.clone())
            .collect(),
        acceptance,
    }
}

/// Whether a resource is served as it is: True when every gateway that selects it accepted it.
fn accepted_condition(
    previous: &[Condition],
    acceptance: &[GatewayAcceptance],
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let refused: Vec<&GatewayAcceptance> = acceptance.iter().filter(|a| !a.accepted).collect();
    let Some(first) = refused.first() else {
        let message = "compiled without problems".to_owned();
        return condition(
            previous, ACCEPTED, true, "Accepted", message, generation, now,
        );
    };
    // Every gateway refused it for the same problems (the usual case: one gateway): say them.
    let message = if refused.len() == acceptance.len()
        && refused.iter().all(|a| a.message == first.message)
    {
        first.message.clone()
    } else {
        let mut parts: Vec<String> = refused
            .iter()
            .map(|a| format!("{}: {}", a.gateway, a.message))
            .collect();
        let serving: Vec<&str> = acceptance
            .iter()
            .filter(|a| a.accepted)
            .map(|a| a.gateway.as_str())
            .collect();
        if !serving.is_empty() {
            parts.push(format!("served by {}", serving.join(", ")));
        }
        parts.join("; ")
    };
    condition(
        previous, ACCEPTED, false, "Invalid", message, generation, now,
    )
}

/// What became of a gateway's spec.
#[derive(Clone, Debug)]
pub enum SpecOutcome<'a> {
    /// Its objects were applied.
    Applied {
        snapshot_hash: &'a str,
        workflows: u32,
        cli_tools: u32,
        security_contexts: u32,
        rejected: usize,
        /// `spec.cli_containers.enabled`: whether the pod can start the CLI tools' containers.
        cli_containers: bool,
        replicas: i32,
        deployment_generation: Option<i64>,
        deployment: Option<&'a DeploymentStatus>,
    },
    /// It cannot be run; nothing was applied and what ran before keeps running.
    Refused { reason: &'a str, message: String },
}

pub fn gateway_status(
    previous: Option<&SealGatewayStatus>,
    generation: Option<i64>,
    outcome: &SpecOutcome<'_>,
    now: &Time,
) -> SealGatewayStatus {
    let empty = SealGatewayStatus::default();
    let previous = previous.unwrap_or(&empty);
    let prev = &previous.conditions;
    match outcome {
        SpecOutcome::Refused { reason, message } => SealGatewayStatus {
            conditions: [
                condition(prev, ACCEPTED, false, reason, message.clone(), generation, now),
                condition(
                    prev,
                    READY,
                    false,
                    "NotAccepted",
                    "the spec is not applied (see Accepted); the data plane keeps its previous configuration"
                        .into(),
                    generation,
                    now,
                ),
            ]
            .into_iter()
            // What runs has not changed, so neither has whether its CLI tools can run.
            .chain(find(prev, CLI_TOOLS_RUNNABLE).cloned())
            .collect(),
            observed_generation: generation,
            ..previous.clone()
        },
        SpecOutcome::Applied {
            snapshot_hash,
            workflows,
            cli_tools,
            security_contexts,
            rejected,
            cli_containers,
            replicas,
            deployment_generation,
            deployment,
        } => {
            let accepted = format!(
                "serving {workflows} workflows, {cli_tools} CLI tools and {security_contexts} security contexts; {rejected} selected resources rejected"
            );
            let (ready, reason, message) = readiness(*replicas, *deployment_generation, *deployment);
            SealGatewayStatus {
                conditions: vec![
                    condition(prev, ACCEPTED, true, "Accepted", accepted, generation, now),
                    condition(prev, READY, ready, reason, message, generation, now),
                    cli_tools_runnable(prev, *cli_tools, *cli_containers, generation, now),
                ],
                observed_generation: generation,
                snapshot_hash: Some((*snapshot_hash).to_owned()),
                workflows: *workflows,
                cli_tools: *cli_tools,
                security_contexts: *security_contexts,
                ready_replicas: deployment.and_then(|d| d.ready_replicas).unwrap_or(0),
            }
        }
    }
}

/// Whether the CLI tools served can start their containers: a pod without
/// `spec.cli_containers.enabled` runs under the restricted profile, where podman cannot create
/// them, so every call of those tools fails.
fn cli_tools_runnable(
    previous: &[Condition],
    cli_tools: u32,
    cli_containers: bool,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let (runnable, reason, message) = match (cli_containers, cli_tools) {
        (true, _) => (
            true,
            "ContainersEnabled",
            format!("{cli_tools} CLI tools served; the data-plane pod runs their containers"),
        ),
        (false, 0) => (
            true,
            "NoCliTools",
            "no CLI tools served; spec.cli_containers.enabled is false, set it before serving any"
                .to_owned(),
        ),
        (false, n) => (
            false,
            "ContainersDisabled",
            format!(
                "{n} CLI tools served, but spec.cli_containers.enabled is false: the data-plane pod \
                 cannot start their containers and every call of them fails; set it to true and \
                 label the namespace pod-security.kubernetes.io/enforce=privileged"
            ),
        ),
    };
    condition(
        previous,
        CLI_TOOLS_RUNNABLE,
        runnable,
        reason,
        message,
        generation,
        now,
    )
}

/// Whether the data plane's rollout is done, judged as `kubectl rollout status` judges it: every
/// replica runs the current template and is available, and no replica of an older one is left.
/// Counting ready replicas alone called a rollout whose new pod crash-loops ready, since the old
/// pod it replaces still serves.
fn readiness(
    replicas: i32,
    generation: Option<i64>,
    status: Option<&DeploymentStatus>,
) -> (bool, &'static str, String) {
    if replicas == 0 {
        return (false, "ScaledToZero", "spec.replicas is 0".into());
    }
    let Some(status) = status else {
        return (
            false,
            "Progressing",
            "the Deployment reports no status yet".into(),
        );
    };
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_.as_deref() == Some(type_))
    };
    // Kubernetes' own verdicts, in its words: the pods cannot be created (quota, Pod Security,
    // a missing ServiceAccount), or the rollout made no progress within its deadline.
    if let Some(failure) =
        condition("ReplicaFailure").filter(|c| c.status.as_deref() == Some("True"))
    {
        let message = failure.message.clone().unwrap_or_default();
        return (false, "ReplicaFailure", message);
    }
    if let Some(progressing) = condition("Progressing")
        && progressing.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        let message = progressing.message.clone().unwrap_or_default();
        return (false, "ProgressDeadlineExceeded", message);
    }
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let current = status.observed_generation.unwrap_or(0) >= generation.unwrap_or(0);
    let message = format!("{ready}/{replicas} replicas ready, {updated} up to date");
    let old = total - updated;
    if !(current && updated >= replicas && available >= updated) {
        (false, "Progressing", message)
    } else if old > 0 {
        (
            false,
            "Progressing",
            format!("{message}, {old} of the previous version still running"),
        )
    } else {
        (true, "DataPlaneReady", message)
    }
}

/// An Event to publish about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl Notice {
    fn new(warning: bool, reason: &'static str, note: String) -> Self {
        Self {
            warning,
            reason,
            note: truncate(note, MAX_NOTE_BYTES),
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// `Rejected` when an Accepted condition turns False or changes its message while False;
/// `Accepted` when it recovers.
fn acceptance_notice(previous: &[Condition], new: &[Condition]) -> Option<Notice> {
    let new = find(new, ACCEPTED)?;
    let old = find(previous, ACCEPTED);
    match (old.map(|c| c.status.as_str()), new.status.as_str()) {
        (Some("False"), "True") => Some(Notice::new(false, "Accepted", new.message.clone())),
        (Some("False"), "False") if old.is_some_and(|o| o.message == new.message) => None,
        (_, "False") => Some(Notice::new(true, "Rejected", new.message.clone())),
        _ => None,
    }
}

pub fn resource_notices(previous: Option<&ToolStatus>, new: &ToolStatus) -> Vec<Notice> {
    let prev = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    acceptance_notice(prev, &new.conditions)
        .into_iter()
        .collect()
}

/// A Normal Event `reasons.0` when condition `type_` turns True, a Warning `reasons.1` when it
/// turns False; `absent` is what a missing previous condition counts as.
fn transition_notice(
    previous: &[Condition],
    new: &[Condition],
    type_: &str,
    absent: bool,
    (up, down): (&'static str, &'static str),
) -> Option<Notice> {
    let was = find(previous, type_).map_or(absent, |c| c.status == "True");
    let now = find(new, type_)?;
    match (was, now.status == "True") {
        (false, true) => Some(Notice::new(false, up, now.message.clone())),
        (true, false) => Some(Notice::new(true, down, now.message.clone())),
        _ => None,
    }
}

pub fn gateway_notices(
    previous: Option<&SealGatewayStatus>,
    new: &SealGatewayStatus,
) -> Vec<Notice> {
    let prev = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut notices: Vec<Notice> = acceptance_notice(prev, &new.conditions)
        .into_iter()
        .collect();
    notices.extend(transition_notice(
        prev,
        &new.conditions,
        READY,
        false,
        ("Ready", "NotReady"),
    ));
    // A gateway that never said can run them (no condition yet): only a failure is news.
    notices.extend(transition_notice(
        prev,
        &new.conditions,
        CLI_TOOLS_RUNNABLE,
        true,
        ("CliToolsRunnable", "CliToolsNotRunnable"),
    ));
    if let Some(hash) = &new.snapshot_hash
        && previous.and_then(|p| p.snapshot_hash.as_ref()) != Some(hash)
    {
        notices.push(Notice::new(
            false,
            "SnapshotPublished",
            format!(
                "snapshot {hash}: {} workflows, {} CLI tools, {} security contexts",
                new.workflows, new.cli_tools, new.security_contexts
            ),
        ));
    }
    notices
}

#[cfg(test)]
mod tests {
    use aegis_seal_crds::{Problem, ResourceRef};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn result(problems: &[&str]) -> ResourceResult {
        ResourceResult {
            resource: ResourceRef {
                kind: "Workflow".into(),
                namespace: Some("ns".into()),
                name: "wf".into(),
                generation: Some(4),
            },
            name: "wf_tool".into(),
            problems: problems
                .iter()
                .map(|m| Problem {
                    field: "spec.steps[0].operation_id".into(),
                    message: (*m).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let first = judged(None, &result(&[]), Some(4), "ns/gw", &at(10));
        assert_eq!(first.conditions[0].last_transition_time, at(10));
        assert_eq!(first.gateways, ["ns/gw"]);
        assert_eq!(first.tool_name.as_deref(), Some("wf_tool"));
        assert_eq!(first.observed_generation, Some(4));
        assert_eq!(first.conditions[0].observed_generation, Some(4));

        let same = judged(Some(&first), &result(&[]), Some(4), "ns/gw", &at(20));
        assert_eq!(same, first, "nothing changed, so nothing to write");

        let rejected = judged(Some(&first), &result(&["boom"]), Some(5), "ns/gw", &at(30));
        let c = &rejected.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("False", "Invalid", "spec.steps[0].operation_id: boom")
        );
        assert_eq!(c.last_transition_time, at(30));
        assert!(rejected.gateways.is_empty());

        let again = judged(
            Some(&rejected),
            &result(&["other"]),
            Some(6),
            "ns/gw",
            &at(40),
        );
        assert_eq!(again.conditions[0].last_transition_time, at(30));
    }

    /// Gateway `gateway`'s status write after compiling the resource with `result`.
    fn judged(
        previous: Option<&ToolStatus>,
        result: &ResourceResult,
        generation: Option<i64>,
        gateway: &str,
        now: &Time,
    ) -> ToolStatus {
        resource_status(previous, Some(result), generation, gateway, |_| true, now)
    }

    #[test]
    fn gateways_that_disagree_keep_their_own_entries_and_converge() {
        // `ops/all` refuses the resource (say, its tool name is defined twice among what it
        // selects); `team/edge` serves it. Each write is seen by both, and each rewrites the
        // status only when what it would write differs.
        let duplicate = result(&["defined twice"]);
        let fine = result(&[]);
        let mut stored = judged(None, &duplicate, Some(2), "ops/all", &at(1));
        let mut writes = 1;
        for round in 2..10 {
            let mut changed = false;
            for (gw, r) in [("team/edge", &fine), ("ops/all", &duplicate)] {
                let new = judged(Some(&stored), r, Some(2), gw, &at(round));
                if new != stored {
                    (stored, changed, writes) = (new, true, writes + 1);
                }
            }
            if !changed {
                break;
            }
        }
        assert_eq!(writes, 2, "one write each, then nothing changes");
        assert_eq!(stored.gateways, ["team/edge"]);
        assert_eq!(
            stored
                .acceptance
                .iter()
                .map(|a| (a.gateway.as_str(), a.accepted, a.message.as_str()))
                .collect::<Vec<_>>(),
            [
                (
                    "ops/all",
                    false,
                    "spec.steps[0].operation_id: defined twice"
                ),
                ("team/edge", true, ""),
            ]
        );
        let c = &stored.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.message.as_str()),
            (
                "False",
                "ops/all: spec.steps[0].operation_id: defined twice; served by team/edge"
            )
        );
        assert_eq!(c.last_transition_time, at(1));

        // `ops/all` stops selecting it: its entry goes, and the resource is accepted.
        let left = resource_status(Some(&stored), None, Some(2), "ops/all", |_| true, &at(20));
        assert_eq!(left.gateways, ["team/edge"]);
        assert_eq!(left.acceptance.len(), 1);
        assert_eq!(left.conditions[0].status, "True");
        // Then `team/edge` too: nobody judges it, so there is no condition to show.
        let alone = resource_status(Some(&left), None, Some(2), "team/edge", |_| true, &at(21));
        assert!(alone.conditions.is_empty() && alone.acceptance.is_empty());
        assert_eq!(alone.tool_name.as_deref(), Some("wf_tool"));

        // A deleted gateway's entry is dropped by the next gateway that writes.
        let pruned = resource_status(
            Some(&stored),
            Some(&fine),
            Some(2),
            "team/edge",
            |gw| gw != "ops/all",
            &at(30),
        );
        assert_eq!(pruned.acceptance.len(), 1);
        assert_eq!(pruned.conditions[0].status, "True");
    }

    #[test]
    fn resource_events_on_rejection_and_recovery_only() {
        let ok = judged(None, &result(&[]), None, "g", &at(1));
        assert!(resource_notices(None, &ok).is_empty());
        let bad = judged(Some(&ok), &result(&["boom"]), None, "g", &at(2));
        let n = resource_notices(Some(&ok), &bad);
        assert_eq!(n.len(), 1);
        assert!(n[0].warning);
        assert_eq!(n[0].reason, "Rejected");
        assert!(resource_notices(Some(&bad), &bad).is_empty());
        let worse = judged(Some(&bad), &result(&["bang"]), None, "g", &at(3));
        assert_eq!(resource_notices(Some(&bad), &worse)[0].reason, "Rejected");
        let fixed = judged(Some(&worse), &result(&[]), None, "g", &at(4));
        let n = resource_notices(Some(&worse), &fixed);
        assert_eq!(
            n,
            [Notice::new(
                false,
                "Accepted",
                "compiled without problems".into()
            )]
        );
        // Rejected from the start is a transition too.
        let first_bad = judged(None, &result(&["boom"]), None, "g", &at(1));
        assert_eq!(resource_notices(None, &first_bad)[0].reason, "Rejected");
    }

    fn applied<'a>(hash: &'a str, status: Option<&'a DeploymentStatus>) -> SpecOutcome<'a> {
        SpecOutcome::Applied {
            snapshot_hash: hash,
            workflows: 2,
            cli_tools: 1,
            security_contexts: 0,
            rejected: 1,
            cli_containers: true,
            replicas: 1,
            deployment_generation: Some(2),
            deployment: status,
        }
    }

    #[test]
    fn gateway_readiness_follows_the_deployment() {
        let progressing = DeploymentStatus {
            observed_generation: Some(2),
            ready_replicas: None,
            updated_replicas: Some(1),
            ..Default::default()
        };
        let s1 = gateway_status(
            None,
            Some(7),
            &applied("sha256:a", Some(&progressing)),
            &at(1),
        );
        let ready = find(&s1.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Progressing")
        );
        assert_eq!(s1.snapshot_hash.as_deref(), Some("sha256:a"));
        assert_eq!((s1.workflows, s1.cli_tools, s1.ready_replicas), (2, 1, 0));
        let n = gateway_notices(None, &s1);
        assert_eq!(
            n.iter().map(|n| n.reason).collect::<Vec<_>>(),
            ["SnapshotPublished"]
        );

        let done = DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(1),
            ready_replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            ..Default::default()
        };
        let s2 = gateway_status(
            Some(&s1),
            Some(7),
            &applied("sha256:a", Some(&done)),
            &at(2),
        );
        assert_eq!(find(&s2.conditions, READY).unwrap().status, "True");
        assert_eq!(
            find(&s2.conditions, ACCEPTED).unwrap().last_transition_time,
            at(1)
        );
        let n = gateway_notices(Some(&s1), &s2);
        assert_eq!(n.iter().map(|n| n.reason).collect::<Vec<_>>(), ["Ready"]);
        assert_eq!(s2.ready_replicas, 1);

        // A Deployment whose controller has not seen the new template yet is not ready.
        let stale = DeploymentStatus {
            observed_generation: Some(1),
            ..done.clone()
        };
        let s3 = gateway_status(
            Some(&s2),
            Some(7),
            &applied("sha256:a", Some(&stale)),
            &at(3),
        );
        assert_eq!(find(&s3.conditions, READY).unwrap().status, "False");
        assert_eq!(gateway_notices(Some(&s2), &s3)[0].reason, "NotReady");
    }

    fn ready_condition(status: &DeploymentStatus) -> (String, String, String) {
        let s = gateway_status(None, Some(7), &applied("sha256:a", Some(status)), &at(1));
        let c = find(&s.conditions, READY).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    /// As `kubectl rollout status` judges: a new pod that crash-loops beside the old one it was
    /// to replace is not a finished rollout, although one replica is ready and one is updated.
    #[test]
    fn a_rollout_is_ready_only_when_no_old_replica_is_left() {
        let surging = DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(2),
            ready_replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            unavailable_replicas: Some(1),
            ..Default::default()
        };
        assert_eq!(
            ready_condition(&surging),
            (
                "False".into(),
                "Progressing".into(),
                "1/1 replicas ready, 1 up to date, 1 of the previous version still running".into()
            )
        );
        let unavailable = DeploymentStatus {
            replicas: Some(1),
            available_replicas: Some(0),
            ..surging.clone()
        };
        assert_eq!(ready_condition(&unavailable).1, "Progressing");

        let condition = |type_: &str, status: &str, reason: &str, message: &str| {
            k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: Some(type_.into()),
                status: Some(status.into()),
                reason: Some(reason.into()),
                message: Some(message.into()),
                ..Default::default()
            }
        };
        let forbidden = DeploymentStatus {
            conditions: Some(vec![condition(
                "ReplicaFailure",
                "True",
                "FailedCreate",
                "pods \"edge-x\" is forbidden: violates PodSecurity \"restricted:latest\"",
            )]),
            ..surging.clone()
        };
        assert_eq!(
            ready_condition(&forbidden),
            (
                "False".into(),
                "ReplicaFailure".into(),
                "pods \"edge-x\" is forbidden: violates PodSecurity \"restricted:latest\"".into()
            )
        );
        let stuck = DeploymentStatus {
            conditions: Some(vec![condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                "ReplicaSet \"edge-7f\" has timed out progressing.",
            )]),
            ..surging
        };
        assert_eq!(ready_condition(&stuck).1, "ProgressDeadlineExceeded");
    }

    #[test]
    fn a_refused_spec_keeps_the_last_snapshot_facts() {
        let done = DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(1),
            ready_replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            ..Default::default()
        };
        let s1 = gateway_status(None, Some(1), &applied("sha256:a", Some(&done)), &at(1));
        let refused = SpecOutcome::Refused {
            reason: "ReplicasRequirePostgres",
            message: "use postgres".into(),
        };
        let s2 = gateway_status(Some(&s1), Some(2), &refused, &at(2));
        let accepted = find(&s2.conditions, ACCEPTED).unwrap();
        assert_eq!(
            (
                accepted.status.as_str(),
                accepted.reason.as_str(),
                accepted.message.as_str()
            ),
            ("False", "ReplicasRequirePostgres", "use postgres")
        );
        assert_eq!(accepted.observed_generation, Some(2));
        assert_eq!(s2.snapshot_hash, s1.snapshot_hash);
        assert_eq!(s2.ready_replicas, 1);
        assert_eq!(s2.observed_generation, Some(2));
        let reasons: Vec<_> = gateway_notices(Some(&s1), &s2)
            .iter()
            .map(|n| n.reason)
            .collect();
        assert_eq!(reasons, ["Rejected", "NotReady"]);
    }

    #[test]
    fn cli_tools_without_containers_are_not_runnable() {
        let outcome = |n, enabled| {
            let mut o = applied("sha256:a", None);
            if let SpecOutcome::Applied {
                cli_tools,
                cli_containers,
                ..
            } = &mut o
            {
                (*cli_tools, *cli_containers) = (n, enabled);
            }
            o
        };
        let runnable = |s: &SealGatewayStatus| {
            let c = find(&s.conditions, CLI_TOOLS_RUNNABLE).unwrap();
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let reasons =
            |p, n| -> Vec<&str> { gateway_notices(p, n).iter().map(|n| n.reason).collect() };

        let none = gateway_status(None, Some(1), &outcome(0, false), &at(1));
        assert_eq!(runnable(&none).1, "NoCliTools");
        assert_eq!(runnable(&none).0, "True");
        assert_eq!(reasons(None, &none), ["SnapshotPublished"]);

        let stuck = gateway_status(Some(&none), Some(2), &outcome(2, false), &at(2));
        assert_eq!(
            runnable(&stuck),
            (
                "False".to_owned(),
                "ContainersDisabled".to_owned(),
                "2 CLI tools served, but spec.cli_containers.enabled is false: the data-plane pod \
                 cannot start their containers and every call of them fails; set it to true and \
                 label the namespace pod-security.kubernetes.io/enforce=privileged"
                    .to_owned()
            )
        );
        let warned = gateway_notices(Some(&none), &stuck);
        assert!(warned[0].warning);
        assert_eq!(warned[0].reason, "CliToolsNotRunnable");
        // Still stuck: said once.
        let again = gateway_status(Some(&stuck), Some(2), &outcome(2, false), &at(3));
        assert_eq!(again, stuck);
        assert!(reasons(Some(&stuck), &again).is_empty());

        // A refused spec changes nothing that runs, so the condition stays as it was.
        let refused = SpecOutcome::Refused {
            reason: "InvalidSelector",
            message: "bad".into(),
        };
        let kept = gateway_status(Some(&stuck), Some(3), &refused, &at(4));
        assert_eq!(runnable(&kept), runnable(&stuck));
        assert_eq!(reasons(Some(&stuck), &kept), ["Rejected"]);

        let fixed = gateway_status(Some(&stuck), Some(4), &outcome(2, true), &at(5));
        assert_eq!(runnable(&fixed).1, "ContainersEnabled");
        assert_eq!(reasons(Some(&stuck), &fixed), ["CliToolsRunnable"]);
    }

    #[test]
    fn notes_are_bounded() {
        let long = "é".repeat(2000);
        let n = Notice::new(true, "Rejected", long);
        assert!(n.note.len() <= MAX_NOTE_BYTES);
        assert!(n.note.ends_with("..."));
    }
}
