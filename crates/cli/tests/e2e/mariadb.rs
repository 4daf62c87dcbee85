//! `georep db` on MariaDB databases end to end: two mariadbd servers as two regions.

use crate::common::*;
use georep_testkit::MariaDb;

fn maria_topology(
    dir: &std::path::Path,
    engine: &str,
    primary: &MariaDb,
    replica: &MariaDb,
) -> std::path::PathBuf {
    TopologyFile::new()
        .region("qc")
        .region("we")
        .raw(&format!(
            "[[databases]]\nname = \"shop\"\nengine = \"{engine}\"\nprimary = {{ region = \"qc\", url = \"{}\" }}\nreplicas = [{{ region = \"we\", url = \"{}\" }}]",
            primary.url("shop").replacen("mysql://", "mariadb://", 1),
            replica.url("mysql")
        ))
        .write(dir)
}

#[test]
fn db_commands_set_up_check_verify_and_tear_down_a_mariadb_replica() {
    let (primary, replica) = (MariaDb::start(1, &[]), MariaDb::start(2, &[]));
    primary.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(40)); \
         INSERT INTO shop.items SELECT seq, CONCAT('item ', seq) FROM shop.seq_1_to_500",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = maria_topology(dir.path(), "mariadb", &primary, &replica);
    let c = s(&cfg);
    let out = run(&["db", "setup", "shop", "-c", c, "--output", "json"], &[]).ok();
    let j = out.json();
    assert_eq!(j["replicas"][0]["done"], "copied", "{j}");
    assert_eq!(j["rows"], 500);
    primary.sql("INSERT INTO shop.items VALUES (501, 'after setup')");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (code, text, err) = run(&["db", "status", "shop", "-c", c], &[]).parts();
        if code == 0 && text.contains("0 transaction(s) behind") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not catch up: {text}{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, text, err) = run(&["db", "verify", "shop", "-c", c], &[]).parts();
    assert_eq!(code, 0, "{text}{err}");
    assert!(text.contains("shop.items"), "{text}");
    let (code, _, err) = run(&["db", "sync-sequences", "shop", "-c", c], &[]).parts();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("AUTO_INCREMENT values travel with the rows"),
        "{err}"
    );
    run(&["db", "teardown", "shop", "-c", c], &[]).ok();
    let (code, text, _) = run(&["db", "status", "shop", "-c", c], &[]).parts();
    assert_eq!(
        code, 1,
        "a replica that does not replicate is a failing status: {text}"
    );
    assert!(text.contains("not replicating"), "{text}");

    // engine = "mysql" in front of MariaDB servers: setup names the mismatch and the fix.
    let cfg = maria_topology(dir.path(), "mysql", &primary, &replica);
    let (code, _, err) = run(&["db", "setup", "shop", "-c", s(&cfg)], &[]).parts();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not mysql: set engine = \"mariadb\""), "{err}");
}
