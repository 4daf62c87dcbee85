//! Every example topology in `examples/` must parse cleanly: they are documentation that
//! users copy, so a broken one is a bug.

use std::path::Path;

use georep_core::Topology;

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no *.toml in {}", dir.display());
    // Any variable is "set", so references are checked for syntax, not for presence.
    let env = |_: &str| Some("dummyvalue".to_string());
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("readable example");
        let name = path.display().to_string();
        let base = path.parent().expect("a file has a folder");
        match Topology::parse(&text, base, &env) {
            Ok(t) => assert!(
                !t.policies.is_empty() || !t.databases.is_empty() || !t.secret_syncs.is_empty(),
                "{name}: an example should show a policy, a database or a secret sync"
            ),
            Err(e) => panic!("{name} does not parse:\n{}", e.render(&name)),
        }
    }
}
