//! A manifests file through what the standalone gateway does with its folder at start and on
//! every change, and the operator with every custom resource: `parse_manifests`, `crds::compile`,
//! then the data plane's `ServedSnapshot::new`. Whoever may create a Workflow, CliTool or
//! SecurityContext in a namespace writes this input, so (any violation is a crash libFuzzer keeps):
//!
//! - nothing panics, whatever the text: a panic in the operator's compile would stop it for every
//!   tenant, and in a data plane's reload would stop it serving;
//! - a file with a bad document adds nothing to what was already read;
//! - compiling is deterministic (the same snapshot hash twice): the operator and the data planes
//!   tell snapshots apart by their hash;
//! - every snapshot that compile builds, a data plane can serve: `ServedSnapshot::new` fails only
//!   for a template or JSONPath that compile let through, and every data plane would then refuse
//!   the operator's snapshot.
#![no_main]

use aegis_seal_crds::compile::{Resources, compile};
use aegis_seal_crds::manifest::parse_manifests;
use aegis_seal_gateway::application::catalog::{Entries, ServedSnapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // What an earlier file of the folder added: a bad file must leave it as it was.
    let mut resources = Resources::default();
    parse_manifests(SECURITY_CONTEXT, &mut resources).expect("the fixed document parses");
    if let Err(error) = parse_manifests(text, &mut resources) {
        assert_eq!(
            (
                resources.workflows.len(),
                resources.cli_tools.len(),
                resources.security_contexts.len(),
                resources.config_maps.len(),
            ),
            (0, 0, 1, 0),
            "a refused file ({error}) added resources"
        );
        return;
    }

    let compiled = compile(&resources);
    let hash = compiled.snapshot.hash();
    assert_eq!(
        compile(&resources).snapshot.hash(),
        hash,
        "the same resources compiled to two snapshots"
    );
    assert_eq!(
        compiled.results.len(),
        resources.workflows.len() + resources.cli_tools.len() + resources.security_contexts.len(),
        "one result per resource"
    );
    if let Err(error) = ServedSnapshot::new(Entries::from(compiled.snapshot)) {
        panic!("the data plane cannot serve a snapshot compile built: {error}");
    }
}

const SECURITY_CONTEXT: &str = "
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {name: fixed}
spec:
  capabilities: [{tool_pattern: '*'}]
";
